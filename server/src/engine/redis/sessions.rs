//! Worker sessions, and what a session reports under its leases.
//!
//! A session's expiry is a score in the sessions set (and in each of its
//! queues' worker sets), pushed forward while the worker is connected. The
//! leases handed out here are kept in `Inner::leases` ([`Held`]) so that a
//! worker's reports on a lease skip a read and run in the order sent:
//! progress and output chunks, the result, a release. A session that ends,
//! here or by expiring (see `timers.rs`), loses its leases: its tickets go
//! back to their queues.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use redis::Cmd;
use tokio::sync::oneshot;

use super::codec::{Ops, chunk_bytes};
use super::layout::{self, slot};
use super::store::QueryKind;
use super::{Inner, Step, Stored, lock};
use crate::domain::ticket::EventKind;
use crate::domain::{Chunk, LeaseId, Outcome, QueueName, SessionId, TicketId};
use crate::engine::{
    Applied, Completion, EngineError, ProgressReport, ReleaseReason, SessionInfo, transition,
};

impl Inner {
    /// Registers `session` until `expires_at` (never shortens it).
    pub(super) async fn open_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        lock(&self.session_workers)
            .entry(session.session_id)
            .or_insert_with(|| session.queues.clone());
        let cmds = self.session_scores(session, expires_at, false);
        self.batch(cmds).await.map(drop)
    }

    /// Renews a session still registered, and only then: `XX` never adds
    /// one that a timer pass (here or on another replica) expired and
    /// cleaned up, whose `session_queues` set is gone. Reviving it would
    /// let this replica lease to it under that missing set, and those
    /// leases would never be given back when it ends.
    pub(super) async fn touch_session(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        let mut cmds = vec![Cmd::zscore(
            self.keys.sessions(),
            session.session_id.to_string(),
        )];
        cmds.extend(self.session_scores(session, expires_at, true));
        let replies = self.batch(cmds).await?;
        let score = replies
            .first()
            .and_then(|reply| redis::from_redis_value_ref::<Option<f64>>(reply).ok())
            .flatten();
        let now_ms = layout::millis(SystemTime::now()) as f64;
        match score {
            Some(expires) if expires > now_ms => Ok(()),
            _ => Err(EngineError::SessionLost(session.session_id)),
        }
    }

    /// `ZADD … GT` of the session's expiry in the session set (`XX` with
    /// `renew`: only if still there) and in each of its queues' worker sets.
    fn session_scores(
        &self,
        session: &SessionInfo,
        expires_at: SystemTime,
        renew: bool,
    ) -> Vec<Cmd> {
        let expires = layout::millis_ceil(expires_at);
        let member = session.session_id.to_string();
        let mut cmds = Vec::with_capacity(session.queues.len() + 1);
        let mut sessions = redis::cmd("ZADD");
        sessions.arg(self.keys.sessions());
        if renew {
            sessions.arg("XX");
        }
        sessions.arg("GT").arg(expires).arg(&member);
        cmds.push(sessions);
        for queue in session.queues.iter() {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(self.keys.workers(queue))
                .arg("GT")
                .arg(expires)
                .arg(&member);
            cmds.push(cmd);
        }
        cmds
    }

    /// Ends `session_id`: its leases are lost, its tickets requeued.
    pub(super) async fn end_session(&self, session_id: SessionId) -> Result<(), EngineError> {
        let ready = self.lose_session(session_id).await?;
        let served = lock(&self.session_workers).remove(&session_id);
        let mut cmds = vec![
            Cmd::zrem(self.keys.sessions(), session_id.to_string()),
            Cmd::del(self.keys.session_queues(session_id)),
            Cmd::del(self.keys.worker(session_id)),
        ];
        for queue in served.iter().flat_map(|queues| queues.iter()) {
            cmds.push(Cmd::zrem(self.keys.workers(queue), session_id.to_string()));
        }
        self.batch(cmds).await?;
        self.forget_session(session_id);
        for queue in ready {
            self.notify_ready(&queue);
        }
        Ok(())
    }

    /// Records a progress report, after any earlier report on its lease.
    pub(super) fn progress(self: &Arc<Self>, report: ProgressReport) -> Applied<()> {
        let inner = self.clone();
        let (previous, done) = inner.sequence(report.lease_id);
        Box::pin(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let result = inner.record_progress(report).await;
            drop(done);
            result
        })
    }

    /// Records a result, after any earlier report on its lease.
    pub(super) fn complete(
        self: &Arc<Self>,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> Applied<Completion> {
        let inner = self.clone();
        let (previous, done) = inner.sequence(lease_id);
        Box::pin(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let result = inner.record_completion(ticket_id, lease_id, outcome).await;
            drop(done);
            result
        })
    }

    /// Gives a lease back without a result; a ticket that goes back to its
    /// queue is announced.
    pub(super) async fn release(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        reason: ReleaseReason,
    ) -> Result<(), EngineError> {
        let (queue, hint) = match self.held(lease_id) {
            Some(held) => held,
            None => (self.locate(ticket_id).await?, None),
        };
        let requeued = self
            .give_back(&queue, ticket_id, hint, lease_id, reason)
            .await?;
        lock(self.lease_shard(&lease_id)).remove(&lease_id);
        if requeued {
            self.notify_ready(&queue);
        }
        Ok(())
    }

    /// Gives lease `lease_id` of ticket `id` back without a result; true
    /// when the ticket is queued again. A lease that is not current is
    /// left alone.
    pub(super) async fn give_back(
        &self,
        queue: &QueueName,
        id: TicketId,
        hint: Option<Stored>,
        lease_id: LeaseId,
        reason: ReleaseReason,
    ) -> Result<bool, EngineError> {
        let config = &self.config;
        let (requeued, _) = self
            .transact(queue, id, hint, |ticket| {
                if transition::lose_lease(ticket, lease_id, reason, config, SystemTime::now()) {
                    Ok(Step::write(
                        !ticket.state.is_terminal(),
                        vec![(EventKind::State, ticket.clone(), None)],
                    ))
                } else {
                    Ok(Step::Keep(false))
                }
            })
            .await?;
        Ok(requeued)
    }

    /// Loses every lease `session_id` holds (its worker is gone).
    pub(super) async fn lose_session(
        &self,
        session_id: SessionId,
    ) -> Result<BTreeSet<QueueName>, EngineError> {
        let queues: Vec<String> = self
            .run(|| {
                let mut cmd = redis::cmd("SMEMBERS");
                cmd.arg(self.keys.session_queues(session_id));
                QueryKind::Cmd(cmd)
            })
            .await?;
        let mut ready = BTreeSet::new();
        for queue in queues
            .iter()
            .filter_map(|q| QueueName::parse_scoped(q).ok())
        {
            let (min, max) = layout::leased_range(session_id);
            let members: Vec<String> = self
                .run(|| {
                    let mut cmd = redis::cmd("ZRANGEBYLEX");
                    cmd.arg(self.keys.leased(&queue)).arg(&min).arg(&max);
                    QueryKind::Cmd(cmd)
                })
                .await?;
            for member in members {
                let Some(id) = member
                    .split_once(':')
                    .and_then(|(_, id)| id.parse::<uuid::Uuid>().ok())
                    .map(TicketId)
                else {
                    continue;
                };
                let config = &self.config;
                let outcome = self
                    .transact(&queue, id, None, |ticket| {
                        let Some(lease) =
                            ticket.lease.clone().filter(|l| l.session_id == session_id)
                        else {
                            return Ok(Step::Keep(()));
                        };
                        transition::lose_lease(
                            ticket,
                            lease.lease_id,
                            ReleaseReason::WorkerLost,
                            config,
                            SystemTime::now(),
                        );
                        Ok(Step::write(
                            (),
                            vec![(EventKind::State, ticket.clone(), None)],
                        ))
                    })
                    .await;
                match outcome {
                    Ok(_) => {
                        ready.insert(queue.clone());
                    }
                    Err(EngineError::NotFound(_) | EngineError::ResultExpired { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(ready)
    }

    /// Drops what this replica keeps about `session_id`'s leases.
    pub(super) fn forget_session(&self, session_id: SessionId) {
        for shard in self.leases.iter() {
            lock(shard).retain(|_, held| held.session_id != session_id);
        }
        lock(&self.session_queues).retain(|(s, _)| *s != session_id);
    }

    /// The queue and latest known state of a lease handed out here.
    fn held(&self, lease_id: LeaseId) -> Option<(QueueName, Option<Stored>)> {
        lock(self.lease_shard(&lease_id))
            .get(&lease_id)
            .map(|held| (held.queue.clone(), held.latest.clone()))
    }

    /// Serialises reports on one lease in call order: the returned receiver
    /// resolves once the previous report is done; drop the sender when done.
    fn sequence(&self, lease_id: LeaseId) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        let (done, next) = oneshot::channel();
        let previous = lock(self.lease_shard(&lease_id))
            .get_mut(&lease_id)
            .and_then(|held| held.tail.replace(next));
        (previous, done)
    }

    /// Records progress and output under a lease (see [`Self::progress`]).
    async fn record_progress(&self, report: ProgressReport) -> Result<(), EngineError> {
        let lease_id = report.lease_id;
        let max_output_bytes = self.config.max_output_bytes_per_ticket;
        let (queue, hint) = match self.held(lease_id) {
            Some(held) => held,
            None => (self.locate(report.ticket_id).await?, None),
        };
        let (_, stored) = self
            .transact(&queue, report.ticket_id, hint, |ticket| {
                transition::check_lease(ticket, lease_id)?;
                let now = SystemTime::now();
                let mut events = Vec::new();
                let mut extra = Ops::default();
                if let Some(progress) = &report.progress {
                    ticket.progress = Some(progress.clone());
                    ticket.touch(now);
                    events.push((EventKind::Progress, ticket.clone(), None));
                }
                if let Some(output) = &report.output {
                    transition::spend_output(ticket, output, max_output_bytes)?;
                    ticket.touch(now);
                    let chunk = Chunk {
                        seq: ticket.seq,
                        output: output.clone(),
                    };
                    extra.push(
                        "llenmax",
                        &[
                            &Ops::slot(slot::CHUNKS),
                            transition::MAX_CHUNKS_PER_TICKET.to_string().as_bytes(),
                        ],
                    );
                    extra.push("rpush", &[&Ops::slot(slot::CHUNKS), &chunk_bytes(&chunk)]);
                    events.push((EventKind::Output, ticket.clone(), Some(output.clone())));
                }
                if events.is_empty() {
                    return Ok(Step::Keep(()));
                }
                Ok(Step::Write {
                    result: (),
                    events,
                    revoke: None,
                    extra,
                })
            })
            .await?;
        if let Some(held) = lock(self.lease_shard(&lease_id)).get_mut(&lease_id) {
            held.latest = stored;
        }
        Ok(())
    }

    /// Records a result under a lease (see [`Self::complete`]).
    async fn record_completion(
        &self,
        ticket_id: TicketId,
        lease_id: LeaseId,
        outcome: Outcome,
    ) -> Result<Completion, EngineError> {
        let (queue, hint) = match self.held(lease_id) {
            Some(held) => held,
            None => (self.locate(ticket_id).await?, None),
        };
        let config = &self.config;
        let result = self
            .transact(
                &queue,
                ticket_id,
                hint,
                |ticket| match transition::complete(
                    ticket,
                    lease_id,
                    outcome.clone(),
                    config,
                    SystemTime::now(),
                )? {
                    transition::Reported::Duplicate => {
                        Ok(Step::Keep(Completion::Duplicate(ticket.clone())))
                    }
                    transition::Reported::Recorded => Ok(Step::write(
                        Completion::Recorded(ticket.clone()),
                        vec![(EventKind::State, ticket.clone(), None)],
                    )),
                },
            )
            .await;
        if !matches!(&result, Err(error) if error.is_transient()) {
            lock(self.lease_shard(&lease_id)).remove(&lease_id);
        }
        result.map(|(completion, _)| completion)
    }
}
