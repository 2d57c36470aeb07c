//! One conformance suite for every engine: the same cases, generic over a
//! constructor, instantiated per engine by `engine_conformance!`.
//!
//! Timers are driven by calling `run_timers` with a chosen `now`, so no case
//! sleeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::*;
use crate::domain::TicketError;
use crate::domain::ticket::Payload;

/// Records everything an engine reports.
#[derive(Default)]
pub(crate) struct Recorder {
    changes: Mutex<Vec<TicketChange>>,
    ready: Mutex<Vec<QueueName>>,
    revoked: Mutex<Vec<Revocation>>,
    /// (ticket, state before, state after) of every committed transition.
    transitions: Mutex<Vec<(TicketId, Option<TicketState>, TicketState)>>,
    reported: tokio::sync::Notify,
}

impl EngineListener for Recorder {
    fn watching(&self, _: TicketId) -> bool {
        true
    }
    fn ticket_changed(&self, change: TicketChange) {
        self.changes.lock().unwrap().push(change);
        self.reported.notify_waiters();
    }
    fn queue_ready(&self, queue: &QueueName) {
        self.ready.lock().unwrap().push(queue.clone());
        self.reported.notify_waiters();
    }
    fn lease_revoked(&self, revocation: Revocation) {
        self.revoked.lock().unwrap().push(revocation);
        self.reported.notify_waiters();
    }
    fn transitioned(&self, before: Before, after: &Ticket, _now: SystemTime) {
        self.transitions
            .lock()
            .unwrap()
            .push((after.id, before.state, after.state));
    }
}

impl Recorder {
    /// Waits until `check` finds what it looks for: engines on a shared
    /// store report through their event feed, a moment after the call.
    async fn until<T>(&self, what: &str, check: impl Fn(&Self) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.reported.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = check(self) {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("the engine never reported {what}");
            }
        }
    }

    async fn revocations(&self, count: usize) -> Vec<Revocation> {
        self.until("the revocations", |r| {
            let revoked = r.revoked.lock().unwrap();
            (revoked.len() >= count).then(|| revoked.clone())
        })
        .await
    }
}

/// Builds an engine, plus whatever must outlive it (a temp directory, a
/// Redis server).
pub(crate) type Factory =
    fn(
        EngineConfig,
    )
        -> futures::future::BoxFuture<'static, (Arc<dyn Engine>, Box<dyn std::any::Any + Send>)>;

pub(crate) struct Harness {
    pub engine: Arc<dyn Engine>,
    pub recorder: Arc<Recorder>,
    _guard: Box<dyn std::any::Any + Send>,
}

fn config() -> EngineConfig {
    EngineConfig {
        backoff: crate::domain::backoff::Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        },
        ..EngineConfig::default()
    }
}

async fn harness_with(factory: Factory, config: EngineConfig) -> Harness {
    let (engine, guard) = factory(config).await;
    let recorder = Arc::new(Recorder::default());
    engine.set_listener(recorder.clone());
    Harness {
        engine,
        recorder,
        _guard: guard,
    }
}

async fn harness(factory: Factory) -> Harness {
    harness_with(factory, config()).await
}

fn queue(name: &str) -> QueueName {
    QueueName::parse(name).unwrap()
}

fn body(text: &'static str) -> Payload {
    Payload {
        kind: Some(asyncgate_proto::v1::payload::Kind::Binary(
            Bytes::from_static(text.as_bytes()),
        )),
        content_type: String::new(),
    }
}

fn new_ticket(q: &str) -> NewTicket {
    NewTicket {
        id: TicketId::new(),
        queue: queue(q),
        payload: body("request"),
        priority: 0,
        idempotency_key: None,
        metadata: HashMap::new(),
        timeout: None,
        attempt_timeout: None,
        max_attempts: 3,
        tenant: None,
    }
}

async fn session(engine: &Arc<dyn Engine>, name: &str) -> SessionInfo {
    let info = SessionInfo {
        session_id: SessionId::new(),
        worker_name: name.into(),
        queues: Arc::from([queue("q")]),
    };
    engine
        .open_session(&info, SystemTime::now() + Duration::from_secs(60))
        .await
        .unwrap();
    info
}

async fn claim_one(engine: &Arc<dyn Engine>, q: &str, s: &SessionInfo) -> Claimed {
    let mut claimed = engine
        .claim(&queue(q), std::slice::from_ref(s))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "expected one ready ticket in {q}");
    claimed.pop().unwrap()
}

fn later(d: Duration) -> SystemTime {
    SystemTime::now() + d
}

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
    assert_eq!(h.engine.get(id).await.unwrap().result, Some(body("ok")));
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
    assert_eq!(
        h.engine.get(running).await.unwrap().state,
        TicketState::Cancelled
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
}

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

pub(crate) async fn list_filters_and_pages(factory: Factory) {
    let h = harness(factory).await;
    // An empty store lists nothing, and its timer pass has nothing to do.
    let empty = h
        .engine
        .list(ListFilter {
            queue: None,
            states: Vec::new(),
            page_size: 10,
            after: None,
            tenant: None,
        })
        .await
        .unwrap();
    assert!(empty.tickets.is_empty() && empty.next.is_none());
    h.engine.run_timers(SystemTime::now()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let q = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(h.engine.submit(new_ticket(q)).await.unwrap().ticket.id);
    }
    h.engine.cancel(ids[2], "").await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = h
            .engine
            .list(ListFilter {
                queue: Some(queue("even")),
                states: vec![TicketState::Pending],
                page_size: 2,
                after,
                tenant: None,
            })
            .await
            .unwrap();
        seen.extend(page.tickets.iter().map(|t| t.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, vec![ids[0], ids[4], ids[6]]);
    let cancelled = h
        .engine
        .list(ListFilter {
            queue: None,
            states: vec![TicketState::Cancelled],
            page_size: 10,
            after: None,
            tenant: None,
        })
        .await
        .unwrap();
    assert_eq!(cancelled.tickets.len(), 1);
    assert!(cancelled.next.is_none());
}

pub(crate) async fn tenants_scope_idempotency_and_lists(factory: Factory) {
    let h = harness(factory).await;
    let keyed = |tenant: &str| NewTicket {
        idempotency_key: Some("same-key".into()),
        tenant: Some(tenant.into()),
        ..new_ticket("q")
    };
    let a = h.engine.submit(keyed("a")).await.unwrap();
    let b = h.engine.submit(keyed("b")).await.unwrap();
    assert!(a.created && b.created, "one key, two tenants, two tickets");
    assert_ne!(a.ticket.id, b.ticket.id);
    let again = h.engine.submit(keyed("a")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.ticket.id, a.ticket.id);
    assert_eq!(
        h.engine.get(a.ticket.id).await.unwrap().tenant.as_deref(),
        Some("a")
    );
    let page = h
        .engine
        .list(ListFilter {
            queue: None,
            states: Vec::new(),
            page_size: 10,
            after: None,
            tenant: Some("b".into()),
        })
        .await
        .unwrap();
    let ids: Vec<TicketId> = page.tickets.iter().map(|t| t.id).collect();
    assert_eq!(ids, [b.ticket.id]);
}

/// An admin's key (no tenant) that spells out a tenant's scope and
/// separator stays its own key: scoping must be injective, or an admin's
/// submit could return (or be swallowed by) a tenant's ticket.
pub(crate) async fn idempotency_scopes_do_not_collide(factory: Factory) {
    let h = harness(factory).await;
    let admin = h
        .engine
        .submit(NewTicket {
            idempotency_key: Some("t1\u{1f}k".into()),
            tenant: None,
            ..new_ticket("q")
        })
        .await
        .unwrap();
    let tenant = h
        .engine
        .submit(NewTicket {
            idempotency_key: Some("k".into()),
            tenant: Some("t1".into()),
            ..new_ticket("q")
        })
        .await
        .unwrap();
    assert!(admin.created && tenant.created, "two scopes, two tickets");
    assert_ne!(admin.ticket.id, tenant.ticket.id);
    // The same shape through the new encoding's own separator.
    let colon = h
        .engine
        .submit(NewTicket {
            idempotency_key: Some("2:t1:k".into()),
            tenant: None,
            ..new_ticket("q")
        })
        .await
        .unwrap();
    assert!(colon.created, "an admin key shaped like a tenant's scope");
    assert_ne!(colon.ticket.id, tenant.ticket.id);
    assert_ne!(colon.ticket.id, admin.ticket.id);
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

pub(crate) async fn transitions_and_queue_depths_are_reported(factory: Factory) {
    let h = harness(factory).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.engine.submit(new_ticket("q")).await.unwrap().ticket.id);
    }
    let s = session(&h.engine, "w").await;
    let c = claim_one(&h.engine, "q", &s).await;
    let depth = |depths: Vec<QueueDepth>| {
        depths
            .into_iter()
            .find(|d| d.queue == queue("q"))
            .expect("the queue is counted")
    };
    let running = depth(h.engine.queue_depths().await.unwrap());
    assert_eq!(running.pending, 2);
    assert!(matches!(running.running, None | Some(1)), "{running:?}");
    h.engine
        .complete(c.ticket.id, c.lease.lease_id, Outcome::Success(body("ok")))
        .await
        .unwrap();
    let done = depth(h.engine.queue_depths().await.unwrap());
    assert_eq!(done.pending, 2);
    assert!(matches!(done.running, None | Some(0)), "{done:?}");

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

/// Instantiates every conformance case as a test for one engine.
macro_rules! engine_conformance {
    ($module:ident, $factory:expr) => {
        mod $module {
            use super::conformance;
            const FACTORY: conformance::Factory = $factory;
            crate::engine::conformance::engine_conformance!(@cases
                submit_then_get,
                a_taken_ticket_id_is_refused,
                idempotency_key_returns_the_original,
                priority_then_fifo,
                claim_is_exclusive_and_complete_is_fenced,
                lost_worker_requeues_and_old_lease_is_fenced,
                retryable_failures_back_off_then_fail,
                a_success_after_a_failed_attempt_carries_no_error,
                non_retryable_failure_fails_at_once,
                cancel_pending_and_running,
                deadline_expires_pending_and_running,
                attempt_timeout_retries,
                expired_session_loses_its_leases,
                a_lost_session_is_not_revived,
                poison_ticket_hits_the_worker_loss_cap,
                undelivered_release_is_not_an_attempt,
                progress_and_chunks_are_ordered_and_fenced,
                output_past_the_budget_is_refused,
                retention_leaves_a_tombstone,
                queue_limit_refuses_submits,
                list_filters_and_pages,
                tenants_scope_idempotency_and_lists,
                idempotency_scopes_do_not_collide,
                tickets_ahead_counts_the_queue,
                transitions_and_queue_depths_are_reported,
            );
        }
    };
    (@cases $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                conformance::$case(FACTORY).await;
            }
        )*
    };
}

pub(crate) use engine_conformance;
