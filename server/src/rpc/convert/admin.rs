//! The admin service's edge: its requests validated (each refusal names the
//! field), and queues presented as the caller names them.

use std::time::SystemTime;

use asyncgate_proto::v1 as pb;

use super::state_from_pb;
use crate::auth::Caller;
use crate::domain::queue::MAX_PAUSE_REASON_CHARS;
use crate::domain::{QueueLimits, QueueName, SessionId, TicketId, TicketState};
use crate::engine::window::{BucketStats, Latency, Throughput};
use crate::engine::{QueueInfo, WorkerRecord};
use crate::error::GatewayError;
use crate::targets::KnownTarget;
use crate::time;

/// A queue on the wire, as `caller` names it, at `now`; `workers` serve it.
/// Its history only when asked (it is most of the message).
pub(crate) fn queue_to_pb(
    caller: &Caller,
    info: QueueInfo,
    workers: usize,
    target: Option<&KnownTarget>,
    history: bool,
    now: SystemTime,
) -> pb::QueueInfo {
    let name = queue_name(caller, &info.queue);
    let counts = info.counts;
    pb::QueueInfo {
        name,
        counts: Some(pb::QueueCounts {
            pending: counts.pending,
            running: counts.running,
            succeeded: counts.succeeded,
            failed: counts.failed,
            cancelled: counts.cancelled,
            expired: counts.expired,
        }),
        oldest_pending_at: info.oldest_pending_at.map(time::timestamp),
        oldest_pending_age: info
            .oldest_pending_at
            .map(|at| time::duration(now.duration_since(at).unwrap_or_default())),
        workers: u32::try_from(workers).unwrap_or(u32::MAX),
        in_flight: counts.running,
        pause: info.pause.map(|pause| pb::QueuePause {
            paused_by: pause.by,
            paused_at: Some(time::timestamp(pause.at)),
            reason: pause.reason,
        }),
        limits: Some(pb::QueueLimits {
            max_dispatch_per_second: info.limits.max_dispatch_per_second,
            burst: info.limits.burst,
            max_concurrent: info.limits.max_concurrent,
        }),
        history: if history {
            info.stats.history.iter().map(sample_to_pb).collect()
        } else {
            Vec::new()
        },
        last_minute: Some(throughput_to_pb(info.stats.last_minute)),
        last_five_minutes: Some(throughput_to_pb(info.stats.last_five_minutes)),
        queue_wait: Some(latency_to_pb(info.stats.queue_wait)),
        run_time: Some(latency_to_pb(info.stats.run_time)),
        held_back: info.held_back,
        scheduled: info.scheduled,
        target: target.map(target_to_pb),
    }
}

/// A queue's target as the admin API shows it.
fn target_to_pb(known: &KnownTarget) -> pb::QueueTarget {
    let setting = known.setting.as_deref();
    pb::QueueTarget {
        target: match (&known.stored, setting) {
            (Some(stored), _) => stored.spec.clone(),
            (None, Some(setting)) => setting.spec(),
            (None, None) => String::new(),
        },
        url: setting.map(|s| s.url()).unwrap_or_default(),
        max_concurrent: setting.map_or(0, |s| s.options.max_concurrent),
        max_per_second: setting.and_then(|s| s.options.max_per_second).unwrap_or(0),
        from_config: known.stored.is_none(),
        set_by: known
            .stored
            .as_ref()
            .map(|s| s.by.clone())
            .unwrap_or_default(),
        set_at: known.stored.as_ref().map(|s| time::timestamp(s.at)),
        problem: known.problem.clone().unwrap_or_default(),
    }
}

fn sample_to_pb(bucket: &BucketStats) -> pb::QueueSample {
    pb::QueueSample {
        start: Some(time::timestamp(bucket.start)),
        succeeded: bucket.throughput.succeeded,
        failed: bucket.throughput.failed,
        queue_wait: Some(latency_to_pb(bucket.queue_wait)),
        run_time: Some(latency_to_pb(bucket.run_time)),
    }
}

fn throughput_to_pb(throughput: Throughput) -> pb::QueueThroughput {
    pb::QueueThroughput {
        succeeded: throughput.succeeded,
        failed: throughput.failed,
    }
}

fn latency_to_pb(latency: Latency) -> pb::LatencySummary {
    pb::LatencySummary {
        p50: latency.p50.map(time::duration),
        p95: latency.p95.map(time::duration),
        count: latency.count,
    }
}

/// A worker on the wire, its queues as `caller` names them, holding
/// `tickets`.
pub(crate) fn worker_to_pb(
    caller: &Caller,
    worker: WorkerRecord,
    tickets: Vec<TicketId>,
    now: SystemTime,
) -> pb::WorkerInfo {
    pb::WorkerInfo {
        last_heard_age: Some(time::duration(
            now.duration_since(worker.last_heard_at).unwrap_or_default(),
        )),
        session_id: worker.session_id.to_string(),
        worker_name: worker.worker_name,
        peer: worker.peer.unwrap_or_default(),
        queues: worker
            .queues
            .iter()
            .map(|queue| queue_name(caller, queue))
            .collect(),
        max_in_flight: worker.max_in_flight,
        tickets: tickets.iter().map(ToString::to_string).collect(),
        connected_at: Some(time::timestamp(worker.connected_at)),
        last_heard_at: Some(time::timestamp(worker.last_heard_at)),
        replica: worker.replica,
        draining: worker.draining,
    }
}

/// A queue's name as `caller` names it.
fn queue_name(caller: &Caller, queue: &QueueName) -> String {
    if caller.names_tenant_queues() {
        queue.to_string()
    } else {
        queue.seen_by(caller.tenant.as_deref()).to_owned()
    }
}

/// A session id field.
pub(crate) fn session_id(text: &str, field: &str) -> Result<SessionId, GatewayError> {
    text.parse::<SessionId>()
        .map_err(|e| GatewayError::invalid(field, e.to_string()))
}

/// A queue's limits, checked: each within its bound, a burst only with a
/// rate.
/// A target for `queue` from `SetQueueTarget`: parsed as `--target`
/// parses it (without the options that read the gateway's environment or
/// files), and its host checked against the destination allowlist.
pub(crate) fn queue_target(
    queue: &QueueName,
    spec: &str,
    policy: &crate::callbacks::CallbackSettings,
    caller: &Caller,
) -> Result<crate::domain::QueueTarget, GatewayError> {
    let setting = crate::targets::parse_admin_target(queue, spec)
        .map_err(|reason| GatewayError::invalid("target", reason))?;
    policy
        .check_target(&setting.origin)
        .map_err(|refused| match refused {
            crate::callbacks::Refused::Invalid(reason) => GatewayError::invalid("target", reason),
            crate::callbacks::Refused::NotAllowed(reason) => {
                GatewayError::NotAllowedHere(format!("target: {reason}"))
            }
        })?;
    Ok(crate::domain::QueueTarget {
        spec: setting.spec(),
        by: caller.name.to_string(),
        at: SystemTime::now(),
    })
}

pub(crate) fn limits(limits: Option<pb::QueueLimits>) -> Result<QueueLimits, GatewayError> {
    let Some(limits) = limits else {
        return Err(GatewayError::invalid(
            "limits",
            "is missing: set max_dispatch_per_second, burst and/or max_concurrent (0 means unlimited)",
        ));
    };
    let parsed = QueueLimits {
        max_dispatch_per_second: limits.max_dispatch_per_second,
        burst: limits.burst,
        max_concurrent: limits.max_concurrent,
    };
    parsed
        .check()
        .map_err(|(field, message)| GatewayError::invalid(format!("limits.{field}"), message))?;
    Ok(parsed)
}

/// A pause's reason: bounded and printable (it is shown in waiting reasons
/// and logged).
pub(crate) fn pause_reason(reason: &str) -> Result<String, GatewayError> {
    let length = reason.chars().count();
    if length > MAX_PAUSE_REASON_CHARS {
        return Err(GatewayError::invalid(
            "reason",
            format!("is {length} characters; at most {MAX_PAUSE_REASON_CHARS}"),
        ));
    }
    if let Some((at, c)) = reason.char_indices().find(|(_, c)| c.is_control()) {
        return Err(GatewayError::invalid(
            "reason",
            format!(
                "has a control character (U+{:04X} at byte {at}); use printable text",
                u32::from(c)
            ),
        ));
    }
    Ok(reason.to_owned())
}

/// The states a purge cancels: PENDING and RUNNING only; none means
/// PENDING.
pub(crate) fn purge_states(states: &[i32]) -> Result<Vec<TicketState>, GatewayError> {
    if states.is_empty() {
        return Ok(vec![TicketState::Pending]);
    }
    let mut parsed = Vec::with_capacity(states.len());
    for (i, value) in states.iter().enumerate() {
        let field = format!("states[{i}]");
        let state = state_from_pb(*value, &field)?;
        if state.is_terminal() {
            return Err(GatewayError::invalid(
                field,
                format!(
                    "a purge cancels unfinished tickets: name PENDING and/or RUNNING, not {}",
                    state.name().to_uppercase()
                ),
            ));
        }
        if !parsed.contains(&state) {
            parsed.push(state);
        }
    }
    Ok(parsed)
}

/// The states a bulk retry takes: FAILED, CANCELLED and EXPIRED only; none
/// means FAILED.
pub(crate) fn retry_states(states: &[i32]) -> Result<Vec<TicketState>, GatewayError> {
    if states.is_empty() {
        return Ok(vec![TicketState::Failed]);
    }
    let mut parsed = Vec::with_capacity(states.len());
    for (i, value) in states.iter().enumerate() {
        let field = format!("states[{i}]");
        let state = state_from_pb(*value, &field)?;
        if !state.is_terminal() || state == TicketState::Succeeded {
            return Err(GatewayError::invalid(
                field,
                format!(
                    "a retry runs tickets that ended without success again: name FAILED, CANCELLED and/or EXPIRED, not {}",
                    state.name().to_uppercase()
                ),
            ));
        }
        if !parsed.contains(&state) {
            parsed.push(state);
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_reason_is_bounded_and_printable() {
        assert_eq!(
            pause_reason("deploy of billing v2").unwrap(),
            "deploy of billing v2"
        );
        let long = "é".repeat(MAX_PAUSE_REASON_CHARS);
        assert_eq!(pause_reason(&long).unwrap(), long);
        for bad in [
            format!("{long}x"),
            "line\nbreak".to_owned(),
            "\u{1b}[31m".to_owned(),
        ] {
            match pause_reason(&bad) {
                Err(GatewayError::InvalidArgument { field, .. }) => assert_eq!(field, "reason"),
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bulk_retry_takes_failed_cancelled_and_expired_only() {
        assert_eq!(retry_states(&[]).unwrap(), [TicketState::Failed]);
        let three = [
            pb::TicketState::Expired as i32,
            pb::TicketState::Cancelled as i32,
            pb::TicketState::Failed as i32,
            pb::TicketState::Expired as i32,
        ];
        assert_eq!(
            retry_states(&three).unwrap(),
            [
                TicketState::Expired,
                TicketState::Cancelled,
                TicketState::Failed
            ]
        );
        for (i, bad) in [
            pb::TicketState::Succeeded,
            pb::TicketState::Pending,
            pb::TicketState::Running,
        ]
        .into_iter()
        .enumerate()
        {
            let mut states = vec![pb::TicketState::Failed as i32; i];
            states.push(bad as i32);
            match retry_states(&states) {
                Err(GatewayError::InvalidArgument { field, reason }) => {
                    assert_eq!(field, format!("states[{i}]"));
                    assert!(
                        reason.contains("FAILED, CANCELLED and/or EXPIRED"),
                        "{reason}"
                    );
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        match retry_states(&[99]) {
            Err(GatewayError::InvalidArgument { field, .. }) => assert_eq!(field, "states[0]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_purge_takes_unfinished_states_only() {
        assert_eq!(purge_states(&[]).unwrap(), [TicketState::Pending]);
        let both = [
            pb::TicketState::Running as i32,
            pb::TicketState::Pending as i32,
        ];
        assert_eq!(
            purge_states(&both).unwrap(),
            [TicketState::Running, TicketState::Pending]
        );
        match purge_states(&[pb::TicketState::Succeeded as i32]) {
            Err(GatewayError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "states[0]");
                assert!(reason.contains("PENDING and/or RUNNING"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
