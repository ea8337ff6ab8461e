//! Benchmark (figures, not a timed test): three kas replicas as separate processes (the `kas`
//! binary) on one real `redis-server`, `N` agents (the real agentk, in this process, each with a
//! simulated cluster) holding `K = 2` connections through one round-robin front.
//!
//! 1. Idle: the connections each replica holds, its resident memory, and the Redis commands per
//!    agent per minute (`INFO commandstats` before and after an idle interval), with the
//!    production timing (`refresh_period` 10 s, `entry_ttl` 30 s).
//! 2. Failover: a steady request load (`GET /k8s-proxy/version`, every agent through every live
//!    replica); replica 2 is killed with SIGKILL (its API is taken out of the load first, as a
//!    health-checking balancer would); printed: requests sent, failed (by status), the longest
//!    request, the longest time an agent had no successful request, and the time until every agent
//!    holds `K` connections again.
//!
//! Build the binary first, then run the example in release:
//! `cargo build --release -p kas --bin kas && cargo run --release -p kas --example failover --
//! [--agents 20] [--idle-secs 30] [--load-secs 20] [--threads 4]`. Every phase is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/processes.rs"]
mod processes;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kas::auth::AgentsFile;
use kas::config::BalanceConfig;
use processes::{Agents, Front, Load, Redis, Replica, Timing, wait_until};
use support::Env;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `kas` binary next to this example's directory (`target/<profile>/kas`).
fn kas_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("kas"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build --release -p kas --bin kas)",
        bin.display()
    );
    bin
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let agents_n = arg("--agents", 20).clamp(2, 500) as usize;
    let idle = Duration::from_secs(arg("--idle-secs", 30).clamp(5, 600));
    let load_for = Duration::from_secs(arg("--load-secs", 20).clamp(5, 600));
    let threads = arg("--threads", 4).clamp(1, 64) as usize;
    let kas = kas_binary();
    let kas = kas.to_str().unwrap();
    let guard = Duration::from_secs(120);

    let env = Env::new();
    let agents = AgentsFile::generate(agents_n, env.dir.path()).unwrap();
    let redis = Redis::start();
    let dir = env.dir.path().to_owned();
    let timing = Timing {
        find_timeout: Duration::from_secs(2),
        refresh_period: Duration::from_secs(10),
        entry_ttl: Duration::from_secs(30),
        balance: BalanceConfig::default(),
    };
    let mut replicas = Replica::configure(&env, &redis, &dir, 3, &timing);
    let front = Front::start(replicas.iter().map(|r| r.agent).collect());
    for r in &mut replicas {
        r.start(kas);
    }
    // agentk's own back-off (500 ms doubling to 30 s).
    let _agents = Agents::start(
        front.addr,
        &agents,
        &dir,
        protocol::tunnel::reconnect::BackoffPolicy::default().max,
    );
    wait_until("every agent on two replicas", guard, || {
        redis.all_hold(agents_n, 2, None).then_some(())
    });
    // Let a refresh pass so the published loads are current.
    std::thread::sleep(Duration::from_secs(11));

    println!(
        "{agents_n} agents, K = 2, 3 kas replicas (separate processes), one redis-server; shared machine"
    );
    println!();
    println!("## Idle");
    println!("| replica | agent connections | RSS MiB |");
    println!("|---|---|---|");
    let loads = redis.loads();
    for r in &replicas {
        println!(
            "| kas-{} | {} | {:.1} |",
            r.id,
            loads.get(&r.id).copied().unwrap_or(0),
            r.rss_kib().unwrap_or(0) as f64 / 1024.0
        );
    }
    let before = redis.commandstats();
    let t0 = Instant::now();
    std::thread::sleep(idle);
    let after = redis.commandstats();
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let per_agent_min = |n: u64| n as f64 / agents_n as f64 / minutes;
    println!();
    println!(
        "Redis commands over {:.0} s idle (all three replicas; refresh_period 10 s, entry_ttl 30 s):",
        t0.elapsed().as_secs_f64()
    );
    println!("| command | calls | per agent per minute |");
    println!("|---|---|---|");
    let mut total = 0;
    for (cmd, n) in &after {
        let d = n - before.get(cmd).copied().unwrap_or(0);
        // The INFO calls are this benchmark's own.
        if d == 0 || cmd == "info" {
            continue;
        }
        total += d;
        println!("| {cmd} | {d} | {:.2} |", per_agent_min(d));
    }
    println!("| all | {total} | {:.2} |", per_agent_min(total));

    // Failover under load.
    let bearers: Vec<String> = (1..=agents_n as u64).map(|a| env.admin_bearer(a)).collect();
    let load = Load::start(replicas.iter().map(|r| r.api).collect(), bearers, threads);
    std::thread::sleep(Duration::from_secs(5));
    let sent_before = load.tally.sent.load(Ordering::Relaxed);
    let failed_before = load.tally.failures.lock().unwrap().len();
    load.set_up(1, false);
    let killed = Instant::now();
    replicas[1].kill();
    // Every agent holds two connections to the live replicas again (the dead replica's entries
    // stay in Redis until they expire, entry_ttl).
    let restored = wait_until("every agent holds K = 2 again", guard, || {
        (1..=agents_n as u64)
            .all(|a| redis.holders(a).iter().filter(|r| **r != 2).count() == 2)
            .then(|| killed.elapsed())
    });
    std::thread::sleep(load_for.saturating_sub(killed.elapsed()));
    let tally = load.stop();
    let sent = tally.sent.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap().clone();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (status, _) in &failures[failed_before..] {
        *by_status
            .entry(status.map_or("no answer".into(), |s| s.to_string()))
            .or_default() += 1;
    }
    println!();
    println!(
        "## Failover: kas-2 killed (SIGKILL) under load ({threads} client threads, {:.0} s after the kill)",
        load_for.as_secs_f64()
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| requests sent before the kill | {sent_before} |");
    println!("| requests failed before the kill | {failed_before} |");
    println!("| requests sent after the kill | {} |", sent - sent_before);
    println!(
        "| requests failed after the kill | {} {by_status:?} |",
        failures.len() - failed_before
    );
    println!(
        "| longest request | {} ms |",
        ms(Duration::from_micros(
            tally.longest_us.load(Ordering::Relaxed)
        ))
    );
    println!(
        "| longest time an agent had no successful request | {} ms |",
        ms(Duration::from_micros(
            tally.longest_gap_us.load(Ordering::Relaxed)
        ))
    );
    println!(
        "| time until every agent holds K = 2 again | {} ms |",
        ms(restored)
    );
    for (_, f) in failures.iter().take(5) {
        println!("failure: {}", f.trim());
    }
    let mut loads = redis.loads();
    // kas-2's directory entry stays until it expires (entry_ttl).
    loads.remove(&2);
    println!("connections per live replica after: {loads:?}");
}
