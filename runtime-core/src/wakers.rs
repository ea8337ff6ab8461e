//! Small waker holders: one waiting task, or a set of them.

use std::task::Waker;

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
        w.wake();
    }
}

/// Several tasks waiting for the same thing (cloned connection handles, several acceptors).
#[derive(Debug, Default)]
pub(crate) struct WakerList(Vec<Waker>);

impl WakerList {
    pub(crate) fn register(&mut self, w: &Waker) {
        if !self.0.iter().any(|old| old.will_wake(w)) {
            self.0.push(w.clone());
        }
    }

    pub(crate) fn wake_all(&mut self) {
        for w in self.0.drain(..) {
            w.wake();
        }
    }
}
