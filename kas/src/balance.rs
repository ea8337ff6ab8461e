//! Shedding between replicas: a replica holding more than its share of agent connections drains
//! some of them with GOAWAY, so that agents reconnect through the load balancer and load evens out
//! (docs/replicas.md, "Balance").
//!
//! Every decision is `protocol::routing::balance`'s (the simulator's replicas drive the same
//! types): [`Balance::handle_loads`] says how many connections to drain, paced, and
//! [`shed_order`] which ones (agents holding a connection on another replica first — with `K = 2`
//! they lose nothing —, then the oldest; one per agent). This module feeds them: after every refresh
//! of the tracker ([`crate::tracker::run`]), its own serving connections (draining ones do not
//! count: they are leaving) against the other live replicas' published loads
//! ([`crate::tracker::Tracker::replica_loads`]), and sends the GOAWAYs. A drained agent hands over
//! at once (it dials a replacement while the old connection finishes its streams within
//! [`crate::agent_listener::RETIRE_GRACE`]), so no request fails.
//!
//! Shedding assumes agents dial one load-balanced address: an agent pinned to this replica's
//! address comes straight back. Turn it off (`replicas.balance.enabled: false`) in such a
//! deployment.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::routing::ReplicaId;
use protocol::routing::balance::{Balance, BalancePolicy, Candidate, fair_share, shed_order};

use protocol::routing::DrainCause;

use crate::agent_listener::RETIRE_GRACE;
use crate::state::KasState;
use crate::tracker::Entry;

/// Between taking a connection out of routing and sending the agent GOAWAY (see [`Shedding::step`]).
const GOAWAY_NOTICE: Duration = Duration::from_millis(500);

/// One replica's shedding: the pure [`Balance`] and when it was last consulted.
#[derive(Debug)]
pub struct Shedding {
    balance: Balance,
    replica: ReplicaId,
    /// The last time [`Shedding::step`] ran (to run once more when the pacing interval ends).
    last_step: Option<Instant>,
}

impl Shedding {
    /// Shedding for `replica` under `policy`.
    pub fn new(policy: BalancePolicy, replica: ReplicaId) -> Shedding {
        Shedding {
            balance: Balance::new(policy),
            replica,
            last_step: None,
        }
    }

    /// Whether a step is due without a fresh refresh: the pacing interval of the last drain ended
    /// since the last step.
    pub fn due(&self, now: Instant) -> bool {
        match (self.balance.poll_timeout(), self.last_step) {
            (Some(at), Some(last)) => at <= now && last < at,
            _ => false,
        }
    }

    /// When [`Shedding::due`] becomes true (`None`: only at the next refresh).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.balance
            .poll_timeout()
            .filter(|at| *at > now && self.last_step.is_some_and(|last| last < *at))
    }

    /// One step at `now`: `loads` are the live replicas' published connection counts (this one's
    /// is replaced by its current count), `cluster` every agent's holders (for
    /// [`Candidate::held_elsewhere`]). Sends GOAWAY on the connections chosen; returns how many.
    pub fn step(
        &mut self,
        state: &KasState,
        loads: &[(ReplicaId, u64)],
        cluster: &BTreeMap<u64, Vec<Entry>>,
        now: Instant,
    ) -> usize {
        self.last_step = Some(now);
        if state.is_shutting_down() {
            return 0;
        }
        // Oldest first: the registry lists connections by serial, and serials grow with time.
        let serving: Vec<_> = state
            .registry
            .connections()
            .into_iter()
            .filter(|c| !c.draining)
            .collect();
        let own = serving.len() as u64;
        let peers: Vec<u64> = loads
            .iter()
            .filter(|(r, _)| *r != self.replica)
            .map(|(_, load)| *load)
            .collect();
        let fair = fair_share(own, &peers);
        state.metrics.balance.observe(own, fair);
        let n = self.balance.handle_loads(own, &peers, now);
        if n == 0 {
            return 0;
        }
        let candidates: Vec<Candidate<u64>> = serving
            .iter()
            .map(|c| Candidate {
                connection: c.serial,
                agent: c.agent_id,
                held_elsewhere: cluster
                    .get(&c.agent_id)
                    .is_some_and(|h| h.iter().any(|e| e.replica != self.replica)),
            })
            .collect();
        let chosen = shed_order(&candidates, usize::try_from(n).unwrap_or(usize::MAX));
        tracing::info!(
            replica = %self.replica,
            own,
            ?peers,
            fair_share = format!("{fair:.1}"),
            shed = chosen.len(),
            "holding more than the fair share of agent connections: draining some (goaway)"
        );
        for serial in &chosen {
            let Some(c) = serving.iter().find(|c| c.serial == *serial) else {
                continue;
            };
            // Two steps, as HTTP/2's graceful GOAWAY (RFC 9113 §6.8): no new request is routed to
            // the connection from now on, and only after a moment — once the requests routed to it
            // just before have opened their streams — is the agent told (GOAWAY). A request
            // routed to it but not yet opened would otherwise fail to open on a connection that
            // is going away.
            state
                .registry
                .set_draining(c.serial, DrainCause::LocalClose);
            tracing::debug!(agent_id = c.agent_id, connection_id = %c.connection_id, "goaway to rebalance");
            let handle = c.handle.clone();
            state.spawner.spawn_detached(async move {
                smol::Timer::after(GOAWAY_NOTICE).await;
                handle.start_close(RETIRE_GRACE);
            });
        }
        state.metrics.balance.shed(chosen.len() as u64);
        chosen.len()
    }
}

/// The shedding metrics (rendered only once shedding runs).
#[derive(Debug, Default)]
pub struct BalanceMetrics {
    active: AtomicBool,
    shed_total: AtomicU64,
    own: AtomicU64,
    /// The fair share × 1000.
    fair_milli: AtomicU64,
}

impl BalanceMetrics {
    /// The last step's own serving connections and fair share.
    pub fn observe(&self, own: u64, fair: f64) {
        self.active.store(true, Ordering::Relaxed);
        self.own.store(own, Ordering::Relaxed);
        self.fair_milli
            .store((fair * 1000.0).round() as u64, Ordering::Relaxed);
    }

    /// `n` connections drained to rebalance.
    pub fn shed(&self, n: u64) {
        self.shed_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Connections drained to rebalance since start.
    pub fn shed_total(&self) -> u64 {
        self.shed_total.load(Ordering::Relaxed)
    }

    /// Prometheus text: `kas_balance_shed_total`, `kas_balance_own_connections`,
    /// `kas_balance_fair_share` (empty until shedding ran once).
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.active.load(Ordering::Relaxed) {
            return s;
        }
        let _ = writeln!(
            s,
            "# HELP kas_balance_shed_total Agent connections this replica drained (GOAWAY) to even out load.\n# TYPE kas_balance_shed_total counter\nkas_balance_shed_total {}",
            self.shed_total()
        );
        let _ = writeln!(
            s,
            "# HELP kas_balance_own_connections Serving agent connections of this replica at the last balance step.\n# TYPE kas_balance_own_connections gauge\nkas_balance_own_connections {}",
            self.own.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP kas_balance_fair_share All replicas' serving connections over the replicas, at the last balance step.\n# TYPE kas_balance_fair_share gauge\nkas_balance_fair_share {:.3}",
            self.fair_milli.load(Ordering::Relaxed) as f64 / 1000.0
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_once_active() {
        let m = BalanceMetrics::default();
        assert_eq!(m.render(), "");
        m.observe(9, 6.5);
        m.shed(2);
        let text = m.render();
        assert!(text.contains("kas_balance_shed_total 2\n"), "{text}");
        assert!(text.contains("kas_balance_own_connections 9\n"), "{text}");
        assert!(text.contains("kas_balance_fair_share 6.500\n"), "{text}");
    }

    #[test]
    fn a_step_is_due_again_when_the_interval_ends() {
        let t0 = Instant::now();
        let mut s = Shedding::new(BalancePolicy::default(), ReplicaId(1));
        assert!(!s.due(t0));
        assert_eq!(s.poll_timeout(t0), None);
        // As after a step that drained: the balance is paced until t0 + interval.
        let _ = s.balance.handle_loads(100, &[0, 0], t0);
        s.last_step = Some(t0);
        let end = t0 + BalancePolicy::default().interval;
        assert_eq!(s.poll_timeout(t0), Some(end));
        assert!(!s.due(t0));
        assert!(s.due(end));
        s.last_step = Some(end);
        assert!(!s.due(end));
        assert_eq!(s.poll_timeout(end), None);
    }
}
