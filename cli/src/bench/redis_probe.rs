//! What a run costs the redis-server the bench started itself
//! (`--embedded redis`): its CPU time (utime + stime from `/proc/PID/stat`)
//! and how much its append-only file grew, over exactly the measured time.
//!
//! Growth is counted on the incremental AOF files only (Redis 7 keeps them
//! in `appendonlydir/`): an automatic rewrite starts a new one and later
//! deletes the old, so each file's largest size seen is kept, polled often
//! enough that a file stops growing well before a rewrite removes it. The
//! base files a rewrite writes are compaction, not growth, and are left out.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::target::RssSource;

/// How often the AOF files are looked at during a run.
const POLL: Duration = Duration::from_millis(50);

/// A redis-server the bench started: whom to measure.
#[derive(Debug, Clone)]
pub(crate) struct RedisProbe {
    /// Its process id.
    pub(crate) pid: u32,
    /// Its `appendonlydir`.
    pub(crate) aof_dir: PathBuf,
}

/// What the probe measured over one run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RedisCost {
    /// redis-server's CPU time over the measured time.
    pub(crate) cpu: Option<Duration>,
    /// Bytes appended to its AOF over the measured time.
    pub(crate) aof_bytes: Option<u64>,
}

impl RedisProbe {
    /// Measures from `from` to `end` (call before `from`).
    pub(crate) async fn measure(self, from: Instant, end: Instant) -> RedisCost {
        tokio::time::sleep_until(from).await;
        let source = RssSource::Pid(self.pid);
        let cpu_start = source.cpu();
        let mut sizes: HashMap<PathBuf, (u64, u64)> = HashMap::new();
        let mut readable = self.observe(&mut sizes, true);
        while Instant::now() < end {
            tokio::time::sleep_until((Instant::now() + POLL).min(end)).await;
            readable &= self.observe(&mut sizes, false);
        }
        let cpu = match (cpu_start, source.cpu()) {
            (Some(start), Some(stop)) => Some(stop.saturating_sub(start)),
            _ => None,
        };
        let aof_bytes = readable.then(|| {
            sizes
                .values()
                .map(|(start, largest)| largest.saturating_sub(*start))
                .sum()
        });
        RedisCost { cpu, aof_bytes }
    }

    /// Records each incremental AOF file's size (a file first seen after
    /// the start grew from nothing); false if the directory is unreadable.
    fn observe(&self, sizes: &mut HashMap<PathBuf, (u64, u64)>, at_start: bool) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.aof_dir) else {
            return false;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let incremental = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(".incr.aof"));
            let Some(size) = incremental
                .then(|| entry.metadata().ok().map(|m| m.len()))
                .flatten()
            else {
                continue;
            };
            let seen = sizes
                .entry(path)
                .or_insert((if at_start { size } else { 0 }, size));
            seen.1 = seen.1.max(size);
        }
        true
    }
}
