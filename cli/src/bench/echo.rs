//! The baseline: a plain unary gRPC echo (`asyncgate.bench.v1.Echo`) that
//! this process serves itself on 127.0.0.1:0, so the gateway's cost shows as
//! a ratio to the simplest request/reply on the same machine. Plain means
//! stock tonic on both ends (TCP_NODELAY, the SDK's endpoint settings): what
//! a caller gets by calling a service directly. The gateway and the SDK
//! coalesce their writes (`asyncgate_io::corked`); the echo does not.

use std::net::SocketAddr;

use anyhow::Context as _;
use asyncgate_proto::bench::echo_server::{Echo, EchoServer};
use asyncgate_proto::bench::{EchoReply, EchoRequest};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use super::target::MAX_MESSAGE;

/// Answers with the request's bytes (a `Bytes` moved, not copied).
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            payload: request.into_inner().payload,
        }))
    }
}

/// The running echo server.
pub(crate) struct EchoBaseline {
    pub(crate) url: String,
    stop: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl EchoBaseline {
    /// Serves the echo on a fresh loopback port.
    pub(crate) async fn start() -> anyhow::Result<EchoBaseline> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("binding the echo baseline on 127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        use tonic::codec::CompressionEncoding::{Gzip, Zstd};
        // Like the gateway: accepts compressed calls, compresses replies for
        // callers that ask (`--compression`).
        let service = EchoServer::new(EchoService)
            .accept_compressed(Gzip)
            .accept_compressed(Zstd)
            .send_compressed(Gzip)
            .send_compressed(Zstd)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let router = Server::builder().add_service(service);
        let signal = stop.clone().cancelled_owned();
        let task =
            tokio::spawn(
                async move { router.serve_with_incoming_shutdown(incoming, signal).await },
            );
        Ok(EchoBaseline { url, stop, task })
    }

    /// `n` separate HTTP/2 connections to the echo, over tonic's own
    /// connector.
    pub(crate) async fn connect(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            let endpoint = asyncgate_client::endpoint(self.url.as_str())?;
            channels.push(
                endpoint
                    .connect()
                    .await
                    .with_context(|| format!("connecting to the echo at {}", self.url))?,
            );
        }
        Ok(channels)
    }

    /// Stops the server and waits for it.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the echo baseline failed"),
            Ok(Err(error)) => tracing::warn!(%error, "the echo baseline task failed"),
            Err(_) => tracing::warn!("the echo baseline did not stop within 5s"),
        }
    }
}
