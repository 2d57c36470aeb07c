//! The local engine: ticket state in process memory, the hot path of both the
//! memory store and the durable embedded store (which adds a journal, see
//! `journal.rs`).
//!
//! Tickets live in sharded maps (one `std::sync::Mutex` per shard, never held
//! across an await); each queue has its own ready index. Every transition
//! happens under its ticket's shard lock and is appended to the journal under
//! that lock too, so watchers see a ticket's events in seq order. Callers are
//! answered only after the journal says their append is durable.
//!
//! Lock order (outer to inner): idempotency shard → ticket shard → queue
//! index. Sessions are locked on their own, never while holding another lock.
//!
//! This file holds the shards, the engine's state and the helpers every
//! transition uses (journal commits, the ready index, settling a ticket,
//! losing a lease); `local/engine.rs` is `impl Engine`, `local/writes.rs`
//! the synchronous halves of submit, progress and complete, `local/admin.rs`
//! those of an operator's retry and delete,
//! `local/timers.rs` what a due timer does, `local/index.rs` a queue's ready
//! index and `local/restore.rs` the rebuild from a durable journal.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;

use super::journal::{Journal, MemoryJournal, Mutation};
use super::transition;
use super::window::Sample;
use super::{
    Applied, Before, Claimed, Completion, Engine, EngineConfig, EngineError, EngineListener,
    ListFilter, ListPage, ProgressReport, QueueFlow, QueueInfo, ReleaseReason, Revocation,
    RevokeReason, ScheduleRecord, SessionInfo, Submitted, TicketChange,
};
use crate::domain::ticket::{EventKind, Payload};
use crate::domain::{
    Chunk, Lease, LeaseId, NewTicket, Outcome, QueueLimits, QueueName, QueuePause, SessionId,
    Ticket, TicketId, TicketState,
};

mod admin;
mod callbacks;
mod engine;
mod index;
mod restore;
mod schedules;
mod timers;
mod writes;

use index::QueueIndex;
use timers::TimerEffects;

const SHARDS: usize = 64;

/// A ticket-level timer; validated against the ticket when it fires. One
/// byte: a timer entry is as small as a ready-index entry (see [`Timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Retry backoff ends, or a delayed ticket comes due.
    Backoff,
    /// The current attempt's budget ends (the one whose attempt deadline
    /// is the timer's time).
    AttemptDeadline,
    /// The ticket's whole budget ends.
    Deadline,
    /// The finished ticket is deleted.
    Retention,
    /// The tombstone is forgotten.
    Tombstone,
}

/// A shard's timers by due time. Every pending delayed ticket, every retry
/// in backoff, every deadline and every retained result holds one, so an
/// entry is kept at 32 bytes: the time as nanoseconds since the epoch, a
/// one-byte kind, the ticket.
#[derive(Default)]
struct Timers(BTreeSet<(u64, Timer, TicketId)>);

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Timers {
    fn insert(&mut self, (at, timer, id): (SystemTime, Timer, TicketId)) -> bool {
        self.0.insert((nanos(at), timer, id))
    }

    fn remove(&mut self, &(at, timer, id): &(SystemTime, Timer, TicketId)) -> bool {
        self.0.remove(&(nanos(at), timer, id))
    }

    /// The earliest timer.
    fn first(&self) -> Option<(SystemTime, Timer, TicketId)> {
        self.0.first().map(|&(at, timer, id)| {
            (
                SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(at),
                timer,
                id,
            )
        })
    }

    fn pop_first(&mut self) {
        self.0.pop_first();
    }
}

#[derive(Default)]
struct Shard {
    /// Boxed: growing the map moves pointers, not 440-byte records.
    tickets: HashMap<TicketId, Box<Ticket>>,
    chunks: HashMap<TicketId, Vec<Chunk>>,
    timers: Timers,
    /// Deleted tickets, with their deletion time.
    tombstones: HashMap<TicketId, SystemTime>,
}

struct SessionRecord {
    expires_at: SystemTime,
    leases: HashMap<LeaseId, TicketId>,
}

/// See the module docs.
pub struct LocalEngine {
    config: EngineConfig,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    idempotency: Box<[Mutex<HashMap<String, TicketId>>]>,
    queues: RwLock<HashMap<QueueName, Arc<Mutex<QueueIndex>>>>,
    sessions: Box<[Mutex<HashMap<SessionId, SessionRecord>>]>,
    enqueue_seq: AtomicU64,
    /// Request bytes held by tickets that may still run: unfinished, or
    /// finished other than SUCCEEDED (`max_pending_bytes`; see
    /// `Ticket::holds_request`).
    pending_bytes: AtomicU64,
    /// Output chunk bytes held in memory (`max_output_bytes`).
    held_output: AtomicU64,
    listener: OnceLock<Arc<dyn EngineListener>>,
    journal: Arc<dyn Journal>,
    /// Schedules by id (a handful to thousands: scanned for due ones).
    schedules: Mutex<std::collections::BTreeMap<String, super::ScheduleRecord>>,
    /// Tickets whose callbacks are due, by when (see `local/callbacks.rs`).
    callbacks: Mutex<callbacks::CallbackIndex>,
    /// Queues' admin-set targets (a handful: read whole every second).
    targets: Mutex<std::collections::BTreeMap<QueueName, crate::domain::QueueTarget>>,
}

/// Locks a mutex, recovering from poisoning: state transitions never leave a
/// shard half-written across a panic point, so the data is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sharded<T: Default>() -> Box<[Mutex<T>]> {
    (0..SHARDS).map(|_| Mutex::default()).collect()
}

fn shard_of<K: Hash>(hasher: &RandomState, key: &K) -> usize {
    (hasher.hash_one(key) as usize) % SHARDS
}

impl LocalEngine {
    /// An empty engine that keeps nothing beyond the process.
    pub fn in_memory(config: EngineConfig) -> Self {
        Self::with_journal(config, Arc::new(MemoryJournal::default()))
    }

    /// An empty engine whose transitions go through `journal`.
    pub fn with_journal(config: EngineConfig, journal: Arc<dyn Journal>) -> Self {
        Self {
            config,
            hasher: RandomState::new(),
            shards: sharded(),
            idempotency: sharded(),
            queues: RwLock::default(),
            sessions: sharded(),
            enqueue_seq: AtomicU64::new(1),
            pending_bytes: AtomicU64::new(0),
            held_output: AtomicU64::new(0),
            listener: OnceLock::new(),
            journal,
            schedules: Mutex::default(),
            targets: Mutex::default(),
            callbacks: Mutex::default(),
        }
    }

    fn shard(&self, id: &TicketId) -> &Mutex<Shard> {
        &self.shards[shard_of(&self.hasher, id)]
    }

    fn session_shard(&self, id: &SessionId) -> &Mutex<HashMap<SessionId, SessionRecord>> {
        &self.sessions[shard_of(&self.hasher, id)]
    }

    fn queue(&self, name: &QueueName) -> Arc<Mutex<QueueIndex>> {
        if let Some(index) = self
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return index.clone();
        }
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.clone())
            .or_default()
            .clone()
    }

    /// The queue's index, if the queue was ever used (unlike
    /// [`Self::queue`], a lookup creates nothing).
    fn existing_queue(&self, name: &QueueName) -> Option<Arc<Mutex<QueueIndex>>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Queues whose ready tickets wait for a limit that allows some now
    /// (tokens refilled, running tickets finished): the timer pass
    /// announces them ready again.
    fn eased_queues(&self) -> Vec<QueueName> {
        let now = SystemTime::now();
        let queues: Vec<(QueueName, Arc<Mutex<QueueIndex>>)> = self
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, index)| (name.clone(), index.clone()))
            .collect();
        queues
            .into_iter()
            .filter(|(_, index)| {
                let mut index = lock(index);
                index.held_back() && index.allowance(now) > 0
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// What the admin API shows of a queue.
    fn queue_info_of(name: &QueueName, index: &QueueIndex) -> QueueInfo {
        let now = SystemTime::now();
        QueueInfo {
            held_back: index.held_back_count(now),
            stats: index.window.stats(now),
            queue: name.clone(),
            counts: index.counts,
            oldest_pending_at: index.oldest_pending_at().filter(|at| *at <= now),
            scheduled: index.delayed as u64,
            pause: index.pause.clone(),
            limits: index.limits,
        }
    }

    fn listener(&self) -> Option<&Arc<dyn EngineListener>> {
        self.listener.get()
    }

    /// Journals a ticket's new state (and the watcher event, if `kind`);
    /// call under the ticket's shard lock. Returns the append number.
    fn commit(
        &self,
        ticket: &mut Ticket,
        kind: Option<EventKind>,
        output: Option<&Payload>,
    ) -> u64 {
        self.commit_with(ticket, kind, output, Vec::new(), false)
    }

    fn commit_with(
        &self,
        ticket: &mut Ticket,
        kind: Option<EventKind>,
        output: Option<&Payload>,
        mut mutations: Vec<Mutation>,
        with_payload: bool,
    ) -> u64 {
        let durable = self.journal.wants_mutations();
        let watched = kind.is_some()
            && self
                .listener()
                .is_some_and(|listener| listener.watching(ticket.id));
        if !durable && !watched {
            return 0;
        }
        let snapshot = Arc::new(Ticket::clone(ticket));
        if durable {
            mutations.insert(
                0,
                Mutation::PutTicket {
                    ticket: snapshot.clone(),
                    with_payload,
                },
            );
        }
        let events = match kind {
            Some(kind) if durable || watched => vec![TicketChange {
                kind,
                ticket: snapshot,
                output: output.cloned(),
            }],
            _ => Vec::new(),
        };
        let seq = self.journal.append(mutations, events);
        ticket.journal_seq = seq;
        seq
    }

    /// Waits until append `seq` is durable.
    async fn durable(&self, seq: u64) -> Result<(), EngineError> {
        self.journal.durable(seq).await
    }

    fn revoke(&self, lease: &Lease, ticket_id: TicketId, reason: RevokeReason, message: String) {
        if let Some(listener) = self.listener() {
            listener.lease_revoked(Revocation {
                session_id: lease.session_id,
                ticket_id,
                lease_id: lease.lease_id,
                reason,
                message,
            });
        }
    }

    fn notify_ready(&self, queue: &QueueName) {
        if let Some(listener) = self.listener() {
            listener.queue_ready(queue);
        }
    }

    fn lookup_error(shard: &Shard, id: TicketId) -> EngineError {
        transition::missing(id, shard.tombstones.get(&id).copied())
    }

    /// Puts a PENDING ticket in its queue's ready index (or its backoff), and
    /// says whether workers should be told. Call under the shard lock.
    fn enqueue(&self, shard: &mut Shard, ticket: &mut Ticket) -> bool {
        ticket.enqueue_seq = self.enqueue_seq.fetch_add(1, Ordering::Relaxed);
        let index = self.queue(&ticket.queue);
        let mut index = lock(&index);
        match ticket.not_before {
            Some(at) => {
                index.delayed += 1;
                shard.timers.insert((at, Timer::Backoff, ticket.id));
                false
            }
            None => {
                index.push((Reverse(ticket.priority), ticket.enqueue_seq), ticket.id);
                true
            }
        }
    }

    /// Forgets a ticket's in-memory output chunks, releasing their budget.
    fn drop_chunks(&self, shard: &mut Shard, id: TicketId) {
        if let Some(chunks) = shard.chunks.remove(&id) {
            let bytes: usize = chunks
                .iter()
                .map(|c| prost::Message::encoded_len(&c.output))
                .sum();
            self.held_output.fetch_sub(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Takes a PENDING ticket out of its queue's index.
    fn dequeue(&self, shard: &mut Shard, ticket: &Ticket) {
        let index = self.queue(&ticket.queue);
        let mut index = lock(&index);
        match ticket.not_before {
            Some(at) => {
                if shard.timers.remove(&(at, Timer::Backoff, ticket.id)) {
                    index.delayed = index.delayed.saturating_sub(1);
                }
            }
            None => {
                index.remove(&(Reverse(ticket.priority), ticket.enqueue_seq));
            }
        }
    }

    /// Files a ticket that a transition just finished or requeued: timers,
    /// the ready index, the event. Returns whether its queue gained ready
    /// work. Call under the shard lock, after [`Self::clear_attempt_timer`].
    fn settle(
        &self,
        shard: &mut Shard,
        ticket: &mut Ticket,
        before: Before,
        now: SystemTime,
    ) -> bool {
        let ready = if ticket.state.is_terminal() {
            if !ticket.holds_request() {
                // Succeeded: it never runs again. A failed, cancelled or
                // expired ticket keeps its body (and its weight on the
                // budget) for an operator's retry, until it is deleted.
                let released = ticket.forget_request();
                self.pending_bytes.fetch_sub(released, Ordering::Relaxed);
            }
            if self.journal.keeps_chunks() {
                // On disk already (or on its way, in order): a finished
                // ticket's output is read from there.
                self.drop_chunks(shard, ticket.id);
            }
            if let Some(deadline) = ticket.deadline {
                shard.timers.remove(&(deadline, Timer::Deadline, ticket.id));
            }
            shard.timers.insert((
                now + self.config.result_retention,
                Timer::Retention,
                ticket.id,
            ));
            self.index_callback(ticket);
            false
        } else {
            self.enqueue(shard, ticket)
        };
        self.commit(ticket, Some(EventKind::State), None);
        self.observe(before, ticket, now);
        ready
    }

    /// Counts a transition in its queue's index, then tells the listener.
    /// Call under the ticket's shard lock.
    fn observe(&self, before: Before, after: &Ticket, now: SystemTime) {
        if before.state != Some(after.state) {
            let eased = {
                let queue = self.queue(&after.queue);
                let mut index = lock(&queue);
                index.tally(after.id, after.due_at(), before.state, Some(after.state));
                for sample in Sample::of(&before, after, now).into_iter().flatten() {
                    index.window.add(sample, now);
                }
                // A limited queue's slot freed: claim again now rather than
                // at the next timer pass.
                before.state == Some(TicketState::Running) && index.held_back()
            };
            if eased {
                self.notify_ready(&after.queue);
            }
        }
        if let Some(listener) = self.listener() {
            listener.transitioned(before, after, now);
        }
    }

    /// Drops the timer of the current attempt's budget, before a transition
    /// ends the lease.
    fn clear_attempt_timer(shard: &mut Shard, ticket: &Ticket) {
        if let Some(lease) = &ticket.lease
            && let Some(at) = lease.attempt_deadline
        {
            shard
                .timers
                .remove(&(at, Timer::AttemptDeadline, ticket.id));
        }
    }

    fn forget_session_lease(&self, session_id: SessionId, lease_id: LeaseId) {
        if let Some(record) = lock(self.session_shard(&session_id)).get_mut(&session_id) {
            record.leases.remove(&lease_id);
        }
    }

    /// Loses a lease whose worker is gone; returns whether its queue gained
    /// ready work.
    fn lose_lease(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        reason: ReleaseReason,
    ) -> (Option<QueueName>, u64) {
        let now = SystemTime::now();
        let mut shard = lock(self.shard(&ticket_id));
        let shard = &mut *shard;
        let Some(mut ticket) = shard.tickets.remove(&ticket_id) else {
            return (None, 0);
        };
        let mut ready = None;
        if ticket.is_leased_by(lease_id) {
            Self::clear_attempt_timer(shard, &ticket);
            let before = Before::of(&ticket);
            transition::lose_lease(&mut ticket, lease_id, reason, &self.config, now);
            if self.settle(shard, &mut ticket, before, now) {
                ready = Some(ticket.queue.clone());
            }
        }
        let seq = ticket.journal_seq;
        shard.tickets.insert(ticket_id, ticket);
        (ready, seq)
    }

    /// Loses every lease of a gone session; collects the queues that gained
    /// ready work and returns the last journal append.
    fn lose_all(&self, leases: HashMap<LeaseId, TicketId>, ready: &mut BTreeSet<QueueName>) -> u64 {
        let mut last_write = 0;
        for (lease_id, ticket_id) in leases {
            let (queue, seq) = self.lose_lease(ticket_id, lease_id, ReleaseReason::WorkerLost);
            ready.extend(queue);
            last_write = last_write.max(seq);
        }
        last_write
    }
}

#[cfg(test)]
mod tests;
