//! Small waker holders: one waiting task, or a set of them; and wake-ups deferred until the
//! session's lock is released.
//!
//! A task woken while the session's mutex is held may start on another thread at once and block on
//! that mutex; worse, waking can itself take a while (an executor unparks a sleeping thread). So
//! while a thread holds the lock ([`DeferScope`]), [`wake`] and [`WakerList::wake_all`] only collect
//! the wakers, and the scope's end, after the lock is released, wakes them.

use std::cell::RefCell;
use std::task::Waker;

#[derive(Default)]
struct Deferred {
    /// Nesting depth of [`DeferScope`]s on this thread.
    depth: usize,
    wakers: Vec<Waker>,
}

thread_local! {
    // `const`: no lazy-initialisation check on the two accesses per lock.
    static DEFERRED: RefCell<Deferred> = const {
        RefCell::new(Deferred {
            depth: 0,
            wakers: Vec::new(),
        })
    };
}

/// While one exists on this thread, wake-ups are collected; dropping the outermost one wakes them.
/// Create it before taking the lock and drop it after releasing it.
pub(crate) struct DeferScope(());

impl DeferScope {
    pub(crate) fn new() -> DeferScope {
        let _ = DEFERRED.try_with(|d| d.borrow_mut().depth += 1);
        DeferScope(())
    }
}

impl Drop for DeferScope {
    fn drop(&mut self) {
        let due = DEFERRED
            .try_with(|d| {
                let mut d = d.borrow_mut();
                d.depth = d.depth.saturating_sub(1);
                if d.depth == 0 && !d.wakers.is_empty() {
                    std::mem::take(&mut d.wakers)
                } else {
                    Vec::new()
                }
            })
            .unwrap_or_default();
        if due.is_empty() {
            return;
        }
        let mut due = due;
        for w in due.drain(..) {
            w.wake();
        }
        // Keep the allocation for the next scope.
        let _ = DEFERRED.try_with(|d| {
            let mut d = d.borrow_mut();
            if d.wakers.capacity() == 0 {
                d.wakers = due;
            }
        });
    }
}

/// Wakes `w`, or queues it until the outermost [`DeferScope`] of this thread ends.
fn wake_or_defer(w: Waker) {
    let mut w = Some(w);
    let _ = DEFERRED.try_with(|d| {
        let mut d = d.borrow_mut();
        if d.depth > 0
            && let Some(w) = w.take()
        {
            d.wakers.push(w);
        }
    });
    if let Some(w) = w {
        w.wake();
    }
}

/// Registers `w` in `slot` unless the same task is already there.
pub(crate) fn register(slot: &mut Option<Waker>, w: &Waker) {
    match slot {
        Some(old) if old.will_wake(w) => {}
        _ => *slot = Some(w.clone()),
    }
}

/// Wakes the task in `slot`, if any.
pub(crate) fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        wake_or_defer(w);
    }
}

/// Several tasks waiting for the same thing (cloned connection handles, several acceptors). The
/// first is held inline: the usual single waiter (a stream's response head) costs no allocation.
#[derive(Debug, Default)]
pub(crate) struct WakerList {
    first: Option<Waker>,
    more: Vec<Waker>,
}

impl WakerList {
    pub(crate) fn register(&mut self, w: &Waker) {
        match &self.first {
            None => self.first = Some(w.clone()),
            Some(old) if old.will_wake(w) => {}
            Some(_) => {
                if !self.more.iter().any(|old| old.will_wake(w)) {
                    self.more.push(w.clone());
                }
            }
        }
    }

    pub(crate) fn wake_all(&mut self) {
        if let Some(w) = self.first.take() {
            wake_or_defer(w);
        }
        for w in self.more.drain(..) {
            wake_or_defer(w);
        }
    }
}
