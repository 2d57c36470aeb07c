//! Queue names: validated once at the edge, then cheap to clone everywhere.
//!
//! Queues belong to tenants. A tenant's queue `emails` is stored as
//! `tenant/emails` ('/' is never part of a name a tenant gives), so two
//! tenants' `emails` never meet: not in dispatch, not in `tickets_ahead`,
//! not in lists. Tenant callers name and see their queues without the
//! prefix; admins see and may name the scoped form.

use std::fmt;
use std::sync::Arc;

/// The longest queue name accepted.
pub const MAX_QUEUE_NAME_LEN: usize = 128;

/// A validated queue name: 1 to 128 characters of `[A-Za-z0-9._:-]`, starting
/// with a letter or digit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(Arc<str>);

impl QueueName {
    /// Validates `name`, explaining what to fix when it is refused.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("queue name is empty; give a name such as \"emails\"".into());
        }
        if name.len() > MAX_QUEUE_NAME_LEN {
            return Err(format!(
                "queue name is {} bytes long; the limit is {MAX_QUEUE_NAME_LEN}",
                name.len()
            ));
        }
        if !name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        {
            return Err(format!(
                "queue name {name:?} must start with a letter or digit"
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!(
                "queue name {name:?} contains {bad:?}; use only letters, digits, '.', '_', ':' and '-'"
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    /// A tenant's queue `name` as stored (`tenant/name`), or `name` itself
    /// for callers without a tenant. The tenant name is one [`parse`d]
    /// (`Self::parse`) by the keys file.
    pub fn scoped(tenant: Option<&str>, name: QueueName) -> Self {
        match tenant {
            Some(tenant) => Self(Arc::from(format!("{tenant}/{name}"))),
            None => name,
        }
    }

    /// Validates a stored name, or one an admin gives: `name` or
    /// `tenant/name`, each part as [`Self::parse`] requires.
    pub fn parse_scoped(name: &str) -> Result<Self, String> {
        match name.split_once('/') {
            Some((tenant, queue)) => {
                Self::parse(tenant).map_err(|e| format!("tenant part of {name:?}: {e}"))?;
                Self::parse(queue)?;
                Ok(Self(Arc::from(name)))
            }
            None => Self::parse(name),
        }
    }

    /// The tenant whose queue this is (the part before '/'), if any.
    pub fn tenant(&self) -> Option<&str> {
        self.0.split_once('/').map(|(tenant, _)| tenant)
    }

    /// The name as `tenant` knows it: without its own `tenant/` prefix.
    pub fn seen_by(&self, tenant: Option<&str>) -> &str {
        tenant
            .and_then(|t| self.0.strip_prefix(t))
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(&self.0)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Who paused a queue, when and why: shown in the waiting reason of every
/// ticket it holds back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePause {
    /// The API key's name ("anonymous" without keys).
    pub by: String,
    /// When.
    pub at: std::time::SystemTime,
    /// Why, as the operator said it (may be empty).
    pub reason: String,
}

/// A target put on a queue through the admin API (`Admin.SetQueueTarget`):
/// every gateway sharing the store works the queue's tickets by calling it.
/// The engine keeps the text as accepted; each gateway parses and checks it
/// against its own destination allowlist before calling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTarget {
    /// The URL with its options, as `--target QUEUE=` takes them after `=`.
    pub spec: String,
    /// The API key's name that set it ("anonymous" without keys).
    pub by: String,
    /// When.
    pub at: std::time::SystemTime,
}

/// Flow control on a queue's dispatch, over every worker and replica: 0
/// means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// Leases per second (a token bucket).
    pub max_dispatch_per_second: u32,
    /// Leases allowed at once above the rate; 0: one second's worth.
    pub burst: u32,
    /// Tickets running at once.
    pub max_concurrent: u32,
}

/// The most leases per second a queue may be limited to.
pub const MAX_RATE: u32 = 1_000_000;
/// The largest burst and concurrency cap.
pub const MAX_BURST: u32 = 10_000_000;

impl QueueLimits {
    /// Checks each limit against its bound, and that a burst comes with a
    /// rate. The error names the field and says what to fix.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, value, max) in [
            (
                "max_dispatch_per_second",
                self.max_dispatch_per_second,
                MAX_RATE,
            ),
            ("burst", self.burst, MAX_BURST),
            ("max_concurrent", self.max_concurrent, MAX_BURST),
        ] {
            if value > max {
                return Err((
                    field,
                    format!("is {value}; at most {max} (0 means unlimited)"),
                ));
            }
        }
        if self.burst > 0 && self.max_dispatch_per_second == 0 {
            return Err((
                "burst",
                "needs max_dispatch_per_second: a burst is the bucket of a rate".into(),
            ));
        }
        Ok(())
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.max_dispatch_per_second > 0 || self.max_concurrent > 0
    }

    /// The bucket's size: `burst`, else one second's worth (at least 1).
    pub fn bucket_size(&self) -> f64 {
        f64::from(if self.burst > 0 {
            self.burst
        } else {
            self.max_dispatch_per_second.max(1)
        })
    }
}

/// A queue's dispatch token bucket: full when created, refilled at the
/// rate, spent one token per lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens now (at `at`).
    pub tokens: f64,
    /// When `tokens` was reckoned.
    pub at: std::time::SystemTime,
}

impl Bucket {
    /// A full bucket for `limits`.
    pub fn full(limits: &QueueLimits, now: std::time::SystemTime) -> Self {
        Self {
            tokens: limits.bucket_size(),
            at: now,
        }
    }

    /// Refills for the time since the last reckoning, capped at the size.
    pub fn refill(&mut self, limits: &QueueLimits, now: std::time::SystemTime) {
        let elapsed = now
            .duration_since(self.at)
            .unwrap_or_default()
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(limits.max_dispatch_per_second))
            .min(limits.bucket_size());
        self.at = self.at.max(now);
    }
}

/// How many leases `limits` allow now, with `running` tickets running
/// (and being leased) and the bucket (if rate-limited) as it is.
pub fn allowance(limits: &QueueLimits, bucket: Option<&Bucket>, running: u64) -> usize {
    let by_rate = match (limits.max_dispatch_per_second, bucket) {
        (0, _) | (_, None) => usize::MAX,
        (_, Some(bucket)) => bucket.tokens.max(0.0).floor() as usize,
    };
    let by_concurrency = match limits.max_concurrent {
        0 => usize::MAX,
        max => usize::try_from(u64::from(max).saturating_sub(running)).unwrap_or(usize::MAX),
    };
    by_rate.min(by_concurrency)
}

/// The longest pause reason kept, in characters.
pub const MAX_PAUSE_REASON_CHARS: usize = 256;

#[cfg(test)]
mod limit_tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn a_bucket_refills_at_the_rate_up_to_its_size() {
        let limits = QueueLimits {
            max_dispatch_per_second: 100,
            burst: 0,
            max_concurrent: 0,
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut bucket = Bucket::full(&limits, t0);
        assert_eq!(allowance(&limits, Some(&bucket), 0), 100);
        bucket.tokens -= 100.0;
        assert_eq!(allowance(&limits, Some(&bucket), 0), 0);
        bucket.refill(&limits, t0 + Duration::from_millis(250));
        assert_eq!(allowance(&limits, Some(&bucket), 0), 25);
        bucket.refill(&limits, t0 + Duration::from_secs(60));
        assert_eq!(
            allowance(&limits, Some(&bucket), 0),
            100,
            "capped at the size"
        );
        // A clock that steps back adds nothing.
        bucket.refill(&limits, t0);
        assert_eq!(allowance(&limits, Some(&bucket), 0), 100);
    }

    #[test]
    fn concurrency_and_rate_both_bound_the_allowance() {
        let limits = QueueLimits {
            max_dispatch_per_second: 10,
            burst: 50,
            max_concurrent: 20,
        };
        let bucket = Bucket::full(&limits, SystemTime::now());
        assert_eq!(bucket.tokens, 50.0);
        assert_eq!(allowance(&limits, Some(&bucket), 0), 20);
        assert_eq!(allowance(&limits, Some(&bucket), 15), 5);
        assert_eq!(allowance(&limits, Some(&bucket), 25), 0);
        assert_eq!(
            allowance(&QueueLimits::default(), None, 1_000_000),
            usize::MAX
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_scope_names() {
        let emails = QueueName::parse("emails").unwrap();
        let scoped = QueueName::scoped(Some("t1"), emails.clone());
        assert_eq!(scoped.as_str(), "t1/emails");
        assert_eq!(scoped.seen_by(Some("t1")), "emails");
        assert_eq!(scoped.seen_by(None), "t1/emails");
        assert_eq!(scoped.tenant(), Some("t1"));
        assert_eq!(QueueName::parse("emails").unwrap().tenant(), None);
        assert_eq!(QueueName::scoped(None, emails.clone()), emails);
        assert_ne!(scoped, QueueName::scoped(Some("t2"), emails));
        assert_eq!(QueueName::parse_scoped("t1/emails").unwrap(), scoped);
        assert!(QueueName::parse("t1/emails").unwrap_err().contains("'/'"));
        assert!(QueueName::parse_scoped("t1/a/b").is_err());
        assert!(QueueName::parse_scoped("/b").is_err());
    }

    #[test]
    fn accepts_and_refuses() {
        assert!(QueueName::parse("upper").is_ok());
        assert!(QueueName::parse("a.b_c:d-e9").is_ok());
        assert!(QueueName::parse("").unwrap_err().contains("empty"));
        assert!(QueueName::parse("-x").unwrap_err().contains("start with"));
        assert!(QueueName::parse("a b").unwrap_err().contains("' '"));
        assert!(
            QueueName::parse(&"q".repeat(129))
                .unwrap_err()
                .contains("limit")
        );
    }
}
