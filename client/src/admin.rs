//! The operator's client: `asyncgate.v1.Admin` over the same connection and
//! credentials as the [`Client`](crate::Client) it came from. It needs an
//! admin key (or a viewer key, for the reads).

use std::time::SystemTime;

use crate::pb::admin_client::AdminClient;
use crate::{ClientError, Transport, pb};

/// Queues (and, in later versions, workers and finished tickets) as an
/// operator sees and steers them. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: AdminClient<Transport>,
}

impl Admin {
    pub(crate) fn new(inner: AdminClient<Transport>) -> Self {
        Self { inner }
    }

    /// Every queue used so far, by name.
    pub async fn list_queues(&self) -> Result<Vec<pb::QueueInfo>, ClientError> {
        Ok(self
            .inner
            .clone()
            .list_queues(pb::ListQueuesRequest::default())
            .await?
            .into_inner()
            .queues)
    }

    /// One queue; `NOT_FOUND` if it was never used.
    pub async fn get_queue(&self, name: &str) -> Result<pb::QueueInfo, ClientError> {
        let request = pb::GetQueueRequest {
            name: name.to_owned(),
            history: false,
        };
        Ok(self.inner.clone().get_queue(request).await?.into_inner())
    }

    /// [`Self::get_queue`] with its `history`: the last 15 minutes in
    /// 15-second buckets, for charts.
    pub async fn queue_history(&self, name: &str) -> Result<pb::QueueInfo, ClientError> {
        let request = pb::GetQueueRequest {
            name: name.to_owned(),
            history: true,
        };
        Ok(self.inner.clone().get_queue(request).await?.into_inner())
    }

    /// Stops dispatch from `name` on every replica (submits are still
    /// accepted); `reason` shows in the waiting reason of its tickets.
    pub async fn pause_queue(
        &self,
        name: &str,
        reason: &str,
    ) -> Result<pb::QueueInfo, ClientError> {
        let request = pb::PauseQueueRequest {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        Ok(self.inner.clone().pause_queue(request).await?.into_inner())
    }

    /// Lets a paused queue dispatch again.
    pub async fn resume_queue(&self, name: &str) -> Result<pb::QueueInfo, ClientError> {
        let request = pb::ResumeQueueRequest {
            name: name.to_owned(),
        };
        Ok(self.inner.clone().resume_queue(request).await?.into_inner())
    }

    /// Cancels the queue's tickets in `states` (none: PENDING) created
    /// before `created_before` (none: all); returns how many.
    pub async fn purge_queue(
        &self,
        name: &str,
        states: &[pb::TicketState],
        created_before: Option<SystemTime>,
    ) -> Result<u64, ClientError> {
        let request = pb::PurgeQueueRequest {
            name: name.to_owned(),
            states: states.iter().map(|s| *s as i32).collect(),
            created_before: created_before.map(prost_types::Timestamp::from),
        };
        Ok(self
            .inner
            .clone()
            .purge_queue(request)
            .await?
            .into_inner()
            .cancelled)
    }

    /// Sets a queue's flow control: leases per second (with `burst`) and
    /// tickets running at once, over every worker and replica; 0 means
    /// unlimited.
    pub async fn set_queue_limits(
        &self,
        name: &str,
        limits: pb::QueueLimits,
    ) -> Result<pb::QueueInfo, ClientError> {
        let request = pb::SetQueueLimitsRequest {
            name: name.to_owned(),
            limits: Some(limits),
        };
        Ok(self
            .inner
            .clone()
            .set_queue_limits(request)
            .await?
            .into_inner())
    }

    /// Puts a target on a queue — `grpc(s)://HOST:PORT/pkg.Service/Method`
    /// or `http(s)://HOST:PORT/path`, optionally `?max_concurrent=N&…` —
    /// so every gateway sharing the store works its tickets by calling it;
    /// an empty `target` takes it off.
    pub async fn set_queue_target(
        &self,
        name: &str,
        target: &str,
    ) -> Result<pb::QueueInfo, ClientError> {
        let request = pb::SetQueueTargetRequest {
            name: name.to_owned(),
            target: target.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .set_queue_target(request)
            .await?
            .into_inner())
    }

    /// Connected workers on every replica; of one queue if `queue` is set.
    pub async fn list_workers(
        &self,
        queue: Option<&str>,
    ) -> Result<Vec<pb::WorkerInfo>, ClientError> {
        let request = pb::ListWorkersRequest {
            queue: queue.unwrap_or_default().to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .list_workers(request)
            .await?
            .into_inner()
            .workers)
    }

    /// Sends no new task to worker session `session_id`; the worker is told
    /// to finish what it holds and stop.
    pub async fn drain_worker(&self, session_id: &str) -> Result<pb::WorkerInfo, ClientError> {
        let request = pb::DrainWorkerRequest {
            session_id: session_id.to_owned(),
        };
        Ok(self.inner.clone().drain_worker(request).await?.into_inner())
    }

    /// Runs a FAILED, CANCELLED or EXPIRED ticket again: PENDING, the same
    /// id, a fresh attempt budget, its events continuing; returns it.
    /// `FAILED_PRECONDITION` for a ticket still pending or running, or one
    /// that succeeded (submit again); `NOT_FOUND` for an unknown, deleted or
    /// another tenant's ticket.
    pub async fn retry_ticket(&self, id: &str) -> Result<pb::Ticket, ClientError> {
        let request = pb::RetryTicketRequest { id: id.to_owned() };
        Ok(self.inner.clone().retry_ticket(request).await?.into_inner())
    }

    /// Delivers a ticket's completion callback again after it was given up
    /// (GAVE_UP), with a fresh retry window and the same webhook-id.
    pub async fn retry_callback(&self, id: &str) -> Result<pb::Ticket, ClientError> {
        let request = pb::RetryCallbackRequest { id: id.to_owned() };
        Ok(self
            .inner
            .clone()
            .retry_callback(request)
            .await?
            .into_inner())
    }

    /// [`Admin::retry_ticket`] for every ticket of `queue` in `states`
    /// (FAILED, CANCELLED and/or EXPIRED; none: FAILED) created before
    /// `created_before` (none: all); returns how many went back to PENDING.
    pub async fn retry_tickets(
        &self,
        queue: &str,
        states: &[pb::TicketState],
        created_before: Option<SystemTime>,
    ) -> Result<u64, ClientError> {
        let request = pb::RetryTicketsRequest {
            queue: queue.to_owned(),
            states: states.iter().map(|s| *s as i32).collect(),
            created_before: created_before.map(prost_types::Timestamp::from),
        };
        Ok(self
            .inner
            .clone()
            .retry_tickets(request)
            .await?
            .into_inner()
            .retried)
    }

    /// Deletes a finished ticket now (`FAILED_PRECONDITION` for one still
    /// pending or running: cancel it first); returns when. A later lookup
    /// answers `NOT_FOUND`, saying it was deleted then.
    pub async fn delete_ticket(&self, id: &str) -> Result<SystemTime, ClientError> {
        let request = pb::DeleteTicketRequest { id: id.to_owned() };
        let deleted_at = self
            .inner
            .clone()
            .delete_ticket(request)
            .await?
            .into_inner()
            .deleted_at;
        deleted_at
            .and_then(|at| SystemTime::try_from(at).ok())
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "DeleteTicket answered without a valid deleted_at ({deleted_at:?})"
                ))
            })
    }

    /// The generated client, for the methods this wrapper does not cover.
    pub fn raw(&self) -> AdminClient<Transport> {
        self.inner.clone()
    }
}
