//! The local engine's callback outbox: an index of tickets whose callbacks
//! are due, by when. The state itself is in each ticket's record (written
//! with the terminal transition, so it is as durable as the outcome); the
//! index is rebuilt from the records at start, where every pending
//! delivery is due at once (a delivery in flight at a crash is made again:
//! at least once). Entries are dropped lazily: a claim checks the ticket.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use super::{LocalEngine, lock};
use crate::domain::callback::{CallbackOutcome, CallbackState};
use crate::domain::{Ticket, TicketId};
use crate::engine::{EngineError, transition};

/// Due callbacks by time, one entry per ticket.
#[derive(Debug, Default)]
pub(super) struct CallbackIndex {
    by_time: BTreeSet<(SystemTime, TicketId)>,
    at: HashMap<TicketId, SystemTime>,
}

impl CallbackIndex {
    /// `id` is due at `at` (replacing when it was due before).
    fn set(&mut self, id: TicketId, at: SystemTime) {
        if let Some(old) = self.at.insert(id, at) {
            self.by_time.remove(&(old, id));
        }
        self.by_time.insert((at, id));
    }

    fn remove(&mut self, id: TicketId) {
        if let Some(old) = self.at.remove(&id) {
            self.by_time.remove(&(old, id));
        }
    }

    /// Takes up to `limit` ids due by `now`.
    fn take_due(&mut self, now: SystemTime, limit: usize) -> Vec<TicketId> {
        let mut due = Vec::new();
        while due.len() < limit {
            match self.by_time.first() {
                Some(&(at, id)) if at <= now => {
                    self.by_time.pop_first();
                    self.at.remove(&id);
                    due.push(id);
                }
                _ => break,
            }
        }
        due
    }
}

impl LocalEngine {
    /// Puts `ticket`'s callback in the index when it is due, and takes it
    /// out when it is not. Call under the ticket's shard lock (the lock
    /// order is shard, then index).
    pub(super) fn index_callback(&self, ticket: &Ticket) {
        match ticket.callback.as_deref() {
            Some(callback) if callback.state == CallbackState::Pending => {
                let at = callback.next_at.unwrap_or(SystemTime::UNIX_EPOCH);
                lock(&self.callbacks).set(ticket.id, at);
            }
            Some(_) => lock(&self.callbacks).remove(ticket.id),
            None => {}
        }
    }

    /// Up to `limit` tickets whose callbacks are due by `now`, each held
    /// back from later claims until `now + hold`.
    pub(super) fn claim_due_callbacks(
        &self,
        now: SystemTime,
        limit: usize,
        hold: Duration,
    ) -> Vec<Ticket> {
        let mut claimed = Vec::new();
        while claimed.len() < limit {
            let due = lock(&self.callbacks).take_due(now, limit - claimed.len());
            if due.is_empty() {
                break;
            }
            for id in due {
                let mut shard = lock(self.shard(&id));
                let Some(ticket) = shard.tickets.get_mut(&id) else {
                    continue;
                };
                let Some(callback) = ticket.callback.as_deref() else {
                    continue;
                };
                let due_now = callback.state == CallbackState::Pending
                    && callback.next_at.is_none_or(|at| at <= now);
                if due_now {
                    lock(&self.callbacks).set(id, now + hold);
                    claimed.push(Ticket::clone(ticket));
                }
            }
        }
        claimed
    }

    /// An operator's retry of a given-up callback (see
    /// `Engine::retry_callback`): the ticket and the journal seq to wait for.
    pub(super) fn apply_callback_retry(&self, id: TicketId) -> Result<(Ticket, u64), EngineError> {
        let now = SystemTime::now();
        let mut shard = lock(self.shard(&id));
        let shard = &mut *shard;
        let Some(ticket) = shard.tickets.get_mut(&id) else {
            return Err(Self::lookup_error(shard, id));
        };
        transition::retry_callback(ticket, now)?;
        self.index_callback(ticket);
        let seq = self.commit(ticket, None, None);
        Ok((Ticket::clone(ticket), seq))
    }

    /// Records a delivery attempt (see `Engine::record_callback`); the
    /// journal seq to wait for, or `None` when nothing changed.
    pub(super) fn apply_callback(
        &self,
        id: TicketId,
        seq: u64,
        outcome: CallbackOutcome,
    ) -> Result<Option<u64>, EngineError> {
        let now = SystemTime::now();
        let mut shard = lock(self.shard(&id));
        let shard = &mut *shard;
        let Some(ticket) = shard.tickets.get_mut(&id) else {
            return Err(Self::lookup_error(shard, id));
        };
        if !transition::record_callback(ticket, seq, outcome, now) {
            return Ok(None);
        }
        self.index_callback(ticket);
        Ok(Some(self.commit(ticket, None, None)))
    }
}
