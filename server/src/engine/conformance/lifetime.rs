//! Conformance cases of how a ticket's life is cut short or ends: cancels,
//! deadlines, attempt timeouts, and retention (with its tombstone).

use super::*;

pub(crate) async fn cancel_pending_and_running(factory: Factory) {
    let h = harness(factory).await;
    let pending = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let t = h.engine.cancel(pending, "changed my mind").await.unwrap();
    assert_eq!(t.state, TicketState::Cancelled);
    assert!(t.error.unwrap().message.contains("changed my mind"));
    let s = session(&h.engine, "w").await;
    assert!(
        h.engine
            .claim(&queue("q"), std::slice::from_ref(&s))
            .await
            .unwrap()
            .is_empty(),
        "a cancelled ticket is never dispatched"
    );
    let running = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let c = claim_one(&h.engine, "q", &s).await;
    h.engine.cancel(running, "").await.unwrap();
    let revoked = h.recorder.revocations(1).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].lease_id, c.lease.lease_id);
    assert_eq!(revoked[0].reason, RevokeReason::Cancelled);
    let late = h
        .engine
        .complete(running, c.lease.lease_id, Outcome::Success(body("late")))
        .await;
    assert!(matches!(late, Err(EngineError::StaleLease { .. })));
    let cancelled = h.engine.get(running).await.unwrap();
    assert_eq!(cancelled.state, TicketState::Cancelled);
    // The cancelled attempt is in the history, ended by the cancel.
    assert_eq!(cancelled.attempts.len(), 1);
    assert_eq!(cancelled.attempts[0].lease_id, c.lease.lease_id);
    assert_eq!(
        cancelled.attempts[0].error.as_ref().map(|e| e.code),
        Some(crate::domain::ticket::codes::CANCELLED)
    );
    // Cancelling again is harmless; cancelling a finished ticket is refused.
    assert!(h.engine.cancel(running, "").await.is_ok());
    let done = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let c = claim_one(&h.engine, "q", &s).await;
    h.engine
        .complete(done, c.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    assert!(matches!(
        h.engine.cancel(done, "").await,
        Err(EngineError::AlreadyTerminal { .. })
    ));
}

pub(crate) async fn deadline_expires_pending_and_running(factory: Factory) {
    let h = harness(factory).await;
    let mut new = new_ticket("q");
    new.timeout = Some(Duration::from_secs(30));
    let pending = h.engine.submit(new.clone()).await.unwrap().ticket.id;
    new.id = TicketId::new();
    let running = h.engine.submit(new).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = h
        .engine
        .claim(&queue("q"), std::slice::from_ref(&s))
        .await
        .unwrap();
    assert_eq!(c[0].ticket.id, pending, "FIFO");
    h.engine.run_timers(SystemTime::now()).await.unwrap();
    assert_eq!(
        h.engine.get(running).await.unwrap().state,
        TicketState::Pending
    );
    h.engine
        .run_timers(later(Duration::from_secs(31)))
        .await
        .unwrap();
    for id in [pending, running] {
        let t = h.engine.get(id).await.unwrap();
        assert_eq!(t.state, TicketState::Expired);
        assert_eq!(t.error.unwrap().code, 4);
    }
    let revoked = h.recorder.revocations(1).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].reason, RevokeReason::Expired);
}

pub(crate) async fn attempt_timeout_retries(factory: Factory) {
    let h = harness(factory).await;
    let mut new = new_ticket("q");
    new.attempt_timeout = Some(Duration::from_secs(10));
    let id = h.engine.submit(new).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    assert!(c.lease.attempt_deadline.is_some());
    h.engine
        .run_timers(later(Duration::from_secs(11)))
        .await
        .unwrap();
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(t.state, TicketState::Pending);
    assert_eq!(t.error.unwrap().code, 4);
    let revoked = h.recorder.revocations(1).await;
    assert_eq!(revoked[0].reason, RevokeReason::AttemptTimeout);
}

pub(crate) async fn retention_leaves_a_tombstone(factory: Factory) {
    let h = harness_with(
        factory,
        EngineConfig {
            result_retention: Duration::from_secs(60),
            ..config()
        },
    )
    .await;
    let mut new = new_ticket("q");
    new.idempotency_key = Some("k".into());
    let id = h.engine.submit(new.clone()).await.unwrap().ticket.id;
    h.engine.cancel(id, "").await.unwrap();
    h.engine
        .run_timers(later(Duration::from_secs(61)))
        .await
        .unwrap();
    let error = h.engine.get(id).await.unwrap_err();
    assert!(
        matches!(error, EngineError::ResultExpired { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("expired"));
    new.id = TicketId::new();
    let again = h.engine.submit(new).await.unwrap();
    assert!(
        again.created,
        "an expired ticket's idempotency key is free again"
    );
}
