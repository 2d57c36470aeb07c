//! Unit tests of `engine/local.rs` and its submodules (`engine/local/`).

use super::*;

#[test]
fn positions_are_exact_for_short_queues_and_estimated_for_long_ones() {
    let mut index = QueueIndex::default();
    for seq in 0..10u64 {
        index.push((Reverse(0), seq), TicketId::new());
    }
    index.push((Reverse(5), 100), TicketId::new());
    index.remove(&(Reverse(0), 3));
    assert_eq!(
        index.ahead((Reverse(0), 5)),
        1 + 4,
        "one higher, four before it"
    );
    assert_eq!(index.ahead((Reverse(5), 100)), 0);
    let mut long = QueueIndex::default();
    for seq in 0..10_000u64 {
        long.push((Reverse(0), seq), TicketId::new());
    }
    assert!(long.pop_first().is_some());
    assert_eq!(long.ahead((Reverse(0), 9_999)), 9_998);
    assert_eq!(long.pending(), 9_999);
}

fn failing_ticket(body: &'static [u8]) -> NewTicket {
    NewTicket {
        id: TicketId::new(),
        queue: QueueName::parse("q").unwrap(),
        payload: Payload {
            kind: Some(asyncgate_proto::v1::payload::Kind::Binary(
                bytes::Bytes::from_static(body),
            )),
            content_type: String::new(),
        },
        priority: 0,
        idempotency_key: None,
        metadata: Default::default(),
        timeout: None,
        attempt_timeout: None,
        max_attempts: 1,
        tenant: None,
        not_before: None,
        callback: None,
    }
}

/// The pending-bytes budget counts every body the engine keeps: a failed
/// ticket's (kept for a retry) until it succeeds on a retry or is
/// deleted; a succeeded ticket's never.
#[tokio::test]
async fn kept_bodies_weigh_on_the_budget_until_success_or_delete() {
    let engine = LocalEngine::in_memory(EngineConfig::default());
    let new = failing_ticket(b"0123456789");
    let weight = crate::engine::request_bytes(&new.payload, &new.metadata);
    let held = || engine.pending_bytes.load(Ordering::Relaxed);
    let session = SessionInfo {
        session_id: SessionId::new(),
        worker_name: "w".into(),
        queues: Arc::from([QueueName::parse("q").unwrap()]),
    };
    engine
        .open_session(
            &session,
            SystemTime::now() + std::time::Duration::from_secs(7 * 24 * 3600),
        )
        .await
        .unwrap();
    let run = |outcome: Outcome| {
        let engine = &engine;
        let session = session.clone();
        async move {
            let claimed = engine
                .claim(&QueueName::parse("q").unwrap(), &[session])
                .await
                .unwrap();
            let c = &claimed[0];
            engine
                .complete(c.ticket.id, c.lease.lease_id, outcome)
                .await
                .unwrap();
        }
    };
    let failure = || {
        Outcome::Failure(crate::domain::TicketError {
            code: 2,
            message: "no".into(),
            retryable: false,
        })
    };

    let id = engine.submit(new).await.unwrap().ticket.id;
    assert_eq!(held(), weight);
    run(failure()).await;
    assert_eq!(held(), weight, "a failed ticket keeps its body");
    engine.retry(id).await.unwrap();
    assert_eq!(held(), weight, "a retry takes nothing more");
    run(Outcome::Success(Payload::default())).await;
    assert_eq!(held(), 0, "success gives it back");

    let id = engine.submit(failing_ticket(b"x")).await.unwrap().ticket.id;
    engine.cancel(id, "").await.unwrap();
    assert!(held() > 0);
    engine.delete(id).await.unwrap();
    assert_eq!(held(), 0, "a delete gives it back");
    let id = engine.submit(failing_ticket(b"y")).await.unwrap().ticket.id;
    engine.cancel(id, "").await.unwrap();
    engine
        .run_timers(SystemTime::now() + std::time::Duration::from_secs(2 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(held(), 0, "retention gives it back");
    // A succeeded ticket, deleted, gives back nothing twice.
    let id = engine.submit(failing_ticket(b"z")).await.unwrap().ticket.id;
    run(Outcome::Success(Payload::default())).await;
    engine.delete(id).await.unwrap();
    assert_eq!(held(), 0);
}
