//! The ticket model: states and their legal transitions, the lease that fences
//! a running attempt, and the events that watchers see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::callback::Callback;
use super::{LeaseId, QueueName, SessionId, TicketId};

/// Request, result and partial-output bodies: the wire type itself, so a
/// binary body (`bytes::Bytes`) travels from submit to worker without a copy.
pub type Payload = asyncgate_proto::v1::Payload;

/// gRPC status codes (google.rpc.Code numbering) used in ticket errors,
/// spelled out here so the domain needs no tonic.
pub mod codes {
    /// The operation was cancelled.
    pub const CANCELLED: i32 = 1;
    /// Unknown error.
    pub const UNKNOWN: i32 = 2;
    /// The deadline passed.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// The work was aborted (a worker was lost).
    pub const ABORTED: i32 = 10;
    /// The service is unavailable.
    pub const UNAVAILABLE: i32 = 14;
}

/// Where a ticket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketState {
    /// Stored, waiting for a worker (possibly in backoff).
    Pending,
    /// Leased to a worker.
    Running,
    /// A worker returned a result.
    Succeeded,
    /// Out of attempts, or a non-retryable failure.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
    /// Its deadline passed.
    Expired,
}

impl TicketState {
    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// The state named `name` (as [`Self::name`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
            Self::Expired,
        ]
        .into_iter()
        .find(|state| state.name() == name)
    }

    /// The state's name, in lower case.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

/// An error recorded on a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketError {
    /// gRPC code numbering.
    pub code: i32,
    /// What happened, for people.
    pub message: String,
    /// Whether another attempt might succeed.
    pub retryable: bool,
}

/// The latest progress a worker reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u32,
    /// Free text.
    pub message: String,
}

/// One attempt's claim on a ticket. Only the holder of the current `lease_id`
/// may record a result (fencing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Names this attempt.
    pub lease_id: LeaseId,
    /// The worker connection that holds it.
    pub session_id: SessionId,
    /// The worker's self-declared name, for explanations.
    pub worker_name: Arc<str>,
    /// When the attempt started.
    pub leased_at: SystemTime,
    /// When the attempt times out (attempt_timeout or the ticket deadline).
    pub attempt_deadline: Option<SystemTime>,
}

/// The ended attempts a ticket keeps (the oldest are dropped past this).
pub const MAX_ATTEMPT_HISTORY: usize = 16;

/// One attempt after it ended, for the ticket's history.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// Its number within its run (1 for the first).
    pub number: u32,
    /// The lease it ran under.
    pub lease_id: LeaseId,
    /// The worker connection that held it.
    pub session_id: SessionId,
    /// The worker's name.
    pub worker_name: Arc<str>,
    /// Lease time.
    pub started_at: SystemTime,
    /// When it ended.
    pub ended_at: SystemTime,
    /// How it ended; `None` when its result was recorded.
    pub error: Option<TicketError>,
}

/// A validated submit request.
#[derive(Debug, Clone)]
pub struct NewTicket {
    /// Chosen before the submit, so that the submitter can watch the ticket
    /// from the moment it exists (`Execute` misses no event and needs no
    /// read-back). A fresh UUID v7 per submit; an id already stored is
    /// refused.
    pub id: TicketId,
    /// Target queue.
    pub queue: QueueName,
    /// Request body.
    pub payload: Payload,
    /// Higher first.
    pub priority: i32,
    /// Deduplicates repeated submits.
    pub idempotency_key: Option<String>,
    /// Caller's labels.
    pub metadata: HashMap<String, String>,
    /// Budget from submit to result.
    pub timeout: Option<Duration>,
    /// Budget of one attempt.
    pub attempt_timeout: Option<Duration>,
    /// Already defaulted by the edge.
    pub max_attempts: u32,
    /// Whose ticket it is (API keys with tenants); `None` without keys.
    pub tenant: Option<Arc<str>>,
    /// A delayed submit: PENDING, and not run, before this time.
    pub not_before: Option<SystemTime>,
    /// Where to deliver the terminal ticket (validated by the edge).
    pub callback: Option<Arc<str>>,
}

/// How an attempt ended, as the worker reported it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The result body.
    Success(Payload),
    /// A failure; retried if `retryable` and attempts remain.
    Failure(TicketError),
    /// A failure whose source asked for no retry before `after` (gRPC
    /// `grpc-retry-pushback-ms`, HTTP `Retry-After`): retried as a failure
    /// is, with a backoff of at least `after`.
    RetryAfter(TicketError, std::time::Duration),
}

/// A stored partial-output chunk.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The event seq it was published with.
    pub seq: u64,
    /// The chunk.
    pub output: Payload,
}

/// A ticket: the stored record and the snapshot handed out.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Time-ordered id.
    pub id: TicketId,
    /// Its queue.
    pub queue: QueueName,
    /// Current state.
    pub state: TicketState,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempt budget.
    pub max_attempts: u32,
    /// Higher first.
    pub priority: i32,
    /// Caller's labels (shared: snapshots are frequent).
    pub metadata: Arc<HashMap<String, String>>,
    /// The request body (shared: it is handed to every attempt). Kept while
    /// the ticket may still run: unfinished, or finished other than
    /// SUCCEEDED (an operator may retry it); empty once it succeeded (see
    /// [`Ticket::holds_request`]).
    pub payload: Arc<Payload>,
    /// Submit time.
    pub created_at: SystemTime,
    /// Last change.
    pub updated_at: SystemTime,
    /// When it became terminal.
    pub finished_at: Option<SystemTime>,
    /// When the current run must end: created_at + timeout, or, after an
    /// operator's retry, the retry's time + timeout.
    pub deadline: Option<SystemTime>,
    /// Budget from submit (or retry) to result, from which `deadline` is
    /// set.
    pub timeout: Option<Duration>,
    /// Budget of one attempt.
    pub attempt_timeout: Option<Duration>,
    /// The result, once SUCCEEDED.
    pub result: Option<Payload>,
    /// The terminal error, or the last attempt's error while retrying.
    pub error: Option<TicketError>,
    /// Latest progress report.
    pub progress: Option<Progress>,
    /// Seq of the latest event.
    pub seq: u64,
    /// The key it was submitted with.
    pub idempotency_key: Option<String>,
    /// The current lease while RUNNING.
    pub lease: Option<Lease>,
    /// The lease whose result was recorded, to tell a resend from a stale one.
    pub completed_by: Option<LeaseId>,
    /// While PENDING in backoff, or scheduled: not before this.
    pub not_before: Option<SystemTime>,
    /// The time a delayed submit asked for (kept after it came due): the
    /// ticket's deadline and its place among the pending count from it.
    pub scheduled_for: Option<SystemTime>,
    /// Attempts that ended because the worker was lost (poison-ticket cap).
    pub worker_losses: u32,
    /// The latest attempts that ended, oldest first (at most
    /// [`MAX_ATTEMPT_HISTORY`]); shared, as snapshots are frequent and most
    /// tickets share the one empty history.
    pub attempts: Arc<Vec<AttemptRecord>>,
    /// Its completion callback, if it has one (boxed: most tickets have
    /// none, and a pending ticket's size is a product promise).
    pub callback: Option<Box<Callback>>,
    /// Bytes of partial output stored for it (the per-ticket output budget).
    pub output_bytes: u64,
    /// Whose ticket it is: other tenants never see it.
    pub tenant: Option<Arc<str>>,
    /// FIFO position within its priority, assigned each time it is queued.
    pub enqueue_seq: u64,
    /// Engine bookkeeping, not stored: the journal append that last wrote
    /// this record, which a reader waits for before showing it.
    pub journal_seq: u64,
}

/// A history as a ticket holds it: the empty ones share one allocation.
pub fn attempt_history(attempts: Vec<AttemptRecord>) -> Arc<Vec<AttemptRecord>> {
    static EMPTY: std::sync::OnceLock<Arc<Vec<AttemptRecord>>> = std::sync::OnceLock::new();
    if attempts.is_empty() {
        EMPTY.get_or_init(Arc::default).clone()
    } else {
        Arc::new(attempts)
    }
}

/// Most tickets carry no metadata: they all share one empty map.
fn shared_metadata(metadata: HashMap<String, String>) -> Arc<HashMap<String, String>> {
    static EMPTY: std::sync::OnceLock<Arc<HashMap<String, String>>> = std::sync::OnceLock::new();
    if metadata.is_empty() {
        EMPTY.get_or_init(Arc::default).clone()
    } else {
        Arc::new(metadata)
    }
}

#[cfg(test)]
impl NewTicket {
    /// A plain request on `queue` for tests: empty payload, priority 0, no
    /// key, no deadlines, three attempts.
    pub(crate) fn for_test(queue: crate::domain::QueueName) -> Self {
        Self {
            id: TicketId::new(),
            queue,
            payload: Default::default(),
            priority: 0,
            idempotency_key: None,
            metadata: Default::default(),
            timeout: None,
            attempt_timeout: None,
            max_attempts: 3,
            tenant: None,
            not_before: None,
            callback: None,
        }
    }
}

impl Ticket {
    /// Whether the ticket keeps its request body, and so weighs on the
    /// pending-bytes budget: while it may still run — unfinished, or
    /// FAILED, CANCELLED or EXPIRED, which an operator may retry. A
    /// SUCCEEDED ticket never runs again.
    pub fn holds_request(&self) -> bool {
        self.state != TicketState::Succeeded
    }

    /// Drops the request body of a ticket that will not run again (it
    /// succeeded, or it is being deleted): no attempt needs it and no API
    /// shows it, so retention keeps only the result. Returns what the
    /// request weighed (see `engine::request_bytes`), or 0 if it was
    /// already forgotten, so that budgets are released once.
    pub fn forget_request(&mut self) -> u64 {
        static EMPTY: std::sync::OnceLock<Arc<Payload>> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(Arc::default);
        if Arc::ptr_eq(&self.payload, empty) {
            return 0;
        }
        let weight = crate::engine::request_bytes(&self.payload, &self.metadata);
        self.payload = empty.clone();
        weight
    }

    /// A fresh PENDING ticket at seq 1 (its creation is its first event).
    /// A delayed one waits until its `not_before`, and its `timeout` counts
    /// from then; a `not_before` already past runs at once.
    pub fn create(id: TicketId, new: NewTicket, now: SystemTime) -> Self {
        let scheduled_for = new.not_before.filter(|at| *at > now);
        let start = scheduled_for.unwrap_or(now);
        Self {
            id,
            queue: new.queue,
            state: TicketState::Pending,
            attempt: 0,
            max_attempts: new.max_attempts,
            priority: new.priority,
            metadata: shared_metadata(new.metadata),
            payload: Arc::new(new.payload),
            created_at: now,
            updated_at: now,
            finished_at: None,
            deadline: new.timeout.map(|t| start + t),
            timeout: new.timeout,
            attempt_timeout: new.attempt_timeout,
            result: None,
            error: None,
            progress: None,
            seq: 1,
            idempotency_key: new.idempotency_key,
            lease: None,
            completed_by: None,
            not_before: scheduled_for,
            scheduled_for,
            worker_losses: 0,
            attempts: attempt_history(Vec::new()),
            callback: new.callback.map(|url| Box::new(Callback::new(url))),
            output_bytes: 0,
            tenant: new.tenant,
            enqueue_seq: 0,
            journal_seq: 0,
        }
    }

    /// Since when the ticket has been due: its submit, or the time a
    /// delayed submit asked for. The pending-by-age indexes sort by it, so
    /// a queue's oldest pending ticket is the one waiting longest to run.
    pub fn due_at(&self) -> SystemTime {
        self.scheduled_for.unwrap_or(self.created_at)
    }

    /// Moves to a terminal state.
    pub fn finish(&mut self, state: TicketState, error: Option<TicketError>, now: SystemTime) {
        debug_assert!(state.is_terminal());
        self.state = state;
        // A terminal ticket describes its final outcome: a success carries
        // no error of an earlier, interrupted attempt.
        if state == TicketState::Succeeded {
            self.error = None;
        } else if error.is_some() {
            self.error = error;
        }
        self.lease = None;
        self.not_before = None;
        self.finished_at = Some(now);
        self.touch(now);
        if let Some(callback) = &mut self.callback {
            callback.make_due(self.seq, now);
        }
    }

    /// Ends the current lease, if any, into the history: `error` says how
    /// the attempt ended (`None`: its result was recorded).
    pub fn close_attempt(&mut self, error: Option<&TicketError>, now: SystemTime) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let attempts = Arc::make_mut(&mut self.attempts);
        if attempts.len() >= MAX_ATTEMPT_HISTORY {
            attempts.remove(0);
        }
        attempts.push(AttemptRecord {
            number: self.attempt,
            lease_id: lease.lease_id,
            session_id: lease.session_id,
            worker_name: lease.worker_name,
            started_at: lease.leased_at,
            ended_at: now,
            error: error.cloned(),
        });
    }

    /// When a finished ticket may be deleted: `retention` after it ended,
    /// but not while its completion callback is still to be delivered (then
    /// a minute after its next attempt, and again after that one).
    pub fn retained_until(&self, retention: Duration) -> SystemTime {
        let ended = self.finished_at.unwrap_or(self.updated_at) + retention;
        match self.callback.as_deref() {
            Some(c) if c.state == super::callback::CallbackState::Pending => {
                let next = c.next_at.unwrap_or(ended) + Duration::from_secs(60);
                ended.max(next)
            }
            _ => ended,
        }
    }

    /// Records a change: a new event seq and update time.
    pub fn touch(&mut self, now: SystemTime) {
        self.seq += 1;
        self.updated_at = now;
    }

    /// When the current attempt must end, given its start.
    pub fn attempt_deadline(&self, leased_at: SystemTime) -> Option<SystemTime> {
        let by_attempt = self.attempt_timeout.map(|t| leased_at + t);
        match (by_attempt, self.deadline) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        }
    }

    /// Whether the current lease is `lease_id`.
    pub fn is_leased_by(&self, lease_id: LeaseId) -> bool {
        self.state == TicketState::Running
            && self.lease.as_ref().is_some_and(|l| l.lease_id == lease_id)
    }
}

/// What a watcher is told about one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// State changed.
    State,
    /// Progress reported.
    Progress,
    /// Partial output.
    Output,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_ticket() -> NewTicket {
        NewTicket {
            id: TicketId::new(),
            queue: QueueName::parse("q").unwrap(),
            payload: Payload::default(),
            priority: 0,
            idempotency_key: None,
            metadata: HashMap::new(),
            timeout: Some(Duration::from_secs(10)),
            attempt_timeout: Some(Duration::from_secs(3)),
            max_attempts: 3,
            tenant: None,
            not_before: None,
            callback: None,
        }
    }

    #[test]
    fn a_delayed_ticket_waits_and_its_timeout_counts_from_then() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = now + Duration::from_secs(60);
        let t = Ticket::create(
            TicketId::new(),
            NewTicket {
                not_before: Some(at),
                ..new_ticket()
            },
            now,
        );
        assert_eq!((t.not_before, t.scheduled_for), (Some(at), Some(at)));
        assert_eq!(t.deadline, Some(at + Duration::from_secs(10)));
        assert_eq!(t.due_at(), at);
        let past = Ticket::create(
            TicketId::new(),
            NewTicket {
                not_before: Some(now - Duration::from_secs(1)),
                ..new_ticket()
            },
            now,
        );
        assert_eq!((past.not_before, past.scheduled_for), (None, None));
        assert_eq!(past.deadline, Some(now + Duration::from_secs(10)));
    }

    #[test]
    fn a_ticket_record_stays_small() {
        // Memory per pending ticket is a product promise (see BENCHMARKS.md).
        let size = std::mem::size_of::<Ticket>();
        assert!(size <= 512, "Ticket grew to {size} bytes");
    }

    #[test]
    fn attempt_deadline_is_the_earlier_budget() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let t = Ticket::create(TicketId::new(), new_ticket(), now);
        assert_eq!(t.attempt_deadline(now), Some(now + Duration::from_secs(3)));
        let late = now + Duration::from_secs(9);
        assert_eq!(
            t.attempt_deadline(late),
            Some(now + Duration::from_secs(10))
        );
    }

    #[test]
    fn finish_clears_lease_and_bumps_seq() {
        let now = SystemTime::now();
        let mut t = Ticket::create(TicketId::new(), new_ticket(), now);
        assert_eq!(t.seq, 1);
        t.finish(TicketState::Cancelled, None, now);
        assert_eq!(t.seq, 2);
        assert!(t.state.is_terminal());
        assert!(t.finished_at.is_some());
    }
}
