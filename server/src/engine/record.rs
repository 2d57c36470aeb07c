//! The stored form of a ticket: a protobuf message (prost derive, no codegen)
//! so the format can grow fields without a migration. Times are nanoseconds
//! since the Unix epoch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use uuid::Uuid;

use crate::domain::callback::{Callback, CallbackState};
use crate::domain::ticket::{AttemptRecord, Payload};
use crate::domain::{
    Lease, LeaseId, Progress, QueueLimits, QueueName, QueuePause, SessionId, Ticket, TicketError,
    TicketId, TicketState,
};

/// Why a stored record could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("stored ticket record is unreadable: {0}")]
pub(crate) struct BadRecord(pub String);

#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredError {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(bool, tag = "3")]
    retryable: bool,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredLease {
    #[prost(bytes = "vec", tag = "1")]
    lease_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    session_id: Vec<u8>,
    #[prost(string, tag = "3")]
    worker_name: String,
    #[prost(uint64, tag = "4")]
    leased_at: u64,
    #[prost(uint64, optional, tag = "5")]
    attempt_deadline: Option<u64>,
}

/// An ended attempt as stored.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredAttempt {
    #[prost(uint32, tag = "1")]
    number: u32,
    #[prost(bytes = "vec", tag = "2")]
    lease_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    session_id: Vec<u8>,
    #[prost(string, tag = "4")]
    worker_name: String,
    #[prost(uint64, tag = "5")]
    started_at: u64,
    #[prost(uint64, tag = "6")]
    ended_at: u64,
    #[prost(message, optional, tag = "7")]
    error: Option<StoredError>,
}

/// A completion callback as stored.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredCallback {
    #[prost(string, tag = "1")]
    url: String,
    /// 1 waiting, 2 pending, 3 delivered, 4 gave up.
    #[prost(int32, tag = "2")]
    state: i32,
    #[prost(uint32, tag = "3")]
    attempts: u32,
    #[prost(uint64, optional, tag = "4")]
    next_at: Option<u64>,
    #[prost(uint64, optional, tag = "5")]
    due_since: Option<u64>,
    #[prost(string, optional, tag = "6")]
    last_error: Option<String>,
    #[prost(uint64, optional, tag = "7")]
    delivered_at: Option<u64>,
    #[prost(uint64, tag = "8")]
    seq: u64,
}

fn stored_callback(c: &Callback) -> StoredCallback {
    StoredCallback {
        url: c.url.to_string(),
        state: match c.state {
            CallbackState::Waiting => 1,
            CallbackState::Pending => 2,
            CallbackState::Delivered => 3,
            CallbackState::GaveUp => 4,
        },
        attempts: c.attempts,
        next_at: c.next_at.map(nanos),
        due_since: c.due_since.map(nanos),
        last_error: c.last_error.clone(),
        delivered_at: c.delivered_at.map(nanos),
        seq: c.seq,
    }
}

fn callback_from(c: StoredCallback) -> Result<Callback, BadRecord> {
    Ok(Callback {
        url: c.url.into(),
        state: match c.state {
            1 => CallbackState::Waiting,
            2 => CallbackState::Pending,
            3 => CallbackState::Delivered,
            4 => CallbackState::GaveUp,
            other => return Err(BadRecord(format!("unknown callback state {other}"))),
        },
        attempts: c.attempts,
        next_at: c.next_at.map(time),
        due_since: c.due_since.map(time),
        last_error: c.last_error,
        delivered_at: c.delivered_at.map(time),
        seq: c.seq,
    })
}

/// A ticket without its request payload (stored apart: it is written once).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredTicket {
    #[prost(string, tag = "1")]
    queue: String,
    #[prost(int32, tag = "2")]
    state: i32,
    #[prost(uint32, tag = "3")]
    attempt: u32,
    #[prost(uint32, tag = "4")]
    max_attempts: u32,
    #[prost(int32, tag = "5")]
    priority: i32,
    #[prost(map = "string, string", tag = "6")]
    metadata: HashMap<String, String>,
    #[prost(uint64, tag = "7")]
    created_at: u64,
    #[prost(uint64, tag = "8")]
    updated_at: u64,
    #[prost(uint64, optional, tag = "9")]
    finished_at: Option<u64>,
    #[prost(uint64, optional, tag = "10")]
    deadline: Option<u64>,
    #[prost(uint64, optional, tag = "11")]
    attempt_timeout: Option<u64>,
    #[prost(message, optional, tag = "12")]
    result: Option<Payload>,
    #[prost(message, optional, tag = "13")]
    error: Option<StoredError>,
    #[prost(uint32, optional, tag = "14")]
    progress_percent: Option<u32>,
    #[prost(string, tag = "15")]
    progress_message: String,
    #[prost(uint64, tag = "16")]
    seq: u64,
    #[prost(string, optional, tag = "17")]
    idempotency_key: Option<String>,
    #[prost(message, optional, tag = "18")]
    lease: Option<StoredLease>,
    #[prost(bytes = "vec", optional, tag = "19")]
    completed_by: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "20")]
    not_before: Option<u64>,
    #[prost(uint32, tag = "21")]
    worker_losses: u32,
    #[prost(uint64, tag = "22")]
    enqueue_seq: u64,
    #[prost(string, optional, tag = "23")]
    tenant: Option<String>,
    #[prost(uint64, tag = "24")]
    output_bytes: u64,
    /// Nanoseconds; absent in records written before retries existed (the
    /// deadline then tells it: it was set at submit).
    #[prost(uint64, optional, tag = "25")]
    timeout: Option<u64>,
    /// Nanoseconds: the time a delayed submit asked for.
    #[prost(uint64, optional, tag = "26")]
    scheduled_for: Option<u64>,
    #[prost(message, repeated, tag = "27")]
    attempts: Vec<StoredAttempt>,
    #[prost(message, optional, tag = "28")]
    callback: Option<StoredCallback>,
}

/// Nanoseconds since the epoch.
/// A queue's pause as stored.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredPause {
    #[prost(string, tag = "1")]
    by: String,
    #[prost(uint64, tag = "2")]
    at: u64,
    #[prost(string, tag = "3")]
    reason: String,
}

/// A queue's admin-set target as stored.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredTarget {
    #[prost(string, tag = "1")]
    spec: String,
    #[prost(string, tag = "2")]
    by: String,
    #[prost(uint64, tag = "3")]
    at: u64,
}

/// A queue's target in its stored form.
pub(crate) fn encode_target(target: &crate::domain::QueueTarget) -> Vec<u8> {
    StoredTarget {
        spec: target.spec.clone(),
        by: target.by.clone(),
        at: nanos(target.at),
    }
    .encode_to_vec()
}

/// A stored target read back.
pub(crate) fn decode_target(bytes: &[u8]) -> Result<crate::domain::QueueTarget, BadRecord> {
    let stored = StoredTarget::decode(bytes).map_err(|e| BadRecord(e.to_string()))?;
    Ok(crate::domain::QueueTarget {
        spec: stored.spec,
        by: stored.by,
        at: time(stored.at),
    })
}

/// A queue's limits as stored.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredLimits {
    #[prost(uint32, tag = "1")]
    max_dispatch_per_second: u32,
    #[prost(uint32, tag = "2")]
    burst: u32,
    #[prost(uint32, tag = "3")]
    max_concurrent: u32,
}

/// A queue's limits in their stored form.
pub(crate) fn encode_limits(limits: &QueueLimits) -> Vec<u8> {
    StoredLimits {
        max_dispatch_per_second: limits.max_dispatch_per_second,
        burst: limits.burst,
        max_concurrent: limits.max_concurrent,
    }
    .encode_to_vec()
}

/// Stored limits read back.
pub(crate) fn decode_limits(bytes: &[u8]) -> Result<QueueLimits, BadRecord> {
    let stored = StoredLimits::decode(bytes).map_err(|e| BadRecord(e.to_string()))?;
    Ok(QueueLimits {
        max_dispatch_per_second: stored.max_dispatch_per_second,
        burst: stored.burst,
        max_concurrent: stored.max_concurrent,
    })
}

/// A queue's pause in its stored form.
pub(crate) fn encode_pause(pause: &QueuePause) -> Vec<u8> {
    StoredPause {
        by: pause.by.clone(),
        at: nanos(pause.at),
        reason: pause.reason.clone(),
    }
    .encode_to_vec()
}

/// A stored pause read back.
pub(crate) fn decode_pause(bytes: &[u8]) -> Result<QueuePause, BadRecord> {
    let stored = StoredPause::decode(bytes).map_err(|e| BadRecord(e.to_string()))?;
    Ok(QueuePause {
        by: stored.by,
        at: time(stored.at),
        reason: stored.reason,
    })
}

pub(crate) fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time `nanos` after the epoch.
pub(crate) fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn state_code(state: TicketState) -> i32 {
    match state {
        TicketState::Pending => 1,
        TicketState::Running => 2,
        TicketState::Succeeded => 3,
        TicketState::Failed => 4,
        TicketState::Cancelled => 5,
        TicketState::Expired => 6,
    }
}

fn state_from(code: i32) -> Result<TicketState, BadRecord> {
    Ok(match code {
        1 => TicketState::Pending,
        2 => TicketState::Running,
        3 => TicketState::Succeeded,
        4 => TicketState::Failed,
        5 => TicketState::Cancelled,
        6 => TicketState::Expired,
        other => return Err(BadRecord(format!("unknown state {other}"))),
    })
}

fn uuid(bytes: &[u8], what: &str) -> Result<Uuid, BadRecord> {
    Uuid::from_slice(bytes).map_err(|_| BadRecord(format!("{what} is not a UUID")))
}

fn stored_error(e: &TicketError) -> StoredError {
    StoredError {
        code: e.code,
        message: e.message.clone(),
        retryable: e.retryable,
    }
}

fn ticket_error(e: StoredError) -> TicketError {
    TicketError {
        code: e.code,
        message: e.message,
        retryable: e.retryable,
    }
}

/// Encodes a ticket (without its request payload).
pub(crate) fn encode(ticket: &Ticket) -> Vec<u8> {
    StoredTicket {
        queue: ticket.queue.to_string(),
        state: state_code(ticket.state),
        attempt: ticket.attempt,
        max_attempts: ticket.max_attempts,
        priority: ticket.priority,
        metadata: (*ticket.metadata).clone(),
        created_at: nanos(ticket.created_at),
        updated_at: nanos(ticket.updated_at),
        finished_at: ticket.finished_at.map(nanos),
        deadline: ticket.deadline.map(nanos),
        timeout: ticket
            .timeout
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        attempt_timeout: ticket
            .attempt_timeout
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        result: ticket.result.clone(),
        error: ticket.error.as_ref().map(stored_error),
        callback: ticket.callback.as_deref().map(stored_callback),
        attempts: ticket
            .attempts
            .iter()
            .map(|a| StoredAttempt {
                number: a.number,
                lease_id: a.lease_id.0.as_bytes().to_vec(),
                session_id: a.session_id.0.as_bytes().to_vec(),
                worker_name: a.worker_name.to_string(),
                started_at: nanos(a.started_at),
                ended_at: nanos(a.ended_at),
                error: a.error.as_ref().map(stored_error),
            })
            .collect(),
        progress_percent: ticket.progress.as_ref().map(|p| p.percent),
        progress_message: ticket
            .progress
            .as_ref()
            .map(|p| p.message.clone())
            .unwrap_or_default(),
        seq: ticket.seq,
        idempotency_key: ticket.idempotency_key.clone(),
        lease: ticket.lease.as_ref().map(|l| StoredLease {
            lease_id: l.lease_id.0.as_bytes().to_vec(),
            session_id: l.session_id.0.as_bytes().to_vec(),
            worker_name: l.worker_name.to_string(),
            leased_at: nanos(l.leased_at),
            attempt_deadline: l.attempt_deadline.map(nanos),
        }),
        completed_by: ticket.completed_by.map(|l| l.0.as_bytes().to_vec()),
        not_before: ticket.not_before.map(nanos),
        scheduled_for: ticket.scheduled_for.map(nanos),
        worker_losses: ticket.worker_losses,
        output_bytes: ticket.output_bytes,
        enqueue_seq: ticket.enqueue_seq,
        tenant: ticket.tenant.as_deref().map(str::to_owned),
    }
    .encode_to_vec()
}

/// Decodes a ticket stored by [`encode`], with its request payload.
pub(crate) fn decode(id: TicketId, bytes: &[u8], payload: Payload) -> Result<Ticket, BadRecord> {
    let stored = StoredTicket::decode(bytes).map_err(|e| BadRecord(e.to_string()))?;
    let queue = QueueName::parse_scoped(&stored.queue).map_err(BadRecord)?;
    let lease = match stored.lease {
        Some(l) => Some(Lease {
            lease_id: LeaseId(uuid(&l.lease_id, "lease id")?),
            session_id: SessionId(uuid(&l.session_id, "session id")?),
            worker_name: l.worker_name.into(),
            leased_at: time(l.leased_at),
            attempt_deadline: l.attempt_deadline.map(time),
        }),
        None => None,
    };
    let created_at = time(stored.created_at);
    let deadline = stored.deadline.map(time);
    let timeout = match stored.timeout {
        Some(nanos) => Some(Duration::from_nanos(nanos)),
        None => deadline.map(|d| d.duration_since(created_at).unwrap_or_default()),
    };
    Ok(Ticket {
        id,
        queue,
        state: state_from(stored.state)?,
        attempt: stored.attempt,
        max_attempts: stored.max_attempts,
        priority: stored.priority,
        metadata: Arc::new(stored.metadata),
        payload: Arc::new(payload),
        created_at,
        updated_at: time(stored.updated_at),
        finished_at: stored.finished_at.map(time),
        deadline,
        timeout,
        attempt_timeout: stored.attempt_timeout.map(Duration::from_nanos),
        result: stored.result,
        error: stored.error.map(ticket_error),
        callback: match stored.callback {
            Some(c) => Some(Box::new(callback_from(c)?)),
            None => None,
        },
        attempts: crate::domain::ticket::attempt_history(
            stored
                .attempts
                .into_iter()
                .map(|a| {
                    Ok(AttemptRecord {
                        number: a.number,
                        lease_id: LeaseId(uuid(&a.lease_id, "attempt lease id")?),
                        session_id: SessionId(uuid(&a.session_id, "attempt session id")?),
                        worker_name: a.worker_name.into(),
                        started_at: time(a.started_at),
                        ended_at: time(a.ended_at),
                        error: a.error.map(ticket_error),
                    })
                })
                .collect::<Result<_, BadRecord>>()?,
        ),
        progress: stored.progress_percent.map(|percent| Progress {
            percent,
            message: stored.progress_message,
        }),
        seq: stored.seq,
        idempotency_key: stored.idempotency_key,
        lease,
        completed_by: match stored.completed_by {
            Some(bytes) => Some(LeaseId(uuid(&bytes, "completing lease id")?)),
            None => None,
        },
        not_before: stored.not_before.map(time),
        scheduled_for: stored.scheduled_for.map(time),
        worker_losses: stored.worker_losses,
        output_bytes: stored.output_bytes,
        tenant: stored.tenant.map(Arc::from),
        enqueue_seq: stored.enqueue_seq,
        journal_seq: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewTicket;

    #[test]
    fn round_trips_every_field() {
        let now = SystemTime::now();
        let mut ticket = Ticket::create(
            TicketId::new(),
            NewTicket {
                id: TicketId::new(),
                queue: QueueName::parse("q").unwrap(),
                payload: Payload::default(),
                priority: -7,
                idempotency_key: Some("k".into()),
                metadata: [("a".to_string(), "b".to_string())].into(),
                timeout: Some(Duration::from_secs(9)),
                attempt_timeout: Some(Duration::from_millis(1500)),
                max_attempts: 4,
                tenant: None,
                not_before: None,
                callback: None,
            },
            now,
        );
        ticket.state = TicketState::Running;
        ticket.attempt = 2;
        ticket.lease = Some(Lease {
            lease_id: LeaseId::new(),
            session_id: SessionId::new(),
            worker_name: "w".into(),
            leased_at: now,
            attempt_deadline: Some(now + Duration::from_secs(1)),
        });
        ticket.progress = Some(Progress {
            percent: 40,
            message: "m".into(),
        });
        ticket.error = Some(TicketError {
            code: 14,
            message: "e".into(),
            retryable: true,
        });
        ticket.enqueue_seq = 99;
        let back = decode(ticket.id, &encode(&ticket), Payload::default()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{ticket:?}"));
    }

    #[test]
    fn a_record_from_before_retries_takes_its_timeout_from_the_deadline() {
        let now = SystemTime::now();
        let mut ticket = Ticket::create(
            TicketId::new(),
            NewTicket {
                id: TicketId::new(),
                queue: QueueName::parse("q").unwrap(),
                payload: Payload::default(),
                priority: 0,
                idempotency_key: None,
                metadata: Default::default(),
                timeout: Some(Duration::from_secs(30)),
                attempt_timeout: None,
                max_attempts: 1,
                tenant: None,
                not_before: None,
                callback: None,
            },
            now,
        );
        ticket.timeout = None;
        let back = decode(ticket.id, &encode(&ticket), Payload::default()).unwrap();
        let timeout = back.timeout.expect("worked out from the deadline");
        assert!(
            timeout.abs_diff(Duration::from_secs(30)) < Duration::from_micros(1),
            "{timeout:?}"
        );
    }
}
