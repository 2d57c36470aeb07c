//! Building and reading [`pb::Payload`]s, `serde_json::Value` ⇄
//! `google.protobuf.Value` conversion, and [`is_terminal`].
//!
//! A JSON payload travels encoded ([`JsonValue`]): it is decoded only here,
//! when a caller asks for the JSON, so a body the SDK cannot decode fails
//! that one call (or task), never the connection that carried it.
//!
//! The conversions are hand-written (a dozen lines each way) so the SDK does
//! not need a serde bridge for `prost_types`. JSON numbers travel as `f64`
//! (that is what `google.protobuf.Value` holds): integers beyond ±2^53 lose
//! precision, exactly as they would through grpcurl or any proto3 JSON stack.

use bytes::Bytes;
use prost_types::value::Kind;

use crate::pb;
pub use asyncgate_proto::json::{JsonValue, MAX_JSON_DEPTH};

/// The content type [`text`] sets, and the one the CLI uses for text bodies.
pub const TEXT_PLAIN_UTF8: &str = "text/plain; charset=utf-8";

/// A JSON payload: readable with grpcurl, no base64.
pub fn json(value: serde_json::Value) -> pb::Payload {
    pb::Payload {
        kind: Some(pb::payload::Kind::Json(JsonValue::from_value(
            &json_to_proto(value),
        ))),
        content_type: String::new(),
    }
}

/// A binary payload, passed through untouched (the fast path).
/// `content_type` may be empty.
pub fn binary(data: impl Into<Bytes>, content_type: &str) -> pb::Payload {
    pb::Payload {
        kind: Some(pb::payload::Kind::Binary(data.into())),
        content_type: content_type.to_owned(),
    }
}

/// UTF-8 text as a binary payload with content type [`TEXT_PLAIN_UTF8`].
pub fn text(text: impl Into<String>) -> pb::Payload {
    binary(Bytes::from(text.into()), TEXT_PLAIN_UTF8)
}

/// The JSON body of a JSON payload; `None` for binary or empty payloads,
/// and for a JSON body that does not decode (see [`try_to_json`]).
pub fn to_json(payload: &pb::Payload) -> Option<serde_json::Value> {
    try_to_json(payload).ok().flatten()
}

/// The JSON body of a JSON payload (`None` for binary or empty payloads),
/// or why it does not decode (malformed, or nested past what protobuf
/// decoders accept).
pub fn try_to_json(payload: &pb::Payload) -> Result<Option<serde_json::Value>, prost::DecodeError> {
    match &payload.kind {
        Some(pb::payload::Kind::Json(value)) => Ok(Some(proto_to_json(&value.decode()?))),
        _ => Ok(None),
    }
}

/// The bytes of a binary payload; `None` for JSON or empty payloads.
pub fn as_binary(payload: &pb::Payload) -> Option<&Bytes> {
    match &payload.kind {
        Some(pb::payload::Kind::Binary(data)) => Some(data),
        _ => None,
    }
}

/// Whether a ticket in `state` can never change again (SUCCEEDED, FAILED,
/// CANCELLED, EXPIRED): the condition on which watches and long-polls stop.
pub fn is_terminal(state: pb::TicketState) -> bool {
    matches!(
        state,
        pb::TicketState::Succeeded
            | pb::TicketState::Failed
            | pb::TicketState::Cancelled
            | pb::TicketState::Expired
    )
}

/// `serde_json::Value` → `google.protobuf.Value`.
pub fn json_to_proto(value: serde_json::Value) -> prost_types::Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        // `as_f64` is `Some` for every number serde_json can hold (without
        // the `arbitrary_precision` feature); NaN never comes out of JSON.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_proto).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_proto(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// `google.protobuf.Value` → `serde_json::Value`.
///
/// Integral numbers within ±2^53 come back as JSON integers (`5`, not `5.0`),
/// as a proto3 JSON printer shows them; NaN and infinities, which JSON cannot
/// hold, become `null`, as does an unset kind.
pub fn proto_to_json(value: &prost_types::Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(proto_to_json).collect())
        }
        Some(Kind::StructValue(st)) => serde_json::Value::Object(
            st.fields
                .iter()
                .map(|(k, v)| (k.clone(), proto_to_json(v)))
                .collect(),
        ),
    }
}

fn number_to_json(n: f64) -> serde_json::Value {
    /// 2^53: beyond it not every integer is an exact f64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        // Exact: |n| <= 2^53 fits an i64 and has no fractional part.
        return serde_json::Value::from(n as i64);
    }
    serde_json::Number::from_f64(n)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_round_trips() {
        let value = json!({
            "s": "hi",
            "n": 5,
            "f": 1.5,
            "neg": -3,
            "b": true,
            "z": null,
            "list": [1, "two", [3], {"four": 4}],
            "nested": {"deep": {"er": []}},
        });
        assert_eq!(to_json(&json(value.clone())), Some(value));
    }

    #[test]
    fn integral_numbers_stay_integers() {
        let v = proto_to_json(&prost_types::Value {
            kind: Some(Kind::NumberValue(42.0)),
        });
        assert_eq!(v.to_string(), "42");
        let v = proto_to_json(&prost_types::Value {
            kind: Some(Kind::NumberValue(-0.25)),
        });
        assert_eq!(v.to_string(), "-0.25");
        let v = proto_to_json(&prost_types::Value {
            kind: Some(Kind::NumberValue(1e300)),
        });
        assert_eq!(v, json!(1e300));
    }

    #[test]
    fn non_finite_numbers_and_unset_kinds_are_null() {
        for kind in [
            Some(Kind::NumberValue(f64::NAN)),
            Some(Kind::NumberValue(f64::INFINITY)),
            None,
        ] {
            assert_eq!(proto_to_json(&prost_types::Value { kind }), json!(null));
        }
    }

    #[test]
    fn binary_and_text_payloads() {
        let p = binary(Bytes::from_static(b"\x00\x01"), "application/octet-stream");
        assert_eq!(as_binary(&p).map(|b| b.as_ref()), Some(&b"\x00\x01"[..]));
        assert_eq!(to_json(&p), None);
        let t = text("héllo");
        assert_eq!(t.content_type, TEXT_PLAIN_UTF8);
        assert_eq!(as_binary(&t).map(|b| b.as_ref()), Some("héllo".as_bytes()));
        assert_eq!(to_json(&pb::Payload::default()), None);
    }

    #[test]
    fn terminal_states() {
        use pb::TicketState::*;
        for s in [Succeeded, Failed, Cancelled, Expired] {
            assert!(is_terminal(s), "{s:?}");
        }
        for s in [Unspecified, Pending, Running] {
            assert!(!is_terminal(s), "{s:?}");
        }
    }
}
