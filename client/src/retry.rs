//! Jittered exponential backoff, shared by the resumable event streams and the
//! worker's reconnect loop.
//!
//! The delay math is a pure function of (attempt, bounds, a random unit) so it
//! is tested without a clock or an RNG; [`Backoff`] only adds the counter and
//! the randomness.

use std::time::Duration;

use rand::Rng as _;

/// Equal-jitter exponential backoff (the gateway's retry schedule too): the
/// ceiling doubles per attempt from `min` up to `max`, and each delay is
/// uniform in `[ceiling/2, ceiling]`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    /// The first ceiling (and, halved, the shortest delay).
    min: Duration,
    /// The largest ceiling.
    max: Duration,
    /// Delays handed out since the last [`Backoff::reset`].
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay; each call raises the ceiling.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let unit: f64 = rand::rng().random();
        let delay = asyncgate_proto::backoff::equal_jitter(self.attempt, self.min, self.max, unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to the shortest delay, after something succeeded.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn backoff_counts_and_resets() {
        let mut backoff = Backoff::new(MIN, MAX);
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay >= MIN / 2 && delay <= MAX, "{delay:?}");
        }
        assert_eq!(backoff.attempt, 20);
        backoff.reset();
        assert!(backoff.next_delay() <= MIN);
    }
}
