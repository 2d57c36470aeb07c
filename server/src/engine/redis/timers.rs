//! The timer pass, which every replica runs: sessions whose expiry passed
//! lose their leases; due timers fire (backoff ends, deadlines, attempt
//! timeouts, retention); tickets popped by a claimer that died are put
//! back; queues with ready work are re-announced now and then, in case a
//! ready message was missed. Firing a timer is a fenced transition like any
//! other, so two replicas firing one timer do no harm.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use futures::StreamExt;
use redis::Cmd;

use super::codec::Ops;
use super::layout::{self, Placement, TimerKind};
use super::store::QueryKind;
use super::{Inner, Step, lock};
use crate::domain::ticket::EventKind;
use crate::domain::{QueueName, SessionId, Ticket, TicketId, TicketState};
use crate::engine::{EngineConfig, EngineError, Revocation, RevokeReason, transition};

/// How long a popped ticket may wait for its lease commit before the timer
/// pass puts it back (its claimer died, or lost Redis mid-claim). Putting
/// back a ticket whose lease is about to land is harmless: the next claimer
/// finds it RUNNING and drops it from the ready set.
const CLAIM_GRACE: Duration = Duration::from_secs(2);

/// How often the timer pass re-announces queues with ready work, in case a
/// ready message was missed.
const READY_POKE: Duration = Duration::from_secs(1);

/// Due timers fired per queue per pass.
const TIMER_BATCH: isize = 512;

/// How often the timer pass re-announces limited queues with ready work:
/// their limits ease with time (tokens refill) or as tickets finish, and
/// nothing else would say so.
const LIMITED_POKE: Duration = Duration::from_millis(50);

/// What the timer pass reads of one queue: due timers, stale claims, how
/// many tickets are ready, and whether it has limits.
type Due = (Vec<String>, Vec<String>, usize, bool);

impl Inner {
    /// One timer pass (see the module docs), as of `now`.
    pub(super) async fn run_timers(&self, now: SystemTime) -> Result<(), EngineError> {
        let now_ms = layout::millis(now);
        let mut ready = self.expire_sessions(now_ms).await?;
        let queues = self.known_queues().await?;
        let poke = {
            let mut last = lock(&self.last_poke);
            let due = last.elapsed() >= READY_POKE;
            if due {
                *last = Instant::now();
            }
            due
        };
        let limited_poke = {
            let mut last = lock(&self.last_limited_poke);
            let due = last.elapsed() >= LIMITED_POKE;
            if due {
                *last = Instant::now();
            }
            due
        };
        let flush = {
            let mut last = lock(&self.last_window_flush);
            let due = last.elapsed() >= super::windows::FLUSH_EVERY;
            if due {
                *last = Instant::now();
            }
            due
        };
        if flush {
            self.flush_windows().await;
        }
        let due = self.due(&queues, now_ms).await?;
        *self.limited.write().unwrap_or_else(|p| p.into_inner()) = queues
            .iter()
            .zip(&due)
            .filter(|(_, due)| due.3)
            .map(|(queue, _)| queue.clone())
            .collect();
        for (queue, (timers, stale_claims, ready_count, limited)) in queues.iter().zip(due) {
            let fired = futures::stream::iter(timers)
                .map(|member| async move { self.fire(queue, &member, now).await })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
            for result in fired {
                result?;
            }
            if !stale_claims.is_empty() {
                self.unclaim(queue, stale_claims).await?;
            }
            if (poke || (limited && limited_poke)) && ready_count > 0 {
                ready.insert(queue.clone());
            }
        }
        for queue in ready {
            self.notify_ready(&queue);
        }
        Ok(())
    }

    /// Makes sessions whose expiry passed lose their leases (at most 64 a
    /// pass); the queues that got tickets back.
    async fn expire_sessions(&self, now_ms: u64) -> Result<BTreeSet<QueueName>, EngineError> {
        let expired: Vec<String> = self
            .run(|| {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(self.keys.sessions())
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(64);
                QueryKind::Cmd(cmd)
            })
            .await?;
        let mut ready = BTreeSet::new();
        for session in expired {
            let Ok(session_id) = session.parse::<uuid::Uuid>().map(SessionId) else {
                self.zrem(self.keys.sessions(), &session).await?;
                continue;
            };
            tracing::warn!(%session_id, "worker session expired; its leases are lost");
            ready.extend(self.lose_session(session_id).await?);
            self.batch(vec![
                Cmd::zrem(self.keys.sessions(), &session),
                Cmd::del(self.keys.session_queues(session_id)),
            ])
            .await?;
            self.forget_session(session_id);
        }
        Ok(ready)
    }

    /// Reads, per queue, what the pass has to do (and drops expired
    /// sessions from its worker set).
    async fn due(&self, queues: &[QueueName], now_ms: u64) -> Result<Vec<Due>, EngineError> {
        let claim_cutoff = now_ms.saturating_sub(CLAIM_GRACE.as_millis() as u64);
        // One pipeline per queue (one slot each).
        futures::future::join_all(queues.iter().map(|queue| {
            self.run::<Due>(|| {
                let mut pipe = redis::pipe();
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(self.keys.timers(queue))
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(TIMER_BATCH)
                    .cmd("ZRANGEBYSCORE")
                    .arg(self.keys.claiming(queue))
                    .arg("-inf")
                    .arg(claim_cutoff)
                    .zcard(self.keys.ready(queue))
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(self.keys.workers(queue))
                    .arg("-inf")
                    .arg(now_ms)
                    .ignore()
                    .exists(self.keys.limits(queue));
                QueryKind::Pipe(pipe)
            })
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<Due>, EngineError>>()
    }

    /// Fires one due timer of `queue`.
    async fn fire(
        &self,
        queue: &QueueName,
        member: &str,
        now: SystemTime,
    ) -> Result<(), EngineError> {
        let Some((kind, id)) = layout::parse_timer(member) else {
            return self.zrem(self.keys.timers(queue), member).await;
        };
        let Some(stored) = self.load(queue, id).await? else {
            return self.zrem(self.keys.timers(queue), member).await;
        };
        let config = &self.config;
        let outcome = self
            .transact(queue, id, Some(stored), |ticket| {
                Ok(timer_step(&kind, id, ticket, config, now))
            })
            .await;
        match outcome {
            Ok((false, Some(stored))) => {
                let placement = Placement::of(&stored.ticket, self.config.result_retention);
                match placement.timers.iter().find(|(m, _)| m == member) {
                    None => self.zrem(self.keys.timers(queue), member).await?,
                    // Not due after all, and now later (a retention kept for
                    // a callback): moved there, not fired again each pass.
                    Some((_, at)) if *at > layout::millis(now) => {
                        let key = self.keys.timers(queue);
                        let (at, member) = (*at, member.to_owned());
                        self.run::<()>(|| {
                            let mut cmd = redis::cmd("ZADD");
                            cmd.arg(&key).arg(at).arg(&member);
                            QueryKind::Cmd(cmd)
                        })
                        .await?;
                    }
                    Some(_) => {}
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(EngineError::NotFound(_) | EngineError::ResultExpired { .. }) => {
                self.zrem(self.keys.timers(queue), member).await
            }
            Err(error) => Err(error),
        }
    }
}

/// What firing a `kind` timer does to ticket `id`; the result says whether
/// it acted (a write or a delete). A timer no longer due does nothing (it
/// fired already, on this replica or another, or the ticket moved on).
fn timer_step(
    kind: &TimerKind,
    id: TicketId,
    ticket: &mut Ticket,
    config: &EngineConfig,
    now: SystemTime,
) -> Step<bool> {
    match kind {
        TimerKind::Backoff => {
            if ticket.state == TicketState::Pending && ticket.not_before.is_some_and(|at| at <= now)
            {
                ticket.not_before = None;
                Step::write(true, Vec::new())
            } else {
                Step::Keep(false)
            }
        }
        TimerKind::Deadline => match transition::expire(ticket, now) {
            Some(revoked) => Step::Write {
                result: true,
                events: vec![(EventKind::State, ticket.clone(), None)],
                revoke: revoked.map(|lease| Revocation {
                    session_id: lease.session_id,
                    ticket_id: id,
                    lease_id: lease.lease_id,
                    reason: RevokeReason::Expired,
                    message: transition::EXPIRED_NOTICE.into(),
                }),
                extra: Ops::default(),
            },
            None => Step::Keep(false),
        },
        TimerKind::Attempt(lease_id) => {
            match transition::time_out_attempt(ticket, *lease_id, config, now) {
                Some(lease) => Step::Write {
                    result: true,
                    events: vec![(EventKind::State, ticket.clone(), None)],
                    revoke: Some(Revocation {
                        session_id: lease.session_id,
                        ticket_id: id,
                        lease_id: lease.lease_id,
                        reason: RevokeReason::AttemptTimeout,
                        message: transition::attempt_timeout_notice(ticket.attempt),
                    }),
                    extra: Ops::default(),
                },
                None => Step::Keep(false),
            }
        }
        TimerKind::Retention => {
            let due = ticket.state.is_terminal()
                && ticket.finished_at.is_some()
                && ticket.retained_until(config.result_retention) <= now;
            if due {
                Step::Delete {
                    result: true,
                    at: now,
                }
            } else {
                Step::Keep(false)
            }
        }
        // Claimed by a deliverer (`callbacks.rs`), never fired here.
        TimerKind::Callback => Step::Keep(false),
    }
}
