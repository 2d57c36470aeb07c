//! Tests of `dispatch/session.rs`: a real session over a memory engine,
//! driven through the worker protocol's edge as a worker would.

use super::*;
use crate::dispatch::WeakDispatcher;
use crate::engine::{Engine, EngineConfig, EngineListener, LocalEngine, Revocation, TicketChange};
use crate::rpc::convert::{self, worker};
use asyncgate_proto::v1 as pb;
use pb::dispatch_message::Kind as Out;
use pb::worker_message::Kind as In;
use tokio_util::task::TaskTracker;

/// Routes the engine's notices to the dispatcher, as the server does.
struct Notices(WeakDispatcher);

impl EngineListener for Notices {
    fn watching(&self, _: TicketId) -> bool {
        false
    }
    fn ticket_changed(&self, _: TicketChange) {}
    fn queue_ready(&self, queue: &QueueName) {
        if let Some(dispatcher) = self.0.upgrade() {
            dispatcher.queue_ready(queue);
        }
    }
    fn lease_revoked(&self, revocation: Revocation) {
        if let Some(dispatcher) = self.0.upgrade() {
            dispatcher.revoke(revocation);
        }
    }
}

/// A session over a memory engine, and the two ends a worker holds.
struct Harness {
    engine: Arc<dyn Engine>,
    to_gateway: mpsc::UnboundedSender<pb::WorkerMessage>,
    from_gateway: mpsc::Receiver<Result<ToWorker, GatewayError>>,
}

impl Harness {
    fn start() -> Self {
        Self::with_heartbeat(Duration::from_secs(3600))
    }

    fn with_heartbeat(heartbeat_interval: Duration) -> Self {
        let engine: Arc<dyn Engine> = Arc::new(LocalEngine::in_memory(EngineConfig::default()));
        let dispatcher =
            Dispatcher::new(engine.clone(), TaskTracker::new(), CancellationToken::new());
        engine.set_listener(Arc::new(Notices(dispatcher.downgrade())));
        let (to_gateway, inbound) = mpsc::unbounded_channel();
        let (outbound, from_gateway) = mpsc::channel(64);
        let settings = SessionSettings {
            heartbeat_interval,
            lease_ttl: Duration::from_secs(3600),
        };
        let caller = crate::auth::Caller::anonymous();
        let inbound = tokio_stream::wrappers::UnboundedReceiverStream::new(inbound)
            .map(move |message| Ok(worker::from_pb(&caller, message, 1024)));
        tokio::spawn(run(
            dispatcher,
            settings,
            crate::auth::Caller::anonymous(),
            None,
            inbound,
            outbound,
            CancellationToken::new(),
            CancellationToken::new(),
        ));
        Self {
            engine,
            to_gateway,
            from_gateway,
        }
    }

    async fn submit(&self, queue: &str) -> TicketId {
        let limits = convert::SubmitLimits {
            max_payload_bytes: 1024,
            default_max_attempts: 3,
            max_attempts_limit: 10,
            callbacks: Default::default(),
        };
        let request = pb::SubmitRequest {
            queue: queue.into(),
            ..Default::default()
        };
        let new = convert::new_ticket(&crate::auth::Caller::anonymous(), request, &limits)
            .expect("a valid submit");
        self.engine.submit(new).await.expect("submitted").ticket.id
    }

    fn send(&self, kind: In) {
        self.to_gateway
            .send(pb::WorkerMessage {
                kind: Some(kind),
                ..Default::default()
            })
            .expect("the session reads");
    }

    /// The gateway's next message, pings aside.
    async fn next(&mut self) -> Out {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.from_gateway.recv())
                .await
                .expect("the gateway answers")
                .expect("the stream is open")
                .expect("not an error");
            match worker::to_pb(message).kind.expect("a kind") {
                Out::Ping(_) => {}
                kind => return kind,
            }
        }
    }
}

/// Found by the `worker_session` fuzz target: a result that named a
/// lease the worker holds but another ticket was refused by the engine,
/// yet the session forgot the lease and gave its credit back. The
/// ticket stayed leased, the worker got one task more than its
/// `max_in_flight`, and a cancel of the forgotten ticket never reached it.
#[tokio::test]
async fn a_result_naming_another_ticket_leaves_the_lease_held() {
    let mut worker = Harness::start();
    let first = worker.submit("q").await;
    let second = worker.submit("q").await;
    worker.send(In::Hello(pb::Hello {
        worker_name: "w".into(),
        queues: vec!["q".into()],
        max_in_flight: 1,
        batches: false,
    }));
    assert!(matches!(worker.next().await, Out::Welcome(_)));
    let Out::Task(task) = worker.next().await else {
        panic!("a task");
    };
    assert_eq!(task.ticket_id, first.to_string());

    // The lease, with the other ticket's id (or one nobody issued).
    for wrong in [second.to_string(), TicketId::new().to_string()] {
        worker.send(In::Result(pb::TaskResult {
            ticket_id: wrong.clone(),
            lease_id: task.lease_id.clone(),
            outcome: Some(pb::task_result::Outcome::Success(pb::Payload::default())),
        }));
        let Out::ResultAck(ack) = worker.next().await else {
            panic!("an ack, and no second task: the lease is still held");
        };
        assert_eq!(ack.code, tonic::Code::InvalidArgument as i32, "{ack:?}");
        assert_eq!(ack.ticket_id, wrong);
        assert!(ack.message.contains(&task.ticket_id), "{}", ack.message);
    }

    // The session still holds the lease: a cancel reaches the worker.
    worker
        .engine
        .cancel(first, "test")
        .await
        .expect("cancelled");
    let Out::Cancel(cancel) = worker.next().await else {
        panic!("the cancel of the held lease");
    };
    assert_eq!(cancel.lease_id, task.lease_id);

    // Its late result answers the lease: the credit comes back.
    worker.send(In::Result(pb::TaskResult {
        ticket_id: task.ticket_id.clone(),
        lease_id: task.lease_id.clone(),
        outcome: Some(pb::task_result::Outcome::Success(pb::Payload::default())),
    }));
    let Out::ResultAck(ack) = worker.next().await else {
        panic!("an ack");
    };
    assert_eq!(ack.code, tonic::Code::FailedPrecondition as i32, "{ack:?}");
    let Out::Task(next) = worker.next().await else {
        panic!("the second task");
    };
    assert_eq!(next.ticket_id, second.to_string());
}

/// A renewal that finds the session expired in the store (a timer pass
/// gave its leases back, perhaps on another replica) ends the session
/// with UNAVAILABLE, so the worker reconnects as a new session, rather
/// than reviving it.
#[tokio::test]
async fn a_session_lost_in_the_store_ends_with_unavailable() {
    let mut worker = Harness::start();
    worker.send(In::Hello(pb::Hello {
        worker_name: "w".into(),
        queues: vec!["q".into()],
        max_in_flight: 1,
        batches: false,
    }));
    assert!(matches!(worker.next().await, Out::Welcome(_)));
    // The session's TTL (an hour here) passes in the store's clock.
    worker
        .engine
        .run_timers(SystemTime::now() + Duration::from_secs(3601))
        .await
        .unwrap();
    // The answer to a ping renews, and learns it is lost.
    let error = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), worker.from_gateway.recv())
            .await
            .expect("the gateway answers")
            .expect("the stream ends with an error, not silently");
        match message {
            Err(error) => break error,
            Ok(ToWorker::Ping { nonce }) => worker.send(In::Heartbeat(pb::Heartbeat { nonce })),
            Ok(_) => {}
        }
    };
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
    assert!(error.to_string().contains("reconnect"), "{error}");
}

/// The session's timers under paused time: a worker that answers every
/// ping stays connected however long it runs; one that stops is told
/// DEADLINE_EXCEEDED two intervals after the last answer, and the task it
/// held goes back to its queue.
#[tokio::test(start_paused = true)]
async fn a_worker_that_stops_answering_pings_is_disconnected_after_two_intervals() {
    const HEARTBEAT: Duration = Duration::from_secs(10);
    let mut worker = Harness::with_heartbeat(HEARTBEAT);
    let id = worker.submit("q").await;
    worker.send(In::Hello(pb::Hello {
        worker_name: "w".into(),
        queues: vec!["q".into()],
        max_in_flight: 1,
        batches: false,
    }));
    let mut task = None;
    let mut answered = 0;
    let mut last_answer = tokio::time::Instant::now();
    // Ten minutes of answered pings (paused time runs ahead when idle).
    while answered < 60 {
        match worker.from_gateway.recv().await.expect("open") {
            Ok(ToWorker::Ping { nonce }) => {
                answered += 1;
                last_answer = tokio::time::Instant::now();
                worker.send(In::Heartbeat(pb::Heartbeat { nonce }));
            }
            Ok(ToWorker::Task { claimed, .. }) => task = Some(claimed.ticket.id),
            Ok(_) => {}
            Err(error) => panic!("ended while answering: {error}"),
        }
    }
    assert_eq!(task, Some(id));
    // Silence: the pings go unanswered.
    let error = loop {
        let message = worker.from_gateway.recv().await;
        if let Err(error) = message.expect("the stream ends with an error") {
            break error;
        }
    };
    let silent_for = tokio::time::Instant::now() - last_answer;
    assert_eq!(error.code(), tonic::Code::DeadlineExceeded, "{error}");
    assert!(
        silent_for >= HEARTBEAT * 2 && silent_for <= HEARTBEAT * 3,
        "ended after {silent_for:?} of silence"
    );
    // The held task is back in its queue.
    let ticket = loop {
        let ticket = worker.engine.get(id).await.unwrap();
        if ticket.state == crate::domain::TicketState::Pending {
            break ticket;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(ticket.attempt, 1);
}
