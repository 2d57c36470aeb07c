//! Load shedding: a bound on requests in progress across the gateway. A
//! saturated gateway answers `UNAVAILABLE` at once (clients retry with
//! backoff, or elsewhere) instead of queueing without bound.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either, Ready, ready};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::codegen::http;

/// Limits requests in progress (a handler running, or a stream being
/// opened) to `max`.
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ShedLayer {
    /// At most `max` requests in progress.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
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
pub struct Shed<S> {
    inner: S,
    layer: ShedLayer,
}

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
        // Health checks stay answerable under load.
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            let response = self.inner.call(request);
            return Either::Left(Box::pin(response));
        }
        match self.layer.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let response = self.inner.call(request);
                Either::Left(Box::pin(async move {
                    let response = response.await;
                    drop::<OwnedSemaphorePermit>(permit);
                    response
                }))
            }
            Err(_) => {
                tracing::warn!(
                    limit = self.layer.max,
                    path = request.uri().path(),
                    "shedding load"
                );
                Either::Right(ready(Ok(Status::unavailable(format!(
                    "the gateway has {} requests in progress, its limit; retry with backoff",
                    self.layer.max
                ))
                .into_http())))
            }
        }
    }
}
