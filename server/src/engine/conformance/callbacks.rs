//! Conformance cases of the callback outbox: a callback comes due with its
//! ticket's end (in the same write), one claim holds it from the next, an
//! attempt's outcome is recorded once and only for its own end, and a
//! retry comes due at its time.

use super::*;
use crate::domain::callback::{CallbackOutcome, CallbackState};

pub(crate) async fn a_callback_is_due_at_the_end_claimed_once_and_recorded(factory: Factory) {
    let h = harness(factory).await;
    let hold = Duration::from_secs(30);
    let mut new = new_ticket("q");
    new.callback = Some("https://hooks.example.com/done".into());
    let id = h.engine.submit(new).await.unwrap().ticket.id;
    let waiting = h.engine.get(id).await.unwrap();
    let callback = waiting.callback.as_deref().expect("kept with the ticket");
    assert_eq!(
        (&*callback.url, callback.state),
        ("https://hooks.example.com/done", CallbackState::Waiting)
    );
    let claim = |at: SystemTime| {
        let engine = h.engine.clone();
        async move { engine.claim_callbacks(at, 10, hold).await.unwrap() }
    };
    assert!(claim(SystemTime::now()).await.is_empty(), "not ended yet");

    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    h.engine
        .complete(id, c.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    let ended = h.engine.get(id).await.unwrap();
    let callback = ended.callback.as_deref().unwrap();
    assert_eq!(callback.state, CallbackState::Pending);
    assert_eq!(callback.seq, ended.seq, "it delivers the terminal event");

    // Claimed once; held from the next claim.
    let now = SystemTime::now() + Duration::from_millis(5);
    let claimed = claim(now).await;
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [id]);
    assert_eq!(claimed[0].state, TicketState::Succeeded);
    assert!(claim(now).await.is_empty(), "held");

    // A failed attempt: due again at its retry time, not before.
    let retry_at = now + Duration::from_secs(2);
    let failed = CallbackOutcome::Retry {
        at: retry_at,
        error: "HTTP 503".into(),
    };
    assert!(
        h.engine
            .record_callback(id, ended.seq, failed)
            .await
            .unwrap()
    );
    assert!(
        !h.engine
            .record_callback(id, ended.seq - 1, CallbackOutcome::Delivered)
            .await
            .unwrap(),
        "another end's"
    );
    let retrying = h.engine.get(id).await.unwrap();
    let callback = retrying.callback.as_deref().unwrap();
    assert_eq!(
        (callback.attempts, callback.last_error.as_deref()),
        (1, Some("HTTP 503"))
    );
    assert!(
        claim(now + Duration::from_secs(1)).await.is_empty(),
        "not due yet"
    );
    assert_eq!(claim(retry_at + Duration::from_millis(5)).await.len(), 1);

    // Delivered: settled, never claimed again (not even once its hold lapses).
    assert!(
        h.engine
            .record_callback(id, ended.seq, CallbackOutcome::Delivered)
            .await
            .unwrap()
    );
    assert!(
        !h.engine
            .record_callback(id, ended.seq, CallbackOutcome::Delivered)
            .await
            .unwrap(),
        "recorded once"
    );
    let delivered = h.engine.get(id).await.unwrap();
    let callback = delivered.callback.as_deref().unwrap();
    assert_eq!(
        (callback.state, callback.attempts),
        (CallbackState::Delivered, 2)
    );
    assert!(callback.delivered_at.is_some());
    assert_eq!(delivered.seq, ended.seq, "not an event");
    assert!(claim(retry_at + hold * 3).await.is_empty());

    // A ticket without a callback is never claimed.
    let plain = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    h.engine.cancel(plain, "").await.unwrap();
    assert!(claim(SystemTime::now() + hold * 10).await.is_empty());
}

pub(crate) async fn a_given_up_callback_is_listed_and_retried(factory: Factory) {
    let h = harness(factory).await;
    let claim = |at: SystemTime| {
        let engine = h.engine.clone();
        async move {
            engine
                .claim_callbacks(at, 10, Duration::from_secs(30))
                .await
                .unwrap()
        }
    };
    // Given up: listed by its callback state, and due again (the same end)
    // after an operator's retry; only a given-up one is retried.
    let mut new = new_ticket("q");
    new.callback = Some("grpc://10.0.0.1:9".into());
    let gone = h.engine.submit(new).await.unwrap().ticket.id;
    let end = h.engine.cancel(gone, "").await.unwrap().seq;
    let give_up = CallbackOutcome::GiveUp {
        error: "HTTP 410".into(),
    };
    assert!(h.engine.record_callback(gone, end, give_up).await.unwrap());
    let listed = h
        .engine
        .list(ListFilter {
            callback_states: vec![CallbackState::GaveUp],
            page_size: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap()
        .tickets;
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), [gone]);
    let plain = h.engine.submit(new_ticket("q")).await.unwrap().ticket.id;
    assert!(matches!(
        h.engine.retry_callback(plain).await,
        Err(EngineError::CallbackNotRetried { .. })
    ));
    let retried = h.engine.retry_callback(gone).await.unwrap();
    assert_eq!(
        retried.callback.as_deref().unwrap().state,
        CallbackState::Pending
    );
    let claimed = claim(SystemTime::now() + Duration::from_millis(5)).await;
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [gone]);
    assert_eq!(
        claimed[0].callback.as_deref().unwrap().seq,
        end,
        "the same end"
    );
    let delivered = CallbackOutcome::Delivered;
    assert!(
        h.engine
            .record_callback(gone, end, delivered)
            .await
            .unwrap()
    );
    assert!(
        matches!(
            h.engine.retry_callback(gone).await,
            Err(EngineError::CallbackNotRetried { .. })
        ),
        "delivered: not retried"
    );
}

pub(crate) async fn a_ticket_is_kept_past_its_retention_until_its_callback_settles(
    factory: Factory,
) {
    let h = harness_with(
        factory,
        EngineConfig {
            result_retention: Duration::from_secs(60),
            ..config()
        },
    )
    .await;
    let mut new = new_ticket("q");
    new.callback = Some("https://hooks.example.com/done".into());
    let id = h.engine.submit(new).await.unwrap().ticket.id;
    let end = h.engine.cancel(id, "").await.unwrap().seq;
    // The receiver is down: the next attempt is in ten minutes.
    let retry = CallbackOutcome::Retry {
        at: later(Duration::from_secs(600)),
        error: "HTTP 503".into(),
    };
    assert!(h.engine.record_callback(id, end, retry).await.unwrap());
    h.engine
        .run_timers(later(Duration::from_secs(61)))
        .await
        .unwrap();
    let kept = h.engine.get(id).await.expect("kept for its callback");
    assert_eq!(kept.state, TicketState::Cancelled);
    // Delivered: the retention applies again, and the ticket goes.
    assert!(
        h.engine
            .record_callback(id, end, CallbackOutcome::Delivered)
            .await
            .unwrap()
    );
    h.engine
        .run_timers(later(Duration::from_secs(700)))
        .await
        .unwrap();
    assert!(matches!(
        h.engine.get(id).await,
        Err(EngineError::ResultExpired { .. })
    ));
}
