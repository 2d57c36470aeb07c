//! An operator's changes to finished tickets, in their synchronous halves
//! (under the ticket's shard lock): a retry puts a FAILED, CANCELLED or
//! EXPIRED ticket back in its queue; a delete removes a finished ticket now,
//! as retention would later, leaving the same tombstone. The async `Engine`
//! methods in `engine.rs` wait for the journal after them.

use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::super::journal::Mutation;
use super::super::{Before, EngineError, idempotency_scope, transition};
use super::{LocalEngine, Shard, Timer, lock, shard_of};
use crate::domain::ticket::EventKind;
use crate::domain::{Ticket, TicketId};

/// What deleting a ticket leaves to do once its shard lock is released.
pub(super) struct Removed {
    /// The journal append that deletes it.
    pub(super) journal_seq: u64,
    /// Its idempotency key (scoped), to forget if it still names it.
    pub(super) key: Option<(String, TicketId)>,
}

impl LocalEngine {
    /// The synchronous part of `retry`: the ticket after it, and whether
    /// its queue gained ready work.
    pub(super) fn apply_retry(&self, id: TicketId) -> Result<(Ticket, bool), EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        let now = SystemTime::now();
        let mut shard = lock(self.shard(&id));
        let shard = &mut *shard;
        let Some(mut ticket) = shard.tickets.remove(&id) else {
            return Err(Self::lookup_error(shard, id));
        };
        let before = Before::of(&ticket);
        let finished_at = ticket.finished_at;
        if let Err(error) = transition::retry(&mut ticket, now) {
            shard.tickets.insert(id, ticket);
            return Err(error);
        }
        if let Some(at) = finished_at {
            shard
                .timers
                .remove(&(at + self.config.result_retention, Timer::Retention, id));
        }
        // The new run's output starts afresh (its budget too).
        self.drop_chunks(shard, id);
        if let Some(deadline) = ticket.deadline {
            shard.timers.insert((deadline, Timer::Deadline, id));
        }
        // Its body was kept (and counted against the pending-bytes budget)
        // since it failed: nothing to take from the budget now. Nor from the
        // queue's pending cap: the ticket is stored already, and a bulk retry
        // refused halfway would leave the operator half done.
        let ready = self.enqueue(shard, &mut ticket);
        let mutations = if self.journal.wants_mutations() {
            vec![Mutation::DeleteChunks { ticket_id: id }]
        } else {
            Vec::new()
        };
        self.commit_with(&mut ticket, Some(EventKind::State), None, mutations, false);
        self.observe(before, &ticket, now);
        let snapshot = Ticket::clone(&ticket);
        shard.tickets.insert(id, ticket);
        Ok((snapshot, ready))
    }

    /// The synchronous part of `delete`: when it was deleted, and what is
    /// left to do.
    pub(super) fn apply_delete(&self, id: TicketId) -> Result<(SystemTime, Removed), EngineError> {
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        let now = SystemTime::now();
        let mut shard = lock(self.shard(&id));
        let shard = &mut *shard;
        let Some(ticket) = shard.tickets.remove(&id) else {
            return Err(Self::lookup_error(shard, id));
        };
        if let Err(error) = transition::check_deletable(&ticket) {
            shard.tickets.insert(id, ticket);
            return Err(error);
        }
        if let Some(at) = ticket.finished_at {
            shard
                .timers
                .remove(&(at + self.config.result_retention, Timer::Retention, id));
        }
        Ok((now, self.remove_finished(shard, ticket, now)))
    }

    /// Deletes a finished ticket, already taken out of `shard.tickets`, at
    /// `now`: its output, its count, its body's weight on the budget and its
    /// stored record go; a tombstone stands for it. Call under the shard
    /// lock; forget the key after (see [`Self::unlink_key`]).
    pub(super) fn remove_finished(
        &self,
        shard: &mut Shard,
        mut ticket: Box<Ticket>,
        now: SystemTime,
    ) -> Removed {
        let id = ticket.id;
        self.drop_chunks(shard, id);
        if ticket.holds_request() {
            let released = ticket.forget_request();
            self.pending_bytes.fetch_sub(released, Ordering::Relaxed);
        }
        lock(&self.queue(&ticket.queue)).tally(id, ticket.due_at(), Some(ticket.state), None);
        let journal_seq = if self.journal.wants_mutations() {
            self.journal.append(
                vec![Mutation::DeleteTicket {
                    ticket_id: id,
                    deleted_at: now,
                }],
                Vec::new(),
            )
        } else {
            0
        };
        shard.tombstones.insert(id, now);
        shard
            .timers
            .insert((now + self.config.tombstone_retention, Timer::Tombstone, id));
        let key = ticket
            .idempotency_key
            .take()
            .map(|key| (idempotency_scope(ticket.tenant.as_deref(), &key), id));
        Removed { journal_seq, key }
    }

    /// Forgets idempotency key `key` if it still names `id` (a deleted
    /// ticket's key is free again). Call holding no ticket shard lock: the
    /// idempotency shard comes first in the lock order.
    pub(super) fn unlink_key(&self, key: String, id: TicketId) {
        if let Entry::Occupied(entry) =
            lock(&self.idempotency[shard_of(&self.hasher, &key)]).entry(key)
            && *entry.get() == id
        {
            entry.remove();
        }
    }
}
