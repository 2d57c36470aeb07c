//! Ticket timers as they fire: a backoff ends, an attempt or a ticket runs
//! out of time, a finished ticket or its tombstone is deleted. The timer pass
//! itself (which shards, which timers are due) is `run_timers` in
//! `engine.rs`; this is what one due timer does.

use std::cmp::Reverse;
use std::time::SystemTime;

use super::super::journal::Mutation;
use super::super::{Before, RevokeReason, transition};
use super::{LocalEngine, Shard, Timer, lock};
use crate::domain::{LeaseId, QueueName, SessionId, TicketId, TicketState};

/// Follow-ups of a timer pass, applied once the shard lock is released.
#[derive(Default)]
pub(super) struct TimerEffects {
    /// Leases to drop from their session records.
    pub(super) forget: Vec<(SessionId, LeaseId)>,
    /// Idempotency keys of deleted tickets.
    pub(super) deleted_keys: Vec<(String, TicketId)>,
    /// The latest journal append made.
    pub(super) journal_seq: u64,
}

impl LocalEngine {
    /// Applies one due timer; returns a queue that gained ready work.
    pub(super) fn fire(
        &self,
        shard: &mut Shard,
        at: SystemTime,
        timer: Timer,
        id: TicketId,
        now: SystemTime,
        effects: &mut TimerEffects,
    ) -> Option<QueueName> {
        if let Timer::Tombstone = timer {
            shard.tombstones.remove(&id);
            if self.journal.wants_mutations() {
                let seq = self.journal.append(
                    vec![Mutation::DeleteTombstone { ticket_id: id }],
                    Vec::new(),
                );
                effects.journal_seq = effects.journal_seq.max(seq);
            }
            return None;
        }
        let mut ticket = shard.tickets.remove(&id)?;
        let mut ready = None;
        match timer {
            Timer::Backoff
                if ticket.state == TicketState::Pending && ticket.not_before == Some(at) =>
            {
                let index = self.queue(&ticket.queue);
                let mut index = lock(&index);
                index.delayed = index.delayed.saturating_sub(1);
                index.push((Reverse(ticket.priority), ticket.enqueue_seq), ticket.id);
                drop(index);
                ticket.not_before = None;
                ready = Some(ticket.queue.clone());
            }
            // When the attempt's deadline is the ticket's own, the ticket
            // expires (the Deadline timer, due in the same pass) instead.
            Timer::AttemptDeadline
                if let Some(lease_id) = ticket
                    .lease
                    .as_ref()
                    .filter(|l| {
                        ticket.state == TicketState::Running && l.attempt_deadline == Some(at)
                    })
                    .map(|l| l.lease_id) =>
            {
                Self::clear_attempt_timer(shard, &ticket);
                let before = Before::of(&ticket);
                if let Some(lease) =
                    transition::time_out_attempt(&mut ticket, lease_id, &self.config, now)
                {
                    effects.forget.push((lease.session_id, lease_id));
                    self.revoke(
                        &lease,
                        id,
                        RevokeReason::AttemptTimeout,
                        transition::attempt_timeout_notice(ticket.attempt),
                    );
                    if self.settle(shard, &mut ticket, before, now) {
                        ready = Some(ticket.queue.clone());
                    }
                }
            }
            Timer::Deadline if ticket.deadline == Some(at) => {
                let state = ticket.state;
                if state == TicketState::Pending {
                    self.dequeue(shard, &ticket);
                }
                Self::clear_attempt_timer(shard, &ticket);
                let before = Before::of(&ticket);
                if let Some(revoked) = transition::expire(&mut ticket, now) {
                    if let Some(lease) = revoked {
                        effects.forget.push((lease.session_id, lease.lease_id));
                        self.revoke(
                            &lease,
                            id,
                            RevokeReason::Expired,
                            transition::EXPIRED_NOTICE.into(),
                        );
                    }
                    self.settle(shard, &mut ticket, before, now);
                }
            }
            // Checked against the time too: a ticket retried since, and
            // finished again, has a later retention of its own.
            Timer::Retention if ticket.state.is_terminal() => {
                let until = ticket.retained_until(self.config.result_retention);
                if until <= now {
                    let removed = self.remove_finished(shard, ticket, now);
                    effects.journal_seq = effects.journal_seq.max(removed.journal_seq);
                    effects.deleted_keys.extend(removed.key);
                    return None;
                }
                if ticket
                    .finished_at
                    .is_some_and(|at| at + self.config.result_retention <= now)
                {
                    // Kept for its callback: look again after its next attempt.
                    shard.timers.insert((until, Timer::Retention, id));
                }
            }
            _ => {}
        }
        effects.journal_seq = effects.journal_seq.max(ticket.journal_seq);
        shard.tickets.insert(id, ticket);
        ready
    }
}
