//! Reads that write nothing: a ticket (with its output chunks), its place
//! in line, pages of tickets across queues and connected workers.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use bytes::Bytes;

use super::codec::chunk_from;
use super::layout;
use super::store::QueryKind;
use super::{Inner, lock};
use crate::domain::{Chunk, QueueName, Ticket, TicketId, TicketState};
use crate::engine::{EngineError, ListFilter, ListPage};

/// How long a count of a queue's workers is reused.
const WORKER_COUNT_TTL: Duration = Duration::from_millis(500);

/// Tickets read per round while listing.
const LIST_BATCH: usize = 256;

/// Tickets examined at most per list call (a page may come back short, with
/// a cursor to continue).
const LIST_SCAN_LIMIT: usize = 10_000;

impl Inner {
    /// Ticket `id`, or why there is none.
    pub(super) async fn get(&self, id: TicketId) -> Result<Ticket, EngineError> {
        let queue = self.locate(id).await?;
        match self.load(&queue, id).await? {
            Some(stored) => Ok(stored.ticket),
            None => Err(self.gone(id).await),
        }
    }

    /// Ticket `id` and its output chunks after `after_seq`, read together.
    pub(super) async fn get_with_chunks(
        &self,
        id: TicketId,
        after_seq: u64,
    ) -> Result<(Ticket, Vec<Chunk>), EngineError> {
        let queue = self.locate(id).await?;
        let (fields, chunks): (_, Vec<Bytes>) = self
            .run(|| {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET")
                    .arg(self.keys.ticket(&queue, id))
                    .arg(&["v", "d", "p"])
                    .lrange(self.keys.chunks(&queue, id), 0, -1);
                QueryKind::Pipe(pipe)
            })
            .await?;
        let Some(stored) = self.decode(id, fields)? else {
            return Err(self.gone(id).await);
        };
        let chunks = chunks
            .iter()
            .filter_map(|bytes| chunk_from(bytes))
            .filter(|chunk| chunk.seq > after_seq)
            .collect();
        Ok((stored.ticket, chunks))
    }

    /// How many ready tickets are ahead of `ticket` in its queue.
    pub(super) async fn tickets_ahead(&self, ticket: &Ticket) -> Result<u64, EngineError> {
        if ticket.state != TicketState::Pending || ticket.not_before.is_some() {
            return Ok(0);
        }
        let rank: Option<u64> = self
            .run(|| {
                let mut cmd = redis::cmd("ZRANK");
                cmd.arg(self.keys.ready(&ticket.queue))
                    .arg(layout::ready_member(
                        ticket.priority,
                        ticket.enqueue_seq,
                        ticket.id,
                    ));
                QueryKind::Cmd(cmd)
            })
            .await?;
        Ok(rank.unwrap_or(0))
    }

    /// [`Inner::tickets_ahead`] of each ticket: one pipeline of `ZRANK`s
    /// per queue (one slot each, so it also holds on a cluster), the queues
    /// asked concurrently. A listed page costs one round trip per queue on
    /// it, not one per ticket.
    pub(super) async fn tickets_ahead_of(
        &self,
        tickets: &[&Ticket],
    ) -> Result<Vec<u64>, EngineError> {
        let mut ahead = vec![0; tickets.len()];
        let mut by_queue: HashMap<&QueueName, Vec<usize>> = HashMap::new();
        for (index, ticket) in tickets.iter().enumerate() {
            if ticket.state == TicketState::Pending && ticket.not_before.is_none() {
                by_queue.entry(&ticket.queue).or_default().push(index);
            }
        }
        let asked = futures::future::join_all(by_queue.iter().map(|(queue, indexes)| {
            self.run::<Vec<Option<u64>>>(move || {
                let mut pipe = redis::pipe();
                for &index in indexes {
                    let ticket = tickets[index];
                    pipe.cmd("ZRANK")
                        .arg(self.keys.ready(queue))
                        .arg(layout::ready_member(
                            ticket.priority,
                            ticket.enqueue_seq,
                            ticket.id,
                        ));
                }
                QueryKind::Pipe(pipe)
            })
        }))
        .await;
        for ((_, indexes), ranks) in by_queue.iter().zip(asked) {
            for (&index, rank) in indexes.iter().zip(ranks?) {
                ahead[index] = rank.unwrap_or(0);
            }
        }
        Ok(ahead)
    }

    /// A page of tickets that `filter` admits, in id order, across the
    /// filter's queue or every queue.
    pub(super) async fn list(&self, filter: ListFilter) -> Result<ListPage, EngineError> {
        let page_size = filter.page_size.max(1);
        let queues: Vec<QueueName> = match &filter.queue {
            Some(queue) => vec![queue.clone()],
            None => self.known_queues().await?,
        };
        let mut cursor = filter.after;
        let mut tickets = Vec::new();
        let mut scanned = 0;
        loop {
            let (batch, exhausted) = self.next_ids(&queues, cursor).await?;
            let fields: Vec<(Option<u64>, Option<Bytes>, Option<Bytes>)> = self
                .batch_typed(
                    batch
                        .iter()
                        .map(|(id, queue)| {
                            let mut cmd = redis::cmd("HMGET");
                            cmd.arg(self.keys.ticket(queue, *id)).arg(&["v", "d", "p"]);
                            cmd
                        })
                        .collect(),
                )
                .await?;
            for ((id, _), fields) in batch.iter().zip(fields) {
                scanned += 1;
                cursor = Some(*id);
                let Some(stored) = self.decode(*id, fields)? else {
                    continue;
                };
                if filter.admits(&stored.ticket) {
                    tickets.push(stored.ticket);
                    if tickets.len() > page_size {
                        tickets.truncate(page_size);
                        let next = tickets.last().map(|t| t.id);
                        return Ok(ListPage { tickets, next });
                    }
                }
            }
            if exhausted {
                return Ok(ListPage {
                    tickets,
                    next: None,
                });
            }
            if scanned >= LIST_SCAN_LIMIT {
                return Ok(ListPage {
                    tickets,
                    next: cursor,
                });
            }
        }
    }

    /// The next ids of `queues` after `cursor`, merged in id order, as far
    /// as every queue's are known; and whether every queue is exhausted.
    async fn next_ids(
        &self,
        queues: &[QueueName],
        cursor: Option<TicketId>,
    ) -> Result<(Vec<(TicketId, QueueName)>, bool), EngineError> {
        // Ids are time-ordered text: a lexical range is a range of ids.
        let min = match cursor {
            Some(after) => format!("({after}"),
            None => "-".to_owned(),
        };
        let per_queue: Vec<Vec<String>> = self
            .batch_typed(
                queues
                    .iter()
                    .map(|queue| {
                        let mut cmd = redis::cmd("ZRANGEBYLEX");
                        cmd.arg(self.keys.queue_ids(queue))
                            .arg(&min)
                            .arg("+")
                            .arg("LIMIT")
                            .arg(0)
                            .arg(LIST_BATCH);
                        cmd
                    })
                    .collect(),
            )
            .await?;
        let exhausted = per_queue.iter().all(|ids| ids.len() < LIST_BATCH);
        let mut batch: Vec<(TicketId, QueueName)> = queues
            .iter()
            .zip(&per_queue)
            .flat_map(|(queue, ids)| {
                ids.iter()
                    .filter_map(|id| id.parse().ok().map(|id| (TicketId(id), queue.clone())))
            })
            .collect();
        batch.sort_by_key(|(id, _)| *id);
        // Beyond the shortest full list, another queue's ids may be missing.
        if let Some(bound) = queues
            .iter()
            .zip(&per_queue)
            .filter(|(_, ids)| ids.len() == LIST_BATCH)
            .filter_map(|(_, ids)| ids.last()?.parse().ok().map(TicketId))
            .min()
        {
            batch.retain(|(id, _)| *id <= bound);
        }
        Ok((batch, exhausted))
    }

    /// How many workers serve `queue` (across replicas), reused briefly.
    pub(super) async fn connected_workers(
        &self,
        queue: &QueueName,
    ) -> Result<Option<usize>, EngineError> {
        if let Some((at, count)) = lock(&self.worker_counts).get(queue)
            && at.elapsed() < WORKER_COUNT_TTL
        {
            return Ok(Some(*count));
        }
        let count: usize = self
            .run(|| {
                let mut cmd = redis::cmd("ZCOUNT");
                cmd.arg(self.keys.workers(queue))
                    .arg(format!("({}", layout::millis(SystemTime::now())))
                    .arg("+inf");
                QueryKind::Cmd(cmd)
            })
            .await?;
        lock(&self.worker_counts).insert(queue.clone(), (Instant::now(), count));
        Ok(Some(count))
    }
}
