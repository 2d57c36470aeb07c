//! What unary and streaming responses share: a reply message in the call's
//! format, a failure as the call's shape answers it, the end-stream message,
//! and which headers are call metadata (not gRPC framing).

use bytes::Bytes;
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue, Response, header};

use super::codec::{self, FLAG_END_STREAM, Format};
use super::error::{self, Failure};
use super::{Call, Shape, Shared};

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

impl Shared {
    /// Any failure as the call's shape answers it.
    pub(super) fn failure_response(
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
    pub(super) fn end_stream(&self, failure: Option<&Failure>, trailers: &HeaderMap) -> Bytes {
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
    pub(super) fn encode_reply(&self, call: &Call, message: Bytes) -> Result<Bytes, Failure> {
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
pub(super) fn copy_metadata(from: &HeaderMap, to: &mut HeaderMap, prefix: Option<&str>) {
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
