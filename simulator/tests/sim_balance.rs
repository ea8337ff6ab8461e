//! Replica balance in the simulator (`kas.balance`, driving `protocol::routing::balance::Balance`):
//! after a rolling restart, agents pile up on the replicas restarted first; with balance on, no
//! replica holds more than 1.25 × its fair share 10 simulated minutes after the restart ended, and
//! shedding fails no request (the same failures as without balance, which come from the restart
//! itself). Without balance the same run stays unbalanced, so the check can fail.

use simulator::sim::{RunOptions, Scenario, run};

const SCENARIO: &str = r#"
name: balance
duration: 20m
agents: 150
kas: { replicas: 3 }
agent: { start_spread: 30s, load_balancing: round_robin }
cluster: { churn_per_minute: 0.5 }
clients: { rate: 5, start: 1m, timeout: 30s }
faults:
  - { kind: rolling_restart, at: 4m, grace: 30s, down_for: 15s, interval: 30s }
quiesce: 60s
sample_interval: 10s
"#;

/// The rolling restart is over by then: three replicas, each 30 s grace + 15 s down + 30 s apart.
const RESTART_OVER_S: f64 = 4.0 * 60.0 + 3.0 * 75.0;

/// Largest share/fair ratio over the samples from `from_s` on, and failed requests.
fn run_balance(balance: bool) -> (f64, u64) {
    let mut s = Scenario::from_yaml(SCENARIO, "balance").expect("valid scenario");
    if balance {
        s.kas.balance = Some(Default::default());
    }
    let out = run(s, RunOptions::default());
    assert!(out.violation.is_none(), "{:?}", out.violation);
    let r = &out.report;
    let from = RESTART_OVER_S + 600.0;
    let mut worst = 0.0f64;
    for (i, t) in r.sample_times_s.iter().enumerate() {
        if *t < from {
            continue;
        }
        let conns: Vec<usize> = r.series.iter().map(|k| k.connections[i]).collect();
        let fair = conns.iter().sum::<usize>() as f64 / conns.len() as f64;
        let max = *conns.iter().max().expect("replicas") as f64;
        worst = worst.max(max / fair.max(1.0));
    }
    let failed = r.requests.issued - r.requests.outcomes.get("ok").copied().unwrap_or(0);
    (worst, failed)
}

#[test]
fn balance_evens_out_replicas_after_a_rolling_restart_without_failing_requests() {
    let (off, failed_off) = run_balance(false);
    let (on, failed_on) = run_balance(true);
    eprintln!(
        "max/fair 10 min after the restart: {off:.2} without balance, {on:.2} with; failed requests {failed_off} / {failed_on}"
    );
    assert!(
        off > 1.25,
        "without balance the restart leaves an imbalance (max/fair {off:.2}); the scenario no longer tests anything"
    );
    assert!(
        on <= 1.25,
        "with balance, max/fair {on:.2} > 1.25 ten minutes after the restart"
    );
    assert!(
        failed_on <= failed_off,
        "balance failed requests: {failed_on} failed with it, {failed_off} without"
    );
}
