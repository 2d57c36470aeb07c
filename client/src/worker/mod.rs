//! The worker SDK: serve one or more queues with a [`Handler`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), asyncgate_client::ClientError> {
//! use asyncgate_client::worker::{handler_fn, TaskContext, TaskError, Worker};
//! use asyncgate_client::payload;
//!
//! let worker = Worker::builder("http://127.0.0.1:50051")
//!     .name("upper-1")
//!     .queue("upper")
//!     .max_in_flight(8)
//!     .handler(handler_fn(|task: TaskContext| async move {
//!         match task.json() {
//!             Some(serde_json::Value::String(s)) => Ok(payload::json(s.to_uppercase().into())),
//!             _ => Err(TaskError::fatal("expected a JSON string")),
//!         }
//!     }))
//!     .build()?;
//! let handle = worker.spawn();
//! handle.connected().await;
//! // ... later
//! handle.shutdown();
//! handle.join().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `mod.rs` (this file): [`Worker`] / [`WorkerBuilder`] (settings, checked
//!   once) and [`WorkerHandle`] (shutdown, abort, connection state).
//! - `handler.rs`: [`Handler`], [`handler_fn`], [`TaskContext`], [`TaskError`].
//! - `connection.rs`: the connection loop (Hello/Welcome, heartbeats,
//!   watchdog, reconnect with backoff, result bookkeeping, drain).
//! - `transport.rs`: one killable TCP connection per `Connect` stream.
//!
//! # Guarantees
//! - Exactly one `TaskResult` per lease, even after a Cancel. A result stays
//!   stored until the gateway acknowledges it (with any code) and is sent
//!   again, before anything else, on the next connection if the old one
//!   broke; the gateway's lease check decides whether it still counts.
//! - At most `max_in_flight` handlers run at once (a semaphore permit is
//!   taken before a handler starts, also for tasks of an old connection that
//!   are still running after a reconnect).
//! - Progress and result messages of one lease leave in the order they were
//!   made (one mpsc feeds the request stream).

mod connection;
mod handler;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub use handler::{Handler, HandlerFn, TaskContext, TaskError, TraceParent, handler_fn};

use crate::ClientError;

/// The most tasks one worker may run at once (the protocol's limit).
pub const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;
/// The longest worker name the gateway accepts, in bytes.
pub const MAX_WORKER_NAME_BYTES: usize = 128;

/// Where a worker connects: a URL (the usual case) or an existing channel.
///
/// With a URL every `Connect` stream gets its own TCP connection, which the
/// worker can drop at will (watchdog, [`WorkerHandle::abort`]). With a
/// `Channel` the connection belongs to the caller: an abort then only goes
/// silent on its stream, and the gateway notices the "crash" by the missed
/// heartbeats instead of by a closed socket.
#[derive(Debug, Clone)]
pub enum Target {
    /// An `http://host:port` address (a bare `host:port` also works).
    Url(String),
    /// A caller-owned channel.
    Channel(Channel),
}

impl From<&str> for Target {
    fn from(url: &str) -> Self {
        Target::Url(url.to_owned())
    }
}

impl From<String> for Target {
    fn from(url: String) -> Self {
        Target::Url(url)
    }
}

impl From<&String> for Target {
    fn from(url: &String) -> Self {
        Target::Url(url.clone())
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Target::Url(format!("http://{addr}"))
    }
}

impl From<Channel> for Target {
    fn from(channel: Channel) -> Self {
        Target::Channel(channel)
    }
}

/// How the connection loop reaches the gateway.
#[derive(Debug, Clone)]
enum Connector {
    /// A fresh, killable connection per stream.
    Endpoint(Box<Endpoint>),
    /// The caller's channel, shared by every stream.
    Channel(Channel),
}

/// Settings of a worker, checked by [`WorkerBuilder::build`].
#[derive(Debug, Clone)]
struct Config {
    connector: Connector,
    name: String,
    queues: Vec<String>,
    max_in_flight: u32,
    min_backoff: Duration,
    max_backoff: Duration,
    shutdown_timeout: Option<Duration>,
    handshake_timeout: Duration,
    credentials: crate::Credentials,
    compression: Option<crate::CompressionEncoding>,
}

/// A configured worker, ready to [`spawn`](Worker::spawn).
pub struct Worker {
    config: Config,
    handler: Arc<dyn Handler>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts configuring a worker for `target` (a URL, a `SocketAddr` or a
    /// [`Channel`]).
    pub fn builder(target: impl Into<Target>) -> WorkerBuilder {
        WorkerBuilder {
            target: target.into(),
            name: None,
            queues: Vec::new(),
            max_in_flight: 1,
            handler: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            shutdown_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            tls: None,
            credentials: crate::Credentials::default(),
            compression: None,
        }
    }

    /// Starts the worker on the current tokio runtime. It connects, serves
    /// tasks and reconnects on its own until [`WorkerHandle::shutdown`] or
    /// [`WorkerHandle::abort`]. Dropping the handle leaves it running
    /// (detached), like `tokio::spawn`.
    pub fn spawn(self) -> WorkerHandle {
        let shutdown = CancellationToken::new();
        let hard = CancellationToken::new();
        let (session_tx, session_rx) = watch::channel(None);
        let runner = connection::Runner::new(
            self.config,
            self.handler,
            shutdown.clone(),
            hard.clone(),
            session_tx,
        );
        let task = tokio::spawn(runner.run());
        WorkerHandle {
            shutdown,
            hard,
            session: session_rx,
            task,
        }
    }
}

/// Configures a [`Worker`]; see [`Worker::builder`].
#[must_use = "a builder does nothing until built"]
pub struct WorkerBuilder {
    target: Target,
    name: Option<String>,
    queues: Vec<String>,
    max_in_flight: u32,
    handler: Option<Arc<dyn Handler>>,
    min_backoff: Duration,
    max_backoff: Duration,
    shutdown_timeout: Option<Duration>,
    handshake_timeout: Duration,
    tls: Option<crate::Tls>,
    credentials: crate::Credentials,
    compression: Option<crate::CompressionEncoding>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("target", &self.target)
            .field("name", &self.name)
            .field("queues", &self.queues)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Presents this API key (a worker key allowed on the worker's queues).
    pub fn api_key(self, key: &str) -> Result<Self, ClientError> {
        Ok(self.credentials(crate::Credentials::api_key(key)?))
    }

    /// Presents these credentials (see [`crate::Credentials`]).
    pub fn credentials(mut self, credentials: crate::Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Compresses results and progress with `encoding` and asks the gateway
    /// to compress tasks the same way (large, compressible payloads).
    pub fn compression(mut self, encoding: crate::CompressionEncoding) -> Self {
        self.compression = Some(encoding);
        self
    }

    /// TLS settings for an `https://` gateway (a private CA, a client
    /// certificate for mutual TLS).
    pub fn tls(mut self, tls: crate::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A name for people and the gateway's logs (default: host name and
    /// process id); need not be unique. At most [`MAX_WORKER_NAME_BYTES`]
    /// bytes, without control characters (the gateway refuses others).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a queue to serve.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// Adds several queues to serve.
    pub fn queues<I, Q>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        self.queues.extend(queues.into_iter().map(Into::into));
        self
    }

    /// Tasks run at once, 1 to 10000 (default 1). The gateway never has more
    /// than this many leases outstanding on one connection.
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The code that runs tasks.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Reconnect backoff bounds (default 100 ms to 5 s, jittered).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    /// A bound on [`WorkerHandle::shutdown`]: when it elapses the worker stops
    /// as by [`WorkerHandle::abort`] (default: none, the drain waits for every
    /// in-flight task and acknowledgement).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// How long connecting and the Hello/Welcome exchange may take before the
    /// attempt counts as failed (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Worker, ClientError> {
        let handler = self
            .handler
            .ok_or_else(|| ClientError::InvalidConfig("a worker needs a handler".into()))?;
        if self.queues.is_empty() {
            return Err(ClientError::InvalidConfig(
                "a worker needs at least one queue".into(),
            ));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.max_in_flight) {
            return Err(ClientError::InvalidConfig(format!(
                "max_in_flight must be 1 to {MAX_IN_FLIGHT_LIMIT}, not {}",
                self.max_in_flight
            )));
        }
        if let Some(name) = &self.name {
            // Checked here as the gateway does: refused at Hello, the worker
            // would only reconnect and be refused again.
            if name.len() > MAX_WORKER_NAME_BYTES || name.chars().any(char::is_control) {
                return Err(ClientError::InvalidConfig(format!(
                    "the worker name must be at most {MAX_WORKER_NAME_BYTES} bytes without control characters, not {name:?}"
                )));
            }
        }
        let connector = match self.target {
            Target::Url(url) => Connector::Endpoint(Box::new(crate::client::endpoint_with(
                url,
                self.tls.as_ref(),
            )?)),
            Target::Channel(channel) => Connector::Channel(channel),
        };
        let mut queues: Vec<String> = Vec::with_capacity(self.queues.len());
        for queue in self.queues {
            if !queues.contains(&queue) {
                queues.push(queue);
            }
        }
        Ok(Worker {
            config: Config {
                connector,
                name: self.name.unwrap_or_else(default_name),
                queues,
                max_in_flight: self.max_in_flight,
                min_backoff: self.min_backoff,
                max_backoff: self.max_backoff,
                shutdown_timeout: self.shutdown_timeout,
                handshake_timeout: self.handshake_timeout,
                credentials: self.credentials,
                compression: self.compression,
            },
            handler,
        })
    }
}

/// `host-pid`, so two workers on one machine are told apart in logs.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        // Room for the pid within the gateway's limit.
        .filter(|h| !h.is_empty() && h.len() <= 100 && !h.chars().any(char::is_control))
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Controls a running [`Worker`].
#[derive(Debug)]
pub struct WorkerHandle {
    /// Graceful stop: no new tasks, finish, deliver, close.
    shutdown: CancellationToken,
    /// Hard stop: kills the socket and every task's context at once.
    hard: CancellationToken,
    /// The session id of the current connection, `None` while disconnected.
    session: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Starts a graceful shutdown and returns at once (await
    /// [`WorkerHandle::join`]): take no new tasks, let in-flight handlers
    /// finish, send their results, wait for the gateway's acknowledgements,
    /// then close the connection. Tasks that arrive meanwhile are not run;
    /// the gateway requeues them when the connection closes.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Whether a graceful stop was asked for: by [`WorkerHandle::shutdown`],
    /// or by the gateway's operator (`Admin.DrainWorker`), after which the
    /// worker finishes its tasks and stops on its own.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Stops at once, like a crash: the connection is dropped without
    /// another byte (no result, no end-of-stream), every task's context is
    /// cancelled and the handlers are aborted. The gateway requeues the
    /// leases. Await [`WorkerHandle::join`] to know the worker is gone.
    pub fn abort(&self) {
        // The token first: it throws the socket's kill switch synchronously,
        // before the aborted task gets a chance to write anything.
        self.hard.cancel();
        self.task.abort();
    }

    /// Waits until the worker has stopped (after a shutdown or an abort).
    /// A panic inside the worker's loop is re-raised here.
    pub async fn join(self) {
        match self.task.await {
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            _ => {}
        }
    }

    /// Resolves once the worker has stopped, without consuming the handle
    /// (so a caller can still [`abort`](WorkerHandle::abort) while waiting).
    pub async fn stopped(&self) {
        let mut session = self.session.clone();
        // Fails once the worker's loop, which owns the sender, is gone.
        while session.changed().await.is_ok() {}
    }

    /// Resolves with the session id once the worker holds a connection on
    /// which a Welcome arrived (at once if it already does); `None` if the
    /// worker stopped first.
    pub async fn connected(&self) -> Option<String> {
        let mut session = self.session.clone();
        session
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|id| id.clone())
    }

    /// Resolves once the worker is connected with a session other than
    /// `previous` (after a gateway restart or a dropped connection); `None`
    /// if the worker stopped first.
    pub async fn next_session(&self, previous: &str) -> Option<String> {
        let mut session = self.session.clone();
        session
            .wait_for(|s| s.as_deref().is_some_and(|s| s != previous))
            .await
            .ok()
            .and_then(|id| id.clone())
    }

    /// The current session id; `None` while disconnected.
    pub fn session_id(&self) -> Option<String> {
        self.session.borrow().clone()
    }

    /// Whether the worker has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn noop() -> impl Handler {
        handler_fn(|_task: TaskContext| async { Ok(pb::Payload::default()) })
    }

    #[test]
    fn builder_checks_settings() {
        let err = |b: WorkerBuilder| b.build().err().map(|e| e.code());
        assert_eq!(
            err(Worker::builder("http://127.0.0.1:1").handler(noop())),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            err(Worker::builder("http://127.0.0.1:1").queue("q")),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            err(Worker::builder("http://127.0.0.1:1")
                .queue("q")
                .handler(noop())
                .max_in_flight(0)),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            err(Worker::builder("ftp://x:1").queue("q").handler(noop())),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            err(Worker::builder("http://x:1")
                .queue("q")
                .handler(noop())
                .tls(crate::Tls::default())),
            Some(tonic::Code::InvalidArgument),
            "TLS settings need an https:// URL"
        );
        for name in ["a\nb".to_owned(), "x".repeat(MAX_WORKER_NAME_BYTES + 1)] {
            assert_eq!(
                err(Worker::builder("http://127.0.0.1:1")
                    .queue("q")
                    .handler(noop())
                    .name(name)),
                Some(tonic::Code::InvalidArgument)
            );
        }
        let worker = Worker::builder("127.0.0.1:1")
            .queues(["a", "b"])
            .queue("c")
            .handler(noop())
            .build();
        assert!(
            worker.is_ok_and(|w| w.config.queues == ["a", "b", "c"] && !w.config.name.is_empty())
        );
    }
}
