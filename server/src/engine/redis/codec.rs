//! What turns a ticket into Redis writes, and Redis replies back into
//! tickets: the record and chunk encodings, the operation list `commit.lua`
//! applies after its revision check ([`Ops`]), the index changes between two
//! states of a ticket ([`Inner::diff`]), FIFO positions, and the commit
//! call itself. Nothing here talks to Redis.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message;
use redis::{Cmd, Script};

use super::layout::{self, Placement, slot};
use super::{Inner, Stored, bus};
use crate::domain::ticket::{EventKind, Payload};
use crate::domain::{Chunk, QueueName, Ticket, TicketId};
use crate::engine::{EngineError, Revocation, record};

/// The operation list of one commit (see `commit.lua`).
#[derive(Default)]
pub(super) struct Ops(pub(super) Vec<Vec<u8>>);

impl Ops {
    pub(super) fn push(&mut self, name: &str, args: &[&[u8]]) {
        self.0.push(name.as_bytes().to_vec());
        self.0.extend(args.iter().map(|a| a.to_vec()));
    }

    pub(super) fn slot(slot: usize) -> Vec<u8> {
        slot.to_string().into_bytes()
    }

    pub(super) fn zadd(&mut self, slot: usize, score: u64, member: &str) {
        self.push(
            "zadd",
            &[
                &Self::slot(slot),
                score.to_string().as_bytes(),
                member.as_bytes(),
            ],
        );
    }

    pub(super) fn zrem(&mut self, slot: usize, member: &str) {
        self.push("zrem", &[&Self::slot(slot), member.as_bytes()]);
    }

    /// Refuses the commit when the sorted set in `slot` holds `limit`.
    pub(super) fn max(&mut self, slot: usize, limit: usize) {
        self.push("max", &[&Self::slot(slot), limit.to_string().as_bytes()]);
    }
}

/// One ticket's part of a `commit.lua` call: the revision it must find,
/// whether it deletes the ticket, and its operations (the record's fields
/// are `field` operations). Sections of one queue go in one call (see
/// [`Inner::commit_call`]).
pub(super) struct Section {
    /// The ticket (its hash and chunk keys are the section's own).
    pub(super) id: TicketId,
    /// What the ticket's `v` must be (0: it must not exist).
    pub(super) revision: u64,
    /// Deletes the ticket rather than writing it.
    pub(super) delete: bool,
    /// What to apply with it.
    pub(super) ops: Ops,
    /// The ticket's `d` field once this lands (see [`Stored::base`]).
    pub(super) base: Bytes,
}

impl Section {
    /// Bytes it adds to a call (to bound a batch).
    pub(super) fn weight(&self) -> usize {
        self.ops.0.iter().map(Vec::len).sum::<usize>()
    }
}

/// A ticket's fields as read: `v` (revision), `d` (record), `p` (request
/// payload), `s` (changes since the record).
pub(super) type Fields = (Option<u64>, Option<Bytes>, Option<Bytes>, Option<Bytes>);

/// The ticket hash's fields a read takes, in [`Fields`] order.
pub(super) const FIELDS: [&str; 4] = ["v", "d", "p", "s"];

/// Whether `a` and `b` agree on what [`record::encode_changes`] leaves out.
fn same_body(a: &Ticket, b: &Ticket) -> bool {
    a.queue == b.queue
        && a.metadata == b.metadata
        && a.created_at == b.created_at
        && a.max_attempts == b.max_attempts
        && a.priority == b.priority
        && a.idempotency_key == b.idempotency_key
        && a.tenant == b.tenant
        && a.timeout == b.timeout
        && a.attempt_timeout == b.attempt_timeout
}

/// A chunk as stored in the ticket's chunk list: its seq (8 bytes, big
/// endian), then the encoded output.
pub(super) fn chunk_bytes(chunk: &Chunk) -> Vec<u8> {
    let mut bytes = chunk.seq.to_be_bytes().to_vec();
    chunk
        .output
        .encode(&mut bytes)
        .expect("a Vec grows as needed");
    bytes
}

/// Reads back what [`chunk_bytes`] wrote; `None` if it is not a chunk.
pub(super) fn chunk_from(bytes: &[u8]) -> Option<Chunk> {
    let (seq, output) = bytes.split_at_checked(8)?;
    Some(Chunk {
        seq: u64::from_be_bytes(seq.try_into().ok()?),
        output: Payload::decode(output).ok()?,
    })
}

impl Inner {
    /// A call of `script` by hash.
    pub(super) fn evalsha(&self, script: &Script, keys: &[String], args: Vec<Vec<u8>>) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args);
        cmd
    }

    /// The ticket in a reply's `(v, d, p, s)` fields (revision, record,
    /// payload, changes since the record); `None` when it has no record.
    /// Tickets stored before issue 21 have no `s`: their record is whole.
    pub(super) fn decode(
        &self,
        id: TicketId,
        fields: Fields,
    ) -> Result<Option<Stored>, EngineError> {
        let (Some(revision), Some(base)) = (fields.0, fields.1) else {
            return Ok(None);
        };
        let payload = match fields.2 {
            Some(bytes) => Payload::decode(bytes).map_err(|e| self.corrupt(id, e))?,
            None => Payload::default(),
        };
        let ticket = match fields.3.filter(|changes| !changes.is_empty()) {
            Some(changes) => record::decode(id, &[&base[..], &changes[..]].concat(), payload),
            None => record::decode(id, &base, payload),
        }
        .map_err(|e| self.corrupt(id, e))?;
        Ok(Some(Stored {
            ticket,
            revision,
            base,
        }))
    }

    /// The record fields a commit writes for `after`, which `before` was:
    /// the changes alone (`s`) when they and `before`'s base record tell
    /// `after` exactly, else the whole record (`d`, with `s` emptied).
    /// Returns the base record as it will then be stored.
    fn record_fields(&self, before: &Stored, after: &Ticket, ops: &mut Ops) -> Bytes {
        let changes = record::encode_changes(after);
        let merged = record::decode(
            after.id,
            &[&before.base[..], &changes[..]].concat(),
            Payload::default(),
        );
        let told = merged.is_ok_and(|merged| {
            same_body(&merged, after) && record::encode_changes(&merged) == changes
        });
        if told {
            ops.push("field", &[b"s", &changes]);
            before.base.clone()
        } else {
            let whole = Bytes::from(record::encode(after));
            ops.push("field", &[b"d", &whole]);
            ops.push("field", &[b"s", b""]);
            whole
        }
    }

    /// Gives a ticket that becomes ready its FIFO position: the time it
    /// joins the line (unique and increasing per replica; across replicas,
    /// as close to FIFO as their clocks agree).
    pub(super) fn place_in_line(&self, before: Option<&Ticket>, after: &mut Ticket) {
        let retention = self.config.result_retention;
        let was_ready = before.is_some_and(|t| Placement::of(t, retention).ready);
        if !was_ready && Placement::of(after, retention).ready {
            let now = u64::try_from(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            )
            .unwrap_or(u64::MAX);
            let previous = self
                .enqueue_clock
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                    Some(now.max(last + 1))
                })
                .unwrap_or(now);
            after.enqueue_seq = now.max(previous + 1);
        }
    }

    /// Adds the index changes that take a ticket from `before` to `after`
    /// (`None`: it does not exist) and the ready announcement.
    pub(super) fn diff(&self, before: Option<&Ticket>, after: Option<&Ticket>, ops: &mut Ops) {
        let retention = self.config.result_retention;
        let old = before
            .map(|t| Placement::of(t, retention))
            .unwrap_or_default();
        let new = after
            .map(|t| Placement::of(t, retention))
            .unwrap_or_default();
        match (before, after) {
            (Some(b), _) if old.ready && !new.ready => {
                ops.zrem(
                    slot::READY,
                    &layout::ready_member(b.priority, b.enqueue_seq, b.id),
                );
            }
            (_, Some(a)) if new.ready && !old.ready => {
                ops.zadd(
                    slot::READY,
                    0,
                    &layout::ready_member(a.priority, a.enqueue_seq, a.id),
                );
                ops.push("pub", &[self.channel.as_bytes(), &bus::ready(&a.queue)]);
            }
            _ => {}
        }
        if old.pending != new.pending {
            // The pending index, by creation time: its size is the queue's
            // pending count (the oldest-pending age and the pending limit
            // read it), so no separate counter is written.
            if let Some(ticket) = after.filter(|_| new.pending).or(before) {
                let member = ticket.id.to_string();
                if new.pending {
                    ops.zadd(slot::AGE, layout::millis(ticket.created_at), &member);
                } else {
                    ops.zrem(slot::AGE, &member);
                }
            }
        }
        // Finished tickets are counted per state; PENDING and RUNNING ones
        // are the sizes of the pending and leased indexes, which every such
        // transition writes anyway (see `queues.rs`).
        let (was, is) = (
            before.map(|t| t.state).filter(|s| s.is_terminal()),
            after.map(|t| t.state).filter(|s| s.is_terminal()),
        );
        if was != is {
            for (state, delta) in [(was, &b"-1"[..]), (is, &b"1"[..])] {
                if let Some(state) = state {
                    ops.push(
                        "hincr",
                        &[&Ops::slot(slot::COUNTS), state.name().as_bytes(), delta],
                    );
                }
            }
        }
        for (member, _) in &old.timers {
            if !new.timers.iter().any(|(m, _)| m == member) {
                ops.zrem(slot::TIMERS, member);
            }
        }
        for timer in &new.timers {
            if !old.timers.contains(timer) {
                ops.zadd(slot::TIMERS, timer.1, &timer.0);
            }
        }
        if old.leased != new.leased {
            if let Some(member) = &old.leased {
                ops.zrem(slot::LEASED, member);
            }
            if let Some(member) = &new.leased {
                ops.zadd(slot::LEASED, 0, member);
            }
        }
        if let (Some(b), Some(a)) = (before, after)
            && b.holds_request()
            && !a.holds_request()
        {
            // Succeeded: its request body is not kept (`Ticket::holds_request`).
            // A failed, cancelled or expired ticket keeps it for a retry.
            ops.push("field", &[b"p", b""]);
        }
        match (before, after) {
            (None, Some(a)) => ops.zadd(slot::IDS, 0, &a.id.to_string()),
            (Some(b), None) => {
                ops.zrem(slot::IDS, &b.id.to_string());
                ops.push("del", &[&Ops::slot(slot::CHUNKS)]);
            }
            _ => {}
        }
    }

    /// The commit section for a transition from `before` (at its
    /// revision) to `after`.
    pub(super) fn commit_section(
        &self,
        before: &Stored,
        after: &mut Ticket,
        events: &[(EventKind, Ticket, Option<Payload>)],
        revoke: Option<&Revocation>,
        mut ops: Ops,
    ) -> Section {
        self.place_in_line(Some(&before.ticket), after);
        if !after.holds_request() {
            after.forget_request();
        }
        let after = &*after;
        let record = Bytes::from(record::encode(after));
        let base = self.record_fields(before, after, &mut ops);
        self.diff(Some(&before.ticket), Some(after), &mut ops);
        for (kind, snapshot, output) in events {
            let bytes = if snapshot.seq == after.seq {
                record.clone()
            } else {
                Bytes::from(record::encode(snapshot))
            };
            ops.push(
                "pub",
                &[
                    self.channel.as_bytes(),
                    &bus::change(after.id, *kind, bytes, output.clone()),
                ],
            );
        }
        if let Some(revocation) = revoke {
            ops.push("pub", &[self.channel.as_bytes(), &bus::revoke(revocation)]);
        }
        Section {
            id: after.id,
            revision: before.revision,
            delete: false,
            ops,
            base,
        }
    }

    /// One `commit.lua` call for `sections` of `queue` (at least one); its
    /// reply holds one reply per section, in order.
    pub(super) fn commit_call(&self, queue: &QueueName, sections: &[&Section]) -> Cmd {
        let mut keys = Vec::with_capacity(10 + 2 * sections.len());
        keys.extend(self.keys.commit_keys(queue, sections[0].id));
        for section in &sections[1..] {
            keys.push(self.keys.ticket(queue, section.id));
            keys.push(self.keys.chunks(queue, section.id));
        }
        let mut args: Vec<Vec<u8>> =
            Vec::with_capacity(1 + sections.iter().map(|s| 3 + s.ops.0.len()).sum::<usize>());
        args.push(sections.len().to_string().into_bytes());
        for section in sections {
            args.push(section.revision.to_string().into_bytes());
            args.push(if section.delete {
                b"del".to_vec()
            } else {
                b"set".to_vec()
            });
            args.push(section.ops.0.len().to_string().into_bytes());
            args.extend(section.ops.0.iter().cloned());
        }
        self.evalsha(&self.scripts.commit, &keys, args)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;

    use super::super::connect;
    use super::super::store::QueryKind;
    use crate::domain::ticket::Payload;
    use crate::domain::{NewTicket, Outcome, QueueName, SessionId, TicketId, TicketState};
    use crate::engine::{Completion, Engine, EngineConfig, SessionInfo, record};

    /// A ticket stored as gateways before issue 21 stored it (its whole
    /// record in `d` at every transition, no `s`) loads and finishes: the
    /// first write after it finds that changes alone would not tell the
    /// ticket (the old record holds a lease the result ends) and writes the
    /// whole record again; from then on only changes are written.
    #[tokio::test]
    async fn a_ticket_in_the_older_layout_loads_and_finishes() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine = connect(
            &server.url(),
            "layout",
            &Default::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let queue = QueueName::parse("q").unwrap();
        let id = TicketId::new();
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("k".to_string(), "v".to_string());
        engine
            .submit(NewTicket {
                id,
                queue: queue.clone(),
                payload: Payload::default(),
                priority: 0,
                idempotency_key: None,
                metadata,
                timeout: Some(Duration::from_secs(600)),
                attempt_timeout: None,
                max_attempts: 3,
                tenant: None,
            })
            .await
            .unwrap();
        let session = SessionInfo {
            session_id: SessionId::new(),
            worker_name: "w".into(),
            queues: Arc::from([queue.clone()]),
        };
        engine
            .open_session(&session, SystemTime::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let claimed = engine
            .claim(&queue, std::slice::from_ref(&session))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let inner = &engine.inner;
        let key = inner.keys.ticket(&queue, id);
        let fields = || async {
            let (d, s): (Option<Bytes>, Option<Bytes>) = inner
                .run(|| {
                    let mut cmd = redis::cmd("HMGET");
                    cmd.arg(&key).arg("d").arg("s");
                    QueryKind::Cmd(cmd)
                })
                .await
                .unwrap();
            (d.unwrap_or_default(), s.unwrap_or_default())
        };
        let (created, leased) = fields().await;
        assert!(!leased.is_empty(), "the lease wrote changes alone");
        // Rewrite it as an older gateway would have left it: RUNNING, its
        // whole record (lease and all) in `d`, no `s`.
        let running = engine.get(id).await.unwrap();
        let _: () = inner
            .run(|| {
                let mut pipe = redis::pipe();
                pipe.hset(&key, "d", record::encode(&running))
                    .ignore()
                    .hdel(&key, "s")
                    .ignore();
                QueryKind::Pipe(pipe)
            })
            .await
            .unwrap();
        // A fresh replica (no hints) reads it as it was.
        let other = connect(
            &server.url(),
            "layout",
            &Default::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let read = other.get(id).await.unwrap();
        assert_eq!(read.state, TicketState::Running);
        assert_eq!(read.lease, running.lease);
        assert_eq!(read.metadata.get("k").map(String::as_str), Some("v"));
        let done = other
            .complete(
                id,
                claimed[0].lease.lease_id,
                Outcome::Success(Payload::default()),
            )
            .await
            .unwrap();
        assert!(matches!(done, Completion::Recorded(_)));
        let finished = engine.get(id).await.unwrap();
        assert_eq!(finished.state, TicketState::Succeeded);
        assert!(finished.lease.is_none() && finished.result.is_some());
        assert_eq!(finished.metadata.get("k").map(String::as_str), Some("v"));
        let (whole, changes) = fields().await;
        assert_ne!(whole, created, "the whole record was written again");
        assert!(changes.is_empty(), "with no changes beside it");
    }
}
