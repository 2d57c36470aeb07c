//! Write coalescing for HTTP/2 connections, used by the gateway's accepted
//! connections and by the SDK's own.
//!
//! h2 hands every DATA frame of 256 bytes or more to the socket with a
//! `writev` of its own (it cannot buffer the next frame until that one is
//! out). A connection that carries many calls therefore paid a syscall, a
//! TCP segment and a wake-up of the peer per message. [`Corked`] keeps what
//! one poll of the connection writes and sends it in one piece when the
//! connection's task runs next, after the runtime has let the tasks already
//! queued run (they often add frames of other calls) — the way grpc-go's
//! writer batches frames until its queue is empty. A lone message waits one
//! trip through the run queue, never a timer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Output held back at most this long (bytes) before it is written anyway.
const CORK_LIMIT: usize = 64 * 1024;

/// A buffer that grew beyond this for a burst is given back once empty, so
/// thousands of mostly idle connections do not each pin one.
const KEEP_CAPACITY: usize = 16 * 1024;

/// A byte stream whose writes go out when its task runs again.
///
/// Corked output leaves on the next read: an h2 connection reads at the
/// start of every poll, so what one poll wrote goes out with one syscall at
/// the start of the next, and the first write of a poll wakes the task so
/// that there is a next poll. A flush therefore only confirms that the
/// output is on its way. Only for HTTP/2: hyper's HTTP/1.1 server does not
/// read while pipelined requests wait, so its output could sit corked
/// ([`Corked::passthrough`] serves such connections unchanged).
#[derive(Debug)]
pub struct Corked<T> {
    io: T,
    /// Whether writes are corked at all.
    enabled: bool,
    /// Written, not yet sent.
    corked: BytesMut,
    /// Whether the task has been woken to send `corked`.
    uncork_scheduled: bool,
}

impl<T> Corked<T> {
    /// Wraps `io`, corking its writes.
    pub fn new(io: T) -> Self {
        Self {
            io,
            enabled: true,
            corked: BytesMut::new(),
            uncork_scheduled: false,
        }
    }

    /// Wraps `io` without corking: every call goes straight through.
    pub fn passthrough(io: T) -> Self {
        Self {
            enabled: false,
            ..Self::new(io)
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> Corked<T> {
    /// Sends what is corked.
    fn poll_uncork(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.corked.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // The buffer's size is about the most it ever held at once.
        let grown = self.corked.len() > KEEP_CAPACITY;
        while !self.corked.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.corked))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.corked.advance(written);
        }
        if grown {
            self.corked = BytesMut::new();
        } else {
            self.corked.clear();
        }
        self.uncork_scheduled = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A peer that does not read must not stop us from reading: when the
        // socket is full, its write readiness wakes the task to try again.
        if let Poll::Ready(Err(error)) = self.poll_uncork(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.enabled {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        let len: usize = bufs.iter().map(|buf| buf.len()).sum();
        if self.corked.len() + len > CORK_LIMIT {
            ready!(self.poll_uncork(cx))?;
            if len > CORK_LIMIT {
                return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            }
        }
        let wanted = self.corked.len() + len;
        if wanted > self.corked.capacity() {
            // One allocation per burst rather than a doubling series of
            // copies: a fresh buffer gets KEEP_CAPACITY, a full one the
            // most it may hold.
            let target = if wanted <= KEEP_CAPACITY {
                KEEP_CAPACITY
            } else {
                CORK_LIMIT
            };
            let additional = target - self.corked.len();
            self.corked.reserve(additional);
        }
        for buf in bufs {
            self.corked.extend_from_slice(buf);
        }
        if !self.uncork_scheduled {
            self.uncork_scheduled = true;
            // tokio runs a task that woke itself after the tasks already
            // queued: those get to add their frames first.
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        self.enabled || self.io.is_write_vectored()
    }

    /// Corked output is on its way (the task has been woken to send it);
    /// saying so lets h2 go on with the frames of other calls.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.corked.is_empty() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_uncork(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Records every write that reaches the "socket".
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[test]
    fn one_polls_output_leaves_in_one_write_on_the_next_read() {
        let mut corked = Corked::new(Recorder::default());
        let woken = std::sync::Arc::new(WakeCount::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut read_space = [0u8; 8];
        for frame in [&b"one "[..], b"two"] {
            assert!(matches!(
                Pin::new(&mut corked).poll_write(&mut cx, frame),
                Poll::Ready(Ok(_))
            ));
        }
        assert!(Pin::new(&mut corked).poll_flush(&mut cx).is_ready());
        assert!(Pin::new(&mut corked).poll_flush(&mut cx).is_ready());
        assert!(corked.get_ref().writes.is_empty());
        assert_eq!(woken.count(), 1, "the first write wakes the task once");
        let mut buf = ReadBuf::new(&mut read_space);
        assert!(
            Pin::new(&mut corked)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        );
        assert_eq!(corked.get_ref().writes, [b"one two".to_vec()]);
    }

    #[test]
    fn passthrough_writes_at_once() {
        let mut plain = Corked::passthrough(Recorder::default());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            Pin::new(&mut plain)
                .poll_write(&mut cx, b"frame")
                .is_ready()
        );
        assert_eq!(plain.get_ref().writes, [b"frame".to_vec()]);
    }

    #[derive(Default)]
    struct WakeCount(std::sync::atomic::AtomicUsize);

    impl WakeCount {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl std::task::Wake for WakeCount {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_corked() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut corked = Corked::new(TcpStream::connect(listener.local_addr()?).await?);
        let (mut peer, _) = listener.accept().await?;
        corked.write_all(b"last words").await?;
        corked.shutdown().await?;
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await?;
        assert_eq!(got, b"last words");
        Ok(())
    }

    #[tokio::test]
    async fn a_large_write_goes_out_after_what_is_corked() -> io::Result<()> {
        let mut corked = Corked::new(Recorder::default());
        let large = vec![7u8; CORK_LIMIT + 1];
        corked.write_all(b"head").await?;
        corked.write_all(&large).await?;
        corked.shutdown().await?;
        let sent: Vec<u8> = corked.get_ref().writes.concat();
        assert_eq!(&sent[..4], b"head");
        assert_eq!(sent.len(), 4 + large.len());
        Ok(())
    }
}
