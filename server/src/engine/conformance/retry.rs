//! Conformance cases of an operator's retry and delete of finished tickets:
//! a FAILED, CANCELLED or EXPIRED ticket runs again under its own id with
//! its body kept since it ended, its seq continuing; what is refused; the
//! queue's counts through both; and a delete's tombstone.

use super::*;

/// A failure no attempt survives.
fn fatal() -> Outcome {
    Outcome::Failure(TicketError {
        code: 3,
        message: "bad input".into(),
        retryable: false,
    })
}

/// Claims the next ticket of `q` and fails it for good; the FAILED ticket.
async fn claim_and_fail(h: &Harness, q: &str, s: &SessionInfo) -> (Claimed, Ticket) {
    let c = claim_one(&h.engine, q, s).await;
    let Completion::Recorded(failed) = h
        .engine
        .complete(c.ticket.id, c.lease.lease_id, fatal())
        .await
        .unwrap()
    else {
        panic!("a first result is recorded");
    };
    assert_eq!(failed.state, TicketState::Failed);
    (c, failed)
}

/// Counts of queue `q`, which must exist.
async fn counts_of(engine: &Arc<dyn Engine>, q: &str) -> StateCounts {
    engine
        .queue_info(&queue(q))
        .await
        .unwrap()
        .expect("the queue exists")
        .counts
}

pub(crate) async fn a_failed_ticket_runs_again_under_its_id(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let (first, failed) = claim_and_fail(&h, "q", &s).await;
    assert_eq!(
        *h.engine.get(id).await.unwrap().payload,
        body("request"),
        "a failed ticket keeps its body"
    );

    h.recorder.ready.lock().unwrap().clear();
    let retried = h.engine.retry(id).await.unwrap();
    assert_eq!((retried.id, retried.state), (id, TicketState::Pending));
    assert_eq!(retried.seq, failed.seq + 1, "its events continue");
    assert_eq!((retried.attempt, retried.worker_losses), (0, 0));
    assert!(retried.result.is_none() && retried.finished_at.is_none());
    assert_eq!(
        retried.error.as_ref().map(|e| e.message.as_str()),
        Some("bad input"),
        "the last error stays for context"
    );
    assert_eq!(h.engine.get(id).await.unwrap().state, TicketState::Pending);
    // Watchers and metrics hear of it like of any transition.
    h.recorder
        .until("the retry's event", |r| {
            r.changes
                .lock()
                .unwrap()
                .iter()
                .any(|c| c.ticket.id == id && c.ticket.seq == retried.seq)
                .then_some(())
        })
        .await;
    assert!(h.recorder.transitions.lock().unwrap().contains(&(
        id,
        Some(TicketState::Failed),
        TicketState::Pending
    )));
    h.recorder
        .until("the queue announced ready", |r| {
            r.ready.lock().unwrap().contains(&queue("q")).then_some(())
        })
        .await;

    // The old run's lease stays fenced off.
    let stale = h
        .engine
        .complete(id, first.lease.lease_id, Outcome::Success(body("late")))
        .await;
    assert!(
        matches!(stale, Err(EngineError::StaleLease { .. })),
        "{stale:?}"
    );

    // It runs again with its body and a fresh attempt budget, and succeeds.
    let again = claim_one(&h.engine, "q", &s).await;
    assert_eq!(again.ticket.id, id);
    assert_eq!(*again.ticket.payload, body("request"));
    assert_eq!(again.ticket.attempt, 1);
    h.engine
        .complete(id, again.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    let done = h.engine.get(id).await.unwrap();
    assert_eq!(done.state, TicketState::Succeeded);
    assert_eq!(done.result, Some(body("ok")));
    assert!(done.error.is_none());
    assert_eq!(
        *done.payload,
        Payload::default(),
        "a succeeded ticket drops its body"
    );
    assert!(matches!(
        h.engine.retry(id).await,
        Err(EngineError::SucceededNotRetried(_))
    ));
}

pub(crate) async fn cancelled_and_expired_tickets_are_retried(factory: Factory) {
    let h = harness(factory).await;
    let cancelled = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    h.engine.cancel(cancelled, "oops").await.unwrap();
    assert_eq!(
        *h.engine.get(cancelled).await.unwrap().payload,
        body("request"),
        "a cancelled ticket keeps its body"
    );
    let retried = h.engine.retry(cancelled).await.unwrap();
    assert_eq!(retried.state, TicketState::Pending);

    let mut timed = new_ticket("q");
    timed.timeout = Some(Duration::from_secs(30));
    let expired = h.engine.submit(timed).await.unwrap().ticket.id;
    h.engine
        .run_timers(later(Duration::from_secs(31)))
        .await
        .unwrap();
    let before = h.engine.get(expired).await.unwrap();
    assert_eq!(before.state, TicketState::Expired);
    assert_eq!(*before.payload, body("request"), "expired keeps its body");
    // The timeout is a budget per run: the retry gets it anew, from now.
    let retried_at = SystemTime::now();
    let retried = h.engine.retry(expired).await.unwrap();
    assert_eq!(retried.state, TicketState::Pending);
    let deadline = retried.deadline.expect("a new deadline");
    assert!(
        deadline + Duration::from_millis(1) >= retried_at + Duration::from_secs(30),
        "{deadline:?} is not 30 s after the retry"
    );
    // Its deadline timer is armed again: past it, it expires again.
    h.engine
        .run_timers(later(Duration::from_secs(31)))
        .await
        .unwrap();
    let again = h.engine.get(expired).await.unwrap();
    assert_eq!(again.state, TicketState::Expired);
    assert!(again.seq > retried.seq);
    let message = again.error.unwrap().message;
    assert!(message.contains("timeout of 30s"), "{message}");
}

pub(crate) async fn only_tickets_that_ended_without_success_are_retried(factory: Factory) {
    let h = harness(factory).await;
    let pending = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    match h.engine.retry(pending).await {
        Err(EngineError::NotFinished { id, state, .. }) => {
            assert_eq!((id, state), (pending, TicketState::Pending));
        }
        other => panic!("{other:?}"),
    }
    let s = session(&h.engine, "w").await;
    let running = claim_one(&h.engine, "q", &s).await;
    let refused = h.engine.retry(running.ticket.id).await.unwrap_err();
    assert!(
        matches!(
            refused,
            EngineError::NotFinished {
                state: TicketState::Running,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("not finished"), "{refused}");
    h.engine
        .complete(
            running.ticket.id,
            running.lease.lease_id,
            Outcome::Success(body("ok")),
        )
        .await
        .unwrap();
    let refused = h.engine.retry(running.ticket.id).await.unwrap_err();
    assert!(
        matches!(refused, EngineError::SucceededNotRetried(_)),
        "{refused}"
    );
    assert!(refused.to_string().contains("submit"), "{refused}");
    assert!(matches!(
        h.engine.retry(TicketId::new()).await,
        Err(EngineError::NotFound(_))
    ));
    // Nothing changed: the succeeded ticket is as it was.
    let t = h.engine.get(running.ticket.id).await.unwrap();
    assert_eq!(t.state, TicketState::Succeeded);
    assert_eq!(t.result, Some(body("ok")));
}

pub(crate) async fn a_retry_starts_the_output_afresh(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    for text in ["a", "b"] {
        h.engine
            .progress(ProgressReport {
                ticket_id: id,
                lease_id: c.lease.lease_id,
                progress: Some(crate::domain::Progress {
                    percent: 50,
                    message: String::new(),
                }),
                output: Some(body(text)),
            })
            .await
            .unwrap();
    }
    h.engine
        .complete(id, c.lease.lease_id, fatal())
        .await
        .unwrap();
    assert_eq!(h.engine.get_with_chunks(id, 0).await.unwrap().1.len(), 2);
    let retried = h.engine.retry(id).await.unwrap();
    assert!(retried.progress.is_none());
    assert_eq!(retried.output_bytes, 0);
    let (_, chunks) = h.engine.get_with_chunks(id, 0).await.unwrap();
    assert!(
        chunks.is_empty(),
        "the old run's output is gone: {chunks:?}"
    );
    // The new run's output is all there is once it finishes.
    let c = claim_one(&h.engine, "q", &s).await;
    h.engine
        .progress(ProgressReport {
            ticket_id: id,
            lease_id: c.lease.lease_id,
            progress: None,
            output: Some(body("c")),
        })
        .await
        .unwrap();
    h.engine
        .complete(id, c.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    let (done, chunks) = h.engine.get_with_chunks(id, 0).await.unwrap();
    let outputs: Vec<Payload> = chunks.into_iter().map(|c| c.output).collect();
    assert_eq!(outputs, [body("c")]);
    assert!(done.seq > retried.seq);
}

pub(crate) async fn queue_counts_follow_retry_and_delete(factory: Factory) {
    let h = harness(factory).await;
    let s = session(&h.engine, "w").await;
    let first = h.engine.submit(new_ticket("q")).await.unwrap().ticket;
    let second = h.engine.submit(new_ticket("q")).await.unwrap().ticket;
    claim_and_fail(&h, "q", &s).await;
    claim_and_fail(&h, "q", &s).await;
    let counts = counts_of(&h.engine, "q").await;
    assert_eq!((counts.pending, counts.failed), (0, 2));
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert!(info.oldest_pending_at.is_none());

    h.engine.retry(first.id).await.unwrap();
    let info = h.engine.queue_info(&queue("q")).await.unwrap().unwrap();
    assert_eq!(
        info.counts,
        StateCounts {
            pending: 1,
            failed: 1,
            ..StateCounts::default()
        }
    );
    let oldest = info.oldest_pending_at.expect("a pending ticket");
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    assert_eq!(ms(oldest), ms(first.created_at), "by creation time");

    let deleted = h.engine.delete(second.id).await.unwrap();
    assert!(deleted <= SystemTime::now());
    assert_eq!(
        counts_of(&h.engine, "q").await,
        StateCounts {
            pending: 1,
            ..StateCounts::default()
        }
    );
    // The retried one runs and succeeds; deleting it empties the queue.
    let c = claim_one(&h.engine, "q", &s).await;
    assert_eq!(counts_of(&h.engine, "q").await.running, 1);
    h.engine
        .complete(c.ticket.id, c.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    h.engine.delete(first.id).await.unwrap();
    assert_eq!(counts_of(&h.engine, "q").await, StateCounts::default());
}

pub(crate) async fn a_deleted_ticket_leaves_a_tombstone(factory: Factory) {
    let h = harness(factory).await;
    let mut keyed = new_ticket("q");
    keyed.idempotency_key = Some("k".into());
    let id = h.engine.submit(keyed.clone()).await.unwrap().ticket.id;
    // Unfinished: refused, and nothing changes.
    match h.engine.delete(id).await {
        Err(error @ EngineError::NotFinished { .. }) => {
            assert!(error.to_string().contains("cancel it first"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.engine.get(id).await.unwrap().state, TicketState::Pending);
    let s = session(&h.engine, "w").await;
    let running = claim_one(&h.engine, "q", &s).await;
    assert!(matches!(
        h.engine.delete(id).await,
        Err(EngineError::NotFinished {
            state: TicketState::Running,
            ..
        })
    ));
    h.engine
        .complete(id, running.lease.lease_id, fatal())
        .await
        .unwrap();

    let deleted_at = h.engine.delete(id).await.unwrap();
    for error in [
        h.engine.get(id).await.unwrap_err(),
        h.engine.get_with_chunks(id, 0).await.unwrap_err(),
        h.engine.retry(id).await.unwrap_err(),
        h.engine.delete(id).await.unwrap_err(),
    ] {
        match &error {
            EngineError::ResultExpired {
                id: gone,
                deleted_at: at,
            } => {
                assert_eq!(*gone, id);
                assert_eq!(*at, crate::time::rfc3339(deleted_at), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        h.engine.delete(TicketId::new()).await,
        Err(EngineError::NotFound(_))
    ));
    // Its idempotency key is free again, as after retention.
    keyed.id = TicketId::new();
    let again = h.engine.submit(keyed).await.unwrap();
    assert!(again.created, "a deleted ticket's key is free again");
    // A later retention pass finds nothing left to do.
    h.engine
        .run_timers(later(Duration::from_secs(2 * 24 * 3600)))
        .await
        .unwrap();
    assert!(h.engine.get(again.ticket.id).await.is_ok());
}
