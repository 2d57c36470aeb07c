//! The per-message streams against a real gateway: `SubmitStream` answers
//! every item in order once stored (a refused item gets its own error and
//! the stream goes on), and `WatchTickets` carries many tickets' events on
//! one stream, each ticket's gap-free as `WatchTicket` sends them, with
//! subscriptions added and removed by message.

use std::collections::HashMap;
use std::time::Duration;

use asyncgate_client::{Submit, pb};
use asyncgate_tests::{Gate, TestGateway, finished, json, state};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn item(queue: &str, n: u64) -> pb::SubmitRequest {
    pb::SubmitRequest {
        queue: queue.to_owned(),
        payload: Some(json(serde_json::json!(n))),
        ..Default::default()
    }
}

#[tokio::test]
async fn submit_stream_answers_every_item_in_order_once_stored() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let items: Vec<pb::SubmitRequest> = (0..500)
        .map(|n| match n {
            // Two bad items among good ones: refused on their own.
            7 => item("no spaces allowed", n),
            300 => pb::SubmitRequest {
                priority: 5000,
                ..item("bulk", n)
            },
            _ => item("bulk", n),
        })
        .collect();
    let answers: Vec<pb::SubmitResult> = client
        .raw()
        .submit_stream(futures::stream::iter(items))
        .await
        .unwrap()
        .into_inner()
        .map(|answer| answer.unwrap())
        .collect()
        .await;
    assert_eq!(answers.len(), 500);
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer.index, n as u64, "answers come in order");
        match n {
            7 | 300 => {
                let error = answer.error.as_ref().expect("refused");
                assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
                let field = if n == 7 { "queue" } else { "priority" };
                assert!(error.message.contains(field), "{error:?}");
                assert!(answer.ticket.is_none());
            }
            _ => {
                let ticket = answer.ticket.as_ref().expect("stored");
                assert_eq!(state(ticket), pb::TicketState::Pending);
                assert!(answer.error.is_none());
            }
        }
    }
    // Stored: each answered ticket is there, with its own body, in order.
    let ids: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.ticket.as_ref().map(|t| t.id.as_str()))
        .collect();
    assert_eq!(ids.len(), 498);
    let worker = gateway.spawn_worker(
        "bulk",
        asyncgate_client::worker::handler_fn(
            |task: asyncgate_client::worker::TaskContext| async move { Ok(task.payload().clone()) },
        ),
    );
    for (n, id) in [(0usize, ids[0]), (499, ids[497])] {
        let done = finished(&client, id).await;
        assert_eq!(
            done.result.unwrap(),
            json(serde_json::json!(n)),
            "ticket {id} kept item {n}'s body"
        );
    }
    worker.shutdown();
}

/// A producer that sends and never reads the answers is held back by flow
/// control: the gateway stops reading once its window and answer buffer are
/// full, so what it holds for the stream stays bounded, and it serves
/// others meanwhile.
#[tokio::test]
async fn a_producer_that_never_reads_answers_is_held_back() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let (tx, rx) = mpsc::channel::<pb::SubmitRequest>(1);
    let _answers = client
        .raw()
        .submit_stream(ReceiverStream::new(rx))
        .await
        .unwrap();
    let body = "x".repeat(1024);
    let mut sent = 0u64;
    loop {
        let request = pb::SubmitRequest {
            queue: "flood".into(),
            payload: Some(json(serde_json::json!(body))),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_millis(500), tx.send(request)).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => panic!("the stream ended"),
            Err(_) => break,
        }
        assert!(sent < 50_000, "50,000 items went in without a reader");
    }
    // The window (256) and the answer buffer (64) took items; the rest is
    // transport buffering, bounded by HTTP/2 flow control.
    assert!(sent >= 256, "only {sent} items were read");
    // Everyone else is served.
    let other = client.submit(Submit::new("other").build()).await.unwrap();
    assert_eq!(state(&other), pb::TicketState::Pending);
}

/// The events of a WatchTickets stream, by ticket id.
struct Followed {
    events: tonic::Streaming<pb::TicketEvent>,
    requests: mpsc::Sender<pb::WatchTicketsRequest>,
}

impl Followed {
    async fn open(client: &asyncgate_client::Client, terminal_only: bool) -> Followed {
        let (requests, rx) = mpsc::channel(16);
        requests
            .send(pb::WatchTicketsRequest {
                terminal_only,
                ..Default::default()
            })
            .await
            .unwrap();
        let events = client
            .raw()
            .watch_tickets(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Followed { events, requests }
    }

    async fn add(&self, ids: &[&str]) {
        let add = ids
            .iter()
            .map(|id| pb::WatchSubscription {
                id: (*id).to_owned(),
                after_seq: None,
            })
            .collect();
        self.requests
            .send(pb::WatchTicketsRequest {
                add,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> pb::TicketEvent {
        tokio::time::timeout(Duration::from_secs(30), self.events.next())
            .await
            .expect("an event within 30 s")
            .expect("the stream is open")
            .expect("an event, not an error")
    }
}

fn is_terminal(event: &pb::TicketEvent) -> bool {
    event
        .ticket
        .as_ref()
        .is_some_and(|t| asyncgate_client::payload::is_terminal(t.state()))
}

#[tokio::test]
async fn watch_tickets_carries_many_tickets_gap_free_and_refuses_what_it_cannot_serve() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let ticket = client
            .submit(Submit::new("many").payload(json(serde_json::json!(n))))
            .await
            .unwrap();
        ids.push(ticket.id);
    }
    let mut followed = Followed::open(&client, false).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let mut adds: Vec<&str> = ids.iter().map(String::as_str).collect();
    adds.push(&unknown);
    adds.push("not-an-id");
    followed.add(&adds).await;
    let gate = Gate::default();
    let worker = gateway
        .worker("many")
        .max_in_flight(5)
        .handler(asyncgate_client::worker::handler_fn(
            |task: asyncgate_client::worker::TaskContext| async move {
                task.progress(50, "half").await;
                Ok(task.payload().clone())
            },
        ))
        .build()
        .unwrap()
        .spawn();
    let mut seen: HashMap<String, Vec<pb::TicketEvent>> = HashMap::new();
    let mut errors: HashMap<String, pb::ItemError> = HashMap::new();
    while seen
        .values()
        .filter(|e| e.last().is_some_and(is_terminal))
        .count()
        < ids.len()
        || errors.len() < 2
    {
        let event = followed.next().await;
        if event.kind == pb::TicketEventKind::Keepalive as i32 {
            continue;
        }
        assert!(!event.ticket_id.is_empty(), "{event:?}");
        match event.error {
            Some(error) => {
                errors.insert(event.ticket_id.clone(), error);
            }
            None => seen.entry(event.ticket_id.clone()).or_default().push(event),
        }
    }
    assert_eq!(errors[&unknown].code, Code::NotFound as i32, "{errors:?}");
    assert_eq!(errors["not-an-id"].code, Code::InvalidArgument as i32);
    for id in &ids {
        let events = &seen[id];
        assert_eq!(
            events[0].kind,
            pb::TicketEventKind::Snapshot as i32,
            "{id}: {events:?}"
        );
        for pair in events.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "{id}: gap-free: {events:?}");
        }
        let last = events.last().unwrap();
        assert_eq!(
            last.ticket.as_ref().unwrap().state(),
            pb::TicketState::Succeeded
        );
        assert!(
            events
                .iter()
                .any(|e| e.kind == pb::TicketEventKind::Progress as i32)
        );
        assert!(events.iter().all(|e| e.ticket_id == *id));
    }
    drop(gate);
    worker.shutdown();
}

#[tokio::test]
async fn watch_tickets_terminal_only_and_removal() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let gate = Gate::default();
    let worker = gateway
        .worker("results")
        .handler(gate.echo_handler())
        .build()
        .unwrap()
        .spawn();
    let running = client.submit(Submit::new("results").build()).await.unwrap();
    gate.started().await;
    let dropped = client.submit(Submit::new("idle").build()).await.unwrap();
    let mut followed = Followed::open(&client, true).await;
    followed.add(&[&running.id, &dropped.id]).await;
    // Removed, then a finished ticket added: its snapshot, which comes
    // after the removal took effect, is the next event.
    followed
        .requests
        .send(pb::WatchTicketsRequest {
            remove: vec![dropped.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let done = client.submit(Submit::new("other").build()).await.unwrap();
    client.cancel(&done.id, "already over").await.unwrap();
    followed.add(&[&done.id]).await;
    let first = followed.next().await;
    assert_eq!(first.ticket_id, done.id, "only terminal events: {first:?}");
    assert_eq!(first.ticket.unwrap().state(), pb::TicketState::Cancelled);
    client.cancel(&dropped.id, "unwatched").await.unwrap();
    gate.open();
    // Progress and state changes of the running ticket are not sent: its
    // result is the next event; the removed ticket's cancel never comes.
    let result = followed.next().await;
    assert_eq!(result.ticket_id, running.id, "{result:?}");
    assert_eq!(result.ticket.unwrap().state(), pb::TicketState::Succeeded);
    // Ending the request side ends the stream once nothing is followed.
    drop(followed.requests);
    let end = tokio::time::timeout(Duration::from_secs(10), followed.events.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "{end:?}");
    worker.shutdown();
}

/// The SDK's submitter: many submits at once on one stream, each resolved
/// with its own ticket once stored; a refused one fails alone.
#[tokio::test]
async fn the_sdk_submitter_and_results_follow_many_tickets_on_two_streams() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let submitter = client.submitter().await.unwrap();
    let submits = (0..400u64).map(|n| {
        let queue = if n == 123 { "bad queue" } else { "sdk" };
        submitter.submit(item(queue, n))
    });
    let answers = futures::future::join_all(submits).await;
    let mut ids = Vec::new();
    for (n, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(ticket) => ids.push(ticket.id),
            Err(error) if n == 123 => {
                assert_eq!(error.code(), Code::InvalidArgument, "{error}");
            }
            Err(error) => panic!("item {n}: {error}"),
        }
    }
    assert_eq!(ids.len(), 399);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 399, "one ticket per item");
    submitter.close().await;

    let mut results = client.results().await.unwrap();
    for id in &ids {
        results.watch(id.clone());
    }
    results.watch(uuid::Uuid::now_v7().to_string());
    let worker = gateway.spawn_worker(
        "sdk",
        asyncgate_client::worker::handler_fn(
            |task: asyncgate_client::worker::TaskContext| async move { Ok(task.payload().clone()) },
        ),
    );
    let mut ended = std::collections::HashSet::new();
    let mut refused = 0;
    while let Some((id, result)) = results.next().await {
        match result {
            Ok(ticket) => {
                assert_eq!(ticket.state(), pb::TicketState::Succeeded);
                assert!(ended.insert(id), "each ticket ends once");
            }
            Err(error) => {
                assert_eq!(error.code(), Code::NotFound, "{error}");
                refused += 1;
            }
        }
    }
    assert_eq!((ended.len(), refused), (399, 1));
    worker.shutdown();
}

/// A results stream broken by a gateway restart is reopened by the SDK and
/// the open tickets followed again: none of their ends is missed.
#[tokio::test]
async fn results_survive_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(TestGateway::durable_config(dir.path())).await;
    let client = gateway.client().await;
    let mut ids = Vec::new();
    for n in 0..20u64 {
        ids.push(client.submit(item("later", n)).await.unwrap().id);
    }
    let mut results = client.results().await.unwrap();
    for id in &ids {
        results.watch(id.clone());
    }
    let gateway = gateway.restart().await;
    let worker = gateway.spawn_worker(
        "later",
        asyncgate_client::worker::handler_fn(
            |task: asyncgate_client::worker::TaskContext| async move { Ok(task.payload().clone()) },
        ),
    );
    let mut ended = 0;
    while let Some((id, result)) = results.next().await {
        let ticket = result.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(ticket.state(), pb::TicketState::Succeeded);
        ended += 1;
    }
    assert_eq!(ended, 20);
    worker.shutdown();
}
