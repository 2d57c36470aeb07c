//! Server settings: clap flags with environment variables, validated into a
//! plain `Config` before any port is bound. Tests build `Config` in code.
//!
//! This file holds the settings types; the flags are declared in
//! `config/flags.rs`, read (with `--config FILE` merged in by
//! `config/file.rs`) in `config/args.rs`, checked in `config/validate.rs`;
//! durations and sizes are parsed in `config/units.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::EngineConfig;

mod args;
mod file;
mod flags;
mod units;
mod validate;

pub use args::{Parsed, parse_args};
pub use flags::Cli;
pub use units::{
    DURATION_FORMS, SIZE_FORMS, format_size, parse_duration, parse_size, parse_size_usize,
};
pub use validate::{QueueLimitsSetting, parse_queue_limits};

/// The default durable store file.
pub const DEFAULT_STORE: &str = "./data/asyncgate.redb";

/// Where tickets are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In process memory: fast, lost on exit.
    Memory,
    /// The embedded durable store (redb) in this file.
    Durable(PathBuf),
    /// A Redis shared by every replica: `redis://`, `rediss://`, or
    /// `redis+cluster://` seed nodes.
    Redis(String),
}

/// Never shows a Redis URL's password (the config is logged at startup).
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Durable(path) => f.debug_tuple("Durable").field(path).finish(),
            Self::Redis(url) => f.debug_tuple("Redis").field(&hide_password(url)).finish(),
        }
    }
}

impl StoreConfig {
    /// Reads a `--store` value: `memory`, a `redis://` URL, or the path of
    /// the durable store.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "" => Err("--store is empty; use `memory`, a file path or a redis:// URL".into()),
            "memory" => Ok(Self::Memory),
            url if url.starts_with("redis") && url.contains("://") => {
                crate::engine::redis::check_url(url).map_err(|e| format!("--store {e}"))?;
                Ok(Self::Redis(url.to_owned()))
            }
            path => Ok(Self::Durable(PathBuf::from(path))),
        }
    }
}

/// The gateway's TLS files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Its certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// When set, clients and workers must present a certificate signed by
    /// this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere; over
    /// TLS when `tls` is set.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve metrics without a key even when `keys` is set (by default a
    /// scrape then needs an admin key: queue and tenant names are in it).
    pub metrics_public: bool,
    /// Distinct queues the metrics name; later queues are counted under
    /// `queue="_other"`, so callers that mint queue names cannot grow the
    /// exposition (and the gateway's memory) without bound.
    pub metrics_max_queues: usize,
    /// Also serve grpc-web (HTTP/1.1 and browsers).
    pub grpc_web: bool,
    /// Serve the web dashboard at `/dashboard/`; implies `grpc_web`, which
    /// the page calls.
    pub dashboard: bool,
    /// Origins browsers may call from (CORS); `*` admits any.
    pub cors_allow_origins: Vec<String>,
    /// Request headers browsers may send beside the default allow-list
    /// (CORS), lowercase.
    pub cors_allow_headers: Vec<String>,
    /// Ticket store.
    pub store: StoreConfig,
    /// TLS, or plaintext when `None`.
    pub tls: Option<TlsFiles>,
    /// Plaintext on a non-loopback address (gRPC or metrics) was asked for
    /// explicitly.
    pub insecure: bool,
    /// The API keys file; `None` lets every caller do everything.
    pub keys: Option<PathBuf>,
    /// Concurrent HTTP/2 streams one connection may open.
    pub max_streams_per_connection: u32,
    /// Watch streams one ticket may have.
    pub max_watchers_per_ticket: usize,
    /// Requests in progress across the gateway before it sheds load.
    pub max_requests_in_progress: usize,
    /// Health calls (they need no key) open at once.
    pub max_health_calls: usize,
    /// How long a request's body may take to arrive (all calls but a
    /// worker's Connect stream).
    pub request_read_timeout: Duration,
    /// A connection with no open call for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How often the server pings each HTTP/2 connection.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// Prefix of every Redis key and channel (several deployments can share
    /// one Redis under different prefixes).
    pub redis_prefix: String,
    /// Certificates for `rediss://`.
    pub redis_tls: crate::engine::redis::RedisTls,
    /// How long a worker session's leases survive without a heartbeat, at
    /// the engine level (the backstop behind the session's own liveness check).
    pub lease_ttl: Duration,
    /// How often the gateway pings workers; a worker that misses two pings in
    /// a row is dead.
    pub heartbeat_interval: Duration,
    /// max_attempts when a submit leaves it unset.
    pub default_max_attempts: u32,
    /// The largest max_attempts a submit may ask for.
    pub max_attempts_limit: u32,
    /// Engine settings: backoff, retention, caps.
    pub engine: EngineConfig,
    /// Largest payload (request, result, output chunk), in bytes.
    pub max_payload_bytes: usize,
    /// Longest long-poll `wait` honoured.
    pub max_wait: Duration,
    /// Keepalive cadence on idle watch streams.
    pub watch_keepalive: Duration,
    /// How long shutdown waits for workers to finish in-flight tasks.
    pub shutdown_grace: Duration,
    /// How often timers (deadlines, backoff, leases, retention) are checked.
    pub timer_tick: Duration,
    /// Queue limits set at start (`--queue-limits`, `[queues.NAME]`).
    pub queue_limits: Vec<QueueLimitsSetting>,
    /// Target queues the gateway works itself (`--target`).
    pub targets: Vec<crate::targets::TargetSetting>,
    /// Schedules one tenant may keep (`--max-schedules-per-tenant`).
    pub max_schedules_per_tenant: u64,
    /// Completion callbacks (`--callback-*`).
    pub callbacks: crate::callbacks::CallbackSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: None,
            metrics_public: false,
            metrics_max_queues: crate::metrics::MAX_QUEUE_LABELS,
            grpc_web: false,
            dashboard: false,
            cors_allow_origins: Vec::new(),
            cors_allow_headers: Vec::new(),
            store: StoreConfig::Durable(PathBuf::from(DEFAULT_STORE)),
            tls: None,
            insecure: false,
            keys: None,
            max_streams_per_connection: 4096,
            max_watchers_per_ticket: 16_384,
            max_requests_in_progress: 20_000,
            max_health_calls: 1024,
            request_read_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            redis_prefix: "asyncgate".into(),
            redis_tls: Default::default(),
            lease_ttl: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            default_max_attempts: 3,
            max_attempts_limit: 100,
            engine: EngineConfig::default(),
            max_payload_bytes: 4 * 1024 * 1024,
            max_wait: Duration::from_secs(50),
            watch_keepalive: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
            timer_tick: Duration::from_millis(20),
            queue_limits: Vec::new(),
            targets: Vec::new(),
            max_schedules_per_tenant: 1_000,
            callbacks: crate::callbacks::CallbackSettings::default(),
        }
    }
}

/// A URL with its password (if any) replaced, for printing; also for error
/// texts that may quote one.
pub(crate) fn hide_password(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &text[..scheme], &text[at..])
        }
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
