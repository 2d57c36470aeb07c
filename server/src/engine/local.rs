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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, hash_map::Entry};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;

use super::journal::{Journal, MemoryJournal, Mutation, Recovered};
use super::{
    Applied, Before, Claimed, Completion, Engine, EngineConfig, EngineError, EngineListener,
    ListFilter, ListPage, ProgressReport, QueueDepth, ReleaseReason, Revocation, RevokeReason,
    SessionInfo, Submitted, TicketChange,
};
use super::{idempotency_scope, pending_bytes_full, request_bytes, transition};
use crate::domain::ticket::{EventKind, Payload};
use crate::domain::{
    Chunk, Lease, LeaseId, NewTicket, Outcome, QueueName, SessionId, Ticket, TicketId, TicketState,
};

mod engine;

const SHARDS: usize = 64;

/// A ticket-level timer; validated against the ticket when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Retry backoff ends.
    Backoff,
    /// The lease's attempt budget ends.
    AttemptDeadline(LeaseId),
    /// The ticket's whole budget ends.
    Deadline,
    /// The finished ticket is deleted.
    Retention,
    /// The tombstone is forgotten.
    Tombstone,
}

#[derive(Default)]
struct Shard {
    /// Boxed: growing the map moves pointers, not 440-byte records.
    tickets: HashMap<TicketId, Box<Ticket>>,
    chunks: HashMap<TicketId, Vec<Chunk>>,
    timers: BTreeSet<(SystemTime, Timer, TicketId)>,
    /// Deleted tickets, with their deletion time.
    tombstones: HashMap<TicketId, SystemTime>,
}

/// Ready-order key: highest priority first, then FIFO.
type ReadyKey = (Reverse<i32>, u64);

/// Positions are counted exactly up to this many tickets of one priority;
/// beyond it `tickets_ahead` is estimated from FIFO numbers.
const EXACT_POSITION_LIMIT: usize = 4096;

/// A queue's ready tickets, highest priority first, FIFO within a priority.
#[derive(Default)]
struct QueueIndex {
    ready: BTreeMap<ReadyKey, TicketId>,
    /// Ready tickets per priority, so positions need no full scan.
    per_priority: BTreeMap<Reverse<i32>, usize>,
    /// PENDING tickets waiting out a backoff.
    delayed: usize,
}

impl QueueIndex {
    fn pending(&self) -> usize {
        self.ready.len() + self.delayed
    }

    fn push(&mut self, key: ReadyKey, id: TicketId) {
        if self.ready.insert(key, id).is_none() {
            *self.per_priority.entry(key.0).or_default() += 1;
        }
    }

    fn remove(&mut self, key: &ReadyKey) {
        if self.ready.remove(key).is_some() {
            self.count_out(key.0);
        }
    }

    fn pop_first(&mut self) -> Option<TicketId> {
        let (key, id) = self.ready.pop_first()?;
        self.count_out(key.0);
        Some(id)
    }

    fn count_out(&mut self, priority: Reverse<i32>) {
        if let Some(count) = self.per_priority.get_mut(&priority) {
            *count -= 1;
            if *count == 0 {
                self.per_priority.remove(&priority);
            }
        }
    }

    /// Ready tickets ahead of `key`: exact for short queues, otherwise an
    /// estimate from FIFO numbers (holes left by cancelled tickets make it
    /// an upper bound).
    fn ahead(&self, key: ReadyKey) -> u64 {
        let higher: usize = self.per_priority.range(..key.0).map(|(_, n)| n).sum();
        let level = self.per_priority.get(&key.0).copied().unwrap_or(0);
        let within = if level <= EXACT_POSITION_LIMIT {
            self.ready.range((key.0, 0)..key).count()
        } else {
            match self.ready.range((key.0, 0)..key).next() {
                Some(((_, first), _)) => usize::try_from(key.1 - first)
                    .unwrap_or(usize::MAX)
                    .min(level.saturating_sub(1)),
                None => 0,
            }
        };
        (higher + within) as u64
    }
}

/// Follow-ups of a timer pass, applied once the shard lock is released.
#[derive(Default)]
struct TimerEffects {
    /// Leases to drop from their session records.
    forget: Vec<(SessionId, LeaseId)>,
    /// Idempotency keys of deleted tickets.
    deleted_keys: Vec<(String, TicketId)>,
    /// The latest journal append made.
    journal_seq: u64,
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
    /// Request bytes held by unfinished tickets (`max_pending_bytes`).
    pending_bytes: AtomicU64,
    /// Output chunk bytes held in memory (`max_output_bytes`).
    held_output: AtomicU64,
    listener: OnceLock<Arc<dyn EngineListener>>,
    journal: Arc<dyn Journal>,
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
            let released = ticket.forget_request();
            self.pending_bytes.fetch_sub(released, Ordering::Relaxed);
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
            false
        } else {
            self.enqueue(shard, ticket)
        };
        self.commit(ticket, Some(EventKind::State), None);
        self.observe(before, ticket, now);
        ready
    }

    fn observe(&self, before: Before, after: &Ticket, now: SystemTime) {
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
                .remove(&(at, Timer::AttemptDeadline(lease.lease_id), ticket.id));
        }
    }

    fn forget_session_lease(&self, session_id: SessionId, lease_id: LeaseId) {
        if let Some(record) = lock(self.session_shard(&session_id)).get_mut(&session_id) {
            record.leases.remove(&lease_id);
        }
    }

    /// Applies one due timer; returns a queue that gained ready work.
    fn fire(
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
            Timer::AttemptDeadline(lease_id) if ticket.is_leased_by(lease_id) => {
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
            Timer::Retention if ticket.state.is_terminal() => {
                self.drop_chunks(shard, id);
                if self.journal.wants_mutations() {
                    let seq = self.journal.append(
                        vec![Mutation::DeleteTicket {
                            ticket_id: id,
                            deleted_at: now,
                        }],
                        Vec::new(),
                    );
                    effects.journal_seq = effects.journal_seq.max(seq);
                }
                shard.tombstones.insert(id, now);
                shard
                    .timers
                    .insert((now + self.config.tombstone_retention, Timer::Tombstone, id));
                if let Some(key) = ticket.idempotency_key.take() {
                    let key = idempotency_scope(ticket.tenant.as_deref(), &key);
                    effects.deleted_keys.push((key, id));
                }
                return None;
            }
            _ => {}
        }
        effects.journal_seq = effects.journal_seq.max(ticket.journal_seq);
        shard.tickets.insert(id, ticket);
        ready
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

impl LocalEngine {
    /// The synchronous part of `complete`.
    fn apply_completion(
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
        let mut last_enqueue = 0;
        let mut interrupted = Vec::new();
        for ticket in recovered.tickets {
            let id = ticket.id;
            last_enqueue = last_enqueue.max(ticket.enqueue_seq);
            if let Some(key) = &ticket.idempotency_key {
                let key = idempotency_scope(ticket.tenant.as_deref(), key);
                lock(&self.idempotency[shard_of(&self.hasher, &key)]).insert(key, id);
            }
            if !ticket.state.is_terminal() {
                self.pending_bytes.fetch_add(
                    request_bytes(&ticket.payload, &ticket.metadata),
                    Ordering::Relaxed,
                );
            }
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
            shard.tickets.insert(id, Box::new(ticket));
        }
        self.enqueue_seq.store(last_enqueue + 1, Ordering::Relaxed);
        for (ticket_id, lease_id) in interrupted {
            self.lose_lease(ticket_id, lease_id, ReleaseReason::GatewayRestarted);
        }
    }

    /// The synchronous part of `submit`: the stored ticket and whether it is
    /// new (false when an idempotency key matched).
    fn store_new(&self, new: NewTicket) -> Result<(Ticket, bool), EngineError> {
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

    /// The synchronous part of `progress`; returns the journal append.
    fn record_progress(&self, report: ProgressReport) -> Result<u64, EngineError> {
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

#[cfg(test)]
mod tests;
