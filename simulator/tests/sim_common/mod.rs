//! Scenarios shared by the simulator's integration tests: sizes that keep debug builds fast.

#![allow(dead_code)]

use simulator::sim::{Outcome, RunOptions, Scenario, TraceSink, run};

/// The campaign's world without faults (YAML; append a `faults:` list to it).
macro_rules! campaign_world {
    () => {
        r#"
name: campaign
duration: 5m
agents: 1000
kas: { replicas: 3 }
agent:
  start_spread: 20s
  backoff: { initial: 500ms, max: 10s, stable_after: 10s }
protocol: { initial_stream_window: 64KiB, initial_connection_window: 256KiB }
network: { latency: 20ms, latency_spread: 0.5, jitter: 5ms, bandwidth: 2MB, connect_timeout: 5s, lb_health_interval: 5s }
cluster: { churn_per_minute: 2, hot_fraction: 0.05, hot_factor: 10 }
clients:
  rate: 20
  start: 20s
  timeout: 20s
  mix:
    - { name: get, service: k8s-api, method: GET, path: /api/v1/pods, weight: 5, response_bytes: 8KiB, think: 5ms }
    - { name: logs, service: k8s-api, method: GET, path: /logs, weight: 1, response_bytes: 200KiB, think: 10ms }
    - { name: cache-list, service: cache, method: LIST, path: "/Pod?namespace=ns-1", weight: 3, think: 1ms }
    - { name: apply, service: k8s-api, method: PATCH, path: /apply, weight: 1, request_bytes: 100KiB, response_bytes: 1KiB, think: 20ms }
quiesce: 40s
sample_interval: 10s
"#
    };
}

/// 1,000 agents on 3 replicas for 5 minutes, no faults: the world of the fault campaigns.
pub const CAMPAIGN_WORLD: &str = campaign_world!();

/// A fault campaign: every kind of fault within the first three minutes, then convergence.
pub const CAMPAIGN: &str = concat!(
    campaign_world!(),
    r#"faults:
  - { kind: drop, from: 30s, to: 2m, rate_per_hour: 6, silent: 0.3 }
  - { kind: partition, at: 40s, for: 40s, fraction: 0.05 }
  - { kind: nat_timeout, from: 30s, to: 100s, fraction: 0.05, idle_timeout: 10s }
  - { kind: kas_crash, at: 60s, kas: 2, down_for: 15s, silent: true }
  - { kind: kas_crash, at: 90s, kas: 0, down_for: 10s, silent: false }
  - { kind: rolling_restart, at: 110s, grace: 10s, down_for: 5s, interval: 5s }
  - { kind: agent_restarts, from: 30s, to: 150s, rate_per_hour: 2, down_for: 3s }
"#
);

/// A small world with faults, for determinism and checker tests.
pub const SMALL: &str = r#"
name: small
duration: 4m
agents: 60
kas: { replicas: 2 }
agent: { start_spread: 10s, backoff: { initial: 500ms, max: 5s, stable_after: 10s } }
cluster: { churn_per_minute: 6 }
clients: { rate: 10, start: 10s, timeout: 15s }
faults:
  - { kind: drop, from: 20s, to: 90s, rate_per_hour: 30, silent: 0.5 }
  - { kind: kas_crash, at: 40s, kas: 1, down_for: 10s }
  - { kind: rolling_restart, at: 70s, grace: 10s, down_for: 5s, interval: 5s }
  - { kind: agent_restarts, from: 20s, to: 90s, rate_per_hour: 10, down_for: 2s }
quiesce: 30s
"#;

pub fn scenario(yaml: &str, seed: u64) -> Scenario {
    let mut s = Scenario::from_yaml(yaml, "test").expect("test scenario is valid");
    s.seed = seed;
    s
}

pub fn run_with_trace(s: Scenario) -> Outcome {
    run(
        s,
        RunOptions {
            trace: TraceSink::Memory(Vec::new()),
            ..RunOptions::default()
        },
    )
}

pub fn run_plain(s: Scenario) -> Outcome {
    run(s, RunOptions::default())
}
