//! The journal: how the local engine makes its transitions durable.
//!
//! The local engine applies every transition to its in-memory state under the
//! ticket's shard lock and, still under that lock, appends the resulting
//! mutations and watcher events to the journal, which numbers the append. A
//! caller is answered only once `durable(n)` says its append is on disk, and
//! watchers hear of a change only after it is durable, in append order (so a
//! ticket's events keep their seq order). Reads wait for the ticket's last
//! append too, so nothing not yet durable is ever shown.
//!
//! The memory journal is the trivial case: nothing to write, events go out at
//! once, and every append is "durable" immediately.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;

use super::{EngineError, EngineListener, TicketChange};
use crate::domain::{Chunk, QueueLimits, QueueName, QueuePause, QueueTarget, Ticket, TicketId};

/// One change to stored state.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Insert or replace a ticket's record; `with_payload` when its request
    /// payload must be written too (only at submit: it stays stored until
    /// the ticket is deleted).
    PutTicket {
        /// The record after the transition.
        ticket: Arc<Ticket>,
        /// Write the request payload as well.
        with_payload: bool,
    },
    /// Append a partial-output chunk.
    PutChunk {
        /// Its ticket.
        ticket_id: TicketId,
        /// The chunk.
        chunk: Chunk,
    },
    /// Delete a ticket's output chunks (an operator's retry starts its
    /// output afresh).
    DeleteChunks {
        /// The ticket.
        ticket_id: TicketId,
    },
    /// Delete a ticket with its payload and chunks, leaving a tombstone.
    DeleteTicket {
        /// The ticket.
        ticket_id: TicketId,
        /// When it was deleted (the tombstone's time).
        deleted_at: SystemTime,
    },
    /// Forget a tombstone.
    DeleteTombstone {
        /// The ticket it stood for.
        ticket_id: TicketId,
    },
    /// Set a queue's limits (all zero: unlimited).
    PutQueueLimits {
        /// The queue.
        queue: QueueName,
        /// The limits.
        limits: QueueLimits,
    },
    /// Set (or, with `None`, clear) a queue's pause.
    PutQueuePause {
        /// The queue.
        queue: QueueName,
        /// The pause.
        pause: Option<QueuePause>,
    },
    /// Set (or, with `None`, clear) a queue's admin-set target.
    PutQueueTarget {
        /// The queue.
        queue: QueueName,
        /// The target.
        target: Option<QueueTarget>,
    },
    /// Store a schedule (its new revision).
    PutSchedule(super::ScheduleRecord),
    /// Delete a schedule.
    DeleteSchedule {
        /// Its id as stored.
        id: String,
    },
}

/// Everything a durable journal read back at startup.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every stored ticket, with its payload.
    pub tickets: Vec<Ticket>,
    /// Every stored output chunk, in (ticket, seq) order.
    pub chunks: Vec<(TicketId, Chunk)>,
    /// Tombstones of deleted tickets.
    pub tombstones: Vec<(TicketId, SystemTime)>,
    /// Paused queues.
    pub paused: Vec<(QueueName, QueuePause)>,
    /// Queues with limits.
    pub limits: Vec<(QueueName, QueueLimits)>,
    /// Queues' admin-set targets.
    pub targets: Vec<(QueueName, QueueTarget)>,
    /// Schedules.
    pub schedules: Vec<super::ScheduleRecord>,
}

/// Where the local engine's transitions go to become durable.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Whether appends need mutations at all (false for memory: the engine
    /// then skips building them).
    fn wants_mutations(&self) -> bool;

    /// Queues mutations and the watcher events they cause; returns the
    /// append's number. Called under shard locks: must not block.
    fn append(&self, mutations: Vec<Mutation>, events: Vec<TicketChange>) -> u64;

    /// Resolves once append `n` (and every earlier one) is durable.
    async fn durable(&self, n: u64) -> Result<(), EngineError>;

    /// Holds appends back from the disk until the matching
    /// [`Journal::release`], then hands them over as one: a batch of
    /// submits is then one commit (one sync), rather than whatever the
    /// writer happened to take while the batch was being stored. Holds
    /// nest; one must end in the synchronous code that took it (others'
    /// appends wait meanwhile).
    fn hold(&self) {}

    /// Ends a [`Journal::hold`].
    fn release(&self) {}

    /// Installs the listener that receives the events after durability.
    fn set_listener(&self, listener: Arc<dyn EngineListener>);

    /// Whether output chunks are kept here (on disk), so that the engine
    /// need not keep a finished ticket's chunks in memory.
    fn keeps_chunks(&self) -> bool {
        false
    }

    /// A ticket's kept chunks after `after_seq` (see
    /// [`Journal::keeps_chunks`]; durable ones only).
    async fn read_chunks(&self, _id: TicketId, _after_seq: u64) -> Result<Vec<Chunk>, EngineError> {
        Ok(Vec::new())
    }

    /// Why new work should be refused before it touches memory (writes
    /// are failing right now), if it should.
    fn refusing(&self) -> Option<EngineError> {
        None
    }

    /// Writes what is queued and lets go of the store (its file), though
    /// the engine may still be referenced: the gateway's shutdown ends
    /// with it, so the next open of the same file succeeds at once.
    fn close(&self) {}
}

/// The journal of the memory engine: nothing is written, events go out at
/// once (under the caller's lock, so in order).
#[derive(Default)]
pub(crate) struct MemoryJournal {
    listener: OnceLock<Arc<dyn EngineListener>>,
}

#[async_trait]
impl Journal for MemoryJournal {
    fn wants_mutations(&self) -> bool {
        false
    }

    fn append(&self, _mutations: Vec<Mutation>, events: Vec<TicketChange>) -> u64 {
        if let Some(listener) = self.listener.get() {
            for event in events {
                listener.ticket_changed(event);
            }
        }
        0
    }

    async fn durable(&self, _n: u64) -> Result<(), EngineError> {
        Ok(())
    }

    fn set_listener(&self, listener: Arc<dyn EngineListener>) {
        let _ = self.listener.set(listener);
    }
}
