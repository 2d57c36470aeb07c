//! `asyncgate.v1.Schedules`: schedules over the domain core in
//! `crate::schedules`. A client or admin key manages them, a viewer key
//! reads them (see `auth`); a tenant's key sees its own tenant's only, and
//! another tenant's schedule is NOT_FOUND, as one that does not exist is.

use std::time::SystemTime;

use tonic::{Request, Response, Status};

use asyncgate_proto::v1 as pb;
use pb::schedules_server::Schedules as SchedulesRpc;

use super::Core;
use super::convert::{SubmitLimits, list, schedule as edge};
use crate::auth::{self, Caller};
use crate::domain::QueueName;
use crate::error::GatewayError;
use crate::schedules::{Schedule, Schedules};

/// The tonic service, as registered with the server and the health service.
pub(crate) type Server = pb::schedules_server::SchedulesServer<SchedulesService>;

/// The service over `core`, ready to add to the router.
pub(crate) fn server(core: Core) -> Server {
    let limits = SubmitLimits {
        max_payload_bytes: core.config.max_payload_bytes,
        default_max_attempts: core.config.default_max_attempts,
        max_attempts_limit: core.config.max_attempts_limit,
        callbacks: std::sync::Arc::new(core.config.callbacks.clone()),
    };
    Server::new(SchedulesService {
        schedules: Schedules::new(core.engine.clone())
            .with_limit(core.config.max_schedules_per_tenant),
        core,
        limits,
    })
}

/// The service implementation.
pub(crate) struct SchedulesService {
    core: Core,
    schedules: Schedules,
    limits: SubmitLimits,
}

impl SchedulesService {
    fn id(caller: &Caller, text: &str) -> Result<QueueName, GatewayError> {
        edge::schedule_id(caller, text, "id")
    }

    /// `schedule` with its recent runs' states, as `caller` sees it.
    async fn present(&self, caller: &Caller, schedule: Schedule) -> Result<pb::Schedule, Status> {
        let seen = self
            .schedules
            .seen_now(schedule)
            .await
            .map_err(GatewayError::from)?;
        Ok(edge::schedule_to_pb(caller, &seen.schedule, &seen.tickets))
    }

    async fn presented(
        &self,
        caller: &Caller,
        schedule: Schedule,
    ) -> Result<Response<pb::Schedule>, Status> {
        Ok(Response::new(self.present(caller, schedule).await?))
    }
}

#[tonic::async_trait]
impl SchedulesRpc for SchedulesService {
    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = auth::caller(&request);
        let (id, definition) =
            edge::definition(&caller, request.into_inner().schedule, &self.limits)?;
        let schedule = self
            .schedules
            .create(id, definition, SystemTime::now())
            .await
            .map_err(GatewayError::from)?;
        tracing::info!(schedule = %schedule.id, by = %caller.name, "schedule created");
        self.presented(&caller, schedule).await
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = auth::caller(&request);
        let id = Self::id(&caller, &request.get_ref().id)?;
        let seen = self.schedules.get(&id).await.map_err(GatewayError::from)?;
        Ok(Response::new(edge::schedule_to_pb(
            &caller,
            &seen.schedule,
            &seen.tickets,
        )))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        use crate::rpc::gateway::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
        let caller = auth::caller(&request);
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(GatewayError::invalid(
                    "page_size",
                    format!("{n} is above the maximum of {MAX_PAGE_SIZE}"),
                )
                .into());
            }
            n => n,
        } as usize;
        let prefix = edge::list_prefix(&caller);
        let after = if request.page_token.is_empty() {
            String::new()
        } else {
            let id = Self::id(&caller, &request.page_token).map_err(|_| {
                GatewayError::invalid("page_token", "is not a token from ListSchedules")
            })?;
            id.as_str().to_owned()
        };
        let page = self
            .schedules
            .list(&prefix, &after, page_size + 1)
            .await
            .map_err(GatewayError::from)?;
        let more = page.len() > page_size;
        let mut schedules = Vec::with_capacity(page_size);
        for schedule in page.into_iter().take(page_size) {
            schedules.push(edge::schedule_to_pb(&caller, &schedule, &[]));
        }
        let next_page_token = if more {
            schedules.last().map(|s| s.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules,
            next_page_token,
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = auth::caller(&request);
        let (id, definition) =
            edge::definition(&caller, request.into_inner().schedule, &self.limits)?;
        let schedule = self
            .schedules
            .update(&id, definition, SystemTime::now())
            .await
            .map_err(GatewayError::from)?;
        tracing::info!(schedule = %schedule.id, by = %caller.name, "schedule updated");
        self.presented(&caller, schedule).await
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let caller = auth::caller(&request);
        let id = Self::id(&caller, &request.get_ref().id)?;
        self.schedules
            .delete(&id)
            .await
            .map_err(GatewayError::from)?;
        tracing::info!(schedule = %id, by = %caller.name, "schedule deleted");
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = auth::caller(&request);
        let request = request.into_inner();
        let id = Self::id(&caller, &request.id)?;
        if request.note.chars().count() > crate::domain::queue::MAX_PAUSE_REASON_CHARS {
            return Err(GatewayError::invalid(
                "note",
                format!(
                    "is longer than {} characters",
                    crate::domain::queue::MAX_PAUSE_REASON_CHARS
                ),
            )
            .into());
        }
        let schedule = self
            .schedules
            .pause(&id, &request.note, SystemTime::now())
            .await
            .map_err(GatewayError::from)?;
        self.presented(&caller, schedule).await
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = auth::caller(&request);
        let id = Self::id(&caller, &request.get_ref().id)?;
        let schedule = self
            .schedules
            .resume(&id, SystemTime::now())
            .await
            .map_err(GatewayError::from)?;
        self.presented(&caller, schedule).await
    }

    async fn trigger_schedule(
        &self,
        request: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        let caller = auth::caller(&request);
        let id = Self::id(&caller, &request.get_ref().id)?;
        let ticket = self
            .schedules
            .trigger(&id, SystemTime::now())
            .await
            .map_err(GatewayError::from)?;
        Ok(Response::new(pb::TriggerScheduleResponse {
            ticket: Some(self.core.present(&caller, &ticket).await),
        }))
    }

    async fn backfill_schedule(
        &self,
        request: Request<pb::BackfillScheduleRequest>,
    ) -> Result<Response<pb::BackfillScheduleResponse>, Status> {
        let caller = auth::caller(&request);
        let request = request.into_inner();
        let id = Self::id(&caller, &request.id)?;
        let from = list::time(request.from, "from")?
            .ok_or_else(|| GatewayError::invalid("from", "is required"))?;
        let to = list::time(request.to, "to")?
            .ok_or_else(|| GatewayError::invalid("to", "is required"))?;
        let tickets = self
            .schedules
            .backfill(&id, from, to, SystemTime::now())
            .await
            .map_err(GatewayError::from)?;
        Ok(Response::new(pb::BackfillScheduleResponse {
            tickets: self.core.present_page(&caller, &tickets).await,
        }))
    }
}
