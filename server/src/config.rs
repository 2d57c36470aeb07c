//! Server settings: clap flags with environment variables, validated into a
//! plain `Config` before any port is bound. Tests build `Config` in code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::domain::backoff::Backoff;
use crate::engine::EngineConfig;

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: None,
            metrics_public: false,
            metrics_max_queues: crate::metrics::MAX_QUEUE_LABELS,
            grpc_web: false,
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
        }
    }
}

/// The forms a duration accepts, for error messages and help.
pub const DURATION_FORMS: &str = "a number and a unit, ms, s, m, h or d (also us, ns), with no space, a fraction allowed, parts added up: e.g. 500ms, 1.5s, 2m, 1h30m, 7d";

/// Reads a duration in the one canonical form, the way the gateway prints
/// them: one or more `NUMBER UNIT` parts with no space, units `ns`, `us`,
/// `ms`, `s`, `m` (minutes), `h`, `d`, a decimal fraction allowed
/// (`1.5s`), parts added up (`1h30m`). A unit is required: a bare `10`
/// could mean seconds or milliseconds. humantime's lenient spellings
/// (`5 seconds`, `1min`, `2days`, and `1M`, which it reads as a *month*)
/// are refused rather than guessed at.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_canonical_duration(text.trim())
        .ok_or_else(|| format!("{:?} is not a duration; use {DURATION_FORMS}", text.trim()))
}

fn parse_canonical_duration(text: &str) -> Option<Duration> {
    const UNITS: [(&str, u128); 7] = [
        ("ns", 1),
        ("us", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
        ("d", 86_400_000_000_000),
    ];
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let factor = UNITS.iter().find(|(name, _)| *name == unit)?.1;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
            return None;
        }
        if !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let whole: u128 = whole.parse().ok()?;
        // Fraction digits past nanoseconds are dropped (at most 18 kept,
        // so the arithmetic cannot overflow).
        let kept = &fraction[..fraction.len().min(18)];
        let scale = 10u128.pow(kept.len() as u32);
        let fraction: u128 = if kept.is_empty() {
            0
        } else {
            kept.parse().ok()?
        };
        nanos = nanos
            .checked_add(whole.checked_mul(factor)?)?
            .checked_add(fraction * factor / scale)?;
        rest = tail;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// The forms a size accepts, for error messages and help.
pub const SIZE_FORMS: &str = "bytes (4194304) or a number and a unit: KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000), e.g. 4MiB, \"64 KiB\", 1.5GiB";

/// Reads a size in bytes: a plain integer is bytes; a number with a unit
/// is scaled by it, with `bytesize`'s rules: binary units (`KiB`, `MiB`,
/// `GiB`, `TiB`; also `Ki`, `Mi`, ...) are powers of 1024, decimal ones
/// (`KB`, `MB`, `GB`, `TB`; also `K`, `M`, ...) powers of 1000, any case,
/// a space allowed before the unit, a fraction allowed (rounded down to
/// whole bytes). So `4MiB` is 4,194,304 bytes and `4MB` 4,000,000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    // bytesize saturates a product past u64::MAX; a size that large is a
    // typo, not a request for "unlimited".
    match text.parse::<bytesize::ByteSize>() {
        Ok(size) if size.0 < u64::MAX && !text.starts_with(['-', '+']) => Ok(size.0),
        _ => Err(format!("{text:?} is not a size; use {SIZE_FORMS}")),
    }
}

/// [`parse_size`] for a size held in a `usize`.
pub fn parse_size_usize(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    usize::try_from(size).map_err(|_| format!("{text:?} is too large for this machine"))
}

/// A size as [`parse_size`] reads it back exactly: in the largest binary
/// unit that divides it (`4MiB`), else in bytes.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    UNITS
        .iter()
        .find(|(factor, _)| bytes != 0 && bytes.is_multiple_of(*factor))
        .map_or_else(
            || bytes.to_string(),
            |(factor, unit)| format!("{}{unit}", bytes / factor),
        )
}

/// Command-line flags of `asyncgate-server`; every flag also reads an
/// `ASYNCGATE_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "asyncgate-server",
    version,
    about = "Asyncgate: durable async request/reply for gRPC"
)]
pub struct Cli {
    /// A TOML file of settings: keys are these flags without the dashes
    /// (`listen = "0.0.0.0:50051"`, `result-retention = "7d"`). Flags
    /// override environment variables, which override the file.
    #[arg(long, env = "ASYNCGATE_CONFIG", value_name = "TOML")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (and where each came from) as TOML and
    /// exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address to listen on.
    #[arg(long, env = "ASYNCGATE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (off unless given);
    /// `https://` with the gateway's --tls-cert and --tls-key (and its
    /// --tls-client-ca) when it serves TLS.
    #[arg(long, env = "ASYNCGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve metrics without a key even when --keys is set; without this
    /// flag a scrape then needs `authorization: Bearer <admin key>`.
    #[arg(long, env = "ASYNCGATE_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Distinct queues the metrics label by name; later queues are summed
    /// under `queue="_other"`.
    #[arg(
        long,
        env = "ASYNCGATE_METRICS_MAX_QUEUES",
        default_value_t = crate::metrics::MAX_QUEUE_LABELS
    )]
    pub metrics_max_queues: usize,
    /// Also serve grpc-web on the same port (HTTP/1.1 too), so browser apps
    /// can call the gateway without a proxy.
    #[arg(long, env = "ASYNCGATE_GRPC_WEB")]
    pub grpc_web: bool,
    /// A web origin (`https://app.example.com`) whose pages may call the
    /// gateway through grpc-web (CORS); repeat for several, `*` for any.
    #[arg(
        long = "cors-allow-origin",
        env = "ASYNCGATE_CORS_ALLOW_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ',',
        requires = "grpc_web"
    )]
    pub cors_allow_origins: Vec<String>,
    /// A request header that pages may send beside the default allow-list
    /// (content-type, authorization, the gRPC-Web and Connect headers, trace
    /// context); repeat for several.
    #[arg(
        long = "cors-allow-header",
        env = "ASYNCGATE_CORS_ALLOW_HEADER",
        value_name = "NAME",
        value_delimiter = ',',
        requires = "grpc_web"
    )]
    pub cors_allow_headers: Vec<String>,
    /// Log lines as `text` or `json` (one object per line).
    #[arg(long, env = "ASYNCGATE_LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
    /// Export spans to this OpenTelemetry collector's base URL (e.g.
    /// `http://127.0.0.1:4317`; over http/protobuf `/v1/traces` is
    /// appended); overrides OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT. Needs a
    /// build with `--features otel`.
    #[arg(long, env = "ASYNCGATE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The OTLP transport, `grpc` (default) or `http/protobuf`; overrides
    /// OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL.
    #[arg(
        long,
        env = "ASYNCGATE_OTLP_PROTOCOL",
        value_enum,
        value_name = "PROTOCOL"
    )]
    pub otlp_protocol: Option<crate::telemetry::otlp::OtlpProtocol>,
    /// Serve TLS with this certificate chain (PEM).
    #[arg(
        long,
        env = "ASYNCGATE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "ASYNCGATE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require clients and workers to present a certificate signed by this
    /// CA (PEM): mutual TLS.
    #[arg(
        long,
        env = "ASYNCGATE_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Allow plaintext (no --tls-cert) on a non-loopback --listen or
    /// --metrics-listen address: traffic, API keys included, crosses the
    /// network readable (a warning is logged).
    #[arg(long, env = "ASYNCGATE_INSECURE")]
    pub insecure: bool,
    /// API keys (TOML: name, sha256, role, tenant, queues); reloaded on
    /// SIGHUP. Without it every caller may do everything.
    #[arg(long, env = "ASYNCGATE_KEYS", value_name = "TOML")]
    pub keys: Option<PathBuf>,
    /// Concurrent streams (calls) one HTTP/2 connection may have open.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 4096
    )]
    pub max_streams_per_connection: u32,
    /// Watchers (WatchTicket streams) one ticket may have.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_WATCHERS_PER_TICKET",
        default_value_t = 16_384
    )]
    pub max_watchers_per_ticket: usize,
    /// Calls open at once, streams included (a watch or a worker's stream
    /// counts until it ends), before the gateway answers UNAVAILABLE.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_REQUESTS_IN_PROGRESS",
        default_value_t = 20_000
    )]
    pub max_requests_in_progress: usize,
    /// Health calls open at once (they need no key, so they have a budget of
    /// their own); past it they get UNAVAILABLE.
    #[arg(long, env = "ASYNCGATE_MAX_HEALTH_CALLS", default_value_t = 1024)]
    pub max_health_calls: usize,
    /// How long a request may take to arrive whole (every call but a
    /// worker's Connect stream); past it the call ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "ASYNCGATE_REQUEST_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_read_timeout: Duration,
    /// Close a connection that has had no call open for this long (`0s`:
    /// never). Clients reconnect by themselves when they next call.
    #[arg(long, env = "ASYNCGATE_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Ping each HTTP/2 connection this often to find dead peers.
    #[arg(long, env = "ASYNCGATE_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// Drop a connection whose peer leaves a ping unanswered this long.
    #[arg(long, env = "ASYNCGATE_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// Ticket store: a file path for the embedded durable store (created if
    /// missing), or `memory` for a fast store that is lost on exit.
    /// `redis://HOST:PORT/DB` (or `rediss://` for TLS) shares the tickets of
    /// several replicas in one Redis; `redis+cluster://HOST:PORT,HOST:PORT`
    /// in a Redis Cluster.
    #[arg(long, env = "ASYNCGATE_STORE", default_value = DEFAULT_STORE)]
    pub store: String,
    /// Prefix of every Redis key and channel (Redis store only).
    #[arg(long, env = "ASYNCGATE_REDIS_PREFIX", default_value = "asyncgate")]
    pub redis_prefix: String,
    /// CA certificate (PEM) that signed the Redis server's certificate, for
    /// `rediss://` when the system roots do not cover it.
    #[arg(long, env = "ASYNCGATE_REDIS_CA", value_name = "PEM")]
    pub redis_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a Redis that requires one.
    #[arg(
        long,
        env = "ASYNCGATE_REDIS_CERT",
        value_name = "PEM",
        requires = "redis_key"
    )]
    pub redis_cert: Option<PathBuf>,
    /// Key (PEM) of --redis-cert.
    #[arg(
        long,
        env = "ASYNCGATE_REDIS_KEY",
        value_name = "PEM",
        requires = "redis_cert"
    )]
    pub redis_key: Option<PathBuf>,
    /// Engine-level lease TTL, renewed by heartbeats.
    #[arg(long, env = "ASYNCGATE_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// Interval of worker pings; two missed pings lose the worker's leases.
    #[arg(long, env = "ASYNCGATE_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// max_attempts for submits that leave it unset.
    #[arg(long, env = "ASYNCGATE_DEFAULT_MAX_ATTEMPTS", default_value_t = 3)]
    pub default_max_attempts: u32,
    /// The largest max_attempts a submit may ask for.
    #[arg(long, env = "ASYNCGATE_MAX_ATTEMPTS_LIMIT", default_value_t = 100)]
    pub max_attempts_limit: u32,
    /// Attempts that may end in a lost worker before a ticket is FAILED.
    #[arg(long, env = "ASYNCGATE_MAX_WORKER_LOSSES", default_value_t = 3)]
    pub max_worker_losses: u32,
    /// Ceiling of the first retry delay; it doubles per attempt up to
    /// --backoff-cap, and each delay is uniform in [ceiling/2, ceiling].
    #[arg(long, env = "ASYNCGATE_BACKOFF_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "ASYNCGATE_BACKOFF_CAP", default_value = "60s", value_parser = parse_duration)]
    pub backoff_cap: Duration,
    /// How long finished tickets and their results are kept.
    #[arg(long, env = "ASYNCGATE_RESULT_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub result_retention: Duration,
    /// Largest payload (request, result, output chunk): bytes, or a size
    /// with a unit such as 4MiB (MiB = 1024 KiB; MB = 1000 KB).
    #[arg(
        long,
        env = "ASYNCGATE_MAX_PAYLOAD_BYTES",
        default_value = "4MiB",
        value_name = "SIZE",
        value_parser = parse_size_usize
    )]
    pub max_payload_bytes: usize,
    /// Pending tickets per queue before submits get RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_PENDING_PER_QUEUE",
        default_value_t = 1_000_000
    )]
    pub max_pending_per_queue: usize,
    /// Bytes of request bodies and metadata that pending and running
    /// tickets may hold in all, across every queue and tenant; a submit past
    /// it gets RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_PENDING_BYTES",
        default_value = "2GiB",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub max_pending_bytes: u64,
    /// Bytes of partial output (progress chunks) one ticket may store; a
    /// chunk past it gets RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_OUTPUT_BYTES_PER_TICKET",
        default_value = "64MiB",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub max_output_bytes_per_ticket: u64,
    /// Bytes of partial output the gateway holds in memory across every
    /// ticket (the memory store keeps chunks until the result retention;
    /// the durable store only while their tickets run); a chunk past it is
    /// refused.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_OUTPUT_BYTES",
        default_value = "1GiB",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub max_output_bytes: u64,
    /// Durable store: hand workers only tickets whose submit is on disk (a
    /// crash then never forgets a ticket whose task already ran), at the
    /// cost of one more commit on the path of a ticket dispatched the moment
    /// it arrives.
    #[arg(long, env = "ASYNCGATE_DISPATCH_STORED_ONLY")]
    pub dispatch_stored_only: bool,
    /// Longest long-poll wait honoured (keep under your proxies' timeout).
    #[arg(long, env = "ASYNCGATE_MAX_WAIT", default_value = "50s", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// Keepalive cadence on idle watch streams.
    #[arg(long, env = "ASYNCGATE_WATCH_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub watch_keepalive: Duration,
    /// How long shutdown waits for workers to finish in-flight tasks.
    #[arg(long, env = "ASYNCGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
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

/// Settings a config file cannot hold.
const NOT_IN_FILES: [&str; 4] = ["config", "print-config", "help", "version"];

/// The command line as parsed, with `--config FILE` merged in, and the
/// effective settings as TOML for `--print-config`.
pub struct Parsed {
    /// The settings.
    pub cli: Cli,
    /// What `--print-config` prints.
    pub effective: String,
}

/// Whether `arg` is a list setting (a flag that may be repeated).
fn is_list(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), clap::ArgAction::Append)
}

/// Reads `args` (the first is the program name) with the config file merged
/// in: flags beat environment variables, which beat the file, which beats
/// the defaults. Errors name what to fix.
pub fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Parsed, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command();
    let given: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let flag_value = |name: &str| {
        let long = format!("--{name}");
        given.iter().enumerate().find_map(|(i, arg)| {
            arg.strip_prefix(&format!("{long}="))
                .map(str::to_owned)
                .or_else(|| (*arg == long).then(|| given.get(i + 1).cloned()).flatten())
        })
    };
    let file = flag_value("config").or_else(|| std::env::var("ASYNCGATE_CONFIG").ok());
    let mut merged = args.clone();
    let mut from_file = std::collections::HashSet::new();
    if let Some(file) = &file {
        let invalid = |message: String| {
            command
                .clone()
                .error(clap::error::ErrorKind::InvalidValue, message)
        };
        let text =
            std::fs::read_to_string(file).map_err(|e| invalid(format!("--config {file}: {e}")))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| invalid(format!("--config {file}: {e}")))?;
        for (key, value) in table {
            let name = key.replace('_', "-");
            let Some(arg) = command.get_arguments().find(|a| {
                a.get_long() == Some(name.as_str()) && !NOT_IN_FILES.contains(&name.as_str())
            }) else {
                return Err(invalid(format!(
                    "--config {file}: unknown setting {key:?}; the settings are the flags of `asyncgate-server --help`, without the dashes"
                )));
            };
            let env_set = arg
                .get_env()
                .is_some_and(|env| std::env::var_os(env).is_some());
            if env_set || flag_value(&name).is_some() || given.contains(&format!("--{name}")) {
                continue;
            }
            let value = match value {
                toml::Value::String(text) if !arg.get_action().takes_values() => {
                    toml::Value::Boolean(text == "true")
                }
                value => value,
            };
            // A list setting (a repeatable flag) takes an array: one flag
            // per element, in order.
            let value = match value {
                toml::Value::Array(items) if is_list(arg) => {
                    for item in items {
                        let text = match item {
                            toml::Value::String(text) => text,
                            toml::Value::Integer(n) => n.to_string(),
                            other => {
                                return Err(invalid(format!(
                                    "--config {file}: {key} takes strings, not {}",
                                    other.type_str()
                                )));
                            }
                        };
                        merged.push(format!("--{name}").into());
                        merged.push(text.into());
                    }
                    from_file.insert(arg.get_id().to_string());
                    continue;
                }
                value => value,
            };
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Boolean(true) => {
                    merged.push(format!("--{name}").into());
                    from_file.insert(arg.get_id().to_string());
                    continue;
                }
                toml::Value::Boolean(false) => continue,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                other => {
                    return Err(invalid(format!(
                        "--config {file}: {key} must be a string, number or boolean, not {}",
                        other.type_str()
                    )));
                }
            };
            merged.push(format!("--{name}").into());
            merged.push(text.into());
            from_file.insert(arg.get_id().to_string());
        }
    }
    let matches = command.clone().try_get_matches_from(merged)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let mut effective = String::from("# asyncgate-server effective settings\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILES.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = if from_file.contains(id) {
            "config file"
        } else {
            match matches.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => "flag",
                Some(clap::parser::ValueSource::EnvVariable) => "environment",
                Some(clap::parser::ValueSource::DefaultValue) => "default",
                _ => "unset",
            }
        };
        let value = match matches.get_raw(id) {
            _ if !arg.get_action().takes_values() => matches.get_flag(id).to_string(),
            Some(values) if is_list(arg) => {
                let items: Vec<String> = values
                    .map(|v| format!("{:?}", hide_password(&v.to_string_lossy())))
                    .collect();
                format!("[{}]", items.join(", "))
            }
            Some(mut values) => {
                let text = values
                    .next()
                    .map(|v| v.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Sizes in one canonical form ("4MiB", or bytes), whichever
                // way they were written; it reads back exactly.
                let text = match parse_size(&text) {
                    Ok(bytes) if arg.get_value_names() == Some(&["SIZE".into()]) => {
                        format_size(bytes)
                    }
                    _ => text,
                };
                format!("{:?}", hide_password(&text))
            }
            None => {
                effective.push_str(&format!("# {long} is not set\n"));
                continue;
            }
        };
        effective.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    Ok(Parsed { cli, effective })
}

impl TryFrom<Cli> for Config {
    type Error = String;

    fn try_from(cli: Cli) -> Result<Self, String> {
        let store = StoreConfig::parse(&cli.store)?;
        let tls = match (cli.tls_cert, cli.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: cli.tls_client_ca,
            }),
            _ => None,
        };
        let plaintext = tls.is_none() && !cli.insecure;
        if plaintext && !cli.listen.ip().is_loopback() {
            return Err(match cli.keys {
                None => format!(
                    "refusing to serve {} with neither TLS nor API keys: anyone on the network could submit, read and run tickets; give --tls-cert and --tls-key and/or --keys, or --insecure if a trusted proxy in front takes care of it",
                    cli.listen
                ),
                Some(_) => format!(
                    "refusing to serve {} with API keys but no TLS: every call would carry its key across the network in clear, for anyone on the path to reuse; give --tls-cert and --tls-key, or --insecure if a trusted proxy in front terminates TLS",
                    cli.listen
                ),
            });
        }
        if let Some(metrics) = cli.metrics_listen
            && plaintext
            && !metrics.ip().is_loopback()
        {
            return Err(format!(
                "refusing to serve metrics on {metrics} without TLS: anyone on the network could read queue and tenant names and traffic figures (and a scrape's API key); give --tls-cert and --tls-key, or --insecure if a trusted proxy in front takes care of it"
            ));
        }
        if cli.metrics_max_queues == 0 {
            return Err("--metrics-max-queues must be at least 1".into());
        }
        if cli.redis_prefix.is_empty()
            || cli
                .redis_prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(format!(
                "--redis-prefix {:?} must be non-empty, without spaces or braces (braces are hash tags)",
                cli.redis_prefix
            ));
        }
        if cli.keepalive_interval < Duration::from_secs(1) || cli.keepalive_timeout.is_zero() {
            return Err(
                "--keepalive-interval must be at least 1s and --keepalive-timeout above 0s".into(),
            );
        }
        for origin in &cli.cors_allow_origins {
            let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
            if origin != "*"
                && (!scheme_ok || origin.ends_with('/') || origin.contains(char::is_whitespace))
            {
                return Err(format!(
                    "--cors-allow-origin {origin:?} must be an origin such as https://app.example.com (scheme and host, no path or trailing slash) or *"
                ));
            }
        }
        let mut cors_allow_headers = Vec::with_capacity(cli.cors_allow_headers.len());
        for name in &cli.cors_allow_headers {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid {
                return Err(format!(
                    "--cors-allow-header {name:?} must be an HTTP header name such as x-request-id (letters, digits and !#$%&'*+-.^_`|~; no spaces, colons or values)"
                ));
            }
            cors_allow_headers.push(name.to_ascii_lowercase());
        }
        if cli.heartbeat_interval < Duration::from_millis(10) {
            return Err("--heartbeat-interval must be at least 10ms".into());
        }
        if cli.lease_ttl < cli.heartbeat_interval * 2 {
            return Err(format!(
                "--lease-ttl ({:?}) must be at least twice --heartbeat-interval ({:?})",
                cli.lease_ttl, cli.heartbeat_interval
            ));
        }
        if cli.default_max_attempts == 0 || cli.default_max_attempts > cli.max_attempts_limit {
            return Err(format!(
                "--default-max-attempts must be between 1 and --max-attempts-limit ({})",
                cli.max_attempts_limit
            ));
        }
        if cli.max_worker_losses == 0 {
            return Err("--max-worker-losses must be at least 1".into());
        }
        if cli.backoff_base > cli.backoff_cap {
            return Err("--backoff-base must not exceed --backoff-cap".into());
        }
        if cli.max_payload_bytes == 0 || cli.max_payload_bytes > 64 * 1024 * 1024 {
            return Err("--max-payload-bytes must be between 1 and 64MiB".into());
        }
        if cli.max_pending_per_queue == 0 {
            return Err("--max-pending-per-queue must be at least 1".into());
        }
        if cli.max_pending_bytes < cli.max_payload_bytes as u64 {
            return Err("--max-pending-bytes must be at least --max-payload-bytes".into());
        }
        if cli.max_output_bytes
            < cli
                .max_output_bytes_per_ticket
                .min(cli.max_payload_bytes as u64)
        {
            return Err(
                "--max-output-bytes must hold at least one chunk (--max-payload-bytes)".into(),
            );
        }
        if cli.max_output_bytes_per_ticket == 0 {
            return Err("--max-output-bytes-per-ticket must be at least 1".into());
        }
        if cli.request_read_timeout.is_zero() {
            return Err("--request-read-timeout must be positive".into());
        }
        if cli.watch_keepalive < Duration::from_millis(10) {
            return Err("--watch-keepalive must be at least 10ms".into());
        }
        Ok(Self {
            listen: cli.listen,
            metrics_listen: cli.metrics_listen,
            metrics_public: cli.metrics_public,
            metrics_max_queues: cli.metrics_max_queues,
            grpc_web: cli.grpc_web,
            cors_allow_origins: cli.cors_allow_origins,
            cors_allow_headers,
            store,
            tls,
            insecure: cli.insecure,
            keys: cli.keys,
            max_streams_per_connection: cli.max_streams_per_connection.max(1),
            max_watchers_per_ticket: cli.max_watchers_per_ticket.max(1),
            max_requests_in_progress: cli.max_requests_in_progress.max(1),
            max_health_calls: cli.max_health_calls.max(1),
            request_read_timeout: cli.request_read_timeout,
            idle_timeout: (!cli.idle_timeout.is_zero()).then_some(cli.idle_timeout),
            keepalive_interval: cli.keepalive_interval,
            keepalive_timeout: cli.keepalive_timeout,
            redis_prefix: cli.redis_prefix,
            redis_tls: crate::engine::redis::RedisTls {
                ca: cli.redis_ca,
                client_cert: cli.redis_cert,
                client_key: cli.redis_key,
            },
            lease_ttl: cli.lease_ttl,
            heartbeat_interval: cli.heartbeat_interval,
            default_max_attempts: cli.default_max_attempts,
            max_attempts_limit: cli.max_attempts_limit,
            engine: EngineConfig {
                backoff: Backoff {
                    base: cli.backoff_base,
                    cap: cli.backoff_cap,
                },
                max_worker_losses: cli.max_worker_losses,
                result_retention: cli.result_retention,
                tombstone_retention: cli.result_retention,
                max_pending_per_queue: cli.max_pending_per_queue,
                max_pending_bytes: cli.max_pending_bytes,
                max_output_bytes_per_ticket: cli.max_output_bytes_per_ticket,
                max_output_bytes: cli.max_output_bytes,
                dispatch_stored_only: cli.dispatch_stored_only,
            },
            max_payload_bytes: cli.max_payload_bytes,
            max_wait: cli.max_wait,
            watch_keepalive: cli.watch_keepalive,
            shutdown_grace: cli.shutdown_grace,
            timer_tick: Config::default().timer_tick,
        })
    }
}

#[cfg(test)]
mod tests;
