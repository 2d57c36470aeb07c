//! JSON payloads kept in their encoded form: [`JsonValue`] stands in for
//! `google.protobuf.Value` in every generated message (`Payload.json`).
//!
//! Why: a decoded `Value` tree costs about 40 bytes of heap per node, so a
//! 4 MiB body of two million empty values became 70–90 MiB per pending
//! ticket (and gzip makes such a body 4 KiB on the wire). Kept encoded, a
//! JSON payload costs what it weighs, and nothing on the path from client
//! to worker decodes it: a gateway stores and forwards the bytes, and a
//! worker's connection never fails to decode a task because of its body.
//!
//! Decoding a [`JsonValue`] copies the field bytes and checks nothing inside
//! them; [`JsonValue::check`] walks the encoding (no tree, no recursion
//! beyond [`MAX_JSON_DEPTH`]) to prove it is a well-formed `Value` that any
//! protobuf runtime decodes: the gateway checks every payload it accepts.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType, decode_varint, encode_key, encode_varint};

/// Deepest nesting of lists and objects accepted in a JSON payload.
///
/// A JSON object costs three protobuf message levels (`Value`, `Struct`, the
/// map entry) and a list two; protobuf runtimes (prost, upb, the Java and
/// C++ runtimes) stop decoding at 100 levels, and a payload travels inside
/// up to four levels of envelope (`DispatchMessage` → `Task` → `Payload`, or
/// `TicketEvent` → `Ticket` → `Payload`). 24 objects deep is 72 + 4 levels:
/// every worker and watcher decodes every accepted payload, with room left.
pub const MAX_JSON_DEPTH: usize = 24;

/// An encoded `google.protobuf.Value` (the bytes of its fields).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct JsonValue {
    encoded: Bytes,
}

impl JsonValue {
    /// Wraps the encoding of a `google.protobuf.Value` (unchecked; see
    /// [`JsonValue::check`]).
    pub fn from_encoded(encoded: impl Into<Bytes>) -> Self {
        Self {
            encoded: encoded.into(),
        }
    }

    /// Encodes a decoded value.
    pub fn from_value(value: &prost_types::Value) -> Self {
        Self::from_encoded(prost::Message::encode_to_vec(value))
    }

    /// The encoding, as a `google.protobuf.Value` message body.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// Decodes the tree (for a JSON view: CLI output, a handler that wants
    /// `serde_json`). Fails on a malformed or too deeply nested encoding.
    pub fn decode(&self) -> Result<prost_types::Value, DecodeError> {
        prost::Message::decode(self.encoded.clone())
    }

    /// Checks that this is a well-formed `Value` nested at most `max_depth`
    /// lists/objects deep, with valid UTF-8 strings and keys.
    pub fn check(&self, max_depth: usize) -> Result<(), JsonError> {
        check_value(&self.encoded, max_depth)
    }
}

impl fmt::Debug for JsonValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.decode() {
            Ok(value) => fmt::Debug::fmt(&value, f),
            Err(_) => write!(f, "JsonValue({} undecodable bytes)", self.encoded.len()),
        }
    }
}

impl prost::Message for JsonValue {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.encoded);
    }

    /// Keeps the field as it came (a copy: the receive buffer is not
    /// pinned); fields of a repeated merge are appended, as protobuf's
    /// merge semantics ask.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        _ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut out = BytesMut::with_capacity(self.encoded.len() + 16);
        out.extend_from_slice(&self.encoded);
        encode_key(tag, wire_type, &mut out);
        match wire_type {
            WireType::Varint => encode_varint(decode_varint(buf)?, &mut out),
            WireType::ThirtyTwoBit => copy(buf, 4, &mut out)?,
            WireType::SixtyFourBit => copy(buf, 8, &mut out)?,
            WireType::LengthDelimited => {
                let len = decode_varint(buf)?;
                let len = usize::try_from(len).map_err(|_| truncated())?;
                encode_varint(len as u64, &mut out);
                copy(buf, len, &mut out)?;
            }
            WireType::StartGroup | WireType::EndGroup => {
                #[allow(deprecated)]
                return Err(DecodeError::new("groups are not allowed in a JSON value"));
            }
        }
        self.encoded = out.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    fn clear(&mut self) {
        self.encoded = Bytes::new();
    }
}

fn truncated() -> DecodeError {
    #[allow(deprecated)]
    DecodeError::new("buffer underflow")
}

fn copy(buf: &mut impl Buf, len: usize, out: &mut BytesMut) -> Result<(), DecodeError> {
    if buf.remaining() < len {
        return Err(truncated());
    }
    out.reserve(len);
    let mut left = len;
    while left > 0 {
        let chunk = buf.chunk();
        let n = chunk.len().min(left);
        out.extend_from_slice(&chunk[..n]);
        buf.advance(n);
        left -= n;
    }
    Ok(())
}

/// Why an encoded JSON value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Lists and objects nest deeper than the limit.
    #[error("nests lists and objects more than {limit} levels deep; flatten it")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a `google.protobuf.Value`.
    #[error("is not a valid google.protobuf.Value: {0}")]
    Malformed(&'static str),
}

/// Field numbers of `google.protobuf.Value`.
mod value {
    pub(super) const NULL: u32 = 1;
    pub(super) const NUMBER: u32 = 2;
    pub(super) const STRING: u32 = 3;
    pub(super) const BOOL: u32 = 4;
    pub(super) const STRUCT: u32 = 5;
    pub(super) const LIST: u32 = 6;
}

/// A container being walked: what is left of its body, how deep it sits,
/// and whether it is a `Struct` (map entries) or a `ListValue` (values).
struct Frame<'a> {
    body: &'a [u8],
    depth: usize,
    is_struct: bool,
}

/// Walks the encoding with an explicit stack of open containers (no
/// recursion, and no frame per element: the stack never holds more than
/// `max_depth` frames, however many values a list has).
fn check_value(encoded: &[u8], max_depth: usize) -> Result<(), JsonError> {
    let mut stack = Vec::new();
    check_one_value(encoded, 0, max_depth, &mut stack)?;
    while let Some(frame) = stack.last_mut() {
        if frame.body.is_empty() {
            stack.pop();
            continue;
        }
        let depth = frame.depth;
        let value = match (frame.is_struct, next_field(&mut frame.body)?) {
            (false, (1, WireType::LengthDelimited, Some(value))) => value,
            (true, (1, WireType::LengthDelimited, Some(mut entry))) => {
                let mut value = None;
                while !entry.is_empty() {
                    match next_field(&mut entry)? {
                        (1, WireType::LengthDelimited, Some(key)) => utf8(key)?,
                        (2, WireType::LengthDelimited, Some(inner)) if value.is_none() => {
                            value = Some(inner);
                        }
                        _ => {
                            return Err(JsonError::Malformed("unexpected field in a Struct entry"));
                        }
                    }
                }
                value.unwrap_or_default()
            }
            (false, _) => return Err(JsonError::Malformed("unexpected field in a ListValue")),
            (true, _) => return Err(JsonError::Malformed("unexpected field in a Struct")),
        };
        check_one_value(value, depth, max_depth, &mut stack)?;
    }
    Ok(())
}

/// Checks one `Value` body at `depth`: a scalar on the spot, a container by
/// pushing a frame. A `Value` holds one kind (the oneof), so it pushes at
/// most one frame.
fn check_one_value<'a>(
    mut body: &'a [u8],
    depth: usize,
    max_depth: usize,
    stack: &mut Vec<Frame<'a>>,
) -> Result<(), JsonError> {
    let mut kinds = 0;
    while !body.is_empty() {
        kinds += 1;
        if kinds > 1 {
            return Err(JsonError::Malformed("a Value holds more than one kind"));
        }
        match next_field(&mut body)? {
            (value::NULL | value::BOOL, WireType::Varint, _) => {}
            (value::NUMBER, WireType::SixtyFourBit, _) => {}
            (value::STRING, WireType::LengthDelimited, Some(text)) => utf8(text)?,
            (field @ (value::STRUCT | value::LIST), WireType::LengthDelimited, Some(inner)) => {
                if depth >= max_depth {
                    return Err(JsonError::TooDeep { limit: max_depth });
                }
                stack.push(Frame {
                    body: inner,
                    depth: depth + 1,
                    is_struct: field == value::STRUCT,
                });
            }
            _ => return Err(JsonError::Malformed("unexpected field in a Value")),
        }
    }
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<(), JsonError> {
    std::str::from_utf8(bytes)
        .map(drop)
        .map_err(|_| JsonError::Malformed("a string is not valid UTF-8"))
}

/// The next field of a message body: number, wire type and, for a
/// length-delimited field, its bytes.
fn next_field<'a>(body: &mut &'a [u8]) -> Result<(u32, WireType, Option<&'a [u8]>), JsonError> {
    const BAD: JsonError = JsonError::Malformed("truncated or invalid encoding");
    let key = decode_varint(body).map_err(|_| BAD)?;
    if key > u64::from(u32::MAX) {
        return Err(BAD);
    }
    let wire = WireType::try_from(key & 7).map_err(|_| BAD)?;
    let field = (key >> 3) as u32;
    if field == 0 {
        return Err(BAD);
    }
    let data = match wire {
        WireType::Varint => {
            decode_varint(body).map_err(|_| BAD)?;
            None
        }
        WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
            let n = if wire == WireType::SixtyFourBit { 8 } else { 4 };
            if body.len() < n {
                return Err(BAD);
            }
            *body = &body[n..];
            None
        }
        WireType::LengthDelimited => {
            let len = decode_varint(body).map_err(|_| BAD)?;
            let len = usize::try_from(len).map_err(|_| BAD)?;
            if body.len() < len {
                return Err(BAD);
            }
            let (data, rest) = body.split_at(len);
            *body = rest;
            Some(data)
        }
        WireType::StartGroup | WireType::EndGroup => return Err(BAD),
    };
    Ok((field, wire, data))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::value::Kind;
    use prost_types::{ListValue, Struct, Value};

    use super::*;

    fn list(inner: Value) -> Value {
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![inner],
            })),
        }
    }

    fn object(inner: Value) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("k".to_owned(), inner)].into(),
            })),
        }
    }

    fn nested(depth: usize, wrap: fn(Value) -> Value) -> Value {
        let mut value = Value {
            kind: Some(Kind::StringValue("leaf".into())),
        };
        for _ in 0..depth {
            value = wrap(value);
        }
        value
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let value = object(list(Value {
            kind: Some(Kind::NumberValue(1.5)),
        }));
        let raw = JsonValue::from_value(&value);
        let payload = crate::v1::Payload {
            kind: Some(crate::v1::payload::Kind::Json(raw.clone())),
            content_type: String::new(),
        };
        let decoded = crate::v1::Payload::decode(payload.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, payload);
        assert_eq!(raw.decode().unwrap(), value);
        assert_eq!(raw.check(MAX_JSON_DEPTH), Ok(()));
    }

    #[test]
    fn depth_is_counted_in_lists_and_objects() {
        for wrap in [list as fn(Value) -> Value, object] {
            let at_limit = JsonValue::from_value(&nested(MAX_JSON_DEPTH, wrap));
            assert_eq!(at_limit.check(MAX_JSON_DEPTH), Ok(()));
            let deeper = JsonValue::from_value(&nested(MAX_JSON_DEPTH + 1, wrap));
            assert_eq!(
                deeper.check(MAX_JSON_DEPTH),
                Err(JsonError::TooDeep {
                    limit: MAX_JSON_DEPTH
                })
            );
        }
    }

    #[test]
    fn the_deepest_accepted_value_decodes_inside_every_envelope() {
        // Objects cost the most levels; inside a Task inside a
        // DispatchMessage, prost's own decoder (limit 100) must accept it.
        let value = nested(MAX_JSON_DEPTH, object);
        let message = crate::v1::DispatchMessage {
            kind: Some(crate::v1::dispatch_message::Kind::Task(crate::v1::Task {
                payload: Some(crate::v1::Payload {
                    kind: Some(crate::v1::payload::Kind::Json(JsonValue::from_value(
                        &value,
                    ))),
                    content_type: String::new(),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let bytes = message.encode_to_vec();
        // The same bytes, decoded as a full tree by the well-known types.
        #[derive(Clone, PartialEq, prost::Message)]
        struct TreeTask {
            #[prost(message, optional, tag = "4")]
            payload: Option<TreePayload>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct TreePayload {
            #[prost(message, optional, tag = "1")]
            json: Option<Value>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct TreeDispatch {
            #[prost(message, optional, tag = "2")]
            task: Option<TreeTask>,
        }
        let tree = TreeDispatch::decode(bytes.as_slice()).expect("decodes as a tree");
        assert_eq!(tree.task.unwrap().payload.unwrap().json.unwrap(), value);
    }

    #[test]
    fn malformed_encodings_are_refused() {
        let bad_utf8 = {
            let mut out = Vec::new();
            encode_key(value::STRING, WireType::LengthDelimited, &mut out);
            encode_varint(2, &mut out);
            out.extend_from_slice(&[0xff, 0xfe]);
            out
        };
        for bytes in [
            bad_utf8,
            vec![0x1a, 10, b'a'],   // truncated string
            vec![0x38, 1],          // field 7: not in Value
            vec![0x2a, 2, 0x12, 0], // Struct with field 2
            vec![0x08],             // varint cut short
            vec![0x0b],             // a group
            vec![0x08, 0, 0x20, 1], // two kinds in one Value
        ] {
            assert!(
                matches!(
                    JsonValue::from_encoded(bytes.clone()).check(MAX_JSON_DEPTH),
                    Err(JsonError::Malformed(_))
                ),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn a_huge_flat_body_is_checked_without_a_tree() {
        // Two million empty values: the body that cost 80 MiB decoded.
        let mut inner = Vec::with_capacity(4 << 20);
        for _ in 0..2_000_000 {
            inner.extend_from_slice(&[0x0a, 0x00]);
        }
        let mut out = Vec::new();
        encode_key(value::LIST, WireType::LengthDelimited, &mut out);
        encode_varint(inner.len() as u64, &mut out);
        out.extend_from_slice(&inner);
        let raw = JsonValue::from_encoded(out);
        assert_eq!(raw.check(MAX_JSON_DEPTH), Ok(()));
        assert_eq!(raw.encoded().len(), 4_000_005);
    }
}
