//! Cancel, timeouts, retries and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use asyncgate_client::pb;
use asyncgate_client::worker::{TaskContext, TaskError, handler_fn};
use asyncgate_client::{Submit, payload};
use asyncgate_tests::{Gate, TestGateway, fast_config, finished, state};

#[tokio::test]
async fn cancel_pending_ticket_is_never_dispatched() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let ticket = client.submit(Submit::new("c").build()).await.unwrap();
    let cancelled = client.cancel(&ticket.id, "not needed").await.unwrap();
    assert_eq!(state(&cancelled), pb::TicketState::Cancelled);
    assert!(cancelled.error.unwrap().message.contains("not needed"));

    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let worker = gateway.spawn_worker(
        "c",
        handler_fn(move |_task: TaskContext| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(payload::json(serde_json::Value::Null)) }
        }),
    );
    // A later ticket runs, proving the worker was serving the queue.
    let later = client.submit(Submit::new("c").build()).await.unwrap();
    let later = finished(&client, &later.id).await;
    assert_eq!(state(&later), pb::TicketState::Succeeded);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Cancelling a finished ticket is refused with a reason.
    let error = client.cancel(&later.id, "").await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    worker.shutdown();
}

#[tokio::test]
async fn cancel_running_ticket_tells_the_worker_and_discards_its_result() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    let (stopped_tx, mut stopped_rx) = tokio::sync::mpsc::channel(1);
    let worker = gateway
        .worker("slow")
        .handler(handler_fn(move |task: TaskContext| {
            let started = started_tx.clone();
            let stopped = stopped_tx.clone();
            async move {
                started.send(()).await.unwrap();
                task.cancelled().await;
                stopped
                    .send(task.cancel_reason().map(|(r, _)| r))
                    .await
                    .unwrap();
                Ok(payload::json("late result".into()))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client.submit(Submit::new("slow").build()).await.unwrap();
    started_rx.recv().await.unwrap();
    let cancelled = client.cancel(&ticket.id, "user gave up").await.unwrap();
    assert_eq!(state(&cancelled), pb::TicketState::Cancelled);
    let reason = stopped_rx.recv().await.unwrap();
    assert_eq!(reason, Some(pb::CancelReason::Cancelled));
    // The worker is free again and its late result changed nothing.
    let next = client.submit(Submit::new("slow").build()).await.unwrap();
    started_rx.recv().await.unwrap();
    let after = client.get(&ticket.id, None).await.unwrap();
    assert_eq!(state(&after), pb::TicketState::Cancelled);
    assert!(after.result.is_none());
    client.cancel(&next.id, "").await.unwrap();
    worker.shutdown();
}

#[tokio::test]
async fn ticket_past_its_timeout_expires() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let ticket = client
        .submit(
            Submit::new("nobody")
                .timeout(Duration::from_millis(200))
                .build(),
        )
        .await
        .unwrap();
    assert!(ticket.deadline.is_some());
    let done = finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Expired);
    assert_eq!(
        done.error.unwrap().code,
        tonic::Code::DeadlineExceeded as i32
    );
}

#[tokio::test]
async fn running_ticket_past_its_timeout_expires_and_the_worker_is_told() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let (reason_tx, mut reason_rx) = tokio::sync::mpsc::channel(1);
    let worker = gateway
        .worker("stuck")
        .handler(handler_fn(move |task: TaskContext| {
            let reasons = reason_tx.clone();
            async move {
                task.cancelled().await;
                reasons
                    .send(task.cancel_reason().map(|(r, _)| r))
                    .await
                    .unwrap();
                Err(TaskError::fatal("stopped"))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client
        .submit(
            Submit::new("stuck")
                .timeout(Duration::from_millis(300))
                .build(),
        )
        .await
        .unwrap();
    let done = finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Expired);
    assert_eq!(
        reason_rx.recv().await.unwrap(),
        Some(pb::CancelReason::Expired)
    );
    worker.shutdown();
}

#[tokio::test]
async fn retryable_failures_retry_until_max_attempts_then_fail() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let worker = gateway
        .worker("flaky")
        .handler(handler_fn(move |task: TaskContext| {
            counter.fetch_add(1, Ordering::SeqCst);
            let attempt = task.attempt();
            async move { Err(TaskError::retryable(format!("boom on attempt {attempt}"))) }
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client
        .submit(Submit::new("flaky").max_attempts(3).build())
        .await
        .unwrap();
    let done = finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Failed);
    assert_eq!(done.attempt, 3);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let error = done.error.unwrap();
    assert!(
        error.message.contains("boom on attempt 3"),
        "{}",
        error.message
    );
    // FAILED is the dead-letter state: listable.
    let dead = client
        .list(pb::ListTicketsRequest {
            queue: "flaky".into(),
            states: vec![pb::TicketState::Failed as i32],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.tickets.len(), 1);
    worker.shutdown();
}

#[tokio::test]
async fn retry_then_succeed_and_fatal_failure_does_not_retry() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let worker = gateway
        .worker("mixed")
        .handler(handler_fn(|task: TaskContext| async move {
            match task
                .json()
                .and_then(|v| v.as_str().map(String::from))
                .as_deref()
            {
                Some("fatal") => Err(TaskError::fatal("bad request")),
                _ if task.attempt() < 2 => Err(TaskError::retryable("transient")),
                _ => Ok(payload::json("ok".into())),
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let retried = client
        .submit(Submit::new("mixed").json("x".into()).build())
        .await
        .unwrap();
    let fatal = client
        .submit(Submit::new("mixed").json("fatal".into()).build())
        .await
        .unwrap();
    let retried = finished(&client, &retried.id).await;
    assert_eq!(state(&retried), pb::TicketState::Succeeded);
    assert_eq!(retried.attempt, 2);
    let fatal = finished(&client, &fatal.id).await;
    assert_eq!(state(&fatal), pb::TicketState::Failed);
    assert_eq!(fatal.attempt, 1);
    worker.shutdown();
}

#[tokio::test]
async fn attempt_timeout_retries_on_another_attempt() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let worker = gateway
        .worker("sometimes-slow")
        .max_in_flight(2)
        .handler(handler_fn(|task: TaskContext| async move {
            if task.attempt() == 1 {
                task.cancelled().await;
                return Err(TaskError::retryable("interrupted"));
            }
            Ok(payload::json(task.attempt().into()))
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client
        .submit(
            Submit::new("sometimes-slow")
                .attempt_timeout(Duration::from_millis(200))
                .build(),
        )
        .await
        .unwrap();
    let done = finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    assert_eq!(done.attempt, 2);
    worker.shutdown();
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_work() {
    let mut config = fast_config();
    config.shutdown_grace = Duration::from_secs(10);
    let gateway = TestGateway::start_with(config).await;
    let client = gateway.client().await;
    let gate = Gate::default();
    let held = gate.clone();
    let worker = gateway
        .worker("drain")
        .handler(handler_fn(move |_task: TaskContext| {
            let held = held.clone();
            async move {
                held.enter().await;
                Ok(payload::json("finished during drain".into()))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client.submit(Submit::new("drain").build()).await.unwrap();
    let mut watch = client.watch(&ticket.id, None).await.unwrap();
    gate.started().await;
    let shutdown = tokio::spawn(gateway.shutdown());
    gate.open();
    // The result recorded during the drain reaches the watcher.
    let mut last = None;
    use futures::StreamExt;
    while let Some(event) = watch.next().await {
        match event {
            Ok(event) => last = event.ticket.map(|t| state(&t)),
            Err(_) => break,
        }
    }
    assert_eq!(last, Some(pb::TicketState::Succeeded));
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown completes within the grace period")
        .unwrap();
    worker.abort();
}

#[tokio::test]
async fn worker_shutdown_finishes_in_flight_work_and_wastes_no_attempt() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let gate = Gate::default();
    let held = gate.clone();
    let worker = gateway
        .worker("leaving")
        .max_in_flight(1)
        .handler(handler_fn(move |_task: TaskContext| {
            let held = held.clone();
            async move {
                held.enter().await;
                Ok(payload::json("done".into()))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let first = client.submit(Submit::new("leaving").build()).await.unwrap();
    let second = client.submit(Submit::new("leaving").build()).await.unwrap();
    gate.started().await;
    worker.shutdown();
    gate.open();
    tokio::time::timeout(Duration::from_secs(10), worker.join())
        .await
        .expect("the worker drains and stops");
    let first = client.get(&first.id, None).await.unwrap();
    assert_eq!(state(&first), pb::TicketState::Succeeded);
    let second = client.get(&second.id, None).await.unwrap();
    assert_eq!(state(&second), pb::TicketState::Pending);
    assert_eq!(
        second.attempt, 0,
        "the ticket the worker never ran cost no attempt"
    );
    assert_eq!(
        second.waiting_reason.unwrap().kind,
        pb::WaitingReasonKind::NoWorkers as i32
    );
}
