//! When to dial kas again: exponential back-off with full jitter, bounded, honouring the server's
//! `retry_after`. Pure (no clock reads, randomness passed in), so the simulator drives the very same
//! decisions as the production agent.

use std::time::{Duration, Instant};

/// Back-off parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Ceiling of the first retry's delay.
    pub initial: Duration,
    /// Largest ceiling any retry's delay can have.
    pub max: Duration,
    /// A connection that lived at least this long resets the back-off on disconnect.
    pub stable_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
        }
    }
}

impl BackoffPolicy {
    /// The delay ceiling after `failures` consecutive failures: `min(max, initial * 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// What the agent does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Dial now.
    Connect,
    /// Dial at this instant.
    WaitUntil(Instant),
}

/// The reconnect state of one agent.
///
/// Invariant: the delay before any dial after a failure is at most `policy.max` (or the server's
/// `retry_after` if larger), and at least the server's `retry_after`.
#[derive(Debug, Clone)]
pub struct Reconnect {
    policy: BackoffPolicy,
    failures: u32,
    connected_at: Option<Instant>,
}

impl Reconnect {
    pub fn new(policy: BackoffPolicy) -> Reconnect {
        Reconnect {
            policy,
            failures: 0,
            connected_at: None,
        }
    }

    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// Consecutive failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The handshake succeeded.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// A dial, TLS or handshake attempt failed, or a connection ended. `unit` is a uniform random
    /// number in `[0, 1)` (full jitter); `retry_after` is the server's minimum from a REJECT.
    pub fn failed(&mut self, now: Instant, unit: f64, retry_after: Option<Duration>) -> Next {
        if let Some(at) = self.connected_at.take()
            && now.saturating_duration_since(at) >= self.policy.stable_after
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.policy.ceiling(self.failures);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        let delay = jittered.max(retry_after.unwrap_or_default());
        Next::WaitUntil(now + delay)
    }

    /// The server sent GOAWAY: dial a replacement at once while the old connection drains.
    pub fn goaway(&mut self) -> Next {
        Next::Connect
    }
}

/// How an established connection ended, as the reconnect policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server sent GOAWAY (the connection now drains) or closed it gracefully.
    GoingAway,
    /// Anything else: transport error, idle timeout, abort.
    Lost,
}

/// A connection must have lived this long for a GOAWAY to count as a hand-over (dial a replacement at
/// once) rather than as a failure (back off), so a server that accepts and immediately sends GOAWAY
/// cannot make agents dial in a tight loop.
pub const MIN_LIFETIME_FOR_HANDOVER: Duration = Duration::from_secs(1);

impl Reconnect {
    /// What to do once an established connection ended or started draining, `lived` after the
    /// handshake: a hand-over dials at once, anything else backs off (`unit` as in
    /// [`Reconnect::failed`]).
    pub fn after_connection(
        &mut self,
        ending: Ending,
        lived: Duration,
        now: Instant,
        unit: f64,
    ) -> Next {
        match ending {
            Ending::GoingAway if lived >= MIN_LIFETIME_FOR_HANDOVER => self.goaway(),
            _ => self.failed(now, unit, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = BackoffPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(500));
        assert_eq!(p.ceiling(2), Duration::from_secs(1));
        assert_eq!(p.ceiling(4), Duration::from_secs(4));
        assert_eq!(p.ceiling(100), Duration::from_secs(30));
    }

    #[test]
    fn stable_connection_resets_the_backoff() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(BackoffPolicy::default());
        for _ in 0..5 {
            r.failed(t0, 0.5, None);
        }
        assert_eq!(r.failures(), 5);
        r.connected(t0);
        r.failed(t0 + Duration::from_secs(60), 0.5, None);
        assert_eq!(r.failures(), 1);
        // A connection that dies at once does not reset it.
        r.connected(t0);
        r.failed(t0 + Duration::from_millis(10), 0.5, None);
        assert_eq!(r.failures(), 2);
    }

    #[test]
    fn goaway_hands_over_only_after_a_minimum_lifetime() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(BackoffPolicy::default());
        r.connected(t0);
        let next = r.after_connection(Ending::GoingAway, Duration::from_secs(5), t0, 0.5);
        assert_eq!(next, Next::Connect);
        assert_eq!(r.failures(), 0);
        r.connected(t0);
        let next = r.after_connection(Ending::GoingAway, Duration::from_millis(10), t0, 0.5);
        assert!(matches!(next, Next::WaitUntil(_)));
        assert_eq!(r.failures(), 1);
        let next = r.after_connection(Ending::Lost, Duration::from_secs(60), t0, 0.5);
        assert!(matches!(next, Next::WaitUntil(_)));
    }

    proptest! {
        #[test]
        fn delay_is_bounded_and_honours_retry_after(units in prop::collection::vec(0.0f64..1.0, 1..50), retry in prop::option::of(0u64..60_000)) {
            let t0 = Instant::now();
            let mut r = Reconnect::new(BackoffPolicy::default());
            let retry_after = retry.map(Duration::from_millis);
            for u in units {
                let Next::WaitUntil(at) = r.failed(t0, u, retry_after) else { panic!("must wait") };
                let d = at - t0;
                prop_assert!(d <= r.policy().max.max(retry_after.unwrap_or_default()));
                prop_assert!(d >= retry_after.unwrap_or_default());
            }
        }
    }
}
