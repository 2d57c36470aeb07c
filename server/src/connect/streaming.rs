//! A server-streaming call's response: gRPC frames relayed as Connect
//! envelopes as the inner service yields them, then an end-stream message
//! with the status and trailers.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt as _;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Response, header};
use tonic::{Code, Status};

use super::codec;
use super::error::Failure;
use super::reply::copy_metadata;
use super::{BoxError, Call, Shape, Shared, deadline_exceeded, inner_failure, until};

/// Relays a server-streaming gRPC response as Connect envelopes.
pub(super) async fn stream_response<F, ResBody, E>(
    future: F,
    call: Call,
    shared: Arc<Shared>,
) -> Result<Response<Body>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let response = tokio::select! {
        response = future => response?,
        () = until(call.deadline) => {
            return Ok(shared.failure_response(
                Shape::Stream,
                call.content_type(),
                &deadline_exceeded(&call),
                &HeaderMap::new(),
                &HeaderMap::new(),
            ));
        }
    };
    let (parts, body) = response.into_parts();
    if let Some(failure) = Failure::from_trailers(&parts.headers) {
        // Trailers-only: an empty stream, successful or not.
        let failure = (failure.code != Code::Ok).then(|| inner_failure(&call, failure));
        let mut response = Response::new(Body::new(http_body_util::Full::new(
            shared.end_stream(failure.as_ref(), &HeaderMap::new()),
        )));
        copy_metadata(&parts.headers, response.headers_mut(), None);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, call.content_type());
        return Ok(response);
    }
    let mut response_headers = HeaderMap::new();
    copy_metadata(&parts.headers, &mut response_headers, None);
    response_headers.insert(header::CONTENT_TYPE, call.content_type());
    let relay = Relay {
        body: Box::pin(body),
        buf: BytesMut::new(),
        done: false,
        call,
        shared,
    };
    let envelopes = futures::stream::unfold(relay, |mut relay| async move {
        if relay.done {
            return None;
        }
        let envelope = relay.next().await;
        Some((Ok::<_, Status>(Frame::data(envelope)), relay))
    });
    let mut response = Response::new(Body::new(http_body_util::StreamBody::new(envelopes)));
    *response.headers_mut() = response_headers;
    Ok(response)
}

/// A server stream being relayed: gRPC frames in, Connect envelopes out.
struct Relay<B> {
    body: Pin<Box<B>>,
    /// Bytes of gRPC frames not yet complete.
    buf: BytesMut,
    /// The end-stream message went out.
    done: bool,
    call: Call,
    shared: Arc<Shared>,
}

impl<B> Relay<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// The next envelope: a message, or the end-stream message (last).
    async fn next(&mut self) -> Bytes {
        loop {
            if let Some((flags, message)) = codec::take_frame(&mut self.buf) {
                if flags != 0 {
                    return self.end(
                        Some(Failure::new(
                            Code::Internal,
                            "the service sent a compressed message",
                        )),
                        &HeaderMap::new(),
                    );
                }
                return match self.shared.encode_reply(&self.call, message) {
                    Ok(message) => codec::envelope(0, &message),
                    Err(failure) => self.end(Some(failure), &HeaderMap::new()),
                };
            }
            let frame = tokio::select! {
                frame = self.body.frame() => frame,
                () = until(self.call.deadline) => {
                    let failure = deadline_exceeded(&self.call);
                    return self.end(Some(failure), &HeaderMap::new());
                }
            };
            match frame {
                None => {
                    let failure = Failure::new(Code::Internal, "the stream ended without a status");
                    return self.end(Some(failure), &HeaderMap::new());
                }
                Some(Err(e)) => {
                    let failure = Failure::from_status(&Status::from_error(e.into()));
                    return self.end(Some(failure), &HeaderMap::new());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => self.buf.extend_from_slice(&chunk),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        let failure = Failure::from_trailers(&trailers).unwrap_or_else(|| {
                            Failure::new(Code::Internal, "the stream ended without a status")
                        });
                        let failure =
                            (failure.code != Code::Ok).then(|| inner_failure(&self.call, failure));
                        return self.end(failure, &trailers);
                    }
                },
            }
        }
    }

    fn end(&mut self, failure: Option<Failure>, trailers: &HeaderMap) -> Bytes {
        self.done = true;
        if let Some(failure) = &failure {
            tracing::debug!(code = ?failure.code, message = %failure.message, "connect stream failed");
        }
        self.shared.end_stream(failure.as_ref(), trailers)
    }
}
