//! The harness's checks can fail: a minimal agent (`conformance selftest-agent`) passes a set of
//! scenarios when it conforms, and each injected fault makes exactly the scenario that checks that
//! rule fail. A kas command that never listens fails the kas suite's start-up check.

use std::process::Command;

const CONFORMANCE: &str = env!("CARGO_BIN_EXE_conformance");

/// Runs `conformance agentk` against the self-test agent with `fault`, only `scenarios`; returns
/// (exit success, stdout).
fn run_against_selftest(fault: &str, scenarios: &[&str]) -> (bool, String) {
    let agent = format!(
        "{CONFORMANCE} selftest-agent --kas-address {{kas_address}} --token-file {{token_file}} \
         --ca-file {{ca_file}} --fault {fault}"
    );
    // A work directory of our own: the harness keeps its temporary one when something failed.
    let work = tempfile::tempdir().expect("work directory");
    let mut cmd = Command::new(CONFORMANCE);
    cmd.args(["agentk", "--cmd", &agent, "--work-dir"]);
    cmd.arg(work.path());
    for s in scenarios {
        cmd.args(["--only", s]);
    }
    let out = cmd.output().expect("run conformance");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), stdout)
}

fn line_of<'a>(stdout: &'a str, scenario: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1).map(|n| n.trim_end_matches(':')) == Some(scenario))
        .unwrap_or_else(|| panic!("no result line for {scenario} in:\n{stdout}"))
}

const CHECKED: &[(&str, &str)] = &[
    ("wrong-ping-payload", "ping-answered"),
    ("silent-on-error", "malformed-data-on-stream-0"),
    ("double-data", "flow-control-windows-respected"),
    ("no-backoff", "handshake-refused-retry-after"),
];

#[test]
fn the_conforming_selftest_agent_passes() {
    let scenarios: Vec<&str> = CHECKED.iter().map(|(_, s)| *s).collect();
    let (ok, stdout) = run_against_selftest("none", &scenarios);
    for s in &scenarios {
        assert!(line_of(&stdout, s).starts_with("PASS"), "{stdout}");
    }
    assert!(ok, "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("4 passed, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn every_injected_fault_is_detected() {
    for (fault, scenario) in CHECKED {
        let (ok, stdout) = run_against_selftest(fault, &[scenario]);
        assert!(!ok, "fault {fault} went unnoticed:\n{stdout}");
        assert!(
            line_of(&stdout, scenario).starts_with(&format!("FAIL {scenario}: ")),
            "fault {fault}:\n{stdout}"
        );
        assert_eq!(
            stdout.lines().last(),
            Some("0 passed, 1 failed"),
            "{stdout}"
        );
    }
}

#[test]
fn a_kas_that_never_listens_fails_the_start_up_check() {
    let work = tempfile::tempdir().expect("work directory");
    let out = Command::new(CONFORMANCE)
        .args([
            "kas",
            "--startup-timeout",
            "2",
            "--cmd",
            "exec sleep 300",
            "--work-dir",
        ])
        .arg(work.path())
        .output()
        .expect("run conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.starts_with("FAIL kas-started: "), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("0 passed, 1 failed"),
        "{stdout}"
    );
}
