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
/// its new record (empty: delete it) and its operations. Sections of one
/// queue go in one call (see [`Inner::commit_call`]).
pub(super) struct Section {
    /// The ticket (its hash and chunk keys are the section's own).
    pub(super) id: TicketId,
    /// What the ticket's `v` must be (0: it must not exist).
    pub(super) revision: u64,
    /// The new record; empty deletes the ticket.
    pub(super) record: Vec<u8>,
    /// What to apply with it.
    pub(super) ops: Ops,
}

impl Section {
    /// Bytes it adds to a call (to bound a batch).
    pub(super) fn weight(&self) -> usize {
        self.record.len() + self.ops.0.iter().map(Vec::len).sum::<usize>()
    }
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

    /// The ticket in a reply's `(revision, record, payload)` fields; `None`
    /// when it has no record.
    pub(super) fn decode(
        &self,
        id: TicketId,
        fields: (Option<u64>, Option<Bytes>, Option<Bytes>),
    ) -> Result<Option<Stored>, EngineError> {
        let (Some(revision), Some(record)) = (fields.0, fields.1) else {
            return Ok(None);
        };
        let payload = match fields.2 {
            Some(bytes) => Payload::decode(bytes).map_err(|e| self.corrupt(id, e))?,
            None => Payload::default(),
        };
        let ticket = record::decode(id, &record, payload).map_err(|e| self.corrupt(id, e))?;
        Ok(Some(Stored { ticket, revision }))
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
            // The pending index, by the time each came due: its size is the queue's
            // pending count (the oldest-pending age and the pending limit
            // read it), so no separate counter is written.
            if let Some(ticket) = after.filter(|_| new.pending).or(before) {
                let member = ticket.id.to_string();
                if new.pending {
                    ops.zadd(slot::AGE, layout::millis(ticket.due_at()), &member);
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
            record: record.to_vec(),
            ops,
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
            args.push(section.record.clone());
            args.push(section.ops.0.len().to_string().into_bytes());
            args.extend(section.ops.0.iter().cloned());
        }
        self.evalsha(&self.scripts.commit, &keys, args)
    }
}
