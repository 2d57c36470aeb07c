//! List requests validated: `ListTickets` into a [`PageQuery`] (queue,
//! states, metadata entries, creation-time bounds, order, page), and the
//! page of `ListTickets` and `ListOperations` (its size and its token).
//!
//! A page token names the last ticket of the previous page and the order
//! it was listed in: an oldest-first token is the bare id (the form tokens
//! had before listings could run newest first, so those still work), a
//! newest-first one carries [`NEWEST_FIRST_TOKEN`] before it. A token
//! continues only the order it came from: used with the other order it
//! would skip or repeat tickets, so it is refused.

use std::time::SystemTime;

use asyncgate_proto::v1 as pb;

use super::{MAX_METADATA_BYTES, queue_for, state_from_pb, ticket_id};
use crate::auth::Caller;
use crate::domain::{QueueName, TicketId, TicketState};
use crate::error::GatewayError;
use crate::time::rfc3339;

/// Most metadata entries one `ListTickets` request may filter on.
pub const MAX_METADATA_FILTERS: usize = 16;

/// What a newest-first page token starts with.
pub const NEWEST_FIRST_TOKEN: &str = "newest:";

/// A validated list request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Only this queue's tickets (already scoped to the caller's tenant).
    pub queue: Option<QueueName>,
    /// Only these states; empty for every state.
    pub states: Vec<TicketState>,
    /// At most this many.
    pub page_size: usize,
    /// Past this id, in the listing's order (the previous page's token).
    pub after: Option<TicketId>,
    /// Only tickets whose metadata holds every one of these entries,
    /// sorted by key.
    pub metadata: Vec<(String, String)>,
    /// Only tickets created at or after this time.
    pub created_after: Option<SystemTime>,
    /// Only tickets created before this time.
    pub created_before: Option<SystemTime>,
    /// Newest first rather than oldest first.
    pub newest_first: bool,
    /// Only tickets whose callback is in one of these states.
    pub callback_states: Vec<crate::domain::callback::CallbackState>,
}

/// Validates a `ListTickets` request from `caller`.
pub fn list_tickets(
    caller: &Caller,
    request: pb::ListTicketsRequest,
) -> Result<PageQuery, GatewayError> {
    let queue = if request.queue.is_empty() {
        None
    } else {
        Some(queue_for(caller, &request.queue, "queue")?)
    };
    let states = request
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| state_from_pb(*s, &format!("states[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let (page_size, after) = page(
        request.page_size,
        &request.page_token,
        request.newest_first,
        "ListTickets",
    )?;
    let created_after = time(request.created_after, "created_after")?;
    let created_before = time(request.created_before, "created_before")?;
    if let (Some(from), Some(until)) = (created_after, created_before)
        && from >= until
    {
        return Err(GatewayError::invalid(
            "created_after",
            format!(
                "{} is not before created_before ({}), so no ticket could match; \
                 pass the earlier time as created_after",
                rfc3339(from),
                rfc3339(until)
            ),
        ));
    }
    Ok(PageQuery {
        queue,
        states,
        page_size,
        after,
        metadata: metadata_filters(request.metadata)?,
        created_after,
        created_before,
        newest_first: request.newest_first,
        callback_states: request
            .callback_states
            .iter()
            .enumerate()
            .map(|(i, s)| callback_state_from_pb(*s, i))
            .collect::<Result<_, _>>()?,
    })
}

/// A `callback_states` entry.
fn callback_state_from_pb(
    value: i32,
    index: usize,
) -> Result<crate::domain::callback::CallbackState, GatewayError> {
    use crate::domain::callback::CallbackState;
    match pb::CallbackState::try_from(value) {
        Ok(pb::CallbackState::Waiting) => Ok(CallbackState::Waiting),
        Ok(pb::CallbackState::Pending) => Ok(CallbackState::Pending),
        Ok(pb::CallbackState::Delivered) => Ok(CallbackState::Delivered),
        Ok(pb::CallbackState::GaveUp) => Ok(CallbackState::GaveUp),
        _ => Err(GatewayError::invalid(
            format!("callback_states[{index}]"),
            format!("{value} is not a callback state; use WAITING, PENDING, DELIVERED or GAVE_UP"),
        )),
    }
}

/// The metadata entries a listing filters on, sorted by key: at most
/// [`MAX_METADATA_FILTERS`], within the size a submit's metadata may have
/// (an entry larger than that matches no ticket), keys not empty.
fn metadata_filters(
    metadata: std::collections::HashMap<String, String>,
) -> Result<Vec<(String, String)>, GatewayError> {
    if metadata.len() > MAX_METADATA_FILTERS {
        return Err(GatewayError::invalid(
            "metadata",
            format!(
                "has {} entries; filter on at most {MAX_METADATA_FILTERS}",
                metadata.len()
            ),
        ));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(GatewayError::invalid(
            "metadata",
            format!(
                "holds {bytes} bytes; the limit is {MAX_METADATA_BYTES}, as for a ticket's metadata"
            ),
        ));
    }
    if metadata.keys().any(|k| k.is_empty()) {
        return Err(GatewayError::invalid(
            "metadata",
            "keys must not be empty; name the metadata key each value must match",
        ));
    }
    let mut entries: Vec<(String, String)> = metadata.into_iter().collect();
    entries.sort();
    Ok(entries)
}

/// A wire timestamp field as a wall-clock time: a valid `Timestamp`, as
/// its proto defines one (0001-01-01 to 9999-12-31, nanos below a second).
pub(crate) fn time(
    value: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<SystemTime>, GatewayError> {
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    let Some(at) = value else {
        return Ok(None);
    };
    let refuse = || {
        GatewayError::invalid(
            field,
            "is not a valid timestamp (0001-01-01 to 9999-12-31, nanos 0 to 999999999); use an RFC 3339 time such as 2025-01-31T12:00:00Z",
        )
    };
    if !SECONDS.contains(&at.seconds) || !(0..1_000_000_000).contains(&at.nanos) {
        return Err(refuse());
    }
    SystemTime::try_from(at).map(Some).map_err(|_| refuse())
}

/// The page length and start of a ListTickets or ListOperations request
/// (`rpc` names it in the page-token error): the token must come from a
/// listing in the same order (`newest_first`).
pub fn page(
    page_size: u32,
    page_token: &str,
    newest_first: bool,
    rpc: &str,
) -> Result<(usize, Option<TicketId>), GatewayError> {
    use crate::rpc::gateway::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
    let page_size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => {
            return Err(GatewayError::invalid(
                "page_size",
                format!("{n} is above the maximum of {MAX_PAGE_SIZE}"),
            ));
        }
        n => n,
    };
    if page_token.is_empty() {
        return Ok((page_size as usize, None));
    }
    let (token_newest_first, id) = match page_token.strip_prefix(NEWEST_FIRST_TOKEN) {
        Some(id) => (true, id),
        None => (false, page_token),
    };
    let after = ticket_id(id, "page_token").map_err(|_| {
        GatewayError::invalid(
            "page_token",
            format!("is not a token from a previous {rpc} response"),
        )
    })?;
    if token_newest_first != newest_first {
        let (token_order, flag) = if token_newest_first {
            ("newest-first", "true")
        } else {
            ("oldest-first", "false")
        };
        return Err(GatewayError::invalid(
            "page_token",
            format!(
                "continues an {token_order} listing; send newest_first = {flag} with it, \
                 as the request that returned it did, or start over without a token"
            ),
        ));
    }
    Ok((page_size as usize, Some(after)))
}

/// The token of the page that follows ticket `last`, in the given order.
pub fn page_token(last: TicketId, newest_first: bool) -> String {
    if newest_first {
        format!("{NEWEST_FIRST_TOKEN}{last}")
    } else {
        last.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use tonic::Code;

    use super::*;

    fn refused(request: pb::ListTicketsRequest) -> (String, String) {
        match list_tickets(&Caller::anonymous(), request).unwrap_err() {
            GatewayError::InvalidArgument { field, reason } => (field, reason),
            other => panic!("not INVALID_ARGUMENT: {other}"),
        }
    }

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn a_full_request_is_read_into_a_query() {
        let query = list_tickets(
            &Caller::anonymous(),
            pb::ListTicketsRequest {
                queue: "q".into(),
                states: vec![pb::TicketState::Pending as i32],
                metadata: HashMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
                created_after: at(1_700_000_000),
                created_before: at(1_700_000_060),
                newest_first: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(query.queue.unwrap().as_str(), "q");
        assert_eq!(query.states, [TicketState::Pending]);
        assert_eq!(query.page_size, 100);
        assert_eq!(
            query.metadata,
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(
            query.created_after,
            Some(epoch + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            query.created_before,
            Some(epoch + Duration::from_secs(1_700_000_060))
        );
        assert!(query.newest_first);
        // Either bound alone is fine.
        for (after, before) in [(at(5), None), (None, at(5))] {
            let request = pb::ListTicketsRequest {
                created_after: after,
                created_before: before,
                ..Default::default()
            };
            assert!(list_tickets(&Caller::anonymous(), request).is_ok());
        }
    }

    #[test]
    fn bad_metadata_filters_are_refused_naming_the_field() {
        let many: HashMap<String, String> = (0..=MAX_METADATA_FILTERS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let (field, reason) = refused(pb::ListTicketsRequest {
            metadata: many,
            ..Default::default()
        });
        assert_eq!(field, "metadata");
        assert!(reason.contains("at most 16"), "{reason}");

        let (field, reason) = refused(pb::ListTicketsRequest {
            metadata: HashMap::from([(String::new(), "v".into())]),
            ..Default::default()
        });
        assert_eq!(field, "metadata");
        assert!(reason.contains("keys must not be empty"), "{reason}");

        let (field, reason) = refused(pb::ListTicketsRequest {
            metadata: HashMap::from([("k".into(), "v".repeat(MAX_METADATA_BYTES))]),
            ..Default::default()
        });
        assert_eq!(field, "metadata");
        assert!(reason.contains("the limit is 16384"), "{reason}");

        // Exactly the limits: accepted.
        let most: HashMap<String, String> = (0..MAX_METADATA_FILTERS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let request = pb::ListTicketsRequest {
            metadata: most,
            ..Default::default()
        };
        assert!(list_tickets(&Caller::anonymous(), request).is_ok());
    }

    #[test]
    fn reversed_or_empty_time_bounds_are_refused() {
        for (after, before) in [(60, 0), (60, 60)] {
            let (field, reason) = refused(pb::ListTicketsRequest {
                created_after: at(after),
                created_before: at(before),
                ..Default::default()
            });
            assert_eq!(field, "created_after");
            assert!(reason.contains("is not before created_before"), "{reason}");
        }
        for bad in [(i64::MAX, 0), (0, -1), (0, 1_000_000_000)] {
            let (field, reason) = refused(pb::ListTicketsRequest {
                created_before: Some(prost_types::Timestamp {
                    seconds: bad.0,
                    nanos: bad.1,
                }),
                ..Default::default()
            });
            assert_eq!(field, "created_before");
            assert!(reason.contains("RFC 3339"), "{reason}");
        }
    }

    #[test]
    fn a_token_continues_only_its_own_order() {
        let id = TicketId::new();
        let oldest = page_token(id, false);
        let newest = page_token(id, true);
        assert_eq!(
            oldest,
            id.to_string(),
            "oldest-first tokens keep their form"
        );
        assert_eq!(
            page(2, &oldest, false, "ListTickets").unwrap(),
            (2, Some(id))
        );
        assert_eq!(
            page(2, &newest, true, "ListTickets").unwrap(),
            (2, Some(id))
        );
        for (token, newest_first, flag) in [(&oldest, true, "false"), (&newest, false, "true")] {
            let error = page(2, token, newest_first, "ListTickets").unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument);
            let GatewayError::InvalidArgument { field, reason } = error else {
                unreachable!()
            };
            assert_eq!(field, "page_token");
            assert!(
                reason.contains(&format!("newest_first = {flag}")),
                "{reason}"
            );
        }
        // Through the whole request too.
        let (field, _) = refused(pb::ListTicketsRequest {
            page_token: oldest,
            newest_first: true,
            ..Default::default()
        });
        assert_eq!(field, "page_token");
        let (field, reason) = refused(pb::ListTicketsRequest {
            page_token: format!("{NEWEST_FIRST_TOKEN}nope"),
            newest_first: true,
            ..Default::default()
        });
        assert_eq!(field, "page_token");
        assert!(reason.contains("previous ListTickets response"), "{reason}");
    }
}
