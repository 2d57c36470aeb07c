//! [`EventStream`]: the ticket events of `WatchTicket` / `Execute`, resumed
//! across broken connections with no gap and no duplicate.
//!
//! Two layers:
//! - [`Cursor`] is the pure bookkeeping (which seq the caller has seen, what
//!   to drop after a resume, when the stream is over). It does no I/O, so its
//!   rules are unit-tested event by event.
//! - `Resumer` owns the gRPC stream and reopens it (`WatchTicket` with
//!   `after_seq` = the cursor) with jittered backoff when the connection
//!   breaks, up to [`ResumeOptions::max_attempts`] tries in a row.
//!
//! The server's seq rules this relies on: the first event of every stream is
//! a SNAPSHOT whose seq is that of the latest event it reflects; when
//! `after_seq` was given, the stored OUTPUT chunks with
//! `after_seq < seq <= snapshot.seq` follow it; then live events with
//! `seq > snapshot.seq`, each one higher than the last. A watcher that fell
//! behind gets a resynchronisation SNAPSHOT mid-stream, followed the same way
//! by the stored chunks after the last seq it was sent. KEEPALIVE events
//! carry no ticket and only prove the stream is alive. A gateway that shuts
//! down ends watches with UNAVAILABLE (or just ends them): both resume.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::Transport;
use futures::Stream;
use futures::stream::BoxStream;

use crate::ClientError;
use crate::error::is_transient_status;
use crate::payload::is_terminal;
use crate::pb;
use crate::pb::gateway_client::GatewayClient;
use crate::retry::Backoff;

/// How an [`EventStream`] survives broken connections.
#[derive(Debug, Clone)]
pub struct ResumeOptions {
    /// Reopen attempts in a row (without receiving any event in between)
    /// before the stream gives up and yields the last error. 0 disables
    /// resuming.
    pub max_attempts: u32,
    /// The first backoff ceiling; delays are jittered in `[ceiling/2, ceiling]`
    /// and the ceiling doubles per failed attempt.
    pub min_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
    /// A stream on which nothing (not even a KEEPALIVE) arrives for this long
    /// is taken for dead and reopened. Set it above the gateway's keepalive
    /// cadence; `None` relies on HTTP/2 keepalive pings alone.
    pub idle_timeout: Option<Duration>,
}

impl Default for ResumeOptions {
    fn default() -> Self {
        ResumeOptions {
            max_attempts: 10,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(90)),
        }
    }
}

/// How long a finished stream may take to deliver its trailers.
const TRAILER_WAIT: Duration = Duration::from_secs(1);

/// The events of one ticket, ending after its terminal event.
///
/// Yields `Ok(event)` for SNAPSHOT, STATE, PROGRESS and OUTPUT events
/// (KEEPALIVEs are consumed), then ends (`None`) once the ticket is terminal.
/// A broken connection is repaired underneath: the stream reopens
/// `WatchTicket` from the last seq it delivered, so the caller sees every
/// OUTPUT chunk exactly once, in order. After a resume the gateway sends a
/// fresh SNAPSHOT first; it is passed on (read it as "the current state"),
/// as is any resynchronisation SNAPSHOT the gateway sends mid-stream.
///
/// An `Err` item is final: the stream ends after it. That happens when the
/// gateway answers with an error (e.g. `NOT_FOUND`) or when
/// [`ResumeOptions::max_attempts`] reconnects in a row failed.
///
/// One corner: a resumed (or resynchronised) stream of a ticket that has
/// finished meanwhile gets the terminal SNAPSHOT *before* the replayed
/// OUTPUT chunks (the server's order); the stream then ends when the server
/// closes it, so read to the end rather than stopping at the first terminal
/// state.
pub struct EventStream {
    inner: BoxStream<'static, Result<pb::TicketEvent, ClientError>>,
}

impl EventStream {
    pub(crate) fn new(resumer: Resumer) -> Self {
        let inner = futures::stream::unfold(resumer, |mut resumer| async move {
            let item = resumer.next().await?;
            Some((item, resumer))
        });
        EventStream {
            inner: Box::pin(inner),
        }
    }
}

impl Stream for EventStream {
    type Item = Result<pb::TicketEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

/// What to do with one received event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Pass it to the caller; if `end`, the stream is over after it.
    Deliver {
        /// The caller has now seen the terminal event and nothing else will
        /// follow on this ticket.
        end: bool,
    },
    /// A KEEPALIVE: proof of life, not for the caller.
    KeepAlive,
    /// Already delivered before a resume: drop it.
    Duplicate,
}

/// The resume bookkeeping of one ticket's event stream.
///
/// Rules:
/// - The caller has seen everything up to `seq`; non-SNAPSHOT events at or
///   below it are duplicates (replays after a resume) and are dropped.
/// - Only the first SNAPSHOT of a stream opened *without* `after_seq` moves
///   the cursor (to its seq): nothing is replayed after it. Every other
///   SNAPSHOT — the first of a resumed stream, or a resynchronisation
///   mid-stream — is followed by the stored chunks after the last seq, which
///   lie *below* the snapshot's seq, so it leaves the cursor alone.
/// - A terminal non-SNAPSHOT event ends the stream, as does the terminal
///   first SNAPSHOT of a fresh stream. A terminal SNAPSHOT that chunks may
///   follow only marks the ticket as over: the stream ends when the gateway
///   closes it (or sends a KEEPALIVE, i.e. has nothing more). The replayed
///   chunks after it carry that terminal ticket too, so they do not end it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The highest seq the caller has processed, i.e. the `after_seq` of the
    /// next (re)open. Starts as the caller's own `after_seq`.
    seq: Option<u64>,
    /// The next SNAPSHOT is the first of a stream opened without `after_seq`.
    fresh: bool,
    /// A terminal SNAPSHOT arrived that replayed chunks may follow.
    terminal_seen: bool,
}

impl Cursor {
    /// A cursor for a stream the caller starts from `after_seq`.
    pub(crate) fn new(after_seq: Option<u64>) -> Self {
        Cursor {
            seq: after_seq,
            fresh: false,
            terminal_seen: false,
        }
    }

    /// The `after_seq` to open (or reopen) the stream with.
    pub(crate) fn resume_point(&self) -> Option<u64> {
        self.seq
    }

    /// A new stream was opened with `after_seq`.
    pub(crate) fn opened(&mut self, after_seq: Option<u64>) {
        self.fresh = after_seq.is_none();
        self.terminal_seen = false;
    }

    /// Whether the ticket is known to be over (and only the server's close is
    /// awaited).
    pub(crate) fn terminal_seen(&self) -> bool {
        self.terminal_seen
    }

    /// Decides about `event` and advances the cursor.
    pub(crate) fn accept(&mut self, event: &pb::TicketEvent) -> Verdict {
        let terminal = event
            .ticket
            .as_ref()
            .is_some_and(|ticket| is_terminal(ticket.state()));
        match event.kind() {
            pb::TicketEventKind::Keepalive => Verdict::KeepAlive,
            pb::TicketEventKind::Snapshot if self.fresh => {
                self.fresh = false;
                self.seq = Some(self.seq.map_or(event.seq, |seq| seq.max(event.seq)));
                Verdict::Deliver { end: terminal }
            }
            pb::TicketEventKind::Snapshot => {
                // Replayed chunks with seq <= snapshot.seq may follow.
                self.terminal_seen |= terminal;
                Verdict::Deliver { end: false }
            }
            _ => {
                self.fresh = false;
                if self.seq.is_some_and(|seq| event.seq <= seq) {
                    return Verdict::Duplicate;
                }
                self.seq = Some(event.seq);
                // Replayed chunks carry the ticket as the snapshot showed it,
                // terminal too: after a terminal snapshot only the server's
                // close (or a keepalive) ends the replay.
                Verdict::Deliver {
                    end: terminal && !self.terminal_seen,
                }
            }
        }
    }
}

/// What the stream is following.
#[derive(Debug)]
pub(crate) enum Target {
    /// `Execute` before its first event: the ticket id is not known yet, so a
    /// break can only be repaired by repeating the call, which is safe only
    /// with an idempotency key.
    Execute(Box<pb::SubmitRequest>),
    /// A known ticket, resumed with `WatchTicket`.
    Watch(String),
}

/// Owns the current gRPC stream and reopens it when it breaks.
pub(crate) struct Resumer {
    client: GatewayClient<Transport>,
    options: ResumeOptions,
    target: Target,
    cursor: Cursor,
    /// The open stream; `None` after a break, until reopened.
    inner: Option<tonic::Streaming<pb::TicketEvent>>,
    backoff: Backoff,
    /// Reopen attempts since an event last arrived.
    failures: u32,
    /// Why the last stream or reopen failed: what the caller gets if we give up.
    last_error: Option<ClientError>,
    /// The stream has ended (terminal event delivered or final error).
    done: bool,
}

impl Resumer {
    /// A resumer around a stream that was just opened with `after_seq`.
    pub(crate) fn new(
        client: GatewayClient<Transport>,
        options: ResumeOptions,
        target: Target,
        after_seq: Option<u64>,
        stream: tonic::Streaming<pb::TicketEvent>,
    ) -> Self {
        let mut cursor = Cursor::new(after_seq);
        cursor.opened(after_seq);
        let backoff = Backoff::new(options.min_backoff, options.max_backoff);
        Resumer {
            client,
            options,
            target,
            cursor,
            inner: Some(stream),
            backoff,
            failures: 0,
            last_error: None,
            done: false,
        }
    }

    async fn next(&mut self) -> Option<Result<pb::TicketEvent, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            let Some(stream) = self.inner.as_mut() else {
                if let Err(err) = self.reopen().await {
                    self.done = true;
                    return Some(Err(err));
                }
                continue;
            };
            let received = match self.options.idle_timeout {
                Some(idle) => match tokio::time::timeout(idle, stream.message()).await {
                    Ok(received) => received,
                    Err(_) => {
                        self.broken(ClientError::Status(tonic::Status::unavailable(format!(
                            "no event or keepalive for {idle:?}"
                        ))));
                        continue;
                    }
                },
                None => stream.message().await,
            };
            match received {
                Ok(Some(event)) => {
                    self.failures = 0;
                    self.backoff.reset();
                    match self.cursor.accept(&event) {
                        Verdict::KeepAlive if self.cursor.terminal_seen() => {
                            // Keepalives only flow on an idle stream: the
                            // replay after the terminal snapshot is over.
                            self.done = true;
                            return None;
                        }
                        Verdict::KeepAlive | Verdict::Duplicate => continue,
                        Verdict::Deliver { end } => {
                            if let Target::Execute(_) = self.target {
                                match &event.ticket {
                                    Some(ticket) => self.target = Target::Watch(ticket.id.clone()),
                                    None => {
                                        self.done = true;
                                        return Some(Err(ClientError::Protocol(
                                            "the first Execute event carries no ticket".into(),
                                        )));
                                    }
                                }
                            }
                            self.done = end;
                            if end {
                                self.finish_stream().await;
                            }
                            return Some(Ok(event));
                        }
                    }
                }
                Ok(None) if self.cursor.terminal_seen() => {
                    self.done = true;
                    return None;
                }
                Ok(None) => {
                    // A gateway that shuts down ends its watch streams
                    // cleanly; the ticket is not over, so follow it again.
                    self.broken(ClientError::Status(tonic::Status::unavailable(
                        "the event stream ended before the terminal event",
                    )));
                }
                Err(status) if is_transient_status(&status) => self.broken(status.into()),
                Err(status) => {
                    self.done = true;
                    return Some(Err(status.into()));
                }
            }
        }
    }

    /// Reads the stream to its end (the gateway closes it right after the
    /// terminal event) so that it finishes with its trailers instead of
    /// being reset: many resets on one connection make the server close the
    /// connection, failing every other call on it.
    async fn finish_stream(&mut self) {
        if let Some(mut stream) = self.inner.take() {
            let rest = async { while let Ok(Some(_)) = stream.message().await {} };
            let _ = tokio::time::timeout(TRAILER_WAIT, rest).await;
        }
    }

    fn broken(&mut self, err: ClientError) {
        tracing::debug!(error = %err, after_seq = ?self.cursor.resume_point(), "event stream broken; resuming");
        self.inner = None;
        self.last_error = Some(err);
    }

    /// Reopens the stream after a break, with backoff, or gives up with the
    /// last error.
    async fn reopen(&mut self) -> Result<(), ClientError> {
        loop {
            let give_up = self.failures >= self.options.max_attempts
                || matches!(&self.target, Target::Execute(req) if req.idempotency_key.is_empty());
            if give_up {
                return Err(self.last_error.take().unwrap_or_else(|| {
                    ClientError::Status(tonic::Status::unavailable("event stream broken"))
                }));
            }
            self.failures += 1;
            tokio::time::sleep(self.backoff.next_delay()).await;
            let after_seq = self.cursor.resume_point();
            let opened = match &self.target {
                Target::Watch(id) => {
                    self.client
                        .watch_ticket(pb::WatchTicketRequest {
                            id: id.clone(),
                            after_seq,
                        })
                        .await
                }
                // Safe: a repeated idempotency key returns the original ticket.
                Target::Execute(request) => {
                    self.client.execute(pb::SubmitRequest::clone(request)).await
                }
            };
            match opened {
                Ok(response) => {
                    tracing::debug!(?after_seq, attempt = self.failures, "event stream resumed");
                    self.cursor.opened(match self.target {
                        Target::Watch(_) => after_seq,
                        Target::Execute(_) => None,
                    });
                    self.inner = Some(response.into_inner());
                    return Ok(());
                }
                Err(status) if is_transient_status(&status) => {
                    self.last_error = Some(status.into());
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::TicketEventKind as K;
    use pb::TicketState as S;

    fn event(seq: u64, kind: K, state: S) -> pb::TicketEvent {
        pb::TicketEvent {
            seq,
            kind: kind as i32,
            ticket: (kind != K::Keepalive).then(|| pb::Ticket {
                state: state as i32,
                seq,
                ..Default::default()
            }),
            output: None,
            ..Default::default()
        }
    }

    fn deliver(end: bool) -> Verdict {
        Verdict::Deliver { end }
    }

    #[test]
    fn fresh_stream_follows_the_snapshot_then_live_events() {
        let mut c = Cursor::new(None);
        c.opened(None);
        assert_eq!(c.accept(&event(4, K::Snapshot, S::Running)), deliver(false));
        assert_eq!(c.resume_point(), Some(4));
        assert_eq!(c.accept(&event(5, K::Output, S::Running)), deliver(false));
        assert_eq!(
            c.accept(&event(5, K::Keepalive, S::Unspecified)),
            Verdict::KeepAlive
        );
        assert_eq!(c.accept(&event(6, K::Progress, S::Running)), deliver(false));
        assert_eq!(c.accept(&event(7, K::State, S::Succeeded)), deliver(true));
        assert_eq!(c.resume_point(), Some(7));
    }

    #[test]
    fn terminal_snapshot_of_a_fresh_stream_ends_it() {
        let mut c = Cursor::new(None);
        c.opened(None);
        assert_eq!(c.accept(&event(9, K::Snapshot, S::Failed)), deliver(true));
    }

    #[test]
    fn resume_replays_only_what_was_missed() {
        // Delivered up to seq 5, then the connection broke.
        let mut c = Cursor::new(None);
        c.opened(None);
        c.accept(&event(3, K::Snapshot, S::Running));
        c.accept(&event(4, K::Output, S::Running));
        c.accept(&event(5, K::Output, S::Running));
        assert_eq!(c.resume_point(), Some(5));

        // Reopened with after_seq = 5; meanwhile 6 (output), 7 (progress)
        // and 8 (output) happened.
        c.opened(Some(5));
        // The snapshot reflects seq 8 but must not skip the replay below it.
        assert_eq!(c.accept(&event(8, K::Snapshot, S::Running)), deliver(false));
        assert_eq!(c.resume_point(), Some(5));
        assert_eq!(c.accept(&event(6, K::Output, S::Running)), deliver(false));
        assert_eq!(c.accept(&event(8, K::Output, S::Running)), deliver(false));
        assert_eq!(c.accept(&event(9, K::Output, S::Running)), deliver(false));
        assert_eq!(c.resume_point(), Some(9));
    }

    #[test]
    fn duplicates_after_resume_are_dropped_but_snapshots_pass() {
        let mut c = Cursor::new(None);
        c.opened(None);
        c.accept(&event(2, K::Snapshot, S::Running));
        c.accept(&event(3, K::Output, S::Running));
        c.accept(&event(4, K::Output, S::Running));
        c.opened(Some(4));
        assert_eq!(c.accept(&event(4, K::Snapshot, S::Running)), deliver(false));
        // A server replaying too much: already delivered.
        assert_eq!(
            c.accept(&event(3, K::Output, S::Running)),
            Verdict::Duplicate
        );
        assert_eq!(
            c.accept(&event(4, K::Output, S::Running)),
            Verdict::Duplicate
        );
        // A resync snapshot mid-stream is passed on, even with an old seq.
        assert_eq!(c.accept(&event(4, K::Snapshot, S::Running)), deliver(false));
        assert_eq!(c.accept(&event(5, K::State, S::Succeeded)), deliver(true));
    }

    #[test]
    fn resumed_terminal_snapshot_waits_for_the_replay() {
        let mut c = Cursor::new(Some(10));
        c.opened(Some(10));
        assert_eq!(
            c.accept(&event(13, K::Snapshot, S::Succeeded)),
            deliver(false)
        );
        assert!(c.terminal_seen());
        // The replayed chunks carry the snapshot's ticket, terminal too.
        assert_eq!(
            c.accept(&event(11, K::Output, S::Succeeded)),
            deliver(false)
        );
        assert_eq!(
            c.accept(&event(12, K::Output, S::Succeeded)),
            deliver(false)
        );
        assert_eq!(c.resume_point(), Some(12));
        // A fresh open resets the flag (the new snapshot decides again).
        c.opened(Some(12));
        assert!(!c.terminal_seen());
    }

    #[test]
    fn mid_stream_resync_keeps_the_replayed_chunks() {
        // The gateway's watcher lagged after seq 4: it sends a fresh snapshot
        // (seq 9) and then the stored chunks after 4.
        let mut c = Cursor::new(None);
        c.opened(None);
        c.accept(&event(3, K::Snapshot, S::Running));
        c.accept(&event(4, K::Output, S::Running));
        assert_eq!(c.accept(&event(9, K::Snapshot, S::Running)), deliver(false));
        assert_eq!(c.resume_point(), Some(4));
        assert_eq!(c.accept(&event(6, K::Output, S::Running)), deliver(false));
        assert_eq!(c.accept(&event(8, K::Output, S::Running)), deliver(false));
        assert_eq!(c.accept(&event(10, K::State, S::Succeeded)), deliver(true));
    }

    #[test]
    fn terminal_resync_waits_for_the_replay() {
        let mut c = Cursor::new(None);
        c.opened(None);
        c.accept(&event(1, K::Snapshot, S::Running));
        assert_eq!(c.accept(&event(5, K::Snapshot, S::Failed)), deliver(false));
        assert!(c.terminal_seen());
        assert_eq!(c.accept(&event(3, K::Output, S::Failed)), deliver(false));
        assert_eq!(c.accept(&event(4, K::Output, S::Failed)), deliver(false));
        assert_eq!(
            c.accept(&event(6, K::Keepalive, S::Failed)),
            Verdict::KeepAlive
        );
    }

    #[test]
    fn caller_given_after_seq_drops_older_live_events() {
        let mut c = Cursor::new(Some(7));
        c.opened(Some(7));
        assert_eq!(c.accept(&event(7, K::Snapshot, S::Running)), deliver(false));
        assert_eq!(
            c.accept(&event(7, K::Output, S::Running)),
            Verdict::Duplicate
        );
        assert_eq!(c.accept(&event(8, K::Output, S::Running)), deliver(false));
    }
}
