//! The worker's connections: one TCP connection per `Connect` stream, behind a
//! kill switch.
//!
//! Why not one shared tonic `Channel`: a worker must be able to *drop* a
//! connection — when its watchdog finds the gateway silent, and in
//! [`WorkerHandle::abort`](super::WorkerHandle::abort), which simulates a
//! crash. Dropping a tonic stream does not close the socket (hyper keeps the
//! HTTP/2 connection, and may even end the request stream cleanly), so every
//! connection is made by [`KillSwitchConnector`], whose socket fails every
//! read and write once its token is cancelled. hyper then tears the
//! connection down without writing another byte, exactly as if the process
//! had died.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use asyncgate_io::corked::Corked;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Opens a channel to `endpoint` whose only connection dies when `kill` is
/// cancelled.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    kill: CancellationToken,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(KillSwitchConnector { kill })
        .await
}

/// A TCP connector whose sockets obey one kill switch.
#[derive(Debug, Clone)]
struct KillSwitchConnector {
    kill: CancellationToken,
}

impl tonic::codegen::Service<Uri> for KillSwitchConnector {
    type Response = TokioIo<KillableStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let kill = self.kill.clone();
        Box::pin(async move {
            if kill.is_cancelled() {
                return Err(killed());
            }
            let stream = crate::transport::open(&uri).await?;
            Ok(TokioIo::new(KillableStream::new(stream, kill)))
        })
    }
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection dropped by the worker",
    )
}

/// A TCP stream that fails every operation once its token is cancelled.
/// Its writes are coalesced like every SDK connection's ([`Corked`]).
struct KillableStream {
    inner: Corked<TcpStream>,
    token: CancellationToken,
    /// Registers the reader's waker with the token, so a read parked on a
    /// silent socket wakes up (and fails) the moment the switch is thrown.
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableStream {
    fn new(inner: TcpStream, token: CancellationToken) -> Self {
        let killed = Box::pin(token.clone().cancelled_owned());
        KillableStream {
            inner: Corked::new(inner),
            token,
            killed,
        }
    }

    /// `Err` once the switch is thrown; also arms the wake-up on it.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.token.is_cancelled() || self.killed.as_mut().poll(cx).is_ready() {
            return Err(killed());
        }
        Ok(())
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn kill_wakes_a_parked_read_and_closes_the_peer() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = CancellationToken::new();
        let mut client = KillableStream::new(TcpStream::connect(addr).await?, token.clone());
        let (mut server, _) = listener.accept().await?;

        client.write_all(b"hi").await?;
        // The write is corked until the client reads (as h2 does at the
        // start of every poll); the read then parks on the silent socket.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let result = client.read(&mut buf).await;
            drop(client);
            result
        });
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hi");
        token.cancel();
        let read = reader.await.map_err(io::Error::other)?;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionAborted)
        );
        // The socket is gone: the peer sees end-of-stream, nothing else.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await?;
        assert!(rest.is_empty());
        Ok(())
    }
}
