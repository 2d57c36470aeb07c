//! One place for the refusals of requests the gateway could not read: tonic
//! answers them itself (before any handler runs) with codes and decoder
//! traces meant for its authors — OUT_OF_RANGE for an over-size message,
//! RESOURCE_EXHAUSTED when it was compressed, INTERNAL with 1,500 characters
//! of field path for a bad encoding. The rescue layer rewrites those into
//! what a caller can act on: RESOURCE_EXHAUSTED naming the limit and its
//! flag, INVALID_ARGUMENT with a short reason. It also checks the size of
//! request headers, so that an over-size header list gets a status rather
//! than a bare HTTP 431.
//!
//! [`normalize`] is the same rule for statuses a handler sees while reading
//! a stream (a worker's `Connect`).

use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either, Ready, ready};
use tonic::codegen::http;
use tonic::{Code, Status};

use crate::error::GatewayError;

/// Largest request header list the gateway reads (HTTP/2 counts each
/// header as name + value + 32 bytes).
pub(crate) const MAX_HEADER_LIST_BYTES: usize = 16 * 1024;

/// What the limits are, for the messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The largest message accepted (payload limit plus envelope).
    pub max_message_bytes: usize,
}

/// The status a caller should get for `status`, a refusal tonic made while
/// reading a request (unchanged if it is not one).
pub(crate) fn normalize(status: Status, limits: Limits) -> Status {
    let message = status.message();
    let too_large = |size: Option<&str>| {
        Status::from(GatewayError::Exhausted(format!(
            "the message{} is over the gateway's limit of {} bytes (--max-payload-bytes plus 64 KiB for the rest of the message); store large data elsewhere and send a reference",
            size.map(|s| format!(" ({s} bytes)")).unwrap_or_default(),
            limits.max_message_bytes
        )))
    };
    match status.code() {
        Code::OutOfRange if message.starts_with("Error, decoded message length too large") => {
            let size = message
                .split("found ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next());
            too_large(size)
        }
        Code::ResourceExhausted if message.starts_with("Error decompressing: size limit") => {
            GatewayError::Exhausted(format!(
                "the message, decompressed, is over the gateway's limit of {} bytes (--max-payload-bytes plus 64 KiB for the rest of the message)",
                limits.max_message_bytes
            ))
            .into()
        }
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            GatewayError::Unreadable(format!(
                "the message is not a valid protobuf message of this method's type: {}",
                last_words(message)
            ))
            .into()
        }
        Code::Internal
            if message.starts_with("protocol error")
                || message.starts_with("Error decompressing")
                || message.starts_with("Unexpected EOF") =>
        {
            GatewayError::Unreadable(format!(
                "the message's gRPC framing is invalid: {}",
                short(message)
            ))
            .into()
        }
        _ => status,
    }
}

/// The end of a decoder message: the innermost field and the reason (the
/// field path before it can be a hundred levels long).
fn last_words(message: &str) -> String {
    let parts: Vec<&str> = message.rsplitn(3, ": ").collect();
    let tail = match parts.as_slice() {
        [reason, field, _] => format!("{field}: {reason}"),
        _ => message.to_owned(),
    };
    short(&tail)
}

fn short(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// See the module docs.
#[derive(Clone, Copy)]
pub(crate) struct RescueLayer {
    limits: Limits,
}

impl RescueLayer {
    /// Rewrites refusals with `limits` in the messages.
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits }
    }
}

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            limits: self.limits,
        }
    }
}

/// See [`RescueLayer`].
#[derive(Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
    limits: Limits,
}

/// The size of a header list as HTTP/2 counts it.
fn header_list_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

impl<S, B> tower::Service<http::Request<B>> for Rescue<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<
        BoxFuture<'static, Result<Self::Response, Self::Error>>,
        Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let size = header_list_size(request.headers());
        if size > MAX_HEADER_LIST_BYTES {
            return Either::Right(ready(Ok(Status::from(GatewayError::Exhausted(format!(
                "the request's headers (metadata) are {size} bytes; the limit is {MAX_HEADER_LIST_BYTES}: send large values in the message instead"
            )))
            .into_http())));
        }
        let limits = self.limits;
        let response = self.inner.call(request);
        Either::Left(Box::pin(async move {
            let response = response.await?;
            Ok(rescue_response(response, limits))
        }))
    }
}

/// Rewrites a trailers-only response (status in the headers) whose status
/// is one of tonic's refusals.
fn rescue_response(
    response: http::Response<tonic::body::Body>,
    limits: Limits,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers();
    let Some(code) = headers.get("grpc-status") else {
        return response;
    };
    // Ours never use these codes for refusals of unreadable requests.
    if !matches!(code.as_bytes(), b"11" | b"8" | b"13") {
        return response;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    let normalized = normalize(status.clone(), limits);
    if normalized.code() == status.code() && normalized.message() == status.message() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let rewritten = normalized.into_http::<tonic::body::Body>();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        parts.headers.remove(name);
        if let Some(value) = rewritten.headers().get(name) {
            parts.headers.insert(name, value.clone());
        }
    }
    http::Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_bytes: 1000,
    };

    #[test]
    fn tonic_refusals_become_actionable() {
        let status = normalize(
            Status::out_of_range(
                "Error, decoded message length too large: found 5000 bytes, the limit is: 1000 bytes",
            ),
            LIMITS,
        );
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("(5000 bytes)"), "{status:?}");
        assert!(
            status.message().contains("--max-payload-bytes"),
            "{status:?}"
        );

        let status = normalize(
            Status::resource_exhausted(
                "Error decompressing: size limit, of 1000 bytes, exceeded while decompressing message",
            ),
            LIMITS,
        );
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("--max-payload-bytes"),
            "{status:?}"
        );

        let long_path = "Value.kind: ListValue.values: ".repeat(60);
        let status = normalize(
            Status::internal(format!(
                "failed to decode Protobuf message: SubmitRequest.payload: {long_path}Value.kind: recursion limit reached"
            )),
            LIMITS,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() < 300, "{}", status.message().len());
        assert!(
            status.message().ends_with("recursion limit reached"),
            "{status:?}"
        );

        let ours = Status::internal("something else");
        assert_eq!(normalize(ours, LIMITS).code(), Code::Internal);
    }
}
