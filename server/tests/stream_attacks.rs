//! Attacks on the per-message streams of the real `asyncgate-server`
//! binary: producers that never read their answers, a stream that follows
//! more tickets than it may, ids that are not ids, another tenant's
//! tickets, and a worker's batches past their limit. Each checks the status or event it got, that the gateway's
//! memory stayed bounded, and that everyone else was served meanwhile.

use std::time::Duration;

use asyncgate_client::{Client, Submit, pb};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

mod common;
use common::{free_port, rss, start_server, tenant_keys, wait_until_serving};

fn item(queue: &str, body: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        queue: queue.to_owned(),
        payload: Some(asyncgate_client::payload::json(serde_json::json!(body))),
        ..Default::default()
    }
}

/// Eight producers on one connection send 1 KiB items as fast as they can
/// and never read an answer. Each is held back once the gateway's window,
/// its answer buffer and HTTP/2 flow control are full; the gateway's memory
/// grows by a bounded amount and another client is served throughout. (The
/// stalled streams hold their own connection's flow-control window, so a
/// call on that same connection waits too: that is HTTP/2, and it hurts
/// only the client that stopped reading. The SDK's `Submitter` always
/// reads its answers.)
#[tokio::test]
async fn producers_that_never_read_answers_cannot_grow_the_gateway() {
    let port = free_port();
    let gateway = start_server("memory", port, &[]);
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    let pid = gateway.id().unwrap();
    let before = rss(pid);
    let body = "x".repeat(1024);
    let mut held = Vec::new();
    let mut sent_total = 0u64;
    for producer in 0..8 {
        let (tx, rx) = mpsc::channel::<pb::SubmitRequest>(1);
        let answers = client
            .raw()
            .submit_stream(ReceiverStream::new(rx))
            .await
            .unwrap();
        let mut sent = 0u64;
        loop {
            let request = item(&format!("flood-{producer}"), &body);
            match tokio::time::timeout(Duration::from_millis(300), tx.send(request)).await {
                Ok(Ok(())) => sent += 1,
                Ok(Err(_)) => panic!("producer {producer}: the stream ended"),
                Err(_) => break,
            }
            assert!(sent < 100_000, "producer {producer} was never held back");
        }
        sent_total += sent;
        held.push((tx, answers));
    }
    let grown = rss(pid).saturating_sub(before);
    // Each stream holds at most its window and buffers; the tickets stored
    // are the bulk (about 1.5 KiB each in memory).
    assert!(
        grown < 400 << 20,
        "the gateway grew by {} MiB for {sent_total} items",
        grown >> 20
    );
    let innocent = Client::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let other = innocent
        .submit(Submit::new("innocent").json(serde_json::json!("hi")))
        .await
        .expect("another client is served");
    assert_eq!(other.state(), pb::TicketState::Pending);
    drop(held);
}

/// A WatchTickets stream asks for more tickets than it may follow, for ids
/// that are not ids, and for ids that do not exist: each refused one gets
/// its own event with a precise code, the rest are followed, and nothing
/// else is disturbed.
#[tokio::test]
async fn a_watch_stream_over_its_limit_or_with_bad_ids_gets_an_event_each() {
    let port = free_port();
    let _gateway = start_server("memory", port, &[]);
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    // 10,050 pending tickets, stored through one SubmitStream.
    let items = (0..10_050).map(|n| item("deep", &n.to_string()));
    let ids: Vec<String> = client
        .raw()
        .submit_stream(futures::stream::iter(items))
        .await
        .unwrap()
        .into_inner()
        .map(|answer| answer.unwrap().ticket.unwrap().id)
        .collect()
        .await;
    let (tx, rx) = mpsc::channel(4);
    let mut events = client
        .raw()
        .watch_tickets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Bad and unknown ids first (an unknown id holds a slot until its
    // lookup fails), then more real ones than a stream may follow.
    let unknown = uuid::Uuid::now_v7().to_string();
    let huge = "f".repeat(100_000);
    let subscribe = |ids: Vec<&str>| pb::WatchTicketsRequest {
        add: ids
            .into_iter()
            .map(|id| pb::WatchSubscription {
                id: id.to_owned(),
                after_seq: None,
            })
            .collect(),
        ..Default::default()
    };
    tx.send(subscribe(vec!["", "not-an-id", &huge, &unknown]))
        .await
        .unwrap();
    let (mut snapshots, mut exhausted, mut invalid, mut missing) = (0, 0, 0, 0);
    let mut sent_all = false;
    while snapshots + exhausted + invalid + missing < 10_054 {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("events keep coming")
            .expect("the stream is open")
            .expect("an event");
        match event.error.map(|e| Code::from(e.code)) {
            None if event.kind == pb::TicketEventKind::Snapshot as i32 => snapshots += 1,
            None => {}
            Some(Code::ResourceExhausted) => exhausted += 1,
            Some(Code::InvalidArgument) => {
                assert!(event.ticket_id.len() <= 100_000);
                invalid += 1;
            }
            Some(Code::NotFound) => missing += 1,
            Some(other) => panic!("unexpected {other:?}"),
        }
        if !sent_all && invalid + missing == 4 {
            tx.send(subscribe(ids.iter().map(String::as_str).collect()))
                .await
                .unwrap();
            sent_all = true;
        }
    }
    assert_eq!((snapshots, exhausted, invalid, missing), (10_000, 50, 3, 1));
    // Everyone else is served.
    let innocent = Client::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let other = innocent.submit(Submit::new("innocent")).await.unwrap();
    assert_eq!(other.state(), pb::TicketState::Pending);
}

/// Tenant 1 subscribes to tenant 2's tickets on WatchTickets and submits on
/// SubmitStream: the subscription is NOT_FOUND word for word as an unknown
/// id (no existence leak), and its submits land in its own queues.
#[tokio::test]
async fn streams_keep_tenants_apart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tenant_keys(dir.path());
    let port = free_port();
    let _gateway = start_server("memory", port, &["--keys", keys.to_str().unwrap()]);
    let url = format!("http://127.0.0.1:{port}");
    let as_key = |key: &str| {
        Client::connect_lazy(url.clone())
            .unwrap()
            .with_api_key(key)
            .unwrap()
    };
    let (t1, t2) = (as_key("t1-app-secret"), as_key("t2-app-secret"));
    wait_until_serving(&t1).await;
    let secret = t2.submit(Submit::new("emails")).await.unwrap();
    let unknown = uuid::Uuid::now_v7().to_string();

    let (tx, rx) = mpsc::channel(4);
    let mut events = t1
        .raw()
        .watch_tickets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::WatchTicketsRequest {
        add: [&secret.id, &unknown]
            .iter()
            .map(|id| pb::WatchSubscription {
                id: (*id).clone(),
                after_seq: None,
            })
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut refusals = std::collections::HashMap::new();
    while refusals.len() < 2 {
        let event = events.next().await.unwrap().unwrap();
        assert!(event.ticket.is_none(), "tenant 1 saw a ticket: {event:?}");
        let error = event.error.expect("a refusal");
        refusals.insert(event.ticket_id, error);
    }
    let (theirs, nobodys) = (&refusals[&secret.id], &refusals[&unknown]);
    assert_eq!(theirs.code, Code::NotFound as i32);
    assert_eq!(
        theirs.message.replace(&secret.id, "ID"),
        nobodys.message.replace(&unknown, "ID"),
        "another tenant's ticket reads as one that does not exist"
    );

    let answers: Vec<pb::SubmitResult> = t1
        .raw()
        .submit_stream(futures::stream::iter([item("emails", "mine")]))
        .await
        .unwrap()
        .into_inner()
        .map(|answer| answer.unwrap())
        .collect()
        .await;
    let mine = answers[0].ticket.as_ref().expect("stored");
    assert_eq!(mine.queue, "emails", "named as tenant 1 names it");
    // Tenant 2 cannot see it.
    let hidden = t2.get(&mine.id, None).await.unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
}

/// A worker sends batches past the limit: 10,001 results in one message
/// end its stream with INVALID_ARGUMENT naming `result_batch`; 10,000
/// results for leases it does not hold are each refused on their own ack
/// and the session carries on. The gateway's memory stays bounded and
/// another client is served.
#[tokio::test]
async fn worker_batches_past_the_limit_are_refused() {
    use asyncgate_proto::v1::workers_client::WorkersClient;
    let port = free_port();
    let gateway = start_server("memory", port, &[]);
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::connect_lazy(url.clone()).unwrap();
    wait_until_serving(&client).await;
    let before = rss(gateway.id().unwrap());
    let garbage = |n: usize| pb::TaskResult {
        ticket_id: format!("not-a-ticket-{n}"),
        lease_id: "not-a-lease".into(),
        outcome: Some(pb::task_result::Outcome::Success(
            asyncgate_client::payload::json(serde_json::json!(n)),
        )),
    };
    for (count, ends) in [(10_001, true), (10_000, false)] {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
                worker_name: "batcher".into(),
                queues: vec!["batched".into()],
                max_in_flight: 1,
                batches: true,
            })),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut inbound = WorkersClient::new(channel)
            .connect(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(pb::WorkerMessage {
            result_batch: (0..count).map(garbage).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut refused = 0;
        let end = loop {
            match inbound.message().await {
                Ok(Some(message)) => {
                    let acks = message.ack_batch.into_iter().chain(match message.kind {
                        Some(pb::dispatch_message::Kind::ResultAck(ack)) => Some(ack),
                        _ => None,
                    });
                    for ack in acks {
                        assert_eq!(ack.code, Code::InvalidArgument as i32, "{ack:?}");
                        refused += 1;
                    }
                    if !ends && refused == count {
                        break None;
                    }
                }
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break Some(status),
            }
        };
        if ends {
            let status = end.expect("the stream ends");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("result_batch"), "{status:?}");
        } else {
            assert_eq!(refused, count, "each result refused on its own");
        }
    }
    let grown = rss(gateway.id().unwrap()).saturating_sub(before);
    assert!(grown < 200 << 20, "the gateway grew by {} MiB", grown >> 20);
    let other = client.submit(Submit::new("innocent")).await.unwrap();
    assert_eq!(other.state(), pb::TicketState::Pending);
}
