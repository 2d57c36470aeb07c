//! `Gateway.SubmitBatch` against a real gateway: each item answered on its
//! own and in order, the call's own limits, a durable batch kept across a
//! restart, and an answer that stays small whatever the batch names.

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{ClientError, SUBMIT_BATCH_LIMIT, Submit, payload, pb};
use asyncgate_server::Config;
use asyncgate_tests::{TestGateway, as_json, fast_config, finished, state};
use tonic::Code;
use tonic_types::StatusExt as _;

/// A gateway whose payload limit is 1 KiB, so that an item over it is easy
/// to build.
async fn small_payloads() -> TestGateway {
    TestGateway::start_with(Config {
        max_payload_bytes: 1024,
        ..fast_config()
    })
    .await
}

/// A handler that answers each task with its payload.
fn echo() -> impl asyncgate_client::worker::Handler {
    handler_fn(|task: TaskContext| async move { Ok(task.payload().clone()) })
}

/// The code and message of a refused item.
fn refused(answer: &Result<pb::Ticket, ClientError>) -> (Code, String) {
    let error = answer.as_ref().expect_err("the item is refused");
    (error.code(), error.to_string())
}

#[tokio::test]
async fn a_mixed_batch_answers_each_item_in_order_and_the_valid_ones_run() {
    let gateway = small_payloads().await;
    let client = gateway.client().await;
    let answers = client
        .submit_batch([
            Submit::new("mixed").json("first".into()),
            Submit::new("mixed")
                .json("bad priority".into())
                .priority(5000),
            Submit::new("mixed").text("x".repeat(2000)),
            Submit::new("mixed")
                .json("second".into())
                .idempotency_key("k"),
            Submit::new("mixed")
                .json("repeat".into())
                .idempotency_key("k"),
            Submit::new("").json("no queue".into()),
            Submit::new("mixed").json("third".into()),
        ])
        .await
        .expect("the call succeeds");
    assert_eq!(answers.len(), 7);
    let (code, message) = refused(&answers[1]);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("invalid priority: 5000"), "{message}");
    let (code, message) = refused(&answers[2]);
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.contains("payload is 2"), "{message}");
    assert!(message.contains("--max-payload-bytes"), "{message}");
    let (code, message) = refused(&answers[5]);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("invalid queue"), "{message}");
    let ticket = |at: usize| answers[at].as_ref().expect("stored").clone();
    assert_eq!(
        ticket(4).id,
        ticket(3).id,
        "a repeated key yields one ticket"
    );
    for at in [0, 3, 6] {
        assert_eq!(state(&ticket(at)), pb::TicketState::Pending);
        assert_eq!(ticket(at).queue, "mixed");
        assert!(
            ticket(at).waiting_reason.is_some(),
            "presented as Submit does"
        );
    }
    let worker = gateway.spawn_worker("mixed", echo());
    for (at, text) in [(0, "first"), (3, "second"), (6, "third")] {
        let done = finished(&client, &ticket(at).id).await;
        assert_eq!(state(&done), pb::TicketState::Succeeded);
        assert_eq!(as_json(done.result.as_ref()), serde_json::json!(text));
    }
    // Nothing else was stored.
    let listed = client
        .list(pb::ListTicketsRequest {
            queue: "mixed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.tickets.len(), 3);
    worker.shutdown();
}

#[tokio::test]
async fn an_empty_or_oversized_batch_is_refused_naming_requests() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let body = || payload::binary(vec![7u8; 1024], "application/octet-stream");
    let items = |n: usize| (0..n).map(move |_| Submit::new("big").payload(body()));
    let requests = |n: usize| -> Vec<Submit> { items(n).collect() };
    for (n, says) in [
        (0, "is empty"),
        (SUBMIT_BATCH_LIMIT + 1, "the limit is 1000"),
    ] {
        let error = client.submit_batch(requests(n)).await.expect_err("refused");
        let ClientError::Status(status) = &error else {
            panic!("{error}");
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{error}");
        assert!(
            status.message().starts_with("invalid requests: "),
            "{error}"
        );
        assert!(status.message().contains(says), "{error}");
        let field = status
            .get_details_bad_request()
            .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()));
        assert_eq!(field.as_deref(), Some("requests"));
    }
    // 1,000 requests of 1 KiB fit the default message limit.
    let answers = client
        .submit_batch(requests(SUBMIT_BATCH_LIMIT))
        .await
        .unwrap();
    assert!(answers.iter().all(Result::is_ok));
    let queue = client.admin().get_queue("big").await.unwrap();
    assert_eq!(
        queue.counts.map(|c| c.pending),
        Some(SUBMIT_BATCH_LIMIT as u64),
        "the refused batch stored nothing"
    );
}

#[tokio::test]
async fn a_durable_gateway_keeps_an_acknowledged_batch_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(TestGateway::durable_config(dir.path())).await;
    let batch = || {
        (0..50).map(|n| {
            Submit::new("kept")
                .json(serde_json::json!(n))
                .idempotency_key(format!("order-{n}"))
        })
    };
    let ids: Vec<String> = gateway
        .client()
        .await
        .submit_batch(batch())
        .await
        .unwrap()
        .into_iter()
        .map(|answer| answer.unwrap().id)
        .collect();
    let gateway = gateway.restart().await;
    let client = gateway.client().await;
    for id in &ids {
        let ticket = client.get(id, None).await.unwrap();
        assert_eq!(state(&ticket), pb::TicketState::Pending);
    }
    // The same batch again finds every ticket by its key.
    let again: Vec<String> = client
        .submit_batch(batch())
        .await
        .unwrap()
        .into_iter()
        .map(|answer| answer.unwrap().id)
        .collect();
    assert_eq!(again, ids);
    let worker = gateway.spawn_worker("kept", echo());
    for (n, id) in ids.iter().enumerate() {
        let done = finished(&client, id).await;
        assert_eq!(as_json(done.result.as_ref()), serde_json::json!(n));
    }
    worker.shutdown();
}

/// A batch naming one finished ticket's key a thousand times answers with
/// that ticket a thousand times, without its result: the answer stays
/// small (it would be a thousand copies of the result).
#[tokio::test]
async fn a_batch_of_one_finished_tickets_key_answers_without_its_result() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let big = "r".repeat(1 << 20);
    let worker = gateway.spawn_worker(
        "found",
        handler_fn(move |_task: TaskContext| {
            let big = big.clone();
            async move { Ok(payload::text(big)) }
        }),
    );
    let first = client
        .submit(Submit::new("found").idempotency_key("once"))
        .await
        .unwrap();
    let done = finished(&client, &first.id).await;
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    worker.shutdown();
    let repeats = (0..SUBMIT_BATCH_LIMIT).map(|_| Submit::new("found").idempotency_key("once"));
    let answers = client.submit_batch(repeats).await.unwrap();
    for answer in &answers {
        let ticket = answer.as_ref().unwrap();
        assert_eq!(ticket.id, first.id);
        assert_eq!(state(ticket), pb::TicketState::Succeeded);
        assert!(ticket.result.is_none(), "GetTicket reads the result");
    }
    let result = client.get(&first.id, None).await.unwrap().result;
    assert!(result.is_some());
}
