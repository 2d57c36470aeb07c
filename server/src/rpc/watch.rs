//! The watcher: turns a ticket's stored state plus its live changes into the
//! ordered event stream of `WatchTicket`, `Execute` and long-poll.
//!
//! Subscribe first, then read: a change that races the read shows up in
//! either. Events are forwarded in seq order; a gap (lag) is healed by a
//! fresh snapshot plus the stored output chunks after the last seq sent.
//!
//! A watch runs inside its response stream ([`EventStream`]): the stream
//! polls the watch, and each event the watch emits is the stream's next
//! item. No task and no channel per watch, so an event costs one wake (the
//! connection's stream task), and a client that stops reading holds the
//! watch back until the hub reports it lagging, then gets a fresh snapshot.
//!
//! A stream also ends (UNAUTHENTICATED) when a keys reload revokes the
//! viewer's key: it polls its own child of the key's revocation token.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use asyncgate_proto::v1 as pb;

use super::Core;
use crate::auth::Caller;
use crate::domain::ticket::EventKind;
use crate::domain::{Ticket, TicketId};
use crate::engine::Submitted;
use crate::error::GatewayError;
use crate::hub::{Received, Subscription};

type Item = Result<pb::TicketEvent, tonic::Status>;

/// The slot an event waits in between the watch and its stream.
type Slot = Arc<Mutex<Option<Item>>>;

/// Where a watch emits its events: the [`EventStream`] that polls it, and
/// whose eyes they are for (queue names are shown as the caller names them).
pub struct EventSink {
    slot: Slot,
    viewer: Caller,
}

impl EventSink {
    /// Hands `item` to the stream as its next item; returns once the stream
    /// has polled the watch again, i.e. once the item was taken.
    async fn send(&self, item: Item) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(item);
        YieldOnce { yielded: false }.await;
    }
}

/// Pending once (without a wake: the stream returns the item and polls
/// again when asked for the next one), then ready.
struct YieldOnce {
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            Poll::Pending
        }
    }
}

/// A server stream of ticket events, produced by the watch it polls.
pub(crate) struct EventStream {
    watch: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    slot: Slot,
    /// Resolves when the viewer's key is revoked; polled before the watch,
    /// so nothing more is sent to a revoked key.
    revoked: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The error that ends the stream then.
    revoked_error: Option<GatewayError>,
}

impl EventStream {
    /// The stream of what `watch` emits into the sink it is given, for
    /// `viewer`.
    pub(crate) fn new<F>(viewer: Caller, watch: impl FnOnce(EventSink) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let slot = Slot::default();
        let revoked = Box::pin(viewer.revocation().cancelled_owned());
        let revoked_error = Some(viewer.revoked_error());
        let watch = watch(EventSink {
            slot: slot.clone(),
            viewer,
        });
        Self {
            watch: Some(Box::pin(watch)),
            slot,
            revoked,
            revoked_error,
        }
    }
}

impl Stream for EventStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.watch.is_none() {
            return Poll::Ready(None);
        }
        if self.revoked.as_mut().poll(cx).is_ready() {
            self.watch = None;
            let error = self.revoked_error.take().map(tonic::Status::from);
            return Poll::Ready(error.map(Err));
        }
        let Some(watch) = self.watch.as_mut() else {
            return Poll::Ready(None);
        };
        let finished = watch.as_mut().poll(cx).is_ready();
        if finished {
            self.watch = None;
        }
        let item = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        match item {
            Some(item) => Poll::Ready(Some(item)),
            None if finished => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl Core {
    async fn send_event(
        &self,
        sink: &EventSink,
        seq: u64,
        kind: pb::TicketEventKind,
        ticket: Option<&Ticket>,
        output: Option<pb::Payload>,
    ) {
        let ticket = match ticket {
            Some(t) => Some(self.present(&sink.viewer, t).await),
            None => None,
        };
        let event = pb::TicketEvent {
            seq,
            kind: kind as i32,
            ticket,
            output: output.filter(|_| sink.viewer.payloads),
            ..Default::default()
        };
        sink.send(Ok(event)).await;
    }

    /// Sends a snapshot, then the stored chunks after `after_seq` (when
    /// given). Returns the snapshot's seq and whether it was terminal.
    async fn send_snapshot(
        &self,
        sink: &EventSink,
        id: TicketId,
        after_seq: Option<u64>,
    ) -> Result<(u64, bool), GatewayError> {
        let (ticket, chunks) = self
            .engine
            .get_with_chunks(id, after_seq.unwrap_or(u64::MAX))
            .await?;
        self.send_event(
            sink,
            ticket.seq,
            pb::TicketEventKind::Snapshot,
            Some(&ticket),
            None,
        )
        .await;
        for chunk in chunks {
            self.send_event(
                sink,
                chunk.seq,
                pb::TicketEventKind::Output,
                Some(&ticket),
                Some(chunk.output),
            )
            .await;
        }
        Ok((ticket.seq, ticket.state.is_terminal()))
    }

    /// Emits `id`'s events into `sink` until the terminal event or
    /// shutdown.
    pub async fn watch_into(&self, id: TicketId, after_seq: Option<u64>, sink: EventSink) {
        let subscription = self.hub.subscribe(id);
        match self.send_snapshot(&sink, id, after_seq).await {
            Ok((_, true)) => {}
            Ok((last_seq, false)) => self.follow(id, subscription, last_seq, &sink).await,
            Err(error) => sink.send(Err(error.into())).await,
        }
    }

    /// The events of `id` for `viewer`, as WatchTicket streams them, for a
    /// stream that follows many tickets: a ticket the viewer may not see,
    /// or one with all the watchers it may have, ends it with that error.
    pub(crate) fn watch_stream(
        &self,
        viewer: Caller,
        id: TicketId,
        after_seq: Option<u64>,
    ) -> EventStream {
        let core = self.clone();
        let checker = viewer.clone();
        EventStream::new(viewer, move |sink| async move {
            if let Err(error) = core.visible(&checker, id).await {
                return sink.send(Err(error.into())).await;
            }
            let limit = core.config.max_watchers_per_ticket;
            if core.hub.watchers(id) >= limit {
                let error = GatewayError::Exhausted(format!(
                    "ticket {id} already has {limit} watchers, the limit; poll it with GetTicket and wait instead"
                ));
                return sink.send(Err(error.into())).await;
            }
            core.watch_into(id, after_seq, sink).await;
        })
    }

    /// Like [`Core::watch_into`] for a ticket just submitted, whose
    /// `subscription` was taken before the submit: the submitted state is
    /// the snapshot, with no read from the store.
    pub async fn watch_submitted(
        &self,
        submitted: Submitted,
        subscription: Subscription,
        sink: EventSink,
    ) {
        let ticket = submitted.ticket;
        let event = pb::TicketEvent {
            seq: ticket.seq,
            kind: pb::TicketEventKind::Snapshot as i32,
            ticket: Some(
                self.present_with(&sink.viewer, &ticket, submitted.tickets_ahead)
                    .await,
            ),
            output: None,
            ..Default::default()
        };
        sink.send(Ok(event)).await;
        if !ticket.state.is_terminal() {
            self.follow(ticket.id, subscription, ticket.seq, &sink)
                .await;
        }
    }

    /// Forwards the changes after `last_seq` until the terminal one. The
    /// keepalive timer is set up once per watch, not once per event: it is
    /// moved on only when it fires early. The hard stop arrives as the
    /// subscription closing (the hub shuts down), not as a shared signal
    /// polled on every event.
    async fn follow(
        &self,
        id: TicketId,
        mut subscription: Subscription,
        mut last_seq: u64,
        sink: &EventSink,
    ) {
        let keepalive = self.config.watch_keepalive;
        let mut last_sent = Instant::now();
        let idle = tokio::time::sleep_until(last_sent + keepalive);
        tokio::pin!(idle);
        loop {
            let received = tokio::select! {
                biased;
                received = subscription.recv() => received,
                () = &mut idle => {
                    let due = last_sent + keepalive;
                    if Instant::now() < due {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    let event = pb::TicketEvent {
                        seq: last_seq,
                        kind: pb::TicketEventKind::Keepalive as i32,
                        ticket: None,
                        output: None,
                        ..Default::default()
                    };
                    sink.send(Ok(event)).await;
                    last_sent = Instant::now();
                    idle.as_mut().reset(last_sent + keepalive);
                    continue;
                }
            };
            last_sent = Instant::now();
            match received {
                Received::Closed if self.hub.is_shut_down() => {
                    let status = GatewayError::WatchInterrupted {
                        after_seq: last_seq,
                    }
                    .into();
                    sink.send(Err(status)).await;
                    return;
                }
                Received::Change(change) if change.ticket.seq <= last_seq => continue,
                Received::Change(change) if change.ticket.seq == last_seq + 1 => {
                    let kind = match change.kind {
                        EventKind::State => pb::TicketEventKind::State,
                        EventKind::Progress => pb::TicketEventKind::Progress,
                        EventKind::Output => pb::TicketEventKind::Output,
                    };
                    self.send_event(
                        sink,
                        change.ticket.seq,
                        kind,
                        Some(&change.ticket),
                        change.output.clone(),
                    )
                    .await;
                    last_seq = change.ticket.seq;
                    if change.ticket.state.is_terminal() {
                        return;
                    }
                }
                Received::Change(_) | Received::Lagged | Received::Closed => {
                    if let Received::Closed = received {
                        subscription = self.hub.subscribe(id);
                    }
                    match self.send_snapshot(sink, id, Some(last_seq)).await {
                        Ok((seq, terminal)) => {
                            last_seq = seq;
                            if terminal {
                                return;
                            }
                        }
                        Err(error) => {
                            sink.send(Err(error.into())).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Long-poll: the ticket once terminal, or its state when `wait` ends.
    /// Ends with UNAUTHENTICATED if a keys reload revokes `caller`'s key
    /// meanwhile.
    pub async fn wait_for_terminal(
        &self,
        caller: &Caller,
        id: TicketId,
        wait: Duration,
    ) -> Result<Ticket, GatewayError> {
        let mut subscription = self.hub.subscribe(id);
        let ticket = self.engine.get(id).await?;
        if ticket.state.is_terminal() || wait.is_zero() {
            return Ok(ticket);
        }
        let deadline = Instant::now() + wait;
        let revoked = caller.revocation();
        tracing::debug!(ticket_id = %id, ?wait, "long-poll waiting");
        loop {
            tokio::select! {
                () = revoked.cancelled() => return Err(caller.revoked_error()),
                received = subscription.recv() => match received {
                    Received::Change(change) if change.ticket.state.is_terminal() => {
                        return Ok((*change.ticket).clone());
                    }
                    Received::Change(_) => {}
                    Received::Closed if self.hub.is_shut_down() => break,
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
            }
        }
        Ok(self.engine.get(id).await?)
    }
}
