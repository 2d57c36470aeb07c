//! The per-message streams from the producer's side: [`Submitter`] sends
//! many submits on one `SubmitStream` (each answered in order once stored)
//! and [`Results`] follows many tickets to their ends on one `WatchTickets`
//! stream, re-following what is still open after a broken connection, so
//! no terminal event is missed.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Code, Status};

use crate::credentials::Transport;
use crate::pb::gateway_client::GatewayClient;
use crate::{ClientError, pb};

/// Submits sent and not yet answered, per submitter, before `submit` waits.
pub const SUBMITTER_IN_FLIGHT: usize = 1024;

type Answer = oneshot::Sender<Result<pb::Ticket, ClientError>>;

/// The senders of one stream: requests and the answers they wait for, in
/// the same order (pushed together under one lock).
struct Line {
    requests: mpsc::UnboundedSender<pb::SubmitRequest>,
    waiting: VecDeque<Answer>,
}

/// A refused item or subscription as a client error.
pub(crate) fn item_status(error: pb::ItemError) -> ClientError {
    ClientError::Status(Status::new(Code::from(error.code), error.message))
}

/// Many submits on one stream (`Gateway.SubmitStream`): a producer pays one
/// message per ticket, not one call. Each [`Submitter::submit`] resolves
/// once its ticket is stored, in the order sent; a refused item fails on its
/// own and the stream goes on. Up to [`SUBMITTER_IN_FLIGHT`] wait at once.
/// If the stream breaks, the waiting submits fail with its error (they may
/// or may not be stored: use idempotency keys to resubmit safely) and later
/// ones with the same.
pub struct Submitter {
    line: Arc<Mutex<Option<Line>>>,
    permits: Arc<Semaphore>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Submitter {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Submitter {
    /// Opens the stream on a generated client (e.g. one with its own
    /// interceptor); [`Client::submitter`](crate::Client::submitter) is the
    /// usual way.
    pub async fn open(mut client: GatewayClient<Transport>) -> Result<Submitter, ClientError> {
        let (requests, rx) = mpsc::unbounded_channel();
        let mut answers = client
            .submit_stream(receiver_stream(rx))
            .await?
            .into_inner();
        let line = Arc::new(Mutex::new(Some(Line {
            requests,
            waiting: VecDeque::new(),
        })));
        let reader = tokio::spawn({
            let line = line.clone();
            async move {
                let end = loop {
                    match answers.next().await {
                        Some(Ok(answer)) => {
                            let waiter = lock(&line).as_mut().and_then(|l| l.waiting.pop_front());
                            let result = match (answer.ticket, answer.error) {
                                (_, Some(error)) => Err(item_status(error)),
                                (Some(ticket), None) => Ok(ticket),
                                (None, None) => Err(ClientError::Status(Status::internal(
                                    "the gateway answered an item with neither ticket nor error",
                                ))),
                            };
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(result);
                            }
                        }
                        Some(Err(status)) => break status,
                        None => break Status::unavailable("the submit stream ended"),
                    }
                };
                // Fail what waits; later submits see the stream closed.
                if let Some(line) = lock(&line).take() {
                    for waiter in line.waiting {
                        let _ = waiter.send(Err(ClientError::Status(end.clone())));
                    }
                }
            }
        });
        Ok(Submitter {
            line,
            permits: Arc::new(Semaphore::new(SUBMITTER_IN_FLIGHT)),
            reader,
        })
    }

    /// Sends one submit; resolves with its stored ticket (or why it was
    /// refused). Accepts a [`pb::SubmitRequest`] or a
    /// [`Submit`](crate::Submit) builder.
    pub async fn submit(
        &self,
        request: impl Into<pb::SubmitRequest>,
    ) -> Result<pb::Ticket, ClientError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ClientError::Status(Status::unavailable("the submitter is closed")))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut line = lock(&self.line);
            let Some(line) = line.as_mut() else {
                return Err(ClientError::Status(Status::unavailable(
                    "the submit stream has ended; open another submitter",
                )));
            };
            line.requests.send(request.into()).map_err(|_| {
                ClientError::Status(Status::unavailable("the submit stream has ended"))
            })?;
            line.waiting.push_back(tx);
        }
        rx.await.unwrap_or_else(|_| {
            Err(ClientError::Status(Status::unavailable(
                "the submit stream has ended",
            )))
        })
    }

    /// Ends the stream once every sent submit is answered.
    pub async fn close(self) {
        if let Some(line) = lock(&self.line).as_mut() {
            // Dropping the sender ends the request side; answers still come.
            let (closed, _) = mpsc::unbounded_channel();
            line.requests = closed;
        }
        let _ = self.permits.acquire_many(SUBMITTER_IN_FLIGHT as u32).await;
    }
}

/// A request stream fed by a channel.
fn receiver_stream<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The longest wait between attempts to reopen a broken [`Results`] stream.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(5);
/// Attempts to reopen a [`Results`] stream in a row before its error is
/// returned.
const REOPEN_ATTEMPTS: u32 = 8;

/// Results of many tickets on one stream (`Gateway.WatchTickets` with
/// `terminal_only`): [`Results::watch`] a ticket, and [`Results::next`]
/// yields it once it has ended. After a broken connection the stream is
/// reopened and what is still open followed again (a ticket that ended
/// meanwhile comes as its terminal snapshot), so no end is missed.
pub struct Results {
    client: GatewayClient<Transport>,
    requests: mpsc::UnboundedSender<pb::WatchTicketsRequest>,
    events: tonic::Streaming<pb::TicketEvent>,
    open: HashSet<String>,
}

impl Results {
    /// Opens the stream on a generated client;
    /// [`Client::results`](crate::Client::results) is the usual way.
    pub async fn open(client: GatewayClient<Transport>) -> Result<Results, ClientError> {
        let (requests, events) = Self::stream(client.clone(), &HashSet::new()).await?;
        Ok(Results {
            client,
            requests,
            events,
            open: HashSet::new(),
        })
    }

    async fn stream(
        mut client: GatewayClient<Transport>,
        open: &HashSet<String>,
    ) -> Result<
        (
            mpsc::UnboundedSender<pb::WatchTicketsRequest>,
            tonic::Streaming<pb::TicketEvent>,
        ),
        ClientError,
    > {
        let (requests, rx) = mpsc::unbounded_channel();
        let _ = requests.send(pb::WatchTicketsRequest {
            terminal_only: true,
            add: open
                .iter()
                .map(|id| pb::WatchSubscription {
                    id: id.clone(),
                    after_seq: None,
                })
                .collect(),
            remove: Vec::new(),
        });
        let events = client
            .watch_tickets(receiver_stream(rx))
            .await?
            .into_inner();
        Ok((requests, events))
    }

    /// Follows `id` until it ends. Following a ticket twice is once.
    pub fn watch(&mut self, id: impl Into<String>) {
        let id = id.into();
        if self.open.insert(id.clone()) {
            let _ = self.requests.send(pb::WatchTicketsRequest {
                add: vec![pb::WatchSubscription {
                    id,
                    after_seq: None,
                }],
                ..Default::default()
            });
        }
    }

    /// Stops following `id`.
    pub fn unwatch(&mut self, id: &str) {
        if self.open.remove(id) {
            let _ = self.requests.send(pb::WatchTicketsRequest {
                remove: vec![id.to_owned()],
                ..Default::default()
            });
        }
    }

    /// Tickets followed that have not ended yet.
    pub fn pending(&self) -> usize {
        self.open.len()
    }

    /// The next ticket to end, with its final state (or why it cannot be
    /// followed: unknown id, not visible to this key); `None` once nothing
    /// is followed. A broken stream is reopened (with backoff); its error
    /// is returned only when reopening keeps failing.
    pub async fn next(&mut self) -> Option<(String, Result<pb::Ticket, ClientError>)> {
        let mut failures = 0u32;
        loop {
            if self.open.is_empty() {
                return None;
            }
            match self.events.next().await {
                Some(Ok(event)) => {
                    failures = 0;
                    if event.ticket_id.is_empty() || !self.open.contains(&event.ticket_id) {
                        continue;
                    }
                    let result = match (event.error, event.ticket) {
                        (Some(error), _) => Err(item_status(error)),
                        (None, Some(ticket)) if crate::is_terminal(ticket.state()) => Ok(ticket),
                        _ => continue,
                    };
                    self.open.remove(&event.ticket_id);
                    return Some((event.ticket_id, result));
                }
                ended => {
                    failures += 1;
                    let error = match ended {
                        Some(Err(status)) => ClientError::Status(status),
                        _ => ClientError::Status(Status::unavailable("the results stream ended")),
                    };
                    if failures > REOPEN_ATTEMPTS {
                        return Some((String::new(), Err(error)));
                    }
                    let delay = Duration::from_millis(50 << failures.min(7)).min(MAX_REOPEN_DELAY);
                    tokio::time::sleep(delay).await;
                    if let Ok((requests, events)) =
                        Self::stream(self.client.clone(), &self.open).await
                    {
                        (self.requests, self.events) = (requests, events);
                    }
                }
            }
        }
    }
}
