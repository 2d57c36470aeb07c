//! The producer's writes: submit, and cancel.
//!
//! A submit with an idempotency key first claims the key in Redis (`SET NX`
//! naming the ticket and this gateway), so two submits with one key store
//! one ticket. A claim whose gateway died before storing its ticket is
//! taken over; whether a gateway lives is its liveness key, which
//! `open.rs`'s heartbeat refreshes through [`Inner::refresh_liveness`].

use std::time::{Duration, SystemTime};

use prost::Message;
use redis::Cmd;

use super::codec::{Ops, Section};
use super::layout::{self, Placement, slot};
use super::store::QueryKind;
use super::{Inner, Step};
use crate::domain::ticket::EventKind;
use crate::domain::{NewTicket, QueueName, Ticket, TicketId};
use crate::engine::{
    Before, EngineError, Revocation, RevokeReason, Submitted, idempotency_scope, record, transition,
};

/// How long a submit with an idempotency key may hold the key before its
/// ticket is stored (a replica that dies in between frees it after this).
const IDEMPOTENCY_CLAIM: Duration = Duration::from_secs(60);

/// How long a gateway's liveness key outlives its last refresh: a claim
/// on an idempotency key by a gateway whose key is gone is taken over.
const INSTANCE_TTL: Duration = Duration::from_secs(3);

/// Takes over an idempotency claim only if it still holds what the caller
/// saw: `KEYS[1]` claim, `ARGV[1]` old value, `ARGV[2]` new value,
/// `ARGV[3]` expiry in ms.
const TAKE_OVER_CLAIM: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// A new ticket ready to commit (see [`Inner::prepare`]).
pub(super) struct Prepared {
    pub(super) ticket: Ticket,
    /// Whether it joins the ready set.
    pub(super) ready: bool,
    /// Its claimed idempotency key, as stored.
    pub(super) key: Option<String>,
    pub(super) section: Section,
    pub(super) before: Vec<Cmd>,
    pub(super) after: Vec<Cmd>,
}

/// What a submit found under its idempotency key.
enum KeyHolder {
    /// The ticket the key names.
    Ticket(Box<Submitted>),
    /// A claim whose gateway died before storing its ticket: its value,
    /// for a takeover.
    Orphaned(String),
}

impl Inner {
    /// Stores a new ticket (or, for an idempotency key already used, finds
    /// the ticket it names): the locator, the ticket with its index entries
    /// (refused past the queue's pending limit) and the key, in one batch.
    pub(super) async fn submit(&self, new: NewTicket) -> Result<Submitted, EngineError> {
        self.register_queue(&new.queue).await?;
        let key = self.keyed(&new);
        if let Some(key) = &key {
            let original = new.idempotency_key.as_deref().unwrap_or_default();
            if let Some(existing) = self.claim_key(original, key, new.id, &new.queue).await? {
                return Ok(existing);
            }
        }
        let new = self.prepare(new, key);
        let reply = self
            .commit(&new.ticket.queue, new.section, new.before, new.after)
            .await?;
        self.submitted(new.ticket, new.ready, new.key.as_deref(), &reply)
            .await
    }

    /// `new`'s idempotency key as stored (scoped to its tenant), if any.
    pub(super) fn keyed(&self, new: &NewTicket) -> Option<String> {
        new.idempotency_key
            .as_deref()
            .map(|key| idempotency_scope(new.tenant.as_deref(), key))
    }

    /// The ticket of `new`, placed in line now, and its writes: the
    /// locator lands before the ticket, the key's persistence after (one
    /// pipeline on a single server; see `commits.rs`). `key` is claimed.
    pub(super) fn prepare(&self, new: NewTicket, key: Option<String>) -> Prepared {
        let queue = new.queue.clone();
        let id = new.id;
        let mut ticket = Ticket::create(id, new, SystemTime::now());
        self.place_in_line(None, &mut ticket);
        let (section, ready) = self.commit_new(&ticket);
        let before = vec![Cmd::set(self.keys.locator(id), queue.as_str())];
        let after = match &key {
            Some(key) => vec![Cmd::persist(self.keys.idempotency(key))],
            None => Vec::new(),
        };
        Prepared {
            ticket,
            ready,
            key,
            section,
            before,
            after,
        }
    }

    /// The commit section that creates `ticket`, and whether it joins the
    /// ready set.
    fn commit_new(&self, ticket: &Ticket) -> (Section, bool) {
        let mut ops = Ops::default();
        ops.max(slot::AGE, self.config.max_pending_per_queue);
        ops.push("field", &[b"p", &ticket.payload.encode_to_vec()]);
        self.diff(None, Some(ticket), &mut ops);
        let ready = Placement::of(ticket, self.config.result_retention).ready;
        if ready {
            let member = layout::ready_member(ticket.priority, ticket.enqueue_seq, ticket.id);
            ops.push("rank", &[&Ops::slot(slot::READY), member.as_bytes()]);
        }
        let section = Section {
            id: ticket.id,
            revision: 0,
            record: record::encode(ticket),
            ops,
        };
        (section, ready)
    }

    /// What the submit of `ticket` returns, given the commit's `reply`;
    /// undoes the locator and the key claim when nothing was stored.
    pub(super) async fn submitted(
        &self,
        ticket: Ticket,
        ready: bool,
        key: Option<&str>,
        reply: &[i64],
    ) -> Result<Submitted, EngineError> {
        let queue = &ticket.queue;
        let id = ticket.id;
        match reply {
            [1, _, rest @ ..] => {
                self.located.insert(id, queue);
                if ready {
                    // Workers here need not wait for the bus to hear of it.
                    self.notify_ready(queue);
                }
                if let Some(listener) = self.listener.get() {
                    listener.transitioned(
                        Before::created(ticket.created_at),
                        &ticket,
                        ticket.created_at,
                    );
                }
                Ok(Submitted {
                    ticket,
                    created: true,
                    tickets_ahead: rest.first().map(|&rank| rank as u64),
                })
            }
            [0, _] => {
                // The id is taken in this queue: the locator names that
                // ticket and stays.
                if let Some(key) = &key {
                    self.batch(vec![Cmd::del(self.keys.idempotency(key))])
                        .await?;
                }
                Err(EngineError::unavailable(format!(
                    "ticket id {id} is already taken; retry"
                )))
            }
            other => {
                let mut cleanup = vec![Cmd::del(self.keys.locator(id))];
                if let Some(key) = &key {
                    cleanup.push(Cmd::del(self.keys.idempotency(key)));
                }
                self.batch(cleanup).await?;
                if other == [-2] {
                    Err(EngineError::QueueFull {
                        queue: ticket.queue,
                        limit: self.config.max_pending_per_queue,
                    })
                } else {
                    Err(EngineError::internal(format!(
                        "Redis answered the submit of ticket {id} with {other:?}"
                    )))
                }
            }
        }
    }

    /// Stops ticket `id` (revoking its lease, if running), or returns it as
    /// it is if it already finished.
    pub(super) async fn cancel(&self, id: TicketId, reason: &str) -> Result<Ticket, EngineError> {
        let queue = self.locate(id).await?;
        let (ticket, _) = self
            .transact(&queue, id, None, |ticket| {
                match transition::cancel(ticket, reason, SystemTime::now())? {
                    transition::Cancelled::Already => Ok(Step::Keep(ticket.clone())),
                    transition::Cancelled::Now(revoked) => Ok(Step::Write {
                        result: ticket.clone(),
                        events: vec![(EventKind::State, ticket.clone(), None)],
                        revoke: revoked.map(|lease| Revocation {
                            session_id: lease.session_id,
                            ticket_id: id,
                            lease_id: lease.lease_id,
                            reason: RevokeReason::Cancelled,
                            message: transition::cancel_message(reason),
                        }),
                        extra: Ops::default(),
                    }),
                }
            })
            .await?;
        Ok(ticket)
    }

    /// Adds `queue` to the queue set (once per replica).
    pub(super) async fn register_queue(&self, queue: &QueueName) -> Result<(), EngineError> {
        if self
            .queues_known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue)
        {
            return Ok(());
        }
        let _: () = self
            .run(|| {
                let mut cmd = redis::cmd("SADD");
                cmd.arg(self.keys.queues()).arg(queue.as_str());
                QueryKind::Cmd(cmd)
            })
            .await?;
        self.queues_known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.clone());
        Ok(())
    }

    /// Says this gateway is alive for another [`INSTANCE_TTL`].
    pub(super) async fn refresh_liveness(&self) -> Result<(), EngineError> {
        let key = self.keys.instance(&self.instance);
        self.run(|| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(1)
                .arg("PX")
                .arg(INSTANCE_TTL.as_millis() as u64);
            QueryKind::Cmd(cmd)
        })
        .await
    }

    /// What holds an idempotency key (`key`, stored as `scoped`): the
    /// ticket it names, once stored; or, when the gateway that claimed it
    /// died before storing its ticket, the orphaned claim.
    async fn existing_for_key(
        &self,
        key: &str,
        scoped: &str,
        queue: &QueueName,
    ) -> Result<KeyHolder, EngineError> {
        let mut delay = Duration::from_millis(5);
        for attempt in 0..10 {
            let existing: Option<String> = self
                .run(|| {
                    let mut cmd = redis::cmd("GET");
                    cmd.arg(self.keys.idempotency(scoped));
                    QueryKind::Cmd(cmd)
                })
                .await?;
            let Some(claim) = existing else {
                // The claim expired or was given up: claim it afresh.
                return Ok(KeyHolder::Orphaned(String::new()));
            };
            // `ticket-id owner` (owner: the claiming gateway's instance).
            let (ticket, owner) = claim.split_once(' ').unwrap_or((claim.as_str(), ""));
            if let Ok(existing) = ticket.parse::<uuid::Uuid>() {
                let id = TicketId(existing);
                if let Ok(found) = self.locate(id).await
                    && let Some(stored) = self.load(&found, id).await?
                {
                    if found != *queue {
                        return Err(EngineError::IdempotencyConflict {
                            key: key.to_owned(),
                            existing: id,
                            queue: found,
                        });
                    }
                    return Ok(KeyHolder::Ticket(Box::new(Submitted {
                        ticket: stored.ticket,
                        created: false,
                        tickets_ahead: None,
                    })));
                }
            }
            // A persistent key was stored with its ticket (the submit's
            // batch persists it after the commit). Its ticket is gone: it
            // was deleted after its retention and the clean-up of the key
            // did not finish (it is not retried). The key is free.
            if attempt == 0 {
                let ttl: i64 = self
                    .run(|| {
                        let mut cmd = redis::cmd("PTTL");
                        cmd.arg(self.keys.idempotency(scoped));
                        QueryKind::Cmd(cmd)
                    })
                    .await?;
                if ttl == -1 {
                    return Ok(KeyHolder::Orphaned(claim));
                }
            }
            // Not stored yet. After a few tries (the owner's commit is one
            // round trip away), ask whether the owner is still alive.
            if attempt >= 3 && !owner.is_empty() {
                let alive: bool = self
                    .run(|| {
                        let mut cmd = redis::cmd("EXISTS");
                        cmd.arg(self.keys.instance(owner));
                        QueryKind::Cmd(cmd)
                    })
                    .await?;
                if !alive {
                    return Ok(KeyHolder::Orphaned(claim));
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(EngineError::unavailable(format!(
            "a submit with idempotency key {key:?} is still being stored; retry"
        )))
    }

    /// Claims idempotency key `scoped` for ticket `id`, taking over a claim
    /// whose gateway died; the ticket the key names if it has one.
    pub(super) async fn claim_key(
        &self,
        original: &str,
        scoped: &str,
        id: TicketId,
        queue: &QueueName,
    ) -> Result<Option<Submitted>, EngineError> {
        let mine = format!("{id} {}", self.instance);
        for _ in 0..3 {
            let claimed: Option<String> = self
                .run(|| {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(self.keys.idempotency(scoped))
                        .arg(&mine)
                        .arg("NX")
                        .arg("PX")
                        .arg(IDEMPOTENCY_CLAIM.as_millis() as u64);
                    QueryKind::Cmd(cmd)
                })
                .await?;
            if claimed.is_some() {
                return Ok(None);
            }
            match self.existing_for_key(original, scoped, queue).await? {
                KeyHolder::Ticket(submitted) => return Ok(Some(*submitted)),
                KeyHolder::Orphaned(old) if old.is_empty() => continue,
                KeyHolder::Orphaned(old) => {
                    let took: i64 = self
                        .run(|| {
                            let mut cmd = redis::cmd("EVAL");
                            cmd.arg(TAKE_OVER_CLAIM)
                                .arg(1)
                                .arg(self.keys.idempotency(scoped))
                                .arg(&old)
                                .arg(&mine)
                                .arg(IDEMPOTENCY_CLAIM.as_millis() as u64);
                            QueryKind::Cmd(cmd)
                        })
                        .await?;
                    if took == 1 {
                        tracing::info!(key = %original, "took over an idempotency key claimed by a gateway that stopped before storing its ticket");
                        return Ok(None);
                    }
                }
            }
        }
        Err(EngineError::unavailable(format!(
            "a submit with idempotency key {original:?} is still being stored; retry"
        )))
    }
}

#[cfg(test)]
mod tests {
    use redis::Cmd;

    use super::super::connect;
    use crate::domain::{NewTicket, QueueName, TicketId};
    use crate::engine::{Engine, EngineConfig};

    fn keyed(queue: &QueueName) -> NewTicket {
        NewTicket {
            id: TicketId::new(),
            queue: queue.clone(),
            payload: Default::default(),
            priority: 0,
            idempotency_key: Some("k".into()),
            metadata: Default::default(),
            timeout: None,
            attempt_timeout: None,
            max_attempts: 3,
            tenant: None,
            not_before: None,
            callback: None,
        }
    }

    /// A ticket deleted after its retention whose key clean-up failed (the
    /// batch after the delete's commit) leaves its key behind, persistent:
    /// the next submit with that key stores a new ticket, rather than
    /// waiting on a ticket that will never be stored.
    #[tokio::test]
    async fn a_key_left_behind_by_a_deleted_ticket_is_free() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine = connect(
            &server.url(),
            "left",
            &Default::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let queue = QueueName::parse("q").unwrap();
        let first = engine.submit(keyed(&queue)).await.unwrap();
        assert!(first.created);
        // What a delete whose clean-up failed leaves: no record, no
        // locator, the key still naming the ticket, with no expiry.
        let inner = &engine.inner;
        let id = first.ticket.id;
        inner
            .batch(vec![
                Cmd::del(inner.keys.ticket(&queue, id)),
                Cmd::del(inner.keys.locator(id)),
            ])
            .await
            .unwrap();
        let again = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            engine.submit(keyed(&queue)),
        )
        .await
        .expect("answered at once, not after retries")
        .expect("the key is free again");
        assert!(again.created, "a new ticket under the freed key");
        assert_ne!(again.ticket.id, id);
        // And the key now names the new ticket.
        let repeat = engine.submit(keyed(&queue)).await.unwrap();
        assert!(!repeat.created);
        assert_eq!(repeat.ticket.id, again.ticket.id);
    }
}
