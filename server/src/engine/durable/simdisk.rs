//! A simulated disk for the store's tests: the database file and the log in
//! memory, with every write, length change and sync counted across both, so
//! that a test can make the disk fail from any one of them on (a crash, or
//! a full disk) and then take what a real disk could hold afterwards.

use std::io;
use std::sync::{Arc, Mutex};

use super::wal::LogFile;

/// What survives a crash of the simulated disk.
#[derive(Debug, Clone, Copy)]
pub(super) enum Survives {
    /// Everything written (the process died; the page cache lived).
    Written,
    /// Only what was synced (power loss).
    Synced,
    /// The database as written; the log's unsynced writes in order, the
    /// last of them torn in half.
    TornLog,
}

#[derive(Debug, Clone)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct File {
    synced: Vec<u8>,
    unsynced: Vec<Change>,
    current: Vec<u8>,
}

fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(offset, data) => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        Change::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

impl File {
    fn change(&mut self, change: Change) {
        apply(&mut self.current, &change);
        self.unsynced.push(change);
    }

    fn sync(&mut self) {
        self.synced = self.current.clone();
        self.unsynced.clear();
    }

    fn image(&self, survives: Survives, torn: bool) -> Vec<u8> {
        match (survives, torn) {
            (Survives::Written, _) | (Survives::TornLog, false) => self.current.clone(),
            (Survives::Synced, _) => self.synced.clone(),
            (Survives::TornLog, true) => {
                let mut bytes = self.synced.clone();
                if let Some((last, before)) = self.unsynced.split_last() {
                    for change in before {
                        apply(&mut bytes, change);
                    }
                    let torn = match last {
                        Change::Write(offset, data) => {
                            Change::Write(*offset, data[..data.len() / 2].to_vec())
                        }
                        other => other.clone(),
                    };
                    apply(&mut bytes, &torn);
                }
                bytes
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Writes, length changes and syncs so far, of both files.
    ops: u64,
    /// Syncs of the log so far (one per group commit).
    log_syncs: u64,
    /// From this op on, everything fails (a crash).
    crash_at: Option<u64>,
    /// Everything that would need space fails (a full disk).
    full: bool,
    /// The database file, then the log.
    files: [File; 2],
}

/// The disk; clones share it.
#[derive(Debug, Default, Clone)]
pub(super) struct SimDisk(Arc<Mutex<State>>);

impl SimDisk {
    /// A disk holding these files, as after a restart.
    pub(super) fn from_images(database: Vec<u8>, log: Vec<u8>) -> Self {
        let file = |bytes: Vec<u8>| File {
            synced: bytes.clone(),
            unsynced: Vec::new(),
            current: bytes,
        };
        Self(Arc::new(Mutex::new(State {
            files: [file(database), file(log)],
            ..State::default()
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations so far.
    pub(super) fn ops(&self) -> u64 {
        self.state().ops
    }

    /// Syncs of the log so far.
    pub(super) fn log_syncs(&self) -> u64 {
        self.state().log_syncs
    }

    /// Fails the `n`th operation from now, and every one after it.
    pub(super) fn crash_after(&self, n: u64) {
        let mut state = self.state();
        state.crash_at = Some(state.ops + n);
    }

    /// Makes the disk full, or not.
    pub(super) fn set_full(&self, full: bool) {
        self.state().full = full;
    }

    /// What the two files hold after the crash, as `survives` says.
    pub(super) fn images(&self, survives: Survives) -> (Vec<u8>, Vec<u8>) {
        let state = self.state();
        (
            state.files[0].image(survives, false),
            state.files[1].image(survives, true),
        )
    }

    /// The database file as redb sees it.
    pub(super) fn database(&self) -> DatabaseFile {
        DatabaseFile(self.clone())
    }

    /// The log file.
    pub(super) fn log(&self) -> Box<dyn LogFile> {
        Box::new(Log(self.clone()))
    }

    fn operate(&self, file: usize, change: Option<Change>) -> io::Result<()> {
        let mut state = self.state();
        state.ops += 1;
        if state.crash_at.is_some_and(|at| state.ops >= at) {
            return Err(io::Error::other("simulated crash"));
        }
        if state.full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device",
            ));
        }
        match change {
            Some(change) => state.files[file].change(change),
            None => {
                state.log_syncs += u64::from(file == 1);
                state.files[file].sync();
            }
        }
        Ok(())
    }
}

/// The database file on the simulated disk.
#[derive(Debug)]
pub(super) struct DatabaseFile(SimDisk);

impl redb::StorageBackend for DatabaseFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.state().files[0].current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.0.state();
        let bytes = &state.files[0].current;
        let start = offset as usize;
        let source = bytes
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.operate(0, Some(Change::SetLen(len)))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.operate(0, None)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0
            .operate(0, Some(Change::Write(offset, data.to_vec())))
    }
}

struct Log(SimDisk);

impl LogFile for Log {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.0.state().files[1].current.clone())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0
            .operate(1, Some(Change::Write(offset, data.to_vec())))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.operate(1, None)
    }
}
