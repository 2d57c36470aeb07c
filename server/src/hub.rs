//! The watch hub: per-ticket fan-out of change events to live watchers.
//!
//! A watcher subscribes *before* reading the ticket from the engine, so a
//! change that races the subscription is seen either in that read or on the
//! channel. Channels are bounded: a watcher that falls behind is told it
//! lagged and resynchronises from the engine (skipping intermediate events but
//! never the latest state or the terminal event).
//!
//! At the gateway's hard stop the hub shuts down: every channel closes and
//! stays closed, so each watch learns of the stop from the channel it already
//! waits on, with no shared shutdown signal polled per event.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::domain::TicketId;
use crate::engine::TicketChange;

const SHARDS: usize = 64;

/// Events buffered per ticket before a slow watcher lags.
pub(crate) const WATCH_BUFFER: usize = 32;

type Registry = HashMap<TicketId, broadcast::Sender<Arc<TicketChange>>>;

/// See the module docs.
pub struct WatchHub {
    hasher: RandomState,
    shards: Box<[Mutex<Registry>]>,
    /// Set at the hard stop; read under a shard lock by `subscribe`.
    shut_down: AtomicBool,
}

fn lock(mutex: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for WatchHub {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shut_down: AtomicBool::new(false),
        }
    }
}

impl WatchHub {
    fn shard(&self, id: &TicketId) -> &Mutex<Registry> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// Starts receiving `id`'s changes (a closed subscription once the hub
    /// is shut down).
    pub fn subscribe(self: &Arc<Self>, id: TicketId) -> Subscription {
        let receiver = {
            let mut registry = lock(self.shard(&id));
            (!self.shut_down.load(Ordering::Acquire)).then(|| {
                registry
                    .entry(id)
                    .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
                    .subscribe()
            })
        };
        Subscription {
            hub: self.clone(),
            id,
            receiver,
        }
    }

    /// Closes every channel for good: watchers get `Closed` and, asking
    /// [`WatchHub::is_shut_down`], end their streams.
    pub fn shut_down(&self) {
        self.shut_down.store(true, Ordering::Release);
        self.reset();
    }

    /// Whether the gateway has stopped serving watches.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// How many watchers `id` has.
    pub fn watchers(&self, id: TicketId) -> usize {
        lock(self.shard(&id))
            .get(&id)
            .map_or(0, |sender| sender.receiver_count())
    }

    /// Whether `id` has watchers.
    pub fn is_watched(&self, id: TicketId) -> bool {
        lock(self.shard(&id)).contains_key(&id)
    }

    /// Delivers a change to `id`'s watchers. After a terminal change the
    /// channel is closed: later watchers read the terminal state from the
    /// engine.
    pub fn publish(&self, change: TicketChange) {
        let id = change.ticket.id;
        let terminal = change.ticket.state.is_terminal();
        let mut registry = lock(self.shard(&id));
        if let Some(sender) = registry.get(&id) {
            let _ = sender.send(Arc::new(change));
            if terminal {
                registry.remove(&id);
            }
        }
    }

    /// Closes every channel: each watcher re-reads its ticket from the engine
    /// and subscribes again (after events may have been missed).
    pub fn reset(&self) {
        for shard in self.shards.iter() {
            lock(shard).clear();
        }
    }

    /// Number of tickets with watchers (for tests and metrics).
    pub fn watched_tickets(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// A live subscription; unregisters itself when dropped.
pub struct Subscription {
    hub: Arc<WatchHub>,
    id: TicketId,
    receiver: Option<broadcast::Receiver<Arc<TicketChange>>>,
}

/// What a watcher gets next.
#[derive(Debug)]
pub enum Received {
    /// The next change.
    Change(Arc<TicketChange>),
    /// Changes were skipped: resynchronise from the engine.
    Lagged,
    /// The channel closed (after a terminal change, or a reset): subscribe
    /// again if the engine says the ticket is not terminal, unless the hub
    /// is shut down.
    Closed,
}

impl Subscription {
    /// Waits for the next change.
    pub async fn recv(&mut self) -> Received {
        let Some(receiver) = self.receiver.as_mut() else {
            return Received::Closed;
        };
        match receiver.recv().await {
            Ok(change) => Received::Change(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Received::Lagged,
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let receiver = self.receiver.take();
        let mut registry = lock(self.hub.shard(&self.id));
        drop(receiver);
        if registry
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            registry.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ticket::{EventKind, Payload};
    use crate::domain::{NewTicket, QueueName, Ticket, TicketState};
    use std::time::SystemTime;

    fn ticket() -> Ticket {
        let new = NewTicket {
            id: TicketId::new(),
            queue: QueueName::parse("q").unwrap(),
            payload: Payload::default(),
            priority: 0,
            idempotency_key: None,
            metadata: Default::default(),
            timeout: None,
            attempt_timeout: None,
            max_attempts: 1,
            tenant: None,
            not_before: None,
            callback: None,
        };
        Ticket::create(TicketId::new(), new, SystemTime::now())
    }

    #[tokio::test]
    async fn delivers_then_unregisters() {
        let hub = Arc::new(WatchHub::default());
        let mut t = ticket();
        let mut sub = hub.subscribe(t.id);
        assert!(hub.is_watched(t.id));
        t.finish(TicketState::Succeeded, None, SystemTime::now());
        hub.publish(TicketChange {
            kind: EventKind::State,
            ticket: Arc::new(t.clone()),
            output: None,
        });
        assert!(!hub.is_watched(t.id), "terminal change closes the channel");
        match sub.recv().await {
            Received::Change(c) => assert_eq!(c.ticket.state, TicketState::Succeeded),
            other => panic!("expected the terminal change, got {other:?}"),
        }
        drop(sub);
        assert_eq!(hub.watched_tickets(), 0);
    }

    #[tokio::test]
    async fn shutting_down_closes_every_subscription_for_good() {
        let hub = Arc::new(WatchHub::default());
        let mut before = hub.subscribe(TicketId::new());
        assert!(!hub.is_shut_down());
        hub.shut_down();
        assert!(hub.is_shut_down());
        assert!(matches!(before.recv().await, Received::Closed));
        let id = TicketId::new();
        let mut after = hub.subscribe(id);
        assert!(matches!(after.recv().await, Received::Closed));
        assert!(!hub.is_watched(id), "nothing registers after the shutdown");
    }

    #[tokio::test]
    async fn dropping_the_last_subscriber_unregisters() {
        let hub = Arc::new(WatchHub::default());
        let id = TicketId::new();
        let a = hub.subscribe(id);
        let b = hub.subscribe(id);
        drop(a);
        assert!(hub.is_watched(id));
        drop(b);
        assert!(!hub.is_watched(id));
    }
}
