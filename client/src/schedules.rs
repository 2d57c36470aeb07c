//! `asyncgate.v1.Schedules` over the same connection and credentials as the
//! [`Client`](crate::Client) it came from: tickets the gateway submits
//! itself on a cron expression or an interval.

use std::time::SystemTime;

use crate::pb::schedules_client::SchedulesClient;
use crate::{ClientError, Transport, pb};

/// Schedules as their owner manages them. Cheap to clone.
#[derive(Clone)]
pub struct Schedules {
    inner: SchedulesClient<Transport>,
}

impl Schedules {
    pub(crate) fn new(inner: SchedulesClient<Transport>) -> Self {
        Self { inner }
    }

    /// Creates `schedule` (`ALREADY_EXISTS` if its id is taken).
    pub async fn create(&self, schedule: pb::Schedule) -> Result<pb::Schedule, ClientError> {
        let request = pb::CreateScheduleRequest {
            schedule: Some(schedule),
        };
        Ok(self
            .inner
            .clone()
            .create_schedule(request)
            .await?
            .into_inner())
    }

    /// One schedule, with its recent runs and next fire times.
    pub async fn get(&self, id: &str) -> Result<pb::Schedule, ClientError> {
        let request = pb::GetScheduleRequest { id: id.to_owned() };
        Ok(self.inner.clone().get_schedule(request).await?.into_inner())
    }

    /// Every schedule this key sees, by id (all pages).
    pub async fn list(&self) -> Result<Vec<pb::Schedule>, ClientError> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .inner
                .clone()
                .list_schedules(pb::ListSchedulesRequest {
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            all.extend(page.schedules);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// Replaces `schedule`'s definition (named by its id).
    pub async fn update(&self, schedule: pb::Schedule) -> Result<pb::Schedule, ClientError> {
        let request = pb::UpdateScheduleRequest {
            schedule: Some(schedule),
        };
        Ok(self
            .inner
            .clone()
            .update_schedule(request)
            .await?
            .into_inner())
    }

    /// Deletes a schedule (its tickets stay).
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        let request = pb::DeleteScheduleRequest { id: id.to_owned() };
        self.inner.clone().delete_schedule(request).await?;
        Ok(())
    }

    /// Nothing fires until resumed.
    pub async fn pause(&self, id: &str, note: &str) -> Result<pb::Schedule, ClientError> {
        let request = pb::PauseScheduleRequest {
            id: id.to_owned(),
            note: note.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .pause_schedule(request)
            .await?
            .into_inner())
    }

    /// Fires again from the next slot.
    pub async fn resume(&self, id: &str) -> Result<pb::Schedule, ClientError> {
        let request = pb::ResumeScheduleRequest { id: id.to_owned() };
        Ok(self
            .inner
            .clone()
            .resume_schedule(request)
            .await?
            .into_inner())
    }

    /// One run now; its ticket.
    pub async fn trigger(&self, id: &str) -> Result<pb::Ticket, ClientError> {
        let request = pb::TriggerScheduleRequest { id: id.to_owned() };
        Ok(self
            .inner
            .clone()
            .trigger_schedule(request)
            .await?
            .into_inner()
            .ticket
            .unwrap_or_default())
    }

    /// Every slot from `from` to `to` (both included), one ticket each.
    pub async fn backfill(
        &self,
        id: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<pb::Ticket>, ClientError> {
        let request = pb::BackfillScheduleRequest {
            id: id.to_owned(),
            from: Some(from.into()),
            to: Some(to.into()),
        };
        Ok(self
            .inner
            .clone()
            .backfill_schedule(request)
            .await?
            .into_inner()
            .tickets)
    }
}
