//! Flood accounting: frames that cost work without doing any, counted per fixed window
//! ([`crate::tunnel::config::FloodLimits`], PROTOCOL.md §17).
//!
//! Each kind has its own counter. A window starts with the first counted frame and lasts
//! `FloodLimits::window`; the first frame after it ends starts a new one. A frame that brings its
//! kind's count in the current window above the limit is a connection error (`ENHANCE_YOUR_CALM`).
//! Time comes from the caller (`now`), so the rule is deterministic under a simulated clock.

use std::time::Instant;

use crate::tunnel::config::FloodLimits;
use crate::tunnel::error::ConnectionError;

/// What was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloodKind {
    /// A PING, or a PING acknowledgement nobody asked for.
    Ping,
    /// A stream the peer opened that did no work: reset by the peer before it was answered, or
    /// refused.
    RapidReset,
    /// A DATA frame without payload and without END_STREAM.
    EmptyData,
    /// A WINDOW_UPDATE frame.
    WindowUpdate,
    /// A frame of an unknown type.
    UnknownFrame,
}

impl FloodKind {
    /// The name used in errors, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            FloodKind::Ping => "ping",
            FloodKind::RapidReset => "rapid_reset",
            FloodKind::EmptyData => "empty_data",
            FloodKind::WindowUpdate => "window_update",
            FloodKind::UnknownFrame => "unknown_frame",
        }
    }

    const ALL: [FloodKind; 5] = [
        FloodKind::Ping,
        FloodKind::RapidReset,
        FloodKind::EmptyData,
        FloodKind::WindowUpdate,
        FloodKind::UnknownFrame,
    ];

    fn index(self) -> usize {
        match self {
            FloodKind::Ping => 0,
            FloodKind::RapidReset => 1,
            FloodKind::EmptyData => 2,
            FloodKind::WindowUpdate => 3,
            FloodKind::UnknownFrame => 4,
        }
    }
}

impl std::fmt::Display for FloodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    started: Option<Instant>,
    count: u32,
}

/// The counters of one connection.
#[derive(Debug, Clone)]
pub(crate) struct FloodGuard {
    limits: FloodLimits,
    counters: [Counter; FloodKind::ALL.len()],
}

impl FloodGuard {
    pub(crate) fn new(limits: FloodLimits) -> FloodGuard {
        FloodGuard {
            limits,
            counters: [Counter::default(); FloodKind::ALL.len()],
        }
    }

    fn limit(&self, kind: FloodKind) -> u32 {
        match kind {
            FloodKind::Ping => self.limits.pings,
            FloodKind::RapidReset => self.limits.rapid_resets,
            FloodKind::EmptyData => self.limits.empty_data,
            FloodKind::WindowUpdate => self.limits.window_updates,
            FloodKind::UnknownFrame => self.limits.unknown_frames,
        }
    }

    /// Counts one frame of `kind` at `now`; an error once the window's count exceeds the limit.
    pub(crate) fn record(&mut self, kind: FloodKind, now: Instant) -> Result<(), ConnectionError> {
        let limit = self.limit(kind);
        if limit == 0 {
            return Ok(());
        }
        let window = self.limits.window;
        let c = &mut self.counters[kind.index()];
        match c.started {
            Some(t) if now.saturating_duration_since(t) < window => {}
            _ => {
                c.started = Some(now);
                c.count = 0;
            }
        }
        c.count = c.count.saturating_add(1);
        if c.count > limit {
            Err(ConnectionError::Flood {
                kind,
                limit,
                window,
            })
        } else {
            Ok(())
        }
    }

    /// The count of `kind` in its current window as of `now` (0 if the window ended).
    #[cfg(test)]
    fn count(&self, kind: FloodKind, now: Instant) -> u32 {
        let c = &self.counters[kind.index()];
        match c.started {
            Some(t) if now.saturating_duration_since(t) < self.limits.window => c.count,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn limits(pings: u32) -> FloodLimits {
        FloodLimits {
            window: Duration::from_secs(10),
            pings,
            ..FloodLimits::default()
        }
    }

    #[test]
    fn the_limit_is_inclusive_and_the_window_restarts() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(limits(3));
        for i in 0..3 {
            assert!(
                g.record(FloodKind::Ping, t0 + Duration::from_secs(i))
                    .is_ok()
            );
        }
        assert!(matches!(
            g.record(FloodKind::Ping, t0 + Duration::from_secs(9)),
            Err(ConnectionError::Flood {
                kind: FloodKind::Ping,
                limit: 3,
                ..
            })
        ));
        // A new window begins with the first frame after the old one ended.
        let t1 = t0 + Duration::from_secs(10);
        assert!(g.record(FloodKind::Ping, t1).is_ok());
        assert_eq!(g.count(FloodKind::Ping, t1), 1);
        // Other kinds have counters of their own.
        assert!(g.record(FloodKind::EmptyData, t1).is_ok());
        assert_eq!(g.count(FloodKind::EmptyData, t1), 1);
    }

    #[test]
    fn zero_disables() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(limits(0));
        for _ in 0..10_000 {
            assert!(g.record(FloodKind::Ping, t0).is_ok());
        }
    }

    proptest! {
        /// Whatever the arrival times, a kind never passes more than `limit` frames in any window
        /// the guard started, and a peer sending at most `limit` frames per window is never cut.
        #[test]
        fn never_more_than_the_limit_per_window(
            limit in 1u32..20,
            gaps in prop::collection::vec(0u64..3000, 1..200),
        ) {
            let t0 = Instant::now();
            let mut g = FloodGuard::new(FloodLimits {
                window: Duration::from_secs(1),
                pings: limit,
                ..FloodLimits::default()
            });
            let mut now = t0;
            let mut accepted_in_window = 0u32;
            let mut window_start = None::<Instant>;
            for gap in gaps {
                now += Duration::from_millis(gap);
                let fresh = window_start.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
                if fresh {
                    window_start = Some(now);
                    accepted_in_window = 0;
                }
                match g.record(FloodKind::Ping, now) {
                    Ok(()) => {
                        accepted_in_window += 1;
                        prop_assert!(accepted_in_window <= limit);
                    }
                    Err(_) => prop_assert_eq!(accepted_in_window, limit),
                }
            }
        }
    }
}
