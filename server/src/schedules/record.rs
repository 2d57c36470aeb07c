//! A schedule's stored form: a prost message every engine keeps as opaque
//! bytes. The spec is stored as given and parsed again when read, so a
//! stored schedule always means what its text says.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use prost::Message;

use super::model::{Overlap, Run, Schedule, Template};
use super::spec::Spec;
use crate::domain::ticket::Payload;
use crate::domain::{QueueName, TicketId};
use crate::engine::record::{nanos, time};

#[derive(Clone, PartialEq, Message)]
struct StoredSchedule {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, optional, tag = "2")]
    cron: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    interval: Option<u64>,
    #[prost(string, tag = "4")]
    zone: String,
    #[prost(uint64, optional, tag = "5")]
    start_at: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    end_at: Option<u64>,
    #[prost(uint64, tag = "7")]
    jitter: u64,
    #[prost(string, tag = "8")]
    queue: String,
    #[prost(message, optional, tag = "9")]
    payload: Option<Payload>,
    #[prost(int32, tag = "10")]
    priority: i32,
    #[prost(map = "string, string", tag = "11")]
    metadata: HashMap<String, String>,
    #[prost(uint64, optional, tag = "12")]
    timeout: Option<u64>,
    #[prost(uint64, optional, tag = "13")]
    attempt_timeout: Option<u64>,
    #[prost(uint32, tag = "14")]
    max_attempts: u32,
    #[prost(int32, tag = "15")]
    overlap: i32,
    #[prost(uint64, tag = "16")]
    catchup_window: u64,
    #[prost(string, optional, tag = "17")]
    paused_note: Option<String>,
    #[prost(uint64, optional, tag = "18")]
    paused_at: Option<u64>,
    #[prost(uint64, tag = "19")]
    created_at: u64,
    #[prost(uint64, tag = "20")]
    updated_at: u64,
    #[prost(uint64, optional, tag = "21")]
    next_fire: Option<u64>,
    #[prost(uint64, optional, tag = "22")]
    buffered: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "23")]
    last_ticket: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "24")]
    runs: Vec<StoredRun>,
    #[prost(uint64, tag = "25")]
    fired: u64,
    #[prost(uint64, tag = "26")]
    skipped: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredRun {
    #[prost(uint64, tag = "1")]
    fire_time: u64,
    #[prost(bytes = "vec", optional, tag = "2")]
    ticket: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    skipped: Option<String>,
    #[prost(bool, tag = "4")]
    manual: bool,
    #[prost(uint64, tag = "5")]
    handled_at: u64,
}

fn overlap_code(overlap: Overlap) -> i32 {
    match overlap {
        Overlap::Allow => 1,
        Overlap::Skip => 2,
        Overlap::BufferOne => 3,
        Overlap::CancelPrevious => 4,
    }
}

fn overlap_of(code: i32) -> Overlap {
    match code {
        1 => Overlap::Allow,
        3 => Overlap::BufferOne,
        4 => Overlap::CancelPrevious,
        _ => Overlap::Skip,
    }
}

fn ticket_id(bytes: &[u8]) -> Result<TicketId, String> {
    uuid::Uuid::from_slice(bytes)
        .map(TicketId)
        .map_err(|e| format!("ticket id: {e}"))
}

/// The stored bytes of `schedule`.
pub fn encode(schedule: &Schedule) -> Vec<u8> {
    let (cron, interval) = match &schedule.spec.every {
        super::spec::Every::Cron { expression, .. } => (Some(expression.clone()), None),
        super::spec::Every::Interval(every) => (None, Some(every.as_nanos() as u64)),
    };
    let t = &schedule.template;
    StoredSchedule {
        id: schedule.id.as_str().to_owned(),
        cron,
        interval,
        zone: schedule.spec.zone.clone(),
        start_at: schedule.spec.start_at.map(nanos),
        end_at: schedule.spec.end_at.map(nanos),
        jitter: schedule.jitter.as_nanos() as u64,
        queue: t.queue.as_str().to_owned(),
        payload: Some(t.payload.clone()),
        priority: t.priority,
        metadata: t.metadata.clone(),
        timeout: t.timeout.map(|d| d.as_nanos() as u64),
        attempt_timeout: t.attempt_timeout.map(|d| d.as_nanos() as u64),
        max_attempts: t.max_attempts,
        overlap: overlap_code(schedule.overlap),
        catchup_window: schedule.catchup_window.as_nanos() as u64,
        paused_note: schedule.paused.as_ref().map(|(note, _)| note.clone()),
        paused_at: schedule.paused.as_ref().map(|(_, at)| nanos(*at)),
        created_at: nanos(schedule.created_at),
        updated_at: nanos(schedule.updated_at),
        next_fire: schedule.next_fire.map(nanos),
        buffered: schedule.buffered.map(nanos),
        last_ticket: schedule.last_ticket.map(|id| id.0.as_bytes().to_vec()),
        runs: schedule
            .runs
            .iter()
            .map(|run| StoredRun {
                fire_time: nanos(run.fire_time),
                ticket: run.ticket.map(|id| id.0.as_bytes().to_vec()),
                skipped: run.skipped.clone(),
                manual: run.manual,
                handled_at: nanos(run.handled_at),
            })
            .collect(),
        fired: schedule.fired,
        skipped: schedule.skipped,
    }
    .encode_to_vec()
}

/// A schedule from its stored bytes.
pub fn decode(bytes: &[u8]) -> Result<Schedule, String> {
    let s = StoredSchedule::decode(bytes).map_err(|e| e.to_string())?;
    let spec = Spec::new(
        s.cron.as_deref(),
        s.interval.map(Duration::from_nanos),
        &s.zone,
        s.start_at.map(time),
        s.end_at.map(time),
    )
    .map_err(|e| format!("spec: {e}"))?;
    let runs = s
        .runs
        .into_iter()
        .map(|run| {
            Ok(Run {
                fire_time: time(run.fire_time),
                ticket: run.ticket.as_deref().map(ticket_id).transpose()?,
                skipped: run.skipped,
                manual: run.manual,
                handled_at: time(run.handled_at),
            })
        })
        .collect::<Result<VecDeque<_>, String>>()?;
    Ok(Schedule {
        id: QueueName::parse_scoped(&s.id)?,
        spec,
        jitter: Duration::from_nanos(s.jitter),
        template: Template {
            queue: QueueName::parse_scoped(&s.queue)?,
            payload: s.payload.unwrap_or_default(),
            priority: s.priority,
            metadata: s.metadata,
            timeout: s.timeout.map(Duration::from_nanos),
            attempt_timeout: s.attempt_timeout.map(Duration::from_nanos),
            max_attempts: s.max_attempts,
        },
        overlap: overlap_of(s.overlap),
        catchup_window: Duration::from_nanos(s.catchup_window),
        paused: s
            .paused_note
            .zip(s.paused_at)
            .map(|(note, at)| (note, time(at))),
        created_at: time(s.created_at),
        updated_at: time(s.updated_at),
        next_fire: s.next_fire.map(time),
        buffered: s.buffered.map(time),
        last_ticket: s.last_ticket.as_deref().map(ticket_id).transpose()?,
        runs,
        fired: s.fired,
        skipped: s.skipped,
    })
}
