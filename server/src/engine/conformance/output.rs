//! Conformance cases of a running ticket's progress and output chunks: their
//! order, lease fencing and byte budgets.

use super::*;

pub(crate) async fn progress_and_chunks_are_ordered_and_fenced(factory: Factory) {
    let h = harness(factory).await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    for (i, text) in ["a", "b", "c"].into_iter().enumerate() {
        h.engine
            .progress(ProgressReport {
                ticket_id: id,
                lease_id: c.lease.lease_id,
                progress: Some(crate::domain::Progress {
                    percent: (i as u32 + 1) * 30,
                    message: String::new(),
                }),
                output: Some(body(text)),
            })
            .await
            .unwrap();
    }
    let forged = h
        .engine
        .progress(ProgressReport {
            ticket_id: id,
            lease_id: LeaseId::new(),
            progress: None,
            output: Some(body("x")),
        })
        .await;
    assert!(matches!(forged, Err(EngineError::StaleLease { .. })));
    let (t, all) = h.engine.get_with_chunks(id, 0).await.unwrap();
    assert_eq!(t.progress.unwrap().percent, 90);
    let outputs: Vec<_> = all.iter().map(|c| c.output.clone()).collect();
    assert_eq!(outputs, vec![body("a"), body("b"), body("c")]);
    let (_, tail) = h.engine.get_with_chunks(id, all[0].seq).await.unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0].seq, all[1].seq);
    // Every change of the ticket was reported once, in seq order, +1 each.
    let last = t.seq;
    let seqs: Vec<u64> = h
        .recorder
        .until("every change of the ticket", |r| {
            let seqs: Vec<u64> = r
                .changes
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.ticket.id == id)
                .map(|c| c.ticket.seq)
                .collect();
            seqs.contains(&last).then_some(seqs)
        })
        .await;
    assert_eq!(seqs, (2..=t.seq).collect::<Vec<_>>());
}

pub(crate) async fn output_past_the_budget_is_refused(factory: Factory) {
    // body("0123456789") encodes to 12 bytes: two fit in 30, a third does not.
    let h = harness_with(
        factory,
        EngineConfig {
            max_output_bytes_per_ticket: 30,
            ..config()
        },
    )
    .await;
    let id = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    let chunk = || ProgressReport {
        ticket_id: id,
        lease_id: c.lease.lease_id,
        progress: None,
        output: Some(body("0123456789")),
    };
    h.engine.progress(chunk()).await.unwrap();
    h.engine.progress(chunk()).await.unwrap();
    let refused = h.engine.progress(chunk()).await.unwrap_err();
    assert!(
        matches!(&refused, EngineError::LimitExceeded(m) if m.contains("24 bytes") && m.contains("30-byte budget")),
        "{refused}"
    );
    let (t, chunks) = h.engine.get_with_chunks(id, 0).await.unwrap();
    assert_eq!(chunks.len(), 2, "the refused chunk was not stored");
    assert_eq!(t.output_bytes, 24);
    // The lease is intact: the result is still recorded.
    h.engine
        .complete(id, c.lease.lease_id, Outcome::Success(body("done")))
        .await
        .unwrap();
}
