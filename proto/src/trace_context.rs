//! W3C Trace Context (`traceparent`), the one tracing convention the gateway
//! and the SDKs share: a caller's `traceparent` request header is kept with
//! the ticket (in its metadata, under [`TRACEPARENT`] and [`TRACESTATE`]) and
//! handed to the worker with the task, so the worker's span continues the
//! caller's trace across the queue.

use std::fmt;

/// The metadata key (and request header) of the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key (and request header) of vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent`: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace every span of the request belongs to.
    pub trace_id: u128,
    /// The span that made the call (the parent of what happens next).
    pub parent_id: u64,
    /// Trace flags; bit 0 means sampled.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` when it is not a valid version-00
    /// `traceparent` (callers then ignore it, as the W3C spec asks).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        // Future versions may append fields; version 00 has exactly four.
        if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
            return None;
        }
        let parsed = TraceParent {
            trace_id: u128::from_str_radix(trace_id, 16).ok()?,
            parent_id: u64::from_str_radix(parent_id, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }

    /// The same trace with `span_id` as the parent: what a span passes on to
    /// the calls it makes.
    pub fn child(self, span_id: u64) -> Self {
        TraceParent {
            parent_id: span_id,
            ..self
        }
    }

    /// The trace id as 32 lowercase hex digits (as tracing backends show it).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Whether the caller sampled (records) this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_spec_example() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert!(parsed.sampled());
        assert_eq!(parsed.to_string(), EXAMPLE);
        let child = parsed.child(0xabc);
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_eq!(
            child.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for bad in [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }
}
