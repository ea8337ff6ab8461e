//! A TCP connection for smol that does not read a socket it knows to be empty.
//!
//! smol's `TcpStream` (async-net) tries every read first and waits for readiness only after the
//! read failed with `WouldBlock`; a connection that read everything that had arrived so tries once
//! more before every wait, a `recvfrom` that finds nothing (3–4 per proxied request in kas, about a
//! fifth of its system calls). [`TcpIo`] does what tokio's `TcpStream` does: a read that returns
//! less than it asked for means the socket's queue is empty, so the next read first waits for the
//! reactor to report the socket readable (async-io's one-shot interest is armed then, as before),
//! then reads. Nothing is lost: arming the interest on a socket that became readable meanwhile
//! reports it at once. Writes are unchanged (tried first, then wait).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};

/// A non-blocking TCP connection registered with smol's reactor (see the module documentation).
#[derive(Debug)]
pub struct TcpIo {
    io: Arc<Async<std::net::TcpStream>>,
    /// The last read found the socket's queue empty (or took less than it asked for): wait for
    /// readiness before reading again.
    drained: bool,
}

impl TcpIo {
    /// Registers `tcp` with the reactor.
    pub fn new(tcp: std::net::TcpStream) -> io::Result<TcpIo> {
        Ok(TcpIo::from(smol::net::TcpStream::try_from(tcp)?))
    }

    /// Tries `write` on the socket, waiting for writability while it would block.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&std::net::TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        // Bounded: each round ends unless the reactor reported the socket writable since.
        loop {
            match write(self.io.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_writable(cx))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                res => return Poll::Ready(res),
            }
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &std::net::TcpStream {
        self.io.get_ref()
    }
}

impl From<smol::net::TcpStream> for TcpIo {
    /// The same registration; the `TcpStream` (and its clones) must not read from now on.
    fn from(tcp: smol::net::TcpStream) -> TcpIo {
        TcpIo {
            io: tcp.into(),
            drained: false,
        }
    }
}

impl AsyncRead for TcpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Bounded: a second round follows only a `WouldBlock`, after which the readiness wait
        // either returns `Pending` or reports an event delivered since.
        loop {
            if this.drained {
                ready!(this.io.poll_readable(cx))?;
                this.drained = false;
            }
            match this.io.get_ref().read(buf) {
                Ok(n) => {
                    this.drained = n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |mut tcp| tcp.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |mut tcp| tcp.write_vectored(bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (TcpIo, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (TcpIo::new(server).unwrap(), client)
    }

    #[test]
    fn data_arriving_after_a_short_read_is_read() {
        smol::block_on(async {
            let (mut io, mut peer) = pair();
            let mut buf = [0u8; 64];
            peer.write_all(b"one").unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 3);
            assert!(io.drained);
            // Arrives while nobody waits: the readiness armed afterwards reports it.
            peer.write_all(b"two").unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 3);
            assert_eq!(&buf[..3], b"two");
            // A full read leaves the socket to be read again at once.
            peer.write_all(&[7; 100]).unwrap();
            let mut exact = [0u8; 100];
            io.read_exact(&mut exact).await.unwrap();
            assert_eq!(exact, [7; 100]);
            drop(peer);
            assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        });
    }

    #[test]
    fn writes_and_half_close_reach_the_peer() {
        smol::block_on(async {
            let (mut io, mut peer) = pair();
            let bufs = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
            let n = io.write_vectored(&bufs).await.unwrap();
            io.write_all(&b"abcd"[n..]).await.unwrap();
            io.close().await.unwrap();
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"abcd");
        });
    }
}
