//! The timer loop: every `--timer-tick` it asks the engine to fire what is
//! due (backoffs ending, leases and attempts expiring, tickets expiring).
//! Each pass is also the gateway's probe of its store, so the loop is what
//! flips `grpc.health.v1` to NOT_SERVING while the store fails and back to
//! SERVING when it answers again: probes (compose, Kubernetes) then see a
//! gateway that cannot store anything, without an API key.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::engine::Engine;

/// Every service name the health service answers for: the whole server
/// (`""`) and each served service. Workers follow the store too: a worker
/// cannot be given work from a store that does not answer.
const SERVICES: &[&str] = &[
    "",
    "asyncgate.v1.Gateway",
    "asyncgate.v1.Workers",
    "google.longrunning.Operations",
    "asyncgate.v1.Schedules",
];

/// What the health service says, as the timer loop learns the store's state.
/// Once shutdown begins the shutdown owns the status (NOT_SERVING); a late
/// pass does not set it back.
#[derive(Clone)]
pub(crate) struct StoreHealth {
    reporter: HealthReporter,
    shutdown: CancellationToken,
}

impl StoreHealth {
    pub(crate) fn new(reporter: HealthReporter, shutdown: CancellationToken) -> Self {
        Self { reporter, shutdown }
    }

    async fn set(&self, status: ServingStatus) {
        for service in SERVICES {
            if self.shutdown.is_cancelled() {
                return;
            }
            self.reporter.set_service_status(*service, status).await;
        }
    }
}

/// Runs timer passes until `stop`. A store that is down fails every pass:
/// the loop says so once, then every half minute, and once more when it
/// recovers; health follows the first failure and the first success.
pub(crate) async fn run(
    engine: Arc<dyn Engine>,
    tick: Duration,
    health: StoreHealth,
    stop: CancellationToken,
) {
    const RELOG: Duration = Duration::from_secs(30);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<(Instant, u64)> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        match engine.run_timers(SystemTime::now()).await {
            Ok(()) => {
                if let Some((_, passes)) = failing.take() {
                    tracing::info!(
                        failed_passes = passes,
                        "timer passes succeed again; health is SERVING"
                    );
                    health.set(ServingStatus::Serving).await;
                }
            }
            Err(error) => match &mut failing {
                Some((logged, passes)) => {
                    *passes += 1;
                    if logged.elapsed() >= RELOG {
                        *logged = Instant::now();
                        tracing::error!(%error, failed_passes = *passes, "timer passes still failing");
                    }
                }
                None => {
                    tracing::error!(%error, "timer pass failed; health is NOT_SERVING until a pass succeeds");
                    failing = Some((Instant::now(), 1));
                    health.set(ServingStatus::NotServing).await;
                }
            },
        }
    }
}
