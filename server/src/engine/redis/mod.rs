//! The Redis engine: many gateway replicas sharing one Redis.
//!
//! Every transition is computed in Rust by the same state machine as the
//! other engines (`transition.rs`) and written by one Lua script,
//! `commit.lua`, that applies it only if the ticket's revision is still the
//! one read (optimistic concurrency): two replicas never both lease a
//! ticket, and a result is recorded only under the current lease. The script
//! also moves the ticket's index entries (ready set, timers, leases, counts)
//! and publishes the change on the event channel, atomically with the write.
//! One call carries many tickets of a queue, each fenced on its own: the
//! commits waiting at one moment go together (`commits.rs`), so a busy
//! queue pays one script call per batch, not per transition.
//!
//! Leasing pops ready tickets with `claim.lua` (so replicas do not race for
//! the same head of the queue), then commits all their leases in one call.
//! Timers (backoff, deadlines, attempt budgets, retention) are scored sorted
//! sets that every replica's timer pass fires; the revision check makes a
//! timer fired twice a no-op. A replica that dies leaves its sessions to
//! expire; any replica's timer pass then requeues their leases.
//!
//! Replicas hear each other through `bus.rs` (Redis pub/sub over RESP3).
//! When that connection drops, events may have been missed: the replica
//! resubscribes, then tells its listener to resynchronise every watcher and
//! queue from the store.
//!
//! # Files
//!
//! Each file owns one phase of the engine; all of them add methods to
//! [`Inner`], the state every phase shares, which lives here.
//!
//! - `mod.rs`: the shared types (a ticket as read, a transition's step, the
//!   scripts, the engine and its state) and the helpers every phase uses.
//! - `open.rs`: checking a `--store` URL and TLS files, connecting, and the
//!   background tasks (event subscription, liveness heartbeat).
//! - `engine.rs`: the [`Engine`](super::Engine) face, one delegation per
//!   method.
//! - `codec.rs`: what turns a ticket into Redis writes: records, chunks,
//!   `commit.lua`'s operation list, index diffs, FIFO positions.
//! - `commits.rs`: group commit: the commits of one queue waiting at one
//!   moment go as one `commit.lua` call.
//! - `store.rs`: round trips: running commands (reloading scripts Redis
//!   forgot), error mapping, reads, the optimistic `transact` loop, deletes.
//! - `submit.rs`: submit with idempotency-key claims (taking over a dead
//!   gateway's claim, liveness keys), and cancel; `batch.rs`: a batch of
//!   submits, committed together per queue.
//! - `admin.rs`: an operator's retry and delete of a finished ticket.
//! - `claim.rs`: leasing (register sessions, pop, commit leases, check the
//!   sessions live, settle), the `InDoubt` guard, and putting back
//!   tickets whose claimer died.
//! - `sessions.rs`: worker sessions and what they report under a lease:
//!   progress, results, releases, losing a gone session's leases.
//! - `timers.rs`: the timer pass: expired sessions, due timers, stale
//!   claims, ready pokes.
//! - `queries.rs`: reads that write nothing: get, list, position in line,
//!   queue depths, connected workers.
//! - `queues.rs`, `workers.rs`: what an operator reads and sets of queues
//!   (counts, pause, limits) and of worker sessions on every replica.
//! - `windows.rs`: queue statistics, counted per replica and added up in
//!   one ring hash per queue (`windows.lua`).
//! - `caches.rs`: the ticket → queue locator cache.
//! - `connection.rs`, `layout.rs`, `bus.rs`, `*.lua`: one connection type
//!   for a server or a cluster; key layout and index placement; the event
//!   bus between replicas; the scripts.

mod admin;
mod batch;
mod bus;
mod caches;
mod callbacks;
mod claim;
mod codec;
mod commits;
mod connection;
mod engine;
mod layout;
mod open;
mod queries;
mod queues;
mod schedules;
mod sessions;
mod store;
mod submit;
mod timers;
mod windows;
mod workers;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::SystemTime;

use tokio::time::Instant;

use redis::Script;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use self::open::{ConnectError, RedisTls, check_url, connect};

use self::caches::LocatorCache;
use self::codec::Ops;
use self::connection::Conn;
use self::layout::Keys;
use super::{Before, EngineConfig, EngineListener, Revocation};
use crate::domain::ticket::{EventKind, Payload};
use crate::domain::{LeaseId, QueueName, SessionId, Ticket, TicketState};

/// Shards of the held-lease map and of the locator cache: reports on
/// different leases rarely wait for one another.
const LEASE_SHARDS: usize = 16;

/// A ticket as read from Redis, with the revision the read saw.
#[derive(Debug, Clone)]
struct Stored {
    ticket: Ticket,
    /// What a commit of a change to `ticket` must find to apply.
    revision: u64,
}

/// A lease this replica handed out, kept so a worker's reports skip a read
/// and run in the order the worker sent them.
struct Held {
    /// The ticket's queue (its keys live there).
    queue: QueueName,
    /// The session holding the lease: forgotten with it.
    session_id: SessionId,
    /// The ticket as this replica last wrote it: a hint that saves a read.
    latest: Option<Stored>,
    /// Resolves when the previous report on this lease is done.
    tail: Option<oneshot::Receiver<()>>,
}

/// What a transition does to the stored ticket.
enum Step<R> {
    /// Nothing to write (the result and the ticket as read stand).
    Keep(R),
    /// Write the ticket, publishing these events (snapshots in seq order)
    /// and this revocation.
    Write {
        result: R,
        events: Vec<(EventKind, Ticket, Option<Payload>)>,
        revoke: Option<Revocation>,
        /// Operations to commit along (beyond the index changes).
        extra: Ops,
    },
    /// Delete the ticket (retention, or an operator's delete), leaving a
    /// tombstone that says it was deleted `at`.
    Delete { result: R, at: SystemTime },
}

impl<R> Step<R> {
    /// A plain write: no revocation, no extra operations.
    fn write(result: R, events: Vec<(EventKind, Ticket, Option<Payload>)>) -> Self {
        Self::Write {
            result,
            events,
            revoke: None,
            extra: Ops::default(),
        }
    }
}

/// The lua scripts, loaded once per Redis (and again after a Redis restart
/// forgets them).
struct Scripts {
    /// Every transition (`commit.lua`).
    commit: Script,
    /// Pops ready tickets (`claim.lua`).
    claim: Script,
    /// Deletes an idempotency key only while it names the given ticket.
    unlink_if: Script,
    /// Adds a replica's counts to a queue's statistics ring (`windows.lua`).
    windows: Script,
    /// Revision-fenced schedule writes (`schedule.lua`).
    schedule: Script,
    /// Claims a queue's due callbacks (see `callbacks.rs`).
    claim_callbacks: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            commit: Script::new(include_str!("commit.lua")),
            claim: Script::new(include_str!("claim.lua")),
            windows: Script::new(include_str!("windows.lua")),
            schedule: Script::new(include_str!("schedule.lua")),
            // KEYS[1] a queue's timers; ARGV: the lowest and highest score
            // due, how many at most, and the score that holds a claim.
            claim_callbacks: Script::new(
                "local due = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3])) \
                 for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[4], m) end return due",
            ),
            // An idempotency key holds `ticket-id owner` (older ones just
            // the id): deleted only while it still names this ticket.
            unlink_if: Script::new(
                "local v = redis.call('GET', KEYS[1]) \
                 if v and (v == ARGV[1] or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then \
                 return redis.call('DEL', KEYS[1]) end return 0",
            ),
        }
    }

    fn all(&self) -> [&Script; 6] {
        [
            &self.commit,
            &self.claim,
            &self.unlink_if,
            &self.windows,
            &self.schedule,
            &self.claim_callbacks,
        ]
    }
}

/// See the module docs.
pub struct RedisEngine {
    inner: Arc<Inner>,
    subscriber: JoinHandle<()>,
    /// Keeps this gateway's liveness key fresh (see [`Inner::instance`]).
    heartbeat: JoinHandle<()>,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.subscriber.abort();
        self.heartbeat.abort();
    }
}

/// The engine's state, shared by every phase and (weakly) by the
/// background tasks `open.rs` spawns.
struct Inner {
    /// The engine's own `Arc`, for the tasks it spawns (see `commits.rs`).
    me: Weak<Inner>,
    /// Single-ticket commits waiting for their queue's next batch (see
    /// `commits.rs`).
    commits: Mutex<commits::Waiters>,
    /// Test hook: the next claim fails after settling its first lease.
    #[cfg(test)]
    fail_settle: std::sync::atomic::AtomicBool,
    /// This gateway's id in Redis: idempotency claims name it, and its
    /// liveness key (refreshed every second) says it is still there.
    instance: String,
    /// Limits and retention, the same for every engine.
    config: EngineConfig,
    /// Redis's URL without its password: for logs only.
    url: String,
    /// When (ms since the Unix epoch) a store error was last logged in
    /// detail: at most one a second.
    unavailable_logged: AtomicU64,
    /// The error id of the failure last logged in detail.
    unavailable_id: std::sync::atomic::AtomicU32,
    /// Commands and pipelines (the event subscription has its own).
    conn: Conn,
    /// Where everything lives (see `layout.rs`).
    keys: Keys,
    /// The event channel every commit publishes on.
    channel: String,
    /// The scripts, by hash (loaded again when Redis forgets them).
    scripts: Scripts,
    /// Who hears of changes, ready queues and revocations (set once).
    listener: OnceLock<Arc<dyn EngineListener>>,
    /// Picks a lease's shard of `leases`.
    hasher: RandomState,
    /// The leases handed out here, sharded (see [`Held`]).
    leases: Box<[Mutex<HashMap<LeaseId, Held>>]>,
    /// The last FIFO position given out (see `place_in_line`).
    enqueue_clock: AtomicU64,
    /// The queues of the sessions connected here.
    session_workers: Mutex<HashMap<SessionId, Arc<[QueueName]>>>,
    /// Recent answers of `connected_workers`, per queue.
    worker_counts: Mutex<HashMap<QueueName, (Instant, usize)>>,
    /// What holds queues back, as lately read, for waiting reasons (see
    /// `FLOW_TTL`).
    flows: Mutex<HashMap<QueueName, (Instant, crate::engine::QueueFlow)>>,
    /// Queue statistics counted here and not yet added to Redis (see
    /// `windows.rs`).
    windows: Mutex<HashMap<QueueName, crate::engine::window::Window>>,
    /// When the timer pass last flushed `windows`.
    last_window_flush: Mutex<Instant>,
    /// Where recently seen tickets live (a ticket never changes queue).
    located: LocatorCache,
    /// Queues this replica has registered in the queue set.
    queues_known: RwLock<HashSet<QueueName>>,
    /// (session, queue) pairs registered for lease cleanup.
    session_queues: Mutex<HashSet<(SessionId, QueueName)>>,
    /// When the timer pass last re-announced queues with ready work.
    last_poke: Mutex<Instant>,
    /// When the timer pass last re-announced limited queues.
    last_limited_poke: Mutex<Instant>,
    /// The queues with limits, as the last timer pass saw them: a ticket
    /// of one leaving RUNNING frees a slot, announced at once.
    limited: RwLock<HashSet<QueueName>>,
}

/// Locks `mutex`, even if a panic while it was held poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// The shard of `leases` that holds `lease_id`.
    fn lease_shard(&self, lease_id: &LeaseId) -> &Mutex<HashMap<LeaseId, Held>> {
        &self.leases[(self.hasher.hash_one(lease_id) as usize) % LEASE_SHARDS]
    }

    /// Counts a committed state change in the queue's statistics and
    /// reports it to the listener (for metrics).
    fn observe(&self, before: &Ticket, after: &Ticket) {
        if before.state == after.state {
            return;
        }
        let (before, now) = (Before::of(before), SystemTime::now());
        self.count_sample(&before, after, now);
        if let Some(listener) = self.listener.get() {
            listener.transitioned(before, after, now);
        }
        if before.state == Some(TicketState::Running)
            && self
                .limited
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&after.queue)
        {
            self.notify_ready(&after.queue);
        }
    }

    /// Tells the listener `queue` has ready work.
    fn notify_ready(&self, queue: &QueueName) {
        if let Some(listener) = self.listener.get() {
            listener.queue_ready(queue);
        }
    }
}
