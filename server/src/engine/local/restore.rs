//! Startup of the durable store: the in-memory state rebuilt from what the
//! journal read back. Separate because it runs once, before serving, and
//! touches every structure of the engine at once.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::super::journal::Recovered;
use super::super::{ReleaseReason, idempotency_scope, request_bytes};
use super::{LocalEngine, Timer, lock, shard_of};
use crate::domain::{TicketId, TicketState};

impl LocalEngine {
    /// Rebuilds the in-memory state from what a durable journal read back:
    /// ready queues in their stored priority/FIFO order, backoffs, timers,
    /// idempotency keys, chunks and tombstones. Tickets that were running
    /// lose their lease (the gateway restarted under them) and are requeued
    /// or failed by the usual caps. Call once, before serving.
    pub fn restore(&self, recovered: Recovered) {
        let now = SystemTime::now();
        // A finished ticket's output stays on disk when the journal keeps
        // it; only unfinished tickets' chunks come back into memory.
        let finished: std::collections::HashSet<TicketId> = if self.journal.keeps_chunks() {
            recovered
                .tickets
                .iter()
                .filter(|t| t.state.is_terminal())
                .map(|t| t.id)
                .collect()
        } else {
            Default::default()
        };
        for (id, chunk) in recovered.chunks {
            if finished.contains(&id) {
                continue;
            }
            self.held_output.fetch_add(
                prost::Message::encoded_len(&chunk.output) as u64,
                Ordering::Relaxed,
            );
            lock(self.shard(&id))
                .chunks
                .entry(id)
                .or_default()
                .push(chunk);
        }
        for (id, deleted_at) in recovered.tombstones {
            let mut shard = lock(self.shard(&id));
            shard.tombstones.insert(id, deleted_at);
            shard.timers.insert((
                deleted_at + self.config.tombstone_retention,
                Timer::Tombstone,
                id,
            ));
        }
        for (queue, pause) in recovered.paused {
            lock(&self.queue(&queue)).pause = Some(pause);
        }
        for (queue, limits) in recovered.limits {
            lock(&self.queue(&queue)).set_limits(limits, now);
        }
        for (queue, _) in &recovered.targets {
            self.queue(queue);
        }
        lock(&self.targets).extend(recovered.targets);
        lock(&self.schedules).extend(
            recovered
                .schedules
                .into_iter()
                .map(|record| (record.id.clone(), record)),
        );
        let mut last_enqueue = 0;
        let mut interrupted = Vec::new();
        for ticket in recovered.tickets {
            let id = ticket.id;
            last_enqueue = last_enqueue.max(ticket.enqueue_seq);
            if let Some(key) = &ticket.idempotency_key {
                let key = idempotency_scope(ticket.tenant.as_deref(), key);
                lock(&self.idempotency[shard_of(&self.hasher, &key)]).insert(key, id);
            }
            if ticket.holds_request() {
                self.pending_bytes.fetch_add(
                    request_bytes(&ticket.payload, &ticket.metadata),
                    Ordering::Relaxed,
                );
            }
            lock(&self.queue(&ticket.queue)).tally(id, ticket.due_at(), None, Some(ticket.state));
            let mut shard = lock(self.shard(&id));
            if let Some(deadline) = ticket.deadline.filter(|_| !ticket.state.is_terminal()) {
                shard.timers.insert((deadline, Timer::Deadline, id));
            }
            match (ticket.state, ticket.finished_at) {
                (TicketState::Pending, _) => {
                    let index = self.queue(&ticket.queue);
                    let mut index = lock(&index);
                    match ticket.not_before {
                        Some(at) => {
                            index.delayed += 1;
                            shard.timers.insert((at, Timer::Backoff, id));
                        }
                        None => {
                            index.push((Reverse(ticket.priority), ticket.enqueue_seq), id);
                        }
                    }
                }
                (TicketState::Running, _) => {
                    if let Some(lease) = &ticket.lease {
                        interrupted.push((id, lease.lease_id));
                    }
                }
                (_, finished_at) => {
                    let finished_at = finished_at.unwrap_or(now);
                    shard.timers.insert((
                        finished_at + self.config.result_retention,
                        Timer::Retention,
                        id,
                    ));
                }
            }
            self.index_callback(&ticket);
            shard.tickets.insert(id, Box::new(ticket));
        }
        self.enqueue_seq.store(last_enqueue + 1, Ordering::Relaxed);
        for (ticket_id, lease_id) in interrupted {
            self.lose_lease(ticket_id, lease_id, ReleaseReason::GatewayRestarted);
        }
    }
}
