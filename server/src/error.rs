//! The gateway's error type and its one mapping to `tonic::Status`.
//!
//! Handlers and the dispatcher return `GatewayError`; only the gRPC boundary
//! turns it into a status, here, so every code is chosen in one place.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::engine::{EngineError, StoreErrorKind};

/// Everything a gateway call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A request field is invalid: fix `field` as `reason` says.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Proto field path, e.g. `payload` or `hello.queues[2]`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A request field is larger than a limit allows: make it smaller or
    /// raise the limit with the flag `reason` names.
    #[error("{field} {reason}")]
    TooLarge {
        /// Proto field path, e.g. `payload`.
        field: String,
        /// Its size, the limit and the flag that sets it.
        reason: String,
    },
    /// The engine refused or failed the transition.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// What the request names does not exist (or is another tenant's).
    #[error("{0}")]
    NotFound(String),
    /// A worker reported on a lease its session does not hold (it was
    /// never sent to this connection, or is not current for it).
    #[error(
        "this session does not hold lease {lease_id} of ticket {ticket_id} (it was never sent to this connection, or is not current for it); the result was discarded"
    )]
    LeaseNotHeld {
        /// The ticket named.
        ticket_id: crate::domain::TicketId,
        /// The lease named.
        lease_id: crate::domain::LeaseId,
    },
    /// A worker sent a message out of protocol order.
    #[error("{0}")]
    Protocol(String),
    /// The gateway is shutting down: retry on another replica or later.
    #[error("the gateway is shutting down; retry shortly")]
    ShuttingDown,
    /// A worker stopped answering pings and was disconnected.
    #[error("{0}")]
    WorkerUnresponsive(String),
    /// The caller's key does not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No key, a malformed `authorization` header, or an unknown key.
    #[error("{0}")]
    Unauthenticated(String),
    /// A limit of the caller's (its key's rate) or of a ticket's (its
    /// watchers) is reached: the message says when or how to go on.
    #[error("{0}")]
    Exhausted(String),
    /// The gateway sheds load (a bound on open calls): retry with backoff.
    #[error("{0}")]
    Overloaded(String),
    /// The request could not be read as this method's message (framing,
    /// protobuf): fix the client.
    #[error("{0}")]
    Unreadable(String),
    /// The request did not arrive in time (`--request-read-timeout`).
    #[error("{0}")]
    ReadTimeout(String),
    /// A watch ended by shutdown: resume from the last event seen.
    #[error("the gateway is shutting down; watch again with after_seq={after_seq} to resume")]
    WatchInterrupted {
        /// The last event sent on the stream.
        after_seq: u64,
    },
    /// The gateway's settings do not allow this request (e.g. a callback to
    /// a destination off its allowlist); the message names the setting.
    #[error("{0}")]
    NotAllowedHere(String),
    /// The gateway does not offer this method; the message says what to do
    /// instead.
    #[error("{0}")]
    Unimplemented(String),
    /// A keys reload removed the caller's key or changed what it grants
    /// (role, tenant, queues): its open call was ended. Call again with a
    /// valid key.
    #[error(
        "API key {0:?} was revoked or changed by a reload of the keys file; this call was ended: call again with a valid key"
    )]
    KeyRevoked(String),
}

impl GatewayError {
    /// Shorthand for an invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::TooLarge { .. } => Code::ResourceExhausted,
            Self::Engine(e) => match e {
                EngineError::NotFound(_) | EngineError::ResultExpired { .. } => Code::NotFound,
                EngineError::QueueFull { .. } | EngineError::LimitExceeded(_) => {
                    Code::ResourceExhausted
                }
                EngineError::IdempotencyConflict { .. } | EngineError::ScheduleExists(_) => {
                    Code::AlreadyExists
                }
                EngineError::ScheduleChanged(_) => Code::Aborted,
                EngineError::StaleLease { .. }
                | EngineError::AlreadyTerminal { .. }
                | EngineError::NotFinished { .. }
                | EngineError::SucceededNotRetried(_)
                | EngineError::CallbackNotRetried { .. } => Code::FailedPrecondition,
                EngineError::SessionLost(_) => Code::Unavailable,
                EngineError::Store(e) => match e.kind() {
                    // A full store is UNAVAILABLE, as before the kinds were
                    // told apart: clients and workers retry it (a worker
                    // resends its result), and room comes back as tickets
                    // finish or an operator frees space.
                    StoreErrorKind::Unavailable | StoreErrorKind::Full => Code::Unavailable,
                    StoreErrorKind::Corrupt => Code::DataLoss,
                },
                EngineError::Internal(_) => Code::Internal,
            },
            Self::Protocol(_) | Self::LeaseNotHeld { .. } | Self::NotAllowedHere(_) => {
                Code::FailedPrecondition
            }
            Self::NotFound(_) => Code::NotFound,
            Self::ShuttingDown => Code::Unavailable,
            Self::WorkerUnresponsive(_) => Code::DeadlineExceeded,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Unreadable(_) => Code::InvalidArgument,
            Self::Exhausted(_) => Code::ResourceExhausted,
            Self::Overloaded(_) | Self::WatchInterrupted { .. } => Code::Unavailable,
            Self::ReadTimeout(_) => Code::DeadlineExceeded,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::KeyRevoked(_) => Code::Unauthenticated,
        }
    }
}

impl GatewayError {
    /// An internal failure: `detail` is logged under a fresh id, which the
    /// caller is told.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Engine(EngineError::internal(detail))
    }
}

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Self {
        let code = error.code();
        if let GatewayError::InvalidArgument { field, reason }
        | GatewayError::TooLarge { field, reason } = &error
        {
            return Status::with_error_details(
                code,
                error.to_string(),
                ErrorDetails::with_bad_request_violation(field.clone(), reason.clone()),
            );
        }
        Status::new(code, error.to_string())
    }
}
