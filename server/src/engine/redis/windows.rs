//! Queue statistics over replicas: each replica counts its own transitions
//! in memory (as the local engine does) and adds them, once a second and
//! before every read, to the queue's ring of buckets: one hash, so a read
//! is one HGETALL in the queue's pipeline (21 bucket keys per queue made
//! ListQueues over 100 queues cost 2,100 reads). A read sums the buckets,
//! so the admin API shows every replica's work. They are statistics: a
//! replica killed loses at most its last second, and a flush retried after
//! a lost answer may count twice.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::layout::Keys;
use super::store::QueryKind;
use super::{Inner, lock};
use crate::domain::{QueueName, Ticket};
use crate::engine::window::{self, QueueStats, Sample, Tally, Window};
use crate::engine::{Before, EngineError};

/// How long a quiet queue's ring outlives its last flush.
const KEEP: Duration =
    Duration::from_secs(window::BUCKET.as_secs() * (window::HISTORY_BUCKETS + 2));

/// How often the timer pass flushes.
pub(super) const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Keys {
    /// A queue's statistics: a ring of [`window::HISTORY_BUCKETS`]
    /// buckets in one hash (see `windows.lua`).
    pub(super) fn window(&self, queue: &QueueName) -> String {
        format!("{}:stats", self.tag(queue))
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

    /// Adds what this replica counted to the queues' rings (one script call
    /// per queue). Counts are dropped, with a log line, if Redis does not
    /// take them.
    pub(super) async fn flush_windows(&self) {
        let windows: Vec<(QueueName, Window)> = lock(&self.windows).drain().collect();
        let flushes = windows.into_iter().map(|(queue, mut window)| async move {
            let mut args = vec![KEEP.as_secs().to_string().into_bytes()];
            for (bucket, tally) in window.take() {
                let fields = tally.fields();
                args.push(bucket.to_string().into_bytes());
                args.push((bucket % window::HISTORY_BUCKETS).to_string().into_bytes());
                args.push(fields.len().to_string().into_bytes());
                for (name, count) in fields {
                    args.push(name.into_bytes());
                    args.push(count.to_string().into_bytes());
                }
            }
            let keys = [self.keys.window(&queue)];
            let result: Result<i64, EngineError> = self
                .run(|| QueryKind::Cmd(self.evalsha(&self.scripts.windows, &keys, args.clone())))
                .await;
            if let Err(error) = result {
                tracing::debug!(%queue, %error, "queue statistics not flushed; dropped");
            }
        });
        futures::future::join_all(flushes).await;
    }
}

/// The statistics in a queue's ring (its hash's fields), at `now`.
pub(super) fn stats_of(fields: &HashMap<String, u64>, now: SystemTime) -> QueueStats {
    let mut slots: HashMap<&str, (Option<u64>, HashMap<String, u64>)> = HashMap::new();
    for (name, &value) in fields {
        if let Some(slot) = name.strip_prefix('b') {
            slots.entry(slot).or_default().0 = Some(value);
        } else if let Some((slot, field)) = name.split_once('.') {
            slots
                .entry(slot)
                .or_default()
                .1
                .insert(field.to_owned(), value);
        }
    }
    let tallies: Vec<(u64, Tally)> = slots
        .into_values()
        .filter_map(|(bucket, fields)| Some((bucket?, Tally::from_fields(&fields))))
        .collect();
    QueueStats::from_buckets(tallies.iter().map(|(bucket, tally)| (*bucket, tally)), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::engine::window::{BUCKET, Throughput};

    /// A slot reused by a bucket 21 buckets later forgets the older counts,
    /// and a late flush of the older bucket does not come back into it.
    #[tokio::test]
    async fn a_ring_slot_holds_only_its_newest_bucket() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine = super::super::connect(
            &server.url(),
            "ring",
            &Default::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let inner = &engine.inner;
        let queue = QueueName::parse("q").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let later = t0 + BUCKET * window::HISTORY_BUCKETS as u32;
        let count = |at: SystemTime, succeeded: bool, n: usize| {
            let mut windows = lock(&inner.windows);
            let window = windows.entry(queue.clone()).or_default();
            for _ in 0..n {
                window.add(Sample::Finished { succeeded }, at);
            }
        };
        let read = || async {
            let fields: HashMap<String, u64> = inner
                .run(|| {
                    let mut cmd = redis::cmd("HGETALL");
                    cmd.arg(inner.keys.window(&queue));
                    QueryKind::Cmd(cmd)
                })
                .await
                .unwrap();
            fields
        };
        count(t0, true, 3);
        inner.flush_windows().await;
        count(t0, false, 1);
        inner.flush_windows().await;
        let at_t0 = stats_of(&read().await, t0);
        assert_eq!(
            at_t0.last_minute,
            Throughput {
                succeeded: 3,
                failed: 1
            }
        );
        // 61 buckets on: the same slot, cleared for the new bucket.
        count(later, true, 2);
        inner.flush_windows().await;
        // A replica that flushes the old bucket late changes nothing.
        count(t0, true, 5);
        inner.flush_windows().await;
        let fields = read().await;
        let at_later = stats_of(&fields, later);
        assert_eq!(
            at_later.last_five_minutes,
            Throughput {
                succeeded: 2,
                failed: 0
            }
        );
        assert!(
            fields.keys().all(|f| !f.ends_with(".f")),
            "the old bucket's fields are gone: {fields:?}"
        );
    }
}
