//! The worker's connection loop: one [`Runner`] owns all mutable worker state
//! (running leases, unacknowledged results, the task set) and is the only
//! code that touches it, so there is no lock; handler tasks talk to it
//! through channels.
//!
//! Per connection (a "session"): send Hello, expect Welcome, resend the
//! unacknowledged results, then one `select!` loop over (in priority order)
//! finished tasks, the gateway's messages, the watchdog and shutdown. Any
//! end of a session — error, silence, end of stream, Drain — is followed by
//! a jittered, growing backoff and a new session, until a graceful shutdown
//! has nothing left to deliver.
//!
//! Invariants:
//! - A lease is in `running` from its Task until its handler finished, then
//!   in `unacked` until a final ResultAck for it arrives (any code but
//!   UNAVAILABLE, which makes it go out again a second later). So exactly one
//!   result is produced per lease and it survives reconnects.
//! - Every message to the gateway goes through the session's one mpsc
//!   (the request stream): a lease's progress, sent by its task directly,
//!   is enqueued before its result, which the loop enqueues after hearing
//!   that the task finished.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prost::Message as _;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt as _, Stream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use asyncgate_proto::trace_context::TRACEPARENT;

use super::handler::{CancelSignal, Handler, TaskContext, TaskError, TraceParent};
use super::{Config, Connector, transport};
use crate::convert;
use crate::error::is_transient_status;
use crate::pb::workers_client::WorkersClient;
use crate::pb::{self, dispatch_message, task_result, worker_message};
use crate::retry::Backoff;

/// How long a shutting-down worker waits for the gateway to answer its Drain
/// once every result is acknowledged (a gateway that predates worker drains
/// never answers).
const DRAIN_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Used when a Welcome names no heartbeat interval.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// The gateway is taken for dead after this many heartbeat intervals of
/// silence (it pings once per interval, so three misses are no accident).
const WATCHDOG_INTERVALS: u32 = 3;
/// After a graceful end-of-stream, how long the gateway gets to close its
/// side before the socket is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The request stream's sender.
type Outgoing = mpsc::Sender<pb::WorkerMessage>;

/// How long a result answered UNAVAILABLE waits before it is sent again.
const RESEND_AFTER_UNAVAILABLE: Duration = Duration::from_secs(1);

/// A handler finished (or was never started because it was cancelled first).
struct Finished {
    ticket_id: String,
    lease_id: String,
    outcome: Result<pb::Payload, TaskError>,
}

/// A result sent (or to be sent) and not yet acknowledged.
struct Unacked {
    /// Completion order, so a resend keeps it.
    order: u64,
    message: pb::WorkerMessage,
}

/// Why a session ended: decides the log line, not the next step (which is
/// always "back off, then reconnect", unless the worker is done).
enum SessionEnd {
    ConnectFailed(String),
    HandshakeFailed(String),
    Broken(tonic::Status),
    Closed,
    Silent(Duration),
    Stalled,
    Drained,
    Shutdown,
}

pub(super) struct Runner {
    config: Config,
    handler: Arc<dyn Handler>,
    /// `max_in_flight` permits; a handler runs only while holding one.
    permits: Arc<Semaphore>,
    /// Graceful stop requested.
    shutdown: CancellationToken,
    /// Hard stop: parent of every session's kill switch and every task's
    /// cancellation.
    hard: CancellationToken,
    /// The current session id, published for `WorkerHandle::connected`.
    session: watch::Sender<Option<String>>,
    /// The current request stream's sender, published for task contexts.
    link: watch::Sender<Option<Outgoing>>,
    /// Leases whose handler has not finished, with their cancellation.
    running: HashMap<String, Arc<CancelSignal>>,
    /// Results not yet acknowledged, by lease id.
    unacked: HashMap<String, Unacked>,
    next_order: u64,
    /// Every handler task: aborted with the runner (abort, shutdown timeout).
    tasks: JoinSet<()>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    backoff: Backoff,
}

impl Runner {
    pub(super) fn new(
        config: Config,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
        hard: CancellationToken,
        session: watch::Sender<Option<String>>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let backoff = Backoff::new(config.min_backoff, config.max_backoff);
        // `build` checked max_in_flight <= 10000, so this never truncates.
        let permits = Arc::new(Semaphore::new(config.max_in_flight as usize));
        Runner {
            config,
            handler,
            permits,
            shutdown,
            hard,
            session,
            link: watch::channel(None).0,
            running: HashMap::new(),
            unacked: HashMap::new(),
            next_order: 0,
            tasks: JoinSet::new(),
            done_tx,
            done_rx,
            backoff,
        }
    }

    /// Serves until a graceful shutdown has delivered everything, or the
    /// shutdown timeout elapses. (An abort drops this future instead.)
    pub(super) async fn run(mut self) {
        let shutdown = self.shutdown.clone();
        let limit = self.config.shutdown_timeout;
        let timed_out = async move {
            shutdown.cancelled().await;
            match limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let completed = tokio::select! {
            () = self.serve() => true,
            () = timed_out => false,
        };
        if !completed {
            warn!(
                in_flight = self.running.len(),
                unacknowledged = self.unacked.len(),
                "shutdown timeout elapsed; stopping hard"
            );
        }
        self.hard.cancel();
        self.session.send_replace(None);
        self.link.send_replace(None);
        self.tasks.shutdown().await;
        info!("worker stopped");
    }

    /// The gateway's address, for logs.
    fn gateway_name(&self) -> String {
        match &self.config.connector {
            Connector::Endpoint(endpoint) => endpoint.uri().to_string(),
            Connector::Channel(_) => "the caller's channel".to_owned(),
        }
    }

    /// A graceful shutdown is complete.
    fn finished(&self) -> bool {
        self.shutdown.is_cancelled() && self.running.is_empty() && self.unacked.is_empty()
    }

    async fn serve(&mut self) {
        loop {
            if self.finished() {
                return;
            }
            let end = self.session().await;
            self.session.send_replace(None);
            self.link.send_replace(None);
            log_end(&end, &self.gateway_name());
            if !matches!(end, SessionEnd::Drained | SessionEnd::Shutdown) {
                self.leases_lost();
            }
            if self.finished() {
                return;
            }
            let delay = self.backoff.next_delay();
            debug!(?delay, "reconnecting after backoff");
            self.pause(delay).await;
        }
    }

    /// The connection broke with tasks running: the gateway has most likely
    /// given their leases to others. Tell the handlers (so a well-behaved one
    /// stops and frees its slot for the next session's tasks); whatever they
    /// still return is sent after the reconnect, where the gateway's lease
    /// check decides whether it counts.
    fn leases_lost(&mut self) {
        if self.running.is_empty() {
            return;
        }
        info!(
            running = self.running.len(),
            "connection lost with tasks running; telling their handlers"
        );
        for signal in self.running.values() {
            signal.cancel(
                pb::CancelReason::LeaseLost,
                "the connection to the gateway was lost; the lease has probably been reassigned"
                    .into(),
            );
        }
    }

    /// Waits out a backoff while still collecting finished tasks (their
    /// results wait in `unacked` for the next session).
    async fn pause(&mut self, delay: Duration) {
        let wake = Instant::now() + delay;
        loop {
            if self.finished() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => return,
                Some(done) = self.done_rx.recv() => {
                    self.record(done);
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => log_join(joined),
                () = self.shutdown.cancelled(), if !self.shutdown.is_cancelled() => {}
            }
        }
    }

    /// One connection, from Hello to its end.
    async fn session(&mut self) -> SessionEnd {
        // Thrown on every way out of here, including this future being
        // dropped (abort, shutdown timeout): the socket must not outlive
        // the session.
        let kill = self.hard.child_token();
        let _kill_on_exit = kill.clone().drop_guard();

        let channel = match &self.config.connector {
            Connector::Endpoint(endpoint) => match transport::connect(endpoint, kill.clone()).await
            {
                Ok(channel) => channel,
                Err(err) => return SessionEnd::ConnectFailed(error_chain(&err)),
            },
            Connector::Channel(channel) => channel.clone(),
        };
        let (tx, rx) = mpsc::channel(link_capacity(self.config.max_in_flight));
        let (heartbeats, heartbeat_rx) = mpsc::channel(HEARTBEAT_LANE);
        let hello = pb::WorkerMessage {
            kind: Some(worker_message::Kind::Hello(pb::Hello {
                worker_name: self.config.name.clone(),
                queues: self.config.queues.clone(),
                max_in_flight: self.config.max_in_flight,
                batches: true,
            })),
            ..Default::default()
        };
        if tx.try_send(hello).is_err() {
            return SessionEnd::HandshakeFailed("the request stream refused the Hello".into());
        }

        let mut client = WorkersClient::with_interceptor(channel, self.config.credentials.clone())
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::MAX_MESSAGE_BYTES);
        if let Some(encoding) = self.config.compression {
            client = client.send_compressed(encoding).accept_compressed(encoding);
        }
        let handshake = self.config.handshake_timeout;
        let batches = Arc::new(AtomicBool::new(false));
        let opened = tokio::time::timeout(handshake, async {
            let mut inbound = client
                .connect(Outbound::new(
                    rx,
                    heartbeat_rx,
                    kill.clone(),
                    batches.clone(),
                ))
                .await?
                .into_inner();
            let first = inbound.message().await?;
            Ok::<_, tonic::Status>((inbound, first))
        })
        .await;
        let (mut inbound, welcome) = match opened {
            Err(_) => {
                return SessionEnd::HandshakeFailed(format!("no Welcome within {handshake:?}"));
            }
            Ok(Err(status)) => return SessionEnd::Broken(status),
            Ok(Ok((inbound, Some(first)))) => match first.kind {
                Some(dispatch_message::Kind::Welcome(welcome)) => {
                    // Results ready at once may go as one WorkerBatch.
                    batches.store(welcome.batches, Ordering::Relaxed);
                    (inbound, welcome)
                }
                other => {
                    return SessionEnd::HandshakeFailed(format!(
                        "expected Welcome, got {}",
                        dispatch_kind_name(other.as_ref())
                    ));
                }
            },
            Ok(Ok((_, None))) => {
                return SessionEnd::HandshakeFailed("the stream ended before Welcome".into());
            }
        };

        let heartbeat = welcome
            .heartbeat_interval
            .as_ref()
            .map(convert::duration_from_proto)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEARTBEAT);
        let watchdog = heartbeat.saturating_mul(WATCHDOG_INTERVALS);
        info!(
            session_id = %welcome.session_id,
            ?heartbeat,
            lease_ttl = ?welcome.lease_ttl.as_ref().map(convert::duration_from_proto),
            queues = ?self.config.queues,
            "connected"
        );
        self.link.send_replace(Some(tx.clone()));
        self.session.send_replace(Some(welcome.session_id));

        // Unacknowledged results first, in completion order.
        let mut resend: Vec<_> = self
            .unacked
            .values()
            .map(|unacked| (unacked.order, unacked.message.clone()))
            .collect();
        if !resend.is_empty() {
            info!(count = resend.len(), "resending unacknowledged results");
        }
        resend.sort_by_key(|(order, _)| *order);
        for (_, message) in resend {
            if !send(&tx, message, watchdog).await {
                return SessionEnd::Stalled;
            }
        }

        let silence = tokio::time::sleep(watchdog);
        tokio::pin!(silence);
        let mut draining = false;
        let mut shutdown_noted = false;
        // After our Drain, the gateway closes the stream once it has every
        // result; this bounds the wait in case it never does.
        let closing = tokio::time::sleep(Duration::MAX);
        tokio::pin!(closing);
        let mut close_armed = false;
        loop {
            let idle = self.running.is_empty() && self.unacked.is_empty();
            // The gateway's Drain (its shutdown, or the answer to ours) comes
            // after every task it sent us: once those are answered, close.
            if idle && draining {
                self.link.send_replace(None);
                drop(tx);
                close(inbound).await;
                return if self.shutdown.is_cancelled() {
                    SessionEnd::Shutdown
                } else {
                    SessionEnd::Drained
                };
            }
            if idle && shutdown_noted && !close_armed {
                close_armed = true;
                closing.as_mut().reset(Instant::now() + DRAIN_CLOSE_WAIT);
            }
            tokio::select! {
                // Completions before new work (their permits and acks matter
                // more than the next message).
                biased;
                Some(done) = self.done_rx.recv() => {
                    let message = self.record(done);
                    if !send(&tx, message, watchdog).await {
                        return SessionEnd::Stalled;
                    }
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => log_join(joined),
                received = inbound.message() => match received {
                    Ok(Some(message)) => {
                        silence.as_mut().reset(Instant::now() + watchdog);
                        for message in unbatch(message) {
                            if let Some(end) = self
                                .dispatch(message, &tx, &heartbeats, watchdog, &mut draining)
                                .await
                            {
                                return end;
                            }
                        }
                    }
                    Ok(None) => return SessionEnd::Closed,
                    Err(status) => return SessionEnd::Broken(status),
                },
                () = &mut silence => return SessionEnd::Silent(watchdog),
                () = self.shutdown.cancelled(), if !shutdown_noted => {
                    shutdown_noted = true;
                    info!(in_flight = self.running.len(), "shutting down: finishing in-flight tasks");
                    let drain = pb::WorkerMessage {
                        kind: Some(worker_message::Kind::Drain(pb::Drain {
                            reason: "the worker is shutting down".into(),
                            stop: false,
                        })),
                        ..Default::default()
                    };
                    if !send(&tx, drain, watchdog).await {
                        return SessionEnd::Stalled;
                    }
                }
                () = &mut closing, if close_armed => {
                    self.link.send_replace(None);
                    drop(tx);
                    close(inbound).await;
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    /// Handles one message from the gateway; `Some` ends the session.
    async fn dispatch(
        &mut self,
        message: pb::DispatchMessage,
        tx: &Outgoing,
        heartbeats: &Outgoing,
        watchdog: Duration,
        draining: &mut bool,
    ) -> Option<SessionEnd> {
        match message.kind {
            Some(dispatch_message::Kind::Ping(ping)) => {
                if !*draining {
                    // A healthy session: the next reconnect starts fast again.
                    self.backoff.reset();
                }
                let heartbeat = pb::WorkerMessage {
                    kind: Some(worker_message::Kind::Heartbeat(pb::Heartbeat {
                        nonce: ping.nonce,
                    })),
                    ..Default::default()
                };
                // On their own lane, ahead of queued output and results.
                if !send(heartbeats, heartbeat, watchdog).await {
                    return Some(SessionEnd::Stalled);
                }
            }
            Some(dispatch_message::Kind::Task(task)) => {
                if !*draining {
                    self.backoff.reset();
                }
                self.start(task);
            }
            Some(dispatch_message::Kind::Cancel(cancel)) => self.cancel(cancel),
            Some(dispatch_message::Kind::ResultAck(ack)) => self.acknowledged(ack, tx),
            Some(dispatch_message::Kind::Drain(drain)) if drain.stop => {
                // An operator drained this worker: stop as a graceful
                // shutdown does (finish, deliver, leave), not reconnect.
                if !self.shutdown.is_cancelled() {
                    info!(
                        reason = %drain.reason,
                        in_flight = self.running.len(),
                        "drained by the gateway's operator: finishing in-flight tasks, then stopping"
                    );
                    self.shutdown.cancel();
                }
                *draining = true;
            }
            Some(dispatch_message::Kind::Drain(drain)) => {
                if !*draining {
                    info!(
                        reason = %drain.reason,
                        in_flight = self.running.len(),
                        "the gateway is draining: finishing in-flight tasks, then reconnecting"
                    );
                }
                *draining = true;
            }
            Some(dispatch_message::Kind::Welcome(_)) => {
                warn!("a second Welcome on one stream; ignored")
            }
            None => debug!("an empty dispatch message; ignored"),
        }
        None
    }

    /// Runs a new lease in its own task.
    fn start(&mut self, task: pb::Task) {
        if self.running.contains_key(&task.lease_id) || self.unacked.contains_key(&task.lease_id) {
            warn!(lease_id = %task.lease_id, "a second Task for a known lease; ignored");
            return;
        }
        let signal = Arc::new(CancelSignal::child_of(&self.hard));
        self.running.insert(task.lease_id.clone(), signal.clone());
        let ticket_id = task.ticket_id.clone();
        let lease_id = task.lease_id.clone();
        let queue = task.queue.clone();
        let attempt = task.attempt;
        let trace = task
            .metadata
            .get(TRACEPARENT)
            .and_then(|value| TraceParent::parse(value));
        // The attempt's span joins the submitter's trace (when it sent one):
        // same trace id, the submitter's span as parent, a span id of its own.
        let span = info_span!(
            "task",
            ticket_id = %ticket_id,
            lease_id = %lease_id,
            queue = %queue,
            attempt,
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // Exported spans (`otel`) have ids of their own: pass that one on.
        let exported = trace.and_then(|trace| {
            let tracestate = task
                .metadata
                .get(asyncgate_proto::trace_context::TRACESTATE);
            crate::otel::continue_trace(&span, trace, tracestate.map(String::as_str))
        });
        let span_id = exported.unwrap_or_else(|| rand::random::<u64>().max(1));
        if let Some(trace) = trace {
            span.record("trace_id", trace.trace_id_hex());
            span.record("parent_span_id", format!("{:016x}", trace.parent_id));
            span.record("span_id", format!("{span_id:016x}"));
        }
        let ctx = TaskContext::new(task, signal, self.link.subscribe(), span_id);
        let handler = self.handler.clone();
        let permits = self.permits.clone();
        let done = self.done_tx.clone();
        self.tasks.spawn(
            async move {
                let outcome = run_handler(handler, permits, ctx).await;
                // Fails only once the runner is gone, and then the result
                // has nowhere to go anyway.
                let _ = done.send(Finished {
                    ticket_id,
                    lease_id,
                    outcome,
                });
            }
            .instrument(span),
        );
    }

    /// The gateway cancelled a lease: tell its handler.
    fn cancel(&mut self, cancel: pb::Cancel) {
        let reason = cancel.reason();
        match self.running.get(&cancel.lease_id) {
            Some(signal) => {
                info!(
                    ticket_id = %cancel.ticket_id,
                    lease_id = %cancel.lease_id,
                    ?reason,
                    message = %cancel.message,
                    "cancelled by the gateway"
                );
                signal.cancel(reason, cancel.message);
            }
            None => debug!(
                lease_id = %cancel.lease_id,
                ?reason,
                "Cancel for a lease that is not running (its result is on its way)"
            ),
        }
    }

    /// A result was recorded or rejected: either way it is final, except
    /// UNAVAILABLE (the gateway's store is away), after which the result is
    /// kept and sent again shortly (fencing makes a resend harmless).
    fn acknowledged(&mut self, ack: pb::ResultAck, tx: &Outgoing) {
        let code = tonic::Code::from_i32(ack.code);
        if code == tonic::Code::Unavailable
            && let Some(unacked) = self.unacked.get(&ack.lease_id)
        {
            warn!(ticket_id = %ack.ticket_id, lease_id = %ack.lease_id, message = %ack.message,
                "the gateway could not record the result yet; sending it again");
            let (tx, message) = (tx.clone(), unacked.message.clone());
            tokio::spawn(async move {
                tokio::time::sleep(RESEND_AFTER_UNAVAILABLE).await;
                let _ = tx.send(message).await;
            });
            return;
        }
        if self.unacked.remove(&ack.lease_id).is_none() {
            if code != tonic::Code::Ok && self.running.contains_key(&ack.lease_id) {
                // A refused progress report of a task still running.
                warn!(ticket_id = %ack.ticket_id, lease_id = %ack.lease_id, ?code, message = %ack.message,
                    "the gateway refused a report");
            } else {
                debug!(lease_id = %ack.lease_id, "ResultAck for no pending result (a resend's second ack)");
            }
            return;
        }
        let (ticket_id, lease_id, message) = (&ack.ticket_id, &ack.lease_id, &ack.message);
        match code {
            tonic::Code::Ok => debug!(%ticket_id, %lease_id, "result recorded"),
            tonic::Code::AlreadyExists => {
                debug!(%ticket_id, %lease_id, "result already recorded (resend)")
            }
            // Routine after a Cancel, an attempt timeout or a lost lease.
            tonic::Code::FailedPrecondition => {
                info!(%ticket_id, %lease_id, %message, "result discarded: the lease is no longer current")
            }
            tonic::Code::NotFound => {
                warn!(%ticket_id, %lease_id, %message, "result discarded: no such ticket")
            }
            _ => error!(%ticket_id, %lease_id, ?code, %message, "result rejected by the gateway"),
        }
    }

    /// Moves a finished lease from `running` to `unacked` and returns its
    /// result message.
    fn record(&mut self, done: Finished) -> pb::WorkerMessage {
        self.running.remove(&done.lease_id);
        let outcome = match done.outcome {
            Ok(payload) => task_result::Outcome::Success(payload),
            Err(err) => {
                debug!(lease_id = %done.lease_id, error = %err, "task failed");
                task_result::Outcome::Failure(err.into_failure())
            }
        };
        let message = pb::WorkerMessage {
            kind: Some(worker_message::Kind::Result(pb::TaskResult {
                ticket_id: done.ticket_id,
                lease_id: done.lease_id.clone(),
                outcome: Some(outcome),
            })),
            ..Default::default()
        };
        self.unacked.insert(
            done.lease_id,
            Unacked {
                order: self.next_order,
                message: message.clone(),
            },
        );
        self.next_order += 1;
        message
    }
}

/// Runs the handler under a permit, turning a panic into a failure.
async fn run_handler(
    handler: Arc<dyn Handler>,
    permits: Arc<Semaphore>,
    ctx: TaskContext,
) -> Result<pb::Payload, TaskError> {
    let permit = tokio::select! {
        biased;
        permit = permits.acquire_owned() => permit.ok(),
        () = ctx.cancelled() => None,
    };
    let Some(_permit) = permit else {
        return Err(TaskError::new(
            tonic::Code::Cancelled,
            "cancelled before it started",
            false,
        ));
    };
    // A body this SDK cannot decode fails this task alone (the gateway
    // refuses such bodies, but an older one may not): never the session.
    if let Err(error) = crate::payload::try_to_json(ctx.payload()) {
        return Err(TaskError::new(
            tonic::Code::InvalidArgument,
            format!("the task's JSON payload does not decode: {error}"),
            false,
        ));
    }
    match AssertUnwindSafe(handler.handle(ctx)).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            error!(panic = %what, "handler panicked");
            Err(TaskError::new(
                tonic::Code::Internal,
                format!("handler panicked: {what}"),
                true,
            ))
        }
    }
}

/// Enqueues one message; `false` if the stream is gone or the gateway has
/// not read anything for `limit` (then the session is over).
async fn send(tx: &Outgoing, message: pb::WorkerMessage, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, tx.send(message)).await,
        Ok(Ok(()))
    )
}

/// What `message` carries, in the order to handle it: its batched tasks,
/// its batched acks, then its `kind`.
fn unbatch(message: pb::DispatchMessage) -> Vec<pb::DispatchMessage> {
    let lone = |kind| pb::DispatchMessage {
        kind: Some(kind),
        ..Default::default()
    };
    let mut all: Vec<pb::DispatchMessage> = message
        .task_batch
        .into_iter()
        .map(|task| lone(dispatch_message::Kind::Task(task)))
        .chain(
            message
                .ack_batch
                .into_iter()
                .map(|ack| lone(dispatch_message::Kind::ResultAck(ack))),
        )
        .collect();
    if let Some(kind) = message.kind {
        all.push(lone(kind));
    }
    if all.is_empty() {
        all.push(pb::DispatchMessage::default());
    }
    all
}

/// Results and progress sent in one message at most.
const MAX_WORKER_BATCH: usize = 64;
/// Bytes of results and progress batched into one message at most (one
/// larger report goes alone).
const MAX_WORKER_BATCH_BYTES: usize = 64 * 1024;

/// After our end-of-stream, lets the gateway close its side.
async fn close(mut inbound: tonic::Streaming<pb::DispatchMessage>) {
    let drained = async { while let Ok(Some(_)) = inbound.message().await {} };
    let _ = tokio::time::timeout(CLOSE_GRACE, drained).await;
}

/// Heartbeat answers not yet sent; more means the gateway stopped reading.
const HEARTBEAT_LANE: usize = 4;

/// Room for one result per lease plus heartbeats and progress; a full
/// channel means the gateway stopped reading.
fn link_capacity(max_in_flight: u32) -> usize {
    usize::try_from(max_in_flight)
        .unwrap_or(usize::MAX)
        .saturating_add(64)
}

/// Logs how a session ended, naming the gateway it was with.
fn log_end(end: &SessionEnd, gateway: &str) {
    match end {
        SessionEnd::ConnectFailed(err) => {
            warn!(%gateway, error = %err, "cannot connect to the gateway")
        }
        SessionEnd::HandshakeFailed(why) => warn!(%gateway, %why, "handshake failed"),
        SessionEnd::Broken(status) if is_transient_status(status) => {
            warn!(%gateway, code = ?status.code(), message = %status.message(), "connection lost")
        }
        SessionEnd::Broken(status) => error!(
            %gateway,
            code = ?status.code(),
            message = %status.message(),
            "the gateway refused the worker (retrying after backoff)"
        ),
        SessionEnd::Closed => warn!(%gateway, "the gateway ended the stream"),
        SessionEnd::Silent(after) => {
            warn!(%gateway, ?after, "nothing from the gateway; dropping the connection")
        }
        SessionEnd::Stalled => {
            warn!(%gateway, "the gateway stopped reading; dropping the connection")
        }
        SessionEnd::Drained => info!("drained; reconnecting"),
        SessionEnd::Shutdown => info!("all results delivered; connection closed"),
    }
}

fn log_join(joined: Result<(), JoinError>) {
    match joined {
        Err(err) if err.is_panic() => error!(error = %err, "a task wrapper panicked"),
        _ => {}
    }
}

/// `Display` of an error and its sources, joined by ": " (tonic's transport
/// error alone only says "transport error").
/// An error and its sources, each said once: many errors already print
/// their source in their own message, and repeating it read as noise.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn dispatch_kind_name(kind: Option<&dispatch_message::Kind>) -> &'static str {
    match kind {
        Some(dispatch_message::Kind::Welcome(_)) => "Welcome",
        Some(dispatch_message::Kind::Task(_)) => "Task",
        Some(dispatch_message::Kind::Cancel(_)) => "Cancel",
        Some(dispatch_message::Kind::ResultAck(_)) => "ResultAck",
        Some(dispatch_message::Kind::Ping(_)) => "Ping",
        Some(dispatch_message::Kind::Drain(_)) => "Drain",
        None => "an empty message",
    }
}

/// The request stream: the session's mpsc, except that once the kill switch
/// is thrown it goes silent forever instead of ending. A clean end would be
/// an HTTP/2 END_STREAM, i.e. a polite goodbye; a crash says nothing.
/// Heartbeats have a lane of their own that goes first: a handler streaming
/// large outputs must not delay the answers that keep the session alive.
struct Outbound {
    rx: mpsc::Receiver<pb::WorkerMessage>,
    heartbeats: mpsc::Receiver<pb::WorkerMessage>,
    kill: CancellationToken,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The gateway reads batches (its Welcome said so).
    batches: Arc<AtomicBool>,
    /// A message taken while filling a batch that cannot join it: sent next.
    held: Option<pb::WorkerMessage>,
}

/// Whether `message` may ride in a batch (progress and results).
fn batchable(message: &pb::WorkerMessage) -> bool {
    matches!(
        message.kind,
        Some(worker_message::Kind::Progress(_) | worker_message::Kind::Result(_))
    )
}

impl Outbound {
    fn new(
        rx: mpsc::Receiver<pb::WorkerMessage>,
        heartbeats: mpsc::Receiver<pb::WorkerMessage>,
        kill: CancellationToken,
        batches: Arc<AtomicBool>,
    ) -> Self {
        let killed = Box::pin(kill.clone().cancelled_owned());
        Outbound {
            rx,
            heartbeats,
            kill,
            killed,
            batches,
            held: None,
        }
    }
}

impl Stream for Outbound {
    type Item = pb::WorkerMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.kill.is_cancelled() || this.killed.as_mut().poll(cx).is_ready() {
            // Never woken again: silence, not an end-of-stream.
            return Poll::Pending;
        }
        if let Poll::Ready(Some(heartbeat)) = this.heartbeats.poll_recv(cx) {
            return Poll::Ready(Some(heartbeat));
        }
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(held));
        }
        // The main lane's end is the stream's end.
        let first = match this.rx.poll_recv(cx) {
            Poll::Ready(Some(first)) => first,
            other => return other,
        };
        if !this.batches.load(Ordering::Relaxed) || !batchable(&first) {
            return Poll::Ready(Some(first));
        }
        // The progress and results ready now go in the same message, up to
        // a count and a size (a batch must stay far below the gateway's
        // message limit); the first that does not fit waits for the next
        // poll, in order.
        let mut batch = pb::WorkerMessage::default();
        let mut size = 0;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            size += message.encoded_len();
            match message.kind {
                Some(worker_message::Kind::Progress(p)) => batch.progress_batch.push(p),
                Some(worker_message::Kind::Result(r)) => batch.result_batch.push(r),
                _ => unreachable!("only batchable messages are taken"),
            }
            if batch.progress_batch.len() + batch.result_batch.len() >= MAX_WORKER_BATCH {
                break;
            }
            if let Ok(peeked) = this.rx.try_recv() {
                if batchable(&peeked) && size + peeked.encoded_len() <= MAX_WORKER_BATCH_BYTES {
                    next = Some(peeked);
                } else {
                    this.held = Some(peeked);
                }
            }
        }
        Poll::Ready(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn heartbeats_overtake_queued_output() {
        let output = |n: u32| pb::WorkerMessage {
            kind: Some(worker_message::Kind::Progress(pb::TaskProgress {
                percent: n,
                ..Default::default()
            })),
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(8);
        let (heartbeats, heartbeat_rx) = mpsc::channel(1);
        let mut outbound =
            Outbound::new(rx, heartbeat_rx, CancellationToken::new(), Arc::default());
        for n in 1..=3 {
            tx.send(output(n)).await.unwrap();
        }
        assert_eq!(outbound.next().await, Some(output(1)));
        let heartbeat = pb::WorkerMessage {
            kind: Some(worker_message::Kind::Heartbeat(pb::Heartbeat { nonce: 7 })),
            ..Default::default()
        };
        heartbeats.send(heartbeat.clone()).await.unwrap();
        assert_eq!(outbound.next().await, Some(heartbeat), "ahead of the queue");
        assert_eq!(outbound.next().await, Some(output(2)));
        drop(tx);
        assert_eq!(outbound.next().await, Some(output(3)));
        assert_eq!(outbound.next().await, None, "the main lane's end ends it");
    }

    #[tokio::test]
    async fn what_is_ready_at_once_goes_as_one_batch_to_a_gateway_that_reads_them() {
        let progress = |n: u32| pb::TaskProgress {
            percent: n,
            ..Default::default()
        };
        let result = |n: u32| pb::WorkerMessage {
            kind: Some(worker_message::Kind::Progress(progress(n))),
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(8);
        let (_heartbeats, heartbeat_rx) = mpsc::channel(1);
        let batches = Arc::new(AtomicBool::new(false));
        let mut outbound =
            Outbound::new(rx, heartbeat_rx, CancellationToken::new(), batches.clone());
        tx.send(result(1)).await.unwrap();
        tx.send(result(2)).await.unwrap();
        // Before the Welcome says the gateway reads batches: one by one.
        assert_eq!(outbound.next().await, Some(result(1)));
        batches.store(true, Ordering::Relaxed);
        tx.send(result(3)).await.unwrap();
        let batch = pb::WorkerMessage {
            progress_batch: vec![progress(2), progress(3)],
            ..Default::default()
        };
        assert_eq!(outbound.next().await, Some(batch));
        // Anything else waits for the next message, in order.
        let drain = pb::WorkerMessage {
            kind: Some(worker_message::Kind::Drain(pb::Drain::default())),
            ..Default::default()
        };
        tx.send(result(4)).await.unwrap();
        tx.send(drain.clone()).await.unwrap();
        tx.send(result(5)).await.unwrap();
        let lone = pb::WorkerMessage {
            progress_batch: vec![progress(4)],
            ..Default::default()
        };
        assert_eq!(outbound.next().await, Some(lone));
        assert_eq!(outbound.next().await, Some(drain));
        assert_eq!(outbound.next().await.unwrap().progress_batch, [progress(5)]);
    }

    #[tokio::test]
    async fn outbound_ends_cleanly_when_closed_but_goes_silent_when_killed() {
        let (tx, rx) = mpsc::channel(4);
        let (_heartbeats, heartbeat_rx) = mpsc::channel(1);
        let mut clean = Outbound::new(rx, heartbeat_rx, CancellationToken::new(), Arc::default());
        let _ = tx.send(pb::WorkerMessage::default()).await;
        drop(tx);
        assert!(clean.next().await.is_some());
        assert!(clean.next().await.is_none());

        let (tx, rx) = mpsc::channel(4);
        let kill = CancellationToken::new();
        let (_heartbeats, heartbeat_rx) = mpsc::channel(1);
        let mut killed = Outbound::new(rx, heartbeat_rx, kill.clone(), Arc::default());
        let _ = tx.send(pb::WorkerMessage::default()).await;
        kill.cancel();
        drop(tx);
        let next = tokio::time::timeout(Duration::from_millis(20), killed.next()).await;
        assert!(next.is_err(), "a killed stream must neither yield nor end");
    }

    #[test]
    fn error_chain_joins_sources() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "connection refused");
        // A source already quoted by its error is not said twice.
        #[derive(Debug)]
        struct Quoting(std::io::Error);
        impl std::fmt::Display for Quoting {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "tcp connect error: {}", self.0)
            }
        }
        impl std::error::Error for Quoting {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let quoting = Quoting(std::io::Error::other("Connection refused"));
        assert_eq!(
            error_chain(&quoting),
            "tcp connect error: Connection refused"
        );
        assert_eq!(link_capacity(10_000), 10_064);
    }
}
