//! Balance between kas replicas: how many agent connections a replica drains (GOAWAY), and when.
//!
//! Agents dial one load-balanced address and stay where they landed, so after a rolling restart the
//! replica restarted last holds few agents and the others many (the simulator's capacity scenario
//! ended with 8,743 of 10,000 agents on one replica). Two mechanisms even it out, both decided here:
//!
//! - **Shedding** ([`Balance`]): a replica holding more than `tolerance` × its fair share (all
//!   replicas' connections / replicas) drains some of its connections with GOAWAY, paced (at most
//!   `max_step_fraction` of what it holds per `interval`) so that no reconnect storm follows. A
//!   drained agent hands over at once (it dials a replacement while the old connection finishes its
//!   streams), so no request fails; the balancer spreads the new dials over every replica, so load
//!   moves towards the replicas that hold little.
//! - **Maximum connection age** ([`connection_deadline`]): every connection is drained once it is
//!   `max_connection_age` old, with ±`age_jitter` so that connections made together do not end
//!   together (GitLab: 2 h; gRPC's `MaxConnectionAge` jitter is ±10 %). This bounds how long any
//!   imbalance can last even without a load view.
//!
//! Pure: the replica's own count and its peers' counts (kas: from the replicas' shared store; the
//! simulator: from its world) come in with `now`; no clock, no I/O.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use protocol::routing::balance::{Balance, BalancePolicy};
//!
//! let t0 = Instant::now();
//! let mut b = Balance::new(BalancePolicy::default());
//! // 9,000 here, 500 and 500 on the peers: fair share 3,333, so shed, but paced.
//! let shed = b.handle_loads(9_000, &[500, 500], t0);
//! assert_eq!(shed, 450); // 5 % of 9,000 this interval
//! assert_eq!(b.handle_loads(8_550, &[700, 750], t0), 0); // not again within the interval
//! assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(10)));
//! ```

use std::time::{Duration, Instant};

/// How replicas even out their load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancePolicy {
    /// Shed while holding more than this multiple of the fair share (≥ 1).
    pub tolerance: f64,
    /// Shed down to this multiple of the fair share (between 1 and `tolerance`): hysteresis, so a
    /// replica just above the tolerance does not shed one connection at a time forever.
    pub target: f64,
    /// At most one shedding step per interval.
    pub interval: Duration,
    /// A step drains at most this fraction of the connections held (at least one).
    pub max_step_fraction: f64,
    /// Drain every connection this old (`None`: never).
    pub max_connection_age: Option<Duration>,
    /// The age limit varies by ± this fraction per connection.
    pub age_jitter: f64,
}

impl Default for BalancePolicy {
    fn default() -> Self {
        BalancePolicy {
            tolerance: 1.1,
            target: 1.0,
            interval: Duration::from_secs(10),
            max_step_fraction: 0.05,
            max_connection_age: Some(Duration::from_secs(2 * 3600)),
            age_jitter: 0.1,
        }
    }
}

/// The fair share of one replica: all connections over all replicas (`peers` are the others).
pub fn fair_share(own: u64, peers: &[u64]) -> f64 {
    let total = own + peers.iter().sum::<u64>();
    total as f64 / (peers.len() + 1) as f64
}

/// When a connection established at `since` is drained for its age: `max_age` ± `jitter`, with
/// `unit` uniform in `[0, 1)` choosing where in the band (`unit = 0.5` is exactly `max_age`).
pub fn connection_deadline(since: Instant, max_age: Duration, jitter: f64, unit: f64) -> Instant {
    let jitter = jitter.clamp(0.0, 0.9);
    let factor = 1.0 - jitter + 2.0 * jitter * unit.clamp(0.0, 1.0);
    since + max_age.mul_f64(factor)
}

/// One replica's shedding decision. Invariants (tested in `protocol/tests/balance_props.rs`): it
/// sheds only while above `tolerance` × the fair share, never below `target` × the fair share, at
/// most `max(1, max_step_fraction × own)` per step and one step per `interval`.
#[derive(Debug, Clone)]
pub struct Balance {
    policy: BalancePolicy,
    /// No step before this.
    next_step: Option<Instant>,
    shed_total: u64,
}

impl Balance {
    /// No step taken yet.
    pub fn new(policy: BalancePolicy) -> Balance {
        debug_assert!(policy.tolerance >= policy.target && policy.target >= 1.0);
        Balance {
            policy,
            next_step: None,
            shed_total: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &BalancePolicy {
        &self.policy
    }

    /// Connections this replica was told to drain so far.
    pub fn shed_total(&self) -> u64 {
        self.shed_total
    }

    /// This replica holds `own` connections, its peers (the other live replicas) `peers`, at
    /// `now`: how many connections to drain now (the oldest first is a good choice: they have lived
    /// longest on the imbalance). 0 without peers, within the tolerance, or within an interval of
    /// the last step.
    pub fn handle_loads(&mut self, own: u64, peers: &[u64], now: Instant) -> u64 {
        if peers.is_empty() || own == 0 || self.next_step.is_some_and(|at| now < at) {
            return 0;
        }
        let fair = fair_share(own, peers);
        if (own as f64) <= fair * self.policy.tolerance {
            return 0;
        }
        let floor = (fair * self.policy.target).ceil() as u64;
        let excess = own.saturating_sub(floor);
        let step = ((own as f64 * self.policy.max_step_fraction).floor() as u64).max(1);
        let shed = excess.min(step);
        if shed > 0 {
            self.next_step = Some(now + self.policy.interval);
            self.shed_total += shed;
        }
        debug_assert!(own - shed >= floor.min(own));
        shed
    }

    /// When the next step may be taken (`None`: any time).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_step
    }

    /// When a connection established at `since` is drained for its age (`None`: no age limit).
    pub fn deadline(&self, since: Instant, unit: f64) -> Option<Instant> {
        self.policy
            .max_connection_age
            .map(|age| connection_deadline(since, age, self.policy.age_jitter, unit))
    }
}

/// A connection a replica could drain, as [`shed_order`] ranks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<C> {
    /// The connection.
    pub connection: C,
    /// Its agent.
    pub agent: u64,
    /// Whether the agent holds a connection on another replica too (with `K = 2`): draining this
    /// one costs it nothing, the other keeps serving while it dials a replacement.
    pub held_elsewhere: bool,
}

/// Which connections to drain when [`Balance::handle_loads`] says `n`: `candidates` (this
/// replica's serving connections, **oldest first**) ranked with the agents that hold a connection
/// on another replica first, then the others, each group oldest first; at most one connection per
/// agent in one step (an agent with two connections here — a duplicate it is about to close —
/// never loses both at once). Returns at most `n` connections, in that order.
pub fn shed_order<C: Clone>(candidates: &[Candidate<C>], n: usize) -> Vec<C> {
    let mut agents = std::collections::BTreeSet::new();
    let ranked = candidates
        .iter()
        .filter(|c| c.held_elsewhere)
        .chain(candidates.iter().filter(|c| !c.held_elsewhere));
    let mut out = Vec::with_capacity(n.min(candidates.len()));
    for c in ranked {
        if out.len() >= n {
            break;
        }
        if agents.insert(c.agent) {
            out.push(c.connection.clone());
        }
    }
    debug_assert!(out.len() <= n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_tolerance_or_alone_nothing_is_shed() {
        let t0 = Instant::now();
        let mut b = Balance::new(BalancePolicy::default());
        assert_eq!(b.handle_loads(1_000, &[], t0), 0);
        assert_eq!(b.handle_loads(1_050, &[1_000, 950], t0), 0);
        assert_eq!(b.handle_loads(0, &[10, 10], t0), 0);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn sheds_down_to_the_target_not_below() {
        let t0 = Instant::now();
        let policy = BalancePolicy {
            max_step_fraction: 1.0,
            ..BalancePolicy::default()
        };
        let mut b = Balance::new(policy);
        // fair = 400: shed 200 to reach it.
        assert_eq!(b.handle_loads(600, &[300, 300], t0), 200);
        assert_eq!(b.shed_total(), 200);
    }

    #[test]
    fn deadline_is_within_the_jitter_band() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(connection_deadline(t0, hour, 0.1, 0.5), t0 + hour);
        assert_eq!(
            connection_deadline(t0, hour, 0.1, 0.0),
            t0 + hour.mul_f64(0.9)
        );
        assert!(connection_deadline(t0, hour, 0.1, 0.999_999) <= t0 + hour.mul_f64(1.1));
    }

    #[test]
    fn agents_held_elsewhere_are_drained_first_oldest_first_once_each() {
        let c = |connection: u32, agent: u64, held_elsewhere: bool| Candidate {
            connection,
            agent,
            held_elsewhere,
        };
        let candidates = [
            c(1, 10, false),
            c(2, 11, true),
            c(3, 12, false),
            c(4, 13, true),
            c(5, 13, true),
        ];
        assert_eq!(shed_order(&candidates, 2), vec![2, 4]);
        assert_eq!(shed_order(&candidates, 3), vec![2, 4, 1]);
        assert_eq!(shed_order(&candidates, 10), vec![2, 4, 1, 3]);
        assert_eq!(shed_order(&candidates, 0), Vec::<u32>::new());
    }
}
