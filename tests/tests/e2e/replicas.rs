//! Several gateway replicas on one real Redis: whatever replica a client,
//! watcher or worker lands on, it behaves as one gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use asyncgate_client::pb;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Submit, payload};
use asyncgate_server::testing::{RedisCluster, RedisServer};
use asyncgate_tests::{Gate, TestGateway, finished, json, state};

async fn replicas(redis: &RedisServer, count: usize) -> Vec<TestGateway> {
    let mut gateways = Vec::new();
    for _ in 0..count {
        gateways.push(TestGateway::start_with(TestGateway::redis_config(&redis.url())).await);
    }
    gateways
}

#[tokio::test]
async fn submit_on_a_work_on_b_watch_and_long_poll_on_c() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 3).await;
    let (a, b, c) = (&gateways[0], &gateways[1], &gateways[2]);
    let ticket = a
        .client()
        .await
        .submit(Submit::new("cross").build())
        .await
        .unwrap();
    let watcher_client = c.client().await;
    let mut events = watcher_client.watch(&ticket.id, None).await.unwrap();
    let snapshot = events.next().await.unwrap().unwrap();
    assert_eq!(snapshot.kind, pb::TicketEventKind::Snapshot as i32);
    // The worker starts only now, so every later event is live.
    let gate = Gate::default();
    let worker = {
        let gate = gate.clone();
        b.spawn_worker(
            "cross",
            handler_fn(move |task: TaskContext| {
                let gate = gate.clone();
                async move {
                    task.progress(40, "working").await;
                    task.output(payload::json("partial".into())).await;
                    gate.enter().await;
                    Ok(payload::json("done on b".into()))
                }
            }),
        )
    };
    let poller = {
        let client = c.client().await;
        let id = ticket.id.clone();
        tokio::spawn(async move { client.get(&id, Some(Duration::from_secs(20))).await })
    };
    gate.started().await;
    gate.open();
    let mut kinds = Vec::new();
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        kinds.push(event.kind);
        last = event.ticket;
    }
    let last = last.expect("the watcher saw the ticket");
    assert_eq!(state(&last), pb::TicketState::Succeeded);
    assert_eq!(last.result, Some(json("done on b".into())));
    assert!(
        kinds.contains(&(pb::TicketEventKind::Output as i32)),
        "replica C relayed the output chunk made on B: {kinds:?}"
    );
    let polled = poller.await.unwrap().unwrap();
    assert_eq!(state(&polled), pb::TicketState::Succeeded);
    worker.shutdown();
}

/// `Execute` on one replica streams a ticket worked on another: its first
/// event is the submitted state (with the queue position Redis reported at
/// the submit), then every change heard through the event channel.
#[tokio::test]
async fn execute_on_a_follows_the_work_on_b() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 2).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    let client = a.client().await;
    let ahead = client
        .submit(Submit::new("exec").json("first".into()).build())
        .await
        .unwrap();
    let mut events = client
        .execute(Submit::new("exec").json("second".into()).build())
        .await
        .unwrap();
    let snapshot = events.next().await.unwrap().unwrap();
    assert_eq!(snapshot.kind, pb::TicketEventKind::Snapshot as i32);
    let submitted = snapshot.ticket.unwrap();
    assert_eq!(state(&submitted), pb::TicketState::Pending);
    assert_eq!(submitted.waiting_reason.unwrap().tickets_ahead, 1);

    let worker = b.spawn_worker(
        "exec",
        handler_fn(|task: TaskContext| async move {
            task.output(payload::json("partial".into())).await;
            Ok(task.payload().clone())
        }),
    );
    let mut seqs = vec![snapshot.seq];
    let mut kinds = Vec::new();
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        seqs.push(event.seq);
        kinds.push(event.kind);
        last = event.ticket;
    }
    let last = last.expect("events after the snapshot");
    assert_eq!(last.id, submitted.id);
    assert_eq!(state(&last), pb::TicketState::Succeeded);
    assert_eq!(last.result, Some(json("second".into())));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs {seqs:?}");
    assert!(
        kinds.contains(&(pb::TicketEventKind::State as i32))
            && kinds.contains(&(pb::TicketEventKind::Output as i32)),
        "the lease and the output made on B reached A: {kinds:?}"
    );
    let first = finished(&client, &ahead.id).await;
    assert_eq!(first.result, Some(json("first".into())));
    worker.shutdown();
}

#[tokio::test]
async fn racing_replicas_never_run_a_ticket_twice() {
    const TICKETS: usize = 600;
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 3).await;
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for (i, gateway) in gateways.iter().enumerate() {
        for _ in 0..2 {
            let runs = runs.clone();
            workers.push(
                gateway
                    .worker("race")
                    .name(format!("worker-on-{i}"))
                    .max_in_flight(8)
                    .handler(handler_fn(move |task: TaskContext| {
                        let runs = runs.clone();
                        async move {
                            *runs
                                .lock()
                                .unwrap()
                                .entry(task.ticket_id().to_owned())
                                .or_default() += 1;
                            Ok(task.payload().clone())
                        }
                    }))
                    .build()
                    .unwrap()
                    .spawn(),
            );
        }
    }
    let mut submitters = Vec::new();
    for (i, gateway) in gateways.iter().enumerate() {
        let client = gateway.client().await;
        submitters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..TICKETS / 3 {
                let ticket = client
                    .submit(
                        Submit::new("race")
                            .payload(payload::json(format!("{i}-{n}").into()))
                            .build(),
                    )
                    .await
                    .unwrap();
                ids.push(ticket.id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for submitter in submitters {
        ids.extend(submitter.await.unwrap());
    }
    let client = gateways[0].client().await;
    for id in &ids {
        let ticket = finished(&client, id).await;
        assert_eq!(state(&ticket), pb::TicketState::Succeeded, "{id}");
        assert_eq!(ticket.attempt, 1, "{id} ran in one attempt");
    }
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), TICKETS);
    assert!(
        runs.values().all(|count| *count == 1),
        "some ticket ran twice: {:?}",
        runs.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    for worker in workers {
        worker.shutdown();
    }
}

#[tokio::test]
async fn cancel_on_a_reaches_the_worker_on_c() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 3).await;
    let (a, c) = (&gateways[0], &gateways[2]);
    let (cancelled_tx, mut cancelled_rx) = tokio::sync::mpsc::channel(1);
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    let worker = c.spawn_worker(
        "cancel",
        handler_fn(move |task: TaskContext| {
            let cancelled_tx = cancelled_tx.clone();
            let started_tx = started_tx.clone();
            async move {
                started_tx.send(()).await.unwrap();
                task.cancelled().await;
                cancelled_tx.send(()).await.unwrap();
                Ok(payload::json("too late".into()))
            }
        }),
    );
    let client = a.client().await;
    let ticket = client.submit(Submit::new("cancel").build()).await.unwrap();
    started_rx.recv().await.unwrap();
    let cancelled = client.cancel(&ticket.id, "changed my mind").await.unwrap();
    assert_eq!(state(&cancelled), pb::TicketState::Cancelled);
    tokio::time::timeout(Duration::from_secs(10), cancelled_rx.recv())
        .await
        .expect("the worker on replica C was told to stop")
        .unwrap();
    let after = client.get(&ticket.id, None).await.unwrap();
    assert_eq!(
        state(&after),
        pb::TicketState::Cancelled,
        "the late result is refused"
    );
    worker.shutdown();
}

#[tokio::test]
async fn redis_restarted_mid_load_loses_no_acknowledged_ticket() {
    let mut redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 2).await;
    let worker = gateways[1].spawn_worker(
        "restart",
        handler_fn(|task: TaskContext| async move { Ok(task.payload().clone()) }),
    );
    let client = gateways[0].client().await;
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for n in 0..300 {
        if n == 100 {
            redis.kill();
        }
        if n == 105 {
            redis.restart().expect("redis-server restarts");
        }
        let outcome = client
            .submit(
                Submit::new("restart")
                    .payload(payload::json(n.into()))
                    .build(),
            )
            .await;
        match outcome {
            Ok(ticket) => acknowledged.push((ticket.id, n)),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                refused += 1;
                if n >= 105 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    assert!(refused > 0, "submits failed while Redis was down");
    assert!(
        acknowledged.len() > 250,
        "the service recovered: {}",
        acknowledged.len()
    );
    for (id, n) in &acknowledged {
        let ticket = finished(&client, id).await;
        assert_eq!(state(&ticket), pb::TicketState::Succeeded, "{ticket:?}");
        assert_eq!(ticket.result, Some(json((*n).into())));
    }
    worker.shutdown();
}

#[tokio::test]
async fn a_queue_served_on_another_replica_is_not_explained_as_workerless() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 2).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    let client = a.client().await;
    let waiting = |ticket: &pb::Ticket| {
        ticket
            .waiting_reason
            .as_ref()
            .map(|w| w.description.clone())
            .unwrap_or_default()
    };
    let blocker = Gate::default();
    let worker = {
        let blocker = blocker.clone();
        b.worker("elsewhere")
            .max_in_flight(1)
            .handler(handler_fn(move |_task: TaskContext| {
                let blocker = blocker.clone();
                async move {
                    blocker.enter().await;
                    Ok(payload::json("ok".into()))
                }
            }))
            .build()
            .unwrap()
            .spawn()
    };
    worker
        .connected()
        .await
        .expect("the worker connects to replica B");
    let first = client
        .submit(Submit::new("elsewhere").build())
        .await
        .unwrap();
    blocker.started().await;
    let second = client
        .submit(Submit::new("elsewhere").build())
        .await
        .unwrap();
    let seen_on_a = client.get(&second.id, None).await.unwrap();
    assert_eq!(state(&seen_on_a), pb::TicketState::Pending);
    assert!(
        !waiting(&seen_on_a).contains("no worker"),
        "replica A counts the worker on replica B: {}",
        waiting(&seen_on_a)
    );
    blocker.open();
    for id in [&first.id, &second.id] {
        assert_eq!(
            state(&finished(&client, id).await),
            pb::TicketState::Succeeded
        );
    }
    worker.shutdown();
}

#[tokio::test]
async fn replicas_on_a_redis_cluster_work_as_one_gateway() {
    let cluster = RedisCluster::start().expect("a Redis cluster starts");
    let mut gateways = Vec::new();
    for _ in 0..2 {
        gateways.push(TestGateway::start_with(TestGateway::redis_config(&cluster.url())).await);
    }
    let (a, b) = (&gateways[0], &gateways[1]);
    let worker = b.spawn_worker(
        "clustered",
        handler_fn(|task: TaskContext| async move {
            task.progress(50, "half").await;
            Ok(task.payload().clone())
        }),
    );
    let client = a.client().await;
    let mut ids = Vec::new();
    for n in 0..50 {
        let ticket = client
            .submit(
                Submit::new("clustered")
                    .payload(payload::json(n.into()))
                    .build(),
            )
            .await
            .unwrap();
        ids.push((ticket.id, n));
    }
    for (id, n) in &ids {
        let done = client.get(id, Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(state(&done), pb::TicketState::Succeeded, "{id}");
        assert_eq!(done.result, Some(json((*n).into())));
    }
    let listed = client
        .list(pb::ListTicketsRequest {
            queue: "clustered".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.tickets.len(), ids.len());
    worker.shutdown();
}

#[tokio::test]
async fn a_stalled_watcher_on_another_replica_catches_up() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 2).await;
    crate::watch::stalled_watcher_catches_up(&gateways[0], &gateways[1]).await;
}

/// The admin API across replicas on one Redis: a queue paused through A
/// holds its tickets from a worker connected to B until resumed through C;
/// A lists B's worker (with the ticket it holds and B's replica name) and
/// drains it, and the worker stops once idle.
#[tokio::test]
async fn pause_list_and_drain_across_replicas() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 3).await;
    let (a, b, c) = (&gateways[0], &gateways[1], &gateways[2]);
    let client_a = a.client().await;
    let admin_a = client_a.admin();
    let warm = client_a.submit(Submit::new("jobs").build()).await.unwrap();
    admin_a.pause_queue("jobs", "deploy").await.unwrap();
    let gate = Gate::default();
    let worker = b
        .worker("jobs")
        .handler(gate.echo_handler())
        .build()
        .unwrap()
        .spawn();
    // B's worker is connected (A lists it) yet gets nothing while paused.
    let session = worker.connected().await.expect("connected to B");
    let listed = admin_a.list_workers(Some("jobs")).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].session_id, session);
    assert!(listed[0].tickets.is_empty());
    let still = client_a
        .get(&warm.id, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(still.state(), pb::TicketState::Pending);
    assert_eq!(
        still.waiting_reason.unwrap().kind(),
        pb::WaitingReasonKind::Paused
    );

    c.client().await.admin().resume_queue("jobs").await.unwrap();
    gate.started().await;
    let workers = admin_a.list_workers(None).await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].tickets, std::slice::from_ref(&warm.id));
    assert!(!workers[0].replica.is_empty());

    let drained = admin_a.drain_worker(&workers[0].session_id).await.unwrap();
    assert!(drained.draining);
    gate.open();
    assert_eq!(
        finished(&client_a, &warm.id).await.state(),
        pb::TicketState::Succeeded
    );
    tokio::time::timeout(Duration::from_secs(10), worker.stopped())
        .await
        .expect("B's worker, drained through A, stops once idle");
    assert!(worker.stopping());
}

/// Each replica counts the results its workers record; any replica's
/// GetQueue shows the sum, within the second it takes a replica to add its
/// counts to Redis.
#[tokio::test]
async fn queue_stats_add_up_over_replicas() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 3).await;
    let (a, b, c) = (&gateways[0], &gateways[1], &gateways[2]);
    let client = a.client().await;
    let echo = || {
        handler_fn(|task: TaskContext| async move {
            if task.payload() == &json(serde_json::json!("fail")) {
                return Err(asyncgate_client::worker::TaskError::fatal("told to"));
            }
            Ok(task.payload().clone())
        })
    };
    let workers: Vec<_> = [b, c]
        .iter()
        .map(|gateway| {
            gateway
                .worker("tallied")
                .max_in_flight(1)
                .handler(echo())
                .build()
                .unwrap()
                .spawn()
        })
        .collect();
    for worker in &workers {
        worker.connected().await.expect("connected");
    }
    let mut ids = Vec::new();
    for n in 0..12 {
        let body = if n % 4 == 3 { "fail" } else { "ok" };
        let ticket = client
            .submit(
                Submit::new("tallied")
                    .payload(json(serde_json::json!(body)))
                    .build(),
            )
            .await
            .unwrap();
        ids.push(ticket.id);
    }
    for id in &ids {
        finished(&client, id).await;
    }
    let admin = client.admin();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let queue = loop {
        let queue = admin.get_queue("tallied").await.unwrap();
        let minute = queue.last_minute.unwrap_or_default();
        if (minute.succeeded, minute.failed) == (9, 3) {
            break queue;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never showed B's and C's results: {queue:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let five = queue.last_five_minutes.unwrap();
    assert_eq!((five.succeeded, five.failed), (9, 3));
    assert_eq!(queue.queue_wait.unwrap().count, 12);
    let run_time = queue.run_time.unwrap();
    assert_eq!(run_time.count, 12);
    assert!(run_time.p50.is_some() && run_time.p95.is_some());
}

/// A purge on replica A races the results of a worker on replica B: every
/// ticket ends once, either SUCCEEDED with its result or CANCELLED by the
/// purge, never both; its watcher sees exactly that one terminal event, and
/// the purge counts exactly the tickets it cancelled.
#[tokio::test]
async fn a_purge_racing_results_records_one_outcome_per_ticket() {
    let redis = RedisServer::start().expect("redis-server starts");
    let gateways = replicas(&redis, 2).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    let client = a.client().await;
    let mut watchers = Vec::new();
    for n in 0..120 {
        let ticket = client
            .submit(
                Submit::new("racy")
                    .payload(json(serde_json::json!(n)))
                    .build(),
            )
            .await
            .unwrap();
        let events = client.watch(&ticket.id, None).await.unwrap();
        watchers.push((ticket.id, events));
    }
    // The worker starts once all are queued; the purge starts with the
    // first result, while most are pending and some running.
    let worker = b
        .worker("racy")
        .max_in_flight(8)
        .handler(handler_fn(|task: TaskContext| async move {
            let spread = task.ticket_id().as_bytes().last().copied().unwrap_or(0) % 8;
            tokio::time::sleep(Duration::from_millis(2 + u64::from(spread))).await;
            Ok(task.payload().clone())
        }))
        .build()
        .unwrap()
        .spawn();
    worker.connected().await.expect("connected to B");
    finished(&client, &watchers[0].0).await;
    let purged = client
        .admin()
        .purge_queue(
            "racy",
            &[pb::TicketState::Pending, pb::TicketState::Running],
            None,
        )
        .await
        .unwrap();
    let mut cancelled = 0;
    for (id, mut events) in watchers {
        // Terminal states seen: the snapshot's (if it was already) and
        // each later event's.
        let mut terminal = Vec::new();
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if let Some(ticket) = &event.ticket
                && asyncgate_client::payload::is_terminal(ticket.state())
            {
                terminal.push(ticket.clone());
            }
        }
        let last = finished(&client, &id).await;
        match last.state() {
            pb::TicketState::Succeeded => {
                assert!(last.result.is_some() && last.error.is_none(), "{last:?}");
            }
            pb::TicketState::Cancelled => {
                cancelled += 1;
                assert!(
                    last.result.is_none(),
                    "a cancelled ticket with a result: {last:?}"
                );
                let error = last.error.as_ref().unwrap();
                assert!(error.message.contains("purged from queue"), "{error:?}");
            }
            other => panic!("{id} ended {other:?}"),
        }
        assert_eq!(terminal.len(), 1, "{id}: {terminal:?}");
        assert_eq!(terminal[0].state(), last.state(), "{id}");
    }
    assert_eq!(purged, cancelled, "the purge counts what it cancelled");
    worker.shutdown();
}
