//! Same scenario and seed ⇒ the same trace, byte for byte; another seed ⇒ another trace.

mod sim_common;

use sim_common::{SMALL, run_with_trace, scenario};

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let a = run_with_trace(scenario(SMALL, 7));
    let b = run_with_trace(scenario(SMALL, 7));
    assert!(a.violation.is_none(), "{:?}", a.violation);
    assert!(
        a.events > 10_000,
        "the world did something: {} events",
        a.events
    );
    assert!(!a.trace_lines.is_empty());
    assert_eq!(a.trace_lines.len(), b.trace_lines.len());
    if let Some((i, (x, y))) = a
        .trace_lines
        .iter()
        .zip(&b.trace_lines)
        .enumerate()
        .find(|(_, (x, y))| x != y)
    {
        panic!("traces diverge at line {i}:\n  {x}\n  {y}");
    }
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);

    let c = run_with_trace(scenario(SMALL, 8));
    assert_ne!(a.trace_hash, c.trace_hash);
    assert_ne!(a.trace_lines, c.trace_lines);
}

#[test]
fn the_hash_does_not_depend_on_keeping_the_lines() {
    let kept = run_with_trace(scenario(SMALL, 3));
    let hashed = sim_common::run_plain(scenario(SMALL, 3));
    assert_eq!(kept.trace_hash, hashed.trace_hash);
    assert!(hashed.trace_lines.is_empty());
}

/// A large-ish run (1,200 agents: more than the per-event views checks watch, a crash, a rolling restart,
/// churn and traffic over a quarter of an hour) is deterministic too: two runs, one hash, whether
/// keepalive round events' work is deferred and split over two threads or done at once. The same
/// scenario shape as the speed benchmark's (`scripts/sim-speed.sh`), at a size the test suite affords.
#[test]
fn a_large_run_is_deterministic() {
    const LARGE: &str = r#"
name: large
duration: 15m
agents: 1000
kas:
  replicas: 3
  balance: { tolerance: 1.1, target: 1.0, interval: 10s, max_step_fraction: 0.05 }
agent: { start_spread: 1m, load_balancing: round_robin }
network: { latency: 30ms, latency_spread: 0.5, jitter: 2ms, bandwidth: 10MB }
cluster: { nodes: 2, namespaces: 2, pods_per_namespace: 3, deployments_per_namespace: 1, churn_per_minute: 2 }
clients: { rate: 20, start: 1m, timeout: 30s }
faults:
  - { kind: kas_crash, at: 3m, kas: 1, down_for: 30s, silent: true }
  - { kind: rolling_restart, at: 6m, grace: 20s, down_for: 10s, interval: 20s }
quiesce: 60s
sample_interval: 30s
"#;
    // More agents than the per-event views checks watch: the run exercises the sampled checks.
    const AGENTS: usize = 1200;
    const { assert!(AGENTS > simulator::sim::invariants::VIEWS_WATCHED) };
    let large = || {
        let mut s = scenario(LARGE, 11);
        s.agents = AGENTS;
        s
    };
    // The first run defers keepalive round events' work into batches split over two threads and
    // processes cluster changes on three informer workers; the second does all of it at once, on
    // this thread: nothing may differ.
    let a = simulator::sim::run(
        large(),
        simulator::sim::RunOptions {
            informer_threads: 3,
            ..simulator::sim::RunOptions::default()
        },
    );
    let b = simulator::sim::run(
        large(),
        simulator::sim::RunOptions {
            defer_rounds: false,
            informer_threads: 0,
            ..simulator::sim::RunOptions::default()
        },
    );
    assert!(a.violation.is_none(), "{:?}", a.violation);
    assert!(
        a.events > 200_000,
        "the world did something: {} events",
        a.events
    );
    assert_eq!(
        (a.trace_hash, a.events, a.state_digest),
        (b.trace_hash, b.events, b.state_digest),
        "same seed, same trace, with or without deferred rounds and informer workers"
    );
    assert_eq!(
        format!("{:?} {:?}", a.report.kas, a.report.series),
        format!("{:?} {:?}", b.report.kas, b.report.series),
        "the replicas' traffic counts every round step once, deferred or not"
    );
}

/// Keepalive rounds (`sim::round`) take idle connections' PING/PONG exchanges by themselves, lazily,
/// instead of stepping each through the queue: every connection ends in exactly the state stepping
/// leaves (both `Connection`s' counters and deadlines, the links' octets), the world around them
/// does the same (requests and their latencies, views, connects, drops), in far fewer events; only
/// the trace differs (a round is one line), and it is as deterministic as before.
#[test]
fn keepalive_rounds_leave_every_connection_as_stepping_does() {
    const QUIET: &str = r#"
name: rounds
duration: 12m
agents: 150
kas: { replicas: 3 }
agent: { start_spread: 30s, load_balancing: round_robin }
network: { latency: 30ms, latency_spread: 0.5, jitter: 2ms, bandwidth: 10MB }
cluster: { churn_per_minute: 0.5 }
clients: { rate: 2, start: 30s, timeout: 30s }
faults:
  - { kind: drop, from: 2m, to: 8m, rate_per_hour: 20, silent: 0.5 }
  - { kind: kas_crash, at: 4m, kas: 1, down_for: 30s, silent: true }
  - { kind: rolling_restart, at: 7m, grace: 20s, down_for: 10s, interval: 20s }
  - { kind: agent_restarts, from: 2m, to: 9m, rate_per_hour: 5, down_for: 3s }
quiesce: 60s
sample_interval: 30s
"#;
    use simulator::sim::{RunOptions, run};
    let go = |rounds: bool| {
        run(
            scenario(QUIET, 21),
            RunOptions {
                keepalive_rounds: rounds,
                ..RunOptions::default()
            },
        )
    };
    let stepped = go(false);
    let rounds = go(true);
    let again = go(true);
    for o in [&stepped, &rounds] {
        assert!(o.violation.is_none(), "{:?}", o.violation);
    }
    assert_eq!(
        rounds.state_digest, stepped.state_digest,
        "keepalive rounds left some connection in another state than stepping"
    );
    let world = |o: &simulator::sim::Outcome| {
        let r = &o.report;
        format!(
            "{:?} changes={} views={} connects={} drops={} restarts={}",
            r.requests,
            r.cluster_changes,
            r.view_messages,
            r.agent_connects,
            r.connection_drops,
            r.agent_restarts
        )
    };
    assert_eq!(world(&rounds), world(&stepped));
    assert!(
        stepped.report.requests.issued > 500 && stepped.report.connection_drops > 0,
        "the world did something: {}",
        world(&stepped)
    );
    assert!(
        rounds.events * 4 < stepped.events * 3,
        "rounds batch the keepalive exchanges: {} events, stepped {}",
        rounds.events,
        stepped.events
    );
    assert_ne!(rounds.trace_hash, stepped.trace_hash);
    assert_eq!(
        (rounds.trace_hash, rounds.events, rounds.state_digest),
        (again.trace_hash, again.events, again.state_digest),
        "same seed, same trace with rounds"
    );
}
