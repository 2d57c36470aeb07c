//! Unit tests of `rpc/convert.rs`.

use super::*;
use tonic::Code;

fn limits() -> SubmitLimits {
    SubmitLimits {
        max_payload_bytes: 1024,
        default_max_attempts: 3,
        max_attempts_limit: 10,
        callbacks: Default::default(),
    }
}

fn request() -> pb::SubmitRequest {
    pb::SubmitRequest {
        queue: "upper".into(),
        payload: Some(pb::Payload {
            kind: Some(pb::payload::Kind::Binary(bytes::Bytes::from_static(b"hi"))),
            content_type: String::new(),
        }),
        ..Default::default()
    }
}

fn refused(mutate: impl FnOnce(&mut pb::SubmitRequest)) -> String {
    let mut request = request();
    mutate(&mut request);
    let error = new_ticket(&Caller::anonymous(), request, &limits()).unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    error.to_string()
}

#[test]
fn valid_request_gets_defaults() {
    let new = new_ticket(&Caller::anonymous(), request(), &limits()).unwrap();
    assert_eq!(new.max_attempts, 3);
    assert_eq!(new.idempotency_key, None);
    assert_eq!(new.timeout, None);
}

#[test]
fn each_bad_field_is_named() {
    assert!(refused(|r| r.queue.clear()).contains("invalid queue"));
    assert!(refused(|r| r.queue = "a/b".into()).contains("'/'"));
    assert!(refused(|r| r.priority = 5000).contains("invalid priority"));
    assert!(refused(|r| r.max_attempts = 11).contains("invalid max_attempts"));
    assert!(refused(|r| r.idempotency_key = "k".repeat(300)).contains("idempotency_key"));
    assert!(
        refused(|r| r.timeout = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0
        }))
        .contains("invalid timeout")
    );
    assert!(
        refused(|r| r.attempt_timeout = Some(prost_types::Duration::default()))
            .contains("must be positive")
    );
    let mut request = request();
    request.payload = Some(pb::Payload {
        kind: Some(pb::payload::Kind::Binary(vec![0u8; 2000].into())),
        content_type: String::new(),
    });
    let too_large = new_ticket(&Caller::anonymous(), request, &limits()).unwrap_err();
    assert_eq!(too_large.code(), Code::ResourceExhausted);
    assert!(
        too_large
            .to_string()
            .contains("payload is 2003 bytes; the limit is 1024 bytes (--max-payload-bytes)"),
        "{too_large}"
    );
    assert!(
        refused(|r| { r.metadata = (0..100).map(|i| (i.to_string(), String::new())).collect() })
            .contains("metadata")
    );
}

#[test]
fn bad_ids_say_what_a_good_one_looks_like() {
    let error = ticket_id("xyz", "id").unwrap_err();
    assert!(error.to_string().contains("must be a UUID"));
    assert!(
        ticket_id("", "id")
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
}
#[test]
fn operation_names_say_the_expected_form() {
    let id = TicketId::new();
    assert_eq!(
        operation_id(&operation_name(&id.to_string()), "name").unwrap(),
        id
    );
    for bad in [
        "",
        "tickets/x",
        &id.to_string(),
        "operations/",
        "operations/xyz",
    ] {
        let error = operation_id(bad, "name").unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(
            error.to_string().contains("operations/{ticket id}"),
            "{error}"
        );
    }
}

fn ticket(state: pb::TicketState, error: Option<(i32, &str)>) -> pb::Ticket {
    pb::Ticket {
        id: TicketId::new().to_string(),
        state: state as i32,
        result: (state == pb::TicketState::Succeeded).then(|| pb::Payload {
            content_type: "text/plain".into(),
            ..Default::default()
        }),
        error: error.map(|(code, message)| pb::TicketError {
            code,
            message: message.into(),
            retryable: false,
        }),
        ..Default::default()
    }
}

fn status(operation: &lro::Operation) -> (i32, String) {
    match &operation.result {
        Some(lro::operation::Result::Error(status)) => (status.code, status.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn tickets_map_to_operations() {
    let pending = operation(ticket(pb::TicketState::Pending, None));
    assert!(!pending.done && pending.result.is_none());
    let metadata = pending.metadata.as_ref().unwrap();
    assert_eq!(metadata.type_url, "type.googleapis.com/asyncgate.v1.Ticket");
    let snapshot: pb::Ticket = metadata.to_msg().unwrap();
    assert_eq!(pending.name, format!("operations/{}", snapshot.id));

    let succeeded = operation(ticket(pb::TicketState::Succeeded, None));
    assert!(succeeded.done);
    let Some(lro::operation::Result::Response(response)) = &succeeded.result else {
        panic!("expected a response");
    };
    let payload: pb::Payload = response.to_msg().unwrap();
    assert_eq!(payload.content_type, "text/plain");
    // The result is in `response` only.
    let snapshot: pb::Ticket = succeeded.metadata.unwrap().to_msg().unwrap();
    assert_eq!(snapshot.result, None);

    let failed = operation(ticket(pb::TicketState::Failed, Some((10, "worker lost"))));
    assert_eq!(status(&failed), (10, "worker lost".into()));
    let unknown = operation(ticket(pb::TicketState::Failed, Some((0, ""))));
    assert_eq!(status(&unknown), (2, "the ticket failed".into()));
    let cancelled = operation(ticket(
        pb::TicketState::Cancelled,
        Some((1, "cancelled by a caller")),
    ));
    assert_eq!(status(&cancelled), (1, "cancelled by a caller".into()));
    let expired = operation(ticket(pb::TicketState::Expired, Some((2, "timed out"))));
    assert_eq!(status(&expired), (4, "timed out".into()));
}

#[test]
fn operations_filters_parse_or_say_what_is_supported() {
    assert_eq!(
        operations_filter(&Caller::anonymous(), "").unwrap(),
        OperationsFilter::default()
    );
    let filter =
        operations_filter(&Caller::anonymous(), "done = false AND queue = \"emails\"").unwrap();
    assert_eq!(filter.queue.unwrap().as_str(), "emails");
    assert_eq!(
        filter.states,
        Some(vec![TicketState::Pending, TicketState::Running])
    );
    assert_eq!(
        operations_filter(&Caller::anonymous(), "state=succeeded")
            .unwrap()
            .states,
        Some(vec![TicketState::Succeeded])
    );
    assert_eq!(
        operations_filter(
            &Caller::anonymous(),
            "state = TICKET_STATE_FAILED AND done = true"
        )
        .unwrap()
        .states,
        Some(vec![TicketState::Failed])
    );
    assert_eq!(
        operations_filter(&Caller::anonymous(), "done = true AND state = PENDING")
            .unwrap()
            .states,
        Some(vec![])
    );
    for bad in [
        "metadata.kind = x",
        "done",
        "done = yes",
        "state = DONE",
        "state = PENDING AND state = RUNNING",
        "done = true OR done = false",
    ] {
        let error = operations_filter(&Caller::anonymous(), bad).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{bad}");
        assert!(
            error.to_string().contains("supported syntax"),
            "{bad}: {error}"
        );
    }
    assert!(operations_filter(&Caller::anonymous(), "queue = \"a/b\"").is_err());
}

#[test]
fn pages_are_checked() {
    assert_eq!(page(0, "", false, "ListOperations").unwrap(), (100, None));
    assert!(page(5000, "", false, "ListOperations").is_err());
    let error = page(10, "nope", false, "ListOperations").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("previous ListOperations response")
    );
}
