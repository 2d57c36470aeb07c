//! Response bodies that report when a call ends: a streaming call's handler
//! returns long before its stream does, so layers that care about a call's
//! whole life (open-stream counts, RPC metrics) watch the body instead.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::codegen::http::HeaderMap;

/// Told about a response body's trailers; its `Drop` marks the call's end
/// (the body finished, failed, or the client went away).
pub(crate) trait CallObserver: Send + Unpin + 'static {
    /// The body's trailers (where gRPC puts the status of most calls).
    fn trailers(&mut self, _trailers: &HeaderMap) {}

    /// A chunk of the body's data, as it leaves (gRPC messages are framed
    /// inside; a frame may span chunks).
    fn data(&mut self, _data: &bytes::Bytes) {}
}

/// A response body carrying a [`CallObserver`] until it is dropped.
pub(crate) struct Observed<O> {
    inner: tonic::body::Body,
    observer: O,
}

impl<O: CallObserver> Observed<O> {
    /// Wraps `inner`; `observer` lives as long as the body.
    pub(crate) fn wrap(inner: tonic::body::Body, observer: O) -> tonic::body::Body {
        tonic::body::Body::new(Self { inner, observer })
    }
}

impl<O: CallObserver> http_body::Body for Observed<O> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            if let Some(data) = frame.data_ref() {
                this.observer.data(data);
            } else if let Some(trailers) = frame.trailers_ref() {
                this.observer.trailers(trailers);
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
