//! The async runtime as the tunnel needs it, in the manner of quinn's `runtime` module
//! (quinn-rs/quinn `quinn/src/runtime.rs`), with TCP instead of UDP: spawn a task, make a timer,
//! dial and listen. `runtime-smol` and `runtime-tokio` implement [`Runtime`] in about a hundred lines
//! each; everything else (driver, TLS, handshakes, server, streams) is written once over it.

use std::fmt::Debug;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::Error;

/// A boxed future that may move between threads.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A byte stream (TCP, TLS, an in-memory pipe) in futures-io terms. Implemented for every type with
/// the traits; tokio types get them through `tokio_util::compat`.
pub trait AsyncIo: futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static {}

impl<T: futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static> AsyncIo for T {}

/// A byte stream whose type the runtime chose.
pub type BoxIo = Box<dyn AsyncIo>;

/// What the tunnel needs from an async runtime.
pub trait Runtime: Send + Sync + Debug + 'static {
    /// Runs `task` to completion in the background.
    fn spawn(&self, task: BoxFuture<()>);
    /// A timer that fires at `at` (re-armed with [`AsyncTimer::reset`]).
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>>;
    /// Resolves `host`, dials the first address that answers, and sets `TCP_NODELAY` (the driver
    /// writes whole frame batches; Nagle would only delay the last frame of each).
    fn connect(&self, host: String, port: u16) -> BoxFuture<io::Result<BoxIo>>;
    /// Serves on a listener bound by the caller (non-blocking mode is the runtime's business).
    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>>;
    /// The current time (the clock the timers use).
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A resettable one-shot timer.
pub trait AsyncTimer: Send + Debug {
    /// Arms the timer for `at`, replacing any earlier arming.
    fn reset(self: Pin<&mut Self>, at: Instant);
    /// Ready once the armed instant has passed.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
}

/// A listening TCP socket.
pub trait Listener: Send + Sync + Debug {
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The next connection, with `TCP_NODELAY` set, and its peer address.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, SocketAddr)>>;
}

/// The next connection `listener` accepts.
pub async fn accept(listener: &dyn Listener) -> io::Result<(BoxIo, SocketAddr)> {
    poll_fn(|cx| listener.poll_accept(cx)).await
}

/// Sleeps for `d` on `rt`'s timer.
pub async fn sleep(rt: &dyn Runtime, d: Duration) {
    let mut timer = rt.new_timer(rt.now() + d);
    poll_fn(|cx| timer.as_mut().poll(cx)).await
}

/// `f`'s output, or [`Error::Timeout`] once `d` has passed.
pub async fn timeout<F: Future>(rt: &dyn Runtime, d: Duration, f: F) -> Result<F::Output, Error> {
    let mut f = pin!(f);
    let mut timer = rt.new_timer(rt.now() + d);
    poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        timer.as_mut().poll(cx).map(|()| Err(Error::Timeout))
    })
    .await
}

/// Spawns a `Send` future on `rt` (boxing it).
pub fn spawn(rt: &dyn Runtime, f: impl Future<Output = ()> + Send + 'static) {
    rt.spawn(Box::pin(f));
}
