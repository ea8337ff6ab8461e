//! A byte stream with octets already read put back in front of it, and an optional read budget
//! while a handshake runs.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_io::{AsyncRead, AsyncWrite};

/// `inner`, whose next reads first return `prefix` (octets read ahead while sniffing the first
/// octet of a connection or reading a proxy's answer). Writes go straight to `inner`.
///
/// With a read budget ([`Prefixed::with_read_budget`]), reads fail (`InvalidData`) once the budget
/// is spent, until [`Prefixed::lift_read_budget`]: this bounds what a peer can make a handshake
/// (tungstenite's WebSocket upgrade, which has no limit of its own) buffer.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` was read already.
    pos: usize,
    /// Octets that may still be read from `inner`, if limited.
    budget: Option<usize>,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner` with `prefix` in front.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            budget: None,
            inner,
        }
    }

    /// Limits what may be read from the inner stream to `octets` (the prefix is not counted).
    pub fn with_read_budget(mut self, octets: usize) -> Self {
        self.budget = Some(octets);
        self
    }

    /// Removes the read budget (the handshake is over).
    pub fn lift_read_budget(&mut self) {
        self.budget = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.len().min(this.prefix.len() - this.pos);
            buf[..n].copy_from_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        let Some(budget) = this.budget else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if budget == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake too large (read budget spent)",
            )));
        }
        let n = buf.len().min(budget);
        let read = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..n]))?;
        this.budget = Some(budget - read);
        Poll::Ready(Ok(read))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, future};

    #[test]
    fn prefix_is_read_before_the_stream() {
        let inner: &[u8] = b" world";
        let mut s = Prefixed::new(b"hello".to_vec(), futures_lite::io::Cursor::new(inner));
        let mut out = String::new();
        future::block_on(s.read_to_string(&mut out)).expect("read");
        assert_eq!(out, "hello world");
    }
}
