//! JSON payloads for gRPC targets that serve reflection: the method's
//! request and reply types are read from the target itself (gRPC server
//! reflection, `grpc.reflection.v1`, else `v1alpha`), the ticket's JSON is
//! encoded as the request message in the proto3 JSON mapping, and the reply
//! is recorded as JSON. So `{"service": ""}` can be submitted to a queue in
//! front of `grpc.health.v1.Health/Check` as it would be typed into
//! grpcurl. A target without reflection gets binary payloads only.
//!
//! The types are fetched once per target and kept for five minutes (a
//! redeployed upstream's new fields are learned then); a failed fetch is
//! kept for thirty seconds, so a target without reflection is not asked at
//! every ticket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::transport::Channel;

use super::http::json_to_proto;
use super::worker::failure;
use crate::domain::Outcome;
use crate::domain::ticket::Payload;
use asyncgate_proto::json::{JsonValue, MAX_JSON_DEPTH};
use asyncgate_proto::v1::payload::Kind;

/// How long fetched types are used before being fetched again.
const KEEP_FOUND: Duration = Duration::from_secs(300);
/// How long a failed fetch is remembered.
const KEEP_FAILED: Duration = Duration::from_secs(30);
/// The whole fetch's deadline.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Files asked for, at most (a schema's dependencies).
const MAX_FILES: usize = 256;

/// The method's request and reply types.
pub(super) struct MethodTypes {
    input: MessageDescriptor,
    output: MessageDescriptor,
}

/// Why JSON cannot be sent: a gRPC code and a message saying what to do;
/// `retryable` when the target could not be reached.
#[derive(Clone, Debug)]
pub(super) struct Unusable {
    pub(super) code: Code,
    pub(super) message: String,
    pub(super) retryable: bool,
}

impl Unusable {
    fn fixed(code: Code, message: String) -> Self {
        Self {
            code,
            message,
            retryable: false,
        }
    }
}

type Fetched = Result<Arc<MethodTypes>, Unusable>;

/// One target method's types, fetched on first need.
pub(super) struct Transcoder {
    channel: Channel,
    /// `/package.Service/Method`.
    path: String,
    headers: Arc<[(MetadataKey<Ascii>, MetadataValue<Ascii>)]>,
    /// The last fetch and when it was made. An async lock, held across the
    /// fetch on purpose: concurrent tickets wait for one fetch rather than
    /// each making their own.
    cached: tokio::sync::Mutex<Option<(Instant, Fetched)>>,
}

impl Transcoder {
    pub(super) fn new(
        channel: Channel,
        path: String,
        headers: Arc<[(MetadataKey<Ascii>, MetadataValue<Ascii>)]>,
    ) -> Self {
        Self {
            channel,
            path,
            headers,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The method's types, from the cache or the target.
    pub(super) async fn types(&self) -> Fetched {
        let mut cached = self.cached.lock().await;
        if let Some((at, fetched)) = cached.as_ref() {
            let keep = if fetched.is_ok() {
                KEEP_FOUND
            } else {
                KEEP_FAILED
            };
            if at.elapsed() < keep {
                return fetched.clone();
            }
        }
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(Unusable {
                code: Code::Unavailable,
                message: format!(
                    "the target's reflection did not answer within {FETCH_TIMEOUT:?} (needed to send a JSON payload)"
                ),
                retryable: true,
            }),
        };
        // A target that could not be reached is asked again next time.
        if !matches!(&fetched, Err(unusable) if unusable.retryable) {
            *cached = Some((Instant::now(), fetched.clone()));
        }
        fetched
    }

    async fn fetch(&self) -> Fetched {
        let (service, method) = self.path[1..].split_once('/').ok_or_else(|| {
            Unusable::fixed(Code::Internal, format!("{:?}: no method", self.path))
        })?;
        let files = match self.files(service, Version::V1).await {
            Err(status) if status.code() == Code::Unimplemented => {
                self.files(service, Version::V1Alpha).await
            }
            files => files,
        }
        .map_err(|status| match status.code() {
            Code::Unimplemented => Unusable::fixed(
                Code::InvalidArgument,
                format!(
                    "a JSON payload needs the target to serve gRPC reflection, which it does not ({}); submit the encoded request message as a binary payload",
                    status.message()
                ),
            ),
            Code::Unavailable | Code::DeadlineExceeded => Unusable {
                code: status.code(),
                message: format!("the target is unreachable: {}", status.message()),
                retryable: true,
            },
            code => Unusable::fixed(
                Code::InvalidArgument,
                format!(
                    "the target's reflection answered {code:?} for {service}: {}; submit the encoded request message as a binary payload",
                    status.message()
                ),
            ),
        })?;
        let mut pool = DescriptorPool::global();
        let new: Vec<prost_types::FileDescriptorProto> = files
            .into_iter()
            .filter(|file| pool.get_file_by_name(file.name()).is_none())
            .collect();
        pool.add_file_descriptor_protos(new).map_err(|e| {
            Unusable::fixed(
                Code::InvalidArgument,
                format!("the target's reflection describes {service} in files that do not fit together: {e}"),
            )
        })?;
        let described = pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == method))
            .ok_or_else(|| {
                Unusable::fixed(
                    Code::InvalidArgument,
                    format!("the target's reflection does not describe {}", self.path),
                )
            })?;
        if described.is_client_streaming() || described.is_server_streaming() {
            return Err(Unusable::fixed(
                Code::InvalidArgument,
                format!("{} streams; a target is a unary method", self.path),
            ));
        }
        Ok(Arc::new(MethodTypes {
            input: described.input(),
            output: described.output(),
        }))
    }
}

/// The reflection service's two versions (the same messages, two packages).
#[derive(Clone, Copy)]
enum Version {
    V1,
    V1Alpha,
}

/// Asks the reflection service of one version for the file defining
/// `symbol` and then, one by one, for the dependencies it did not send.
macro_rules! reflect {
    ($name:ident, $pb:ident) => {
        async fn $name(
            channel: Channel,
            headers: &[(MetadataKey<Ascii>, MetadataValue<Ascii>)],
            symbol: &str,
        ) -> Result<Vec<prost_types::FileDescriptorProto>, tonic::Status> {
            use tonic_reflection::pb::$pb::ServerReflectionRequest;
            use tonic_reflection::pb::$pb::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$pb::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$pb::server_reflection_response::MessageResponse;
            let (ask, asks) = tokio::sync::mpsc::channel(4);
            let mut request =
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(asks));
            for (key, value) in headers {
                request.metadata_mut().insert(key.clone(), value.clone());
            }
            let first = MessageRequest::FileContainingSymbol(symbol.to_owned());
            let to_request = |message| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message),
            };
            ask.send(to_request(first))
                .await
                .map_err(|_| tonic::Status::internal("the reflection stream closed"))?;
            let mut answers = ServerReflectionClient::new(channel)
                .server_reflection_info(request)
                .await?
                .into_inner();
            let mut files: Vec<prost_types::FileDescriptorProto> = Vec::new();
            let mut asked = std::collections::HashSet::new();
            loop {
                let answer = answers
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::unavailable("the reflection stream ended"))?;
                match answer.message_response {
                    Some(MessageResponse::FileDescriptorResponse(found)) => {
                        for bytes in found.file_descriptor_proto {
                            let file = prost_types::FileDescriptorProto::decode(&bytes[..])
                                .map_err(|e| tonic::Status::internal(e.to_string()))?;
                            if !files.iter().any(|f| f.name == file.name) {
                                files.push(file);
                            }
                        }
                    }
                    Some(MessageResponse::ErrorResponse(error)) if files.is_empty() => {
                        return Err(tonic::Status::new(
                            Code::from(error.error_code),
                            error.error_message,
                        ));
                    }
                    // A dependency it does not have: the well-known
                    // types are known here already.
                    _ => {}
                }
                let missing = files
                    .iter()
                    .flat_map(|f| f.dependency.iter())
                    .find(|name| {
                        !files.iter().any(|f| f.name() == name.as_str())
                            && !asked.contains(*name)
                            && DescriptorPool::global().get_file_by_name(name).is_none()
                    })
                    .cloned();
                match missing {
                    Some(name) if asked.len() < MAX_FILES => {
                        asked.insert(name.clone());
                        ask.send(to_request(MessageRequest::FileByFilename(name)))
                            .await
                            .map_err(|_| tonic::Status::internal("the reflection stream closed"))?;
                    }
                    _ => return Ok(files),
                }
            }
        }
    };
}

reflect!(files_v1, v1);
reflect!(files_v1alpha, v1alpha);

impl Transcoder {
    async fn files(
        &self,
        service: &str,
        version: Version,
    ) -> Result<Vec<prost_types::FileDescriptorProto>, tonic::Status> {
        let channel = self.channel.clone();
        match version {
            Version::V1 => files_v1(channel, &self.headers, service).await,
            Version::V1Alpha => files_v1alpha(channel, &self.headers, service).await,
        }
    }
}

impl MethodTypes {
    /// The ticket's JSON as the encoded request message.
    pub(super) fn encode(&self, json: serde_json::Value) -> Result<Bytes, String> {
        let message = DynamicMessage::deserialize(self.input.clone(), json).map_err(|e| {
            format!(
                "the JSON payload is not a {} (the method's request) in the proto3 JSON mapping: {e}",
                self.input.full_name()
            )
        })?;
        Ok(message.encode_to_vec().into())
    }

    /// The outcome of a call that answered `reply`: the reply as JSON
    /// (kept as bytes if nested deeper than a payload may be), or a failure
    /// if it is not the reply type.
    pub(super) fn reply(&self, reply: Bytes) -> Outcome {
        let json = DynamicMessage::decode(self.output.clone(), reply.clone())
            .map_err(|e| {
                format!(
                    "the target's reply is not a {} as its reflection describes it: {e}",
                    self.output.full_name()
                )
            })
            .and_then(|message| {
                serde_json::to_value(&message)
                    .map_err(|e| format!("the reply does not print as JSON: {e}"))
            });
        let value = match json {
            Ok(value) => JsonValue::from_value(&json_to_proto(value)),
            Err(message) => return failure(Code::Internal as i32, message, false),
        };
        let payload = match value.check(MAX_JSON_DEPTH) {
            Ok(()) => Payload {
                kind: Some(Kind::Json(value)),
                content_type: "application/json".into(),
            },
            Err(_) => Payload {
                kind: Some(Kind::Binary(reply)),
                content_type: "application/x-protobuf".into(),
            },
        };
        Outcome::Success(payload)
    }
}
