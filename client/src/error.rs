//! [`ClientError`]: every way a call of this crate can fail, with one
//! [`ClientError::code`] so callers branch on a gRPC code, not on a variant.
//!
//! Also owns the one rule that decides whether a failure is *transient* (worth
//! a reconnect) or *final* (the server said no), shared by the resumable
//! streams and the worker's connection loop.

use std::error::Error as _;

/// An error from the client or worker SDK.
///
/// Match on [`ClientError::code`] for control flow; the variants say where the
/// error came from, which matters for logs more than for retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server address could not be used (not an `http://` URL, bad
    /// host/port). Fix the address; retrying cannot help.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The address as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// No connection could be made (refused, timed out, DNS). Usually
    /// transient: the gateway may be restarting.
    ///
    /// The message already spells out the whole cause chain (tonic's own
    /// error only says "transport error"), so it is not repeated as a
    /// `source()`.
    #[error("cannot reach the gateway: {}", source_chain(.0))]
    Transport(tonic::transport::Error),
    /// The call reached the gateway (or the connection broke mid-call) and
    /// ended with this status. [`ClientError::is_transient`] tells whether a
    /// retry may succeed.
    ///
    /// Shown as `Code: message`; not exposed as a `source()` because
    /// `Status`'s own `Display` dumps headers and details.
    #[error("{}: {}", status_code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    /// The gateway broke the contract (for example an `Execute` stream whose
    /// first event carries no ticket). A bug on one side; not retried.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A builder was given settings that cannot work (no queue, no handler,
    /// `max_in_flight` out of range). Fix the code.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

impl From<tonic::transport::Error> for ClientError {
    fn from(err: tonic::transport::Error) -> Self {
        ClientError::Transport(err)
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status(status)
    }
}

impl ClientError {
    /// The gRPC code that best describes this error: the status code for
    /// [`ClientError::Status`], `UNAVAILABLE` for transport failures,
    /// `INVALID_ARGUMENT` for bad addresses or settings, `INTERNAL` for
    /// protocol violations.
    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::InvalidUrl { .. } | ClientError::InvalidConfig(_) => {
                tonic::Code::InvalidArgument
            }
            ClientError::Transport(_) => tonic::Code::Unavailable,
            ClientError::Status(status) => status.code(),
            ClientError::Protocol(_) => tonic::Code::Internal,
        }
    }

    /// Whether the same call may succeed later on a new connection: transport
    /// failures and `UNAVAILABLE`, never an answer the gateway chose to give
    /// (`NOT_FOUND`, `INVALID_ARGUMENT`, ...).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Status(status) => is_transient_status(status),
            _ => false,
        }
    }
}

/// Whether `status` describes a broken or unreachable connection rather than
/// an answer of the gateway.
///
/// A status the gateway sent arrives in trailers and has no `source()`; one
/// that tonic made locally from an h2/hyper/io failure keeps that failure as
/// its source. So `UNKNOWN`, `INTERNAL` and `CANCELLED` count as transient only
/// when they carry a source (a reset or closed connection, not a server bug),
/// and `UNAVAILABLE` always does (it is also what a gateway says while it
/// restarts).
pub(crate) fn is_transient_status(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => {
            status.source().is_some()
                // tonic's generated clients turn a failed `ready()` of the
                // channel into this source-less status.
                || status.message().starts_with("Service was not ready")
        }
        _ => false,
    }
}

/// The sources of `err` (not `err` itself), joined by ": ".
fn source_chain(err: &tonic::transport::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Layers often repeat their source's text ("tcp connect error" then
        // "tcp connect error: Connection refused"): keep the fuller one.
        match parts.last_mut() {
            Some(last) if text.starts_with(last.as_str()) => *last = text,
            Some(last) if last.contains(&text) => {}
            _ => parts.push(text),
        }
        source = cause.source();
    }
    let mut text = if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    };
    // rustls reading a plaintext HTTP/2 answer as TLS says only this.
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        text.push_str(
            " — the gateway does not speak TLS on that port: use an http:// address (or give the gateway --tls-cert and --tls-key)",
        );
    }
    text
}

/// `NotFound` rather than tonic's sentence-long `Display` of a code.
fn status_code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_statuses_are_final() {
        for code in [
            tonic::Code::NotFound,
            tonic::Code::InvalidArgument,
            tonic::Code::Unknown,
            tonic::Code::Internal,
            tonic::Code::Cancelled,
            tonic::Code::FailedPrecondition,
        ] {
            assert!(
                !is_transient_status(&tonic::Status::new(code, "x")),
                "{code:?}"
            );
        }
        assert!(is_transient_status(&tonic::Status::unavailable(
            "restarting"
        )));
    }

    #[test]
    fn locally_made_statuses_with_a_source_are_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let status = tonic::Status::from_error(Box::new(io));
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert!(is_transient_status(&status));
    }

    #[test]
    fn display_names_the_code() {
        let err = ClientError::from(tonic::Status::not_found("no ticket abc"));
        assert_eq!(err.to_string(), "NotFound: no ticket abc");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(!err.is_transient());
    }
}
