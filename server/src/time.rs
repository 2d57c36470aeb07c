//! Conversions between wall-clock times and their wire and text forms.
//! Persisted and reported times are wall clock (`SystemTime`).

use std::time::{Duration, SystemTime};

/// A wall-clock time as a protobuf `Timestamp`.
pub(crate) fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

/// A duration as a protobuf `Duration`.
pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// RFC 3339 text, for messages people read.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    timestamp(at).to_string()
}
