//! Conformance cases of queues as the admin API sees them: counts per state
//! kept through every transition, the oldest pending ticket, the pause
//! that stops dispatch until a resume, and admin-set targets.

use super::*;
use crate::engine::window::{QueueStats, Throughput};

/// Counts of queue `q`, which must exist.
async fn counts(engine: &Arc<dyn Engine>, q: &str) -> StateCounts {
    engine
        .queue_info(&queue(q))
        .await
        .unwrap()
        .expect("the queue exists")
        .counts
}

/// Whether two times are the same to the millisecond (Redis keeps ms).
fn same_ms(a: SystemTime, b: SystemTime) -> bool {
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    ms(a) == ms(b)
}

pub(crate) async fn queue_counts_follow_every_transition(factory: Factory) {
    let h = harness_with(
        factory,
        EngineConfig {
            result_retention: Duration::from_secs(60),
            ..config()
        },
    )
    .await;
    assert!(h.engine.queue_info(&queue("q")).await.unwrap().is_none());
    assert!(h.engine.queues().await.unwrap().is_empty());
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(h.engine.submit(new_ticket("q")).await.unwrap().ticket);
    }
    h.engine.submit(new_ticket("other")).await.unwrap();
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!(info.counts.pending, 4);
    assert!(same_ms(info.oldest_pending_at.unwrap(), ids[0].created_at));
    assert!(info.pause.is_none());
    let names: Vec<String> = h
        .engine
        .queues()
        .await
        .unwrap()
        .iter()
        .map(|info| info.queue.to_string())
        .collect();
    assert_eq!(names, ["other", "q"]);

    // Lease the oldest: running 1, and the next one is the oldest pending.
    let s = session(&h.engine, "w").await;
    let first = claim_one(&h.engine, "q", &s).await;
    assert_eq!(first.ticket.id, ids[0].id);
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!((info.counts.pending, info.counts.running), (3, 1));
    assert!(same_ms(info.oldest_pending_at.unwrap(), ids[1].created_at));

    h.engine
        .complete(
            first.ticket.id,
            first.lease.lease_id,
            Outcome::Success(body("ok")),
        )
        .await
        .unwrap();
    let second = claim_one(&h.engine, "q", &s).await;
    h.engine
        .complete(
            second.ticket.id,
            second.lease.lease_id,
            Outcome::Failure(TicketError {
                code: 3,
                message: "bad".into(),
                retryable: false,
            }),
        )
        .await
        .unwrap();
    h.engine.cancel(ids[3].id, "").await.unwrap();
    let counts_now = counts(&h.engine, "q").await;
    assert_eq!(
        counts_now,
        StateCounts {
            pending: 1,
            running: 0,
            succeeded: 1,
            failed: 1,
            cancelled: 1,
            expired: 0,
        }
    );
    // A deadline passing expires the last one.
    let mut timed = new_ticket("q");
    timed.timeout = Some(Duration::from_secs(30));
    h.engine.submit(timed).await.unwrap();
    h.engine
        .run_timers(later(Duration::from_secs(31)))
        .await
        .unwrap();
    let counts_now = counts(&h.engine, "q").await;
    assert_eq!((counts_now.pending, counts_now.expired), (1, 1));

    // Retention deletes the finished ones: they leave the counts.
    h.engine
        .run_timers(later(Duration::from_secs(120)))
        .await
        .unwrap();
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!(
        info.counts,
        StateCounts {
            pending: 1,
            ..StateCounts::default()
        }
    );
    assert!(same_ms(info.oldest_pending_at.unwrap(), ids[2].created_at));
}

pub(crate) async fn a_paused_queue_dispatches_nothing_until_resumed(factory: Factory) {
    let h = harness(factory).await;
    let first = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let pause = QueuePause {
        by: "ops".into(),
        at: SystemTime::now(),
        reason: "incident 42".into(),
    };
    let info = h
        .engine
        .set_pause(&queue("q"), Some(pause.clone()))
        .await
        .unwrap();
    let shown = info.pause.expect("paused");
    assert_eq!(
        (shown.by.as_str(), shown.reason.as_str()),
        ("ops", "incident 42")
    );
    assert!(same_ms(shown.at, pause.at));
    assert_eq!(
        h.engine
            .queue_info(&queue("q"))
            .await
            .unwrap()
            .unwrap()
            .pause,
        Some(shown)
    );
    // Submits are still accepted; nothing is claimed.
    h.engine.submit(new_ticket("q")).await.unwrap();
    assert!(matches!(h.engine.ready_count(&queue("q")), None | Some(0)));
    let s = session(&h.engine, "w").await;
    let claimed = h
        .engine
        .claim(&queue("q"), std::slice::from_ref(&s))
        .await
        .unwrap();
    assert!(claimed.is_empty(), "a paused queue dispatched {claimed:?}");
    assert_eq!(counts(&h.engine, "q").await.pending, 2);

    // A pause can be set on a queue never used; it then exists.
    h.engine
        .set_pause(&queue("fresh"), Some(pause.clone()))
        .await
        .unwrap();
    assert!(
        h.engine
            .queue_info(&queue("fresh"))
            .await
            .unwrap()
            .is_some()
    );

    // Resumed: the queue is announced ready, and dispatches in order.
    h.recorder.ready.lock().unwrap().clear();
    let info = h.engine.set_pause(&queue("q"), None).await.unwrap();
    assert!(info.pause.is_none());
    h.recorder
        .until("the resumed queue announced ready", |r| {
            r.ready.lock().unwrap().contains(&queue("q")).then_some(())
        })
        .await;
    let claimed = claim_one(&h.engine, "q", &s).await;
    assert_eq!(claimed.ticket.id, first);
}

pub(crate) async fn a_sessions_tickets_and_worker_record_are_listed(factory: Factory) {
    let h = harness(factory).await;
    let s = session(&h.engine, "w").await;
    let record = WorkerRecord {
        session_id: s.session_id,
        worker_name: "w".into(),
        queues: vec![queue("q")],
        peer: Some("127.0.0.1:5000".into()),
        max_in_flight: 4,
        connected_at: SystemTime::now(),
        last_heard_at: SystemTime::now(),
        replica: h.engine.replica(),
        draining: false,
    };
    h.engine
        .register_worker(&record, later(Duration::from_secs(60)))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(h.engine.submit(new_ticket("q")).await.unwrap().ticket.id);
    }
    let a = claim_one(&h.engine, "q", &s).await;
    claim_one(&h.engine, "q", &s).await;
    ids.sort();
    assert_eq!(h.engine.session_tickets(&s).await.unwrap(), ids);
    h.engine
        .complete(a.ticket.id, a.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    let held = h.engine.session_tickets(&s).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_ne!(held[0], a.ticket.id);
    // A shared store lists the worker to every replica, to the ms.
    if let Some(workers) = h.engine.workers().await.unwrap() {
        assert_eq!(workers.len(), 1, "{workers:?}");
        let listed = &workers[0];
        assert_eq!(
            (
                &listed.worker_name,
                &listed.queues,
                &listed.peer,
                listed.max_in_flight
            ),
            (
                &record.worker_name,
                &record.queues,
                &record.peer,
                record.max_in_flight
            )
        );
        assert!(same_ms(listed.connected_at, record.connected_at));
    }
    h.engine.end_session(s.session_id).await.unwrap();
    assert!(h.engine.session_tickets(&s).await.unwrap().is_empty());
    if let Some(workers) = h.engine.workers().await.unwrap() {
        assert!(workers.is_empty(), "{workers:?}");
    }
}

pub(crate) async fn limits_bound_what_a_claim_takes(factory: Factory) {
    let h = harness(factory).await;
    for _ in 0..10 {
        h.engine.submit(new_ticket("q")).await.unwrap();
    }
    let s = session(&h.engine, "w").await;
    let five = vec![s.clone(); 5];
    let claim = || async { h.engine.claim(&queue("q"), &five).await.unwrap() };
    // At most two running at once.
    let capped = QueueLimits {
        max_concurrent: 2,
        ..QueueLimits::default()
    };
    let info = h.engine.set_limits(&queue("q"), capped).await.unwrap();
    assert_eq!(info.limits, capped);
    let first = claim().await;
    assert_eq!(first.len(), 2);
    assert!(claim().await.is_empty(), "the cap is reached");
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!(info.held_back, 8, "the ready tickets wait for the cap");
    h.engine
        .complete(
            first[0].ticket.id,
            first[0].lease.lease_id,
            Outcome::Success(body("ok")),
        )
        .await
        .unwrap();
    assert_eq!(claim().await.len(), 1, "one finished, one more may run");

    // One lease a second, three at once: the bucket starts full.
    let rated = QueueLimits {
        max_dispatch_per_second: 1,
        burst: 3,
        max_concurrent: 0,
    };
    h.recorder.ready.lock().unwrap().clear();
    h.engine.set_limits(&queue("q"), rated).await.unwrap();
    h.recorder
        .until("new limits announced", |r| {
            r.ready.lock().unwrap().contains(&queue("q")).then_some(())
        })
        .await;
    assert_eq!(claim().await.len(), 3);
    assert!(claim().await.is_empty(), "the bucket is empty");
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!(info.limits, rated);
    assert_eq!(info.held_back, 4, "the ready tickets wait for tokens");

    // Unlimited again: the rest go.
    h.engine
        .set_limits(&queue("q"), QueueLimits::default())
        .await
        .unwrap();
    assert_eq!(claim().await.len(), 4);
}

pub(crate) async fn queue_stats_count_results_and_latencies(factory: Factory) {
    let h = harness(factory).await;
    for _ in 0..4 {
        h.engine.submit(new_ticket("q")).await.unwrap();
    }
    let stats = |engine: Arc<dyn Engine>| async move {
        engine
            .queue_info(&queue("q"))
            .await
            .unwrap()
            .expect("the queue exists")
            .stats
    };
    let before = stats(h.engine.clone()).await;
    assert_eq!(before, QueueStats::default(), "nothing measured yet");
    let s = session(&h.engine, "w").await;
    for n in 0..3 {
        let claimed = claim_one(&h.engine, "q", &s).await;
        let outcome = if n < 2 {
            Outcome::Success(body("ok"))
        } else {
            Outcome::Failure(TicketError {
                code: 3,
                message: "bad".into(),
                retryable: false,
            })
        };
        h.engine
            .complete(claimed.ticket.id, claimed.lease.lease_id, outcome)
            .await
            .unwrap();
    }
    let after = stats(h.engine.clone()).await;
    let three = Throughput {
        succeeded: 2,
        failed: 1,
    };
    assert_eq!(after.last_minute, three);
    assert_eq!(after.last_five_minutes, three);
    let in_history = after.history.iter().fold((0, 0), |(s, f), b| {
        (s + b.throughput.succeeded, f + b.throughput.failed)
    });
    assert_eq!(in_history, (2, 1), "the history holds the same results");
    // Three leases waited and three attempts ran; the fourth still waits.
    assert_eq!(after.queue_wait.count, 3);
    assert_eq!(after.run_time.count, 3);
    for latency in [after.queue_wait, after.run_time] {
        let (p50, p95) = (latency.p50.unwrap(), latency.p95.unwrap());
        assert!(p50 <= p95 && p95 < Duration::from_secs(60), "{latency:?}");
    }
    // Another queue's work is not counted here.
    h.engine.submit(new_ticket("other")).await.unwrap();
    let other = claim_one(&h.engine, "other", &s).await;
    h.engine
        .complete(
            other.ticket.id,
            other.lease.lease_id,
            Outcome::Success(body("ok")),
        )
        .await
        .unwrap();
    assert_eq!(stats(h.engine.clone()).await.last_minute, three);
}

pub(crate) async fn queue_targets_are_stored_listed_replaced_and_cleared(factory: Factory) {
    let h = harness(factory).await;
    // A tenant's queue, as stored.
    let scoped = |name: &str| QueueName::parse_scoped(name).unwrap();
    assert!(h.engine.targets().await.unwrap().is_empty());
    let target = |spec: &str, by: &str| QueueTarget {
        spec: spec.into(),
        by: by.into(),
        at: SystemTime::now(),
    };
    let orders = target("grpc://orders.internal:50051/shop.v1.Orders/Place", "ops");
    let hooks = target("https://hooks.internal:443/v1/in?max_concurrent=4", "ops");
    h.engine
        .set_target(&scoped("t/orders"), Some(orders.clone()))
        .await
        .unwrap();
    h.engine
        .set_target(&queue("hooks"), Some(hooks.clone()))
        .await
        .unwrap();
    let listed = h.engine.targets().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|(q, _)| q.as_str()).collect();
    assert_eq!(names, ["hooks", "t/orders"], "by queue name");
    assert_eq!(listed[0].1.spec, hooks.spec);
    assert_eq!(listed[1].1.by, "ops");
    assert!(same_ms(listed[1].1.at, orders.at));
    assert!(
        h.engine
            .queue_info(&queue("hooks"))
            .await
            .unwrap()
            .is_some(),
        "setting a target creates the queue"
    );
    // Replaced, then cleared (clearing twice is no error).
    let moved = target(
        "grpc://orders-2.internal:50051/shop.v1.Orders/Place",
        "alice",
    );
    h.engine
        .set_target(&scoped("t/orders"), Some(moved.clone()))
        .await
        .unwrap();
    h.engine.set_target(&queue("hooks"), None).await.unwrap();
    h.engine.set_target(&queue("hooks"), None).await.unwrap();
    h.engine.set_target(&queue("never"), None).await.unwrap();
    assert!(
        h.engine
            .queue_info(&queue("never"))
            .await
            .unwrap()
            .is_none(),
        "clearing creates no queue"
    );
    let listed = h.engine.targets().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].0.as_str(),
            listed[0].1.spec.as_str(),
            listed[0].1.by.as_str()
        ),
        ("t/orders", moved.spec.as_str(), "alice")
    );
}
