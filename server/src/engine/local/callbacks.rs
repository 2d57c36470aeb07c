//! The local engine's callback outbox: an index of tickets whose callbacks
//! are due, by when. The state itself is in each ticket's record (written
//! with the terminal transition, so it is as durable as the outcome); the
//! index is rebuilt from the records at start, where every pending
//! delivery is due at once (a delivery in flight at a crash is made again:
//! at least once). Entries are dropped lazily: a claim checks the ticket.

use std::time::{Duration, SystemTime};

use super::{LocalEngine, lock};
use crate::domain::callback::{CallbackOutcome, CallbackState};
use crate::domain::{Ticket, TicketId};
use crate::engine::{EngineError, transition};

impl LocalEngine {
    /// Puts `ticket`'s callback in the index if it is due. Call under the
    /// ticket's shard lock (the lock order is shard, then index).
    pub(super) fn index_callback(&self, ticket: &Ticket) {
        if let Some(callback) = ticket.callback.as_deref()
            && callback.state == CallbackState::Pending
        {
            let at = callback.next_at.unwrap_or(SystemTime::UNIX_EPOCH);
            lock(&self.callbacks).insert((at, ticket.id));
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
            let due: Vec<TicketId> = {
                let mut index = lock(&self.callbacks);
                let mut due = Vec::new();
                while due.len() < limit - claimed.len() {
                    match index.first() {
                        Some(&(at, id)) if at <= now => {
                            index.pop_first();
                            due.push(id);
                        }
                        _ => break,
                    }
                }
                due
            };
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
                    lock(&self.callbacks).insert((now + hold, id));
                    claimed.push(Ticket::clone(ticket));
                }
            }
        }
        claimed
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
