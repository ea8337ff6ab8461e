//! The conformance suites against this workspace's own agentk and kas binaries: nothing may fail.
//!
//! The binaries are those of the same target directory (`target/debug/agentk`, `target/debug/kas`),
//! which `cargo test --workspace` builds (both crates have integration tests); with `cargo test -p
//! conformance` alone, build them first: `cargo build -p agentk -p kas`. `CONFORMANCE_AGENTK_BIN` and
//! `CONFORMANCE_KAS_BIN` override the paths.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFORMANCE: &str = env!("CARGO_BIN_EXE_conformance");
/// Hang guard for a whole suite (each scenario has its own, shorter guard).
const SUITE_GUARD: Duration = Duration::from_secs(900);

fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p agentk -p kas`) or set {env}",
        path.display()
    );
    path
}

/// Runs `conformance <args>` with a hang guard; returns (success, stdout).
fn conformance(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(CONFORMANCE)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start conformance");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > SUITE_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hang guard: conformance {args:?} ran for {SUITE_GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = reader.join().expect("stdout reader");
    (status.success(), out)
}

fn assert_all_passed(ok: bool, stdout: &str) {
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failures.is_empty(),
        "failed scenarios:\n{}\n\nfull output:\n{stdout}",
        failures.join("\n")
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" passed, 0 failed"),
        "summary line {last:?}:\n{stdout}"
    );
    let passed: usize = last
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 20, "only {passed} scenarios ran:\n{stdout}");
    assert!(ok, "non-zero exit:\n{stdout}");
}

#[test]
fn our_agentk_passes_the_agentk_suite() {
    let agentk = binary("agentk", "CONFORMANCE_AGENTK_BIN");
    let cmd = format!(
        "exec {} --kas-address {{kas_address}} --token-file {{token_file}} --ca-file {{ca_file}} \
         --kubeconfig {{kubeconfig}} --shutdown-grace 1",
        agentk.display()
    );
    let (ok, stdout) = conformance(&["agentk", "--cmd", &cmd]);
    assert_all_passed(ok, &stdout);
}

#[test]
fn our_kas_passes_the_kas_suite() {
    let kas = binary("kas", "CONFORMANCE_KAS_BIN");
    let cmd = format!(
        "exec {} --config {{config}} --state-dir {{state_dir}} --agent-listen 127.0.0.1:{{agent_port}} \
         --api-listen 127.0.0.1:{{api_port}} --shutdown-grace 1s",
        kas.display()
    );
    let (ok, stdout) = conformance(&["kas", "--cmd", &cmd]);
    assert_all_passed(ok, &stdout);
}
