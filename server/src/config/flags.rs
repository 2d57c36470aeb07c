//! The `Cli` struct: every flag of `asyncgate-server`, its environment
//! variable, default and help text, as clap reads them. Kept apart from the
//! parsing and validation so a reader looking for a flag finds only flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::{
    DEFAULT_STORE, QueueLimitsSetting, parse_duration, parse_queue_limits, parse_size,
    parse_size_usize,
};

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
    /// Serve the web dashboard at /dashboard/ on the gateway's port (its
    /// files are in the binary); turns on --grpc-web, which its page calls.
    #[arg(long, env = "ASYNCGATE_DASHBOARD")]
    pub dashboard: bool,
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
    /// A queue's dispatch limits, set at every start (replacing what
    /// Admin.SetQueueLimits set for it):
    /// `QUEUE:max_dispatch_per_second=500,burst=1000,max_concurrent=20`,
    /// any of the three (0 or left out: unlimited); repeat for several
    /// queues (`;` between them in the environment variable). In a config
    /// file, a `[queues.NAME]` table with those keys.
    #[arg(
        long = "queue-limits",
        env = "ASYNCGATE_QUEUE_LIMITS",
        value_name = "QUEUE:LIMITS",
        value_delimiter = ';',
        value_parser = parse_queue_limits
    )]
    pub queue_limits: Vec<QueueLimitsSetting>,
    /// A target queue: the gateway itself works QUEUE's tickets by calling
    /// an existing unary gRPC method with each ticket's binary payload (the
    /// encoded request message), or POSTing the payload to an HTTP
    /// endpoint, and recording the reply as the result:
    /// `QUEUE=grpc://HOST:PORT/package.Service/Method` (`grpcs://` for TLS)
    /// or `QUEUE=http://HOST:PORT/path` (`https://`), optionally
    /// `?max_concurrent=N&max_per_second=N&retry_on=CODES&header_env=NAME:ENVVAR&ca_file=PATH&cert_file=PATH&key_file=PATH`.
    /// Repeat for several queues (`;` between them in the environment
    /// variable).
    #[arg(
        long = "target",
        env = "ASYNCGATE_TARGETS",
        value_name = "QUEUE=URL",
        value_delimiter = ';',
        value_parser = crate::targets::parse_target
    )]
    pub targets: Vec<crate::targets::TargetSetting>,
    /// Schedules one tenant may keep (all schedules, without API keys);
    /// CreateSchedule past it is RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_SCHEDULES_PER_TENANT",
        default_value_t = 1_000,
        value_name = "N"
    )]
    pub max_schedules_per_tenant: u64,
    /// Where completion callbacks (`SubmitRequest.callback`) may go: host
    /// names, `*.domain`, addresses or networks (`10.0.0.0/8`); repeat, or
    /// comma-separate. Without a list, a submit with a callback is
    /// FAILED_PRECONDITION. Loopback, private and link-local addresses are
    /// reached only when a listed address or network holds them, whatever
    /// name led there.
    #[arg(
        long = "callback-allow",
        env = "ASYNCGATE_CALLBACK_ALLOW",
        value_name = "HOST|NET",
        value_delimiter = ',',
        value_parser = crate::callbacks::parse_allowed
    )]
    pub callback_allow: Vec<crate::callbacks::Allowed>,
    /// Allow plain `http://` callbacks (unencrypted; for local networks and
    /// tests).
    #[arg(long, env = "ASYNCGATE_CALLBACK_ALLOW_HTTP")]
    pub callback_allow_http: bool,
    /// A secret that signs HTTP callbacks (Standard Webhooks:
    /// `whsec_<base64>`); repeat (or comma-separate) to sign with several
    /// while receivers move to a new one. Never printed.
    #[arg(
        long = "callback-secret",
        env = "ASYNCGATE_CALLBACK_SECRETS",
        value_name = "whsec_…",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = crate::callbacks::parse_secret
    )]
    pub callback_secrets: Vec<crate::callbacks::Secret>,
    /// How long a callback delivery is retried (with backoff from 1 s to
    /// an hour) after its ticket ended, before it is given up.
    #[arg(
        long,
        env = "ASYNCGATE_CALLBACK_RETRY_WINDOW",
        default_value = "24h",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub callback_retry_window: Duration,
    /// Callback deliveries in flight at once on this gateway.
    #[arg(
        long,
        env = "ASYNCGATE_CALLBACK_CONCURRENCY",
        default_value_t = 256,
        value_name = "N"
    )]
    pub callback_concurrency: usize,
    /// Pending tickets per queue before submits get RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "ASYNCGATE_MAX_PENDING_PER_QUEUE",
        default_value_t = 1_000_000
    )]
    pub max_pending_per_queue: usize,
    /// Bytes of request bodies and metadata that pending and running
    /// tickets, and failed, cancelled or expired ones kept for a retry, may
    /// hold in all, across every queue and tenant; a submit past it gets
    /// RESOURCE_EXHAUSTED.
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
    /// How long shutdown waits for workers to finish in-flight tasks (and
    /// how long a target taken off a queue may finish its calls in flight).
    #[arg(long, env = "ASYNCGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}
