//! Benchmark of upgraded sessions through kas and a tunnel against the simulated API server directly,
//! in one run, printed as tables:
//!
//! 1. `exec` round-trip latency: one WebSocket `v5.channel.k8s.io` exec session of `cat`; a 32-octet
//!    stdin message is written and its echo on stdout awaited, `--round-trips` times (p50/p90/p99);
//! 2. `port-forward` throughput: the real `kubectl port-forward` to a pod port served by an echo
//!    server; `--megabytes` are written and read back through it;
//! 3. concurrent sessions: `--sessions` exec sessions (default 2000) opened through kas and one agent
//!    connection, each proven live by one round trip; the process's RSS before, with them open, and
//!    after they closed (kas, agentk and the simulated cluster all live in this process).
//!
//! Run: `cargo run --release -p kas --example upgrade_bench [-- --sessions 2000 --round-trips 500
//! --megabytes 64]`. Everything is bounded: each phase has a count and a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/e2e.rs"]
mod e2e;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions, kubectl_path};
use futures_lite::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

const POD: &str = "box";
/// Every phase ends within this.
const PHASE_DEADLINE: Duration = Duration::from_secs(300);

struct Args {
    sessions: usize,
    round_trips: usize,
    megabytes: usize,
}

fn args() -> Args {
    let mut a = Args {
        sessions: 2000,
        round_trips: 500,
        megabytes: 64,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--sessions", Some(v)) => a.sessions = v,
            ("--round-trips", Some(v)) => a.round_trips = v,
            ("--megabytes", Some(v)) => a.megabytes = v,
            _ => panic!("usage: upgrade_bench [--sessions N] [--round-trips N] [--megabytes N]"),
        }
    }
    a
}

/// Where exec requests go: kas's `/k8s-proxy` over HTTPS with a bearer, or the API server.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<Arc<futures_rustls::rustls::ClientConfig>>,
    prefix: &'static str,
    authorization: Option<String>,
}

/// A client connection, plain or TLS.
enum Conn {
    Plain(smol::net::TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<smol::net::TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// An exec session of `cat` over WebSocket `v5.channel.k8s.io`, after its `101`.
struct ExecSession {
    conn: Conn,
    /// Octets read past the last frame.
    buf: Vec<u8>,
}

async fn open_exec(t: &Target) -> Result<ExecSession, String> {
    let tcp = smol::net::TcpStream::connect(t.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    let mut conn = match &t.tls {
        None => Conn::Plain(tcp),
        Some(cfg) => {
            let name = tunnel_tls::server_name("localhost").map_err(|e| e.to_string())?;
            let s = futures_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            Conn::Tls(Box::new(s))
        }
    };
    let mut req = format!(
        "GET {}/api/v1/namespaces/default/pods/{POD}/exec?command=cat&stdin=true&stdout=true \
         HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n",
        t.prefix
    );
    if let Some(a) = &t.authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    conn.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: a head larger than 64 KiB is an error.
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 65536 {
            return Err("response head too large".into());
        }
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before the head: {}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no 101: {}", head.lines().next().unwrap_or("")));
    }
    buf.drain(..end);
    Ok(ExecSession { conn, buf })
}

impl ExecSession {
    /// Writes `data` to stdin (one masked binary frame) and reads until as many octets came back
    /// on stdout.
    async fn round_trip(&mut self, data: &[u8]) -> Result<(), String> {
        let mut payload = vec![0u8]; // channel 0: stdin
        payload.extend_from_slice(data);
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x82u8];
        assert!(payload.len() < 126);
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.conn
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.conn.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut got = 0;
        // Bounded by the connection: each iteration consumes a frame or more input.
        while got < data.len() {
            match self.next_frame()? {
                Some((channel, len)) => {
                    if channel == 1 {
                        got += len;
                    }
                }
                None => {
                    let mut chunk = [0u8; 4096];
                    let n = self
                        .conn
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("session closed".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        Ok(())
    }

    /// Takes one complete server frame from the buffer: (channel, data length).
    fn next_frame(&mut self) -> Result<Option<(u8, usize)>, String> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let opcode = b[0] & 0x0f;
        if opcode == 8 {
            return Err("server closed the session".into());
        }
        let channel = if len > 0 { b[at] } else { 255 };
        self.buf.drain(..at + len);
        Ok(Some((channel, len.saturating_sub(1))))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn exec_latency(t: &Target, n: usize) -> (f64, f64, f64) {
    smol::block_on(async {
        let mut s = open_exec(t).await.expect("exec session");
        let data = [b'x'; 32];
        // Warm-up.
        for _ in 0..10 {
            s.round_trip(&data).await.unwrap();
        }
        let deadline = Instant::now() + PHASE_DEADLINE;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            s.round_trip(&data).await.unwrap();
            times.push(t0.elapsed());
            assert!(Instant::now() < deadline, "latency phase over its deadline");
        }
        times.sort();
        (
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            percentile(&times, 0.99),
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// `megabytes` through `kubectl port-forward` with `kubeconfig`/`context` to an echo server; MB/s.
fn port_forward_throughput(kubeconfig: &std::path::Path, context: &str, megabytes: usize) -> f64 {
    let local = free_port();
    let mut child = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--context")
        .arg(context)
        .args([
            "port-forward",
            &format!("pod/{POD}"),
            &format!("{local}:9001"),
        ])
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    let _ = child.stdout.as_mut().unwrap().read(&mut first);
    let total = megabytes * 1024 * 1024;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    s.set_read_timeout(Some(PHASE_DEADLINE)).unwrap();
    let mut reader = s.try_clone().unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            s.write_all(&chunk[..n]).unwrap();
            sent += n;
        }
        s
    });
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < total {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "port-forward closed after {got} of {total} octets");
        got += n;
    }
    let elapsed = started.elapsed();
    drop(writer.join());
    let _ = child.kill();
    let _ = child.wait();
    megabytes as f64 / elapsed.as_secs_f64()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens `n` sessions through `t` (64 handshakes at a time), proves each live with a round trip,
/// then closes them; RSS (KiB) before, with all open, after closing, and the handshake time.
fn concurrent_sessions(t: &Target, n: usize) -> (u64, u64, u64, Duration) {
    let before = rss_kib();
    let started = Instant::now();
    let sessions = smol::block_on(async {
        let mut sessions = Vec::with_capacity(n);
        let deadline = Instant::now() + PHASE_DEADLINE;
        // Bounded: n sessions, in batches.
        while sessions.len() < n {
            let batch = (n - sessions.len()).min(64);
            let tasks: Vec<_> = (0..batch)
                .map(|_| {
                    let t = t.clone();
                    smol::spawn(async move { open_exec(&t).await })
                })
                .collect();
            for task in tasks {
                sessions.push(task.await.unwrap_or_else(|e| {
                    panic!("session {} of {n} not opened: {e}", sessions.len() + 1)
                }));
            }
            assert!(Instant::now() < deadline, "opening sessions took too long");
        }
        for s in &mut sessions {
            s.round_trip(b"live").await.unwrap();
        }
        sessions
    });
    let opened = started.elapsed();
    // Let allocations settle.
    std::thread::sleep(Duration::from_millis(500));
    let open = rss_kib();
    drop(sessions);
    std::thread::sleep(Duration::from_secs(2));
    (before, open, rss_kib(), opened)
}

fn main() {
    let a = args();
    let mut s = Stack::start(StackOptions {
        agents: vec![1],
        ..StackOptions::default()
    });
    // One connection must carry every session: raise kas's per-connection stream limit and run an
    // agentk that accepts as many streams.
    s.env.config.limits.max_streams_per_connection = (a.sessions as u32 + 64).max(256);
    let _ = s.restart_kas(Duration::from_secs(1));
    assert!(s.kas().wait_for_agents(&[1], support::GUARD));
    s.stop_agent(1);
    let cluster_kubeconfig = s.env.dir.path().join("direct.kubeconfig");
    s.cluster(1)
        .write_kubeconfig(&cluster_kubeconfig, "direct")
        .unwrap();
    let agent_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = agentk::Config::new(s.kas().agent_addr().to_string(), s.env.token(1).to_owned());
    cfg.ca = tunnel_tls::Roots::PemFile(s.ca_file.clone());
    cfg.tls_server_name = Some("localhost".into());
    cfg.kube = agentk::KubeSource::Kubeconfig {
        path: cluster_kubeconfig.clone(),
        context: None,
    };
    cfg.tunnel.settings.max_concurrent_streams = (a.sessions as u32 + 64).max(1024);
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    agent_runtime.spawn(agentk::run(cfg, async move {
        let _ = stopped.await;
    }));
    assert!(s.kas().wait_for_agents(&[1], support::GUARD));

    let cluster = s.cluster(1);
    cluster.store().add_pod("default", POD).unwrap();
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cluster
        .pod_network()
        .register("default", POD, 9001, echo.local_addr().unwrap());
    std::thread::spawn(move || {
        // Ends with the process.
        for conn in echo.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = conn.try_clone().unwrap();
                let mut w = conn;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });

    let mut tls =
        (*tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(s.ca_file.clone()), None).unwrap())
            .clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let via_kas = Target {
        addr: s.kas().api_addr(),
        tls: Some(Arc::new(tls)),
        prefix: "/k8s-proxy",
        authorization: Some(s.admin(1)),
    };
    let direct = Target {
        addr: cluster.addr(),
        tls: None,
        prefix: "",
        authorization: None,
    };
    assert!(
        cluster.url().starts_with("http://"),
        "the simulated API server serves plain HTTP"
    );

    let lat_direct = exec_latency(&direct, a.round_trips);
    let lat_kas = exec_latency(&via_kas, a.round_trips);
    let pf_direct = port_forward_throughput(&cluster_kubeconfig, "direct", a.megabytes);
    let pf_kas = port_forward_throughput(&s.kubeconfig, "agent-1", a.megabytes);
    let (before, open, after, opened) = concurrent_sessions(&via_kas, a.sessions);
    let left = support::eventually("kas to count its sessions closed", || {
        support::metric(&s.metrics(), "kas_upgraded_sessions").filter(|n| *n == 0.0)
    });

    println!(
        "\nexec round trip (32 B stdin → stdout echo, WebSocket v5, {} round trips, ms)",
        a.round_trips
    );
    println!("| path | p50 | p90 | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| direct (sim-apiserver, plain HTTP) | {:.3} | {:.3} | {:.3} |",
        lat_direct.0, lat_direct.1, lat_direct.2
    );
    println!(
        "| kas (HTTPS) → tunnel → agentk | {:.3} | {:.3} | {:.3} |",
        lat_kas.0, lat_kas.1, lat_kas.2
    );
    println!(
        "\nport-forward throughput (kubectl port-forward, {} MiB echoed, WebSocket)",
        a.megabytes
    );
    println!("| path | MiB/s |");
    println!("|---|---|");
    println!("| direct | {pf_direct:.1} |");
    println!("| kas → tunnel → agentk | {pf_kas:.1} |");
    println!(
        "\nconcurrent exec sessions through one agent connection ({} sessions; RSS of the whole \
         process: kas + agentk + simulated cluster + clients)",
        a.sessions
    );
    println!(
        "| RSS before | RSS with all open | per session | RSS after close | open + 1 round trip each | kas sessions left |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.1} MiB | {:.2} s | {left} |",
        before as f64 / 1024.0,
        open as f64 / 1024.0,
        (open.saturating_sub(before)) as f64 / a.sessions.max(1) as f64,
        after as f64 / 1024.0,
        opened.as_secs_f64()
    );
    let _ = stop_agent.send(());
    agent_runtime.shutdown_timeout(Duration::from_secs(2));
}
