//! Queue statistics over replicas: each replica counts its own transitions
//! in memory (as the local engine does) and adds them, once a second and
//! before every read, to per-bucket hashes of the queue that expire after
//! the five-minute window. A read sums the hashes, so the admin API shows
//! every replica's work. They are statistics: a replica killed loses at
//! most its last second, and a flush retried after a lost answer may count
//! twice.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::layout::Keys;
use super::store::QueryKind;
use super::{Inner, lock};
use crate::domain::{QueueName, Ticket};
use crate::engine::window::{self, QueueStats, Sample, Tally, Window};
use crate::engine::{Before, EngineError};

/// How long a bucket's hash outlives its bucket.
const KEEP: Duration =
    Duration::from_secs(window::BUCKET.as_secs() * (window::FIVE_MINUTE_BUCKETS + 2));

/// How often the timer pass flushes.
pub(super) const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Keys {
    /// A queue's statistics for one bucket (a hash of [`Tally::fields`]).
    pub(super) fn window(&self, queue: &QueueName, bucket: u64) -> String {
        format!("{}:win:{bucket}", self.tag(queue))
    }
}

impl Inner {
    /// Counts a committed transition in this replica's unflushed window.
    pub(super) fn count_sample(&self, before: &Before, after: &Ticket, now: SystemTime) {
        let samples = Sample::of(before, after, now);
        if samples.iter().all(Option::is_none) {
            return;
        }
        let mut windows = lock(&self.windows);
        let window = windows.entry(after.queue.clone()).or_default();
        for sample in samples.into_iter().flatten() {
            window.add(sample, now);
        }
    }

    /// Adds what this replica counted to the queues' hashes (one pipeline
    /// per queue: each queue is one slot). Counts are dropped, with a log
    /// line, if Redis does not take them.
    pub(super) async fn flush_windows(&self) {
        let windows: Vec<(QueueName, Window)> = lock(&self.windows).drain().collect();
        let flushes = windows.into_iter().map(|(queue, mut window)| async move {
            let buckets = window.take();
            let result: Result<(), EngineError> = self
                .run(|| {
                    let mut pipe = redis::pipe();
                    for (bucket, tally) in &buckets {
                        let key = self.keys.window(&queue, *bucket);
                        for (field, count) in tally.fields() {
                            pipe.hincr(&key, field, count).ignore();
                        }
                        pipe.expire(&key, KEEP.as_secs() as i64).ignore();
                    }
                    QueryKind::Pipe(pipe)
                })
                .await;
            if let Err(error) = result {
                tracing::debug!(%queue, %error, "queue statistics not flushed; dropped");
            }
        });
        futures::future::join_all(flushes).await;
    }

    /// `queue`'s statistics over every replica, at `now`.
    pub(super) async fn read_stats(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> Result<QueueStats, EngineError> {
        let current = window::bucket_of(now);
        let first = current.saturating_sub(window::FIVE_MINUTE_BUCKETS - 1);
        let keys: Vec<String> = (first..=current)
            .map(|bucket| self.keys.window(queue, bucket))
            .collect();
        // (position, fields) of the buckets that hold anything.
        let found: Vec<(u64, HashMap<String, u64>)> = self
            .run(|| QueryKind::Cmd(self.evalsha(&self.scripts.windows, &keys, Vec::new())))
            .await?;
        let tallies: Vec<(u64, Tally)> = found
            .iter()
            .map(|(position, fields)| (first + position - 1, Tally::from_fields(fields)))
            .collect();
        Ok(QueueStats::from_buckets(
            tallies.iter().map(|(bucket, tally)| (*bucket, tally)),
            now,
        ))
    }
}
