//! Submit, work, and read the result back every way a client can.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use asyncgate_client::pb;
use asyncgate_client::worker::{TaskContext, TaskError, handler_fn};
use asyncgate_client::{Submit, payload};
use asyncgate_tests::{TestGateway, as_json, finished, json, state};

fn upper() -> impl asyncgate_client::worker::Handler {
    handler_fn(|task: TaskContext| async move {
        let text = task
            .json()
            .and_then(|v| v.as_str().map(str::to_uppercase))
            .ok_or_else(|| TaskError::fatal("expected a JSON string"))?;
        Ok(payload::json(text.into()))
    })
}

#[tokio::test]
async fn submit_work_then_long_poll_and_watch() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let worker = gateway.spawn_worker("upper", upper());
    worker.connected().await.expect("worker connects");

    let ticket = client
        .submit(Submit::new("upper").json("hello".into()).build())
        .await
        .unwrap();
    assert_eq!(state(&ticket), pb::TicketState::Pending);
    assert_eq!(
        uuid::Uuid::parse_str(&ticket.id).unwrap().get_version_num(),
        7
    );

    let done = finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    assert_eq!(as_json(done.result.as_ref()), serde_json::json!("HELLO"));
    assert_eq!(done.attempt, 1);
    assert!(done.waiting_reason.is_none());

    // Watching a finished ticket yields its terminal snapshot and ends.
    let events: Vec<_> = client
        .watch(&ticket.id, None)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 1);
    let event = events[0].as_ref().unwrap();
    assert_eq!(event.kind, pb::TicketEventKind::Snapshot as i32);
    assert_eq!(
        state(event.ticket.as_ref().unwrap()),
        pb::TicketState::Succeeded
    );
    worker.shutdown();
    worker.join().await;
}

#[tokio::test]
async fn execute_streams_from_the_new_ticket_to_its_result() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let worker = gateway.spawn_worker("upper", upper());
    let mut events = client
        .execute(Submit::new("upper").json("abc".into()).build())
        .await
        .unwrap();
    let first = events.next().await.unwrap().unwrap();
    let first_ticket = first.ticket.unwrap();
    assert_eq!(first.kind, pb::TicketEventKind::Snapshot as i32);
    assert!(!first_ticket.id.is_empty());
    let mut last = None;
    let mut seqs = vec![first.seq];
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        seqs.push(event.seq);
        last = Some(event);
    }
    let last = last.expect("a terminal event");
    let ticket = last.ticket.unwrap();
    assert_eq!(ticket.id, first_ticket.id);
    assert_eq!(state(&ticket), pb::TicketState::Succeeded);
    assert_eq!(as_json(ticket.result.as_ref()), serde_json::json!("ABC"));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs {seqs:?}");
    worker.shutdown();
}

#[tokio::test]
async fn higher_priority_first_then_fifo() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut expected = Vec::new();
    let mut submitted = Vec::new();
    for (label, priority) in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -3)] {
        let t = client
            .submit(
                Submit::new("prio")
                    .json(label.into())
                    .priority(priority)
                    .build(),
            )
            .await
            .unwrap();
        submitted.push((label, priority, t.id));
    }
    for wanted in ["b", "d", "a", "c", "e"] {
        expected.push(wanted.to_string());
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let worker = gateway
        .worker("prio")
        .max_in_flight(1)
        .handler(handler_fn(move |task: TaskContext| {
            let seen = seen.clone();
            async move {
                let label = task
                    .json()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap();
                seen.lock().unwrap().push(label);
                Ok(payload::json(serde_json::Value::Null))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    for (_, _, id) in &submitted {
        let t = client.get(id, Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(state(&t), pb::TicketState::Succeeded);
    }
    assert_eq!(*order.lock().unwrap(), expected);
    worker.shutdown();
}

/// `Execute` watches a new ticket from before it exists (its first event is
/// the submitted state, with the queue counted); a repeated idempotency key
/// streams the original ticket instead, from wherever it has got to.
#[tokio::test]
async fn execute_counts_the_queue_and_follows_a_repeated_key() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let keyed = Submit::new("later")
        .json("first".into())
        .idempotency_key("job-1")
        .build();
    let original = client.submit(keyed.clone()).await.unwrap();
    let submitted = client
        .submit(Submit::new("later").json("second".into()).build())
        .await
        .unwrap();
    assert_eq!(submitted.waiting_reason.unwrap().tickets_ahead, 1);

    let mut third = client
        .execute(Submit::new("later").json("third".into()).build())
        .await
        .unwrap();
    let snapshot = third.next().await.unwrap().unwrap();
    assert_eq!(snapshot.kind, pb::TicketEventKind::Snapshot as i32);
    let ticket = snapshot.ticket.unwrap();
    assert_eq!(state(&ticket), pb::TicketState::Pending);
    assert_eq!(ticket.waiting_reason.unwrap().tickets_ahead, 2);

    let mut repeated = client.execute(keyed).await.unwrap();
    let snapshot = repeated.next().await.unwrap().unwrap();
    assert_eq!(snapshot.ticket.unwrap().id, original.id);

    let worker = gateway.spawn_worker("later", upper());
    let last = |events: Vec<Result<pb::TicketEvent, _>>| {
        events.into_iter().last().unwrap().unwrap().ticket.unwrap()
    };
    let done = last(repeated.collect().await);
    assert_eq!(done.id, original.id);
    assert_eq!(as_json(done.result.as_ref()), serde_json::json!("FIRST"));
    let done = last(third.collect().await);
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    assert_eq!(as_json(done.result.as_ref()), serde_json::json!("THIRD"));
    worker.shutdown();
    worker.join().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_original_ticket() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let request = Submit::new("idem")
        .json(1.into())
        .idempotency_key("order-42")
        .build();
    let first = client.submit(request.clone()).await.unwrap();
    let second = client.submit(request).await.unwrap();
    assert_eq!(first.id, second.id);
    let other = client
        .submit(
            Submit::new("idem")
                .json(1.into())
                .idempotency_key("order-43")
                .build(),
        )
        .await
        .unwrap();
    assert_ne!(first.id, other.id);
    let listed = client
        .list(pb::ListTicketsRequest {
            queue: "idem".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.tickets.len(), 2);
    // The same key on another queue is a different request: refused.
    let conflict = client
        .submit(Submit::new("elsewhere").idempotency_key("order-42").build())
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
}

#[tokio::test]
async fn waiting_reason_explains_a_pending_ticket() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let first = client.submit(Submit::new("explain").build()).await.unwrap();
    let reason = first.waiting_reason.unwrap();
    assert_eq!(reason.kind, pb::WaitingReasonKind::NoWorkers as i32);
    assert!(
        reason.description.contains("no worker is connected"),
        "{}",
        reason.description
    );

    // A worker that holds its one task forever: the others queue behind it.
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(4);
    let worker = gateway
        .worker("explain")
        .max_in_flight(1)
        .handler(handler_fn(move |task: TaskContext| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(()).await;
                task.cancelled().await;
                Err(TaskError::fatal("cancelled"))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    started_rx.recv().await.unwrap();
    let second = client.submit(Submit::new("explain").build()).await.unwrap();
    let third = client.submit(Submit::new("explain").build()).await.unwrap();
    let third = client.get(&third.id, None).await.unwrap();
    let reason = third.waiting_reason.unwrap();
    assert_eq!(reason.kind, pb::WaitingReasonKind::Queued as i32);
    assert_eq!(reason.tickets_ahead, 1);
    assert!(
        reason.description.contains("1 ticket ahead"),
        "{}",
        reason.description
    );

    let running = client.get(&first.id, None).await.unwrap();
    let reason = running.waiting_reason.unwrap();
    assert_eq!(reason.kind, pb::WaitingReasonKind::Leased as i32);
    assert_eq!(reason.worker_session, worker.session_id().unwrap());
    assert!(
        reason.description.contains("leased to worker"),
        "{}",
        reason.description
    );
    for id in [&first.id, &second.id, &third.id] {
        client.cancel(id, "test over").await.unwrap();
    }
    worker.shutdown();
}

#[tokio::test]
async fn list_pages_through_filtered_tickets() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            client
                .submit(Submit::new("listed").json(i.into()).build())
                .await
                .unwrap()
                .id,
        );
    }
    client
        .submit(Submit::new("unlisted").build())
        .await
        .unwrap();
    client.cancel(&ids[1], "").await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListTicketsRequest {
                queue: "listed".into(),
                states: vec![pb::TicketState::Pending as i32],
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.tickets.len() <= 2);
        seen.extend(page.tickets.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec![
            ids[0].clone(),
            ids[2].clone(),
            ids[3].clone(),
            ids[4].clone()
        ]
    );
}

#[tokio::test]
async fn binary_payloads_round_trip_untouched() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let worker = gateway.spawn_worker(
        "bin",
        handler_fn(|task: TaskContext| async move {
            let mut bytes = payload::as_binary(task.payload())
                .cloned()
                .unwrap_or_default()
                .to_vec();
            bytes.reverse();
            Ok(payload::binary(bytes, "application/octet-stream"))
        }),
    );
    let data: Vec<u8> = (0..=255u8).collect();
    let t = client
        .submit(
            Submit::new("bin")
                .binary(data.clone(), "application/octet-stream")
                .build(),
        )
        .await
        .unwrap();
    let done = finished(&client, &t.id).await;
    let mut expected = data;
    expected.reverse();
    assert_eq!(
        payload::as_binary(done.result.as_ref().unwrap())
            .unwrap()
            .as_ref(),
        expected.as_slice()
    );
    let _ = json(serde_json::Value::Null);
    worker.shutdown();
}
