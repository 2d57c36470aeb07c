//! The Redis engine: many gateway replicas sharing one Redis.
//!
//! Every transition is computed in Rust by the same state machine as the
//! other engines (`transition.rs`) and written by one Lua script,
//! `commit.lua`, that applies it only if the ticket's revision is still the
//! one read (optimistic concurrency): two replicas never both lease a
//! ticket, and a result is recorded only under the current lease. The script
//! also moves the ticket's index entries (ready set, timers, leases, counts)
//! and publishes the change on the event channel, atomically with the write.
//!
//! Leasing pops ready tickets with `claim.lua` (so replicas do not race for
//! the same head of the queue), then commits the leases in one pipeline.
//! Timers (backoff, deadlines, attempt budgets, retention) are scored sorted
//! sets that every replica's timer pass fires; the revision check makes a
//! timer fired twice a no-op. A replica that dies leaves its sessions to
//! expire; any replica's timer pass then requeues their leases.
//!
//! Replicas hear each other through `bus.rs` (Redis pub/sub over RESP3).
//! When that connection drops, events may have been missed: the replica
//! resubscribes, then tells its listener to resynchronise every watcher and
//! queue from the store.

mod bus;
mod connection;
mod layout;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use redis::{
    ClientTlsConfig, Cmd, ErrorKind, RedisError, Script, ServerErrorKind, TlsCertificates, Value,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use self::connection::{Conn, Target};
use self::layout::{Keys, Placement, TimerKind, slot};
use super::{
    Applied, Before, Claimed, Completion, Engine, EngineConfig, EngineError, EngineListener,
    ListFilter, ListPage, ProgressReport, QueueDepth, ReleaseReason, Revocation, RevokeReason,
    SessionInfo, Submitted, idempotency_scope, record, transition,
};
use crate::domain::ticket::{EventKind, Payload};
use crate::domain::{
    Chunk, LeaseId, NewTicket, Outcome, QueueName, SessionId, Ticket, TicketId, TicketState,
};

/// How long a submit with an idempotency key may hold the key before its
/// ticket is stored (a replica that dies in between frees it after this).
const IDEMPOTENCY_CLAIM: Duration = Duration::from_secs(60);

/// How long a popped ticket may wait for its lease commit before the timer
/// pass puts it back (its claimer died, or lost Redis mid-claim). Putting
/// back a ticket whose lease is about to land is harmless: the next claimer
/// finds it RUNNING and drops it from the ready set.
const CLAIM_GRACE: Duration = Duration::from_secs(2);

/// How often the timer pass re-announces queues with ready work, in case a
/// ready message was missed.
const READY_POKE: Duration = Duration::from_secs(1);

/// How long a count of a queue's workers is reused.
const WORKER_COUNT_TTL: Duration = Duration::from_millis(500);

/// Attempts at a transition that keeps losing the revision race.
const MAX_RETRIES: usize = 64;

/// Due timers fired per queue per pass.
const TIMER_BATCH: isize = 512;

/// Tickets read per round while listing.
const LIST_BATCH: usize = 256;

/// Tickets examined at most per list call (a page may come back short, with
/// a cursor to continue).
const LIST_SCAN_LIMIT: usize = 10_000;

const LEASE_SHARDS: usize = 16;

/// Why the Redis engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a Redis URL.
    #[error("--store {url}: not a valid Redis URL ({message})")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Redis did not answer.
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        source: RedisError,
    },
    /// The TLS files could not be used.
    #[error("--store {url}: {message}")]
    Tls {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// Redis would evict keys under memory pressure.
    #[error(
        "Redis at {url} has maxmemory-policy {policy}: it may evict keys and silently lose tickets; set `maxmemory-policy noeviction` (redis.conf or CONFIG SET) and restart the gateway"
    )]
    Evicting {
        /// The URL.
        url: String,
        /// The policy found.
        policy: String,
    },
}

/// A ticket as read from Redis, with the revision the read saw.
#[derive(Debug, Clone)]
struct Stored {
    ticket: Ticket,
    revision: u64,
}

/// A lease this replica handed out, kept so a worker's reports skip a read
/// and run in the order the worker sent them.
struct Held {
    queue: QueueName,
    session_id: SessionId,
    latest: Option<Stored>,
    /// Resolves when the previous report on this lease is done.
    tail: Option<oneshot::Receiver<()>>,
}

/// What a transition does to the stored ticket.
enum Step<R> {
    /// Nothing to write.
    Keep(R),
    /// Write the ticket, publishing these events (snapshots in seq order)
    /// and this revocation.
    Write {
        result: R,
        events: Vec<(EventKind, Ticket, Option<Payload>)>,
        revoke: Option<Revocation>,
        extra: Ops,
    },
    /// Delete the ticket (retention).
    Delete(R),
}

impl<R> Step<R> {
    fn write(result: R, events: Vec<(EventKind, Ticket, Option<Payload>)>) -> Self {
        Self::Write {
            result,
            events,
            revoke: None,
            extra: Ops::default(),
        }
    }
}

/// The operation list of one commit (see `commit.lua`).
#[derive(Default)]
struct Ops(Vec<Vec<u8>>);

impl Ops {
    fn push(&mut self, name: &str, args: &[&[u8]]) {
        self.0.push(name.as_bytes().to_vec());
        self.0.extend(args.iter().map(|a| a.to_vec()));
    }

    fn slot(slot: usize) -> Vec<u8> {
        slot.to_string().into_bytes()
    }

    fn zadd(&mut self, slot: usize, score: u64, member: &str) {
        self.push(
            "zadd",
            &[
                &Self::slot(slot),
                score.to_string().as_bytes(),
                member.as_bytes(),
            ],
        );
    }

    fn zrem(&mut self, slot: usize, member: &str) {
        self.push("zrem", &[&Self::slot(slot), member.as_bytes()]);
    }

    fn incr(&mut self, slot: usize, delta: i64) {
        self.push("incr", &[&Self::slot(slot), delta.to_string().as_bytes()]);
    }

    fn max(&mut self, slot: usize, limit: usize) {
        self.push("max", &[&Self::slot(slot), limit.to_string().as_bytes()]);
    }
}

/// The lua scripts, loaded once per Redis (and again after a Redis restart
/// forgets them).
struct Scripts {
    commit: Script,
    claim: Script,
    unlink_if: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            commit: Script::new(include_str!("commit.lua")),
            claim: Script::new(include_str!("claim.lua")),
            // An idempotency key holds `ticket-id owner` (older ones just
            // the id): deleted only while it still names this ticket.
            unlink_if: Script::new(
                "local v = redis.call('GET', KEYS[1]) \
                 if v and (v == ARGV[1] or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then \
                 return redis.call('DEL', KEYS[1]) end return 0",
            ),
        }
    }

    fn all(&self) -> [&Script; 3] {
        [&self.commit, &self.claim, &self.unlink_if]
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

/// How long a gateway's liveness key outlives its last refresh: a claim
/// on an idempotency key by a gateway whose key is gone is taken over.
const INSTANCE_TTL: Duration = Duration::from_secs(3);

/// How often a gateway refreshes its liveness key.
const INSTANCE_REFRESH: Duration = Duration::from_secs(1);

/// Takes over an idempotency claim only if it still holds what the caller
/// saw: `KEYS[1]` claim, `ARGV[1]` old value, `ARGV[2]` new value,
/// `ARGV[3]` expiry in ms.
const TAKE_OVER_CLAIM: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Leases a claim committed in Redis that no session has been handed yet.
/// Dropped while it still holds some (an early return, an error, a panic),
/// it gives them all back in the background, so that no ticket can be left
/// RUNNING under a lease nobody holds; a claim that hands its leases out
/// calls [`InDoubt::settled`].
struct InDoubt {
    inner: Arc<Inner>,
    queue: QueueName,
    leases: Vec<(TicketId, LeaseId)>,
}

impl InDoubt {
    /// `lease_id` needs no giving back (never applied, or given back).
    fn forget(&mut self, lease_id: LeaseId) {
        self.leases.retain(|(_, lease)| *lease != lease_id);
    }

    /// Every lease left was handed to its session.
    fn settled(mut self) {
        self.leases.clear();
    }
}

impl Drop for InDoubt {
    fn drop(&mut self) {
        self.inner
            .release_in_doubt(self.queue.clone(), std::mem::take(&mut self.leases));
    }
}

/// What a submit found under its idempotency key.
enum KeyHolder {
    /// The ticket the key names.
    Ticket(Box<Submitted>),
    /// A claim whose gateway died before storing its ticket: its value,
    /// for a takeover.
    Orphaned(String),
}

struct Inner {
    /// Test hook: the next claim fails after settling its first lease.
    #[cfg(test)]
    fail_settle: std::sync::atomic::AtomicBool,
    /// This gateway's id in Redis: idempotency claims name it, and its
    /// liveness key (refreshed every second) says it is still there.
    instance: String,
    config: EngineConfig,
    /// Redis's URL without its password: for logs only.
    url: String,
    /// When (ms since the Unix epoch) a store error was last logged in
    /// detail: at most one a second.
    unavailable_logged: AtomicU64,
    conn: Conn,
    keys: Keys,
    channel: String,
    scripts: Scripts,
    listener: OnceLock<Arc<dyn EngineListener>>,
    hasher: RandomState,
    leases: Box<[Mutex<HashMap<LeaseId, Held>>]>,
    /// The last FIFO position given out (see `place_in_line`).
    enqueue_clock: AtomicU64,
    /// The queues of the sessions connected here.
    session_workers: Mutex<HashMap<SessionId, Arc<[QueueName]>>>,
    /// Recent answers of `connected_workers`, per queue.
    worker_counts: Mutex<HashMap<QueueName, (Instant, usize)>>,
    /// Where recently seen tickets live (a ticket never changes queue).
    located: LocatorCache,
    /// Queues this replica has registered in the queue set.
    queues_known: RwLock<HashSet<QueueName>>,
    /// (session, queue) pairs registered for lease cleanup.
    session_queues: Mutex<HashSet<(SessionId, QueueName)>>,
    last_poke: Mutex<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_no_script(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Checks a `--store` Redis URL without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    Target::parse(url).map(drop)
}

/// Certificates for `rediss://`: a CA for a Redis whose certificate the
/// system roots do not cover, and a client certificate for Redis servers
/// that require one (`tls-auth-clients yes`). PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// Trust this CA instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Present this certificate…
    pub client_cert: Option<PathBuf>,
    /// …with this key.
    pub client_key: Option<PathBuf>,
}

impl RedisTls {
    fn certificates(&self) -> Result<Option<TlsCertificates>, String> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => return Err("give both --redis-cert and --redis-key, or neither".into()),
        };
        let root_cert = self.ca.as_ref().map(read).transpose()?;
        Ok(
            (client_tls.is_some() || root_cert.is_some()).then_some(TlsCertificates {
                client_tls,
                root_cert,
            }),
        )
    }
}

/// Connects to Redis at `url` (a server, or a cluster's seed nodes), checks
/// it will not evict our keys, and subscribes to the event channel. Keys
/// are prefixed with `prefix`.
pub async fn connect(
    url: &str,
    prefix: &str,
    tls: &RedisTls,
    config: EngineConfig,
) -> Result<RedisEngine, ConnectError> {
    // One crypto provider for every TLS connection in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The URL as shown in errors and logs: never with its password.
    let shown = crate::config::hide_password(url);
    let certificates = tls.certificates().map_err(|message| ConnectError::Tls {
        url: shown.clone(),
        message,
    })?;
    let unreachable = |source| ConnectError::Unreachable {
        url: shown.clone(),
        source,
    };
    let target = Target::parse(url).map_err(|message| ConnectError::Url {
        url: shown.clone(),
        message: message.replace(url, &shown),
    })?;
    let conn = Conn::open(&target, certificates.as_ref(), None)
        .await
        .map_err(unreachable)?;
    let policies = connection::eviction_policies(&conn)
        .await
        .map_err(unreachable)?;
    if let Some(policy) = policies.iter().find(|p| *p != "noeviction") {
        return Err(ConnectError::Evicting {
            url: shown.clone(),
            policy: policy.clone(),
        });
    }
    let scripts = Scripts::new();
    for script in scripts.all() {
        script
            .load_async(&mut conn.clone())
            .await
            .map_err(unreachable)?;
    }
    let keys = Keys::new(prefix);
    let channel = keys.channel();
    let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut subscriber = Conn::open(&target, certificates.as_ref(), Some(push_tx))
        .await
        .map_err(unreachable)?;
    subscriber.subscribe(&channel).await.map_err(unreachable)?;
    let inner = Arc::new(Inner {
        #[cfg(test)]
        fail_settle: Default::default(),
        instance: uuid::Uuid::new_v4().simple().to_string(),
        config,
        url: shown.clone(),
        unavailable_logged: AtomicU64::new(0),
        conn,
        keys,
        channel: channel.clone(),
        scripts,
        listener: OnceLock::new(),
        hasher: RandomState::new(),
        leases: (0..LEASE_SHARDS).map(|_| Mutex::default()).collect(),
        located: LocatorCache::default(),
        worker_counts: Mutex::default(),
        session_workers: Mutex::default(),
        enqueue_clock: AtomicU64::new(0),
        queues_known: RwLock::default(),
        session_queues: Mutex::default(),
        last_poke: Mutex::new(Instant::now()),
    });
    let weak = Arc::downgrade(&inner);
    let subscriber = tokio::spawn(async move {
        while let Some(push) = push_rx.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            match bus::classify(&push.kind, push.data) {
                Some(bus::Heard::Message(payload)) => {
                    if let Some(listener) = inner.listener.get() {
                        bus::deliver(listener.as_ref(), Bytes::from(payload));
                    }
                }
                Some(bus::Heard::Disconnected) => {
                    tracing::warn!(url = %inner.url, "lost the Redis event subscription; resubscribing");
                    let mut delay = Duration::from_millis(50);
                    while let Err(error) = subscriber.subscribe(&channel).await {
                        tracing::warn!(%error, "Redis resubscribe failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    tracing::info!("Redis event subscription restored; resynchronising watchers");
                    if let Some(listener) = inner.listener.get() {
                        listener.resync();
                    }
                }
                None => {}
            }
        }
    });
    let heartbeat = {
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INSTANCE_REFRESH);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(error) = inner.refresh_liveness().await {
                    tracing::debug!(%error, "could not refresh the gateway's liveness key");
                }
            }
        })
    };
    // The liveness key exists before the first claim names it.
    let _ = inner.refresh_liveness().await;
    Ok(RedisEngine {
        inner,
        subscriber,
        heartbeat,
    })
}

fn chunk_bytes(chunk: &Chunk) -> Vec<u8> {
    let mut bytes = chunk.seq.to_be_bytes().to_vec();
    chunk
        .output
        .encode(&mut bytes)
        .expect("a Vec grows as needed");
    bytes
}

fn chunk_from(bytes: &[u8]) -> Option<Chunk> {
    let (seq, output) = bytes.split_at_checked(8)?;
    Some(Chunk {
        seq: u64::from_be_bytes(seq.try_into().ok()?),
        output: Payload::decode(output).ok()?,
    })
}

impl Inner {
    /// A Redis failure as callers see it: its kind and what to do, no
    /// internals (the detail, with the URL's password hidden, is logged at
    /// most once a second).
    fn unavailable(&self, error: RedisError) -> EngineError {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.unavailable_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .unavailable_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(url = %self.url, error = %crate::config::hide_password(&error.to_string()), "Redis call failed");
        }
        let kind = if error.is_connection_refusal() {
            "refused the connection"
        } else if error.is_timeout() {
            "did not answer in time"
        } else if error.is_io_error() || error.is_connection_dropped() {
            "connection lost"
        } else {
            "refused the command"
        };
        EngineError::Unavailable(format!(
            "the store (Redis) {kind}; retry shortly (the gateway's log has the detail)"
        ))
    }

    fn corrupt(&self, id: TicketId, error: impl std::fmt::Display) -> EngineError {
        tracing::error!(url = %self.url, ticket_id = %id, %error, "unreadable ticket record in Redis");
        EngineError::Unavailable(format!(
            "ticket {id} in the store is unreadable; the gateway's log has the detail"
        ))
    }

    /// Runs a command or pipeline, loading the scripts again if Redis lost
    /// them (a restart): every script call in it failed, so a retry is safe.
    async fn run<T: redis::FromRedisValue>(
        &self,
        query: impl Fn() -> QueryKind,
    ) -> Result<T, EngineError> {
        let mut conn = self.conn.clone();
        for _ in 0..2 {
            let result = match query() {
                QueryKind::Cmd(cmd) => cmd.query_async(&mut conn).await,
                // Redis refuses an empty pipeline; its answer is empty.
                QueryKind::Pipe(pipe) if pipe.is_empty() => {
                    T::from_redis_value(Value::Array(Vec::new())).map_err(RedisError::from)
                }
                QueryKind::Pipe(pipe) => pipe.query_async(&mut conn).await,
            };
            match result {
                Err(error) if is_no_script(&error) => self.reload_scripts().await?,
                other => return other.map_err(|e| self.unavailable(e)),
            }
        }
        Err(self.forgetful())
    }

    /// Runs independent commands of any slots (see `Conn::batch`).
    async fn batch(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, EngineError> {
        for _ in 0..2 {
            match self.conn.batch(&cmds).await {
                Err(error) if is_no_script(&error) => self.reload_scripts().await?,
                other => return other.map_err(|e| self.unavailable(e)),
            }
        }
        Err(self.forgetful())
    }

    /// [`Self::batch`] with every reply read as `T`.
    async fn batch_typed<T: redis::FromRedisValue>(
        &self,
        cmds: Vec<Cmd>,
    ) -> Result<Vec<T>, EngineError> {
        self.batch(cmds)
            .await?
            .into_iter()
            .map(|value| {
                redis::from_redis_value(value).map_err(|e| self.unavailable(RedisError::from(e)))
            })
            .collect()
    }

    /// Loads the scripts again (a restarted Redis forgot them).
    async fn reload_scripts(&self) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        for script in self.scripts.all() {
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        Ok(())
    }

    fn forgetful(&self) -> EngineError {
        tracing::error!(url = %self.url, "Redis keeps forgetting the gateway's scripts");
        EngineError::Unavailable(
            "the store (Redis) keeps forgetting the gateway's scripts; retry shortly".into(),
        )
    }

    fn evalsha(&self, script: &Script, keys: &[String], args: Vec<Vec<u8>>) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args);
        cmd
    }

    fn lease_shard(&self, lease_id: &LeaseId) -> &Mutex<HashMap<LeaseId, Held>> {
        &self.leases[(self.hasher.hash_one(lease_id) as usize) % LEASE_SHARDS]
    }

    /// Every queue ever used (they register on first submit).
    async fn known_queues(&self) -> Result<Vec<QueueName>, EngineError> {
        let names: Vec<String> = self
            .run(|| {
                let mut cmd = redis::cmd("SMEMBERS");
                cmd.arg(self.keys.queues());
                QueryKind::Cmd(cmd)
            })
            .await?;
        Ok(names
            .iter()
            .filter_map(|name| QueueName::parse_scoped(name).ok())
            .collect())
    }

    /// Reports a committed state change to the listener (for metrics).
    fn observe(&self, before: &Ticket, after: &Ticket) {
        if before.state != after.state
            && let Some(listener) = self.listener.get()
        {
            listener.transitioned(Before::of(before), after, SystemTime::now());
        }
    }

    fn notify_ready(&self, queue: &QueueName) {
        if let Some(listener) = self.listener.get() {
            listener.queue_ready(queue);
        }
    }

    /// The queue of ticket `id`, or why there is no such ticket.
    async fn locate(&self, id: TicketId) -> Result<QueueName, EngineError> {
        if let Some(queue) = self.located.get(id) {
            return Ok(queue);
        }
        let (queue, tombstone): (Option<String>, Option<u64>) = self
            .run(|| {
                let mut pipe = redis::pipe();
                pipe.get(self.keys.locator(id)).get(self.keys.tombstone(id));
                QueryKind::Pipe(pipe)
            })
            .await?;
        match queue {
            Some(queue) => {
                let queue = QueueName::parse_scoped(&queue).map_err(|e| self.corrupt(id, e))?;
                self.located.insert(id, &queue);
                Ok(queue)
            }
            None => Err(transition::missing(
                id,
                tombstone.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            )),
        }
    }

    /// The error for a ticket whose record is gone.
    async fn gone(&self, id: TicketId) -> EngineError {
        let tombstone: Result<Option<u64>, _> = self
            .run(|| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.keys.tombstone(id));
                QueryKind::Cmd(cmd)
            })
            .await;
        match tombstone {
            Ok(at) => transition::missing(
                id,
                at.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            ),
            Err(error) => error,
        }
    }

    fn decode(
        &self,
        id: TicketId,
        fields: (Option<u64>, Option<Bytes>, Option<Bytes>),
    ) -> Result<Option<Stored>, EngineError> {
        let (Some(revision), Some(record)) = (fields.0, fields.1) else {
            return Ok(None);
        };
        let payload = match fields.2 {
            Some(bytes) => Payload::decode(bytes).map_err(|e| self.corrupt(id, e))?,
            None => Payload::default(),
        };
        let ticket = record::decode(id, &record, payload).map_err(|e| self.corrupt(id, e))?;
        Ok(Some(Stored { ticket, revision }))
    }

    async fn load(&self, queue: &QueueName, id: TicketId) -> Result<Option<Stored>, EngineError> {
        let fields = self
            .run(|| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.keys.ticket(queue, id)).arg(&["v", "d", "p"]);
                QueryKind::Cmd(cmd)
            })
            .await?;
        self.decode(id, fields)
    }

    /// Gives a ticket that becomes ready its FIFO position: the time it
    /// joins the line (unique and increasing per replica; across replicas,
    /// as close to FIFO as their clocks agree).
    fn place_in_line(&self, before: Option<&Ticket>, after: &mut Ticket) {
        let retention = self.config.result_retention;
        let was_ready = before.is_some_and(|t| Placement::of(t, retention).ready);
        if !was_ready && Placement::of(after, retention).ready {
            let now = u64::try_from(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            )
            .unwrap_or(u64::MAX);
            let previous = self
                .enqueue_clock
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                    Some(now.max(last + 1))
                })
                .unwrap_or(now);
            after.enqueue_seq = now.max(previous + 1);
        }
    }

    /// Adds the index changes that take a ticket from `before` to `after`
    /// (`None`: it does not exist) and the ready announcement.
    fn diff(&self, before: Option<&Ticket>, after: Option<&Ticket>, ops: &mut Ops) {
        let retention = self.config.result_retention;
        let old = before
            .map(|t| Placement::of(t, retention))
            .unwrap_or_default();
        let new = after
            .map(|t| Placement::of(t, retention))
            .unwrap_or_default();
        match (before, after) {
            (Some(b), _) if old.ready && !new.ready => {
                ops.zrem(
                    slot::READY,
                    &layout::ready_member(b.priority, b.enqueue_seq, b.id),
                );
            }
            (_, Some(a)) if new.ready && !old.ready => {
                ops.zadd(
                    slot::READY,
                    0,
                    &layout::ready_member(a.priority, a.enqueue_seq, a.id),
                );
                ops.push("pub", &[self.channel.as_bytes(), &bus::ready(&a.queue)]);
            }
            _ => {}
        }
        if old.pending != new.pending {
            ops.incr(slot::PENDING, if new.pending { 1 } else { -1 });
        }
        for (member, _) in &old.timers {
            if !new.timers.iter().any(|(m, _)| m == member) {
                ops.zrem(slot::TIMERS, member);
            }
        }
        for timer in &new.timers {
            if !old.timers.contains(timer) {
                ops.zadd(slot::TIMERS, timer.1, &timer.0);
            }
        }
        if old.leased != new.leased {
            if let Some(member) = &old.leased {
                ops.zrem(slot::LEASED, member);
            }
            if let Some(member) = &new.leased {
                ops.zadd(slot::LEASED, 0, member);
            }
        }
        if let (Some(b), Some(a)) = (before, after)
            && !b.state.is_terminal()
            && a.state.is_terminal()
        {
            // Finished: its request body is not kept (`Ticket::forget_request`).
            ops.push("field", &[b"p", b""]);
        }
        match (before, after) {
            (None, Some(a)) => ops.zadd(slot::IDS, 0, &a.id.to_string()),
            (Some(b), None) => {
                ops.zrem(slot::IDS, &b.id.to_string());
                ops.push("del", &[&Ops::slot(slot::CHUNKS)]);
            }
            _ => {}
        }
    }

    /// The commit call for a transition from `before` (at `revision`) to
    /// `after`; returns the command and the new record.
    fn commit_cmd(
        &self,
        before: &Stored,
        after: &mut Ticket,
        events: &[(EventKind, Ticket, Option<Payload>)],
        revoke: Option<&Revocation>,
        mut ops: Ops,
    ) -> Cmd {
        self.place_in_line(Some(&before.ticket), after);
        if after.state.is_terminal() {
            after.forget_request();
        }
        let after = &*after;
        let record = Bytes::from(record::encode(after));
        self.diff(Some(&before.ticket), Some(after), &mut ops);
        for (kind, snapshot, output) in events {
            let bytes = if snapshot.seq == after.seq {
                record.clone()
            } else {
                Bytes::from(record::encode(snapshot))
            };
            ops.push(
                "pub",
                &[
                    self.channel.as_bytes(),
                    &bus::change(after.id, *kind, bytes, output.clone()),
                ],
            );
        }
        if let Some(revocation) = revoke {
            ops.push("pub", &[self.channel.as_bytes(), &bus::revoke(revocation)]);
        }
        let mut args = vec![before.revision.to_string().into_bytes(), record.to_vec()];
        args.extend(ops.0);
        self.evalsha(
            &self.scripts.commit,
            &self.keys.commit_keys(&after.queue, after.id),
            args,
        )
    }

    /// Applies `step` to ticket `id` of `queue` with optimistic concurrency:
    /// read (or take `hint`), compute, commit if the revision is unchanged,
    /// else read again. Returns the result and the ticket as written.
    async fn transact<R>(
        &self,
        queue: &QueueName,
        id: TicketId,
        mut hint: Option<Stored>,
        mut step: impl FnMut(&mut Ticket) -> Result<Step<R>, EngineError>,
    ) -> Result<(R, Option<Stored>), EngineError> {
        for _ in 0..MAX_RETRIES {
            let stored = match hint.take() {
                Some(stored) => stored,
                None => match self.load(queue, id).await? {
                    Some(stored) => stored,
                    None => return Err(self.gone(id).await),
                },
            };
            let mut after = stored.ticket.clone();
            match step(&mut after)? {
                Step::Keep(result) => return Ok((result, Some(stored))),
                Step::Delete(result) => {
                    if self.delete(&stored).await? {
                        return Ok((result, None));
                    }
                }
                Step::Write {
                    result,
                    events,
                    revoke,
                    extra,
                } => {
                    let cmd = self.commit_cmd(&stored, &mut after, &events, revoke.as_ref(), extra);
                    let reply: Vec<i64> = self.run(|| QueryKind::Cmd(cmd.clone())).await?;
                    match reply.as_slice() {
                        [1, revision] => {
                            let revision = *revision as u64;
                            self.observe(&stored.ticket, &after);
                            return Ok((
                                result,
                                Some(Stored {
                                    ticket: after,
                                    revision,
                                }),
                            ));
                        }
                        [-3] => return Err(transition::too_many_chunks(id)),
                        _ => {}
                    }
                }
            }
        }
        Err(EngineError::Unavailable(format!(
            "ticket {id} changed {MAX_RETRIES} times while this replica tried to update it; retry"
        )))
    }

    /// Deletes a finished ticket, leaving a tombstone; false when it changed
    /// since it was read.
    async fn delete(&self, stored: &Stored) -> Result<bool, EngineError> {
        let ticket = &stored.ticket;
        let id = ticket.id;
        let now = SystemTime::now();
        let tombstone_ms = layout::millis(now);
        let ttl = self.config.tombstone_retention.as_millis().max(1) as u64;
        let mut ops = Ops::default();
        self.diff(Some(ticket), None, &mut ops);
        let mut args = vec![stored.revision.to_string().into_bytes(), Vec::new()];
        args.extend(ops.0);
        let commit = self.evalsha(
            &self.scripts.commit,
            &self.keys.commit_keys(&ticket.queue, id),
            args,
        );
        let _: () = self
            .run(|| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.keys.tombstone(id))
                    .arg(tombstone_ms)
                    .arg("PX")
                    .arg(ttl);
                QueryKind::Cmd(cmd)
            })
            .await?;
        let reply: Vec<i64> = self.run(|| QueryKind::Cmd(commit.clone())).await?;
        if reply.first() != Some(&1) {
            let _: () = self
                .run(|| {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(self.keys.tombstone(id));
                    QueryKind::Cmd(cmd)
                })
                .await?;
            return Ok(false);
        }
        let mut cleanup = vec![Cmd::del(self.keys.locator(id))];
        if let Some(key) = &ticket.idempotency_key {
            let key = idempotency_scope(ticket.tenant.as_deref(), key);
            cleanup.push(self.evalsha(
                &self.scripts.unlink_if,
                &[self.keys.idempotency(&key)],
                vec![id.to_string().into_bytes()],
            ));
        }
        self.batch(cleanup).await?;
        Ok(true)
    }

    async fn register_queue(&self, queue: &QueueName) -> Result<(), EngineError> {
        if self
            .queues_known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue)
        {
            return Ok(());
        }
        let _: () = self
            .run(|| {
                let mut cmd = redis::cmd("SADD");
                cmd.arg(self.keys.queues()).arg(queue.as_str());
                QueryKind::Cmd(cmd)
            })
            .await?;
        self.queues_known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.clone());
        Ok(())
    }

    /// Says this gateway is alive for another [`INSTANCE_TTL`].
    async fn refresh_liveness(&self) -> Result<(), EngineError> {
        let key = self.keys.instance(&self.instance);
        self.run(|| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(1)
                .arg("PX")
                .arg(INSTANCE_TTL.as_millis() as u64);
            QueryKind::Cmd(cmd)
        })
        .await
    }

    /// What holds an idempotency key (`key`, stored as `scoped`): the
    /// ticket it names, once stored; or, when the gateway that claimed it
    /// died before storing its ticket, the orphaned claim.
    async fn existing_for_key(
        &self,
        key: &str,
        scoped: &str,
        queue: &QueueName,
    ) -> Result<KeyHolder, EngineError> {
        let mut delay = Duration::from_millis(5);
        for attempt in 0..10 {
            let existing: Option<String> = self
                .run(|| {
                    let mut cmd = redis::cmd("GET");
                    cmd.arg(self.keys.idempotency(scoped));
                    QueryKind::Cmd(cmd)
                })
                .await?;
            let Some(claim) = existing else {
                // The claim expired or was given up: claim it afresh.
                return Ok(KeyHolder::Orphaned(String::new()));
            };
            // `ticket-id owner` (owner: the claiming gateway's instance).
            let (ticket, owner) = claim.split_once(' ').unwrap_or((claim.as_str(), ""));
            if let Ok(existing) = ticket.parse::<uuid::Uuid>() {
                let id = TicketId(existing);
                if let Ok(found) = self.locate(id).await
                    && let Some(stored) = self.load(&found, id).await?
                {
                    if found != *queue {
                        return Err(EngineError::IdempotencyConflict {
                            key: key.to_owned(),
                            existing: id,
                            queue: found,
                        });
                    }
                    return Ok(KeyHolder::Ticket(Box::new(Submitted {
                        ticket: stored.ticket,
                        created: false,
                        tickets_ahead: None,
                    })));
                }
            }
            // Not stored yet. After a few tries (the owner's commit is one
            // round trip away), ask whether the owner is still alive.
            if attempt >= 3 && !owner.is_empty() {
                let alive: bool = self
                    .run(|| {
                        let mut cmd = redis::cmd("EXISTS");
                        cmd.arg(self.keys.instance(owner));
                        QueryKind::Cmd(cmd)
                    })
                    .await?;
                if !alive {
                    return Ok(KeyHolder::Orphaned(claim));
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(EngineError::Unavailable(format!(
            "a submit with idempotency key {key:?} is still being stored; retry"
        )))
    }

    /// Claims idempotency key `scoped` for ticket `id`, taking over a claim
    /// whose gateway died; the ticket the key names if it has one.
    async fn claim_key(
        &self,
        original: &str,
        scoped: &str,
        id: TicketId,
        queue: &QueueName,
    ) -> Result<Option<Submitted>, EngineError> {
        let mine = format!("{id} {}", self.instance);
        for _ in 0..3 {
            let claimed: Option<String> = self
                .run(|| {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(self.keys.idempotency(scoped))
                        .arg(&mine)
                        .arg("NX")
                        .arg("PX")
                        .arg(IDEMPOTENCY_CLAIM.as_millis() as u64);
                    QueryKind::Cmd(cmd)
                })
                .await?;
            if claimed.is_some() {
                return Ok(None);
            }
            match self.existing_for_key(original, scoped, queue).await? {
                KeyHolder::Ticket(submitted) => return Ok(Some(*submitted)),
                KeyHolder::Orphaned(old) if old.is_empty() => continue,
                KeyHolder::Orphaned(old) => {
                    let took: i64 = self
                        .run(|| {
                            let mut cmd = redis::cmd("EVAL");
                            cmd.arg(TAKE_OVER_CLAIM)
                                .arg(1)
                                .arg(self.keys.idempotency(scoped))
                                .arg(&old)
                                .arg(&mine)
                                .arg(IDEMPOTENCY_CLAIM.as_millis() as u64);
                            QueryKind::Cmd(cmd)
                        })
                        .await?;
                    if took == 1 {
                        tracing::info!(key = %original, "took over an idempotency key claimed by a gateway that stopped before storing its ticket");
                        return Ok(None);
                    }
                }
            }
        }
        Err(EngineError::Unavailable(format!(
            "a submit with idempotency key {original:?} is still being stored; retry"
        )))
    }

    /// Gives lease `lease_id` of ticket `id` back without a result; true
    /// when the ticket is queued again. A lease that is not current is
    /// left alone.
    async fn give_back(
        &self,
        queue: &QueueName,
        id: TicketId,
        hint: Option<Stored>,
        lease_id: LeaseId,
        reason: ReleaseReason,
    ) -> Result<bool, EngineError> {
        let config = &self.config;
        let (requeued, _) = self
            .transact(queue, id, hint, |ticket| {
                if transition::lose_lease(ticket, lease_id, reason, config, SystemTime::now()) {
                    Ok(Step::write(
                        !ticket.state.is_terminal(),
                        vec![(EventKind::State, ticket.clone(), None)],
                    ))
                } else {
                    Ok(Step::Keep(false))
                }
            })
            .await?;
        Ok(requeued)
    }

    /// Loses every lease `session_id` holds (its worker is gone).
    async fn lose_session(
        &self,
        session_id: SessionId,
    ) -> Result<BTreeSet<QueueName>, EngineError> {
        let queues: Vec<String> = self
            .run(|| {
                let mut cmd = redis::cmd("SMEMBERS");
                cmd.arg(self.keys.session_queues(session_id));
                QueryKind::Cmd(cmd)
            })
            .await?;
        let mut ready = BTreeSet::new();
        for queue in queues
            .iter()
            .filter_map(|q| QueueName::parse_scoped(q).ok())
        {
            let (min, max) = layout::leased_range(session_id);
            let members: Vec<String> = self
                .run(|| {
                    let mut cmd = redis::cmd("ZRANGEBYLEX");
                    cmd.arg(self.keys.leased(&queue)).arg(&min).arg(&max);
                    QueryKind::Cmd(cmd)
                })
                .await?;
            for member in members {
                let Some(id) = member
                    .split_once(':')
                    .and_then(|(_, id)| id.parse::<uuid::Uuid>().ok())
                    .map(TicketId)
                else {
                    continue;
                };
                let config = &self.config;
                let outcome = self
                    .transact(&queue, id, None, |ticket| {
                        let Some(lease) =
                            ticket.lease.clone().filter(|l| l.session_id == session_id)
                        else {
                            return Ok(Step::Keep(()));
                        };
                        transition::lose_lease(
                            ticket,
                            lease.lease_id,
                            ReleaseReason::WorkerLost,
                            config,
                            SystemTime::now(),
                        );
                        Ok(Step::write(
                            (),
                            vec![(EventKind::State, ticket.clone(), None)],
                        ))
                    })
                    .await;
                match outcome {
                    Ok(_) => {
                        ready.insert(queue.clone());
                    }
                    Err(EngineError::NotFound(_) | EngineError::ResultExpired { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(ready)
    }

    fn forget_session(&self, session_id: SessionId) {
        for shard in self.leases.iter() {
            lock(shard).retain(|_, held| held.session_id != session_id);
        }
        lock(&self.session_queues).retain(|(s, _)| *s != session_id);
    }

    /// The queue and latest known state of a lease handed out here.
    fn held(&self, lease_id: LeaseId) -> Option<(QueueName, Option<Stored>)> {
        lock(self.lease_shard(&lease_id))
            .get(&lease_id)
            .map(|held| (held.queue.clone(), held.latest.clone()))
    }

    /// Serialises reports on one lease in call order: the returned receiver
    /// resolves once the previous report is done; drop the sender when done.
    fn sequence(&self, lease_id: LeaseId) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        let (done, next) = oneshot::channel();
        let previous = lock(self.lease_shard(&lease_id))
            .get_mut(&lease_id)
            .and_then(|held| held.tail.replace(next));
        (previous, done)
    }

    async fn record_progress(&self, report: ProgressReport) -> Result<(), EngineError> {
        let lease_id = report.lease_id;
        let max_output_bytes = self.config.max_output_bytes_per_ticket;
        let (queue, hint) = match self.held(lease_id) {
            Some(held) => held,
            None => (self.locate(report.ticket_id).await?, None),
        };
        let (_, stored) = self
            .transact(&queue, report.ticket_id, hint, |ticket| {
                transition::check_lease(ticket, lease_id)?;
                let now = SystemTime::now();
                let mut events = Vec::new();
                let mut extra = Ops::default();
                if let Some(progress) = &report.progress {
                    ticket.progress = Some(progress.clone());
                    ticket.touch(now);
                    events.push((EventKind::Progress, ticket.clone(), None));
                }
                if let Some(output) = &report.output {
                    transition::spend_output(ticket, output, max_output_bytes)?;
                    ticket.touch(now);
                    let chunk = Chunk {
                        seq: ticket.seq,
                        output: output.clone(),
                    };
                    extra.push(
                        "llenmax",
                        &[
                            &Ops::slot(slot::CHUNKS),
                            transition::MAX_CHUNKS_PER_TICKET.to_string().as_bytes(),
                        ],
                    );
                    extra.push("rpush", &[&Ops::slot(slot::CHUNKS), &chunk_bytes(&chunk)]);
                    events.push((EventKind::Output, ticket.clone(), Some(output.clone())));
                }
                if events.is_empty() {
                    return Ok(Step::Keep(()));
                }
                Ok(Step::Write {
                    result: (),
                    events,
                    revoke: None,
                    extra,
                })
            })
            .await?;
        if let Some(held) = lock(self.lease_shard(&lease_id)).get_mut(&lease_id) {
            held.latest = stored;
        }
        Ok(())
    }

    async fn record_completion(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> Result<Completion, EngineError> {
        let (queue, hint) = match self.held(lease_id) {
            Some(held) => held,
            None => (self.locate(ticket_id).await?, None),
        };
        let config = &self.config;
        let result = self
            .transact(
                &queue,
                ticket_id,
                hint,
                |ticket| match transition::complete(
                    ticket,
                    lease_id,
                    outcome.clone(),
                    config,
                    SystemTime::now(),
                )? {
                    transition::Reported::Duplicate => {
                        Ok(Step::Keep(Completion::Duplicate(ticket.clone())))
                    }
                    transition::Reported::Recorded => Ok(Step::write(
                        Completion::Recorded(ticket.clone()),
                        vec![(EventKind::State, ticket.clone(), None)],
                    )),
                },
            )
            .await;
        if !matches!(result, Err(EngineError::Unavailable(_))) {
            lock(self.lease_shard(&lease_id)).remove(&lease_id);
        }
        result.map(|(completion, _)| completion)
    }

    /// Fires one due timer of `queue`.
    async fn fire(
        &self,
        queue: &QueueName,
        member: &str,
        now: SystemTime,
    ) -> Result<(), EngineError> {
        let Some((kind, id)) = layout::parse_timer(member) else {
            return self.zrem(self.keys.timers(queue), member).await;
        };
        let Some(stored) = self.load(queue, id).await? else {
            return self.zrem(self.keys.timers(queue), member).await;
        };
        let config = &self.config;
        let outcome = self
            .transact(queue, id, Some(stored), |ticket| {
                Ok(match &kind {
                    TimerKind::Backoff => {
                        if ticket.state == TicketState::Pending
                            && ticket.not_before.is_some_and(|at| at <= now)
                        {
                            ticket.not_before = None;
                            Step::write(true, Vec::new())
                        } else {
                            Step::Keep(false)
                        }
                    }
                    TimerKind::Deadline => match transition::expire(ticket, now) {
                        Some(revoked) => Step::Write {
                            result: true,
                            events: vec![(EventKind::State, ticket.clone(), None)],
                            revoke: revoked.map(|lease| Revocation {
                                session_id: lease.session_id,
                                ticket_id: id,
                                lease_id: lease.lease_id,
                                reason: RevokeReason::Expired,
                                message: transition::EXPIRED_NOTICE.into(),
                            }),
                            extra: Ops::default(),
                        },
                        None => Step::Keep(false),
                    },
                    TimerKind::Attempt(lease_id) => {
                        match transition::time_out_attempt(ticket, *lease_id, config, now) {
                            Some(lease) => Step::Write {
                                result: true,
                                events: vec![(EventKind::State, ticket.clone(), None)],
                                revoke: Some(Revocation {
                                    session_id: lease.session_id,
                                    ticket_id: id,
                                    lease_id: lease.lease_id,
                                    reason: RevokeReason::AttemptTimeout,
                                    message: transition::attempt_timeout_notice(ticket.attempt),
                                }),
                                extra: Ops::default(),
                            },
                            None => Step::Keep(false),
                        }
                    }
                    TimerKind::Retention => {
                        let due = ticket.state.is_terminal()
                            && ticket
                                .finished_at
                                .is_some_and(|at| at + config.result_retention <= now);
                        if due {
                            Step::Delete(true)
                        } else {
                            Step::Keep(false)
                        }
                    }
                })
            })
            .await;
        match outcome {
            Ok((false, Some(stored))) => {
                let placement = Placement::of(&stored.ticket, self.config.result_retention);
                if !placement.timers.iter().any(|(m, _)| m == member) {
                    self.zrem(self.keys.timers(queue), member).await?;
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(EngineError::NotFound(_) | EngineError::ResultExpired { .. }) => {
                self.zrem(self.keys.timers(queue), member).await
            }
            Err(error) => Err(error),
        }
    }

    async fn zrem(&self, key: String, member: &str) -> Result<(), EngineError> {
        self.run(|| {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(&key).arg(member);
            QueryKind::Cmd(cmd)
        })
        .await
    }

    /// Gives back leases whose commit may or may not have landed (Redis
    /// went away mid-claim, so nobody was told of them): without this, a
    /// lease held by a live session that never got its task would keep the
    /// ticket RUNNING forever. Retries until Redis answers, for as long as
    /// the engine exists; a lease that never landed is left alone by the
    /// fencing.
    fn release_in_doubt(self: &Arc<Self>, queue: QueueName, leases: Vec<(TicketId, LeaseId)>) {
        if leases.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut pending = leases;
            let mut delay = Duration::from_millis(100);
            while !pending.is_empty() {
                let Some(inner) = weak.upgrade() else { return };
                let mut failed = Vec::new();
                for (id, lease_id) in pending {
                    let outcome = inner
                        .give_back(&queue, id, None, lease_id, ReleaseReason::Undelivered)
                        .await;
                    match outcome {
                        Ok(_)
                        | Err(EngineError::NotFound(_) | EngineError::ResultExpired { .. }) => {
                            lock(inner.lease_shard(&lease_id)).remove(&lease_id);
                        }
                        Err(_) => failed.push((id, lease_id)),
                    }
                }
                pending = failed;
                if pending.is_empty() {
                    inner.notify_ready(&queue);
                } else {
                    drop(inner);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        });
    }

    /// Puts back tickets whose claimer died between pop and lease.
    async fn unclaim(&self, queue: &QueueName, ids: Vec<String>) -> Result<(), EngineError> {
        for member in ids {
            let Ok(id) = member.parse::<uuid::Uuid>().map(TicketId) else {
                self.zrem(self.keys.claiming(queue), &member).await?;
                continue;
            };
            if let Some(stored) = self.load(queue, id).await? {
                let ticket = &stored.ticket;
                if ticket.state == TicketState::Pending && ticket.not_before.is_none() {
                    let ready = layout::ready_member(ticket.priority, ticket.enqueue_seq, id);
                    let _: () = self
                        .run(|| {
                            let mut cmd = redis::cmd("ZADD");
                            cmd.arg(self.keys.ready(queue)).arg(0).arg(&ready);
                            QueryKind::Cmd(cmd)
                        })
                        .await?;
                    self.notify_ready(queue);
                }
            }
            self.zrem(self.keys.claiming(queue), &member).await?;
        }
        Ok(())
    }
}

/// Ticket id → queue for tickets this replica saw lately, so most reads skip
/// the locator lookup. Two generations per shard bound its size.
struct LocatorCache {
    shards: Box<[Mutex<Generations>]>,
}

/// The current and the previous generation of a cache shard.
type Generations = [HashMap<TicketId, QueueName>; 2];

/// Entries per shard generation.
const LOCATOR_GENERATION: usize = 8192;

impl Default for LocatorCache {
    fn default() -> Self {
        Self {
            shards: (0..LEASE_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl LocatorCache {
    fn shard(&self, id: TicketId) -> &Mutex<Generations> {
        &self.shards[(id.0.as_u128() as usize) % LEASE_SHARDS]
    }

    fn get(&self, id: TicketId) -> Option<QueueName> {
        let generations = lock(self.shard(id));
        generations[0]
            .get(&id)
            .or_else(|| generations[1].get(&id))
            .cloned()
    }

    fn insert(&self, id: TicketId, queue: &QueueName) {
        let mut generations = lock(self.shard(id));
        if generations[0].len() >= LOCATOR_GENERATION {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(id, queue.clone());
    }
}

/// A command or a pipeline, rebuilt for each try.
enum QueryKind {
    Cmd(Cmd),
    Pipe(redis::Pipeline),
}

#[async_trait]
impl Engine for RedisEngine {
    fn set_listener(&self, listener: Arc<dyn EngineListener>) {
        let _ = self.inner.listener.set(listener);
    }

    async fn submit(&self, new: NewTicket) -> Result<Submitted, EngineError> {
        let inner = &self.inner;
        let queue = new.queue.clone();
        inner.register_queue(&queue).await?;
        let id = new.id;
        let key = new
            .idempotency_key
            .as_deref()
            .map(|key| idempotency_scope(new.tenant.as_deref(), key));
        if let Some(key) = &key {
            let original = new.idempotency_key.as_deref().unwrap_or_default();
            if let Some(existing) = inner.claim_key(original, key, id, &queue).await? {
                return Ok(existing);
            }
        }
        let mut ticket = Ticket::create(id, new, SystemTime::now());
        inner.place_in_line(None, &mut ticket);
        let record = record::encode(&ticket);
        let mut ops = Ops::default();
        ops.max(slot::PENDING, inner.config.max_pending_per_queue);
        ops.push("field", &[b"p", &ticket.payload.encode_to_vec()]);
        inner.diff(None, Some(&ticket), &mut ops);
        let ready = Placement::of(&ticket, inner.config.result_retention).ready;
        if ready {
            let member = layout::ready_member(ticket.priority, ticket.enqueue_seq, ticket.id);
            ops.push("rank", &[&Ops::slot(slot::READY), member.as_bytes()]);
        }
        let mut args = vec![b"0".to_vec(), record];
        args.extend(ops.0);
        let commit = inner.evalsha(
            &inner.scripts.commit,
            &inner.keys.commit_keys(&queue, id),
            args,
        );
        let mut cmds = vec![Cmd::set(inner.keys.locator(id), queue.as_str()), commit];
        if let Some(key) = &key {
            cmds.push(Cmd::persist(inner.keys.idempotency(key)));
        }
        let replies = inner.batch(cmds).await?;
        let reply: Vec<i64> = redis::from_redis_value_ref(&replies[1])
            .map_err(|e| inner.unavailable(RedisError::from(e)))?;
        match reply.as_slice() {
            [1, _, rest @ ..] => {
                inner.located.insert(id, &queue);
                if ready {
                    // Workers here need not wait for the bus to hear of it.
                    inner.notify_ready(&queue);
                }
                if let Some(listener) = inner.listener.get() {
                    listener.transitioned(
                        Before::created(ticket.created_at),
                        &ticket,
                        ticket.created_at,
                    );
                }
                Ok(Submitted {
                    ticket,
                    created: true,
                    tickets_ahead: rest.first().map(|&rank| rank as u64),
                })
            }
            [0, _] => {
                // The id is taken in this queue: the locator names that
                // ticket and stays.
                if let Some(key) = &key {
                    inner
                        .batch(vec![Cmd::del(inner.keys.idempotency(key))])
                        .await?;
                }
                Err(EngineError::Unavailable(format!(
                    "ticket id {id} is already taken; retry"
                )))
            }
            other => {
                let mut cleanup = vec![Cmd::del(inner.keys.locator(id))];
                if let Some(key) = &key {
                    cleanup.push(Cmd::del(inner.keys.idempotency(key)));
                }
                inner.batch(cleanup).await?;
                if other == [-2] {
                    Err(EngineError::QueueFull {
                        queue,
                        limit: inner.config.max_pending_per_queue,
                    })
                } else {
                    Err(EngineError::Unavailable(format!(
                        "Redis answered the submit of ticket {id} with {other:?}; retry"
                    )))
                }
            }
        }
    }

    async fn get(&self, id: TicketId) -> Result<Ticket, EngineError> {
        let queue = self.inner.locate(id).await?;
        match self.inner.load(&queue, id).await? {
            Some(stored) => Ok(stored.ticket),
            None => Err(self.inner.gone(id).await),
        }
    }

    async fn get_with_chunks(
        &self,
        id: TicketId,
        after_seq: u64,
    ) -> Result<(Ticket, Vec<Chunk>), EngineError> {
        let inner = &self.inner;
        let queue = inner.locate(id).await?;
        let (fields, chunks): (_, Vec<Bytes>) = inner
            .run(|| {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET")
                    .arg(inner.keys.ticket(&queue, id))
                    .arg(&["v", "d", "p"])
                    .lrange(inner.keys.chunks(&queue, id), 0, -1);
                QueryKind::Pipe(pipe)
            })
            .await?;
        let Some(stored) = inner.decode(id, fields)? else {
            return Err(inner.gone(id).await);
        };
        let chunks = chunks
            .iter()
            .filter_map(|bytes| chunk_from(bytes))
            .filter(|chunk| chunk.seq > after_seq)
            .collect();
        Ok((stored.ticket, chunks))
    }

    async fn tickets_ahead(&self, ticket: &Ticket) -> Result<u64, EngineError> {
        if ticket.state != TicketState::Pending || ticket.not_before.is_some() {
            return Ok(0);
        }
        let inner = &self.inner;
        let rank: Option<u64> = inner
            .run(|| {
                let mut cmd = redis::cmd("ZRANK");
                cmd.arg(inner.keys.ready(&ticket.queue))
                    .arg(layout::ready_member(
                        ticket.priority,
                        ticket.enqueue_seq,
                        ticket.id,
                    ));
                QueryKind::Cmd(cmd)
            })
            .await?;
        Ok(rank.unwrap_or(0))
    }

    async fn list(&self, filter: ListFilter) -> Result<ListPage, EngineError> {
        let inner = &self.inner;
        let page_size = filter.page_size.max(1);
        let queues: Vec<QueueName> = match &filter.queue {
            Some(queue) => vec![queue.clone()],
            None => inner.known_queues().await?,
        };
        let mut cursor = filter.after;
        let mut tickets = Vec::new();
        let mut scanned = 0;
        loop {
            // The next ids of every queue after the cursor, merged in id
            // order (ids are time-ordered text).
            let min = match cursor {
                Some(after) => format!("({after}"),
                None => "-".to_owned(),
            };
            let per_queue: Vec<Vec<String>> = inner
                .batch_typed(
                    queues
                        .iter()
                        .map(|queue| {
                            let mut cmd = redis::cmd("ZRANGEBYLEX");
                            cmd.arg(inner.keys.queue_ids(queue))
                                .arg(&min)
                                .arg("+")
                                .arg("LIMIT")
                                .arg(0)
                                .arg(LIST_BATCH);
                            cmd
                        })
                        .collect(),
                )
                .await?;
            let exhausted = per_queue.iter().all(|ids| ids.len() < LIST_BATCH);
            let mut batch: Vec<(TicketId, QueueName)> = queues
                .iter()
                .zip(&per_queue)
                .flat_map(|(queue, ids)| {
                    ids.iter()
                        .filter_map(|id| id.parse().ok().map(|id| (TicketId(id), queue.clone())))
                })
                .collect();
            batch.sort_by_key(|(id, _)| *id);
            // Beyond the shortest full list, another queue's ids may be missing.
            if let Some(bound) = queues
                .iter()
                .zip(&per_queue)
                .filter(|(_, ids)| ids.len() == LIST_BATCH)
                .filter_map(|(_, ids)| ids.last()?.parse().ok().map(TicketId))
                .min()
            {
                batch.retain(|(id, _)| *id <= bound);
            }
            let fields: Vec<(Option<u64>, Option<Bytes>, Option<Bytes>)> = inner
                .batch_typed(
                    batch
                        .iter()
                        .map(|(id, queue)| {
                            let mut cmd = redis::cmd("HMGET");
                            cmd.arg(inner.keys.ticket(queue, *id)).arg(&["v", "d", "p"]);
                            cmd
                        })
                        .collect(),
                )
                .await?;
            for ((id, _), fields) in batch.iter().zip(fields) {
                scanned += 1;
                cursor = Some(*id);
                let Some(stored) = inner.decode(*id, fields)? else {
                    continue;
                };
                if filter.admits(&stored.ticket) {
                    tickets.push(stored.ticket);
                    if tickets.len() > page_size {
                        tickets.truncate(page_size);
                        let next = tickets.last().map(|t| t.id);
                        return Ok(ListPage { tickets, next });
                    }
                }
            }
            if exhausted {
                return Ok(ListPage {
                    tickets,
                    next: None,
                });
            }
            if scanned >= LIST_SCAN_LIMIT {
                return Ok(ListPage {
                    tickets,
                    next: cursor,
                });
            }
        }
    }

    async fn cancel(&self, id: TicketId, reason: &str) -> Result<Ticket, EngineError> {
        let queue = self.inner.locate(id).await?;
        let (ticket, _) = self
            .inner
            .transact(&queue, id, None, |ticket| {
                match transition::cancel(ticket, reason, SystemTime::now())? {
                    transition::Cancelled::Already => Ok(Step::Keep(ticket.clone())),
                    transition::Cancelled::Now(revoked) => Ok(Step::Write {
                        result: ticket.clone(),
                        events: vec![(EventKind::State, ticket.clone(), None)],
                        revoke: revoked.map(|lease| Revocation {
                            session_id: lease.session_id,
                            ticket_id: id,
                            lease_id: lease.lease_id,
                            reason: RevokeReason::Cancelled,
                            message: transition::cancel_message(reason),
                        }),
                        extra: Ops::default(),
                    }),
                }
            })
            .await?;
        Ok(ticket)
    }

    async fn touch_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        let inner = &self.inner;
        let expires = layout::millis_ceil(expires_at);
        let member = session.session_id.to_string();
        lock(&inner.session_workers)
            .entry(session.session_id)
            .or_insert_with(|| session.queues.clone());
        let keys = std::iter::once(inner.keys.sessions())
            .chain(session.queues.iter().map(|queue| inner.keys.workers(queue)));
        let cmds = keys
            .map(|key| {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(key).arg("GT").arg(expires).arg(&member);
                cmd
            })
            .collect();
        inner.batch(cmds).await.map(drop)
    }

    async fn end_session(&self, session_id: SessionId) -> Result<(), EngineError> {
        let inner = &self.inner;
        let ready = inner.lose_session(session_id).await?;
        let served = lock(&inner.session_workers).remove(&session_id);
        let mut cmds = vec![
            Cmd::zrem(inner.keys.sessions(), session_id.to_string()),
            Cmd::del(inner.keys.session_queues(session_id)),
        ];
        for queue in served.iter().flat_map(|queues| queues.iter()) {
            cmds.push(Cmd::zrem(inner.keys.workers(queue), session_id.to_string()));
        }
        inner.batch(cmds).await?;
        inner.forget_session(session_id);
        for queue in ready {
            inner.notify_ready(&queue);
        }
        Ok(())
    }

    async fn claim(
        &self,
        queue: &QueueName,
        sessions: &[SessionInfo],
    ) -> Result<Vec<Claimed>, EngineError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let unregistered: Vec<SessionId> = {
            let known = lock(&inner.session_queues);
            let mut fresh: Vec<SessionId> = sessions
                .iter()
                .map(|s| s.session_id)
                .filter(|s| !known.contains(&(*s, queue.clone())))
                .collect();
            fresh.sort();
            fresh.dedup();
            fresh
        };
        if !unregistered.is_empty() {
            inner
                .batch(
                    unregistered
                        .iter()
                        .map(|session_id| {
                            Cmd::sadd(inner.keys.session_queues(*session_id), queue.as_str())
                        })
                        .collect(),
                )
                .await?;
            lock(&inner.session_queues).extend(unregistered.iter().map(|s| (*s, queue.clone())));
        }
        let now = SystemTime::now();
        type Popped = (String, Option<u64>, Option<Bytes>, Option<Bytes>);
        let popped: Vec<Popped> = inner
            .run(|| {
                QueryKind::Cmd(inner.evalsha(
                    &inner.scripts.claim,
                    &[inner.keys.ready(queue), inner.keys.claiming(queue)],
                    vec![
                        sessions.len().to_string().into_bytes(),
                        layout::millis(now).to_string().into_bytes(),
                        inner.keys.ticket_prefix(queue).into_bytes(),
                    ],
                ))
            })
            .await?;
        if popped.is_empty() {
            return Ok(Vec::new());
        }
        let mut candidates = Vec::with_capacity(popped.len());
        let mut unleasable = Vec::new();
        for (member, revision, record, payload) in popped {
            let Ok(id) = member.parse::<uuid::Uuid>().map(TicketId) else {
                unleasable.push(member);
                continue;
            };
            match inner.decode(id, (revision, record, payload)) {
                Ok(Some(stored))
                    if stored.ticket.state == TicketState::Pending
                        && stored.ticket.not_before.is_none() =>
                {
                    candidates.push(stored);
                }
                Ok(_) => unleasable.push(member),
                Err(error) => {
                    tracing::error!(%error, "unreadable ticket taken off the ready set");
                    unleasable.push(member);
                }
            }
        }
        let mut leased = Vec::with_capacity(candidates.len());
        let mut pipe = redis::pipe();
        for (stored, session) in candidates.into_iter().zip(sessions) {
            let mut after = stored.ticket.clone();
            let lease = transition::lease(&mut after, session, now);
            let mut extra = Ops::default();
            extra.zrem(slot::CLAIMING, &after.id.to_string());
            let events = [(EventKind::State, after.clone(), None)];
            pipe.add_command(inner.commit_cmd(&stored, &mut after, &events, None, extra));
            leased.push((stored, after, lease, session.clone()));
        }
        for member in &unleasable {
            pipe.zrem(inner.keys.claiming(queue), member).ignore();
        }
        let mut distinct: Vec<SessionId> = leased.iter().map(|l| l.3.session_id).collect();
        distinct.sort();
        distinct.dedup();
        // The leases first (one slot), then whether their sessions still
        // live (another): a session that ended in between gets them back.
        // One round trip where a pipeline keeps its order, else two.
        let mut in_doubt = InDoubt {
            inner: inner.clone(),
            queue: queue.clone(),
            leases: leased
                .iter()
                .map(|(_, after, lease, _)| (after.id, lease.lease_id))
                .collect(),
        };
        let mut scores = redis::pipe();
        for session_id in &distinct {
            scores.zscore(inner.keys.sessions(), session_id.to_string());
        }
        let together = inner.conn.orders_pipelines();
        if together {
            for command in scores.cmd_iter() {
                pipe.add_command(command.clone());
            }
        }
        let mut commits: Vec<Value> = inner.run(|| QueryKind::Pipe(pipe.clone())).await?;
        let scores = if together {
            Ok(commits.split_off(leased.len().min(commits.len())))
        } else {
            inner
                .run::<Vec<Value>>(|| QueryKind::Pipe(scores.clone()))
                .await
        };
        let scores = scores?;
        let now_ms = layout::millis(SystemTime::now());
        let alive: HashSet<SessionId> = distinct
            .iter()
            .zip(scores)
            .filter(|(_, score)| {
                redis::from_redis_value_ref::<Option<f64>>(score)
                    .ok()
                    .flatten()
                    .is_some_and(|expires| expires > now_ms as f64)
            })
            .map(|(session, _)| *session)
            .collect();
        let mut claimed = Vec::with_capacity(leased.len());
        let mut orphaned = false;
        for ((stored, after, lease, session), reply) in leased.into_iter().zip(&commits) {
            #[cfg(test)]
            if !claimed.is_empty() && inner.fail_settle.swap(false, Ordering::SeqCst) {
                return Err(EngineError::Unavailable("injected failure".into()));
            }
            let revision = match redis::from_redis_value_ref::<Vec<i64>>(reply)
                .ok()
                .as_deref()
            {
                Some([1, revision]) => *revision as u64,
                _ => {
                    // Changed since the pop (a cancel, say): leave it be.
                    in_doubt.forget(lease.lease_id);
                    inner
                        .zrem(inner.keys.claiming(queue), &stored.ticket.id.to_string())
                        .await?;
                    continue;
                }
            };
            inner.observe(&stored.ticket, &after);
            let written = Stored {
                ticket: after.clone(),
                revision,
            };
            if !alive.contains(&session.session_id) {
                // The session ended while we leased: give it back.
                inner
                    .give_back(
                        queue,
                        after.id,
                        Some(written),
                        lease.lease_id,
                        ReleaseReason::Undelivered,
                    )
                    .await?;
                in_doubt.forget(lease.lease_id);
                orphaned = true;
                continue;
            }
            lock(inner.lease_shard(&lease.lease_id)).insert(
                lease.lease_id,
                Held {
                    queue: queue.clone(),
                    session_id: session.session_id,
                    latest: Some(written),
                    tail: None,
                },
            );
            claimed.push(Claimed {
                ticket: Arc::new(after),
                lease,
            });
        }
        if orphaned {
            inner.notify_ready(queue);
        }
        in_doubt.settled();
        Ok(claimed)
    }

    async fn release(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        reason: ReleaseReason,
    ) -> Result<(), EngineError> {
        let inner = &self.inner;
        let (queue, hint) = match inner.held(lease_id) {
            Some(held) => held,
            None => (inner.locate(ticket_id).await?, None),
        };
        let requeued = inner
            .give_back(&queue, ticket_id, hint, lease_id, reason)
            .await?;
        lock(inner.lease_shard(&lease_id)).remove(&lease_id);
        if requeued {
            inner.notify_ready(&queue);
        }
        Ok(())
    }

    fn progress(&self, report: ProgressReport) -> Applied<()> {
        let inner = self.inner.clone();
        let (previous, done) = inner.sequence(report.lease_id);
        Box::pin(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let result = inner.record_progress(report).await;
            drop(done);
            result
        })
    }

    fn complete(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> Applied<Completion> {
        let inner = self.inner.clone();
        let (previous, done) = inner.sequence(lease_id);
        Box::pin(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let result = inner.record_completion(ticket_id, lease_id, outcome).await;
            drop(done);
            result
        })
    }

    async fn connected_workers(&self, queue: &QueueName) -> Result<Option<usize>, EngineError> {
        let inner = &self.inner;
        if let Some((at, count)) = lock(&inner.worker_counts).get(queue)
            && at.elapsed() < WORKER_COUNT_TTL
        {
            return Ok(Some(*count));
        }
        let count: usize = inner
            .run(|| {
                let mut cmd = redis::cmd("ZCOUNT");
                cmd.arg(inner.keys.workers(queue))
                    .arg(format!("({}", layout::millis(SystemTime::now())))
                    .arg("+inf");
                QueryKind::Cmd(cmd)
            })
            .await?;
        lock(&inner.worker_counts).insert(queue.clone(), (Instant::now(), count));
        Ok(Some(count))
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, EngineError> {
        let inner = &self.inner;
        let queues = inner.known_queues().await?;
        // One request per queue (one slot each).
        let counts = futures::future::join_all(queues.iter().map(|queue| {
            inner.run::<(Option<u64>, u64)>(|| {
                let mut pipe = redis::pipe();
                pipe.get(inner.keys.pending(queue))
                    .zcard(inner.keys.leased(queue));
                QueryKind::Pipe(pipe)
            })
        }))
        .await;
        queues
            .into_iter()
            .zip(counts)
            .map(|(queue, counts)| {
                let (pending, running) = counts?;
                Ok(QueueDepth {
                    queue,
                    pending: pending.unwrap_or(0),
                    running: Some(running),
                })
            })
            .collect()
    }

    async fn run_timers(&self, now: SystemTime) -> Result<(), EngineError> {
        let inner = &self.inner;
        let now_ms = layout::millis(now);
        let expired: Vec<String> = inner
            .run(|| {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(inner.keys.sessions())
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(64);
                QueryKind::Cmd(cmd)
            })
            .await?;
        let mut ready = BTreeSet::new();
        for session in expired {
            let Ok(session_id) = session.parse::<uuid::Uuid>().map(SessionId) else {
                inner.zrem(inner.keys.sessions(), &session).await?;
                continue;
            };
            tracing::warn!(%session_id, "worker session expired; its leases are lost");
            ready.extend(inner.lose_session(session_id).await?);
            inner
                .batch(vec![
                    Cmd::zrem(inner.keys.sessions(), &session),
                    Cmd::del(inner.keys.session_queues(session_id)),
                ])
                .await?;
            inner.forget_session(session_id);
        }
        let queues = inner.known_queues().await?;
        let poke = {
            let mut last = lock(&inner.last_poke);
            let due = last.elapsed() >= READY_POKE;
            if due {
                *last = Instant::now();
            }
            due
        };
        let claim_cutoff = now_ms.saturating_sub(CLAIM_GRACE.as_millis() as u64);
        // One pipeline per queue (one slot each).
        type Due = (Vec<String>, Vec<String>, usize);
        let due = futures::future::join_all(queues.iter().map(|queue| {
            inner.run::<Due>(|| {
                let mut pipe = redis::pipe();
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(inner.keys.timers(queue))
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(TIMER_BATCH)
                    .cmd("ZRANGEBYSCORE")
                    .arg(inner.keys.claiming(queue))
                    .arg("-inf")
                    .arg(claim_cutoff)
                    .zcard(inner.keys.ready(queue))
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(inner.keys.workers(queue))
                    .arg("-inf")
                    .arg(now_ms)
                    .ignore();
                QueryKind::Pipe(pipe)
            })
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<Due>, EngineError>>()?;
        for (queue, (timers, stale_claims, ready_count)) in queues.iter().zip(due) {
            let fired = futures::stream::iter(timers)
                .map(|member| async move { inner.fire(queue, &member, now).await })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
            for result in fired {
                result?;
            }
            if !stale_claims.is_empty() {
                inner.unclaim(queue, stale_claims).await?;
            }
            if poke && ready_count > 0 {
                ready.insert(queue.clone());
            }
        }
        for queue in ready {
            inner.notify_ready(&queue);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewTicket, TicketState};

    /// An error inside a claim's settle loop, after some leases were
    /// committed and one was already settled: every lease of that claim
    /// goes back, none stays RUNNING held by nobody.
    #[tokio::test]
    async fn a_failure_while_settling_a_claim_gives_every_lease_back() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine = connect(
            &server.url(),
            "settle",
            &Default::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let queue = QueueName::parse("q").unwrap();
        let session = SessionInfo {
            session_id: SessionId::new(),
            worker_name: "w".into(),
            queues: Arc::from([queue.clone()]),
        };
        engine
            .touch_session(&session, SystemTime::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let new = NewTicket {
                id: TicketId::new(),
                queue: queue.clone(),
                payload: Default::default(),
                priority: 0,
                idempotency_key: None,
                metadata: Default::default(),
                timeout: None,
                attempt_timeout: None,
                max_attempts: 3,
                tenant: None,
            };
            ids.push(engine.submit(new).await.unwrap().ticket.id);
        }
        engine.inner.fail_settle.store(true, Ordering::SeqCst);
        let sessions = vec![session.clone(); 3];
        let error = engine.claim(&queue, &sessions).await.unwrap_err();
        assert!(error.to_string().contains("injected"), "{error}");
        // Given back in the background: every ticket is PENDING again, its
        // attempt not counted, and the next claim hands all three out.
        let back = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut pending = 0;
                for id in &ids {
                    let ticket = engine.get(*id).await.unwrap();
                    if ticket.state == TicketState::Pending {
                        pending += 1;
                    }
                }
                if pending == ids.len() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(back.is_ok(), "every lease of the failed claim went back");
        let claimed = engine.claim(&queue, &sessions).await.unwrap();
        assert_eq!(claimed.len(), 3);
        assert!(
            claimed.iter().all(|c| c.ticket.attempt == 1),
            "undelivered: not an attempt"
        );
    }
}
