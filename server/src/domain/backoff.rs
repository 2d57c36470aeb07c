//! Retry backoff: exponential with full jitter, as a pure function so that it
//! is testable without a clock or a runtime.

use std::time::Duration;

/// Retry delay policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay scale for the first retry.
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
}

impl Backoff {
    /// The delay before the attempt after `failed_attempt` (1-based), given a
    /// uniform random `jitter` in `[0, 1)`: half fixed, half jittered, so that
    /// retries spread out but never collapse to zero.
    pub fn delay(&self, failed_attempt: u32, jitter: f64) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp.min(20)).min(self.cap);
        let jitter = jitter.clamp(0.0, 1.0);
        full.mul_f64(0.5 + 0.5 * jitter)
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
