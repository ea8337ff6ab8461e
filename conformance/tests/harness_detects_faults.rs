//! The harness's checks can fail, and fail precisely.
//!
//! A minimal agent (`conformance selftest-agent`) and a minimal kas (`conformance selftest-kas`), both
//! built on the reference connection, pass their **whole** suite without a fault. Then, for every
//! injectable fault, the whole suite runs again and **exactly** the scenarios that check the broken
//! rule must fail: fewer would mean a check that cannot see its rule broken, more would mean a fault
//! (or a check) that is not what it claims. Together the faults make every scenario fail at least once.
//!
//! The runs are independent processes on their own ports; they run a few at a time (most of a run is
//! waiting: refusal windows, back-off, keepalive).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Mutex;

use conformance::selftest::{agent, kas};

const CONFORMANCE: &str = env!("CARGO_BIN_EXE_conformance");

/// Every agent fault and the scenarios it must fail.
const AGENT_FAULTS: &[(&str, &[&str])] = &[
    ("none", &[]),
    ("forget-config-commit", &["config-commit-resumed"]),
    ("forget-gitops-commit", &["gitops-set-reported"]),
    (
        "no-backoff",
        &["handshake-refused-retry-after", "backoff-after-refusal"],
    ),
    ("ignore-retry-after", &["handshake-refused-retry-after"]),
    (
        // Every scenario that relies on a PING being answered.
        "wrong-ping-payload",
        &[
            "version-negotiated",
            "stream-limit-respected-by-agent",
            "ping-answered",
            "reset-stream",
            "unknown-service-refused",
            "unknown-frame-types-ignored",
            "upgrade-101-then-duplex",
            "upgrade-half-close-from-upstream",
            "upgrade-reset-mid-session",
        ],
    ),
    (
        // Every scenario that expects a GOAWAY with an error code.
        "silent-on-error",
        &[
            "version-accept-out-of-range",
            "malformed-data-on-stream-0",
            "malformed-frame-too-large",
            "malformed-reserved-bit",
            "malformed-undefined-flag",
            "malformed-ping-length",
            "malformed-window-update-zero",
            "malformed-undecodable-payload",
            "malformed-request-wrong-parity",
            "malformed-data-on-idle-stream",
            "malformed-hello-after-handshake",
        ],
    ),
    (
        // Every scenario with windows small enough for a doubled body to overrun them, and the
        // upgrade scenarios that compare the upgraded bytes exactly.
        "double-data",
        &[
            "flow-control-windows-respected",
            "flow-control-request-body",
            "upgrade-101-then-duplex",
            "upgrade-half-close-from-upstream",
        ],
    ),
    ("ping-before-accept", &["handshake-accepted"]),
    ("accept-any-version", &["version-accept-out-of-range"]),
    ("crash-on-version-reject", &["version-reject-handled"]),
    ("exceeds-stream-limit", &["stream-limit-respected-by-agent"]),
    (
        "unenforced-stream-limit",
        &["stream-limit-enforced-by-agent"],
    ),
    ("no-goaway-reply", &["goaway-then-reconnect"]),
    ("no-reconnect-on-goaway", &["goaway-then-reconnect"]),
    ("data-after-reset", &["reset-stream"]),
    (
        "keep-upstream-on-reset",
        &[
            "reset-cancels-upstream-request",
            "upgrade-reset-mid-session",
        ],
    ),
    (
        // Every upgrade scenario: none gets its 101 or its refusal.
        "upgrade-ignored",
        &[
            "upgrade-101-then-duplex",
            "upgrade-refused-is-a-response",
            "upgrade-half-close-from-upstream",
            "upgrade-reset-mid-session",
        ],
    ),
    (
        "upgrade-full-close",
        &[
            "upgrade-101-then-duplex",
            "upgrade-half-close-from-upstream",
        ],
    ),
    ("upgrade-refusal-reset", &["upgrade-refused-is-a-response"]),
    (
        "forward-tunnel-credentials",
        &["k8s-api-uses-own-credentials"],
    ),
    (
        "ignore-impersonation",
        &["k8s-api-applies-kas-impersonation"],
    ),
    (
        "forward-client-impersonation",
        &["k8s-api-applies-kas-impersonation"],
    ),
    ("serve-unknown-service", &["unknown-service-refused"]),
    ("no-credit", &["flow-control-request-body"]),
    ("goaway-on-unknown-frame", &["unknown-frame-types-ignored"]),
    (
        "frame-size-as-protocol",
        &["malformed-frame-too-large", "malformed-ping-length"],
    ),
];

/// Every kas fault and the scenarios it must fail.
const KAS_FAULTS: &[(&str, &[&str])] = &[
    ("none", &[]),
    ("accept-any-token", &["handshake-refused-bad-token"]),
    (
        // Every scenario that expects a GOAWAY with an error code.
        "silent-on-error",
        &[
            "handshake-bad-preface",
            "handshake-frame-before-hello",
            "malformed-data-on-stream-0",
            "malformed-frame-too-large",
            "malformed-reserved-bit",
            "malformed-undefined-flag",
            "malformed-ping-length",
            "malformed-window-update-zero",
            "malformed-undecodable-payload",
            "malformed-request-wrong-parity",
            "malformed-data-on-idle-stream",
            "malformed-hello-after-handshake",
            "flood-pings-enhance-your-calm",
            "flood-rapid-reset-enhance-your-calm",
        ],
    ),
    (
        // Every scenario that relies on a PING being answered.
        "wrong-ping-payload",
        &[
            "ping-answered",
            "goaway-then-reconnect",
            "reset-by-agent",
            "unknown-frame-types-ignored",
        ],
    ),
    ("double-data", &["flow-control-windows-respected"]),
    ("no-credit", &["flow-control-large-response"]),
    ("accept-unsupported-version", &["version-unsupported"]),
    ("accept-bad-settings", &["hello-settings-out-of-range"]),
    ("exceed-stream-limit", &["stream-limit-respected-by-kas"]),
    ("no-goaway-reply", &["goaway-then-reconnect"]),
    ("leak-authorization", &["handshake-accepted"]),
    ("no-cancel-on-disconnect", &["reset-on-client-disconnect"]),
    ("ok-on-agent-reset", &["reset-by-agent"]),
    ("early-unavailable", &["agent-never-connects-503"]),
    ("unknown-agent-unavailable", &["unknown-agent-404"]),
    ("any-user-token", &["bad-user-token-401"]),
    ("goaway-on-unknown-frame", &["unknown-frame-types-ignored"]),
    ("accept-highest-version", &["version-negotiated"]),
    ("refuse-config-streams", &["config-stream-answered"]),
    ("accept-bad-gitops-heads", &["gitops-stream-answered"]),
    (
        "crash-on-missing-token",
        &[
            "bad-user-token-401",
            "kas-still-running",
            // run after the crash: nothing answers them
            "flood-pings-enhance-your-calm",
            "flood-rapid-reset-enhance-your-calm",
            "output-backpressure",
        ],
    ),
    (
        "no-flood-limits",
        &[
            "flood-pings-enhance-your-calm",
            "flood-rapid-reset-enhance-your-calm",
        ],
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    Agentk,
    Kas,
}

impl Suite {
    /// The `conformance` subcommand.
    fn name(self) -> &'static str {
        match self {
            Suite::Agentk => "agentk",
            Suite::Kas => "kas",
        }
    }
}

/// Runs the whole suite against the self-test peer with `fault`; returns (exit success, stdout).
fn run_suite(suite: Suite, fault: &str) -> (bool, String) {
    let work = tempfile::tempdir().expect("work directory");
    let cmd = match suite {
        Suite::Agentk => format!(
            "exec {CONFORMANCE} selftest-agent --kas-address {{kas_address}} --token-file \
             {{token_file}} --ca-file {{ca_file}} --kubeconfig {{kubeconfig}} --fault {fault}"
        ),
        Suite::Kas => kas::command(std::path::Path::new(CONFORMANCE), fault),
    };
    let out = Command::new(CONFORMANCE)
        .args([suite.name(), "--cmd", &cmd, "--work-dir"])
        .arg(work.path())
        .output()
        .expect("run conformance");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The scenarios a run reports as failed.
fn failed(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect()
}

/// Every scenario of a suite, as `--list` prints them.
fn scenarios(suite: Suite) -> BTreeSet<String> {
    let out = Command::new(CONFORMANCE)
        .args([suite.name(), "--cmd", "true", "--list"])
        .output()
        .expect("list scenarios");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs every fault's whole suite, `parallel` at a time; the mismatches with the expectations.
fn sweep(suite: Suite, faults: &[(&str, &[&str])], parallel: usize) -> Vec<String> {
    let queue = Mutex::new(faults.iter().collect::<Vec<_>>());
    let problems = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                // Each round takes one fault off the shared queue (the lock is released at once).
                loop {
                    let next = queue.lock().expect("queue").pop();
                    let Some((fault, expected)) = next else {
                        break;
                    };
                    let (ok, stdout) = run_suite(suite, fault);
                    let got = failed(&stdout);
                    let want: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
                    let last = stdout.lines().last().unwrap_or_default().to_owned();
                    eprintln!("{suite:?} fault {fault}: {last}");
                    let mut p = problems.lock().expect("problems");
                    if got != want {
                        let extra: Vec<_> = got.difference(&want).collect();
                        let missing: Vec<_> = want.difference(&got).collect();
                        p.push(format!(
                            "{suite:?} fault {fault}: failed also {extra:?}, did not fail {missing:?}\n\
                             {stdout}"
                        ));
                    } else if ok != want.is_empty() {
                        p.push(format!("{suite:?} fault {fault}: exit status {ok}\n{stdout}"));
                    } else if !last.ends_with(&format!(" {} failed", want.len())) {
                        p.push(format!("{suite:?} fault {fault}: summary {last:?}"));
                    }
                }
            });
        }
    });
    problems.into_inner().expect("problems")
}

/// The expectations name real faults and real scenarios, and cover every scenario.
fn check_tables(suite: Suite, faults: &[(&str, &[&str])], names: &[&str]) {
    let listed: BTreeSet<&str> = faults.iter().map(|(f, _)| *f).collect();
    let known: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(listed, known, "{suite:?}: every fault is swept, once");
    let all = scenarios(suite);
    assert!(
        all.len() >= 20,
        "{suite:?}: only {} scenarios listed",
        all.len()
    );
    let mut covered = BTreeSet::new();
    for (fault, expected) in faults {
        for s in *expected {
            assert!(
                all.contains(*s) || *s == "kas-still-running",
                "{suite:?} fault {fault}: no scenario {s}"
            );
            covered.insert((*s).to_owned());
        }
    }
    let uncovered: Vec<&String> = all.iter().filter(|s| !covered.contains(*s)).collect();
    assert!(
        uncovered.is_empty(),
        "{suite:?}: no fault makes these scenarios fail: {uncovered:?}"
    );
}

#[test]
fn the_fault_tables_cover_every_scenario() {
    let names: Vec<&str> = agent::FAULTS.iter().map(|(n, _)| *n).collect();
    check_tables(Suite::Agentk, AGENT_FAULTS, &names);
    let names: Vec<&str> = kas::FAULTS.iter().map(|(n, _)| *n).collect();
    check_tables(Suite::Kas, KAS_FAULTS, &names);
}

#[test]
fn every_agent_fault_fails_exactly_its_scenarios() {
    let problems = sweep(Suite::Agentk, AGENT_FAULTS, 10);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn every_kas_fault_fails_exactly_its_scenarios() {
    // A scenario the conforming self-test kas fails ("none") needs the self-test kas
    // (conformance/src/selftest/kas.rs) to implement what that scenario checks.
    let problems = sweep(Suite::Kas, KAS_FAULTS, 8);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
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
