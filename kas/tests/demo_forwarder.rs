//! `kas demo …` is a forwarder: the demo is the `kas-demo` binary (crate kas-demo), which links agentk
//! and tokio so that kas does not. kas runs the `kas-demo` next to its own executable with the same
//! arguments, and says how to get it when there is none.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// A copy of the kas binary in `dir`, so what lies next to it is up to the test.
fn kas_in(dir: &Path) -> std::path::PathBuf {
    let kas = dir.join("kas");
    std::fs::copy(env!("CARGO_BIN_EXE_kas"), &kas).unwrap();
    kas
}

/// Runs `cmd`, again while exec says "text file busy": the two tests run in parallel threads, and a
/// child forked by one may still hold the other's freshly written executable open for writing until it
/// execs (the usual ETXTBSY race of tests that write and run files). Bounded: 100 tries, 2 s in all.
fn output(cmd: &mut Command) -> Output {
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
    panic!("{cmd:?} stayed busy (ETXTBSY) for 2 s");
}

#[test]
fn kas_demo_runs_the_kas_demo_beside_it_with_the_same_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let kas = kas_in(dir.path());
    // A stand-in kas-demo that reports its arguments and exit status (the real one is tested in kas-demo).
    let fake = dir.path().join("kas-demo");
    std::fs::write(
        &fake,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"arg:$a\"; done\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cmd = &mut Command::new(&kas);
    cmd.args(["demo", "--agents", "3", "--state-dir", "/tmp/x y", "--help"])
        .env("PATH", "");
    let out = output(cmd);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "arg:--agents\narg:3\narg:--state-dir\narg:/tmp/x y\narg:--help\n"
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "kas-demo's exit status is kas's"
    );
}

#[test]
fn without_kas_demo_kas_demo_says_how_to_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let kas = kas_in(dir.path());
    let out = output(
        Command::new(&kas)
            .args(["demo", "--agents", "1"])
            .env("PATH", dir.path().join("empty")),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run `cargo run --release -p kas-demo -- --agents 1`"),
        "{err}"
    );
}
