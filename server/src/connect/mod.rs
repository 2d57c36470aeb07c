//! The Connect protocol (connectrpc.com/docs/protocol) beside gRPC-Web, on
//! with `--grpc-web`: Connect-ES's default transport
//! (`createConnectTransport`) and plain `fetch` or curl calls work without a
//! proxy, in JSON or binary, unary and server streaming.
//!
//! How: like tonic-web, a tower layer that turns each Connect request into a
//! gRPC request to the same tonic routes and the gRPC response back into
//! Connect. It sits where tonic-web sits (inside CORS, outside everything
//! else), so a Connect call passes through the same API-key check, load
//! shedding, read deadline, rescue and metrics layers as a gRPC call, and
//! the inner services validate its messages as they validate any other.
//! Requests that are not Connect pass through untouched (one content-type
//! check).
//!
//! - The request body is read lazily, when the inner service reads its gRPC
//!   body, so the read deadline and the auth check (before any body is read)
//!   apply as for gRPC. It is bounded by the gRPC message limit
//!   (`resource_exhausted` past it, compressed or not); JSON is transcoded to
//!   protobuf (`invalid_argument` naming what to fix when it is not the
//!   method's input type). Errors raised while reading reach the caller
//!   through tonic, which returns a `Status` found in a body error as is.
//! - Unary responses are collected whole; trailers become `trailer-`
//!   headers and errors JSON bodies with the protocol's HTTP status. Server
//!   streams are relayed message by message as the inner service yields
//!   them, and end with an end-stream message carrying the status and
//!   trailers.
//! - `Connect-Timeout-Ms` becomes `grpc-timeout` (so long-polls return
//!   before it) and is enforced here too: `deadline_exceeded` at the
//!   deadline.
//! - Compression: requests may be gzip (`Content-Encoding` for unary,
//!   `Connect-Content-Encoding` for streams); responses are never compressed
//!   (identity is always acceptable). Other encodings get `unimplemented`
//!   naming the supported ones.
//! - Not served: client and bidi streaming (`Workers.Connect`: refused with
//!   `unimplemented`, it needs gRPC), and GET requests (no method is marked
//!   side-effect free).
//!
//! Layout: this file holds the layer, the classification of a request and
//! the `Call` it becomes; `request.rs` reads the call's headers and body
//! into a gRPC request, `unary.rs` and `streaming.rs` turn the gRPC response
//! back into Connect with what `reply.rs` shares; `codec.rs` has the bytes
//! (framing, JSON, compression) and `error.rs` the Connect error format.

mod codec;
mod error;
mod reply;
mod request;
mod streaming;
mod unary;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::TryFutureExt as _;
use futures::future::{BoxFuture, Either};
use prost_reflect::MethodDescriptor;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, HeaderValue, Method, Request, Response, header};

use codec::{Encoding, Format, Schema};
use error::Failure;
use request::grpc_request;
use streaming::stream_response;
use unary::unary_response;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Adds the Connect protocol in front of a tonic router.
#[derive(Clone)]
pub(crate) struct ConnectLayer {
    shared: Arc<Shared>,
}

/// What every call needs, built once.
struct Shared {
    /// Methods and messages by name, for routing checks and JSON.
    schema: Schema,
    /// The gRPC decode limit, which bounds Connect request bodies too.
    max_message_bytes: usize,
}

impl ConnectLayer {
    /// A layer whose requests are bounded by `max_message_bytes` (the inner
    /// services' decode limit). Fails only if the embedded descriptors do not
    /// load (a build problem).
    pub(crate) fn new(max_message_bytes: usize) -> Result<Self, String> {
        let schema = Schema::load().map_err(|e| format!("Connect descriptors: {e}"))?;
        Ok(Self {
            shared: Arc::new(Shared {
                schema,
                max_message_bytes,
            }),
        })
    }
}

impl<S> tower::Layer<S> for ConnectLayer {
    type Service = ConnectService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Translates Connect calls for `S`, a gRPC service (see [`ConnectLayer`]).
#[derive(Clone)]
pub(crate) struct ConnectService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Unary or streaming, as the content type says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `application/json` or `application/proto`: one message each way,
    /// bodies without envelopes.
    Unary,
    /// `application/connect+json` or `application/connect+proto`: enveloped
    /// messages, an end-stream message last.
    Stream,
}

/// Whether a request is a Connect call, from its content type.
fn classify(method: &Method, headers: &HeaderMap) -> Option<(Shape, Format)> {
    if method != Method::POST {
        return None;
    }
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = content_type.split(';').next()?.trim();
    let is = |name: &str| essence.eq_ignore_ascii_case(name);
    if is("application/json") {
        Some((Shape::Unary, Format::Json))
    } else if is("application/proto") {
        Some((Shape::Unary, Format::Proto))
    } else if is("application/connect+json") {
        Some((Shape::Stream, Format::Json))
    } else if is("application/connect+proto") {
        Some((Shape::Stream, Format::Proto))
    } else {
        None
    }
}

/// One Connect call as understood from its headers.
#[derive(Clone)]
struct Call {
    shape: Shape,
    format: Format,
    method: MethodDescriptor,
    /// How the request body (unary) or its message (stream) is compressed.
    encoding: Encoding,
    /// From `Connect-Timeout-Ms`.
    deadline: Option<Instant>,
    timeout: Option<Duration>,
}

impl Call {
    fn content_type(&self) -> HeaderValue {
        HeaderValue::from_static(match (self.shape, self.format) {
            (Shape::Unary, Format::Json) => "application/json",
            (Shape::Unary, Format::Proto) => "application/proto",
            (Shape::Stream, Format::Json) => "application/connect+json",
            (Shape::Stream, Format::Proto) => "application/connect+proto",
        })
    }
}

/// Waits for `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The failure of a call whose deadline passed.
fn deadline_exceeded(call: &Call) -> Failure {
    Failure::new(
        Code::DeadlineExceeded,
        format!(
            "the call's deadline (connect-timeout-ms {}) passed",
            call.timeout.unwrap_or_default().as_millis()
        ),
    )
}

/// A status the inner service gave, with tonic's own timeout (from the
/// `grpc-timeout` this layer sent, `cancelled`) read as the deadline it is.
fn inner_failure(call: &Call, failure: Failure) -> Failure {
    let deadline_passed = call
        .deadline
        .is_some_and(|deadline| Instant::now() + Duration::from_millis(5) >= deadline);
    if failure.code == Code::Cancelled && deadline_passed {
        deadline_exceeded(call)
    } else {
        failure
    }
}

type PassThrough<F, ResBody> = futures::future::MapOk<F, fn(Response<ResBody>) -> Response<Body>>;

impl<S, B, ResBody> tower::Service<Request<B>> for ConnectService<S>
where
    S: tower::Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<
        PassThrough<S::Future, ResBody>,
        BoxFuture<'static, Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some((shape, format)) = classify(request.method(), request.headers()) else {
            return Either::Left(
                self.inner
                    .call(request.map(Body::new))
                    .map_ok(|response| response.map(Body::new)),
            );
        };
        let shared = self.shared.clone();
        let call = match shared.prepare(request.uri().path(), request.headers(), shape, format) {
            Ok(call) => call,
            Err(failure) => {
                let content_type = request
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static("application/json"));
                let response = shared.failure_response(
                    shape,
                    content_type,
                    &failure,
                    &HeaderMap::new(),
                    &HeaderMap::new(),
                );
                return Either::Right(Box::pin(std::future::ready(Ok(response))));
            }
        };
        let future = self.inner.call(grpc_request(request, &call, &shared));
        Either::Right(Box::pin(async move {
            match call.shape {
                Shape::Unary => unary_response(future, call, shared).await,
                Shape::Stream => stream_response(future, call, shared).await,
            }
        }))
    }
}

#[cfg(test)]
mod tests;
