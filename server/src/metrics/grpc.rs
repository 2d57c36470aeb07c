//! gRPC server metrics with go-grpc-prometheus's names, labels and meaning,
//! so stock gRPC dashboards and alerts work unchanged:
//! `grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_msg_received_total`, `grpc_server_msg_sent_total` and the
//! `grpc_server_handling_seconds` histogram (Prometheus' default buckets),
//! each labelled `grpc_type`, `grpc_service`, `grpc_method` (and
//! `grpc_code`, spelt as Go's `codes.Code.String()`).
//!
//! The method table comes from the descriptor sets of the services the
//! gateway serves, so a method's `grpc_type` is the proto's and cannot
//! drift; every method's series exist from the start, at zero (as
//! go-grpc-prometheus' `InitializeMetrics` does), so `rate()` and absent
//! alerts work before the first call. Messages are counted per gRPC frame
//! as the bodies pass this layer, which sees every call: requests shed or
//! refused by inner layers are started and handled like any other.
//!
//! Unlike go-grpc-prometheus (whose interceptors never see a call to a
//! method the server lacks), calls to unknown paths are counted under
//! `grpc_type="unknown",grpc_service="unknown",grpc_method="unknown"`:
//! one fixed series, so a client cannot mint label values.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use prost::Message as _;
use tonic::codegen::http;

use super::Metrics;
use crate::body::{CallObserver, Observed};

/// The encoded descriptor sets of every service the gateway serves
/// (`server.rs` adds exactly these: the gateway's own, health and both
/// reflection versions).
const SERVED: &[&[u8]] = &[
    asyncgate_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Every gRPC status code, in go-grpc-prometheus' order.
const ALL_CODES: [tonic::Code; 17] = [
    tonic::Code::Ok,
    tonic::Code::Cancelled,
    tonic::Code::Unknown,
    tonic::Code::InvalidArgument,
    tonic::Code::DeadlineExceeded,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::PermissionDenied,
    tonic::Code::Unauthenticated,
    tonic::Code::ResourceExhausted,
    tonic::Code::FailedPrecondition,
    tonic::Code::Aborted,
    tonic::Code::OutOfRange,
    tonic::Code::Unimplemented,
    tonic::Code::Internal,
    tonic::Code::Unavailable,
    tonic::Code::DataLoss,
];

/// A method's kind, by whether each side streams (go-grpc-prometheus'
/// `grpc_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrpcType {
    /// One request, one response.
    Unary,
    /// A request stream, one response.
    ClientStream,
    /// One request, a response stream.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl GrpcType {
    fn of(client_streaming: bool, server_streaming: bool) -> Self {
        match (client_streaming, server_streaming) {
            (false, false) => Self::Unary,
            (true, false) => Self::ClientStream,
            (false, true) => Self::ServerStream,
            (true, true) => Self::BidiStream,
        }
    }

    /// The `grpc_type` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }
}

/// `path` (`/package.Service/Method`) → its kind, for every method in
/// `descriptor_sets`. A set that does not decode is logged and skipped
/// (they are compiled in; a test decodes them all).
pub(crate) fn method_types(descriptor_sets: &[&[u8]]) -> HashMap<String, GrpcType> {
    let mut methods = HashMap::new();
    for encoded in descriptor_sets {
        let set = match prost_types::FileDescriptorSet::decode(*encoded) {
            Ok(set) => set,
            Err(error) => {
                tracing::error!(%error, "metrics: a compiled-in descriptor set does not decode");
                continue;
            }
        };
        for file in &set.file {
            for service in &file.service {
                let service_name = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    methods.insert(
                        format!("/{service_name}/{}", method.name()),
                        GrpcType::of(method.client_streaming(), method.server_streaming()),
                    );
                }
            }
        }
    }
    methods
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// One method's series, looked up once: a call only bumps shared atomics.
struct MethodSeries {
    started: Counter,
    received: Counter,
    sent: Counter,
    handling: Histogram,
    /// Indexed like [`ALL_CODES`].
    handled: Vec<Counter>,
}

/// Prometheus' default buckets (client_golang `DefBuckets`), which
/// go-grpc-prometheus uses.
fn handling_seconds() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The gRPC families and the served methods' series.
pub(super) struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    received: Family<MethodLabels, Counter>,
    sent: Family<MethodLabels, Counter>,
    handling: HistogramFamily<MethodLabels>,
    /// Every served method, by path.
    methods: HashMap<String, Arc<MethodSeries>>,
    /// Calls to any other path; made on the first such call.
    unknown: OnceLock<Arc<MethodSeries>>,
}

impl GrpcMetrics {
    /// Registers the families in `registry` and creates every served
    /// method's series at zero.
    pub(super) fn new(registry: &mut Registry) -> Self {
        let mut metrics = Self {
            started: Family::default(),
            handled: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            handling: Family::new_with_constructor(handling_seconds),
            methods: HashMap::new(),
            unknown: OnceLock::new(),
        };
        // go-grpc-prometheus' help texts, word for word (prometheus-client
        // adds the full stop).
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            metrics.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            metrics.handled.clone(),
        );
        registry.register(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server",
            metrics.received.clone(),
        );
        registry.register(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server",
            metrics.sent.clone(),
        );
        registry.register_with_unit(
            "grpc_server_handling",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            Unit::Seconds,
            metrics.handling.clone(),
        );
        let mut methods = HashMap::new();
        for (path, kind) in method_types(SERVED) {
            if let Some((service, method)) = path.trim_start_matches('/').split_once('/') {
                let series = metrics.series(kind.as_str(), service, method);
                methods.insert(path, series);
            }
        }
        metrics.methods = methods;
        metrics
    }

    fn series(&self, grpc_type: &'static str, service: &str, method: &str) -> Arc<MethodSeries> {
        let labels = MethodLabels {
            grpc_type,
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
        };
        let handled = ALL_CODES
            .iter()
            .map(|&code| {
                self.handled
                    .get_or_create(&HandledLabels {
                        grpc_type,
                        grpc_service: labels.grpc_service.clone(),
                        grpc_method: labels.grpc_method.clone(),
                        grpc_code: code_name(code),
                    })
                    .clone()
            })
            .collect();
        Arc::new(MethodSeries {
            started: self.started.get_or_create(&labels).clone(),
            received: self.received.get_or_create(&labels).clone(),
            sent: self.sent.get_or_create(&labels).clone(),
            handling: self.handling.get_or_create(&labels).clone(),
            handled,
        })
    }

    /// The series of the method at `path`, or the one for unknown paths.
    fn method(&self, path: &str) -> Arc<MethodSeries> {
        match self.methods.get(path) {
            Some(series) => series.clone(),
            None => self
                .unknown
                .get_or_init(|| self.series("unknown", "unknown", "unknown"))
                .clone(),
        }
    }
}

/// go-grpc-prometheus spells codes as Go's `codes.Code.String()`.
pub(super) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// Counts the gRPC messages in a byte stream: each is a 5-byte prefix
/// (compressed flag, big-endian length) and that many bytes, and either
/// may be split across chunks. Compression does not change the framing.
#[derive(Debug, Default)]
pub(crate) struct MessageFrames {
    /// Prefix bytes of the next message seen so far.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come (0: reading a prefix).
    remaining: u64,
}

impl MessageFrames {
    /// Feeds the next chunk; returns how many messages it completed.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut completed = 0;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let take = chunk
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                chunk = &chunk[take..];
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    completed += 1;
                }
                continue;
            }
            let take = chunk.len().min(5 - self.prefix_len);
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                if self.remaining == 0 {
                    completed += 1;
                }
            }
        }
        completed
    }
}

/// Counts every RPC go-grpc-prometheus' way, in one place.
#[derive(Clone)]
pub(crate) struct RpcMetricsLayer {
    metrics: Option<Arc<Metrics>>,
}

impl RpcMetricsLayer {
    /// Records into `metrics`; `None` records nothing.
    pub(crate) fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

/// One RPC in flight; handled when its response body is dropped.
struct RpcCall {
    series: Arc<MethodSeries>,
    started: Instant,
    code: Option<tonic::Code>,
    sent: MessageFrames,
}

impl CallObserver for RpcCall {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(code) = grpc_status(trailers) {
            self.code = Some(code);
        }
    }

    fn data(&mut self, data: &Bytes) {
        let messages = self.sent.feed(data);
        if messages > 0 {
            self.series.sent.inc_by(messages);
        }
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        // A response that ended without a status: the client went away.
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        let index = ALL_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(2 /* Unknown */);
        if let Some(handled) = self.series.handled.get(index) {
            handled.inc();
        }
        self.series
            .handling
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// A request body that counts the messages it carries.
struct Received<B> {
    inner: B,
    frames: MessageFrames,
    counter: Counter,
}

impl<B> http_body::Body for Received<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(data) = frame.data_ref()
        {
            let messages = this.frames.feed(data);
            if messages > 0 {
                this.counter.inc_by(messages);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return futures::future::Either::Left(
                self.inner.call(request.map(tonic::body::Body::new)),
            );
        };
        let series = metrics.grpc.method(request.uri().path());
        series.started.inc();
        let counter = series.received.clone();
        let request = request.map(|inner| {
            tonic::body::Body::new(Received {
                inner,
                frames: MessageFrames::default(),
                counter,
            })
        });
        let mut call = RpcCall {
            series,
            started: Instant::now(),
            code: None,
            sent: MessageFrames::default(),
        };
        let response = self.inner.call(request);
        futures::future::Either::Right(Box::pin(async move {
            let response = response.await?;
            // A trailers-only response carries its status in the headers.
            call.code = grpc_status(response.headers());
            Ok(response.map(|body| Observed::wrap(body, call)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_kinds_come_from_the_served_protos() {
        let methods = method_types(SERVED);
        let kind = |path: &str| methods.get(path).copied();
        assert_eq!(kind("/asyncgate.v1.Gateway/Submit"), Some(GrpcType::Unary));
        assert_eq!(
            kind("/asyncgate.v1.Gateway/SubmitBatch"),
            Some(GrpcType::Unary)
        );
        assert_eq!(
            kind("/asyncgate.v1.Gateway/WatchTicket"),
            Some(GrpcType::ServerStream)
        );
        assert_eq!(
            kind("/asyncgate.v1.Gateway/Execute"),
            Some(GrpcType::ServerStream)
        );
        assert_eq!(
            kind("/asyncgate.v1.Workers/Connect"),
            Some(GrpcType::BidiStream)
        );
        assert_eq!(
            kind("/google.longrunning.Operations/WaitOperation"),
            Some(GrpcType::Unary)
        );
        assert_eq!(kind("/grpc.health.v1.Health/Check"), Some(GrpcType::Unary));
        assert_eq!(
            kind("/grpc.health.v1.Health/Watch"),
            Some(GrpcType::ServerStream)
        );
        assert_eq!(
            kind("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Some(GrpcType::BidiStream)
        );
        assert_eq!(
            kind("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Some(GrpcType::BidiStream)
        );
        assert_eq!(
            kind("/asyncgate.bench.v1.Echo/Echo"),
            None,
            "the benchmark's echo is not served"
        );
        // Every method of every served set decodes into the table.
        let decoded: usize = SERVED
            .iter()
            .map(|set| {
                prost_types::FileDescriptorSet::decode(*set)
                    .expect("a compiled-in set decodes")
                    .file
                    .iter()
                    .flat_map(|f| &f.service)
                    .map(|s| s.method.len())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(methods.len(), decoded);
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(payload);
        framed
    }

    #[test]
    fn messages_are_counted_across_any_chunking() {
        let mut stream = Vec::new();
        for payload in [&b"hello"[..], b"", &[7; 300][..], b"x"] {
            stream.extend(frame(payload));
        }
        for chunk_size in 1..=stream.len() {
            let mut frames = MessageFrames::default();
            let total: u64 = stream.chunks(chunk_size).map(|c| frames.feed(c)).sum();
            assert_eq!(total, 4, "chunks of {chunk_size}");
        }
        let mut frames = MessageFrames::default();
        assert_eq!(
            frames.feed(&stream[..stream.len() - 1]),
            3,
            "the last is cut"
        );
        assert_eq!(frames.feed(&stream[stream.len() - 1..]), 1);
    }

    #[test]
    fn every_code_has_its_go_name() {
        let names: Vec<_> = ALL_CODES.iter().map(|&c| code_name(c)).collect();
        assert_eq!(
            names,
            [
                "OK",
                "Canceled",
                "Unknown",
                "InvalidArgument",
                "DeadlineExceeded",
                "NotFound",
                "AlreadyExists",
                "PermissionDenied",
                "Unauthenticated",
                "ResourceExhausted",
                "FailedPrecondition",
                "Aborted",
                "OutOfRange",
                "Unimplemented",
                "Internal",
                "Unavailable",
                "DataLoss",
            ]
        );
    }
}
