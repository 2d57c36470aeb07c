//! Unit tests of the worker protocol's edge (`rpc/convert/worker.rs`).

use super::*;

fn hello(worker_name: &str) -> Result<String, GatewayError> {
    hello_from_pb(
        &Caller::anonymous(),
        pb::Hello {
            worker_name: worker_name.into(),
            queues: vec!["q".into()],
            max_in_flight: 1,
            batches: false,
        },
    )
    .map(|hello| hello.worker_name)
}

fn refusal(worker_name: &str) -> (String, String) {
    match hello(worker_name) {
        Err(GatewayError::InvalidArgument { field, reason }) => (field, reason),
        other => panic!("{worker_name:?} was not refused: {other:?}"),
    }
}

#[test]
fn worker_names_are_printable_and_bounded() {
    assert_eq!(hello("").unwrap(), "unnamed");
    assert_eq!(
        hello("host-42 (émigré 日本)").unwrap(),
        "host-42 (émigré 日本)"
    );
    let longest = "é".repeat(MAX_WORKER_NAME_BYTES / 2);
    assert_eq!(hello(&longest).unwrap(), longest);

    let (field, reason) = refusal(&format!("{longest}x"));
    assert_eq!(field, "hello.worker_name");
    assert!(
        reason.contains("129 bytes") && reason.contains("128"),
        "{reason}"
    );

    for evil in [
        "evil\n2026-01-01T00:00:00Z  INFO asyncgate::audit: forged",
        "a\rb",
        "tab\there",
        "red\u{1b}[31m",
        "nul\u{0}",
        "c1\u{85}",
    ] {
        let (field, reason) = refusal(evil);
        assert_eq!(field, "hello.worker_name");
        assert!(reason.contains("control character"), "{reason}");
    }
    assert!(refusal("evil\nname").1.contains("U+000A at byte 4"));
}

#[test]
fn a_hellos_queues_are_deduplicated_and_its_credit_bounded() {
    let caller = Caller::anonymous();
    let valid = hello_from_pb(
        &caller,
        pb::Hello {
            worker_name: "w".into(),
            queues: vec!["a".into(), "b".into(), "a".into()],
            max_in_flight: MAX_IN_FLIGHT_LIMIT,
            batches: false,
        },
    )
    .expect("valid");
    let names: Vec<&str> = valid.queues.iter().map(|q| q.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    for (queues, max_in_flight, field) in [
        (vec![], 1, "hello.queues"),
        (
            vec!["q".to_owned(); MAX_QUEUES_PER_WORKER + 1],
            1,
            "hello.queues",
        ),
        (vec!["q".to_owned()], 0, "hello.max_in_flight"),
        (
            vec!["q".to_owned()],
            MAX_IN_FLIGHT_LIMIT + 1,
            "hello.max_in_flight",
        ),
        (vec!["".to_owned()], 1, "hello.queues[0]"),
    ] {
        let hello = pb::Hello {
            worker_name: "w".into(),
            queues,
            max_in_flight,
            batches: false,
        };
        match hello_from_pb(&caller, hello) {
            Err(GatewayError::InvalidArgument { field: named, .. }) => assert_eq!(named, field),
            other => panic!("{field} not refused: {other:?}"),
        }
    }
}

fn result(
    ticket_id: &str,
    lease_id: &str,
    outcome: Option<pb::task_result::Outcome>,
) -> FromWorker {
    let message = pb::WorkerMessage {
        kind: Some(In::Result(pb::TaskResult {
            ticket_id: ticket_id.into(),
            lease_id: lease_id.into(),
            outcome,
        })),
        ..Default::default()
    };
    from_pb(&Caller::anonymous(), message, 64)
}

#[test]
fn a_report_with_a_bad_id_is_refused_naming_the_ids_as_sent() {
    let lease = LeaseId::new().to_string();
    let FromWorker::Result(Report::BadIds {
        ticket_id, error, ..
    }) = result("not-an-id", &lease, None)
    else {
        panic!("bad ids");
    };
    assert_eq!(ticket_id, "not-an-id");
    assert!(
        matches!(&error, GatewayError::InvalidArgument { field, .. } if field == "result.ticket_id"),
        "{error:?}"
    );
}

#[test]
fn a_result_body_is_checked_only_once_its_ids_parse() {
    let (ticket, lease) = (TicketId::new().to_string(), LeaseId::new().to_string());
    // No outcome: refused naming the field.
    let FromWorker::Result(Report::Lease {
        body: Err(error), ..
    }) = result(&ticket, &lease, None)
    else {
        panic!("a refused body");
    };
    assert!(error.to_string().contains("result.outcome"), "{error}");

    // Too large a success fails the ticket with the reason.
    let large = pb::Payload {
        kind: Some(pb::payload::Kind::Binary(vec![0; 100].into())),
        ..Default::default()
    };
    let success = Some(pb::task_result::Outcome::Success(large));
    let FromWorker::Result(Report::Lease {
        body: Ok(Outcome::Failure(failure)),
        ..
    }) = result(&ticket, &lease, success)
    else {
        panic!("a failure");
    };
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("--max-payload-bytes"),
        "{}",
        failure.message
    );

    // A failure's code is a gRPC code; 0 (OK) is not a failure's.
    for (sent, kept) in [(0, codes::UNKNOWN), (99, 16), (-3, 1), (5, 5)] {
        let failure = pb::TaskFailure {
            code: sent,
            message: "x".repeat(MAX_FAILURE_MESSAGE_CHARS + 10),
            retryable: true,
        };
        let FromWorker::Result(Report::Lease {
            body: Ok(Outcome::Failure(error)),
            ..
        }) = result(
            &ticket,
            &lease,
            Some(pb::task_result::Outcome::Failure(failure)),
        )
        else {
            panic!("a failure");
        };
        assert_eq!(error.code, kept, "{sent}");
        assert_eq!(error.message.len(), MAX_FAILURE_MESSAGE_CHARS);
    }
}

#[test]
fn an_ack_carries_its_errors_code_and_says_what_was_refused() {
    let ack = |ack| match to_pb(ToWorker::Ack {
        ticket_id: "t".into(),
        lease_id: "l".into(),
        ack,
    })
    .kind
    {
        Some(Out::ResultAck(ack)) => ack,
        other => panic!("{other:?}"),
    };
    let refused = ack(Ack::ProgressRefused(GatewayError::invalid(
        "progress.output",
        "bad",
    )));
    assert_eq!(refused.code, tonic::Code::InvalidArgument as i32);
    assert!(
        refused.message.starts_with("progress refused: "),
        "{}",
        refused.message
    );
    let recorded = ack(Ack::Recorded { state: "succeeded" });
    assert_eq!(recorded.code, 0);
    assert_eq!(recorded.message, "recorded; ticket is succeeded");
    assert_eq!(ack(Ack::Duplicate).code, tonic::Code::AlreadyExists as i32);
}
