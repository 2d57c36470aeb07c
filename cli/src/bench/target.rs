//! What a bench run talks to: the gateway (started in-process or already
//! running), its HTTP/2 connections, the bench's own workers, and RSS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use asyncgate_client::pb;
use asyncgate_client::pb::admin_client::AdminClient;
use asyncgate_client::pb::gateway_client::GatewayClient;
use asyncgate_client::worker::{TaskContext, TaskError, Worker, WorkerHandle, handler_fn};
use asyncgate_client::{Credentials, Tls, Transport};
use asyncgate_server::config::StoreConfig;
use asyncgate_server::testing::RedisServer;
use std::sync::OnceLock;
use tokio::net::TcpListener;
use tonic::transport::Channel;

use super::args::{Settings, TargetSpec};

/// Largest message the bench's clients and servers accept: above any payload
/// the gateway takes (4 MiB by default) plus the ticket around it.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How long an embedded gateway may take to shut down before the bench
/// moves on without it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// Durable store files the bench created and has not deleted yet; removed on
/// Ctrl-C too.
static CREATED_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Deletes a durable store: its file and the write-ahead log beside it
/// (`PATH-wal`).
fn remove_file(path: &Path) {
    let mut log = path.as_os_str().to_owned();
    log.push("-wal");
    for file in [path, Path::new(&log)] {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => eprintln!("warning: cannot delete {}: {error}", file.display()),
        }
    }
    CREATED_FILES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| p != path);
}

/// Deletes every store file the bench created (after Ctrl-C).
pub(crate) fn remove_created_files() {
    let files = std::mem::take(&mut *CREATED_FILES.lock().unwrap_or_else(|p| p.into_inner()));
    for file in files {
        remove_file(&file);
    }
}

/// Whose memory a run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RssSource {
    /// This process: the embedded gateway plus the bench's clients and workers.
    SelfProcess,
    /// `--server-pid`.
    Pid(u32),
    /// Nothing to measure.
    None,
}

impl RssSource {
    pub(crate) fn for_settings(settings: &Settings) -> RssSource {
        if settings.embedded {
            RssSource::SelfProcess
        } else if let Some(pid) = settings.server_pid {
            RssSource::Pid(pid)
        } else {
            RssSource::None
        }
    }

    /// VmRSS in bytes, from /proc.
    pub(crate) fn read(self) -> Option<u64> {
        let path = match self {
            RssSource::SelfProcess => "/proc/self/status".to_owned(),
            RssSource::Pid(pid) => format!("/proc/{pid}/status"),
            RssSource::None => return None,
        };
        let status = std::fs::read_to_string(path).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    }

    /// CPU time (user + system, all threads) the process has used, from
    /// `/proc/PID/stat` (clock ticks of 1/100 s, Linux's USER_HZ).
    pub(crate) fn cpu(self) -> Option<std::time::Duration> {
        let path = match self {
            RssSource::SelfProcess => "/proc/self/stat".to_owned(),
            RssSource::Pid(pid) => format!("/proc/{pid}/stat"),
            RssSource::None => return None,
        };
        let stat = std::fs::read_to_string(path).ok()?;
        // Fields after the command (which may hold spaces), from `state`.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(std::time::Duration::from_millis(ticks * 10))
    }

    /// What the numbers mean, for reports.
    pub(crate) fn label(self) -> Option<String> {
        match self {
            RssSource::SelfProcess => Some("process RSS incl. client (embedded gateway)".into()),
            RssSource::Pid(pid) => Some(format!("RSS of pid {pid}")),
            RssSource::None => None,
        }
    }
}

/// A gateway (or several replicas of one) for one run.
pub(crate) struct Gateway {
    /// The first replica.
    pub(crate) url: String,
    /// Every replica (clients and workers are spread over them).
    pub(crate) urls: Vec<String>,
    pub(crate) store: String,
    pub(crate) rss: RssSource,
    running: Vec<asyncgate_server::Running>,
    file: Option<PathBuf>,
    /// A redis-server the bench started for this run.
    redis: Option<RedisServer>,
}

impl Gateway {
    /// Starts an embedded gateway (fresh listener, fresh store) or names the
    /// remote one.
    pub(crate) async fn open(target: &TargetSpec, settings: &Settings) -> anyhow::Result<Gateway> {
        Self::open_with_targets(target, settings, Vec::new()).await
    }

    /// [`Gateway::open`] for an embedded gateway that works `targets`
    /// itself (`--target`); a remote or Redis gateway cannot be given them.
    pub(crate) async fn open_with_targets(
        target: &TargetSpec,
        settings: &Settings,
        targets: Vec<asyncgate_server::targets::TargetSetting>,
    ) -> anyhow::Result<Gateway> {
        if !targets.is_empty() && !matches!(target, TargetSpec::Memory | TargetSpec::Durable(_)) {
            bail!(
                "--mode target runs an embedded gateway on the memory or durable store (it configures the target itself)"
            );
        }
        let rss = RssSource::for_settings(settings);
        let store = target.label();
        let (store_config, file) = match target {
            TargetSpec::Remote(url) => {
                return Ok(Gateway {
                    url: url.clone(),
                    urls: vec![url.clone()],
                    store,
                    rss,
                    running: Vec::new(),
                    file: None,
                    redis: None,
                });
            }
            TargetSpec::Redis { url, replicas } => {
                return Self::open_replicas(url.as_deref(), *replicas, store, rss).await;
            }
            TargetSpec::Memory => (StoreConfig::Memory, None),
            TargetSpec::Durable(path) => {
                if path.exists() {
                    bail!(
                        "--embedded {}: the file exists; the bench needs a fresh store file (it deletes it afterwards)",
                        path.display()
                    );
                }
                CREATED_FILES
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(path.clone());
                (StoreConfig::Durable(path.clone()), Some(path.clone()))
            }
        };
        let listener = listen_loopback().context("binding the embedded gateway on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let config = asyncgate_server::Config {
            listen: addr,
            store: store_config,
            targets,
            callbacks: if settings.mode == super::args::Mode::Callbacks {
                super::callbacks::settings()
            } else {
                Default::default()
            },
            ..asyncgate_server::Config::default()
        };
        let running = match asyncgate_server::start_on(config, listener).await {
            Ok(running) => running,
            Err(error) => {
                if let Some(file) = &file {
                    remove_file(file);
                }
                return Err(error).context("starting the embedded gateway");
            }
        };
        Ok(Gateway {
            url: format!("http://{addr}"),
            urls: vec![format!("http://{addr}")],
            store,
            rss,
            running: vec![running],
            file,
            redis: None,
        })
    }

    /// Starts `replicas` gateways on one Redis (started here when `url` is
    /// `None`), under a key prefix of their own.
    async fn open_replicas(
        url: Option<&str>,
        replicas: usize,
        store: String,
        rss: RssSource,
    ) -> anyhow::Result<Gateway> {
        let redis = match url {
            Some(_) => None,
            None => Some(RedisServer::start().context("starting redis-server for the bench")?),
        };
        let redis_url = match (&redis, url) {
            (Some(server), _) => server.url(),
            (None, Some(url)) => url.to_owned(),
            (None, None) => unreachable!("a Redis was started when no URL was given"),
        };
        let prefix = format!("bench-{}", uuid::Uuid::now_v7().simple());
        let mut gateway = Gateway {
            url: String::new(),
            urls: Vec::new(),
            store,
            rss,
            running: Vec::new(),
            file: None,
            redis,
        };
        for _ in 0..replicas {
            let listener =
                listen_loopback().context("binding an embedded gateway on 127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let config = asyncgate_server::Config {
                listen: addr,
                store: StoreConfig::Redis(redis_url.clone()),
                redis_prefix: prefix.clone(),
                ..asyncgate_server::Config::default()
            };
            match asyncgate_server::start_on(config, listener).await {
                Ok(running) => {
                    gateway.running.push(running);
                    gateway.urls.push(format!("http://{addr}"));
                }
                Err(error) => {
                    gateway.close().await;
                    return Err(error).context("starting an embedded gateway on Redis");
                }
            }
        }
        gateway.url = gateway.urls[0].clone();
        Ok(gateway)
    }

    /// The redis-server this run started, to measure alongside the gateway.
    pub(crate) fn redis_probe(&self) -> Option<super::redis_probe::RedisProbe> {
        let server = self.redis.as_ref()?;
        Some(super::redis_probe::RedisProbe {
            pid: server.pid()?,
            aof_dir: server.dir().join("appendonlydir"),
        })
    }

    /// Shuts an embedded gateway down (its workers should be gone already)
    /// and deletes its store file.
    pub(crate) async fn close(self) {
        let stopped = self.running.into_iter().map(|running| async move {
            match tokio::time::timeout(SHUTDOWN_WAIT, running.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("warning: the embedded gateway failed: {error}"),
                Err(_) => eprintln!(
                    "warning: the embedded gateway did not shut down within {SHUTDOWN_WAIT:?}"
                ),
            }
        });
        futures::future::join_all(stopped).await;
        drop(self.redis);
        if let Some(file) = &self.file {
            remove_file(file);
        }
    }
}

/// Accept queue of the embedded gateway's listener: room for a thousand
/// workers connecting at once (tokio's default of 1024 overflows then, and
/// the kernel resets some of the connections).
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on a fresh 127.0.0.1 port.
fn listen_loopback() -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(LISTEN_BACKLOG)
}

/// `n` separate HTTP/2 connections to `url`.
pub(crate) async fn connect(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    connect_all(std::slice::from_ref(&url.to_owned()), n).await
}

/// `n` separate HTTP/2 connections, round-robin over `urls` (at least one
/// per URL).
pub(crate) async fn connect_all(urls: &[String], n: usize) -> anyhow::Result<Vec<Channel>> {
    let n = n.max(urls.len());
    let mut channels = Vec::with_capacity(n);
    for i in 0..n {
        let url = &urls[i % urls.len()];
        let tls = access()
            .tls
            .as_ref()
            .filter(|_| url.starts_with("https://"));
        let endpoint = asyncgate_client::endpoint_with(url.as_str(), tls)?;
        channels.push(
            asyncgate_client::transport::connect(&endpoint)
                .await
                .with_context(|| format!("connecting to {url}"))?,
        );
    }
    Ok(channels)
}

/// How the bench reaches a remote gateway: the CLI's TLS settings (used for
/// `https://` URLs) and API key. Set once at start; embedded gateways run
/// without TLS or keys, so these do not change anything for them.
#[derive(Default)]
pub(crate) struct Access {
    pub(crate) tls: Option<Tls>,
    pub(crate) credentials: Credentials,
    pub(crate) compression: Option<asyncgate_client::CompressionEncoding>,
}

static ACCESS: OnceLock<Access> = OnceLock::new();

/// Records the CLI's TLS settings and API key for this run.
pub(crate) fn set_access(access: Access) {
    let _ = ACCESS.set(access);
}

fn access() -> &'static Access {
    ACCESS.get_or_init(Access::default)
}

/// A raw gateway client (no SDK resume logic) without message size limits
/// that a large payload could hit.
pub(crate) fn gateway_client(channel: &Channel) -> GatewayClient<Transport> {
    let client = GatewayClient::with_interceptor(channel.clone(), access().credentials.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    match compression() {
        Some(encoding) => client.send_compressed(encoding).accept_compressed(encoding),
        None => client,
    }
}

/// A raw admin client with the run's credentials.
pub(crate) fn admin_client(channel: &Channel) -> AdminClient<Transport> {
    AdminClient::with_interceptor(channel.clone(), access().credentials.clone())
        .max_decoding_message_size(MAX_MESSAGE)
}

/// The CLI's `--compression`, applied to every call of the run (the echo
/// baseline's too, so the ratio compares like with like).
pub(crate) fn compression() -> Option<asyncgate_client::CompressionEncoding> {
    access().compression
}

/// A fresh queue name per run, so runs (and earlier runs on a remote
/// gateway) never share tickets.
pub(crate) fn fresh_queue(mode: &str) -> String {
    format!("bench-{mode}-{}", uuid::Uuid::now_v7().simple())
}

/// The request every load sends: `payload` as binary, no metadata.
pub(crate) fn submit_request(queue: &str, payload: bytes::Bytes) -> pb::SubmitRequest {
    pb::SubmitRequest {
        queue: queue.to_owned(),
        payload: Some(asyncgate_client::payload::binary(payload, "")),
        ..Default::default()
    }
}

/// Called with the worker's index and the task, for every task, before it
/// is answered.
pub(crate) type OnTask = Arc<dyn Fn(usize, &TaskContext) + Send + Sync>;

/// Workers that hold each task a while, counting how many they run at
/// once (for a concurrency limit seen from the workers).
#[derive(Clone)]
pub(crate) struct Hold {
    /// How long each task is held.
    pub(crate) time: Duration,
    /// Tasks running now, over all workers.
    pub(crate) running: Arc<std::sync::atomic::AtomicU64>,
    /// The most that ever ran at once.
    pub(crate) peak: Arc<std::sync::atomic::AtomicU64>,
}

impl Hold {
    async fn run(&self) {
        use std::sync::atomic::Ordering;
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.time).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The bench's workers: each returns the task's payload unchanged.
pub(crate) struct Fleet {
    handles: Vec<WorkerHandle>,
}

impl Fleet {
    /// Starts `n` workers on `queue` (one connection each, round-robin over
    /// `urls`) and waits until all of them are connected, at most `limit`.
    pub(crate) async fn start(
        urls: &[String],
        queue: &str,
        n: usize,
        max_in_flight: u32,
        on_task: Option<OnTask>,
        limit: Duration,
    ) -> anyhow::Result<Fleet> {
        Self::start_holding(urls, queue, n, max_in_flight, on_task, None, limit).await
    }

    /// [`Self::start`], with workers that hold each task (`hold`).
    pub(crate) async fn start_holding(
        urls: &[String],
        queue: &str,
        n: usize,
        max_in_flight: u32,
        on_task: Option<OnTask>,
        hold: Option<Hold>,
        limit: Duration,
    ) -> anyhow::Result<Fleet> {
        let mut handles = Vec::with_capacity(n);
        for index in 0..n {
            let on_task = on_task.clone();
            let hold = hold.clone();
            let handler = handler_fn(move |task: TaskContext| {
                if let Some(on_task) = &on_task {
                    on_task(index, &task);
                }
                let hold = hold.clone();
                async move {
                    if let Some(hold) = hold {
                        hold.run().await;
                    }
                    // `Payload` holds `Bytes`: this clone shares the buffer.
                    Ok::<_, TaskError>(task.payload().clone())
                }
            });
            let url = urls[index % urls.len()].as_str();
            let mut builder = Worker::builder(url);
            if let Some(tls) = access()
                .tls
                .as_ref()
                .filter(|_| url.starts_with("https://"))
            {
                builder = builder.tls(tls.clone());
            }
            if let Some(encoding) = compression() {
                builder = builder.compression(encoding);
            }
            let worker = builder
                .credentials(access().credentials.clone())
                .name(format!("bench-{index}"))
                .queue(queue)
                .max_in_flight(max_in_flight)
                .handler(handler)
                .shutdown_timeout(Duration::from_secs(5))
                .build()?;
            handles.push(worker.spawn());
        }
        let fleet = Fleet { handles };
        let connected = futures::future::join_all(fleet.handles.iter().map(|h| h.connected()));
        match tokio::time::timeout(limit, connected).await {
            Ok(sessions) if sessions.iter().all(Option::is_some) => Ok(fleet),
            Ok(_) => {
                fleet.stop().await;
                bail!(
                    "a bench worker stopped before it connected to {}",
                    urls.join(", ")
                )
            }
            Err(_) => {
                let missing = fleet
                    .handles
                    .iter()
                    .filter(|h| h.session_id().is_none())
                    .count();
                fleet.stop().await;
                bail!(
                    "{missing} of {n} bench workers did not connect to {} within {limit:?}",
                    urls.join(", ")
                )
            }
        }
    }

    /// Drains every worker (bounded), then aborts any that are left.
    pub(crate) async fn stop(self) {
        for handle in &self.handles {
            handle.shutdown();
        }
        let stopped = futures::future::join_all(self.handles.iter().map(|h| h.stopped()));
        if tokio::time::timeout(Duration::from_secs(15), stopped)
            .await
            .is_err()
        {
            eprintln!("warning: some bench workers did not stop within 15s; aborting them");
            for handle in &self.handles {
                handle.abort();
            }
        }
        futures::future::join_all(self.handles.into_iter().map(WorkerHandle::join)).await;
    }
}
