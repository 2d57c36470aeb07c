//! The engine boundary: every ticket state transition, each one atomic and
//! lease-fenced. The gRPC layer, the dispatcher and the watch hub only talk to
//! a `dyn Engine`, so the memory, durable and Redis stores are interchangeable.
//!
//! Engines report what changed through an [`EngineListener`]: ticket events
//! (in seq order per ticket), queues that gained ready work, and leases that a
//! worker must be told to drop.

pub(crate) mod durable;
mod error;
pub(crate) mod journal;
pub(crate) mod local;
#[cfg(any(test, feature = "test-support"))]
pub mod model;
mod operated;
pub(crate) mod record;
pub mod redis;
pub(crate) mod store_error;
pub(crate) mod transition;
pub mod window;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod properties;

#[cfg(test)]
conformance::engine_conformance!(memory_conformance, |config| {
    Box::pin(async move {
        let engine: std::sync::Arc<dyn crate::engine::Engine> =
            std::sync::Arc::new(crate::engine::LocalEngine::in_memory(config));
        (engine, Box::new(()) as Box<dyn std::any::Any + Send>)
    })
});

#[cfg(test)]
conformance::engine_conformance!(durable_conformance, |config| {
    Box::pin(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine: std::sync::Arc<dyn crate::engine::Engine> = std::sync::Arc::new(
            crate::engine::durable::open(&dir.path().join("store.redb"), config)
                .expect("store opens"),
        );
        (engine, Box::new(dir) as Box<dyn std::any::Any + Send>)
    })
});

#[cfg(test)]
conformance::engine_conformance!(redis_cluster_conformance, |config| {
    Box::pin(async move {
        let cluster = crate::testing::RedisCluster::start().expect("a Redis cluster starts");
        let engine: std::sync::Arc<dyn crate::engine::Engine> = std::sync::Arc::new(
            crate::engine::redis::connect(
                &cluster.url(),
                "conformance",
                &Default::default(),
                config,
            )
            .await
            .expect("the Redis engine connects to the cluster"),
        );
        (engine, Box::new(cluster) as Box<dyn std::any::Any + Send>)
    })
});

#[cfg(test)]
conformance::engine_conformance!(redis_conformance, |config| {
    Box::pin(async move {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine: std::sync::Arc<dyn crate::engine::Engine> = std::sync::Arc::new(
            crate::engine::redis::connect(
                &server.url(),
                "conformance",
                &Default::default(),
                config,
            )
            .await
            .expect("the Redis engine connects"),
        );
        (engine, Box::new(server) as Box<dyn std::any::Any + Send>)
    })
});

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::domain::backoff::Backoff;
use crate::domain::ticket::{EventKind, Payload};
use crate::domain::{
    Chunk, Lease, LeaseId, NewTicket, Outcome, Progress, QueueLimits, QueueName, QueuePause,
    QueueTarget, SessionId, Ticket, TicketId, TicketState,
};

pub use error::EngineError;
pub use local::LocalEngine;
pub use operated::{QueueFlow, QueueInfo, StateCounts, WorkerRecord};
pub use store_error::{ErrorId, StoreError, StoreErrorKind};

/// Settings every engine applies to transitions.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Delay between retries.
    pub backoff: Backoff,
    /// Attempts that may end in a lost worker before the ticket is FAILED: a
    /// poison ticket that crashes every worker cannot take the fleet down.
    pub max_worker_losses: u32,
    /// How long finished tickets are kept.
    pub result_retention: Duration,
    /// How long a deleted ticket's tombstone still explains its absence.
    pub tombstone_retention: Duration,
    /// Pending tickets one queue may hold before submits are refused.
    pub max_pending_per_queue: usize,
    /// Bytes of request bodies and metadata that tickets may hold in all
    /// (see [`request_bytes`]): many queues, or many tenants, cannot add up
    /// past it. Unfinished tickets hold theirs, and so do FAILED, CANCELLED
    /// and EXPIRED ones until they are retried to success, deleted or
    /// retention ends (an operator may retry them, so their body is kept);
    /// without that the budget would no longer bound memory.
    pub max_pending_bytes: u64,
    /// Bytes of partial output one ticket may store: a worker streaming
    /// output without end cannot grow the store (or a memory gateway) by
    /// more than this per ticket.
    pub max_output_bytes_per_ticket: u64,
    /// Bytes of partial output the gateway holds in memory in all (the
    /// memory store's chunks until retention; the durable store's only
    /// while their tickets run, then they live on disk alone).
    pub max_output_bytes: u64,
    /// Hand workers only tickets whose submit is on disk. Off, a ticket can
    /// run while its submit's commit is in flight: if the gateway crashes in
    /// that millisecond, the ticket is gone after the restart although its
    /// task may have run — its submitter got no answer and submits again,
    /// so the work runs twice (at-least-once, as after a lost lease). On, a
    /// task waits for that commit, which costs a third commit on the path
    /// of a ticket dispatched the moment it arrives (BENCHMARKS.md section
    /// 11: durable e2e at 1 in flight −35 % throughput, p50 +400 µs; −6 %
    /// at 64 in flight).
    pub dispatch_stored_only: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(60),
            },
            max_worker_losses: 3,
            result_retention: Duration::from_secs(24 * 3600),
            tombstone_retention: Duration::from_secs(24 * 3600),
            max_pending_per_queue: 1_000_000,
            max_pending_bytes: 2 * 1024 * 1024 * 1024,
            max_output_bytes_per_ticket: 64 * 1024 * 1024,
            max_output_bytes: 1024 * 1024 * 1024,
            dispatch_stored_only: false,
        }
    }
}

/// The outcome of a submit.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The ticket (the original one for a repeated idempotency key).
    pub ticket: Ticket,
    /// False when an idempotency key matched an existing ticket.
    pub created: bool,
    /// Tickets ahead of it in its queue, when the engine learnt that with
    /// the submit itself (a remote store: saves a read to show it).
    pub tickets_ahead: Option<u64>,
}

/// A ticket leased to a worker session.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Snapshot after the lease (includes the payload); shared, as it is
    /// handed through the dispatcher to a session.
    pub ticket: Arc<Ticket>,
    /// The new lease.
    pub lease: Lease,
}

/// The outcome of a fenced result report.
#[derive(Debug, Clone)]
pub enum Completion {
    /// Recorded now; the ticket after the transition (terminal, or PENDING
    /// again for a retry).
    Recorded(Ticket),
    /// This very lease's result was recorded before (a resend).
    Duplicate(Ticket),
}

/// A worker's progress report.
#[derive(Debug, Clone)]
pub struct ProgressReport {
    /// The ticket.
    pub ticket_id: TicketId,
    /// Must be the current lease.
    pub lease_id: LeaseId,
    /// New progress, if any.
    pub progress: Option<Progress>,
    /// A partial-output chunk, if any.
    pub output: Option<Payload>,
}

/// Why a lease is given back without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Never reached the worker: not an attempt.
    Undelivered,
    /// The worker went away holding it.
    WorkerLost,
    /// The gateway restarted while the attempt ran (counts like a lost
    /// worker: a ticket that crashes the gateway is a poison ticket too).
    GatewayRestarted,
    /// A keys reload revoked the worker's key while the attempt ran: not
    /// the ticket's doing, so it costs no attempt (an operator rotating
    /// keys must not use up a ticket's retries or fail it).
    KeyRevoked,
}

/// Filters and paging for `list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only these states (empty: all).
    pub states: Vec<TicketState>,
    /// Page length.
    pub page_size: usize,
    /// Start past this id, in the listing's order: above it oldest first,
    /// below it newest first.
    pub after: Option<TicketId>,
    /// Only this tenant's tickets (`None`: every tenant's).
    pub tenant: Option<Arc<str>>,
    /// Only tickets whose metadata holds every one of these entries.
    pub metadata: Vec<(String, String)>,
    /// Only tickets created at or after this time.
    pub created_after: Option<SystemTime>,
    /// Only tickets created before this time.
    pub created_before: Option<SystemTime>,
    /// Descending id order (newest first) rather than ascending.
    pub newest_first: bool,
    /// Only tickets whose callback is in one of these states (empty: all).
    pub callback_states: Vec<crate::domain::callback::CallbackState>,
}

impl ListFilter {
    /// Whether `ticket` passes the queue, state, tenant, metadata,
    /// creation-time and callback filters (the cursor is [`ListFilter::past_cursor`]'s).
    pub fn admits(&self, ticket: &Ticket) -> bool {
        self.queue.as_ref().is_none_or(|q| *q == ticket.queue)
            && (self.states.is_empty() || self.states.contains(&ticket.state))
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| ticket.tenant.as_deref() == Some(&**t))
            && self
                .metadata
                .iter()
                .all(|(key, value)| ticket.metadata.get(key) == Some(value))
            && self.created_after.is_none_or(|at| ticket.created_at >= at)
            && self.created_before.is_none_or(|at| ticket.created_at < at)
            && (self.callback_states.is_empty()
                || ticket
                    .callback
                    .as_deref()
                    .is_some_and(|c| self.callback_states.contains(&c.state)))
    }

    /// Whether `id` lies past the page cursor, in the listing's order.
    pub fn past_cursor(&self, id: TicketId) -> bool {
        self.after
            .is_none_or(|after| self.order_key(id) > self.order_key(after))
    }

    /// `id`'s place in the listing's order, as a number that sorts that
    /// way: the id's own bits oldest first (UUID v7 order is creation
    /// order), their complement newest first.
    pub fn order_key(&self, id: TicketId) -> u128 {
        let bits = id.0.as_u128();
        if self.newest_first { !bits } else { bits }
    }
}

/// What a ticket's request weighs against
/// [`EngineConfig::max_pending_bytes`] while it holds it (see
/// [`Ticket::holds_request`]): its encoded body and metadata.
pub fn request_bytes(
    payload: &crate::domain::ticket::Payload,
    metadata: &HashMap<String, String>,
) -> u64 {
    let metadata: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    (prost::Message::encoded_len(payload) + metadata) as u64
}

/// The refusal of a submit past [`EngineConfig::max_pending_bytes`].
pub fn pending_bytes_full(limit: u64) -> EngineError {
    EngineError::LimitExceeded(format!(
        "the gateway's budget for pending request bytes is full ({limit} bytes, --max-pending-bytes; unfinished tickets and failed, cancelled or expired ones kept for a retry count); retry later, add workers, or delete finished tickets that will not be retried"
    ))
}

/// An idempotency key as engines store it: scoped to its tenant, so two
/// tenants' equal keys never meet. The encoding is injective: a tenant's
/// form starts with the tenant's length in bytes (a digit), the admin form
/// (no tenant) with `-`, so no key a client picks can reach into another
/// tenant's scope (a separator alone could be typed into the key).
pub fn idempotency_scope(tenant: Option<&str>, key: &str) -> String {
    match tenant {
        Some(tenant) => format!("{}:{tenant}:{key}", tenant.len()),
        None => format!("-:{key}"),
    }
}

/// A schedule as engines store it: opaque bytes (`schedules::record`)
/// beside what engines index it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// Its id as stored (`tenant/id` for a tenant's).
    pub id: String,
    /// Bumped by every write: writes are conditional on it.
    pub revision: u64,
    /// When the schedule next needs its runner (`None`: paused or ended).
    pub due: Option<SystemTime>,
    /// The encoded schedule.
    pub body: bytes::Bytes,
}

/// One page of `list`.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// In the listing's order (id order, or its reverse newest first).
    pub tickets: Vec<Ticket>,
    /// Where the next page starts, if there is one.
    pub next: Option<TicketId>,
}

/// A worker session's registration.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Unique per connection.
    pub session_id: SessionId,
    /// For explanations.
    pub worker_name: Arc<str>,
    /// The queues it serves, so any gateway sharing the store can tell
    /// whether a queue has workers.
    pub queues: Arc<[QueueName]>,
}

/// One change of a ticket, for watchers.
#[derive(Debug, Clone)]
pub struct TicketChange {
    /// What changed.
    pub kind: EventKind,
    /// Snapshot after the change (its `seq` is the event's seq).
    pub ticket: Arc<Ticket>,
    /// The chunk of an output event.
    pub output: Option<Payload>,
}

/// Why a worker is told to drop a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// A caller cancelled the ticket.
    Cancelled,
    /// The ticket's deadline passed.
    Expired,
    /// The attempt's time budget passed.
    AttemptTimeout,
}

/// A lease taken away from a worker that may still be running it.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// Who holds it.
    pub session_id: SessionId,
    /// The ticket.
    pub ticket_id: TicketId,
    /// The lease.
    pub lease_id: LeaseId,
    /// Why.
    pub reason: RevokeReason,
    /// For the worker's logs.
    pub message: String,
}

/// A ticket as it was before a committed transition: with the ticket after
/// it, enough to tell what happened (created, leased, retried, finished) and
/// how long the step took, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct Before {
    /// `None` for a ticket the transition created.
    pub state: Option<TicketState>,
    /// Since when it has been ready to run, if PENDING.
    pub ready_since: SystemTime,
    /// When the current attempt started, if RUNNING.
    pub attempt_started: Option<SystemTime>,
}

impl Before {
    /// Captures `ticket` before a transition changes it.
    pub fn of(ticket: &Ticket) -> Self {
        Self {
            state: Some(ticket.state),
            ready_since: ticket
                .not_before
                .map_or(ticket.updated_at, |t| t.max(ticket.updated_at)),
            attempt_started: ticket.lease.as_ref().map(|l| l.leased_at),
        }
    }

    /// A ticket that did not exist.
    pub fn created(now: SystemTime) -> Self {
        Self {
            state: None,
            ready_since: now,
            attempt_started: None,
        }
    }
}

/// Receives what engines change. Called synchronously, possibly under the
/// engine's own locks: implementations must be quick and must not call back
/// into the engine.
pub trait EngineListener: Send + Sync + 'static {
    /// Whether anyone watches `id` (so engines can skip building snapshots).
    fn watching(&self, id: TicketId) -> bool;
    /// A ticket changed; per ticket, calls come in seq order.
    fn ticket_changed(&self, change: TicketChange);
    /// `queue` may have gained ready tickets.
    fn queue_ready(&self, queue: &QueueName);
    /// A worker must stop working on a lease.
    fn lease_revoked(&self, revocation: Revocation);
    /// An operator asked (on any replica) that this session get no new
    /// tasks and its worker leave once idle.
    fn drain_requested(&self, _session_id: SessionId, _by: &str) {}
    /// Events may have been missed (a shared store's event feed dropped):
    /// every watcher must re-read its ticket and every queue look for work.
    fn resync(&self) {}
    /// A transition this engine committed (each is reported by the one
    /// replica that made it), for metrics.
    fn transitioned(&self, _before: Before, _after: &Ticket, _now: SystemTime) {}
}

/// A transition whose place in its ticket's order was fixed when the method
/// was called (a worker's progress and result are applied in the order they
/// arrived), and which resolves once it is durable. A worker session can thus
/// have many results waiting for the disk at once, and group commit covers
/// them with one fsync.
pub type Applied<T> = futures::future::BoxFuture<'static, Result<T, EngineError>>;

/// The narrow async boundary around ticket storage. Every mutating method is
/// one atomic transition; results and progress are accepted only for the
/// current lease.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Installs the listener; called once before serving.
    fn set_listener(&self, listener: Arc<dyn EngineListener>);

    /// Stores a new ticket, or returns the one its idempotency key names.
    async fn submit(&self, new: NewTicket) -> Result<Submitted, EngineError>;

    /// Each ticket as [`Engine::submit`] stores it (each may be refused on
    /// its own; a key repeated in `batch` yields one ticket), committed
    /// together: one journal commit (one sync) on the durable store, as few
    /// `commit.lua` calls as the group commit allows on Redis. In order.
    async fn submit_batch(&self, batch: Vec<NewTicket>) -> Vec<Result<Submitted, EngineError>>;

    /// The current snapshot.
    async fn get(&self, id: TicketId) -> Result<Ticket, EngineError>;

    /// The snapshot plus stored output chunks with seq > `after_seq`.
    async fn get_with_chunks(
        &self,
        id: TicketId,
        after_seq: u64,
    ) -> Result<(Ticket, Vec<Chunk>), EngineError>;

    /// How many ready tickets run before this PENDING one.
    async fn tickets_ahead(&self, ticket: &Ticket) -> Result<u64, EngineError>;

    /// [`Engine::tickets_ahead`] of each ticket, in order: a listed page
    /// asks once, so an engine with round trips answers in a bounded
    /// number of them (the default asks per ticket, for engines where
    /// asking is a memory read).
    async fn tickets_ahead_of(&self, tickets: &[&Ticket]) -> Result<Vec<u64>, EngineError> {
        let mut ahead = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            ahead.push(self.tickets_ahead(ticket).await?);
        }
        Ok(ahead)
    }

    /// A page of the tickets `filter` admits, in id order (or its reverse,
    /// newest first), past the filter's cursor. A page costs a bounded
    /// number of store round trips; it may come back short of
    /// `page_size`, with a cursor to continue, when an engine examined as
    /// many tickets as one call may.
    async fn list(&self, filter: ListFilter) -> Result<ListPage, EngineError>;

    /// Cancels a pending or running ticket (a running one's lease is revoked).
    async fn cancel(&self, id: TicketId, reason: &str) -> Result<Ticket, EngineError>;

    /// An operator's retry: a FAILED, CANCELLED or EXPIRED ticket goes back
    /// to PENDING, with the same id, its seq continuing, a fresh attempt
    /// budget and a new deadline (see `transition::retry`); its old output
    /// is dropped. Its queue is announced ready. A PENDING or RUNNING
    /// ticket is `NotFinished`, a SUCCEEDED one `SucceededNotRetried`.
    async fn retry(&self, id: TicketId) -> Result<Ticket, EngineError>;

    /// Deletes a finished ticket now, as retention would: its record,
    /// body and output go, a tombstone stays (lookups answer
    /// `ResultExpired` with the returned time). An unfinished ticket is
    /// `NotFinished` (cancel it first).
    async fn delete(&self, id: TicketId) -> Result<SystemTime, EngineError>;

    /// Registers a worker session (its Hello) until `expires_at`; its
    /// leases are lost when it is not renewed in time.
    async fn open_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError>;

    /// Renews a registered session until `expires_at` (never shortens it).
    /// A session that expired (a timer pass, here or on another replica,
    /// gave its leases back) or ended is not revived: `SessionLost`, and
    /// the worker reconnects as a new session. Reviving it would let new
    /// leases hang on a session whose cleanup already ran.
    async fn touch_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError>;

    /// Lets go of the store (a file, connections) at the end of shutdown,
    /// though tasks still finishing may hold the engine: a gateway started
    /// next on the same file opens it at once. Nothing is called after.
    async fn close(&self) {}

    /// Ends a session: its leases are lost (requeued, or FAILED past the caps).
    async fn end_session(&self, session_id: SessionId) -> Result<(), EngineError>;

    /// Leases ready tickets of `queue` (without waiting for them to be
    /// durable: see the local engine), highest priority first and FIFO
    /// within a priority: at most one per entry of `sessions` (a session may
    /// appear several times), each lease naming its session. Fewer come back
    /// when the queue runs dry.
    async fn claim(
        &self,
        queue: &QueueName,
        sessions: &[SessionInfo],
    ) -> Result<Vec<Claimed>, EngineError>;

    /// How many tickets a claim on `queue` would find right now, when the
    /// engine can tell without I/O; `None` when it cannot. The dispatcher
    /// takes only that many worker credits for a claim, so a trickle of
    /// submits does not take (and give back) every free credit each time.
    fn ready_count(&self, _queue: &QueueName) -> Option<usize> {
        None
    }

    /// Gives a lease back without a result.
    async fn release(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        reason: ReleaseReason,
    ) -> Result<(), EngineError>;

    /// Records progress and/or an output chunk for the current lease.
    /// Applied at call time (see [`Applied`]).
    fn progress(&self, report: ProgressReport) -> Applied<()>;

    /// Records the result of the current lease: success, retry or failure.
    /// Applied at call time (see [`Applied`]).
    fn complete(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> Applied<Completion>;

    /// Worker sessions serving `queue` on every gateway sharing this store,
    /// when the store is shared; `None` when only this gateway's own
    /// sessions exist.
    async fn connected_workers(&self, _queue: &QueueName) -> Result<Option<usize>, EngineError> {
        Ok(None)
    }

    /// Applies everything due by `now`: backoffs ending, deadlines, attempt
    /// timeouts, expired sessions and retention.
    async fn run_timers(&self, now: SystemTime) -> Result<(), EngineError>;

    /// Every queue used so far (by a submit or a worker), with its counts,
    /// oldest pending ticket and pause; without reading any ticket.
    async fn queues(&self) -> Result<Vec<QueueInfo>, EngineError>;

    /// One queue; `None` if it was never used.
    async fn queue_info(&self, queue: &QueueName) -> Result<Option<QueueInfo>, EngineError>;

    /// What holds `queue`'s tickets back, for waiting reasons: cheap (a
    /// shared store's engine may answer from a cache a moment old;
    /// dispatch itself obeys the stored pause and limits exactly).
    async fn queue_flow(&self, queue: &QueueName) -> Result<QueueFlow, EngineError> {
        Ok(self
            .queue_info(queue)
            .await?
            .map(|info| QueueFlow {
                pause: info.pause,
                limits: info.limits,
                running: info.counts.running,
            })
            .unwrap_or_default())
    }

    /// Sets `queue`'s flow control, for every gateway sharing the store and
    /// across restarts: claims take at most what the token bucket and the
    /// cap on running tickets allow. Creates the queue if never used.
    async fn set_limits(
        &self,
        queue: &QueueName,
        limits: QueueLimits,
    ) -> Result<QueueInfo, EngineError>;

    /// Sets (`Some`) or clears `queue`'s admin-set target, for every
    /// gateway sharing the store and across restarts. Setting one creates
    /// the queue if never used.
    async fn set_target(
        &self,
        queue: &QueueName,
        target: Option<QueueTarget>,
    ) -> Result<(), EngineError>;

    /// Every queue's admin-set target, by queue name. Each gateway reads
    /// them every second (and after its own changes) to start and stop the
    /// in-process workers that call them: cheap, one read.
    async fn targets(&self) -> Result<Vec<(QueueName, QueueTarget)>, EngineError>;

    /// This gateway's name among the replicas sharing the store.
    fn replica(&self) -> String {
        "local".into()
    }

    /// Publishes what the admin API shows of a worker connected here (a
    /// shared store lists it to every replica; a local one lists the
    /// dispatcher's own sessions and needs nothing).
    /// Until `expires_at`, unless registered again (as each renewal does).
    async fn register_worker(
        &self,
        _worker: &WorkerRecord,
        _expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Every worker connected to any gateway sharing the store; `None`
    /// when only this gateway's own exist.
    async fn workers(&self) -> Result<Option<Vec<WorkerRecord>>, EngineError> {
        Ok(None)
    }

    /// The tickets `session` holds leases on now.
    async fn session_tickets(&self, session: &SessionInfo) -> Result<Vec<TicketId>, EngineError>;

    /// Asks the gateway holding `session_id`'s stream to drain it (see
    /// [`EngineListener::drain_requested`]); a local engine has no other
    /// gateway to ask.
    async fn request_drain(&self, _session_id: SessionId, _by: &str) -> Result<(), EngineError> {
        Ok(())
    }

    /// Writes a schedule if its stored revision is `expected` (0: it must
    /// not exist yet) and returns the new revision, `expected + 1`:
    /// `ScheduleExists` or `ScheduleChanged` otherwise. Replicas that race
    /// to handle the same slot thus write it once.
    async fn put_schedule(&self, record: ScheduleRecord, expected: u64)
    -> Result<u64, EngineError>;

    /// Deletes a schedule; whether it existed.
    async fn delete_schedule(&self, id: &str) -> Result<bool, EngineError>;

    /// One schedule.
    async fn get_schedule(&self, id: &str) -> Result<Option<ScheduleRecord>, EngineError>;

    /// Up to `limit` schedules whose ids start with `prefix`, after `after`
    /// in id order.
    async fn list_schedules(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, EngineError>;

    /// How many schedules' ids start with `prefix` (a tenant's count, for
    /// its cap).
    async fn count_schedules(&self, prefix: &str) -> Result<u64, EngineError>;

    /// Up to `limit` schedules due by `now`, earliest first.
    async fn due_schedules(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, EngineError>;

    /// Up to `limit` terminal tickets whose completion callbacks are due by
    /// `now`, each held back from later claims (on every replica) until
    /// `now + hold`: the caller delivers them meanwhile, and a delivery
    /// whose deliverer died is claimed again after the hold.
    async fn claim_callbacks(
        &self,
        now: SystemTime,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<Ticket>, EngineError>;

    /// Makes `id`'s given-up callback due again now (an operator's retry);
    /// `CallbackNotRetried` unless it gave up. Returns the ticket.
    async fn retry_callback(&self, id: TicketId) -> Result<Ticket, EngineError>;

    /// Records an attempt to deliver `id`'s callback for its end `seq`
    /// (fenced: false, and nothing changed, when the delivery is settled or
    /// the ticket ended again since). Durable before it answers.
    async fn record_callback(
        &self,
        id: TicketId,
        seq: u64,
        outcome: crate::domain::callback::CallbackOutcome,
    ) -> Result<bool, EngineError>;

    /// Pauses (`Some`) or resumes (`None`) dispatch from `queue`, for every
    /// gateway sharing the store and across restarts: a paused queue's
    /// tickets are not claimed. A resumed queue is announced ready.
    /// Creates the queue if it was never used.
    async fn set_pause(
        &self,
        queue: &QueueName,
        pause: Option<QueuePause>,
    ) -> Result<QueueInfo, EngineError>;
}

#[cfg(test)]
mod tests {
    use super::idempotency_scope;

    #[test]
    fn idempotency_scopes_are_injective() {
        let pairs = [
            (None, "t1\u{1f}k"),
            (Some("t1"), "k"),
            (None, "1:a:b"),
            (Some("a"), "b"),
            (Some("a:b"), "c"),
            (Some("a"), "b:c"),
            (None, "-:k"),
            (Some(""), "k"),
            (None, "k"),
        ];
        let scoped: std::collections::HashSet<String> = pairs
            .iter()
            .map(|(tenant, key)| idempotency_scope(*tenant, key))
            .collect();
        assert_eq!(scoped.len(), pairs.len(), "{scoped:?}");
    }
}
