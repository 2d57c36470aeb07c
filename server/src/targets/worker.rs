//! The in-process worker of a target queue: one dispatcher session, like a
//! connected worker's, fed over channels. It answers pings, runs each task
//! as a call to the target (the attempt's deadline as the call's timeout,
//! the ticket's metadata as request metadata or headers), paced by its
//! `max_per_second`, reports the reply or the error, and drops a call whose
//! lease is revoked (cancel, expiry). Leases, fencing, retries and
//! redelivery are the session's, so a target queue's tickets behave as a
//! worker's do; on Redis only the replica holding an attempt's lease calls
//! the target for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::grpc::GrpcTarget;
use super::http::HttpTarget;
use super::{Protocol, TargetSetting};
use crate::callbacks::CallbackSettings;
use crate::dispatch::Dispatcher;
use crate::dispatch::session::messages::{Ack, Report};
use crate::dispatch::session::{self, FromWorker, Hello, Inbound, SessionSettings, ToWorker};
use crate::domain::{Outcome, TicketError};
use crate::engine::Claimed;

/// What a target worker needs from the gateway.
#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) dispatcher: Dispatcher,
    pub(crate) settings: SessionSettings,
    pub(crate) max_payload_bytes: usize,
    pub(crate) shutdown: CancellationToken,
    pub(crate) hard_stop: CancellationToken,
    /// How long a stopped target's calls in flight may go on.
    pub(crate) grace: Duration,
}

/// Starts `target`'s in-process worker, tracked by `tasks`, until
/// `gateway.shutdown`; with a `policy` (a target set through the admin
/// API), its connections only reach addresses the policy allows.
pub(crate) fn spawn(
    target: &Arc<TargetSetting>,
    policy: Option<Arc<CallbackSettings>>,
    gateway: &Gateway,
    tasks: &TaskTracker,
) -> Result<(), String> {
    let upstream = match target.protocol {
        Protocol::Grpc => Upstream::Grpc(GrpcTarget::new(target, policy)?),
        Protocol::Http => Upstream::Http(HttpTarget::new(target, policy)?),
    };
    let upstream = Arc::new(Caller {
        upstream,
        pacer: target.options.max_per_second.map(Pacer::new),
    });
    let span = tracing::info_span!("target", queue = %target.queue, url = %target.url());
    tasks.spawn(serve(target.clone(), upstream, gateway.clone(), tasks.clone()).instrument(span));
    Ok(())
}

/// A target's client and its pacing, shared by its calls.
struct Caller {
    upstream: Upstream,
    /// `max_per_second`, when set.
    pacer: Option<Pacer>,
}

enum Upstream {
    Grpc(GrpcTarget),
    Http(HttpTarget),
}

impl Caller {
    /// One attempt: waits for its turn under `max_per_second`, then calls.
    async fn attempt(&self, claimed: &Claimed, max_payload_bytes: usize) -> Outcome {
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
        match &self.upstream {
            Upstream::Grpc(grpc) => grpc.attempt(claimed, max_payload_bytes).await,
            Upstream::Http(http) => http.attempt(claimed, max_payload_bytes).await,
        }
    }
}

/// Spaces call starts `1/N` s apart (a token bucket holding one token), so
/// a burst of tickets is spread out rather than sent at once.
struct Pacer {
    interval: Duration,
    /// One caller at a time waits for the next slot, in arrival order; a
    /// caller dropped while it waits (its ticket cancelled) leaves the slot
    /// to the next one rather than using it up.
    turn: tokio::sync::Semaphore,
    /// When the next call may start (only touched by the turn's holder,
    /// never locked across the wait).
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            turn: tokio::sync::Semaphore::new(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the next free slot and takes it.
    async fn wait(&self) {
        // The semaphore is never closed.
        let Ok(_turn) = self.turn.acquire().await else {
            return;
        };
        let slot = *self.next.lock().unwrap_or_else(|p| p.into_inner());
        tokio::time::sleep_until(slot).await;
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) =
            Instant::now().max(slot) + self.interval;
    }
}

/// Runs sessions for `target` until shutdown; a session that ends (the
/// store failed, the session was lost) is followed by a new one.
async fn serve(
    target: Arc<TargetSetting>,
    caller: Arc<Caller>,
    gateway: Gateway,
    tasks: TaskTracker,
) {
    let mut pause = Duration::from_millis(50);
    while !gateway.shutdown.is_cancelled() {
        session(&target, &caller, &gateway, &tasks).await;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = gateway.shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    target: &TargetSetting,
    caller: &Arc<Caller>,
    gateway: &Gateway,
    tasks: &TaskTracker,
) {
    let max_concurrent = target.options.max_concurrent;
    let capacity = 2 * max_concurrent as usize + 64;
    let (to_session, inbound) = mpsc::channel::<Inbound>(capacity);
    let (outbound, mut from_session) = mpsc::channel(capacity);
    let hello = Hello {
        queues: vec![target.queue.clone()],
        max_in_flight: max_concurrent,
        worker_name: format!("target {}", target.url()),
    };
    if to_session
        .send(Ok(FromWorker::Hello(Ok(hello))))
        .await
        .is_err()
    {
        return;
    }
    tasks.spawn(session::run(
        gateway.dispatcher.clone(),
        gateway.settings.clone(),
        crate::auth::Caller::anonymous(),
        None,
        ReceiverStream::new(inbound),
        outbound,
        gateway.shutdown.child_token(),
        gateway.hard_stop.child_token(),
    ));
    let mut calls: HashMap<crate::domain::LeaseId, CancellationToken> = HashMap::new();
    while let Some(message) = from_session.recv().await {
        match message {
            Ok(ToWorker::Ping { nonce }) => {
                let _ = to_session.send(Ok(FromWorker::Heartbeat { nonce })).await;
            }
            Ok(ToWorker::Task { claimed, .. }) => {
                let cancel = CancellationToken::new();
                calls.retain(|_, token| !token.is_cancelled());
                calls.insert(claimed.lease.lease_id, cancel.clone());
                let (caller, to_session) = (caller.clone(), to_session.clone());
                let max = gateway.max_payload_bytes;
                tasks.spawn(async move {
                    let (ticket_id, lease_id) = (claimed.ticket.id, claimed.lease.lease_id);
                    let outcome = tokio::select! {
                        outcome = caller.attempt(&claimed, max) => outcome,
                        _ = cancel.cancelled() => return,
                    };
                    cancel.cancel();
                    let report = Report::Lease {
                        ticket_id,
                        lease_id,
                        body: Ok(outcome),
                    };
                    let _ = to_session.send(Ok(FromWorker::Result(report))).await;
                });
            }
            Ok(ToWorker::Cancel(revocation)) => {
                if let Some(token) = calls.remove(&revocation.lease_id) {
                    token.cancel();
                }
            }
            Ok(ToWorker::Ack {
                ack: Ack::Refused(error) | Ack::ProgressRefused(error),
                ticket_id,
                ..
            }) => tracing::warn!(%ticket_id, %error, "the gateway refused a target call's report"),
            Ok(ToWorker::Welcome { .. } | ToWorker::Drain { .. } | ToWorker::Ack { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, "the target's session ended");
                break;
            }
        }
    }
    for token in calls.values() {
        token.cancel();
    }
}

/// The time left before the attempt's deadline (the call's timeout).
pub(super) fn time_left(claimed: &Claimed) -> Option<Duration> {
    claimed.lease.attempt_deadline.map(|at| {
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::from_millis(1))
    })
}

/// A failed attempt's outcome.
pub(super) fn failure(code: i32, message: String, retryable: bool) -> Outcome {
    Outcome::Failure(TicketError {
        code,
        message,
        retryable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_calls_evenly_and_lets_an_idle_one_through() {
        let pacer = Arc::new(Pacer::new(5));
        let start = Instant::now();
        let waits: Vec<_> = (0..4)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.wait().await;
                    Instant::now()
                })
            })
            .collect();
        let mut started = Vec::new();
        for wait in waits {
            started.push(wait.await.unwrap() - start);
        }
        started.sort();
        assert_eq!(
            started,
            [0, 200, 400, 600].map(Duration::from_millis),
            "one call per 200 ms"
        );
        // After a quiet second, a call goes at once (no burst is saved up).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = Instant::now();
        pacer.wait().await;
        assert_eq!(before.elapsed(), Duration::ZERO);
        pacer.wait().await;
        assert_eq!(before.elapsed(), Duration::from_millis(200));
        // A wait given up (its ticket cancelled) does not use a slot.
        let given_up = tokio::time::timeout(Duration::from_millis(50), pacer.wait()).await;
        assert!(given_up.is_err(), "it was still waiting");
        let before = Instant::now();
        pacer.wait().await;
        assert_eq!(before.elapsed(), Duration::from_millis(150));
    }
}
