//! Properties of an agent's connection set (`protocol::tunnel::connection_set`), driven against a
//! model of `R` kas replicas behind one load balancer: replicas die, come back and send GOAWAY while
//! the agent dials. Whatever happens: never more than `K + 1` connections that are not draining,
//! never two kept to one replica, every wait within the back-off bound; and once at least `K`
//! replicas are up behind a round-robin balancer, the set holds `K` distinct replicas within
//! `(R + 1)` maximal back-offs.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use protocol::tunnel::connection_set::{Admit, ConnectionSet};
use protocol::tunnel::reconnect::{BackoffPolicy, Decision, DialFailure, Next};
use protocol::{CloseReason, ConnectionError};

#[derive(Debug, Clone)]
enum Op {
    /// Time passes (milliseconds).
    Tick(u64),
    /// Replica `r` dies: its connections are lost, dials to it fail.
    Kill(usize),
    /// Replica `r` comes back.
    Revive(usize),
    /// Replica `r` sends GOAWAY on every connection it holds.
    Goaway(usize),
    /// Draining connections finish and close.
    CloseDrained,
}

fn op(replicas: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..5_000).prop_map(Op::Tick),
        1 => (0..replicas).prop_map(Op::Kill),
        1 => (0..replicas).prop_map(Op::Revive),
        1 => (0..replicas).prop_map(Op::Goaway),
        1 => Just(Op::CloseDrained),
    ]
}

struct Model {
    set: ConnectionSet<u64>,
    policy: BackoffPolicy,
    k: u32,
    alive: Vec<bool>,
    /// Open connections: (id, replica).
    conns: Vec<(u64, usize)>,
    next_id: u64,
    now: Instant,
    /// Round-robin position of the balancer.
    rr: usize,
    /// Balancer picks when not round-robin (index into `picks`).
    picks: Vec<usize>,
    pick_at: usize,
    round_robin: bool,
    units: Vec<f64>,
    unit_at: usize,
}

fn name(r: usize) -> String {
    format!("kas-{r}")
}

impl Model {
    fn unit(&mut self) -> f64 {
        let u = self.units[self.unit_at % self.units.len()];
        self.unit_at += 1;
        u
    }

    fn check_wait(&self, next: Next) -> Result<(), TestCaseError> {
        if let Next::WaitUntil(at) = next {
            let wait = at.saturating_duration_since(self.now);
            prop_assert!(
                wait <= self.policy.max,
                "wait {wait:?} above {:?}",
                self.policy.max
            );
        }
        Ok(())
    }

    fn check_decision(&self, d: Option<Decision>) -> Result<(), TestCaseError> {
        if let Some(d) = d {
            self.check_wait(d.next)?;
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let serving: Vec<&str> = self.set.serving().map(|(_, r)| r).collect();
        prop_assert!(
            serving.len() as u32 <= self.k,
            "{} serving of {}",
            serving.len(),
            self.k
        );
        let mut sorted = serving.clone();
        sorted.sort_unstable();
        sorted.dedup();
        prop_assert_eq!(
            sorted.len(),
            serving.len(),
            "two kept to one replica: {:?}",
            serving
        );
        let draining = self.set.draining().count();
        prop_assert!(
            self.conns.len() - draining <= self.k as usize + 1,
            "{} connections not draining with K = {}",
            self.conns.len() - draining,
            self.k
        );
        Ok(())
    }

    /// Dials while the set says so (each dial resolves at once in this model).
    fn drive(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..4 {
            if !self.set.poll_dial(self.now) {
                break;
            }
            let alive: Vec<usize> = (0..self.alive.len()).filter(|&r| self.alive[r]).collect();
            let target = if alive.is_empty() {
                None
            } else if self.round_robin {
                self.rr += 1;
                Some(alive[self.rr % alive.len()])
            } else {
                self.pick_at += 1;
                Some(alive[self.picks[self.pick_at % self.picks.len()] % alive.len()])
            };
            let unit = self.unit();
            match target {
                None => {
                    let d = self
                        .set
                        .handle_dial_failed(DialFailure::Network, self.now, unit);
                    self.check_wait(d.next)?;
                }
                Some(r) => {
                    self.next_id += 1;
                    let id = self.next_id;
                    // Counted while it is being admitted (a duplicate is closed right after).
                    self.conns.push((id, r));
                    self.check_invariants()?;
                    match self
                        .set
                        .handle_connected(id, &name(r), self.k, self.now, unit)
                    {
                        Admit::Keep => {}
                        Admit::Duplicate { next } => {
                            self.check_wait(Next::WaitUntil(next))?;
                            self.conns.retain(|c| c.0 != id);
                        }
                        Admit::Surplus => prop_assert!(false, "surplus with a constant K"),
                    }
                }
            }
            self.check_invariants()?;
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Tick(ms) => self.now += Duration::from_millis(ms),
            Op::Kill(r) => {
                self.alive[r] = false;
                let lost: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|c| c.1 == r)
                    .map(|c| c.0)
                    .collect();
                for id in lost {
                    let unit = self.unit();
                    let reason = CloseReason::Local(ConnectionError::IdleTimeout);
                    let d = self.set.handle_closed(&id, &reason, self.now, unit);
                    self.check_decision(d)?;
                    self.conns.retain(|c| c.0 != id);
                }
            }
            Op::Revive(r) => self.alive[r] = true,
            Op::Goaway(r) => {
                let ids: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|c| c.1 == r)
                    .map(|c| c.0)
                    .collect();
                for id in ids {
                    let unit = self.unit();
                    let d = self.set.handle_draining(&id, self.now, unit);
                    self.check_decision(d)?;
                }
            }
            Op::CloseDrained => {
                let ids: Vec<u64> = self.set.draining().copied().collect();
                for id in ids {
                    let unit = self.unit();
                    let d = self
                        .set
                        .handle_closed(&id, &CloseReason::Graceful, self.now, unit);
                    prop_assert!(d.is_none(), "a drained connection decided twice");
                    self.conns.retain(|c| c.0 != id);
                }
            }
        }
        self.check_invariants()?;
        self.drive()
    }
}

fn policy() -> impl Strategy<Value = BackoffPolicy> {
    (1u64..2_000, 1u64..60_000, 1u64..60_000).prop_map(|(initial, max, stable)| BackoffPolicy {
        initial: Duration::from_millis(initial),
        max: Duration::from_millis(max.max(initial)),
        stable_after: Duration::from_millis(stable),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bounded_distinct_and_converging(
        replicas in 1usize..6,
        k_raw in 1u32..4,
        policy in policy(),
        ops in prop::collection::vec(op(6), 0..60),
        picks in prop::collection::vec(0usize..6, 1..20),
        units in prop::collection::vec(0.0f64..1.0, 1..20),
    ) {
        let k = k_raw.min(replicas as u32);
        let mut m = Model {
            set: ConnectionSet::new(policy),
            policy,
            k,
            alive: vec![true; replicas],
            conns: Vec::new(),
            next_id: 0,
            now: Instant::now(),
            rr: 0,
            picks,
            pick_at: 0,
            round_robin: false,
            units,
            unit_at: 0,
        };
        m.drive()?;
        for op in &ops {
            let op = match *op {
                Op::Kill(r) | Op::Revive(r) | Op::Goaway(r) if r >= replicas => Op::Tick(1),
                ref o => o.clone(),
            };
            m.apply(&op)?;
        }
        // Faults over: every replica up, drained connections gone, round-robin balancer.
        for r in 0..replicas {
            m.alive[r] = true;
        }
        m.apply(&Op::CloseDrained)?;
        m.round_robin = true;
        let start = m.now;
        let bound = policy.max * (replicas as u32 + 1);
        while (m.set.serving().count() as u32) < k {
            let at = m.set.poll_timeout(m.now).expect("incomplete set has a next dial");
            prop_assert!(at >= m.now);
            m.now = at;
            m.drive()?;
            prop_assert!(
                m.now.saturating_duration_since(start) <= bound,
                "not converged to {k} within {bound:?}: {:?}",
                m.set.serving().collect::<Vec<_>>()
            );
        }
        prop_assert_eq!(m.set.serving().count() as u32, k);
        prop_assert_eq!(m.set.poll_timeout(m.now), None);
    }
}
