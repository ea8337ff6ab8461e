//! The connection's timers. All deadlines are absolute `Instant`s computed from the `now` the driver
//! passes in; the connection never reads a clock.

use std::time::Instant;

/// Which deadline fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The handshake did not finish in time.
    Handshake,
    /// Nothing was received for the keepalive interval: send a PING.
    Keepalive,
    /// Nothing was received for the idle timeout: close.
    Idle,
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Timers {
    pub(crate) handshake: Option<Instant>,
    pub(crate) keepalive: Option<Instant>,
    pub(crate) idle: Option<Instant>,
}

impl Timers {
    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        // Asked several times per command and input: plain comparisons, no iterator.
        let min = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        min(min(self.handshake, self.keepalive), self.idle)
    }

    /// Disarms and returns the timers that expired at `now`, earliest first (ties in the order
    /// handshake, idle, keepalive). Called on every timeout of every connection: a fixed array, no
    /// allocation.
    pub(crate) fn expired(&mut self, now: Instant) -> impl Iterator<Item = Timer> + use<> {
        let mut fired: [Option<(Instant, Timer)>; 3] = [None; 3];
        let mut n = 0;
        for (slot, t) in [
            (&mut self.handshake, Timer::Handshake),
            (&mut self.idle, Timer::Idle),
            (&mut self.keepalive, Timer::Keepalive),
        ] {
            if let Some(at) = *slot
                && at <= now
            {
                *slot = None;
                fired[n] = Some((at, t));
                n += 1;
            }
        }
        // A stable sort of at most three entries by deadline (`sort_by_key` is stable too).
        fired[..n].sort_by_key(|e| e.map(|(at, _)| at));
        fired.into_iter().flatten().map(|(_, t)| t)
    }
}
