//! The watcher: turns a ticket's stored state plus its live changes into the
//! ordered event stream of `WatchTicket`, `Execute` and long-poll.
//!
//! Subscribe first, then read: a change that races the read shows up in
//! either. Events are forwarded in seq order; a gap (lag) is healed by a
//! fresh snapshot plus the stored output chunks after the last seq sent.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use asyncgate_proto::v1 as pb;

use super::Core;
use crate::domain::ticket::EventKind;
use crate::domain::{Ticket, TicketId};
use crate::engine::Submitted;
use crate::error::GatewayError;
use crate::hub::{Received, Subscription};

/// Items of a server stream, boxed: a stream's channel allocates its slots
/// up front, and an unboxed item is most of a kilobyte.
pub type EventSender = mpsc::Sender<Box<Result<pb::TicketEvent, tonic::Status>>>;

enum Flow {
    Continue,
    Stop,
}

impl Core {
    async fn send_event(
        &self,
        tx: &EventSender,
        seq: u64,
        kind: pb::TicketEventKind,
        ticket: Option<&Ticket>,
        output: Option<pb::Payload>,
    ) -> Flow {
        let ticket = match ticket {
            Some(t) => Some(self.present(t).await),
            None => None,
        };
        let event = pb::TicketEvent {
            seq,
            kind: kind as i32,
            ticket,
            output,
        };
        match tx.send(Box::new(Ok(event))).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    /// Sends a snapshot, then the stored chunks after `after_seq` (when
    /// given). Returns the snapshot's seq and whether it was terminal.
    async fn send_snapshot(
        &self,
        tx: &EventSender,
        id: TicketId,
        after_seq: Option<u64>,
    ) -> Result<(u64, bool), Option<GatewayError>> {
        let (ticket, chunks) = self
            .engine
            .get_with_chunks(id, after_seq.unwrap_or(u64::MAX))
            .await
            .map_err(|e| Some(e.into()))?;
        if let Flow::Stop = self
            .send_event(
                tx,
                ticket.seq,
                pb::TicketEventKind::Snapshot,
                Some(&ticket),
                None,
            )
            .await
        {
            return Err(None);
        }
        for chunk in chunks {
            if let Flow::Stop = self
                .send_event(
                    tx,
                    chunk.seq,
                    pb::TicketEventKind::Output,
                    Some(&ticket),
                    Some(chunk.output),
                )
                .await
            {
                return Err(None);
            }
        }
        Ok((ticket.seq, ticket.state.is_terminal()))
    }

    /// Streams `id`'s events into `tx` until the terminal event, the client
    /// leaving, or shutdown.
    pub async fn watch_into(&self, id: TicketId, after_seq: Option<u64>, tx: EventSender) {
        let subscription = self.hub.subscribe(id);
        let (last_seq, terminal) = match self.send_snapshot(&tx, id, after_seq).await {
            Ok(state) => state,
            Err(Some(error)) => {
                let _ = tx.send(Box::new(Err(error.into()))).await;
                return;
            }
            Err(None) => return,
        };
        if !terminal {
            self.follow(id, subscription, last_seq, tx).await;
        }
    }

    /// Like [`Core::watch_into`] for a ticket just submitted, whose
    /// `subscription` was taken before the submit: the submitted state is
    /// the snapshot, with no read from the store.
    pub async fn watch_submitted(
        &self,
        submitted: Submitted,
        subscription: Subscription,
        tx: EventSender,
    ) {
        let ticket = submitted.ticket;
        let event = pb::TicketEvent {
            seq: ticket.seq,
            kind: pb::TicketEventKind::Snapshot as i32,
            ticket: Some(self.present_with(&ticket, submitted.tickets_ahead).await),
            output: None,
        };
        if tx.send(Box::new(Ok(event))).await.is_ok() && !ticket.state.is_terminal() {
            self.follow(ticket.id, subscription, ticket.seq, tx).await;
        }
    }

    /// Forwards the changes after `last_seq` until the terminal one.
    async fn follow(
        &self,
        id: TicketId,
        mut subscription: Subscription,
        mut last_seq: u64,
        tx: EventSender,
    ) {
        let keepalive = self.config.watch_keepalive;
        let mut idle_until = Instant::now() + keepalive;
        loop {
            let received = tokio::select! {
                biased;
                received = subscription.recv() => received,
                _ = tokio::time::sleep_until(idle_until) => {
                    let event = pb::TicketEvent {
                        seq: last_seq,
                        kind: pb::TicketEventKind::Keepalive as i32,
                        ticket: None,
                        output: None,
                    };
                    if tx.send(Box::new(Ok(event))).await.is_err() {
                        return;
                    }
                    idle_until = Instant::now() + keepalive;
                    continue;
                }
                _ = tx.closed() => return,
                _ = self.hard_stop.cancelled() => {
                    let status = tonic::Status::unavailable(format!(
                        "the gateway is shutting down; watch again with after_seq={last_seq} to resume"
                    ));
                    let _ = tx.send(Box::new(Err(status))).await;
                    return;
                }
            };
            idle_until = Instant::now() + keepalive;
            match received {
                Received::Change(change) if change.ticket.seq <= last_seq => continue,
                Received::Change(change) if change.ticket.seq == last_seq + 1 => {
                    let kind = match change.kind {
                        EventKind::State => pb::TicketEventKind::State,
                        EventKind::Progress => pb::TicketEventKind::Progress,
                        EventKind::Output => pb::TicketEventKind::Output,
                    };
                    let flow = self
                        .send_event(
                            &tx,
                            change.ticket.seq,
                            kind,
                            Some(&change.ticket),
                            change.output.clone(),
                        )
                        .await;
                    if let Flow::Stop = flow {
                        return;
                    }
                    last_seq = change.ticket.seq;
                    if change.ticket.state.is_terminal() {
                        return;
                    }
                }
                Received::Change(_) | Received::Lagged | Received::Closed => {
                    if let Received::Closed = received {
                        subscription = self.hub.subscribe(id);
                    }
                    match self.send_snapshot(&tx, id, Some(last_seq)).await {
                        Ok((seq, terminal)) => {
                            last_seq = seq;
                            if terminal {
                                return;
                            }
                        }
                        Err(Some(error)) => {
                            let _ = tx.send(Box::new(Err(error.into()))).await;
                            return;
                        }
                        Err(None) => return,
                    }
                }
            }
        }
    }

    /// Long-poll: the ticket once terminal, or its state when `wait` ends.
    pub async fn wait_for_terminal(
        &self,
        id: TicketId,
        wait: Duration,
    ) -> Result<Ticket, GatewayError> {
        let mut subscription = self.hub.subscribe(id);
        let ticket = self.engine.get(id).await?;
        if ticket.state.is_terminal() || wait.is_zero() {
            return Ok(ticket);
        }
        let deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                received = subscription.recv() => match received {
                    Received::Change(change) if change.ticket.state.is_terminal() => {
                        return Ok((*change.ticket).clone());
                    }
                    Received::Change(_) => {}
                    Received::Lagged | Received::Closed => {
                        if let Received::Closed = received {
                            subscription = self.hub.subscribe(id);
                        }
                        let ticket = self.engine.get(id).await?;
                        if ticket.state.is_terminal() {
                            return Ok(ticket);
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.hard_stop.cancelled() => break,
            }
        }
        Ok(self.engine.get(id).await?)
    }
}
