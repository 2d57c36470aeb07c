//! What the store tells an operator: a queue's counts per state, oldest
//! pending ticket, pause and limits; what holds its tickets back; and the
//! workers connected to any gateway sharing it. Read by the admin API, the
//! metrics and waiting reasons, never by dispatch.

use std::time::SystemTime;

use super::window::QueueStats;
use crate::domain::{QueueLimits, QueueName, QueuePause, SessionId, TicketState};

/// Tickets of one queue per state (terminal ones while retained).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// PENDING (ready or in backoff).
    pub pending: u64,
    /// RUNNING.
    pub running: u64,
    /// SUCCEEDED.
    pub succeeded: u64,
    /// FAILED.
    pub failed: u64,
    /// CANCELLED.
    pub cancelled: u64,
    /// EXPIRED.
    pub expired: u64,
}

impl StateCounts {
    /// The count of `state`.
    pub fn get_mut(&mut self, state: TicketState) -> &mut u64 {
        match state {
            TicketState::Pending => &mut self.pending,
            TicketState::Running => &mut self.running,
            TicketState::Succeeded => &mut self.succeeded,
            TicketState::Failed => &mut self.failed,
            TicketState::Cancelled => &mut self.cancelled,
            TicketState::Expired => &mut self.expired,
        }
    }

    /// A ticket moved from `before` to `after` (`None`: it did not exist /
    /// no longer exists).
    pub fn moved(&mut self, before: Option<TicketState>, after: Option<TicketState>) {
        if before == after {
            return;
        }
        if let Some(state) = before {
            let count = self.get_mut(state);
            *count = count.saturating_sub(1);
        }
        if let Some(state) = after {
            *self.get_mut(state) += 1;
        }
    }
}

/// A queue as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue (as stored: `tenant/name` for a tenant's).
    pub queue: QueueName,
    /// Its tickets per state.
    pub counts: StateCounts,
    /// Since when its longest-waiting PENDING ticket has been due (its
    /// submit, or the time a delayed submit asked for); `None` when no
    /// pending ticket is due yet.
    pub oldest_pending_at: Option<SystemTime>,
    /// PENDING tickets waiting for a time: delayed submits not yet due and
    /// retries waiting out their backoff (part of `counts.pending`).
    pub scheduled: u64,
    /// Set while it is paused.
    pub pause: Option<QueuePause>,
    /// Its flow control.
    pub limits: QueueLimits,
    /// Ready tickets a limit holds back now (0 while paused or unlimited).
    pub held_back: u64,
    /// Its recent results and latencies.
    pub stats: QueueStats,
}

impl QueueInfo {
    /// A queue no ticket or worker has used yet (one a target is set on).
    pub fn unused(queue: QueueName) -> Self {
        Self {
            queue,
            counts: StateCounts::default(),
            oldest_pending_at: None,
            scheduled: 0,
            pause: None,
            limits: QueueLimits::default(),
            held_back: 0,
            stats: crate::engine::window::QueueStats::default(),
        }
    }
}

/// What may hold a queue's PENDING tickets back besides the line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFlow {
    /// Set while paused.
    pub pause: Option<QueuePause>,
    /// Its limits.
    pub limits: QueueLimits,
    /// Tickets running now.
    pub running: u64,
}

/// A connected worker as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    /// Its session, name and queues.
    pub session_id: SessionId,
    /// The name it gave.
    pub worker_name: String,
    /// The queues it serves (stored names).
    pub queues: Vec<QueueName>,
    /// Its address as the gateway saw it.
    pub peer: Option<String>,
    /// Tasks it runs at once.
    pub max_in_flight: u32,
    /// When its stream opened.
    pub connected_at: SystemTime,
    /// Its last heartbeat or progress.
    pub last_heard_at: SystemTime,
    /// The gateway (replica) its stream is connected to.
    pub replica: String,
    /// Drained: it gets no new tasks.
    pub draining: bool,
}
