//! The live view end to end (`simulator run … --serve ADDR`): the real binary runs a small scenario
//! with a kas crash and connection drops, started paused, and
//! - pause stops the virtual clock (the snapshot's time and event count stay put over half a second)
//!   and a step of N events advances it by exactly N events, to a later virtual time;
//! - headless Chromium loads the page (`--dump-dom` after the page's scripts ran) and it shows both
//!   replicas, the scenario's faults on the timeline, the crash and restart that happened, and the
//!   invariants holding; after the run, the final page shows `finished`;
//! - the run, paused and stepped, ends with the same trace hash as the same seed without `--serve`;
//! - the control endpoint rejects bad input with 400 and unknown paths with 404.
//!
//! Needs Debian's `chromium` (`/usr/bin/chromium`, or the path in `$CHROMIUM`); fails with a clear
//! message when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Hang guard for every wait.
const GUARD: Duration = Duration::from_secs(60);

/// Small enough to run in a second or two in a debug build; one crash, random drops.
const SCENARIO: &str = r#"
name: live-view-test
description: a small run with a kas crash and connection drops, for the live view's test
seed: 1
duration: 4m
agents: 30
kas:
  replicas: 2
  pending_timeout: 10s
agent:
  start_spread: 10s
  load_balancing: round_robin
  backoff: { initial: 500ms, max: 10s, stable_after: 10s }
network:
  latency: 20ms
  jitter: 2ms
  bandwidth: 10MB
cluster:
  nodes: 2
  namespaces: 2
  pods_per_namespace: 3
  deployments_per_namespace: 1
  churn_per_minute: 1
clients:
  rate: 10
  start: 15s
  timeout: 30s
faults:
  - { kind: drop, from: 20s, to: 90s, rate_per_hour: 20 }
  - { kind: kas_crash, at: 45s, kas: 1, down_for: 20s, silent: false }
quiesce: 60s
sample_interval: 5s
"#;

fn simulator() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simulator"));
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

fn chromium_path() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium is needed for the live view test and was not found at {} \
         (install Debian's `chromium` package, or set CHROMIUM to its path)",
        path.display()
    );
    path
}

/// The page as Chromium renders it after its scripts ran for a few (virtual) seconds.
fn dump_dom(url: &str, profile: &Path) -> String {
    let out = Command::new(chromium_path())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium: {e}"));
    assert!(out.status.success(), "chromium failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(GUARD))
        .build()
        .new_agent()
}

fn state(base: &str) -> Value {
    let mut resp = http().get(format!("{base}/state")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

/// `POST /control?QUERY`: status and body.
fn control(base: &str, query: &str) -> (u16, Value) {
    let mut resp = http()
        .post(format!("{base}/control?{query}"))
        .send_empty()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Polls `/state` until `f` accepts it.
fn wait_state(base: &str, what: &str, mut f: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + GUARD;
    loop {
        let s = state(base);
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; state: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `trace hash: …` line of a finished run's output.
fn trace_hash(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("trace hash: "))
        .unwrap_or_else(|| panic!("no trace hash in {output}"))
        .to_owned()
}

/// A `simulator run` with a live view; killed when dropped.
struct Served {
    child: Child,
    stdout: BufReader<ChildStdout>,
    base: String,
}

impl Served {
    fn start(scenario: &Path, seed: u64) -> Served {
        let mut child = simulator()
            .args([
                "run",
                "--quiet",
                "--serve",
                "127.0.0.1:0",
                "--paused",
                "--hold",
            ])
            .arg("--scenario")
            .arg(scenario)
            .args(["--seed", &seed.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("live view: ")
            .unwrap_or_else(|| panic!("expected the live view's address, got {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Served {
            child,
            stdout,
            base,
        }
    }

    /// Waits for the run to end (`--hold` keeps serving after it): its output up to there.
    fn finished_output(&mut self) -> String {
        let mut out = String::new();
        // Bounded: the summary is a few dozen lines; EOF means the process ended.
        for _ in 0..10_000 {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).unwrap() == 0 {
                panic!("the run ended without holding: {out}");
            }
            out.push_str(&line);
            if line.starts_with("serving the final state") {
                return out;
            }
        }
        panic!("no end of run in {out}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn live_view_shows_the_run_pauses_and_steps_without_changing_it() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("live.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let seed = 5;

    // The same seed without a live view: the reference hash.
    let plain = simulator()
        .args(["run", "--quiet", "--scenario"])
        .arg(&scenario)
        .args(["--seed", &seed.to_string()])
        .output()
        .unwrap();
    assert!(plain.status.success(), "{plain:?}");
    let plain_hash = trace_hash(&String::from_utf8_lossy(&plain.stdout));

    let mut served = Served::start(&scenario, seed);
    let base = served.base.clone();

    // Started paused: the run waits after its first event.
    let s = wait_state(&base, "the paused run", |s| s["state"] == "paused");
    assert_eq!(s["events"], 1, "{s}");

    // Bad input: a typed 400, an unknown path 404; the run is untouched.
    let (status, body) = control(&base, "action=explode");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unknown action"));
    let (status, _) = control(&base, "action=step&n=lots");
    assert_eq!(status, 400);
    let resp = http().get(format!("{base}/nope")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // Step into the run (past the crash at 45 s and the restart at 65 s).
    let (status, c) = control(&base, "action=step&n=4000");
    assert_eq!(status, 200, "{c}");
    let s1 = wait_state(&base, "4000 events stepped", |s| {
        s["state"] == "paused" && s["events"] == 4001
    });
    let t1 = s1["now_s"].as_f64().unwrap();
    assert!(t1 > 0.0, "the virtual clock advanced: {s1}");

    // Paused: the virtual clock stands still.
    std::thread::sleep(Duration::from_millis(500));
    let again = state(&base);
    assert_eq!(again["now_s"], s1["now_s"], "paused, yet time moved");
    assert_eq!(again["events"], s1["events"], "paused, yet events ran");

    // A step advances it by exactly that many events, to a later virtual time.
    control(&base, "action=step&n=500");
    let s2 = wait_state(&base, "500 more events", |s| {
        s["state"] == "paused" && s["events"] == 4501
    });
    let t2 = s2["now_s"].as_f64().unwrap();
    assert!(t2 > t1, "step: {t1} -> {t2}");

    // What the snapshot holds, and what the page shows of it.
    assert_eq!(s2["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(s2["invariants"]["status"], "holding");
    let kinds: Vec<&str> = s2["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        t2 < 65.0 || kinds.contains(&"kas-crash") && kinds.contains(&"kas-start"),
        "at {t2} s the timeline has the crash and restart: {kinds:?}"
    );
    let connected = s2["agents"]["connected"].as_u64().unwrap();
    assert!(connected > 0, "{s2}");

    let dom = dump_dom(&format!("{base}/"), &dir.path().join("chromium"));
    for needle in [
        r#"id="state">paused<"#,
        r#"data-replica="0""#,
        r#"data-replica="1""#,
        r#"data-kind="kas_crash""#,
        r#"data-kind="drop""#,
        "invariants holding",
        "live-view-test",
        &format!(r#"id="events">{}<"#, s2["events"]),
    ] {
        assert!(
            dom.contains(needle),
            "the page does not show {needle:?}:\n{dom}"
        );
    }
    if t2 >= 65.0 {
        assert!(dom.contains("kas-crash kas-1"), "{dom}");
    }
    // The replicas' connections are on the page, as the snapshot has them.
    let conns = s2["replicas"][0]["connections"].to_string();
    assert!(
        dom.contains(&format!(r#"<td data-field="connections">{conns}</td>"#)),
        "replica 0's {conns} connections not shown:\n{dom}"
    );

    // Run to the end; with --hold the final state stays served.
    control(&base, "action=run");
    let rest = served.finished_output();
    let end = wait_state(&base, "the end of the run", |s| s["state"] == "finished");
    assert_eq!(end["invariants"]["status"], "holding", "{end}");
    assert_eq!(end["now_s"], end["end_s"]);
    let dom = dump_dom(&format!("{base}/"), &dir.path().join("chromium"));
    assert!(dom.contains(r#"id="state">finished<"#), "{dom}");
    assert!(dom.contains("kas-start kas-1"), "{dom}");

    // Paused, stepped and run: the same trace as without the live view.
    assert_eq!(trace_hash(&rest), plain_hash, "{rest}");
    assert!(rest.contains("all invariants held"), "{rest}");
    drop(served);
}

/// A run watched at full speed (`--serve` without `--paused`: the page polls while the world runs,
/// keepalive rounds and all) ends with the same trace hash as the same seed unwatched.
#[test]
fn serving_a_run_at_full_speed_keeps_its_trace_hash() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("live.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let run = |serve: bool| {
        let mut cmd = simulator();
        cmd.args(["run", "--quiet", "--seed", "9", "--scenario"])
            .arg(&scenario);
        if serve {
            cmd.args(["--serve", "127.0.0.1:0"]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = run(false);
    let served = run(true);
    assert!(
        served.starts_with("live view: http://127.0.0.1:"),
        "{served}"
    );
    assert!(served.contains("all invariants held"), "{served}");
    assert_eq!(trace_hash(&served), trace_hash(&plain), "{served}");
}
