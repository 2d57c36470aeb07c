//! What the stream modes share per connection: one `SubmitStream` (the
//! SDK's [`Submitter`]) and, for stream-e2e, one `WatchTickets` stream (the
//! SDK's [`Results`]) whose task hands each ticket's end to the request
//! that waits for it.

use std::collections::HashMap;
use std::sync::Arc;

use asyncgate_client::{Results, Submitter, pb};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use super::cleanup::Created;
use super::load::{ErrorKey, code_name, terminal_outcome};
use super::target::gateway_client;

/// A ticket's end, for the request that waits for it.
type Ended = oneshot::Sender<Result<(), ErrorKey>>;

/// One connection's streams.
#[derive(Clone)]
pub(crate) struct Streams {
    pub(crate) submitter: Arc<Submitter>,
    /// Registers a ticket to wait for (stream-e2e only).
    follow: Option<mpsc::UnboundedSender<(String, Ended)>>,
}

impl Streams {
    /// Opens the streams on `channel`; with `results`, the WatchTickets one.
    pub(crate) async fn open(channel: &Channel, results: bool) -> anyhow::Result<Streams> {
        let submitter = Arc::new(Submitter::open(gateway_client(channel)).await?);
        let follow = if results {
            let results = Results::open(gateway_client(channel)).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(hand_out(results, rx));
            Some(tx)
        } else {
            None
        };
        Ok(Streams { submitter, follow })
    }

    /// Submits `request` on the stream (recording its id in `created`, for
    /// the clean-up); with results, waits for its end.
    pub(crate) async fn call(
        &self,
        request: &pb::SubmitRequest,
        created: Option<&Created>,
    ) -> Result<(), ErrorKey> {
        let ticket = self
            .submitter
            .submit(request.clone())
            .await
            .map_err(|e| code_name(e.code()))?;
        if let Some(created) = created {
            created.push(ticket.id.clone());
        }
        let Some(follow) = &self.follow else {
            return Ok(());
        };
        if let Some(outcome) = terminal_outcome(ticket.state()) {
            return outcome;
        }
        let (tx, rx) = oneshot::channel();
        follow
            .send((ticket.id, tx))
            .map_err(|_| "RESULTS_STREAM_ENDED")?;
        rx.await.unwrap_or(Err("RESULTS_STREAM_ENDED"))
    }
}

/// Follows what is registered on `results` and hands each end to its
/// waiter, until the registrations end.
async fn hand_out(mut results: Results, mut follow: mpsc::UnboundedReceiver<(String, Ended)>) {
    let mut waiting: HashMap<String, Ended> = HashMap::new();
    loop {
        tokio::select! {
            registered = follow.recv() => match registered {
                Some((id, ended)) => {
                    results.watch(id.clone());
                    waiting.insert(id, ended);
                }
                None => return,
            },
            Some((id, result)) = results.next(), if results.pending() > 0 => {
                let outcome = match result {
                    Ok(ticket) => terminal_outcome(ticket.state()).unwrap_or(Err("NOT_TERMINAL")),
                    Err(error) => Err(code_name(error.code())),
                };
                if let Some(ended) = waiting.remove(&id) {
                    let _ = ended.send(outcome);
                }
            }
        }
    }
}
