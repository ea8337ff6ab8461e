//! Benchmark: `git push` → the pushed commit visible at kas, over the demo's real Git path — `git push`
//! to the demo's `git daemon` → `post-receive` hook → kas's push webhook → kas fetches the config
//! project with gix → `GET /api/v1/agents/1/config` names the commit. kas's poll period is 5 minutes,
//! so only the webhook explains what is measured.
//!
//! ```text
//! cargo build --release -p kas-demo      # the hook runs this binary (else curl)
//! cargo run --release -p kas-demo --example push_latency -- [M]
//! ```
//!
//! Prints p50/p99/max over M pushes (default 50) of: `git push` alone (it returns after the hook ran)
//! and push start → commit visible at kas. Every wait is bounded (10 s per push).
//!
//! Measured on the 2-core CI machine (release build), 30 pushes per stage, 1.1 s apart:
//!
//! | measured | pushes | p50 ms | p99 ms |
//! |---|---:|---:|---:|
//! | `git push` to config (returns after the hook) | 30 | 66 | 71 |
//! | push → commit visible at kas | 30 | 114 | 125 |
//! | `git push` to manifests (returns after the hook) | 30 | 68 | 77 |
//! | push → applied in the cluster | 30 | 117 | 138 |
//!
//! Each measured stage is one function `fn(&Stage, &str) -> bool` called with the pushed commit until
//! it holds: [`commit_at_kas`] (config repository) and [`applied_in_cluster`] (manifests repository:
//! agentk reports the commit applied with server-side apply, so the changed ConfigMap is in the
//! cluster).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kas_demo::api_client::ApiClient;
use kas_demo::git::{CONFIG_REPO, HookClient, MANIFESTS_REPO};
use kas_demo::{Demo, DemoOptions};

/// How long one push may take to become visible.
const WAIT: Duration = Duration::from_secs(10);

/// Pause between pushes. agentk's sync starts rounds at least `min_round_interval` (1 s) apart (its
/// storm guard), so back-to-back pushes would measure that guard, not the latency of one push.
const GAP: Duration = Duration::from_millis(1100);

/// What a stage check can use.
struct Stage<'a> {
    #[allow(dead_code)]
    demo: &'a Demo,
    api: ApiClient,
}

/// A measured stage: its name, the repository pushed to, and whether the pushed commit has arrived.
type Check = fn(&Stage, &str) -> bool;

/// The stages measured, each over M pushes to its repository.
const STAGES: &[(&str, &str, Check)] = &[
    ("commit visible at kas", CONFIG_REPO, commit_at_kas),
    ("applied in the cluster", MANIFESTS_REPO, applied_in_cluster),
];

/// kas's `GET /api/v1/agents/1/config` names `commit`.
fn commit_at_kas(stage: &Stage, commit: &str) -> bool {
    stage
        .api
        .get_json("/api/v1/agents/1/config")
        .map(|(_, v)| v["commit"] == commit)
        .unwrap_or(false)
}

/// agentk reports (`GET /api/v1/agents/1/gitops`) that it applied the pushed commit with server-side
/// apply: every object of the set is in the (simulated) cluster.
fn applied_in_cluster(stage: &Stage, commit: &str) -> bool {
    stage
        .api
        .get_json("/api/v1/agents/1/gitops")
        .map(|(_, v)| {
            v["projects"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["sync"]["synced_commit"] == commit))
        })
        .unwrap_or(false)
}

/// Runs `git` in `dir` with no global or system configuration; returns its standard output.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "user.name=push-latency",
            "-c",
            "user.email=push-latency@localhost",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One push of a new commit to `work`'s origin: (time `git push` took, time until `arrived`).
fn push_and_wait(
    work: &Path,
    i: usize,
    stage: &Stage,
    arrived: Check,
) -> (Duration, Option<Duration>) {
    // A manifest (the manifests repository selects `**/*.yaml`), so that every push changes an
    // object in the cluster; in the config repository it is just a file.
    let file = "push-latency.yaml";
    std::fs::write(
        work.join(file),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: push-latency\n  namespace: demo\ndata:\n  push: \"{i}\"\n"
        ),
    )
    .unwrap();
    git(work, &["add", file]);
    git(work, &["commit", "-q", "-m", &format!("push {i}")]);
    let commit = git(work, &["rev-parse", "HEAD"]);
    let t0 = Instant::now();
    git(work, &["push", "-q", "origin", "HEAD:main"]);
    let pushed = t0.elapsed();
    loop {
        if arrived(stage, &commit) {
            return (pushed, Some(t0.elapsed()));
        }
        if t0.elapsed() > WAIT {
            return (pushed, None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {what} | {} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default())
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let m: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir()?;
    let mut opts = DemoOptions::new(1, dir.path().join("state"));
    opts.agent_listen = "127.0.0.1:0".parse()?;
    opts.api_listen = "127.0.0.1:0".parse()?;
    opts.git_listen = "127.0.0.1:0".parse()?;
    opts.churn = 0.0;
    opts.config_poll_period = Duration::from_secs(300);
    let demo = Demo::start(&opts)?;
    let hooks = match demo.hook_client() {
        HookClient::KasDemo(p) => format!("kas-demo webhook ({})", p.display()),
        HookClient::Curl => "curl".into(),
        HookClient::None => return Err("no hook client: build kas-demo or install curl".into()),
    };
    let stage = Stage {
        demo: &demo,
        api: demo.api_client(Duration::from_secs(5))?,
    };
    eprintln!("{m} pushes per stage; hook: {hooks}");
    println!("| measured | pushes | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, repo, check) in STAGES {
        let work: PathBuf = dir.path().join(format!("work-{repo}"));
        let url = demo.git_url(repo)?;
        git(dir.path(), &["clone", "-q", &url, &work.to_string_lossy()]);
        let mut push_times = Vec::with_capacity(m);
        let mut visible = Vec::with_capacity(m);
        let mut missed = 0;
        for i in 0..m {
            std::thread::sleep(GAP);
            let (pushed, seen) = push_and_wait(&work, i, &stage, *check);
            push_times.push(pushed);
            match seen {
                Some(d) => visible.push(d),
                None => missed += 1,
            }
        }
        row(
            &format!("`git push` to {repo} (returns after the hook)"),
            push_times,
        );
        row(&format!("push → {name}"), visible);
        if missed > 0 {
            println!("| push → {name}: not seen within {WAIT:?} | {missed} | | | |");
        }
    }
    demo.shutdown();
    Ok(())
}
