//! How the writer tells the rest of the gateway what became of each group
//! commit: the durable watermark that calls wait on, and the delivery of
//! watcher events once their append is durable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

use super::super::{EngineListener, StoreError, TicketChange};

/// One append, as the writer receives it.
pub(super) struct Append {
    pub(super) seq: u64,
    pub(super) mutations: Vec<super::super::journal::Mutation>,
    pub(super) events: Vec<TicketChange>,
}

/// How far the journal is on disk, and who waits for more. Each waiter is
/// woken once, when its own append is durable (a shared watch channel would
/// wake every waiter on every commit).
#[derive(Default)]
pub(super) struct Watermark {
    /// Every append up to this one is durable.
    pub(super) durable: AtomicU64,
    waiting: Mutex<Waiting>,
}

/// Told `Ok` once its append is durable, or why it never will be.
pub(super) type Waiter = oneshot::Sender<Result<(), StoreError>>;

#[derive(Default)]
pub(super) struct Waiting {
    /// Set while commits fail (until one succeeds), or for good once the
    /// writer stopped: appends after `durable` are not acknowledged.
    pub(super) failed: Option<StoreError>,
    /// Waiters by the append they wait for.
    pub(super) by_append: BTreeMap<u64, Vec<Waiter>>,
}

impl Watermark {
    pub(super) fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends up to `last` are durable: wake their waiters.
    pub(super) fn advance(&self, last: u64) {
        self.durable.store(last, Ordering::Release);
        let done = {
            let mut waiting = self.waiting();
            let later = waiting.by_append.split_off(&(last + 1));
            std::mem::replace(&mut waiting.by_append, later)
        };
        for sender in done.into_values().flatten() {
            let _ = sender.send(Ok(()));
        }
    }

    /// Writes fail for now: fail the waiters, and every later one until
    /// [`Self::recover`].
    pub(super) fn failing(&self, why: StoreError) {
        self.fail(why);
    }

    /// Writes succeed again: new waiters wait as usual.
    pub(super) fn recover(&self) {
        self.waiting().failed = None;
    }

    /// Whether writes fail right now, and why.
    pub(super) fn failure(&self) -> Option<StoreError> {
        self.waiting().failed.clone()
    }

    /// Nothing more will become durable: fail every waiter, now and later.
    pub(super) fn fail(&self, why: StoreError) {
        let waiters = {
            let mut waiting = self.waiting();
            waiting.failed.get_or_insert(why.clone());
            std::mem::take(&mut waiting.by_append)
        };
        for sender in waiters.into_values().flatten() {
            let _ = sender.send(Err(why.clone()));
        }
    }
}

/// What became of a batch the writer took.
pub(super) enum Outcome {
    /// Durable, up to this append.
    Committed(Vec<Append>, u64),
    /// Commits fail for now, for this reason; they are being retried.
    Failing(StoreError),
    /// Commits succeed again (the batch follows as `Committed`).
    Recovered,
    /// Nothing more will be durable, for this reason.
    Failed(StoreError),
}

/// Tells the watchers and the waiters what became of each batch, in order:
/// a batch's events first, then its watermark (whoever waited for an append
/// finds its events already delivered).
pub(super) struct Publisher {
    pub(super) listener: Arc<OnceLock<Arc<dyn EngineListener>>>,
    pub(super) watermark: Arc<Watermark>,
}

impl Publisher {
    fn apply(&self, outcome: Outcome) {
        match outcome {
            Outcome::Committed(batch, last) => {
                if let Some(listener) = self.listener.get() {
                    for append in batch {
                        for event in append.events {
                            listener.ticket_changed(event);
                        }
                    }
                }
                self.watermark.advance(last);
            }
            Outcome::Failing(why) => self.watermark.failing(why),
            Outcome::Recovered => self.watermark.recover(),
            Outcome::Failed(why) => self.watermark.fail(why),
        }
    }
}

/// How the writer hands outcomes to the [`Publisher`]: to a task of the
/// runtime that opened the store, when there is one. Its wakes of waiting
/// calls and watchers then come from inside the runtime (from the writer
/// thread, each would cost a cross-thread unpark), and the writer starts
/// its next commit at once instead of delivering first.
pub(super) struct Publish {
    publisher: Arc<Publisher>,
    task: Option<tokio::sync::mpsc::UnboundedSender<Outcome>>,
}

impl Publish {
    pub(super) fn start(publisher: Arc<Publisher>) -> Self {
        let task = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
            let publisher = publisher.clone();
            runtime.spawn(async move {
                while let Some(outcome) = receiver.recv().await {
                    publisher.apply(outcome);
                }
            });
            sender
        });
        Self { publisher, task }
    }

    pub(super) fn send(&self, outcome: Outcome) {
        let outcome = match &self.task {
            Some(task) => match task.send(outcome) {
                Ok(()) => return,
                // The runtime is gone: deliver here.
                Err(tokio::sync::mpsc::error::SendError(outcome)) => outcome,
            },
            None => outcome,
        };
        self.publisher.apply(outcome);
    }
}
