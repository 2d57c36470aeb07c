//! Firing due slots. Every replica runs [`run`]: each pass reads the
//! schedules due by now, decides each due slot (run it, skip it, buffer it,
//! or cancel the previous run first, by the overlap policy and the catch-up
//! window), submits the slot's ticket under its slot key, and writes the
//! schedule back conditionally. A replica that loses the race re-reads and
//! finds the slot handled; its submit, if it made one, returned the same
//! ticket.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::model::{Overlap, Run, Schedule};
use super::service::{ScheduleError, Schedules};
use crate::domain::TicketState;
use crate::engine::EngineError;

/// How often each replica looks for due slots: a slot's ticket is
/// submitted at most this late (it then waits for its exact time, plus the
/// jitter, as a delayed ticket).
pub const TICK: Duration = Duration::from_millis(100);

/// Schedules handled per pass.
const PER_PASS: usize = 100;

/// What a due slot does, given the previous run.
enum Decision {
    Fire,
    Skip(String),
    Buffer,
}

impl Schedules {
    /// One pass: handles every schedule due by `now`; returns how many.
    pub async fn fire_due(&self, now: SystemTime) -> Result<usize, ScheduleError> {
        let due = self.engine().due_schedules(now, PER_PASS).await?;
        let count = due.len();
        for record in due {
            let id = match crate::domain::QueueName::parse_scoped(&record.id) {
                Ok(id) => id,
                Err(error) => {
                    tracing::error!(schedule = %record.id, %error, "unreadable schedule id");
                    continue;
                }
            };
            match self.handle(&id, now).await {
                Ok(()) | Err(ScheduleError::NotFound(_)) => {}
                Err(ScheduleError::Engine(error)) if error.is_transient() => {
                    return Err(error.into());
                }
                Err(error) => {
                    tracing::warn!(schedule = %record.id, %error, "a schedule's slot was not handled")
                }
            }
        }
        Ok(count)
    }

    /// Handles `id`'s due slots, retrying when another replica wrote it
    /// meanwhile.
    async fn handle(
        &self,
        id: &crate::domain::QueueName,
        now: SystemTime,
    ) -> Result<(), ScheduleError> {
        for _ in 0..3 {
            let (mut schedule, revision) = self.read_schedule(id).await?;
            self.advance(&mut schedule, now).await?;
            match self.write_schedule(&schedule, revision, now).await {
                Err(ScheduleError::Engine(EngineError::ScheduleChanged(_))) => continue,
                other => return other,
            }
        }
        Ok(())
    }

    /// Whether the schedule's latest ticket has not finished; its state.
    async fn previous_running(
        &self,
        schedule: &Schedule,
    ) -> Result<Option<(crate::domain::TicketId, TicketState)>, ScheduleError> {
        let Some(id) = schedule.last_ticket else {
            return Ok(None);
        };
        match self.engine().get(id).await {
            Ok(ticket) if !ticket.state.is_terminal() => Ok(Some((id, ticket.state))),
            Ok(_) | Err(EngineError::NotFound(_) | EngineError::ResultExpired { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Decides and submits the due slots of `schedule` (in memory; the
    /// caller writes it).
    async fn advance(&self, schedule: &mut Schedule, now: SystemTime) -> Result<(), ScheduleError> {
        if schedule.paused.is_some() {
            return Ok(());
        }
        if let Some(slot) = schedule.buffered
            && self.previous_running(schedule).await?.is_none()
        {
            schedule.buffered = None;
            self.fire(schedule, slot, now).await?;
        }
        let mut budget = super::service::SLOTS_PER_PASS;
        while let Some(slot) = schedule.next_fire.filter(|slot| *slot <= now) {
            if budget == 0 {
                break;
            }
            budget -= 1;
            schedule.next_fire = schedule.spec.next_after(slot);
            let late = now.duration_since(slot).unwrap_or_default();
            if late > schedule.catchup_window {
                schedule.record(skipped(
                    slot,
                    now,
                    format!(
                        "missed: handled {} late, past the catch-up window of {}",
                        humantime::format_duration(round(late)),
                        humantime::format_duration(schedule.catchup_window)
                    ),
                ));
                continue;
            }
            match self.decide(schedule).await? {
                Decision::Fire => self.fire(schedule, slot, now).await?,
                Decision::Skip(reason) => schedule.record(skipped(slot, now, reason)),
                Decision::Buffer if schedule.buffered.is_none() => schedule.buffered = Some(slot),
                Decision::Buffer => schedule.record(skipped(
                    slot,
                    now,
                    "the previous run is still going and a slot is already buffered (BUFFER_ONE)"
                        .into(),
                )),
            }
        }
        Ok(())
    }

    async fn decide(&self, schedule: &Schedule) -> Result<Decision, ScheduleError> {
        let Some((previous, state)) = self.previous_running(schedule).await? else {
            return Ok(Decision::Fire);
        };
        Ok(match schedule.overlap {
            Overlap::Allow => Decision::Fire,
            Overlap::Skip => Decision::Skip(format!(
                "the previous run (ticket {previous}) is still {} (overlap policy SKIP)",
                state.name()
            )),
            Overlap::BufferOne => Decision::Buffer,
            Overlap::CancelPrevious => {
                let reason = format!(
                    "cancelled by the next run of schedule {:?} (overlap policy CANCEL_PREVIOUS)",
                    schedule.id.seen_by(schedule.id.tenant())
                );
                match self.engine().cancel(previous, &reason).await {
                    Ok(_) | Err(EngineError::AlreadyTerminal { .. } | EngineError::NotFound(_)) => {
                    }
                    Err(error) => return Err(error.into()),
                }
                Decision::Fire
            }
        })
    }

    /// Submits `slot`'s ticket and records it.
    async fn fire(
        &self,
        schedule: &mut Schedule,
        slot: SystemTime,
        now: SystemTime,
    ) -> Result<(), ScheduleError> {
        let new = schedule.ticket_for(slot, schedule.slot_key(slot), now);
        match self.engine().submit(new).await {
            Ok(submitted) => schedule.record(Run {
                fire_time: slot,
                ticket: Some(submitted.ticket.id),
                skipped: None,
                manual: false,
                handled_at: now,
            }),
            Err(error) if error.is_transient() => return Err(error.into()),
            // The queue is full, or refuses: the slot is recorded as such.
            Err(error) => schedule.record(skipped(
                slot,
                now,
                format!("the submit was refused: {error}"),
            )),
        }
        Ok(())
    }
}

fn skipped(slot: SystemTime, now: SystemTime, reason: String) -> Run {
    Run {
        fire_time: slot,
        ticket: None,
        skipped: Some(reason),
        manual: false,
        handled_at: now,
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Fires due slots every `tick` until `stop`. A failing store is logged
/// once per half minute (the timer loop reports the store's health).
pub async fn run(schedules: Schedules, tick: Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_logged: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(error) = schedules.fire_due(SystemTime::now()).await
            && last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(30))
        {
            last_logged = Some(tokio::time::Instant::now());
            tracing::warn!(%error, "schedule pass failed; due slots fire once the store answers");
        }
    }
}
