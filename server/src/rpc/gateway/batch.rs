//! `Gateway.SubmitBatch`: up to [`MAX_BATCH_ITEMS`] submits in one call.
//! Each item is validated exactly as Submit validates it (the same caller,
//! so the same tenant scope; the same limits) and refused on its own; the
//! valid ones go to the engine in one `submit_batch`, which commits them
//! together; the answers come back in the request's order.

use asyncgate_proto::v1 as pb;

use super::{GatewayService, TraceContext, convert};
use crate::auth::Caller;
use crate::engine::Submitted;
use crate::error::GatewayError;
use crate::rpc::streams::item_error;

/// Most requests one SubmitBatch call may carry: it bounds one call's work
/// and answer (its bytes are bounded by the message limit).
pub(crate) const MAX_BATCH_ITEMS: usize = 1000;

/// What a batch's answer may need beyond the message limit: each new
/// ticket repeats its request's queue, metadata and key (all counted in
/// the request) and adds its id, state, times and waiting reason, under
/// 2 KiB even when the reason quotes a queue's pause (tested).
pub(crate) const BATCH_ANSWER_HEADROOM: usize = MAX_BATCH_ITEMS * 2048;

/// Refuses an empty batch or one over [`MAX_BATCH_ITEMS`], as a whole.
fn check_size(items: usize) -> Result<(), GatewayError> {
    if items == 0 {
        return Err(GatewayError::invalid(
            "requests",
            format!("is empty; send 1 to {MAX_BATCH_ITEMS} SubmitRequests"),
        ));
    }
    if items > MAX_BATCH_ITEMS {
        return Err(GatewayError::invalid(
            "requests",
            format!(
                "has {items} items; the limit is {MAX_BATCH_ITEMS} per call: split the batch (or send them on one SubmitStream)"
            ),
        ));
    }
    Ok(())
}

impl GatewayService {
    /// Validates, stores and presents a batch for `caller` (see the module
    /// docs); the whole call fails only for its size.
    pub(super) async fn submit_batch_inner(
        &self,
        caller: &Caller,
        trace: Option<TraceContext>,
        requests: Vec<pb::SubmitRequest>,
    ) -> Result<pb::SubmitBatchResponse, GatewayError> {
        check_size(requests.len())?;
        if let Some(trace) = &trace {
            tracing::Span::current().record("trace_id", trace.parent.trace_id_hex());
        }
        let mut refused = Vec::with_capacity(requests.len());
        let mut valid = Vec::with_capacity(requests.len());
        for request in requests {
            match convert::new_ticket(caller, request, &self.limits) {
                Ok(mut new) => {
                    if let Some(trace) = &trace {
                        trace.clone().keep_with(&mut new.metadata);
                    }
                    valid.push(new);
                    refused.push(None);
                }
                Err(error) => refused.push(Some(error)),
            }
        }
        let mut stored = self.core.engine.submit_batch(valid).await.into_iter();
        let outcomes: Vec<Result<Submitted, GatewayError>> = refused
            .into_iter()
            .map(|refusal| match refusal {
                Some(error) => Err(error),
                None => match stored.next() {
                    Some(result) => result.map_err(GatewayError::from),
                    None => Err(GatewayError::internal("the engine answered a batch short")),
                },
            })
            .collect();
        let created: Vec<&Submitted> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        let new_tickets = created.iter().filter(|s| s.created).count();
        tracing::debug!(
            items = outcomes.len(),
            stored = created.len(),
            new_tickets,
            "batch submitted"
        );
        let mut tickets = self
            .core
            .present_submitted(caller, &created)
            .await
            .into_iter();
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(submitted) => pb::SubmitBatchResult {
                    // A found ticket's result body stays out (GetTicket
                    // reads it): a batch naming one finished ticket's key
                    // 1,000 times must not answer with 1,000 copies of it.
                    ticket: tickets.next().map(|mut ticket| {
                        if !submitted.created {
                            ticket.result = None;
                        }
                        ticket
                    }),
                    error: None,
                },
                Err(error) => pb::SubmitBatchResult {
                    ticket: None,
                    error: Some(item_error(error)),
                },
            })
            .collect();
        Ok(pb::SubmitBatchResponse { results })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_oversized_batches_name_the_field() {
        for (items, says) in [(0, "is empty"), (MAX_BATCH_ITEMS + 1, "the limit is 1000")] {
            let error = check_size(items).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            let message = error.to_string();
            assert!(message.starts_with("invalid requests: "), "{message}");
            assert!(message.contains(says), "{message}");
        }
        assert!(check_size(1).is_ok());
        assert!(check_size(MAX_BATCH_ITEMS).is_ok());
    }

    /// The largest answer a new ticket gets, beyond what its request
    /// carried: the longest tenant and queue names, every time field, and
    /// the longest waiting reason (a pause with the longest reason, in
    /// four-byte characters).
    #[test]
    fn a_new_tickets_answer_fits_the_headroom() {
        use std::time::{Duration, SystemTime};

        use crate::domain::{NewTicket, QueueName, QueuePause, Ticket};
        use crate::engine::QueueFlow;

        let tenant = "t".repeat(crate::auth::MAX_TENANT_LEN);
        let name = "q".repeat(crate::domain::queue::MAX_QUEUE_NAME_LEN);
        let queue = QueueName::scoped(Some(&tenant), QueueName::parse(&name).unwrap());
        let now = SystemTime::now();
        let new = NewTicket {
            tenant: Some(tenant.as_str().into()),
            idempotency_key: Some("k".repeat(convert::MAX_IDEMPOTENCY_KEY_LEN)),
            timeout: Some(Duration::from_secs(3600)),
            attempt_timeout: Some(Duration::from_secs(60)),
            priority: -1000,
            max_attempts: u32::MAX,
            ..NewTicket::for_test(queue)
        };
        let key_bytes = new.idempotency_key.as_ref().map_or(0, String::len);
        let ticket = Ticket::create(new.id, new, now);
        let flow = QueueFlow {
            pause: Some(QueuePause {
                by: "k".repeat(128),
                at: now,
                reason: "\u{1F512}".repeat(crate::domain::queue::MAX_PAUSE_REASON_CHARS),
            }),
            ..QueueFlow::default()
        };
        let context = convert::WaitContext {
            tickets_ahead: u64::MAX,
            workers: usize::MAX,
            scoped_names: true,
            flow: Some(&flow),
            hide_payloads: false,
            target: None,
        };
        let item = pb::SubmitBatchResult {
            ticket: Some(convert::ticket_to_pb(&ticket, context)),
            error: None,
        };
        let beyond_request = prost::Message::encoded_len(&item) - key_bytes;
        assert!(
            beyond_request * MAX_BATCH_ITEMS < BATCH_ANSWER_HEADROOM,
            "{beyond_request} bytes per ticket"
        );
    }
}
