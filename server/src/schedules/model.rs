//! A schedule as the gateway keeps it: its definition (spec, jitter, the
//! ticket to submit, overlap policy, catch-up window), its pause, and its
//! state (the next slot not yet handled, a buffered slot, its recent runs).
//! Engines store it as opaque bytes (`record.rs`) beside its id, revision
//! and next due time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::spec::Spec;
use crate::domain::ticket::Payload;
use crate::domain::{NewTicket, QueueName, TicketId};

/// Recent runs a schedule shows (fired or skipped).
pub const RECENT_RUNS: usize = 20;

/// What a due slot does while the previous run has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Run anyway: runs may overlap.
    Allow,
    /// Skip the slot (recorded as skipped).
    #[default]
    Skip,
    /// Hold the latest such slot and run it once the previous run ends.
    BufferOne,
    /// Cancel the previous run, then run.
    CancelPrevious,
}

/// The ticket a schedule submits at each slot.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its queue (as stored: `tenant/queue` for a tenant's).
    pub queue: QueueName,
    /// Request body.
    pub payload: Payload,
    /// Higher first.
    pub priority: i32,
    /// Labels; the schedule's own are added to each ticket.
    pub metadata: HashMap<String, String>,
    /// Budget from the slot (its ticket's scheduled time) to the result.
    pub timeout: Option<Duration>,
    /// Budget of one attempt.
    pub attempt_timeout: Option<Duration>,
    /// Attempt budget.
    pub max_attempts: u32,
}

/// One slot of a schedule, fired or skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The slot's time.
    pub fire_time: SystemTime,
    /// The ticket submitted for it.
    pub ticket: Option<TicketId>,
    /// Why no ticket was submitted for it.
    pub skipped: Option<String>,
    /// A `TriggerSchedule` or `BackfillSchedule` run, not a regular slot.
    pub manual: bool,
    /// When it was handled.
    pub handled_at: SystemTime,
}

/// A stored schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As stored: `tenant/id` for a tenant's.
    pub id: QueueName,
    /// When the slots are.
    pub spec: Spec,
    /// Each ticket runs up to this long after its slot (spreads load); the
    /// same for every replica, as it derives from the schedule and slot.
    pub jitter: Duration,
    /// What each slot submits.
    pub template: Template,
    /// While the previous run has not finished.
    pub overlap: Overlap,
    /// Slots missed (the gateway was down) run when still this recent;
    /// older ones are recorded as skipped.
    pub catchup_window: Duration,
    /// Set while paused: (note, since). A paused schedule fires nothing;
    /// on resume it goes on from the next slot after the resume.
    pub paused: Option<(String, SystemTime)>,
    /// Creation and last change of its definition or pause.
    pub created_at: SystemTime,
    /// Last change.
    pub updated_at: SystemTime,
    /// The next slot not yet handled (`None`: it has ended).
    pub next_fire: Option<SystemTime>,
    /// `BufferOne`'s held slot.
    pub buffered: Option<SystemTime>,
    /// The latest ticket it submitted (the overlap policies look at it).
    pub last_ticket: Option<TicketId>,
    /// The latest runs, oldest first.
    pub runs: VecDeque<Run>,
    /// Tickets submitted in all.
    pub fired: u64,
    /// Slots skipped in all.
    pub skipped: u64,
}

/// The metadata key naming a scheduled ticket's schedule.
pub const SCHEDULE_KEY: &str = "asyncgate.schedule";
/// The metadata key holding a scheduled ticket's slot (RFC 3339).
pub const FIRE_TIME_KEY: &str = "asyncgate.fire_time";

impl Schedule {
    /// Records a handled slot, keeping the latest [`RECENT_RUNS`].
    pub fn record(&mut self, run: Run) {
        if run.ticket.is_some() {
            self.fired += 1;
            self.last_ticket = run.ticket;
        } else {
            self.skipped += 1;
        }
        self.runs.push_back(run);
        while self.runs.len() > RECENT_RUNS {
            self.runs.pop_front();
        }
    }

    /// The idempotency key of the ticket for `slot`: every replica, and the
    /// same replica after a crash, asks for the same one, so each slot
    /// becomes one ticket.
    pub fn slot_key(&self, slot: SystemTime) -> String {
        let millis = slot
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!(
            "asyncgate.schedule/{}/{millis}",
            self.id.seen_by(self.id.tenant())
        )
    }

    /// This slot's jitter: a fixed fraction of `jitter` derived from the id
    /// and slot, so that replicas agree on it.
    pub fn jitter_for(&self, slot: SystemTime) -> Duration {
        use std::hash::{Hash, Hasher};
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        (self.id.as_str(), slot).hash(&mut hasher);
        let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
        self.jitter.mul_f64(fraction)
    }

    /// The ticket for `slot`, `manual` for a trigger or a backfill (whose
    /// `key` is its own); it waits for its slot plus the jitter.
    pub fn ticket_for(&self, slot: SystemTime, key: String, now: SystemTime) -> NewTicket {
        let t = &self.template;
        let mut metadata = t.metadata.clone();
        metadata.insert(
            SCHEDULE_KEY.into(),
            self.id.seen_by(self.id.tenant()).to_owned(),
        );
        metadata.insert(FIRE_TIME_KEY.into(), crate::time::rfc3339(slot));
        let not_before = slot + self.jitter_for(slot);
        NewTicket {
            id: TicketId::new(),
            queue: t.queue.clone(),
            payload: t.payload.clone(),
            priority: t.priority,
            idempotency_key: Some(key),
            metadata,
            timeout: t.timeout,
            attempt_timeout: t.attempt_timeout,
            max_attempts: t.max_attempts,
            tenant: self.id.tenant().map(Arc::from),
            not_before: (not_before > now).then_some(not_before),
            callback: None,
        }
    }
}
