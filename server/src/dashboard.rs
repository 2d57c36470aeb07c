//! `--dashboard`: the web dashboard's files, embedded at build time
//! (`build.rs` turns `server/dashboard/` into a table of `include_bytes!`
//! entries), served at `/dashboard/` on the gateway's own port.
//!
//! The files are public (no key): the page carries the API key on its own
//! gRPC-Web calls, which meet the same auth as any call. Lookup is an exact
//! match against the embedded table, so no request path ever reaches the
//! file system (no traversal). `index.html` is revalidated on every load
//! (`no-cache` + a strong ETag), so a new gateway's page is picked up; the
//! hashed files under `assets/` are immutable.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures::TryFutureExt as _;
use futures::future::{BoxFuture, Either};
use http_body_util::Full;
use tonic::body::Body;
use tonic::codegen::http::{HeaderValue, Method, Request, Response, StatusCode, header};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the dashboard is served.
pub const PATH: &str = "/dashboard/";

/// One embedded file.
struct Asset {
    /// Relative to the dashboard's root, `/`-separated.
    path: &'static str,
    bytes: &'static [u8],
    /// Quoted, strong: a SHA-256 prefix of `bytes`.
    etag: &'static str,
}

static ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// What the page may do: its own scripts and styles, calls to its own
/// origin, nothing framed or inlined.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// The embedded file a request path names, if any: `/dashboard/` is
/// `index.html`. Only exact names of embedded files match.
fn lookup(path: &str) -> Option<&'static Asset> {
    let relative = path.strip_prefix(PATH)?;
    let relative = if relative.is_empty() {
        "index.html"
    } else {
        relative
    };
    ASSETS.iter().find(|asset| asset.path == relative)
}

/// The content type of a file, by its extension (what Vite emits).
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The answer to a request under the dashboard's path (or the bare
/// `/dashboard`, redirected so relative asset URLs resolve).
fn respond<B>(request: &Request<B>) -> Response<Body> {
    let path = request.uri().path();
    let mut response = Response::builder();
    if path == PATH.trim_end_matches('/') {
        return response
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, PATH)
            .body(Body::empty())
            .unwrap_or_default();
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return response
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Body::empty())
            .unwrap_or_default();
    }
    let Some(asset) = lookup(path) else {
        return response
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::new(Full::new(Bytes::from_static(
                b"not found: no such dashboard file\n",
            ))))
            .unwrap_or_default();
    };
    let cache = if asset.path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    response = response
        .header(header::ETAG, asset.etag)
        .header(header::CACHE_CONTROL, cache)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    let fresh = request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == asset.etag || tag.trim() == "*");
    if fresh {
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    response = response
        .header(header::CONTENT_TYPE, content_type(asset.path))
        .header(header::CONTENT_LENGTH, HeaderValue::from(asset.bytes.len()));
    let body = if request.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::new(Full::new(Bytes::from_static(asset.bytes)))
    };
    response.body(body).unwrap_or_default()
}

/// Serves the dashboard in front of the gateway's routes; every other
/// request passes through untouched.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DashboardLayer;

impl<S> tower::Layer<S> for DashboardLayer {
    type Service = DashboardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DashboardService { inner }
    }
}

/// See [`DashboardLayer`].
#[derive(Clone, Debug)]
pub(crate) struct DashboardService<S> {
    inner: S,
}

type PassThrough<F, ResBody> = futures::future::MapOk<F, fn(Response<ResBody>) -> Response<Body>>;

impl<S, B, ResBody> tower::Service<Request<B>> for DashboardService<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<
        PassThrough<S::Future, ResBody>,
        BoxFuture<'static, Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with(PATH) || path == PATH.trim_end_matches('/') {
            let response = respond(&request);
            return Either::Right(Box::pin(std::future::ready(Ok(response))));
        }
        Either::Left(self.inner.call(request).map_ok(to_body as fn(_) -> _))
    }
}

fn to_body<ResBody>(response: Response<ResBody>) -> Response<Body>
where
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    response.map(Body::new)
}

#[cfg(test)]
mod tests;
