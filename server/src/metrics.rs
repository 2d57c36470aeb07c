//! Prometheus metrics (`--metrics-listen`): what each queue receives, runs
//! and finishes, how long tickets wait and run, and every RPC's outcome and
//! latency. Counters and histograms count what this gateway did (sum them
//! across replicas); gauges of pending and running tickets come from the
//! store, so every replica reports the shared figure.
//!
//! RPC metrics are go-grpc-prometheus' ([`grpc`]), so existing gRPC
//! dashboards work unchanged; process metrics have the standard
//! `process_*` names ([`process`]); `asyncgate_build_info` names the
//! version and the optional features built in. A scrape gets OpenMetrics
//! or the classic text format, whichever it asks for ([`exposition`]), and
//! every family has HELP text in both.
//!
//! The listener is guarded like the gateway: TLS with the gateway's
//! certificate when it has one, an admin key when `--keys` is set (unless
//! `--metrics-public`), and at most `--metrics-max-queues` queue label
//! values, so callers that mint queue names cannot grow the exposition or
//! this process's memory without bound.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

use crate::auth::Keys;
use crate::dispatch::Dispatcher;
use crate::domain::{QueueName, Ticket, TicketState};
use crate::engine::{Before, Engine};

pub(crate) mod exposition;
pub(crate) mod grpc;
mod process;

pub(crate) use grpc::RpcMetricsLayer;

/// Distinct queues the metrics name by default (`--metrics-max-queues`).
pub(crate) const MAX_QUEUE_LABELS: usize = 500;

/// The `queue` label of every queue past the cap. Queue names start with a
/// letter or digit, so no real queue is called this.
pub(crate) const OTHER_QUEUES: &str = "_other";

/// How long a metrics client may take over its TLS handshake; a socket that
/// never finishes one is closed instead of holding a task.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    queue: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    features: &'static str,
}

/// The optional features this binary was built with, comma-separated
/// (`none` without any): one fixed value per build.
fn build_features() -> &'static str {
    if cfg!(feature = "otel") {
        "otel"
    } else {
        "none"
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Hands out `queue` label values: the first `max` queues seen keep their
/// names for the life of the process (their counters must stay continuous);
/// every later one is [`OTHER_QUEUES`].
struct QueueLabeler {
    max: usize,
    /// Read on every transition, written at most `max` times.
    named: RwLock<HashSet<QueueName>>,
}

impl QueueLabeler {
    fn labels(&self, queue: &QueueName) -> QueueLabels {
        let named = |queue: &QueueName| QueueLabels {
            queue: queue.as_str().to_owned(),
        };
        if self
            .named
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue)
        {
            return named(queue);
        }
        let mut names = self.named.write().unwrap_or_else(|p| p.into_inner());
        if names.len() < self.max {
            names.insert(queue.clone());
        }
        if names.contains(queue) {
            named(queue)
        } else {
            QueueLabels {
                queue: OTHER_QUEUES.to_owned(),
            }
        }
    }
}

fn ticket_seconds() -> Histogram {
    // 1 ms to about 35 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

/// The gateway's metrics and their registry.
pub(crate) struct Metrics {
    registry: Registry,
    queues: QueueLabeler,
    submitted: Family<QueueLabels, Counter>,
    completed: Family<OutcomeLabels, Counter>,
    retried: Family<QueueLabels, Counter>,
    pending: Family<QueueLabels, Gauge>,
    running: Family<QueueLabels, Gauge>,
    workers: Family<QueueLabels, Gauge>,
    oldest_pending: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    paused: Family<QueueLabels, Gauge>,
    held_back: Family<QueueLabels, Gauge>,
    queue_wait: HistogramFamily<QueueLabels>,
    run_time: HistogramFamily<QueueLabels>,
    end_to_end: HistogramFamily<QueueLabels>,
    /// RPC metrics, go-grpc-prometheus' families.
    grpc: grpc::GrpcMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(MAX_QUEUE_LABELS)
    }
}

impl Metrics {
    /// Registers every metric; at most `max_queues` queues are labelled by
    /// name, later ones are summed under `queue="_other"`.
    pub(crate) fn new(max_queues: usize) -> Self {
        let mut registry = Registry::default();
        let grpc = grpc::GrpcMetrics::new(&mut registry);
        let mut metrics = Self {
            registry,
            queues: QueueLabeler {
                max: max_queues,
                named: RwLock::default(),
            },
            submitted: Family::default(),
            completed: Family::default(),
            retried: Family::default(),
            pending: Family::default(),
            running: Family::default(),
            workers: Family::default(),
            oldest_pending: Family::default(),
            paused: Family::default(),
            held_back: Family::default(),
            queue_wait: Family::new_with_constructor(ticket_seconds),
            run_time: Family::new_with_constructor(ticket_seconds),
            end_to_end: Family::new_with_constructor(ticket_seconds),
            grpc,
        };
        let registry = &mut metrics.registry;
        registry.register(
            "asyncgate_tickets_submitted",
            "Tickets created (idempotent repeats not counted)",
            metrics.submitted.clone(),
        );
        registry.register(
            "asyncgate_tickets_completed",
            "Tickets that reached a terminal state, by outcome (succeeded, failed, cancelled, expired)",
            metrics.completed.clone(),
        );
        registry.register(
            "asyncgate_tickets_retried",
            "Attempts that ended without a result and were queued again (worker failure, lost worker, attempt timeout)",
            metrics.retried.clone(),
        );
        registry.register(
            "asyncgate_tickets_pending",
            "PENDING tickets (ready or in backoff)",
            metrics.pending.clone(),
        );
        registry.register(
            "asyncgate_tickets_running",
            "Tickets leased to a worker",
            metrics.running.clone(),
        );
        registry.register_with_unit(
            "asyncgate_queue_oldest_pending_age",
            "Age of the queue's oldest PENDING ticket (0 when none is pending)",
            Unit::Seconds,
            metrics.oldest_pending.clone(),
        );
        registry.register(
            "asyncgate_queue_paused",
            "1 while an operator has the queue paused (Admin.PauseQueue), else 0",
            metrics.paused.clone(),
        );
        registry.register(
            "asyncgate_queue_held_back_tickets",
            "Ready tickets a queue's limit (rate or concurrency, Admin.SetQueueLimits) holds back now",
            metrics.held_back.clone(),
        );
        registry.register(
            "asyncgate_workers_connected",
            "Worker connections serving the queue on this gateway",
            metrics.workers.clone(),
        );
        registry.register_with_unit(
            "asyncgate_ticket_queue_wait",
            "Time from ready to leased, per attempt",
            Unit::Seconds,
            metrics.queue_wait.clone(),
        );
        registry.register_with_unit(
            "asyncgate_ticket_run",
            "Time from lease to the attempt's end",
            Unit::Seconds,
            metrics.run_time.clone(),
        );
        registry.register_with_unit(
            "asyncgate_ticket_end_to_end",
            "Time from submit to a terminal state",
            Unit::Seconds,
            metrics.end_to_end.clone(),
        );
        // A gauge of 1, as client_golang's `go_build_info`: a classic-format
        // parser knows gauges, not OpenMetrics' info type.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                features: build_features(),
            })
            .set(1);
        registry.register(
            "asyncgate_build_info",
            "The gateway's version and the optional cargo features built in; always 1",
            build,
        );
        registry.register_collector(Box::new(process::ProcessCollector));
        metrics
    }

    /// Counts a transition the engine committed.
    pub(crate) fn transitioned(&self, before: Before, after: &Ticket, now: SystemTime) {
        if before.state == Some(after.state) {
            return;
        }
        let since = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs_f64();
        let queue = self.queues.labels(&after.queue);
        let Some(was) = before.state else {
            self.submitted.get_or_create(&queue).inc();
            return;
        };
        if was == TicketState::Running {
            if let Some(started) = before.attempt_started {
                self.run_time.get_or_create(&queue).observe(since(started));
            }
            if after.state == TicketState::Pending {
                self.retried.get_or_create(&queue).inc();
            }
        }
        if after.state == TicketState::Running {
            self.queue_wait
                .get_or_create(&queue)
                .observe(since(before.ready_since));
        }
        if after.state.is_terminal() {
            let outcome = match after.state {
                TicketState::Succeeded => "succeeded",
                TicketState::Failed => "failed",
                TicketState::Cancelled => "cancelled",
                _ => "expired",
            };
            self.end_to_end
                .get_or_create(&queue)
                .observe(since(after.created_at));
            self.completed
                .get_or_create(&OutcomeLabels {
                    queue: queue.queue,
                    outcome,
                })
                .inc();
        }
    }

    /// The per-queue gauges from what the store says of each queue. A
    /// queue with no ticket left (its last ones deleted after the
    /// retention period), no pause and no worker has no series: label
    /// cardinality follows the queues in use.
    fn record_queues(&self, queues: Vec<crate::engine::QueueInfo>) {
        let now = std::time::SystemTime::now();
        // Summed first: the queues past the cap share one series.
        #[derive(Default)]
        struct Sum {
            pending: i64,
            running: i64,
            oldest: f64,
            paused: i64,
            held_back: i64,
        }
        let mut sums: HashMap<QueueLabels, Sum> = HashMap::new();
        for info in queues {
            let c = info.counts;
            let held = c.pending + c.running + c.succeeded + c.failed + c.cancelled + c.expired;
            if held == 0 && info.pause.is_none() {
                continue;
            }
            let sum = sums.entry(self.queues.labels(&info.queue)).or_default();
            sum.pending += c.pending as i64;
            sum.running += c.running as i64;
            if let Some(at) = info.oldest_pending_at {
                let age = now.duration_since(at).unwrap_or_default().as_secs_f64();
                sum.oldest = sum.oldest.max(age);
            }
            sum.paused = sum.paused.max(i64::from(info.pause.is_some()));
            sum.held_back += info.held_back as i64;
        }
        self.pending.clear();
        self.running.clear();
        self.oldest_pending.clear();
        self.paused.clear();
        self.held_back.clear();
        for (labels, sum) in sums {
            self.pending.get_or_create(&labels).set(sum.pending);
            self.running.get_or_create(&labels).set(sum.running);
            self.oldest_pending.get_or_create(&labels).set(sum.oldest);
            self.paused.get_or_create(&labels).set(sum.paused);
            self.held_back.get_or_create(&labels).set(sum.held_back);
        }
    }

    /// The exposition text in `format`, with gauges read fresh from the
    /// store and the dispatcher.
    pub(crate) async fn render(
        &self,
        engine: &dyn Engine,
        dispatcher: &Dispatcher,
        format: exposition::Format,
    ) -> String {
        match engine.queues().await {
            Ok(queues) => self.record_queues(queues),
            Err(error) => tracing::warn!(%error, "metrics: queue depths unavailable"),
        }
        let mut workers: HashMap<QueueLabels, i64> = HashMap::new();
        for (queue, count) in dispatcher.worker_counts() {
            *workers.entry(self.queues.labels(&queue)).or_default() += count as i64;
        }
        self.workers.clear();
        for (labels, count) in workers {
            self.workers.get_or_create(&labels).set(count);
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "metrics encoding failed");
        }
        match format {
            exposition::Format::OpenMetrics => text,
            exposition::Format::Text => exposition::to_text_format(&text),
        }
    }
}

/// What the metrics listener answers, and whom.
pub(crate) struct Endpoint {
    /// What is exposed.
    pub metrics: Arc<Metrics>,
    /// Gauges of pending and running tickets are read from it per scrape.
    pub engine: Arc<dyn Engine>,
    /// Worker counts are read from it per scrape.
    pub dispatcher: Dispatcher,
    /// A scrape needs an admin key of these; `None` admits every scrape
    /// (no `--keys`, or `--metrics-public`).
    pub keys: Option<Keys>,
}

impl Endpoint {
    async fn answer(
        &self,
        request: &http::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> http::Response<Full<Bytes>> {
        let text = |status: http::StatusCode, body: String| {
            let mut response = http::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        };
        if request.uri().path() != "/metrics" {
            return text(
                http::StatusCode::NOT_FOUND,
                "metrics are at /metrics\n".into(),
            );
        }
        if let Some(keys) = &self.keys {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok());
            if let Err(status) = keys.check_scrape(authorization, Some(peer)) {
                if status.code() == tonic::Code::ResourceExhausted {
                    return text(
                        http::StatusCode::TOO_MANY_REQUESTS,
                        format!("{}\n", status.message()),
                    );
                }
                // 401 for a wrong role too: a scrape either carries an admin
                // key or it does not, and the fix is the same.
                let mut response = text(
                    http::StatusCode::UNAUTHORIZED,
                    format!("{}\n", status.message()),
                );
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                return response;
            }
        }
        let format = exposition::Format::negotiate(
            request
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|value| value.to_str().ok()),
        );
        let body = self
            .metrics
            .render(self.engine.as_ref(), &self.dispatcher, format)
            .await;
        let mut response = text(http::StatusCode::OK, body);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(format.content_type()),
        );
        response
    }
}

/// Serves `GET /metrics` on `listener` until `stop`, over TLS when `tls` is
/// given.
pub(crate) fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    tls: Option<TlsAcceptor>,
    shutdown: &crate::shutdown::Shutdown,
) -> SocketAddr {
    let local_addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let endpoint = Arc::new(endpoint);
    let stop = shutdown.hard_stop().clone();
    let tasks = shutdown.clone();
    shutdown.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener: accept failed");
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let endpoint = endpoint.clone();
            let stop = stop.clone();
            let tls = tls.clone();
            tasks.spawn(async move {
                let Some(tls) = tls else {
                    return serve_connection(stream, peer, endpoint, stop).await;
                };
                let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream));
                let stream = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "metrics listener: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("metrics listener: TLS handshake timed out");
                            return;
                        }
                    },
                    _ = stop.cancelled() => return,
                };
                serve_connection(stream, peer, endpoint, stop).await
            });
        }
    });
    local_addr
}

/// Serves HTTP/1.1 on one accepted connection (plain or TLS) until it ends
/// or `stop`.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    endpoint: Arc<Endpoint>,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let endpoint = endpoint.clone();
            async move { Ok::<_, std::convert::Infallible>(endpoint.answer(&request, peer).await) }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_past_the_cap_share_one_label() {
        let labeler = QueueLabeler {
            max: 2,
            named: RwLock::default(),
        };
        let label = |name: &str| labeler.labels(&QueueName::parse(name).unwrap()).queue;
        assert_eq!(label("a"), "a");
        assert_eq!(label("b"), "b");
        assert_eq!(label("c"), OTHER_QUEUES);
        assert_eq!(label("a"), "a", "a named queue keeps its name");
        assert_eq!(label("d"), OTHER_QUEUES);
        assert!(
            QueueName::parse(OTHER_QUEUES).is_err(),
            "no real queue can be mistaken for the others"
        );
    }
}
