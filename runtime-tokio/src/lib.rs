//! # runtime-tokio: the agent tunnel on tokio
//!
//! The adapter only: [`Tokio`] implements [`runtime_core::Runtime`] with `tokio::spawn`,
//! `tokio::time::Sleep` and tokio's TCP types (seen as futures-io through `tokio_util::compat`).
//! Everything else — driver, TLS (futures-rustls), handshakes, [`Server`], [`Connection`], the one
//! [`Stream`] type, which implements `tokio::io::AsyncRead/AsyncWrite` here (runtime-core's `tokio`
//! feature) as well as the futures-io traits — is `runtime-core`'s, re-exported with the runtime fixed
//! ([`runtime_core::adapter!`]). Calls need a tokio runtime context, as `tokio::spawn` does.
//! `runtime-smol` is the same adapter for smol; the behaviour suite (`runtime_core::testing`) runs
//! against both.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use runtime_core::{AsyncTimer, BoxFuture, BoxIo, Listener, Runtime};
use tokio_util::compat::TokioAsyncReadCompatExt;

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
            Ok(Box::new(tcp.compat()) as BoxIo)
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
            Ok((Box::new(tcp.compat()) as BoxIo, peer))
        })
    }
}
