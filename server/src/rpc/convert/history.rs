//! What a ticket carries of its past and its afterlife, on the wire: the
//! attempts that ended and its completion callback (checked at submit
//! against the gateway's allowlist) with its delivery.

use asyncgate_proto::v1 as pb;

use super::error_to_pb;
use crate::callbacks::{CallbackSettings, Refused};
use crate::domain::callback::{Callback, CallbackState, webhook_id};
use crate::domain::{Ticket, TicketId};
use crate::error::GatewayError;
use crate::time;

/// A submit's `callback`, checked: `None` when empty; INVALID_ARGUMENT for
/// a malformed one, FAILED_PRECONDITION for one the gateway does not allow.
pub(super) fn callback_for(
    settings: &CallbackSettings,
    url: &str,
) -> Result<Option<std::sync::Arc<str>>, GatewayError> {
    if url.is_empty() {
        return Ok(None);
    }
    settings
        .check(url)
        .map(Some)
        .map_err(|refused| match refused {
            Refused::Invalid(reason) => GatewayError::invalid("callback", reason),
            Refused::NotAllowed(reason) => {
                GatewayError::NotAllowedHere(format!("callback: {reason}"))
            }
        })
}

/// The ticket's ended attempts, oldest first.
pub(super) fn attempts_to_pb(ticket: &Ticket) -> Vec<pb::Attempt> {
    ticket
        .attempts
        .iter()
        .map(|a| pb::Attempt {
            number: a.number,
            worker_session: a.session_id.to_string(),
            worker_name: a.worker_name.to_string(),
            lease_id: a.lease_id.to_string(),
            started_at: Some(time::timestamp(a.started_at)),
            ended_at: Some(time::timestamp(a.ended_at)),
            error: a.error.as_ref().map(error_to_pb),
        })
        .collect()
}

/// The ticket's callback and its delivery, if it has one.
pub(super) fn callback_of(ticket: &Ticket) -> Option<pb::CallbackDelivery> {
    Some(callback_to_pb(ticket.id, ticket.callback.as_deref()?))
}

/// A callback and its delivery (the webhook id once it is due).
fn callback_to_pb(id: TicketId, c: &Callback) -> pb::CallbackDelivery {
    let state = match c.state {
        CallbackState::Waiting => pb::CallbackState::Waiting,
        CallbackState::Pending => pb::CallbackState::Pending,
        CallbackState::Delivered => pb::CallbackState::Delivered,
        CallbackState::GaveUp => pb::CallbackState::GaveUp,
    };
    pb::CallbackDelivery {
        url: c.url.to_string(),
        state: state as i32,
        attempts: c.attempts,
        last_error: c.last_error.clone().unwrap_or_default(),
        next_attempt_at: c.next_at.map(time::timestamp),
        delivered_at: c.delivered_at.map(time::timestamp),
        webhook_id: if c.state == CallbackState::Waiting {
            String::new()
        } else {
            webhook_id(id, c.seq)
        },
    }
}
