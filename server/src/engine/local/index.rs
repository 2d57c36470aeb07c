//! A queue's ready index: its PENDING tickets in dispatch order (highest
//! priority first, FIFO within a priority) and the counts that answer
//! "how many tickets are ahead of mine" without a full scan.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::domain::queue::{Bucket, allowance};
use crate::domain::{QueueLimits, QueuePause, TicketId, TicketState};
use crate::engine::StateCounts;
use crate::engine::window::Window;

/// Ready-order key: highest priority first, then FIFO.
pub(super) type ReadyKey = (Reverse<i32>, u64);

/// Positions are counted exactly up to this many tickets of one priority;
/// beyond it `tickets_ahead` is estimated from FIFO numbers.
const EXACT_POSITION_LIMIT: usize = 4096;

/// A queue's ready tickets, highest priority first, FIFO within a priority.
#[derive(Default)]
pub(super) struct QueueIndex {
    pub(super) ready: BTreeMap<ReadyKey, TicketId>,
    /// Ready tickets per priority, so positions need no full scan.
    per_priority: BTreeMap<Reverse<i32>, usize>,
    /// PENDING tickets waiting for a time: a backoff, or a delayed submit.
    pub(super) delayed: usize,
    /// Tickets per state, for the admin API (no scan to count).
    pub(super) counts: StateCounts,
    /// PENDING tickets by the time they came due (`Ticket::due_at`): the
    /// first is the one waiting longest.
    pending_by_age: BTreeSet<(SystemTime, TicketId)>,
    /// Set while the queue is paused: nothing is claimed.
    pub(super) pause: Option<QueuePause>,
    /// Flow control on claims.
    pub(super) limits: QueueLimits,
    /// The dispatch token bucket, while a rate is set.
    bucket: Option<Bucket>,
    /// Tickets popped by claims not yet leased: they count as running
    /// against `max_concurrent`.
    pub(super) leasing: u64,
    /// Recent results and latencies.
    pub(super) window: Window,
}

impl QueueIndex {
    pub(super) fn pending(&self) -> usize {
        self.ready.len() + self.delayed
    }

    /// A ticket due at `due_at` (see `Ticket::due_at`) moved from state
    /// `before` to `after` (`None`: it did not exist, or no longer does).
    pub(super) fn tally(
        &mut self,
        id: TicketId,
        due_at: SystemTime,
        before: Option<TicketState>,
        after: Option<TicketState>,
    ) {
        if before == after {
            return;
        }
        self.counts.moved(before, after);
        if before == Some(TicketState::Pending) {
            self.pending_by_age.remove(&(due_at, id));
        }
        if after == Some(TicketState::Pending) {
            self.pending_by_age.insert((due_at, id));
        }
    }

    /// Sets the limits; a new rate starts with a full bucket.
    pub(super) fn set_limits(&mut self, limits: QueueLimits, now: SystemTime) {
        self.bucket = (limits.max_dispatch_per_second > 0).then(|| Bucket::full(&limits, now));
        self.limits = limits;
    }

    /// How many tickets may be claimed now: none while paused, else what
    /// the limits allow.
    pub(super) fn allowance(&mut self, now: SystemTime) -> usize {
        if self.pause.is_some() {
            return 0;
        }
        if let Some(bucket) = &mut self.bucket {
            bucket.refill(&self.limits, now);
        }
        allowance(
            &self.limits,
            self.bucket.as_ref(),
            self.counts.running + self.leasing,
        )
    }

    /// `n` tickets were popped for leasing: spend their tokens, and (under
    /// a cap) count them as running until they are leased. Returns how
    /// many were counted, to give back with [`Self::leased`].
    pub(super) fn spend(&mut self, n: usize) -> u64 {
        if let Some(bucket) = &mut self.bucket {
            bucket.tokens -= n as f64;
        }
        if self.limits.max_concurrent == 0 {
            return 0;
        }
        self.leasing += n as u64;
        n as u64
    }

    /// Tickets counted by [`Self::spend`] are leased (or given up).
    pub(super) fn leased(&mut self, counted: u64) {
        self.leasing = self.leasing.saturating_sub(counted);
    }

    /// Ready tickets a limit holds back at `now`: all of them while the
    /// limits allow no lease (and the queue is not paused), else none.
    pub(super) fn held_back_count(&self, now: SystemTime) -> u64 {
        if !self.held_back() {
            return 0;
        }
        let mut bucket = self.bucket;
        if let Some(bucket) = &mut bucket {
            bucket.refill(&self.limits, now);
        }
        let allowed = allowance(
            &self.limits,
            bucket.as_ref(),
            self.counts.running + self.leasing,
        );
        if allowed == 0 {
            self.ready.len() as u64
        } else {
            0
        }
    }

    /// Whether ready tickets wait only for a limit (the timer pass then
    /// announces the queue ready again as the limit eases).
    pub(super) fn held_back(&self) -> bool {
        self.limits.any() && self.pause.is_none() && !self.ready.is_empty()
    }

    /// Since when the longest-waiting PENDING ticket has been due (in the
    /// future when every pending ticket is scheduled).
    pub(super) fn oldest_pending_at(&self) -> Option<SystemTime> {
        self.pending_by_age.first().map(|(at, _)| *at)
    }

    pub(super) fn push(&mut self, key: ReadyKey, id: TicketId) {
        if self.ready.insert(key, id).is_none() {
            *self.per_priority.entry(key.0).or_default() += 1;
        }
    }

    pub(super) fn remove(&mut self, key: &ReadyKey) {
        if self.ready.remove(key).is_some() {
            self.count_out(key.0);
        }
    }

    pub(super) fn pop_first(&mut self) -> Option<TicketId> {
        let (key, id) = self.ready.pop_first()?;
        self.count_out(key.0);
        Some(id)
    }

    fn count_out(&mut self, priority: Reverse<i32>) {
        if let Some(count) = self.per_priority.get_mut(&priority) {
            *count -= 1;
            if *count == 0 {
                self.per_priority.remove(&priority);
            }
        }
    }

    /// Ready tickets ahead of `key`: exact for short queues, otherwise an
    /// estimate from FIFO numbers (holes left by cancelled tickets make it
    /// an upper bound).
    pub(super) fn ahead(&self, key: ReadyKey) -> u64 {
        let higher: usize = self.per_priority.range(..key.0).map(|(_, n)| n).sum();
        let level = self.per_priority.get(&key.0).copied().unwrap_or(0);
        let within = if level <= EXACT_POSITION_LIMIT {
            self.ready.range((key.0, 0)..key).count()
        } else {
            match self.ready.range((key.0, 0)..key).next() {
                Some(((_, first), _)) => usize::try_from(key.1 - first)
                    .unwrap_or(usize::MAX)
                    .min(level.saturating_sub(1)),
                None => 0,
            }
        };
        (higher + within) as u64
    }
}
