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

mod codec;
mod error;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::TryFutureExt as _;
use futures::future::{BoxFuture, Either};
use http_body::Frame;
use http_body_util::BodyExt as _;
use prost_reflect::MethodDescriptor;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version, header,
};
use tonic::{Code, Status};

use codec::{Encoding, FLAG_COMPRESSED, FLAG_END_STREAM, Format, Schema};
use error::Failure;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest `Connect-Timeout-Ms` the protocol allows (10 digits).
const MAX_TIMEOUT_MS: u64 = 9_999_999_999;

/// Request headers that belong to the Connect or HTTP/1.1 framing, not to
/// the call's metadata: they are not passed to the gRPC service.
const CONNECT_REQUEST_HEADERS: [&str; 11] = [
    "content-type",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-content-encoding",
    "connect-accept-encoding",
    "grpc-timeout",
    "keep-alive",
    "transfer-encoding",
];

/// Response headers and trailers that belong to gRPC's framing, not to the
/// call's metadata: they are not passed to Connect callers.
const GRPC_RESPONSE_HEADERS: [&str; 9] = [
    "content-type",
    "content-length",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
    "trailer",
    "transfer-encoding",
];

/// Adds the Connect protocol in front of a tonic router.
#[derive(Clone)]
pub struct ConnectLayer {
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
    pub fn new(max_message_bytes: usize) -> Result<Self, String> {
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
pub struct ConnectService<S> {
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

impl Shared {
    /// Reads a Connect call's headers; what is wrong with them is the
    /// caller's to fix.
    fn prepare(
        &self,
        path: &str,
        headers: &HeaderMap,
        shape: Shape,
        format: Format,
    ) -> Result<Call, Failure> {
        if let Some(version) = headers.get("connect-protocol-version")
            && version != "1"
        {
            return Err(Failure::new(
                Code::InvalidArgument,
                format!("connect-protocol-version {version:?} is not supported; send 1"),
            ));
        }
        let method = self.schema.method(path).ok_or_else(|| {
            Failure::new(
                Code::Unimplemented,
                format!(
                    "unknown method {path:?}; the gateway serves /asyncgate.v1.Gateway/<Method> (Submit, Execute, GetTicket, WatchTicket, CancelTicket, ListTickets), /google.longrunning.Operations/<Method> and /grpc.health.v1.Health/Check"
                ),
            )
        })?;
        if method.is_client_streaming() {
            return Err(Failure::new(
                Code::Unimplemented,
                format!(
                    "{} streams messages from the client, which the gateway serves over gRPC (HTTP/2) only; over Connect it serves unary and server-streaming methods",
                    method.full_name()
                ),
            ));
        }
        match (shape, method.is_server_streaming()) {
            (Shape::Unary, true) => {
                return Err(Failure::new(
                    Code::InvalidArgument,
                    format!(
                        "{} is a server-streaming method: send it as application/connect+json or application/connect+proto (one enveloped message)",
                        method.full_name()
                    ),
                ));
            }
            (Shape::Stream, false) => {
                return Err(Failure::new(
                    Code::InvalidArgument,
                    format!(
                        "{} is a unary method: send it as application/json or application/proto (no envelope)",
                        method.full_name()
                    ),
                ));
            }
            _ => {}
        }
        let encoding_header = match shape {
            Shape::Unary => header::CONTENT_ENCODING.as_str(),
            Shape::Stream => "connect-content-encoding",
        };
        let encoding = Encoding::parse(headers.get(encoding_header))
            .map_err(|reason| Failure::new(Code::Unimplemented, reason))?;
        let timeout = headers
            .get("connect-timeout-ms")
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .filter(|text| !text.is_empty() && text.len() <= 10)
                    .and_then(|text| text.parse::<u64>().ok())
                    .filter(|ms| *ms <= MAX_TIMEOUT_MS)
                    .map(Duration::from_millis)
                    .ok_or_else(|| {
                        Failure::new(
                            Code::InvalidArgument,
                            format!(
                                "connect-timeout-ms {value:?} must be a number of milliseconds (1 to 10 digits)"
                            ),
                        )
                    })
            })
            .transpose()?;
        Ok(Call {
            shape,
            format,
            method,
            encoding,
            deadline: timeout.map(|t| Instant::now() + t),
            timeout,
        })
    }

    /// Reads the Connect request body whole (bounded) and returns the gRPC
    /// message bytes: the error is the status the caller gets.
    async fn read_message<B>(&self, body: B, call: &Call) -> Result<Bytes, Status>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let limit = self.max_message_bytes;
        let too_large = || {
            Status::resource_exhausted(format!(
                "the request is over the gateway's limit of {limit} bytes (--max-payload-bytes plus 64 KiB for the rest of the message); store large data elsewhere and send a reference"
            ))
        };
        let raw_limit = match call.shape {
            Shape::Unary => limit,
            Shape::Stream => limit + 5,
        };
        let mut body = std::pin::pin!(body);
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Status::from_error(e.into()))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > raw_limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        let (compressed, message) = match call.shape {
            Shape::Unary => (call.encoding != Encoding::Identity, buf.freeze()),
            Shape::Stream => {
                let received = buf.len();
                let Some((flags, message)) = codec::take_frame(&mut buf) else {
                    return Err(Status::invalid_argument(format!(
                        "the request body ({received} bytes) is not one enveloped message: a streaming call's body is a flags byte, a 4-byte big-endian length, then the message"
                    )));
                };
                if !buf.is_empty() {
                    return Err(Status::invalid_argument(
                        "a server-streaming call takes exactly one request message",
                    ));
                }
                if flags & !FLAG_COMPRESSED != 0 {
                    return Err(Status::invalid_argument(format!(
                        "the request message has flags {flags:#04x}; requests may only set 0x01 (compressed)"
                    )));
                }
                let compressed = flags & FLAG_COMPRESSED != 0;
                if compressed && call.encoding == Encoding::Identity {
                    return Err(Status::invalid_argument(
                        "the request message is flagged compressed but connect-content-encoding names no encoding",
                    ));
                }
                (compressed, message)
            }
        };
        let message = if compressed {
            call.encoding
                .decode(message, limit)
                .map_err(|error| match error {
                    None => too_large(),
                    Some(reason) => Status::invalid_argument(reason),
                })?
        } else {
            message
        };
        match call.format {
            Format::Proto => Ok(message),
            // An empty body is the empty message, as Connect servers read it.
            Format::Json if message.iter().all(u8::is_ascii_whitespace) => Ok(Bytes::new()),
            Format::Json => {
                let input = call.method.input();
                codec::json_to_proto(&input, &message)
                    .map(Bytes::from)
                    .map_err(|e| {
                        Status::invalid_argument(format!(
                            "the request is not a valid {} in JSON: {e} (field names in lowerCamelCase or as in the .proto, enums by name, google.protobuf.Duration as \"1.5s\")",
                            input.full_name()
                        ))
                    })
            }
        }
    }

    /// Any failure as the call's shape answers it.
    fn failure_response(
        &self,
        call_shape: Shape,
        content_type: HeaderValue,
        failure: &Failure,
        headers: &HeaderMap,
        trailers: &HeaderMap,
    ) -> Response<Body> {
        tracing::debug!(code = ?failure.code, message = %failure.message, "connect call failed");
        match call_shape {
            Shape::Unary => {
                let mut response = Response::new(Body::new(http_body_util::Full::new(
                    Bytes::from(failure.to_json(&self.schema).to_string()),
                )));
                *response.status_mut() = error::http_status(failure.code);
                let out = response.headers_mut();
                copy_metadata(headers, out, None);
                copy_metadata(trailers, out, Some("trailer-"));
                out.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Shape::Stream => {
                let mut response = Response::new(Body::new(http_body_util::Full::new(
                    self.end_stream(Some(failure), trailers),
                )));
                let out = response.headers_mut();
                copy_metadata(headers, out, None);
                out.insert(header::CONTENT_TYPE, content_type);
                response
            }
        }
    }

    /// The end-stream message: the error, if any, and the trailers.
    fn end_stream(&self, failure: Option<&Failure>, trailers: &HeaderMap) -> Bytes {
        let mut end = serde_json::Map::new();
        if let Some(failure) = failure {
            end.insert("error".into(), failure.to_json(&self.schema));
        }
        let mut metadata = serde_json::Map::new();
        for (name, value) in trailers {
            if GRPC_RESPONSE_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let values = metadata
                .entry(name.as_str())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(values) = values {
                values.push(String::from_utf8_lossy(value.as_bytes()).into());
            }
        }
        if !metadata.is_empty() {
            end.insert("metadata".into(), metadata.into());
        }
        codec::envelope(
            FLAG_END_STREAM,
            serde_json::Value::Object(end).to_string().as_bytes(),
        )
    }

    /// A reply message in the call's format.
    fn encode_reply(&self, call: &Call, message: Bytes) -> Result<Bytes, Failure> {
        match call.format {
            Format::Proto => Ok(message),
            Format::Json => codec::proto_to_json(&call.method.output(), &message)
                .map(Bytes::from)
                .map_err(|e| {
                    tracing::error!(error = %e, method = call.method.full_name(), "cannot write a reply as JSON");
                    Failure::new(Code::Internal, "the reply could not be written as JSON")
                }),
        }
    }
}

/// Copies call metadata (not gRPC framing) from `from` to `to`, each name
/// prefixed with `prefix` if any (unary trailers become `trailer-*`).
fn copy_metadata(from: &HeaderMap, to: &mut HeaderMap, prefix: Option<&str>) {
    for (name, value) in from {
        if GRPC_RESPONSE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let name = match prefix {
            None => name.clone(),
            Some(prefix) => match HeaderName::from_bytes(format!("{prefix}{name}").as_bytes()) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        to.append(name, value.clone());
    }
}

/// The gRPC request the inner service gets for a Connect call.
fn grpc_request<B>(request: Request<B>, call: &Call, shared: &Arc<Shared>) -> Request<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    parts.version = Version::HTTP_2;
    for name in CONNECT_REQUEST_HEADERS {
        parts.headers.remove(name);
    }
    for name in [header::CONNECTION, header::TE, header::UPGRADE] {
        parts.headers.remove(name);
    }
    let headers = &mut parts.headers;
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = call.timeout {
        // grpc-timeout takes at most 8 digits.
        let ms = timeout.as_millis();
        let value = if ms < 100_000_000 {
            format!("{ms}m")
        } else {
            format!("{}S", ms / 1000)
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert("grpc-timeout", value);
        }
    }
    let shared = shared.clone();
    let call = call.clone();
    let message = futures::stream::once(async move {
        shared
            .read_message(body, &call)
            .await
            .map(|message| Frame::data(codec::grpc_frame(&message)))
    });
    Request::from_parts(parts, Body::new(http_body_util::StreamBody::new(message)))
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

/// Collects a unary gRPC response and answers it in Connect.
async fn unary_response<F, ResBody, E>(
    future: F,
    call: Call,
    shared: Arc<Shared>,
) -> Result<Response<Body>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let content_type = call.content_type();
    let fail = |failure: Failure, headers: &HeaderMap, trailers: &HeaderMap| {
        shared.failure_response(
            Shape::Unary,
            content_type.clone(),
            &inner_failure(&call, failure),
            headers,
            trailers,
        )
    };
    let exchange = async {
        let response = future.await?;
        let (parts, body) = response.into_parts();
        // Trailers-only: the status is in the headers, and there is no message.
        if let Some(failure) = Failure::from_trailers(&parts.headers) {
            let failure = if failure.code == Code::Ok {
                Failure::new(Code::Internal, "the service sent no reply")
            } else {
                failure
            };
            return Ok(fail(failure, &parts.headers, &HeaderMap::new()));
        }
        let mut body = std::pin::pin!(body);
        let mut data = BytesMut::new();
        let mut trailers = HeaderMap::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Err(e) => {
                    let status = Status::from_error(e.into());
                    return Ok(fail(
                        Failure::from_status(&status),
                        &parts.headers,
                        &trailers,
                    ));
                }
                Ok(frame) => match frame.into_data() {
                    Ok(chunk) => data.extend_from_slice(&chunk),
                    Err(frame) => {
                        if let Ok(more) = frame.into_trailers() {
                            trailers.extend(more);
                        }
                    }
                },
            }
        }
        let failure = Failure::from_trailers(&trailers)
            .unwrap_or_else(|| Failure::new(Code::Internal, "the reply ended without a status"));
        if failure.code != Code::Ok {
            return Ok(fail(failure, &parts.headers, &trailers));
        }
        let reply = match codec::take_frame(&mut data) {
            Some((0, message)) => shared.encode_reply(&call, message),
            _ => Err(Failure::new(Code::Internal, "the service sent no reply")),
        };
        let message = match reply {
            Ok(message) => message,
            Err(failure) => return Ok(fail(failure, &parts.headers, &trailers)),
        };
        let mut response = Response::new(Body::new(http_body_util::Full::new(message)));
        let out = response.headers_mut();
        copy_metadata(&parts.headers, out, None);
        copy_metadata(&trailers, out, Some("trailer-"));
        out.insert(header::CONTENT_TYPE, call.content_type());
        Ok(response)
    };
    tokio::select! {
        response = exchange => response,
        () = until(call.deadline) => Ok(fail(deadline_exceeded(&call), &HeaderMap::new(), &HeaderMap::new())),
    }
}

/// Relays a server-streaming gRPC response as Connect envelopes.
async fn stream_response<F, ResBody, E>(
    future: F,
    call: Call,
    shared: Arc<Shared>,
) -> Result<Response<Body>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let response = tokio::select! {
        response = future => response?,
        () = until(call.deadline) => {
            return Ok(shared.failure_response(
                Shape::Stream,
                call.content_type(),
                &deadline_exceeded(&call),
                &HeaderMap::new(),
                &HeaderMap::new(),
            ));
        }
    };
    let (parts, body) = response.into_parts();
    if let Some(failure) = Failure::from_trailers(&parts.headers) {
        // Trailers-only: an empty stream, successful or not.
        let failure = (failure.code != Code::Ok).then(|| inner_failure(&call, failure));
        let mut response = Response::new(Body::new(http_body_util::Full::new(
            shared.end_stream(failure.as_ref(), &HeaderMap::new()),
        )));
        copy_metadata(&parts.headers, response.headers_mut(), None);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, call.content_type());
        return Ok(response);
    }
    let mut response_headers = HeaderMap::new();
    copy_metadata(&parts.headers, &mut response_headers, None);
    response_headers.insert(header::CONTENT_TYPE, call.content_type());
    let relay = Relay {
        body: Box::pin(body),
        buf: BytesMut::new(),
        done: false,
        call,
        shared,
    };
    let envelopes = futures::stream::unfold(relay, |mut relay| async move {
        if relay.done {
            return None;
        }
        let envelope = relay.next().await;
        Some((Ok::<_, Status>(Frame::data(envelope)), relay))
    });
    let mut response = Response::new(Body::new(http_body_util::StreamBody::new(envelopes)));
    *response.headers_mut() = response_headers;
    Ok(response)
}

/// A server stream being relayed: gRPC frames in, Connect envelopes out.
struct Relay<B> {
    body: Pin<Box<B>>,
    /// Bytes of gRPC frames not yet complete.
    buf: BytesMut,
    /// The end-stream message went out.
    done: bool,
    call: Call,
    shared: Arc<Shared>,
}

impl<B> Relay<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// The next envelope: a message, or the end-stream message (last).
    async fn next(&mut self) -> Bytes {
        loop {
            if let Some((flags, message)) = codec::take_frame(&mut self.buf) {
                if flags != 0 {
                    return self.end(
                        Some(Failure::new(
                            Code::Internal,
                            "the service sent a compressed message",
                        )),
                        &HeaderMap::new(),
                    );
                }
                return match self.shared.encode_reply(&self.call, message) {
                    Ok(message) => codec::envelope(0, &message),
                    Err(failure) => self.end(Some(failure), &HeaderMap::new()),
                };
            }
            let frame = tokio::select! {
                frame = self.body.frame() => frame,
                () = until(self.call.deadline) => {
                    let failure = deadline_exceeded(&self.call);
                    return self.end(Some(failure), &HeaderMap::new());
                }
            };
            match frame {
                None => {
                    let failure = Failure::new(Code::Internal, "the stream ended without a status");
                    return self.end(Some(failure), &HeaderMap::new());
                }
                Some(Err(e)) => {
                    let failure = Failure::from_status(&Status::from_error(e.into()));
                    return self.end(Some(failure), &HeaderMap::new());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => self.buf.extend_from_slice(&chunk),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        let failure = Failure::from_trailers(&trailers).unwrap_or_else(|| {
                            Failure::new(Code::Internal, "the stream ended without a status")
                        });
                        let failure =
                            (failure.code != Code::Ok).then(|| inner_failure(&self.call, failure));
                        return self.end(failure, &trailers);
                    }
                },
            }
        }
    }

    fn end(&mut self, failure: Option<Failure>, trailers: &HeaderMap) -> Bytes {
        self.done = true;
        if let Some(failure) = &failure {
            tracing::debug!(code = ?failure.code, message = %failure.message, "connect stream failed");
        }
        self.shared.end_stream(failure.as_ref(), trailers)
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
