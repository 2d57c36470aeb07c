//! Client connections: which calls each one has open, and closing those left
//! idle. An HTTP/2 keepalive only proves the peer is alive; a connection that
//! has carried no call for `--idle-timeout` is closed so that idle or
//! abandoned clients cannot hold sockets (and their memory) forever. At
//! shutdown every connection is closed a moment after the grace period, so
//! that a peer that stopped reading (its streams stuck behind full flow
//! control windows) cannot hold the gateway open. Their writes are coalesced
//! ([`Corked`]) when they can only be HTTP/2.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use asyncgate_proto::corked::Corked;
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
pub struct ConnectionInfo {
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
pub fn remote_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    ConnectionInfo::of(extensions).and_then(|info| info.tcp.remote_addr)
}

/// An accepted TCP connection that ends itself (as if the peer had closed
/// it) once it has been idle for the timeout.
pub struct TrackedStream {
    io: Corked<TcpStream>,
    activity: Arc<Activity>,
    idle: Option<IdleTimer>,
    /// Resolves when the connection must end regardless (shutdown).
    close_at: Option<BoxFuture<'static, ()>>,
    closed: bool,
}

struct IdleTimer {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl TrackedStream {
    /// Tracks `io`; `idle_timeout` of `None` never closes it. With
    /// `coalesce_writes`, what one poll of the connection writes leaves in one
    /// syscall ([`Corked`]; HTTP/2 only).
    pub fn new(io: TcpStream, idle_timeout: Option<Duration>, coalesce_writes: bool) -> Self {
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
        }
    }

    /// Ends the connection, as if the peer had closed it, once `close_at`
    /// resolves.
    pub fn close_at(mut self, close_at: impl Future<Output = ()> + Send + 'static) -> Self {
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
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts each call as open on its connection from its request until its
/// response body ends.
#[derive(Clone, Copy, Default)]
pub struct TrackCallsLayer;

impl<S> tower::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackCalls { inner }
    }
}

/// See [`TrackCallsLayer`].
#[derive(Clone)]
pub struct TrackCalls<S> {
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
