//! Fault campaigns with 1,000 agents: each fault alone, with the outcome mix it must produce, then all
//! of them together over several seeds — and every invariant holds throughout (stream errors and
//! corrupted bodies included: they are violations, not outcomes).
//!
//! Each single-fault run states which outcomes the fault may cause, which one it must cause (its
//! signature: otherwise the fault did not happen or is not felt), and how many requests must still
//! succeed. Anything outside the allowed set fails the test: a silent partition that produced
//! `connection_lost`, a graceful rolling restart that failed requests in flight, or a fault-free run
//! with a single failure are bugs, not noise.

mod sim_common;

use std::collections::BTreeMap;

use sim_common::{CAMPAIGN, CAMPAIGN_WORLD as BASE, run_plain, scenario};

/// What one fault may and must do to the requests.
struct Expect {
    name: &'static str,
    /// The fault (YAML list item), empty for none.
    fault: &'static str,
    /// Outcomes other than `ok` the fault may cause.
    allowed: &'static [&'static str],
    /// Of those, the ones at least one of which must occur.
    signature: &'static [&'static str],
    /// Smallest share of requests that still succeed, in per mille.
    min_ok_per_mille: u64,
}

const SINGLE: &[Expect] = &[
    // Nothing goes wrong: every request succeeds.
    Expect {
        name: "none",
        fault: "",
        allowed: &[],
        signature: &[],
        min_ok_per_mille: 1000,
    },
    // A middlebox resets connections: both ends learn at once; only what was in flight on the reset
    // connection is lost (the agent may have acted on it, so it is not retried). Waiting requests
    // are routed to the agent's next connection.
    Expect {
        name: "drop with RST",
        fault: "{ kind: drop, from: 30s, to: 2m, rate_per_hour: 6, silent: 0 }",
        allowed: &["connection_lost"],
        signature: &[],
        min_ok_per_mille: 995,
    },
    // Connections die silently: requests routed onto a dead connection get no answer until the
    // client gives up (timeout) or keepalive declares the connection dead (connection lost).
    Expect {
        name: "silent drop",
        fault: "{ kind: drop, from: 30s, to: 2m, rate_per_hour: 6, silent: 1 }",
        allowed: &["connection_lost", "timeout"],
        signature: &["connection_lost", "timeout"],
        min_ok_per_mille: 950,
    },
    // TCP holds what is sent across a 40 s partition (shorter than the idle timeout): connections
    // survive, and requests to partitioned agents answer late or time out; none is lost.
    Expect {
        name: "partition",
        fault: "{ kind: partition, at: 40s, for: 40s, fraction: 0.05 }",
        allowed: &["timeout"],
        signature: &["timeout"],
        min_ok_per_mille: 990,
    },
    // NAT mappings expire silently: like silent drops, for the agents behind the NAT.
    Expect {
        name: "NAT timeout",
        fault: "{ kind: nat_timeout, from: 30s, to: 100s, fraction: 0.05, idle_timeout: 10s }",
        allowed: &["connection_lost", "timeout"],
        signature: &["connection_lost", "timeout"],
        min_ok_per_mille: 980,
    },
    // A replica's host vanishes: its agents notice only at the idle timeout, so requests for them
    // wait in another replica's router until the routing deadline (agent not connected); requests
    // the replica itself held die with it.
    Expect {
        name: "silent kas crash",
        fault: "{ kind: kas_crash, at: 60s, kas: 2, down_for: 15s, silent: true }",
        allowed: &["agent_not_connected", "kas_failed"],
        signature: &["agent_not_connected"],
        min_ok_per_mille: 970,
    },
    // A replica's process is killed: its agents get RST at once and reconnect within the back-off,
    // well inside the routing deadline, so only requests the replica itself held can fail.
    Expect {
        name: "kas killed",
        fault: "{ kind: kas_crash, at: 90s, kas: 0, down_for: 10s, silent: false }",
        allowed: &["kas_failed"],
        signature: &[],
        min_ok_per_mille: 995,
    },
    // Graceful rolling restart: GOAWAY, in-flight requests finish, waiting ones move. Only a request
    // sent to a replica that just stopped taking requests (before the load balancer noticed) is
    // refused. These agents hold one connection (K = 1): an agent whose replacement dials keep
    // landing on the stopped replica (the load balancer lists it until its next health check, 5 s)
    // backs off, and when that outlasts the routing deadline (10 s) a request waiting for it ends
    // `agent_not_connected` (seen: one agent unconnected 11.1 s after six refused dials in 1 s).
    // With K = 2 the other connection serves it (sim_balance, replica-failover.yaml: 0 failed).
    Expect {
        name: "rolling restart",
        fault: "{ kind: rolling_restart, at: 110s, grace: 10s, down_for: 5s, interval: 5s }",
        allowed: &["kas_unavailable", "agent_not_connected"],
        signature: &[],
        min_ok_per_mille: 995,
    },
    // Agents restart (down 3 s, inside the routing deadline): waiting requests are served by the
    // new process; only a request the old process was serving is lost with its connection.
    Expect {
        name: "agent restarts",
        fault: "{ kind: agent_restarts, from: 30s, to: 150s, rate_per_hour: 2, down_for: 3s }",
        allowed: &["connection_lost"],
        signature: &[],
        min_ok_per_mille: 995,
    },
];

/// Checks a run's outcome mix against `e`; the problems, if any.
fn check_mix(what: &str, outcomes: &BTreeMap<String, u64>, issued: u64, e: &Expect) -> Vec<String> {
    let mut problems = Vec::new();
    let ok = outcomes.get("ok").copied().unwrap_or(0);
    let total: u64 = outcomes.values().sum();
    if total != issued {
        problems.push(format!("{what}: {total} outcomes for {issued} requests"));
    }
    for (outcome, n) in outcomes {
        if outcome != "ok" && !e.allowed.contains(&outcome.as_str()) {
            problems.push(format!(
                "{what}: {n} request(s) ended {outcome}, which this fault cannot explain \
                 (allowed: ok, {:?}): {outcomes:?}",
                e.allowed
            ));
        }
    }
    if !e.signature.is_empty() && !e.signature.iter().any(|s| outcomes.contains_key(*s)) {
        problems.push(format!(
            "{what}: none of {:?} happened, so the fault was not felt: {outcomes:?}",
            e.signature
        ));
    }
    if ok * 1000 < issued * e.min_ok_per_mille {
        problems.push(format!(
            "{what}: only {ok} of {issued} requests succeeded (at least {}‰ must): {outcomes:?}",
            e.min_ok_per_mille
        ));
    }
    problems
}

#[test]
fn each_fault_alone_causes_only_its_expected_outcomes() {
    let mut problems = Vec::new();
    for e in SINGLE {
        let yaml = if e.fault.is_empty() {
            BASE.to_owned()
        } else {
            format!("{BASE}faults:\n  - {}\n", e.fault)
        };
        let out = run_plain(scenario(&yaml, 1));
        if let Some(v) = &out.violation {
            problems.push(format!("{}: {v}", e.name));
            continue;
        }
        let r = &out.report.requests;
        println!("{:<18} {:?}", e.name, r.outcomes);
        assert!(r.issued > 4000, "{}: only {} requests", e.name, r.issued);
        problems.extend(check_mix(e.name, &r.outcomes, r.issued, e));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn thousand_agent_fault_campaign_keeps_every_invariant() {
    // Every fault at once: any outcome a single fault explains is allowed, and the combination still
    // lets nine requests in ten succeed.
    let mut allowed: Vec<&str> = SINGLE
        .iter()
        .flat_map(|e| e.allowed.iter().copied())
        .collect();
    allowed.sort_unstable();
    allowed.dedup();
    let all = Expect {
        name: "campaign",
        fault: "",
        allowed: Box::leak(allowed.into_boxed_slice()),
        signature: &["connection_lost", "timeout"],
        min_ok_per_mille: 900,
    };
    let mut problems = Vec::new();
    for seed in 1..=3 {
        let out = run_plain(scenario(CAMPAIGN, seed));
        let r = &out.report;
        if let Some(v) = &out.violation {
            panic!("seed {seed}: {v}");
        }
        // The faults really happened (otherwise the campaign proves nothing).
        assert!(r.connection_drops > 0, "seed {seed}: no drops");
        assert!(r.agent_restarts > 0, "seed {seed}: no agent restarts");
        assert!(
            r.reconnect_storms.len() >= 5,
            "seed {seed}: storms {:?}",
            r.reconnect_storms
        );
        assert!(
            r.kas.iter().all(|k| k.restarts >= 1),
            "seed {seed}: every replica restarted"
        );
        assert!(
            r.agent_connects > r.agents as u64,
            "seed {seed}: agents reconnected"
        );
        // And the world still did its work.
        println!("campaign seed {seed}: {:?}", r.requests.outcomes);
        problems.extend(check_mix(
            &format!("campaign seed {seed}"),
            &r.requests.outcomes,
            r.requests.issued,
            &all,
        ));
        assert!(r.cluster_changes > 1000 && r.view_messages > 1000);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The mix check itself can fail: an outcome a fault cannot explain, a missing signature and too
/// few successes are all reported.
#[test]
fn the_mix_check_rejects_unexplained_outcomes() {
    let e = &SINGLE[3]; // partition: only timeouts
    let mix = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    assert!(check_mix("t", &mix(&[("ok", 990), ("timeout", 10)]), 1000, e).is_empty());
    let p = check_mix("t", &mix(&[("ok", 990), ("connection_lost", 10)]), 1000, e);
    assert!(p.iter().any(|p| p.contains("cannot explain")), "{p:?}");
    assert!(p.iter().any(|p| p.contains("was not felt")), "{p:?}");
    let p = check_mix("t", &mix(&[("ok", 900), ("timeout", 100)]), 1000, e);
    assert!(p.iter().any(|p| p.contains("succeeded")), "{p:?}");
}
