//! The one backoff schedule of the system: the gateway's delay between a
//! ticket's attempts and the SDK's delay between reconnects both come from
//! [`equal_jitter`], so what the README says about retries holds on both
//! sides. A pure function of the attempt, the bounds and a random unit, so
//! it is tested without a clock or an RNG.

use std::time::Duration;

/// The delay before retry number `retry` (0 for the first): exponential with
/// *equal* jitter. The ceiling is `min(cap, base × 2^retry)` and the delay is
/// uniform in `[ceiling/2, ceiling]`, `unit` in `[0, 1)` picking the point.
///
/// Equal rather than full jitter keeps a floor under every delay: a fleet of
/// workers reconnecting to a restarting gateway, or a burst of tickets failing
/// together, spreads out without anyone retrying at ~0 ms.
pub fn equal_jitter(retry: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let factor = 2u32.saturating_pow(retry.min(31));
    let ceiling = base.saturating_mul(factor).min(cap.max(base));
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    #[test]
    fn the_ceiling_doubles_then_caps() {
        assert_eq!(equal_jitter(0, BASE, CAP, 1.0), Duration::from_millis(100));
        assert_eq!(equal_jitter(1, BASE, CAP, 1.0), Duration::from_millis(200));
        assert_eq!(equal_jitter(3, BASE, CAP, 1.0), Duration::from_millis(800));
        assert_eq!(equal_jitter(10, BASE, CAP, 1.0), CAP);
        assert_eq!(equal_jitter(u32::MAX, BASE, CAP, 1.0), CAP);
    }

    #[test]
    fn jitter_keeps_half_the_ceiling() {
        assert_eq!(equal_jitter(0, BASE, CAP, 0.0), Duration::from_millis(50));
        assert_eq!(equal_jitter(10, BASE, CAP, 0.0), CAP / 2);
        assert_eq!(equal_jitter(2, BASE, CAP, 0.5), Duration::from_millis(300));
        // Out-of-range units are clamped, never stretch past the ceiling.
        assert_eq!(equal_jitter(0, BASE, CAP, 7.0), BASE);
        assert_eq!(equal_jitter(0, BASE, CAP, -1.0), BASE / 2);
    }

    #[test]
    fn a_cap_below_the_base_is_the_base() {
        let tiny = Duration::from_millis(1);
        assert_eq!(equal_jitter(5, BASE, tiny, 1.0), BASE);
    }
}
