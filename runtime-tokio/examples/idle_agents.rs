//! Idle agents on one kas: opens N agent connections to a real `kas` process (started here with a
//! throw-away PKI and an agents file), then prints kas's RSS per connection, the CPU kas spends on
//! keepalive while they idle, and how long kas takes to accept a reconnect storm of all of them.
//!
//! `cargo build --release -p kas --bin kas && cargo run --release -p runtime-tokio --example
//! idle_agents -- [--n N] [--agents K] [--idle-secs S] [--kas PATH] [--keepalive-secs K]`
//!
//! - Connections come from many source addresses in 127.0.0.0/8 (20,000 per address), so N is not
//!   bounded by one address's ephemeral ports; the file-descriptor limit is raised (`prlimit`) to fit
//!   N in this process and in kas.
//! - Agents: K agents (default N/100), connections spread over them round-robin.
//! - Phases: (1) connect all N, at most `--concurrency` handshakes (TLS 1.3 + HELLO + auth) in
//!   flight; (2) idle for S seconds (default: 1.5 keepalive intervals) and read kas's CPU time
//!   from /proc; (3) drop every connection at once, wait until kas holds none, and reconnect all N
//!   at once (the storm: all dials started together, `--concurrency` bounds only what this process
//!   has in flight) and time it until every one is established.
//!
//! Bounded: every phase has a deadline (connecting: 10 minutes), and N by flag.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use protocol::Config;
use runtime_core::{AgentOptions, AsyncTimer, BoxFuture, BoxIo, Listener, Runtime};

/// Connections per source address (below the 28k ephemeral ports of Linux's default range).
const PER_SOURCE: usize = 20_000;

/// The tokio runtime, dialling from a chosen loopback source address.
#[derive(Debug)]
struct FromSource(Ipv4Addr);

impl Runtime for FromSource {
    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }

    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        runtime_tokio::Tokio.new_timer(at)
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<std::io::Result<BoxIo>> {
        let source = self.0;
        Box::pin(async move {
            let to: IpAddr = host.parse().map_err(std::io::Error::other)?;
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
            let tcp = socket.connect(SocketAddr::new(to, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(runtime_tokio::Tcp(tcp)) as BoxIo)
        })
    }

    fn listen(&self, listener: std::net::TcpListener) -> std::io::Result<Box<dyn Listener>> {
        runtime_tokio::Tokio.listen(listener)
    }
}

struct Args {
    n: usize,
    agents: usize,
    idle: Option<Duration>,
    keepalive: u64,
    kas: PathBuf,
    concurrency: usize,
}

fn args() -> Result<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let n: usize = get("--n").map_or(Ok(10_000), |v| v.parse())?;
    let exe = std::env::current_exe()?;
    let default_kas = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("kas"))
        .context("no kas path")?;
    Ok(Args {
        n,
        agents: get("--agents").map_or(Ok((n / 100).max(1)), |v| v.parse())?,
        idle: get("--idle-secs")
            .map(|v| v.parse().map(Duration::from_secs))
            .transpose()?,
        keepalive: get("--keepalive-secs").map_or(Ok(20), |v| v.parse())?,
        kas: get("--kas").map_or(default_kas, PathBuf::from),
        concurrency: get("--concurrency").map_or(Ok(256), |v| v.parse())?,
    })
}

/// (RSS KiB, CPU seconds user+system) of a process.
fn usage(pid: u32) -> Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) end with ')'.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok((rss, ticks / 100.0))
}

struct Kas {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile_dir::Dir,
}

impl Drop for Kas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop (no extra dependency for one directory).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts kas with `agents` agents; returns it and their tokens.
fn start_kas(a: &Args) -> Result<(Kas, Vec<String>, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("idle-agents-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let guard = tempfile_dir::Dir(dir.clone());
    let pki = tunnel_tls::ThrowawayPki::generate()?;
    let files = pki.write_pem_files(&dir)?;
    let tokens: Vec<String> = (0..a.agents)
        .map(|i| format!("idle-agent-token-{i}-{:016x}", std::process::id()))
        .collect();
    // Digests with coreutils' sha256sum (one call for all of them).
    let token_dir = dir.join("tokens");
    std::fs::create_dir_all(&token_dir)?;
    let paths: Vec<PathBuf> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = token_dir.join(format!("{i}"));
            std::fs::write(&p, t).map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let mut digests = Vec::with_capacity(a.agents);
    for chunk in paths.chunks(1000) {
        let out = Command::new("sha256sum").args(chunk).output()?;
        if !out.status.success() {
            bail!("sha256sum failed");
        }
        digests.extend(
            String::from_utf8(out.stdout)?
                .lines()
                .map(|l| l.split_whitespace().next().unwrap_or("").to_owned()),
        );
    }
    let mut agents = String::from("agents:\n");
    for (i, d) in digests.iter().enumerate() {
        agents.push_str(&format!(
            "  - id: {}\n    name: idle-{}\n    token_sha256: {d}\n",
            i + 1,
            i + 1
        ));
    }
    std::fs::write(dir.join("agents.yaml"), agents)?;
    std::fs::write(dir.join("users.yaml"), "users: []\n")?;
    let port = free_port()?;
    let api = free_port()?;
    let k = a.keepalive;
    std::fs::write(
        dir.join("kas.yaml"),
        format!(
            "state_dir: {d}\nagent_listener:\n  address: 127.0.0.1:{port}\n  tls: {{ cert_file: {c}, key_file: {k_} }}\n  backlog: 65535\napi_listener:\n  address: 127.0.0.1:{api}\nagent_auth:\n  backend: embedded\nusers:\n  file: {d}/users.yaml\nkeepalive: {{ interval: {k}s, idle_timeout: {t}s, handshake_timeout: 60s }}\nlog: {{ level: error }}\n",
            d = dir.display(),
            c = files.server_cert.display(),
            k_ = files.server_key.display(),
            t = k * 3,
        ),
    )?;
    let child = Command::new(&a.kas)
        .arg("--config")
        .arg(dir.join("kas.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", a.kas.display()))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("kas did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((
        Kas {
            child,
            addr,
            _dir: guard,
        },
        tokens,
        files.ca,
    ))
}

/// Raises this process's open-file limit (kas, started after, inherits it); where that is not
/// permitted (a container without CAP_SYS_RESOURCE), the current limit must already fit N.
fn raise_nofile(n: usize) -> Result<()> {
    let want = n + 1024;
    let raised = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={want}:{want}"))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if raised {
        return Ok(());
    }
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if soft < want {
        bail!(
            "the open-file limit is {soft} and cannot be raised to {want}: use --n {}",
            soft.saturating_sub(1024)
        );
    }
    Ok(())
}

/// Opens N connections (at most `concurrency` handshakes at once); returns them and the time taken.
async fn connect_all(
    a: &Args,
    addr: SocketAddr,
    tokens: &[String],
    tls: Arc<rustls::ClientConfig>,
    concurrency: usize,
) -> Result<(Vec<runtime_tokio::Connection>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(a.n) {
        let (next, tls, tokens) = (next.clone(), tls.clone(), tokens.to_vec());
        let n = a.n;
        workers.push(tokio::spawn(async move {
            let mut held = Vec::new();
            // Bounded by N: each iteration takes the next index.
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let source = Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(127, 0, 0, 2)) + (i / PER_SOURCE) as u32,
                );
                let opts = AgentOptions {
                    token: tokens[i % tokens.len()].clone(),
                    meta: Default::default(),
                    config: Config::default(),
                };
                let mut attempt = 0;
                let conn = loop {
                    let rt: Arc<dyn Runtime> = Arc::new(FromSource(source));
                    match runtime_core::connect_agent(
                        rt,
                        addr,
                        tls.clone(),
                        tunnel_tls::server_name("localhost")?,
                        opts.clone(),
                    )
                    .await
                    {
                        Ok((c, _)) => break c,
                        Err(e) if attempt < 5 => {
                            attempt += 1;
                            log_retry(&format!("connection {i}: {e}; retrying"));
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(e) => {
                            return Err(anyhow::Error::from(e).context(format!("connection {i}")));
                        }
                    }
                };
                held.push(conn);
            }
            anyhow::Ok(held)
        }));
    }
    let mut held = Vec::with_capacity(a.n);
    for w in workers {
        held.extend(
            tokio::time::timeout(Duration::from_secs(600), w)
                .await
                .context("connecting took over 10 minutes")???,
        );
    }
    Ok((held, start.elapsed()))
}

/// Retries are rare; printing the first few is enough.
fn log_retry(line: &str) {
    static SHOWN: AtomicUsize = AtomicUsize::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("{line}");
    }
}

fn main() -> Result<()> {
    let a = args()?;
    raise_nofile(a.n)?;
    let (kas, tokens, ca) = start_kas(&a)?;
    let pid = kas.child.id();
    let tls = tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(ca), None)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss0, _) = usage(pid)?;
        let (conns, first) = connect_all(&a, kas.addr, &tokens, tls.clone(), a.concurrency).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (rss1, cpu1) = usage(pid)?;
        let idle = a.idle.unwrap_or(Duration::from_secs(a.keepalive * 3 / 2));
        tokio::time::sleep(idle).await;
        let (rss2, cpu2) = usage(pid)?;
        let closed = conns.iter().filter(|c| c.is_closed()).count();
        if closed > 0 {
            bail!("{closed} of {} connections closed while idle", a.n);
        }
        // The storm: every connection drops at once, then all reconnect together.
        drop(conns);
        // kas's RSS does not say when it let go; give its drivers time to see every close.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (conns, storm) = connect_all(&a, kas.addr, &tokens, tls, a.n.min(4096)).await?;
        let (rss3, _) = usage(pid)?;
        let n = a.n as f64;
        let cpu = cpu2 - cpu1;
        println!(
            "idle agents on one kas ({} agents, {} connections from {} loopback source addresses, keepalive every {} s)",
            a.agents,
            a.n,
            a.n.div_ceil(PER_SOURCE),
            a.keepalive
        );
        println!("  kas RSS before                     {:>10.1} MiB", rss0 as f64 / 1024.0);
        println!(
            "  kas RSS with N idle                {:>10.1} MiB  ({:.1} KiB per connection)",
            rss1 as f64 / 1024.0,
            (rss1.saturating_sub(rss0)) as f64 / n
        );
        println!(
            "  kas RSS after {:>3.0} s idle           {:>10.1} MiB",
            idle.as_secs_f64(),
            rss2 as f64 / 1024.0
        );
        println!(
            "  kas CPU while idle                 {:>10.3} s over {:.0} s = {:.2}% of one core ({:.1} µs per connection per keepalive interval)",
            cpu,
            idle.as_secs_f64(),
            100.0 * cpu / idle.as_secs_f64(),
            cpu * 1e6 / n / (idle.as_secs_f64() / a.keepalive as f64)
        );
        println!(
            "  first connect, {} at once          {:>10.2} s  ({:.0} connections/s)",
            a.concurrency,
            first.as_secs_f64(),
            n / first.as_secs_f64()
        );
        println!(
            "  reconnect storm, all at once       {:>10.2} s  ({:.0} connections/s; kas RSS after {:.1} MiB)",
            storm.as_secs_f64(),
            n / storm.as_secs_f64(),
            rss3 as f64 / 1024.0
        );
        drop(conns);
        anyhow::Ok(())
    })
}
