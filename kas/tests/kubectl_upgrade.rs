//! `kubectl exec`, `attach`, `cp` and `port-forward` with the real kubectl through kas and a tunnel:
//! kubectl → kas (HTTPS `/k8s-proxy`, HTTP/1.1 upgrade) → tunnel stream → agentk (HTTP/1.1 upgrade
//! to the API server) → simulated API server, over WebSocket (kubectl 1.32's default) and over SPDY
//! (forced with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` / `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).
//! Plus the faults: an agent that goes away or a kas that shuts down ends the session (kubectl exits,
//! never hangs), and the per-agent session limit.
//!
//! kubectl is required; without it these tests fail, saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;
#[path = "support/upgrade_client.rs"]
mod upgrade_client;

use std::io::{BufRead as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions, kubectl_path};
use sim_apiserver::testing::{
    Killed, Terminal, Via, check_terminal_session, free_port, http_get, run_bounded, wait_exit,
};
use support::GUARD;

const POD: &str = "box";

/// Agent 1 with a pod `default/box`.
fn stack() -> Stack {
    let s = Stack::start(StackOptions {
        agents: vec![1],
        ..StackOptions::default()
    });
    s.cluster(1).store().add_pod("default", POD).unwrap();
    s
}

fn cmd(s: &Stack, via: Via, args: &[&str]) -> Command {
    let mut c = Command::new(kubectl_path());
    c.arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .arg("--context")
        .arg("agent-1")
        .args(args)
        .env_remove("KUBECONFIG");
    via.apply(&mut c);
    c
}

/// Runs kubectl with `stdin` fed, bounded by [`GUARD`]; (exit code, stdout, stderr).
fn run(s: &Stack, via: Via, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    run_bounded(
        cmd(s, via, args),
        &format!("kubectl {args:?} ({via:?})"),
        stdin,
        GUARD,
    )
}

/// Lines of a child's stdout as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn exec_cp_and_interactive(via: Via) {
    let s = stack();
    let (code, out, err) = run(&s, via, &["exec", POD, "--", "echo", "hi"], b"");
    assert_eq!((code, out.as_slice()), (0, &b"hi\n"[..]), "{err}");

    // Exit codes propagate.
    let (code, _, err) = run(&s, via, &["exec", POD, "--", "sh", "-c", "exit 3"], b"");
    assert_eq!(code, 3, "{err}");

    // stdin round-trips (larger than any window or frame).
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (code, out, err) = run(&s, via, &["exec", "-i", POD, "--", "cat"], &data);
    assert_eq!(code, 0, "{err}");
    assert!(
        out == data,
        "cat returned {} of {} bytes",
        out.len(),
        data.len()
    );

    // An interactive shell: each line answered before the next is typed.
    let mut sh = Killed(
        cmd(&s, via, &["exec", "-i", POD, "--", "sh"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut input = sh.0.stdin.take().unwrap();
    let rx = lines(&mut sh.0);
    for word in ["alpha", "beta"] {
        input
            .write_all(format!("echo {word}\n").as_bytes())
            .unwrap();
        input.flush().unwrap();
        assert_eq!(rx.recv_timeout(GUARD).as_deref(), Ok(word));
    }
    input.write_all(b"exit 4\n").unwrap();
    assert_eq!(wait_exit(&mut sh.0, "kubectl exec -i sh", GUARD), Some(4));

    // kubectl cp in and out, byte-identical.
    let payload: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let src = s.env.dir.path().join("payload.bin");
    std::fs::write(&src, &payload).unwrap();
    let remote = format!("default/{POD}:/tmp/payload.bin");
    let (code, _, err) = run(&s, via, &["cp", src.to_str().unwrap(), &remote], b"");
    assert_eq!(code, 0, "cp in: {err}");
    let back = s.env.dir.path().join("back.bin");
    let (code, _, err) = run(&s, via, &["cp", &remote, back.to_str().unwrap()], b"");
    assert_eq!(code, 0, "cp out: {err}");
    let got = std::fs::read(&back).unwrap();
    assert!(
        got == payload,
        "copied back {} of {} bytes",
        got.len(),
        payload.len()
    );

    // Every session ended: none is left open in kas.
    support::eventually("kas to count no open session", || {
        s.metrics()
            .contains("kas_upgraded_sessions 0\n")
            .then_some(())
    });
}

#[test]
fn exec_interactive_and_cp_over_websocket() {
    exec_cp_and_interactive(Via::WebSocket);
}

#[test]
fn exec_interactive_and_cp_over_spdy() {
    exec_cp_and_interactive(Via::Spdy);
}

#[test]
fn attach_echoes_through_the_tunnel() {
    let s = stack();
    let mut child = Killed(
        cmd(&s, Via::WebSocket, &["attach", "-i", POD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut input = child.0.stdin.take().unwrap();
    let rx = lines(&mut child.0);
    let deadline = Instant::now() + GUARD;
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        let _ = input.write_all(b"ping\n");
        let _ = input.flush();
        seen = rx.recv_timeout(Duration::from_millis(500)).as_deref() == Ok("ping");
    }
    assert!(seen, "kubectl attach never echoed the input");
}

fn port_forward(via: Via) {
    let s = stack();
    let local = free_port();
    let mut pf = Killed(
        cmd(
            &s,
            via,
            &[
                "port-forward",
                &format!("pod/{POD}"),
                &format!("{local}:8080"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let rx = lines(&mut pf.0);
    let line = rx
        .recv_timeout(GUARD)
        .expect("port-forward prints its ports");
    assert!(line.contains("Forwarding from"), "{line}");
    for _ in 0..3 {
        let resp = http_get(local, "/", GUARD);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.contains(&format!("hello from default/{POD} port 8080")),
            "{resp}"
        );
    }
}

#[test]
fn port_forward_over_websocket() {
    port_forward(Via::WebSocket);
}

#[test]
fn port_forward_over_spdy() {
    port_forward(Via::Spdy);
}

/// A long `exec` whose agent goes away, and one whose kas shuts down: kubectl exits with an error
/// instead of hanging.
#[test]
fn sessions_end_when_the_agent_or_kas_goes_away() {
    let mut s = stack();
    for away in ["agent", "kas"] {
        let mut child = Killed(
            cmd(&s, Via::WebSocket, &["exec", "-i", POD, "--", "cat"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut input = child.0.stdin.take().unwrap();
        let rx = lines(&mut child.0);
        input.write_all(b"up\n").unwrap();
        input.flush().unwrap();
        assert_eq!(rx.recv_timeout(GUARD).as_deref(), Ok("up"), "{away}");
        if away == "agent" {
            s.kill_agent(1);
        } else {
            let _ = s.restart_kas(Duration::from_secs(1));
        }
        let code = wait_exit(
            &mut child.0,
            &format!("kubectl exec after the {away} went away"),
            GUARD,
        );
        assert_ne!(
            code,
            Some(0),
            "{away}: kubectl must report the lost session"
        );
        if away == "agent" {
            s.start_agent(1);
            assert!(s.kas().wait_for_agents(&[1], GUARD));
        }
    }
}

/// At most `upgrades.max_sessions_per_agent` sessions: the next one is refused (429) before it
/// reaches the agent; a session idle for `upgrades.idle_timeout` is ended (kubectl exits).
#[test]
fn session_limit_and_idle_timeout() {
    let mut s = stack();
    s.env.config.upgrades.max_sessions_per_agent = 1;
    s.env.config.upgrades.idle_timeout = Duration::from_secs(2);
    let _ = s.restart_kas(Duration::from_secs(1));
    assert!(s.kas().wait_for_agents(&[1], GUARD));
    let mut first = Killed(
        cmd(&s, Via::WebSocket, &["exec", "-i", POD, "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut input = first.0.stdin.take().unwrap();
    let rx = lines(&mut first.0);
    input.write_all(b"one\n").unwrap();
    input.flush().unwrap();
    assert_eq!(rx.recv_timeout(GUARD).as_deref(), Ok("one"));
    let (code, _, err) = run(&s, Via::WebSocket, &["exec", POD, "--", "echo", "two"], b"");
    assert_ne!(code, 0, "a second session beyond the limit must be refused");
    let metrics = s.metrics();
    assert!(
        support::metric(
            &metrics,
            "kas_upgraded_sessions_total{result=\"refused_limit\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{err}\n{metrics}"
    );
    // The first session, left idle, ends by itself.
    let code = wait_exit(&mut first.0, "an idle kubectl exec", GUARD);
    assert_ne!(code, Some(0));
    assert!(
        support::metric(
            &s.metrics(),
            "kas_upgraded_sessions_total{result=\"idle_timeout\"}"
        ) == Some(1.0)
    );
    // The slot is free again.
    let (code, out, err) = run(
        &s,
        Via::WebSocket,
        &["exec", POD, "--", "echo", "three"],
        b"",
    );
    assert_eq!((code, out.as_slice()), (0, &b"three\n"[..]), "{err}");
}

/// Every kind of user request (k8s-proxy, service proxy, cache, views, an upgraded session) is one
/// audit record with the user's identity; no token appears in the log.
#[test]
fn every_request_kind_is_one_audit_record() {
    let mut s = stack();
    let path = s.env.dir.path().join("audit.jsonl");
    s.env.config.audit.path = Some(path.clone());
    let _ = s.restart_kas(Duration::from_secs(1));
    assert!(s.kas().wait_for_agents(&[1], GUARD));
    let echo = e2e::EchoServer::start(s.runtime());
    e2e::add_loopback_service(s.cluster(1), "apps", "echo", "http", echo.addr);
    let admin = s.admin(1);

    let k8s = s.get(
        "/k8s-proxy/api/v1/namespaces/default/pods?limit=7&access_token=hush",
        Some(&admin),
    );
    assert_eq!(k8s.status, 200, "{}", k8s.body);
    let svc = s.get(
        "/api/v1/agents/1/proxy/apps/echo:http/audited?x=1",
        Some(&admin),
    );
    assert!(svc.status < 300, "{} {}", svc.status, svc.body);
    let cache = s.get(
        "/api/v1/agents/1/cache/pods?namespace=default",
        Some(&admin),
    );
    let views = s.get("/api/v1/agents/1/views", Some(&admin));
    let (code, out, err) = run(
        &s,
        Via::WebSocket,
        &["exec", POD, "--", "echo", "audited"],
        b"",
    );
    assert_eq!((code, out.as_slice()), (0, &b"audited\n"[..]), "{err}");

    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let session = support::eventually("the session's record", || {
        records().into_iter().find(|r| r["kind"] == "session")
    });
    let all = records();
    let one = |pred: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        let found: Vec<&serde_json::Value> = all.iter().filter(|r| pred(r)).collect();
        assert_eq!(found.len(), 1, "{what}: {found:?}");
        let r = found[0];
        assert_eq!(r["user"], "admin", "{what}: {r}");
        assert_eq!(r["agent_id"], 1, "{what}: {r}");
        r.clone()
    };
    let r = one(
        &|r| r["path"].as_str().is_some_and(|p| p.contains("limit=7")),
        "k8s-proxy",
    );
    assert_eq!(r["route"], "k8s-proxy");
    assert_eq!(r["status"], 200);
    assert_eq!(r["token_kind"], "pat");
    assert!(r["bytes_out"].as_u64().unwrap() as usize >= k8s.body.len());
    assert!(
        r["path"]
            .as_str()
            .unwrap()
            .contains("access_token=REDACTED"),
        "{r}"
    );
    let r = one(
        &|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.contains("/audited?x=1"))
        },
        "service-proxy",
    );
    assert_eq!(r["route"], "service-proxy");
    assert_eq!(r["status"], svc.status);
    let r = one(&|r| r["route"] == "cache", "cache");
    assert_eq!(r["status"], cache.status);
    let r = one(&|r| r["route"] == "views", "views");
    assert_eq!(r["status"], views.status);
    let r = one(&|r| r["kind"] == "session", "session");
    assert_eq!(r, session);
    assert_eq!(r["status"], 101);
    assert_eq!(r["upgrade"], "websocket");
    assert_eq!(r["end"], "closed");
    assert!(
        r["path"].as_str().unwrap().contains("/pods/box/exec?"),
        "{r}"
    );
    assert!(r["bytes_out"].as_u64().unwrap() > 0, "{r}");
    // The exec's own 101 is not counted twice as a request.
    assert!(
        !all.iter()
            .any(|x| x["kind"] == "request"
                && x["path"].as_str().is_some_and(|p| p.contains("/exec?"))),
        "{all:?}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(&s.env.admin_token),
        "a token leaked into the audit log"
    );
    assert!(!text.contains("hush"));
    assert!(support::metric(&s.metrics(), "kas_audit_records_total").is_some_and(|n| n >= 5.0));
}

/// A client that writes to `cat` and never reads its output stalls its own session only (flow
/// control holds back that stream alone): meanwhile other sessions and plain requests through the
/// same agent connection are served.
#[test]
fn a_client_that_stops_reading_slows_only_its_session() {
    let s = stack();
    let target = upgrade_client::via_kas(&s);
    let (stalled_tx, stalled) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        smol::block_on(async {
            let mut session = upgrade_client::open_exec(&target).await.unwrap();
            let chunk = vec![b'z'; 32 * 1024];
            let mut written = 0usize;
            // Bounded: at most 64 MiB, or until a write has been stuck for a second.
            while written < 64 * 1024 * 1024 {
                let wrote = futures_lite::future::or(
                    async { Some(session.write_stdin(&chunk).await) },
                    async {
                        smol::Timer::after(Duration::from_secs(1)).await;
                        None
                    },
                )
                .await;
                match wrote {
                    Some(Ok(())) => written += chunk.len(),
                    Some(Err(e)) => panic!("the stalled session failed: {e}"),
                    None => break,
                }
            }
            stalled_tx.send(written).unwrap();
            // Keep the session open, unread, until the test is done with the others.
            smol::Timer::after(GUARD).await;
            drop(session);
        });
    });
    let written = stalled
        .recv_timeout(GUARD * 2)
        .expect("the writer stalls or finishes");
    assert!(
        written < 64 * 1024 * 1024,
        "64 MiB went into a session whose output nobody reads: no back-pressure"
    );
    // The stalled session holds its windows; everything else still flows.
    for i in 0..3 {
        let (code, out, err) = run(
            &s,
            Via::WebSocket,
            &["exec", POD, "--", "echo", "free"],
            b"",
        );
        assert_eq!(
            (code, out.as_slice()),
            (0, &b"free\n"[..]),
            "exec {i}: {err}"
        );
    }
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let (code, out, err) = run(&s, Via::Spdy, &["exec", "-i", POD, "--", "cat"], &data);
    assert_eq!(code, 0, "{err}");
    assert!(
        out == data,
        "cat returned {} of {} bytes",
        out.len(),
        data.len()
    );
    let pods = s.get(
        "/k8s-proxy/api/v1/namespaces/default/pods",
        Some(&s.admin(1)),
    );
    assert_eq!(pods.status, 200, "{}", pods.body);
    drop(writer);
}

/// `kubectl exec -it` through a real pseudo-terminal (util-linux `script`) through kas: the typed
/// line is echoed by the container's terminal, answered, and the exit status comes back.
fn terminal(via: Via) {
    let s = stack();
    let env: String = via.env().iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let kubectl = format!(
        "{env}{} --kubeconfig {} --context agent-1 exec -it {POD} -- sh",
        kubectl_path().display(),
        s.kubeconfig.display()
    );
    check_terminal_session(Terminal::spawn(
        &kubectl,
        &[("HOME", s.env.dir.path().as_os_str())],
        GUARD,
    ));
}

#[test]
fn terminal_session_over_websocket() {
    terminal(Via::WebSocket);
}

#[test]
fn terminal_session_over_spdy() {
    terminal(Via::Spdy);
}
