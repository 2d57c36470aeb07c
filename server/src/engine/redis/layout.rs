//! Where things live in Redis, and which index entries a ticket in a given
//! state owns.
//!
//! Everything about one queue — its tickets, ready set, timers, leases,
//! chunks and counters — shares one hash tag, `{q:NAME}`, so every script
//! touches a single hash slot and Redis Cluster can run them. The few global
//! keys (the id → queue locator, idempotency keys, tombstones, the queue
//! set, sessions) are each read or written on their own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::domain::{QueueName, SessionId, Ticket, TicketId, TicketState};

/// Position of each queue key in the commit script's KEYS (1-based).
pub(super) mod slot {
    pub(crate) const READY: usize = 2;
    pub(crate) const TIMERS: usize = 3;
    pub(crate) const LEASED: usize = 4;
    pub(crate) const IDS: usize = 5;
    pub(crate) const CHUNKS: usize = 8;
    pub(crate) const COUNTS: usize = 9;
    pub(crate) const AGE: usize = 10;
}

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The tag every key of `queue` starts with.
    pub(super) fn tag(&self, queue: &QueueName) -> String {
        format!("{}:{{q:{}}}", self.prefix, queue)
    }

    /// The keys the commit script takes, for ticket `id` of `queue`.
    pub(super) fn commit_keys(&self, queue: &QueueName, id: TicketId) -> [String; 10] {
        let tag = self.tag(queue);
        [
            format!("{tag}:t:{id}"),
            format!("{tag}:ready"),
            format!("{tag}:timers"),
            format!("{tag}:leased"),
            format!("{tag}:ids"),
            format!("{tag}:pending"),
            format!("{tag}:claiming"),
            format!("{tag}:c:{id}"),
            format!("{tag}:counts"),
            format!("{tag}:age"),
        ]
    }

    /// Finished tickets per state (a hash: state name → count; its
    /// `pending` and `running` fields, kept before issue 21, go unread).
    pub(super) fn counts(&self, queue: &QueueName) -> String {
        format!("{}:counts", self.tag(queue))
    }

    /// PENDING tickets by creation time (ms).
    pub(super) fn age(&self, queue: &QueueName) -> String {
        format!("{}:age", self.tag(queue))
    }

    /// The queue's limits and token bucket (a hash: rate, burst, conc,
    /// tokens, ts), while it has any.
    pub(super) fn limits(&self, queue: &QueueName) -> String {
        format!("{}:limits", self.tag(queue))
    }

    /// The queue's pause (a hash: by, at, reason), while it is paused.
    pub(super) fn pause(&self, queue: &QueueName) -> String {
        format!("{}:pause", self.tag(queue))
    }

    pub(super) fn ticket(&self, queue: &QueueName, id: TicketId) -> String {
        format!("{}:t:{id}", self.tag(queue))
    }

    pub(super) fn ticket_prefix(&self, queue: &QueueName) -> String {
        format!("{}:t:", self.tag(queue))
    }

    pub(super) fn chunks(&self, queue: &QueueName, id: TicketId) -> String {
        format!("{}:c:{id}", self.tag(queue))
    }

    pub(super) fn ready(&self, queue: &QueueName) -> String {
        format!("{}:ready", self.tag(queue))
    }

    pub(super) fn timers(&self, queue: &QueueName) -> String {
        format!("{}:timers", self.tag(queue))
    }

    pub(super) fn leased(&self, queue: &QueueName) -> String {
        format!("{}:leased", self.tag(queue))
    }

    pub(super) fn claiming(&self, queue: &QueueName) -> String {
        format!("{}:claiming", self.tag(queue))
    }

    /// Worker sessions serving the queue, by expiry time.
    pub(super) fn workers(&self, queue: &QueueName) -> String {
        format!("{}:workers", self.tag(queue))
    }

    pub(super) fn queue_ids(&self, queue: &QueueName) -> String {
        format!("{}:ids", self.tag(queue))
    }

    /// Ticket id → queue name (tagged by id, like the tombstone, so both
    /// are read in one request).
    pub(super) fn locator(&self, id: TicketId) -> String {
        format!("{}:{{t:{id}}}:loc", self.prefix)
    }

    pub(super) fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.prefix)
    }

    /// A gateway's liveness key (see `INSTANCE_TTL`).
    pub(super) fn instance(&self, instance: &str) -> String {
        format!("{}:alive:{instance}", self.prefix)
    }

    pub(super) fn tombstone(&self, id: TicketId) -> String {
        format!("{}:{{t:{id}}}:tomb", self.prefix)
    }

    /// The tag every schedule key shares (one slot: scripts write a
    /// schedule and its indexes together).
    fn schedules_tag(&self) -> String {
        format!("{}:{{schedules}}", self.prefix)
    }

    /// One schedule (a hash: `v` revision, `d` body).
    pub(super) fn schedule(&self, id: &str) -> String {
        format!("{}:s:{id}", self.schedules_tag())
    }

    /// Every schedule id (a sorted set, score 0, in lex order).
    pub(super) fn schedule_ids(&self) -> String {
        format!("{}:ids", self.schedules_tag())
    }

    /// Schedule ids by next due time (ms).
    pub(super) fn schedules_due(&self) -> String {
        format!("{}:due", self.schedules_tag())
    }

    /// Every queue ever used.
    pub(super) fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// Queues' admin-set targets: queue → `record::StoredTarget` (one
    /// hash, read whole by every replica each second).
    pub(super) fn targets(&self) -> String {
        format!("{}:targets", self.prefix)
    }

    /// Worker sessions by expiry time.
    pub(super) fn sessions(&self) -> String {
        format!("{}:sessions", self.prefix)
    }

    /// What the admin API lists of a connected worker (a hash).
    pub(super) fn worker(&self, session_id: SessionId) -> String {
        format!("{}:w:{session_id}", self.prefix)
    }

    /// The queues a session has held leases on.
    pub(super) fn session_queues(&self, session_id: SessionId) -> String {
        format!("{}:sq:{session_id}", self.prefix)
    }

    /// The channel every replica listens on.
    pub(super) fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }
}

/// Milliseconds since the epoch, rounded up: a timer scored this way is
/// never due before the time it stands for.
pub(super) fn millis_ceil(at: SystemTime) -> u64 {
    let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The time `ms` milliseconds after the epoch.
pub(super) fn time_of_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds since the epoch, rounded down.
pub(super) fn millis(at: SystemTime) -> u64 {
    u64::try_from(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// The text every ticket id minted in millisecond `millis` of the epoch
/// starts with: a UUID v7 opens with its 48-bit time in hex, split by the
/// first hyphen. Ids are stored as lowercase hyphenated text of one width,
/// so ids of later milliseconds sort after this prefix and ids of earlier
/// ones before it.
pub(super) fn id_time_prefix(millis: u64) -> String {
    let millis = millis.min((1 << 48) - 1);
    format!("{:08x}-{:04x}", millis >> 16, millis & 0xffff)
}

/// A ready-set member: priority (higher first), FIFO position, id — sorted
/// as text.
pub(super) fn ready_member(priority: i32, enqueue_seq: u64, id: TicketId) -> String {
    let flipped = (i64::from(i32::MAX) - i64::from(priority)) as u32;
    format!("{flipped:08x}{enqueue_seq:016x}{id}")
}

/// A leased-set member: the session first, so one session's leases are a
/// lexical range.
pub(super) fn leased_member(session_id: SessionId, id: TicketId) -> String {
    format!("{session_id}:{id}")
}

/// The lexical range of one session's leased members.
pub(super) fn leased_range(session_id: SessionId) -> (String, String) {
    (format!("[{session_id}:"), format!("({session_id};"))
}

/// A timer member: what fires, for which ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TimerKind {
    /// Backoff ends.
    Backoff,
    /// The ticket's deadline.
    Deadline,
    /// The attempt under this lease times out.
    Attempt(crate::domain::LeaseId),
    /// The finished ticket is deleted.
    Retention,
    /// The ticket's callback is due (scored past [`CALLBACK_SCORE_OFFSET`]:
    /// the timer pass never sees it; `callbacks.rs` claims it).
    Callback,
}

/// Added to a callback's due time (ms) for its score in the timers set:
/// 2^52 ms sorts after every real timer (the year 142,000), so the timer
/// pass's range up to now never reaches callbacks, however many are due,
/// and a claim reads them by their own range. Scores stay exact integers
/// (below 2^53).
pub(super) const CALLBACK_SCORE_OFFSET: u64 = 1 << 52;

pub(super) fn timer_member(kind: &TimerKind, id: TicketId) -> String {
    match kind {
        TimerKind::Backoff => format!("b:{id}"),
        TimerKind::Deadline => format!("d:{id}"),
        TimerKind::Attempt(lease) => format!("a:{id}:{lease}"),
        TimerKind::Retention => format!("r:{id}"),
        TimerKind::Callback => format!("c:{id}"),
    }
}

/// Reads a timer member back.
pub(super) fn parse_timer(member: &str) -> Option<(TimerKind, TicketId)> {
    let (kind, rest) = member.split_once(':')?;
    let (id, lease) = match rest.split_once(':') {
        Some((id, lease)) => (id, Some(lease)),
        None => (rest, None),
    };
    let id = TicketId(uuid::Uuid::parse_str(id).ok()?);
    let kind = match (kind, lease) {
        ("b", None) => TimerKind::Backoff,
        ("d", None) => TimerKind::Deadline,
        ("r", None) => TimerKind::Retention,
        ("c", None) => TimerKind::Callback,
        ("a", Some(lease)) => {
            TimerKind::Attempt(crate::domain::LeaseId(uuid::Uuid::parse_str(lease).ok()?))
        }
        _ => return None,
    };
    Some((kind, id))
}

/// The index entries a ticket owns in its state (the ready member is
/// handled apart: its FIFO number is assigned by the script).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Placement {
    pub(super) ready: bool,
    pub(super) pending: bool,
    pub(super) timers: Vec<(String, u64)>,
    pub(super) leased: Option<String>,
}

impl Placement {
    pub(super) fn of(ticket: &Ticket, retention: Duration) -> Self {
        let mut placement = Self::default();
        let id = ticket.id;
        match ticket.state {
            TicketState::Pending => {
                placement.pending = true;
                match ticket.not_before {
                    Some(at) => placement
                        .timers
                        .push((timer_member(&TimerKind::Backoff, id), millis_ceil(at))),
                    None => placement.ready = true,
                }
            }
            TicketState::Running => {
                if let Some(lease) = &ticket.lease {
                    placement.leased = Some(leased_member(lease.session_id, id));
                    if let Some(at) = lease.attempt_deadline {
                        placement.timers.push((
                            timer_member(&TimerKind::Attempt(lease.lease_id), id),
                            millis_ceil(at),
                        ));
                    }
                }
            }
            _ => {
                placement.timers.push((
                    timer_member(&TimerKind::Retention, id),
                    millis_ceil(ticket.retained_until(retention)),
                ));
            }
        }
        if let Some(callback) = ticket.callback.as_deref()
            && callback.state == crate::domain::callback::CallbackState::Pending
        {
            let due = callback.next_at.map_or(0, millis_ceil);
            placement.timers.push((
                timer_member(&TimerKind::Callback, id),
                CALLBACK_SCORE_OFFSET + due,
            ));
        }
        if let Some(deadline) = ticket.deadline.filter(|_| !ticket.state.is_terminal()) {
            placement.timers.push((
                timer_member(&TimerKind::Deadline, id),
                millis_ceil(deadline),
            ));
        }
        placement
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LeaseId;

    #[test]
    fn ready_members_sort_by_priority_then_fifo() {
        let id = TicketId::new();
        let mut members = [
            ready_member(0, 2, id),
            ready_member(5, 9, id),
            ready_member(0, 1, id),
            ready_member(-3, 0, id),
            ready_member(i32::MAX, 7, id),
            ready_member(i32::MIN, 7, id),
        ];
        members.sort();
        let order: Vec<(u32, u64)> = members
            .iter()
            .map(|m| {
                (
                    u32::from_str_radix(&m[..8], 16).unwrap(),
                    u64::from_str_radix(&m[8..24], 16).unwrap(),
                )
            })
            .collect();
        let priorities: Vec<i32> = order
            .iter()
            .map(|(flipped, _)| (i64::from(i32::MAX) - i64::from(*flipped)) as i32)
            .collect();
        assert_eq!(priorities, vec![i32::MAX, 5, 0, 0, -3, i32::MIN]);
        assert_eq!(order[2].1, 1, "FIFO within a priority");
        // claim.lua reads the id from offset 24 (priority and FIFO parts).
        assert_eq!(&members[0][24..], id.to_string());
    }

    #[test]
    fn timer_members_round_trip() {
        let id = TicketId::new();
        let lease = LeaseId::new();
        for kind in [
            TimerKind::Backoff,
            TimerKind::Deadline,
            TimerKind::Retention,
            TimerKind::Attempt(lease),
        ] {
            assert_eq!(parse_timer(&timer_member(&kind, id)), Some((kind, id)));
        }
        assert_eq!(parse_timer("x:nonsense"), None);
    }

    #[test]
    fn id_time_prefixes_bound_the_ids_of_their_millisecond() {
        let at = SystemTime::now();
        let id = TicketId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            at.duration_since(UNIX_EPOCH).unwrap().subsec_nanos(),
        )))
        .to_string();
        let ms = millis(at);
        assert!(id.starts_with(&id_time_prefix(ms)), "{id}");
        assert!(id_time_prefix(ms - 1) < id && id < id_time_prefix(ms + 1));
        // A carry into the digits before the hyphen still sorts.
        assert!(id_time_prefix(0xffff) < id_time_prefix(0x1_0000));
        assert_eq!(id_time_prefix(u64::MAX), "ffffffff-ffff");
    }

    #[test]
    fn a_session_range_holds_only_its_leases() {
        let session = SessionId::new();
        let other = SessionId::new();
        let (min, max) = leased_range(session);
        let mine = leased_member(session, TicketId::new());
        let theirs = leased_member(other, TicketId::new());
        assert!(min[1..] <= mine[..] && mine[..] < max[1..]);
        assert!(!(min[1..] <= theirs[..] && theirs[..] < max[1..]));
    }
}
