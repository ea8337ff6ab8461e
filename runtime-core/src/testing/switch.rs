//! A transport the scenario controls: [`Switched`] wraps each side's raw TCP stream (below TLS);
//! [`Switch::freeze`] makes it silent (reads and writes pend forever: a peer that stopped reading),
//! [`Switch::kill`] makes it fail (the driver drops the socket: a peer killed mid-stream).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_io::{AsyncRead, AsyncWrite};

use crate::runtime::BoxIo;

/// What a switched transport does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchState {
    /// Pass through.
    Normal,
    /// Reads and writes pend forever: the peer went silent and stopped reading.
    Frozen,
    /// Reads and writes fail: the transport is dead.
    Killed,
}

#[derive(Debug, Default)]
struct SwitchInner {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

/// A switch shared between a scenario and its [`Switched`] transport.
#[derive(Debug, Clone, Default)]
pub struct Switch(Arc<SwitchInner>);

impl Switch {
    pub fn new() -> Switch {
        Switch::default()
    }

    pub fn state(&self) -> SwitchState {
        match self.0.state.load(Ordering::SeqCst) {
            0 => SwitchState::Normal,
            1 => SwitchState::Frozen,
            _ => SwitchState::Killed,
        }
    }

    pub fn freeze(&self) {
        self.set(1);
    }

    pub fn kill(&self) {
        self.set(2);
    }

    fn set(&self, v: u8) {
        self.0.state.store(v, Ordering::SeqCst);
        let w = self
            .0
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// For transport wrappers, on every poll: remembers the task (so that `kill` wakes it) and says
    /// what to do.
    pub fn check(&self, cx: &Context<'_>) -> SwitchState {
        let mut w = self.0.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if !w.as_ref().is_some_and(|old| old.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
        drop(w);
        self.state()
    }
}

/// A byte stream that obeys a [`Switch`].
pub struct Switched {
    pub inner: BoxIo,
    pub switch: Switch,
}

impl std::fmt::Debug for Switched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switched")
            .field("switch", &self.switch)
            .finish_non_exhaustive()
    }
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "killed by the test")
}

impl Switched {
    /// Passes `op` through, pends, or fails (`on_kill`), as the switch says.
    fn gate<T>(
        &mut self,
        cx: &mut Context<'_>,
        on_kill: impl FnOnce() -> io::Result<T>,
        op: impl FnOnce(Pin<&mut BoxIo>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.switch.check(cx) {
            SwitchState::Normal => op(Pin::new(&mut self.inner), cx),
            SwitchState::Frozen => Poll::Pending,
            SwitchState::Killed => Poll::Ready(on_kill()),
        }
    }
}

impl AsyncRead for Switched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .gate(cx, || Err(killed()), |io, cx| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Switched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .gate(cx, || Err(killed()), |io, cx| io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .gate(cx, || Err(killed()), |io, cx| io.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .gate(cx, || Ok(()), |io, cx| io.poll_close(cx))
    }
}
