//! Conformance cases of submitting and reading tickets: ids, idempotency
//! keys, dispatch order, the per-queue limit and queue positions.

use super::*;

pub(crate) async fn submit_then_get(factory: Factory) {
    let h = harness(factory).await;
    let submitted = h.engine.submit(new_ticket("q")).await.unwrap();
    assert!(submitted.created);
    let t = h.engine.get(submitted.ticket.id).await.unwrap();
    assert_eq!(t.state, TicketState::Pending);
    assert_eq!(t.seq, 1);
    assert_eq!(t.attempt, 0);
    assert_eq!(*t.payload, body("request"));
    assert!(matches!(
        h.engine.get(TicketId::new()).await,
        Err(EngineError::NotFound(_))
    ));
    let ready = h
        .recorder
        .until("the ready queue", |r| {
            let ready = r.ready.lock().unwrap();
            (!ready.is_empty()).then(|| ready.clone())
        })
        .await;
    // Announced at least once (a replicated store may also echo it).
    assert!(ready.iter().all(|q| *q == queue("q")), "{ready:?}");
}

/// The submitter picks the id (to watch the ticket before it exists); an id
/// already stored must not replace that ticket.
pub(crate) async fn a_taken_ticket_id_is_refused(factory: Factory) {
    let h = harness(factory).await;
    let new = new_ticket("q");
    let id = new.id;
    let first = h.engine.submit(new.clone()).await.unwrap();
    assert_eq!(first.ticket.id, id);
    let mut again = new;
    again.payload = body("another request");
    let error = h.engine.submit(again).await.unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert!(error.to_string().contains(&id.to_string()), "{error}");
    let kept = h.engine.get(id).await.unwrap();
    assert_eq!(*kept.payload, body("request"));
    assert_eq!(kept.seq, 1);
}

pub(crate) async fn idempotency_key_returns_the_original(factory: Factory) {
    let h = harness(factory).await;
    let mut new = new_ticket("q");
    new.idempotency_key = Some("order-1".into());
    let first = h.engine.submit(new.clone()).await.unwrap();
    let second = h.engine.submit(new.clone()).await.unwrap();
    assert!(first.created && !second.created);
    assert_eq!(first.ticket.id, second.ticket.id);
    new.queue = queue("other");
    assert!(matches!(
        h.engine.submit(new).await,
        Err(EngineError::IdempotencyConflict { .. })
    ));
}

pub(crate) async fn priority_then_fifo(factory: Factory) {
    let h = harness(factory).await;
    let mut ids = Vec::new();
    for priority in [0, 5, 0, 5, -1] {
        let mut new = new_ticket("q");
        new.priority = priority;
        ids.push(h.engine.submit(new).await.unwrap().ticket.id);
    }
    let s = session(&h.engine, "w").await;
    let order: Vec<TicketId> = h
        .engine
        .claim(&queue("q"), &vec![s; 5])
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.ticket.id)
        .collect();
    assert_eq!(order, vec![ids[1], ids[3], ids[0], ids[2], ids[4]]);
}

pub(crate) async fn queue_limit_refuses_submits(factory: Factory) {
    let h = harness_with(
        factory,
        EngineConfig {
            max_pending_per_queue: 2,
            ..config()
        },
    )
    .await;
    h.engine.submit(new_ticket("q")).await.unwrap();
    h.engine.submit(new_ticket("q")).await.unwrap();
    assert!(matches!(
        h.engine.submit(new_ticket("q")).await,
        Err(EngineError::QueueFull { limit: 2, .. })
    ));
    h.engine.submit(new_ticket("other")).await.unwrap();
    let s = session(&h.engine, "w").await;
    claim_one(&h.engine, "q", &s).await;
    h.engine.submit(new_ticket("q")).await.unwrap();
}

pub(crate) async fn tickets_ahead_counts_the_queue(factory: Factory) {
    let h = harness(factory).await;
    let mut tickets = Vec::new();
    for ahead in 0..3 {
        let submitted = h.engine.submit(new_ticket("q")).await.unwrap();
        // What the submit reports, if anything, is what a read would say.
        assert!(
            submitted
                .tickets_ahead
                .is_none_or(|reported| reported == ahead),
            "{:?} reported for the ticket with {ahead} ahead",
            submitted.tickets_ahead
        );
        tickets.push(submitted.ticket);
    }
    assert_eq!(h.engine.tickets_ahead(&tickets[0]).await.unwrap(), 0);
    assert_eq!(h.engine.tickets_ahead(&tickets[2]).await.unwrap(), 2);
    // Asked for a page at once: the same answers, in order; a ticket that is
    // not PENDING has none ahead.
    let s = session(&h.engine, "w").await;
    let running = claim_one(&h.engine, "q", &s).await;
    let refreshed_2 = h.engine.get(tickets[2].id).await.unwrap();
    let refreshed_1 = h.engine.get(tickets[1].id).await.unwrap();
    assert_eq!(
        h.engine
            .tickets_ahead_of(&[&refreshed_2, &*running.ticket, &refreshed_1])
            .await
            .unwrap(),
        vec![1, 0, 0]
    );
    assert!(h.engine.tickets_ahead_of(&[]).await.unwrap().is_empty());
}
