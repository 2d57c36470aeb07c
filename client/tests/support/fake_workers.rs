//! The fake gateway's Workers side, shared by the SDK's protocol tests
//! (`client/tests/fake_gateway.rs`) and the CLI's `work` test
//! (`cli/tests/work.rs`, through `#[path]`): it hands the test one `Conn`
//! per worker stream, so a test reads like the protocol transcript.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use asyncgate_client::payload;
use asyncgate_client::pb::{self, dispatch_message, worker_message};
use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// A test step that takes longer than this is a failure, not a hang.
pub(crate) const STEP: Duration = Duration::from_secs(10);

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub(crate) async fn step<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

// ---------------------------------------------------------------- workers

/// One worker stream as the fake gateway sees it.
pub(crate) struct Conn {
    pub(crate) inbound: Streaming<pb::WorkerMessage>,
    pub(crate) tx: mpsc::Sender<Result<pb::DispatchMessage, Status>>,
}

impl Conn {
    pub(crate) async fn recv(&mut self) -> pb::worker_message::Kind {
        match step("a worker message", self.inbound.message()).await {
            Ok(Some(pb::WorkerMessage {
                kind: Some(kind), ..
            })) => kind,
            other => panic!("expected a worker message, got {other:?}"),
        }
    }

    pub(crate) async fn send(&self, kind: dispatch_message::Kind) {
        let message = pb::DispatchMessage {
            kind: Some(kind),
            ..Default::default()
        };
        if self.tx.send(Ok(message)).await.is_err() {
            panic!("the worker's stream is gone");
        }
    }

    /// Hello → Welcome; returns the Hello.
    pub(crate) async fn welcome(&mut self, session_id: &str, heartbeat: Duration) -> pb::Hello {
        let hello = match self.recv().await {
            worker_message::Kind::Hello(hello) => hello,
            other => panic!("expected Hello, got {other:?}"),
        };
        self.send(dispatch_message::Kind::Welcome(pb::Welcome {
            session_id: session_id.into(),
            lease_ttl: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: i64::try_from(heartbeat.as_secs()).unwrap_or(1),
                nanos: i32::try_from(heartbeat.subsec_nanos()).unwrap_or(0),
            }),
            // As a gateway from before batches: the worker sends one
            // message at a time.
            batches: false,
        }))
        .await;
        hello
    }

    pub(crate) async fn task(&self, lease: &str, value: serde_json::Value) {
        self.send(dispatch_message::Kind::Task(pb::Task {
            ticket_id: format!("ticket-{lease}"),
            lease_id: lease.into(),
            queue: "upper".into(),
            payload: Some(payload::json(value)),
            attempt: 1,
            max_attempts: 3,
            ..Default::default()
        }))
        .await;
    }

    pub(crate) async fn ack(&self, lease: &str, code: tonic::Code) {
        self.send(dispatch_message::Kind::ResultAck(pb::ResultAck {
            ticket_id: format!("ticket-{lease}"),
            lease_id: lease.into(),
            code: code as i32,
            message: String::new(),
        }))
        .await;
    }

    /// Expects the worker's Drain and answers it as the gateway does; the
    /// worker then ends its stream cleanly.
    pub(crate) async fn drain_and_close(mut self) {
        loop {
            match self.recv().await {
                worker_message::Kind::Drain(_) => break,
                worker_message::Kind::Heartbeat(_) => {}
                other => panic!("expected Drain, got {other:?}"),
            }
        }
        self.send(dispatch_message::Kind::Drain(pb::Drain {
            reason: "drain acknowledged".into(),
            stop: false,
        }))
        .await;
        loop {
            match step("end of stream", self.inbound.message()).await {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(status) => panic!("expected a clean end, got {status:?}"),
            }
        }
    }

    pub(crate) async fn result(&mut self) -> pb::TaskResult {
        loop {
            match self.recv().await {
                worker_message::Kind::Result(result) => return result,
                // Heartbeats may interleave; progress is checked elsewhere.
                worker_message::Kind::Heartbeat(_) | worker_message::Kind::Progress(_) => {}
                other => panic!("expected a Result, got {other:?}"),
            }
        }
    }
}

pub(crate) struct FakeWorkers {
    conns: mpsc::Sender<Conn>,
}

#[tonic::async_trait]
impl pb::workers_server::Workers for FakeWorkers {
    type ConnectStream = BoxStream<pb::DispatchMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let conn = Conn {
            inbound: request.into_inner(),
            tx,
        };
        self.conns
            .send(conn)
            .await
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

pub(crate) async fn serve_workers() -> (SocketAddr, mpsc::Receiver<Conn>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (conns, rx) = mpsc::channel(8);
    let service = pb::workers_server::WorkersServer::new(FakeWorkers { conns });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

pub(crate) async fn next_conn(conns: &mut mpsc::Receiver<Conn>) -> Conn {
    step("a worker connection", conns.recv())
        .await
        .unwrap_or_else(|| panic!("the fake gateway stopped"))
}

pub(crate) fn success_json(result: &pb::TaskResult) -> Option<serde_json::Value> {
    match &result.outcome {
        Some(pb::task_result::Outcome::Success(p)) => payload::to_json(p),
        _ => None,
    }
}
