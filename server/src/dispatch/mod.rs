//! Dispatch: matching ready tickets with worker capacity.
//!
//! Each queue has one actor task that owns the list of worker sessions serving
//! it. When the engine reports ready work or a session frees capacity, the
//! actor takes credits round-robin across sessions (so a queue is shared
//! fairly): as many as the engine says tickets are ready, or every free one
//! when it cannot tell without a round trip. It claims that many tickets from
//! the engine in one call (on Redis a few such calls may be under way at
//! once) and hands each to its session. A
//! session's credit is shared by all its queues and never goes below zero, so
//! no worker ever holds more than `max_in_flight`.

pub(crate) mod session;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::domain::{QueueName, SessionId};
use crate::engine::{Claimed, Engine, EngineError, ReleaseReason, Revocation, SessionInfo};

/// Most tickets claimed in one engine call.
const CLAIM_BATCH: usize = 256;

/// Claims one backlogged queue keeps in flight at once. On Redis a claim is
/// a few round trips; overlapping them keeps workers fed while one is on the
/// wire (a local engine's claim is done before the next could start). A
/// queue that is not backlogged has one claim at a time: each takes the free
/// credits in turn and serves the first takers, and a second claim
/// taking the next credits at once would leave the first one's unserved
/// takers behind in the rotation.
const CLAIMS_IN_FLIGHT: usize = 4;

/// A claim under way.
type PendingClaim = Pin<Box<dyn Future<Output = Claim> + Send>>;

/// An undelivered lease being given back.
type PendingRelease = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A claim's outcome, with the credits it took.
struct Claim {
    /// The sessions whose credits it took, with their rotation positions.
    takers: Vec<(usize, Arc<SessionSlot>)>,
    /// `QueueActor::ready_generation` when it started.
    ready_generation: u64,
    claimed: Result<Vec<Claimed>, EngineError>,
}

/// What the dispatcher asks a session task to do.
#[derive(Debug)]
pub enum SessionCommand {
    /// Send this leased task to the worker.
    Deliver(Box<Claimed>),
    /// Tell the worker to drop this lease.
    Revoke(Revocation),
    /// An operator drains the session: no new tasks; the worker is told to
    /// leave once idle. Names the key that asked.
    Drain(String),
}

/// A worker session as the queue actors see it.
#[derive(Debug)]
pub struct SessionSlot {
    /// Identity for leases and explanations.
    pub info: SessionInfo,
    /// Free capacity: max_in_flight minus tasks the worker has not answered.
    credits: AtomicU32,
    /// The session task's mailbox.
    commands: mpsc::UnboundedSender<SessionCommand>,
    /// What the admin API lists of it.
    pub details: WorkerDetails,
}

/// A session's worker as the admin API lists it, kept up to date by the
/// session task.
#[derive(Debug)]
pub struct WorkerDetails {
    /// Its address, as the gateway saw it.
    pub peer: Option<std::net::SocketAddr>,
    /// Tasks it runs at once.
    pub max_in_flight: u32,
    /// When its stream opened.
    pub connected_at: std::time::SystemTime,
    /// Its last heartbeat or progress (ms since the epoch).
    last_heard_ms: std::sync::atomic::AtomicU64,
    /// Drained by an operator or by itself.
    draining: AtomicBool,
}

impl WorkerDetails {
    /// A worker that connected just now.
    pub fn new(peer: Option<std::net::SocketAddr>, max_in_flight: u32) -> Self {
        let now = std::time::SystemTime::now();
        Self {
            peer,
            max_in_flight,
            connected_at: now,
            last_heard_ms: std::sync::atomic::AtomicU64::new(millis(now)),
            draining: AtomicBool::new(false),
        }
    }

    /// The worker was heard from now.
    pub fn heard(&self) {
        self.last_heard_ms
            .store(millis(std::time::SystemTime::now()), Ordering::Relaxed);
    }

    /// The session takes no new tasks.
    pub fn drained(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The session as a record, for `replica`.
    pub fn record(&self, info: &SessionInfo, replica: &str) -> crate::engine::WorkerRecord {
        crate::engine::WorkerRecord {
            session_id: info.session_id,
            worker_name: info.worker_name.to_string(),
            queues: info.queues.to_vec(),
            peer: self.peer.map(|p| p.to_string()),
            max_in_flight: self.max_in_flight,
            connected_at: self.connected_at,
            last_heard_at: std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed)),
            replica: replica.to_owned(),
            draining: self.draining.load(Ordering::Relaxed),
        }
    }
}

fn millis(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SessionSlot {
    /// A slot with `max_in_flight` credits.
    pub fn new(
        info: SessionInfo,
        details: WorkerDetails,
        commands: mpsc::UnboundedSender<SessionCommand>,
    ) -> Self {
        Self {
            info,
            credits: AtomicU32::new(details.max_in_flight),
            commands,
            details,
        }
    }

    fn try_take_credit(&self) -> bool {
        self.credits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_ok()
    }

    fn return_credit(&self) {
        self.credits.fetch_add(1, Ordering::AcqRel);
    }
}

enum QueueMessage {
    Ready,
    Attach(Arc<SessionSlot>),
    Detach(SessionId),
    CreditAvailable,
}

struct QueueHandle {
    mailbox: mpsc::UnboundedSender<QueueMessage>,
    /// Set while a `Ready` is in the mailbox, so a burst of submits sends one.
    ready_queued: Arc<AtomicBool>,
    /// Set while a `CreditAvailable` is in the mailbox, so a burst of
    /// results sends one.
    credit_queued: Arc<AtomicBool>,
    /// Sessions attached, for explanations ("no worker connected").
    workers: AtomicUsize,
}

/// The dispatcher handle; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn Engine>,
    /// Read on every submit, written when a queue is first seen.
    queues: RwLock<HashMap<QueueName, Arc<QueueHandle>>>,
    sessions: Mutex<HashMap<SessionId, Arc<SessionSlot>>>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// A dispatcher reference that does not keep it alive (the engine's listener
/// holds one, so engine and dispatcher do not own each other).
#[derive(Clone)]
pub struct WeakDispatcher(Weak<Inner>);

impl WeakDispatcher {
    /// The dispatcher, if it still exists.
    pub fn upgrade(&self) -> Option<Dispatcher> {
        self.0.upgrade().map(|inner| Dispatcher { inner })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dispatcher {
    /// A dispatcher whose actors run on `tracker` until `stop`.
    pub fn new(engine: Arc<dyn Engine>, tracker: TaskTracker, stop: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                queues: RwLock::default(),
                sessions: Mutex::default(),
                tracker,
                stop,
            }),
        }
    }

    /// A non-owning reference.
    pub fn downgrade(&self) -> WeakDispatcher {
        WeakDispatcher(Arc::downgrade(&self.inner))
    }

    /// The engine this dispatcher claims from.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    /// Spawns a task the gateway's shutdown waits for (it may hold the
    /// engine).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(task);
    }

    /// The queue's handle, spawning its actor on first use.
    fn handle(&self, queue: &QueueName) -> Arc<QueueHandle> {
        if let Some(handle) = self
            .inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
        {
            return handle.clone();
        }
        let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
        let handle = queues.entry(queue.clone()).or_insert_with(|| {
            let (mailbox, receiver) = mpsc::unbounded_channel();
            let ready_queued = Arc::new(AtomicBool::new(false));
            let credit_queued = Arc::new(AtomicBool::new(false));
            let actor = QueueActor {
                queue: queue.clone(),
                engine: self.inner.engine.clone(),
                mailbox: receiver,
                ready_queued: ready_queued.clone(),
                credit_queued: credit_queued.clone(),
                sessions: Vec::new(),
                cursor: 0,
                has_work: true,
                ready_generation: 0,
                backlogged: false,
            };
            // A root span: the actor outlives the request that first named
            // the queue, and a child would keep that request's span open
            // (never exported) for the life of the process.
            let span = tracing::info_span!(parent: None, "queue", queue = %queue);
            let stop = self.inner.stop.clone();
            self.inner.tracker.spawn(
                async move {
                    tokio::select! {
                        _ = actor.run() => {}
                        _ = stop.cancelled() => {}
                    }
                }
                .instrument(span),
            );
            Arc::new(QueueHandle {
                mailbox,
                ready_queued,
                credit_queued,
                workers: AtomicUsize::new(0),
            })
        });
        handle.clone()
    }

    /// The engine says `queue` may have ready tickets.
    pub fn queue_ready(&self, queue: &QueueName) {
        let handle = self.handle(queue);
        if !handle.ready_queued.swap(true, Ordering::AcqRel) {
            let _ = handle.mailbox.send(QueueMessage::Ready);
        }
    }

    /// Registers a session for its queues.
    pub fn attach(&self, slot: &Arc<SessionSlot>, queues: &[QueueName]) {
        lock(&self.inner.sessions).insert(slot.info.session_id, slot.clone());
        for queue in queues {
            let handle = self.handle(queue);
            handle.workers.fetch_add(1, Ordering::AcqRel);
            let _ = handle.mailbox.send(QueueMessage::Attach(slot.clone()));
        }
    }

    /// Stops sending new tasks to a session.
    pub fn detach(&self, session_id: SessionId, queues: &[QueueName]) {
        for queue in queues {
            let handle = self.handle(queue);
            let _ = handle
                .workers
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            let _ = handle.mailbox.send(QueueMessage::Detach(session_id));
        }
    }

    /// Forgets a session entirely (after `detach`).
    pub fn unregister(&self, session_id: SessionId) {
        lock(&self.inner.sessions).remove(&session_id);
    }

    /// A session answered a task: give the credit back and let its queues
    /// dispatch again.
    pub fn credit_returned(&self, slot: &SessionSlot, queues: &[QueueName]) {
        slot.return_credit();
        for queue in queues {
            let handle = self.handle(queue);
            if !handle.credit_queued.swap(true, Ordering::AcqRel) {
                let _ = handle.mailbox.send(QueueMessage::CreditAvailable);
            }
        }
    }

    /// Routes a revocation to the session holding the lease, if it is here.
    pub fn revoke(&self, revocation: Revocation) {
        if let Some(slot) = lock(&self.inner.sessions).get(&revocation.session_id) {
            let _ = slot.commands.send(SessionCommand::Revoke(revocation));
        }
    }

    /// Drains session `session_id` if it is connected here, on behalf of
    /// key `by`; returns its record (for `replica`), or `None` if it is
    /// not here.
    pub fn drain(
        &self,
        session_id: SessionId,
        by: &str,
        replica: &str,
    ) -> Option<crate::engine::WorkerRecord> {
        let slot = lock(&self.inner.sessions).get(&session_id).cloned()?;
        slot.details.drained();
        let _ = slot.commands.send(SessionCommand::Drain(by.to_owned()));
        Some(slot.details.record(&slot.info, replica))
    }

    /// The workers connected here, as records of `replica`.
    pub fn workers(&self, replica: &str) -> Vec<crate::engine::WorkerRecord> {
        lock(&self.inner.sessions)
            .values()
            .map(|slot| slot.details.record(&slot.info, replica))
            .collect()
    }

    /// Makes every queue look for ready work (after notices may have been
    /// missed).
    pub fn ready_all(&self) {
        let queues: Vec<QueueName> = self
            .inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for queue in queues {
            self.queue_ready(&queue);
        }
    }

    /// Worker sessions serving `queue` on this gateway.
    pub fn workers_for(&self, queue: &QueueName) -> usize {
        self.inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .map_or(0, |handle| handle.workers.load(Ordering::Acquire))
    }

    /// Worker sessions per queue on this gateway, for metrics.
    pub fn worker_counts(&self) -> Vec<(QueueName, usize)> {
        self.inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(queue, handle)| (queue.clone(), handle.workers.load(Ordering::Acquire)))
            .collect()
    }
}

/// Owns one queue's sessions and their rotation. See the module docs.
struct QueueActor {
    queue: QueueName,
    engine: Arc<dyn Engine>,
    mailbox: mpsc::UnboundedReceiver<QueueMessage>,
    ready_queued: Arc<AtomicBool>,
    credit_queued: Arc<AtomicBool>,
    sessions: Vec<Arc<SessionSlot>>,
    /// Where the next round-robin pass starts.
    cursor: usize,
    /// Whether the engine may have ready tickets (cleared when a claim
    /// comes back short, set by `Ready`).
    has_work: bool,
    /// Counts `Ready` notices, so that a claim started before one does not
    /// clear `has_work` it set.
    ready_generation: u64,
    /// Whether the last claim came back full (tickets left for every
    /// credit): only then do claims overlap.
    backlogged: bool,
}

impl QueueActor {
    async fn run(mut self) {
        let mut claims = FuturesUnordered::new();
        // Leases of sessions that ended before their task reached them,
        // being given back beside the loop (the store's round trip must not
        // hold up every other session's tasks).
        let mut releasing = FuturesUnordered::new();
        loop {
            self.start_claims(&mut claims);
            tokio::select! {
                message = self.mailbox.recv() => {
                    let Some(message) = message else { break };
                    self.apply(message);
                    while let Ok(message) = self.mailbox.try_recv() {
                        self.apply(message);
                    }
                }
                Some(claim) = claims.next() => self.deliver(claim, &mut releasing),
                Some(()) = releasing.next(), if !releasing.is_empty() => {}
            }
        }
        while let Some(claim) = claims.next().await {
            self.deliver(claim, &mut releasing);
        }
        while releasing.next().await.is_some() {}
    }

    fn apply(&mut self, message: QueueMessage) {
        match message {
            QueueMessage::Ready => {
                self.ready_queued.store(false, Ordering::Release);
                self.has_work = true;
                self.ready_generation += 1;
            }
            QueueMessage::Attach(slot) => self.sessions.push(slot),
            QueueMessage::Detach(session_id) => {
                self.sessions.retain(|s| s.info.session_id != session_id);
            }
            QueueMessage::CreditAvailable => {
                self.credit_queued.swap(false, Ordering::AcqRel);
            }
        }
    }

    /// Takes up to `limit` credits, one session at a time in rotation
    /// from the cursor, each with its position. Tickets go to the takers in
    /// this order, and the cursor then moves past the last one served (see
    /// `dispatch`), so every worker gets its turn: true round-robin.
    fn take_credits(&mut self, limit: usize) -> Vec<(usize, Arc<SessionSlot>)> {
        let count = self.sessions.len();
        let mut takers = Vec::new();
        if count == 0 || limit == 0 {
            return takers;
        }
        let start = self.cursor % count;
        loop {
            let before = takers.len();
            for offset in 0..count {
                let position = (start + offset) % count;
                let slot = &self.sessions[position];
                if slot.try_take_credit() {
                    takers.push((position, slot.clone()));
                    if takers.len() == limit {
                        return takers;
                    }
                }
            }
            if takers.len() == before {
                return takers;
            }
        }
    }

    /// Starts claims while the engine may have work, workers have credit
    /// and fewer are out than the queue's backlog calls for.
    fn start_claims(&mut self, claims: &mut FuturesUnordered<PendingClaim>) {
        let in_flight = if self.backlogged { CLAIMS_IN_FLIGHT } else { 1 };
        while self.has_work && claims.len() < in_flight && !self.sessions.is_empty() {
            let ready = self.engine.ready_count(&self.queue);
            let limit = match ready {
                // A `Ready` sent after this count sets `has_work` again.
                Some(0) => {
                    self.has_work = false;
                    return;
                }
                // An exact count: a second claim before the first is polled
                // would chase the same tickets.
                Some(_) if !claims.is_empty() => return,
                Some(ready) => ready.min(CLAIM_BATCH),
                None => CLAIM_BATCH,
            };
            let takers = self.take_credits(limit);
            if takers.is_empty() {
                return;
            }
            let infos: Vec<SessionInfo> = takers.iter().map(|(_, s)| s.info.clone()).collect();
            let engine = self.engine.clone();
            let queue = self.queue.clone();
            let ready_generation = self.ready_generation;
            claims.push(Box::pin(async move {
                let claimed = engine.claim(&queue, &infos).await;
                Claim {
                    takers,
                    ready_generation,
                    claimed,
                }
            }));
        }
    }

    /// Hands a finished claim's tickets to their sessions and gives back the
    /// credits it did not use.
    fn deliver(&mut self, claim: Claim, releasing: &mut FuturesUnordered<PendingRelease>) {
        let Claim {
            takers,
            ready_generation,
            claimed,
        } = claim;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::error!(%error, "claim failed; will retry on the next signal");
                for (_, slot) in &takers {
                    slot.return_credit();
                }
                self.has_work = false;
                self.backlogged = false;
                return;
            }
        };
        self.backlogged = claimed.len() == takers.len();
        // A short claim means the queue ran dry, unless new work was
        // announced after this claim started.
        if claimed.len() < takers.len() && ready_generation == self.ready_generation {
            self.has_work = false;
        }
        let mut unused: Vec<Option<(usize, Arc<SessionSlot>)>> =
            takers.into_iter().map(Some).collect();
        for task in claimed {
            let Some(index) = unused.iter().position(|taker| {
                taker
                    .as_ref()
                    .is_some_and(|(_, s)| s.info.session_id == task.lease.session_id)
            }) else {
                tracing::error!(ticket_id = %task.ticket.id, "claim named a session we did not offer");
                continue;
            };
            let Some((position, slot)) = unused[index].take() else {
                continue;
            };
            self.cursor = position + 1;
            if let Err(mpsc::error::SendError(SessionCommand::Deliver(task))) =
                slot.commands.send(SessionCommand::Deliver(Box::new(task)))
            {
                // The session ended between taking the credit and now: the
                // release makes the ticket ready again (and says so).
                let engine = self.engine.clone();
                releasing.push(Box::pin(async move {
                    let (ticket_id, lease_id) = (task.ticket.id, task.lease.lease_id);
                    if let Err(error) = engine
                        .release(ticket_id, lease_id, ReleaseReason::Undelivered)
                        .await
                    {
                        tracing::error!(%error, %ticket_id, "could not release an undelivered lease");
                    }
                }));
            }
        }
        for (_, slot) in unused.into_iter().flatten() {
            slot.return_credit();
        }
    }
}
