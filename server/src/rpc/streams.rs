//! The per-message streams of `Gateway`: `SubmitStream` (one stream per
//! producer, an answer per item in order, each once its ticket is stored)
//! and `WatchTickets` (the events of many tickets on one stream, each
//! ticket's exactly as `WatchTicket` sends them). Each stream is one task
//! that owns its state; its answers go out through a bounded channel, so a
//! client that stops reading stops the task, not the gateway's memory.

use std::pin::Pin;

use futures::stream::FuturesOrdered;
use futures::{Future, StreamExt};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use asyncgate_proto::v1 as pb;

use super::Core;
use super::convert;
use super::watch::EventStream;
use crate::auth::Caller;
use crate::domain::TicketId;
use crate::error::GatewayError;

/// Answers queued for a client before the stream's task waits for it.
const OUT_BUFFER: usize = 64;
/// Items of one SubmitStream being stored at once.
pub(crate) const SUBMIT_WINDOW: usize = 256;
/// Bytes of requests of one SubmitStream being stored at once (one item
/// may pass it: it was read before its size was known).
pub(crate) const SUBMIT_WINDOW_BYTES: usize = 8 << 20;
/// Tickets one WatchTickets stream may follow at once.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 10_000;

/// The answers of a SubmitStream.
pub(crate) type SubmitResults = ReceiverStream<Result<pb::SubmitResult, Status>>;
/// The events of a WatchTickets stream.
pub(crate) type TicketsEvents = ReceiverStream<Result<pb::TicketEvent, Status>>;

/// Stores one item of a SubmitStream and presents it, as Submit does.
pub(crate) type SubmitOne = Box<
    dyn Fn(
            pb::SubmitRequest,
        ) -> Pin<Box<dyn Future<Output = Result<pb::Ticket, GatewayError>> + Send>>
        + Send
        + Sync,
>;

/// A refused item or subscription on the wire.
pub(crate) fn item_error(error: impl Into<Status>) -> pb::ItemError {
    let status: Status = error.into();
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

/// Runs a SubmitStream: reads items while fewer than [`SUBMIT_WINDOW`]
/// (and [`SUBMIT_WINDOW_BYTES`]) are being stored, stores them at once
/// with `submit`, and answers in the order they came. At shutdown it reads
/// no more, answers what it took, then ends with UNAVAILABLE.
pub(crate) fn submit_stream(
    core: &Core,
    mut inbound: Streaming<pb::SubmitRequest>,
    submit: SubmitOne,
) -> SubmitResults {
    let (tx, rx) = mpsc::channel(OUT_BUFFER);
    let shutdown = core.shutdown.clone();
    core.tracker.spawn(async move {
        let mut storing = FuturesOrdered::new();
        let (mut bytes, mut index, mut reading, mut stopped) = (0usize, 0u64, true, false);
        loop {
            let room = storing.len() < SUBMIT_WINDOW && bytes < SUBMIT_WINDOW_BYTES;
            tokio::select! {
                biased;
                Some((at, size, result)) = storing.next(), if !storing.is_empty() => {
                    bytes -= size;
                    let answer = match result {
                        Ok(ticket) => pb::SubmitResult { ticket: Some(ticket), error: None, index: at },
                        Err(error) => pb::SubmitResult { ticket: None, error: Some(item_error(error)), index: at },
                    };
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                () = shutdown.cancelled(), if reading => {
                    (reading, stopped) = (false, true);
                }
                message = inbound.message(), if reading && room => match message {
                    Ok(Some(request)) => {
                        let size = request.encoded_len();
                        bytes += size;
                        let at = index;
                        index += 1;
                        let stored = submit(request);
                        storing.push_back(async move { (at, size, stored.await) });
                    }
                    // Ended by the client (or broken): answer what was taken.
                    Ok(None) | Err(_) => reading = false,
                },
                else => break,
            }
        }
        if stopped {
            let _ = tx.send(Err(GatewayError::ShuttingDown.into())).await;
        }
    });
    ReceiverStream::new(rx)
}

/// Whether `event` is one a `terminal_only` stream sends: a terminal
/// snapshot or state change.
fn is_terminal_event(event: &pb::TicketEvent) -> bool {
    let kind = event.kind;
    (kind == pb::TicketEventKind::Snapshot as i32 || kind == pb::TicketEventKind::State as i32)
        && event.ticket.as_ref().is_some_and(|t| {
            matches!(
                t.state(),
                pb::TicketState::Succeeded
                    | pb::TicketState::Failed
                    | pb::TicketState::Cancelled
                    | pb::TicketState::Expired
            )
        })
}

/// An event saying `id`'s subscription cannot be served.
fn refused(id: String, error: impl Into<Status>) -> pb::TicketEvent {
    pb::TicketEvent {
        ticket_id: id,
        error: Some(item_error(error)),
        ..Default::default()
    }
}

/// Runs a WatchTickets stream for `viewer` (see the module docs). Each
/// ticket's own keepalives are dropped; the stream sends one (without a
/// ticket) when it has been idle for the keepalive interval.
pub(crate) fn watch_tickets(
    core: &Core,
    viewer: Caller,
    mut inbound: Streaming<pb::WatchTicketsRequest>,
) -> TicketsEvents {
    let (tx, rx) = mpsc::channel(OUT_BUFFER);
    let core = core.clone();
    let tracker = core.tracker.clone();
    tracker.spawn(async move {
        let mut followed: StreamMap<TicketId, EventStream> = StreamMap::new();
        let mut terminal_only = None;
        let mut reading = true;
        let keepalive = core.config.watch_keepalive;
        let idle = tokio::time::sleep(keepalive);
        tokio::pin!(idle);
        let revoked = viewer.revocation();
        loop {
            let mut out = Vec::new();
            tokio::select! {
                biased;
                () = revoked.cancelled() => {
                    let _ = tx.send(Err(viewer.revoked_error().into())).await;
                    return;
                }
                () = core.hard_stop.cancelled() => {
                    let _ = tx.send(Err(GatewayError::ShuttingDown.into())).await;
                    return;
                }
                Some((id, item)) = followed.next(), if !followed.is_empty() => match item {
                    Ok(mut event) => {
                        let keepalive = event.kind == pb::TicketEventKind::Keepalive as i32;
                        if !keepalive && (terminal_only != Some(true) || is_terminal_event(&event)) {
                            event.ticket_id = id.to_string();
                            out.push(event);
                        }
                    }
                    Err(status) => {
                        followed.remove(&id);
                        out.push(refused(id.to_string(), status));
                    }
                },
                message = inbound.message(), if reading => match message {
                    Ok(Some(request)) => {
                        terminal_only.get_or_insert(request.terminal_only);
                        for id in request.remove {
                            if let Ok(id) = convert::ticket_id(&id, "remove") {
                                followed.remove(&id);
                            }
                        }
                        for add in request.add {
                            match convert::ticket_id(&add.id, "add.id") {
                                Err(error) => out.push(refused(add.id, error)),
                                Ok(id) if followed.contains_key(&id) => {}
                                Ok(_) if followed.len() >= MAX_SUBSCRIPTIONS => out.push(refused(
                                    add.id,
                                    GatewayError::Exhausted(format!(
                                        "this stream follows {MAX_SUBSCRIPTIONS} tickets, the limit; remove finished ones or open another stream"
                                    )),
                                )),
                                Ok(id) => {
                                    let stream = core.watch_stream(viewer.clone(), id, add.after_seq);
                                    followed.insert(id, stream);
                                }
                            }
                        }
                    }
                    Ok(None) | Err(_) => reading = false,
                },
                () = &mut idle => {
                    out.push(pb::TicketEvent {
                        kind: pb::TicketEventKind::Keepalive as i32,
                        ..Default::default()
                    });
                }
            }
            for event in out {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                idle.as_mut().reset(Instant::now() + keepalive);
            }
            if !reading && followed.is_empty() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
