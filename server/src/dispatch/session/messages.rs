//! The worker protocol as validated values: what a worker may say to its
//! session and what the session says back, with no wire types in them.
//!
//! The gRPC edge (`rpc::workers`) turns each `WorkerMessage` into a
//! [`FromWorker`] (ids parsed, payloads checked, the Hello's queues scoped to
//! the caller's tenant) and each [`ToWorker`] into a `DispatchMessage`, so
//! the session's state machine decides only what the protocol means.

use std::time::Duration;

use crate::domain::{LeaseId, Outcome, Progress, QueueName, SessionId, TicketId};
use crate::engine::{Claimed, Revocation};
use crate::error::GatewayError;

/// The largest `max_in_flight` a worker may ask for.
pub(crate) const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;
/// The most queues one worker connection may serve.
pub(crate) const MAX_QUEUES_PER_WORKER: usize = 256;
/// The longest `Hello.worker_name`, in bytes.
pub(crate) const MAX_WORKER_NAME_BYTES: usize = 128;

/// A worker's message, validated.
#[derive(Debug)]
pub(crate) enum FromWorker {
    /// The worker introduces itself; an invalid Hello ends the stream with
    /// the reason.
    Hello(Result<Hello, GatewayError>),
    /// An answer to the ping with this nonce.
    Heartbeat {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Progress or output on a lease.
    Progress(Report<ProgressUpdate>),
    /// The outcome of a lease.
    Result(Report<Outcome>),
    /// The worker takes no new tasks and leaves once idle.
    Drain,
    /// A message with no kind set: a protocol error.
    Empty,
}

/// A valid Hello.
#[derive(Debug, Clone)]
pub(crate) struct Hello {
    /// The queues to serve, as stored (tenant-scoped), without repeats.
    pub queues: Vec<QueueName>,
    /// Tasks the worker runs at once.
    pub max_in_flight: u32,
    /// Printable and bounded; "unnamed" when the worker gave none.
    pub worker_name: String,
}

/// A report (progress or result) on one lease. Its ids are checked first:
/// a report on a lease the session does not hold is ignored or refused
/// whatever its body, so the body's own verdict travels with it.
#[derive(Debug)]
pub(crate) enum Report<T> {
    /// The ids parse.
    Lease {
        /// The ticket.
        ticket_id: TicketId,
        /// The lease.
        lease_id: LeaseId,
        /// The body, or why it is refused.
        body: Result<T, GatewayError>,
    },
    /// An id does not parse: the report is refused naming the ids as sent.
    BadIds {
        /// `ticket_id` as sent.
        ticket_id: String,
        /// `lease_id` as sent.
        lease_id: String,
        /// Which id is wrong and how.
        error: GatewayError,
    },
}

/// A report's parts: its parsed ids and body verdict, or the ids as sent and
/// why they do not parse.
pub(crate) type ReportParts<T> =
    Result<(TicketId, LeaseId, Result<T, GatewayError>), (String, String, GatewayError)>;

impl<T> Report<T> {
    /// The report taken apart, for a `match` on whether its ids parse.
    pub(crate) fn into_parts(self) -> ReportParts<T> {
        match self {
            Self::Lease {
                ticket_id,
                lease_id,
                body,
            } => Ok((ticket_id, lease_id, body)),
            Self::BadIds {
                ticket_id,
                lease_id,
                error,
            } => Err((ticket_id, lease_id, error)),
        }
    }
}

/// The body of a progress report.
#[derive(Debug)]
pub(crate) struct ProgressUpdate {
    /// New percent and message, if the report has any.
    pub progress: Option<Progress>,
    /// A partial-output chunk, checked against the payload limit.
    pub output: Option<crate::domain::ticket::Payload>,
}

/// What the session tells the worker.
#[derive(Debug)]
pub(crate) enum ToWorker {
    /// The session is open.
    Welcome {
        /// The session's id.
        session_id: SessionId,
        /// How long a lease lasts without renewal.
        lease_ttl: Duration,
        /// Ping cadence.
        heartbeat_interval: Duration,
    },
    /// Run this task.
    Task {
        /// The lease and the ticket.
        claimed: Box<Claimed>,
        /// The queue's name as the worker knows it.
        queue: String,
    },
    /// Drop this lease.
    Cancel(Revocation),
    /// Answer with a heartbeat carrying `nonce`.
    Ping {
        /// The ping's nonce.
        nonce: u64,
    },
    /// No new tasks will come.
    Drain {
        /// Why.
        reason: std::borrow::Cow<'static, str>,
        /// Leave once idle rather than reconnect (an operator's drain).
        stop: bool,
    },
    /// The verdict on a report.
    Ack {
        /// `ticket_id` as the worker sent it.
        ticket_id: String,
        /// `lease_id` as the worker sent it.
        lease_id: String,
        /// The verdict.
        ack: Ack,
    },
}

/// The verdict on a worker's report.
#[derive(Debug)]
pub(crate) enum Ack {
    /// The result is recorded; the ticket is now in this state.
    Recorded {
        /// The ticket's state name.
        state: &'static str,
    },
    /// This lease's result was recorded before.
    Duplicate,
    /// The result was refused.
    Refused(GatewayError),
    /// The progress report was refused.
    ProgressRefused(GatewayError),
}
