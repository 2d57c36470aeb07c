//! The gRPC layer: thin tonic services over the domain core (`gateway`,
//! `workers`, `admin` for operators, and `operations`, which serves the
//! same tickets as `google.longrunning` operations). Each handler validates its request
//! (`convert`), calls the engine, dispatcher or hub, and maps errors to a
//! status in one place (`crate::error`). What `Gateway` and `Operations`
//! both do with tickets (get, list, cancel, long-poll, presenting) is in
//! `tickets`.

pub(crate) mod admin;
pub mod convert;
pub(crate) mod gateway;
pub(crate) mod operations;
pub(crate) mod schedules;
pub(crate) mod streams;
pub(crate) mod tickets;
pub(crate) mod watch;
pub(crate) mod workers;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::engine::Engine;
use crate::hub::WatchHub;

/// What every service shares.
#[derive(Clone)]
pub struct Core {
    /// Ticket storage and transitions.
    pub engine: Arc<dyn Engine>,
    /// Live change fan-out.
    pub hub: Arc<WatchHub>,
    /// Worker matching.
    pub dispatcher: Dispatcher,
    /// Settings.
    pub config: Arc<Config>,
    /// Cancelled when shutdown begins: no new streams, workers drain.
    pub shutdown: CancellationToken,
    /// Cancelled once workers have drained (or the grace period is over):
    /// the remaining streams end, having delivered what the drain recorded.
    pub hard_stop: CancellationToken,
    /// Tracks the gateway's background tasks (timers, dispatch actors).
    pub tracker: TaskTracker,
    /// Tracks worker sessions, so shutdown knows when the drain is done.
    pub sessions: TaskTracker,
    /// The target queues this gateway works (config and admin API).
    pub(crate) targets: crate::targets::Targets,
}
