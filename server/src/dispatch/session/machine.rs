//! The worker session's state machine: inputs in (the worker's validated
//! messages, tasks and cancels from the queue actors, pings due, records
//! made durable), effects out (messages to send, transitions to apply,
//! leases to give back). It owns every lease the session holds and the
//! rules of the protocol, and does no I/O and no waiting, so it is tested
//! without a runtime; `session.rs` runs it against the engine and the
//! stream.
//!
//! Results and progress are accepted only for leases this session holds
//! (or, for a repeated result, held until it answered them): a lease id
//! alone proves nothing, as another worker — of another key, tenant or
//! queue — may have learnt it. A report on any other lease never reaches the
//! engine: a result is refused (FAILED_PRECONDITION), progress is dropped.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::time::Instant;

use super::SessionSettings;
use super::messages::{Ack, FromWorker, ProgressUpdate, Report, ToWorker};
use crate::domain::{LeaseId, Outcome, SessionId, TicketId};
use crate::engine::{Claimed, Completion, EngineError, ProgressReport, Revocation};
use crate::error::GatewayError;

/// What the machine asks its runner to do, in order.
#[derive(Debug)]
pub(super) enum Effect {
    /// Send this to the worker; a worker that does not read ends the
    /// session.
    Send(ToWorker),
    /// Apply this progress; hand its outcome back as [`Recorded::Progress`].
    Progress(ProgressReport),
    /// Record this result; hand its outcome back as [`Recorded::Result`].
    Complete {
        /// The ticket.
        ticket_id: TicketId,
        /// The lease it answers.
        lease_id: LeaseId,
        /// The worker's outcome.
        outcome: Outcome,
        /// Whether this session held the lease (its credit comes back).
        held: bool,
        /// Whether the worker had been told to drop it.
        was_revoked: bool,
    },
    /// Give back a lease that never reached the worker (no attempt spent).
    Release {
        /// The ticket.
        ticket_id: TicketId,
        /// The lease.
        lease_id: LeaseId,
    },
    /// Renew the session's leases in the store.
    Renew,
    /// Stop the queue actors from sending tasks.
    Detach,
    /// A task is answered: its credit is free again.
    CreditReturned,
}

/// A transition the runner applied, now durable (or refused).
#[derive(Debug)]
pub(super) enum Recorded {
    /// A progress report.
    Progress {
        /// The ticket.
        ticket_id: TicketId,
        /// The lease.
        lease_id: LeaseId,
        /// The engine's verdict.
        outcome: Result<(), EngineError>,
    },
    /// A result.
    Result {
        /// The ticket.
        ticket_id: TicketId,
        /// The lease.
        lease_id: LeaseId,
        /// As in [`Effect::Complete`].
        held: bool,
        /// As in [`Effect::Complete`].
        was_revoked: bool,
        /// The engine's verdict.
        outcome: Box<Result<Completion, EngineError>>,
    },
}

/// Why the session ends.
#[derive(Debug)]
pub(super) enum End {
    /// The worker closed the stream or the transport failed.
    Closed,
    /// Drained on shutdown with nothing left in flight.
    Drained,
    /// End the stream with this error.
    Error(GatewayError),
}

/// One worker session's protocol state.
pub(super) struct Machine {
    settings: SessionSettings,
    /// Whether tasks show queues as stored (`tenant/queue`, admin keys) or
    /// as the worker's tenant names them.
    scoped_names: bool,
    max_in_flight: u32,
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
    /// Whether a progress report was refused yet (the first is logged at
    /// warn, the rest at debug).
    report_refused: bool,
    /// The latest ping sent.
    nonce: u64,
    /// When the worker last proved it reads its stream.
    last_heartbeat: Instant,
    /// Whether the queue actors may send us tasks.
    attached: bool,
    /// Draining (gateway shutdown or the worker's Drain): no new tasks.
    draining: bool,
    /// The gateway is shutting down: end once every lease is answered. (A
    /// worker's own drain ends when the worker closes its stream.)
    gateway_draining: bool,
    /// Transitions handed out as effects and not yet back as `Recorded`.
    recording: usize,
    /// Whether the worker was told to stop (an operator's drain).
    stop_sent: bool,
    effects: Vec<Effect>,
}

impl Machine {
    /// A session that has just said Welcome and is attached to its queues.
    pub(super) fn new(
        settings: SessionSettings,
        scoped_names: bool,
        max_in_flight: u32,
        now: Instant,
    ) -> Self {
        Self {
            settings,
            scoped_names,
            max_in_flight,
            leases: HashMap::new(),
            revoked: HashSet::new(),
            answered: AnsweredLeases::default(),
            output_refused: HashSet::new(),
            report_refused: false,
            nonce: 0,
            last_heartbeat: now,
            attached: true,
            draining: false,
            gateway_draining: false,
            recording: 0,
            stop_sent: false,
            effects: Vec::new(),
        }
    }

    /// The Welcome for session `session_id`.
    pub(super) fn welcome(&self, session_id: SessionId) -> ToWorker {
        ToWorker::Welcome {
            session_id,
            lease_ttl: self.settings.lease_ttl,
            heartbeat_interval: self.settings.heartbeat_interval,
        }
    }

    /// The effects of the inputs so far, to run in order.
    pub(super) fn effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// When the worker is declared dead unless it proves itself alive.
    pub(super) fn liveness_deadline(&self) -> Instant {
        self.last_heartbeat + self.settings.heartbeat_interval * 2
    }

    /// Whether the worker's stream may be read: a worker that reports
    /// faster than the store commits waits.
    pub(super) fn reads_worker(&self) -> bool {
        self.recording < self.in_flight_limit()
    }

    /// Whether transitions are still on their way to the store.
    #[cfg(test)]
    pub(super) fn recording(&self) -> bool {
        self.recording > 0
    }

    /// Whether the gateway's drain is complete: nothing held, nothing
    /// unrecorded.
    pub(super) fn drained(&self) -> bool {
        self.gateway_draining && self.leases.is_empty() && self.recording == 0
    }

    /// Whether the queue actors still send us tasks.
    pub(super) fn attached(&self) -> bool {
        self.attached
    }

    /// The leases still held, handed over when the session ends.
    pub(super) fn take_leases(&mut self) -> HashMap<LeaseId, TicketId> {
        std::mem::take(&mut self.leases)
    }

    /// Reports waiting for the store before the worker's stream is paused.
    fn in_flight_limit(&self) -> usize {
        self.max_in_flight as usize * 4 + 64
    }

    fn send(&mut self, message: ToWorker) {
        self.effects.push(Effect::Send(message));
    }

    /// A ping is due.
    pub(super) fn on_ping_due(&mut self) {
        self.nonce += 1;
        self.send(ToWorker::Ping { nonce: self.nonce });
    }

    /// The gateway is shutting down: no new tasks; the session ends once
    /// every lease is answered.
    pub(super) fn on_gateway_drain(&mut self) {
        if self.gateway_draining {
            return;
        }
        self.gateway_draining = true;
        self.start_draining();
        self.send(ToWorker::Drain {
            reason: "the gateway is shutting down".into(),
            stop: false,
        });
    }

    /// An operator drained the session (key `by`): no new tasks, and the
    /// worker is told to leave once idle.
    pub(super) fn on_operator_drain(&mut self, by: &str) {
        if std::mem::replace(&mut self.stop_sent, true) {
            return;
        }
        if !self.draining {
            self.start_draining();
        }
        tracing::info!(
            by,
            in_flight = self.leases.len(),
            "worker drained by an operator"
        );
        self.send(ToWorker::Drain {
            reason: format!("drained by key {by:?}: finish the tasks in flight, then stop").into(),
            stop: true,
        });
    }

    fn start_draining(&mut self) {
        self.draining = true;
        if std::mem::replace(&mut self.attached, false) {
            self.effects.push(Effect::Detach);
        }
    }

    /// A queue actor leased a task to this session.
    pub(super) fn on_deliver(&mut self, claimed: Box<Claimed>) {
        let (ticket_id, lease_id) = (claimed.ticket.id, claimed.lease.lease_id);
        if self.draining {
            // Claimed for us before we detached: back to the queue,
            // without costing an attempt.
            self.effects.push(Effect::Release {
                ticket_id,
                lease_id,
            });
            return;
        }
        self.leases.insert(lease_id, ticket_id);
        tracing::debug!(%ticket_id, %lease_id, attempt = claimed.ticket.attempt, "task sent");
        let ticket = &claimed.ticket;
        let queue = if self.scoped_names {
            ticket.queue.to_string()
        } else {
            ticket.queue.seen_by(ticket.tenant.as_deref()).to_owned()
        };
        self.send(ToWorker::Task { claimed, queue });
    }

    /// A lease this session may hold was revoked (cancel, expiry, attempt
    /// timeout).
    pub(super) fn on_revoke(&mut self, revocation: Revocation) {
        if !self.leases.contains_key(&revocation.lease_id) {
            return;
        }
        self.revoked.insert(revocation.lease_id);
        self.send(ToWorker::Cancel(revocation));
    }

    /// A message from the worker, at `now`.
    pub(super) fn on_message(&mut self, now: Instant, message: FromWorker) -> Result<(), End> {
        match message {
            FromWorker::Empty => Err(End::Error(GatewayError::Protocol(
                "empty WorkerMessage: set one of hello, heartbeat, progress, result".into(),
            ))),
            FromWorker::Hello(_) => Err(End::Error(GatewayError::Protocol(
                "Hello was already received on this stream; open a new stream to re-register"
                    .into(),
            ))),
            FromWorker::Heartbeat { nonce } => {
                // Only an answer to one of the two latest pings proves the
                // worker is reading its stream.
                if nonce <= self.nonce && nonce + 1 >= self.nonce {
                    self.last_heartbeat = now;
                    self.effects.push(Effect::Renew);
                }
                Ok(())
            }
            FromWorker::Progress(report) => {
                self.on_progress(now, report);
                Ok(())
            }
            FromWorker::Drain => {
                if !self.draining {
                    tracing::info!(in_flight = self.leases.len(), "worker is draining");
                    self.start_draining();
                    // Every task sent before this reply is already on the
                    // stream ahead of it, so the worker knows what it still
                    // owes.
                    self.send(ToWorker::Drain {
                        reason: "drain acknowledged: no new tasks will be sent".into(),
                        stop: false,
                    });
                }
                Ok(())
            }
            FromWorker::Result(report) => {
                self.on_result(report);
                Ok(())
            }
        }
    }

    /// Whether this session holds `lease_id`, as a lease of `ticket_id`.
    fn holds(&self, ticket_id: TicketId, lease_id: LeaseId) -> bool {
        self.leases.get(&lease_id) == Some(&ticket_id)
    }

    /// Progress on a lease this session holds proves the worker alive as
    /// well as a ping answer does: a worker streaming large outputs answers
    /// pings late, its answers queued behind its data. (Progress for leases
    /// it does not hold, or was told to drop, proves nothing: it may not be
    /// reading at all.) Refreshed at most twice per heartbeat interval, so
    /// a stream of chunks does not renew the session in the store per chunk.
    fn alive_by_work(&mut self, now: Instant, lease_id: LeaseId) {
        if self.revoked.contains(&lease_id) {
            return;
        }
        if now.duration_since(self.last_heartbeat) >= self.settings.heartbeat_interval / 2 {
            self.last_heartbeat = now;
            self.effects.push(Effect::Renew);
        }
    }

    /// A bad report is refused the way a bad result is (an ack naming the
    /// lease and the reason); the session and its other leases carry on.
    fn refuse_progress(&mut self, ticket_id: String, lease_id: String, error: GatewayError) {
        // Logged once per session at warn (a worker's bug is worth seeing),
        // then at debug: a flood cannot flood the log.
        if std::mem::replace(&mut self.report_refused, true) {
            tracing::debug!(%error, "progress refused");
        } else {
            tracing::warn!(%error, "progress refused; later refusals on this session are logged at debug level");
        }
        self.send(ToWorker::Ack {
            ticket_id,
            lease_id,
            ack: Ack::ProgressRefused(error),
        });
    }

    fn on_progress(&mut self, now: Instant, report: Report<ProgressUpdate>) {
        let (ticket_id, lease_id, body) = match report.into_parts() {
            Ok(parts) => parts,
            Err((ticket_id, lease_id, error)) => {
                return self.refuse_progress(ticket_id, lease_id, error);
            }
        };
        if !self.holds(ticket_id, lease_id) {
            tracing::debug!(%ticket_id, %lease_id, "progress on a lease this session does not hold; ignored");
            return;
        }
        self.alive_by_work(now, lease_id);
        match body {
            Ok(ProgressUpdate { progress, output }) => {
                self.recording += 1;
                self.effects.push(Effect::Progress(ProgressReport {
                    ticket_id,
                    lease_id,
                    progress,
                    output,
                }));
            }
            Err(error) => {
                self.refuse_progress(ticket_id.to_string(), lease_id.to_string(), error);
            }
        }
    }

    fn on_result(&mut self, report: Report<Outcome>) {
        let (ticket_id, lease_id, body) = match report.into_parts() {
            Ok(parts) => parts,
            Err((ticket_id, lease_id, error)) => {
                return self.send(ToWorker::Ack {
                    ticket_id,
                    lease_id,
                    ack: Ack::Refused(error),
                });
            }
        };
        let refuse = |error: GatewayError| ToWorker::Ack {
            ticket_id: ticket_id.to_string(),
            lease_id: lease_id.to_string(),
            ack: Ack::Refused(error),
        };
        // A lease answers for its own ticket only. Forgetting the lease on
        // such a result would give its credit back while the ticket stays
        // leased to this worker (one task more than max_in_flight), and a
        // cancel of it would no longer reach the worker.
        if let Some(held) = self.leases.get(&lease_id)
            && *held != ticket_id
        {
            let error = GatewayError::invalid(
                "result.ticket_id",
                format!(
                    "lease {lease_id} was given for ticket {held}, not {ticket_id}: send the result with its Task's ticket_id"
                ),
            );
            return self.send(refuse(error));
        }
        let held = self.holds(ticket_id, lease_id);
        if !held && !self.answered.contains(lease_id) {
            tracing::debug!(%ticket_id, %lease_id, "result on a lease this session does not hold; refused");
            return self.send(refuse(GatewayError::LeaseNotHeld {
                ticket_id,
                lease_id,
            }));
        }
        let outcome = match body {
            Ok(outcome) => outcome,
            Err(error) => return self.send(refuse(error)),
        };
        if held {
            self.leases.remove(&lease_id);
            self.answered.insert(lease_id, self.in_flight_limit());
        }
        self.output_refused.remove(&lease_id);
        let was_revoked = self.revoked.remove(&lease_id);
        self.recording += 1;
        self.effects.push(Effect::Complete {
            ticket_id,
            lease_id,
            outcome,
            held,
            was_revoked,
        });
    }

    /// A transition handed out as an effect is durable (or refused):
    /// acknowledge it.
    pub(super) fn on_recorded(&mut self, recorded: Recorded) {
        self.recording = self.recording.saturating_sub(1);
        match recorded {
            Recorded::Progress {
                ticket_id,
                lease_id,
                outcome,
            } => match outcome {
                Ok(()) => {}
                Err(EngineError::StaleLease { .. } | EngineError::NotFound(_)) => {
                    tracing::debug!(%ticket_id, %lease_id, "progress for a lease that is not current; ignored");
                }
                Err(error @ EngineError::LimitExceeded(_)) => {
                    let first =
                        self.leases.contains_key(&lease_id) && self.output_refused.insert(lease_id);
                    if first {
                        tracing::warn!(%error, %ticket_id, %lease_id, "output refused; later refusals for this lease are logged at debug level");
                    } else {
                        tracing::debug!(%error, %ticket_id, %lease_id, "output refused");
                    }
                }
                Err(error) => tracing::warn!(%error, %ticket_id, "progress not recorded"),
            },
            Recorded::Result {
                ticket_id,
                lease_id,
                held,
                was_revoked,
                outcome,
            } => {
                if held {
                    self.effects.push(Effect::CreditReturned);
                }
                let ack = match *outcome {
                    Ok(Completion::Recorded(ticket)) => {
                        tracing::debug!(%ticket_id, state = ticket.state.name(), "result recorded");
                        Ack::Recorded {
                            state: ticket.state.name(),
                        }
                    }
                    Ok(Completion::Duplicate(_)) => Ack::Duplicate,
                    Err(error) => {
                        if !was_revoked {
                            tracing::debug!(%ticket_id, %lease_id, %error, "result rejected");
                        }
                        Ack::Refused(error.into())
                    }
                };
                self.send(ToWorker::Ack {
                    ticket_id: ticket_id.to_string(),
                    lease_id: lease_id.to_string(),
                    ack,
                });
            }
        }
    }
}

/// The latest leases a session answered, oldest first: bounded, so a
/// long-lived session does not remember every lease it ever held. A repeat
/// comes within moments of its result (a duplicate send, or a resend a
/// second after UNAVAILABLE), far inside the bound.
#[derive(Default)]
struct AnsweredLeases {
    order: VecDeque<LeaseId>,
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

#[cfg(test)]
mod tests;
