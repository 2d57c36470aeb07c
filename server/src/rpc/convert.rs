//! The edge: wire messages validated into domain types (every refusal names
//! the field and says what to fix), and domain tickets presented on the wire.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use prost::Message;

use asyncgate_proto::v1 as pb;

use crate::domain::ticket::Payload;
use crate::domain::{NewTicket, QueueName, Ticket, TicketError, TicketId, TicketState};
use crate::error::GatewayError;
use crate::time::{self, rfc3339};

/// Priority bounds.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// Most metadata entries per ticket.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Largest metadata, keys plus values, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest timeout or attempt_timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Limits applied to submits.
#[derive(Debug, Clone)]
pub struct SubmitLimits {
    /// Largest payload, in bytes.
    pub max_payload_bytes: usize,
    /// Used when a submit leaves max_attempts at 0.
    pub default_max_attempts: u32,
    /// Largest max_attempts accepted.
    pub max_attempts_limit: u32,
}

/// The encoded size of a payload, the measure the limit applies to.
pub fn payload_size(payload: &Payload) -> usize {
    payload.encoded_len()
}

/// A payload the engine will keep: binary bodies are copied once into an
/// allocation of their own size. Decoded `Bytes` are slices of the request's
/// receive buffer (8 KiB or more per unary call), and keeping the slice would
/// pin the whole buffer for as long as the ticket lives.
pub fn retained(mut payload: Payload) -> Payload {
    if let Some(asyncgate_proto::v1::payload::Kind::Binary(bytes)) = &mut payload.kind {
        *bytes = bytes::Bytes::copy_from_slice(bytes);
    }
    payload
}

/// Parses a ticket id field.
pub fn ticket_id(text: &str, field: &str) -> Result<TicketId, GatewayError> {
    if text.is_empty() {
        return Err(GatewayError::invalid(
            field,
            "is empty; pass the id returned by Submit",
        ));
    }
    text.parse()
        .map_err(|e: crate::domain::ids::BadId| GatewayError::invalid(field, e.to_string()))
}

/// Parses a queue name field.
pub fn queue(text: &str, field: &str) -> Result<QueueName, GatewayError> {
    QueueName::parse(text).map_err(|reason| GatewayError::invalid(field, reason))
}

/// A wire duration as a std one, refusing negative and huge values.
pub fn duration(
    value: Option<prost_types::Duration>,
    field: &str,
    max: Duration,
) -> Result<Option<Duration>, GatewayError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let duration = Duration::try_from(value)
        .map_err(|_| GatewayError::invalid(field, "must not be negative (e.g. \"30s\")"))?;
    if duration > max {
        return Err(GatewayError::invalid(
            field,
            format!("{duration:?} is longer than the maximum of {max:?}"),
        ));
    }
    Ok(Some(duration))
}

fn positive_duration(
    value: Option<prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, GatewayError> {
    let duration = duration(value, field, MAX_TIMEOUT)?;
    if duration == Some(Duration::ZERO) {
        return Err(GatewayError::invalid(
            field,
            "must be positive; leave it unset for no limit",
        ));
    }
    Ok(duration)
}

/// Validates a submit request.
pub fn new_ticket(
    request: pb::SubmitRequest,
    limits: &SubmitLimits,
) -> Result<NewTicket, GatewayError> {
    let queue = queue(&request.queue, "queue")?;
    let payload = retained(request.payload.unwrap_or_default());
    let size = payload_size(&payload);
    if size > limits.max_payload_bytes {
        return Err(GatewayError::invalid(
            "payload",
            format!(
                "is {size} bytes; the limit is {} bytes: store large data elsewhere and send a reference",
                limits.max_payload_bytes
            ),
        ));
    }
    if !PRIORITY_RANGE.contains(&request.priority) {
        return Err(GatewayError::invalid(
            "priority",
            format!(
                "{} is out of range; use {} to {} (higher runs first)",
                request.priority,
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        ));
    }
    if request.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(GatewayError::invalid(
            "idempotency_key",
            format!(
                "is {} bytes; the limit is {MAX_IDEMPOTENCY_KEY_LEN}",
                request.idempotency_key.len()
            ),
        ));
    }
    validate_metadata(&request.metadata)?;
    let max_attempts = match request.max_attempts {
        0 => limits.default_max_attempts,
        n if n > limits.max_attempts_limit => {
            return Err(GatewayError::invalid(
                "max_attempts",
                format!(
                    "{n} is above the server's limit of {}; use 1 to {} (0 for the default, {})",
                    limits.max_attempts_limit,
                    limits.max_attempts_limit,
                    limits.default_max_attempts
                ),
            ));
        }
        n => n,
    };
    Ok(NewTicket {
        queue,
        payload,
        priority: request.priority,
        idempotency_key: (!request.idempotency_key.is_empty()).then_some(request.idempotency_key),
        metadata: request.metadata,
        timeout: positive_duration(request.timeout, "timeout")?,
        attempt_timeout: positive_duration(request.attempt_timeout, "attempt_timeout")?,
        max_attempts,
        tenant: None,
    })
}

fn validate_metadata(metadata: &HashMap<String, String>) -> Result<(), GatewayError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(GatewayError::invalid(
            "metadata",
            format!(
                "has {} entries; the limit is {MAX_METADATA_ENTRIES}",
                metadata.len()
            ),
        ));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(GatewayError::invalid(
            "metadata",
            format!("holds {bytes} bytes; the limit is {MAX_METADATA_BYTES}"),
        ));
    }
    if metadata.keys().any(|k| k.is_empty()) {
        return Err(GatewayError::invalid("metadata", "keys must not be empty"));
    }
    Ok(())
}

/// A domain state on the wire.
pub fn state_to_pb(state: TicketState) -> pb::TicketState {
    match state {
        TicketState::Pending => pb::TicketState::Pending,
        TicketState::Running => pb::TicketState::Running,
        TicketState::Succeeded => pb::TicketState::Succeeded,
        TicketState::Failed => pb::TicketState::Failed,
        TicketState::Cancelled => pb::TicketState::Cancelled,
        TicketState::Expired => pb::TicketState::Expired,
    }
}

/// A wire state filter value.
pub fn state_from_pb(value: i32, field: &str) -> Result<TicketState, GatewayError> {
    match pb::TicketState::try_from(value) {
        Ok(pb::TicketState::Pending) => Ok(TicketState::Pending),
        Ok(pb::TicketState::Running) => Ok(TicketState::Running),
        Ok(pb::TicketState::Succeeded) => Ok(TicketState::Succeeded),
        Ok(pb::TicketState::Failed) => Ok(TicketState::Failed),
        Ok(pb::TicketState::Cancelled) => Ok(TicketState::Cancelled),
        Ok(pb::TicketState::Expired) => Ok(TicketState::Expired),
        _ => Err(GatewayError::invalid(
            field,
            format!(
                "{value} is not a ticket state; use TICKET_STATE_PENDING .. TICKET_STATE_EXPIRED"
            ),
        )),
    }
}

fn error_to_pb(error: &TicketError) -> pb::TicketError {
    pb::TicketError {
        code: error.code,
        message: error.message.clone(),
        retryable: error.retryable,
    }
}

/// What a ticket is waiting for, from what the gateway knows right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaitContext {
    /// Ready tickets ahead of it.
    pub tickets_ahead: u64,
    /// Workers connected for its queue.
    pub workers: usize,
}

/// Explains why a ticket is not done (None once terminal).
pub fn waiting_reason(
    ticket: &Ticket,
    context: WaitContext,
    now: SystemTime,
) -> Option<pb::WaitingReason> {
    let attempts = format!("attempt {} of {}", ticket.attempt, ticket.max_attempts);
    match ticket.state {
        TicketState::Pending => {
            if let Some(until) = ticket.not_before
                && until > now
            {
                let last = ticket.error.as_ref();
                return Some(pb::WaitingReason {
                    kind: pb::WaitingReasonKind::Backoff as i32,
                    description: format!(
                        "in retry backoff until {} after {attempts} failed: {}",
                        rfc3339(until),
                        last.map_or("unknown error", |e| e.message.as_str())
                    ),
                    until: Some(time::timestamp(until)),
                    last_error: last.map(error_to_pb),
                    ..Default::default()
                });
            }
            if context.workers == 0 {
                return Some(pb::WaitingReason {
                    kind: pb::WaitingReasonKind::NoWorkers as i32,
                    description: format!(
                        "no worker is connected for queue {:?}; the ticket waits until one connects{}",
                        ticket.queue.as_str(),
                        ticket
                            .deadline
                            .map(|d| format!(" or its timeout passes at {}", rfc3339(d)))
                            .unwrap_or_default()
                    ),
                    tickets_ahead: context.tickets_ahead,
                    last_error: ticket.error.as_ref().map(error_to_pb),
                    ..Default::default()
                });
            }
            Some(pb::WaitingReason {
                kind: pb::WaitingReasonKind::Queued as i32,
                description: format!(
                    "{} ticket{} ahead in queue {:?}, served by {} worker{} on this gateway",
                    context.tickets_ahead,
                    if context.tickets_ahead == 1 { "" } else { "s" },
                    ticket.queue.as_str(),
                    context.workers,
                    if context.workers == 1 { "" } else { "s" },
                ),
                tickets_ahead: context.tickets_ahead,
                last_error: ticket.error.as_ref().map(error_to_pb),
                ..Default::default()
            })
        }
        TicketState::Running => {
            let lease = ticket.lease.as_ref()?;
            Some(pb::WaitingReason {
                kind: pb::WaitingReasonKind::Leased as i32,
                // `since` carries the time; formatting it here too cost
                // more than the rest of the event.
                description: format!(
                    "running {attempts}: leased to worker {:?} (session {})",
                    &*lease.worker_name, lease.session_id,
                ),
                since: Some(time::timestamp(lease.leased_at)),
                worker_session: lease.session_id.to_string(),
                worker_name: lease.worker_name.to_string(),
                until: lease.attempt_deadline.map(time::timestamp),
                last_error: ticket.error.as_ref().map(error_to_pb),
                ..Default::default()
            })
        }
        _ => None,
    }
}

/// A domain ticket on the wire (without the request payload).
pub fn ticket_to_pb(ticket: &Ticket, context: WaitContext) -> pb::Ticket {
    pb::Ticket {
        id: ticket.id.to_string(),
        queue: ticket.queue.to_string(),
        state: state_to_pb(ticket.state) as i32,
        attempt: ticket.attempt,
        max_attempts: ticket.max_attempts,
        priority: ticket.priority,
        metadata: (*ticket.metadata).clone(),
        created_at: Some(time::timestamp(ticket.created_at)),
        updated_at: Some(time::timestamp(ticket.updated_at)),
        result: ticket.result.clone(),
        error: ticket.error.as_ref().map(error_to_pb),
        progress: ticket.progress.as_ref().map(|p| pb::Progress {
            percent: p.percent,
            message: p.message.clone(),
        }),
        waiting_reason: waiting_reason(ticket, context, SystemTime::now()),
        seq: ticket.seq,
        idempotency_key: ticket.idempotency_key.clone().unwrap_or_default(),
        deadline: ticket.deadline.map(time::timestamp),
        attempt_timeout: ticket.attempt_timeout.map(time::duration),
        finished_at: ticket.finished_at.map(time::timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn limits() -> SubmitLimits {
        SubmitLimits {
            max_payload_bytes: 1024,
            default_max_attempts: 3,
            max_attempts_limit: 10,
        }
    }

    fn request() -> pb::SubmitRequest {
        pb::SubmitRequest {
            queue: "upper".into(),
            payload: Some(pb::Payload {
                kind: Some(pb::payload::Kind::Binary(bytes::Bytes::from_static(b"hi"))),
                content_type: String::new(),
            }),
            ..Default::default()
        }
    }

    fn refused(mutate: impl FnOnce(&mut pb::SubmitRequest)) -> String {
        let mut request = request();
        mutate(&mut request);
        let error = new_ticket(request, &limits()).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        error.to_string()
    }

    #[test]
    fn valid_request_gets_defaults() {
        let new = new_ticket(request(), &limits()).unwrap();
        assert_eq!(new.max_attempts, 3);
        assert_eq!(new.idempotency_key, None);
        assert_eq!(new.timeout, None);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert!(refused(|r| r.queue.clear()).contains("invalid queue"));
        assert!(refused(|r| r.queue = "a/b".into()).contains("'/'"));
        assert!(refused(|r| r.priority = 5000).contains("invalid priority"));
        assert!(refused(|r| r.max_attempts = 11).contains("invalid max_attempts"));
        assert!(refused(|r| r.idempotency_key = "k".repeat(300)).contains("idempotency_key"));
        assert!(
            refused(|r| r.timeout = Some(prost_types::Duration {
                seconds: -1,
                nanos: 0
            }))
            .contains("invalid timeout")
        );
        assert!(
            refused(|r| r.attempt_timeout = Some(prost_types::Duration::default()))
                .contains("must be positive")
        );
        assert!(
            refused(|r| {
                r.payload = Some(pb::Payload {
                    kind: Some(pb::payload::Kind::Binary(vec![0u8; 2000].into())),
                    content_type: String::new(),
                })
            })
            .contains("invalid payload")
        );
        assert!(
            refused(|r| {
                r.metadata = (0..100).map(|i| (i.to_string(), String::new())).collect()
            })
            .contains("metadata")
        );
    }

    #[test]
    fn bad_ids_say_what_a_good_one_looks_like() {
        let error = ticket_id("xyz", "id").unwrap_err();
        assert!(error.to_string().contains("must be a UUID"));
        assert!(
            ticket_id("", "id")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
