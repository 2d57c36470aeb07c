//! Identifiers. Tickets use UUID v7 (time-ordered, so id order is creation
//! order); sessions and leases use random v4 UUIDs, so a lease id is an
//! unguessable capability: holding it proves the gateway handed it out.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Why an id string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} must be a UUID in its hyphenated form, like 0190b6c2-8a3e-7c4d-9f1a-2b3c4d5e6f70, got {got:?}"
)]
pub struct BadId {
    /// The kind of id ("ticket id", "lease id").
    pub what: &'static str,
    /// The string received (truncated).
    pub got: String,
}

macro_rules! uuid_id {
    ($name:ident, $what:literal, $new:expr) => {
        #[doc = concat!("A ", $what, ".")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self($new)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = BadId;

            /// Only the hyphenated form (in either case), the one the
            /// gateway prints: `urn:uuid:`, braces and the bare 32 digits are
            /// refused, so one id has one spelling.
            fn from_str(s: &str) -> Result<Self, BadId> {
                let bad = || BadId {
                    what: $what,
                    got: s.chars().take(64).collect(),
                };
                let b = s.as_bytes();
                if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                    return Err(bad());
                }
                Uuid::parse_str(s).map(Self).map_err(|_| bad())
            }
        }
    };
}

uuid_id!(TicketId, "ticket id", Uuid::now_v7());
uuid_id!(LeaseId, "lease id", Uuid::new_v4());
uuid_id!(SessionId, "worker session id", Uuid::new_v4());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_ids_are_time_ordered_v7() {
        let a = TicketId::new();
        let b = TicketId::new();
        assert_eq!(a.0.get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn parse_roundtrip_and_error_message() {
        let id = TicketId::new();
        assert_eq!(id.to_string().parse::<TicketId>().unwrap(), id);
        let err = "nope".parse::<TicketId>().unwrap_err();
        assert!(err.to_string().contains("ticket id must be a UUID"));
        // One spelling per id: the hyphenated form, either case.
        let text = id.to_string();
        assert_eq!(text.to_uppercase().parse::<TicketId>().unwrap(), id);
        for lenient in [
            format!("urn:uuid:{text}"),
            format!("{{{text}}}"),
            text.replace('-', ""),
        ] {
            assert!(lenient.parse::<TicketId>().is_err(), "{lenient}");
        }
    }
}
