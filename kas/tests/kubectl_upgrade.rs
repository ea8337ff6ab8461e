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

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions, kubectl_path};
use support::GUARD;

const POD: &str = "box";

/// Which transport kubectl is forced to.
#[derive(Clone, Copy, Debug)]
enum Via {
    WebSocket,
    Spdy,
}

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
    if matches!(via, Via::Spdy) {
        c.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false");
    }
    c
}

/// Kills the child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs kubectl with `stdin` fed, bounded by [`GUARD`]; (exit code, stdout, stderr).
fn run(s: &Stack, via: Via, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = cmd(s, via, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let (tx, rx) = mpsc::channel();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = String::new();
        let _ = out.read_to_end(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    let Ok((o, e)) = rx.recv_timeout(GUARD) else {
        let _ = child.kill();
        panic!("kubectl {args:?} ({via:?}) did not finish within {GUARD:?}");
    };
    let _ = feeder.join();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), o, e)
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

/// Waits (bounded by [`GUARD`]) for the child to exit; its code.
fn wait_exit(child: &mut Child, what: &str) -> Option<i32> {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "{what} did not exit (hang)");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    assert_eq!(wait_exit(&mut sh.0, "kubectl exec -i sh"), Some(4));

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn http_get(port: u16, path: &str) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    c.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    resp
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
        let resp = http_get(local, "/");
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
