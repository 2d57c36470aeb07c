//! Batch submit: the tickets of one `submit_batch` join their queue's
//! group-commit line together and in order (`commits.rs`), so they fill as
//! few `commit.lua` calls as a call's bounds allow, instead of racing the
//! flusher one submit at a time.
//!
//! Keyed items take the single submit's path: every key is claimed first
//! (the claims concurrently), and a claim that finds its ticket answers
//! with it. A key repeated within the batch is claimed by its first item
//! only: the later items are submitted one by one once the batch is stored,
//! and find the first one's ticket (or, if it was refused, try on their
//! own), as the same submits made one after another would.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures::future::join_all;

use super::Inner;
use super::submit::Prepared;
use crate::domain::{NewTicket, QueueName};
use crate::engine::{EngineError, Submitted};

/// One item's answer.
type Outcome = Result<Submitted, EngineError>;

impl Inner {
    /// See `Engine::submit_batch` and the module docs.
    pub(super) async fn submit_batch(&self, batch: Vec<NewTicket>) -> Vec<Outcome> {
        let mut results: Vec<Option<Outcome>> = (0..batch.len()).map(|_| None).collect();
        let (mut firsts, mut repeats) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        for (at, new) in batch.into_iter().enumerate() {
            match self.keyed(&new) {
                Some(key) if !seen.insert(key.clone()) => repeats.push((at, new)),
                key => firsts.push((at, new, key)),
            }
        }
        let queues: BTreeSet<&QueueName> = firsts.iter().map(|(_, new, _)| &new.queue).collect();
        let mut unregistered: HashMap<QueueName, EngineError> = HashMap::new();
        for queue in queues {
            if let Err(error) = self.register_queue(queue).await {
                unregistered.insert(queue.clone(), error);
            }
        }
        let claims = join_all(firsts.iter().map(|(_, new, key)| {
            let registered = !unregistered.contains_key(&new.queue);
            async move {
                match key {
                    Some(key) if registered => {
                        let original = new.idempotency_key.as_deref().unwrap_or_default();
                        self.claim_key(original, key, new.id, &new.queue).await
                    }
                    _ => Ok(None),
                }
            }
        }))
        .await;
        // Placed in line in the batch's order.
        let mut lines: BTreeMap<QueueName, Vec<(usize, Prepared)>> = BTreeMap::new();
        for ((at, new, key), claim) in firsts.into_iter().zip(claims) {
            if let Some(error) = unregistered.get(&new.queue) {
                results[at] = Some(Err(error.clone()));
                continue;
            }
            match claim {
                Err(error) => results[at] = Some(Err(error)),
                Ok(Some(existing)) => results[at] = Some(Ok(existing)),
                Ok(None) => lines
                    .entry(new.queue.clone())
                    .or_default()
                    .push((at, self.prepare(new, key))),
            }
        }
        let committed = join_all(
            lines
                .into_iter()
                .map(|(queue, line)| self.commit_line(queue, line)),
        )
        .await;
        for (at, outcome) in committed.into_iter().flatten() {
            results[at] = Some(outcome);
        }
        for (at, new) in repeats {
            results[at] = Some(self.submit(new).await);
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(EngineError::internal("a batch item was left unanswered"))
                })
            })
            .collect()
    }

    /// Commits `line`, the prepared tickets of `queue` (with their places
    /// in the batch), together; each one's answer.
    async fn commit_line(
        &self,
        queue: QueueName,
        line: Vec<(usize, Prepared)>,
    ) -> Vec<(usize, Outcome)> {
        let mut sections = Vec::with_capacity(line.len());
        let mut stored = Vec::with_capacity(line.len());
        for (at, prepared) in line {
            sections.push((prepared.section, prepared.before, prepared.after));
            stored.push((at, prepared.ticket, prepared.ready, prepared.key));
        }
        let replies = self.commit_all(&queue, sections).await;
        join_all(stored.into_iter().zip(replies).map(
            |((at, ticket, ready, key), reply)| async move {
                let outcome = match reply {
                    Ok(reply) => self.submitted(ticket, ready, key.as_deref(), &reply).await,
                    Err(error) => Err(error),
                };
                (at, outcome)
            },
        ))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::commits::MAX_SECTIONS;
    use super::super::connect;
    use super::super::store::QueryKind;
    use crate::domain::{NewTicket, QueueName};
    use crate::engine::{Engine, EngineConfig};

    /// A batch of one queue fills as few `commit.lua` calls as a call
    /// holds, rather than one per ticket.
    #[tokio::test]
    async fn a_batch_fills_as_few_commit_calls_as_a_call_holds() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let engine = connect(
            &server.url(),
            "batch-calls",
            &Default::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let queue = QueueName::parse("q").unwrap();
        // The queue registered and the script loaded beforehand.
        engine
            .submit(NewTicket::for_test(queue.clone()))
            .await
            .unwrap();
        let scripts_run = || async {
            let info: String = engine
                .inner
                .run(|| {
                    let mut cmd = redis::cmd("INFO");
                    cmd.arg("commandstats");
                    QueryKind::Cmd(cmd)
                })
                .await
                .unwrap();
            info.lines()
                .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let before = scripts_run().await;
        let batch: Vec<NewTicket> = (0..200)
            .map(|_| NewTicket::for_test(queue.clone()))
            .collect();
        let results = engine.submit_batch(batch).await;
        assert!(results.iter().all(Result::is_ok));
        let calls = scripts_run().await - before;
        assert_eq!(calls, 200usize.div_ceil(MAX_SECTIONS) as u64);
        let info = engine.queue_info(&queue).await.unwrap().unwrap();
        assert_eq!(info.counts.pending, 201);
    }
}
