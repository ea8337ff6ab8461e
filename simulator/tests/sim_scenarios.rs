//! The shipped scenario files parse and validate, and the CLI-style overrides are checked.

use std::path::Path;
use std::time::Duration;

use simulator::sim::{Overrides, RunOptions, Scenario, ScenarioError, run};

fn load(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    Scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_shipped_scenario_file_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("scenarios directory") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} scenarios");
}

#[test]
fn shipped_scenarios_are_valid() {
    let steady = load("steady.yaml");
    assert!(steady.faults.is_empty());
    let faults = load("faults.yaml");
    let kinds: std::collections::BTreeSet<&str> = faults.faults.iter().map(|f| f.name()).collect();
    for k in [
        "drop",
        "partition",
        "nat_timeout",
        "kas_crash",
        "rolling_restart",
        "agent_restarts",
    ] {
        assert!(kinds.contains(k), "faults.yaml lacks {k}");
    }
    let capacity = load("capacity.yaml");
    assert_eq!(capacity.agents, 10_000);
    assert_eq!(capacity.duration, Duration::from_secs(3600));
}

#[test]
fn overrides_apply_and_are_validated() {
    let s = load("steady.yaml")
        .with_overrides(&Overrides {
            seed: Some(9),
            agents: Some(20),
            kas: Some(2),
            duration: None,
        })
        .expect("valid overrides");
    assert_eq!((s.seed, s.agents, s.kas.replicas), (9, 20, 2));
    let too_short = load("faults.yaml").with_overrides(&Overrides {
        duration: Some(Duration::from_secs(60)),
        ..Overrides::default()
    });
    assert!(matches!(too_short, Err(ScenarioError::Invalid(_))));
    let no_kas = load("steady.yaml").with_overrides(&Overrides {
        kas: Some(0),
        ..Overrides::default()
    });
    assert!(matches!(no_kas, Err(ScenarioError::Invalid(_))));
}

#[test]
fn steady_scaled_down_runs_clean() {
    let s = load("steady.yaml")
        .with_overrides(&Overrides {
            agents: Some(40),
            ..Overrides::default()
        })
        .expect("valid");
    let out = run(s, RunOptions::default());
    assert!(out.violation.is_none(), "{:?}", out.violation);
    let r = &out.report;
    assert_eq!(r.agent_connects, 40, "no faults: every agent connects once");
    assert_eq!(
        r.requests.outcomes.get("ok").copied(),
        Some(r.requests.issued)
    );
    assert!(r.kas.iter().all(|k| k.peak_connections > 0));
}

/// Runs a shipped scenario scaled down (few agents, a light request rate) and returns its report,
/// after checking that every invariant held and that no request ended in an outcome outside
/// `allowed` (besides `ok`).
fn run_small(name: &str, agents: usize, rate: f64, allowed: &[&str]) -> simulator::sim::Report {
    let mut s = load(name)
        .with_overrides(&Overrides {
            agents: Some(agents),
            ..Overrides::default()
        })
        .expect("valid");
    s.clients.rate = rate;
    let out = run(s, RunOptions::default());
    assert!(out.violation.is_none(), "{name}: {:?}", out.violation);
    let r = out.report;
    for (outcome, n) in &r.requests.outcomes {
        assert!(
            outcome == "ok" || allowed.contains(&outcome.as_str()),
            "{name}: {n} request(s) ended {outcome}: {:?}",
            r.requests.outcomes
        );
    }
    assert!(r.requests.issued > 0, "{name}: no requests");
    r
}

fn targets(r: &simulator::sim::Report, fault: &str) -> u64 {
    r.fault_targets
        .iter()
        .filter(|(f, _)| f == fault)
        .map(|(_, n)| n)
        .sum()
}

/// The scenarios users ask about (README, "Capacity planning"), each scaled down, each with its
/// signature: the fault happened and was felt, and nothing it cannot explain happened.
#[test]
fn user_scenarios_scaled_down_show_their_fault() {
    // Region outage: the partitioned third notices at the idle timeout, reconnects after the heal.
    let r = run_small(
        "region-outage.yaml",
        60,
        3.0,
        &["timeout", "agent_not_connected", "connection_lost"],
    );
    let cut = targets(&r, "partition");
    assert!(cut > 0, "nobody in the outage");
    assert!(
        r.agent_connects >= 60 + cut,
        "the {cut} agents of the region did not reconnect: {} connects",
        r.agent_connects
    );

    // Slow API servers: requests to them take seconds (some time out); nothing else goes wrong.
    let r = run_small("slow-api.yaml", 60, 10.0, &["timeout"]);
    assert!(targets(&r, "slow_api") > 0, "no slow cluster");
    assert!(
        r.requests.latency.max_ms > 1000.0,
        "no request was slow: {:?}",
        r.requests.latency
    );
    assert_eq!(
        r.agent_connects, 60,
        "a slow API server drops no connection"
    );

    // kas deploy at peak: every replica restarted once; requests in flight are drained, not lost.
    let r = run_small("deploy-peak.yaml", 60, 20.0, &["kas_unavailable"]);
    assert!(r.kas.iter().all(|k| k.restarts == 1), "{:?}", r.kas);

    // LB idle timeout below the keepalive: connections die and are remade again and again.
    let r = run_small(
        "lb-idle-timeout.yaml",
        60,
        3.0,
        &["timeout", "connection_lost", "agent_not_connected"],
    );
    assert!(
        r.agent_connects > 2 * 60,
        "the balancer killed no connection: {} connects",
        r.agent_connects
    );
}

#[test]
fn slow_api_fault_is_validated() {
    let bad = "duration: 10m\nfaults:\n  - {kind: slow_api, from: 1m, to: 2m, fraction: 0.5, factor: 0.5}\n";
    assert!(matches!(
        Scenario::from_yaml(bad, "t"),
        Err(ScenarioError::Invalid(_))
    ));
    let ok = "duration: 10m\nfaults:\n  - {kind: slow_api, from: 1m, to: 2m, fraction: 0.5, factor: 10}\n";
    assert!(Scenario::from_yaml(ok, "t").is_ok());
}
