//! Assembles a gateway: engine, hub, dispatcher, timers and the gRPC services
//! (plus reflection and health) on a listener, with phased shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::Instrument;

use asyncgate_proto::v1 as pb;

use crate::auth::Keys;
use crate::config::{Config, StoreConfig, TlsFiles};
use crate::connection::TrackedStream;
use crate::dispatch::{Dispatcher, WeakDispatcher};
use crate::domain::{QueueName, SessionId, Ticket, TicketId};
use crate::engine::{Before, Engine, EngineListener, LocalEngine, Revocation, TicketChange};
use crate::hub::WatchHub;
use crate::metrics::Metrics;
use crate::rpc::Core;
use crate::rpc::gateway::GatewayService;
use crate::rpc::workers::WorkersService;
use crate::shutdown::Shutdown;

/// Pending connections the listener queues before accepting.
const LISTEN_BACKLOG: u32 = 4096;

/// How long connections may stay after the shutdown grace period, for the
/// final statuses of their streams to reach the peers; then they are closed
/// even if a peer stopped reading.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Routes engine notifications to the hub and the dispatcher.
struct Notifier {
    hub: Arc<WatchHub>,
    dispatcher: WeakDispatcher,
    metrics: Option<Arc<Metrics>>,
}

impl EngineListener for Notifier {
    fn watching(&self, id: TicketId) -> bool {
        self.hub.is_watched(id)
    }

    fn ticket_changed(&self, change: TicketChange) {
        self.hub.publish(change);
    }

    fn queue_ready(&self, queue: &QueueName) {
        if let Some(dispatcher) = self.dispatcher.upgrade() {
            dispatcher.queue_ready(queue);
        }
    }

    fn lease_revoked(&self, revocation: Revocation) {
        if let Some(dispatcher) = self.dispatcher.upgrade() {
            dispatcher.revoke(revocation);
        }
    }

    fn drain_requested(&self, session_id: SessionId, by: &str) {
        if let Some(dispatcher) = self.dispatcher.upgrade() {
            dispatcher.drain(session_id, by, "");
        }
    }

    fn resync(&self) {
        self.hub.reset();
        if let Some(dispatcher) = self.dispatcher.upgrade() {
            dispatcher.ready_all();
        }
    }

    fn transitioned(&self, before: Before, after: &Ticket, now: SystemTime) {
        if let Some(metrics) = &self.metrics {
            metrics.transitioned(before, after, now);
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reflection could not load the descriptors (a build problem).
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    /// The durable store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::engine::durable::OpenError),
    /// The API keys file could not be used.
    #[error(transparent)]
    Keys(#[from] crate::auth::KeysError),
    /// The TLS files could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A target queue's URL could not be used.
    #[error("--target: {0}")]
    Target(String),
    /// Callback delivery could not be set up.
    #[error("callbacks: {0}")]
    Callbacks(String),
    /// Redis could not be used.
    #[error(transparent)]
    Redis(#[from] crate::engine::redis::ConnectError),
    /// A queue's configured limits could not be stored.
    #[error("cannot set the limits of queue {queue:?} (--queue-limits): {error}")]
    QueueLimits {
        /// The queue.
        queue: String,
        /// What the store said.
        error: String,
    },
}

/// A running gateway.
pub struct Running {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: Shutdown,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    keys: Option<Keys>,
}

impl Running {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where metrics are served (`--metrics-listen`, resolved).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The API keys in force, to reload them (SIGHUP); `None` without
    /// `--keys`.
    pub fn keys(&self) -> Option<Keys> {
        self.keys.clone()
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn initiate_shutdown(&self) {
        self.shutdown.initiate();
    }

    /// Shuts down gracefully: stops accepting, drains workers within the grace
    /// period, ends streams, and waits for the server to finish.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        self.shutdown.initiate();
        self.join().await
    }

    /// Waits until the server stops (after a shutdown began elsewhere).
    pub async fn join(self) -> Result<(), tonic::transport::Error> {
        match self.serve.await {
            Ok(result) => result,
            Err(join_error) => {
                tracing::error!(%join_error, "server task failed");
                Ok(())
            }
        }
    }
}

async fn build_engine(config: &Config) -> Result<Arc<dyn Engine>, StartError> {
    Ok(match &config.store {
        StoreConfig::Memory => Arc::new(LocalEngine::in_memory(config.engine.clone())),
        StoreConfig::Durable(path) => {
            Arc::new(crate::engine::durable::open(path, config.engine.clone())?)
        }
        StoreConfig::Redis(url) => Arc::new(
            crate::engine::redis::connect(
                url,
                &config.redis_prefix,
                &config.redis_tls,
                config.engine.clone(),
            )
            .await?,
        ),
    })
}

/// Sets the limits the configuration names (`--queue-limits`), replacing
/// what an operator set through the API for those queues.
async fn apply_queue_limits(config: &Config, engine: &dyn Engine) -> Result<(), StartError> {
    for setting in &config.queue_limits {
        engine
            .set_limits(&setting.queue, setting.limits)
            .await
            .map_err(|error| StartError::QueueLimits {
                queue: setting.queue.to_string(),
                error: error.to_string(),
            })?;
        tracing::info!(queue = %setting.queue, limits = ?setting.limits, "queue limits set from the configuration");
    }
    Ok(())
}

/// The rustls settings of `--tls-cert`, `--tls-key`, `--tls-client-ca`.
fn server_tls(files: &TlsFiles) -> Result<ServerTlsConfig, StartError> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| StartError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
    };
    let identity = Identity::from_pem(
        read(&files.cert, "certificate (--tls-cert)")?,
        read(&files.key, "key (--tls-key)")?,
    );
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(
            ca,
            "client CA (--tls-client-ca)",
        )?));
    }
    Ok(tls)
}

/// The metrics listener's TLS: the gateway's certificate and key, and its
/// client CA (mutual TLS) when it has one, so a scrape is as protected as
/// a call. Plain rustls, because the listener is a bare hyper server.
fn metrics_tls(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let error = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        StartError::Tls(format!(
            "metrics listener: cannot use the {what} {}: {e}",
            path.display()
        ))
    };
    let certificates = |path: &std::path::Path, what: &str| {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| error(what, path, &e))
    };
    let chain = certificates(&files.cert, "certificate (--tls-cert)")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| error("key (--tls-key)", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(format!("metrics listener: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let what = "client CA (--tls-client-ca)";
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca, what)? {
                roots.add(cert).map_err(|e| error(what, ca, &e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| error(what, ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder
        .with_single_cert(chain, key)
        .map_err(|e| error("certificate and key", &files.cert, &e))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// Binds `config.listen` and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if config.listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(config.listen)?;
        // A deep accept queue: a thousand workers reconnecting at once after
        // a restart must not overflow it (the OS caps it at somaxconn).
        socket.listen(LISTEN_BACKLOG)
    };
    let listener = bind().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    start_on(config, listener).await
}

/// Says where the gateway (and, with `--dashboard`, its dashboard) listens.
fn log_listening(config: &Config, local_addr: SocketAddr) {
    tracing::info!(%local_addr, store = ?config.store, "asyncgate listening");
    if config.dashboard {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{local_addr}{}", crate::dashboard::PATH);
        tracing::info!(%url, "dashboard served");
    }
}

/// Starts serving on an already-bound listener (tests bind port 0 first):
/// build the core, then its services, then serve them.
pub async fn start_on(mut config: Config, listener: TcpListener) -> Result<Running, StartError> {
    // The dashboard's page calls over gRPC-Web, whichever way the config
    // was built (flags do this in validation; code may not).
    config.grpc_web |= config.dashboard;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let keys = config.keys.as_deref().map(Keys::open).transpose()?;
    if let Some(keys) = &keys {
        tracing::info!(keys = keys.count(), "API keys loaded");
    }
    warn_if_exposed(&config, keys.is_some(), local_addr);
    let config = Arc::new(config);
    let shutdown = Shutdown::default();
    let engine = build_engine(&config).await?;
    apply_queue_limits(&config, engine.as_ref()).await?;
    let hub = Arc::new(WatchHub::default());
    let dispatcher = Dispatcher::new(
        engine.clone(),
        shutdown.tasks().clone(),
        shutdown.hard_stop().clone(),
    );
    let metrics = config
        .metrics_listen
        .map(|_| Arc::new(Metrics::new(config.metrics_max_queues)));
    engine.set_listener(Arc::new(Notifier {
        hub: hub.clone(),
        dispatcher: dispatcher.downgrade(),
        metrics: metrics.clone(),
    }));
    let metrics_addr = match &metrics {
        Some(metrics) => {
            let endpoint = crate::metrics::Endpoint {
                metrics: metrics.clone(),
                engine: engine.clone(),
                dispatcher: dispatcher.clone(),
                keys: keys.clone().filter(|_| !config.metrics_public),
            };
            serve_metrics(&config, endpoint, &shutdown).await?
        }
        None => None,
    };
    // Watches end at the hard stop through their subscriptions.
    shutdown.spawn({
        let hub = hub.clone();
        let stop = shutdown.hard_stop().clone();
        async move {
            stop.cancelled().await;
            hub.shut_down();
        }
    });
    let (targets, supervisor) = crate::targets::Targets::new(&config.targets);
    let core = Core {
        engine: engine.clone(),
        hub,
        dispatcher,
        config: config.clone(),
        shutdown: shutdown.initiated().clone(),
        hard_stop: shutdown.hard_stop().clone(),
        tracker: shutdown.tasks().clone(),
        sessions: shutdown.sessions().clone(),
        targets,
    };
    spawn_targets(&core, &config, supervisor)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for service in [
        <pb::gateway_server::GatewayServer<GatewayService> as tonic::server::NamedService>::NAME,
        <pb::workers_server::WorkersServer<WorkersService> as tonic::server::NamedService>::NAME,
        <crate::rpc::operations::Server as tonic::server::NamedService>::NAME,
        <crate::rpc::admin::Server as tonic::server::NamedService>::NAME,
        <crate::rpc::schedules::Server as tonic::server::NamedService>::NAME,
    ] {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    spawn_passes(&shutdown, &engine, &config, &health);
    let max_message = config.max_payload_bytes + 64 * 1024;
    let routes = routes(&core, health_service, max_message)?;
    let connect = config
        .grpc_web
        .then(|| crate::connect::ConnectLayer::new(max_message))
        .transpose()
        .map_err(StartError::Reflection)?;
    let stack = crate::layers::Stack::new(
        config.clone(),
        config.tls.as_ref().map(server_tls).transpose()?,
        keys.clone(),
        metrics,
        connect,
        max_message,
    )?;
    let incoming = incoming(listener, &config, shutdown.hard_stop());
    let signal = on_shutdown(shutdown.clone(), health, config.shutdown_grace);
    let serve = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let result = crate::layers::serve(stack, routes, incoming, signal).await;
            shutdown.finish(&*engine).await;
            result
        })
    };
    log_listening(&config, local_addr);
    Ok(Running {
        local_addr,
        metrics_addr,
        shutdown,
        serve,
        keys,
    })
}

/// Warns about a gateway reachable beyond this machine without TLS or keys.
fn warn_if_exposed(config: &Config, has_keys: bool, local_addr: SocketAddr) {
    if !config.insecure || local_addr.ip().is_loopback() {
        return;
    }
    if config.tls.is_none() {
        tracing::warn!(%local_addr, "serving plaintext on a non-loopback address (--insecure): anyone who can reach it can read the traffic, API keys included");
    }
    if !has_keys {
        tracing::warn!(%local_addr, "no API keys (--keys): anyone who can reach the gateway can use it");
    }
}

/// Binds `--metrics-listen` and serves `/metrics` there (with the
/// gateway's TLS, if any); where it is bound.
async fn serve_metrics(
    config: &Config,
    endpoint: crate::metrics::Endpoint,
    shutdown: &Shutdown,
) -> Result<Option<SocketAddr>, StartError> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let tls = config.tls.as_ref().map(metrics_tls).transpose()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let keyed = endpoint.keys.is_some();
    let bound = crate::metrics::serve(listener, endpoint, tls, shutdown);
    tracing::info!(%bound, "metrics at {scheme}://{bound}/metrics");
    if config.tls.is_none() && !bound.ip().is_loopback() {
        tracing::warn!(%bound, "serving metrics in plaintext on a non-loopback address (--insecure): anyone who can reach it can read them, and any scrape key");
    }
    if config.keys.is_some() && config.metrics_public && !keyed {
        tracing::info!(%bound, "metrics need no key (--metrics-public)");
    }
    Ok(Some(bound))
}

/// Every service the gateway serves: health, reflection (v1 and v1alpha),
/// Gateway, Workers and Operations.
/// Starts the callback deliverer and the target queues' supervisor (the
/// in-process workers of the config's targets at once): the gateway's own
/// clients of other services.
fn spawn_targets(
    core: &Core,
    config: &Config,
    supervisor: crate::targets::Supervisor,
) -> Result<(), StartError> {
    let policy = Arc::new(config.callbacks.clone());
    crate::callbacks::spawn(
        core.engine.clone(),
        policy.clone(),
        core.hard_stop.clone(),
        &core.tracker,
    )
    .map_err(StartError::Callbacks)?;
    supervisor
        .spawn(
            core.engine.clone(),
            policy,
            crate::targets::Gateway {
                dispatcher: core.dispatcher.clone(),
                settings: crate::dispatch::session::SessionSettings {
                    heartbeat_interval: config.heartbeat_interval,
                    lease_ttl: config.lease_ttl,
                },
                max_payload_bytes: config.max_payload_bytes,
                shutdown: core.shutdown.clone(),
                hard_stop: core.hard_stop.clone(),
                grace: config.shutdown_grace,
            },
            &core.sessions,
            &core.tracker,
        )
        .map_err(StartError::Target)
}

/// The background passes every replica runs until the hard stop: the
/// timer loop (which is also the store's health probe) and the schedule
/// runner.
fn spawn_passes(
    shutdown: &Shutdown,
    engine: &Arc<dyn Engine>,
    config: &Config,
    health: &tonic_health::server::HealthReporter,
) {
    shutdown.spawn(
        crate::timers::run(
            engine.clone(),
            config.timer_tick,
            crate::timers::StoreHealth::new(health.clone(), shutdown.initiated().clone()),
            shutdown.hard_stop().clone(),
        )
        .instrument(tracing::info_span!("timers")),
    );
    shutdown.spawn(
        crate::schedules::runner::run(
            crate::schedules::Schedules::new(engine.clone()),
            crate::schedules::runner::TICK,
            shutdown.hard_stop().clone(),
        )
        .instrument(tracing::info_span!("schedules")),
    );
}

fn routes(
    core: &Core,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    max_message: usize,
) -> Result<tonic::service::Routes, StartError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(asyncgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So that grpcurl can show google.rpc.BadRequest details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    // Compressed requests are always accepted; replies are compressed only
    // for callers that ask for it (grpc-accept-encoding).
    use tonic::codec::CompressionEncoding::{Gzip, Zstd};
    // A SubmitBatch answer repeats its request's echoed fields and adds a
    // bounded amount per ticket (see `BATCH_ANSWER_HEADROOM`).
    let gateway = pb::gateway_server::GatewayServer::new(GatewayService::new(core.clone()))
        .accept_compressed(Gzip)
        .accept_compressed(Zstd)
        .send_compressed(Gzip)
        .send_compressed(Zstd)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(
            max_message.max(4 * 1024 * 1024) + crate::rpc::gateway::BATCH_ANSWER_HEADROOM,
        );
    let workers = pb::workers_server::WorkersServer::new(WorkersService::new(core.clone()))
        .accept_compressed(Gzip)
        .accept_compressed(Zstd)
        .send_compressed(Gzip)
        .send_compressed(Zstd)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message.max(4 * 1024 * 1024));
    Ok(tonic::service::Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(gateway)
        .add_service(workers)
        .add_service(crate::rpc::operations::server(core.clone()))
        .add_service(crate::rpc::admin::server(core.clone()))
        .add_service(
            crate::rpc::schedules::server(core.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message.max(4 * 1024 * 1024)),
        ))
}

/// Accepted connections, each tracked (idle timeout, calls open, closed a
/// moment after the hard stop).
fn incoming(
    listener: TcpListener,
    config: &Config,
    hard_stop: &tokio_util::sync::CancellationToken,
) -> impl futures::Stream<Item = std::io::Result<TrackedStream>> + use<> {
    let idle_timeout = config.idle_timeout;
    // Write coalescing suits HTTP/2 only; gRPC-Web also accepts HTTP/1.1.
    let coalesce_writes = !config.grpc_web;
    // Without --grpc-web, an HTTP/1.1 request gets an answer naming the flag
    // (and a warning) rather than a closed connection; under TLS, ALPN
    // already tells the client.
    let refuse_http1 = !config.grpc_web && config.tls.is_none();
    let hard_stop = hard_stop.clone();
    let close_after_stop = move || {
        // A token of its own: the connection checks it on every read, and
        // the shared token's lock must not be on that path.
        let stop = hard_stop.child_token();
        async move {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_LINGER).await;
        }
    };
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| {
            accepted.map(|io| {
                TrackedStream::new(io, idle_timeout, coalesce_writes)
                    .refuse_http1(refuse_http1)
                    .close_at(close_after_stop())
            })
        })
}

/// Tonic's shutdown signal: resolves when shutdown is initiated (phase 1:
/// health says NOT_SERVING, tonic stops accepting), having started the
/// drain (phase 2), which runs beside tonic's graceful close.
async fn on_shutdown(
    shutdown: Shutdown,
    health: tonic_health::server::HealthReporter,
    grace: std::time::Duration,
) {
    shutdown.initiated().cancelled().await;
    tracing::info!("shutting down: draining workers, then ending streams");
    health
        .set_not_serving::<pb::gateway_server::GatewayServer<GatewayService>>()
        .await;
    health
        .set_not_serving::<crate::rpc::operations::Server>()
        .await;
    health.set_not_serving::<crate::rpc::admin::Server>().await;
    let drain = shutdown.clone();
    shutdown.spawn(async move { drain.drain(grace).await });
}
