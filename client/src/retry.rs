//! Jittered exponential backoff, shared by the resumable event streams and the
//! worker's reconnect loop.
//!
//! The delay math is a pure function of (attempt, bounds, a random unit) so it
//! is tested without a clock or an RNG; [`Backoff`] only adds the counter and
//! the randomness.

use std::time::Duration;

use rand::Rng as _;

/// Equal-jitter exponential backoff: the ceiling doubles per attempt from
/// `min` up to `max`, and each delay is uniform in `[ceiling/2, ceiling]`.
///
/// Equal jitter rather than full jitter keeps a floor under the delay, so a
/// fleet of workers reconnecting to a restarting gateway neither stampedes it
/// nor retries at ~0 ms.
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
        let delay = jittered_delay(self.attempt, self.min, self.max, unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to the shortest delay, after something succeeded.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The delay before retry number `attempt` (0-based): uniform in
/// `[ceiling/2, ceiling]` where `ceiling = min(max, min * 2^attempt)`, with
/// `unit` in `[0, 1)` picking the point.
pub(crate) fn jittered_delay(attempt: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(31));
    let ceiling = min.saturating_mul(factor).min(max.max(min));
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(jittered_delay(0, MIN, MAX, 1.0), Duration::from_millis(100));
        assert_eq!(jittered_delay(1, MIN, MAX, 1.0), Duration::from_millis(200));
        assert_eq!(jittered_delay(3, MIN, MAX, 1.0), Duration::from_millis(800));
        assert_eq!(jittered_delay(10, MIN, MAX, 1.0), MAX);
        assert_eq!(jittered_delay(u32::MAX, MIN, MAX, 1.0), MAX);
    }

    #[test]
    fn jitter_keeps_half_the_ceiling() {
        assert_eq!(jittered_delay(0, MIN, MAX, 0.0), Duration::from_millis(50));
        assert_eq!(jittered_delay(10, MIN, MAX, 0.0), MAX / 2);
        assert_eq!(jittered_delay(2, MIN, MAX, 0.5), Duration::from_millis(300));
    }

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
