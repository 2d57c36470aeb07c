//! Round trips to Redis, and what every phase builds on: running a command
//! or pipeline (loading the scripts again when a restarted Redis forgot
//! them), turning Redis errors into [`EngineError`]s without leaking
//! internals, reading tickets, and the optimistic-concurrency loop
//! ([`Inner::transact`]) every transition goes through, deletes included.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

use super::codec::{Ops, Section};
use super::layout;
use super::{Inner, Step, Stored};
use crate::domain::{QueueName, Ticket, TicketId};
use crate::engine::{
    EngineError, ErrorId, StoreError, StoreErrorKind, idempotency_scope, transition,
};

/// Attempts at a transition that keeps losing the revision race.
const MAX_RETRIES: usize = 64;

/// A command or a pipeline, rebuilt for each try.
pub(super) enum QueryKind {
    /// One command.
    Cmd(Cmd),
    /// A pipeline (its commands share a slot).
    Pipe(redis::Pipeline),
}

/// Whether Redis refused a script call because it does not know the script.
fn is_no_script(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

impl Inner {
    /// A Redis failure as callers see it: its kind and what to do, no
    /// internals. The detail, with the URL's password hidden, is logged at
    /// most once a second, under an error id that the failures of that
    /// second share, so each id a client reports leads to a log line.
    pub(super) fn unavailable(&self, error: RedisError) -> EngineError {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.unavailable_logged.load(Ordering::Relaxed);
        let detail = crate::config::hide_password(&error.to_string());
        let id = if now.saturating_sub(last) >= 1000
            && self
                .unavailable_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let id = ErrorId::new();
            self.unavailable_id.store(id.bits(), Ordering::Relaxed);
            tracing::warn!(url = %self.url, error_id = %id, error = %detail, "Redis call failed; failures in the next second share this error id");
            id
        } else {
            ErrorId::from_bits(self.unavailable_id.load(Ordering::Relaxed))
        };
        let (kind, hint) = if error.code() == Some("OOM") {
            (
                StoreErrorKind::Full,
                "Redis is at its maxmemory; writes fail until tickets finish or memory is added",
            )
        } else if error.is_connection_refusal() {
            (
                StoreErrorKind::Unavailable,
                "Redis refused the connection; retry shortly",
            )
        } else if error.is_timeout() {
            (
                StoreErrorKind::Unavailable,
                "Redis did not answer in time; retry shortly",
            )
        } else if error.is_io_error() || error.is_connection_dropped() {
            (
                StoreErrorKind::Unavailable,
                "the connection to Redis was lost; retry shortly",
            )
        } else {
            (
                StoreErrorKind::Unavailable,
                "Redis refused the command; retry shortly",
            )
        };
        EngineError::Store(
            StoreError::new(kind, hint)
                .with_source(std::io::Error::other(detail))
                .with_id(id),
        )
    }

    /// The error for a ticket whose record cannot be read (logged here).
    pub(super) fn corrupt(&self, id: TicketId, error: impl std::fmt::Display) -> EngineError {
        let corrupt = StoreError::corrupt(format!(
            "ticket {id}'s record in Redis is unreadable; the gateway's log has the detail"
        ));
        tracing::error!(url = %self.url, ticket_id = %id, error_id = %corrupt.id(), %error, "unreadable ticket record in Redis");
        EngineError::Store(corrupt)
    }

    /// Runs a command or pipeline, loading the scripts again if Redis lost
    /// them (a restart): every script call in it failed, so a retry is safe.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        query: impl Fn() -> QueryKind,
    ) -> Result<T, EngineError> {
        let mut conn = self.conn.clone();
        for _ in 0..2 {
            let result = match query() {
                QueryKind::Cmd(cmd) => cmd.query_async(&mut conn).await,
                // Redis refuses an empty pipeline; its answer is empty.
                QueryKind::Pipe(pipe) if pipe.is_empty() => {
                    T::from_redis_value(Value::Array(Vec::new())).map_err(RedisError::from)
                }
                QueryKind::Pipe(pipe) => pipe.query_async(&mut conn).await,
            };
            match result {
                Err(error) if is_no_script(&error) => self.reload_scripts().await?,
                other => return other.map_err(|e| self.unavailable(e)),
            }
        }
        Err(self.forgetful())
    }

    /// Runs independent commands of any slots (see `Conn::batch`).
    pub(super) async fn batch(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, EngineError> {
        for _ in 0..2 {
            match self.conn.batch(&cmds).await {
                Err(error) if is_no_script(&error) => self.reload_scripts().await?,
                other => return other.map_err(|e| self.unavailable(e)),
            }
        }
        Err(self.forgetful())
    }

    /// [`Self::batch`] with every reply read as `T`.
    pub(super) async fn batch_typed<T: redis::FromRedisValue>(
        &self,
        cmds: Vec<Cmd>,
    ) -> Result<Vec<T>, EngineError> {
        self.batch(cmds)
            .await?
            .into_iter()
            .map(|value| {
                redis::from_redis_value(value).map_err(|e| self.unavailable(RedisError::from(e)))
            })
            .collect()
    }

    /// Loads the scripts again (a restarted Redis forgot them).
    async fn reload_scripts(&self) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        for script in self.scripts.all() {
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        Ok(())
    }

    /// The error when scripts are lost again right after loading them.
    fn forgetful(&self) -> EngineError {
        tracing::error!(url = %self.url, "Redis keeps forgetting the gateway's scripts");
        EngineError::unavailable(
            "the store (Redis) keeps forgetting the gateway's scripts; retry shortly",
        )
    }

    /// Every queue ever used (they register on first submit).
    pub(super) async fn known_queues(&self) -> Result<Vec<QueueName>, EngineError> {
        let names: Vec<String> = self
            .run(|| {
                let mut cmd = redis::cmd("SMEMBERS");
                cmd.arg(self.keys.queues());
                QueryKind::Cmd(cmd)
            })
            .await?;
        Ok(names
            .iter()
            .filter_map(|name| QueueName::parse_scoped(name).ok())
            .collect())
    }

    /// The queue of ticket `id`, or why there is no such ticket.
    pub(super) async fn locate(&self, id: TicketId) -> Result<QueueName, EngineError> {
        if let Some(queue) = self.located.get(id) {
            return Ok(queue);
        }
        let (queue, tombstone): (Option<String>, Option<u64>) = self
            .run(|| {
                let mut pipe = redis::pipe();
                pipe.get(self.keys.locator(id)).get(self.keys.tombstone(id));
                QueryKind::Pipe(pipe)
            })
            .await?;
        match queue {
            Some(queue) => {
                let queue = QueueName::parse_scoped(&queue).map_err(|e| self.corrupt(id, e))?;
                self.located.insert(id, &queue);
                Ok(queue)
            }
            None => Err(transition::missing(
                id,
                tombstone.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            )),
        }
    }

    /// The error for a ticket whose record is gone.
    pub(super) async fn gone(&self, id: TicketId) -> EngineError {
        let tombstone: Result<Option<u64>, _> = self
            .run(|| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.keys.tombstone(id));
                QueryKind::Cmd(cmd)
            })
            .await;
        match tombstone {
            Ok(at) => transition::missing(
                id,
                at.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            ),
            Err(error) => error,
        }
    }

    /// Ticket `id` of `queue` as stored; `None` if it has no record.
    pub(super) async fn load(
        &self,
        queue: &QueueName,
        id: TicketId,
    ) -> Result<Option<Stored>, EngineError> {
        let fields = self
            .run(|| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.keys.ticket(queue, id)).arg(&["v", "d", "p"]);
                QueryKind::Cmd(cmd)
            })
            .await?;
        self.decode(id, fields)
    }

    /// Applies `step` to ticket `id` of `queue` with optimistic concurrency:
    /// read (or take `hint`), compute, commit if the revision is unchanged,
    /// else read again. Returns the result and the ticket as written.
    pub(super) async fn transact<R>(
        &self,
        queue: &QueueName,
        id: TicketId,
        mut hint: Option<Stored>,
        mut step: impl FnMut(&mut Ticket) -> Result<Step<R>, EngineError>,
    ) -> Result<(R, Option<Stored>), EngineError> {
        for _ in 0..MAX_RETRIES {
            let stored = match hint.take() {
                Some(stored) => stored,
                None => match self.load(queue, id).await? {
                    Some(stored) => stored,
                    None => return Err(self.gone(id).await),
                },
            };
            let mut after = stored.ticket.clone();
            match step(&mut after)? {
                Step::Keep(result) => return Ok((result, Some(stored))),
                Step::Delete { result, at } => {
                    if self.delete(&stored, at).await? {
                        return Ok((result, None));
                    }
                }
                Step::Write {
                    result,
                    events,
                    revoke,
                    extra,
                } => {
                    let section =
                        self.commit_section(&stored, &mut after, &events, revoke.as_ref(), extra);
                    let reply = self.commit(queue, section, Vec::new(), Vec::new()).await?;
                    match reply.as_slice() {
                        [1, revision] => {
                            let revision = *revision as u64;
                            self.observe(&stored.ticket, &after);
                            return Ok((
                                result,
                                Some(Stored {
                                    ticket: after,
                                    revision,
                                }),
                            ));
                        }
                        [-3] => return Err(transition::too_many_chunks(id)),
                        _ => {}
                    }
                }
            }
        }
        Err(EngineError::unavailable(format!(
            "ticket {id} changed {MAX_RETRIES} times while this replica tried to update it; retry"
        )))
    }

    /// Deletes a finished ticket, leaving a tombstone dated `at`; false
    /// when it changed since it was read.
    async fn delete(&self, stored: &Stored, at: SystemTime) -> Result<bool, EngineError> {
        let ticket = &stored.ticket;
        let id = ticket.id;
        let tombstone_ms = layout::millis(at);
        let ttl = self.config.tombstone_retention.as_millis().max(1) as u64;
        let mut ops = Ops::default();
        self.diff(Some(ticket), None, &mut ops);
        let section = Section {
            id,
            revision: stored.revision,
            record: Vec::new(),
            ops,
        };
        let _: () = self
            .run(|| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.keys.tombstone(id))
                    .arg(tombstone_ms)
                    .arg("PX")
                    .arg(ttl);
                QueryKind::Cmd(cmd)
            })
            .await?;
        let reply = self
            .commit(&ticket.queue, section, Vec::new(), Vec::new())
            .await?;
        if reply.first() != Some(&1) {
            let _: () = self
                .run(|| {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(self.keys.tombstone(id));
                    QueryKind::Cmd(cmd)
                })
                .await?;
            return Ok(false);
        }
        let mut cleanup = vec![Cmd::del(self.keys.locator(id))];
        if let Some(key) = &ticket.idempotency_key {
            let key = idempotency_scope(ticket.tenant.as_deref(), key);
            cleanup.push(self.evalsha(
                &self.scripts.unlink_if,
                &[self.keys.idempotency(&key)],
                vec![id.to_string().into_bytes()],
            ));
        }
        self.batch(cleanup).await?;
        Ok(true)
    }

    /// Removes `member` from the sorted set at `key`.
    pub(super) async fn zrem(&self, key: String, member: &str) -> Result<(), EngineError> {
        self.run(|| {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(&key).arg(member);
            QueryKind::Cmd(cmd)
        })
        .await
    }
}
