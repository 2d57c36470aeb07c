//! Conformance cases of leases and worker sessions: exclusive claims,
//! fenced completions, retries and their backoff, lost workers and sessions,
//! and the worker-loss cap.

use super::*;

pub(crate) async fn claim_is_exclusive_and_complete_is_fenced(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    assert_eq!(c.ticket.state, TicketState::Running);
    assert_eq!(c.ticket.attempt, 1);
    assert!(
        h.engine
            .claim(&queue("q"), std::slice::from_ref(&s))
            .await
            .unwrap()
            .is_empty(),
        "a leased ticket is not claimable"
    );
    let stale = h
        .engine
        .complete(id, LeaseId::new(), Outcome::Success(body("forged")))
        .await;
    assert!(matches!(stale, Err(EngineError::StaleLease { .. })));
    let done = h
        .engine
        .complete(id, c.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    let Completion::Recorded(t) = done else {
        panic!("expected Recorded")
    };
    assert_eq!(t.state, TicketState::Succeeded);
    assert_eq!(t.result, Some(body("ok")));
    let again = h
        .engine
        .complete(id, c.lease.lease_id, Outcome::Success(body("changed")))
        .await
        .unwrap();
    assert!(matches!(again, Completion::Duplicate(_)));
    let kept = h.engine.get(id).await.unwrap();
    assert_eq!(kept.result, Some(body("ok")));
    // Retention keeps the result, not the request body nobody needs again.
    assert_eq!(*kept.payload, Payload::default());
}

pub(crate) async fn lost_worker_requeues_and_old_lease_is_fenced(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let first = session(&h.engine, "w1").await;
    let c1 = claim_one(&h.engine, "q", &first).await;
    h.engine.end_session(first.session_id).await.unwrap();
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(t.state, TicketState::Pending);
    assert_eq!(t.worker_losses, 1);
    assert!(
        t.not_before.is_none(),
        "a lost worker's ticket is redelivered at once"
    );
    let second = session(&h.engine, "w2").await;
    let c2 = claim_one(&h.engine, "q", &second).await;
    assert_eq!(c2.ticket.attempt, 2);
    let late = h
        .engine
        .complete(id, c1.lease.lease_id, Outcome::Success(body("late")))
        .await;
    assert!(matches!(late, Err(EngineError::StaleLease { .. })));
    h.engine
        .complete(id, c2.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    let done = h.engine.get(id).await.unwrap();
    assert_eq!(done.result, Some(body("ok")));
    // Both attempts are in the history, each with its worker and lease.
    let history: Vec<_> = done
        .attempts
        .iter()
        .map(|a| (a.number, a.lease_id, a.session_id, &*a.worker_name))
        .collect();
    assert_eq!(
        history,
        [
            (1, c1.lease.lease_id, first.session_id, "w1"),
            (2, c2.lease.lease_id, second.session_id, "w2"),
        ]
    );
    let lost = done.attempts[0]
        .error
        .as_ref()
        .expect("how attempt 1 ended");
    assert!(lost.message.contains("lost its worker"), "{lost:?}");
    assert_eq!(
        done.attempts[1].error, None,
        "attempt 2 recorded the result"
    );
    assert!(done.attempts.iter().all(|a| a.started_at <= a.ended_at));
}

pub(crate) async fn retryable_failures_back_off_then_fail(factory: Factory) {
    let h = harness(factory).await;
    let mut new = new_ticket("q");
    new.max_attempts = 2;
    let id = h.engine.submit(new).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let failure = || {
        Outcome::Failure(TicketError {
            code: 14,
            message: "flaky".into(),
            retryable: true,
        })
    };
    let c = claim_one(&h.engine, "q", &s).await;
    h.engine
        .complete(id, c.lease.lease_id, failure())
        .await
        .unwrap();
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(t.state, TicketState::Pending);
    assert!(t.not_before.is_some(), "a retry waits out its backoff");
    assert_eq!(t.error.as_ref().unwrap().message, "flaky");
    assert!(
        h.engine
            .claim(&queue("q"), std::slice::from_ref(&s))
            .await
            .unwrap()
            .is_empty()
    );
    h.engine
        .run_timers(later(Duration::from_secs(5)))
        .await
        .unwrap();
    let c = claim_one(&h.engine, "q", &s).await;
    assert_eq!(c.ticket.attempt, 2);
    h.engine
        .complete(id, c.lease.lease_id, failure())
        .await
        .unwrap();
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(t.state, TicketState::Failed);
    let error = t.error.unwrap();
    assert!(error.message.contains("attempt 2 of 2"));
    assert!(!error.retryable, "a FAILED ticket will not be retried");
}

pub(crate) async fn a_success_after_a_failed_attempt_carries_no_error(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    let flaky = Outcome::Failure(TicketError {
        code: 14,
        message: "flaky".into(),
        retryable: true,
    });
    h.engine
        .complete(id, c.lease.lease_id, flaky)
        .await
        .unwrap();
    h.engine
        .run_timers(later(Duration::from_secs(5)))
        .await
        .unwrap();
    let c = claim_one(&h.engine, "q", &s).await;
    h.engine
        .complete(id, c.lease.lease_id, Outcome::Success(body("fine")))
        .await
        .unwrap();
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(t.state, TicketState::Succeeded);
    assert!(
        t.error.is_none(),
        "a terminal ticket describes its final outcome: {:?}",
        t.error
    );
}

pub(crate) async fn non_retryable_failure_fails_at_once(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    let outcome = Outcome::Failure(TicketError {
        code: 3,
        message: "bad input".into(),
        retryable: false,
    });
    h.engine
        .complete(id, c.lease.lease_id, outcome)
        .await
        .unwrap();
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(t.state, TicketState::Failed);
    assert_eq!(t.error.unwrap().code, 3);
}

pub(crate) async fn expired_session_loses_its_leases(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    claim_one(&h.engine, "q", &s).await;
    h.engine
        .run_timers(later(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(
        h.engine.get(id).await.unwrap().state,
        TicketState::Running,
        "TTL not reached"
    );
    h.engine
        .run_timers(later(Duration::from_secs(61)))
        .await
        .unwrap();
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(t.state, TicketState::Pending);
    assert_eq!(t.worker_losses, 1);
}

/// A session whose leases a timer pass gave back stays lost: a late
/// renewal is refused rather than reviving it (its cleanup already ran, so
/// leases under it would never be given back), and so is one after it
/// ended.
pub(crate) async fn a_lost_session_is_not_revived(factory: Factory) {
    let h = harness(factory).await;
    let s = session(&h.engine, "w").await;
    h.engine
        .touch_session(&s, later(Duration::from_secs(90)))
        .await
        .expect("a live session renews");
    h.engine
        .run_timers(later(Duration::from_secs(91)))
        .await
        .unwrap();
    let lost = h
        .engine
        .touch_session(&s, later(Duration::from_secs(200)))
        .await
        .unwrap_err();
    assert!(
        matches!(lost, EngineError::SessionLost(id) if id == s.session_id),
        "{lost}"
    );
    let ended = session(&h.engine, "w2").await;
    h.engine.end_session(ended.session_id).await.unwrap();
    assert!(matches!(
        h.engine
            .touch_session(&ended, later(Duration::from_secs(60)))
            .await,
        Err(EngineError::SessionLost(_))
    ));
}

pub(crate) async fn poison_ticket_hits_the_worker_loss_cap(factory: Factory) {
    let h = harness_with(
        factory,
        EngineConfig {
            max_worker_losses: 2,
            ..config()
        },
    )
    .await;
    let mut new = new_ticket("q");
    new.max_attempts = 10;
    let id = h.engine.submit(new).await.unwrap().ticket.id;
    for _ in 0..2 {
        let s = session(&h.engine, "crashy").await;
        claim_one(&h.engine, "q", &s).await;
        h.engine.end_session(s.session_id).await.unwrap();
    }
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(t.state, TicketState::Failed);
    assert!(t.error.unwrap().message.contains("poison"));
}

pub(crate) async fn undelivered_release_is_not_an_attempt(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    h.engine
        .release(id, c.lease.lease_id, ReleaseReason::Undelivered)
        .await
        .unwrap();
    let t = h.engine.get(id).await.unwrap();
    assert_eq!(
        (t.state, t.attempt, t.worker_losses),
        (TicketState::Pending, 0, 0)
    );
    assert!(t.attempts.is_empty(), "no attempt ran");
}
