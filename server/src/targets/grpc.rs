//! A unary gRPC method called with raw bytes: the ticket's binary payload is
//! the request message as encoded, the reply's bytes are the result. No
//! schema is needed, so any existing service can be a target unchanged (a
//! JSON payload is transcoded when the target serves reflection; see
//! `transcode.rs`).

use std::sync::Arc;
use std::time::Duration;

use asyncgate_proto::v1::payload::Kind;
use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use super::http::proto_to_json;
use super::setting::grpc_code_name;
use super::transcode::Transcoder;
use super::worker::{failure, time_left};
use super::{RetryOn, TargetSetting};
use crate::callbacks::{CallbackSettings, CheckedConnector};
use crate::domain::ticket::Payload;
use crate::domain::{Outcome, TicketError};
use crate::engine::Claimed;

/// Passes message bytes through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Upstream codes another attempt may fix, unless `retry_on` says.
const RETRYABLE: [Code; 4] = [
    Code::Unavailable,
    Code::ResourceExhausted,
    Code::DeadlineExceeded,
    Code::Aborted,
];

/// One target method on one HTTP/2 channel (reused by every call).
#[derive(Clone)]
pub(crate) struct GrpcTarget {
    channel: Channel,
    path: tonic::codegen::http::uri::PathAndQuery,
    /// `header_env` headers, added to every call after the ticket's
    /// metadata (so a ticket cannot override them).
    headers: Arc<[(MetadataKey<Ascii>, MetadataValue<Ascii>)]>,
    /// The codes retried.
    retry_on: Arc<[Code]>,
    /// For JSON payloads: the method's types, from the target's reflection.
    transcoder: Arc<Transcoder>,
}

impl GrpcTarget {
    /// A lazily connected channel to the target's origin (`https://` with
    /// its `ca_file`, else the system roots, and its client identity).
    /// With a `policy` (a target set through the admin API), each connect
    /// resolves the host itself and only reaches addresses it allows.
    pub(crate) fn new(
        target: &TargetSetting,
        policy: Option<Arc<CallbackSettings>>,
    ) -> Result<Self, String> {
        let origin = &target.origin;
        let options = &target.options;
        let endpoint = Endpoint::from_shared(origin.clone())
            .map_err(|e| format!("{origin:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let endpoint = if origin.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &options.ca_file {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(&ca.pem.0)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &options.identity {
                tls = tls.identity(Identity::from_pem(&cert.pem.0, &key.pem.0));
            }
            endpoint
                .tls_config(tls)
                .map_err(|e| format!("{origin:?}: {e}"))?
        } else {
            endpoint
        };
        let mut headers = Vec::with_capacity(options.headers.len());
        for header in &options.headers {
            let mut value: MetadataValue<Ascii> =
                header.value.0.parse().map_err(|_| {
                    format!("header_env {}: not a valid metadata value", header.name)
                })?;
            value.set_sensitive(true);
            let key = header
                .name
                .parse()
                .map_err(|_| format!("header_env {}: not a valid metadata key", header.name))?;
            headers.push((key, value));
        }
        let retry_on = match &options.retry_on {
            Some(RetryOn::Codes(codes)) => codes.clone(),
            _ => RETRYABLE.to_vec(),
        };
        let channel = match policy {
            Some(policy) => endpoint.connect_with_connector_lazy(CheckedConnector(policy)),
            None => endpoint.connect_lazy(),
        };
        let headers: Arc<[_]> = headers.into();
        let transcoder = Transcoder::new(channel.clone(), target.path.clone(), headers.clone());
        Ok(Self {
            channel,
            path: target
                .path
                .parse()
                .map_err(|e| format!("{:?} is not a method path: {e}", target.path))?,
            headers,
            retry_on: retry_on.into(),
            transcoder: Arc::new(transcoder),
        })
    }

    /// Calls the target for one attempt; the outcome to record.
    pub(crate) async fn attempt(&self, claimed: &Claimed, max_payload_bytes: usize) -> Outcome {
        let ticket = &claimed.ticket;
        // JSON is transcoded with the types the target's reflection gives.
        let (message, json) = match &ticket.payload.kind {
            Some(Kind::Binary(bytes)) => (bytes.clone(), None),
            None => (Bytes::new(), None),
            Some(Kind::Json(value)) => {
                let types = match self.transcoder.types().await {
                    Ok(types) => types,
                    Err(unusable) => {
                        return failure(unusable.code as i32, unusable.message, unusable.retryable);
                    }
                };
                let value = match value.decode() {
                    Ok(value) => proto_to_json(&value),
                    Err(e) => {
                        let message = format!("the JSON payload does not decode: {e}");
                        return failure(Code::InvalidArgument as i32, message, false);
                    }
                };
                match types.encode(value) {
                    Ok(bytes) => (bytes, Some(types)),
                    Err(message) => return failure(Code::InvalidArgument as i32, message, false),
                }
            }
        };
        match self
            .call(message, &ticket.metadata, time_left(claimed))
            .await
        {
            Ok(reply) if reply.len() > max_payload_bytes => failure(
                Code::ResourceExhausted as i32,
                format!(
                    "the target's reply is {} bytes, above --max-payload-bytes ({max_payload_bytes})",
                    reply.len()
                ),
                false,
            ),
            Ok(reply) => match &json {
                Some(types) => types.reply(reply),
                None => Outcome::Success(Payload {
                    kind: Some(Kind::Binary(reply)),
                    content_type: "application/x-protobuf".into(),
                }),
            },
            Err(Unreachable(status)) => {
                failure(status.code() as i32, status.message().into(), true)
            }
            Err(Answered(status)) => {
                let retryable = self.retry_on.contains(&status.code());
                let error = TicketError {
                    code: status.code() as i32,
                    message: format!(
                        "the target answered {}: {}",
                        grpc_code_name(status.code()),
                        status.message()
                    ),
                    retryable,
                };
                match pushback(&status) {
                    Some(after) if retryable => Outcome::RetryAfter(error, after),
                    _ => Outcome::Failure(error),
                }
            }
        }
    }

    /// Calls the method with `message` within `deadline` (sent as
    /// `grpc-timeout`), forwarding `metadata` as ASCII request metadata
    /// (entries that are not valid metadata are left out).
    async fn call(
        &self,
        message: Bytes,
        metadata: &std::collections::HashMap<String, String>,
        deadline: Option<Duration>,
    ) -> Result<Bytes, CallError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| {
            Unreachable(Status::unavailable(format!(
                "the target is unreachable: {e}"
            )))
        })?;
        let mut request = Request::new(message);
        for (key, value) in metadata {
            if let (Ok(key), Ok(value)) = (
                key.to_ascii_lowercase().parse::<MetadataKey<Ascii>>(),
                value.parse(),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        for (key, value) in self.headers.iter() {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        let reply = grpc
            .unary(request, self.path.clone(), BytesCodec)
            .await
            .map_err(Answered)?;
        Ok(reply.into_inner())
    }
}

/// Why a call failed: the channel never became ready (always retried,
/// whatever `retry_on` says), or the call ended with a status.
enum CallError {
    Unreachable(Status),
    Answered(Status),
}
use CallError::{Answered, Unreachable};

/// The retry delay an upstream asked for in `grpc-retry-pushback-ms` (gRPC
/// A6); a value that is not a whole number of milliseconds is ignored.
fn pushback(status: &Status) -> Option<Duration> {
    let value = status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}
