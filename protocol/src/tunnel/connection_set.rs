//! An agent's set of connections to kas replicas: how many to hold, when to dial, which to close.
//!
//! kas's ACCEPT names the replica that accepted (`replica_id`) and how many connections to distinct
//! replicas it wants each agent to hold (`connections_wanted`, `K`; PROTOCOL.md §7.4). The agent dials
//! one load-balanced address, so a dial may land on a replica it already holds: [`ConnectionSet`]
//! then says to close that duplicate politely and dial again after a back-off. It keeps dialling
//! (one dial at a time) until it holds `K` serving connections to distinct replicas; when one dies
//! or gets GOAWAY it dials a replacement (at once for a handover, else after the back-off of
//! [`crate::tunnel::reconnect`]) while the others keep serving.
//!
//! Sans-IO: the driver (agentk's `agent.rs`, the simulator's `sim/agent.rs`) reports dial results
//! and connection events with `now` and a uniform random `unit` (full jitter), asks
//! [`ConnectionSet::poll_dial`] whether to start a dial and [`ConnectionSet::poll_timeout`] when to
//! ask again. With `K = 1` it decides exactly as [`crate::tunnel::reconnect::Reconnect`] does.
//!
//! Invariants (checked by `debug_assert!`s and `protocol/tests/connection_set_props.rs`): at most
//! `K` serving connections plus one dial in flight (a duplicate is closed the moment it is
//! reported); no two serving connections to the same named replica; every back-off delay lies in
//! `[retry_after, max(policy.max, retry_after)]`; with at least `K` replicas reachable through a
//! round-robin balancer the set converges to `K` distinct replicas.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use protocol::tunnel::connection_set::{Admit, ConnectionSet};
//! use protocol::tunnel::reconnect::BackoffPolicy;
//!
//! let t0 = Instant::now();
//! let mut set: ConnectionSet<u32> = ConnectionSet::new(BackoffPolicy::default());
//! assert!(set.poll_dial(t0));
//! assert_eq!(set.handle_connected(1, "kas-a", 2, t0, 0.5), Admit::Keep);
//! // K = 2: dial again; the balancer sends us to kas-a once more.
//! assert!(set.poll_dial(t0));
//! assert!(matches!(set.handle_connected(2, "kas-a", 2, t0, 0.5), Admit::Duplicate { .. }));
//! // Back off, then the next dial lands on kas-b.
//! let at = set.poll_timeout(t0).expect("a dial is due");
//! assert!(!set.poll_dial(t0) && set.poll_dial(at));
//! assert_eq!(set.handle_connected(3, "kas-b", 2, at, 0.5), Admit::Keep);
//! assert_eq!(set.serving().count(), 2);
//! assert!(!set.poll_dial(at));
//! ```

use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::tunnel::error::CloseReason;
use crate::tunnel::reconnect::{Backoff, BackoffPolicy, Decision, DialFailure, Next};

/// Most connections an agent holds whatever kas asks (a hostile or misconfigured kas cannot make
/// it open hundreds).
pub const MAX_CONNECTIONS: u32 = 8;

/// `K` as a kas replica announces it in ACCEPT (`connections_wanted`): the configured count within
/// `1..=MAX_CONNECTIONS`, and never more than the replicas the deployment is known to have
/// (`replicas`; `None` when unknown, as for kas, which learns its peers only from Redis and so sends
/// the configured count). Asking for more distinct replicas than exist only makes every agent dial
/// duplicates forever. kas (`agent_listener::tunnel_config`) and the simulator's replicas both
/// decide with this function.
///
/// ```
/// use protocol::tunnel::connection_set::connections_wanted;
/// assert_eq!(connections_wanted(2, Some(3)), 2);
/// assert_eq!(connections_wanted(2, Some(1)), 1);
/// assert_eq!(connections_wanted(0, None), 1);
/// assert_eq!(connections_wanted(50, None), 8);
/// ```
pub fn connections_wanted(configured: u32, replicas: Option<u32>) -> u32 {
    let k = configured.clamp(1, MAX_CONNECTIONS);
    replicas.map_or(k, |r| k.min(r.max(1)))
}

/// What to do with a connection that just completed its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Keep it: it serves streams.
    Keep,
    /// It reached a replica another serving connection already holds: close it gracefully (GOAWAY
    /// `NO_ERROR`); the next dial is due at `next`.
    Duplicate {
        /// When the next dial is due.
        next: Instant,
    },
    /// The set already holds `K` serving connections (kas lowered `K`): close it gracefully.
    Surplus,
}

/// Where a member connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Serving,
    /// GOAWAY either way: finishes its streams, no longer counts towards `K`.
    Draining,
}

#[derive(Debug, Clone)]
struct Member<C> {
    conn: C,
    replica: String,
    since: Instant,
    state: State,
}

/// The connections one agent holds, and the decision when to dial another; `C` names a connection
/// (agentk: a serial number; the simulator: a flow id).
#[derive(Debug, Clone)]
pub struct ConnectionSet<C> {
    backoff: Backoff,
    /// `K` as the last ACCEPT said (1 until then), within `1..=MAX_CONNECTIONS`.
    wanted: u32,
    members: Vec<Member<C>>,
    dialling: bool,
    /// The next dial is not due before this (`None`: due now).
    next_dial: Option<Instant>,
    /// Consecutive duplicates (a distinct replica resets it).
    duplicates: u32,
}

impl<C: Eq + Clone + Debug> ConnectionSet<C> {
    /// No connection, `K = 1` until the first ACCEPT says otherwise; the first dial is due at once.
    pub fn new(policy: BackoffPolicy) -> ConnectionSet<C> {
        ConnectionSet {
            backoff: Backoff::new(policy),
            wanted: 1,
            members: Vec::new(),
            dialling: false,
            next_dial: None,
            duplicates: 0,
        }
    }

    /// The back-off policy.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.backoff.policy
    }

    /// `K`: how many serving connections to distinct replicas the set aims for.
    pub fn wanted(&self) -> u32 {
        self.wanted
    }

    /// Consecutive failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.backoff.failures
    }

    /// Forgets the consecutive failures: the next failure backs off as the first one.
    pub fn reset_failures(&mut self) {
        self.backoff.failures = 0;
    }

    /// Whether a dial is in flight.
    pub fn dialling(&self) -> bool {
        self.dialling
    }

    /// The serving connections (not draining) with their replicas, oldest first.
    pub fn serving(&self) -> impl Iterator<Item = (&C, &str)> {
        self.members
            .iter()
            .filter(|m| m.state == State::Serving)
            .map(|m| (&m.conn, m.replica.as_str()))
    }

    /// The connections still open but draining.
    pub fn draining(&self) -> impl Iterator<Item = &C> {
        self.members
            .iter()
            .filter(|m| m.state == State::Draining)
            .map(|m| &m.conn)
    }

    /// The replica `conn` reached, while it is a member.
    pub fn replica_of(&self, conn: &C) -> Option<&str> {
        self.member(conn).map(|m| m.replica.as_str())
    }

    fn member(&self, conn: &C) -> Option<&Member<C>> {
        self.members.iter().find(|m| m.conn == *conn)
    }

    fn serving_count(&self) -> u32 {
        u32::try_from(self.serving().count()).unwrap_or(u32::MAX)
    }

    /// Whether the set holds fewer serving connections than `K`.
    pub fn wants_more(&self) -> bool {
        self.serving_count() < self.wanted
    }

    /// Whether to start a dial at `now`; if `true`, the dial is in flight until it is reported
    /// ([`Self::handle_connected`] or [`Self::handle_dial_failed`]).
    pub fn poll_dial(&mut self, now: Instant) -> bool {
        if self.dialling || !self.wants_more() || self.next_dial.is_some_and(|at| now < at) {
            return false;
        }
        self.dialling = true;
        self.next_dial = None;
        self.check_invariants();
        true
    }

    /// When [`Self::poll_dial`] will say yes, seen from `now` (`now` itself if it is due);
    /// `None` while a dial is in flight or the set is complete.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.dialling || !self.wants_more() {
            return None;
        }
        Some(self.next_dial.map_or(now, |at| at.max(now)))
    }

    /// The dial in flight failed at `now`.
    pub fn handle_dial_failed(
        &mut self,
        failure: DialFailure,
        now: Instant,
        unit: f64,
    ) -> Decision {
        debug_assert!(self.dialling, "dial failure reported without a dial");
        self.dialling = false;
        let d = self.backoff.dial_failed(failure, now, unit);
        self.schedule(d.next);
        self.check_invariants();
        d
    }

    /// The dial in flight completed its handshake at `now` as `conn` to `replica`, and ACCEPT asked
    /// for `wanted` connections (0 means 1; clamped to [`MAX_CONNECTIONS`]).
    pub fn handle_connected(
        &mut self,
        conn: C,
        replica: &str,
        wanted: u32,
        now: Instant,
        unit: f64,
    ) -> Admit {
        debug_assert!(self.dialling, "connection reported without a dial");
        self.dialling = false;
        self.wanted = wanted.clamp(1, MAX_CONNECTIONS);
        let duplicate = !replica.is_empty()
            && self
                .members
                .iter()
                .any(|m| m.state == State::Serving && m.replica == replica);
        let admit = if duplicate {
            // Not a failure of kas: back off on its own count, so a balancer that keeps sending us
            // to the same replica is not hammered.
            self.duplicates = self.duplicates.saturating_add(1);
            let ceiling = self.backoff.policy.ceiling(self.duplicates);
            let next = now + ceiling.mul_f64(unit.clamp(0.0, 1.0));
            self.next_dial = Some(next);
            Admit::Duplicate { next }
        } else if !self.wants_more() {
            Admit::Surplus
        } else {
            self.duplicates = 0;
            self.backoff.connected_at = Some(now);
            self.members.push(Member {
                conn,
                replica: replica.to_owned(),
                since: now,
                state: State::Serving,
            });
            Admit::Keep
        };
        self.check_invariants();
        admit
    }

    /// Either side sent GOAWAY on `conn` at `now`: it drains and no longer counts; a replacement is
    /// dialled at once if it lived [`crate::tunnel::reconnect::MIN_LIFETIME_FOR_HANDOVER`], else
    /// after a back-off. `None` unless `conn` is a serving member.
    pub fn handle_draining(&mut self, conn: &C, now: Instant, unit: f64) -> Option<Decision> {
        let m = self
            .members
            .iter_mut()
            .find(|m| m.conn == *conn && m.state == State::Serving)?;
        m.state = State::Draining;
        let lived = now.saturating_duration_since(m.since);
        let d = self.end_member(true, lived, now, unit);
        self.check_invariants();
        Some(d)
    }

    /// `conn` ended with `reason` at `now`. `None` unless it was a serving member (a draining one
    /// got its decision when the drain began).
    pub fn handle_closed(
        &mut self,
        conn: &C,
        reason: &CloseReason,
        now: Instant,
        unit: f64,
    ) -> Option<Decision> {
        let i = self.members.iter().position(|m| m.conn == *conn)?;
        let m = self.members.remove(i);
        let d = (m.state == State::Serving).then(|| {
            let lived = now.saturating_duration_since(m.since);
            self.end_member(*reason == CloseReason::Graceful, lived, now, unit)
        });
        self.check_invariants();
        d
    }

    fn end_member(
        &mut self,
        going_away: bool,
        lived: Duration,
        now: Instant,
        unit: f64,
    ) -> Decision {
        // The back-off resets after a stable connection: the one that ended.
        self.backoff.connected_at = Some(now.checked_sub(lived).unwrap_or(now));
        let d = self.backoff.end_of_connection(going_away, lived, now, unit);
        self.schedule(d.next);
        d
    }

    /// Takes a decision's timing for the next dial. A handover dials at once, a back-off replaces
    /// any earlier plan (it only grows with the failure count).
    fn schedule(&mut self, next: Next) {
        self.next_dial = match next {
            Next::Connect => None,
            Next::WaitUntil(at) => Some(at),
        };
    }

    fn check_invariants(&self) {
        debug_assert!(
            self.serving_count() <= self.wanted.max(1) || !self.dialling,
            "dialling with {} serving of {}",
            self.serving_count(),
            self.wanted
        );
        debug_assert!(
            {
                let named: Vec<&str> = self
                    .serving()
                    .map(|(_, r)| r)
                    .filter(|r| !r.is_empty())
                    .collect();
                named
                    .iter()
                    .enumerate()
                    .all(|(i, r)| !named[i + 1..].contains(r))
            },
            "two serving connections to one replica"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::reconnect::Why;

    #[test]
    fn one_connection_behaves_as_reconnect() {
        let t0 = Instant::now();
        let mut set: ConnectionSet<u32> = ConnectionSet::new(BackoffPolicy::default());
        assert!(set.poll_dial(t0));
        assert!(!set.poll_dial(t0), "one dial at a time");
        assert_eq!(set.handle_connected(1, "", 0, t0, 0.5), Admit::Keep);
        assert_eq!(set.wanted(), 1);
        assert_eq!(set.poll_timeout(t0), None);
        let t1 = t0 + Duration::from_secs(60);
        let d = set.handle_draining(&1, t1, 0.5).expect("serving");
        assert_eq!((d.next, d.why), (Next::Connect, Why::Handover));
        assert!(set.poll_dial(t1));
        assert_eq!(set.handle_closed(&1, &CloseReason::Graceful, t1, 0.5), None);
    }

    #[test]
    fn losing_a_connection_backs_off_while_the_other_serves() {
        let t0 = Instant::now();
        let mut set: ConnectionSet<u32> = ConnectionSet::new(BackoffPolicy::default());
        assert!(set.poll_dial(t0));
        set.handle_connected(1, "a", 2, t0, 0.5);
        assert!(set.poll_dial(t0));
        set.handle_connected(2, "b", 2, t0, 0.5);
        let t1 = t0 + Duration::from_millis(100);
        let d = set
            .handle_closed(
                &1,
                &CloseReason::Local(crate::ConnectionError::IdleTimeout),
                t1,
                1.0,
            )
            .expect("serving");
        assert_eq!(d.why, Why::Lost);
        assert_eq!(set.serving().count(), 1);
        let at = set.poll_timeout(t1).expect("wants one more");
        assert!(at > t1 && at <= t1 + set.policy().max);
        assert!(!set.poll_dial(t1));
        assert!(set.poll_dial(at));
    }

    #[test]
    fn lower_k_makes_a_new_connection_surplus() {
        let t0 = Instant::now();
        let mut set: ConnectionSet<u32> = ConnectionSet::new(BackoffPolicy::default());
        assert!(set.poll_dial(t0));
        set.handle_connected(1, "a", 2, t0, 0.5);
        assert!(set.poll_dial(t0));
        assert_eq!(set.handle_connected(2, "b", 1, t0, 0.5), Admit::Surplus);
        assert_eq!(set.serving().count(), 1);
        assert!(!set.poll_dial(t0));
    }
}
