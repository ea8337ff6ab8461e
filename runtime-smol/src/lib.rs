//! # runtime-smol: the agent tunnel on smol
//!
//! The adapter only: [`Smol`] implements [`runtime_core::Runtime`] with smol's executor
//! (`smol::spawn`; `SMOL_THREADS` sets its thread count; or the executor a program's thread named
//! with [`spawn_on_this_thread`]), `async_io` timers and smol's TCP types (read through [`TcpIo`],
//! which does not read a socket it knows to be empty).
//! Everything else — driver, TLS (futures-rustls), handshakes, [`Server`], [`Connection`], the one
//! [`Stream`] type with the futures-io traits — is `runtime-core`'s, re-exported here with the runtime
//! fixed ([`runtime_core::adapter!`]), so kas never names a runtime. `runtime-tokio` is the same
//! adapter for tokio; the behaviour suite (`runtime_core::testing`) runs against both.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use runtime_core::{AsyncTimer, BoxIo, Listener};

mod tcp;
pub use runtime_core::{BoxFuture, Runtime};
pub use tcp::TcpIo;

/// smol as a [`Runtime`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

runtime_core::adapter!(Smol);

/// A program's own spawn function ([`spawn_with_on_this_thread`]).
pub type SpawnFn = dyn Fn(BoxFuture<()>) + Send + Sync;

/// Where [`Smol`] spawns from one thread.
enum Target {
    Executor(Weak<smol::Executor<'static>>),
    Hook(Weak<SpawnFn>),
}

thread_local! {
    /// Where [`Smol`] spawns from this thread ([`spawn_on_this_thread`], [`spawn_with_on_this_thread`]).
    static EXECUTOR: RefCell<Option<Target>> = const { RefCell::new(None) };
}

/// From now on, tasks the tunnel spawns from this thread (a server's accept loop, handshakes, each
/// connection's driver) run on `executor` instead of smol's global one, while it lives — what
/// `tokio::spawn` does by itself. A program running its own executor threads (kas's pool) calls
/// this at the start of each, so a connection's driver runs on the same threads as the tasks that
/// use its streams: a request then costs no hop to and from smol's global thread.
pub fn spawn_on_this_thread(executor: Weak<smol::Executor<'static>>) {
    EXECUTOR.with(|e| *e.borrow_mut() = Some(Target::Executor(executor)));
}

/// Like [`spawn_on_this_thread`], with the program's own spawn function: for a program whose threads
/// each run their own executor and that decides itself which one takes a task (kas's pool spreads
/// handshakes and drivers over its threads). Once `spawn` is dropped, smol's global executor takes
/// the tasks.
pub fn spawn_with_on_this_thread(spawn: Weak<SpawnFn>) {
    EXECUTOR.with(|e| *e.borrow_mut() = Some(Target::Hook(spawn)));
}

impl Runtime for Smol {
    fn spawn(&self, task: BoxFuture<()>) {
        enum Live {
            Executor(std::sync::Arc<smol::Executor<'static>>),
            Hook(std::sync::Arc<SpawnFn>),
        }
        let live = EXECUTOR.with(|e| match e.borrow().as_ref() {
            Some(Target::Executor(ex)) => ex.upgrade().map(Live::Executor),
            Some(Target::Hook(hook)) => hook.upgrade().map(Live::Hook),
            None => None,
        });
        match live {
            Some(Live::Executor(executor)) => executor.spawn(task).detach(),
            Some(Live::Hook(spawn)) => spawn(task),
            None => smol::spawn(task).detach(),
        }
    }

    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(Timer(smol::Timer::at(at)))
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<io::Result<BoxIo>> {
        Box::pin(async move {
            let tcp = smol::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(TcpIo::from(tcp)) as BoxIo)
        })
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(TcpListener(smol::Async::new(listener)?)))
    }
}

/// `async_io::Timer`, re-armed in place.
#[derive(Debug)]
struct Timer(smol::Timer);

impl AsyncTimer for Timer {
    fn reset(self: Pin<&mut Self>, at: Instant) {
        self.get_mut().0.set_at(at);
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().0).poll(cx).map(drop)
    }
}

/// A non-blocking std listener registered with smol's reactor.
#[derive(Debug)]
struct TcpListener(smol::Async<std::net::TcpListener>);

impl Listener for TcpListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxIo, SocketAddr)>> {
        loop {
            match self.0.get_ref().accept() {
                Ok((tcp, peer)) => {
                    tcp.set_nodelay(true)?;
                    return Poll::Ready(Ok((Box::new(TcpIo::new(tcp)?), peer)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.0.poll_readable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn spawns_on_the_executor_this_thread_names() {
        let executor = Arc::new(smol::Executor::new());
        let ran = Arc::new(AtomicBool::new(false));
        // This thread names no executor yet: nothing is queued on `executor`.
        assert!(!executor.try_tick());
        spawn_on_this_thread(Arc::downgrade(&executor));
        let flag = ran.clone();
        Smol.spawn(Box::pin(async move { flag.store(true, Ordering::SeqCst) }));
        // The task is queued on `executor` (no thread runs it): one tick runs it here.
        assert!(!ran.load(Ordering::SeqCst));
        assert!(executor.try_tick(), "the task went elsewhere");
        assert!(ran.load(Ordering::SeqCst));
        // Once the executor is gone, smol's global executor takes the tasks.
        drop(executor);
        let (tx, rx) = std::sync::mpsc::channel();
        Smol.spawn(Box::pin(async move {
            let _ = tx.send(());
        }));
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok(),
            "the global executor ran it"
        );
    }

    #[test]
    fn spawns_through_the_function_this_thread_names() {
        let spawned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = spawned.clone();
        let hook: Arc<SpawnFn> = Arc::new(move |task: BoxFuture<()>| {
            count.fetch_add(1, Ordering::SeqCst);
            drop(task);
        });
        std::thread::spawn({
            let hook = Arc::downgrade(&hook);
            move || {
                spawn_with_on_this_thread(hook);
                Smol.spawn(Box::pin(async {}));
            }
        })
        .join()
        .expect("the thread ran");
        assert_eq!(spawned.load(Ordering::SeqCst), 1, "the hook took the task");
    }
}
