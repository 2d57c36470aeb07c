//! Bounds on calls: how many may be open across the gateway, how many of
//! them may come without a key, and how long a request's body may take to
//! arrive.
//!
//! A call counts from its request until its response body ends, so a
//! long-lived stream (a watch, a worker's Connect) holds its place for as
//! long as it is open: 10,000 watchers cost 10,000 places, not 0 once their
//! handlers returned. A saturated gateway answers `UNAVAILABLE` at once
//! (clients retry with backoff, or elsewhere) instead of queueing without
//! bound. Health calls need no key, so they get a small budget of their own
//! and never eat into the keyed callers' one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either, Ready, ready};
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::Status;

use crate::error::GatewayError;
use tonic::codegen::http;

use crate::body::{CallObserver, Observed};

/// Paths any peer may call without a key.
pub(crate) fn is_keyless(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

/// Limits calls open at once: `max` in all, `max_keyless` of them health
/// calls (which need no key).
#[derive(Clone)]
pub(crate) struct ShedLayer {
    open: Arc<Semaphore>,
    max: usize,
    keyless: Arc<Semaphore>,
    max_keyless: usize,
}

impl ShedLayer {
    /// At most `max` calls open, `max_keyless` of them without a key.
    pub(crate) fn new(max: usize, max_keyless: usize) -> Self {
        Self {
            open: Arc::new(Semaphore::new(max)),
            max,
            keyless: Arc::new(Semaphore::new(max_keyless)),
            max_keyless,
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Clone)]
pub(crate) struct Shed<S> {
    inner: S,
    layer: ShedLayer,
}

/// A call's place, given back when its response body is dropped.
struct Place(#[allow(dead_code)] OwnedSemaphorePermit);

impl CallObserver for Place {}

impl<S, B> tower::Service<http::Request<B>> for Shed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<
        BoxFuture<'static, Result<Self::Response, Self::Error>>,
        Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let keyless = is_keyless(request.uri().path());
        let (permits, max, what, flag) = if keyless {
            (
                &self.layer.keyless,
                self.layer.max_keyless,
                "health calls",
                "--max-health-calls",
            )
        } else {
            (
                &self.layer.open,
                self.layer.max,
                "calls (streams included)",
                "--max-requests-in-progress",
            )
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let response = self.inner.call(request);
                Either::Left(Box::pin(async move {
                    let response = response.await?;
                    Ok(response.map(|body| Observed::wrap(body, Place(permit))))
                }))
            }
            Err(_) => {
                tracing::warn!(limit = max, path = request.uri().path(), "shedding load");
                Either::Right(ready(Ok(Status::from(GatewayError::Overloaded(format!(
                    "the gateway has {max} {what} open, its limit ({flag}); retry with backoff"
                )))
                .into_http())))
            }
        }
    }
}

/// Gives every request body but a worker's stream `timeout` to arrive: a
/// peer that trickles a body a byte at a time cannot hold a call (and its
/// connection, which is not idle while a call is open) forever.
#[derive(Clone, Copy)]
pub(crate) struct ReadDeadlineLayer {
    timeout: Duration,
}

impl ReadDeadlineLayer {
    /// Bodies must arrive within `timeout`.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> tower::Layer<S> for ReadDeadlineLayer {
    type Service = ReadDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadDeadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`ReadDeadlineLayer`].
#[derive(Clone)]
pub(crate) struct ReadDeadline<S> {
    inner: S,
    timeout: Duration,
}

/// Request streams that stay open for as long as the call: their liveness is
/// the worker protocol's heartbeats, not a deadline.
fn is_open_ended(path: &str) -> bool {
    path == "/asyncgate.v1.Workers/Connect"
}

impl<S, B> tower::Service<http::Request<B>> for ReadDeadline<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if is_open_ended(request.uri().path()) {
            return self.inner.call(request.map(tonic::body::Body::new));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timeout = self.timeout;
        self.inner.call(request.map(|inner| {
            tonic::body::Body::new(Deadlined {
                inner,
                deadline,
                timeout,
                sleep: None,
            })
        }))
    }
}

/// A request body that fails once its deadline passes before it ends.
struct Deadlined<B> {
    inner: B,
    deadline: tokio::time::Instant,
    timeout: Duration,
    /// Armed only when the body is not all there at once (most requests
    /// are): no timer for them.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> http_body::Body for Deadlined<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = bytes::Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Status::from(
                        GatewayError::ReadTimeout(format!(
                            "the request did not arrive within {} (--request-read-timeout); send it whole",
                            humantime::format_duration(this.timeout)
                        )),
                    ))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
