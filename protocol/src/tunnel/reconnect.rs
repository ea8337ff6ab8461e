//! agentk's reconnect policy: when to dial kas again. One pure type decides both cases:
//!
//! - **failures** (a dial, TLS or handshake attempt failed, a connection was lost): exponential back-off
//!   with full jitter, bounded by [`BackoffPolicy::max`], never shorter than the server's `retry_after`;
//! - **handover** (kas sent GOAWAY, or closed gracefully): dial a replacement at once while the old
//!   connection drains, but only if the connection lived [`MIN_LIFETIME_FOR_HANDOVER`], so a kas that
//!   accepts and at once sends GOAWAY is not dialled in a tight loop.
//!
//! No clock reads and no randomness of its own (`now` and a uniform `unit` are passed in), so agentk and
//! the deterministic simulator drive the very same decisions.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use protocol::tunnel::reconnect::{BackoffPolicy, Next, Reconnect, Why};
//!
//! let t0 = Instant::now();
//! let mut r = Reconnect::new(BackoffPolicy::default());
//! r.handle_connected("conn-1", t0);
//! // kas sends GOAWAY a minute later: hand over at once.
//! let d = r.handle_draining(&"conn-1", t0 + Duration::from_secs(60), 0.5).expect("current");
//! assert_eq!((d.next, d.why), (Next::Connect, Why::Handover));
//! // The old connection's end is no news.
//! assert!(r.handle_closed(&"conn-1", &protocol::CloseReason::Graceful, t0, 0.5).is_none());
//! ```

use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::tunnel::error::{CloseReason, RejectCode};

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

/// A connection must have lived this long for a GOAWAY (or a graceful close) to count as a handover
/// (dial a replacement at once) rather than as a failure (back off).
pub const MIN_LIFETIME_FOR_HANDOVER: Duration = Duration::from_secs(1);

/// When to dial next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Dial now.
    Connect,
    /// Dial at this instant.
    WaitUntil(Instant),
}

/// How a dial attempt (TCP, TLS, HELLO/ACCEPT) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// The TCP connection failed or the transport ended during the handshake.
    Network,
    /// The TLS handshake failed.
    Tls,
    /// The attempt took longer than the dial timeout.
    Timeout,
    /// kas refused the HELLO (REJECT).
    Refused {
        /// Why.
        code: RejectCode,
        /// The server's minimum back-off, if it gave one.
        retry_after: Option<Duration>,
    },
}

impl DialFailure {
    /// The failure a connection that ended during its handshake stands for.
    pub fn from_close(reason: &CloseReason) -> DialFailure {
        match reason {
            CloseReason::Refused {
                code,
                retry_after_ms,
                ..
            } => DialFailure::Refused {
                code: *code,
                retry_after: (*retry_after_ms > 0)
                    .then(|| Duration::from_millis((*retry_after_ms).into())),
            },
            _ => DialFailure::Network,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            DialFailure::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why a [`Decision`] was taken (one log line each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The current connection is going away after a healthy life: its replacement is dialled at once.
    Handover,
    /// The current connection went away only `lived` after its handshake: back off.
    EarlyGoaway {
        /// How long it lived.
        lived: Duration,
    },
    /// The current connection was lost (transport, timeout, protocol error, abort).
    Lost,
    /// A dial attempt failed (network, TLS, timeout).
    DialFailed,
    /// kas refused the HELLO.
    Refused {
        /// Why.
        code: RejectCode,
    },
}

/// What the agent does next, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// When to dial.
    pub next: Next,
    /// Why.
    pub why: Why,
    /// kas refused the agent's credentials: re-read the token before the next dial.
    pub reload_credentials: bool,
}

impl Decision {
    /// The wait before the next dial, seen from `now`.
    pub fn delay(&self, now: Instant) -> Duration {
        match self.next {
            Next::Connect => Duration::ZERO,
            Next::WaitUntil(at) => at.saturating_duration_since(now),
        }
    }
}

#[derive(Debug, Clone)]
struct Current<C> {
    conn: C,
    /// Draining or closed: its decision was taken.
    decided: bool,
}

/// Consecutive failures and the exponential back-off with full jitter they give; shared by
/// [`Reconnect`] and [`crate::tunnel::connection_set::ConnectionSet`], so the back-off is decided once.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    pub(crate) policy: BackoffPolicy,
    pub(crate) failures: u32,
    /// Handshake time of the last established connection, until a failure consumed it.
    pub(crate) connected_at: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            connected_at: None,
        }
    }

    /// One more failure: resets the count first if the last connection was stable. The delay lies in
    /// `[retry_after, max(policy.max, retry_after)]`.
    pub(crate) fn back_off(
        &mut self,
        now: Instant,
        unit: f64,
        retry_after: Option<Duration>,
    ) -> Next {
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

    /// The decision for a connection that ended (`going_away`: GOAWAY or graceful close) after
    /// living `lived`: a handover at once, or a back-off.
    pub(crate) fn end_of_connection(
        &mut self,
        going_away: bool,
        lived: Duration,
        now: Instant,
        unit: f64,
    ) -> Decision {
        let (next, why) = if going_away && lived >= MIN_LIFETIME_FOR_HANDOVER {
            (Next::Connect, Why::Handover)
        } else if going_away {
            (self.back_off(now, unit, None), Why::EarlyGoaway { lived })
        } else {
            (self.back_off(now, unit, None), Why::Lost)
        };
        Decision {
            next,
            why,
            reload_credentials: false,
        }
    }

    /// The decision for a failed dial.
    pub(crate) fn dial_failed(
        &mut self,
        failure: DialFailure,
        now: Instant,
        unit: f64,
    ) -> Decision {
        let next = self.back_off(now, unit, failure.retry_after());
        match failure {
            DialFailure::Refused { code, .. } => Decision {
                next,
                why: Why::Refused { code },
                reload_credentials: code.is_credential_problem(),
            },
            _ => Decision {
                next,
                why: Why::DialFailed,
                reload_credentials: false,
            },
        }
    }
}

/// The reconnect state of one agent; `C` names a connection (agentk: a serial number; the simulator:
/// a flow id).
///
/// Invariants (checked by `protocol/tests/reconnect_props.rs`): at most one decision per connection
/// (events for a connection that is not current, or whose decision was taken, yield `None`); a
/// handover only for a drain or graceful close at least [`MIN_LIFETIME_FOR_HANDOVER`] after the
/// handshake; every back-off delay lies in `[retry_after, max(policy.max, retry_after)]`; a connection
/// that lived `policy.stable_after` resets the failure count; `reload_credentials` exactly for a
/// refusal whose code [`RejectCode::is_credential_problem`].
#[derive(Debug, Clone)]
pub struct Reconnect<C> {
    backoff: Backoff,
    current: Option<Current<C>>,
}

impl<C: Eq + Clone + Debug> Reconnect<C> {
    /// No failures yet, no connection.
    pub fn new(policy: BackoffPolicy) -> Reconnect<C> {
        Reconnect {
            backoff: Backoff::new(policy),
            current: None,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.backoff.policy
    }

    /// Consecutive failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.backoff.failures
    }

    /// The current connection (the last established one), until its decision was taken.
    pub fn current(&self) -> Option<&C> {
        self.current
            .as_ref()
            .filter(|c| !c.decided)
            .map(|c| &c.conn)
    }

    /// Forgets the consecutive failures: the next failure backs off as the first one.
    pub fn reset_failures(&mut self) {
        self.backoff.failures = 0;
    }

    /// `conn` completed its handshake at `now`; it becomes the current connection (a draining
    /// predecessor is no longer current).
    pub fn handle_connected(&mut self, conn: C, now: Instant) {
        self.backoff.connected_at = Some(now);
        self.current = Some(Current {
            conn,
            decided: false,
        });
    }

    /// A dial attempt failed at `now`. `unit` is a uniform random number in `[0, 1)` (full jitter).
    pub fn handle_dial_failed(
        &mut self,
        failure: DialFailure,
        now: Instant,
        unit: f64,
    ) -> Decision {
        self.backoff.dial_failed(failure, now, unit)
    }

    /// Either side sent GOAWAY on `conn`. `None` unless `conn` is current and undecided.
    pub fn handle_draining(&mut self, conn: &C, now: Instant, unit: f64) -> Option<Decision> {
        self.end_current(conn, true, now, unit)
    }

    /// `conn` ended with `reason`. `None` unless `conn` is current and undecided (a connection that
    /// drained got its decision when the drain began).
    pub fn handle_closed(
        &mut self,
        conn: &C,
        reason: &CloseReason,
        now: Instant,
        unit: f64,
    ) -> Option<Decision> {
        let going_away = *reason == CloseReason::Graceful;
        let decision = self.end_current(conn, going_away, now, unit);
        if self.current.as_ref().is_some_and(|c| c.conn == *conn) {
            self.current = None;
        }
        decision
    }

    fn end_current(
        &mut self,
        conn: &C,
        going_away: bool,
        now: Instant,
        unit: f64,
    ) -> Option<Decision> {
        let current = self.current.as_mut().filter(|c| c.conn == *conn)?;
        if current.decided {
            return None;
        }
        current.decided = true;
        let lived = self
            .backoff
            .connected_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        Some(self.backoff.end_of_connection(going_away, lived, now, unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = BackoffPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(500));
        assert_eq!(p.ceiling(2), Duration::from_secs(1));
        assert_eq!(p.ceiling(4), Duration::from_secs(4));
        assert_eq!(p.ceiling(100), Duration::from_secs(30));
    }

    #[test]
    fn early_goaway_backs_off_and_graceful_close_after_drain_is_no_news() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(BackoffPolicy::default());
        r.handle_connected(1u32, t0);
        let d = r
            .handle_draining(&1, t0 + Duration::from_millis(10), 0.5)
            .expect("the current connection decides");
        assert!(matches!(d.why, Why::EarlyGoaway { .. }));
        assert!(matches!(d.next, Next::WaitUntil(_)));
        assert_eq!(r.failures(), 1);
        assert_eq!(r.handle_draining(&1, t0, 0.5), None);
        assert_eq!(r.handle_closed(&1, &CloseReason::Graceful, t0, 0.5), None);
        assert_eq!(r.current(), None);
    }

    #[test]
    fn refusal_of_credentials_asks_for_a_reload() {
        let t0 = Instant::now();
        let mut r: Reconnect<u32> = Reconnect::new(BackoffPolicy::default());
        let d = r.handle_dial_failed(
            DialFailure::Refused {
                code: RejectCode::Unauthenticated,
                retry_after: Some(Duration::from_secs(5)),
            },
            t0,
            0.0,
        );
        assert!(d.reload_credentials);
        assert_eq!(d.delay(t0), Duration::from_secs(5));
        let d = r.handle_dial_failed(DialFailure::Tls, t0, 0.0);
        assert!(!d.reload_credentials);
        assert_eq!(d.why, Why::DialFailed);
    }
}
