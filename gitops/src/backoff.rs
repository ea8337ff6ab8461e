//! Retry spacing after failed sync rounds: exponential back-off with "equal jitter" — the delay after
//! `n` consecutive failures is uniformly drawn from `[ceiling/2, ceiling]` with
//! `ceiling = min(max, initial · 2^(n-1))`, so it is never below `initial/2` (no storm) and never
//! above `max`. The randomness comes from a seeded generator the caller provides (the simulator
//! replays it).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Back-off parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    /// 2 s, doubling, up to 5 minutes.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The ceiling after `failures` (≥ 1) consecutive failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.initial
            .saturating_mul(1u32 << shift)
            .min(self.max)
            .max(self.initial.min(self.max))
    }

    /// The smallest delay this policy ever gives.
    pub fn lower_bound(&self) -> Duration {
        self.initial.min(self.max) / 2
    }

    /// A jittered delay for `failures` consecutive failures, drawn from `rng`.
    pub fn delay(&self, failures: u32, rng: &mut Jitter) -> Duration {
        let ceiling = self.ceiling(failures);
        let unit: f64 = rng.0.random();
        let delay = ceiling / 2 + (ceiling / 2).mul_f64(unit);
        debug_assert!(delay >= self.lower_bound() && delay <= ceiling);
        delay
    }
}

/// A deterministic source of jitter, from a seed.
#[derive(Debug, Clone)]
pub struct Jitter(ChaCha8Rng);

impl Jitter {
    /// A generator from `seed`; the same seed gives the same delays.
    pub fn new(seed: u64) -> Self {
        Jitter(ChaCha8Rng::seed_from_u64(seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let b = Backoff::default();
        let mut j = Jitter::new(7);
        for n in 1..40 {
            let d = b.delay(n, &mut j);
            assert!(d >= b.lower_bound(), "{n}: {d:?}");
            assert!(d <= b.max, "{n}: {d:?}");
            assert!(d >= b.ceiling(n) / 2);
        }
        assert_eq!(b.ceiling(1), Duration::from_secs(2));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(100), Duration::from_secs(300));
        let (mut a, mut c) = (Jitter::new(1), Jitter::new(1));
        assert_eq!(b.delay(5, &mut a), b.delay(5, &mut c));
    }
}
