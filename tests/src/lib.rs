//! Test harness: real gateways on ephemeral loopback ports, driven by the real
//! client and worker SDKs (and by raw protocol streams for misbehaviour).

pub mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use asyncgate_client::Client;
use asyncgate_client::pb;
use asyncgate_client::worker::WorkerBuilder;
use asyncgate_server::config::{Config, StoreConfig};
use asyncgate_server::domain::backoff::Backoff;

/// Installs a test log subscriber once (quiet unless `RUST_LOG` is set).
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Settings tuned for fast tests: short heartbeats, backoffs and keepalives.
pub fn fast_config() -> Config {
    let mut config = Config {
        store: StoreConfig::Memory,
        heartbeat_interval: Duration::from_millis(200),
        lease_ttl: Duration::from_secs(2),
        watch_keepalive: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(3),
        ..Config::default()
    };
    config.engine.backoff = Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
    };
    config
}

/// A gateway running in this process on `127.0.0.1:<ephemeral>`.
pub struct TestGateway {
    running: Option<asyncgate_server::Running>,
    addr: SocketAddr,
    config: Config,
}

impl TestGateway {
    /// Starts a gateway with [`fast_config`].
    pub async fn start() -> Self {
        Self::start_with(fast_config()).await
    }

    /// Starts a gateway with `config` (its listen address is ignored: the
    /// port is chosen by the OS and known before serving).
    pub async fn start_with(config: Config) -> Self {
        trace_init();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let running = asyncgate_server::start_on(config.clone(), listener)
            .await
            .expect("gateway starts");
        Self {
            running: Some(running),
            addr,
            config,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (`https://` when it serves TLS).
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Where it serves metrics, when it runs with `--metrics-listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running
            .as_ref()
            .and_then(|running| running.metrics_addr())
    }

    /// The API keys in force (to reload them), when it runs with `--keys`.
    pub fn keys(&self) -> Option<asyncgate_server::auth::Keys> {
        self.running.as_ref().and_then(|running| running.keys())
    }

    /// The settings it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(self.url()).await.expect("client connects")
    }

    /// A worker builder pointed at this gateway, with fast reconnects.
    pub fn worker(&self, queue: &str) -> WorkerBuilder {
        asyncgate_client::worker::Worker::builder(self.url())
            .name(format!("test-worker-{queue}"))
            .queue(queue)
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
    }

    /// Starts a worker with default settings serving `queue` with `handler`.
    pub fn spawn_worker(
        &self,
        queue: &str,
        handler: impl asyncgate_client::worker::Handler,
    ) -> asyncgate_client::worker::WorkerHandle {
        self.worker(queue)
            .handler(handler)
            .build()
            .expect("valid worker settings")
            .spawn()
    }

    /// A raw `Workers.Connect` stream, for protocol tests.
    pub async fn raw_worker(&self) -> RawWorker {
        let channel = Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(64);
        let mut client = pb::workers_client::WorkersClient::new(channel);
        let inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .expect("Connect opens")
            .into_inner();
        RawWorker { tx, inbound }
    }

    /// Settings with the durable store in `dir` (and a short shutdown grace,
    /// so restarts in tests are quick).
    pub fn durable_config(dir: &std::path::Path) -> Config {
        Config {
            store: StoreConfig::Durable(dir.join("asyncgate.redb")),
            shutdown_grace: Duration::from_millis(300),
            ..fast_config()
        }
    }

    /// Settings with the Redis store at `url` (a replica of a shared
    /// deployment).
    pub fn redis_config(url: &str) -> Config {
        Config {
            store: StoreConfig::Redis(url.to_owned()),
            shutdown_grace: Duration::from_millis(300),
            ..fast_config()
        }
    }

    /// Stops this gateway and starts a new one with the same settings on the
    /// same address, as an operator's restart would.
    pub async fn restart(self) -> Self {
        let (addr, config) = (self.addr, self.config.clone());
        self.shutdown().await;
        let listener = TcpListener::bind(addr).await.expect("rebind the same port");
        let running = asyncgate_server::start_on(config.clone(), listener)
            .await
            .expect("gateway restarts");
        Self {
            running: Some(running),
            addr,
            config,
        }
    }

    /// Shuts down gracefully and waits.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.initiate_shutdown();
        }
    }
}

/// A private CA with a server certificate for 127.0.0.1 and a client
/// certificate, written as PEM files to a temporary directory (generated per
/// test: no key is ever committed).
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The client certificate and key (PEM), signed by the CA.
    pub client: (String, String),
}

impl TestPki {
    /// Generates the CA and both certificates.
    pub fn generate() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
            .expect("CA certificate");
        let leaf = |name: &str| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(vec![name.to_owned()])
                .expect("params")
                .signed_by(&key, &ca)
                .expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let server = leaf("127.0.0.1");
        let client = leaf("test-client");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.path().join("server.pem"), &server.0).expect("write");
        std::fs::write(dir.path().join("server.key"), &server.1).expect("write");
        TestPki {
            dir,
            ca_pem: ca.pem(),
            client,
        }
    }

    /// The gateway's TLS files; with `mutual`, clients must present a
    /// certificate of this CA.
    pub fn server_files(&self, mutual: bool) -> asyncgate_server::config::TlsFiles {
        asyncgate_server::config::TlsFiles {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            client_ca: mutual.then(|| self.dir.path().join("ca.pem")),
        }
    }

    /// Client TLS settings trusting the CA, with the client certificate or
    /// without.
    pub fn client_tls(&self, with_certificate: bool) -> asyncgate_client::Tls {
        let tls = asyncgate_client::Tls::default().ca_pem(self.ca_pem.clone());
        if with_certificate {
            tls.client_identity(self.client.0.clone(), self.client.1.clone())
        } else {
            tls
        }
    }

    /// The directory of the PEM files (`ca.pem`, `server.pem`, `server.key`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A worker speaking the raw protocol, for misbehaviour tests.
pub struct RawWorker {
    /// Messages to the gateway.
    pub tx: mpsc::Sender<pb::WorkerMessage>,
    /// Messages from the gateway.
    pub inbound: tonic::Streaming<pb::DispatchMessage>,
}

impl RawWorker {
    /// Sends one message.
    pub async fn send(&self, kind: pb::worker_message::Kind) {
        self.tx
            .send(pb::WorkerMessage {
                kind: Some(kind),
                ..Default::default()
            })
            .await
            .expect("stream open");
    }

    /// Says hello and returns the Welcome.
    pub async fn hello(&mut self, queues: &[&str], max_in_flight: u32) -> pb::Welcome {
        self.send(pb::worker_message::Kind::Hello(pb::Hello {
            worker_name: "raw".into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            max_in_flight,
            // One message at a time, as workers from before batches.
            batches: false,
        }))
        .await;
        match self.next().await {
            Ok(pb::dispatch_message::Kind::Welcome(welcome)) => welcome,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The next message that is not a Ping (pings are answered), or the
    /// stream's error status.
    pub async fn next(&mut self) -> Result<pb::dispatch_message::Kind, tonic::Status> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.inbound.next())
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("no message within 10 s"))?;
            match message {
                Some(Ok(pb::DispatchMessage {
                    kind: Some(pb::dispatch_message::Kind::Ping(ping)),
                    ..
                })) => {
                    let _ = self
                        .tx
                        .send(pb::WorkerMessage {
                            kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                                nonce: ping.nonce,
                            })),
                            ..Default::default()
                        })
                        .await;
                }
                Some(Ok(pb::DispatchMessage {
                    kind: Some(kind), ..
                })) => return Ok(kind),
                Some(Ok(_)) => return Err(tonic::Status::internal("empty DispatchMessage")),
                Some(Err(status)) => return Err(status),
                None => return Err(tonic::Status::cancelled("stream ended")),
            }
        }
    }

    /// The next Task.
    pub async fn next_task(&mut self) -> pb::Task {
        match self.next().await {
            Ok(pb::dispatch_message::Kind::Task(task)) => task,
            other => panic!("expected Task, got {other:?}"),
        }
    }

    /// Sends a success result.
    pub async fn succeed(&self, task: &pb::Task, payload: pb::Payload) {
        self.send(pb::worker_message::Kind::Result(pb::TaskResult {
            ticket_id: task.ticket_id.clone(),
            lease_id: task.lease_id.clone(),
            outcome: Some(pb::task_result::Outcome::Success(payload)),
        }))
        .await;
    }

    /// The next ResultAck.
    pub async fn next_ack(&mut self) -> pb::ResultAck {
        match self.next().await {
            Ok(pb::dispatch_message::Kind::ResultAck(ack)) => ack,
            other => panic!("expected ResultAck, got {other:?}"),
        }
    }
}

/// A JSON value nested `depth` objects (`{"k": …}`) or lists deep around
/// a string.
pub fn nested_json(depth: usize, objects: bool) -> serde_json::Value {
    let mut value = serde_json::Value::from("leaf");
    for _ in 0..depth {
        value = if objects {
            serde_json::json!({ "k": value })
        } else {
            serde_json::json!([value])
        };
    }
    value
}

/// A JSON payload.
pub fn json(value: serde_json::Value) -> pb::Payload {
    asyncgate_client::payload::json(value)
}

/// A payload's JSON value.
pub fn as_json(payload: Option<&pb::Payload>) -> serde_json::Value {
    payload
        .and_then(asyncgate_client::payload::to_json)
        .unwrap_or(serde_json::Value::Null)
}

/// The ticket state of a wire ticket.
pub fn state(ticket: &pb::Ticket) -> pb::TicketState {
    pb::TicketState::try_from(ticket.state).unwrap_or(pb::TicketState::Unspecified)
}

/// Holds a worker's tasks until the test opens it: handlers call
/// [`Gate::enter`], the test awaits [`Gate::started`] then calls
/// [`Gate::open`]. A signal, not a sleep.
#[derive(Clone)]
pub struct Gate {
    started_tx: mpsc::UnboundedSender<()>,
    started_rx: std::sync::Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Gate {
    fn default() -> Self {
        let (started_tx, started_rx) = mpsc::unbounded_channel();
        Self {
            started_tx,
            started_rx: std::sync::Arc::new(tokio::sync::Mutex::new(started_rx)),
            open: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Gate {
    /// A handler that echoes each task's payload once the gate opens.
    pub fn echo_handler(&self) -> impl asyncgate_client::worker::Handler {
        let gate = self.clone();
        asyncgate_client::worker::handler_fn(move |task: asyncgate_client::worker::TaskContext| {
            let gate = gate.clone();
            async move {
                gate.enter().await;
                Ok(task.payload().clone())
            }
        })
    }

    /// In a handler: says the task started, then waits for the gate to open.
    pub async fn enter(&self) {
        let _ = self.started_tx.send(());
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }

    /// In the test: waits until one more task has entered.
    pub async fn started(&self) {
        self.started_rx.lock().await.recv().await;
    }

    /// Lets every held task (and every later one) through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Long-polls `id` until it is terminal (up to 10 s, far above any test's
/// need) and returns it.
pub async fn finished(client: &Client, id: &str) -> pb::Ticket {
    client
        .get(id, Some(Duration::from_secs(10)))
        .await
        .expect("GetTicket with wait")
}
