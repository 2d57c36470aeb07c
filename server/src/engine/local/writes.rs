//! The synchronous halves of `submit`, `progress` and `complete`: each
//! applies its change under the ticket's shard lock and returns what the
//! async `Engine` method in `engine.rs` then waits on (the journal append).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::super::journal::{Journal, Mutation};
use super::super::{
    Before, Completion, EngineError, ProgressReport, idempotency_scope, pending_bytes_full,
    request_bytes, transition,
};
use super::{LocalEngine, Timer, lock, shard_of};
use crate::domain::ticket::EventKind;
use crate::domain::{Chunk, LeaseId, NewTicket, Outcome, Ticket, TicketId};

impl LocalEngine {
    /// The synchronous part of `complete`.
    pub(super) fn apply_completion(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> Result<Completion, EngineError> {
        let now = SystemTime::now();
        let (result, session, ready) = {
            let mut shard = lock(self.shard(&ticket_id));
            let shard = &mut *shard;
            let Some(mut ticket) = shard.tickets.remove(&ticket_id) else {
                return Err(Self::lookup_error(shard, ticket_id));
            };
            let mut ready = false;
            let session = ticket
                .lease
                .as_ref()
                .filter(|_| ticket.is_leased_by(lease_id))
                .map(|l| l.session_id);
            if session.is_some() {
                Self::clear_attempt_timer(shard, &ticket);
            }
            let before = Before::of(&ticket);
            let result =
                match transition::complete(&mut ticket, lease_id, outcome, &self.config, now) {
                    Ok(transition::Reported::Duplicate) => {
                        Ok(Completion::Duplicate(Ticket::clone(&ticket)))
                    }
                    Ok(transition::Reported::Recorded) => {
                        ready = self.settle(shard, &mut ticket, before, now);
                        Ok(Completion::Recorded(Ticket::clone(&ticket)))
                    }
                    Err(error) => Err(error),
                };
            let queue = ticket.queue.clone();
            shard.tickets.insert(ticket_id, ticket);
            (result, session, ready.then_some(queue))
        };
        if let Some(session_id) = session {
            self.forget_session_lease(session_id, lease_id);
        }
        if let Some(queue) = ready {
            self.notify_ready(&queue);
        }
        result
    }

    /// The synchronous part of `submit`: the stored ticket and whether it is
    /// new (false when an idempotency key matched).
    pub(super) fn store_new(&self, new: NewTicket) -> Result<(Ticket, bool), EngineError> {
        // While the store cannot write, a submit would only pile up in
        // memory, unacknowledged.
        if let Some(refused) = self.journal.refusing() {
            return Err(refused);
        }
        let now = SystemTime::now();
        let key = new
            .idempotency_key
            .as_deref()
            .map(|key| idempotency_scope(new.tenant.as_deref(), key));
        let mut idempotency = key
            .as_ref()
            .map(|k| lock(&self.idempotency[shard_of(&self.hasher, k)]));
        if let (Some(map), Some(key)) = (idempotency.as_deref(), key.as_ref())
            && let Some(existing) = map.get(key).copied()
            && let Some(ticket) = lock(self.shard(&existing)).tickets.get(&existing)
        {
            if ticket.queue != new.queue {
                return Err(EngineError::IdempotencyConflict {
                    key: ticket.idempotency_key.clone().unwrap_or_default(),
                    existing,
                    queue: ticket.queue.clone(),
                });
            }
            return Ok((Ticket::clone(ticket), false));
        }
        let id = new.id;
        let mut ticket = Ticket::create(id, new, now);
        let ready;
        {
            let mut shard = lock(self.shard(&id));
            let shard = &mut *shard;
            if shard.tickets.contains_key(&id) || shard.tombstones.contains_key(&id) {
                return Err(EngineError::unavailable(format!(
                    "ticket id {id} is already taken; retry"
                )));
            }
            {
                let index = self.queue(&ticket.queue);
                let index = lock(&index);
                if index.pending() >= self.config.max_pending_per_queue {
                    return Err(EngineError::QueueFull {
                        queue: ticket.queue.clone(),
                        limit: self.config.max_pending_per_queue,
                    });
                }
            }
            let weight = request_bytes(&ticket.payload, &ticket.metadata);
            let limit = self.config.max_pending_bytes;
            if self
                .pending_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    held.checked_add(weight).filter(|total| *total <= limit)
                })
                .is_err()
            {
                return Err(pending_bytes_full(limit));
            }
            ready = self.enqueue(shard, &mut ticket);
            if let Some(deadline) = ticket.deadline {
                shard.timers.insert((deadline, Timer::Deadline, id));
            }
            self.commit_with(&mut ticket, None, None, Vec::new(), true);
            self.observe(Before::created(now), &ticket, now);
            shard.tickets.insert(id, Box::new(Ticket::clone(&ticket)));
        }
        if let (Some(map), Some(key)) = (idempotency.as_deref_mut(), key) {
            map.insert(key, id);
        }
        drop(idempotency);
        if ready {
            self.notify_ready(&ticket.queue);
        }
        Ok((ticket, true))
    }

    /// The synchronous part of `submit_batch`: each ticket stored as
    /// [`Self::store_new`] stores it, with the journal held meanwhile so
    /// that their appends reach the disk as one commit.
    pub(super) fn store_batch(
        &self,
        batch: Vec<NewTicket>,
    ) -> Vec<Result<(Ticket, bool), EngineError>> {
        /// Releases the hold however the loop ends.
        struct Held<'a>(&'a dyn Journal);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.release();
            }
        }
        self.journal.hold();
        let _held = Held(&*self.journal);
        batch.into_iter().map(|new| self.store_new(new)).collect()
    }

    /// The synchronous part of `progress`; returns the journal append.
    pub(super) fn record_progress(&self, report: ProgressReport) -> Result<u64, EngineError> {
        let now = SystemTime::now();
        let mut shard = lock(self.shard(&report.ticket_id));
        let shard = &mut *shard;
        let Some(ticket) = shard.tickets.get_mut(&report.ticket_id) else {
            return Err(Self::lookup_error(shard, report.ticket_id));
        };
        transition::check_lease(ticket, report.lease_id)?;
        if let Some(progress) = report.progress {
            ticket.progress = Some(progress);
            ticket.touch(now);
            self.commit(ticket, Some(EventKind::Progress), None);
        }
        if let Some(output) = report.output {
            let chunks = shard.chunks.entry(report.ticket_id).or_default();
            if chunks.len() >= transition::MAX_CHUNKS_PER_TICKET {
                return Err(transition::too_many_chunks(report.ticket_id));
            }
            transition::spend_output(ticket, &output, self.config.max_output_bytes_per_ticket)?;
            let size = prost::Message::encoded_len(&output) as u64;
            let limit = self.config.max_output_bytes;
            if self
                .held_output
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    held.checked_add(size).filter(|total| *total <= limit)
                })
                .is_err()
            {
                ticket.output_bytes -= size;
                return Err(EngineError::LimitExceeded(format!(
                    "the gateway holds {limit} bytes of partial output, its budget (--max-output-bytes); the chunk was refused"
                )));
            }
            ticket.touch(now);
            let chunk = Chunk {
                seq: ticket.seq,
                output,
            };
            chunks.push(chunk.clone());
            let mutations = if self.journal.wants_mutations() {
                vec![Mutation::PutChunk {
                    ticket_id: report.ticket_id,
                    chunk: chunk.clone(),
                }]
            } else {
                Vec::new()
            };
            self.commit_with(
                ticket,
                Some(EventKind::Output),
                Some(&chunk.output),
                mutations,
                false,
            );
        }
        Ok(ticket.journal_seq)
    }
}
