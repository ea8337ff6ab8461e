//! Configuration and deployment details an operator (or a clumsy one) meets: values that would be
//! silently changed or ignored are refused with a message saying what is accepted; listen backlogs
//! are what the configuration says. (The demo's banner test moved to kas-demo/tests/banner.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Env;

/// Runs the kas binary with `kas.yaml` holding `extra` on top of a valid test configuration; it must
/// refuse to start. Returns its stderr.
fn refused_with(extra: &str) -> String {
    let env = Env::new();
    let dir = env.dir.path();
    let mut config = env.config.clone();
    config.state_dir = dir.to_path_buf();
    let path = dir.join("kas.yaml");
    config.write(&path).unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    // Replace the section the case is about.
    let key = extra.split(':').next().unwrap();
    let mut kept = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with(&format!("{key}:")) {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with(' ') {
            continue;
        }
        skipping = false;
        kept.push_str(line);
        kept.push('\n');
    }
    text = kept + extra;
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kas"))
        .arg("--config")
        .arg(&path)
        .env_remove("KAS_LOG_LEVEL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Hang guard: a kas that accepted the configuration would run until killed.
    let deadline = Instant::now() + support::GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kas started with {extra:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "kas accepted {extra:?}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn a_frame_size_below_the_protocol_minimum_is_refused_with_the_right_range() {
    for size in [1000, 1024, 16_383] {
        let err = refused_with(&format!("limits:\n  max_frame_size: {size}\n"));
        assert!(
            err.contains("limits.max_frame_size") && err.contains("16384..=16777215"),
            "{err}"
        );
    }
}

#[test]
fn a_log_level_that_logs_nothing_is_refused() {
    let err = refused_with("log:\n  level: \"loud!!\"\n");
    assert!(
        err.contains("loud!!") && err.contains("trace, debug, info, warn, error, off"),
        "{err}"
    );
}

/// The backlog of the TCP socket listening on `addr`, as the kernel reports it (`ss`: the send
/// queue column of a listening socket is its backlog).
fn backlog_of(addr: SocketAddr) -> u32 {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("ss (iproute2) is needed: apt-get install iproute2");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!(":{}", addr.port())))
        .unwrap_or_else(|| panic!("{addr} is not listening: {text}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no backlog in {line:?}"))
}

#[test]
fn listen_backlogs_are_configurable() {
    let mut env = Env::new();
    env.config.agent_listener.backlog = 77;
    env.config.api_listener.backlog = 99;
    let kas = env.start();
    assert_eq!(backlog_of(kas.agent_addr()), 77);
    assert_eq!(backlog_of(kas.api_addr()), 99);
    kas.shutdown();
    // The default is well above std's 128 (the kernel may cap it at net.core.somaxconn).
    let env = Env::new();
    let kas = env.start();
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    assert_eq!(
        backlog_of(kas.agent_addr()),
        kas::config::DEFAULT_BACKLOG.min(somaxconn)
    );
    kas.shutdown();
}
