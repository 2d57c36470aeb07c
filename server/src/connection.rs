//! Client connections: which calls each one has open, and closing those left
//! idle. An HTTP/2 keepalive only proves the peer is alive; a connection that
//! has carried no call for `--idle-timeout` is closed so that idle or
//! abandoned clients cannot hold sockets (and their memory) forever. At
//! shutdown every connection is closed a moment after the grace period, so
//! that a peer that stopped reading (its streams stuck behind full flow
//! control windows) cannot hold the gateway open. Their writes are coalesced
//! ([`Corked`]) when they can only be HTTP/2.
//!
//! Without `--grpc-web` (and without TLS) a connection whose first bytes
//! are not HTTP/2's preface (an HTTP/1.1 request: gRPC-Web, Connect, a
//! browser, curl) is answered `505 HTTP Version Not Supported` with a text
//! saying to start the gateway with `--grpc-web`, and a warning is logged
//! the first time (then at debug level), instead of hyper closing it
//! silently. Until the preface is confirmed, what the HTTP/2 server writes
//! first (its SETTINGS) is held back, so that an HTTP/1.1 client reads a
//! clean HTTP/1.1 answer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use asyncgate_io::corked::Corked;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::body::{CallObserver, Observed};

/// Calls open on one connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    accepted: Instant,
    open_calls: AtomicUsize,
    /// Milliseconds after `accepted` when the last call ended.
    last_call_ended_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            open_calls: AtomicUsize::new(0),
            last_call_ended_ms: AtomicU64::new(0),
        }
    }

    fn call_started(&self) {
        self.open_calls.fetch_add(1, Ordering::SeqCst);
    }

    fn call_ended(&self) {
        let elapsed = self.accepted.elapsed().as_millis() as u64;
        self.last_call_ended_ms.fetch_max(elapsed, Ordering::SeqCst);
        self.open_calls.fetch_sub(1, Ordering::SeqCst);
    }

    /// When the connection becomes idle for `timeout`, if no call is open.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open_calls.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let ended = self.last_call_ended_ms.load(Ordering::SeqCst);
        Some(self.accepted + Duration::from_millis(ended) + timeout)
    }
}

/// What the gateway knows about the connection a request came on (a request
/// extension, like tonic's `TcpConnectInfo`).
#[derive(Clone, Debug)]
pub(crate) struct ConnectionInfo {
    tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

impl ConnectionInfo {
    fn of(extensions: &http::Extensions) -> Option<&Self> {
        extensions.get::<Self>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<Self>>()
                .map(TlsConnectInfo::get_ref)
        })
    }
}

/// The peer address of the connection a request came on.
pub(crate) fn remote_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    ConnectionInfo::of(extensions).and_then(|info| info.tcp.remote_addr)
}

/// An accepted TCP connection that ends itself (as if the peer had closed
/// it) once it has been idle for the timeout.
pub(crate) struct TrackedStream {
    io: Corked<TcpStream>,
    activity: Arc<Activity>,
    idle: Option<IdleTimer>,
    /// Resolves when the connection must end regardless (shutdown).
    close_at: Option<BoxFuture<'static, ()>>,
    closed: bool,
    /// Set while the first bytes are checked for HTTP/2's preface.
    sniff: Option<Sniff>,
    /// Writes the HTTP/2 server made before the preface was confirmed,
    /// sent once it is.
    held: Vec<u8>,
    /// An HTTP/1.1 request was answered: everything else written is dropped.
    refused: bool,
}

/// The first bytes of a connection so far, to tell HTTP/2 from HTTP/1.1.
struct Sniff {
    seen: Vec<u8>,
}

/// Enough of HTTP/2's client preface (`PRI * HTTP/2.0...`) to tell it from
/// any HTTP/1.1 method.
const H2_PREFACE_START: &[u8] = b"PRI ";

/// Whether an HTTP/1.1 request was already logged as a warning (once per
/// process; later ones at debug level).
static HTTP1_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The answer to an HTTP/1.1 request on an HTTP/2-only gateway.
const HTTP1_REFUSAL: &str = "this gateway serves gRPC over HTTP/2 only; start it with --grpc-web to serve gRPC-Web and Connect (HTTP/1.1, browsers, curl)\n";

struct IdleTimer {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl TrackedStream {
    /// Tracks `io`; `idle_timeout` of `None` never closes it. With
    /// `coalesce_writes`, what one poll of the connection writes leaves in one
    /// syscall ([`Corked`]; HTTP/2 only).
    pub(crate) fn new(
        io: TcpStream,
        idle_timeout: Option<Duration>,
        coalesce_writes: bool,
    ) -> Self {
        let activity = Arc::new(Activity::new());
        let idle = idle_timeout.map(|timeout| IdleTimer {
            timeout,
            sleep: Box::pin(tokio::time::sleep_until(activity.accepted + timeout)),
        });
        Self {
            io: if coalesce_writes {
                Corked::new(io)
            } else {
                Corked::passthrough(io)
            },
            activity,
            idle,
            close_at: None,
            closed: false,
            sniff: None,
            held: Vec::new(),
            refused: false,
        }
    }

    /// Answers an HTTP/1.1 request with `505` and a text naming
    /// `--grpc-web` (logged) instead of closing silently; for a plaintext
    /// gateway that serves HTTP/2 only.
    pub(crate) fn refuse_http1(mut self, refuse: bool) -> Self {
        self.sniff = refuse.then(|| Sniff { seen: Vec::new() });
        self
    }

    /// Sends the writes held back while the preface was checked.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }

    /// Checks the bytes just read (`new`) against HTTP/2's preface: `false`
    /// when they are something else, which was then answered.
    fn check_preface(&mut self, cx: &mut Context<'_>, new: &[u8]) -> bool {
        let Some(sniff) = &mut self.sniff else {
            return true;
        };
        let take = (H2_PREFACE_START.len() - sniff.seen.len()).min(new.len());
        sniff.seen.extend_from_slice(&new[..take]);
        if !H2_PREFACE_START.starts_with(&sniff.seen) {
            let peer = self.io.get_ref().peer_addr().ok();
            let first_line =
                String::from_utf8_lossy(new.split(|b| *b == b'\r').next().unwrap_or_default())
                    .chars()
                    .take(120)
                    .collect::<String>();
            if HTTP1_WARNED.swap(true, Ordering::Relaxed) {
                tracing::debug!(?peer, request = %first_line, "refused an HTTP/1.1 request: start the gateway with --grpc-web to serve gRPC-Web and Connect");
            } else {
                tracing::warn!(?peer, request = %first_line, "refused an HTTP/1.1 request (gRPC-Web, Connect, a browser or curl?): this gateway serves gRPC over HTTP/2 only; start it with --grpc-web to serve them (logged once; later ones at debug level)");
            }
            let answer = format!(
                "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{HTTP1_REFUSAL}",
                HTTP1_REFUSAL.len()
            );
            // The rest of the request is read and dropped first: closing a
            // socket with unread bytes resets it, and the reset can destroy
            // the answer before the client reads it (HTTP/2's server only
            // read the preface's length).
            let mut scratch = [0u8; 8192];
            for _ in 0..8 {
                let mut rest = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.io).poll_read(cx, &mut rest) {
                    Poll::Ready(Ok(())) if !rest.filled().is_empty() => continue,
                    _ => break,
                }
            }
            // Best effort: a fresh socket's send buffer takes this at once.
            let _ = Pin::new(&mut self.io).poll_write(cx, answer.as_bytes());
            let _ = Pin::new(&mut self.io).poll_flush(cx);
            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
            self.sniff = None;
            self.held.clear();
            self.refused = true;
            self.closed = true;
            return false;
        }
        if sniff.seen.len() == H2_PREFACE_START.len() {
            self.sniff = None;
            // Pending or not, the connection's task is woken to finish it.
            let _ = self.poll_held(cx);
        }
        true
    }

    /// Ends the connection, as if the peer had closed it, once `close_at`
    /// resolves.
    pub(crate) fn close_at(mut self, close_at: impl Future<Output = ()> + Send + 'static) -> Self {
        self.close_at = Some(Box::pin(close_at));
        self
    }

    /// Whether the connection must end now: shut down, or idle too long.
    fn must_close(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(close_at) = &mut self.close_at
            && close_at.as_mut().poll(cx).is_ready()
        {
            tracing::debug!(peer = ?self.io.get_ref().peer_addr().ok(), "closing a connection still open after shutdown");
            return true;
        }
        if self.idle_expired(cx) {
            tracing::debug!(peer = ?self.io.get_ref().peer_addr().ok(), "closing an idle connection");
            return true;
        }
        false
    }

    /// Whether the idle timeout has passed; otherwise the timer is armed to
    /// wake the connection's task when it might.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = &mut self.idle else {
            return false;
        };
        while idle.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.activity.idle_deadline(idle.timeout) {
                Some(deadline) if deadline <= now => return true,
                Some(deadline) => idle.sleep.as_mut().reset(deadline),
                None => idle.sleep.as_mut().reset(now + idle.timeout),
            }
        }
        false
    }
}

impl Connected for TrackedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            tcp: self.io.get_ref().connect_info(),
            activity: self.activity.clone(),
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        if self.must_close(cx) {
            self.closed = true;
            return Poll::Ready(Ok(()));
        }
        if self.sniff.is_none() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let new = buf.filled()[before..].to_vec();
        if !self.check_preface(cx, &new) {
            // Read as the end of the stream: hyper closes the connection.
            buf.set_filled(before);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.refused {
            return Poll::Ready(Ok(buf.len()));
        }
        if self.sniff.is_some() {
            self.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        std::task::ready!(self.poll_held(cx))?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.refused || self.sniff.is_some() {
            let len = bufs.iter().map(|b| b.len()).sum();
            if !self.refused {
                for b in bufs {
                    self.held.extend_from_slice(b);
                }
            }
            return Poll::Ready(Ok(len));
        }
        std::task::ready!(self.poll_held(cx))?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.sniff.is_some() {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_held(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.sniff.is_none() && !self.refused {
            std::task::ready!(self.poll_held(cx))?;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts each call as open on its connection from its request until its
/// response body ends.
#[derive(Clone, Copy, Default)]
pub(crate) struct TrackCallsLayer;

impl<S> tower::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackCalls { inner }
    }
}

/// See [`TrackCallsLayer`].
#[derive(Clone)]
pub(crate) struct TrackCalls<S> {
    inner: S,
}

/// Ends a call's open count when dropped.
struct OpenCall(Arc<Activity>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.call_ended();
    }
}

impl CallObserver for OpenCall {}

impl<S, B> tower::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // A keyless health stream does not keep its connection from being
        // idle: anyone could hold connections open with them.
        let Some(info) = ConnectionInfo::of(request.extensions())
            .filter(|_| !crate::limits::is_keyless(request.uri().path()))
        else {
            return futures::future::Either::Left(self.inner.call(request));
        };
        info.activity.call_started();
        let open = OpenCall(info.activity.clone());
        let response = self.inner.call(request);
        futures::future::Either::Right(Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Observed::wrap(body, open)))
        }))
    }
}
