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
