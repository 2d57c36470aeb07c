//! Bench tickets must not outlive the run: `--mode submit` against a
//! gateway the bench did not start leaves every ticket it submitted pending
//! (no worker serves the bench's fresh queue), thousands of them.
//!
//! Two layers, because either alone leaves a gap:
//! - every submit-mode ticket carries a timeout ([`ticket_timeout`]), so the
//!   gateway expires it by itself even when the bench is killed, or when a
//!   submit's answer was lost (the bench never learnt its id);
//! - the ids the bench did learn are recorded ([`Created`]) and, when the
//!   run ends (or on Ctrl-C), the ones still pending are cancelled
//!   ([`cancel_created`]): at most [`CANCEL_CONCURRENCY`] at once, for at most
//!   [`CANCEL_LIMIT`], with one line on stderr saying how many; then the
//!   queue (the run's own) is listed for pending tickets the bench never
//!   heard of (submits in flight at Ctrl-C), and those are cancelled too.
//!
//! Embedded gateways are thrown away with their store after each run, so
//! only runs against `--server` record ids.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncgate_client::pb;
use futures::StreamExt as _;
use tokio::time::Instant;

use super::args::Settings;

/// Cancels in flight at once during the clean-up.
pub(crate) const CANCEL_CONCURRENCY: usize = 32;

/// How long the clean-up may take; what is left expires by itself.
pub(crate) const CANCEL_LIMIT: Duration = Duration::from_secs(60);

/// The timeout a submit-mode ticket carries: it outlives the run's measured
/// part (so no expiry work competes with the submits being measured) and a
/// request's own timeout, and no more.
pub(crate) fn ticket_timeout(settings: &Settings) -> Duration {
    settings.warmup + settings.duration + settings.request_timeout
}

/// Tickets one run created on one gateway.
#[derive(Debug)]
pub(crate) struct Created {
    /// The gateway they are on.
    url: String,
    /// Their queue, for the report.
    queue: String,
    /// Their ids, in submit order.
    ids: Mutex<Vec<String>>,
}

/// Every run whose tickets have not been cleaned up yet, for Ctrl-C.
static UNCLEANED: Mutex<Vec<Arc<Created>>> = Mutex::new(Vec::new());

impl Created {
    /// Starts recording a run's tickets on `url`, in `queue`.
    pub(crate) fn track(url: &str, queue: &str) -> Arc<Created> {
        let created = Arc::new(Created {
            url: url.to_owned(),
            queue: queue.to_owned(),
            ids: Mutex::new(Vec::new()),
        });
        lock(&UNCLEANED).push(created.clone());
        created
    }

    /// Records a submitted ticket.
    pub(crate) fn push(&self, id: String) {
        lock(&self.ids).push(id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a clean-up did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    cancelled: u64,
    /// Already terminal (expired, or not pending for another reason).
    finished: u64,
    failed: u64,
    /// Not tried before [`CANCEL_LIMIT`].
    left: u64,
}

/// Cancels the tickets `created` recorded that are still pending, and says
/// on stderr how many.
pub(crate) async fn cancel_created(created: &Arc<Created>) {
    lock(&UNCLEANED).retain(|c| !Arc::ptr_eq(c, created));
    let ids = std::mem::take(&mut *lock(&created.ids));
    let started = Instant::now();
    let total = ids.len();
    let deadline = started + CANCEL_LIMIT;
    let (tally, found) = match super::target::connect(&created.url, 1).await {
        Ok(channels) => {
            let client = super::target::gateway_client(&channels[0]);
            let mut tally = cancel_all(&client, ids, deadline).await;
            let found = sweep(&client, &created.queue, deadline, &mut tally).await;
            (tally, found)
        }
        Err(error) => {
            eprintln!("bench: cannot clean up: {error:#}");
            let tally = Tally {
                left: total as u64,
                ..Tally::default()
            };
            (tally, 0)
        }
    };
    if total + found == 0 {
        return;
    }
    let mut line = format!(
        "bench: cleaned up queue {}: cancelled {} of the {} tickets submitted",
        created.queue,
        tally.cancelled,
        total + found
    );
    if tally.finished > 0 {
        line.push_str(&format!(", {} had already finished", tally.finished));
    }
    if tally.failed > 0 {
        line.push_str(&format!(", {} cancels failed", tally.failed));
    }
    if tally.left > 0 {
        line.push_str(&format!(
            ", {} not tried within {CANCEL_LIMIT:?}",
            tally.left
        ));
    }
    if tally.failed + tally.left > 0 {
        line.push_str(" (those expire by themselves, at their timeout)");
    }
    eprintln!("{line} in {:.1}s", started.elapsed().as_secs_f64());
}

/// After Ctrl-C: cleans up every run that had not been cleaned up.
pub(crate) async fn cancel_uncleaned() {
    let runs = lock(&UNCLEANED).clone();
    for created in runs {
        cancel_created(&created).await;
    }
}

/// Finds the queue's pending tickets the bench did not record and cancels
/// them; returns how many it found. After Ctrl-C the requests that were in
/// flight land on the gateway although the bench never read their answers
/// (the queue is the run's own: all of its tickets are the bench's).
async fn sweep(client: &Gateway, queue: &str, deadline: Instant, tally: &mut Tally) -> usize {
    let mut found = 0;
    while Instant::now() < deadline {
        let request = pb::ListTicketsRequest {
            queue: queue.to_owned(),
            states: vec![pb::TicketState::Pending as i32],
            page_size: 1000,
            ..Default::default()
        };
        let listed = tokio::time::timeout_at(deadline, client.clone().list_tickets(request)).await;
        let Ok(Ok(page)) = listed else { break };
        let ids: Vec<String> = page
            .into_inner()
            .tickets
            .into_iter()
            .map(|t| t.id)
            .collect();
        if ids.is_empty() {
            break;
        }
        found += ids.len();
        let more = cancel_all(client, ids, deadline).await;
        tally.cancelled += more.cancelled;
        tally.finished += more.finished;
        tally.failed += more.failed;
        tally.left += more.left;
        if more.cancelled == 0 {
            // Nothing moved: do not list the same tickets again.
            break;
        }
    }
    found
}

type Gateway = pb::gateway_client::GatewayClient<asyncgate_client::Transport>;

async fn cancel_all(client: &Gateway, ids: Vec<String>, deadline: Instant) -> Tally {
    let total = ids.len() as u64;
    let mut tally = Tally::default();
    let mut cancels = futures::stream::iter(ids)
        .map(|id| {
            let mut client = client.clone();
            async move {
                let request = pb::CancelTicketRequest {
                    id,
                    reason: "asyncgate bench clean-up".into(),
                };
                client.cancel_ticket(request).await
            }
        })
        .buffer_unordered(CANCEL_CONCURRENCY);
    loop {
        let next = tokio::time::timeout_at(deadline, cancels.next()).await;
        match next {
            Ok(Some(Ok(reply))) => {
                if reply.into_inner().state() == pb::TicketState::Cancelled {
                    tally.cancelled += 1;
                } else {
                    tally.finished += 1;
                }
            }
            // A ticket that is no longer pending (it expired, say) cannot be
            // cancelled and needs no clean-up.
            Ok(Some(Err(status)))
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound
                ) =>
            {
                tally.finished += 1
            }
            Ok(Some(Err(_))) => tally.failed += 1,
            Ok(None) => break,
            Err(_) => {
                tally.left = total - tally.cancelled - tally.finished - tally.failed;
                break;
            }
        }
    }
    tally
}
