//! Task helpers of the suite over any [`Runtime`]: spawn with a join handle, sleep, timeout, a gate.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::runtime::Runtime;

/// The runtime a scenario runs on: a `Copy` reference (one `Arc` per test, leaked by
/// [`run`](super::run)), so that every spawned task can use it without clones.
pub type Rt = &'static Arc<dyn Runtime>;

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

/// Spawns `fut` on `rt` and returns a handle to await its output (dropping the handle detaches).
pub fn spawn<T: Send + 'static>(
    rt: Rt,
    fut: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    let state = Arc::new(Mutex::new(JoinState {
        value: None,
        finished: false,
        waker: None,
    }));
    let finish = Finish(state.clone());
    rt.spawn(Box::pin(async move {
        let v = fut.await;
        finish
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .value = Some(v);
        drop(finish);
    }));
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
pub async fn timeout<F: Future>(rt: Rt, d: Duration, f: F) -> Option<F::Output> {
    crate::runtime::timeout(&**rt, d, f).await.ok()
}

/// Sleeps for `d`.
pub async fn sleep(rt: Rt, d: Duration) {
    crate::runtime::sleep(&**rt, d).await
}
