//! Reading the store: everything at startup (the engine keeps every ticket
//! in memory), and a finished ticket's output chunks, which live on disk
//! alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::super::journal::Recovered;
use super::super::record;
use super::entry::{
    CHUNKS, ChunkChange, Entry, LIMITS, META, PAUSES, PAYLOADS, SCHEDULES, ScheduleRow, TARGETS,
    TICKETS, TOMBSTONES,
};
use crate::domain::ticket::Payload;
use crate::domain::{Chunk, QueueName, TicketId};

pub(super) fn create_tables(database: &Database) -> Result<(), redb::Error> {
    let txn = database.begin_write()?;
    txn.open_table(TICKETS)?;
    txn.open_table(PAYLOADS)?;
    txn.open_table(CHUNKS)?;
    txn.open_table(TOMBSTONES)?;
    txn.open_table(PAUSES)?;
    txn.open_table(LIMITS)?;
    txn.open_table(SCHEDULES)?;
    txn.open_table(TARGETS)?;
    txn.open_table(META)?;
    txn.commit()?;
    Ok(())
}

/// The log generation whose frames are not yet in redb (0 in a store that
/// never had a log).
pub(super) fn generation(database: &Database) -> Result<u64, redb::Error> {
    let txn = database.begin_read()?;
    let meta = txn.open_table(META)?;
    Ok(meta.get(super::entry::GENERATION)?.map_or(0, |g| g.value()))
}

pub(super) enum ReadError {
    /// redb failed.
    Database(redb::Error),
    /// A record did not decode.
    Record(String),
}

impl<E: Into<redb::Error>> From<E> for ReadError {
    fn from(e: E) -> Self {
        Self::Database(e.into())
    }
}

pub(super) fn read_all(database: &Database) -> Result<Recovered, ReadError> {
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
    for entry in txn.open_table(TARGETS)?.iter()? {
        let (key, value) = entry?;
        let name = key.value();
        let queue = QueueName::parse_scoped(name)
            .map_err(|e| ReadError::Record(format!("target queue {name:?}: {e}")))?;
        let target = record::decode_target(value.value())
            .map_err(|e| ReadError::Record(format!("target of queue {name:?}: {e}")))?;
        recovered.targets.push((queue, target));
    }
    for entry in txn.open_table(SCHEDULES)?.iter()? {
        let (key, value) = entry?;
        let id = key.value();
        let schedule = ScheduleRow::decode(id, value.value())
            .map_err(|e| ReadError::Record(format!("schedule {id:?}: {e}")))?;
        recovered.schedules.push(schedule);
    }
    Ok(recovered)
}

/// A finished ticket's stored output chunks after `after_seq`, read from
/// disk.
pub(super) fn read_chunks(
    database: &Database,
    unapplied: &Unapplied,
    id: TicketId,
    after_seq: u64,
) -> Result<Vec<Chunk>, ReadError> {
    // The log's side first: a checkpoint applies to redb, then forgets
    // here, so whatever is missed here is in the read that follows.
    let (cleared, logged) = unapplied.of(id.0.as_u128(), after_seq);
    let mut chunks = if cleared {
        Vec::new()
    } else {
        stored_chunks(database, id, after_seq)?
    };
    if !logged.is_empty() {
        let mut by_seq: BTreeMap<u64, Payload> =
            chunks.into_iter().map(|c| (c.seq, c.output)).collect();
        for (seq, bytes) in logged {
            let output = Payload::decode(bytes.as_slice()).map_err(|e| {
                ReadError::Record(format!("logged output chunk {seq} of ticket {id}: {e}"))
            })?;
            by_seq.insert(seq, output);
        }
        chunks = by_seq
            .into_iter()
            .map(|(seq, output)| Chunk { seq, output })
            .collect();
    }
    Ok(chunks)
}

/// Output chunks logged since the last checkpoint, so not yet in redb, by
/// ticket: the writer adds them as it logs them and forgets them once a
/// checkpoint applied them.
#[derive(Default)]
pub(super) struct Unapplied(Mutex<HashMap<u128, Logged>>);

#[derive(Default)]
struct Logged {
    /// Every chunk stored before was deleted since.
    cleared: bool,
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl Unapplied {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, Logged>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn add(&self, entries: &[Entry]) {
        let mut changes = entries.iter().filter_map(Entry::chunk_change).peekable();
        if changes.peek().is_none() {
            return;
        }
        let mut tickets = self.lock();
        for change in changes {
            match change {
                ChunkChange::Put(id, seq, bytes) => {
                    tickets
                        .entry(id)
                        .or_default()
                        .chunks
                        .insert(seq, bytes.to_vec());
                }
                ChunkChange::Clear(id) => {
                    let logged = tickets.entry(id).or_default();
                    logged.cleared = true;
                    logged.chunks.clear();
                }
            }
        }
    }

    pub(super) fn clear(&self) {
        let mut tickets = self.lock();
        if !tickets.is_empty() {
            *tickets = HashMap::new();
        }
    }

    /// Whether the ticket's stored chunks were deleted since the last
    /// checkpoint, and its logged chunks after `after_seq`.
    fn of(&self, id: u128, after_seq: u64) -> (bool, Vec<(u64, Vec<u8>)>) {
        self.lock().get(&id).map_or((false, Vec::new()), |logged| {
            let after = logged
                .chunks
                .range(after_seq.saturating_add(1)..)
                .map(|(seq, bytes)| (*seq, bytes.clone()))
                .collect();
            (logged.cleared, after)
        })
    }
}

/// The chunks after `after_seq` that redb holds.
fn stored_chunks(
    database: &Database,
    id: TicketId,
    after_seq: u64,
) -> Result<Vec<Chunk>, ReadError> {
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
