//! The request side: a Connect call's headers read into a `Call`, and its
//! body turned into the gRPC request the inner service reads (bounded,
//! decompressed, JSON transcoded to protobuf). Separate from the response
//! side, which `unary.rs` and `streaming.rs` handle.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt as _;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Version, header};
use tonic::{Code, Status};

use super::codec::{self, Encoding, FLAG_COMPRESSED, Format};
use super::error::Failure;
use super::{BoxError, Call, Shape, Shared};

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

impl Shared {
    /// Reads a Connect call's headers; what is wrong with them is the
    /// caller's to fix.
    pub(super) fn prepare(
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
                    "unknown method {path:?}; the gateway serves /asyncgate.v1.Gateway/<Method> (Submit, SubmitBatch, Execute, GetTicket, WatchTicket, CancelTicket, ListTickets), /google.longrunning.Operations/<Method> and /grpc.health.v1.Health/Check"
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
}

/// The gRPC request the inner service gets for a Connect call.
pub(super) fn grpc_request<B>(
    request: Request<B>,
    call: &Call,
    shared: &Arc<Shared>,
) -> Request<Body>
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
