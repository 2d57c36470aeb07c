//! `Config::try_from(Cli)`: every check that refuses an unsafe or
//! inconsistent combination of flags, in the order they are reported, and
//! the assembly of the validated `Config`. Separate so the checks read as a
//! list, apart from the flag declarations.

use std::time::Duration;

use super::{Cli, Config, StoreConfig, TlsFiles};
use crate::domain::backoff::Backoff;
use crate::domain::{QueueLimits, QueueName};
use crate::engine::EngineConfig;

impl TryFrom<Cli> for Config {
    type Error = String;

    fn try_from(cli: Cli) -> Result<Self, String> {
        let store = StoreConfig::parse(&cli.store)?;
        let tls = cli.tls_cert.is_some() && cli.tls_key.is_some();
        check_exposure(&cli, tls)?;
        check_listeners_and_redis(&cli)?;
        let cors_allow_headers = check_cors(&cli)?;
        check_workers_and_retries(&cli)?;
        check_budgets(&cli)?;
        check_timeouts(&cli)?;
        Ok(assemble(cli, store, cors_allow_headers))
    }
}

/// Plaintext off loopback (gRPC or metrics) is refused unless `--insecure`
/// says a trusted proxy takes care of it. `tls`: both a certificate and a
/// key are given.
fn check_exposure(cli: &Cli, tls: bool) -> Result<(), String> {
    let plaintext = !tls && !cli.insecure;
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
    Ok(())
}

/// The metrics' queue cap, the Redis key prefix and the HTTP/2 keepalive.
fn check_listeners_and_redis(cli: &Cli) -> Result<(), String> {
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
    Ok(())
}

/// CORS origins must be origins (or `*`) and extra headers header names;
/// returns the headers lowercased.
fn check_cors(cli: &Cli) -> Result<Vec<String>, String> {
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
    Ok(cors_allow_headers)
}

/// Worker liveness (heartbeats, lease TTL) and retries (attempts, worker
/// losses, backoff).
fn check_workers_and_retries(cli: &Cli) -> Result<(), String> {
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
    Ok(())
}

/// Payload, pending and output sizes: positive, and each large enough for
/// what it must hold.
fn check_budgets(cli: &Cli) -> Result<(), String> {
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
        return Err("--max-output-bytes must hold at least one chunk (--max-payload-bytes)".into());
    }
    if cli.max_output_bytes_per_ticket == 0 {
        return Err("--max-output-bytes-per-ticket must be at least 1".into());
    }
    Ok(())
}

/// The request read timeout and the watch keepalive.
fn check_timeouts(cli: &Cli) -> Result<(), String> {
    if cli.request_read_timeout.is_zero() {
        return Err("--request-read-timeout must be positive".into());
    }
    if cli.watch_keepalive < Duration::from_millis(10) {
        return Err("--watch-keepalive must be at least 10ms".into());
    }
    Ok(())
}

/// The `Config` of checked flags: counts of at least 1, `0s` idle timeout as
/// none, the engine's settings gathered into `EngineConfig`.
fn assemble(cli: Cli, store: StoreConfig, cors_allow_headers: Vec<String>) -> Config {
    let tls = match (cli.tls_cert, cli.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: cli.tls_client_ca,
        }),
        _ => None,
    };
    Config {
        listen: cli.listen,
        metrics_listen: cli.metrics_listen,
        metrics_public: cli.metrics_public,
        metrics_max_queues: cli.metrics_max_queues,
        // The dashboard's page calls the gateway over gRPC-Web.
        grpc_web: cli.grpc_web || cli.dashboard,
        dashboard: cli.dashboard,
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
        queue_limits: cli.queue_limits,
        targets: cli.targets,
        max_schedules_per_tenant: cli.max_schedules_per_tenant,
        callbacks: crate::callbacks::CallbackSettings {
            allow: cli.callback_allow,
            allow_http: cli.callback_allow_http,
            secrets: cli.callback_secrets,
            retry_window: cli.callback_retry_window,
            concurrency: cli.callback_concurrency,
        },
    }
}

/// One `--queue-limits` value: a queue (as stored: `tenant/name` for a
/// tenant's) and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLimitsSetting {
    /// The queue.
    pub queue: QueueName,
    /// Its limits, checked as Admin.SetQueueLimits checks them.
    pub limits: QueueLimits,
}

/// The keys of a queue's limits, in `--queue-limits` and `[queues.NAME]`.
pub(super) const LIMIT_KEYS: [&str; 3] = ["max_dispatch_per_second", "burst", "max_concurrent"];

/// Parses `QUEUE:max_dispatch_per_second=500,burst=1000,max_concurrent=20`.
pub fn parse_queue_limits(text: &str) -> Result<QueueLimitsSetting, String> {
    let form = "QUEUE:max_dispatch_per_second=N,burst=N,max_concurrent=N (any of the three)";
    let Some((queue, list)) = text.split_once(':') else {
        return Err(format!(
            "{text:?} has no ':' after the queue; the form is {form}"
        ));
    };
    let queue = QueueName::parse_scoped(queue.trim()).map_err(|e| format!("queue: {e}"))?;
    let mut limits = QueueLimits::default();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not KEY=VALUE; the form is {form}"))?;
        let value: u32 = value.trim().parse().map_err(|_| {
            format!(
                "{}: {value:?} is not a whole number (0 means unlimited)",
                key.trim()
            )
        })?;
        let slot = match key.trim() {
            "max_dispatch_per_second" => &mut limits.max_dispatch_per_second,
            "burst" => &mut limits.burst,
            "max_concurrent" => &mut limits.max_concurrent,
            other => {
                return Err(format!(
                    "unknown limit {other:?}; the limits are {}",
                    LIMIT_KEYS.join(", ")
                ));
            }
        };
        *slot = value;
    }
    limits
        .check()
        .map_err(|(field, message)| format!("{field} {message}"))?;
    Ok(QueueLimitsSetting { queue, limits })
}
