//! Properties of replica balance (`protocol::routing::balance`): shedding only above the
//! tolerance, never below the target, paced; and in a model of `R` replicas whose drained agents
//! land on a uniformly spread replica, every replica ends within the tolerance; the connections a
//! step drains are ranked agents-held-elsewhere first, oldest first, one per agent.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use protocol::routing::balance::{Balance, BalancePolicy, Candidate, fair_share, shed_order};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sheds_only_above_tolerance_never_below_target_and_paced(
        own in 0u64..100_000,
        peers in prop::collection::vec(0u64..100_000, 0..6),
        gaps_ms in prop::collection::vec(0u64..30_000, 1..20),
    ) {
        let policy = BalancePolicy::default();
        let mut b = Balance::new(policy);
        let mut now = Instant::now();
        let mut last_step: Option<Instant> = None;
        let mut own = own;
        for gap in gaps_ms {
            now += Duration::from_millis(gap);
            let fair = fair_share(own, &peers);
            let shed = b.handle_loads(own, &peers, now);
            if shed > 0 {
                prop_assert!(!peers.is_empty());
                prop_assert!(own as f64 > fair * policy.tolerance, "shed {shed} of {own} within tolerance (fair {fair})");
                prop_assert!((own - shed) as f64 >= (fair * policy.target).floor(), "shed below the target");
                let step = ((own as f64 * policy.max_step_fraction).floor() as u64).max(1);
                prop_assert!(shed <= step, "step {shed} above {step}");
                if let Some(at) = last_step {
                    prop_assert!(now.duration_since(at) >= policy.interval, "two steps within an interval");
                }
                last_step = Some(now);
                own -= shed;
            }
        }
    }

    #[test]
    fn replicas_converge_within_the_tolerance(
        loads in prop::collection::vec(0u64..20_000, 2..6),
        seed in any::<u64>(),
    ) {
        let policy = BalancePolicy::default();
        let n = loads.len();
        let mut loads = loads;
        let mut balances: Vec<Balance> = (0..n).map(|_| Balance::new(policy)).collect();
        let mut now = Instant::now();
        let mut rr = seed as usize;
        // A drained agent's new connection lands on the next replica in a round-robin.
        for _ in 0..2_000 {
            for i in 0..n {
                let peers: Vec<u64> = (0..n).filter(|&j| j != i).map(|j| loads[j]).collect();
                let shed = balances[i].handle_loads(loads[i], &peers, now);
                loads[i] -= shed;
                for _ in 0..shed {
                    rr = rr.wrapping_add(1);
                    loads[rr % n] += 1;
                }
            }
            now += policy.interval;
        }
        let total: u64 = loads.iter().sum();
        let fair = total as f64 / n as f64;
        for (i, l) in loads.iter().enumerate() {
            prop_assert!(*l as f64 <= fair * policy.tolerance + 1.0, "replica {i} holds {l} of fair {fair}: {loads:?}");
        }
    }

    #[test]
    fn shed_order_prefers_agents_held_elsewhere_oldest_first_one_per_agent(
        raw in prop::collection::vec((0u64..12, any::<bool>()), 0..40),
        n in 0usize..50,
    ) {
        // Connection i is the i-th oldest.
        let candidates: Vec<Candidate<usize>> = raw
            .iter()
            .enumerate()
            .map(|(i, &(agent, held_elsewhere))| Candidate { connection: i, agent, held_elsewhere })
            .collect();
        let chosen = shed_order(&candidates, n);
        let agents: std::collections::BTreeSet<u64> = candidates.iter().map(|c| c.agent).collect();
        prop_assert_eq!(chosen.len(), n.min(agents.len()), "as many as asked, one per agent");
        let mut seen = std::collections::BTreeSet::new();
        for w in chosen.windows(2) {
            let (a, b) = (&candidates[w[0]], &candidates[w[1]]);
            prop_assert!(a.held_elsewhere >= b.held_elsewhere, "held elsewhere first");
            if a.held_elsewhere == b.held_elsewhere {
                prop_assert!(w[0] < w[1], "oldest first within a group");
            }
        }
        for &i in &chosen {
            prop_assert!(seen.insert(candidates[i].agent), "agent {} drained twice", candidates[i].agent);
        }
        // Nothing better was skipped: every candidate not chosen, of an agent not chosen, ranks
        // after the last chosen one (or the step was full).
        if chosen.len() < n {
            for c in &candidates {
                prop_assert!(seen.contains(&c.agent), "agent {} left out of a step that was not full", c.agent);
            }
        } else if let Some(&last) = chosen.last() {
            let last = &candidates[last];
            for (i, c) in candidates.iter().enumerate() {
                if !seen.contains(&c.agent) && c.held_elsewhere == last.held_elsewhere {
                    prop_assert!(i > chosen[chosen.len() - 1], "older candidate {i} skipped");
                }
                if !seen.contains(&c.agent) {
                    prop_assert!(!c.held_elsewhere || last.held_elsewhere, "held-elsewhere candidate {i} skipped");
                }
            }
        }
    }
}
