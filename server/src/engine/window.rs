//! A queue's recent throughput and latency for the admin API: results by
//! outcome and log-scale histograms of queue wait and run time, kept in
//! 15-second buckets that merge by addition, so replicas sharing a Redis
//! add theirs up and any window is a sum of buckets. Statistics, not
//! records: they live in memory (a restarted gateway starts them afresh)
//! and in Redis for a few minutes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use crate::domain::{Ticket, TicketState};
use crate::engine::Before;

/// The width of a bucket.
pub const BUCKET: Duration = Duration::from_secs(15);
/// Buckets of the one-minute window: the current one and the four before,
/// so it covers between 60 and 75 seconds.
const MINUTE_BUCKETS: u64 = 5;
/// Buckets of the five-minute window (300 to 315 seconds).
pub const FIVE_MINUTE_BUCKETS: u64 = 21;
/// Buckets kept: the current one and the 60 before (15 minutes), for the
/// admin API's history (the dashboard's charts).
pub const HISTORY_BUCKETS: u64 = 61;
/// Histogram bins per doubling: each bin is about 9 % wide.
const BINS_PER_OCTAVE: f64 = 8.0;

/// The bucket `at` falls in.
pub fn bucket_of(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / BUCKET.as_secs()
}

/// Durations in log-scale bins (bin 0: under a microsecond).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram(BTreeMap<u16, u64>);

impl Histogram {
    /// The bin of `duration`.
    fn bin(duration: Duration) -> u16 {
        let micros = duration.as_micros();
        if micros == 0 {
            return 0;
        }
        ((micros as f64).log2() * BINS_PER_OCTAVE).floor() as u16 + 1
    }

    /// A bin's middle (geometric), as a duration.
    fn value(bin: u16) -> Duration {
        if bin == 0 {
            return Duration::ZERO;
        }
        let micros = 2f64.powf((f64::from(bin) - 0.5) / BINS_PER_OCTAVE);
        Duration::from_secs_f64(micros / 1e6)
    }

    /// Counts `duration`.
    pub fn record(&mut self, duration: Duration) {
        self.add_bin(Self::bin(duration), 1);
    }

    /// Adds `count` to `bin`.
    pub fn add_bin(&mut self, bin: u16, count: u64) {
        *self.0.entry(bin).or_default() += count;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (bin, count) in &other.0 {
            self.add_bin(*bin, *count);
        }
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The `q` quantile (0..=1), to within a bin; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bin, count) in &self.0 {
            seen += count;
            if seen >= rank {
                return Some(Self::value(*bin));
            }
        }
        None
    }

    /// Its bins and counts.
    pub fn bins(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.0.iter().map(|(bin, count)| (*bin, *count))
    }
}

/// What one transition adds to its queue's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// A ticket was leased after waiting `wait` ready.
    Leased {
        /// Since it became ready.
        wait: Duration,
    },
    /// An attempt ended (with a result, a retry, a lost worker, a cancel)
    /// after running `run`.
    Ran {
        /// Lease → end.
        run: Duration,
    },
    /// A ticket ended SUCCEEDED or FAILED.
    Finished {
        /// Whether it succeeded.
        succeeded: bool,
    },
}

impl Sample {
    /// The samples of the transition from `before` to `after` at `now`.
    pub fn of(before: &Before, after: &Ticket, now: SystemTime) -> [Option<Sample>; 3] {
        let since = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        if before.state == Some(after.state) {
            return [None, None, None];
        }
        let leased = (before.state == Some(TicketState::Pending)
            && after.state == TicketState::Running)
            .then(|| Sample::Leased {
                wait: since(before.ready_since),
            });
        let ran = before
            .attempt_started
            .filter(|_| before.state == Some(TicketState::Running))
            .map(|started| Sample::Ran {
                run: since(started),
            });
        let finished =
            matches!(after.state, TicketState::Succeeded | TicketState::Failed).then(|| {
                Sample::Finished {
                    succeeded: after.state == TicketState::Succeeded,
                }
            });
        [leased, ran, finished]
    }
}

/// One bucket's tallies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Tickets that ended SUCCEEDED.
    pub succeeded: u64,
    /// Tickets that ended FAILED.
    pub failed: u64,
    /// Ready → lease.
    pub wait: Histogram,
    /// Lease → the attempt's end.
    pub run: Histogram,
}

impl Tally {
    /// Counts `sample`.
    pub fn add(&mut self, sample: Sample) {
        match sample {
            Sample::Leased { wait } => self.wait.record(wait),
            Sample::Ran { run } => self.run.record(run),
            Sample::Finished { succeeded: true } => self.succeeded += 1,
            Sample::Finished { succeeded: false } => self.failed += 1,
        }
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Tally) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.wait.merge(&other.wait);
        self.run.merge(&other.run);
    }

    /// As hash fields (`s`, `f`, `w<bin>`, `r<bin>`), for a store that adds
    /// them up.
    pub fn fields(&self) -> Vec<(String, u64)> {
        let mut fields = vec![
            ("s".to_owned(), self.succeeded),
            ("f".to_owned(), self.failed),
        ];
        fields.retain(|(_, n)| *n > 0);
        fields.extend(self.wait.bins().map(|(bin, n)| (format!("w{bin}"), n)));
        fields.extend(self.run.bins().map(|(bin, n)| (format!("r{bin}"), n)));
        fields
    }

    /// Read back from [`Self::fields`]; unknown fields are skipped.
    pub fn from_fields(fields: &HashMap<String, u64>) -> Self {
        let mut tally = Tally::default();
        for (name, &count) in fields {
            let (kind, bin) = name.split_at(1.min(name.len()));
            match (kind, bin.parse::<u16>()) {
                ("s", _) if bin.is_empty() => tally.succeeded += count,
                ("f", _) if bin.is_empty() => tally.failed += count,
                ("w", Ok(bin)) => tally.wait.add_bin(bin, count),
                ("r", Ok(bin)) => tally.run.add_bin(bin, count),
                _ => {}
            }
        }
        tally
    }
}

/// Results per outcome in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throughput {
    /// Tickets that ended SUCCEEDED.
    pub succeeded: u64,
    /// Tickets that ended FAILED.
    pub failed: u64,
}

/// Quantiles of durations in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// The median, to within 9 %; `None` when nothing was measured.
    pub p50: Option<Duration>,
    /// The 95th percentile.
    pub p95: Option<Duration>,
    /// Durations measured.
    pub count: u64,
}

impl Latency {
    fn of(histogram: &Histogram) -> Self {
        Self {
            p50: histogram.quantile(0.5),
            p95: histogram.quantile(0.95),
            count: histogram.count(),
        }
    }
}

/// One bucket of a queue's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketStats {
    /// The bucket's start.
    pub start: SystemTime,
    /// Results in it.
    pub throughput: Throughput,
    /// Ready → lease of the attempts leased in it.
    pub queue_wait: Latency,
    /// Lease → end of the attempts that ended in it.
    pub run_time: Latency,
}

/// A queue's recent activity as the admin API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Results in the last minute (60–75 s).
    pub last_minute: Throughput,
    /// Results in the last five minutes (300–315 s).
    pub last_five_minutes: Throughput,
    /// Ready → lease over the five minutes.
    pub queue_wait: Latency,
    /// Lease → the attempt's end over the five minutes.
    pub run_time: Latency,
    /// The last [`HISTORY_BUCKETS`] buckets that saw anything, oldest first.
    pub history: Vec<BucketStats>,
}

impl QueueStats {
    /// Sums the buckets (by number) in the windows ending at `now`'s.
    pub fn from_buckets<'a>(
        buckets: impl IntoIterator<Item = (u64, &'a Tally)>,
        now: SystemTime,
    ) -> Self {
        let current = bucket_of(now);
        let (mut minute, mut five) = (Tally::default(), Tally::default());
        let mut history: BTreeMap<u64, Tally> = BTreeMap::new();
        for (number, tally) in buckets {
            let age = current.saturating_sub(number);
            if number > current || age >= HISTORY_BUCKETS {
                continue;
            }
            history.entry(number).or_default().merge(tally);
            if age >= FIVE_MINUTE_BUCKETS {
                continue;
            }
            five.merge(tally);
            if age < MINUTE_BUCKETS {
                minute.succeeded += tally.succeeded;
                minute.failed += tally.failed;
            }
        }
        Self {
            last_minute: Throughput {
                succeeded: minute.succeeded,
                failed: minute.failed,
            },
            last_five_minutes: Throughput {
                succeeded: five.succeeded,
                failed: five.failed,
            },
            queue_wait: Latency::of(&five.wait),
            run_time: Latency::of(&five.run),
            history: history
                .into_iter()
                .map(|(number, tally)| BucketStats {
                    start: SystemTime::UNIX_EPOCH + BUCKET * number as u32,
                    throughput: Throughput {
                        succeeded: tally.succeeded,
                        failed: tally.failed,
                    },
                    queue_wait: Latency::of(&tally.wait),
                    run_time: Latency::of(&tally.run),
                })
                .collect(),
        }
    }
}

/// A queue's buckets, oldest first; holds the history's at most.
#[derive(Debug, Default)]
pub struct Window {
    buckets: VecDeque<(u64, Tally)>,
}

impl Window {
    /// Counts `sample` at `now`.
    pub fn add(&mut self, sample: Sample, now: SystemTime) {
        let number = bucket_of(now);
        match self.buckets.back_mut() {
            Some((last, tally)) if *last == number => tally.add(sample),
            _ => {
                let mut tally = Tally::default();
                tally.add(sample);
                self.buckets.push_back((number, tally));
            }
        }
        while self
            .buckets
            .front()
            .is_some_and(|(first, _)| number.saturating_sub(*first) >= HISTORY_BUCKETS)
        {
            self.buckets.pop_front();
        }
    }

    /// The windows ending at `now`.
    pub fn stats(&self, now: SystemTime) -> QueueStats {
        QueueStats::from_buckets(self.buckets.iter().map(|(n, t)| (*n, t)), now)
    }

    /// Takes its buckets (for a store that adds them up), leaving it empty.
    pub fn take(&mut self) -> Vec<(u64, Tally)> {
        self.buckets.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn quantiles_are_within_a_bin_of_the_truth() {
        let mut histogram = Histogram::default();
        for ms in 1..=100u64 {
            histogram.record(Duration::from_millis(ms));
        }
        let p50 = histogram.quantile(0.5).unwrap().as_secs_f64() * 1000.0;
        let p95 = histogram.quantile(0.95).unwrap().as_secs_f64() * 1000.0;
        assert!((46.0..=55.0).contains(&p50), "p50 {p50}");
        assert!((87.0..=104.0).contains(&p95), "p95 {p95}");
        assert_eq!(histogram.count(), 100);
        assert_eq!(Histogram::default().quantile(0.5), None);
        histogram.record(Duration::ZERO);
        assert_eq!(histogram.quantile(0.0), Some(Duration::ZERO));
    }

    #[test]
    fn windows_sum_the_buckets_they_cover_and_drop_older_ones() {
        let mut window = Window::default();
        let ran = Sample::Ran {
            run: Duration::from_millis(20),
        };
        let finished = |succeeded| Sample::Finished { succeeded };
        // 321 s ago: outside both windows by the time of the query.
        window.add(finished(true), at(999_985));
        window.add(ran, at(999_985));
        // 100 s ago: only in the five-minute window.
        window.add(finished(false), at(1_000_205));
        window.add(ran, at(1_000_205));
        // Now.
        window.add(finished(true), at(1_000_305));
        window.add(ran, at(1_000_305));
        window.add(
            Sample::Leased {
                wait: Duration::from_millis(5),
            },
            at(1_000_305),
        );
        let stats = window.stats(at(1_000_306));
        assert_eq!(
            stats.last_minute,
            Throughput {
                succeeded: 1,
                failed: 0
            }
        );
        assert_eq!(
            stats.last_five_minutes,
            Throughput {
                succeeded: 1,
                failed: 1
            }
        );
        assert_eq!(stats.run_time.count, 2);
        assert_eq!(stats.queue_wait.count, 1);
        // Every bucket is in the history, oldest first.
        let starts: Vec<_> = stats.history.iter().map(|b| b.start).collect();
        assert_eq!(starts, [at(999_975), at(1_000_200), at(1_000_305)]);
        assert_eq!(stats.history[1].throughput.failed, 1);
        assert_eq!(stats.history[2].queue_wait.count, 1);
        // A bucket 15 minutes old falls out when the newest comes in.
        window.add(finished(true), at(999_985 + 15 * 60 + 10));
        assert_eq!(window.buckets.len(), 3);
        assert_eq!(window.buckets.front().unwrap().0, bucket_of(at(1_000_205)));
    }

    #[test]
    fn a_tally_reads_back_from_its_fields() {
        let mut tally = Tally::default();
        tally.add(Sample::Finished { succeeded: true });
        tally.add(Sample::Ran {
            run: Duration::from_millis(3),
        });
        tally.add(Sample::Finished { succeeded: false });
        tally.add(Sample::Leased {
            wait: Duration::from_secs(2),
        });
        let fields: HashMap<String, u64> = tally.fields().into_iter().collect();
        assert_eq!(Tally::from_fields(&fields), tally);
    }
}
