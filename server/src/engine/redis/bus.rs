//! The event bus between replicas: every transition's script publishes what
//! changed on one channel, and every replica hands what it hears to its own
//! listener (watch hub, dispatcher). A replica's own changes come back the
//! same way, so each ticket's events reach every replica in commit order.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use redis::{PushKind, Value};

use super::super::record;
use super::super::{EngineListener, Revocation, RevokeReason, TicketChange};
use crate::domain::ticket::{EventKind, Payload};
use crate::domain::{LeaseId, QueueName, SessionId, TicketId};

/// One message on the channel.
#[derive(Clone, PartialEq, Message)]
pub(super) struct BusMessage {
    #[prost(oneof = "Body", tags = "1, 2, 3, 4")]
    pub(super) body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum Body {
    /// A ticket changed.
    #[prost(message, tag = "1")]
    Change(ChangeMessage),
    /// A queue gained ready work.
    #[prost(string, tag = "2")]
    Ready(String),
    /// A worker must drop a lease.
    #[prost(message, tag = "3")]
    Revoke(RevokeMessage),
    /// An operator drains a session.
    #[prost(message, tag = "4")]
    Drain(DrainMessage),
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct DrainMessage {
    #[prost(bytes = "bytes", tag = "1")]
    session_id: Bytes,
    /// The key that asked.
    #[prost(string, tag = "2")]
    by: String,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct ChangeMessage {
    #[prost(bytes = "bytes", tag = "1")]
    pub(super) id: Bytes,
    #[prost(int32, tag = "2")]
    pub(super) kind: i32,
    /// The ticket record (without its request payload: watchers never see it).
    #[prost(bytes = "bytes", tag = "3")]
    pub(super) record: Bytes,
    #[prost(message, optional, tag = "4")]
    pub(super) output: Option<Payload>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct RevokeMessage {
    #[prost(bytes = "bytes", tag = "1")]
    pub(super) session_id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub(super) ticket_id: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub(super) lease_id: Bytes,
    #[prost(int32, tag = "4")]
    pub(super) reason: i32,
    #[prost(string, tag = "5")]
    pub(super) message: String,
}

fn kind_code(kind: EventKind) -> i32 {
    match kind {
        EventKind::State => 1,
        EventKind::Progress => 2,
        EventKind::Output => 3,
    }
}

fn kind_from(code: i32) -> Option<EventKind> {
    Some(match code {
        1 => EventKind::State,
        2 => EventKind::Progress,
        3 => EventKind::Output,
        _ => return None,
    })
}

fn reason_code(reason: RevokeReason) -> i32 {
    match reason {
        RevokeReason::Cancelled => 1,
        RevokeReason::Expired => 2,
        RevokeReason::AttemptTimeout => 3,
    }
}

fn reason_from(code: i32) -> Option<RevokeReason> {
    Some(match code {
        1 => RevokeReason::Cancelled,
        2 => RevokeReason::Expired,
        3 => RevokeReason::AttemptTimeout,
        _ => return None,
    })
}

pub(super) fn change(
    id: TicketId,
    kind: EventKind,
    record: Bytes,
    output: Option<Payload>,
) -> Vec<u8> {
    BusMessage {
        body: Some(Body::Change(ChangeMessage {
            id: Bytes::copy_from_slice(id.0.as_bytes()),
            kind: kind_code(kind),
            record,
            output,
        })),
    }
    .encode_to_vec()
}

pub(super) fn ready(queue: &QueueName) -> Vec<u8> {
    BusMessage {
        body: Some(Body::Ready(queue.to_string())),
    }
    .encode_to_vec()
}

pub(super) fn drain(session_id: SessionId, by: &str) -> Vec<u8> {
    BusMessage {
        body: Some(Body::Drain(DrainMessage {
            session_id: Bytes::copy_from_slice(session_id.0.as_bytes()),
            by: by.to_owned(),
        })),
    }
    .encode_to_vec()
}

pub(super) fn revoke(revocation: &Revocation) -> Vec<u8> {
    BusMessage {
        body: Some(Body::Revoke(RevokeMessage {
            session_id: Bytes::copy_from_slice(revocation.session_id.0.as_bytes()),
            ticket_id: Bytes::copy_from_slice(revocation.ticket_id.0.as_bytes()),
            lease_id: Bytes::copy_from_slice(revocation.lease_id.0.as_bytes()),
            reason: reason_code(revocation.reason),
            message: revocation.message.clone(),
        })),
    }
    .encode_to_vec()
}

fn uuid(bytes: &[u8]) -> Option<uuid::Uuid> {
    uuid::Uuid::from_slice(bytes).ok()
}

/// Hands one message to the listener; malformed messages are logged and
/// dropped (they cannot come from a replica of this version).
pub(super) fn deliver(listener: &dyn EngineListener, payload: Bytes) {
    let Ok(message) = BusMessage::decode(payload) else {
        tracing::warn!("undecodable message on the event channel ignored");
        return;
    };
    match message.body {
        Some(Body::Change(change)) => {
            let Some(id) = uuid(&change.id).map(TicketId) else {
                return;
            };
            if !listener.watching(id) {
                return;
            }
            let (Some(kind), Ok(ticket)) = (
                kind_from(change.kind),
                record::decode(id, &change.record, Payload::default()),
            ) else {
                tracing::warn!(%id, "malformed change event ignored");
                return;
            };
            listener.ticket_changed(TicketChange {
                kind,
                ticket: Arc::new(ticket),
                output: change.output,
            });
        }
        Some(Body::Ready(queue)) => {
            if let Ok(queue) = QueueName::parse_scoped(&queue) {
                listener.queue_ready(&queue);
            }
        }
        Some(Body::Revoke(revoke)) => {
            let (Some(session_id), Some(ticket_id), Some(lease_id), Some(reason)) = (
                uuid(&revoke.session_id),
                uuid(&revoke.ticket_id),
                uuid(&revoke.lease_id),
                reason_from(revoke.reason),
            ) else {
                return;
            };
            listener.lease_revoked(Revocation {
                session_id: SessionId(session_id),
                ticket_id: TicketId(ticket_id),
                lease_id: LeaseId(lease_id),
                reason,
                message: revoke.message,
            });
        }
        Some(Body::Drain(drain)) => {
            if let Some(session_id) = uuid(&drain.session_id) {
                listener.drain_requested(SessionId(session_id), &drain.by);
            }
        }
        None => {}
    }
}

/// What the subscriber task hears from the connection.
pub(super) enum Heard {
    /// A message on our channel.
    Message(Vec<u8>),
    /// The connection dropped: messages may have been missed.
    Disconnected,
}

/// Sorts RESP3 pushes into messages and disconnections.
pub(super) fn classify(kind: &PushKind, data: Vec<Value>) -> Option<Heard> {
    match kind {
        PushKind::Disconnection => Some(Heard::Disconnected),
        PushKind::Message => match data.into_iter().nth(1) {
            Some(Value::BulkString(bytes)) => Some(Heard::Message(bytes)),
            _ => None,
        },
        _ => None,
    }
}
