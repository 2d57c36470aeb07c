//! Connect errors: a gRPC status (from the inner service's trailers, or one
//! this layer made) as the Connect protocol writes it — a JSON object with
//! the code's name, the message and the details, sent as a unary response's
//! body (with the HTTP status the code maps to) or as a stream's end-stream
//! message (after HTTP 200).
//!
//! Details are `google.protobuf.Any` values as Connect clients read them
//! (`type` without the URL prefix, `value` in base64); those whose type the
//! gateway knows (google.rpc.BadRequest and friends) also carry a `debug`
//! rendering in JSON, so that a hand-written `fetch` client can read which
//! field to fix without decoding protobuf.

use base64::Engine as _;
use prost::Message as _;
use serde_json::{Map, Value, json};
use tonic::Code;
use tonic::codegen::http::{HeaderMap, StatusCode};

use super::codec::{Schema, proto_to_json};

/// Standard base64, written without padding and read with or without it
/// (gRPC's `-bin` headers and Connect's detail values both allow either).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A status as the Connect layer carries it.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// The gRPC code.
    pub(super) code: Code,
    /// For people.
    pub(super) message: String,
    /// An encoded `google.rpc.Status` (`grpc-status-details-bin`), or empty.
    pub(super) details: bytes::Bytes,
}

impl Failure {
    /// A failure this layer decided on.
    pub(super) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: bytes::Bytes::new(),
        }
    }

    /// The status in gRPC trailers (or a trailers-only response's headers):
    /// `None` without `grpc-status`. Never panics on a malformed header.
    pub(super) fn from_trailers(headers: &HeaderMap) -> Option<Self> {
        let code = Code::from_bytes(headers.get("grpc-status")?.as_bytes());
        let message = headers
            .get("grpc-message")
            .map(|v| {
                percent_encoding::percent_decode(v.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let details = headers
            .get("grpc-status-details-bin")
            .and_then(|v| BASE64.decode(v.as_bytes()).ok())
            .map(bytes::Bytes::from)
            .unwrap_or_default();
        Some(Self {
            code,
            message,
            details,
        })
    }

    /// From a `tonic::Status` (a body error the inner stack raised).
    pub(super) fn from_status(status: &tonic::Status) -> Self {
        Self {
            code: status.code(),
            message: status.message().to_owned(),
            details: status.details().to_vec().into(),
        }
    }

    /// The error as Connect's JSON object.
    pub(super) fn to_json(&self, schema: &Schema) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), code_name(self.code).into());
        if !self.message.is_empty() {
            error.insert("message".into(), self.message.clone().into());
        }
        let details = tonic_types::pb::Status::decode(&self.details[..])
            .map(|status| status.details)
            .unwrap_or_default();
        if !details.is_empty() {
            let details: Vec<Value> = details
                .iter()
                .map(|any| {
                    let name = any.type_url.rsplit('/').next().unwrap_or_default();
                    let mut detail = json!({
                        "type": name,
                        "value": BASE64.encode(&any.value),
                    });
                    if let Some(debug) = schema
                        .message(name)
                        .and_then(|desc| proto_to_json(&desc, &any.value).ok())
                        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
                    {
                        detail["debug"] = debug;
                    }
                    detail
                })
                .collect();
            error.insert("details".into(), details.into());
        }
        Value::Object(error)
    }
}

/// Connect's name of a code (`canceled` is spelled the American way).
pub(super) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Cancelled => "canceled",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
        // OK is never an error; anything else is unknown.
        Code::Ok | Code::Unknown => "unknown",
    }
}

/// The HTTP status of a unary error (the protocol's table).
pub(super) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_the_protocol_says() {
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(http_status(Code::ResourceExhausted).as_u16(), 429);
        assert_eq!(http_status(Code::Unimplemented).as_u16(), 501);
        assert_eq!(http_status(Code::FailedPrecondition).as_u16(), 400);
        assert_eq!(http_status(Code::Unauthenticated).as_u16(), 401);
        assert_eq!(code_name(Code::Cancelled), "canceled");
    }

    #[test]
    fn details_carry_a_readable_rendering() {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "queue: must not be empty",
            ErrorDetails::with_bad_request_violation("queue", "must not be empty"),
        );
        let trailers = status
            .into_http::<tonic::body::Body>()
            .into_parts()
            .0
            .headers;
        let failure = Failure::from_trailers(&trailers).unwrap();
        let json = failure.to_json(&Schema::load().unwrap());
        assert_eq!(json["code"], "invalid_argument");
        assert_eq!(json["message"], "queue: must not be empty");
        assert_eq!(json["details"][0]["type"], "google.rpc.BadRequest");
        assert_eq!(
            json["details"][0]["debug"]["fieldViolations"][0]["field"],
            "queue"
        );
        let broken = {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", "3".parse().unwrap());
            headers.insert("grpc-message", "bad%20thing".parse().unwrap());
            headers.insert("grpc-status-details-bin", "!!!".parse().unwrap());
            headers
        };
        let failure = Failure::from_trailers(&broken).unwrap();
        assert_eq!(failure.message, "bad thing");
        assert!(failure.details.is_empty(), "malformed details are dropped");
    }
}
