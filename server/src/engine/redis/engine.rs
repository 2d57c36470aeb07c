//! The engine's face: [`Engine`] for [`RedisEngine`], each method one call
//! into the phase that owns it (see the module docs for the map).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use super::RedisEngine;
use crate::domain::{
    Chunk, LeaseId, NewTicket, Outcome, QueueLimits, QueueName, QueuePause, SessionId, Ticket,
    TicketId,
};
use crate::engine::{
    Applied, Claimed, Completion, Engine, EngineError, EngineListener, ListFilter, ListPage,
    ProgressReport, QueueFlow, QueueInfo, ReleaseReason, ScheduleRecord, SessionInfo, Submitted,
    WorkerRecord,
};

#[async_trait]
impl Engine for RedisEngine {
    fn set_listener(&self, listener: Arc<dyn EngineListener>) {
        let _ = self.inner.listener.set(listener);
    }

    async fn submit(&self, new: NewTicket) -> Result<Submitted, EngineError> {
        self.inner.submit(new).await
    }

    async fn submit_batch(&self, batch: Vec<NewTicket>) -> Vec<Result<Submitted, EngineError>> {
        self.inner.submit_batch(batch).await
    }

    async fn get(&self, id: TicketId) -> Result<Ticket, EngineError> {
        self.inner.get(id).await
    }

    async fn get_with_chunks(
        &self,
        id: TicketId,
        after_seq: u64,
    ) -> Result<(Ticket, Vec<Chunk>), EngineError> {
        self.inner.get_with_chunks(id, after_seq).await
    }

    async fn tickets_ahead(&self, ticket: &Ticket) -> Result<u64, EngineError> {
        self.inner.tickets_ahead(ticket).await
    }

    async fn tickets_ahead_of(&self, tickets: &[&Ticket]) -> Result<Vec<u64>, EngineError> {
        self.inner.tickets_ahead_of(tickets).await
    }

    async fn list(&self, filter: ListFilter) -> Result<ListPage, EngineError> {
        self.inner.list(filter).await
    }

    async fn cancel(&self, id: TicketId, reason: &str) -> Result<Ticket, EngineError> {
        self.inner.cancel(id, reason).await
    }

    async fn retry(&self, id: TicketId) -> Result<Ticket, EngineError> {
        self.inner.retry(id).await
    }

    async fn delete(&self, id: TicketId) -> Result<SystemTime, EngineError> {
        self.inner.delete_ticket(id).await
    }

    async fn open_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        self.inner.open_session(session, expires_at).await
    }

    async fn touch_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        self.inner.touch_session(session, expires_at).await
    }

    async fn end_session(&self, session_id: SessionId) -> Result<(), EngineError> {
        self.inner.end_session(session_id).await
    }

    async fn claim(
        &self,
        queue: &QueueName,
        sessions: &[SessionInfo],
    ) -> Result<Vec<Claimed>, EngineError> {
        self.inner.claim(queue, sessions).await
    }

    async fn release(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        reason: ReleaseReason,
    ) -> Result<(), EngineError> {
        self.inner.release(ticket_id, lease_id, reason).await
    }

    fn progress(&self, report: ProgressReport) -> Applied<()> {
        self.inner.progress(report)
    }

    fn complete(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> Applied<Completion> {
        self.inner.complete(ticket_id, lease_id, outcome)
    }

    async fn connected_workers(&self, queue: &QueueName) -> Result<Option<usize>, EngineError> {
        self.inner.connected_workers(queue).await
    }

    async fn run_timers(&self, now: SystemTime) -> Result<(), EngineError> {
        self.inner.run_timers(now).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, EngineError> {
        self.inner.queues().await
    }

    async fn queue_info(&self, queue: &QueueName) -> Result<Option<QueueInfo>, EngineError> {
        self.inner.queue_info(queue).await
    }

    async fn set_limits(
        &self,
        queue: &QueueName,
        limits: QueueLimits,
    ) -> Result<QueueInfo, EngineError> {
        self.inner.set_limits(queue, limits).await
    }

    async fn queue_flow(&self, queue: &QueueName) -> Result<QueueFlow, EngineError> {
        self.inner.queue_flow(queue).await
    }

    async fn set_target(
        &self,
        queue: &QueueName,
        target: Option<crate::domain::QueueTarget>,
    ) -> Result<(), EngineError> {
        self.inner.set_target(queue, target).await
    }

    async fn targets(&self) -> Result<Vec<(QueueName, crate::domain::QueueTarget)>, EngineError> {
        self.inner.targets().await
    }

    async fn set_pause(
        &self,
        queue: &QueueName,
        pause: Option<QueuePause>,
    ) -> Result<QueueInfo, EngineError> {
        self.inner.set_pause(queue, pause).await
    }

    fn replica(&self) -> String {
        self.inner.instance.clone()
    }

    async fn register_worker(
        &self,
        worker: &WorkerRecord,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        self.inner.register_worker(worker, expires_at).await
    }

    async fn workers(&self) -> Result<Option<Vec<WorkerRecord>>, EngineError> {
        self.inner.workers().await.map(Some)
    }

    async fn session_tickets(&self, session: &SessionInfo) -> Result<Vec<TicketId>, EngineError> {
        self.inner.session_tickets(session).await
    }

    async fn request_drain(&self, session_id: SessionId, by: &str) -> Result<(), EngineError> {
        self.inner.request_drain(session_id, by).await
    }

    async fn put_schedule(
        &self,
        record: ScheduleRecord,
        expected: u64,
    ) -> Result<u64, EngineError> {
        self.inner.put_schedule(record, expected).await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, EngineError> {
        self.inner.delete_schedule(id).await
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<ScheduleRecord>, EngineError> {
        self.inner.get_schedule(id).await
    }

    async fn list_schedules(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, EngineError> {
        self.inner.list_schedules(prefix, after, limit).await
    }

    async fn due_schedules(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, EngineError> {
        self.inner.due_schedules(now, limit).await
    }

    async fn count_schedules(&self, prefix: &str) -> Result<u64, EngineError> {
        self.inner.count_schedules(prefix).await
    }

    async fn claim_callbacks(
        &self,
        now: SystemTime,
        limit: usize,
        hold: std::time::Duration,
    ) -> Result<Vec<Ticket>, EngineError> {
        self.inner.claim_callbacks(now, limit, hold).await
    }

    async fn retry_callback(&self, id: TicketId) -> Result<Ticket, EngineError> {
        self.inner.retry_callback(id).await
    }

    async fn record_callback(
        &self,
        id: TicketId,
        seq: u64,
        outcome: crate::domain::callback::CallbackOutcome,
    ) -> Result<bool, EngineError> {
        self.inner.record_callback(id, seq, outcome).await
    }
}
