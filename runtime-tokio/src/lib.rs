//! # runtime-tokio: the agent tunnel on tokio
//!
//! The adapter only: [`Tokio`] implements [`runtime_core::Runtime`] with `tokio::spawn`,
//! `tokio::time::Sleep` and tokio's TCP types (seen as futures-io through [`Tcp`], which unlike
//! `tokio_util::compat` keeps vectored writes: TLS hands the socket many records at once).
//! Everything else — driver, TLS (futures-rustls), handshakes, [`Server`], [`Connection`], the one
//! [`Stream`] type, which implements `tokio::io::AsyncRead/AsyncWrite` here (runtime-core's `tokio`
//! feature) as well as the futures-io traits — is `runtime-core`'s, re-exported with the runtime fixed
//! ([`runtime_core::adapter!`]). Calls need a tokio runtime context, as `tokio::spawn` does.
//! `runtime-smol` is the same adapter for smol; the behaviour suite (`runtime_core::testing`) runs
//! against both.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use runtime_core::{AsyncTimer, BoxFuture, BoxIo, Listener, Runtime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// tokio as a [`Runtime`] (the ambient runtime of the calling task).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

runtime_core::adapter!(Tokio);

impl Runtime for Tokio {
    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }

    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(Timer(Box::pin(tokio::time::sleep_until(at.into()))))
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<io::Result<BoxIo>> {
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(Tcp(tcp)) as BoxIo)
        })
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        Ok(Box::new(TcpListener(listener)))
    }
}

/// `tokio::time::Sleep`, re-armed in place.
#[derive(Debug)]
struct Timer(Pin<Box<tokio::time::Sleep>>);

impl AsyncTimer for Timer {
    fn reset(self: Pin<&mut Self>, at: Instant) {
        self.get_mut().0.as_mut().reset(at.into());
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.as_mut().poll(cx)
    }
}

#[derive(Debug)]
struct TcpListener(tokio::net::TcpListener);

impl Listener for TcpListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, SocketAddr)>> {
        self.0.poll_accept(cx).map(|accepted| {
            let (tcp, peer) = accepted?;
            tcp.set_nodelay(true)?;
            Ok((Box::new(Tcp(tcp)) as BoxIo, peer))
        })
    }
}

/// A tokio TCP stream with the futures-io traits.
#[derive(Debug)]
pub struct Tcp(pub tokio::net::TcpStream);

impl futures_io::AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.get_mut().0).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    }
}

impl futures_io::AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
