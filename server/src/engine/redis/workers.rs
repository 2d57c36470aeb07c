//! Connected workers as every replica lists them: each replica keeps a hash
//! per session it serves (`w:{session}`: name, queues, address, replica,
//! times, drain) that expires with the session unless renewed, and the
//! tickets a session holds are read from its queues' leased sets. An
//! operator's drain reaches the replica holding the stream over the bus.

use std::collections::HashMap;
use std::time::SystemTime;

use super::layout;
use super::store::QueryKind;
use super::{Inner, bus};
use crate::domain::{QueueName, SessionId, TicketId};
use crate::engine::{EngineError, SessionInfo, WorkerRecord};

impl Inner {
    /// Writes (or rewrites) `worker`'s hash; it lives until `expires_at`
    /// unless written again.
    pub(super) async fn register_worker(
        &self,
        worker: &WorkerRecord,
        expires_at: SystemTime,
    ) -> Result<(), EngineError> {
        let key = self.keys.worker(worker.session_id);
        let queues: Vec<&str> = worker.queues.iter().map(QueueName::as_str).collect();
        let fields = [
            ("name", worker.worker_name.clone()),
            ("queues", queues.join(",")),
            ("peer", worker.peer.clone().unwrap_or_default()),
            ("max_in_flight", worker.max_in_flight.to_string()),
            (
                "connected_at",
                layout::millis(worker.connected_at).to_string(),
            ),
            (
                "last_heard_at",
                layout::millis(worker.last_heard_at).to_string(),
            ),
            ("replica", worker.replica.clone()),
            ("draining", u8::from(worker.draining).to_string()),
        ];
        self.run(|| {
            let mut pipe = redis::pipe();
            pipe.hset_multiple(&key, &fields)
                .pexpire_at(&key, layout::millis(expires_at) as i64);
            QueryKind::Pipe(pipe)
        })
        .await
    }

    /// Every registered worker of a live session.
    pub(super) async fn workers(&self) -> Result<Vec<WorkerRecord>, EngineError> {
        let now = layout::millis(SystemTime::now());
        let sessions: Vec<String> = self
            .run(|| {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(self.keys.sessions()).arg(now).arg("+inf");
                QueryKind::Cmd(cmd)
            })
            .await?;
        let ids: Vec<SessionId> = sessions
            .iter()
            .filter_map(|s| s.parse::<uuid::Uuid>().ok().map(SessionId))
            .collect();
        let hashes = futures::future::join_all(ids.iter().map(|id| {
            self.run::<HashMap<String, String>>(|| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.worker(*id));
                QueryKind::Cmd(cmd)
            })
        }))
        .await;
        let mut workers = Vec::with_capacity(ids.len());
        for (id, fields) in ids.into_iter().zip(hashes) {
            if let Some(worker) = worker_from(id, &fields?) {
                workers.push(worker);
            }
        }
        Ok(workers)
    }

    /// The tickets `session` holds, from its queues' leased sets.
    pub(super) async fn session_tickets(
        &self,
        session: &SessionInfo,
    ) -> Result<Vec<TicketId>, EngineError> {
        let (min, max) = layout::leased_range(session.session_id);
        let per_queue = futures::future::join_all(session.queues.iter().map(|queue| {
            self.run::<Vec<String>>(|| {
                let mut cmd = redis::cmd("ZRANGEBYLEX");
                cmd.arg(self.keys.leased(queue)).arg(&min).arg(&max);
                QueryKind::Cmd(cmd)
            })
        }))
        .await;
        let mut tickets = Vec::new();
        for members in per_queue {
            tickets.extend(members?.iter().filter_map(|member| {
                member
                    .split_once(':')
                    .and_then(|(_, id)| id.parse::<uuid::Uuid>().ok())
                    .map(TicketId)
            }));
        }
        tickets.sort();
        Ok(tickets)
    }

    /// Tells every replica (the one holding the stream acts) to drain
    /// `session_id`.
    pub(super) async fn request_drain(
        &self,
        session_id: SessionId,
        by: &str,
    ) -> Result<(), EngineError> {
        self.run(|| {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(&self.channel).arg(bus::drain(session_id, by));
            QueryKind::Cmd(cmd)
        })
        .await
    }
}

/// A worker read back from its hash; `None` if it is gone or malformed.
fn worker_from(session_id: SessionId, fields: &HashMap<String, String>) -> Option<WorkerRecord> {
    let millis = |name: &str| {
        fields
            .get(name)?
            .parse::<u64>()
            .ok()
            .map(layout::time_of_millis)
    };
    Some(WorkerRecord {
        session_id,
        worker_name: fields.get("name")?.clone(),
        queues: fields
            .get("queues")?
            .split(',')
            .filter_map(|q| QueueName::parse_scoped(q).ok())
            .collect(),
        peer: fields.get("peer").filter(|p| !p.is_empty()).cloned(),
        max_in_flight: fields.get("max_in_flight")?.parse().ok()?,
        connected_at: millis("connected_at")?,
        last_heard_at: millis("last_heard_at")?,
        replica: fields.get("replica").cloned().unwrap_or_default(),
        draining: fields.get("draining").is_some_and(|d| d == "1"),
    })
}
