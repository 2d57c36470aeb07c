//! Retry backoff between a ticket's attempts: the shared schedule of
//! [`asyncgate_proto::backoff::equal_jitter`] (exponential, equal jitter),
//! under the bounds of `--backoff-base` and `--backoff-cap`.

use std::time::Duration;

/// Retry delay policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
}

impl Backoff {
    /// The delay before the attempt after `failed_attempt` (1-based), given a
    /// uniform random `jitter` in `[0, 1)`: uniform in `[ceiling/2, ceiling]`
    /// with the ceiling doubling per failed attempt up to `cap`.
    pub fn delay(&self, failed_attempt: u32, jitter: f64) -> Duration {
        asyncgate_proto::backoff::equal_jitter(
            failed_attempt.saturating_sub(1),
            self.base,
            self.cap,
            jitter,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX, 1.0), Duration::from_secs(2));
    }
}
