//! Real, unmodified `kubectl` running exec, attach, cp and port-forward against the simulated
//! API server, over WebSocket (kubectl 1.32's default) and over SPDY (forced with
//! `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` / `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), and
//! hostile or idle clients on raw sockets. These tests fail (never skip) when kubectl is
//! missing: install it with `apt-get install -y kubernetes-client`.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sim_apiserver::ApiServerConfig;
use sim_apiserver::testing::{
    Killed, Terminal, Via, check_terminal_session, free_port, http_get, run_bounded,
};
use support::{Env, GUARD, env};

const POD: &str = "box";

fn cluster(config: ApiServerConfig) -> Env {
    let e = env(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..config
    });
    e.server
        .store()
        .add_pod("default", POD)
        .unwrap_or_else(|err| panic!("add pod: {err}"));
    e
}

fn cmd(e: &Env, via: Via, args: &[&str]) -> Command {
    let mut c = e.command(args);
    via.apply(&mut c);
    c
}

/// Runs kubectl with `stdin` fed, bounded by [`GUARD`]; returns (exit code, stdout, stderr).
fn run(e: &Env, via: Via, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    run_bounded(
        cmd(e, via, args),
        &format!("kubectl {args:?} ({via:?})"),
        stdin,
        GUARD,
    )
}

fn exec_basics(via: Via) {
    let e = cluster(ApiServerConfig::default());
    let (code, out, err) = run(&e, via, &["exec", POD, "--", "echo", "hi"], b"");
    assert_eq!((code, out.as_slice()), (0, &b"hi\n"[..]), "{err}");

    let (code, _, err) = run(&e, via, &["exec", POD, "--", "sh", "-c", "exit 3"], b"");
    assert_eq!(code, 3, "exit status 3 propagates: {err}");
    let (code, _, _) = run(&e, via, &["exec", POD, "--", "false"], b"");
    assert_eq!(code, 1);

    // stdin round-trips through `cat`, in chunks larger than one frame.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (code, out, err) = run(&e, via, &["exec", "-i", POD, "--", "cat"], &data);
    assert_eq!(code, 0, "{err}");
    assert!(
        out == data,
        "cat returned {} bytes of {}",
        out.len(),
        data.len()
    );

    // A shell pipeline with redirection and `&&`, and the container's state persisting.
    let (code, out, err) = run(
        &e,
        via,
        &[
            "exec",
            POD,
            "--",
            "sh",
            "-c",
            "echo one > /tmp/f && cat /tmp/f | cat; ls /tmp",
        ],
        b"",
    );
    assert_eq!(
        (code, String::from_utf8_lossy(&out).as_ref()),
        (0, "one\nf\n"),
        "{err}"
    );
    let (code, out, _) = run(&e, via, &["exec", POD, "--", "cat", "/tmp/f"], b"");
    assert_eq!((code, out.as_slice()), (0, &b"one\n"[..]));
    let (code, _, err) = run(&e, via, &["exec", POD, "--", "no-such-cmd"], b"");
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn exec_over_websocket() {
    exec_basics(Via::WebSocket);
}

#[test]
fn exec_over_spdy() {
    exec_basics(Via::Spdy);
}

/// An interactive shell: each line is answered before the next is typed.
fn interactive(via: Via) {
    let e = cluster(ApiServerConfig::default());
    let mut child = cmd(&e, via, &["exec", "-i", POD, "--", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    for word in ["alpha", "beta"] {
        input
            .write_all(format!("echo {word}\n").as_bytes())
            .expect("write stdin");
        input.flush().expect("flush");
        let got = rx.recv_timeout(GUARD);
        assert_eq!(
            got.as_deref(),
            Ok(word),
            "the shell answers each line as it arrives"
        );
    }
    input.write_all(b"exit 4\n").expect("write stdin");
    let deadline = Instant::now() + GUARD;
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "kubectl exec did not end after `exit 4`"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(4));
}

#[test]
fn interactive_shell_over_websocket() {
    interactive(Via::WebSocket);
}

#[test]
fn interactive_shell_over_spdy() {
    interactive(Via::Spdy);
}

fn copy_both_ways(via: Via) {
    let e = cluster(ApiServerConfig::default());
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let src = e.dir.path().join("payload.bin");
    std::fs::write(&src, &data).expect("write payload");
    let src = src.to_string_lossy().into_owned();
    let remote = format!("default/{POD}:/tmp/payload.bin");
    let (code, _, err) = run(&e, via, &["cp", &src, &remote], b"");
    assert_eq!(code, 0, "cp into the pod: {err}");
    let (_, listing, _) = run(&e, via, &["exec", POD, "--", "ls", "/tmp"], b"");
    assert!(String::from_utf8_lossy(&listing).contains("payload.bin"));
    let back = e.dir.path().join("back.bin");
    let back_s = back.to_string_lossy().into_owned();
    let (code, _, err) = run(&e, via, &["cp", &remote, &back_s], b"");
    assert_eq!(code, 0, "cp out of the pod: {err}");
    let got = std::fs::read(&back).expect("read copy");
    assert!(
        got == data,
        "copied back {} bytes of {}, not identical",
        got.len(),
        data.len()
    );
}

#[test]
fn cp_over_websocket() {
    copy_both_ways(Via::WebSocket);
}

#[test]
fn cp_over_spdy() {
    copy_both_ways(Via::Spdy);
}

#[test]
fn attach_echoes_through_the_main_process() {
    let e = cluster(ApiServerConfig::default());
    let mut child = e
        .command(&["attach", "-i", POD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The main process echoes what it reads; keep typing until the session is up.
    let deadline = Instant::now() + GUARD;
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        let _ = input.write_all(b"ping\n");
        let _ = input.flush();
        seen = rx.recv_timeout(Duration::from_millis(500)).as_deref() == Ok("ping");
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "kubectl attach never echoed the input");
}

fn port_forward(via: Via) {
    let e = cluster(ApiServerConfig::default());
    let local = free_port();
    let mut pf = {
        let mut c = cmd(
            &e,
            via,
            &[
                "port-forward",
                &format!("pod/{POD}"),
                &format!("{local}:8080"),
            ],
        );
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        Killed(child)
    };
    let stdout = pf.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(GUARD)
        .expect("kubectl port-forward prints its ports");
    assert!(line.contains("Forwarding from"), "{line}");
    for _ in 0..3 {
        let resp = http_get(local, "/", GUARD);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.contains(&format!("hello from default/{POD} port 8080")),
            "{resp}"
        );
    }
    let metrics = http_get(local, "/metrics", GUARD);
    assert!(
        metrics.contains("sim_pod_info{namespace=\"default\""),
        "{metrics}"
    );
    // A test's own listener registered for a pod port is what the pod serves there.
    let own = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    e.server
        .pod_network()
        .register("default", POD, 9000, own.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = own.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
            .expect("write");
    });
    let local2 = free_port();
    let mut pf2 = Killed(
        cmd(
            &e,
            via,
            &[
                "port-forward",
                &format!("pod/{POD}"),
                &format!("{local2}:9000"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl runs"),
    );
    let mut out2 = std::io::BufReader::new(pf2.0.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out2, &mut first).expect("first line");
    let mut s = TcpStream::connect(("127.0.0.1", local2)).expect("connect");
    s.set_read_timeout(Some(GUARD)).expect("timeout");
    s.write_all(b"hello").expect("send");
    let mut back = [0u8; 5];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"HELLO");
    server.join().expect("server thread");

    // Bulk data both ways at once through an echo server: neither direction stalls the other.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    e.server
        .pod_network()
        .register("default", POD, 9001, echo.local_addr().expect("addr"));
    let echo_thread = std::thread::spawn(move || {
        let (s, _) = echo.accept().expect("accept");
        let mut r = s.try_clone().expect("clone");
        let mut w = s;
        let _ = std::io::copy(&mut r, &mut w);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let local3 = free_port();
    let mut pf3 = Killed(
        cmd(
            &e,
            via,
            &[
                "port-forward",
                &format!("pod/{POD}"),
                &format!("{local3}:9001"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl runs"),
    );
    let mut out3 = std::io::BufReader::new(pf3.0.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out3, &mut first).expect("first line");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let s = TcpStream::connect(("127.0.0.1", local3)).expect("connect");
    s.set_read_timeout(Some(GUARD)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let to_send = data.clone();
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        w.write_all(&to_send).expect("send");
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut back = Vec::new();
    let mut r = s;
    r.read_to_end(&mut back).expect("read the echo");
    let took = started.elapsed();
    sender.join().expect("sender");
    echo_thread.join().expect("echo server");
    assert!(
        back == data,
        "echoed {} bytes of {}",
        back.len(),
        data.len()
    );
    println!(
        "port-forward {via:?}: 2 MB echoed in {took:?} ({:.1} MB/s each way)",
        2.0 / took.as_secs_f64()
    );
    assert!(e.server.streaming_sessions().started >= 3);
}

#[test]
fn port_forward_over_websocket() {
    port_forward(Via::WebSocket);
}

#[test]
fn port_forward_over_spdy() {
    port_forward(Via::Spdy);
}

/// Sends an upgrade request on a raw socket; returns the socket after the `101`.
fn raw_upgrade(e: &Env, path: &str, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(e.server.addr()).expect("connect");
    s.set_read_timeout(Some(GUARD)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n{headers}\r\n"
    )
    .expect("send");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).expect("read the response head"),
            1,
            "closed early"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    all
}

#[test]
fn malformed_frames_end_only_their_session() {
    let e = cluster(ApiServerConfig::default());
    let path = format!(
        "/api/v1/namespaces/default/pods/{POD}/exec?command=sleep&command=30&stdin=true&stdout=true"
    );
    // WebSocket: a frame with a reserved opcode.
    let mut ws = raw_upgrade(
        &e,
        &path,
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n",
    );
    ws.write_all(&[0x83, 0x80, 1, 2, 3, 4])
        .expect("send a bad frame");
    let reply = read_until_closed(&mut ws);
    // The server's close frame carries 1002 (protocol error).
    assert!(
        reply.windows(2).any(|w| w == [0x03, 0xea]),
        "expected a protocol-error close, got {reply:?}"
    );
    // SPDY: a control frame of SPDY version 2.
    let mut spdy = raw_upgrade(
        &e,
        &path,
        "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
    );
    spdy.write_all(&[0x80, 0x02, 0, 1, 0, 0, 0, 0])
        .expect("send a bad frame");
    let reply = read_until_closed(&mut spdy);
    assert!(
        reply.len() >= 16
            && reply[..4] == [0x80, 0x03, 0x00, 0x07]
            && reply[12..16] == [0, 0, 0, 1],
        "expected GOAWAY PROTOCOL_ERROR, got {reply:?}"
    );
    let deadline = Instant::now() + GUARD;
    while e.server.streaming_sessions().failed < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(e.server.streaming_sessions().failed, 2);
    // Other sessions are unaffected.
    let (code, out, err) = run(
        &e,
        Via::WebSocket,
        &["exec", POD, "--", "echo", "still fine"],
        b"",
    );
    assert_eq!((code, out.as_slice()), (0, &b"still fine\n"[..]), "{err}");
}

/// Waits until no session is open and at least `idle` ended idle (the server finishes a
/// session's closing handshake just after kubectl exits).
fn settled(e: &Env, idle: u64) -> sim_apiserver::SessionStats {
    let deadline = Instant::now() + GUARD;
    loop {
        let st = e.server.streaming_sessions();
        if (st.active == 0 && st.idle_timeouts >= idle) || Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sessions_are_bounded() {
    let e = cluster(ApiServerConfig {
        max_streaming_sessions: 1,
        ..ApiServerConfig::default()
    });
    let mut holder = Killed(
        cmd(&e, Via::WebSocket, &["exec", POD, "--", "sleep", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl runs"),
    );
    let deadline = Instant::now() + GUARD;
    while e.server.streaming_sessions().active == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // While it holds the only slot, another session is refused, over either transport.
    let (code, _, err) = run(&e, Via::WebSocket, &["exec", POD, "--", "echo", "x"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("too many streaming sessions"), "{err}");
    let stats = e.server.streaming_sessions();
    // kubectl retries a refused WebSocket upgrade over SPDY: both attempts are refused.
    assert_eq!((stats.active, stats.rejected), (1, 2), "{stats:?}");
    let _ = holder.0.kill();
    let _ = holder.0.wait();
    assert_eq!(
        settled(&e, 0).active,
        0,
        "the slot is freed when the client goes"
    );
    let (code, out, err) = run(&e, Via::WebSocket, &["exec", POD, "--", "echo", "x"], b"");
    assert_eq!((code, out.as_slice()), (0, &b"x\n"[..]), "{err}");
}

#[test]
fn idle_sessions_end() {
    let e = cluster(ApiServerConfig {
        streaming_idle_timeout: Duration::from_millis(700),
        ..ApiServerConfig::default()
    });
    // `sleep` moves no data: the idle timeout ends the session with a Status kubectl reports.
    for (via, n) in [(Via::WebSocket, 1), (Via::Spdy, 2)] {
        let (code, _, err) = run(&e, via, &["exec", POD, "--", "sleep", "30"], b"");
        assert_ne!(code, 0, "{via:?}");
        assert!(err.contains("idle"), "{via:?}: {err}");
        let stats = settled(&e, n);
        assert_eq!((stats.idle_timeouts, stats.active), (n, 0), "{via:?}");
    }
}

/// `kubectl exec -it` through a real pseudo-terminal (util-linux `script` provides it): the
/// container side echoes what is typed, prints a prompt, ends lines with CRLF.
fn terminal(via: Via) {
    let e = cluster(ApiServerConfig::default());
    let env: String = via.env().iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let cache = e.dir.path().join("cache");
    check_terminal_session(Terminal::spawn(
        &format!("{env}kubectl exec -it {POD} -- sh"),
        &[
            ("KUBECONFIG", e.kubeconfig.as_os_str()),
            ("HOME", e.dir.path().as_os_str()),
            ("KUBECACHEDIR", cache.as_os_str()),
        ],
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

/// `kubectl exec deploy/…` and `kubectl port-forward svc/…` resolve to a pod of the initial
/// cluster; the service port maps to the pods' `targetPort`.
#[test]
fn workloads_and_services_resolve_to_pods() {
    let e = env(ApiServerConfig::default());
    let (code, out, err) = run(
        &e,
        Via::WebSocket,
        &["exec", "deploy/web", "--", "hostname"],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).starts_with("web-"), "{out:?}");
    let local = free_port();
    let mut pf = Killed(
        e.command(&["port-forward", "svc/web", &format!("{local}:80")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl runs"),
    );
    let mut out = std::io::BufReader::new(pf.0.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).expect("first line");
    assert!(first.contains("-> 8080"), "{first}");
    let resp = http_get(local, "/", GUARD);
    assert!(resp.contains("hello from default/web-"), "{resp}");
}

/// An older client speaking `v4.channel.k8s.io` (no half-close): output, then the exit status
/// as a `Status` on channel 3, then a normal close.
#[test]
fn v4_channel_protocol() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::{Message, client, http::HeaderValue};
    let e = cluster(ApiServerConfig::default());
    let url = format!(
        "ws://{}/api/v1/namespaces/default/pods/{POD}/exec?command=sh&command=-c&command=echo%20out%3B%20exit%207&stdout=true&stderr=true",
        e.server.addr()
    );
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("v4.channel.k8s.io"),
    );
    let tcp = TcpStream::connect(e.server.addr()).expect("connect");
    tcp.set_read_timeout(Some(GUARD)).expect("timeout");
    let (mut ws, resp) = client(req, tcp).expect("handshake");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.as_bytes()),
        Some(&b"v4.channel.k8s.io"[..])
    );
    let mut stdout = Vec::new();
    let mut status = None;
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) if b.first() == Some(&1) => stdout.extend_from_slice(&b[1..]),
            Ok(Message::Binary(b)) if b.first() == Some(&3) => {
                status = Some(
                    serde_json::from_slice::<serde_json::Value>(&b[1..]).expect("Status JSON"),
                );
            }
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                break;
            }
            Ok(_) => {}
            Err(err) => panic!("read: {err}"),
        }
    }
    assert_eq!(stdout, b"out\n");
    let status = status.expect("a Status on the error channel");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "7");
}
