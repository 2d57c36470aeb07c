//! A ticket's completion callback as the ticket carries it: where to, and
//! how delivering it goes. It lives in the ticket's own record, so the
//! terminal transition that makes it due is stored in the same write as
//! the outcome on every engine: a callback is never lost between the two.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::TicketId;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackState {
    /// The ticket has not ended.
    Waiting,
    /// Due at `next_at` (again, after a failed attempt).
    Pending,
    /// Delivered once.
    Delivered,
    /// Given up: the retry window passed, or the receiver refused for good.
    GaveUp,
}

/// A ticket's callback.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    /// The destination, as validated at submit.
    pub url: Arc<str>,
    pub state: CallbackState,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When the next attempt is due (PENDING).
    pub next_at: Option<SystemTime>,
    /// When it became due first: the retry window counts from here.
    pub due_since: Option<SystemTime>,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<SystemTime>,
    /// The seq of the terminal event it delivers: with the ticket id, the
    /// `webhook-id` every attempt of this delivery carries.
    pub seq: u64,
}

/// How one delivery attempt went.
#[derive(Debug, Clone, PartialEq)]
pub enum CallbackOutcome {
    /// The receiver took it.
    Delivered,
    /// Try again at the time given.
    Retry {
        /// Not before this.
        at: SystemTime,
        /// What went wrong.
        error: String,
    },
    /// Do not try again.
    GiveUp {
        /// Why.
        error: String,
    },
}

impl Callback {
    /// A callback to `url` for a ticket that has not ended.
    pub fn new(url: Arc<str>) -> Self {
        Self {
            url,
            state: CallbackState::Waiting,
            attempts: 0,
            next_at: None,
            due_since: None,
            last_error: None,
            delivered_at: None,
            seq: 0,
        }
    }

    /// Its ticket ended with the event `seq`: deliver it now.
    pub fn make_due(&mut self, seq: u64, now: SystemTime) {
        *self = Self {
            state: CallbackState::Pending,
            next_at: Some(now),
            due_since: Some(now),
            seq,
            ..Self::new(self.url.clone())
        };
    }

    /// Its ticket runs again (an operator's retry): a new delivery follows
    /// its new end.
    pub fn rearm(&mut self) {
        *self = Self::new(self.url.clone());
    }

    /// Records an attempt of the delivery of `seq`; false when it was for
    /// another (older) delivery or this one is settled, and nothing changed.
    pub fn record(&mut self, seq: u64, outcome: CallbackOutcome, now: SystemTime) -> bool {
        if self.seq != seq || self.state != CallbackState::Pending {
            return false;
        }
        self.attempts += 1;
        match outcome {
            CallbackOutcome::Delivered => {
                self.state = CallbackState::Delivered;
                self.delivered_at = Some(now);
                self.next_at = None;
            }
            CallbackOutcome::Retry { at, error } => {
                self.next_at = Some(at);
                self.last_error = Some(error);
            }
            CallbackOutcome::GiveUp { error } => {
                self.state = CallbackState::GaveUp;
                self.next_at = None;
                self.last_error = Some(error);
            }
        }
        true
    }

    /// Whether a retry at `at` would still be inside `window` from when
    /// the delivery first became due.
    pub fn within(&self, window: Duration, at: SystemTime) -> bool {
        self.due_since.is_none_or(|since| at <= since + window)
    }
}

/// The `webhook-id` of ticket `id`'s delivery of event `seq`: the same for
/// every attempt of one delivery, another for a later end of the same
/// ticket (after an operator's retry).
pub fn webhook_id(id: TicketId, seq: u64) -> String {
    format!("{id}.{seq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_recorded_once_and_only_for_its_own_end() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let mut callback = Callback::new("https://h/x".into());
        assert!(
            !callback.record(0, CallbackOutcome::Delivered, now),
            "not due yet"
        );
        callback.make_due(7, now);
        let retry = CallbackOutcome::Retry {
            at: now + Duration::from_secs(1),
            error: "503".into(),
        };
        assert!(callback.record(7, retry, now));
        assert_eq!(
            (callback.attempts, callback.state),
            (1, CallbackState::Pending)
        );
        assert!(
            !callback.record(6, CallbackOutcome::Delivered, now),
            "an older end"
        );
        assert!(callback.record(7, CallbackOutcome::Delivered, now));
        assert_eq!(callback.state, CallbackState::Delivered);
        assert!(
            !callback.record(7, CallbackOutcome::Delivered, now),
            "settled"
        );
        callback.rearm();
        assert_eq!(callback.state, CallbackState::Waiting);
        assert!(callback.within(Duration::ZERO, now));
    }
}
