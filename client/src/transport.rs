//! How the SDK opens its connections: TCP with `TCP_NODELAY` (a heartbeat or
//! a small result must not wait for Nagle), writes coalesced by [`Corked`]
//! (many concurrent calls share one HTTP/2 connection; their frames leave in
//! one write per poll instead of one each), TLS layered on top by tonic for
//! `https://` endpoints.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use asyncgate_io::corked::Corked;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Opens a channel to `endpoint` over the SDK's connector.
pub async fn connect(endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
    endpoint.connect_with_connector(Connector).await
}

/// A channel to `endpoint` that connects on its first call.
pub fn connect_lazy(endpoint: &Endpoint) -> Channel {
    endpoint.connect_with_connector_lazy(Connector)
}

/// TCP connections with coalesced writes.
#[derive(Debug, Clone, Copy)]
struct Connector;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<Corked<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move { Ok(TokioIo::new(Corked::new(open(&uri).await?))) })
    }
}

/// A TCP connection to the host and port of `uri`, with `TCP_NODELAY`.
pub(crate) async fn open(uri: &Uri) -> io::Result<TcpStream> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the URL has no host"))?
        // `[::1]` in a URL is `::1` to the resolver.
        .trim_start_matches('[')
        .trim_end_matches(']');
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let stream = TcpStream::connect((host, uri.port_u16().unwrap_or(default_port))).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
