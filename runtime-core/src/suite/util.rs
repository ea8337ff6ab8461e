//! Runtime-independent helpers of the suite: a transport switch, a join handle over any runtime's
//! `spawn`, a gate, a timeout.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::SuiteRuntime;

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

/// A switch shared between a scenario and a transport wrapper in the runtime's tests.
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

#[derive(Debug)]
struct JoinState<T> {
    value: Option<T>,
    finished: bool,
    waker: Option<Waker>,
}

/// Awaits a task spawned with [`spawn`]; panics if the task panicked.
#[derive(Debug)]
pub struct JoinHandle<T>(Arc<Mutex<JoinState<T>>>);

struct Finish<T>(Arc<Mutex<JoinState<T>>>);

impl<T> Drop for Finish<T> {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.finished = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

/// Spawns `fut` on runtime `R` and returns a handle to await its output.
pub fn spawn<R: SuiteRuntime, T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    let state = Arc::new(Mutex::new(JoinState {
        value: None,
        finished: false,
        waker: None,
    }));
    let finish = Finish(state.clone());
    R::spawn(async move {
        let v = fut.await;
        finish
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .value = Some(v);
        drop(finish);
    });
    JoinHandle(state)
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = s.value.take() {
            return Poll::Ready(v);
        }
        assert!(!s.finished, "spawned task panicked or was cancelled");
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A one-way gate: tasks wait until it is opened.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<Mutex<(bool, Vec<Waker>)>>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        g.0 = true;
        for w in g.1.drain(..) {
            w.wake();
        }
    }

    pub fn is_open(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if g.0 {
                Poll::Ready(())
            } else {
                g.1.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// `Some(output)`, or `None` if `d` passed first.
pub async fn timeout<R: SuiteRuntime, F: Future>(d: Duration, f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    let mut sleep = pin!(R::sleep(d));
    poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}
