//! The edge: wire messages validated into domain types (every refusal names
//! the field and says what to fix), and domain tickets presented on the wire
//! — as `asyncgate.v1.Ticket`s, and as `google.longrunning.Operation`s.
//! List requests and their page tokens are in `convert/list.rs`, worker
//! messages in `convert/worker.rs`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use prost::Message;

use asyncgate_proto::json::MAX_JSON_DEPTH;

use asyncgate_proto::longrunning as lro;
use asyncgate_proto::v1 as pb;

use crate::auth::Caller;
use crate::domain::ticket::{Payload, codes};
use crate::domain::{NewTicket, QueueName, Ticket, TicketError, TicketId, TicketState};
use crate::error::GatewayError;
use crate::time::{self, rfc3339};

pub(crate) mod admin;
mod history;
pub mod list;
pub(crate) mod schedule;
pub(crate) mod worker;

pub use list::{PageQuery, list_tickets, page, page_token};

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
/// How far ahead a submit may schedule its ticket (`not_before`, `delay`):
/// a year, like the timeouts; a scheduled ticket holds its body meanwhile.
pub const MAX_SCHEDULE_AHEAD: Duration = MAX_TIMEOUT;

/// Limits applied to submits.
#[derive(Debug, Clone)]
pub struct SubmitLimits {
    /// Largest payload, in bytes.
    pub max_payload_bytes: usize,
    /// Used when a submit leaves max_attempts at 0.
    pub default_max_attempts: u32,
    /// Largest max_attempts accepted.
    pub max_attempts_limit: u32,
    /// Where callbacks may go (`--callback-*`).
    pub callbacks: std::sync::Arc<crate::callbacks::CallbackSettings>,
}

/// The encoded size of a payload, the measure the limit applies to.
pub fn payload_size(payload: &Payload) -> usize {
    payload.encoded_len()
}

/// A payload the gateway will keep or forward: within `max_bytes`
/// (`--max-payload-bytes`), its JSON body (if any) well-formed and nested at
/// most [`MAX_JSON_DEPTH`] deep, so that every worker and watcher can decode
/// it; and copied out of the receive buffer (see [`retained`]).
pub fn checked_payload(
    payload: Payload,
    field: &str,
    max_bytes: usize,
) -> Result<Payload, GatewayError> {
    let size = payload_size(&payload);
    if size > max_bytes {
        return Err(GatewayError::TooLarge {
            field: field.to_owned(),
            reason: format!(
                "is {size} bytes; the limit is {max_bytes} bytes (--max-payload-bytes): store large data elsewhere and send a reference"
            ),
        });
    }
    if let Some(asyncgate_proto::v1::payload::Kind::Json(value)) = &payload.kind {
        value
            .check(MAX_JSON_DEPTH)
            .map_err(|e| GatewayError::invalid(format!("{field}.json"), e.to_string()))?;
    }
    Ok(retained(payload))
}

/// A payload the engine will keep: bodies are copied once into an
/// allocation of their own size. Decoded `Bytes` are slices of the
/// request's receive buffer (8 KiB or more per unary call), and keeping the
/// slice would pin the whole buffer for as long as the ticket lives. (A JSON
/// body is already a copy: see `asyncgate_proto::json`.)
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

/// Parses a queue name field as `caller` names queues: a tenant's caller
/// names its own (stored as `tenant/queue`); an admin names any as
/// `tenant/queue`, or an unscoped one.
pub fn queue_for(caller: &Caller, text: &str, field: &str) -> Result<QueueName, GatewayError> {
    if caller.names_tenant_queues() {
        return QueueName::parse_scoped(text)
            .map_err(|reason| GatewayError::invalid(field, reason));
    }
    Ok(QueueName::scoped(
        caller.tenant.as_deref(),
        queue(text, field)?,
    ))
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

/// Validates a submit request from `caller`; the ticket belongs to the
/// tenant of its (scoped) queue.
pub fn new_ticket(
    caller: &Caller,
    request: pb::SubmitRequest,
    limits: &SubmitLimits,
) -> Result<NewTicket, GatewayError> {
    let queue = queue_for(caller, &request.queue, "queue")?;
    let tenant = queue.tenant().map(std::sync::Arc::from);
    let payload = checked_payload(
        request.payload.unwrap_or_default(),
        "payload",
        limits.max_payload_bytes,
    )?;
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
    let callback = history::callback_for(&limits.callbacks, &request.callback)?;
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
        id: TicketId::new(),
        queue,
        payload,
        priority: request.priority,
        idempotency_key: (!request.idempotency_key.is_empty()).then_some(request.idempotency_key),
        metadata: request.metadata,
        timeout: positive_duration(request.timeout, "timeout")?,
        attempt_timeout: positive_duration(request.attempt_timeout, "attempt_timeout")?,
        max_attempts,
        tenant,
        not_before: not_before(request.not_before, request.delay, SystemTime::now())?,
        callback,
    })
}

/// When a submit may run: `not_before`, or `delay` from `now`, within a
/// year; a time already past means now.
fn not_before(
    at: Option<prost_types::Timestamp>,
    delay: Option<prost_types::Duration>,
    now: SystemTime,
) -> Result<Option<SystemTime>, GatewayError> {
    let ahead = |field: &str, at: SystemTime| {
        if at.duration_since(now).unwrap_or_default() > MAX_SCHEDULE_AHEAD {
            return Err(GatewayError::invalid(
                field,
                format!(
                    "is more than {} days ahead; schedule at most a year ahead",
                    MAX_SCHEDULE_AHEAD.as_secs() / 86_400
                ),
            ));
        }
        Ok(Some(at))
    };
    match (at, delay) {
        (Some(_), Some(_)) => Err(GatewayError::invalid(
            "delay",
            "set either not_before (a time) or delay (a duration from now), not both",
        )),
        (Some(at), None) => match list::time(Some(at), "not_before")? {
            Some(at) if at > now => ahead("not_before", at),
            _ => Ok(None),
        },
        (None, delay) => match duration(delay, "delay", MAX_SCHEDULE_AHEAD)? {
            Some(delay) if !delay.is_zero() => Ok(Some(now + delay)),
            _ => Ok(None),
        },
    }
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
pub struct WaitContext<'a> {
    /// Ready tickets ahead of it.
    pub tickets_ahead: u64,
    /// Workers connected for its queue.
    pub workers: usize,
    /// Whether the viewer sees queues as stored (`tenant/queue`: admins)
    /// rather than by the ticket's tenant's own names.
    pub scoped_names: bool,
    /// What may hold its queue back (pause, limits), if known.
    pub flow: Option<&'a crate::engine::QueueFlow>,
    /// The viewer may not see payloads: the result is left out.
    pub hide_payloads: bool,
    /// The target that works its queue (`--target`), if any: a waiting
    /// ticket then waits for that upstream, which the reason names.
    pub target: Option<&'a crate::targets::TargetSetting>,
}

/// A ticket's queue as the viewer of `context` names it.
fn queue_seen<'t>(ticket: &'t Ticket, context: WaitContext<'_>) -> &'t str {
    if context.scoped_names {
        ticket.queue.as_str()
    } else {
        ticket.queue.seen_by(ticket.tenant.as_deref())
    }
}

/// A delayed ticket's waiting reason while its time has not come.
fn scheduled_reason(ticket: &Ticket, context: WaitContext<'_>) -> Option<pb::WaitingReason> {
    let until = ticket
        .not_before
        .filter(|until| *until > SystemTime::now() && ticket.attempt == 0)?;
    Some(pb::WaitingReason {
        kind: pb::WaitingReasonKind::Scheduled as i32,
        description: format!(
            "scheduled for {}; it joins queue {:?} then",
            rfc3339(until),
            queue_seen(ticket, context)
        ),
        until: Some(time::timestamp(until)),
        ..Default::default()
    })
}

/// A ticket waiting out its retry backoff (or a target's pushback).
fn backoff_reason(
    ticket: &Ticket,
    context: WaitContext<'_>,
    until: SystemTime,
) -> pb::WaitingReason {
    let last = ticket.error.as_ref();
    let error = last.map_or("unknown error", |e| e.message.as_str());
    let description = match context.target {
        Some(target) => format!(
            "retrying after target error (attempt {} of {}): {error}; target {} is called again at {}",
            ticket.attempt,
            ticket.max_attempts,
            target.url(),
            rfc3339(until),
        ),
        None => format!(
            "in retry backoff until {} after attempt {} of {} failed: {error}",
            rfc3339(until),
            ticket.attempt,
            ticket.max_attempts,
        ),
    };
    pb::WaitingReason {
        kind: pb::WaitingReasonKind::Backoff as i32,
        description,
        until: Some(time::timestamp(until)),
        last_error: last.map(error_to_pb),
        ..Default::default()
    }
}

/// Explains why a ticket is not done (None once terminal).
fn waiting_reason(ticket: &Ticket, context: WaitContext<'_>) -> Option<pb::WaitingReason> {
    match ticket.state {
        TicketState::Pending => {
            if let Some(reason) = scheduled_reason(ticket, context) {
                return Some(reason);
            }
            if let Some(until) = ticket.not_before
                && until > SystemTime::now()
            {
                return Some(backoff_reason(ticket, context, until));
            }
            if let Some(pause) = context.flow.and_then(|flow| flow.pause.as_ref()) {
                return Some(pb::WaitingReason {
                    kind: pb::WaitingReasonKind::Paused as i32,
                    description: format!(
                        "queue {:?} is paused (by key {:?} since {}{}); the ticket waits until it is resumed",
                        queue_seen(ticket, context),
                        pause.by,
                        rfc3339(pause.at),
                        if pause.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", pause.reason)
                        }
                    ),
                    since: Some(time::timestamp(pause.at)),
                    tickets_ahead: context.tickets_ahead,
                    last_error: ticket.error.as_ref().map(error_to_pb),
                    ..Default::default()
                });
            }
            if let Some(description) = context.flow.and_then(held_back)
                && context.workers > 0
            {
                return Some(pb::WaitingReason {
                    kind: pb::WaitingReasonKind::Limited as i32,
                    description: format!(
                        "{description} on queue {:?}; {} ticket{} ahead",
                        queue_seen(ticket, context),
                        context.tickets_ahead,
                        if context.tickets_ahead == 1 { "" } else { "s" },
                    ),
                    tickets_ahead: context.tickets_ahead,
                    last_error: ticket.error.as_ref().map(error_to_pb),
                    ..Default::default()
                });
            }
            if let Some(target) = context.target
                && context.workers > 0
            {
                return Some(target_reason(ticket, context, target));
            }
            if context.workers == 0 {
                return Some(pb::WaitingReason {
                    kind: pb::WaitingReasonKind::NoWorkers as i32,
                    description: format!(
                        "no worker is connected for queue {:?}; the ticket waits until one connects{}",
                        queue_seen(ticket, context),
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
                    queue_seen(ticket, context),
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
            let session = lease.session_id.to_string();
            Some(pb::WaitingReason {
                kind: pb::WaitingReasonKind::Leased as i32,
                // `since` carries the time; formatting it here too cost
                // more than the rest of the event.
                description: format!(
                    "running attempt {} of {}: leased to worker {:?} (session {session})",
                    ticket.attempt, ticket.max_attempts, &*lease.worker_name,
                ),
                since: Some(time::timestamp(lease.leased_at)),
                worker_session: session,
                worker_name: lease.worker_name.to_string(),
                until: lease.attempt_deadline.map(time::timestamp),
                last_error: ticket.error.as_ref().map(error_to_pb),
                ..Default::default()
            })
        }
        _ => None,
    }
}

/// A due ticket of a target queue: it waits for a free call to its target
/// (LIMITED while the target's `max_concurrent` calls are in flight).
fn target_reason(
    ticket: &Ticket,
    context: WaitContext<'_>,
    target: &crate::targets::TargetSetting,
) -> pb::WaitingReason {
    let max = target.options.max_concurrent;
    let running = context.flow.map(|flow| flow.running);
    let full = running.is_some_and(|running| running >= u64::from(max));
    let calls = match running {
        Some(running) if full => format!("{running} calls in flight, its max_concurrent"),
        Some(running) => format!("{running} of at most {max} calls in flight"),
        None => format!("at most {max} calls at once"),
    };
    let paced = target
        .options
        .max_per_second
        .map(|n| format!(", paced at {n}/s"))
        .unwrap_or_default();
    pb::WaitingReason {
        kind: if full {
            pb::WaitingReasonKind::Limited
        } else {
            pb::WaitingReasonKind::Queued
        } as i32,
        description: format!(
            "waiting for target {} ({calls}{paced}); {} ticket{} ahead in queue {:?}",
            target.url(),
            context.tickets_ahead,
            if context.tickets_ahead == 1 { "" } else { "s" },
            queue_seen(ticket, context),
        ),
        tickets_ahead: context.tickets_ahead,
        last_error: ticket.error.as_ref().map(error_to_pb),
        ..Default::default()
    }
}

/// Which limit holds a queue's tickets back, in words: the concurrency cap
/// when it is reached, else the rate when one is set (the bucket itself is
/// not read: the rate is what paces the line).
fn held_back(flow: &crate::engine::QueueFlow) -> Option<String> {
    let limits = flow.limits;
    if limits.max_concurrent > 0 && flow.running >= u64::from(limits.max_concurrent) {
        return Some(format!(
            "concurrency limit {} reached",
            limits.max_concurrent
        ));
    }
    (limits.max_dispatch_per_second > 0)
        .then(|| format!("rate limited: {}/s", limits.max_dispatch_per_second))
}

/// A domain ticket on the wire (without the request payload).
pub fn ticket_to_pb(ticket: &Ticket, context: WaitContext<'_>) -> pb::Ticket {
    pb::Ticket {
        id: ticket.id.to_string(),
        queue: queue_seen(ticket, context).to_owned(),
        state: state_to_pb(ticket.state) as i32,
        attempt: ticket.attempt,
        max_attempts: ticket.max_attempts,
        priority: ticket.priority,
        metadata: (*ticket.metadata).clone(),
        created_at: Some(time::timestamp(ticket.created_at)),
        updated_at: Some(time::timestamp(ticket.updated_at)),
        result: ticket.result.clone().filter(|_| !context.hide_payloads),
        payloads_hidden: context.hide_payloads,
        error: ticket.error.as_ref().map(error_to_pb),
        progress: ticket.progress.as_ref().map(|p| pb::Progress {
            percent: p.percent,
            message: p.message.clone(),
        }),
        waiting_reason: waiting_reason(ticket, context),
        seq: ticket.seq,
        idempotency_key: ticket.idempotency_key.clone().unwrap_or_default(),
        deadline: ticket.deadline.map(time::timestamp),
        attempt_timeout: ticket.attempt_timeout.map(time::duration),
        finished_at: ticket.finished_at.map(time::timestamp),
        scheduled_for: ticket.scheduled_for.map(time::timestamp),
        callback: history::callback_of(ticket),
        attempts: history::attempts_to_pb(ticket),
    }
}

/// The collection of every operation: the parent `ListOperations` accepts,
/// and the prefix of each operation name.
pub const OPERATIONS: &str = "operations";

/// The name of ticket `id`'s operation.
pub fn operation_name(id: &str) -> String {
    format!("{OPERATIONS}/{id}")
}

/// Parses an operation name, `operations/{ticket id}`.
pub fn operation_id(name: &str, field: &str) -> Result<TicketId, GatewayError> {
    let expected = "expected operations/{ticket id}, the name an Operation carries \
                    (e.g. operations/0190b6c2-8a3e-7c4d-9f1a-2b3c4d5e6f70)";
    let Some(id) = name.strip_prefix("operations/") else {
        let got: String = name.chars().take(80).collect();
        return Err(if name.is_empty() {
            GatewayError::invalid(field, format!("is empty; {expected}"))
        } else {
            GatewayError::invalid(
                field,
                format!("{got:?} is not an operation name; {expected}"),
            )
        });
    };
    id.parse().map_err(|e: crate::domain::ids::BadId| {
        GatewayError::invalid(field, format!("{e}; {expected}"))
    })
}

/// `message` packed as a `google.protobuf.Any` (type.googleapis.com URL).
pub fn pack<M: prost::Name>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A terminal ticket's error as a `google.rpc.Status`. CANCELLED and EXPIRED
/// tickets always read CANCELLED and DEADLINE_EXCEEDED; a FAILED ticket keeps
/// the code its error was recorded with (the worker's, or ABORTED for a lost
/// worker, DEADLINE_EXCEEDED for an attempt timeout), UNKNOWN when that is
/// missing or not an error code.
fn operation_error(
    error: Option<&pb::TicketError>,
    code: Option<i32>,
    what: &str,
) -> tonic_types::pb::Status {
    let recorded = error
        .map(|e| e.code)
        .filter(|c| (1..=16).contains(c))
        .unwrap_or(codes::UNKNOWN);
    tonic_types::pb::Status {
        code: code.unwrap_or(recorded),
        message: error
            .map(|e| e.message.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("the ticket {what}")),
        details: Vec::new(),
    }
}

/// A presented ticket as a long-running operation: done once terminal, with
/// the result `Payload` as `response` or the error as `error`, and the ticket
/// itself as `metadata`. The result travels once, in `response`: the
/// metadata snapshot leaves it out.
pub fn operation(mut ticket: pb::Ticket) -> lro::Operation {
    use lro::operation::Result as Outcome;
    let result = match pb::TicketState::try_from(ticket.state) {
        Ok(pb::TicketState::Succeeded) => Some(Outcome::Response(pack(
            &ticket.result.take().unwrap_or_default(),
        ))),
        Ok(pb::TicketState::Failed) => Some(Outcome::Error(operation_error(
            ticket.error.as_ref(),
            None,
            "failed",
        ))),
        Ok(pb::TicketState::Cancelled) => Some(Outcome::Error(operation_error(
            ticket.error.as_ref(),
            Some(codes::CANCELLED),
            "was cancelled",
        ))),
        Ok(pb::TicketState::Expired) => Some(Outcome::Error(operation_error(
            ticket.error.as_ref(),
            Some(codes::DEADLINE_EXCEEDED),
            "expired",
        ))),
        _ => None,
    };
    ticket.result = None;
    lro::Operation {
        name: operation_name(&ticket.id),
        metadata: Some(pack(&ticket)),
        done: result.is_some(),
        result,
    }
}

/// The filter syntax ListOperations accepts, for docs and error messages.
pub const OPERATIONS_FILTER_SYNTAX: &str = "terms joined by AND, each field at most once: \
     done = true|false, state = PENDING|RUNNING|SUCCEEDED|FAILED|CANCELLED|EXPIRED, \
     queue = \"name\" (e.g. `done = false AND queue = \"emails\"`)";

/// A parsed ListOperations filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationsFilter {
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only these states; `None`: every state. `Some(empty)` when the terms
    /// contradict each other (`done = true AND state = PENDING`): nothing
    /// matches.
    pub states: Option<Vec<TicketState>>,
}

/// Parses a ListOperations filter (see [`OPERATIONS_FILTER_SYNTAX`]); an
/// empty filter matches every operation.
pub fn operations_filter(caller: &Caller, text: &str) -> Result<OperationsFilter, GatewayError> {
    const TERMINAL: [TicketState; 4] = [
        TicketState::Succeeded,
        TicketState::Failed,
        TicketState::Cancelled,
        TicketState::Expired,
    ];
    let refuse = |why: String| {
        GatewayError::invalid(
            "filter",
            format!("{why}; the supported syntax is {OPERATIONS_FILTER_SYNTAX}"),
        )
    };
    let mut filter = OperationsFilter::default();
    if text.trim().is_empty() {
        return Ok(filter);
    }
    let mut seen: Vec<&str> = Vec::new();
    for term in text.split(" AND ") {
        let Some((field, value)) = term.split_once('=') else {
            return Err(refuse(format!(
                "{:?} is not a `field = value` term",
                term.trim()
            )));
        };
        let (field, value) = (field.trim(), value.trim());
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if seen.contains(&field) {
            return Err(refuse(format!("{field} appears twice")));
        }
        let states: Vec<TicketState> = match field {
            "done" => match value {
                "true" => TERMINAL.to_vec(),
                "false" => vec![TicketState::Pending, TicketState::Running],
                _ => return Err(refuse(format!("done must be true or false, not {value:?}"))),
            },
            "state" => {
                let upper = value.to_ascii_uppercase();
                let name = if upper.starts_with("TICKET_STATE_") {
                    upper
                } else {
                    format!("TICKET_STATE_{upper}")
                };
                match pb::TicketState::from_str_name(&name) {
                    Some(state) if state != pb::TicketState::Unspecified => {
                        vec![state_from_pb(state as i32, "filter")?]
                    }
                    _ => return Err(refuse(format!("{value:?} is not a ticket state"))),
                }
            }
            "queue" => {
                filter.queue = Some(queue_for(caller, value, "filter")?);
                seen.push(field);
                continue;
            }
            _ => {
                return Err(refuse(format!(
                    "{:?} is not a supported filter term",
                    term.trim()
                )));
            }
        };
        seen.push(field);
        filter.states = Some(match filter.states.take() {
            None => states,
            Some(before) => before.into_iter().filter(|s| states.contains(s)).collect(),
        });
    }
    Ok(filter)
}

#[cfg(test)]
mod tests;
