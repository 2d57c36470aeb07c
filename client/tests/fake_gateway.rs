//! The SDK against scripted fake gateways on `127.0.0.1:0`: every protocol
//! step (Hello/Welcome, heartbeats, results and their resend after a
//! reconnect, Cancel, Drain, graceful shutdown, abort) and the resumable
//! watch, without needing the real server.
//!
//! Each fake hands the test one `Conn` per stream (its inbound messages and
//! an outbound sender), so a test reads like the protocol transcript.

use std::net::SocketAddr;
use std::time::Duration;

use asyncgate_client::pb::{self, dispatch_message, worker_message};
use asyncgate_client::worker::{TaskContext, TaskError, Worker, WorkerHandle, handler_fn};
use asyncgate_client::{Client, payload};
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

mod support;
use support::fake_workers::*;

fn upper_worker(addr: SocketAddr) -> WorkerHandle {
    Worker::builder(addr)
        .name("test")
        .queue("upper")
        .max_in_flight(2)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .handler(handler_fn(|task: TaskContext| async move {
            match task.json() {
                Some(serde_json::Value::String(s)) if s == "wait-for-cancel" => {
                    task.cancelled().await;
                    Err(TaskError::fatal("stopped"))
                }
                Some(serde_json::Value::String(s)) => {
                    task.progress(50, "halfway").await;
                    task.output(payload::text("partial")).await;
                    Ok(payload::json(s.to_uppercase().into()))
                }
                _ => Err(TaskError::fatal("expected a JSON string")),
            }
        }))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .spawn()
}

#[tokio::test]
async fn hello_heartbeat_task_progress_result_in_order() {
    let (addr, mut conns) = serve_workers().await;
    let worker = upper_worker(addr);
    let mut conn = next_conn(&mut conns).await;
    let hello = conn.welcome("s1", Duration::from_secs(1)).await;
    assert_eq!(hello.queues, ["upper"]);
    assert_eq!(hello.max_in_flight, 2);
    assert_eq!(hello.worker_name, "test");
    assert_eq!(
        step("connected", worker.connected()).await.as_deref(),
        Some("s1")
    );
    assert_eq!(worker.session_id().as_deref(), Some("s1"));

    conn.send(dispatch_message::Kind::Ping(pb::Ping { nonce: 7 }))
        .await;
    match conn.recv().await {
        worker_message::Kind::Heartbeat(hb) => assert_eq!(hb.nonce, 7),
        other => panic!("expected Heartbeat, got {other:?}"),
    }

    conn.task("L1", "hello".into()).await;
    match conn.recv().await {
        worker_message::Kind::Progress(p) => {
            assert_eq!(
                (p.lease_id.as_str(), p.percent, p.message.as_str()),
                ("L1", 50, "halfway")
            );
            assert!(p.output.is_none());
        }
        other => panic!("expected Progress, got {other:?}"),
    }
    match conn.recv().await {
        worker_message::Kind::Progress(p) => assert!(p.output.is_some()),
        other => panic!("expected an output chunk, got {other:?}"),
    }
    let result = conn.result().await;
    assert_eq!(result.lease_id, "L1");
    assert_eq!(success_json(&result), Some("HELLO".into()));
    conn.ack("L1", tonic::Code::Ok).await;

    // Graceful shutdown with nothing in flight: a clean end of stream.
    worker.shutdown();
    conn.drain_and_close().await;
    step("join", worker.join()).await;
}

#[tokio::test]
async fn unacknowledged_results_are_resent_first_after_a_reconnect() {
    let (addr, mut conns) = serve_workers().await;
    let worker = upper_worker(addr);
    let mut conn = next_conn(&mut conns).await;
    conn.welcome("s1", Duration::from_secs(1)).await;
    conn.task("L1", "abc".into()).await;
    let first = conn.result().await;
    assert_eq!(first.lease_id, "L1");

    // The gateway breaks the stream before acknowledging.
    let _ = conn.tx.send(Err(Status::unavailable("restarting"))).await;
    drop(conn);

    let mut conn = next_conn(&mut conns).await;
    conn.welcome("s2", Duration::from_secs(1)).await;
    assert_eq!(
        step("next session", worker.next_session("s1"))
            .await
            .as_deref(),
        Some("s2")
    );
    match conn.recv().await {
        worker_message::Kind::Result(again) => assert_eq!(again, first),
        other => panic!("expected the resent Result first, got {other:?}"),
    }
    // Any ack code is final: a FAILED_PRECONDITION is not retried.
    conn.ack("L1", tonic::Code::FailedPrecondition).await;

    worker.shutdown();
    while let Ok(Some(message)) = step("end of stream", conn.inbound.message()).await {
        assert!(
            !matches!(message.kind, Some(worker_message::Kind::Result(_))),
            "an acknowledged result was sent again"
        );
    }
    step("join", worker.join()).await;
}

#[tokio::test]
async fn cancel_reaches_the_handler_and_still_yields_one_result() {
    let (addr, mut conns) = serve_workers().await;
    let worker = upper_worker(addr);
    let mut conn = next_conn(&mut conns).await;
    conn.welcome("s1", Duration::from_secs(1)).await;
    conn.task("L2", "wait-for-cancel".into()).await;
    conn.send(dispatch_message::Kind::Cancel(pb::Cancel {
        ticket_id: "ticket-L2".into(),
        lease_id: "L2".into(),
        reason: pb::CancelReason::Cancelled as i32,
        message: "by test".into(),
    }))
    .await;
    let result = conn.result().await;
    assert_eq!(result.lease_id, "L2");
    match result.outcome {
        Some(pb::task_result::Outcome::Failure(f)) => assert_eq!(f.message, "stopped"),
        other => panic!("expected a failure, got {other:?}"),
    }
    conn.ack("L2", tonic::Code::FailedPrecondition).await;
    worker.shutdown();
    step("join", worker.join()).await;
}

#[tokio::test]
async fn drain_finishes_in_flight_work_then_reconnects() {
    let (addr, mut conns) = serve_workers().await;
    let worker = upper_worker(addr);
    let mut conn = next_conn(&mut conns).await;
    conn.welcome("s1", Duration::from_secs(1)).await;
    conn.task("L3", "wait-for-cancel".into()).await;
    conn.send(dispatch_message::Kind::Drain(pb::Drain {
        reason: "restart".into(),
        stop: false,
    }))
    .await;
    // Still in flight: the worker keeps the stream open.
    conn.send(dispatch_message::Kind::Cancel(pb::Cancel {
        ticket_id: "ticket-L3".into(),
        lease_id: "L3".into(),
        reason: pb::CancelReason::Expired as i32,
        message: String::new(),
    }))
    .await;
    let result = conn.result().await;
    assert_eq!(result.lease_id, "L3");
    conn.ack("L3", tonic::Code::Ok).await;
    // Idle and drained: the worker ends its stream and comes back.
    loop {
        match step("end of the drained stream", conn.inbound.message()).await {
            Ok(None) => break,
            Ok(Some(_)) => {}
            Err(status) => panic!("expected a clean end, got {status:?}"),
        }
    }
    let mut conn = next_conn(&mut conns).await;
    conn.welcome("s2", Duration::from_secs(1)).await;
    assert_eq!(
        step("reconnected", worker.next_session("s1"))
            .await
            .as_deref(),
        Some("s2")
    );
    worker.shutdown();
    step("join", worker.join()).await;
}

#[tokio::test]
async fn silent_gateway_trips_the_watchdog() {
    let (addr, mut conns) = serve_workers().await;
    let worker = upper_worker(addr);
    let mut conn = next_conn(&mut conns).await;
    // 50 ms heartbeats: silence for 150 ms means dead.
    conn.welcome("s1", Duration::from_millis(50)).await;
    let mut next = next_conn(&mut conns).await;
    next.welcome("s2", Duration::from_secs(1)).await;
    assert_eq!(
        step("reconnected", worker.next_session("s1"))
            .await
            .as_deref(),
        Some("s2")
    );
    // The first connection was dropped, not ended politely.
    assert!(step("old stream", conn.inbound.message()).await.is_err());
    worker.shutdown();
    step("join", worker.join()).await;
}

#[tokio::test]
async fn abort_drops_the_connection_without_a_word() {
    let (addr, mut conns) = serve_workers().await;
    let worker = upper_worker(addr);
    let mut conn = next_conn(&mut conns).await;
    conn.welcome("s1", Duration::from_secs(1)).await;
    conn.task("L4", "wait-for-cancel".into()).await;
    // Let the task start before the crash.
    conn.send(dispatch_message::Kind::Ping(pb::Ping { nonce: 1 }))
        .await;
    assert!(matches!(
        conn.recv().await,
        worker_message::Kind::Heartbeat(_)
    ));

    worker.abort();
    match step("the crashed stream", conn.inbound.message()).await {
        Err(_) => {}
        Ok(message) => panic!("a crashed worker must send nothing, got {message:?}"),
    }
    step("join", worker.join()).await;
}

// ---------------------------------------------------------------- gateway

/// One WatchTicket call as the fake gateway sees it.
struct Watch {
    after_seq: Option<u64>,
    tx: mpsc::Sender<Result<pb::TicketEvent, Status>>,
}

struct FakeGateway {
    watches: mpsc::Sender<Watch>,
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for FakeGateway {
    type ExecuteStream = BoxStream<pb::TicketEvent>;
    type WatchTicketStream = BoxStream<pb::TicketEvent>;

    async fn submit(&self, _: Request<pb::SubmitRequest>) -> Result<Response<pb::Ticket>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn execute(
        &self,
        _: Request<pb::SubmitRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_ticket(
        &self,
        _: Request<pb::GetTicketRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn watch_ticket(
        &self,
        request: Request<pb::WatchTicketRequest>,
    ) -> Result<Response<Self::WatchTicketStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let watch = Watch {
            after_seq: request.into_inner().after_seq,
            tx,
        };
        self.watches
            .send(watch)
            .await
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_ticket(
        &self,
        _: Request<pb::CancelTicketRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_tickets(
        &self,
        _: Request<pb::ListTicketsRequest>,
    ) -> Result<Response<pb::ListTicketsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn who_am_i(
        &self,
        _: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type SubmitStreamStream = BoxStream<pb::SubmitResult>;

    async fn submit_stream(
        &self,
        _: Request<tonic::Streaming<pb::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    /// Answers each request by its queue: `bad` is refused, `none` gets
    /// an empty result (a broken gateway), `drop` is left out of the
    /// answer; any other becomes a ticket whose id is the queue.
    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let results = request
            .into_inner()
            .requests
            .into_iter()
            .filter(|r| r.queue != "drop")
            .map(|r| match r.queue.as_str() {
                "bad" => pb::SubmitBatchResult {
                    ticket: None,
                    error: Some(pb::ItemError {
                        code: tonic::Code::InvalidArgument as i32,
                        message: "invalid queue: bad".into(),
                    }),
                },
                "none" => pb::SubmitBatchResult::default(),
                _ => pb::SubmitBatchResult {
                    ticket: Some(pb::Ticket {
                        id: r.queue,
                        ..Default::default()
                    }),
                    error: None,
                },
            })
            .collect();
        Ok(Response::new(pb::SubmitBatchResponse { results }))
    }

    type WatchTicketsStream = BoxStream<pb::TicketEvent>;

    async fn watch_tickets(
        &self,
        _: Request<tonic::Streaming<pb::WatchTicketsRequest>>,
    ) -> Result<Response<Self::WatchTicketsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

fn ev(seq: u64, kind: pb::TicketEventKind, state: pb::TicketState) -> pb::TicketEvent {
    pb::TicketEvent {
        seq,
        kind: kind as i32,
        ticket: (kind != pb::TicketEventKind::Keepalive).then(|| pb::Ticket {
            id: "t".into(),
            state: state as i32,
            seq,
            ..Default::default()
        }),
        output: (kind == pb::TicketEventKind::Output)
            .then(|| payload::text(format!("chunk {seq}"))),
        ..Default::default()
    }
}

impl Watch {
    async fn send(&self, events: &[(u64, pb::TicketEventKind, pb::TicketState)]) {
        for &(seq, kind, state) in events {
            if self.tx.send(Ok(ev(seq, kind, state))).await.is_err() {
                panic!("the watcher left");
            }
        }
    }
}

#[tokio::test]
async fn watch_resumes_without_gap_or_duplicate() {
    use pb::TicketEventKind::{Keepalive, Output, Snapshot, State};
    use pb::TicketState::{Running, Succeeded};

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (watches_tx, mut watches) = mpsc::channel(8);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::gateway_server::GatewayServer::new(FakeGateway {
                watches: watches_tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = Client::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let opened = tokio::spawn({
        let client = client.clone();
        async move { client.watch("t", None).await }
    });
    let first = step("first watch", watches.recv())
        .await
        .unwrap_or_else(|| panic!("gone"));
    let mut events = step("watch opens", opened)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.after_seq, None);
    first
        .send(&[
            (2, Snapshot, Running),
            (3, Output, Running),
            (3, Keepalive, Running),
            (4, Output, Running),
        ])
        .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = step("event", events.next()).await;
        let event = event
            .unwrap_or_else(|| panic!("ended early"))
            .unwrap_or_else(|e| panic!("{e}"));
        seen.push((event.seq, event.kind()));
    }
    // The gateway restarts: the stream breaks with UNAVAILABLE.
    let _ = first
        .tx
        .send(Err(Status::unavailable("shutting down")))
        .await;
    drop(first);

    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Some(event) = events.next().await {
            let event = event.unwrap_or_else(|e| panic!("{e}"));
            rest.push((event.seq, event.kind()));
        }
        rest
    });
    let second = step("resumed watch", watches.recv())
        .await
        .unwrap_or_else(|| panic!("gone"));
    assert_eq!(second.after_seq, Some(4));
    // Snapshot at 6; a replay that (wrongly) repeats 4, then 5; live 7.
    second
        .send(&[
            (6, Snapshot, Running),
            (4, Output, Running),
            (5, Output, Running),
            (7, State, Succeeded),
        ])
        .await;
    let rest = step("the rest", reader)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    seen.extend(rest);
    assert_eq!(
        seen,
        [
            (2, Snapshot),
            (3, Output),
            (4, Output),
            (6, Snapshot),
            (5, Output),
            (7, State)
        ]
    );
}

/// `submit_batch` maps each answer to its request, in order: a ticket, the
/// request's own refusal as a status, and a protocol error for an answer
/// with neither or a batch answered short.
#[tokio::test]
async fn submit_batch_answers_each_request_in_order() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (watches, _unused) = mpsc::channel(1);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::gateway_server::GatewayServer::new(FakeGateway {
                watches,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = Client::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answers = client
        .submit_batch(["a", "bad", "b", "none"].map(asyncgate_client::Submit::new))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0].as_ref().map(|t| t.id.as_str()).ok(), Some("a"));
    let refused = answers[1].as_ref().expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.to_string().contains("invalid queue"), "{refused}");
    assert_eq!(answers[2].as_ref().map(|t| t.id.as_str()).ok(), Some("b"));
    assert!(matches!(
        answers[3],
        Err(asyncgate_client::ClientError::Protocol(_))
    ));
    let short = client
        .submit_batch(["a", "drop"].map(asyncgate_client::Submit::new))
        .await
        .expect_err("a batch answered short");
    assert!(short.to_string().contains("1 of 2"), "{short}");
}
