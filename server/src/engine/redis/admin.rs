//! An operator's changes to finished tickets: a retry (`transition::retry`,
//! committed by `commit.lua` like any transition, so the ticket's index
//! entries and its queue's counts move with it) and a delete (the same
//! delete as retention's, with its tombstone).

use std::time::SystemTime;

use super::codec::Ops;
use super::layout::{self, slot};
use super::{Inner, Step};
use crate::domain::ticket::EventKind;
use crate::domain::{Ticket, TicketId};
use crate::engine::{EngineError, transition};

impl Inner {
    /// Puts a FAILED, CANCELLED or EXPIRED ticket back to PENDING (see
    /// `Engine::retry`). Its request body was kept in the record's `p`
    /// field when it finished; its old output chunks go.
    pub(super) async fn retry(&self, id: TicketId) -> Result<Ticket, EngineError> {
        let queue = self.locate(id).await?;
        let (_, stored) = self
            .transact(&queue, id, None, |ticket| {
                transition::retry(ticket, SystemTime::now())?;
                let mut extra = Ops::default();
                extra.push("del", &[&Ops::slot(slot::CHUNKS)]);
                Ok(Step::Write {
                    result: (),
                    events: vec![(EventKind::State, ticket.clone(), None)],
                    revoke: None,
                    extra,
                })
            })
            .await?;
        let Some(stored) = stored else {
            return Err(EngineError::internal(format!(
                "the retry of ticket {id} was committed but not returned"
            )));
        };
        // Other replicas hear of it through the event channel (the commit
        // publishes it); workers here need not wait for that.
        self.notify_ready(&queue);
        Ok(stored.ticket)
    }

    /// Deletes a finished ticket now (see `Engine::delete`); when.
    pub(super) async fn delete_ticket(&self, id: TicketId) -> Result<SystemTime, EngineError> {
        let queue = self.locate(id).await?;
        let (deleted_at, _) = self
            .transact(&queue, id, None, |ticket| {
                transition::check_deletable(ticket)?;
                // To the millisecond, as the tombstone keeps it: a lookup
                // then reports the very time this call returns.
                let at = layout::time_of_millis(layout::millis(SystemTime::now()));
                Ok(Step::Delete { result: at, at })
            })
            .await?;
        Ok(deleted_at)
    }
}
