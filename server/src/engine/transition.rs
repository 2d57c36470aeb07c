//! The ticket state machine as pure functions on a `Ticket`: what every
//! engine does to the record itself. Engines wrap these with their own
//! bookkeeping (ready indexes, timers, storage), so the rules — caps, fencing,
//! messages people read — are written once.

use std::time::{Duration, SystemTime};

use super::{EngineConfig, EngineError, ReleaseReason, SessionInfo};
use prost::Message;

use crate::domain::callback::{CallbackOutcome, CallbackState};
use crate::domain::ticket::{Payload, codes};
use crate::domain::{Lease, LeaseId, Outcome, Ticket, TicketError, TicketId, TicketState};

/// Leases a PENDING ticket to `session`: a new attempt starts.
pub(crate) fn lease(ticket: &mut Ticket, session: &SessionInfo, now: SystemTime) -> Lease {
    ticket.state = TicketState::Running;
    ticket.attempt += 1;
    let lease = Lease {
        lease_id: LeaseId::new(),
        session_id: session.session_id,
        worker_name: session.worker_name.clone(),
        leased_at: now,
        attempt_deadline: ticket.attempt_deadline(now),
    };
    ticket.lease = Some(lease.clone());
    ticket.touch(now);
    lease
}

/// Ends the current attempt without success: PENDING again (after a backoff
/// unless the worker was lost) while the caps allow, else FAILED.
pub(crate) fn end_attempt(
    ticket: &mut Ticket,
    error: TicketError,
    worker_lost: bool,
    config: &EngineConfig,
    now: SystemTime,
) {
    end_attempt_after(ticket, error, worker_lost, Duration::ZERO, config, now);
}

/// [`end_attempt`], with a retry waiting at least `pushback` (what the
/// failed call's upstream asked for).
fn end_attempt_after(
    ticket: &mut Ticket,
    error: TicketError,
    worker_lost: bool,
    pushback: Duration,
    config: &EngineConfig,
    now: SystemTime,
) {
    ticket.close_attempt(Some(&error), now);
    if worker_lost {
        ticket.worker_losses += 1;
    }
    let out_of_attempts = ticket.attempt >= ticket.max_attempts;
    let poison = worker_lost && ticket.worker_losses >= config.max_worker_losses;
    if !error.retryable || out_of_attempts || poison {
        let message = if poison {
            format!(
                "{}; the ticket lost its worker {} times, so it is failed as a likely poison ticket",
                error.message, ticket.worker_losses
            )
        } else if error.retryable && out_of_attempts {
            format!(
                "{} (attempt {} of {}; no attempts left)",
                error.message, ticket.attempt, ticket.max_attempts
            )
        } else {
            error.message.clone()
        };
        // A FAILED ticket will not be retried, whatever the worker said of
        // its last attempt.
        let error = TicketError {
            message,
            retryable: false,
            ..error
        };
        ticket.finish(TicketState::Failed, Some(error), now);
        return;
    }
    ticket.state = TicketState::Pending;
    ticket.lease = None;
    ticket.error = Some(error);
    ticket.not_before = if worker_lost {
        None
    } else {
        let backoff = config.backoff.delay(ticket.attempt, rand::random::<f64>());
        Some(now + backoff.max(pushback))
    };
    ticket.touch(now);
}

/// What a fenced result report did.
pub(crate) enum Reported {
    /// Recorded now.
    Recorded,
    /// This lease's result was recorded before: nothing changed.
    Duplicate,
}

/// Records the outcome of `lease_id`, the current lease, or explains why not.
pub(crate) fn complete(
    ticket: &mut Ticket,
    lease_id: LeaseId,
    outcome: Outcome,
    config: &EngineConfig,
    now: SystemTime,
) -> Result<Reported, EngineError> {
    if ticket.state.is_terminal() && ticket.completed_by == Some(lease_id) {
        return Ok(Reported::Duplicate);
    }
    check_lease(ticket, lease_id)?;
    match outcome {
        Outcome::Success(payload) => {
            ticket.close_attempt(None, now);
            ticket.result = Some(payload);
            ticket.completed_by = Some(lease_id);
            ticket.finish(TicketState::Succeeded, None, now);
        }
        Outcome::Failure(error) => {
            end_attempt(ticket, error, false, config, now);
            if ticket.state.is_terminal() {
                ticket.completed_by = Some(lease_id);
            }
        }
        Outcome::RetryAfter(error, pushback) => {
            end_attempt_after(ticket, error, false, pushback, config, now);
            if ticket.state.is_terminal() {
                ticket.completed_by = Some(lease_id);
            }
        }
    }
    Ok(Reported::Recorded)
}

/// Fails with `StaleLease` unless `lease_id` is the ticket's current lease.
pub(crate) fn check_lease(ticket: &Ticket, lease_id: LeaseId) -> Result<(), EngineError> {
    if ticket.is_leased_by(lease_id) {
        Ok(())
    } else {
        Err(EngineError::StaleLease {
            ticket_id: ticket.id,
            lease_id,
            reason: stale_reason(ticket, lease_id),
        })
    }
}

/// Gives back a lease whose worker did not report a result; false when the
/// lease is not current (nothing changed).
pub(crate) fn lose_lease(
    ticket: &mut Ticket,
    lease_id: LeaseId,
    reason: ReleaseReason,
    config: &EngineConfig,
    now: SystemTime,
) -> bool {
    if !ticket.is_leased_by(lease_id) {
        return false;
    }
    match reason {
        ReleaseReason::Undelivered | ReleaseReason::KeyRevoked => {
            ticket.attempt = ticket.attempt.saturating_sub(1);
            ticket.state = TicketState::Pending;
            ticket.lease = None;
            ticket.touch(now);
        }
        ReleaseReason::WorkerLost | ReleaseReason::GatewayRestarted => {
            let cause = if reason == ReleaseReason::WorkerLost {
                "lost its worker (disconnected or missed heartbeats)"
            } else {
                "was interrupted by a gateway restart"
            };
            let error = TicketError {
                code: codes::ABORTED,
                message: format!("attempt {} {cause}", ticket.attempt),
                retryable: true,
            };
            end_attempt(ticket, error, true, config, now);
        }
    }
    true
}

/// What a cancel did.
pub(crate) enum Cancelled {
    /// The ticket was cancelled before: nothing changed.
    Already,
    /// Cancelled now; a running attempt's lease is to be revoked.
    Now(Option<Lease>),
}

/// Cancels a pending or running ticket.
pub(crate) fn cancel(
    ticket: &mut Ticket,
    reason: &str,
    now: SystemTime,
) -> Result<Cancelled, EngineError> {
    match ticket.state {
        TicketState::Cancelled => Ok(Cancelled::Already),
        state if state.is_terminal() => Err(EngineError::AlreadyTerminal {
            id: ticket.id,
            state,
            action: "cancel",
        }),
        _ => {
            let revoked = ticket.lease.clone();
            let error = TicketError {
                code: codes::CANCELLED,
                message: cancel_message(reason),
                retryable: false,
            };
            ticket.close_attempt(Some(&error), now);
            ticket.finish(TicketState::Cancelled, Some(error), now);
            Ok(Cancelled::Now(revoked))
        }
    }
}

/// An operator's retry: a FAILED, CANCELLED or EXPIRED ticket becomes
/// PENDING again — the same id, its seq continuing — with a fresh attempt
/// budget (attempts and worker losses back to 0), no result, progress or
/// output, and, if it has a timeout, a new deadline that long from now (the
/// timeout is a budget for one run from submit to result; the old deadline
/// has usually passed, and keeping it would expire the retried ticket at
/// once). Its last error stays until the new run replaces it, for context.
/// The caller drops the ticket's stored output. A SUCCEEDED ticket is not
/// retried (its body is gone; submit again), an unfinished one has nothing
/// to retry.
pub(crate) fn retry(ticket: &mut Ticket, now: SystemTime) -> Result<(), EngineError> {
    match ticket.state {
        TicketState::Failed | TicketState::Cancelled | TicketState::Expired => {}
        TicketState::Succeeded => return Err(EngineError::SucceededNotRetried(ticket.id)),
        state => {
            return Err(EngineError::NotFinished {
                id: ticket.id,
                state,
                hint: "only FAILED, CANCELLED or EXPIRED tickets are retried; it runs (or waits to run) already",
            });
        }
    }
    ticket.state = TicketState::Pending;
    ticket.attempt = 0;
    ticket.worker_losses = 0;
    ticket.result = None;
    ticket.completed_by = None;
    ticket.finished_at = None;
    ticket.lease = None;
    ticket.not_before = None;
    ticket.progress = None;
    ticket.output_bytes = 0;
    ticket.deadline = ticket.timeout.map(|timeout| now + timeout);
    // Its callback follows the new end (a delivery of the old one still
    // pending is dropped: it would report an outcome already superseded).
    if let Some(callback) = &mut ticket.callback {
        callback.rearm();
    }
    ticket.touch(now);
    Ok(())
}

/// An operator's retry of a given-up callback: due now, with a fresh
/// retry window, for the same end (the same webhook-id).
pub(crate) fn retry_callback(ticket: &mut Ticket, now: SystemTime) -> Result<(), EngineError> {
    let id = ticket.id;
    match ticket.callback.as_deref_mut() {
        Some(callback) if callback.state == CallbackState::GaveUp => {
            callback.state = CallbackState::Pending;
            callback.next_at = Some(now);
            callback.due_since = Some(now);
            Ok(())
        }
        Some(callback) => Err(EngineError::CallbackNotRetried {
            id,
            why: format!("has its callback {:?}", callback.state),
        }),
        None => Err(EngineError::CallbackNotRetried {
            id,
            why: "has no callback".into(),
        }),
    }
}

/// Records how an attempt to deliver `id`'s callback for its end `seq`
/// went; false (nothing changed) for another end's or a settled delivery.
/// Not an event: watchers saw the terminal event already.
pub(crate) fn record_callback(
    ticket: &mut Ticket,
    seq: u64,
    outcome: CallbackOutcome,
    now: SystemTime,
) -> bool {
    ticket
        .callback
        .as_mut()
        .is_some_and(|callback| callback.record(seq, outcome, now))
}

/// Refuses to delete an unfinished ticket: a worker may be running it, a
/// caller waiting for it.
pub(crate) fn check_deletable(ticket: &Ticket) -> Result<(), EngineError> {
    if ticket.state.is_terminal() {
        Ok(())
    } else {
        Err(EngineError::NotFinished {
            id: ticket.id,
            state: ticket.state,
            hint: "cancel it first, then delete it",
        })
    }
}

/// Expires a ticket whose deadline is due; returns the lease of a running
/// attempt (to revoke), or `None` when nothing was due.
pub(crate) fn expire(ticket: &mut Ticket, now: SystemTime) -> Option<Option<Lease>> {
    let deadline = ticket.deadline.filter(|d| *d <= now)?;
    if ticket.state.is_terminal() {
        return None;
    }
    let revoked = ticket.lease.clone();
    let budget = ticket.timeout.unwrap_or_else(|| {
        deadline
            .duration_since(ticket.created_at)
            .unwrap_or_default()
    });
    let error = TicketError {
        code: codes::DEADLINE_EXCEEDED,
        message: format!(
            "ticket timed out: not finished within its timeout of {budget:?} (attempt {} of {})",
            ticket.attempt, ticket.max_attempts
        ),
        retryable: false,
    };
    ticket.close_attempt(Some(&error), now);
    ticket.finish(TicketState::Expired, Some(error), now);
    Some(revoked)
}

/// Ends an attempt that ran past its own budget (retried like a failure);
/// returns the revoked lease, or `None` when it was not due. When the
/// attempt's deadline is the ticket's own, [`expire`] applies instead.
pub(crate) fn time_out_attempt(
    ticket: &mut Ticket,
    lease_id: LeaseId,
    config: &EngineConfig,
    now: SystemTime,
) -> Option<Lease> {
    let lease = ticket
        .lease
        .clone()
        .filter(|_| ticket.is_leased_by(lease_id))?;
    let at = lease.attempt_deadline.filter(|at| *at <= now)?;
    if ticket.deadline.is_some_and(|d| d <= at) {
        return None;
    }
    let error = TicketError {
        code: codes::DEADLINE_EXCEEDED,
        message: format!("attempt {} exceeded its attempt_timeout", ticket.attempt),
        retryable: true,
    };
    end_attempt(ticket, error, false, config, now);
    Some(lease)
}

/// The message a worker is given with an attempt-timeout revocation.
pub(crate) fn attempt_timeout_notice(ticket_attempt: u32) -> String {
    format!("attempt {ticket_attempt} ran past its time budget")
}

/// The message a worker is given when the ticket expires under it.
pub(crate) const EXPIRED_NOTICE: &str = "the ticket's timeout passed";

/// Why `lease_id` is not current for `ticket`.
pub(crate) fn stale_reason(ticket: &Ticket, lease_id: LeaseId) -> String {
    match ticket.state {
        TicketState::Pending => {
            "the lease was lost and the ticket is queued for another attempt".into()
        }
        TicketState::Running => format!(
            "the ticket is now on attempt {} under another lease",
            ticket.attempt
        ),
        state if ticket.completed_by == Some(lease_id) => {
            format!(
                "this lease's result was already recorded (ticket {})",
                state.name()
            )
        }
        state => format!("the ticket is already {}", state.name()),
    }
}

/// The error text of a cancelled ticket.
pub(crate) fn cancel_message(reason: &str) -> String {
    if reason.is_empty() {
        "cancelled by a caller".into()
    } else {
        format!("cancelled by a caller: {reason}")
    }
}

/// The error for a lookup of an id that is not stored.
pub(crate) fn missing(id: TicketId, deleted_at: Option<SystemTime>) -> EngineError {
    match deleted_at {
        Some(at) => EngineError::ResultExpired {
            id,
            deleted_at: crate::time::rfc3339(at),
        },
        None => EngineError::NotFound(id),
    }
}

/// Most partial-output chunks stored per ticket: a worker flooding output
/// cannot grow one ticket without bound.
pub(crate) const MAX_CHUNKS_PER_TICKET: usize = 10_000;

/// Counts `chunk` against the ticket's output budget, or refuses it (and
/// leaves the ticket as it was) when it would pass `limit` bytes.
pub(crate) fn spend_output(
    ticket: &mut Ticket,
    chunk: &Payload,
    limit: u64,
) -> Result<(), EngineError> {
    let size = chunk.encoded_len() as u64;
    let total = ticket.output_bytes.saturating_add(size);
    if total > limit {
        return Err(EngineError::LimitExceeded(format!(
            "ticket {} already holds {} bytes of output; a {size}-byte chunk would pass its {limit}-byte budget (--max-output-bytes-per-ticket); put the rest in the result",
            ticket.id, ticket.output_bytes
        )));
    }
    ticket.output_bytes = total;
    Ok(())
}

/// The error for an output chunk past [`MAX_CHUNKS_PER_TICKET`].
pub(crate) fn too_many_chunks(id: TicketId) -> EngineError {
    EngineError::LimitExceeded(format!(
        "ticket {id} already holds {MAX_CHUNKS_PER_TICKET} output chunks; send larger chunks or put the rest in the result"
    ))
}
