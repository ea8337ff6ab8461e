//! Without `git` the demo still runs (the real `kas-demo` binary, started with a `PATH` that has no
//! `git`), and its banner says which package to install.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn without_git_the_demo_runs_and_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kas-demo"))
        .env("PATH", &empty)
        .args(["--agents", "1", "--churn", "0", "--state-dir"])
        .arg(dir.path().join("state"))
        .args([
            "--agent-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--git-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut lines = Vec::new();
    let mut git_line = None;
    while git_line.is_none() && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if line.starts_with("git:") {
                    git_line = Some(line.clone());
                }
                lines.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("ready"),
        "{lines:#?}"
    );
    let git_line = git_line.unwrap_or_else(|| panic!("no git line: {lines:#?}"));
    assert!(
        git_line.contains("off") && git_line.contains("apt-get install git"),
        "{git_line}"
    );
    assert!(!lines.iter().any(|l| l.contains("git clone")), "{lines:#?}");
    assert!(!dir.path().join("state/git").exists());
}
