//! Shutdown, in the order a reader can follow: `initiate` (stop accepting
//! work: health says NOT_SERVING, workers are told to drain) → `drain`
//! (workers finish and deliver their in-flight tasks within the grace
//! period, then every stream and background task is told to stop: the hard
//! stop) → `finish` (every task spawned through [`Shutdown::spawn`] has
//! ended, and the store is let go, so the next gateway opens its file at
//! once).
//!
//! One owner for the tokens and trackers: everything the gateway spawns
//! goes through [`Shutdown::spawn`] (background tasks) or
//! [`Shutdown::sessions`] (worker sessions, which the drain waits for).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;

/// The gateway's shutdown state; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Shutdown {
    initiated: CancellationToken,
    hard_stop: CancellationToken,
    tasks: TaskTracker,
    sessions: TaskTracker,
}

impl Shutdown {
    /// Phase 1: no new work. Whoever waits on [`Shutdown::initiated`] (the
    /// server, worker sessions) reacts.
    pub(crate) fn initiate(&self) {
        self.initiated.cancel();
    }

    /// Cancelled once shutdown begins.
    pub(crate) fn initiated(&self) -> &CancellationToken {
        &self.initiated
    }

    /// Cancelled once workers have drained or the grace period is over:
    /// remaining streams and background tasks end.
    pub(crate) fn hard_stop(&self) -> &CancellationToken {
        &self.hard_stop
    }

    /// Background tasks (timers, queue actors, listeners): `finish` waits
    /// for them.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Worker sessions: `drain` waits for them.
    pub(crate) fn sessions(&self) -> &TaskTracker {
        &self.sessions
    }

    /// Spawns a background task that `finish` waits for.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Phase 2: worker sessions finish within `grace` (their results reach
    /// watchers), then the hard stop ends everything else.
    pub(crate) async fn drain(&self, grace: Duration) {
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "shutdown grace period over; ending remaining streams"
            );
        }
        self.hard_stop.cancel();
    }

    /// Phase 3: once the server stopped serving, every background task has
    /// ended and `engine` has let go of its store.
    pub(crate) async fn finish(&self, engine: &dyn Engine) {
        self.hard_stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        engine.close().await;
    }
}
