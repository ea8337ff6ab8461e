//! The two traits the shared driver needs, for futures-io byte streams and `async_io::Timer`.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use runtime_core::{Timer, Transport};
use smol::io::{AsyncRead, AsyncWrite};

/// Any futures-io byte stream (TCP, TLS, an in-memory pipe) as the driver's transport.
#[derive(Debug)]
pub struct SmolTransport<T>(pub T);

impl<T: AsyncRead + AsyncWrite + Unpin> Transport for SmolTransport<T> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// `async_io::Timer`, re-armed in place.
#[derive(Debug)]
pub struct SmolTimer(smol::Timer);

impl SmolTimer {
    pub fn new() -> SmolTimer {
        SmolTimer(smol::Timer::never())
    }
}

impl Default for SmolTimer {
    fn default() -> Self {
        SmolTimer::new()
    }
}

impl Timer for SmolTimer {
    fn reset(&mut self, deadline: Instant) {
        self.0.set_at(deadline);
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}
