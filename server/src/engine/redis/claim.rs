//! Leasing: how a claim hands ready tickets to worker sessions, and how
//! leases that may have been lost on the way are given back.
//!
//! A claim runs in steps: register the sessions for lease cleanup, pop
//! ready tickets (`claim.lua` parks them as "claiming", one member for the
//! claim, so replicas do not race for the head of the queue), commit a
//! lease per ticket in one call (each fenced by revision, like every
//! transition), check which sessions still live, then
//! settle: hand each lease to its session, or give it back. From the commit
//! on, the leases are [`InDoubt`] until settled, so no error path can leave
//! a ticket RUNNING under a lease nobody holds. A claimer that dies between
//! pop and commit leaves its tickets "claiming"; the timer pass puts them
//! back with [`Inner::unclaim`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use redis::{Cmd, Pipeline, Value};

use super::codec::{Ops, Section};
use super::layout;
use super::store::QueryKind;
use super::{Held, Inner, Stored, lock};
use crate::domain::ticket::EventKind;
use crate::domain::{Lease, LeaseId, QueueName, SessionId, Ticket, TicketId, TicketState};
use crate::engine::{Claimed, EngineError, ReleaseReason, SessionInfo, transition};

/// What `claim.lua` returns per popped ticket: id, revision, record,
/// payload.
type Popped = (String, Option<u64>, Option<Bytes>, Option<Bytes>);

/// Leases a claim committed in Redis that no session has been handed yet.
/// Dropped while it still holds some (an early return, an error, a panic),
/// it gives them all back in the background, so that no ticket can be left
/// RUNNING under a lease nobody holds; a claim that hands its leases out
/// calls [`InDoubt::settled`].
struct InDoubt {
    inner: Arc<Inner>,
    queue: QueueName,
    leases: Vec<(TicketId, LeaseId)>,
}

impl InDoubt {
    /// `lease_id` needs no giving back (never applied, or given back).
    fn forget(&mut self, lease_id: LeaseId) {
        self.leases.retain(|(_, lease)| *lease != lease_id);
    }

    /// Every lease left was handed to its session.
    fn settled(mut self) {
        self.leases.clear();
    }
}

impl Drop for InDoubt {
    fn drop(&mut self) {
        self.inner
            .release_in_doubt(self.queue.clone(), std::mem::take(&mut self.leases));
    }
}

/// A popped ticket and the lease a claim commits for it.
struct Leasing {
    /// As popped: its revision fences the lease commit.
    stored: Stored,
    /// As leased.
    after: Ticket,
    /// The lease committed.
    lease: Lease,
    /// Who is to hold it.
    session: SessionInfo,
}

impl Inner {
    /// Leases ready tickets of `queue`, at most one per entry of `sessions`
    /// (a session may appear more than once), to sessions that still live.
    pub(super) async fn claim(
        self: &Arc<Self>,
        queue: &QueueName,
        sessions: &[SessionInfo],
    ) -> Result<Vec<Claimed>, EngineError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        self.register_sessions(queue, sessions).await?;
        let now = SystemTime::now();
        let popped = self.pop(queue, sessions.len(), now).await?;
        if popped.is_empty() {
            return Ok(Vec::new());
        }
        let parked = parked_member(&popped);
        let candidates = self.leasable(popped);
        let (pipe, leased) = self.lease_commits(queue, candidates, &parked, sessions, now);
        // The leases first (one slot), then whether their sessions still
        // live (another): a session that ended in between gets them back.
        let in_doubt = InDoubt {
            inner: self.clone(),
            queue: queue.clone(),
            leases: leased
                .iter()
                .map(|leasing| (leasing.after.id, leasing.lease.lease_id))
                .collect(),
        };
        let (commits, alive) = self.commit_leases(pipe, &leased).await?;
        self.settle(queue, leased, &commits, &alive, in_doubt).await
    }

    /// Records, once per replica, that each session may hold leases of
    /// `queue`, so that losing the session finds them.
    async fn register_sessions(
        &self,
        queue: &QueueName,
        sessions: &[SessionInfo],
    ) -> Result<(), EngineError> {
        let unregistered: Vec<SessionId> = {
            let known = lock(&self.session_queues);
            let mut fresh: Vec<SessionId> = sessions
                .iter()
                .map(|s| s.session_id)
                .filter(|s| !known.contains(&(*s, queue.clone())))
                .collect();
            fresh.sort();
            fresh.dedup();
            fresh
        };
        if !unregistered.is_empty() {
            self.batch(
                unregistered
                    .iter()
                    .map(|session_id| {
                        Cmd::sadd(self.keys.session_queues(*session_id), queue.as_str())
                    })
                    .collect(),
            )
            .await?;
            lock(&self.session_queues).extend(unregistered.iter().map(|s| (*s, queue.clone())));
        }
        Ok(())
    }

    /// Takes up to `n` ready tickets off `queue`, highest priority first,
    /// parking them as claiming (`claim.lua`).
    async fn pop(
        &self,
        queue: &QueueName,
        n: usize,
        now: SystemTime,
    ) -> Result<Vec<Popped>, EngineError> {
        self.run(|| {
            QueryKind::Cmd(self.evalsha(
                &self.scripts.claim,
                &[
                    self.keys.ready(queue),
                    self.keys.claiming(queue),
                    self.keys.pause(queue),
                    self.keys.limits(queue),
                    self.keys.leased(queue),
                ],
                vec![
                    n.to_string().into_bytes(),
                    layout::millis(now).to_string().into_bytes(),
                    self.keys.ticket_prefix(queue).into_bytes(),
                ],
            ))
        })
        .await
    }

    /// The popped tickets still leasable (PENDING and out of backoff); the
    /// others were in the ready set by mistake and are dropped.
    fn leasable(&self, popped: Vec<Popped>) -> Vec<Stored> {
        let mut candidates = Vec::with_capacity(popped.len());
        for (member, revision, record, payload) in popped {
            let Ok(id) = member.parse::<uuid::Uuid>().map(TicketId) else {
                continue;
            };
            match self.decode(id, (revision, record, payload)) {
                Ok(Some(stored))
                    if stored.ticket.state == TicketState::Pending
                        && stored.ticket.not_before.is_none() =>
                {
                    candidates.push(stored);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "unreadable ticket taken off the ready set");
                }
            }
        }
        candidates
    }

    /// One pipeline: one commit call with a fenced lease section per
    /// candidate, paired with `sessions` in order, then the removal of the
    /// claim's `parked` member from the claiming set. Were the connection to
    /// drop between the two, the timer pass would find the member stale and
    /// put back only the tickets still PENDING (see [`Inner::unclaim`]).
    fn lease_commits(
        &self,
        queue: &QueueName,
        candidates: Vec<Stored>,
        parked: &str,
        sessions: &[SessionInfo],
        now: SystemTime,
    ) -> (Pipeline, Vec<Leasing>) {
        let mut leased = Vec::with_capacity(candidates.len());
        let mut sections = Vec::with_capacity(candidates.len());
        for (stored, session) in candidates.into_iter().zip(sessions) {
            let mut after = stored.ticket.clone();
            let lease = transition::lease(&mut after, session, now);
            let events = [(EventKind::State, after.clone(), None)];
            sections.push(self.commit_section(&stored, &mut after, &events, None, Ops::default()));
            leased.push(Leasing {
                stored,
                after,
                lease,
                session: session.clone(),
            });
        }
        let mut pipe = redis::pipe();
        if !sections.is_empty() {
            let sections: Vec<&Section> = sections.iter().collect();
            pipe.add_command(self.commit_call(queue, &sections));
        }
        pipe.zrem(self.keys.claiming(queue), parked).ignore();
        (pipe, leased)
    }

    /// Runs the lease commits, and reads which of the sessions still live:
    /// in one round trip where a pipeline keeps its order, else two.
    async fn commit_leases(
        &self,
        mut pipe: Pipeline,
        leased: &[Leasing],
    ) -> Result<(Vec<Value>, HashSet<SessionId>), EngineError> {
        let mut distinct: Vec<SessionId> = leased.iter().map(|l| l.session.session_id).collect();
        distinct.sort();
        distinct.dedup();
        let mut scores = redis::pipe();
        for session_id in &distinct {
            scores.zscore(self.keys.sessions(), session_id.to_string());
        }
        let together = self.conn.orders_pipelines();
        if together {
            for command in scores.cmd_iter() {
                pipe.add_command(command.clone());
            }
        }
        let mut replies: Vec<Value> = self.run(|| QueryKind::Pipe(pipe.clone())).await?;
        // The commit call's reply (when there were leases) holds one reply
        // per lease.
        let called = usize::from(!leased.is_empty()).min(replies.len());
        let rest = replies.split_off(called);
        let commits: Vec<Value> = match replies.pop() {
            Some(Value::Array(each)) => each,
            Some(other) => vec![other],
            None => Vec::new(),
        };
        let scores = if together {
            Ok(rest)
        } else {
            self.run::<Vec<Value>>(|| QueryKind::Pipe(scores.clone()))
                .await
        };
        let scores = scores?;
        let now_ms = layout::millis(SystemTime::now());
        let alive: HashSet<SessionId> = distinct
            .iter()
            .zip(scores)
            .filter(|(_, score)| {
                redis::from_redis_value_ref::<Option<f64>>(score)
                    .ok()
                    .flatten()
                    .is_some_and(|expires| expires > now_ms as f64)
            })
            .map(|(session, _)| *session)
            .collect();
        Ok((commits, alive))
    }

    /// Hands each lease whose commit landed to its session, or gives it
    /// back when the session ended meanwhile; a commit that lost to a
    /// change since the pop (a cancel, say) is left be.
    async fn settle(
        &self,
        queue: &QueueName,
        leased: Vec<Leasing>,
        commits: &[Value],
        alive: &HashSet<SessionId>,
        mut in_doubt: InDoubt,
    ) -> Result<Vec<Claimed>, EngineError> {
        let mut claimed = Vec::with_capacity(leased.len());
        let mut orphaned = false;
        for (leasing, reply) in leased.into_iter().zip(commits) {
            let Leasing {
                stored,
                after,
                lease,
                session,
            } = leasing;
            #[cfg(test)]
            if !claimed.is_empty()
                && self
                    .fail_settle
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(EngineError::unavailable("injected failure"));
            }
            let revision = match redis::from_redis_value_ref::<Vec<i64>>(reply)
                .ok()
                .as_deref()
            {
                Some([1, revision]) => *revision as u64,
                _ => {
                    // Changed since the pop (a cancel, say): leave it be.
                    in_doubt.forget(lease.lease_id);
                    continue;
                }
            };
            self.observe(&stored.ticket, &after);
            let written = Stored {
                ticket: after.clone(),
                revision,
            };
            if !alive.contains(&session.session_id) {
                // The session ended while we leased: give it back.
                self.give_back(
                    queue,
                    after.id,
                    Some(written),
                    lease.lease_id,
                    ReleaseReason::Undelivered,
                )
                .await?;
                in_doubt.forget(lease.lease_id);
                orphaned = true;
                continue;
            }
            lock(self.lease_shard(&lease.lease_id)).insert(
                lease.lease_id,
                Held {
                    queue: queue.clone(),
                    session_id: session.session_id,
                    latest: Some(written),
                    tail: None,
                },
            );
            claimed.push(Claimed {
                ticket: Arc::new(after),
                lease,
            });
        }
        if orphaned {
            self.notify_ready(queue);
        }
        in_doubt.settled();
        Ok(claimed)
    }

    /// Gives back leases whose commit may or may not have landed (Redis
    /// went away mid-claim, so nobody was told of them): without this, a
    /// lease held by a live session that never got its task would keep the
    /// ticket RUNNING forever. Retries until Redis answers, for as long as
    /// the engine exists; a lease that never landed is left alone by the
    /// fencing.
    fn release_in_doubt(self: &Arc<Self>, queue: QueueName, leases: Vec<(TicketId, LeaseId)>) {
        if leases.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut pending = leases;
            let mut delay = Duration::from_millis(100);
            while !pending.is_empty() {
                let Some(inner) = weak.upgrade() else { return };
                let mut failed = Vec::new();
                for (id, lease_id) in pending {
                    let outcome = inner
                        .give_back(&queue, id, None, lease_id, ReleaseReason::Undelivered)
                        .await;
                    match outcome {
                        Ok(_)
                        | Err(EngineError::NotFound(_) | EngineError::ResultExpired { .. }) => {
                            lock(inner.lease_shard(&lease_id)).remove(&lease_id);
                        }
                        Err(_) => failed.push((id, lease_id)),
                    }
                }
                pending = failed;
                if pending.is_empty() {
                    inner.notify_ready(&queue);
                } else {
                    drop(inner);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        });
    }

    /// Puts back tickets whose claimer died between pop and lease: each
    /// stale member of the claiming set names a claim's tickets (one, from
    /// a gateway before issue 21), and those still PENDING go back.
    pub(super) async fn unclaim(
        &self,
        queue: &QueueName,
        members: Vec<String>,
    ) -> Result<(), EngineError> {
        for member in members {
            for id in member.split(',') {
                self.unclaim_one(queue, id).await?;
            }
            self.zrem(self.keys.claiming(queue), &member).await?;
        }
        Ok(())
    }

    /// Puts ticket `id` (as text) back in the ready set if it is still
    /// PENDING and out of backoff.
    async fn unclaim_one(&self, queue: &QueueName, id: &str) -> Result<(), EngineError> {
        let Ok(id) = id.parse::<uuid::Uuid>().map(TicketId) else {
            return Ok(());
        };
        let Some(stored) = self.load(queue, id).await? else {
            return Ok(());
        };
        let ticket = &stored.ticket;
        if ticket.state == TicketState::Pending && ticket.not_before.is_none() {
            let ready = layout::ready_member(ticket.priority, ticket.enqueue_seq, id);
            let _: () = self
                .run(|| {
                    let mut cmd = redis::cmd("ZADD");
                    cmd.arg(self.keys.ready(queue)).arg(0).arg(&ready);
                    QueryKind::Cmd(cmd)
                })
                .await?;
            self.notify_ready(queue);
        }
        Ok(())
    }
}

/// The claiming-set member `claim.lua` parked `popped` under: their ids,
/// joined by commas, in order.
fn parked_member(popped: &[Popped]) -> String {
    let ids: Vec<&str> = popped.iter().map(|p| p.0.as_str()).collect();
    ids.join(",")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, SystemTime};

    use super::super::connect;
    use crate::domain::{NewTicket, QueueName, TicketId, TicketState};
    use crate::engine::{Engine, EngineConfig, SessionInfo};

    /// committed and one was already settled: every lease of that claim
    /// goes back, none stays RUNNING held by nobody.
    #[tokio::test]
    async fn a_failure_while_settling_a_claim_gives_every_lease_back() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine = connect(
            &server.url(),
            "settle",
            &Default::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let queue = QueueName::parse("q").unwrap();
        let session = SessionInfo::for_test(&queue);
        engine
            .open_session(&session, SystemTime::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let new = NewTicket::for_test(queue.clone());
            ids.push(engine.submit(new).await.unwrap().ticket.id);
        }
        engine.inner.fail_settle.store(true, Ordering::SeqCst);
        let sessions = vec![session.clone(); 3];
        let error = engine.claim(&queue, &sessions).await.unwrap_err();
        assert!(error.to_string().contains("injected"), "{error}");
        // Given back in the background: every ticket is PENDING again, its
        // attempt not counted, and the next claim hands all three out.
        let back = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut pending = 0;
                for id in &ids {
                    let ticket = engine.get(*id).await.unwrap();
                    if ticket.state == TicketState::Pending {
                        pending += 1;
                    }
                }
                if pending == ids.len() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(back.is_ok(), "every lease of the failed claim went back");
        let claimed = engine.claim(&queue, &sessions).await.unwrap();
        assert_eq!(claimed.len(), 3);
        assert!(
            claimed.iter().all(|c| c.ticket.attempt == 1),
            "undelivered: not an attempt"
        );
    }

    /// A claimer that dies between pop and lease leaves its claim parked as
    /// one member of the claiming set (an older gateway left one member per
    /// ticket): the timer pass puts every one of those tickets back, and a
    /// concurrency limit counts each parked ticket meanwhile.
    #[tokio::test]
    async fn tickets_of_a_claim_that_died_go_back() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine = connect(
            &server.url(),
            "unclaim",
            &Default::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let queue = QueueName::parse("q").unwrap();
        let mut ids = Vec::new();
        for _ in 0..4 {
            let new = NewTicket::for_test(queue.clone());
            ids.push(engine.submit(new).await.unwrap().ticket.id);
        }
        let inner = &engine.inner;
        let now = SystemTime::now();
        // Three popped by a claim that never leased them...
        let popped = inner.pop(&queue, 3, now).await.unwrap();
        assert_eq!(popped.len(), 3);
        // ...and one as a gateway before issue 21 parked it.
        let last: Vec<String> = inner
            .run(|| {
                let mut cmd = redis::cmd("ZPOPMIN");
                cmd.arg(inner.keys.ready(&queue));
                super::QueryKind::Cmd(cmd)
            })
            .await
            .unwrap();
        let old = last[0][24..].to_owned();
        assert_eq!(old, ids[3].to_string());
        let _: () = inner
            .run(|| {
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(inner.keys.claiming(&queue))
                    .arg(super::layout::millis(now))
                    .arg(&old);
                super::QueryKind::Cmd(cmd)
            })
            .await
            .unwrap();
        engine
            .set_limits(
                &queue,
                crate::domain::QueueLimits {
                    max_dispatch_per_second: 0,
                    burst: 0,
                    max_concurrent: 4,
                },
            )
            .await
            .unwrap();
        let session = SessionInfo::for_test(&queue);
        engine
            .open_session(&session, SystemTime::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let info = engine.queue_info(&queue).await.unwrap().unwrap();
        assert_eq!(info.counts.pending, 4, "parked tickets are still PENDING");
        // A fifth ticket waits: the four parked ones fill the limit.
        let fifth = NewTicket::for_test(queue.clone());
        engine.submit(fifth).await.unwrap();
        let sessions = vec![session.clone(); 4];
        assert!(engine.claim(&queue, &sessions).await.unwrap().is_empty());
        engine
            .run_timers(now + Duration::from_secs(5))
            .await
            .unwrap();
        let claimed = engine.claim(&queue, &sessions).await.unwrap();
        let mut got: Vec<TicketId> = claimed.iter().map(|c| c.ticket.id).collect();
        got.sort();
        ids.sort();
        assert_eq!(got, ids, "every parked ticket went back and was leased");
    }
}
