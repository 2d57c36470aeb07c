//! The schedules service's edge: a `Schedule` message validated into a
//! definition (each refusal names the field, `schedule.spec.cron` and so
//! on), and schedules presented as the caller names them.

use std::time::Duration;

use asyncgate_proto::v1 as pb;

use super::{SubmitLimits, duration, list, new_ticket};
use crate::auth::Caller;
use crate::domain::{QueueName, Ticket};
use crate::error::GatewayError;
use crate::schedules::model::{FIRE_TIME_KEY, Overlap, SCHEDULE_KEY, Schedule, Template};
use crate::schedules::service::{Definition, ScheduleError};
use crate::schedules::spec::Spec;
use crate::time;

/// Longest jitter accepted.
pub(crate) const MAX_JITTER: Duration = Duration::from_secs(3600);
/// The catch-up window of a schedule that sets none.
pub(crate) const DEFAULT_CATCHUP_WINDOW: Duration = Duration::from_secs(60);
/// Next fire times a schedule shows.
const UPCOMING: usize = 5;

impl From<ScheduleError> for GatewayError {
    fn from(error: ScheduleError) -> Self {
        match error {
            ScheduleError::NotFound(id) => GatewayError::NotFound(format!(
                "schedule {id:?} not found; ListSchedules shows the ones this key sees"
            )),
            ScheduleError::Invalid { field, reason } => GatewayError::invalid(field, reason),
            ScheduleError::Engine(error) => GatewayError::Engine(error),
        }
    }
}

/// A schedule id field, scoped to `caller`'s tenant as queue names are.
pub(crate) fn schedule_id(
    caller: &Caller,
    text: &str,
    field: &str,
) -> Result<QueueName, GatewayError> {
    super::queue_for(caller, text, field).map_err(|error| match error {
        GatewayError::InvalidArgument { field, reason } => GatewayError::InvalidArgument {
            field,
            reason: reason.replace("queue name", "schedule id"),
        },
        other => other,
    })
}

/// The id prefix of the schedules `caller` may list.
pub(crate) fn list_prefix(caller: &Caller) -> String {
    match &caller.tenant {
        Some(tenant) if !caller.names_tenant_queues() => format!("{tenant}/"),
        _ => String::new(),
    }
}

/// A schedule's id (as the caller names it) and definition.
pub(crate) fn definition(
    caller: &Caller,
    schedule: Option<pb::Schedule>,
    limits: &SubmitLimits,
) -> Result<(QueueName, Definition), GatewayError> {
    let schedule = schedule.ok_or_else(|| GatewayError::invalid("schedule", "is required"))?;
    let id = schedule_id(caller, &schedule.id, "schedule.id")?;
    let spec = schedule.spec.unwrap_or_default();
    let (cron, interval) = match spec.every {
        Some(pb::schedule_spec::Every::Cron(cron)) => (Some(cron), None),
        Some(pb::schedule_spec::Every::Interval(every)) => (
            None,
            Some(
                duration(Some(every), "schedule.spec.interval", super::MAX_TIMEOUT)?
                    .unwrap_or_default(),
            ),
        ),
        None => (None, None),
    };
    let start_at = list::time(spec.start_at, "schedule.spec.start_at")?;
    let end_at = list::time(spec.end_at, "schedule.spec.end_at")?;
    let spec = Spec::new(cron.as_deref(), interval, &spec.time_zone, start_at, end_at).map_err(
        |error| GatewayError::invalid(format!("schedule.spec.{}", error.field), error.reason),
    )?;
    let request = schedule.ticket.ok_or_else(|| {
        GatewayError::invalid(
            "schedule.ticket",
            "is required: the ticket each slot submits",
        )
    })?;
    for (set, name) in [
        (!request.idempotency_key.is_empty(), "idempotency_key"),
        (request.not_before.is_some(), "not_before"),
        (request.delay.is_some(), "delay"),
    ] {
        if set {
            return Err(GatewayError::invalid(
                format!("schedule.ticket.{name}"),
                "must be unset: the schedule sets it for each slot",
            ));
        }
    }
    if request.metadata.contains_key(SCHEDULE_KEY) || request.metadata.contains_key(FIRE_TIME_KEY) {
        return Err(GatewayError::invalid(
            "schedule.ticket.metadata",
            format!("{SCHEDULE_KEY} and {FIRE_TIME_KEY} are set by the schedule"),
        ));
    }
    if request.metadata.len() + 2 > super::MAX_METADATA_ENTRIES {
        return Err(GatewayError::invalid(
            "schedule.ticket.metadata",
            format!(
                "has {} entries; a schedule's ticket may have {} (the schedule adds two)",
                request.metadata.len(),
                super::MAX_METADATA_ENTRIES - 2
            ),
        ));
    }
    if !request.callback.is_empty() {
        return Err(GatewayError::invalid(
            "schedule.ticket.callback",
            "a schedule's tickets cannot name a callback yet; watch them (ListTickets by the schedule's metadata) instead",
        ));
    }
    let new = new_ticket(caller, request, limits).map_err(|error| match error {
        GatewayError::InvalidArgument { field, reason } => GatewayError::InvalidArgument {
            field: format!("schedule.ticket.{field}"),
            reason,
        },
        GatewayError::TooLarge { field, reason } => GatewayError::TooLarge {
            field: format!("schedule.ticket.{field}"),
            reason,
        },
        other => other,
    })?;
    let jitter = duration(schedule.jitter, "schedule.jitter", MAX_JITTER)?.unwrap_or_default();
    let catchup_window = duration(
        schedule.catchup_window,
        "schedule.catchup_window",
        super::MAX_TIMEOUT,
    )?
    .unwrap_or(DEFAULT_CATCHUP_WINDOW);
    let overlap = match pb::OverlapPolicy::try_from(schedule.overlap_policy) {
        Ok(pb::OverlapPolicy::Unspecified | pb::OverlapPolicy::Skip) => Overlap::Skip,
        Ok(pb::OverlapPolicy::Allow) => Overlap::Allow,
        Ok(pb::OverlapPolicy::BufferOne) => Overlap::BufferOne,
        Ok(pb::OverlapPolicy::CancelPrevious) => Overlap::CancelPrevious,
        Err(_) => {
            return Err(GatewayError::invalid(
                "schedule.overlap_policy",
                format!(
                    "{} is not an overlap policy; use OVERLAP_POLICY_ALLOW, _SKIP, _BUFFER_ONE or _CANCEL_PREVIOUS",
                    schedule.overlap_policy
                ),
            ));
        }
    };
    Ok((
        id,
        Definition {
            spec,
            jitter,
            template: Template {
                queue: new.queue,
                payload: new.payload,
                priority: new.priority,
                metadata: new.metadata,
                timeout: new.timeout,
                attempt_timeout: new.attempt_timeout,
                max_attempts: new.max_attempts,
            },
            overlap,
            catchup_window,
        },
    ))
}

fn overlap_to_pb(overlap: Overlap) -> pb::OverlapPolicy {
    match overlap {
        Overlap::Allow => pb::OverlapPolicy::Allow,
        Overlap::Skip => pb::OverlapPolicy::Skip,
        Overlap::BufferOne => pb::OverlapPolicy::BufferOne,
        Overlap::CancelPrevious => pb::OverlapPolicy::CancelPrevious,
    }
}

/// A name as `caller` uses it.
fn seen(caller: &Caller, name: &QueueName) -> String {
    if caller.names_tenant_queues() {
        name.to_string()
    } else {
        name.seen_by(caller.tenant.as_deref()).to_owned()
    }
}

/// A schedule on the wire as `caller` names it, with the states of the
/// `tickets` of its recent runs (those still stored).
pub(crate) fn schedule_to_pb(
    caller: &Caller,
    schedule: &Schedule,
    tickets: &[Ticket],
) -> pb::Schedule {
    use crate::schedules::spec::Every;
    let t = &schedule.template;
    let spec = &schedule.spec;
    let state_of = |id| {
        tickets
            .iter()
            .find(|ticket| ticket.id == id)
            .map_or(pb::TicketState::Unspecified, |ticket| {
                super::state_to_pb(ticket.state)
            })
    };
    let upcoming = match (&schedule.paused, schedule.next_fire) {
        (None, Some(next)) => {
            let mut times = vec![next];
            times.extend(spec.upcoming(next, UPCOMING - 1));
            times
        }
        _ => Vec::new(),
    };
    pb::Schedule {
        id: seen(caller, &schedule.id),
        spec: Some(pb::ScheduleSpec {
            every: Some(match &spec.every {
                Every::Cron { expression, .. } => {
                    pb::schedule_spec::Every::Cron(expression.clone())
                }
                Every::Interval(every) => {
                    pb::schedule_spec::Every::Interval(time::duration(*every))
                }
            }),
            time_zone: spec.zone.clone(),
            start_at: spec.start_at.map(time::timestamp),
            end_at: spec.end_at.map(time::timestamp),
        }),
        ticket: Some(pb::SubmitRequest {
            queue: seen(caller, &t.queue),
            payload: Some(t.payload.clone()),
            priority: t.priority,
            metadata: t.metadata.clone(),
            timeout: t.timeout.map(time::duration),
            attempt_timeout: t.attempt_timeout.map(time::duration),
            max_attempts: t.max_attempts,
            ..Default::default()
        }),
        jitter: (!schedule.jitter.is_zero()).then(|| time::duration(schedule.jitter)),
        overlap_policy: overlap_to_pb(schedule.overlap) as i32,
        catchup_window: Some(time::duration(schedule.catchup_window)),
        paused: schedule.paused.is_some(),
        pause_note: schedule
            .paused
            .as_ref()
            .map(|(note, _)| note.clone())
            .unwrap_or_default(),
        paused_at: schedule.paused.as_ref().map(|(_, at)| time::timestamp(*at)),
        recent_runs: schedule
            .runs
            .iter()
            .map(|run| pb::ScheduleRun {
                fire_time: Some(time::timestamp(run.fire_time)),
                ticket_id: run.ticket.map(|id| id.to_string()).unwrap_or_default(),
                state: run.ticket.map_or(pb::TicketState::Unspecified, state_of) as i32,
                skipped: run.skipped.clone().unwrap_or_default(),
                manual: run.manual,
                handled_at: Some(time::timestamp(run.handled_at)),
            })
            .collect(),
        next_fire_times: upcoming.into_iter().map(time::timestamp).collect(),
        fired: schedule.fired,
        skipped: schedule.skipped,
        buffered: schedule.buffered.map(time::timestamp),
        created_at: Some(time::timestamp(schedule.created_at)),
        updated_at: Some(time::timestamp(schedule.updated_at)),
    }
}
