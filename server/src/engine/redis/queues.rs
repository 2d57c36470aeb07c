//! Queues as the admin API sees them: counts per state and the oldest
//! pending ticket (kept by `commit.lua` with every transition, so nothing
//! is scanned), and the pause that `claim.lua` obeys on every replica.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::bus;
use super::layout;
use super::store::QueryKind;
use super::{Inner, lock};
use crate::domain::queue::{Bucket, allowance};
use crate::domain::{QueueLimits, QueueName, QueuePause, QueueTarget, TicketState};
use crate::engine::record;
use crate::engine::{EngineError, QueueFlow, QueueInfo, StateCounts};

/// How long what holds a queue back (pause, limits, running count), as
/// read for waiting reasons, is reused: a submit's answer must not cost a
/// round trip more (dispatch itself obeys them in `claim.lua`, exactly).
const FLOW_TTL: Duration = Duration::from_secs(1);

/// What one pipeline reads of a queue: counts of finished tickets, the
/// oldest pending entry (member, score), the pause's fields, the limits
/// with the token bucket (rate, burst, conc, tokens, ts), how many tickets
/// are ready and being claimed, its statistics ring, and how many are
/// PENDING (the pending index) and RUNNING (the leased index).
type QueueFields = (
    HashMap<String, i64>,
    Vec<(String, u64)>,
    HashMap<String, String>,
    (
        Option<u32>,
        Option<u32>,
        Option<u32>,
        Option<f64>,
        Option<u64>,
    ),
    u64,
    Vec<String>,
    HashMap<String, u64>,
    u64,
    u64,
);

impl Inner {
    /// Every queue used so far, read one pipeline per queue (each queue is
    /// one hash slot), all at once.
    pub(super) async fn queues(&self) -> Result<Vec<QueueInfo>, EngineError> {
        // This replica's own counts first, so they show at once.
        self.flush_windows().await;
        let mut queues = self.known_queues().await?;
        queues.sort();
        let infos =
            futures::future::join_all(queues.iter().map(|queue| self.read_queue(queue))).await;
        infos.into_iter().collect()
    }

    /// One queue; `None` if it was never used.
    pub(super) async fn queue_info(
        &self,
        queue: &QueueName,
    ) -> Result<Option<QueueInfo>, EngineError> {
        let known: bool = self
            .run(|| {
                let mut cmd = redis::cmd("SISMEMBER");
                cmd.arg(self.keys.queues()).arg(queue.as_str());
                QueryKind::Cmd(cmd)
            })
            .await?;
        if !known {
            return Ok(None);
        }
        self.flush_windows().await;
        self.read_queue(queue).await.map(Some)
    }

    async fn read_queue(&self, queue: &QueueName) -> Result<QueueInfo, EngineError> {
        let now = SystemTime::now();
        let (counts, oldest, pause, limits, ready, claiming, window, pending, running): QueueFields = self
            .run(|| {
                let mut pipe = redis::pipe();
                pipe.hgetall(self.keys.counts(queue))
                    .zrange_withscores(self.keys.age(queue), 0, 0)
                    .hgetall(self.keys.pause(queue))
                    .cmd("HMGET")
                    .arg(self.keys.limits(queue))
                    .arg(&["rate", "burst", "conc", "tokens", "ts"][..])
                    .zcard(self.keys.ready(queue))
                    .zrange(self.keys.claiming(queue), 0, -1)
                    .hgetall(self.keys.window(queue))
                    .zcard(self.keys.age(queue))
                    .zcard(self.keys.leased(queue));
                QueryKind::Pipe(pipe)
            })
            .await?;
        let stats = super::windows::stats_of(&window, now);
        // Tickets being leased: each member of the claiming set names a
        // claim's tickets, joined by commas (see `claim.lua`).
        let claiming: u64 = claiming
            .iter()
            .map(|member| member.split(',').count() as u64)
            .sum();
        let mut state_counts = StateCounts::default();
        // The hash counts finished tickets; its PENDING and RUNNING fields,
        // kept by gateways before issue 21, are stale and read from the
        // indexes instead.
        for (name, count) in counts {
            if let Some(state) = TicketState::from_name(&name).filter(|s| s.is_terminal()) {
                *state_counts.get_mut(state) = u64::try_from(count).unwrap_or(0);
            }
        }
        state_counts.pending = pending;
        state_counts.running = running;
        let pause = pause_from(&pause);
        let (rate, burst, conc, tokens, stamp) = limits;
        let limits = QueueLimits {
            max_dispatch_per_second: rate.unwrap_or(0),
            burst: burst.unwrap_or(0),
            max_concurrent: conc.unwrap_or(0),
        };
        // As `claim.lua` reckons it: would a claim now get nothing?
        let held_back = if pause.is_none() && limits.any() && ready > 0 {
            let bucket = (limits.max_dispatch_per_second > 0).then(|| {
                let mut bucket = Bucket::full(&limits, now);
                if let (Some(tokens), Some(stamp)) = (tokens, stamp) {
                    bucket.tokens = tokens;
                    bucket.at = layout::time_of_millis(stamp);
                    bucket.refill(&limits, now);
                }
                bucket
            });
            let allowed = allowance(&limits, bucket.as_ref(), state_counts.running + claiming);
            if allowed == 0 { ready } else { 0 }
        } else {
            0
        };
        Ok(QueueInfo {
            queue: queue.clone(),
            counts: state_counts,
            oldest_pending_at: oldest
                .first()
                .map(|(_, ms)| layout::time_of_millis(*ms))
                .filter(|at| *at <= now),
            // Pending tickets neither ready nor being leased wait for a time.
            scheduled: pending.saturating_sub(ready + claiming),
            pause,
            limits,
            held_back,
            stats,
        })
    }

    /// Sets `queue`'s limits for every replica; the token bucket starts
    /// full. Announces the queue ready (looser limits may let tickets go).
    pub(super) async fn set_limits(
        &self,
        queue: &QueueName,
        limits: QueueLimits,
    ) -> Result<QueueInfo, EngineError> {
        self.register_queue(queue).await?;
        let key = self.keys.limits(queue);
        let _: () = self
            .run(|| {
                let mut pipe = redis::pipe();
                pipe.del(&key);
                if limits.any() {
                    pipe.hset_multiple(
                        &key,
                        &[
                            ("rate", limits.max_dispatch_per_second),
                            ("burst", limits.burst),
                            ("conc", limits.max_concurrent),
                        ],
                    );
                }
                QueryKind::Pipe(pipe)
            })
            .await?;
        // On its own: a pipeline is one slot's (Redis Cluster).
        let _: () = self
            .run(|| {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(&self.channel).arg(bus::ready(queue));
                QueryKind::Cmd(cmd)
            })
            .await?;
        let info = self.read_queue(queue).await?;
        self.remember_flow(&info);
        Ok(info)
    }

    /// What holds `queue` back, from this replica's cache if read within
    /// [`FLOW_TTL`].
    pub(super) async fn queue_flow(&self, queue: &QueueName) -> Result<QueueFlow, EngineError> {
        if let Some((read_at, flow)) = lock(&self.flows).get(queue)
            && read_at.elapsed() < FLOW_TTL
        {
            return Ok(flow.clone());
        }
        let info = self.read_queue(queue).await?;
        Ok(self.remember_flow(&info))
    }

    /// Caches what `info` says holds its queue back.
    fn remember_flow(&self, info: &QueueInfo) -> QueueFlow {
        let flow = QueueFlow {
            pause: info.pause.clone(),
            limits: info.limits,
            running: info.counts.running,
        };
        lock(&self.flows).insert(info.queue.clone(), (Instant::now(), flow.clone()));
        flow
    }

    /// Pauses or resumes `queue` for every replica; a resume announces the
    /// queue ready on the event channel, so every replica claims again.
    pub(super) async fn set_pause(
        &self,
        queue: &QueueName,
        pause: Option<QueuePause>,
    ) -> Result<QueueInfo, EngineError> {
        self.register_queue(queue).await?;
        let key = self.keys.pause(queue);
        let _: () = match &pause {
            Some(pause) => {
                self.run(|| {
                    let mut pipe = redis::pipe();
                    pipe.del(&key).hset_multiple(
                        &key,
                        &[
                            ("by", pause.by.clone()),
                            ("at", layout::millis(pause.at).to_string()),
                            ("reason", pause.reason.clone()),
                        ],
                    );
                    QueryKind::Pipe(pipe)
                })
                .await?
            }
            None => {
                self.run(|| {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(&key);
                    QueryKind::Cmd(cmd)
                })
                .await?
            }
        };
        if pause.is_none() {
            let _: () = self
                .run(|| {
                    let mut cmd = redis::cmd("PUBLISH");
                    cmd.arg(&self.channel).arg(bus::ready(queue));
                    QueryKind::Cmd(cmd)
                })
                .await?;
        }
        let info = self.read_queue(queue).await?;
        self.remember_flow(&info);
        Ok(info)
    }
}

/// A pause read back from its hash; `None` when the queue is not paused.
impl Inner {
    /// Sets or clears `queue`'s admin-set target for every replica (each
    /// reads them all within a second).
    pub(super) async fn set_target(
        &self,
        queue: &QueueName,
        target: Option<QueueTarget>,
    ) -> Result<(), EngineError> {
        if target.is_some() {
            self.register_queue(queue).await?;
        }
        let key = self.keys.targets();
        let stored = target.as_ref().map(record::encode_target);
        self.run(|| {
            let mut cmd = redis::cmd(if stored.is_some() { "HSET" } else { "HDEL" });
            cmd.arg(&key).arg(queue.as_str());
            if let Some(stored) = &stored {
                cmd.arg(stored.as_slice());
            }
            QueryKind::Cmd(cmd)
        })
        .await
        .map(|_: i64| ())
    }

    /// Every admin-set target, by queue name.
    pub(super) async fn targets(&self) -> Result<Vec<(QueueName, QueueTarget)>, EngineError> {
        let stored: HashMap<String, Vec<u8>> = self
            .run(|| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.targets());
                QueryKind::Cmd(cmd)
            })
            .await?;
        let mut targets = stored
            .into_iter()
            .map(|(name, bytes)| {
                let queue = QueueName::parse_scoped(&name).map_err(|e| {
                    EngineError::internal(format!("stored target of queue {name:?}: {e}"))
                })?;
                let target = record::decode_target(&bytes).map_err(|e| {
                    EngineError::internal(format!("stored target of queue {name:?}: {e}"))
                })?;
                Ok((queue, target))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(targets)
    }
}

fn pause_from(fields: &HashMap<String, String>) -> Option<QueuePause> {
    let at = fields.get("at")?.parse::<u64>().ok()?;
    Some(QueuePause {
        by: fields.get("by").cloned().unwrap_or_default(),
        at: layout::time_of_millis(at),
        reason: fields.get("reason").cloned().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use super::super::connect;
    use crate::domain::{NewTicket, QueueName, QueuePause, SessionId, TicketId};
    use crate::engine::{
        Engine, EngineConfig, EngineListener, Revocation, SessionInfo, TicketChange,
    };

    /// Hears which queues a replica is told are ready.
    #[derive(Default)]
    struct Ready {
        queues: Mutex<Vec<QueueName>>,
        told: tokio::sync::Notify,
    }

    impl EngineListener for Ready {
        fn watching(&self, _: TicketId) -> bool {
            false
        }
        fn ticket_changed(&self, _: TicketChange) {}
        fn queue_ready(&self, queue: &QueueName) {
            self.queues.lock().unwrap().push(queue.clone());
            self.told.notify_waiters();
        }
        fn lease_revoked(&self, _: Revocation) {}
    }

    /// Two replicas on one Redis: a pause set through A stops B's claims
    /// at once (claim.lua reads it), and a resume through A tells B the
    /// queue is ready, so B's workers get its tickets.
    #[tokio::test]
    async fn a_pause_on_one_replica_holds_on_another() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let url = server.url();
        let tls = super::super::RedisTls::default();
        let replica = || connect(&url, "pause", &tls, EngineConfig::default());
        let (a, b) = (replica().await.unwrap(), replica().await.unwrap());
        let heard = Arc::new(Ready::default());
        b.set_listener(heard.clone());
        let queue = QueueName::parse("q").unwrap();
        let id = a
            .submit(NewTicket::for_test(queue.clone()))
            .await
            .unwrap()
            .ticket
            .id;
        let pause = QueuePause {
            by: "ops".into(),
            at: SystemTime::now(),
            reason: "downstream is down".into(),
        };
        a.set_pause(&queue, Some(pause)).await.unwrap();
        let session = SessionInfo {
            session_id: SessionId::new(),
            worker_name: "on-b".into(),
            queues: Arc::from([queue.clone()]),
        };
        b.open_session(&session, SystemTime::now() + Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            b.claim(&queue, std::slice::from_ref(&session))
                .await
                .unwrap()
                .is_empty()
        );
        let seen_by_b = b.queue_info(&queue).await.unwrap().unwrap();
        assert_eq!(seen_by_b.pause.unwrap().reason, "downstream is down");

        a.set_pause(&queue, None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let told = heard.told.notified();
                if heard.queues.lock().unwrap().contains(&queue) {
                    return;
                }
                told.await;
            }
        })
        .await
        .expect("B hears that the queue is ready again");
        let claimed = b
            .claim(&queue, std::slice::from_ref(&session))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].ticket.id, id);
    }

    /// Counts left by gateways before issue 21 (a `pending` counter, and
    /// PENDING and RUNNING fields in the counts hash, which they kept with
    /// every transition) are not read: the pending and leased indexes say
    /// how many tickets wait and run, and the pending limit holds on the
    /// index. Tickets stored then load and finish as before (their records
    /// and index entries are unchanged).
    #[tokio::test]
    async fn counts_come_from_the_indexes_not_from_older_counters() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let config = EngineConfig {
            max_pending_per_queue: 3,
            ..EngineConfig::default()
        };
        let engine = connect(&server.url(), "old", &Default::default(), config)
            .await
            .unwrap();
        let queue = QueueName::parse("q").unwrap();
        let new = || NewTicket::for_test(queue.clone());
        for _ in 0..3 {
            engine.submit(new()).await.unwrap();
        }
        let session = SessionInfo::for_test(&queue);
        engine
            .open_session(&session, SystemTime::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let claimed = engine
            .claim(&queue, std::slice::from_ref(&session))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        // What an older gateway would have left behind.
        let inner = &engine.inner;
        let _: () = inner
            .run(|| {
                let mut pipe = redis::pipe();
                pipe.hset_multiple(
                    inner.keys.counts(&queue),
                    &[("pending", 40), ("running", 9)],
                )
                .ignore()
                .set(format!("{}:pending", inner.keys.tag(&queue)), 40)
                .ignore();
                super::QueryKind::Pipe(pipe)
            })
            .await
            .unwrap();
        let info = engine.queue_info(&queue).await.unwrap().unwrap();
        assert_eq!((info.counts.pending, info.counts.running), (2, 1));
        // The limit counts the index (2 pending + 1 = 3), not the counter.
        engine.submit(new()).await.unwrap();
        assert!(matches!(
            engine.submit(new()).await,
            Err(crate::engine::EngineError::QueueFull { .. })
        ));
        let done = engine
            .complete(
                claimed[0].ticket.id,
                claimed[0].lease.lease_id,
                crate::domain::Outcome::Success(Default::default()),
            )
            .await
            .unwrap();
        assert!(matches!(done, crate::engine::Completion::Recorded(_)));
        let info = engine.queue_info(&queue).await.unwrap().unwrap();
        assert_eq!(
            (
                info.counts.pending,
                info.counts.running,
                info.counts.succeeded
            ),
            (3, 0, 1)
        );
    }
}
