//! The durable embedded store: the local engine with a redb journal.
//!
//! One writer thread owns the database. Appends arrive on a channel in
//! journal order; the writer takes everything queued (group commit), applies
//! it in one write transaction, commits with `Durability::Immediate` (fsync),
//! hands the batch's events to the watchers, then raises the durable
//! watermark. Under load one fsync covers many submits and results; a lone
//! request commits at once. At startup the whole store is read back to
//! rebuild the in-memory queues and timers (see [`open`]).
//!
//! A failed commit (disk full, I/O error) is retried until it succeeds (the
//! database reopened when redb asks for it), with everything appended since
//! joining the batch, so memory and disk agree again once the disk does.
//! Meanwhile the affected calls and every later one get `UNAVAILABLE` with
//! the cause (nothing they did is acknowledged), and submits are refused
//! before they touch memory; the first commit that succeeds ends that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::journal::{Journal, Mutation, Recovered};
use super::record;
use super::{
    EngineConfig, EngineError, EngineListener, LocalEngine, StoreError, StoreErrorKind,
    TicketChange,
};
use crate::domain::ticket::Payload;
use crate::domain::{Chunk, QueueName, TicketId};

/// Ticket records (without request payloads), by ticket id.
const TICKETS: TableDefinition<u128, &[u8]> = TableDefinition::new("tickets");
/// Request payloads, by ticket id: written once, at submit; deleted with the
/// ticket (read back at startup for tickets that may still run).
const PAYLOADS: TableDefinition<u128, &[u8]> = TableDefinition::new("payloads");
/// Partial-output chunks, by (ticket id, event seq).
const CHUNKS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("chunks");
/// Deleted tickets: deletion time in ns since the epoch.
const TOMBSTONES: TableDefinition<u128, u64> = TableDefinition::new("tombstones");
/// Paused queues: name → `record::StoredPause`.
const PAUSES: TableDefinition<&str, &[u8]> = TableDefinition::new("pauses");
/// Queues with limits: name → `record::StoredLimits`.
const LIMITS: TableDefinition<&str, &[u8]> = TableDefinition::new("limits");

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 4096;

/// redb's page cache. The engine keeps every ticket in memory and reads the
/// file only at startup, so the cache need only hold the B-tree paths that
/// commits rewrite; redb's default (1 GiB) would grow the process by what
/// was written, for nothing.
const CACHE_BYTES: usize = 64 << 20;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory for the file could not be created.
    #[error("cannot create the directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// redb refused the file (corrupt, not a redb file, locked, no permission).
    #[error("cannot open the store {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// A record could not be decoded.
    #[error("the store {path} holds an unreadable record: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Opens (or creates) the store at `path`, reads it back, and returns a
/// ready engine whose in-memory state matches the disk. Tickets that were
/// leased when the previous process stopped lose that lease (the attempt
/// counts) and go back to their queue.
pub(crate) fn open(path: &Path, config: EngineConfig) -> Result<LocalEngine, OpenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let database_error = |e: redb::Error| OpenError::Database {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let database = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| database_error(e.into()))?;
    let reopen_path = path.to_path_buf();
    let reopen: Reopen = Box::new(move || {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&reopen_path)
            .map_err(redb::Error::from)
    });
    open_database(database, path, config, reopen)
}

/// Opens the database again after redb refused further use of it (a
/// failed write leaves it unusable until closed and reopened).
type Reopen = Box<dyn FnMut() -> Result<Database, redb::Error> + Send>;

/// Builds the engine over an open database (`path` names it in messages).
fn open_database(
    database: Database,
    path: &Path,
    config: EngineConfig,
    reopen: Reopen,
) -> Result<LocalEngine, OpenError> {
    let database_error = |e: redb::Error| OpenError::Database {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    create_tables(&database).map_err(database_error)?;
    let recovered = read_all(&database).map_err(|e| match e {
        ReadError::Database(e) => database_error(e),
        ReadError::Record(reason) => OpenError::Corrupt {
            path: path.to_path_buf(),
            reason,
        },
    })?;
    let journal = Arc::new(RedbJournal::start(database, path.to_path_buf(), reopen));
    let engine = LocalEngine::with_journal(config, journal);
    let counts = (recovered.tickets.len(), recovered.chunks.len());
    engine.restore(recovered);
    tracing::info!(
        path = %path.display(),
        tickets = counts.0,
        chunks = counts.1,
        "durable store opened"
    );
    Ok(engine)
}

fn create_tables(database: &Database) -> Result<(), redb::Error> {
    let txn = database.begin_write()?;
    txn.open_table(TICKETS)?;
    txn.open_table(PAYLOADS)?;
    txn.open_table(CHUNKS)?;
    txn.open_table(TOMBSTONES)?;
    txn.open_table(PAUSES)?;
    txn.open_table(LIMITS)?;
    txn.commit()?;
    Ok(())
}

enum ReadError {
    Database(redb::Error),
    Record(String),
}

impl<E: Into<redb::Error>> From<E> for ReadError {
    fn from(e: E) -> Self {
        Self::Database(e.into())
    }
}

fn read_all(database: &Database) -> Result<Recovered, ReadError> {
    let txn = database.begin_read()?;
    let tickets = txn.open_table(TICKETS)?;
    let payloads = txn.open_table(PAYLOADS)?;
    let chunks = txn.open_table(CHUNKS)?;
    let tombstones = txn.open_table(TOMBSTONES)?;
    let pauses = txn.open_table(PAUSES)?;
    let limits = txn.open_table(LIMITS)?;
    let mut recovered = Recovered::default();
    for entry in tickets.iter()? {
        let (key, value) = entry?;
        let id = TicketId(uuid::Uuid::from_u128(key.value()));
        let mut ticket = record::decode(id, value.value(), Payload::default())
            .map_err(|e| ReadError::Record(format!("ticket {id}: {e}")))?;
        // A succeeded ticket's request body is not kept in memory; one
        // that may run again (unfinished, or failed, cancelled or expired:
        // an operator may retry it) needs it.
        if ticket.holds_request()
            && let Some(bytes) = payloads.get(key.value())?
        {
            let payload = Payload::decode(bytes.value())
                .map_err(|e| ReadError::Record(format!("payload of ticket {id}: {e}")))?;
            ticket.payload = Arc::new(payload);
        }
        recovered.tickets.push(ticket);
    }
    for entry in chunks.iter()? {
        let (key, value) = entry?;
        let (ticket, seq) = key.value();
        let id = TicketId(uuid::Uuid::from_u128(ticket));
        let output = Payload::decode(value.value())
            .map_err(|e| ReadError::Record(format!("output chunk {seq} of ticket {id}: {e}")))?;
        recovered.chunks.push((id, Chunk { seq, output }));
    }
    for entry in tombstones.iter()? {
        let (key, value) = entry?;
        recovered.tombstones.push((
            TicketId(uuid::Uuid::from_u128(key.value())),
            record::time(value.value()),
        ));
    }
    for entry in pauses.iter()? {
        let (key, value) = entry?;
        let name = key.value();
        let queue = QueueName::parse_scoped(name)
            .map_err(|e| ReadError::Record(format!("paused queue {name:?}: {e}")))?;
        let pause = record::decode_pause(value.value())
            .map_err(|e| ReadError::Record(format!("pause of queue {name:?}: {e}")))?;
        recovered.paused.push((queue, pause));
    }
    for entry in limits.iter()? {
        let (key, value) = entry?;
        let name = key.value();
        let queue = QueueName::parse_scoped(name)
            .map_err(|e| ReadError::Record(format!("limited queue {name:?}: {e}")))?;
        let queue_limits = record::decode_limits(value.value())
            .map_err(|e| ReadError::Record(format!("limits of queue {name:?}: {e}")))?;
        recovered.limits.push((queue, queue_limits));
    }
    Ok(recovered)
}

/// One append, as the writer receives it.
struct Append {
    seq: u64,
    mutations: Vec<Mutation>,
    events: Vec<TicketChange>,
}

/// How far the journal is on disk, and who waits for more. Each waiter is
/// woken once, when its own append is durable (a shared watch channel would
/// wake every waiter on every commit).
#[derive(Default)]
struct Watermark {
    /// Every append up to this one is durable.
    durable: AtomicU64,
    waiting: Mutex<Waiting>,
}

/// Told `Ok` once its append is durable, or why it never will be.
type Waiter = oneshot::Sender<Result<(), StoreError>>;

#[derive(Default)]
struct Waiting {
    /// Set while commits fail (until one succeeds), or for good once the
    /// writer stopped: appends after `durable` are not acknowledged.
    failed: Option<StoreError>,
    /// Waiters by the append they wait for.
    by_append: BTreeMap<u64, Vec<Waiter>>,
}

impl Watermark {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends up to `last` are durable: wake their waiters.
    fn advance(&self, last: u64) {
        self.durable.store(last, Ordering::Release);
        let done = {
            let mut waiting = self.waiting();
            let later = waiting.by_append.split_off(&(last + 1));
            std::mem::replace(&mut waiting.by_append, later)
        };
        for sender in done.into_values().flatten() {
            let _ = sender.send(Ok(()));
        }
    }

    /// Writes fail for now: fail the waiters, and every later one until
    /// [`Self::recover`].
    fn failing(&self, why: StoreError) {
        self.fail(why);
    }

    /// Writes succeed again: new waiters wait as usual.
    fn recover(&self) {
        self.waiting().failed = None;
    }

    /// Whether writes fail right now, and why.
    fn failure(&self) -> Option<StoreError> {
        self.waiting().failed.clone()
    }

    /// Nothing more will become durable: fail every waiter, now and later.
    fn fail(&self, why: StoreError) {
        let waiters = {
            let mut waiting = self.waiting();
            waiting.failed.get_or_insert(why.clone());
            std::mem::take(&mut waiting.by_append)
        };
        for sender in waiters.into_values().flatten() {
            let _ = sender.send(Err(why.clone()));
        }
    }
}

/// The redb journal. See the module docs.
pub(crate) struct RedbJournal {
    /// The next append number and the channel, locked together so that
    /// numbers reach the writer in order.
    sender: Mutex<(u64, Option<mpsc::Sender<Append>>)>,
    watermark: Arc<Watermark>,
    listener: Arc<OnceLock<Arc<dyn EngineListener>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    poisoned: Arc<AtomicBool>,
    /// The database for reads (finished tickets' output lives only on
    /// disk); `None` while the writer reopens it.
    reader: Reader,
}

/// The database as readers reach it; the writer swaps it when it reopens.
type Reader = Arc<std::sync::RwLock<Option<Arc<Database>>>>;

impl RedbJournal {
    fn start(database: Database, path: PathBuf, reopen: Reopen) -> Self {
        let database = Arc::new(database);
        let reader: Reader = Arc::new(std::sync::RwLock::new(Some(database.clone())));
        let (sender, receiver) = mpsc::channel::<Append>();
        let watermark = Arc::new(Watermark::default());
        let listener: Arc<OnceLock<Arc<dyn EngineListener>>> = Arc::default();
        let poisoned = Arc::new(AtomicBool::new(false));
        let writer = {
            let publish = Publish::start(Arc::new(Publisher {
                listener: listener.clone(),
                watermark: watermark.clone(),
            }));
            let poisoned = poisoned.clone();
            let reader = reader.clone();
            std::thread::Builder::new()
                .name("asyncgate-writer".into())
                .spawn(move || {
                    write_loop(database, reopen, reader, path, receiver, &publish, poisoned);
                    publish.send(Outcome::Failed(StoreError::unavailable(
                        "the store's writer stopped; restart the gateway",
                    )));
                })
                .ok()
        };
        if writer.is_none() {
            poisoned.store(true, Ordering::Release);
            watermark.fail(StoreError::unavailable(
                "the store's writer could not start; restart the gateway",
            ));
        }
        Self {
            sender: Mutex::new((0, Some(sender))),
            watermark,
            listener,
            writer: Mutex::new(writer),
            poisoned,
            reader,
        }
    }
}

/// A finished ticket's stored output chunks after `after_seq`, read from
/// disk.
fn read_chunks(database: &Database, id: TicketId, after_seq: u64) -> Result<Vec<Chunk>, ReadError> {
    let txn = database.begin_read()?;
    let table = txn.open_table(CHUNKS)?;
    let key = id.0.as_u128();
    let mut chunks = Vec::new();
    for entry in table.range((key, after_seq.saturating_add(1))..=(key, u64::MAX))? {
        let (key, value) = entry?;
        let seq = key.value().1;
        let output = Payload::decode(value.value())
            .map_err(|e| ReadError::Record(format!("output chunk {seq} of ticket {id}: {e}")))?;
        chunks.push(Chunk { seq, output });
    }
    Ok(chunks)
}

/// What became of a batch the writer took.
enum Outcome {
    /// Durable, up to this append.
    Committed(Vec<Append>, u64),
    /// Commits fail for now, for this reason; they are being retried.
    Failing(StoreError),
    /// Commits succeed again (the batch follows as `Committed`).
    Recovered,
    /// Nothing more will be durable, for this reason.
    Failed(StoreError),
}

/// Tells the watchers and the waiters what became of each batch, in order:
/// a batch's events first, then its watermark (whoever waited for an append
/// finds its events already delivered).
struct Publisher {
    listener: Arc<OnceLock<Arc<dyn EngineListener>>>,
    watermark: Arc<Watermark>,
}

impl Publisher {
    fn apply(&self, outcome: Outcome) {
        match outcome {
            Outcome::Committed(batch, last) => {
                if let Some(listener) = self.listener.get() {
                    for append in batch {
                        for event in append.events {
                            listener.ticket_changed(event);
                        }
                    }
                }
                self.watermark.advance(last);
            }
            Outcome::Failing(why) => self.watermark.failing(why),
            Outcome::Recovered => self.watermark.recover(),
            Outcome::Failed(why) => self.watermark.fail(why),
        }
    }
}

/// How the writer hands outcomes to the [`Publisher`]: to a task of the
/// runtime that opened the store, when there is one. Its wakes of waiting
/// calls and watchers then come from inside the runtime (from the writer
/// thread, each would cost a cross-thread unpark), and the writer starts
/// its next commit at once instead of delivering first.
struct Publish {
    publisher: Arc<Publisher>,
    task: Option<tokio::sync::mpsc::UnboundedSender<Outcome>>,
}

impl Publish {
    fn start(publisher: Arc<Publisher>) -> Self {
        let task = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
            let publisher = publisher.clone();
            runtime.spawn(async move {
                while let Some(outcome) = receiver.recv().await {
                    publisher.apply(outcome);
                }
            });
            sender
        });
        Self { publisher, task }
    }

    fn send(&self, outcome: Outcome) {
        let outcome = match &self.task {
            Some(task) => match task.send(outcome) {
                Ok(()) => return,
                // The runtime is gone: deliver here.
                Err(tokio::sync::mpsc::error::SendError(outcome)) => outcome,
            },
            None => outcome,
        };
        self.publisher.apply(outcome);
    }
}

fn write_loop(
    mut database: Arc<Database>,
    mut reopen: Reopen,
    reader: Reader,
    path: PathBuf,
    receiver: mpsc::Receiver<Append>,
    publish: &Publish,
    poisoned: Arc<AtomicBool>,
) {
    let mut batch = Vec::new();
    while let Ok(first) = receiver.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if poisoned.load(Ordering::Acquire) {
            batch.clear();
            continue;
        }
        if let Err(error) = commit(&database, &batch) {
            let failure = store_error(&error, "writing to");
            tracing::error!(
                path = %path.display(),
                %error,
                error_id = %failure.id(),
                "committing to the store failed; refusing writes and retrying until it succeeds"
            );
            publish.send(Outcome::Failing(failure));
            let mut delay = std::time::Duration::from_millis(50);
            let mut last_error = error;
            loop {
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
                // What was appended meanwhile joins the batch, in order.
                while let Ok(next) = receiver.try_recv() {
                    batch.push(next);
                }
                if matches!(last_error, redb::Error::PreviousIo) {
                    // redb refuses a database after a failed write until it
                    // is closed and opened again (readers let go first).
                    *reader.write().unwrap_or_else(|p| p.into_inner()) = None;
                    drop(database);
                    database = loop {
                        match reopen() {
                            Ok(reopened) => break Arc::new(reopened),
                            Err(error) => {
                                tracing::debug!(%error, "reopening the store failed; retrying");
                                std::thread::sleep(delay);
                            }
                        }
                    };
                    *reader.write().unwrap_or_else(|p| p.into_inner()) = Some(database.clone());
                }
                match commit(&database, &batch) {
                    Ok(()) => break,
                    Err(error) => last_error = error,
                }
            }
            tracing::info!(path = %path.display(), appends = batch.len(), "writing to the store succeeds again");
            publish.send(Outcome::Recovered);
        }
        let last = batch.last().map_or(0, |a| a.seq);
        publish.send(Outcome::Committed(std::mem::take(&mut batch), last));
    }
}

/// A failed commit or read as the caller is told of it: the kind and what
/// to do, not redb's internals or the file's path (the caller logs those
/// under the error's id).
fn store_error(error: &redb::Error, doing: &str) -> StoreError {
    let full = |io: &std::io::Error| {
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    };
    let typed = match error {
        redb::Error::Io(io) if full(io) => StoreError::new(
            StoreErrorKind::Full,
            "the disk holding the store is full; writes resume once there is room",
        ),
        redb::Error::Corrupted(_) => {
            StoreError::corrupt("the store file is damaged; the gateway's log has the detail")
        }
        _ => StoreError::unavailable(format!("{doing} the store failed; retry shortly")),
    };
    typed.with_source(std::io::Error::other(error.to_string()))
}

fn commit(database: &Database, batch: &[Append]) -> Result<(), redb::Error> {
    let mut txn = database.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut tickets = txn.open_table(TICKETS)?;
        let mut payloads = txn.open_table(PAYLOADS)?;
        let mut chunks = txn.open_table(CHUNKS)?;
        let mut tombstones = txn.open_table(TOMBSTONES)?;
        let mut pauses = txn.open_table(PAUSES)?;
        let mut limits = txn.open_table(LIMITS)?;
        for append in batch {
            for mutation in &append.mutations {
                match mutation {
                    Mutation::PutTicket {
                        ticket,
                        with_payload,
                    } => {
                        let key = ticket.id.0.as_u128();
                        tickets.insert(key, record::encode(ticket).as_slice())?;
                        if *with_payload {
                            payloads.insert(key, ticket.payload.encode_to_vec().as_slice())?;
                        }
                    }
                    Mutation::PutChunk { ticket_id, chunk } => {
                        chunks.insert(
                            (ticket_id.0.as_u128(), chunk.seq),
                            chunk.output.encode_to_vec().as_slice(),
                        )?;
                    }
                    Mutation::DeleteChunks { ticket_id } => {
                        let key = ticket_id.0.as_u128();
                        chunks.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)?;
                    }
                    Mutation::DeleteTicket {
                        ticket_id,
                        deleted_at,
                    } => {
                        let key = ticket_id.0.as_u128();
                        tickets.remove(key)?;
                        payloads.remove(key)?;
                        chunks.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)?;
                        tombstones.insert(key, record::nanos(*deleted_at))?;
                    }
                    Mutation::DeleteTombstone { ticket_id } => {
                        tombstones.remove(ticket_id.0.as_u128())?;
                    }
                    Mutation::PutQueueLimits {
                        queue,
                        limits: queue_limits,
                    } => {
                        limits.insert(
                            queue.as_str(),
                            record::encode_limits(queue_limits).as_slice(),
                        )?;
                    }
                    Mutation::PutQueuePause { queue, pause } => match pause {
                        Some(pause) => {
                            pauses
                                .insert(queue.as_str(), record::encode_pause(pause).as_slice())?;
                        }
                        None => {
                            pauses.remove(queue.as_str())?;
                        }
                    },
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[async_trait]
impl Journal for RedbJournal {
    fn wants_mutations(&self) -> bool {
        true
    }

    fn close(&self) {
        self.stop();
    }

    fn keeps_chunks(&self) -> bool {
        true
    }

    async fn read_chunks(&self, id: TicketId, after_seq: u64) -> Result<Vec<Chunk>, EngineError> {
        let database = self
            .reader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                EngineError::unavailable("the store is being reopened; retry shortly")
            })?;
        tokio::task::spawn_blocking(move || read_chunks(&database, id, after_seq))
            .await
            .map_err(|e| EngineError::internal(format!("reading output chunks of {id}: {e}")))?
            .map_err(|e| {
                let (error, detail) = match e {
                    ReadError::Database(e) => {
                        (store_error(&e, "reading"), e.to_string())
                    }
                    ReadError::Record(reason) => (
                        StoreError::corrupt(format!(
                            "an output chunk of ticket {id} is unreadable; the gateway's log has the detail"
                        )),
                        reason,
                    ),
                };
                tracing::error!(ticket_id = %id, error_id = %error.id(), %detail, "reading output chunks failed");
                EngineError::Store(error)
            })
    }

    fn refusing(&self) -> Option<EngineError> {
        self.watermark.failure().map(EngineError::Store)
    }

    fn append(&self, mutations: Vec<Mutation>, events: Vec<TicketChange>) -> u64 {
        let mut sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        sender.0 += 1;
        let seq = sender.0;
        let delivered = sender.1.as_ref().is_some_and(|channel| {
            channel
                .send(Append {
                    seq,
                    mutations,
                    events,
                })
                .is_ok()
        });
        if !delivered {
            self.poisoned.store(true, Ordering::Release);
        }
        seq
    }

    async fn durable(&self, n: u64) -> Result<(), EngineError> {
        if self.watermark.durable.load(Ordering::Acquire) >= n {
            return Ok(());
        }
        let receiver = {
            let mut waiting = self.watermark.waiting();
            // Checked again under the lock: the writer advances, then wakes.
            if self.watermark.durable.load(Ordering::Acquire) >= n {
                return Ok(());
            }
            if let Some(failed) = &waiting.failed {
                return Err(EngineError::Store(failed.clone()));
            }
            let (sender, receiver) = oneshot::channel();
            waiting.by_append.entry(n).or_default().push(sender);
            receiver
        };
        match receiver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failed)) => Err(EngineError::Store(failed)),
            Err(_) => Err(EngineError::unavailable(
                "the store's writer stopped; restart the gateway",
            )),
        }
    }

    fn set_listener(&self, listener: Arc<dyn EngineListener>) {
        let _ = self.listener.set(listener);
    }
}

impl RedbJournal {
    /// Closing the channel lets the writer finish what is queued and exit;
    /// joining it, and dropping the readers' handle, releases the file for
    /// the next open. Later appends fail as a stopped writer's do.
    fn stop(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.1 = None;
        }
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
        if let Ok(mut reader) = self.reader.write() {
            *reader = None;
        }
    }
}

impl Drop for RedbJournal {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
