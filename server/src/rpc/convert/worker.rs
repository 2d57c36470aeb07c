//! The worker protocol's edge: each `WorkerMessage` validated into the
//! session's [`FromWorker`] (ids parsed, payloads checked, the Hello's
//! queues scoped to the caller's tenant), and each [`ToWorker`] written as
//! a `DispatchMessage`.

use asyncgate_proto::v1 as pb;
use pb::dispatch_message::Kind as Out;
use pb::worker_message::Kind as In;

use super::{checked_payload, queue_for};
use crate::auth::Caller;
use crate::dispatch::session::messages::{
    Ack, FromWorker, Hello, MAX_IN_FLIGHT_LIMIT, MAX_QUEUES_PER_WORKER, MAX_WORKER_NAME_BYTES,
    ProgressUpdate, Report, ToWorker,
};
use crate::domain::ticket::codes;
use crate::domain::{LeaseId, Outcome, Progress, TicketError, TicketId};
use crate::engine::RevokeReason;
use crate::error::GatewayError;
use crate::time;

/// The longest progress message kept, in characters.
const MAX_PROGRESS_MESSAGE_CHARS: usize = 1024;
/// The longest failure message kept, in characters.
const MAX_FAILURE_MESSAGE_CHARS: usize = 4096;

/// A worker's message, validated for a session of `caller` whose results
/// and outputs may be `max_payload_bytes` large.
/// Messages one WorkerBatch may carry.
pub(crate) const MAX_BATCH: usize = 10_000;

/// What a `WorkerMessage` carries, in the order it is handled: its `kind`,
/// then its batched progress reports and results (at most [`MAX_BATCH`];
/// they are not allowed beside a Hello).
pub(crate) fn from_pb_all(
    caller: &Caller,
    message: pb::WorkerMessage,
    max_payload_bytes: usize,
) -> Result<Vec<FromWorker>, GatewayError> {
    let (progress, results) = (message.progress_batch, message.result_batch);
    let batched = progress.len() + results.len();
    if batched == 0 {
        let lone = pb::WorkerMessage {
            kind: message.kind,
            ..Default::default()
        };
        return Ok(vec![from_pb(caller, lone, max_payload_bytes)]);
    }
    if batched > MAX_BATCH {
        return Err(GatewayError::invalid(
            "result_batch",
            format!("with progress_batch holds {batched} reports; at most {MAX_BATCH}"),
        ));
    }
    if matches!(message.kind, Some(In::Hello(_))) {
        return Err(GatewayError::invalid(
            "result_batch",
            "batches come after the Hello, not with it",
        ));
    }
    let mut all = Vec::with_capacity(batched + 1);
    if let Some(kind) = message.kind {
        let lone = pb::WorkerMessage {
            kind: Some(kind),
            ..Default::default()
        };
        all.push(from_pb(caller, lone, max_payload_bytes));
    }
    for report in progress {
        let lone = pb::WorkerMessage {
            kind: Some(In::Progress(report)),
            ..Default::default()
        };
        all.push(from_pb(caller, lone, max_payload_bytes));
    }
    for result in results {
        let lone = pb::WorkerMessage {
            kind: Some(In::Result(result)),
            ..Default::default()
        };
        all.push(from_pb(caller, lone, max_payload_bytes));
    }
    Ok(all)
}

/// One message's `kind` (its batches: see [`from_pb_all`]).
pub(crate) fn from_pb(
    caller: &Caller,
    message: pb::WorkerMessage,
    max_payload_bytes: usize,
) -> FromWorker {
    match message.kind {
        None => FromWorker::Empty,
        Some(In::Hello(hello)) => FromWorker::Hello(hello_from_pb(caller, hello)),
        Some(In::Heartbeat(heartbeat)) => FromWorker::Heartbeat {
            nonce: heartbeat.nonce,
        },
        Some(In::Drain(_)) => FromWorker::Drain,
        Some(In::Progress(progress)) => FromWorker::Progress(report(
            &progress.ticket_id,
            &progress.lease_id,
            "progress",
            || {
                progress_body(
                    progress.percent,
                    &progress.message,
                    progress.output,
                    max_payload_bytes,
                )
            },
        )),
        Some(In::Result(result)) => FromWorker::Result(report(
            &result.ticket_id,
            &result.lease_id,
            "result",
            || outcome(result.outcome, max_payload_bytes),
        )),
    }
}

/// A report's ids parsed, its body validated only if they are.
fn report<T>(
    ticket_id: &str,
    lease_id: &str,
    what: &str,
    body: impl FnOnce() -> Result<T, GatewayError>,
) -> Report<T> {
    let ids = ticket_id
        .parse::<TicketId>()
        .map_err(|e| GatewayError::invalid(format!("{what}.ticket_id"), e.to_string()))
        .and_then(|ticket| {
            lease_id
                .parse::<LeaseId>()
                .map(|lease| (ticket, lease))
                .map_err(|e| GatewayError::invalid(format!("{what}.lease_id"), e.to_string()))
        });
    match ids {
        Ok((ticket_id, lease_id)) => Report::Lease {
            ticket_id,
            lease_id,
            body: body(),
        },
        Err(error) => Report::BadIds {
            ticket_id: ticket_id.to_owned(),
            lease_id: lease_id.to_owned(),
            error,
        },
    }
}

fn progress_body(
    percent: u32,
    message: &str,
    output: Option<pb::Payload>,
    max_payload_bytes: usize,
) -> Result<ProgressUpdate, GatewayError> {
    let output = output
        .map(|output| checked_payload(output, "progress.output", max_payload_bytes))
        .transpose()?;
    // A report with neither new progress nor output still says the worker
    // is at 0 %.
    let progress = (percent > 0 || !message.is_empty() || output.is_none()).then(|| Progress {
        percent: percent.min(100),
        message: message.chars().take(MAX_PROGRESS_MESSAGE_CHARS).collect(),
    });
    Ok(ProgressUpdate { progress, output })
}

fn outcome(
    outcome: Option<pb::task_result::Outcome>,
    max_payload_bytes: usize,
) -> Result<Outcome, GatewayError> {
    match outcome {
        Some(pb::task_result::Outcome::Success(payload)) => {
            Ok(
                match checked_payload(payload, "result.success", max_payload_bytes) {
                    Ok(payload) => Outcome::Success(payload),
                    // The ticket fails with the reason rather than waiting for
                    // a result the worker cannot give in another form.
                    Err(error) => Outcome::Failure(TicketError {
                        code: error.code() as i32,
                        message: format!("the worker's result was refused: {error}"),
                        retryable: false,
                    }),
                },
            )
        }
        Some(pb::task_result::Outcome::Failure(failure)) => Ok(Outcome::Failure(TicketError {
            code: if failure.code == 0 {
                codes::UNKNOWN
            } else {
                failure.code.clamp(1, 16)
            },
            message: failure
                .message
                .chars()
                .take(MAX_FAILURE_MESSAGE_CHARS)
                .collect(),
            retryable: failure.retryable,
        })),
        None => Err(GatewayError::invalid(
            "result.outcome",
            "is empty: set success (a payload) or failure",
        )),
    }
}

/// A Hello validated: queues scoped to the caller's tenant and without
/// repeats, `max_in_flight` in range, the worker's name printable.
pub(crate) fn hello_from_pb(caller: &Caller, hello: pb::Hello) -> Result<Hello, GatewayError> {
    if hello.queues.is_empty() {
        return Err(GatewayError::invalid(
            "hello.queues",
            "name at least one queue to serve",
        ));
    }
    if hello.queues.len() > MAX_QUEUES_PER_WORKER {
        return Err(GatewayError::invalid(
            "hello.queues",
            format!("at most {MAX_QUEUES_PER_WORKER} queues per connection"),
        ));
    }
    let mut queues = Vec::with_capacity(hello.queues.len());
    for (i, name) in hello.queues.iter().enumerate() {
        // A tenant's worker serves that tenant's queues of these names.
        let queue = queue_for(caller, name, &format!("hello.queues[{i}]"))?;
        if !queues.contains(&queue) {
            queues.push(queue);
        }
    }
    if hello.max_in_flight == 0 || hello.max_in_flight > MAX_IN_FLIGHT_LIMIT {
        return Err(GatewayError::invalid(
            "hello.max_in_flight",
            format!(
                "must be between 1 and {MAX_IN_FLIGHT_LIMIT}, got {}",
                hello.max_in_flight
            ),
        ));
    }
    Ok(Hello {
        queues,
        max_in_flight: hello.max_in_flight,
        worker_name: worker_name(hello.worker_name)?,
    })
}

fn worker_name(mut name: String) -> Result<String, GatewayError> {
    if name.len() > MAX_WORKER_NAME_BYTES {
        return Err(GatewayError::invalid(
            "hello.worker_name",
            format!(
                "is {} bytes; at most {MAX_WORKER_NAME_BYTES} bytes",
                name.len()
            ),
        ));
    }
    // The name is in every log line of the session and in tickets'
    // waiting reasons: a newline or an escape in it would forge log lines
    // or drive the terminal of whoever reads them.
    if let Some((at, c)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(GatewayError::invalid(
            "hello.worker_name",
            format!(
                "has a control character (U+{:04X} at byte {at}); use printable text",
                u32::from(c)
            ),
        ));
    }
    if name.is_empty() {
        name = "unnamed".into();
    }
    Ok(name)
}

/// The session's message on the wire.
pub(crate) fn to_pb(message: ToWorker) -> pb::DispatchMessage {
    let kind = match message {
        ToWorker::Welcome {
            session_id,
            lease_ttl,
            heartbeat_interval,
        } => Out::Welcome(pb::Welcome {
            session_id: session_id.to_string(),
            lease_ttl: Some(time::duration(lease_ttl)),
            heartbeat_interval: Some(time::duration(heartbeat_interval)),
            batches: true,
        }),
        ToWorker::Task { claimed, queue } => {
            let ticket = &claimed.ticket;
            Out::Task(pb::Task {
                ticket_id: ticket.id.to_string(),
                lease_id: claimed.lease.lease_id.to_string(),
                queue,
                payload: Some((*ticket.payload).clone()),
                metadata: (*ticket.metadata).clone(),
                attempt: ticket.attempt,
                max_attempts: ticket.max_attempts,
                deadline: claimed.lease.attempt_deadline.map(time::timestamp),
            })
        }
        ToWorker::Cancel(revocation) => Out::Cancel(pb::Cancel {
            ticket_id: revocation.ticket_id.to_string(),
            lease_id: revocation.lease_id.to_string(),
            reason: match revocation.reason {
                RevokeReason::Cancelled => pb::CancelReason::Cancelled,
                RevokeReason::Expired => pb::CancelReason::Expired,
                RevokeReason::AttemptTimeout => pb::CancelReason::AttemptTimeout,
            } as i32,
            message: revocation.message,
        }),
        ToWorker::Ping { nonce } => Out::Ping(pb::Ping { nonce }),
        ToWorker::Drain { reason, stop } => Out::Drain(pb::Drain {
            reason: reason.into_owned(),
            stop,
        }),
        ToWorker::Ack {
            ticket_id,
            lease_id,
            ack,
        } => {
            let (code, message) = match ack {
                Ack::Recorded { state } => {
                    (tonic::Code::Ok, format!("recorded; ticket is {state}"))
                }
                Ack::Duplicate => (
                    tonic::Code::AlreadyExists,
                    "this lease's result was already recorded".into(),
                ),
                Ack::Refused(error) => (error.code(), error.to_string()),
                Ack::ProgressRefused(error) => (error.code(), format!("progress refused: {error}")),
            };
            Out::ResultAck(pb::ResultAck {
                ticket_id,
                lease_id,
                code: code as i32,
                message,
            })
        }
    };
    pb::DispatchMessage {
        kind: Some(kind),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
