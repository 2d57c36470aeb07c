//! Conformance cases of what an engine reports to its listener: each
//! committed transition once, and queue depths (as the admin API and the
//! metrics read them).

use super::*;

pub(crate) async fn transitions_and_queue_depths_are_reported(factory: Factory) {
    let depth = |queues: Vec<QueueInfo>| {
        queues
            .into_iter()
            .find(|d| d.queue == queue("q"))
            .expect("the queue is counted")
            .counts
    };
    let h = harness(factory).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.engine.submit(new_ticket("q")).await.unwrap().ticket.id);
    }
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    let running = depth(h.engine.queues().await.unwrap());
    assert_eq!((running.pending, running.running), (2, 1));
    h.engine
        .complete(c.ticket.id, c.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    let done = depth(h.engine.queues().await.unwrap());
    assert_eq!((done.pending, done.running, done.succeeded), (2, 0, 1));

    let transitions = h.recorder.transitions.lock().unwrap().clone();
    for id in &ids {
        assert!(
            transitions.contains(&(*id, None, TicketState::Pending)),
            "creation of {id} reported once committed: {transitions:?}"
        );
    }
    let leased = c.ticket.id;
    let of_leased: Vec<_> = transitions
        .iter()
        .filter(|(id, before, _)| *id == leased && before.is_some())
        .map(|(_, before, after)| (before.unwrap(), *after))
        .collect();
    assert_eq!(
        of_leased,
        [
            (TicketState::Pending, TicketState::Running),
            (TicketState::Running, TicketState::Succeeded)
        ]
    );
}
