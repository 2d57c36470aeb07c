//! JSON payloads kept encoded (`asyncgate_proto::json`): any bytes given to
//! `JsonValue::check` are refused or accepted without a panic, and whatever
//! is accepted is a `google.protobuf.Value` that every receiver decodes —
//! on its own, after a trip through the gateway's own decoder, and inside
//! every envelope the gateway sends it in (a worker's `Task`, a watcher's
//! `TicketEvent`, a `ListTickets` page), where protobuf runtimes stop at 100
//! levels of nesting.
//!
//! The same bytes are also decoded as a `Payload` (and checked the way the
//! edge checks every payload it accepts, `rpc::convert::checked_payload`)
//! and as the messages a worker and a gateway exchange.
//!
//! Random bytes seldom nest 25 length-prefixed levels deep, so the same
//! input also builds a well-formed value around a spine of lists and
//! objects 0 to 40 deep (the limit is 24): its check must pass exactly
//! when it nests at most `MAX_JSON_DEPTH` deep; then a few bytes of its
//! encoding are damaged and the result goes through the checks above.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use prost::Message;

use asyncgate_proto::json::{JsonValue, MAX_JSON_DEPTH};
use asyncgate_proto::v1 as pb;
use asyncgate_server::rpc::convert;

/// The envelopes a payload travels in, with `Value` decoded as the full
/// tree the well-known types give (the field numbers of
/// `asyncgate/v1/{ticket,workers,gateway}.proto`).
mod tree {
    use prost_types::Value;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Payload {
        #[prost(message, optional, tag = "1")]
        pub json: Option<Value>,
    }
    /// `DispatchMessage` → `Task` → `Payload`: what a worker receives.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dispatch {
        #[prost(message, optional, tag = "2")]
        pub task: Option<Task>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Task {
        #[prost(message, optional, tag = "4")]
        pub payload: Option<Payload>,
    }
    /// `TicketEvent` → `Ticket.result` / `TicketEvent.output`: what a
    /// watcher receives.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(message, optional, tag = "3")]
        pub ticket: Option<Ticket>,
        #[prost(message, optional, tag = "4")]
        pub output: Option<Payload>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ticket {
        #[prost(message, optional, tag = "10")]
        pub result: Option<Payload>,
    }
    /// `ListTicketsResponse` → `Ticket.result`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct List {
        #[prost(message, repeated, tag = "1")]
        pub tickets: Vec<Ticket>,
    }
}

fn json(raw: &JsonValue) -> Option<pb::Payload> {
    Some(pb::Payload {
        kind: Some(pb::payload::Kind::Json(raw.clone())),
        content_type: String::new(),
    })
}

/// `raw` passed the check: it must decode, alone and in every envelope, to
/// the same tree (compared by encoding: a NaN number is not equal to
/// itself).
fn decodes_everywhere(raw: &JsonValue) {
    let value = prost_types::Value::decode(raw.encoded().clone())
        .unwrap_or_else(|e| panic!("a checked value does not decode: {e}; {raw:?}"));
    let expected = value.encode_to_vec();

    // Re-encoded by prost (canonical), it is still accepted.
    let again = JsonValue::from_value(&value);
    if let Err(e) = again.check(MAX_JSON_DEPTH) {
        panic!("a checked value, re-encoded, is refused: {e}");
    }

    let same = |tree: Option<&prost_types::Value>, envelope: &str| {
        let got = tree.cloned().unwrap_or_default().encode_to_vec();
        assert_eq!(got, expected, "the value changed inside {envelope}");
    };

    let task = pb::DispatchMessage {
        kind: Some(pb::dispatch_message::Kind::Task(pb::Task {
            payload: json(raw),
            ..Default::default()
        })),
    };
    let bytes = task.encode_to_vec();
    let decoded = tree::Dispatch::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("a Task with a checked value does not decode: {e}"));
    same(
        decoded.task.and_then(|t| t.payload?.json).as_ref(),
        "a Task",
    );
    // The gateway's own decoder keeps the bytes (normalising field keys and
    // varints): still accepted by the check.
    let own = pb::DispatchMessage::decode(bytes.as_slice()).expect("own decoder");
    match own.kind {
        Some(pb::dispatch_message::Kind::Task(pb::Task {
            payload:
                Some(pb::Payload {
                    kind: Some(pb::payload::Kind::Json(kept)),
                    ..
                }),
            ..
        })) => {
            if let Err(e) = kept.check(MAX_JSON_DEPTH) {
                panic!(
                    "a checked value, after a trip through the gateway's decoder, is refused: {e}"
                );
            }
        }
        other => panic!("the Task lost its payload: {other:?}"),
    }

    let ticket = pb::Ticket {
        result: json(raw),
        ..Default::default()
    };
    let event = pb::TicketEvent {
        ticket: Some(ticket.clone()),
        output: json(raw),
        ..Default::default()
    };
    let decoded = tree::Event::decode(event.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("a TicketEvent with a checked value does not decode: {e}"));
    same(
        decoded.ticket.and_then(|t| t.result?.json).as_ref(),
        "a TicketEvent's ticket",
    );
    same(
        decoded.output.and_then(|p| p.json).as_ref(),
        "a TicketEvent's output",
    );

    let page = pb::ListTicketsResponse {
        tickets: vec![ticket],
        ..Default::default()
    };
    let decoded = tree::List::decode(page.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("a ListTickets page with a checked value does not decode: {e}"));
    same(
        decoded
            .tickets
            .into_iter()
            .next()
            .and_then(|t| t.result?.json)
            .as_ref(),
        "a ListTickets page",
    );
}

/// A well-formed value built from fuzzer input: a spine of `depth`
/// containers (each a list or an object, with a few siblings beside the
/// spine), and the deepest nesting it has.
fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<(prost_types::Value, usize)> {
    use prost_types::value::Kind;
    fn leaf(u: &mut Unstructured<'_>) -> arbitrary::Result<prost_types::Value> {
        Ok(prost_types::Value {
            kind: match u.int_in_range(0..=4)? {
                0 => None,
                1 => Some(Kind::NullValue(u.int_in_range(0..=1)?)),
                2 => Some(Kind::NumberValue(u.arbitrary()?)),
                3 => Some(Kind::StringValue(u.arbitrary()?)),
                _ => Some(Kind::BoolValue(u.arbitrary()?)),
            },
        })
    }
    let depth = u.int_in_range(0..=40)?;
    let mut value = leaf(u)?;
    for _ in 0..depth {
        let mut siblings = Vec::new();
        for _ in 0..u.int_in_range(0..=2)? {
            siblings.push(leaf(u)?);
        }
        value = prost_types::Value {
            kind: Some(if u.arbitrary()? {
                let mut fields = std::collections::BTreeMap::new();
                for sibling in siblings {
                    fields.insert(u.arbitrary::<String>()?, sibling);
                }
                // After the siblings: the spine survives a key they share.
                fields.insert(u.arbitrary::<String>()?, value);
                Kind::StructValue(prost_types::Struct { fields })
            } else {
                let at = u.int_in_range(0..=siblings.len())?;
                siblings.insert(at, value);
                Kind::ListValue(prost_types::ListValue { values: siblings })
            }),
        };
    }
    Ok((value, depth))
}

/// Damages an encoding: a few bytes overwritten, maybe a cut.
fn damaged(u: &mut Unstructured<'_>, mut bytes: Vec<u8>) -> arbitrary::Result<Vec<u8>> {
    for _ in 0..u.int_in_range(1..=3)? {
        if bytes.is_empty() {
            break;
        }
        let at = u.choose_index(bytes.len())?;
        bytes[at] = u.arbitrary()?;
    }
    if u.arbitrary()? {
        let keep = u.int_in_range(0..=bytes.len())?;
        bytes.truncate(keep);
    }
    Ok(bytes)
}

fn checked_raw(bytes: Vec<u8>) {
    let raw = JsonValue::from_encoded(bytes);
    if raw.check(MAX_JSON_DEPTH).is_ok() {
        decodes_everywhere(&raw);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok((value, depth)) = structured(&mut u) {
        let raw = JsonValue::from_value(&value);
        let checked = raw.check(MAX_JSON_DEPTH);
        assert_eq!(
            checked.is_ok(),
            depth <= MAX_JSON_DEPTH,
            "a well-formed value {depth} deep: {checked:?}"
        );
        if checked.is_ok() {
            decodes_everywhere(&raw);
        }
        if let Ok(bytes) = damaged(&mut u, raw.encoded().to_vec()) {
            checked_raw(bytes);
        }
    }

    // The bytes as a Value's encoding.
    let raw = JsonValue::from_encoded(bytes::Bytes::copy_from_slice(data));
    if raw.check(MAX_JSON_DEPTH).is_ok() {
        decodes_everywhere(&raw);
    }

    // The bytes as a Payload, checked as the edge checks it.
    if let Ok(payload) = pb::Payload::decode(data)
        && let Ok(kept) = convert::checked_payload(payload, "payload", 64 * 1024)
        && let Some(pb::payload::Kind::Json(value)) = &kept.kind
    {
        decodes_everywhere(value);
    }

    // The messages of the worker protocol: refused or decoded, never a panic.
    let _ = pb::WorkerMessage::decode(data);
    let _ = pb::DispatchMessage::decode(data);
    let _ = pb::TicketEvent::decode(data);
});
