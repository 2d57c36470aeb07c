//! The tower stack every call passes through, outermost first, and why each
//! layer sits where it does. `serve` applies it to the gateway's routes.

use std::sync::Arc;

use futures::Stream;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::{Server, ServerTlsConfig};

use crate::auth::{AuthLayer, Keys};
use crate::config::Config;
use crate::connection::{TrackCallsLayer, TrackedStream};
use crate::error::GatewayError;
use crate::limits::{ReadDeadlineLayer, ShedLayer};
use crate::metrics::{Metrics, RpcMetricsLayer};
use crate::rescue::RescueLayer;
use crate::server::StartError;

/// Largest header list HTTP/2 reads before refusing with a bare 431; up to
/// it, the rescue layer answers over-size metadata with a status that says
/// what is wrong ([`crate::rescue::MAX_HEADER_LIST_BYTES`]).
const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// What the stack is built from.
pub(crate) struct Stack {
    /// The gateway's settings.
    pub config: Arc<Config>,
    /// The API keys, if `--keys`.
    pub keys: Option<Keys>,
    /// Where RPC metrics go, if `--metrics-listen`.
    pub metrics: Option<Arc<Metrics>>,
    /// The Connect translation, with `--grpc-web`.
    pub connect: Option<crate::connect::ConnectLayer>,
    /// The largest message accepted (payload limit plus envelope).
    pub max_message: usize,
    builder: Server,
}

impl Stack {
    /// The HTTP server's settings (TLS, HTTP/1.1 for browsers, HTTP/2
    /// limits and keepalives) for this configuration.
    pub(crate) fn new(
        config: Arc<Config>,
        tls: Option<ServerTlsConfig>,
        keys: Option<Keys>,
        metrics: Option<Arc<Metrics>>,
        connect: Option<crate::connect::ConnectLayer>,
        max_message: usize,
    ) -> Result<Self, StartError> {
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| StartError::Tls(e.to_string()))?;
        }
        let builder = builder
            .accept_http1(config.grpc_web)
            .max_concurrent_streams(config.max_streams_per_connection)
            // Request metadata (API keys, trace context, labels) stays small.
            .http2_max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_timeout));
        Ok(Self {
            config,
            keys,
            metrics,
            connect,
            max_message,
            builder,
        })
    }
}

/// Serves `routes` behind the stack on `incoming` until `signal`, then
/// drains the connections (tonic's graceful shutdown).
pub(crate) async fn serve<I>(
    stack: Stack,
    routes: Routes,
    incoming: I,
    signal: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: Stream<Item = std::io::Result<TrackedStream>>,
{
    let Stack {
        config,
        keys,
        metrics,
        connect,
        max_message,
        builder,
    } = stack;
    builder
        // The dashboard's files outermost: public, same-origin static GETs
        // that need no CORS, key, metrics or call limits, and that
        // tonic-web (which refuses plain HTTP/1.1) must never see. The
        // page's API calls carry its key through everything below.
        .layer(tower::util::option_layer(
            config.dashboard.then_some(crate::dashboard::DashboardLayer),
        ))
        // CORS next: a browser's preflight carries no API key, and a
        // refused origin must get no CORS headers whatever happens inside.
        .layer(tower::util::option_layer(cors(&config)))
        // Connect beside gRPC-Web, outside tonic-web (which refuses any
        // HTTP/1.1 request that is not gRPC-Web) and outside every layer
        // below, so that a Connect call meets the same key check and limits
        // as a gRPC one.
        .layer(tower::util::option_layer(connect))
        // gRPC-Web becomes gRPC here, for the same reason.
        .layer(tower::util::option_layer(
            config.grpc_web.then(tonic_web::GrpcWebLayer::new),
        ))
        // Metrics outside the refusals below, so that shed, timed-out,
        // unauthenticated and unreadable calls are counted with their codes.
        .layer(RpcMetricsLayer::new(metrics))
        // A bug that panics in a call answers that call INTERNAL with an
        // error id (the log has the panic under it) instead of resetting
        // the stream; inside metrics, so the call is counted as INTERNAL.
        .layer(tower::util::MapResponseLayer::new(
            |response: http::Response<_>| response.map(tonic::body::Body::new),
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        // Calls open per connection: an idle connection (no call) may be
        // closed; counted before shedding so a shed call counts too.
        .layer(TrackCallsLayer)
        // Bounds on calls in progress (keyed and keyless): before the read
        // deadline and auth, so that a flood costs the least possible.
        .layer(ShedLayer::new(
            config.max_requests_in_progress,
            config.max_health_calls,
        ))
        // A request must arrive within --request-read-timeout.
        .layer(ReadDeadlineLayer::new(config.request_read_timeout))
        // Sees tonic's own refusals of unreadable requests, and the header
        // size, before anything reads a header.
        .layer(RescueLayer::new(crate::rescue::Limits {
            max_message_bytes: max_message,
        }))
        // Innermost: the caller's key decides what the services may do,
        // and the services read the caller from the request.
        .layer(AuthLayer::new(keys))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal)
        .await
}

/// The answer to a call whose handler panicked: INTERNAL, with the id under
/// which the panic is logged.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> http::Response<tonic::body::Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    let status = tonic::Status::from(GatewayError::internal(format!("a call panicked: {detail}")));
    status.into_http()
}

/// Request headers browsers may send by default: what gRPC-Web clients
/// (grpc-web, Connect-ES's `createGrpcWebTransport`) and Connect clients
/// (`createConnectTransport`, plain `fetch`) send, the API key, and trace
/// context. `--cors-allow-header` adds more.
pub(crate) const CORS_ALLOW_HEADERS: [&str; 13] = [
    "content-type",
    "authorization",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "grpc-accept-encoding",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-content-encoding",
    "connect-accept-encoding",
    "content-encoding",
    "traceparent",
    "tracestate",
];

/// Response headers pages may read: gRPC-Web's status headers (of
/// trailers-only answers) and Connect's encoding headers.
pub(crate) const CORS_EXPOSE_HEADERS: [&str; 6] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "connect-content-encoding",
    "connect-accept-encoding",
    "content-encoding",
];

/// The CORS policy of `--cors-allow-origin` and `--cors-allow-header`:
/// browsers on those origins may call over gRPC-Web or Connect, sending the
/// headers those protocols need and reading their status headers. With
/// `--grpc-web` and no origin every cross-origin call is refused. A refused
/// origin is logged at debug level with the allowed ones, since the browser
/// only tells its console.
fn cors(config: &Config) -> Option<tower_http::cors::CorsLayer> {
    use tonic::codegen::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if !config.grpc_web {
        return None;
    }
    let origins = if config.cors_allow_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let allowed: Vec<HeaderValue> = config
            .cors_allow_origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok())
            .collect();
        let listed = if allowed.is_empty() {
            "none (no --cors-allow-origin)".to_owned()
        } else {
            config.cors_allow_origins.join(", ")
        };
        AllowOrigin::predicate(move |origin: &HeaderValue, request| {
            let ok = allowed.iter().any(|allowed| allowed == origin);
            if !ok {
                tracing::debug!(
                    ?origin,
                    allowed = %listed,
                    path = request.uri.path(),
                    "CORS: refused a request from an origin not in --cors-allow-origin (the browser blocks the page's call); the origin must match exactly, scheme, host and port (localhost and 127.0.0.1 differ)"
                );
            }
            ok
        })
    };
    let allow_headers: Vec<HeaderName> = CORS_ALLOW_HEADERS
        .iter()
        .map(|name| HeaderName::from_static(name))
        .chain(
            config
                .cors_allow_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
        )
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::POST, Method::OPTIONS])
            .allow_headers(allow_headers)
            .expose_headers(CORS_EXPOSE_HEADERS.map(HeaderName::from_static))
            .max_age(std::time::Duration::from_secs(24 * 3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn a_call_that_panics_is_answered_internal_with_an_error_id() {
        let handler = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
            if true {
                panic!("the invariant broke");
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut service = tower_http::catch_panic::CatchPanicLayer::custom(panicked).layer(handler);
        let response = service
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(tonic::body::Body::empty()))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status.message().starts_with("internal error ")
                && status
                    .message()
                    .ends_with("the gateway's log has the detail under this id"),
            "{}",
            status.message()
        );
        assert!(
            !status.message().contains("invariant"),
            "{}",
            status.message()
        );
    }
}
