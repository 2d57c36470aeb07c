//! `asyncgate.v1.Admin`: the operator's service over queues and finished
//! tickets. Reads need an admin or viewer key, changes an admin key (see
//! `auth`); a key confined to a tenant sees and acts on that tenant's
//! queues and tickets only, and another tenant's queue or ticket is
//! NOT_FOUND, as one never used is. Every change is audited with the key's
//! name.

use std::future::Future;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use asyncgate_proto::v1 as pb;
use pb::admin_server::Admin;

use super::Core;
use super::convert::{self, admin as edge};
use crate::auth::{self, Caller};
use std::collections::HashSet;

use crate::domain::{QueueName, QueuePause, SessionId, TicketId, TicketState};
use crate::engine::{EngineError, ListFilter, QueueInfo, SessionInfo, WorkerRecord};
use crate::error::GatewayError;

/// Tickets read per page while retrying a queue's tickets: a queue of
/// millions is walked in bounded steps.
const RETRY_PAGE: usize = 500;

/// The tonic service, as registered with the server and the health service.
pub(crate) type Server = pb::admin_server::AdminServer<AdminService>;

/// The service over `core`, ready to add to the router.
pub(crate) fn server(core: Core) -> Server {
    Server::new(AdminService { core })
}

/// The service implementation.
pub(crate) struct AdminService {
    core: Core,
}

impl AdminService {
    /// Queue `name` as `caller` names it, if it exists and `caller` may see
    /// it; NOT_FOUND otherwise (another tenant's queue looks unused).
    async fn visible_queue(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(QueueName, QueueInfo), GatewayError> {
        self.visible_queue_in(caller, name, "name").await
    }

    /// [`Self::visible_queue`] for a request whose queue field is `field`.
    async fn visible_queue_in(
        &self,
        caller: &Caller,
        name: &str,
        field: &str,
    ) -> Result<(QueueName, QueueInfo), GatewayError> {
        let queue = convert::queue_for(caller, name, field)?;
        let info = match self.core.engine.queue_info(&queue).await? {
            // A queue with a target exists before its first ticket.
            None if self.core.targets.known().contains_key(&queue) => {
                Some(QueueInfo::unused(queue.clone()))
            }
            info => info,
        };
        match info {
            Some(info) if caller.sees(queue.tenant()) => Ok((queue, info)),
            _ => Err(GatewayError::NotFound(format!(
                "queue {name:?} was never used (queues appear with their first ticket)"
            ))),
        }
    }

    /// The workers `caller` may see: on every replica when the store is
    /// shared (this gateway's own as it knows them now), else this
    /// gateway's; a worker is visible when one of its queues is.
    async fn visible_workers(&self, caller: &Caller) -> Result<Vec<WorkerRecord>, GatewayError> {
        let replica = self.core.engine.replica();
        let mut workers = self.core.dispatcher.workers(&replica);
        if let Some(everywhere) = self.core.engine.workers().await? {
            let here: HashSet<SessionId> = workers.iter().map(|w| w.session_id).collect();
            workers.extend(
                everywhere
                    .into_iter()
                    .filter(|w| !here.contains(&w.session_id)),
            );
        }
        workers.retain(|w| w.queues.iter().any(|q| caller.sees(q.tenant())));
        workers.sort_by_key(|w| (w.connected_at, w.session_id));
        Ok(workers)
    }

    /// The tickets `worker` holds now.
    async fn held(&self, worker: &WorkerRecord) -> Result<Vec<TicketId>, GatewayError> {
        let session = SessionInfo {
            session_id: worker.session_id,
            worker_name: worker.worker_name.as_str().into(),
            queues: worker.queues.clone().into(),
        };
        Ok(self.core.engine.session_tickets(&session).await?)
    }

    /// An operator's action on one ticket the caller may see: `act` on its
    /// id, audited as `action`, the ticket as the caller sees it after.
    async fn on_visible_ticket<T, F, Fut>(
        &self,
        request: &Request<T>,
        id: &str,
        action: &str,
        act: F,
    ) -> Result<Response<pb::Ticket>, Status>
    where
        F: FnOnce(TicketId) -> Fut,
        Fut: Future<Output = Result<crate::domain::Ticket, EngineError>>,
    {
        let caller = auth::caller(request);
        let peer = crate::connection::remote_addr(request.extensions());
        let id = convert::ticket_id(id, "id")?;
        self.core.visible(&caller, id).await?;
        let ticket = act(id).await.map_err(GatewayError::from)?;
        auth::audit_admin(&caller, action, peer, &id.to_string());
        tracing::info!(ticket_id = %id, by = %caller.name, action, "ticket acted on");
        Ok(Response::new(self.core.present(&caller, &ticket).await))
    }

    /// A queue on the wire, with what this gateway adds (workers).
    async fn present(&self, caller: &Caller, info: QueueInfo) -> pb::QueueInfo {
        self.present_with(caller, info, false).await
    }

    /// [`Self::present`], with the queue's history when `history`.
    async fn present_with(&self, caller: &Caller, info: QueueInfo, history: bool) -> pb::QueueInfo {
        let workers = self.core.workers(&info.queue).await;
        let targets = self.core.targets.known();
        let target = targets.get(&info.queue);
        edge::queue_to_pb(caller, info, workers, target, history, SystemTime::now())
    }

    /// Applies `act` to each of `caller`'s tickets of `queue` in `states`
    /// created before `created_before` (if given), reading bounded pages in
    /// id order; returns how many `act` says it changed. Each ticket is
    /// visited once, even if `act` makes it match again.
    async fn for_each_matching<F, Fut>(
        &self,
        caller: &Caller,
        queue: &QueueName,
        states: Vec<TicketState>,
        created_before: Option<SystemTime>,
        mut act: F,
    ) -> Result<u64, GatewayError>
    where
        F: FnMut(TicketId) -> Fut,
        Fut: Future<Output = Result<bool, GatewayError>>,
    {
        let mut changed = 0;
        let mut after = None;
        loop {
            let page = self
                .core
                .engine
                .list(ListFilter {
                    queue: Some(queue.clone()),
                    states: states.clone(),
                    page_size: RETRY_PAGE,
                    after,
                    tenant: caller.tenant.clone(),
                    created_before,
                    ..ListFilter::default()
                })
                .await?;
            for ticket in &page.tickets {
                if act(ticket.id).await? {
                    changed += 1;
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(changed),
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let caller = auth::caller(&request);
        let history = request.get_ref().history;
        let mut queues = self
            .core
            .engine
            .queues()
            .await
            .map_err(GatewayError::from)?;
        // A queue with a target exists before its first ticket.
        let targets = self.core.targets.known();
        let unused: Vec<QueueInfo> = targets
            .keys()
            .filter(|queue| !queues.iter().any(|info| info.queue == **queue))
            .map(|queue| QueueInfo::unused(queue.clone()))
            .collect();
        if !unused.is_empty() {
            queues.extend(unused);
            queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        }
        let visible = queues
            .into_iter()
            .filter(|info| caller.sees(info.queue.tenant()));
        // At once: each may ask the store how many workers serve it.
        let queues = futures::future::join_all(
            visible.map(|info| self.present_with(&caller, info, history)),
        )
        .await;
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let caller = auth::caller(&request);
        let request = request.get_ref();
        let (_, info) = self.visible_queue(&caller, &request.name).await?;
        Ok(Response::new(
            self.present_with(&caller, info, request.history).await,
        ))
    }

    async fn pause_queue(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let request = request.into_inner();
        let reason = edge::pause_reason(&request.reason)?;
        let (queue, _) = self.visible_queue(&caller, &request.name).await?;
        let pause = QueuePause {
            by: caller.name.to_string(),
            at: SystemTime::now(),
            reason,
        };
        let info = self
            .core
            .engine
            .set_pause(&queue, Some(pause))
            .await
            .map_err(GatewayError::from)?;
        auth::audit_admin(&caller, "PauseQueue", peer, queue.as_str());
        tracing::info!(%queue, by = %caller.name, "queue paused");
        Ok(Response::new(self.present(&caller, info).await))
    }

    async fn resume_queue(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let (queue, _) = self.visible_queue(&caller, &request.get_ref().name).await?;
        let info = self
            .core
            .engine
            .set_pause(&queue, None)
            .await
            .map_err(GatewayError::from)?;
        auth::audit_admin(&caller, "ResumeQueue", peer, queue.as_str());
        tracing::info!(%queue, by = %caller.name, "queue resumed");
        Ok(Response::new(self.present(&caller, info).await))
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let request = request.into_inner();
        let states = edge::purge_states(&request.states)?;
        let created_before = convert::list::time(request.created_before, "created_before")?;
        let (queue, _) = self.visible_queue(&caller, &request.name).await?;
        let reason = format!(
            "purged from queue {:?} by key {:?}",
            queue.seen_by(caller.tenant.as_deref()),
            caller.name
        );
        let engine = self.core.engine.clone();
        let reason = reason.as_str();
        let cancelled = self
            .for_each_matching(&caller, &queue, states, created_before, |id| {
                let engine = engine.clone();
                async move {
                    // A ticket that finished meanwhile is not purged.
                    match engine.cancel(id, reason).await {
                        Ok(ticket) => Ok(ticket.state == TicketState::Cancelled),
                        Err(EngineError::AlreadyTerminal { .. }) => Ok(false),
                        Err(error) => Err(GatewayError::from(error)),
                    }
                }
            })
            .await?;
        auth::audit_admin(
            &caller,
            "PurgeQueue",
            peer,
            &format!("{queue} ({cancelled} cancelled)"),
        );
        Ok(Response::new(pb::PurgeQueueResponse { cancelled }))
    }

    async fn set_queue_limits(
        &self,
        request: Request<pb::SetQueueLimitsRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let request = request.into_inner();
        let limits = edge::limits(request.limits)?;
        let (queue, _) = self.visible_queue(&caller, &request.name).await?;
        let info = self
            .core
            .engine
            .set_limits(&queue, limits)
            .await
            .map_err(GatewayError::from)?;
        auth::audit_admin(
            &caller,
            "SetQueueLimits",
            peer,
            &format!(
                "{queue} ({}/s, burst {}, {} at once)",
                limits.max_dispatch_per_second, limits.burst, limits.max_concurrent
            ),
        );
        Ok(Response::new(self.present(&caller, info).await))
    }

    async fn set_queue_target(
        &self,
        request: Request<pb::SetQueueTargetRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let request = request.into_inner();
        // A key confined to a tenant never gets here (see `auth`).
        let queue = convert::queue_for(&caller, &request.name, "name")?;
        if self.core.targets.configured(&queue) {
            return Err(GatewayError::NotAllowedHere(format!(
                "queue {:?} has its target in this gateway's config (--target {}); change it there",
                request.name,
                self.core
                    .targets
                    .running(&queue)
                    .map(|t| t.url())
                    .unwrap_or_default()
            ))
            .into());
        }
        let target = match request.target.trim() {
            "" => None,
            spec => Some(edge::queue_target(
                &queue,
                spec,
                &self.core.config.callbacks,
                &caller,
            )?),
        };
        if target.is_none() {
            let exists = self
                .core
                .engine
                .queue_info(&queue)
                .await
                .map_err(GatewayError::from)?
                .is_some();
            if !exists {
                return Err(GatewayError::NotFound(format!(
                    "queue {:?} was never used, so it has no target to take off",
                    request.name
                ))
                .into());
            }
        }
        let action = target.as_ref().map_or_else(
            || format!("{queue} (none)"),
            |t| format!("{queue} ({})", t.spec),
        );
        self.core
            .engine
            .set_target(&queue, target)
            .await
            .map_err(GatewayError::from)?;
        auth::audit_admin(&caller, "SetQueueTarget", peer, &action);
        tracing::info!(%queue, by = %caller.name, target = %action, "queue target set");
        // This gateway acts on it before answering; the others within a
        // second.
        self.core.targets.reload().await;
        let info = self
            .core
            .engine
            .queue_info(&queue)
            .await
            .map_err(GatewayError::from)?
            .ok_or_else(|| {
                GatewayError::NotFound(format!("queue {:?} went meanwhile", request.name))
            })?;
        Ok(Response::new(self.present(&caller, info).await))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let caller = auth::caller(&request);
        let queue = match request.get_ref().queue.as_str() {
            "" => None,
            name => Some(convert::queue_for(&caller, name, "queue")?),
        };
        let workers: Vec<WorkerRecord> = self
            .visible_workers(&caller)
            .await?
            .into_iter()
            .filter(|w| queue.as_ref().is_none_or(|q| w.queues.contains(q)))
            .collect();
        let held = futures::future::join_all(workers.iter().map(|w| self.held(w))).await;
        let now = SystemTime::now();
        let workers = workers
            .into_iter()
            .zip(held)
            .map(|(worker, held)| Ok(edge::worker_to_pb(&caller, worker, held?, now)))
            .collect::<Result<Vec<_>, GatewayError>>()?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers,
            heartbeat_interval: Some(crate::time::duration(self.core.config.heartbeat_interval)),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::WorkerInfo>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let session_id = edge::session_id(&request.get_ref().session_id, "session_id")?;
        let not_found = || {
            GatewayError::NotFound(format!(
                "no worker session {session_id} is connected (it may have left)"
            ))
        };
        let mut worker = self
            .visible_workers(&caller)
            .await?
            .into_iter()
            .find(|w| w.session_id == session_id)
            .ok_or_else(not_found)?;
        let replica = self.core.engine.replica();
        match self
            .core
            .dispatcher
            .drain(session_id, &caller.name, &replica)
        {
            Some(drained) => worker = drained,
            None => {
                self.core
                    .engine
                    .request_drain(session_id, &caller.name)
                    .await
                    .map_err(GatewayError::from)?;
                worker.draining = true;
            }
        }
        auth::audit_admin(&caller, "DrainWorker", peer, &session_id.to_string());
        let held = self.held(&worker).await?;
        Ok(Response::new(edge::worker_to_pb(
            &caller,
            worker,
            held,
            SystemTime::now(),
        )))
    }

    async fn retry_ticket(
        &self,
        request: Request<pb::RetryTicketRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let id = request.get_ref().id.clone();
        self.on_visible_ticket(&request, &id, "RetryTicket", |id| {
            self.core.engine.retry(id)
        })
        .await
    }

    async fn retry_callback(
        &self,
        request: Request<pb::RetryCallbackRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let id = request.get_ref().id.clone();
        self.on_visible_ticket(&request, &id, "RetryCallback", |id| {
            self.core.engine.retry_callback(id)
        })
        .await
    }

    async fn retry_tickets(
        &self,
        request: Request<pb::RetryTicketsRequest>,
    ) -> Result<Response<pb::RetryTicketsResponse>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let request = request.into_inner();
        let states = edge::retry_states(&request.states)?;
        let created_before = convert::list::time(request.created_before, "created_before")?;
        let (queue, _) = self
            .visible_queue_in(&caller, &request.queue, "queue")
            .await?;
        let retried = self
            .for_each_matching(&caller, &queue, states, created_before, |id| async move {
                match self.core.engine.retry(id).await {
                    Ok(_) => Ok(true),
                    // Changed meanwhile (retried by another call, or
                    // deleted): not this call's to retry.
                    Err(
                        EngineError::NotFinished { .. }
                        | EngineError::SucceededNotRetried(_)
                        | EngineError::NotFound(_)
                        | EngineError::ResultExpired { .. },
                    ) => Ok(false),
                    Err(error) => Err(error.into()),
                }
            })
            .await?;
        auth::audit_admin(
            &caller,
            "RetryTickets",
            peer,
            &format!("{queue} ({retried} retried)"),
        );
        tracing::info!(%queue, retried, by = %caller.name, "tickets retried");
        Ok(Response::new(pb::RetryTicketsResponse { retried }))
    }

    async fn delete_ticket(
        &self,
        request: Request<pb::DeleteTicketRequest>,
    ) -> Result<Response<pb::DeleteTicketResponse>, Status> {
        let caller = auth::caller(&request);
        let peer = crate::connection::remote_addr(request.extensions());
        let id = convert::ticket_id(&request.get_ref().id, "id")?;
        self.core.visible(&caller, id).await?;
        let deleted_at = self
            .core
            .engine
            .delete(id)
            .await
            .map_err(GatewayError::from)?;
        auth::audit_admin(&caller, "DeleteTicket", peer, &id.to_string());
        tracing::info!(ticket_id = %id, by = %caller.name, "ticket deleted");
        Ok(Response::new(pb::DeleteTicketResponse {
            deleted_at: Some(crate::time::timestamp(deleted_at)),
        }))
    }
}
