//! The callback outbox in Redis: a due callback is a member `c:<id>` of its
//! queue's timers set, written by the same commit as the ticket's record
//! (so the terminal write and its delivery are one atomic step), scored
//! past `CALLBACK_SCORE_OFFSET` so that the timer pass never reads it. A
//! claim moves a queue's due members to the hold's score in one script
//! call (two replicas never claim one callback at once); recording an
//! attempt rewrites the record, whose placement removes the member or sets
//! it to the retry's time.

use std::time::{Duration, SystemTime};

use super::layout::{self, CALLBACK_SCORE_OFFSET, TimerKind};
use super::store::QueryKind;
use super::{Inner, Step};
use crate::domain::callback::{CallbackOutcome, CallbackState};
use crate::domain::{Ticket, TicketId};
use crate::engine::{EngineError, transition};

impl Inner {
    pub(super) async fn claim_callbacks(
        &self,
        now: SystemTime,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<Ticket>, EngineError> {
        let mut claimed = Vec::new();
        for queue in self.known_queues().await? {
            if claimed.len() >= limit {
                break;
            }
            let args: Vec<Vec<u8>> = [
                CALLBACK_SCORE_OFFSET,
                CALLBACK_SCORE_OFFSET + layout::millis(now),
                (limit - claimed.len()) as u64,
                CALLBACK_SCORE_OFFSET + layout::millis(now + hold),
            ]
            .iter()
            .map(|n| n.to_string().into_bytes())
            .collect();
            let keys = [self.keys.timers(&queue)];
            let members: Vec<String> = self
                .run(|| {
                    QueryKind::Cmd(self.evalsha(&self.scripts.claim_callbacks, &keys, args.clone()))
                })
                .await?;
            for member in members {
                let Some((TimerKind::Callback, id)) = layout::parse_timer(&member) else {
                    continue;
                };
                let Some(stored) = self.load(&queue, id).await? else {
                    continue;
                };
                let pending = stored
                    .ticket
                    .callback
                    .as_deref()
                    .is_some_and(|c| c.state == CallbackState::Pending);
                if pending {
                    claimed.push(stored.ticket);
                }
            }
        }
        Ok(claimed)
    }

    pub(super) async fn retry_callback(&self, id: TicketId) -> Result<Ticket, EngineError> {
        let queue = self.locate(id).await?;
        let now = SystemTime::now();
        let (ticket, _) = self
            .transact(&queue, id, None, |ticket| {
                transition::retry_callback(ticket, now)?;
                Ok(Step::write(ticket.clone(), Vec::new()))
            })
            .await?;
        Ok(ticket)
    }

    pub(super) async fn record_callback(
        &self,
        id: TicketId,
        seq: u64,
        outcome: CallbackOutcome,
    ) -> Result<bool, EngineError> {
        let queue = self.locate(id).await?;
        let now = SystemTime::now();
        let (changed, _) = self
            .transact(&queue, id, None, |ticket| {
                Ok(
                    if transition::record_callback(ticket, seq, outcome.clone(), now) {
                        Step::write(true, Vec::new())
                    } else {
                        Step::Keep(false)
                    },
                )
            })
            .await?;
        Ok(changed)
    }
}
