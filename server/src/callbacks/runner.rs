//! The delivery loop every gateway runs: it claims due callbacks from the
//! engine (each held from other replicas while it is delivered), delivers
//! at most `--callback-concurrency` at once, and records each outcome: a
//! failure is retried with exponential backoff until the retry window from
//! the ticket's end has passed. A gateway killed mid-delivery leaves the
//! claim to lapse, and the callback is delivered again: at least once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::CallbackSettings;
use super::deliver::{ATTEMPT_TIMEOUT, Deliverer, Failed};
use crate::domain::Ticket;
use crate::domain::backoff::Backoff;
use crate::domain::callback::{CallbackOutcome, webhook_id};
use crate::engine::Engine;
use crate::rpc::convert;

/// How soon the engine is asked again when no callback was due; doubling
/// while none are, up to [`IDLE_POLL`] (on Redis a claim reads every
/// queue, so an idle gateway asks seldom).
const POLL: Duration = Duration::from_millis(50);
/// The longest wait between claims while nothing is due.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a claimed callback is held from other claims: an attempt's
/// budget and then some.
const HOLD: Duration = Duration::from_secs(ATTEMPT_TIMEOUT.as_secs() * 2);
/// Retries wait 1 s, 2 s, 4 s … up to an hour (with jitter).
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(3600),
};

/// Starts the delivery loop, which (with its deliveries) ends with
/// `hard_stop`: a delivery cut short is made again after its hold.
pub(crate) fn spawn(
    engine: Arc<dyn Engine>,
    settings: Arc<CallbackSettings>,
    hard_stop: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), String> {
    let deliverer = Arc::new(Deliverer::new(settings.clone())?);
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let tasks = tracker.clone();
    tracker.spawn(async move {
        let mut idle = POLL;
        loop {
            // A free slot first: claims are made only as fast as deliveries
            // end, and never wait out a poll while slots are free.
            let first = tokio::select! {
                () = hard_stop.cancelled() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let free = slots.available_permits() + 1;
            let claimed = match engine.claim_callbacks(SystemTime::now(), free, HOLD).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "due callbacks could not be read; trying again");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                drop(first);
                tokio::select! {
                    () = hard_stop.cancelled() => return,
                    () = tokio::time::sleep(idle) => {}
                }
                idle = (idle * 2).min(IDLE_POLL);
                continue;
            }
            idle = POLL;
            let mut first = Some(first);
            for ticket in claimed {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let (engine, deliverer, window) =
                    (engine.clone(), deliverer.clone(), settings.retry_window);
                let stop = hard_stop.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        () = deliver_one(&*engine, &deliverer, ticket, window) => {}
                        () = stop.cancelled() => {}
                    }
                    drop(permit);
                });
            }
        }
    });
    Ok(())
}

/// One attempt for `ticket`'s callback, recorded.
async fn deliver_one(engine: &dyn Engine, deliverer: &Deliverer, ticket: Ticket, window: Duration) {
    let Some(callback) = ticket.callback.as_deref().cloned() else {
        return;
    };
    let id = webhook_id(ticket.id, callback.seq);
    let body = convert::ticket_to_pb(&ticket, convert::WaitContext::default());
    let outcome = match deliverer.deliver(&callback.url, body, &id).await {
        Ok(()) => CallbackOutcome::Delivered,
        Err(Failed { retryable, message }) => {
            let attempts = callback.attempts + 1;
            let at = SystemTime::now() + BACKOFF.delay(attempts, rand::random::<f64>());
            if !retryable {
                CallbackOutcome::GiveUp { error: message }
            } else if !callback.within(window, at) {
                CallbackOutcome::GiveUp {
                    error: format!(
                        "gave up after {attempts} attempts over its retry window of {window:?}: {message}"
                    ),
                }
            } else {
                CallbackOutcome::Retry { at, error: message }
            }
        }
    };
    let delivered = outcome == CallbackOutcome::Delivered;
    match engine
        .record_callback(ticket.id, callback.seq, outcome)
        .await
    {
        Ok(_) => {
            tracing::debug!(ticket = %ticket.id, webhook_id = %id, delivered, "callback attempt recorded")
        }
        // Not recorded: the claim lapses and the attempt is made again.
        Err(error) => {
            tracing::warn!(ticket = %ticket.id, %error, "a callback attempt could not be recorded")
        }
    }
}
