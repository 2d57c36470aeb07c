//! A unary call's response: the gRPC response collected whole and answered
//! as one Connect body, trailers as `trailer-` headers, errors as JSON with
//! the protocol's HTTP status.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Response, header};
use tonic::{Code, Status};

use super::codec;
use super::error::Failure;
use super::reply::copy_metadata;
use super::{BoxError, Call, Shape, Shared, deadline_exceeded, inner_failure, until};

/// Collects a unary gRPC response and answers it in Connect.
pub(super) async fn unary_response<F, ResBody, E>(
    future: F,
    call: Call,
    shared: Arc<Shared>,
) -> Result<Response<Body>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let content_type = call.content_type();
    let fail = |failure: Failure, headers: &HeaderMap, trailers: &HeaderMap| {
        shared.failure_response(
            Shape::Unary,
            content_type.clone(),
            &inner_failure(&call, failure),
            headers,
            trailers,
        )
    };
    let exchange = async {
        let response = future.await?;
        let (parts, body) = response.into_parts();
        // Trailers-only: the status is in the headers, and there is no message.
        if let Some(failure) = Failure::from_trailers(&parts.headers) {
            let failure = if failure.code == Code::Ok {
                Failure::new(Code::Internal, "the service sent no reply")
            } else {
                failure
            };
            return Ok(fail(failure, &parts.headers, &HeaderMap::new()));
        }
        let mut body = std::pin::pin!(body);
        let mut data = BytesMut::new();
        let mut trailers = HeaderMap::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Err(e) => {
                    let status = Status::from_error(e.into());
                    return Ok(fail(
                        Failure::from_status(&status),
                        &parts.headers,
                        &trailers,
                    ));
                }
                Ok(frame) => match frame.into_data() {
                    Ok(chunk) => data.extend_from_slice(&chunk),
                    Err(frame) => {
                        if let Ok(more) = frame.into_trailers() {
                            trailers.extend(more);
                        }
                    }
                },
            }
        }
        let failure = Failure::from_trailers(&trailers)
            .unwrap_or_else(|| Failure::new(Code::Internal, "the reply ended without a status"));
        if failure.code != Code::Ok {
            return Ok(fail(failure, &parts.headers, &trailers));
        }
        let reply = match codec::take_frame(&mut data) {
            Some((0, message)) => shared.encode_reply(&call, message),
            _ => Err(Failure::new(Code::Internal, "the service sent no reply")),
        };
        let message = match reply {
            Ok(message) => message,
            Err(failure) => return Ok(fail(failure, &parts.headers, &trailers)),
        };
        let mut response = Response::new(Body::new(http_body_util::Full::new(message)));
        let out = response.headers_mut();
        copy_metadata(&parts.headers, out, None);
        copy_metadata(&trailers, out, Some("trailer-"));
        out.insert(header::CONTENT_TYPE, call.content_type());
        Ok(response)
    };
    tokio::select! {
        response = exchange => response,
        () = until(call.deadline) => Ok(fail(deadline_exceeded(&call), &HeaderMap::new(), &HeaderMap::new())),
    }
}
