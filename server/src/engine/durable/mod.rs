//! The durable embedded store: the local engine over redb, with a
//! write-ahead log in front of it.
//!
//! One writer thread owns the database and the log ([`writer`]). Appends
//! arrive on a channel in journal order; the writer takes everything queued
//! (group commit), writes it to the log as one frame and syncs it
//! ([`wal`]), applies it to redb without a sync, hands the group's events to
//! the watchers, then raises the durable watermark ([`watermark`]). Under
//! load one sync covers many submits and results; a lone request is synced
//! at once. Checkpoints make redb durable and restart the log. At startup
//! the log's last generation is applied to redb, then the whole store is
//! read back to rebuild the in-memory queues and timers (see [`open`]).
//!
//! Why a log and not redb's own durable commits: a redb commit writes about
//! thirteen scattered places and syncs twice, and every ticket waits for
//! two of them (BENCHMARKS.md section 9); the log writes one contiguous run
//! and syncs once, and redb's writes move to checkpoints that many groups
//! share. The log's crash consistency is tested at every write and sync
//! boundary of both files (`crash_tests.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use tokio::time::Instant;

use async_trait::async_trait;
use redb::Database;
use tokio::sync::oneshot;

use super::journal::{Journal, Mutation, Recovered};
use super::{EngineConfig, EngineError, EngineListener, LocalEngine, StoreError, TicketChange};
use crate::domain::{Chunk, TicketId};
use entry::{Entry, Frame};
use read::{ReadError, Unapplied, create_tables, generation, read_all, read_chunks};
use wal::{FileLog, LogFile, Wal};
use watermark::{Append, Outcome, Publish, Publisher, Watermark};
use writer::{Checkpoints, Failure, Store, store_error, write_loop};

mod entry;
mod outbox;
mod read;
mod wal;
mod watermark;
mod writer;

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
    /// The log beside the store could not be opened or read.
    #[error("cannot open the store's log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
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
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
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
    // Opened after the database, whose lock keeps a second gateway off both.
    let log_path = log_path(path);
    let log_error = |source| OpenError::Log {
        path: log_path.clone(),
        source,
    };
    let existed = log_path.exists();
    let log = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&log_path)
        .map_err(log_error)?;
    if !existed {
        // The new file's name must survive a crash as its frames do.
        std::fs::File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .map_err(log_error)?;
    }
    let reopen_path = path.to_path_buf();
    let reopen: Reopen = Box::new(move || {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&reopen_path)
            .map_err(redb::Error::from)
    });
    open_database(
        database,
        Box::new(FileLog(log)),
        path,
        config,
        reopen,
        Checkpoints::default(),
    )
}

/// The log beside the store file: `store.redb` → `store.redb-wal`.
pub(crate) fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Opens the database again after redb refused further use of it (a
/// failed write leaves it unusable until closed and reopened).
type Reopen = Box<dyn FnMut() -> Result<Database, redb::Error> + Send>;

/// Builds the engine over an open database and its log (`path` names the
/// store in messages).
fn open_database(
    database: Database,
    log: Box<dyn LogFile>,
    path: &Path,
    config: EngineConfig,
    reopen: Reopen,
    checkpoints: Checkpoints,
) -> Result<LocalEngine, OpenError> {
    let (journal, recovered, replayed) = open_journal(database, log, path, reopen, checkpoints)?;
    let engine = LocalEngine::with_journal(config, Arc::new(journal));
    let counts = (recovered.tickets.len(), recovered.chunks.len());
    engine.restore(recovered);
    tracing::info!(
        path = %path.display(),
        tickets = counts.0,
        chunks = counts.1,
        replayed,
        "durable store opened"
    );
    Ok(engine)
}

/// Applies the log's last generation to redb durably, under a new
/// generation, reads everything back, and starts the writer. Also returns
/// how many logged entries were replayed.
fn open_journal(
    database: Database,
    mut log: Box<dyn LogFile>,
    path: &Path,
    reopen: Reopen,
    checkpoints: Checkpoints,
) -> Result<(RedbJournal, Recovered, usize), OpenError> {
    let database_error = |e: redb::Error| OpenError::Database {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let log_error = |source| OpenError::Log {
        path: log_path(path),
        source,
    };
    create_tables(&database).map_err(database_error)?;
    let generation = generation(&database).map_err(database_error)?;
    let frames = wal::scan(&log.read_all().map_err(log_error)?, generation).map_err(|e| {
        OpenError::Corrupt {
            path: log_path(path),
            reason: e.to_string(),
        }
    })?;
    let replayed: Vec<Entry> = frames.into_iter().flat_map(|f: Frame| f.entries).collect();
    let database = Arc::new(database);
    let mut store = Store {
        reader: Arc::new(std::sync::RwLock::new(Some(database.clone()))),
        database,
        reopen,
        wal: Wal::new(log, generation),
        generation,
        logged: Vec::new(),
        unapplied: Arc::default(),
        last_checkpoint: Instant::now(),
        checkpoints,
    };
    // Every open starts a generation: frames an earlier process left
    // beyond what was read here can never pass for this one's.
    store
        .checkpoint(&replayed)
        .map_err(|failure| match failure {
            Failure::Store(e) => database_error(e),
            Failure::Log(source) => log_error(source),
        })?;
    let recovered = read_all(&store.database).map_err(|e| match e {
        ReadError::Database(e) => database_error(e),
        ReadError::Record(reason) => OpenError::Corrupt {
            path: path.to_path_buf(),
            reason,
        },
    })?;
    Ok((
        RedbJournal::start(store, path.to_path_buf()),
        recovered,
        replayed.len(),
    ))
}

/// The redb journal. See the module docs.
pub(crate) struct RedbJournal {
    /// Numbers appends and sends them to the writer in that order.
    outbox: outbox::Outbox,
    watermark: Arc<Watermark>,
    listener: Arc<OnceLock<Arc<dyn EngineListener>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The database for reads (finished tickets' output lives only on
    /// disk); `None` while the writer reopens it.
    reader: Reader,
    /// Output chunks logged but not yet in redb.
    unapplied: Arc<Unapplied>,
}

/// The database as readers reach it; the writer swaps it when it reopens.
type Reader = Arc<std::sync::RwLock<Option<Arc<Database>>>>;

impl RedbJournal {
    fn start(store: Store, path: PathBuf) -> Self {
        let reader = store.reader.clone();
        let unapplied = store.unapplied.clone();
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
            std::thread::Builder::new()
                .name("asyncgate-writer".into())
                .spawn(move || {
                    write_loop(store, path, receiver, &publish, poisoned);
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
            outbox: outbox::Outbox::new(sender, poisoned),
            watermark,
            listener,
            writer: Mutex::new(writer),
            reader,
            unapplied,
        }
    }
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
        let unapplied = self.unapplied.clone();
        tokio::task::spawn_blocking(move || read_chunks(&database, &unapplied, id, after_seq))
            .await
            .map_err(|e| EngineError::internal(format!("reading output chunks of {id}: {e}")))?
            .map_err(|e| {
                let (error, detail) = match e {
                    ReadError::Database(e) => {
                        let detail = e.to_string();
                        (store_error(&Failure::Store(e), "reading"), detail)
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
        self.outbox.append(mutations, events)
    }

    fn hold(&self) {
        self.outbox.hold();
    }

    fn release(&self) {
        self.outbox.release();
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
        self.outbox.close();
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
mod crash_tests;
#[cfg(test)]
mod simdisk;
#[cfg(test)]
mod tests;
