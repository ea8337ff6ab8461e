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
#[path = "../tests/support/upgrade_client.rs"]
mod upgrade_client;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions, kubectl_path};
use upgrade_client::{POD, Target, open_exec};
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

    let via_kas = upgrade_client::via_kas(&s);
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
