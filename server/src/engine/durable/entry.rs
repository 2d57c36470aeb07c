//! A mutation as the store writes it: encoded once by the writer, then
//! logged (a `Frame` of the group's entries) and applied to redb's tables
//! from the same bytes. Replaying the log at startup applies the same
//! entries again; every entry sets or deletes keys, so applying a sequence
//! twice leaves what applying it once does.

use prost::Message;
use redb::{Table, TableDefinition, WriteTransaction};

use super::super::journal::Mutation;
use super::super::record;

/// Ticket records (without request payloads), by ticket id.
pub(super) const TICKETS: TableDefinition<u128, &[u8]> = TableDefinition::new("tickets");
/// Request payloads, by ticket id: written once, at submit; deleted with the
/// ticket (read back at startup for tickets that may still run).
pub(super) const PAYLOADS: TableDefinition<u128, &[u8]> = TableDefinition::new("payloads");
/// Partial-output chunks, by (ticket id, event seq).
pub(super) const CHUNKS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("chunks");
/// Deleted tickets: deletion time in ns since the epoch.
pub(super) const TOMBSTONES: TableDefinition<u128, u64> = TableDefinition::new("tombstones");
/// Paused queues: name → `record::StoredPause`.
pub(super) const PAUSES: TableDefinition<&str, &[u8]> = TableDefinition::new("pauses");
/// Queues with limits: name → `record::StoredLimits`.
pub(super) const LIMITS: TableDefinition<&str, &[u8]> = TableDefinition::new("limits");
/// Queues' admin-set targets: name → `record::StoredTarget`.
pub(super) const TARGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("targets");
/// Schedules: id → [`ScheduleRow`].
pub(super) const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
/// The store's own state: the log generation it holds everything before.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `META` key: frames of this generation in the log are not yet in redb.
pub(super) const GENERATION: &str = "log_generation";

/// One group commit as logged.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Frame {
    #[prost(message, repeated, tag = "1")]
    pub(crate) entries: Vec<Entry>,
}

/// One mutation, encoded.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Entry {
    #[prost(oneof = "Op", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub(crate) op: Option<Op>,
}

/// What an entry does. Ticket ids are 16 big-endian bytes (`u128`).
#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Op {
    /// Insert or replace a ticket record, and its payload at submit.
    #[prost(message, tag = "1")]
    PutTicket(PutTicket),
    /// Store an output chunk.
    #[prost(message, tag = "2")]
    PutChunk(PutChunk),
    /// Delete a ticket with its payload and chunks, leaving a tombstone;
    /// or only its chunks.
    #[prost(message, tag = "3")]
    DeleteTicket(DeleteTicket),
    /// Forget a tombstone.
    #[prost(message, tag = "4")]
    DeleteTombstone(Id),
    /// Set a queue's limits.
    #[prost(message, tag = "5")]
    PutLimits(QueueRecord),
    /// Set or clear a queue's pause (no record: cleared).
    #[prost(message, tag = "6")]
    PutPause(QueueRecord),
    /// Store or delete a schedule (no record: deleted); the name is its id,
    /// the record a [`ScheduleRow`].
    #[prost(message, tag = "7")]
    PutSchedule(QueueRecord),
    /// Set or clear a queue's admin-set target (no record: cleared).
    #[prost(message, tag = "8")]
    PutTarget(QueueRecord),
}

/// A schedule as its table holds it.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ScheduleRow {
    #[prost(uint64, tag = "1")]
    revision: u64,
    #[prost(uint64, optional, tag = "2")]
    due: Option<u64>,
    #[prost(bytes = "bytes", tag = "3")]
    body: bytes::Bytes,
}

impl ScheduleRow {
    fn encode(record: &crate::engine::ScheduleRecord) -> Vec<u8> {
        Self {
            revision: record.revision,
            due: record.due.map(record::nanos),
            body: record.body.clone(),
        }
        .encode_to_vec()
    }

    /// The schedule `id` stored as `bytes`.
    pub(super) fn decode(
        id: &str,
        bytes: &[u8],
    ) -> Result<crate::engine::ScheduleRecord, prost::DecodeError> {
        let row = Self::decode_bytes(bytes)?;
        Ok(crate::engine::ScheduleRecord {
            id: id.to_owned(),
            revision: row.revision,
            due: row.due.map(record::time),
            body: row.body,
        })
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        <Self as Message>::decode(bytes)
    }
}

/// A ticket id.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Id {
    #[prost(fixed64, tag = "1")]
    high: u64,
    #[prost(fixed64, tag = "2")]
    low: u64,
}

impl Id {
    fn of(id: u128) -> Self {
        Self {
            high: (id >> 64) as u64,
            low: id as u64,
        }
    }

    fn key(&self) -> u128 {
        (u128::from(self.high) << 64) | u128::from(self.low)
    }
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PutTicket {
    #[prost(message, optional, tag = "1")]
    id: Option<Id>,
    #[prost(bytes = "vec", tag = "2")]
    record: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "3")]
    payload: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PutChunk {
    #[prost(message, optional, tag = "1")]
    id: Option<Id>,
    #[prost(uint64, tag = "2")]
    seq: u64,
    #[prost(bytes = "vec", tag = "3")]
    output: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct DeleteTicket {
    #[prost(message, optional, tag = "1")]
    id: Option<Id>,
    #[prost(uint64, tag = "2")]
    deleted_at: u64,
    /// Only the chunks (an operator's retry), not the ticket.
    #[prost(bool, tag = "3")]
    chunks_only: bool,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct QueueRecord {
    #[prost(string, tag = "1")]
    queue: String,
    #[prost(bytes = "vec", optional, tag = "2")]
    record: Option<Vec<u8>>,
}

impl Entry {
    /// Encodes a mutation.
    pub(crate) fn of(mutation: &Mutation) -> Self {
        let op = match mutation {
            Mutation::PutTicket {
                ticket,
                with_payload,
            } => Op::PutTicket(PutTicket {
                id: Some(Id::of(ticket.id.0.as_u128())),
                record: record::encode(ticket),
                payload: with_payload.then(|| ticket.payload.encode_to_vec()),
            }),
            Mutation::PutChunk { ticket_id, chunk } => Op::PutChunk(PutChunk {
                id: Some(Id::of(ticket_id.0.as_u128())),
                seq: chunk.seq,
                output: chunk.output.encode_to_vec(),
            }),
            Mutation::DeleteChunks { ticket_id } => Op::DeleteTicket(DeleteTicket {
                id: Some(Id::of(ticket_id.0.as_u128())),
                deleted_at: 0,
                chunks_only: true,
            }),
            Mutation::DeleteTicket {
                ticket_id,
                deleted_at,
            } => Op::DeleteTicket(DeleteTicket {
                id: Some(Id::of(ticket_id.0.as_u128())),
                deleted_at: record::nanos(*deleted_at),
                chunks_only: false,
            }),
            Mutation::DeleteTombstone { ticket_id } => {
                Op::DeleteTombstone(Id::of(ticket_id.0.as_u128()))
            }
            Mutation::PutQueueLimits { queue, limits } => Op::PutLimits(QueueRecord {
                queue: queue.as_str().to_string(),
                record: Some(record::encode_limits(limits)),
            }),
            Mutation::PutQueuePause { queue, pause } => Op::PutPause(QueueRecord {
                queue: queue.as_str().to_string(),
                record: pause.as_ref().map(record::encode_pause),
            }),
            Mutation::PutQueueTarget { queue, target } => Op::PutTarget(QueueRecord {
                queue: queue.as_str().to_string(),
                record: target.as_ref().map(record::encode_target),
            }),
            Mutation::PutSchedule(schedule) => Op::PutSchedule(QueueRecord {
                queue: schedule.id.clone(),
                record: Some(ScheduleRow::encode(schedule)),
            }),
            Mutation::DeleteSchedule { id } => Op::PutSchedule(QueueRecord {
                queue: id.clone(),
                record: None,
            }),
        };
        Self { op: Some(op) }
    }
}

/// What an entry does to a ticket's stored output chunks.
pub(super) enum ChunkChange<'e> {
    /// Stores the chunk `seq` (its encoded payload).
    Put(u128, u64, &'e [u8]),
    /// Deletes them all.
    Clear(u128),
}

impl Entry {
    /// What this entry does to stored chunks, if anything.
    pub(super) fn chunk_change(&self) -> Option<ChunkChange<'_>> {
        let key = |id: &Option<Id>| id.as_ref().map_or(0, Id::key);
        match self.op.as_ref()? {
            Op::PutChunk(chunk) => Some(ChunkChange::Put(key(&chunk.id), chunk.seq, &chunk.output)),
            Op::DeleteTicket(delete) => Some(ChunkChange::Clear(key(&delete.id))),
            _ => None,
        }
    }
}

/// redb's tables, open in one write transaction.
pub(super) struct Tables<'t> {
    tickets: Table<'t, u128, &'static [u8]>,
    payloads: Table<'t, u128, &'static [u8]>,
    chunks: Table<'t, (u128, u64), &'static [u8]>,
    tombstones: Table<'t, u128, u64>,
    pauses: Table<'t, &'static str, &'static [u8]>,
    limits: Table<'t, &'static str, &'static [u8]>,
    schedules: Table<'t, &'static str, &'static [u8]>,
    targets: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            tickets: txn.open_table(TICKETS)?,
            payloads: txn.open_table(PAYLOADS)?,
            chunks: txn.open_table(CHUNKS)?,
            tombstones: txn.open_table(TOMBSTONES)?,
            pauses: txn.open_table(PAUSES)?,
            limits: txn.open_table(LIMITS)?,
            schedules: txn.open_table(SCHEDULES)?,
            targets: txn.open_table(TARGETS)?,
        })
    }

    /// Applies one entry.
    pub(super) fn apply(&mut self, entry: &Entry) -> Result<(), redb::Error> {
        let Some(op) = &entry.op else {
            return Ok(());
        };
        let key = |id: &Option<Id>| id.as_ref().map_or(0, Id::key);
        match op {
            Op::PutTicket(put) => {
                let id = key(&put.id);
                self.tickets.insert(id, put.record.as_slice())?;
                if let Some(payload) = &put.payload {
                    self.payloads.insert(id, payload.as_slice())?;
                }
            }
            Op::PutChunk(chunk) => {
                self.chunks
                    .insert((key(&chunk.id), chunk.seq), chunk.output.as_slice())?;
            }
            Op::DeleteTicket(delete) => {
                let id = key(&delete.id);
                self.chunks
                    .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
                if !delete.chunks_only {
                    self.tickets.remove(id)?;
                    self.payloads.remove(id)?;
                    self.tombstones.insert(id, delete.deleted_at)?;
                }
            }
            Op::DeleteTombstone(id) => {
                self.tombstones.remove(id.key())?;
            }
            Op::PutLimits(limits) => {
                if let Some(record) = &limits.record {
                    self.limits
                        .insert(limits.queue.as_str(), record.as_slice())?;
                }
            }
            Op::PutPause(pause) => match &pause.record {
                Some(record) => {
                    self.pauses
                        .insert(pause.queue.as_str(), record.as_slice())?;
                }
                None => {
                    self.pauses.remove(pause.queue.as_str())?;
                }
            },
            Op::PutSchedule(schedule) => match &schedule.record {
                Some(row) => {
                    self.schedules
                        .insert(schedule.queue.as_str(), row.as_slice())?;
                }
                None => {
                    self.schedules.remove(schedule.queue.as_str())?;
                }
            },
            Op::PutTarget(target) => match &target.record {
                Some(record) => {
                    self.targets
                        .insert(target.queue.as_str(), record.as_slice())?;
                }
                None => {
                    self.targets.remove(target.queue.as_str())?;
                }
            },
        }
        Ok(())
    }
}
