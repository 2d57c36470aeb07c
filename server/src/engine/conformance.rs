//! One conformance suite for every engine: the same cases, generic over a
//! constructor, instantiated per engine by `engine_conformance!`.
//!
//! Timers are driven by calling `run_timers` with a chosen `now`, so no case
//! sleeps.
//!
//! This file holds the harness (the recording listener, helpers) and the
//! macro; the cases live by concern in `conformance/` (submit, batch, lease,
//! lifetime, output, list, events, queues, retry, schedule, callbacks) and are re-exported here,
//! where the macro names them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::*;
use crate::domain::TicketError;
use crate::domain::ticket::Payload;

mod batch;
mod callbacks;
mod events;
mod lease;
mod lifetime;
mod list;
mod output;
mod queues;
mod retry;
mod schedule;
mod submit;

pub(crate) use batch::*;
pub(crate) use callbacks::*;
pub(crate) use events::*;
pub(crate) use lease::*;
pub(crate) use lifetime::*;
pub(crate) use list::*;
pub(crate) use output::*;
pub(crate) use queues::*;
pub(crate) use retry::*;
pub(crate) use schedule::*;
pub(crate) use submit::*;

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

impl SessionInfo {
    /// A new session of worker "w" serving `queue`, for tests.
    pub(crate) fn for_test(queue: &QueueName) -> Self {
        Self {
            session_id: SessionId::new(),
            worker_name: "w".into(),
            queues: Arc::from([queue.clone()]),
        }
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
        not_before: None,
        callback: None,
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
                a_batch_stores_each_item_or_refuses_it_alone,
                a_batch_keeps_its_order_in_the_queue,
                list_filters_and_pages,
                list_metadata_time_and_newest_first,
                tenants_scope_idempotency_and_lists,
                idempotency_scopes_do_not_collide,
                tickets_ahead_counts_the_queue,
                transitions_and_queue_depths_are_reported,
                queue_counts_follow_every_transition,
                a_paused_queue_dispatches_nothing_until_resumed,
                queue_stats_count_results_and_latencies,
                a_sessions_tickets_and_worker_record_are_listed,
                limits_bound_what_a_claim_takes,
                queue_targets_are_stored_listed_replaced_and_cleared,
                a_failed_ticket_runs_again_under_its_id,
                cancelled_and_expired_tickets_are_retried,
                only_tickets_that_ended_without_success_are_retried,
                a_retry_starts_the_output_afresh,
                queue_counts_follow_retry_and_delete,
                a_deleted_ticket_leaves_a_tombstone,
                a_delayed_ticket_runs_once_when_due,
                a_scheduled_ticket_is_cancelled_listed_and_a_past_time_runs_now,
                schedules_are_stored_fenced_listed_and_due,
                a_callback_is_due_at_the_end_claimed_once_and_recorded,
                a_given_up_callback_is_listed_and_retried,
                a_ticket_is_kept_past_its_retention_until_its_callback_settles,
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
