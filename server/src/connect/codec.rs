//! The bytes of the Connect protocol: which method a path names (from the
//! descriptor set the gateway embeds for reflection), JSON ↔ protobuf
//! transcoding with `prost-reflect`, the envelopes of streaming calls, the
//! gRPC frames the inner services speak, and request decompression.
//!
//! Binary (`application/proto`) bodies are never decoded here: they are the
//! same protobuf bytes gRPC carries, only framed differently, so the inner
//! service validates them exactly as it validates gRPC calls. JSON is
//! transcoded through a dynamic message, which also rejects what is not the
//! method's input type (unknown fields included, so that a typo is named
//! rather than silently dropped).

use std::io::Read as _;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor,
    SerializeOptions,
};
use tonic::codegen::http::HeaderValue;

/// Envelope flag: the message is compressed with the stream's encoding.
pub(super) const FLAG_COMPRESSED: u8 = 0b01;
/// Envelope flag: the end-of-stream message (JSON), last of a response.
pub(super) const FLAG_END_STREAM: u8 = 0b10;

/// How messages are written in a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// Protobuf's JSON mapping (`application/json`, `application/connect+json`).
    Json,
    /// Protobuf's binary encoding (`application/proto`, `application/connect+proto`).
    Proto,
}

/// The messages and services the gateway serves, by name.
pub(super) struct Schema {
    pool: DescriptorPool,
}

impl Schema {
    /// Every service the gateway serves (asyncgate.v1, google.longrunning,
    /// grpc.health.v1) and the error details it sends (google.rpc).
    pub(super) fn load() -> Result<Self, String> {
        let mut pool = DescriptorPool::decode(asyncgate_proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| e.to_string())?;
        for set in [
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_types::pb::FILE_DESCRIPTOR_SET,
        ] {
            // google.rpc.Status is in several sets (under different file
            // names): add each file whose messages are new.
            let set = prost_types::FileDescriptorSet::decode(set).map_err(|e| e.to_string())?;
            let new: Vec<_> = set
                .file
                .into_iter()
                .filter(|file| {
                    pool.get_file_by_name(file.name()).is_none()
                        && !file.message_type.iter().any(|message| {
                            let name = format!("{}.{}", file.package(), message.name());
                            pool.get_message_by_name(&name).is_some()
                        })
                })
                .collect();
            pool.add_file_descriptor_protos(new)
                .map_err(|e| e.to_string())?;
        }
        Ok(Self { pool })
    }

    /// The method a request path names (`/asyncgate.v1.Gateway/Submit`).
    pub(super) fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }

    /// A message type by its full name (`google.rpc.BadRequest`).
    pub(super) fn message(&self, name: &str) -> Option<MessageDescriptor> {
        self.pool.get_message_by_name(name)
    }
}

/// Transcodes a JSON message of type `desc` into protobuf; the error says
/// what is wrong and where (serde's line and column).
pub(super) fn json_to_proto(desc: &MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize_with_options(
        desc.clone(),
        &mut deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .and_then(|message| deserializer.end().map(|()| message))
    .map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

/// Transcodes a protobuf message of type `desc` into JSON (protobuf's
/// canonical mapping: lowerCamelCase names, enums by name, 64-bit integers
/// as strings, default values left out).
pub(super) fn proto_to_json(desc: &MessageDescriptor, proto: &[u8]) -> Result<Vec<u8>, String> {
    let message = DynamicMessage::decode(desc.clone(), proto).map_err(|e| e.to_string())?;
    let mut json = Vec::with_capacity(proto.len() * 2);
    let mut serializer = serde_json::Serializer::new(&mut json);
    message
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .map_err(|e| e.to_string())?;
    Ok(json)
}

/// One gRPC length-prefixed message (uncompressed).
pub(super) fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// One Connect envelope.
pub(super) fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(flags);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// Takes the first whole length-prefixed message (gRPC frame or Connect
/// envelope, the same layout) off `buf`: its flags and bytes, or `None`
/// until it has all arrived.
pub(super) fn take_frame(buf: &mut BytesMut) -> Option<(u8, Bytes)> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let flags = buf.get_u8();
    buf.advance(4);
    Some((flags, buf.split_to(len).freeze()))
}

/// A content coding of request bodies (unary) or messages (streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encoding {
    /// Not compressed.
    Identity,
    /// gzip (flate2, already in the tree through tonic's gzip support).
    Gzip,
}

/// What a refused `Content-Encoding` is answered with.
pub(super) const SUPPORTED_ENCODINGS: &str = "gzip, identity";

impl Encoding {
    /// Reads an encoding header; an unsupported one is an error naming it.
    pub(super) fn parse(header: Option<&HeaderValue>) -> Result<Self, String> {
        let Some(value) = header else {
            return Ok(Self::Identity);
        };
        match value.to_str().map(str::trim) {
            Ok("" | "identity") => Ok(Self::Identity),
            Ok(name) if name.eq_ignore_ascii_case("gzip") => Ok(Self::Gzip),
            _ => Err(format!(
                "content encoding {value:?} is not supported; the gateway accepts {SUPPORTED_ENCODINGS}"
            )),
        }
    }

    /// Decompresses `bytes`, refusing to produce more than `limit` bytes
    /// (`Err(None)`), or a body that is not valid (`Err(Some(reason))`).
    pub(super) fn decode(self, bytes: Bytes, limit: usize) -> Result<Bytes, Option<String>> {
        match self {
            Self::Identity => Ok(bytes),
            Self::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .take(limit as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| Some(format!("the gzip body cannot be decompressed: {e}")))?;
                if out.len() > limit {
                    return Err(None);
                }
                Ok(out.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_protobuf() {
        let schema = Schema::load().unwrap();
        let submit = schema.method("/asyncgate.v1.Gateway/Submit").unwrap();
        let proto = json_to_proto(
            &submit.input(),
            br#"{"queue":"q","payload":{"json":{"a":[1,"x",null]}},"maxAttempts":2}"#,
        )
        .unwrap();
        let json = proto_to_json(&submit.input(), &proto).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"queue":"q","payload":{"json":{"a":[1.0,"x",null]}},"maxAttempts":2})
        );
        let error = json_to_proto(&submit.input(), br#"{"queue":"q","payloadd":{}}"#).unwrap_err();
        assert!(error.contains("payloadd"), "{error}");
        assert!(json_to_proto(&submit.input(), b"{\"queue\":").is_err());
        assert!(schema.method("/asyncgate.v1.Gateway/Nope").is_none());
        assert!(schema.method("/grpc.health.v1.Health/Check").is_some());
        assert!(schema.message("google.rpc.BadRequest").is_some());
    }

    #[test]
    fn frames_come_off_whole() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&envelope(FLAG_END_STREAM, b"{}"));
        buf.extend_from_slice(&grpc_frame(b"abc")[..4]);
        assert_eq!(
            take_frame(&mut buf),
            Some((FLAG_END_STREAM, Bytes::from_static(b"{}")))
        );
        assert_eq!(take_frame(&mut buf), None, "a partial frame waits");
        buf.extend_from_slice(&grpc_frame(b"abc")[4..]);
        assert_eq!(take_frame(&mut buf), Some((0, Bytes::from_static(b"abc"))));
    }

    #[test]
    fn gzip_is_bounded() {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&[b'x'; 10_000]).unwrap();
        let gz = Bytes::from(encoder.finish().unwrap());
        assert_eq!(
            Encoding::Gzip.decode(gz.clone(), 10_000).unwrap().len(),
            10_000
        );
        assert_eq!(Encoding::Gzip.decode(gz, 9_999), Err(None));
        assert!(matches!(
            Encoding::Gzip.decode(Bytes::from_static(b"nope"), 10),
            Err(Some(_))
        ));
        assert!(Encoding::parse(Some(&HeaderValue::from_static("br"))).is_err());
    }
}
