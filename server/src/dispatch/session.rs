//! One worker connection: the `Workers.Connect` protocol state machine.
//!
//! Hello → Welcome, then a loop that forwards leased tasks and cancels to the
//! worker, records its progress and results (fenced by the engine), pings it
//! every heartbeat interval and declares it dead when two pings in a row go
//! unanswered (progress on a lease it holds counts as an answer). However
//! the loop ends, every lease the session still holds is given back to the
//! engine, so its tickets run again elsewhere.
//!
//! Results and progress are accepted only for leases this session holds
//! (or, for a repeated result, held until it answered them): a lease id
//! alone proves nothing, as another worker — of another key, tenant or
//! queue — may have learnt it. A report on any other lease never reaches the
//! engine: a result gets FAILED_PRECONDITION, progress is dropped. A worker
//! that reconnects has a new session and cannot report on its old leases
//! (which ending the old session gave back anyway).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::future::Future;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use asyncgate_proto::v1 as pb;
use pb::dispatch_message::Kind as Out;
use pb::worker_message::Kind as In;

use super::{Dispatcher, SessionCommand, SessionSlot};
use crate::domain::ticket::codes;
use crate::domain::{LeaseId, Outcome, Progress, QueueName, SessionId, TicketError, TicketId};
use crate::engine::{
    Completion, EngineError, ProgressReport, ReleaseReason, RevokeReason, SessionInfo,
};
use crate::error::GatewayError;
use crate::rpc::convert;
use crate::time;

/// The largest `max_in_flight` a worker may ask for.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;
/// The most queues one worker connection may serve.
pub const MAX_QUEUES_PER_WORKER: usize = 256;
/// The longest `Hello.worker_name`, in bytes.
pub const MAX_WORKER_NAME_BYTES: usize = 128;

/// What a session needs to know about the gateway's settings.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Ping cadence; two missed pings end the session.
    pub heartbeat_interval: Duration,
    /// Engine-level lease TTL, renewed by each answered ping.
    pub lease_ttl: Duration,
    /// Largest payload accepted in results and output chunks.
    pub max_payload_bytes: usize,
}

/// How long a session keeps trying to record a result while the store is
/// unavailable.
const RESULT_RETRY_FOR: Duration = Duration::from_secs(30);

/// Items sent to the worker; errors end the stream with a status.
pub type Outbound = mpsc::Sender<Result<pb::DispatchMessage, GatewayError>>;

fn message(kind: Out) -> Result<pb::DispatchMessage, GatewayError> {
    Ok(pb::DispatchMessage { kind: Some(kind) })
}

/// Runs one worker connection to its end. `peer` is the worker's address,
/// for the audit log.
#[allow(clippy::too_many_arguments)]
pub async fn run<S>(
    dispatcher: Dispatcher,
    settings: SessionSettings,
    caller: crate::auth::Caller,
    peer: Option<std::net::SocketAddr>,
    mut inbound: S,
    outbound: Outbound,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) where
    S: Stream<Item = Result<pb::WorkerMessage, Option<GatewayError>>> + Unpin,
{
    let revoked = caller.revocation();
    let first = tokio::select! {
        first = tokio::time::timeout(settings.heartbeat_interval * 2, inbound.next()) => first,
        _ = shutdown.cancelled() => {
            let _ = outbound.send(Err(GatewayError::ShuttingDown)).await;
            return;
        }
        _ = revoked.cancelled() => {
            let _ = outbound.send(Err(caller.revoked_error())).await;
            return;
        }
    };
    let hello = match first {
        Ok(Some(Ok(pb::WorkerMessage {
            kind: Some(In::Hello(hello)),
        }))) => hello,
        Ok(Some(Ok(_))) => {
            let error = GatewayError::Protocol(
                "the first message on a Connect stream must be Hello (worker_name, queues, max_in_flight)".into(),
            );
            let _ = outbound.send(Err(error)).await;
            return;
        }
        Ok(Some(Err(Some(error)))) => {
            tracing::info!(%error, "worker stream refused before Hello");
            let _ = outbound.send(Err(error)).await;
            return;
        }
        Ok(Some(Err(None)) | None) => return,
        Err(_) => {
            let error = GatewayError::Protocol(format!(
                "no Hello within {:?} of connecting",
                settings.heartbeat_interval * 2
            ));
            let _ = outbound.send(Err(error)).await;
            return;
        }
    };
    let (queues, max_in_flight, worker_name) = match validate_hello(&caller, hello) {
        Ok(valid) => valid,
        Err(error) => {
            let _ = outbound.send(Err(error)).await;
            return;
        }
    };
    if let Some(refused) = queues.iter().find(|queue| !caller.may_serve(queue)) {
        crate::auth::audit_denial(
            peer,
            "/asyncgate.v1.Workers/Connect",
            &caller.name,
            &refused.to_string(),
            "permission_denied",
            "queue",
        );
        let error = GatewayError::PermissionDenied(format!(
            "key {:?} may not serve queue {refused:?}; its entry allows {:?}",
            caller.name, caller.queues
        ));
        let _ = outbound.send(Err(error)).await;
        return;
    }
    let info = SessionInfo {
        session_id: SessionId::new(),
        worker_name: worker_name.into(),
        queues: queues.clone().into(),
    };
    let span = tracing::info_span!(
        "worker_session",
        session_id = %info.session_id,
        worker = %info.worker_name,
    );
    let session = Session {
        dispatcher,
        settings,
        scoped_names: caller.names_tenant_queues(),
        report_refused: false,
        key_revoked: revoked,
        key_name: caller.name.clone(),
        info,
        queues,
        max_in_flight,
        outbound,
        leases: HashMap::new(),
        output_refused: HashSet::new(),
        answered: AnsweredLeases::default(),
        revoked: HashSet::new(),
        nonce: 0,
        last_heartbeat: Instant::now(),
        attached: false,
        draining: false,
        gateway_draining: false,
        in_flight: FuturesUnordered::new(),
        ready: Vec::new(),
        renewing: Arc::default(),
        lost: CancellationToken::new(),
    };
    session
        .serve(inbound, shutdown, hard_stop)
        .instrument(span)
        .await;
}

fn validate_hello(
    caller: &crate::auth::Caller,
    hello: pb::Hello,
) -> Result<(Vec<QueueName>, u32, String), GatewayError> {
    if hello.queues.is_empty() {
        return Err(GatewayError::invalid(
            "hello.queues",
            "name at least one queue to serve",
        ));
    }
    if hello.queues.len() > MAX_QUEUES_PER_WORKER {
        return Err(GatewayError::invalid(
            "hello.queues",
            format!("at most {MAX_QUEUES_PER_WORKER} queues per connection"),
        ));
    }
    let mut queues = Vec::with_capacity(hello.queues.len());
    for (i, name) in hello.queues.iter().enumerate() {
        // A tenant's worker serves that tenant's queues of these names.
        let queue = convert::queue_for(caller, name, &format!("hello.queues[{i}]"))?;
        if !queues.contains(&queue) {
            queues.push(queue);
        }
    }
    if hello.max_in_flight == 0 || hello.max_in_flight > MAX_IN_FLIGHT_LIMIT {
        return Err(GatewayError::invalid(
            "hello.max_in_flight",
            format!(
                "must be between 1 and {MAX_IN_FLIGHT_LIMIT}, got {}",
                hello.max_in_flight
            ),
        ));
    }
    let mut name = hello.worker_name;
    if name.len() > MAX_WORKER_NAME_BYTES {
        return Err(GatewayError::invalid(
            "hello.worker_name",
            format!(
                "is {} bytes; at most {MAX_WORKER_NAME_BYTES} bytes",
                name.len()
            ),
        ));
    }
    // The name is in every log line of the session and in tickets'
    // waiting reasons: a newline or an escape in it would forge log lines
    // or drive the terminal of whoever reads them.
    if let Some((at, c)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(GatewayError::invalid(
            "hello.worker_name",
            format!(
                "has a control character (U+{:04X} at byte {at}); use printable text",
                u32::from(c)
            ),
        ));
    }
    if name.is_empty() {
        name = "unnamed".into();
    }
    Ok((queues, hello.max_in_flight, name))
}

struct Session {
    dispatcher: Dispatcher,
    settings: SessionSettings,
    /// Whether tasks show queues as stored (`tenant/queue`, admin keys) or
    /// as the worker's tenant names them.
    scoped_names: bool,
    /// Whether a progress report was refused yet (the first is logged at
    /// warn, the rest at debug).
    report_refused: bool,
    /// Cancelled when a keys reload revokes or changes the worker's key:
    /// the session ends at once and gives its leases back.
    key_revoked: CancellationToken,
    /// The worker's key, for the error that ends a revoked session.
    key_name: Arc<str>,
    info: SessionInfo,
    queues: Vec<QueueName>,
    max_in_flight: u32,
    outbound: Outbound,
    /// Leases handed to this worker and not yet answered; each holds a credit.
    leases: HashMap<LeaseId, TicketId>,
    /// Leases the worker was told to drop; their late results are expected.
    revoked: HashSet<LeaseId>,
    /// Leases this session held and has received a result for: a repeat of
    /// that result (the worker's resend after UNAVAILABLE, or a duplicate)
    /// still goes to the engine, which answers it by its fencing.
    answered: AnsweredLeases,
    /// Held leases whose output was refused (over a budget) at least once:
    /// later refusals are logged at debug level, so a worker that keeps
    /// streaming past its budget cannot flood the gateway's log.
    output_refused: HashSet<LeaseId>,
    /// The latest ping sent.
    nonce: u64,
    /// When the worker last answered a recent ping.
    last_heartbeat: Instant,
    /// Whether the queue actors may send us tasks.
    attached: bool,
    /// Draining (gateway shutdown or the worker's Drain): no new tasks.
    draining: bool,
    /// The gateway is shutting down: end once every lease is answered. (A
    /// worker's own drain ends when the worker closes its stream.)
    gateway_draining: bool,
    /// Progress and results applied but not yet durable.
    in_flight: FuturesUnordered<BoxFuture<'static, Recorded>>,
    /// Progress and results durable and not yet acknowledged.
    ready: Vec<Recorded>,
    /// Set while a session renewal is on its way to the store: a slow
    /// store must not stall the session's loop (and its pings).
    renewing: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled when a renewal finds the session expired in the store
    /// (its leases already given back): the session ends, and the worker
    /// reconnects as a new one.
    lost: CancellationToken,
}

/// A worker's report, applied and now durable (or refused).
enum Recorded {
    Progress {
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Result<(), EngineError>,
    },
    Result {
        ticket_id: TicketId,
        lease_id: LeaseId,
        /// Whether this session held the lease (its credit comes back).
        held: bool,
        /// Whether the worker had been told to drop it (a rejection is
        /// expected then).
        was_revoked: bool,
        outcome: Box<Result<Completion, EngineError>>,
    },
}

/// Why the session loop ended.
enum End {
    /// The worker closed the stream or the transport failed.
    Closed,
    /// Drained on shutdown with nothing left in flight.
    Drained,
    /// End the stream with this error.
    Error(GatewayError),
}

impl Session {
    fn send(&self, kind: Out) -> Result<(), End> {
        match self.outbound.try_send(message(kind)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(End::Closed),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(End::Error(GatewayError::WorkerUnresponsive(
                    "the worker is not reading its stream; disconnected".into(),
                )))
            }
        }
    }

    async fn serve<S>(
        mut self,
        mut inbound: S,
        shutdown: CancellationToken,
        hard_stop: CancellationToken,
    ) where
        S: Stream<Item = Result<pb::WorkerMessage, Option<GatewayError>>> + Unpin,
    {
        let engine = self.dispatcher.engine().clone();
        let session_id = self.info.session_id;
        if let Err(error) = engine
            .open_session(&self.info, SystemTime::now() + self.settings.lease_ttl)
            .await
        {
            let _ = self.outbound.send(Err(error.into())).await;
            return;
        }
        let (commands_tx, mut commands) = mpsc::unbounded_channel();
        let slot = Arc::new(SessionSlot::new(
            self.info.clone(),
            self.max_in_flight,
            commands_tx,
        ));
        let welcome = Out::Welcome(pb::Welcome {
            session_id: session_id.to_string(),
            lease_ttl: Some(time::duration(self.settings.lease_ttl)),
            heartbeat_interval: Some(time::duration(self.settings.heartbeat_interval)),
        });
        let end = match self.send(welcome) {
            Err(end) => end,
            Ok(()) => {
                self.dispatcher.attach(&slot, &self.queues);
                self.attached = true;
                tracing::info!(queues = ?self.queues, max_in_flight = self.max_in_flight, "worker connected");
                self.event_loop(&slot, &mut inbound, &mut commands, &shutdown, &hard_stop)
                    .await
            }
        };
        if self.attached {
            self.dispatcher.detach(session_id, &self.queues);
        }
        self.dispatcher.unregister(session_id);
        // Tasks the actors handed us after we stopped reading our mailbox.
        commands.close();
        while let Some(command) = commands.recv().await {
            if let SessionCommand::Deliver(task) = command
                && let Err(error) = engine
                    .release(
                        task.ticket.id,
                        task.lease.lease_id,
                        ReleaseReason::Undelivered,
                    )
                    .await
            {
                tracing::error!(%error, "could not release an undelivered lease");
            }
        }
        if let End::Error(GatewayError::KeyRevoked(_)) = &end {
            self.give_back_revoked().await;
        }
        if !self.leases.is_empty() {
            tracing::warn!(
                leases = self.leases.len(),
                "worker left with tasks in flight; requeueing them"
            );
        }
        if let Err(error) = engine.end_session(session_id).await {
            tracing::error!(%error, "could not end the worker session");
        }
        match end {
            End::Error(error) => {
                tracing::warn!(%error, "worker session ended");
                let _ = self.outbound.try_send(Err(error));
            }
            End::Drained => tracing::info!("worker drained"),
            End::Closed => tracing::info!("worker disconnected"),
        }
    }

    async fn event_loop<S>(
        &mut self,
        slot: &Arc<SessionSlot>,
        inbound: &mut S,
        commands: &mut mpsc::UnboundedReceiver<SessionCommand>,
        shutdown: &CancellationToken,
        hard_stop: &CancellationToken,
    ) -> End
    where
        S: Stream<Item = Result<pb::WorkerMessage, Option<GatewayError>>> + Unpin,
    {
        let mut ping = tokio::time::interval(self.settings.heartbeat_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Set up once, not per message: each would register with (and leave)
        // a timer wheel or a token's waiter list every time round.
        let stopped = hard_stop.cancelled();
        tokio::pin!(stopped);
        let key_revoked = self.key_revoked.clone();
        let key_revoked = key_revoked.cancelled();
        tokio::pin!(key_revoked);
        let draining = shutdown.cancelled();
        tokio::pin!(draining);
        let lost = self.lost.clone();
        let lost = lost.cancelled();
        tokio::pin!(lost);
        let mut liveness_deadline = self.last_heartbeat + self.settings.heartbeat_interval * 2;
        let liveness = tokio::time::sleep_until(liveness_deadline);
        tokio::pin!(liveness);
        loop {
            let deadline = self.last_heartbeat + self.settings.heartbeat_interval * 2;
            if deadline != liveness_deadline {
                liveness_deadline = deadline;
                liveness.as_mut().reset(deadline);
            }
            let step = tokio::select! {
                biased;
                () = &mut stopped => Err(End::Error(GatewayError::ShuttingDown)),
                // Before anything the worker sent: nothing a revoked key
                // reports is recorded, and no task reaches it.
                () = &mut key_revoked => Err(End::Error(GatewayError::KeyRevoked(
                    self.key_name.to_string(),
                ))),
                () = &mut lost => Err(End::Error(GatewayError::Engine(
                    crate::engine::EngineError::SessionLost(self.info.session_id),
                ))),
                () = &mut draining, if !self.gateway_draining => {
                    self.gateway_draining = true;
                    self.start_draining();
                    self.send(Out::Drain(pb::Drain {
                        reason: "the gateway is shutting down".into(),
                    }))
                }
                // Timers before traffic: a worker that floods its stream must
                // not starve its own pings or hide that it stopped answering.
                _ = ping.tick() => {
                    self.nonce += 1;
                    self.send(Out::Ping(pb::Ping { nonce: self.nonce }))
                }
                () = &mut liveness => Err(End::Error(
                    GatewayError::WorkerUnresponsive(format!(
                        "no heartbeat answering the gateway's pings for {:?}; the worker's leases were released",
                        self.settings.heartbeat_interval * 2
                    )),
                )),
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => Err(End::Closed),
                },
                Some(recorded) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.on_recorded(slot, recorded)
                }
                // A worker that reports faster than the store commits waits.
                message = inbound.next(), if self.in_flight.len() < self.in_flight_limit() => match message {
                    Some(Ok(message)) => self.on_message(message).await,
                    // A message the gateway cannot read ends the session
                    // with the reason, so the worker's author learns it.
                    Some(Err(Some(error))) => Err(End::Error(error)),
                    Some(Err(None)) => {
                        tracing::debug!("worker stream broke");
                        Err(End::Closed)
                    }
                    None => Err(End::Closed),
                },
            };
            if let Err(end) = step {
                return end;
            }
            for recorded in std::mem::take(&mut self.ready) {
                if let Err(end) = self.on_recorded(slot, recorded) {
                    return end;
                }
            }
            if self.gateway_draining && self.leases.is_empty() && self.in_flight.is_empty() {
                return End::Drained;
            }
        }
    }

    /// The worker's key was revoked: results it sent before are recorded
    /// (for a while; they are not acknowledged), and every lease it still
    /// holds goes back to its queue at once, without costing the ticket an
    /// attempt, rather than waiting for the lease to be lost.
    async fn give_back_revoked(&mut self) {
        let engine = self.dispatcher.engine().clone();
        let settle = async { while self.in_flight.next().await.is_some() {} };
        if tokio::time::timeout(self.settings.heartbeat_interval * 2, settle)
            .await
            .is_err()
        {
            tracing::warn!("results of a revoked worker still unrecorded; dropped");
        }
        let leases = std::mem::take(&mut self.leases);
        tracing::info!(
            leases = leases.len(),
            "worker key revoked; its leases go back to their queues"
        );
        for (lease_id, ticket_id) in leases {
            if let Err(error) = engine
                .release(ticket_id, lease_id, ReleaseReason::KeyRevoked)
                .await
            {
                tracing::error!(%error, %ticket_id, "could not release a revoked worker's lease");
            }
        }
    }

    /// Reports waiting for the store before the worker's stream is paused.
    fn in_flight_limit(&self) -> usize {
        self.max_in_flight as usize * 4 + 64
    }

    /// Stops new tasks from coming; the loop ends once every lease is
    /// answered.
    fn start_draining(&mut self) {
        self.draining = true;
        if self.attached {
            self.dispatcher.detach(self.info.session_id, &self.queues);
            self.attached = false;
        }
    }

    async fn on_command(&mut self, command: SessionCommand) -> Result<(), End> {
        match command {
            SessionCommand::Deliver(claimed) if self.draining => {
                // Claimed for us before we detached: back to the queue,
                // without costing an attempt.
                let (ticket_id, lease_id) = (claimed.ticket.id, claimed.lease.lease_id);
                if let Err(error) = self
                    .dispatcher
                    .engine()
                    .release(ticket_id, lease_id, ReleaseReason::Undelivered)
                    .await
                {
                    tracing::error!(%error, %ticket_id, "could not release an undelivered lease");
                }
                Ok(())
            }
            SessionCommand::Deliver(claimed) => {
                let ticket = &claimed.ticket;
                self.leases.insert(claimed.lease.lease_id, ticket.id);
                tracing::debug!(ticket_id = %ticket.id, lease_id = %claimed.lease.lease_id, attempt = ticket.attempt, "task sent");
                self.send(Out::Task(pb::Task {
                    ticket_id: ticket.id.to_string(),
                    lease_id: claimed.lease.lease_id.to_string(),
                    queue: if self.scoped_names {
                        ticket.queue.to_string()
                    } else {
                        ticket.queue.seen_by(ticket.tenant.as_deref()).to_owned()
                    },
                    payload: Some((*ticket.payload).clone()),
                    metadata: (*ticket.metadata).clone(),
                    attempt: ticket.attempt,
                    max_attempts: ticket.max_attempts,
                    deadline: claimed.lease.attempt_deadline.map(time::timestamp),
                }))
            }
            SessionCommand::Revoke(revocation) => {
                if !self.leases.contains_key(&revocation.lease_id) {
                    return Ok(());
                }
                self.revoked.insert(revocation.lease_id);
                let reason = match revocation.reason {
                    RevokeReason::Cancelled => pb::CancelReason::Cancelled,
                    RevokeReason::Expired => pb::CancelReason::Expired,
                    RevokeReason::AttemptTimeout => pb::CancelReason::AttemptTimeout,
                };
                self.send(Out::Cancel(pb::Cancel {
                    ticket_id: revocation.ticket_id.to_string(),
                    lease_id: revocation.lease_id.to_string(),
                    reason: reason as i32,
                    message: revocation.message,
                }))
            }
        }
    }

    async fn on_message(&mut self, message: pb::WorkerMessage) -> Result<(), End> {
        match message.kind {
            None => Err(End::Error(GatewayError::Protocol(
                "empty WorkerMessage: set one of hello, heartbeat, progress, result".into(),
            ))),
            Some(In::Hello(_)) => Err(End::Error(GatewayError::Protocol(
                "Hello was already received on this stream; open a new stream to re-register"
                    .into(),
            ))),
            Some(In::Heartbeat(heartbeat)) => {
                // Only an answer to one of the two latest pings proves the
                // worker is reading its stream.
                if heartbeat.nonce <= self.nonce && heartbeat.nonce + 1 >= self.nonce {
                    self.last_heartbeat = Instant::now();
                    self.renew();
                }
                Ok(())
            }
            Some(In::Progress(progress)) => self.on_progress(progress),
            Some(In::Drain(_)) => {
                if self.draining {
                    return Ok(());
                }
                tracing::info!(in_flight = self.leases.len(), "worker is draining");
                self.start_draining();
                // Every task sent before this reply is already on the stream
                // ahead of it, so the worker knows what it still owes.
                self.send(Out::Drain(pb::Drain {
                    reason: "drain acknowledged: no new tasks will be sent".into(),
                }))
            }
            Some(In::Result(result)) => self.on_result(result),
        }
    }

    /// Progress on a lease this session holds proves the worker alive as
    /// well as a ping answer does: a worker streaming large outputs answers
    /// pings late, its answers queued behind its data. (Progress for leases
    /// it does not hold, or was told to drop, proves nothing: it may not be
    /// reading at all; nor does progress naming a held lease with another
    /// ticket.) Refreshed at most twice per heartbeat interval, so a
    /// stream of chunks does not renew the session in the store per chunk.
    fn alive_by_work(&mut self, ticket_id: TicketId, lease_id: LeaseId) {
        if self.leases.get(&lease_id) != Some(&ticket_id) || self.revoked.contains(&lease_id) {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last_heartbeat) >= self.settings.heartbeat_interval / 2 {
            self.last_heartbeat = now;
            self.renew();
        }
    }

    /// Renews the session in the store, in the background; a renewal still
    /// on its way makes this one unnecessary.
    fn renew(&self) {
        use std::sync::atomic::Ordering;
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = self.dispatcher.engine().clone();
        let info = self.info.clone();
        let renewing = self.renewing.clone();
        let lost = self.lost.clone();
        let expires_at = SystemTime::now() + self.settings.lease_ttl;
        self.dispatcher.spawn(
            async move {
                match engine.touch_session(&info, expires_at).await {
                    Ok(()) => {}
                    Err(crate::engine::EngineError::SessionLost(_)) => lost.cancel(),
                    Err(error) => tracing::warn!(%error, "could not renew the session's leases"),
                }
                renewing.store(false, Ordering::Release);
            }
            .in_current_span(),
        );
    }

    /// Whether this session holds `lease_id`, as a lease of `ticket_id`.
    fn holds(&self, ticket_id: TicketId, lease_id: LeaseId) -> bool {
        self.leases.get(&lease_id) == Some(&ticket_id)
    }

    fn on_progress(&mut self, progress: pb::TaskProgress) -> Result<(), End> {
        // A bad report is refused the way a bad result is (a ResultAck
        // naming the lease and the reason); the session and its other
        // leases carry on.
        let ids = (progress.ticket_id.clone(), progress.lease_id.clone());
        let refuse = |session: &mut Self, error: GatewayError| {
            // Logged once per session at warn (a worker's bug is worth
            // seeing), then at debug: a flood cannot flood the log.
            if std::mem::replace(&mut session.report_refused, true) {
                tracing::debug!(%error, "progress refused");
            } else {
                tracing::warn!(%error, "progress refused; later refusals on this session are logged at debug level");
            }
            session.send(Out::ResultAck(pb::ResultAck {
                ticket_id: ids.0.clone(),
                lease_id: ids.1.clone(),
                code: error.code() as i32,
                message: format!("progress refused: {error}"),
            }))
        };
        let (ticket_id, lease_id) =
            match parse_lease(&progress.ticket_id, &progress.lease_id, "progress") {
                Ok(ids) => ids,
                Err(error) => return refuse(self, error),
            };
        if !self.holds(ticket_id, lease_id) {
            tracing::debug!(%ticket_id, %lease_id, "progress on a lease this session does not hold; ignored");
            return Ok(());
        }
        self.alive_by_work(ticket_id, lease_id);
        let output = match progress
            .output
            .map(|output| {
                convert::checked_payload(output, "progress.output", self.settings.max_payload_bytes)
            })
            .transpose()
        {
            Ok(output) => output,
            Err(error) => return refuse(self, error),
        };
        let report = ProgressReport {
            ticket_id,
            lease_id,
            progress: (progress.percent > 0 || !progress.message.is_empty() || output.is_none())
                .then(|| Progress {
                    percent: progress.percent.min(100),
                    message: progress.message.chars().take(1024).collect(),
                }),
            output,
        };
        let applied = self.dispatcher.engine().progress(report);
        self.track(async move {
            Recorded::Progress {
                ticket_id,
                lease_id,
                outcome: applied.await,
            }
        });
        Ok(())
    }

    /// Keeps an applied transition until it is durable; the memory engine's
    /// are ready at once and handled on the spot.
    fn track(&mut self, recorded: impl Future<Output = Recorded> + Send + 'static) {
        let mut recorded = Box::pin(recorded);
        match (&mut recorded).now_or_never() {
            Some(done) => self.ready.push(done),
            None => self.in_flight.push(recorded),
        }
    }

    /// A transition is durable: acknowledge it.
    fn on_recorded(&mut self, slot: &Arc<SessionSlot>, recorded: Recorded) -> Result<(), End> {
        match recorded {
            Recorded::Progress {
                ticket_id,
                lease_id,
                outcome,
            } => {
                match outcome {
                    Ok(()) => {}
                    Err(EngineError::StaleLease { .. } | EngineError::NotFound(_)) => {
                        tracing::debug!(%ticket_id, %lease_id, "progress for a lease that is not current; ignored");
                    }
                    Err(error @ EngineError::LimitExceeded(_)) => {
                        let first = self.leases.contains_key(&lease_id)
                            && self.output_refused.insert(lease_id);
                        if first {
                            tracing::warn!(%error, %ticket_id, %lease_id, "output refused; later refusals for this lease are logged at debug level");
                        } else {
                            tracing::debug!(%error, %ticket_id, %lease_id, "output refused");
                        }
                    }
                    Err(error) => tracing::warn!(%error, %ticket_id, "progress not recorded"),
                }
                Ok(())
            }
            Recorded::Result {
                ticket_id,
                lease_id,
                held,
                was_revoked,
                outcome,
            } => {
                if held {
                    self.dispatcher.credit_returned(slot, &self.queues);
                }
                let (code, message) = match *outcome {
                    Ok(Completion::Recorded(ticket)) => {
                        tracing::debug!(%ticket_id, state = ticket.state.name(), "result recorded");
                        (
                            tonic::Code::Ok,
                            format!("recorded; ticket is {}", ticket.state.name()),
                        )
                    }
                    Ok(Completion::Duplicate(_)) => (
                        tonic::Code::AlreadyExists,
                        "this lease's result was already recorded".into(),
                    ),
                    Err(error) => {
                        let status = GatewayError::from(error);
                        if !was_revoked {
                            tracing::debug!(%ticket_id, %lease_id, error = %status, "result rejected");
                        }
                        (status.code(), status.to_string())
                    }
                };
                self.send(Out::ResultAck(pb::ResultAck {
                    ticket_id: ticket_id.to_string(),
                    lease_id: lease_id.to_string(),
                    code: code as i32,
                    message,
                }))
            }
        }
    }

    fn on_result(&mut self, result: pb::TaskResult) -> Result<(), End> {
        let ack = |code: tonic::Code, message: String| {
            Out::ResultAck(pb::ResultAck {
                ticket_id: result.ticket_id.clone(),
                lease_id: result.lease_id.clone(),
                code: code as i32,
                message,
            })
        };
        let (ticket_id, lease_id) = match parse_lease(&result.ticket_id, &result.lease_id, "result")
        {
            Ok(ids) => ids,
            Err(error) => return self.send(ack(tonic::Code::InvalidArgument, error.to_string())),
        };
        // A lease answers for its own ticket only. Forgetting the lease on
        // such a result would give its credit back while the ticket stays
        // leased to this worker (one task more than max_in_flight), and a
        // cancel of it would no longer reach the worker.
        if let Some(held) = self.leases.get(&lease_id)
            && *held != ticket_id
        {
            let message = format!(
                "lease {lease_id} was given for ticket {held}, not {ticket_id}: send the result with its Task's ticket_id"
            );
            return self.send(ack(tonic::Code::InvalidArgument, message));
        }
        let held = self.holds(ticket_id, lease_id);
        if !held && !self.answered.contains(lease_id) {
            tracing::debug!(%ticket_id, %lease_id, "result on a lease this session does not hold; refused");
            return self.send(ack(
                tonic::Code::FailedPrecondition,
                format!(
                    "this session does not hold lease {lease_id} of ticket {ticket_id} (it was never sent to this connection, or is not current for it); the result was discarded"
                ),
            ));
        }
        let outcome = match result.outcome.clone() {
            Some(pb::task_result::Outcome::Success(payload)) => {
                match convert::checked_payload(
                    payload,
                    "result.success",
                    self.settings.max_payload_bytes,
                ) {
                    Ok(payload) => Outcome::Success(payload),
                    // The ticket fails with the reason rather than waiting
                    // for a result the worker cannot give in another form.
                    Err(error) => Outcome::Failure(TicketError {
                        code: error.code() as i32,
                        message: format!("the worker's result was refused: {error}"),
                        retryable: false,
                    }),
                }
            }
            Some(pb::task_result::Outcome::Failure(failure)) => Outcome::Failure(TicketError {
                code: if failure.code == 0 {
                    codes::UNKNOWN
                } else {
                    failure.code.clamp(1, 16)
                },
                message: failure.message.chars().take(4096).collect(),
                retryable: failure.retryable,
            }),
            None => {
                return self.send(ack(
                    tonic::Code::InvalidArgument,
                    "result.outcome is empty: set success (a payload) or failure".into(),
                ));
            }
        };
        if held {
            self.leases.remove(&lease_id);
            self.answered.insert(lease_id, self.in_flight_limit());
        }
        self.output_refused.remove(&lease_id);
        let was_revoked = self.revoked.remove(&lease_id);
        let engine = self.dispatcher.engine().clone();
        let applied = engine.complete(ticket_id, lease_id, outcome.clone());
        self.track(async move {
            // A store that is briefly away (a Redis restart) must not turn a
            // finished task into a lost result: try again for a while before
            // telling the worker UNAVAILABLE (it then resends).
            let mut outcome_now = applied.await;
            let mut delay = Duration::from_millis(50);
            let give_up = Instant::now() + RESULT_RETRY_FOR;
            while matches!(outcome_now, Err(EngineError::Unavailable(_)))
                && Instant::now() < give_up
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                outcome_now = engine.complete(ticket_id, lease_id, outcome.clone()).await;
            }
            Recorded::Result {
                ticket_id,
                lease_id,
                held,
                was_revoked,
                outcome: Box::new(outcome_now),
            }
        });
        Ok(())
    }
}

/// The latest leases a session answered, oldest first: bounded, so a
/// long-lived session does not remember every lease it ever held. A repeat
/// comes within moments of its result (a duplicate send, or a resend a
/// second after UNAVAILABLE), far inside the bound.
#[derive(Default)]
struct AnsweredLeases {
    order: std::collections::VecDeque<LeaseId>,
    set: HashSet<LeaseId>,
}

impl AnsweredLeases {
    fn contains(&self, lease_id: LeaseId) -> bool {
        self.set.contains(&lease_id)
    }

    /// Remembers `lease_id`, forgetting the oldest past `limit`.
    fn insert(&mut self, lease_id: LeaseId, limit: usize) {
        if !self.set.insert(lease_id) {
            return;
        }
        self.order.push_back(lease_id);
        while self.order.len() > limit {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
    }
}

fn parse_lease(
    ticket_id: &str,
    lease_id: &str,
    what: &str,
) -> Result<(TicketId, LeaseId), GatewayError> {
    let ticket = ticket_id
        .parse::<TicketId>()
        .map_err(|e| GatewayError::invalid(format!("{what}.ticket_id"), e.to_string()))?;
    let lease = lease_id
        .parse::<LeaseId>()
        .map_err(|e| GatewayError::invalid(format!("{what}.lease_id"), e.to_string()))?;
    Ok((ticket, lease))
}

#[cfg(test)]
mod tests;
