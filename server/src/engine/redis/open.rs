//! Opening the Redis engine: checking a `--store` URL and the TLS files,
//! connecting (refusing a Redis that may evict keys), loading the scripts,
//! and starting the engine's two background tasks: the event subscription
//! (replicas hear each other through it) and the liveness heartbeat (an
//! idempotency claim by a gateway whose heartbeat stopped is taken over).

use std::hash::RandomState;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use redis::{ClientTlsConfig, PushInfo, RedisError, TlsCertificates};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use super::caches::LocatorCache;
use super::connection::{self, Conn, Target};
use super::layout::Keys;
use super::{Inner, LEASE_SHARDS, RedisEngine, Scripts, bus};
use crate::engine::EngineConfig;

/// How often a gateway refreshes its liveness key (it outlives a refresh by
/// `INSTANCE_TTL`, see `submit.rs`).
const INSTANCE_REFRESH: Duration = Duration::from_secs(1);

/// Why the Redis engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a Redis URL.
    #[error("--store {url}: not a valid Redis URL ({message})")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Redis did not answer.
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        source: RedisError,
    },
    /// The TLS files could not be used.
    #[error("--store {url}: {message}")]
    Tls {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// Redis would evict keys under memory pressure.
    #[error(
        "Redis at {url} has maxmemory-policy {policy}: it may evict keys and silently lose tickets; set `maxmemory-policy noeviction` (redis.conf or CONFIG SET) and restart the gateway"
    )]
    Evicting {
        /// The URL.
        url: String,
        /// The policy found.
        policy: String,
    },
}

/// Checks a `--store` Redis URL without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    Target::parse(url).map(drop)
}

/// Certificates for `rediss://`: a CA for a Redis whose certificate the
/// system roots do not cover, and a client certificate for Redis servers
/// that require one (`tls-auth-clients yes`). PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// Trust this CA instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Present this certificate…
    pub client_cert: Option<PathBuf>,
    /// …with this key.
    pub client_key: Option<PathBuf>,
}

impl RedisTls {
    fn certificates(&self) -> Result<Option<TlsCertificates>, String> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => return Err("give both --redis-cert and --redis-key, or neither".into()),
        };
        let root_cert = self.ca.as_ref().map(read).transpose()?;
        Ok(
            (client_tls.is_some() || root_cert.is_some()).then_some(TlsCertificates {
                client_tls,
                root_cert,
            }),
        )
    }
}

/// Connects to Redis at `url` (a server, or a cluster's seed nodes), checks
/// it will not evict our keys, and subscribes to the event channel. Keys
/// are prefixed with `prefix`.
pub async fn connect(
    url: &str,
    prefix: &str,
    tls: &RedisTls,
    config: EngineConfig,
) -> Result<RedisEngine, ConnectError> {
    // One crypto provider for every TLS connection in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The URL as shown in errors and logs: never with its password.
    let shown = crate::config::hide_password(url);
    let certificates = tls.certificates().map_err(|message| ConnectError::Tls {
        url: shown.clone(),
        message,
    })?;
    let unreachable = |source| ConnectError::Unreachable {
        url: shown.clone(),
        source,
    };
    let target = Target::parse(url).map_err(|message| ConnectError::Url {
        url: shown.clone(),
        message: message.replace(url, &shown),
    })?;
    let conn = Conn::open(&target, certificates.as_ref(), None)
        .await
        .map_err(unreachable)?;
    let policies = connection::eviction_policies(&conn)
        .await
        .map_err(unreachable)?;
    if let Some(policy) = policies.iter().find(|p| *p != "noeviction") {
        return Err(ConnectError::Evicting {
            url: shown.clone(),
            policy: policy.clone(),
        });
    }
    let scripts = Scripts::new();
    for script in scripts.all() {
        script
            .load_async(&mut conn.clone())
            .await
            .map_err(unreachable)?;
    }
    let keys = Keys::new(prefix);
    let channel = keys.channel();
    let (push_tx, push_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut subscriber = Conn::open(&target, certificates.as_ref(), Some(push_tx))
        .await
        .map_err(unreachable)?;
    subscriber.subscribe(&channel).await.map_err(unreachable)?;
    let inner = Arc::new_cyclic(|me| Inner {
        me: me.clone(),
        commits: Mutex::default(),
        #[cfg(test)]
        fail_settle: Default::default(),
        instance: uuid::Uuid::new_v4().simple().to_string(),
        config,
        url: shown.clone(),
        unavailable_logged: AtomicU64::new(0),
        unavailable_id: Default::default(),
        conn,
        keys,
        channel: channel.clone(),
        scripts,
        listener: OnceLock::new(),
        hasher: RandomState::new(),
        leases: (0..LEASE_SHARDS).map(|_| Mutex::default()).collect(),
        located: LocatorCache::default(),
        worker_counts: Mutex::default(),
        flows: Mutex::default(),
        windows: Mutex::default(),
        last_window_flush: Mutex::new(Instant::now()),
        session_workers: Mutex::default(),
        enqueue_clock: AtomicU64::new(0),
        queues_known: RwLock::default(),
        session_queues: Mutex::default(),
        last_poke: Mutex::new(Instant::now()),
        last_limited_poke: Mutex::new(Instant::now()),
        limited: Default::default(),
    });
    let subscriber = spawn_subscriber(&inner, subscriber, channel, push_rx);
    let heartbeat = spawn_heartbeat(&inner);
    // The liveness key exists before the first claim names it.
    let _ = inner.refresh_liveness().await;
    Ok(RedisEngine {
        inner,
        subscriber,
        heartbeat,
    })
}

/// Hands what the event subscription hears to the listener; when the
/// subscription drops, resubscribes (backing off) and has the listener
/// resynchronise, since events may have been missed. Ends with the engine.
fn spawn_subscriber(
    inner: &Arc<Inner>,
    mut subscriber: Conn,
    channel: String,
    mut push_rx: UnboundedReceiver<PushInfo>,
) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        while let Some(push) = push_rx.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            match bus::classify(&push.kind, push.data) {
                Some(bus::Heard::Message(payload)) => {
                    if let Some(listener) = inner.listener.get() {
                        bus::deliver(listener.as_ref(), Bytes::from(payload));
                    }
                }
                Some(bus::Heard::Disconnected) => {
                    tracing::warn!(url = %inner.url, "lost the Redis event subscription; resubscribing");
                    let mut delay = Duration::from_millis(50);
                    while let Err(error) = subscriber.subscribe(&channel).await {
                        tracing::warn!(%error, "Redis resubscribe failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    tracing::info!("Redis event subscription restored; resynchronising watchers");
                    if let Some(listener) = inner.listener.get() {
                        listener.resync();
                    }
                }
                None => {}
            }
        }
    })
}

/// Keeps this gateway's liveness key fresh. Ends with the engine.
fn spawn_heartbeat(inner: &Arc<Inner>) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INSTANCE_REFRESH);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            if let Err(error) = inner.refresh_liveness().await {
                tracing::debug!(%error, "could not refresh the gateway's liveness key");
            }
        }
    })
}
