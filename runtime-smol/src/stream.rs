//! Streams with the futures-io traits: reads are the peer's body, `close` finishes our direction.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use protocol::proto::{ResponseHead, Trailer};
use protocol::{ErrorCode, StreamId};
use runtime_core::{Error, StreamHandle};
use smol::io::{AsyncRead, AsyncWrite};

/// One request stream: `AsyncRead` yields the peer's body (EOF when it finished; a reset is an
/// `io::Error` whose inner error is [`runtime_core::Error`], recover it with `Error::from`),
/// `AsyncWrite` sends ours, `close` finishes our direction. Dropping an unfinished stream resets it.
#[derive(Debug)]
pub struct Stream {
    inner: Arc<StreamHandle>,
}

impl Stream {
    pub(crate) fn new(h: StreamHandle) -> Stream {
        Stream { inner: Arc::new(h) }
    }

    pub fn id(&self) -> StreamId {
        self.inner.id()
    }

    /// Opener: the acceptor's response head.
    pub async fn response(&self) -> Result<ResponseHead, Error> {
        self.inner.response().await
    }

    /// Acceptor: answers with a response head; `end_stream`: no body follows.
    pub fn respond(&self, head: ResponseHead, end_stream: bool) -> Result<(), Error> {
        self.inner.respond(head, end_stream)
    }

    /// Ends our direction with a trailer.
    pub fn send_trailer(&self, trailer: Trailer) -> Result<(), Error> {
        self.inner.send_trailer(trailer)
    }

    /// Ends our direction (what `close` does).
    pub fn finish(&self) -> Result<(), Error> {
        self.inner.finish()
    }

    /// The peer's trailer once its direction ended (`None`: ended without one).
    pub async fn trailer(&self) -> Result<Option<Trailer>, Error> {
        self.inner.trailer().await
    }

    /// The next received chunk without copying; `None` at the end.
    pub async fn read_chunk(&self, max: usize) -> Option<Result<Bytes, Error>> {
        self.inner.read_chunk(max).await
    }

    /// Abandons the stream both ways; the peer sees a RESET with `code`.
    pub fn reset(&self, code: ErrorCode) {
        self.inner.reset(code)
    }

    /// Splits into a receiving and a sending half usable from different tasks. The stream is dropped
    /// (and reset if unfinished) when both halves are.
    pub fn split(self) -> (RecvStream, SendStream) {
        (
            RecvStream {
                inner: self.inner.clone(),
            },
            SendStream { inner: self.inner },
        )
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_finish(cx)
    }
}

/// Reading and writing through a shared reference, so that one task can read while another writes
/// (as with `&TcpStream` in std).
impl AsyncRead for &Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for &Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_finish(cx)
    }
}

/// The receiving half of a [`Stream`].
#[derive(Debug)]
pub struct RecvStream {
    inner: Arc<StreamHandle>,
}

impl RecvStream {
    pub fn id(&self) -> StreamId {
        self.inner.id()
    }

    pub async fn response(&self) -> Result<ResponseHead, Error> {
        self.inner.response().await
    }

    pub async fn trailer(&self) -> Result<Option<Trailer>, Error> {
        self.inner.trailer().await
    }

    pub async fn read_chunk(&self, max: usize) -> Option<Result<Bytes, Error>> {
        self.inner.read_chunk(max).await
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_read(cx, buf)
    }
}

/// The sending half of a [`Stream`].
#[derive(Debug)]
pub struct SendStream {
    inner: Arc<StreamHandle>,
}

impl SendStream {
    pub fn id(&self) -> StreamId {
        self.inner.id()
    }

    pub fn respond(&self, head: ResponseHead, end_stream: bool) -> Result<(), Error> {
        self.inner.respond(head, end_stream)
    }

    pub fn send_trailer(&self, trailer: Trailer) -> Result<(), Error> {
        self.inner.send_trailer(trailer)
    }

    pub fn reset(&self, code: ErrorCode) {
        self.inner.reset(code)
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_finish(cx)
    }
}
