//! One worker connection: runs the session's state machine against the
//! engine, the dispatcher and the worker's stream.
//!
//! Hello → Welcome, then a loop that feeds the [`Machine`] what happens (a
//! worker message, a task or cancel from a queue actor, a ping due, a
//! report made durable) and carries out the effects it asks for. Store
//! round trips never hold up the loop: reports are applied in order and
//! awaited beside it, renewals and releases run as tracked tasks. The worker
//! is declared dead when two pings in a row go unanswered (progress on a
//! lease it holds counts as an answer). However the loop ends, every lease
//! the session still holds is given back to the engine, so its tickets run
//! again elsewhere; a worker that reconnects has a new session and cannot
//! report on its old leases.

mod machine;
pub(crate) mod messages;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Dispatcher, SessionCommand, SessionSlot, WorkerDetails};
use crate::domain::{LeaseId, Outcome, QueueName, SessionId, TicketId};
use crate::engine::{EngineError, ReleaseReason, SessionInfo};
use crate::error::GatewayError;
use machine::{Effect, End, Machine, Recorded};
pub(crate) use messages::{FromWorker, Hello, MAX_IN_FLIGHT_LIMIT, ToWorker};

/// What a session needs to know about the gateway's settings.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    /// Ping cadence; two missed pings end the session.
    pub heartbeat_interval: Duration,
    /// Engine-level lease TTL, renewed by each answered ping.
    pub lease_ttl: Duration,
}

/// How long a session keeps trying to record a result while the store is
/// unavailable.
const RESULT_RETRY_FOR: Duration = Duration::from_secs(30);

/// Items sent to the worker; errors end the stream with a status.
pub(crate) type Outbound = mpsc::Sender<Result<ToWorker, GatewayError>>;

/// What the worker's stream yields: a validated message, or why it cannot
/// be read (`None`: the transport broke, the worker left).
pub(crate) type Inbound = Result<FromWorker, Option<GatewayError>>;

/// Runs one worker connection to its end. `peer` is the worker's address,
/// for the audit log.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<S>(
    dispatcher: Dispatcher,
    settings: SessionSettings,
    caller: crate::auth::Caller,
    peer: Option<std::net::SocketAddr>,
    mut inbound: S,
    outbound: Outbound,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) where
    S: Stream<Item = Inbound> + Unpin,
{
    let hello = match await_hello(&caller, peer, &settings, &mut inbound, &shutdown).await {
        Ok(hello) => hello,
        Err(None) => return,
        Err(Some(error)) => {
            let _ = outbound.send(Err(error)).await;
            return;
        }
    };
    let info = SessionInfo {
        session_id: SessionId::new(),
        worker_name: hello.worker_name.into(),
        queues: hello.queues.clone().into(),
    };
    let span = tracing::info_span!(
        "worker_session",
        session_id = %info.session_id,
        worker = %info.worker_name,
    );
    let machine = Machine::new(
        settings.clone(),
        caller.names_tenant_queues(),
        hello.max_in_flight,
        Instant::now(),
    );
    let session = Session {
        dispatcher,
        settings,
        peer,
        key_revoked: caller.revocation(),
        key_name: caller.name.clone(),
        info,
        queues: hello.queues,
        max_in_flight: hello.max_in_flight,
        outbound,
        machine,
        in_flight: FuturesUnordered::new(),
        releasing: FuturesUnordered::new(),
        ready: Vec::new(),
        renewing: Arc::default(),
        lost: CancellationToken::new(),
    };
    session
        .serve(inbound, shutdown, hard_stop)
        .instrument(span)
        .await;
}

/// Waits for the worker's Hello and checks its key may serve the queues it
/// names. `Err(None)`: the worker left without a word.
async fn await_hello<S>(
    caller: &crate::auth::Caller,
    peer: Option<std::net::SocketAddr>,
    settings: &SessionSettings,
    inbound: &mut S,
    shutdown: &CancellationToken,
) -> Result<Hello, Option<GatewayError>>
where
    S: Stream<Item = Inbound> + Unpin,
{
    let revoked = caller.revocation();
    let first = tokio::select! {
        first = tokio::time::timeout(settings.heartbeat_interval * 2, inbound.next()) => first,
        _ = shutdown.cancelled() => return Err(Some(GatewayError::ShuttingDown)),
        _ = revoked.cancelled() => return Err(Some(caller.revoked_error())),
    };
    let hello = match first {
        Ok(Some(Ok(FromWorker::Hello(hello)))) => hello?,
        Ok(Some(Ok(_))) => {
            return Err(Some(GatewayError::Protocol(
                "the first message on a Connect stream must be Hello (worker_name, queues, max_in_flight)".into(),
            )));
        }
        Ok(Some(Err(Some(error)))) => {
            tracing::info!(%error, "worker stream refused before Hello");
            return Err(Some(error));
        }
        Ok(Some(Err(None)) | None) => return Err(None),
        Err(_) => {
            return Err(Some(GatewayError::Protocol(format!(
                "no Hello within {:?} of connecting",
                settings.heartbeat_interval * 2
            ))));
        }
    };
    if let Some(refused) = hello.queues.iter().find(|queue| !caller.may_serve(queue)) {
        crate::auth::audit_denial(
            peer,
            "/asyncgate.v1.Workers/Connect",
            &caller.name,
            &refused.to_string(),
            "permission_denied",
            "queue",
        );
        return Err(Some(GatewayError::PermissionDenied(format!(
            "key {:?} may not serve queue {refused:?}; its entry allows {:?}",
            caller.name, caller.queues
        ))));
    }
    Ok(hello)
}

/// The session's runner: owns the machine and everything with I/O.
struct Session {
    dispatcher: Dispatcher,
    settings: SessionSettings,
    /// The worker's address.
    peer: Option<std::net::SocketAddr>,
    /// Cancelled when a keys reload revokes or changes the worker's key:
    /// the session ends at once and gives its leases back.
    key_revoked: CancellationToken,
    /// The worker's key, for the error that ends a revoked session.
    key_name: Arc<str>,
    info: SessionInfo,
    queues: Vec<QueueName>,
    max_in_flight: u32,
    outbound: Outbound,
    machine: Machine,
    /// Progress and results applied but not yet durable.
    in_flight: FuturesUnordered<BoxFuture<'static, Recorded>>,
    /// Leases being given back.
    releasing: FuturesUnordered<BoxFuture<'static, ()>>,
    /// Progress and results durable and not yet handed to the machine.
    ready: Vec<Recorded>,
    /// Set while a session renewal is on its way to the store: a slow
    /// store must not stall the session's loop (and its pings).
    renewing: Arc<AtomicBool>,
    /// Cancelled when a renewal finds the session expired in the store
    /// (its leases already given back): the session ends, and the worker
    /// reconnects as a new one.
    lost: CancellationToken,
}

impl Session {
    fn send(&self, message: ToWorker) -> Result<(), End> {
        match self.outbound.try_send(Ok(message)) {
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
        S: Stream<Item = Inbound> + Unpin,
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
            WorkerDetails::new(self.peer, self.max_in_flight),
            commands_tx,
        ));
        // Listed (to every replica) before the worker hears Welcome, so a
        // worker that knows its session id can be found by it.
        let record = slot.details.record(&self.info, &engine.replica());
        let expires_at = SystemTime::now() + self.settings.lease_ttl;
        if let Err(error) = engine.register_worker(&record, expires_at).await {
            tracing::warn!(%error, "could not publish the worker's details");
        }
        let end = match self.send(self.machine.welcome(session_id)) {
            Err(end) => end,
            Ok(()) => {
                self.dispatcher.attach(&slot, &self.queues);
                tracing::info!(queues = ?self.queues, max_in_flight = self.max_in_flight, "worker connected");
                self.event_loop(&slot, &mut inbound, &mut commands, &shutdown, &hard_stop)
                    .await
            }
        };
        if self.machine.attached() {
            self.dispatcher.detach(session_id, &self.queues);
        }
        self.dispatcher.unregister(session_id);
        // Tasks the actors handed us after we stopped reading our mailbox.
        commands.close();
        while let Some(command) = commands.recv().await {
            if let SessionCommand::Deliver(task) = command {
                self.release(
                    task.ticket.id,
                    task.lease.lease_id,
                    ReleaseReason::Undelivered,
                );
            }
        }
        if let End::Error(GatewayError::KeyRevoked(_)) = &end {
            self.give_back_revoked().await;
        }
        // Given back as undelivered or revoked before the session's end gives
        // the rest back as lost (an attempt spent).
        while self.releasing.next().await.is_some() {}
        let leases = self.machine.take_leases();
        if !leases.is_empty() {
            tracing::warn!(
                leases = leases.len(),
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
        S: Stream<Item = Inbound> + Unpin,
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
        let mut gateway_draining = false;
        let lost = self.lost.clone();
        let lost = lost.cancelled();
        tokio::pin!(lost);
        let mut liveness_deadline = self.machine.liveness_deadline();
        let liveness = tokio::time::sleep_until(liveness_deadline);
        tokio::pin!(liveness);
        loop {
            let deadline = self.machine.liveness_deadline();
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
                    EngineError::SessionLost(self.info.session_id),
                ))),
                () = &mut draining, if !gateway_draining => {
                    gateway_draining = true;
                    self.machine.on_gateway_drain();
                    Ok(())
                }
                // Timers before traffic: a worker that floods its stream must
                // not starve its own pings or hide that it stopped answering.
                _ = ping.tick() => {
                    self.machine.on_ping_due();
                    Ok(())
                }
                () = &mut liveness => Err(End::Error(
                    GatewayError::WorkerUnresponsive(format!(
                        "no heartbeat answering the gateway's pings for {:?}; the worker's leases were released",
                        self.settings.heartbeat_interval * 2
                    )),
                )),
                command = commands.recv() => match command {
                    Some(SessionCommand::Deliver(claimed)) => {
                        self.machine.on_deliver(claimed);
                        Ok(())
                    }
                    Some(SessionCommand::Revoke(revocation)) => {
                        self.machine.on_revoke(revocation);
                        Ok(())
                    }
                    Some(SessionCommand::Drain(by)) => {
                        self.machine.on_operator_drain(&by);
                        Ok(())
                    }
                    None => Err(End::Closed),
                },
                Some(()) = self.releasing.next(), if !self.releasing.is_empty() => Ok(()),
                Some(recorded) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.machine.on_recorded(recorded);
                    Ok(())
                }
                message = inbound.next(), if self.machine.reads_worker() => match message {
                    Some(Ok(message)) => self.machine.on_message(Instant::now(), message),
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
            let applied = self.apply_effects(slot);
            if let Err(end) = step.and(applied) {
                return end;
            }
            if self.machine.drained() {
                return End::Drained;
            }
        }
    }

    /// Carries out what the machine asked for, in order, and hands it back
    /// whatever was recorded at once (until nothing more is).
    fn apply_effects(&mut self, slot: &Arc<SessionSlot>) -> Result<(), End> {
        loop {
            let effects: Vec<Effect> = self.machine.effects().collect();
            if effects.is_empty() {
                return Ok(());
            }
            for effect in effects {
                self.apply(slot, effect)?;
            }
            for recorded in std::mem::take(&mut self.ready) {
                self.machine.on_recorded(recorded);
            }
        }
    }

    fn apply(&mut self, slot: &Arc<SessionSlot>, effect: Effect) -> Result<(), End> {
        match effect {
            Effect::Send(message) => return self.send(message),
            Effect::Progress(report) => {
                let (ticket_id, lease_id) = (report.ticket_id, report.lease_id);
                let applied = self.dispatcher.engine().progress(report);
                self.track(async move {
                    Recorded::Progress {
                        ticket_id,
                        lease_id,
                        outcome: applied.await,
                    }
                });
            }
            Effect::Complete {
                ticket_id,
                lease_id,
                outcome,
                held,
                was_revoked,
            } => {
                let recorded = self.complete(ticket_id, lease_id, outcome);
                self.track(async move {
                    Recorded::Result {
                        ticket_id,
                        lease_id,
                        held,
                        was_revoked,
                        outcome: Box::new(recorded.await),
                    }
                });
            }
            Effect::Release {
                ticket_id,
                lease_id,
            } => self.release(ticket_id, lease_id, ReleaseReason::Undelivered),
            Effect::Renew => {
                slot.details.heard();
                self.renew(slot);
            }
            Effect::Detach => {
                slot.details.drained();
                self.dispatcher.detach(self.info.session_id, &self.queues);
                self.register(slot);
            }
            Effect::CreditReturned => self.dispatcher.credit_returned(slot, &self.queues),
        }
        Ok(())
    }

    /// Records a result. A store that is briefly away (a Redis restart) must
    /// not turn a finished task into a lost result: the future tries again
    /// for a while before the worker is told UNAVAILABLE (it then resends).
    fn complete(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> impl Future<Output = Result<crate::engine::Completion, EngineError>> + Send + 'static {
        let engine = self.dispatcher.engine().clone();
        // Applied now, so results keep the order they arrived in.
        let applied = engine.complete(ticket_id, lease_id, outcome.clone());
        async move {
            let mut recorded = applied.await;
            let mut delay = Duration::from_millis(50);
            let give_up = Instant::now() + RESULT_RETRY_FOR;
            while matches!(&recorded, Err(error) if error.is_transient())
                && Instant::now() < give_up
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                recorded = engine.complete(ticket_id, lease_id, outcome.clone()).await;
            }
            recorded
        }
    }

    /// Keeps an applied transition until it is durable; the memory engine's
    /// are ready at once and handed back on the spot.
    fn track(&mut self, recorded: impl Future<Output = Recorded> + Send + 'static) {
        let mut recorded = Box::pin(recorded);
        match (&mut recorded).now_or_never() {
            Some(done) => self.ready.push(done),
            None => self.in_flight.push(recorded),
        }
    }

    /// Gives a lease back beside the loop; the session does not end (and
    /// its remaining leases go back as lost) before this is done.
    fn release(&mut self, ticket_id: TicketId, lease_id: LeaseId, reason: ReleaseReason) {
        let engine = self.dispatcher.engine().clone();
        self.releasing.push(Box::pin(
            async move {
                if let Err(error) = engine.release(ticket_id, lease_id, reason).await {
                    tracing::error!(%error, %ticket_id, ?reason, "could not release a lease");
                }
            }
            .in_current_span(),
        ));
    }

    /// Publishes what the admin API lists of this worker (in the
    /// background: a shared store's round trip must not hold the loop).
    fn register(&self, slot: &Arc<SessionSlot>) {
        let engine = self.dispatcher.engine().clone();
        let record = slot.details.record(&self.info, &engine.replica());
        let expires_at = SystemTime::now() + self.settings.lease_ttl;
        self.dispatcher.spawn(
            async move {
                if let Err(error) = engine.register_worker(&record, expires_at).await {
                    tracing::debug!(%error, "could not publish the worker's details");
                }
            }
            .in_current_span(),
        );
    }

    /// Renews the session in the store (and the worker's listed details),
    /// in the background; a renewal still on its way makes this one
    /// unnecessary.
    fn renew(&self, slot: &Arc<SessionSlot>) {
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = self.dispatcher.engine().clone();
        let info = self.info.clone();
        let renewing = self.renewing.clone();
        let lost = self.lost.clone();
        let expires_at = SystemTime::now() + self.settings.lease_ttl;
        let record = slot.details.record(&self.info, &engine.replica());
        self.dispatcher.spawn(
            async move {
                match engine.touch_session(&info, expires_at).await {
                    Ok(()) => {
                        if let Err(error) = engine.register_worker(&record, expires_at).await {
                            tracing::debug!(%error, "could not publish the worker's details");
                        }
                    }
                    Err(EngineError::SessionLost(_)) => lost.cancel(),
                    Err(error) => tracing::warn!(%error, "could not renew the session's leases"),
                }
                renewing.store(false, Ordering::Release);
            }
            .in_current_span(),
        );
    }

    /// The worker's key was revoked: results it sent before are recorded
    /// (for a while; they are not acknowledged), and every lease it still
    /// holds goes back to its queue at once, without costing the ticket an
    /// attempt, rather than waiting for the lease to be lost.
    async fn give_back_revoked(&mut self) {
        let settle = async { while self.in_flight.next().await.is_some() {} };
        if tokio::time::timeout(self.settings.heartbeat_interval * 2, settle)
            .await
            .is_err()
        {
            tracing::warn!("results of a revoked worker still unrecorded; dropped");
        }
        let leases = self.machine.take_leases();
        tracing::info!(
            leases = leases.len(),
            "worker key revoked; its leases go back to their queues"
        );
        for (lease_id, ticket_id) in leases {
            self.release(ticket_id, lease_id, ReleaseReason::KeyRevoked);
        }
    }
}

#[cfg(test)]
mod tests;
