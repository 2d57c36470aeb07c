//! Worker protocol: redelivery, fencing, flow control, liveness, fairness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use asyncgate_client::pb;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Submit, payload};
use asyncgate_tests::{TestGateway, finished, json, state};
use pb::worker_message::Kind as In;

#[tokio::test]
async fn worker_killed_mid_task_is_redelivered_and_finished_once() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    let doomed = gateway.spawn_worker(
        "jobs",
        handler_fn(move |_task: TaskContext| {
            let started = started_tx.clone();
            async move {
                started.send(()).await.unwrap();
                std::future::pending::<()>().await;
                unreachable!()
            }
        }),
    );
    let ticket = client
        .submit(Submit::new("jobs").json("x".into()).build())
        .await
        .unwrap();
    started_rx.recv().await.unwrap();
    doomed.abort();

    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let survivor = gateway
        .worker("jobs")
        .handler(handler_fn(move |task: TaskContext| {
            counter.fetch_add(1, Ordering::SeqCst);
            let attempt = task.attempt();
            async move { Ok(payload::json(attempt.into())) }
        }))
        .build()
        .unwrap()
        .spawn();
    let done = finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    assert_eq!(done.attempt, 2);
    assert_eq!(done.result, Some(json(2.into())));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "finished once");
    survivor.shutdown();
}

#[tokio::test]
async fn stale_lease_results_are_rejected_and_never_overwrite() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let ticket = client.submit(Submit::new("fenced").build()).await.unwrap();
    let mut first = gateway.raw_worker().await;
    first.hello(&["fenced"], 1).await;
    let stale_task = first.next_task().await;
    // The first worker goes away; its lease is lost and the ticket requeued.
    drop(first);
    let mut second = gateway.raw_worker().await;
    second.hello(&["fenced"], 1).await;
    let task = second.next_task().await;
    assert_eq!(task.ticket_id, ticket.id);
    assert_eq!(task.attempt, 2);
    assert_ne!(task.lease_id, stale_task.lease_id);
    // A late result under the old lease is refused...
    second.succeed(&stale_task, json("stale".into())).await;
    let ack = second.next_ack().await;
    assert_eq!(ack.code, tonic::Code::FailedPrecondition as i32);
    assert!(ack.message.contains("not current"), "{}", ack.message);
    // ...the current one is recorded, and a repeat is a duplicate.
    second.succeed(&task, json("fresh".into())).await;
    assert_eq!(second.next_ack().await.code, tonic::Code::Ok as i32);
    second.succeed(&task, json("again".into())).await;
    assert_eq!(
        second.next_ack().await.code,
        tonic::Code::AlreadyExists as i32
    );
    let done = client.get(&ticket.id, None).await.unwrap();
    assert_eq!(done.result, Some(json("fresh".into())));
}

#[tokio::test]
async fn max_in_flight_one_never_holds_two() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let worker = gateway
        .worker("narrow")
        .max_in_flight(1)
        .handler(handler_fn(move |_task: TaskContext| {
            let (running, peak) = (r.clone(), p.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(payload::json(serde_json::Value::Null))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(
            client
                .submit(Submit::new("narrow").build())
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        let t = client.get(id, Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(state(&t), pb::TicketState::Succeeded);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1);

    // At the protocol level too: with max_in_flight 1 the gateway sends one
    // task and nothing more until it is answered.
    for _ in 0..2 {
        client
            .submit(Submit::new("raw-narrow").build())
            .await
            .unwrap();
    }
    let mut raw = gateway.raw_worker().await;
    raw.hello(&["raw-narrow"], 1).await;
    let task = raw.next_task().await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), raw.next()).await;
    assert!(
        quiet.is_err(),
        "a second task arrived before the first was answered: {quiet:?}"
    );
    raw.succeed(&task, json(1.into())).await;
    assert_eq!(raw.next_ack().await.code, 0);
    raw.next_task().await;
    worker.shutdown();
}

#[tokio::test]
async fn unresponsive_worker_loses_its_lease_within_three_heartbeats() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let heartbeat = gateway.config().heartbeat_interval;
    let ticket = client.submit(Submit::new("hb").build()).await.unwrap();
    let mut hung = gateway.raw_worker().await;
    hung.hello(&["hb"], 1).await;
    hung.next_task().await;
    // From now on it neither reads its stream nor answers pings, but keeps
    // the connection open.
    let hung_since = Instant::now();
    let survivor = gateway
        .worker("hb")
        .handler(handler_fn(|_task: TaskContext| async {
            Ok(payload::json("rescued".into()))
        }))
        .build()
        .unwrap()
        .spawn();
    let done = finished(&client, &ticket.id).await;
    let elapsed = hung_since.elapsed();
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    assert_eq!(done.attempt, 2);
    assert!(
        elapsed <= heartbeat * 3 + Duration::from_millis(400),
        "redelivery took {elapsed:?} with a {heartbeat:?} heartbeat"
    );
    drop(hung);
    survivor.shutdown();
}

/// Output on a held lease proves a worker alive: one that streams chunks
/// for several heartbeat intervals without reading its stream (its ping
/// answers would queue behind its data) keeps the lease.
#[tokio::test]
async fn a_worker_streaming_output_keeps_its_lease_without_answering_pings() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let heartbeat = gateway.config().heartbeat_interval;
    let ticket = client.submit(Submit::new("busy").build()).await.unwrap();
    let mut busy = gateway.raw_worker().await;
    busy.hello(&["busy"], 1).await;
    let task = busy.next_task().await;
    let mut pace = tokio::time::interval(heartbeat / 2);
    for chunk in 0..16u32 {
        pace.tick().await;
        busy.send(pb::worker_message::Kind::Progress(pb::TaskProgress {
            ticket_id: task.ticket_id.clone(),
            lease_id: task.lease_id.clone(),
            percent: 0,
            message: String::new(),
            output: Some(payload::json(chunk.into())),
        }))
        .await;
    }
    busy.succeed(&task, payload::json("done".into())).await;
    let ack = busy.next_ack().await;
    assert_eq!(ack.ticket_id, task.ticket_id);
    let done = finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    assert_eq!(done.attempt, 1, "the lease was never lost");
}

#[tokio::test]
async fn tasks_spread_evenly_across_workers() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for i in 0..4 {
        let counts = counts.clone();
        let name = format!("w{i}");
        let handle = gateway
            .worker("spread")
            .name(name.clone())
            .max_in_flight(2)
            .handler(handler_fn(move |_task: TaskContext| {
                *counts.lock().unwrap().entry(name.clone()).or_default() += 1;
                async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok(payload::json(serde_json::Value::Null))
                }
            }))
            .build()
            .unwrap()
            .spawn();
        handle.connected().await.unwrap();
        workers.push(handle);
    }
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(
            client
                .submit(Submit::new("spread").build())
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        client.get(id, Some(Duration::from_secs(20))).await.unwrap();
    }
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.values().sum::<u32>(), 200);
    let max = *counts.values().max().unwrap();
    let min = *counts.values().min().unwrap();
    assert!(
        counts.len() == 4 && max <= min * 2,
        "uneven spread: {counts:?}"
    );
    for w in workers {
        w.shutdown();
    }
}

#[tokio::test]
async fn progress_before_hello_ends_the_stream_with_failed_precondition() {
    let gateway = TestGateway::start().await;
    let mut raw = gateway.raw_worker().await;
    raw.send(In::Result(pb::TaskResult::default())).await;
    let status = raw.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("must be Hello"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn bad_hello_is_refused_with_the_field_named() {
    let gateway = TestGateway::start().await;
    for (queues, max_in_flight, needle) in [
        (vec![], 1, "hello.queues"),
        (vec!["bad queue".to_string()], 1, "hello.queues[0]"),
        (vec!["ok".to_string()], 0, "hello.max_in_flight"),
    ] {
        let mut raw = gateway.raw_worker().await;
        raw.send(In::Hello(pb::Hello {
            worker_name: "w".into(),
            queues,
            max_in_flight,
            batches: false,
        }))
        .await;
        let status = raw.next().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(needle), "{}", status.message());
    }
}

#[tokio::test]
async fn results_for_leases_a_worker_does_not_hold_are_rejected() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let ticket = client.submit(Submit::new("victim").build()).await.unwrap();
    let mut owner = gateway.raw_worker().await;
    owner.hello(&["victim"], 1).await;
    let task = owner.next_task().await;
    let mut intruder = gateway.raw_worker().await;
    intruder.hello(&["other"], 1).await;
    // A guessed lease id is not the current lease.
    let forged = pb::Task {
        lease_id: uuid::Uuid::new_v4().to_string(),
        ..task.clone()
    };
    intruder.succeed(&forged, json("forged".into())).await;
    let ack = intruder.next_ack().await;
    assert_eq!(ack.code, tonic::Code::FailedPrecondition as i32);
    // Garbage ids get INVALID_ARGUMENT and the stream stays usable.
    intruder
        .send(In::Result(pb::TaskResult {
            ticket_id: "nope".into(),
            lease_id: "nope".into(),
            outcome: Some(pb::task_result::Outcome::Success(json(1.into()))),
        }))
        .await;
    assert_eq!(
        intruder.next_ack().await.code,
        tonic::Code::InvalidArgument as i32
    );
    owner.succeed(&task, json("real".into())).await;
    assert_eq!(owner.next_ack().await.code, 0);
    let done = client.get(&ticket.id, None).await.unwrap();
    assert_eq!(done.result, Some(json("real".into())));
}

/// The next whole message from the gateway, pings included.
async fn next_message(raw: &mut asyncgate_tests::RawWorker) -> pb::DispatchMessage {
    tokio::time::timeout(Duration::from_secs(10), raw.inbound.message())
        .await
        .expect("a message within 10 s")
        .expect("the stream is open")
        .expect("a message, not the end")
}

/// A worker whose Hello asks for batches gets what is ready at once as one
/// message (`task_batch`, `ack_batch`) and may answer with one message of
/// results (`result_batch`): each is handled as if it came alone. Batches
/// beside a Hello are refused; a worker that did not ask gets none.
#[tokio::test]
async fn batches_carry_many_tasks_and_results_in_one_message() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(
            client
                .submit(Submit::new("batched").payload(json(n.into())))
                .await
                .unwrap()
                .id,
        );
    }
    let mut raw = gateway.raw_worker().await;
    raw.send(In::Hello(pb::Hello {
        worker_name: "batcher".into(),
        queues: vec!["batched".into()],
        max_in_flight: 40,
        batches: true,
    }))
    .await;
    let welcome = match raw.next().await {
        Ok(pb::dispatch_message::Kind::Welcome(welcome)) => welcome,
        other => panic!("expected Welcome, got {other:?}"),
    };
    assert!(welcome.batches, "this gateway reads result_batch");
    // The 40 ready tickets come in fewer than 40 messages.
    let (mut tasks, mut messages) = (Vec::new(), 0);
    while tasks.len() < 40 {
        let message = next_message(&mut raw).await;
        messages += 1;
        tasks.extend(message.task_batch);
        if let Some(pb::dispatch_message::Kind::Task(task)) = message.kind {
            tasks.push(task);
        }
    }
    assert!(messages < 40, "40 tasks in {messages} messages");
    // All 40 results in one message; every one is acknowledged.
    let results = tasks
        .iter()
        .map(|task| pb::TaskResult {
            ticket_id: task.ticket_id.clone(),
            lease_id: task.lease_id.clone(),
            outcome: Some(pb::task_result::Outcome::Success(
                task.payload.clone().unwrap(),
            )),
        })
        .collect();
    raw.tx
        .send(pb::WorkerMessage {
            result_batch: results,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut acks = Vec::new();
    while acks.len() < 40 {
        let message = next_message(&mut raw).await;
        acks.extend(message.ack_batch);
        if let Some(pb::dispatch_message::Kind::ResultAck(ack)) = message.kind {
            acks.push(ack);
        }
    }
    assert!(acks.iter().all(|ack| ack.code == 0), "{acks:?}");
    for (n, id) in ids.iter().enumerate() {
        let done = finished(&client, id).await;
        assert_eq!(done.result, Some(json(n.into())));
    }

    // A batch beside a Hello ends the stream, naming the field.
    let mut bold = gateway.raw_worker().await;
    bold.tx
        .send(pb::WorkerMessage {
            kind: Some(In::Hello(pb::Hello {
                worker_name: "bold".into(),
                queues: vec!["batched".into()],
                max_in_flight: 1,
                batches: true,
            })),
            result_batch: vec![pb::TaskResult::default()],
            ..Default::default()
        })
        .await
        .unwrap();
    let status = bold.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("result_batch"),
        "{}",
        status.message()
    );

    // An old-style worker (no batches in its Hello) never gets one.
    let mut old = gateway.raw_worker().await;
    old.hello(&["plain"], 8).await;
    for _ in 0..8 {
        client.submit(Submit::new("plain").build()).await.unwrap();
    }
    for _ in 0..8 {
        old.next_task().await;
    }
}
