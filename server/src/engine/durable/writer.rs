//! The writer thread: the one owner of the database and the log.
//!
//! Each group commit (every append queued when the writer looks) is encoded
//! once, written to the log as one frame and synced (one contiguous write,
//! one `fdatasync`), and only then announced: its events go to the watchers
//! and the callers waiting for it are answered. redb is not touched: every
//! half second with something new, or once the log holds 8 MiB, a
//! checkpoint applies everything logged since the last one in one durable
//! redb commit and starts a new log generation, so the log is rewritten
//! from its start and stays small (and the next startup replays at most
//! that much). A redb commit per group, even one that does not sync, cost
//! more CPU than the log's write and sync together. Until their checkpoint,
//! logged output chunks are also kept in [`Unapplied`] for readers.
//!
//! A failed write (disk full, I/O error) is retried until it succeeds: the
//! group and everything appended meanwhile go with everything logged since
//! the last checkpoint into one durable redb commit (the database reopened
//! first when redb asks for it), which is then a checkpoint.
//! Meanwhile calls get `UNAVAILABLE` with the cause and submits are refused
//! before they touch memory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use tokio::time::Instant;

use redb::{Database, Durability};

use super::read::Unapplied;

use super::entry::{Entry, Frame, GENERATION, META, Tables};
use super::wal::Wal;
use super::watermark::{Append, Outcome, Publish};
use super::{Reader, Reopen};
use crate::engine::{StoreError, StoreErrorKind};

/// Most appends taken into one group commit.
const MAX_BATCH: usize = 4096;

/// When the writer checkpoints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkpoints {
    /// Once the log holds this many bytes.
    pub(crate) log_bytes: u64,
    /// Once this long has passed since the last one, with something new.
    pub(crate) interval: Duration,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            log_bytes: 8 << 20,
            interval: Duration::from_millis(500),
        }
    }
}

/// Why a write failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// Writing or syncing the log.
    Log(std::io::Error),
    /// redb.
    Store(redb::Error),
}

impl<E: Into<redb::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Store(e.into())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Log(e) => write!(f, "writing the log: {e}"),
            Self::Store(e) => write!(f, "{e}"),
        }
    }
}

/// The database and the log, with what the log holds beyond redb's last
/// durable commit.
pub(super) struct Store {
    pub(super) database: Arc<Database>,
    pub(super) reopen: Reopen,
    pub(super) reader: Reader,
    pub(super) wal: Wal,
    /// The log generation being written.
    pub(super) generation: u64,
    /// Entries logged since the last checkpoint, which applies them.
    pub(super) logged: Vec<Entry>,
    /// Their output chunks, for readers.
    pub(super) unapplied: Arc<Unapplied>,
    pub(super) last_checkpoint: Instant,
    pub(super) checkpoints: Checkpoints,
}

impl Store {
    /// Logs a group.
    fn write(&mut self, entries: Vec<Entry>) -> Result<(), Failure> {
        let frame = Frame { entries };
        self.wal.append(&frame).map_err(Failure::Log)?;
        self.unapplied.add(&frame.entries);
        self.logged.extend(frame.entries);
        Ok(())
    }

    fn due(&self) -> bool {
        !self.logged.is_empty()
            && (self.wal.len() >= self.checkpoints.log_bytes
                || self.last_checkpoint.elapsed() >= self.checkpoints.interval)
    }

    /// Applies what was logged since the last checkpoint to redb in one
    /// durable commit, and starts a new log generation. `pending`: entries
    /// not logged (a failed group), committed after the rest.
    pub(super) fn checkpoint(&mut self, pending: &[Entry]) -> Result<(), Failure> {
        let next = self.generation + 1;
        let mut txn = self.database.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut tables = Tables::open(&txn)?;
            for entry in self.logged.iter().chain(pending) {
                tables.apply(entry)?;
            }
            txn.open_table(META)?.insert(GENERATION, next)?;
        }
        txn.commit()?;
        self.generation = next;
        self.wal.rewind(next);
        self.logged.clear();
        self.unapplied.clear();
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Closes and opens the database again (redb refuses a database after a
    /// failed write until then; readers let go first).
    fn reopen(&mut self) -> Result<(), redb::Error> {
        *self.reader.write().unwrap_or_else(|p| p.into_inner()) = None;
        let database = Arc::new((self.reopen)()?);
        self.database = database.clone();
        *self.reader.write().unwrap_or_else(|p| p.into_inner()) = Some(database);
        Ok(())
    }
}

/// The writer thread's loop; returns when the journal closes.
pub(super) fn write_loop(
    mut store: Store,
    path: PathBuf,
    receiver: mpsc::Receiver<Append>,
    publish: &Publish,
    poisoned: Arc<AtomicBool>,
) {
    let mut batch = Vec::new();
    loop {
        let wait = store
            .checkpoints
            .interval
            .saturating_sub(store.last_checkpoint.elapsed());
        let first = match receiver.recv_timeout(wait) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if store.due() && !checkpoint(&mut store, &path, &receiver, publish) {
                    return;
                }
                if store.logged.is_empty() {
                    // Nothing to checkpoint: sleep until there is.
                    match receiver.recv() {
                        Ok(first) => first,
                        Err(_) => break,
                    }
                } else {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
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
        let entries = encode(&batch);
        if let Err(failure) = store.write(entries) {
            // The group may not be in the log: it goes into the recovery's
            // durable commit, re-encoded with whatever joins it.
            if !recover(&mut store, &path, failure, &mut batch, &receiver, publish) {
                return;
            }
        }
        let last = batch.last().map_or(0, |a| a.seq);
        publish.send(Outcome::Committed(std::mem::take(&mut batch), last));
        if store.due() && !checkpoint(&mut store, &path, &receiver, publish) {
            return;
        }
    }
    // Closing: a last checkpoint, so the next open has nothing to replay.
    if !store.logged.is_empty()
        && let Err(error) = store.checkpoint(&[])
    {
        tracing::warn!(path = %path.display(), %error, "the last checkpoint failed; the next start replays the log");
    }
}

/// A checkpoint; on failure, the recovery. False when the journal closed
/// meanwhile.
fn checkpoint(
    store: &mut Store,
    path: &std::path::Path,
    receiver: &mpsc::Receiver<Append>,
    publish: &Publish,
) -> bool {
    match store.checkpoint(&[]) {
        Ok(()) => true,
        Err(failure) => {
            let mut batch = Vec::new();
            let recovered = recover(store, path, failure, &mut batch, receiver, publish);
            if recovered && !batch.is_empty() {
                let last = batch.last().map_or(0, |a| a.seq);
                publish.send(Outcome::Committed(batch, last));
            }
            recovered
        }
    }
}

fn encode(batch: &[Append]) -> Vec<Entry> {
    batch
        .iter()
        .flat_map(|append| append.mutations.iter().map(Entry::of))
        .collect()
}

/// After a failed write: refuse work, and retry one durable commit of
/// everything not known durable in redb (the log since the last checkpoint,
/// `batch`, and whatever is appended meanwhile, which joins `batch`) until
/// it succeeds. False if the journal closed first.
fn recover(
    store: &mut Store,
    path: &std::path::Path,
    failure: Failure,
    batch: &mut Vec<Append>,
    receiver: &mpsc::Receiver<Append>,
    publish: &Publish,
) -> bool {
    let refused = store_error(&failure, "writing to");
    tracing::error!(
        path = %path.display(),
        error = %failure,
        error_id = %refused.id(),
        "writing to the store failed; refusing writes and retrying until it succeeds"
    );
    publish.send(Outcome::Failing(refused));
    let mut delay = Duration::from_millis(50);
    let mut reopen = matches!(failure, Failure::Store(redb::Error::PreviousIo));
    loop {
        // Waits, but wakes at once if the journal closes.
        match receiver.recv_timeout(delay) {
            Ok(next) => batch.push(next),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
        delay = (delay * 2).min(Duration::from_secs(2));
        // What was appended meanwhile joins the batch, in order.
        while let Ok(next) = receiver.try_recv() {
            batch.push(next);
        }
        if reopen && let Err(error) = store.reopen() {
            tracing::debug!(%error, "reopening the store failed; retrying");
            continue;
        }
        match store.checkpoint(&encode(batch)) {
            Ok(()) => break,
            Err(failure) => reopen = matches!(failure, Failure::Store(redb::Error::PreviousIo)),
        }
    }
    tracing::info!(path = %path.display(), appends = batch.len(), "writing to the store succeeds again");
    publish.send(Outcome::Recovered);
    true
}

/// A failed write or read as the caller is told of it: the kind and what
/// to do, not redb's internals or the file's path (the caller logs those
/// under the error's id).
pub(super) fn store_error(failure: &Failure, doing: &str) -> StoreError {
    let full = |io: &std::io::Error| {
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    };
    let typed = match failure {
        Failure::Store(redb::Error::Io(io)) | Failure::Log(io) if full(io) => StoreError::new(
            StoreErrorKind::Full,
            "the disk holding the store is full; writes resume once there is room",
        ),
        Failure::Store(redb::Error::Corrupted(_)) => {
            StoreError::corrupt("the store file is damaged; the gateway's log has the detail")
        }
        _ => StoreError::unavailable(format!("{doing} the store failed; retry shortly")),
    };
    typed.with_source(std::io::Error::other(failure.to_string()))
}
