//! `std::time` ⇄ `google.protobuf.{Duration, Timestamp}`, saturating instead of
//! failing: a caller's `Duration::MAX` means "as long as possible", and a
//! negative or out-of-range value from the wire reads as zero / the epoch
//! rather than as an error in the middle of a stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A `std` duration as a proto duration (saturating at `i64::MAX` seconds).
pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Always below 10^9, so it fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A proto duration as a `std` duration; negative durations read as zero.
pub fn duration_from_proto(d: &prost_types::Duration) -> Duration {
    if d.seconds < 0 || (d.seconds == 0 && d.nanos < 0) {
        return Duration::ZERO;
    }
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos.max(0)).unwrap_or(0);
    Duration::from_secs(secs).saturating_add(Duration::from_nanos(u64::from(nanos)))
}

/// A proto timestamp as a `SystemTime`; times before the epoch read as the
/// epoch (the gateway never produces them).
pub fn timestamp_to_system_time(t: &prost_types::Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u64::try_from(t.nanos).unwrap_or(0);
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs) + Duration::from_nanos(nanos))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_nanos(1),
            Duration::from_secs(3600),
        ] {
            assert_eq!(duration_from_proto(&duration_to_proto(d)), d);
        }
        assert_eq!(duration_to_proto(Duration::MAX).seconds, i64::MAX);
    }

    #[test]
    fn negative_durations_read_as_zero() {
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(duration_from_proto(&neg), Duration::ZERO);
    }

    #[test]
    fn timestamps() {
        let t = prost_types::Timestamp {
            seconds: 10,
            nanos: 5,
        };
        assert_eq!(
            timestamp_to_system_time(&t),
            UNIX_EPOCH + Duration::new(10, 5)
        );
    }
}
