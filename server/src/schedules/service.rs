//! The operations behind `asyncgate.v1.Schedules`, and the firing of due
//! slots, over the engine boundary. Every write is conditional on the
//! revision read (a lost race reads again and retries), and every slot's
//! ticket carries an idempotency key derived from the schedule and the
//! slot: replicas racing on a slot, or one replica re-running a pass after a
//! crash, submit one ticket for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::model::{Overlap, Run, Schedule, Template};
use super::record;
use super::spec::Spec;
use crate::domain::{QueueName, Ticket, TicketId};
use crate::engine::{Engine, EngineError, ScheduleRecord};

/// Slots one schedule handles per pass (missed ones included): a schedule
/// that missed many slots catches up over a few passes.
pub(super) const SLOTS_PER_PASS: usize = 100;
/// Slots one backfill may submit.
pub const MAX_BACKFILL: usize = 1_000;
/// How often a schedule holding a buffered slot checks whether the
/// previous run has ended.
const BUFFER_RECHECK: Duration = Duration::from_millis(250);
/// Conditional writes tried before giving up on a busy schedule.
const WRITE_ATTEMPTS: usize = 5;

/// Why a schedule operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// No such schedule (or another tenant's).
    #[error("schedule {0:?} not found")]
    NotFound(String),
    /// A request field is wrong.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What to fix.
        reason: String,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A schedule's definition as a caller gives it (validated by the edge).
#[derive(Debug, Clone)]
pub struct Definition {
    /// When it fires.
    pub spec: Spec,
    /// Up to this much later per slot.
    pub jitter: Duration,
    /// What each slot submits.
    pub template: Template,
    /// While the previous run has not finished.
    pub overlap: Overlap,
    /// How late a missed slot may still run.
    pub catchup_window: Duration,
}

/// A schedule with its revision and its recent runs' tickets as read now.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The schedule.
    pub schedule: Schedule,
    /// The tickets of its recent runs, where still stored.
    pub tickets: Vec<Ticket>,
}

/// The schedule operations over one engine.
#[derive(Clone)]
pub struct Schedules {
    engine: Arc<dyn Engine>,
    /// Schedules one tenant may keep (every schedule, without tenants): one
    /// tenant cannot fill the store with them.
    max_per_tenant: u64,
}

fn stored(schedule: &Schedule, now: SystemTime) -> ScheduleRecord {
    let due = if schedule.paused.is_some() {
        None
    } else {
        let recheck = schedule.buffered.map(|_| now + BUFFER_RECHECK);
        match (schedule.next_fire, recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    };
    ScheduleRecord {
        id: schedule.id.as_str().to_owned(),
        revision: 0,
        due,
        body: Bytes::from(record::encode(schedule)),
    }
}

impl Schedules {
    /// Schedules stored in `engine`.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            max_per_tenant: u64::MAX,
        }
    }

    /// These operations with at most `max` schedules per tenant.
    pub fn with_limit(mut self, max: u64) -> Self {
        self.max_per_tenant = max;
        self
    }

    pub(super) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Writes `schedule` if its stored revision is still `revision`.
    pub(super) async fn write_schedule(
        &self,
        schedule: &Schedule,
        revision: u64,
        now: SystemTime,
    ) -> Result<(), ScheduleError> {
        self.engine
            .put_schedule(stored(schedule, now), revision)
            .await?;
        Ok(())
    }

    pub(super) async fn read_schedule(
        &self,
        id: &QueueName,
    ) -> Result<(Schedule, u64), ScheduleError> {
        self.read(id).await
    }

    async fn read(&self, id: &QueueName) -> Result<(Schedule, u64), ScheduleError> {
        let record = self
            .engine
            .get_schedule(id.as_str())
            .await?
            .ok_or_else(|| ScheduleError::NotFound(id.seen_by(id.tenant()).to_owned()))?;
        let schedule = record::decode(&record.body).map_err(|e| {
            EngineError::internal(format!("schedule {:?} is unreadable: {e}", record.id))
        })?;
        Ok((schedule, record.revision))
    }

    /// Creates a schedule; it fires from the next slot after `now`.
    pub async fn create(
        &self,
        id: QueueName,
        definition: Definition,
        now: SystemTime,
    ) -> Result<Schedule, ScheduleError> {
        let schedule = Schedule {
            id,
            next_fire: definition.spec.next_after(now),
            spec: definition.spec,
            jitter: definition.jitter,
            template: definition.template,
            overlap: definition.overlap,
            catchup_window: definition.catchup_window,
            paused: None,
            created_at: now,
            updated_at: now,
            buffered: None,
            last_ticket: None,
            runs: Default::default(),
            fired: 0,
            skipped: 0,
        };
        // A check before the write: racing creates may pass the cap by a
        // few, which bounds the store all the same.
        let prefix = schedule
            .id
            .tenant()
            .map_or(String::new(), |t| format!("{t}/"));
        let held = self.engine.count_schedules(&prefix).await?;
        if held >= self.max_per_tenant {
            return Err(EngineError::LimitExceeded(format!(
                "{held} schedules exist, the limit per tenant (--max-schedules-per-tenant); delete one first"
            ))
            .into());
        }
        self.engine.put_schedule(stored(&schedule, now), 0).await?;
        Ok(schedule)
    }

    /// Reads a schedule and the tickets of its recent runs.
    pub async fn get(&self, id: &QueueName) -> Result<Seen, ScheduleError> {
        let (schedule, _) = self.read(id).await?;
        self.seen(schedule).await
    }

    /// `schedule` with the tickets of its recent runs.
    pub async fn seen_now(&self, schedule: Schedule) -> Result<Seen, ScheduleError> {
        self.seen(schedule).await
    }

    async fn seen(&self, schedule: Schedule) -> Result<Seen, ScheduleError> {
        let mut tickets = Vec::new();
        for id in schedule.runs.iter().filter_map(|run| run.ticket) {
            match self.engine.get(id).await {
                Ok(ticket) => tickets.push(ticket),
                Err(EngineError::NotFound(_) | EngineError::ResultExpired { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Seen { schedule, tickets })
    }

    /// A page of schedules whose stored ids start with `prefix`.
    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Schedule>, ScheduleError> {
        let records = self.engine.list_schedules(prefix, after, limit).await?;
        records
            .iter()
            .map(|r| {
                record::decode(&r.body).map_err(|e| {
                    EngineError::internal(format!("schedule {:?} is unreadable: {e}", r.id)).into()
                })
            })
            .collect()
    }

    /// Applies `change` to the stored schedule, retrying on a lost race.
    async fn modify(
        &self,
        id: &QueueName,
        now: SystemTime,
        change: impl Fn(&mut Schedule),
    ) -> Result<Schedule, ScheduleError> {
        for _ in 0..WRITE_ATTEMPTS {
            let (mut schedule, revision) = self.read(id).await?;
            change(&mut schedule);
            schedule.updated_at = now;
            match self
                .engine
                .put_schedule(stored(&schedule, now), revision)
                .await
            {
                Ok(_) => return Ok(schedule),
                Err(EngineError::ScheduleChanged(_)) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(EngineError::ScheduleChanged(id.as_str().to_owned()).into())
    }

    /// Replaces a schedule's definition; it goes on from the next slot
    /// after `now` (its runs so far are kept).
    pub async fn update(
        &self,
        id: &QueueName,
        definition: Definition,
        now: SystemTime,
    ) -> Result<Schedule, ScheduleError> {
        self.modify(id, now, |s| {
            s.next_fire = definition.spec.next_after(now);
            s.spec = definition.spec.clone();
            s.jitter = definition.jitter;
            s.template = definition.template.clone();
            s.overlap = definition.overlap;
            s.catchup_window = definition.catchup_window;
        })
        .await
    }

    /// Deletes a schedule (its tickets stay).
    pub async fn delete(&self, id: &QueueName) -> Result<(), ScheduleError> {
        if self.engine.delete_schedule(id.as_str()).await? {
            Ok(())
        } else {
            Err(ScheduleError::NotFound(id.seen_by(id.tenant()).to_owned()))
        }
    }

    /// Pauses a schedule: nothing fires until it is resumed.
    pub async fn pause(
        &self,
        id: &QueueName,
        note: &str,
        now: SystemTime,
    ) -> Result<Schedule, ScheduleError> {
        self.modify(id, now, |s| {
            if s.paused.is_none() {
                s.paused = Some((note.to_owned(), now));
            }
        })
        .await
    }

    /// Resumes a schedule from its next slot after `now`: slots that fell
    /// in the pause do not run.
    pub async fn resume(&self, id: &QueueName, now: SystemTime) -> Result<Schedule, ScheduleError> {
        self.modify(id, now, |s| {
            if s.paused.take().is_some() {
                s.next_fire = s.spec.next_after(now);
                s.buffered = None;
            }
        })
        .await
    }

    /// Submits one run now, whatever the overlap policy (the caller asked
    /// for it); recorded as a manual run.
    pub async fn trigger(&self, id: &QueueName, now: SystemTime) -> Result<Ticket, ScheduleError> {
        let (schedule, _) = self.read(id).await?;
        let key = format!(
            "{}/trigger/{}",
            schedule.slot_key(now),
            uuid::Uuid::now_v7()
        );
        let ticket = self
            .engine
            .submit(schedule.ticket_for(now, key, now))
            .await?
            .ticket;
        let ticket_id = ticket.id;
        self.modify(id, now, move |s| {
            s.record(Run {
                fire_time: now,
                ticket: Some(ticket_id),
                skipped: None,
                manual: true,
                handled_at: now,
            })
        })
        .await?;
        Ok(ticket)
    }

    /// Submits the slots from `from` to `to` (both included), whatever the
    /// overlap policy; a slot that already has its ticket (fired, or an
    /// earlier backfill) gets no second one: its ticket is returned.
    pub async fn backfill(
        &self,
        id: &QueueName,
        from: SystemTime,
        to: SystemTime,
        now: SystemTime,
    ) -> Result<Vec<Ticket>, ScheduleError> {
        if to < from {
            return Err(ScheduleError::Invalid {
                field: "to",
                reason: "is before from".into(),
            });
        }
        let (schedule, _) = self.read(id).await?;
        let mut slots = Vec::new();
        let mut at = from.checked_sub(Duration::from_nanos(1)).unwrap_or(from);
        while let Some(slot) = schedule.spec.next_after(at).filter(|slot| *slot <= to) {
            if slots.len() == MAX_BACKFILL {
                return Err(ScheduleError::Invalid {
                    field: "to",
                    reason: format!(
                        "the range holds more than {MAX_BACKFILL} slots; backfill it in parts"
                    ),
                });
            }
            slots.push(slot);
            at = slot;
        }
        let mut tickets = Vec::with_capacity(slots.len());
        for slot in &slots {
            let new = schedule.ticket_for(*slot, schedule.slot_key(*slot), now);
            tickets.push(self.engine.submit(new).await?.ticket);
        }
        let runs: Vec<(SystemTime, TicketId)> = slots
            .iter()
            .copied()
            .zip(tickets.iter().map(|t| t.id))
            .collect();
        self.modify(id, now, move |s| {
            for (slot, ticket) in &runs {
                s.record(Run {
                    fire_time: *slot,
                    ticket: Some(*ticket),
                    skipped: None,
                    manual: true,
                    handled_at: now,
                });
            }
        })
        .await?;
        Ok(tickets)
    }
}
