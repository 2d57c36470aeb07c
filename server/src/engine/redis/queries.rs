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

/// How far a ticket id's time may run behind its `created_at`: the edge
/// mints the id when the submit arrives, the engine stamps `created_at`
/// when it stores the ticket, a few store requests later (each bounded by
/// the connection's 10 s response timeout).
const ID_LAG: Duration = Duration::from_secs(60);

/// How far a ticket id's time may run ahead of its `created_at`: UUID v7
/// ids stay monotonic when the clock steps back, so only after such a step,
/// and by at most the step.
const ID_LEAD: Duration = Duration::from_secs(1);

/// The ids a creation-time filter can admit, as lexical bounds on the ids'
/// text (see `layout::id_time_prefix`). The bounds are widened by
/// [`ID_LAG`] and [`ID_LEAD`], since a ticket's id and its `created_at` are
/// taken a moment apart; `ListFilter::admits` then applies the exact times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct IdBounds {
    /// Every admissible id is at or above this prefix.
    low: Option<String>,
    /// Every admissible id is below this prefix.
    high: Option<String>,
}

impl IdBounds {
    fn of(filter: &ListFilter) -> Self {
        Self {
            low: filter
                .created_after
                .and_then(|at| at.checked_sub(ID_LAG))
                .map(|at| layout::id_time_prefix(layout::millis(at))),
            high: filter
                .created_before
                .and_then(|at| at.checked_add(ID_LEAD))
                .map(|at| layout::id_time_prefix(layout::millis(at).saturating_add(1))),
        }
    }

    /// The `min` and `max` arguments of a `ZRANGEBYLEX` over the ids still
    /// to list: within the bounds and past `cursor` in the listing's order.
    fn lex_range(&self, cursor: Option<TicketId>, newest_first: bool) -> (String, String) {
        let mut min = self
            .low
            .as_ref()
            .map_or_else(|| "-".to_owned(), |low| format!("[{low}"));
        let mut max = self
            .high
            .as_ref()
            .map_or_else(|| "+".to_owned(), |high| format!("({high}"));
        if let Some(cursor) = cursor.map(|id| id.to_string()) {
            if newest_first {
                if self.high.as_ref().is_none_or(|high| cursor < *high) {
                    max = format!("({cursor}");
                }
            } else if self.low.as_ref().is_none_or(|low| cursor >= *low) {
                min = format!("({cursor}");
            }
        }
        (min, max)
    }
}

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

    /// A page of tickets that `filter` admits, in the filter's order,
    /// across the filter's queue or every queue. Each round costs two
    /// requests (the next ids, then their records), and a call examines
    /// at most [`LIST_SCAN_LIMIT`] tickets; creation-time bounds narrow
    /// the id range read (see [`IdBounds`]).
    pub(super) async fn list(&self, filter: ListFilter) -> Result<ListPage, EngineError> {
        let page_size = filter.page_size.max(1);
        let queues: Vec<QueueName> = match &filter.queue {
            Some(queue) => vec![queue.clone()],
            None => self.known_queues().await?,
        };
        let bounds = IdBounds::of(&filter);
        let mut cursor = filter.after;
        let mut tickets = Vec::new();
        let mut scanned = 0;
        loop {
            let (min, max) = bounds.lex_range(cursor, filter.newest_first);
            let (batch, exhausted) = self.next_ids(&queues, &filter, &min, &max).await?;
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

    /// The next ids of `queues` within the lexical range `min`..`max`, in
    /// the order of `filter`, merged across queues as far as every queue's
    /// are known; and whether every queue is exhausted.
    async fn next_ids(
        &self,
        queues: &[QueueName],
        filter: &ListFilter,
        min: &str,
        max: &str,
    ) -> Result<(Vec<(TicketId, QueueName)>, bool), EngineError> {
        // Ids are time-ordered text: a lexical range is a range of ids, read
        // from its top down for newest first.
        let per_queue: Vec<Vec<String>> = self
            .batch_typed(
                queues
                    .iter()
                    .map(|queue| {
                        let mut cmd = if filter.newest_first {
                            let mut cmd = redis::cmd("ZREVRANGEBYLEX");
                            cmd.arg(self.keys.queue_ids(queue)).arg(max).arg(min);
                            cmd
                        } else {
                            let mut cmd = redis::cmd("ZRANGEBYLEX");
                            cmd.arg(self.keys.queue_ids(queue)).arg(min).arg(max);
                            cmd
                        };
                        cmd.arg("LIMIT").arg(0).arg(LIST_BATCH);
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
        batch.sort_by_key(|(id, _)| filter.order_key(*id));
        // Beyond the shortest full list, another queue's ids may be missing.
        if let Some(bound) = queues
            .iter()
            .zip(&per_queue)
            .filter(|(_, ids)| ids.len() == LIST_BATCH)
            .filter_map(|(_, ids)| ids.last()?.parse().ok().map(TicketId))
            .map(|id| filter.order_key(id))
            .min()
        {
            batch.retain(|(id, _)| filter.order_key(*id) <= bound);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewTicket;
    use crate::engine::Engine;

    /// Past one batch of ids per queue, the merge across queues keeps
    /// only ids every queue's batch has reached: in both orders, pages
    /// follow one another with no ticket repeated or skipped.
    #[tokio::test]
    async fn pages_merge_queues_past_a_batch_in_either_order() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine = super::super::connect(
            &server.url(),
            "merge",
            &Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
        let queues = [
            QueueName::parse("a").unwrap(),
            QueueName::parse("b").unwrap(),
        ];
        let mut ids = Vec::new();
        for i in 0..4 * LIST_BATCH {
            // Two in three to "a": a batch of "b"'s ids reaches further in
            // time than one of "a"'s, and both queues hold several batches.
            let queue = queues[usize::from(i % 3 == 2)].clone();
            let new = NewTicket::for_test(queue);
            ids.push(engine.submit(new).await.unwrap().ticket.id);
        }
        // Pages shorter and longer than a batch.
        for (newest_first, page_size) in [(false, 100), (false, 1000), (true, 100), (true, 1000)] {
            let mut listed = Vec::new();
            let mut after = None;
            loop {
                let page = engine
                    .list(ListFilter {
                        page_size,
                        after,
                        newest_first,
                        ..ListFilter::default()
                    })
                    .await
                    .unwrap();
                listed.extend(page.tickets.iter().map(|t| t.id));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let mut expected = ids.clone();
            if newest_first {
                expected.reverse();
            }
            assert_eq!(
                listed, expected,
                "newest_first {newest_first}, {page_size} a page"
            );
        }
    }

    fn id_at(millis: u64) -> TicketId {
        TicketId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            millis / 1000,
            (millis % 1000) as u32 * 1_000_000,
        )))
    }

    fn within((min, max): &(String, String), id: TicketId) -> bool {
        let id = id.to_string();
        let above = match min.as_str() {
            "-" => true,
            min if min.starts_with('[') => id.as_str() >= &min[1..],
            min => id.as_str() > &min[1..],
        };
        let below = match max.as_str() {
            "+" => true,
            max if max.starts_with('[') => id.as_str() <= &max[1..],
            max => id.as_str() < &max[1..],
        };
        above && below
    }

    #[test]
    fn creation_bounds_keep_the_ids_that_can_match_with_slack() {
        let t = 1_750_000_000_000u64;
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let filter = ListFilter {
            created_after: Some(at(t)),
            created_before: Some(at(t + 10_000)),
            ..ListFilter::default()
        };
        let range = IdBounds::of(&filter).lex_range(None, false);
        let lag = ID_LAG.as_millis() as u64;
        let lead = ID_LEAD.as_millis() as u64;
        // Ids minted up to ID_LAG before created_after or ID_LEAD after
        // created_before may still belong to admitted tickets.
        for ms in [t - lag, t, t + 10_000, t + 10_000 + lead] {
            assert!(within(&range, id_at(ms)), "{ms}");
        }
        for ms in [t - lag - 1, t + 10_000 + lead + 1] {
            assert!(!within(&range, id_at(ms)), "{ms}");
        }
        assert_eq!(
            IdBounds::of(&ListFilter::default()).lex_range(None, true),
            ("-".to_owned(), "+".to_owned())
        );
    }

    #[test]
    fn the_cursor_narrows_the_range_on_the_side_the_listing_moves_to() {
        let t = 1_750_000_000_000u64;
        let filter = ListFilter {
            created_after: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(t)),
            ..ListFilter::default()
        };
        let bounds = IdBounds::of(&filter);
        let cursor = id_at(t + 5_000);
        let oldest = bounds.lex_range(Some(cursor), false);
        assert_eq!(oldest.0, format!("({cursor}"));
        assert!(within(&oldest, id_at(t + 6_000)) && !within(&oldest, cursor));
        let newest = bounds.lex_range(Some(cursor), true);
        assert_eq!(newest.1, format!("({cursor}"));
        assert!(within(&newest, id_at(t + 4_000)) && !within(&newest, cursor));
        assert!(!within(&newest, id_at(t - 120_000)), "the low bound holds");
        // A cursor short of the time bound leaves the bound in charge.
        let early = id_at(t - 120_000);
        assert!(bounds.lex_range(Some(early), false).0.starts_with('['));
    }
}
