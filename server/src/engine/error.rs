//! Why an engine call did not happen: [`EngineError`], each variant saying
//! what the caller should do. `crate::error` maps it to a status.

use crate::domain::{LeaseId, QueueName, SessionId, TicketId, TicketState};

use super::{ErrorId, StoreError, StoreErrorKind};

/// Why an engine call did not happen. Each variant says what the caller
/// should do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No such ticket: check the id.
    #[error("ticket {0} not found")]
    NotFound(TicketId),
    /// The ticket finished and was deleted: after the retention period, or
    /// sooner by an operator (`DeleteTicket`).
    #[error(
        "ticket {id} finished and its result expired at {deleted_at}: results are kept for the retention period after they finish, unless an operator deletes them sooner"
    )]
    ResultExpired {
        /// The ticket.
        id: TicketId,
        /// RFC 3339 time of deletion.
        deleted_at: String,
    },
    /// The queue holds its maximum of pending tickets: retry later.
    #[error("queue {queue:?} has {limit} pending tickets, its limit; retry later or add workers")]
    QueueFull {
        /// The queue.
        queue: QueueName,
        /// The configured limit.
        limit: usize,
    },
    /// The idempotency key belongs to a ticket on another queue.
    #[error(
        "idempotency key {key:?} was already used for ticket {existing} on queue {queue:?}; use a new key for a different request"
    )]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The ticket that owns it.
        existing: TicketId,
        /// That ticket's queue.
        queue: QueueName,
    },
    /// The lease is not the ticket's current lease: the result or progress is
    /// discarded (fencing).
    #[error(
        "lease {lease_id} is not current for ticket {ticket_id}: {reason}; the report was discarded"
    )]
    StaleLease {
        /// The ticket.
        ticket_id: TicketId,
        /// The lease presented.
        lease_id: LeaseId,
        /// Why it is not current.
        reason: String,
    },
    /// The ticket is already terminal.
    #[error("ticket {id} already {state}; there is nothing to {action}", state = .state.name())]
    AlreadyTerminal {
        /// The ticket.
        id: TicketId,
        /// Its terminal state.
        state: TicketState,
        /// What was attempted.
        action: &'static str,
    },
    /// The ticket has not finished, and the action needs a finished one:
    /// `hint` says what to do (wait for it, or cancel it first).
    #[error("ticket {id} is still {state}, not finished: {hint}", state = .state.name())]
    NotFinished {
        /// The ticket.
        id: TicketId,
        /// Its state (PENDING or RUNNING).
        state: TicketState,
        /// What the caller can do.
        hint: &'static str,
    },
    /// The ticket succeeded: it is not run again. Submit the request again
    /// to run it again.
    #[error(
        "ticket {0} succeeded; succeeded tickets are not retried (their request body is not kept): submit the request again"
    )]
    SucceededNotRetried(TicketId),
    /// Only a given-up callback is delivered again.
    #[error(
        "ticket {id} {why}; only a callback whose delivery was given up (GAVE_UP) is sent again"
    )]
    CallbackNotRetried {
        /// The ticket.
        id: TicketId,
        /// What its callback is instead.
        why: String,
    },
    /// A limit on stored data was reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// The worker session expired (or ended) in the store: its leases were
    /// given back. The worker reconnects as a new session.
    #[error(
        "worker session {0} expired in the store (renewals missed for longer than the lease TTL) and its leases were requeued; reconnect"
    )]
    SessionLost(SessionId),
    /// The store failed: retry later (unavailable), make room (full), or
    /// call the operator (corrupt).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A schedule with this id exists already.
    #[error("schedule {0:?} already exists; update it, or delete it first")]
    ScheduleExists(String),
    /// The schedule changed (or went) between a read and a write of it.
    #[error("schedule {0:?} was changed or deleted meanwhile; read it again and retry")]
    ScheduleChanged(String),
    /// A bug or a broken invariant: logged with its detail under the id.
    #[error("internal error {0}: the gateway's log has the detail under this id")]
    Internal(ErrorId),
}

impl EngineError {
    /// Whether the store could not be reached or written: the same call
    /// may succeed if tried again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(e) if e.kind() == StoreErrorKind::Unavailable)
    }

    /// Whether the same call may succeed later without anyone's help: the
    /// store is unreachable, or full until tickets finish.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(e) if e.kind() != StoreErrorKind::Corrupt)
    }

    /// The store cannot be reached or written right now (`hint` says what
    /// the caller can do).
    pub fn unavailable(hint: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self::Store(StoreError::unavailable(hint))
    }

    /// An internal failure: `detail` is logged under a fresh id, which the
    /// caller is told.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let id = ErrorId::new();
        tracing::error!(error_id = %id, %detail, "internal error");
        Self::Internal(id)
    }
}
