//! Virtual time.
//!
//! Simulated time is a [`SimTime`]: nanoseconds since the start of the run, a plain integer, so every
//! computation on it is exact and reproducible. The protocol core takes `std::time::Instant`s, so the
//! [`Clock`] maps simulated time onto instants as `epoch + offset`, where `epoch` is one `Instant`
//! taken once when the clock is created. That is the only clock read of a run, and it is used purely
//! as an opaque origin: the protocol core only ever adds durations to the instants it is given and
//! compares them, so every decision depends on offsets alone and a run is the same whatever the epoch.
//! Instants coming back from the core (deadlines) are turned into offsets again with
//! [`Clock::to_sim`].

use std::time::{Duration, Instant};

/// Nanoseconds of simulated time since the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SimTime(pub u64);

impl SimTime {
    pub const ZERO: SimTime = SimTime(0);
    pub const MAX: SimTime = SimTime(u64::MAX);

    pub fn from_duration(d: Duration) -> SimTime {
        SimTime(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> SimTime {
        SimTime(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: SimTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::fmt::Display for SimTime {
    /// Seconds with microsecond precision: `12.000250`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{:06}",
            self.0 / 1_000_000_000,
            (self.0 / 1000) % 1_000_000
        )
    }
}

/// Maps simulated time to the `Instant`s the protocol core works with (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// Captures the epoch (the one clock read of a run).
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn instant(&self, t: SimTime) -> Instant {
        self.epoch + t.as_duration()
    }

    /// The simulated time of an instant produced by the core (never before the epoch in practice).
    pub fn to_sim(&self, i: Instant) -> SimTime {
        SimTime::from_duration(i.saturating_duration_since(self.epoch))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip() {
        let c = Clock::new();
        let t = SimTime(3_600_000_000_123);
        assert_eq!(c.to_sim(c.instant(t)), t);
        assert_eq!(t.to_string(), "3600.000000");
        assert_eq!(SimTime(1_500_000).to_string(), "0.001500");
    }
}
