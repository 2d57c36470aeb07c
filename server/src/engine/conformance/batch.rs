//! Conformance cases of batch submits: every item is stored or refused on
//! its own, exactly as a submit of it would be, and the batch keeps its
//! order in the answers and in its queue.

use super::*;

fn keyed(q: &str, key: &str) -> NewTicket {
    NewTicket {
        idempotency_key: Some(key.into()),
        ..new_ticket(q)
    }
}

/// A full queue and a key already used on another queue refuse their
/// items alone; a key repeated within the batch yields one ticket; the
/// others are stored and answered in order.
pub(crate) async fn a_batch_stores_each_item_or_refuses_it_alone(factory: Factory) {
    let h = harness_with(
        factory,
        EngineConfig {
            max_pending_per_queue: 3,
            ..config()
        },
    )
    .await;
    let taken = h.engine.submit(keyed("other", "taken")).await.unwrap();
    let batch = vec![
        new_ticket("q"),
        keyed("q", "dup"),
        keyed("q", "taken"),
        keyed("q", "dup"),
        new_ticket("q"),
        new_ticket("q"),
        new_ticket("other"),
    ];
    let ids: Vec<TicketId> = batch.iter().map(|new| new.id).collect();
    let results = h.engine.submit_batch(batch).await;
    assert_eq!(results.len(), 7);
    let stored = |at: usize| {
        results[at]
            .as_ref()
            .unwrap_or_else(|e| panic!("item {at}: {e}"))
    };
    for at in [0, 1, 4, 6] {
        assert!(stored(at).created, "item {at}");
        assert_eq!(stored(at).ticket.id, ids[at], "item {at} is its own ticket");
        assert_eq!(
            h.engine.get(ids[at]).await.unwrap().state,
            TicketState::Pending
        );
    }
    assert!(matches!(
        &results[2],
        Err(EngineError::IdempotencyConflict { existing, .. }) if *existing == taken.ticket.id
    ));
    assert!(
        !stored(3).created,
        "the repeated key names the first item's ticket"
    );
    assert_eq!(stored(3).ticket.id, ids[1]);
    assert!(matches!(
        &results[5],
        Err(EngineError::QueueFull { limit: 3, .. })
    ));
    for refused in [ids[2], ids[3], ids[5]] {
        assert!(matches!(
            h.engine.get(refused).await,
            Err(EngineError::NotFound(_))
        ));
    }
    let pending = |q: &'static str| {
        let engine = h.engine.clone();
        async move {
            let info = engine.queue_info(&queue(q)).await.unwrap().unwrap();
            info.counts.pending
        }
    };
    assert_eq!(pending("q").await, 3);
    assert_eq!(pending("other").await, 2);
    // A batch of only repeats stores nothing new and answers each.
    let again = h
        .engine
        .submit_batch(vec![keyed("q", "dup"), keyed("other", "taken")])
        .await;
    let again: Vec<(TicketId, bool)> = again
        .into_iter()
        .map(|r| r.map(|s| (s.ticket.id, s.created)).unwrap())
        .collect();
    assert_eq!(again, vec![(ids[1], false), (taken.ticket.id, false)]);
}

/// A batch's tickets join their queue in the batch's order (keyed ones
/// included), behind what was there, and each item of several queues
/// lands in its own.
pub(crate) async fn a_batch_keeps_its_order_in_the_queue(factory: Factory) {
    let h = harness(factory).await;
    let first = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let batch = vec![
        new_ticket("q"),
        keyed("q", "a"),
        new_ticket("elsewhere"),
        new_ticket("q"),
        keyed("q", "b"),
        new_ticket("q"),
    ];
    let ids: Vec<TicketId> = batch.iter().map(|new| new.id).collect();
    let results = h.engine.submit_batch(batch).await;
    let answered: Vec<TicketId> = results
        .iter()
        .map(|r| r.as_ref().unwrap().ticket.id)
        .collect();
    assert_eq!(answered, ids, "answered in order");
    let s = session(&h.engine, "w").await;
    let order: Vec<TicketId> = h
        .engine
        .claim(&queue("q"), &vec![s; 6])
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.ticket.id)
        .collect();
    assert_eq!(order, vec![first, ids[0], ids[1], ids[3], ids[4], ids[5]]);
    let elsewhere = h.engine.get(ids[2]).await.unwrap();
    assert_eq!(elsewhere.queue, queue("elsewhere"));
    // Every new ticket was reported created, once.
    let created = h
        .recorder
        .transitions
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, before, _)| before.is_none())
        .count();
    assert_eq!(created, 7);
}
