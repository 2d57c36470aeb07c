//! `asyncgate work -- CMD` against a scripted fake gateway on `127.0.0.1:0`:
//! stdin/stdout mapped to payloads, and a clean drain on SIGTERM. (The worker
//! SDK's own protocol tests, with the same fake, are in
//! `client/tests/fake_gateway.rs`.)

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
const STEP: Duration = Duration::from_secs(10);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

async fn step<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

// ---------------------------------------------------------------- workers

/// One worker stream as the fake gateway sees it.
struct Conn {
    inbound: Streaming<pb::WorkerMessage>,
    tx: mpsc::Sender<Result<pb::DispatchMessage, Status>>,
}

impl Conn {
    async fn recv(&mut self) -> pb::worker_message::Kind {
        match step("a worker message", self.inbound.message()).await {
            Ok(Some(pb::WorkerMessage { kind: Some(kind) })) => kind,
            other => panic!("expected a worker message, got {other:?}"),
        }
    }

    async fn send(&self, kind: dispatch_message::Kind) {
        let message = pb::DispatchMessage { kind: Some(kind) };
        if self.tx.send(Ok(message)).await.is_err() {
            panic!("the worker's stream is gone");
        }
    }

    /// Hello → Welcome; returns the Hello.
    async fn welcome(&mut self, session_id: &str, heartbeat: Duration) -> pb::Hello {
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
        }))
        .await;
        hello
    }

    async fn task(&self, lease: &str, value: serde_json::Value) {
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

    async fn ack(&self, lease: &str, code: tonic::Code) {
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
    async fn drain_and_close(mut self) {
        loop {
            match self.recv().await {
                worker_message::Kind::Drain(_) => break,
                worker_message::Kind::Heartbeat(_) => {}
                other => panic!("expected Drain, got {other:?}"),
            }
        }
        self.send(dispatch_message::Kind::Drain(pb::Drain {
            reason: "drain acknowledged".into(),
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

    async fn result(&mut self) -> pb::TaskResult {
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

struct FakeWorkers {
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

async fn serve_workers() -> (SocketAddr, mpsc::Receiver<Conn>) {
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

async fn next_conn(conns: &mut mpsc::Receiver<Conn>) -> Conn {
    step("a worker connection", conns.recv())
        .await
        .unwrap_or_else(|| panic!("the fake gateway stopped"))
}

fn success_json(result: &pb::TaskResult) -> Option<serde_json::Value> {
    match &result.outcome {
        Some(pb::task_result::Outcome::Success(p)) => payload::to_json(p),
        _ => None,
    }
}

#[tokio::test]
async fn cli_work_maps_stdin_stdout_and_drains_on_sigterm() {
    let (addr, mut conns) = serve_workers().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncgate"))
        .args([
            "--server",
            &format!("http://{addr}"),
            "work",
            "--queue",
            "upper",
        ])
        .args(["--concurrency", "2", "--", "tr", "a-z", "A-Z"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut conn = next_conn(&mut conns).await;
    let hello = conn.welcome("s1", Duration::from_secs(1)).await;
    assert_eq!(
        (hello.queues.as_slice(), hello.max_in_flight),
        (&["upper".to_owned()][..], 2)
    );

    conn.task("L1", "hello".into()).await;
    let result = conn.result().await;
    assert_eq!(success_json(&result), Some("HELLO".into()));
    conn.task("L2", serde_json::json!({"k": "v"})).await;
    let result = conn.result().await;
    assert_eq!(success_json(&result), Some(serde_json::json!({"K": "V"})));
    conn.ack("L1", tonic::Code::Ok).await;
    conn.ack("L2", tonic::Code::Ok).await;

    let pid = child.id().unwrap_or_else(|| panic!("no pid")).to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    conn.drain_and_close().await;
    let status = step("the CLI exits", child.wait())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
}
