//! Group commit: the single-ticket commits of one queue that wait at the
//! same moment go to Redis as one `commit.lua` call (each ticket's section
//! still fenced on its own), so a busy queue costs Redis one script call
//! per batch rather than one per transition.
//!
//! Nothing waits to fill a batch: the first commit of an idle queue is sent
//! at once by a flusher task, and the commits that arrive while its call is
//! in flight make up the next one. One flusher per queue at a time; it ends
//! when its queue has nothing waiting. A commit's caller may go away (a
//! cancelled request): its section is still sent, as a lone call would
//! have been once written to the connection.

use std::collections::HashMap;

use redis::{Cmd, Value};
use tokio::sync::oneshot;

use super::codec::Section;
use super::store::QueryKind;
use super::{Inner, lock};
use crate::domain::QueueName;
use crate::engine::EngineError;

/// Sections per call at most: bounds how long one script holds Redis.
pub(super) const MAX_SECTIONS: usize = 64;

/// Bytes of records and operations per call at most (one larger section
/// still goes, alone).
const MAX_BYTES: usize = 512 * 1024;

/// A commit waiting for its queue's flusher.
pub(super) struct Waiting {
    section: Section,
    /// Commands of other slots that must land before the section (on a
    /// single server, in the same pipeline and in this order).
    before: Vec<Cmd>,
    /// Commands that must land after it.
    after: Vec<Cmd>,
    /// Where the section's reply goes.
    reply: oneshot::Sender<Result<Vec<i64>, EngineError>>,
}

/// The commits waiting per queue; a queue is in the map exactly while its
/// flusher runs.
pub(super) type Waiters = HashMap<QueueName, Vec<Waiting>>;

/// Ends a flusher: takes its queue out of the map even if the flusher
/// panicked, so the next commit starts a new one (the callers of any
/// section left waiting are answered by their dropped senders).
struct FlusherGuard<'a> {
    inner: &'a Inner,
    queue: &'a QueueName,
    done: bool,
}

impl Drop for FlusherGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.inner.commits).remove(self.queue);
        }
    }
}

impl Inner {
    /// Commits `section` of ticket in `queue`, batched with the others of
    /// the queue waiting now; `before` and `after` run around it (see
    /// [`Waiting`]). The section's reply (see `commit.lua`).
    pub(super) async fn commit(
        &self,
        queue: &QueueName,
        section: Section,
        before: Vec<Cmd>,
        after: Vec<Cmd>,
    ) -> Result<Vec<i64>, EngineError> {
        let mut replies = self.commit_all(queue, vec![(section, before, after)]).await;
        replies.pop().unwrap_or_else(|| {
            Err(EngineError::internal(
                "a batched commit was answered without its reply",
            ))
        })
    }

    /// [`Inner::commit`] of many sections of `queue` at once: they join
    /// its line together, in order, so they fill as few calls as the
    /// bounds on a call allow. Their replies, in order.
    pub(super) async fn commit_all(
        &self,
        queue: &QueueName,
        sections: Vec<(Section, Vec<Cmd>, Vec<Cmd>)>,
    ) -> Vec<Result<Vec<i64>, EngineError>> {
        let (waiting, answers): (Vec<Waiting>, Vec<_>) = sections
            .into_iter()
            .map(|(section, before, after)| {
                let (reply, answer) = oneshot::channel();
                let waiting = Waiting {
                    section,
                    before,
                    after,
                    reply,
                };
                (waiting, answer)
            })
            .unzip();
        let start = {
            let mut commits = lock(&self.commits);
            match commits.get_mut(queue) {
                Some(line) => {
                    line.extend(waiting);
                    false
                }
                None => {
                    commits.insert(queue.clone(), waiting);
                    true
                }
            }
        };
        if start {
            let Some(inner) = self.me.upgrade() else {
                lock(&self.commits).remove(queue);
                return answers
                    .iter()
                    .map(|_| Err(EngineError::unavailable("the gateway is shutting down")))
                    .collect();
            };
            let queue = queue.clone();
            // Owned by the commits it answers: it ends when none wait.
            tokio::spawn(async move { inner.flush_commits(queue).await });
        }
        let mut replies = Vec::with_capacity(answers.len());
        for answer in answers {
            replies.push(answer.await.unwrap_or_else(|_| {
                Err(EngineError::internal(
                    "a batched commit was dropped before Redis answered",
                ))
            }));
        }
        replies
    }

    /// Sends `queue`'s waiting commits, a batch per call, until none wait.
    async fn flush_commits(&self, queue: QueueName) {
        let mut guard = FlusherGuard {
            inner: self,
            queue: &queue,
            done: false,
        };
        loop {
            let batch = {
                let mut commits = lock(&self.commits);
                let Some(line) = commits.get_mut(&queue) else {
                    guard.done = true;
                    return;
                };
                if line.is_empty() {
                    commits.remove(&queue);
                    guard.done = true;
                    return;
                }
                let mut bytes = 0;
                let mut take = 0;
                for waiting in line.iter() {
                    bytes += waiting.section.weight();
                    if take > 0 && (take == MAX_SECTIONS || bytes > MAX_BYTES) {
                        break;
                    }
                    take += 1;
                }
                line.drain(..take).collect::<Vec<_>>()
            };
            let replies = self.send_commits(&queue, &batch).await;
            for (index, waiting) in batch.into_iter().enumerate() {
                let reply = match &replies {
                    Ok(replies) => replies.get(index).cloned().ok_or_else(|| {
                        EngineError::internal("Redis answered a batched commit short")
                    }),
                    Err(error) => Err(error.clone()),
                };
                let _ = waiting.reply.send(reply);
            }
        }
    }

    /// One batch: the commands before, the commit call, the commands
    /// after; one pipeline on a single server, in turn on a cluster (where
    /// they live in other slots).
    async fn send_commits(
        &self,
        queue: &QueueName,
        batch: &[Waiting],
    ) -> Result<Vec<Vec<i64>>, EngineError> {
        let sections: Vec<&Section> = batch.iter().map(|w| &w.section).collect();
        let call = self.commit_call(queue, &sections);
        let before: Vec<Cmd> = batch
            .iter()
            .flat_map(|w| w.before.iter().cloned())
            .collect();
        let after: Vec<Cmd> = batch.iter().flat_map(|w| w.after.iter().cloned()).collect();
        let reply: Value = if self.conn.orders_pipelines() {
            let mut pipe = redis::pipe();
            for cmd in &before {
                pipe.add_command(cmd.clone()).ignore();
            }
            pipe.add_command(call);
            for cmd in &after {
                pipe.add_command(cmd.clone()).ignore();
            }
            let (reply,): (Value,) = self.run(|| QueryKind::Pipe(pipe.clone())).await?;
            reply
        } else {
            self.batch(before).await?;
            let reply = self.run(|| QueryKind::Cmd(call.clone())).await?;
            self.batch(after).await?;
            reply
        };
        redis::from_redis_value(reply).map_err(|e| self.unavailable(redis::RedisError::from(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::connect;
    use crate::domain::{NewTicket, QueueName};
    use crate::engine::{Engine, EngineConfig};

    /// Many submits at once to one queue go out in batches, and each one
    /// gets its own answer: every ticket is stored once, in its queue, and
    /// the pending limit still holds per ticket inside a batch.
    #[tokio::test]
    async fn concurrent_commits_share_calls_and_keep_their_own_answers() {
        let server = crate::testing::RedisServer::start().expect("redis-server starts");
        let config = EngineConfig {
            max_pending_per_queue: 40,
            ..EngineConfig::default()
        };
        let engine = Arc::new(
            connect(&server.url(), "batch", &Default::default(), config)
                .await
                .unwrap(),
        );
        let queue = QueueName::parse("q").unwrap();
        let submits = (0..100).map(|_| {
            let engine = engine.clone();
            let queue = queue.clone();
            async move { engine.submit(NewTicket::for_test(queue)).await }
        });
        let results = futures::future::join_all(submits).await;
        let stored: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(stored.len(), 40, "the limit holds inside batches");
        assert!(
            results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| matches!(e, crate::engine::EngineError::QueueFull { .. })),
            "the others are refused as full"
        );
        for submitted in stored {
            let ticket = engine.get(submitted.ticket.id).await.unwrap();
            assert_eq!(ticket.queue, queue);
        }
        let info = engine.queue_info(&queue).await.unwrap().unwrap();
        assert_eq!(info.counts.pending, 40);
    }
}
