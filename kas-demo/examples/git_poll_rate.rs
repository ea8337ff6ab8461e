//! Benchmark: polls per second of one kas agent-configuration poller ([`kas::agent_config`]) over N
//! distinct config projects that do not change — the ref-check cost of polling — with `git ls-remote`
//! of the same repositories in the same run as the baseline.
//!
//! ```text
//! cargo run --release -p kas-demo --example git_poll_rate -- [N,N,...] [seconds]
//! ```
//!
//! Defaults: N = 1,10,100 and 5 s of measuring per cell (every loop is bounded in count and time). N
//! agents each name their own config project (`git://127.0.0.1:<port>/r<i>.git`, one config file each),
//! served on loopback by Debian's `git daemon` in two ways: stand-alone (`git daemon --listen …`, whose
//! listen backlog is 5: more than 5 connections arriving at once wait for a SYN retransmission, 1 s),
//! and as the demo serves it ([`kas_demo::git::GitServer`]: the demo accepts, backlog 128, and hands
//! each connection to `git daemon --inetd`). The example lives in kas-demo for that server; it drives
//! kas's poller directly. The poller runs as in kas — a full poll,
//! then the next one after `poll_period` (1 ms here, so polls run back to back), at most
//! [`kas::agent_config::MAX_CONCURRENT_FETCHES`] fetches at once, each an unchanged `git-mirror` update
//! plus reading and parsing the agent's file — and the rate is read from its
//! `kas_agent_config_polls_total` counter (one per repository per poll) after a first, warming poll.
//! The baseline runs `git ls-remote` one process at a time, round-robin over the same repositories.
//!
//! Measured on the 2-core CI machine (debug build, load 16 from parallel builds; `git daemon` forks
//! `git upload-pack` for every poll on the same cores, which dominates):
//!
//! | server | N repos | kas repository polls/s | full polls/s (all N) | `git ls-remote`/s | kas vs ls-remote |
//! |---|---:|---:|---:|---:|---:|
//! | `git daemon --inetd` (demo) | 1 | 28 | 28.3 | 13 | 2.2× |
//! | `git daemon --inetd` (demo) | 10 | 43 | 4.3 | 12 | 3.5× |
//! | `git daemon --inetd` (demo) | 100 | 51 | 0.5 | 12 | 4.3× |
//! | `git daemon` stand-alone | 1 | 37 | 37.4 | 15 | 2.4× |
//! | `git daemon` stand-alone | 10 | 19 | 1.9 | 14 | 1.4× |
//! | `git daemon` stand-alone | 100 | 18 | 0.2 | 13 | 1.3× |

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use git_mirror::testing::{GitDaemon, TestRepo};
use kas::agent_config::{AgentConfigs, Settings};
use kas::auth::{AgentsFile, TokenDigest};
use kas::directory::AgentDirectory;
use kas_demo::git::GitServer;

/// A server's URL of repository `name`.
type UrlOf<'a> = &'a dyn Fn(&str) -> String;

/// Upper bound on loop iterations of one measurement, whatever the time budget.
const MAX_ITERATIONS: u64 = 1_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ns: Vec<usize> = args
        .first()
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1, 10, 100]);
    let budget = Duration::from_secs_f64(args.get(1).map(|s| s.parse().unwrap()).unwrap_or(5.0));
    let max_n = ns.iter().copied().max().unwrap_or(1);

    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    eprintln!("creating {max_n} config projects…");
    for i in 0..max_n {
        let repo = TestRepo::create(&srv, &format!("r{i}")).unwrap();
        repo.write(
            &format!(".gitlab/agents/agent-{}/config.yaml", i + 1),
            "observability:\n  logging:\n    level: info\n",
        )
        .unwrap();
        repo.commit("config").unwrap();
    }
    let daemon = GitDaemon::start(&srv).unwrap();
    let inetd = GitServer::start("127.0.0.1:0".parse().unwrap(), &srv).unwrap();
    let servers: [(&str, UrlOf); 2] = [
        ("`git daemon --inetd` (demo)", &|name| inetd.url(name)),
        ("`git daemon` stand-alone", &|name| daemon.url(name)),
    ];

    println!(
        "| server | N repos | kas repository polls/s | full polls/s (all N) | `git ls-remote`/s | kas vs ls-remote |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (k, (server, url)) in servers.iter().enumerate() {
        for &n in &ns {
            let urls: Vec<String> = (0..n).map(|i| url(&format!("r{i}"))).collect();
            let mirrors = dir.path().join(format!("mirrors-{k}-{n}"));
            let polls = kas_poll_rate(&urls, mirrors, budget);
            let ls_remote = ls_remote_rate(&urls, budget);
            println!(
                "| {server} | {n} | {polls:.0} | {:.1} | {ls_remote:.0} | {:.1}× |",
                polls / n as f64,
                polls / ls_remote
            );
        }
    }
    inetd.shutdown();
}

/// Repository polls per second of one poller over `urls` (agent `i+1` uses `urls[i]`).
fn kas_poll_rate(urls: &[String], mirrors_dir: PathBuf, budget: Duration) -> f64 {
    let mut yaml = String::from("agents:\n");
    for (i, url) in urls.iter().enumerate() {
        let id = i + 1;
        yaml.push_str(&format!(
            "- id: {id}\n  name: agent-{id}\n  token_sha256: {}\n  config_project: {{url: '{url}'}}\n",
            TokenDigest::of(&format!("token-{id}")).to_hex()
        ));
    }
    let file = AgentsFile::from_yaml_str(&yaml, std::path::Path::new("agents.yaml")).unwrap();
    let configs = AgentConfigs::new(
        Settings {
            poll_period: Duration::from_millis(1),
            fetch_timeout: Duration::from_secs(30),
            max_file_size: 256 * 1024,
            mirrors_dir,
            webhook_secret: None,
        },
        AgentDirectory::File(Arc::new(file)),
    );
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let runner = {
        let configs = configs.clone();
        std::thread::spawn(move || smol::block_on(configs.run(stop_rx)))
    };
    let n = urls.len() as u64;
    // Warm up: the first full poll clones every mirror.
    let warm_deadline = Instant::now() + Duration::from_secs(120);
    while polls(&configs) < n && Instant::now() < warm_deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 1..=n {
        let v = configs.agent_json(i);
        assert_eq!(v["status"], "ok", "agent {i}: {v}");
    }
    let start_count = polls(&configs);
    let started = Instant::now();
    std::thread::sleep(budget);
    let count = polls(&configs) - start_count;
    let elapsed = started.elapsed();
    drop(stop_tx);
    runner.join().unwrap();
    // Nothing changed: any failure (a refused or timed-out connection) is reported with the rate.
    let metrics = configs.render_metrics();
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("kas_agent_config_fetch_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    if failures > 0 {
        let sample = (1..=n)
            .map(|i| configs.agent_json(i))
            .find(|v| v["status"] != "ok")
            .map(|v| v["errors"].to_string())
            .unwrap_or_default();
        eprintln!("{failures} failed fetches over {n} repositories: {sample}");
    }
    count as f64 / elapsed.as_secs_f64()
}

/// `kas_agent_config_polls_total` of the poller.
fn polls(configs: &AgentConfigs) -> u64 {
    configs
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix("kas_agent_config_polls_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `git ls-remote` runs per second, one at a time, round-robin over `urls`, for `budget` (at least one
/// full round, at most [`MAX_ITERATIONS`]).
fn ls_remote_rate(urls: &[String], budget: Duration) -> f64 {
    let started = Instant::now();
    let mut count = 0u64;
    while count < MAX_ITERATIONS && (count < urls.len() as u64 || started.elapsed() < budget) {
        let url = &urls[(count as usize) % urls.len()];
        let status = Command::new("git")
            .args(["ls-remote", url, "HEAD"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git ls-remote {url}");
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}
