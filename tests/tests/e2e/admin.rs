//! The operator's service (`asyncgate.v1.Admin`) through the SDK against a
//! real gateway: queues listed with their counts, a pause that holds tickets
//! (and says why) until a resume, a purge that watchers see, who may call
//! what, and what bad input gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use asyncgate_client::worker::{TaskContext, TaskError, handler_fn};
use asyncgate_client::{Client, Submit, pb};
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{Gate, TestGateway, as_json, fast_config, finished, json, state};

const OPS: &str = "ops-admin-key";
const VIEWER: &str = "dashboard-viewer-key";
const A_OPS: &str = "tenant-a-admin-key";
const ALICE: &str = "alice-client-key";
const BOB: &str = "bob-client-key";
const WORKER: &str = "worker-key";

async fn gateway_with_keys(dir: &tempfile::TempDir) -> TestGateway {
    let keys = format!(
        r#"
[[keys]]
name = "ops"
sha256 = "{}"
role = "admin"

[[keys]]
name = "dashboard"
sha256 = "{}"
role = "viewer"

[[keys]]
name = "a-ops"
sha256 = "{}"
role = "admin"
tenant = "a"

[[keys]]
name = "alice"
sha256 = "{}"
role = "client"
tenant = "a"

[[keys]]
name = "bob"
sha256 = "{}"
role = "client"
tenant = "b"

[[keys]]
name = "workers"
sha256 = "{}"
role = "worker"
queues = ["jobs"]
"#,
        digest_hex(OPS),
        digest_hex(VIEWER),
        digest_hex(A_OPS),
        digest_hex(ALICE),
        digest_hex(BOB),
        digest_hex(WORKER),
    );
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, keys).unwrap();
    TestGateway::start_with(asyncgate_server::Config {
        keys: Some(path),
        ..fast_config()
    })
    .await
}

async fn as_key(gateway: &TestGateway, key: &str) -> Client {
    gateway.client().await.with_api_key(key).unwrap()
}

fn code<T: std::fmt::Debug>(result: Result<T, asyncgate_client::ClientError>) -> tonic::Code {
    result.expect_err("the call is refused").code()
}

fn names(queues: &[pb::QueueInfo]) -> Vec<&str> {
    queues.iter().map(|q| q.name.as_str()).collect()
}

#[tokio::test]
async fn each_key_sees_the_queues_of_its_tenant_and_only_admins_change_them() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with_keys(&dir).await;
    let alice = as_key(&gateway, ALICE).await;
    let bob = as_key(&gateway, BOB).await;
    for _ in 0..2 {
        alice.submit(Submit::new("jobs").build()).await.unwrap();
    }
    bob.submit(Submit::new("jobs").build()).await.unwrap();

    // The operator sees every tenant's queue, by its stored name.
    let ops = as_key(&gateway, OPS).await.admin();
    let all = ops.list_queues().await.unwrap();
    assert_eq!(names(&all), ["a/jobs", "b/jobs"]);
    assert_eq!(all[0].counts.unwrap().pending, 2);
    assert_eq!(all[1].counts.unwrap().pending, 1);
    assert!(all[0].oldest_pending_at.is_some() && all[0].oldest_pending_age.is_some());

    // Tenant a's admin sees its own queue by its own name, and not b's.
    let a_ops = as_key(&gateway, A_OPS).await.admin();
    let mine = a_ops.list_queues().await.unwrap();
    assert_eq!(names(&mine), ["jobs"]);
    assert_eq!(
        a_ops
            .get_queue("jobs")
            .await
            .unwrap()
            .counts
            .unwrap()
            .pending,
        2
    );
    let paused = a_ops.pause_queue("jobs", "migrating").await.unwrap();
    assert_eq!(paused.pause.unwrap().paused_by, "a-ops");
    // Only a's queue is paused.
    let all = ops.list_queues().await.unwrap();
    assert!(all[0].pause.is_some() && all[1].pause.is_none());

    // A viewer reads, and changes nothing.
    let viewer = as_key(&gateway, VIEWER).await.admin();
    assert_eq!(viewer.list_queues().await.unwrap().len(), 2);
    assert_eq!(viewer.get_queue("b/jobs").await.unwrap().name, "b/jobs");
    assert_eq!(
        code(viewer.pause_queue("b/jobs", "").await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(viewer.purge_queue("b/jobs", &[], None).await),
        tonic::Code::PermissionDenied
    );
    // A viewer also reads tickets, and cannot submit or cancel.
    let viewer_client = as_key(&gateway, VIEWER).await;
    let listed = viewer_client
        .list(pb::ListTicketsRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.tickets.len(), 3);
    assert_eq!(
        code(viewer_client.submit(Submit::new("jobs").build()).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(viewer_client.cancel(&listed.tickets[0].id, "").await),
        tonic::Code::PermissionDenied
    );

    // Clients and workers may not call the admin service at all.
    for key in [ALICE, WORKER] {
        let admin = as_key(&gateway, key).await.admin();
        assert_eq!(
            code(admin.list_queues().await),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(admin.resume_queue("jobs").await),
            tonic::Code::PermissionDenied
        );
    }
    // Nor anyone without a key.
    let anonymous = gateway.client().await.admin();
    assert_eq!(
        code(anonymous.list_queues().await),
        tonic::Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_paused_queue_holds_its_tickets_says_why_and_runs_them_once_resumed() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let admin = client.admin();
    let worker = gateway.spawn_worker(
        "emails",
        handler_fn(|task: TaskContext| async move { Ok(task.payload().clone()) }),
    );
    // Used once, so the queue exists; then paused.
    let first = client
        .submit(Submit::new("emails").payload(json(serde_json::json!("warm"))))
        .await
        .unwrap();
    finished(&client, &first.id).await;
    let info = admin
        .pause_queue("emails", "the mail relay is down")
        .await
        .unwrap();
    let pause = info.pause.expect("paused");
    assert_eq!(pause.reason, "the mail relay is down");

    let held = client
        .submit(Submit::new("emails").payload(json(serde_json::json!("held"))))
        .await
        .unwrap();
    let reason = held.waiting_reason.clone().expect("a waiting reason");
    assert_eq!(reason.kind(), pb::WaitingReasonKind::Paused);
    assert!(
        reason.description.contains("paused")
            && reason.description.contains("the mail relay is down"),
        "{}",
        reason.description
    );
    assert_eq!(reason.since, pause.paused_at);
    // A long-poll ends early only if the ticket finishes: it does not.
    let still = client
        .get(&held.id, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(state(&still), pb::TicketState::Pending);
    assert_eq!(
        admin
            .get_queue("emails")
            .await
            .unwrap()
            .counts
            .unwrap()
            .pending,
        1
    );

    let resumed = admin.resume_queue("emails").await.unwrap();
    assert!(resumed.pause.is_none());
    let done = finished(&client, &held.id).await;
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    let queue = admin.get_queue("emails").await.unwrap();
    let counts = queue.counts.unwrap();
    assert_eq!((counts.pending, counts.succeeded), (0, 2));
    // The recent windows saw both results, and the held one's long wait.
    let minute = queue.last_minute.unwrap();
    assert_eq!((minute.succeeded, minute.failed), (2, 0));
    let wait = queue.queue_wait.unwrap();
    assert_eq!(wait.count, 2);
    let longest = Duration::try_from(wait.p95.unwrap()).unwrap();
    assert!(longest >= Duration::from_millis(250), "{wait:?}");
    assert_eq!(queue.held_back, 0, "paused is not a limit");
    worker.shutdown();
}

#[tokio::test]
async fn a_purge_cancels_what_it_matches_and_watchers_see_it_end() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let admin = client.admin();
    let mut ids = Vec::new();
    for i in 0..5 {
        let ticket = client
            .submit(Submit::new("flood").payload(json(serde_json::json!(i))))
            .await
            .unwrap();
        ids.push(ticket.id);
    }
    let mut watch = client.watch(&ids[0], None).await.unwrap();
    assert!(watch.next().await.unwrap().is_ok(), "the snapshot");
    // Only what was created before the cut-off, and only PENDING.
    let cut = std::time::SystemTime::now();
    client.submit(Submit::new("flood").build()).await.unwrap();
    let cancelled = admin
        .purge_queue("flood", &[pb::TicketState::Pending], Some(cut))
        .await
        .unwrap();
    assert_eq!(cancelled, 5);
    let last = loop {
        let event = watch.next().await.expect("an event").unwrap();
        if asyncgate_client::is_terminal(event.ticket.as_ref().unwrap().state()) {
            break event.ticket.unwrap();
        }
    };
    assert_eq!(state(&last), pb::TicketState::Cancelled);
    let message = last.error.unwrap().message;
    assert!(message.contains("purged from queue \"flood\""), "{message}");
    let counts = admin.get_queue("flood").await.unwrap().counts.unwrap();
    assert_eq!((counts.pending, counts.cancelled), (1, 5));
    // A second purge finds only the newer ticket.
    assert_eq!(admin.purge_queue("flood", &[], None).await.unwrap(), 1);
}

#[tokio::test]
async fn bad_admin_input_gets_a_status_that_says_what_to_fix() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let admin = client.admin();
    let unknown = admin.get_queue("never-used").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(unknown.to_string().contains("never used"), "{unknown}");
    assert_eq!(
        code(admin.pause_queue("never-used", "").await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(admin.get_queue("not a name!").await),
        tonic::Code::InvalidArgument
    );
    client.submit(Submit::new("q").build()).await.unwrap();
    let forged = admin
        .pause_queue("q", "fine\n2026-01-01 INFO forged line")
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::InvalidArgument);
    assert!(forged.to_string().contains("reason"), "{forged}");
    let long = admin.pause_queue("q", &"x".repeat(257)).await.unwrap_err();
    assert_eq!(long.code(), tonic::Code::InvalidArgument);
    let finished_states = admin
        .purge_queue("q", &[pb::TicketState::Succeeded], None)
        .await
        .unwrap_err();
    assert_eq!(finished_states.code(), tonic::Code::InvalidArgument);
    assert!(
        finished_states
            .to_string()
            .contains("PENDING and/or RUNNING"),
        "{finished_states}"
    );
    // Nothing was paused or purged by the refused calls.
    let queue = admin.get_queue("q").await.unwrap();
    assert!(queue.pause.is_none());
    assert_eq!(queue.counts.unwrap().pending, 1);
}

#[tokio::test]
async fn an_operator_sees_the_workers_and_drains_one_which_stops_once_idle() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let admin = client.admin();
    let gate = Gate::default();
    let worker = gateway
        .worker("slow")
        .max_in_flight(2)
        .handler(gate.echo_handler())
        .build()
        .unwrap()
        .spawn();
    let first = client.submit(Submit::new("slow").build()).await.unwrap();
    gate.started().await;

    let workers = admin.list_workers(None).await.unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let seen = &workers[0];
    assert_eq!(seen.worker_name, "test-worker-slow");
    assert_eq!(seen.queues, ["slow"]);
    assert_eq!(seen.max_in_flight, 2);
    assert_eq!(seen.tickets, std::slice::from_ref(&first.id));
    assert!(seen.peer.starts_with("127.0.0.1:"), "{}", seen.peer);
    assert!(seen.connected_at.is_some() && seen.last_heard_at.is_some());
    assert!(!seen.draining);
    assert!(admin.list_workers(Some("other")).await.unwrap().is_empty());

    let drained = admin.drain_worker(&seen.session_id).await.unwrap();
    assert!(drained.draining);
    assert_eq!(drained.tickets, std::slice::from_ref(&first.id));
    // No new task reaches it; the one it holds finishes; then it stops on
    // its own.
    let second = client.submit(Submit::new("slow").build()).await.unwrap();
    gate.open();
    assert_eq!(
        state(&finished(&client, &first.id).await),
        pb::TicketState::Succeeded
    );
    tokio::time::timeout(Duration::from_secs(10), worker.stopped())
        .await
        .expect("the drained worker stops once idle");
    assert!(worker.stopping());
    let waiting = client.get(&second.id, None).await.unwrap();
    assert_eq!(state(&waiting), pb::TicketState::Pending);
    assert_eq!(
        waiting.waiting_reason.unwrap().kind(),
        pb::WaitingReasonKind::NoWorkers
    );
    assert!(admin.list_workers(None).await.unwrap().is_empty());

    // A session that is not connected, and one that is not an id.
    let gone = admin.drain_worker(&seen.session_id).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert_eq!(
        code(admin.drain_worker("not-a-session").await),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_concurrency_limit_holds_tickets_back_and_says_so() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let admin = client.admin();
    client.submit(Submit::new("fragile").build()).await.unwrap();
    let limits = pb::QueueLimits {
        max_concurrent: 1,
        ..Default::default()
    };
    let info = admin.set_queue_limits("fragile", limits).await.unwrap();
    assert_eq!(info.limits, Some(limits));
    let gate = Gate::default();
    let worker = gateway
        .worker("fragile")
        .max_in_flight(4)
        .handler(gate.echo_handler())
        .build()
        .unwrap()
        .spawn();
    gate.started().await;
    let mut waiting = Vec::new();
    for _ in 0..2 {
        waiting.push(client.submit(Submit::new("fragile").build()).await.unwrap());
    }
    // One runs; the others wait for the cap, and say so.
    let queue = admin.get_queue("fragile").await.unwrap();
    assert_eq!(queue.counts.unwrap().running, 1);
    assert_eq!(queue.held_back, 2, "both ready tickets wait for the cap");
    let reason = client
        .get(&waiting[1].id, None)
        .await
        .unwrap()
        .waiting_reason
        .unwrap();
    assert_eq!(reason.kind(), pb::WaitingReasonKind::Limited);
    assert!(
        reason.description.contains("concurrency limit 1 reached"),
        "{}",
        reason.description
    );
    gate.open();
    for ticket in &waiting {
        assert_eq!(
            state(&finished(&client, &ticket.id).await),
            pb::TicketState::Succeeded
        );
    }
    worker.shutdown();

    // Bad limits name the field.
    for (limits, field) in [
        (
            pb::QueueLimits {
                burst: 10,
                ..Default::default()
            },
            "limits.burst",
        ),
        (
            pb::QueueLimits {
                max_dispatch_per_second: 2_000_000,
                ..Default::default()
            },
            "limits.max_dispatch_per_second",
        ),
    ] {
        let refused = admin.set_queue_limits("fragile", limits).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.to_string().contains(field), "{refused}");
    }
    let missing = admin
        .raw()
        .set_queue_limits(pb::SetQueueLimitsRequest {
            name: "fragile".into(),
            limits: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        admin.get_queue("fragile").await.unwrap().limits,
        Some(limits),
        "refused changes changed nothing"
    );
}

/// A rate of 20 leases a second with no burst paces 10 tickets over about
/// half a second, however fast the worker (a lower bound only: a slow
/// machine makes it slower, never faster).
#[tokio::test]
async fn a_rate_limit_paces_dispatch() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let admin = client.admin();
    client.submit(Submit::new("paced").build()).await.unwrap();
    let limits = pb::QueueLimits {
        max_dispatch_per_second: 20,
        burst: 1,
        max_concurrent: 0,
    };
    admin.set_queue_limits("paced", limits).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..9 {
        ids.push(
            client
                .submit(Submit::new("paced").build())
                .await
                .unwrap()
                .id,
        );
    }
    let started = tokio::time::Instant::now();
    let worker = gateway.spawn_worker(
        "paced",
        handler_fn(|task: TaskContext| async move { Ok(task.payload().clone()) }),
    );
    for id in &ids {
        finished(&client, id).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350),
        "10 tickets at 20/s with a burst of 1 took only {took:?}"
    );
    let counts = admin.get_queue("paced").await.unwrap().counts.unwrap();
    assert_eq!(counts.succeeded, 10);
    worker.shutdown();
}

/// A worker for `queue` that fails every task for good until `healthy` is
/// set, then returns each task's payload.
fn flaky_worker(
    gateway: &TestGateway,
    queue: &str,
    healthy: &Arc<AtomicBool>,
) -> asyncgate_client::worker::WorkerHandle {
    let healthy = healthy.clone();
    gateway.spawn_worker(
        queue,
        handler_fn(move |task: TaskContext| {
            let healthy = healthy.load(Ordering::SeqCst);
            async move {
                if healthy {
                    Ok(task.payload().clone())
                } else {
                    Err(TaskError::fatal("the ledger is down"))
                }
            }
        }),
    )
}

#[tokio::test]
async fn a_failed_ticket_retried_runs_again_with_its_body_and_a_new_watch_sees_it() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let admin = client.admin();
    let healthy = Arc::new(AtomicBool::new(false));
    let worker = flaky_worker(&gateway, "billing", &healthy);
    let body = serde_json::json!({"order": 7});
    let ticket = client
        .submit(Submit::new("billing").payload(json(body.clone())))
        .await
        .unwrap();
    let failed = finished(&client, &ticket.id).await;
    assert_eq!(state(&failed), pb::TicketState::Failed);

    // The fix is out. The queue is held while the retry is set up, so the
    // new watch below starts before the worker takes the ticket.
    healthy.store(true, Ordering::SeqCst);
    admin
        .pause_queue("billing", "replaying failures")
        .await
        .unwrap();
    let retried = admin.retry_ticket(&ticket.id).await.unwrap();
    assert_eq!(retried.id, ticket.id);
    assert_eq!(state(&retried), pb::TicketState::Pending);
    assert_eq!(retried.attempt, 0, "a fresh attempt budget");
    assert_eq!(retried.seq, failed.seq + 1, "its events continue");
    assert!(retried.result.is_none() && retried.finished_at.is_none());
    assert_eq!(
        retried.error.as_ref().unwrap().message,
        "the ledger is down",
        "the last error, for context"
    );
    let counts = admin.get_queue("billing").await.unwrap().counts.unwrap();
    assert_eq!((counts.pending, counts.failed), (1, 0));

    let mut watch = client.watch(&ticket.id, None).await.unwrap();
    let snapshot = watch.next().await.unwrap().unwrap();
    assert_eq!(
        snapshot.ticket.as_ref().map(state),
        Some(pb::TicketState::Pending)
    );
    assert_eq!(snapshot.seq, retried.seq);
    admin.resume_queue("billing").await.unwrap();
    let last = loop {
        let event = watch.next().await.expect("an event").unwrap();
        let Some(ticket) = event.ticket else { continue };
        assert!(event.seq > retried.seq);
        if asyncgate_client::is_terminal(ticket.state()) {
            break ticket;
        }
    };
    assert_eq!(state(&last), pb::TicketState::Succeeded);
    assert_eq!(last.attempt, 1);
    assert_eq!(
        as_json(last.result.as_ref()),
        body,
        "the worker got the body kept since the failure"
    );
    assert!(last.error.is_none());
    let counts = admin.get_queue("billing").await.unwrap().counts.unwrap();
    assert_eq!((counts.succeeded, counts.failed), (1, 0));
    worker.shutdown();
}

#[tokio::test]
async fn a_queues_failures_are_retried_in_bulk_and_finished_tickets_deleted() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let admin = client.admin();
    let healthy = Arc::new(AtomicBool::new(false));
    let worker = flaky_worker(&gateway, "nightly", &healthy);
    let mut ids = Vec::new();
    for i in 0..3 {
        let ticket = client
            .submit(Submit::new("nightly").payload(json(serde_json::json!(i))))
            .await
            .unwrap();
        ids.push(ticket.id);
    }
    for id in &ids {
        assert_eq!(state(&finished(&client, id).await), pb::TicketState::Failed);
    }
    let cut = SystemTime::now();
    let late = client
        .submit(Submit::new("nightly").payload(json(serde_json::json!("late"))))
        .await
        .unwrap();
    finished(&client, &late.id).await;
    // Held, so that it is cancelled before a worker fails it.
    admin.pause_queue("nightly", "").await.unwrap();
    let cancelled = client.submit(Submit::new("nightly").build()).await.unwrap();
    client.cancel(&cancelled.id, "not tonight").await.unwrap();
    admin.resume_queue("nightly").await.unwrap();

    // FAILED by default, created before the cut: the first three.
    healthy.store(true, Ordering::SeqCst);
    assert_eq!(
        admin
            .retry_tickets("nightly", &[], Some(cut))
            .await
            .unwrap(),
        3
    );
    for (i, id) in ids.iter().enumerate() {
        let done = finished(&client, id).await;
        assert_eq!(state(&done), pb::TicketState::Succeeded, "{done:?}");
        assert_eq!(as_json(done.result.as_ref()), serde_json::json!(i));
    }
    let counts = admin.get_queue("nightly").await.unwrap().counts.unwrap();
    assert_eq!(
        (counts.succeeded, counts.failed, counts.cancelled),
        (3, 1, 1)
    );
    // Then the rest, named by state; nothing is left to retry after.
    let both = [pb::TicketState::Failed, pb::TicketState::Cancelled];
    assert_eq!(
        admin.retry_tickets("nightly", &both, None).await.unwrap(),
        2
    );
    assert_eq!(
        state(&finished(&client, &late.id).await),
        pb::TicketState::Succeeded
    );
    assert_eq!(
        state(&finished(&client, &cancelled.id).await),
        pb::TicketState::Succeeded
    );
    assert_eq!(
        admin.retry_tickets("nightly", &both, None).await.unwrap(),
        0
    );

    // A succeeded ticket is not retried; it can be deleted, and a lookup
    // then says when.
    let refused = admin.retry_ticket(&ids[0]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .to_string()
            .contains("succeeded tickets are not retried"),
        "{refused}"
    );
    let deleted_at = admin.delete_ticket(&ids[0]).await.unwrap();
    let gone = client.get(&ids[0], None).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let when = prost_types::Timestamp::from(deleted_at).to_string();
    assert!(gone.to_string().contains(&when), "{when}: {gone}");
    assert_eq!(
        code(admin.delete_ticket(&ids[0]).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(admin.retry_ticket(&ids[0]).await),
        tonic::Code::NotFound
    );
    let counts = admin.get_queue("nightly").await.unwrap().counts.unwrap();
    assert_eq!(counts.succeeded, 4);
    worker.shutdown();
}

#[tokio::test]
async fn retry_and_delete_refuse_what_they_must_and_keep_to_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with_keys(&dir).await;
    let alice = as_key(&gateway, ALICE).await;
    let bob = as_key(&gateway, BOB).await;
    let alices = alice.submit(Submit::new("jobs").build()).await.unwrap();
    alice.cancel(&alices.id, "by mistake").await.unwrap();
    let bobs = bob.submit(Submit::new("jobs").build()).await.unwrap();
    let unknown = uuid::Uuid::now_v7().to_string();

    // Tenant a's admin: b's ticket is NOT_FOUND, word for word as an id
    // that does not exist.
    let a_ops = as_key(&gateway, A_OPS).await.admin();
    for id in [&bobs.id, &unknown] {
        for refused in [
            a_ops.retry_ticket(id).await.unwrap_err(),
            a_ops.delete_ticket(id).await.unwrap_err(),
        ] {
            assert_eq!(refused.code(), tonic::Code::NotFound, "{refused}");
            assert_eq!(
                refused.to_string(),
                format!("NotFound: ticket {id} not found")
            );
        }
    }
    let retried = a_ops.retry_ticket(&alices.id).await.unwrap();
    assert_eq!(state(&retried), pb::TicketState::Pending);

    // Unfinished tickets are refused, saying why.
    let ops = as_key(&gateway, OPS).await.admin();
    let pending = ops.retry_ticket(&bobs.id).await.unwrap_err();
    assert_eq!(pending.code(), tonic::Code::FailedPrecondition);
    assert!(pending.to_string().contains("not finished"), "{pending}");
    let pending = ops.delete_ticket(&bobs.id).await.unwrap_err();
    assert_eq!(pending.code(), tonic::Code::FailedPrecondition);
    assert!(pending.to_string().contains("cancel it first"), "{pending}");
    // Bad input names the field.
    let bad = ops.retry_ticket("not-a-ticket").await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let states = ops
        .retry_tickets("b/jobs", &[pb::TicketState::Succeeded], None)
        .await
        .unwrap_err();
    assert_eq!(states.code(), tonic::Code::InvalidArgument);
    assert!(states.to_string().contains("states[0]"), "{states}");
    assert_eq!(
        code(ops.retry_tickets("never-used", &[], None).await),
        tonic::Code::NotFound
    );
    // A tenant's admin retries in bulk on its own tenant's queue only.
    let bobs_cancelled = bob.submit(Submit::new("jobs").build()).await.unwrap();
    bob.cancel(&bobs_cancelled.id, "").await.unwrap();
    let cancelled = [pb::TicketState::Cancelled];
    assert_eq!(
        a_ops.retry_tickets("jobs", &cancelled, None).await.unwrap(),
        0,
        "alice's was retried already; bob's is not a's"
    );
    assert_eq!(
        state(&bob.get(&bobs_cancelled.id, None).await.unwrap()),
        pb::TicketState::Cancelled
    );

    // A viewer, a client and a worker may do none of it.
    for key in [VIEWER, ALICE, WORKER] {
        let admin = as_key(&gateway, key).await.admin();
        assert_eq!(
            code(admin.retry_ticket(&alices.id).await),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(admin.retry_tickets("jobs", &[], None).await),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(admin.delete_ticket(&alices.id).await),
            tonic::Code::PermissionDenied
        );
    }
    // Nothing changed by the refused calls.
    let bobs_now = bob.get(&bobs.id, None).await.unwrap();
    assert_eq!(state(&bobs_now), pb::TicketState::Pending);
    assert_eq!(bobs_now.seq, bobs.seq);
}
