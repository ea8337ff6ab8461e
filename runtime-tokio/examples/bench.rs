//! Tunnel benchmark on loopback with TLS 1.3, printing one table.
//!
//! `cargo run --release -p runtime-tokio --example bench [-- --idle N] [-- --smol]`
//!
//! Phases (each bounded to a few seconds):
//! - idle connections: a child process (this binary, `--idle-clients`) opens N agent connections to a
//!   server in this process; server-side RSS delta / N, and connections accepted per second;
//! - bulk throughput agent → server over 1 stream and over 64 concurrent streams of one tunnel
//!   connection (zero-copy `write_chunk`/`read_chunk`, as agentk and kas move bodies), next to raw
//!   rustls over TCP (one TLS connection, no tunnel) in the same run;
//! - round-trip latency of a 64-octet request / 64-octet response, one new stream per request
//!   (server → agent, as kas calls into the cluster), next to a ping-pong on a raw TLS connection;
//! - the same tunnel over `wss://` next to `tls://`, and both through a real HTTP CONNECT proxy
//!   (`tinyproxy` from Debian, started here on loopback; skipped with a line saying why when it is
//!   not installed) next to direct.
//!
//! The main table (bulk and round trip, tunnel vs raw TLS) alternates its measurements `BENCH_ROUNDS`
//! times (default 7, each `BENCH_PHASE_MS` long, default 1500) and prints medians, each ratio being
//! the median of the rounds' own ratios (a round's two figures share the load of that moment), with
//! their range; the transport and proxy tables report the best of 3. `--core` prints the main table
//! only; `BENCH_ONLY=raw|bulk1|bulk64|rtt|rawrtt` runs one of its parts alone (for a profiler).
//!
//! `BENCH_FRAME_KIB`, `BENCH_STREAM_WINDOW_KIB`, `BENCH_CONN_WINDOW_KIB` override the tunnel's
//! `protocol::Config` (default: 16 KiB frames, 1 MiB stream and 16 MiB connection windows).
//!
//! With `--smol`, the tunnel rows run on `runtime-smol` (both ends) instead of `runtime-tokio`; the raw
//! TLS baseline stays on tokio. Set `SMOL_THREADS=2` to give smol's executor both cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::proto::{Reject, RequestHead, ResponseHead, Trailer};
use protocol::{Config, HelloInfo};
use runtime_core::transport::Scheme;
use runtime_core::{Accepted, AgentOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Length of one measurement (`BENCH_PHASE_MS`, default 1500).
fn phase() -> Duration {
    Duration::from_millis(env_u64("BENCH_PHASE_MS").unwrap_or(1500))
}

/// Rounds of the main table (`BENCH_ROUNDS`, default 7): its figures are medians over the rounds.
fn rounds() -> usize {
    env_u64("BENCH_ROUNDS").map_or(7, |n| n.max(1) as usize)
}

/// Rounds of the transport and proxy tables; the best of each kind is reported.
const ROUNDS: usize = 3;

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.parse().ok())
}
const CHUNK: usize = 256 * 1024;
const SMALL: usize = 64;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn authenticate(_h: HelloInfo, _p: SocketAddr) -> Result<Accepted, Reject> {
    Ok(Accepted {
        agent_id: 1,
        connection_id: "bench".into(),
    })
}

/// The tunnel configuration: defaults, or with `--tuned` larger frames and windows.
fn config() -> Config {
    let mut c = Config::default();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    if let Some(v) = env("BENCH_MAX_TRANSMIT_KIB") {
        c.max_transmit = v as usize * 1024;
    }
    if let Some(v) = env("BENCH_FRAME_KIB") {
        c.settings.max_frame_size = v * 1024;
    }
    if let Some(v) = env("BENCH_STREAM_WINDOW_KIB") {
        c.settings.initial_stream_window = v * 1024;
    }
    if let Some(v) = env("BENCH_CONN_WINDOW_KIB") {
        c.settings.initial_connection_window = v * 1024;
    }
    c
}

fn opts() -> AgentOptions {
    AgentOptions {
        token: "bench".into(),
        meta: Default::default(),
        config: config(),
    }
}

fn head(path: &str) -> RequestHead {
    RequestHead {
        service: "bench".into(),
        method: "POST".into(),
        path: path.into(),
        ..RequestHead::default()
    }
}

struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    ca_pem: String,
}

fn tls() -> Result<Tls> {
    let pki = tunnel_tls::ThrowawayPki::generate()?;
    Ok(Tls {
        server: tunnel_tls::server_config_with(pki.server.identity()?, None)?,
        client: tunnel_tls::client_config(&pki.roots(), None)?,
        ca_pem: pki.ca_pem().to_owned(),
    })
}

/// User + system CPU time of this process so far, in seconds (clock ticks of 10 ms).
fn cpu_s() -> f64 {
    cpu_s_of("self")
}

/// User + system CPU time of process `pid` (`self` or a number) so far, in seconds.
fn cpu_s_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// One bulk measurement: throughput and CPU seconds per GiB moved.
#[derive(Debug, Clone, Copy, Default)]
struct Bulk {
    mib_s: f64,
    cpu_per_gib: f64,
}

impl Bulk {
    /// The faster of two measurements of the same thing.
    fn better(self, other: Bulk) -> Bulk {
        if other.mib_s > self.mib_s {
            other
        } else {
            self
        }
    }
}

/// One measurement of `f`.
async fn sample<F: std::future::Future<Output = Result<(u64, Duration)>>>(f: F) -> Result<Bulk> {
    let mut b = Bulk::default();
    measure(f, &mut b).await?;
    Ok(b)
}

async fn measure<F: std::future::Future<Output = Result<(u64, Duration)>>>(
    f: F,
    best: &mut Bulk,
) -> Result<()> {
    measure_with(f, best, None).await
}

/// [`measure`], counting the CPU time of process `also` (the proxy) too.
async fn measure_with<F: std::future::Future<Output = Result<(u64, Duration)>>>(
    f: F,
    best: &mut Bulk,
    also: Option<u32>,
) -> Result<()> {
    let cpu_now = || cpu_s() + also.map_or(0.0, |pid| cpu_s_of(&pid.to_string()));
    let c0 = cpu_now();
    let (bytes, elapsed) = f.await?;
    let cpu = cpu_now() - c0;
    let b = Bulk {
        mib_s: mib_s(bytes, elapsed),
        cpu_per_gib: cpu / (bytes as f64 / f64::from(1u32 << 30)),
    };
    if b.mib_s > best.mib_s {
        *best = b;
    }
    Ok(())
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1024.0 * 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ------------------------------------------------------------------------------------ raw TLS

/// Bulk over one raw TLS connection: the client writes for PHASE, the server counts to EOF and
/// answers with the count. Returns (bytes, elapsed until the count arrived).
async fn raw_bulk(t: &Tls) -> Result<(u64, Duration)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(t.server.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let mut s = acceptor.accept(tcp).await?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        s.write_all(&n.to_be_bytes()).await?;
        s.shutdown().await?;
        anyhow::Ok(())
    });
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = TlsConnector::from(t.client.clone())
        .connect(tunnel_tls::server_name("localhost")?, tcp)
        .await?;
    let chunk = vec![7u8; CHUNK];
    let start = Instant::now();
    while start.elapsed() < phase() {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    let elapsed = start.elapsed();
    server.await??;
    Ok((u64::from_be_bytes(count), elapsed))
}

/// Ping-pong of SMALL octets on one raw TLS connection.
async fn raw_latency(t: &Tls, phase: Duration) -> Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(t.server.clone());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let mut s = acceptor.accept(tcp).await?;
        let mut buf = [0u8; SMALL];
        while s.read_exact(&mut buf).await.is_ok() {
            s.write_all(&buf).await?;
            // tokio-rustls may keep records it could not write yet until a flush: without it, a
            // reply can sit in the buffer forever (the bench used to hang now and then)
            s.flush().await?;
        }
        anyhow::Ok(())
    });
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = TlsConnector::from(t.client.clone())
        .connect(tunnel_tls::server_name("localhost")?, tcp)
        .await?;
    let mut rtts = Vec::new();
    let msg = [1u8; SMALL];
    let mut buf = [0u8; SMALL];
    let start = Instant::now();
    while start.elapsed() < phase && rtts.len() < 200_000 {
        let t0 = Instant::now();
        s.write_all(&msg).await?;
        s.flush().await?;
        s.read_exact(&mut buf).await?;
        rtts.push(t0.elapsed());
    }
    rtts.sort();
    Ok(rtts)
}

// ------------------------------------------------------------------------------------- tunnel

/// The tunnel rows, written once: the runtime (tokio or smol, both ends) is a value.
mod tunnel {
    use super::*;
    // by name: shadows the tokio extension traits `super::*` brings (the stream type has both)
    use runtime_core::{Connection, Runtime, Server};
    use smol::io::{AsyncReadExt, AsyncWriteExt};

    /// Runs `f` on `rt`; its output arrives through the returned channel.
    fn spawn<T: Send + 'static>(
        rt: &Arc<dyn Runtime>,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        rt.spawn(Box::pin(async move {
            let _ = tx.send(f.await);
        }));
        rx
    }

    pub fn server(rt: &Arc<dyn Runtime>, t: &Tls) -> Result<Server> {
        Ok(Server::bind(
            rt.clone(),
            "127.0.0.1:0".parse()?,
            Some(t.server.clone()),
            config(),
            authenticate,
        )?)
    }

    /// An agent connected to a fresh server over `scheme` (`Tls`: the tunnel straight over TLS;
    /// `Wss`: in a WebSocket over TLS, runtime-core's transport, which the server tells from the
    /// tunnel preface by its request head), through `proxy` (HTTP CONNECT) if given.
    pub async fn pair(
        rt: &Arc<dyn Runtime>,
        t: &Tls,
        scheme: runtime_core::transport::Scheme,
        proxy: Option<runtime_core::transport::ProxyConfig>,
    ) -> Result<(Server, Connection, Connection)> {
        let server = server(rt, t)?;
        let mut endpoint =
            runtime_core::transport::Endpoint::tls("127.0.0.1", server.local_addr().port());
        endpoint.scheme = scheme;
        endpoint.proxy = proxy;
        let (agent, _) = runtime_core::connect_agent_to(
            rt.clone(),
            &endpoint,
            t.client.clone(),
            tunnel_tls::server_name("localhost")?,
            opts(),
        )
        .await?;
        let kas = server.accept().await?.connection;
        Ok((server, agent, kas))
    }

    /// Server side of bulk: every stream is read to EOF and answered with a trailer holding the count.
    pub fn sink(rt: &Arc<dyn Runtime>, kas: Connection) {
        let rt2 = rt.clone();
        drop(spawn(rt, async move {
            while let Some((_, s)) = kas.accept_stream().await {
                drop(spawn(&rt2, async move {
                    // Zero-copy reads, as kas reads response bodies.
                    let mut n = 0u64;
                    while let Some(Ok(chunk)) = s.read_chunk(CHUNK).await {
                        n += chunk.len() as u64;
                    }
                    let _ = s.respond(
                        ResponseHead {
                            status: 200,
                            headers: vec![],
                        },
                        false,
                    );
                    let _ = s.send_trailer(Trailer {
                        code: 0,
                        message: n.to_string(),
                        headers: vec![],
                    });
                }));
            }
        }));
    }

    pub async fn bulk(
        rt: &Arc<dyn Runtime>,
        agent: &Connection,
        streams: usize,
    ) -> Result<(u64, Duration)> {
        // One body buffer shared by every stream (zero-copy slices of it), as the raw TLS
        // baseline writes one buffer over and over: 64 buffers of their own would make the
        // streams' encryption read 16 MiB out of cache.
        let body = bytes::Bytes::from(vec![7u8; CHUNK]);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let mut s = agent.open(head("/bulk"), false)?;
            let chunk = body.clone();
            tasks.push(spawn(rt, async move {
                // Zero-copy writes, as agentk writes upstream response bodies.
                while start.elapsed() < phase() {
                    s.write_chunk(chunk.clone()).await?;
                }
                s.close().await?;
                let t = s.trailer().await?.context("no trailer")?;
                anyhow::Ok(t.message.parse::<u64>()?)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        Ok((total, start.elapsed()))
    }

    /// Agent side of latency: answer each stream's SMALL request with SMALL octets.
    pub fn responder(rt: &Arc<dyn Runtime>, agent: Connection) {
        let rt2 = rt.clone();
        drop(spawn(rt, async move {
            while let Some((_, mut s)) = agent.accept_stream().await {
                // A plain spawn, as agentk spawns a task per stream: no result channel per request
                // (`spawn` above makes one), which the raw TLS echo has no equivalent of.
                let answer = async move {
                    // Read to the end into a buffer on the stack, as the raw TLS echo reads into
                    // one (a `Vec` grown by `read_to_end` allocated two or three times a request).
                    let mut req = [0u8; 2 * SMALL];
                    let mut n = 0;
                    loop {
                        let k = s.read(&mut req[n..]).await?;
                        if k == 0 {
                            break;
                        }
                        n += k;
                        if n == req.len() {
                            bail!("request longer than expected");
                        }
                    }
                    let req = &req[..n];
                    s.respond(
                        ResponseHead {
                            status: 200,
                            headers: vec![],
                        },
                        false,
                    )?;
                    s.write_all(req).await?;
                    s.close().await?;
                    anyhow::Ok(())
                };
                runtime_core::runtime::spawn(&*rt2, async move {
                    if let Err(e) = answer.await {
                        eprintln!("bench responder: {e:#}");
                    }
                });
            }
        }));
    }

    pub async fn latency(kas: &Connection, phase: Duration) -> Result<Vec<Duration>> {
        let mut rtts = Vec::new();
        let msg = [1u8; SMALL];
        // One answer buffer for every round trip, as the raw TLS ping-pong reuses one; room to
        // spare so that `read_to_end` sees the end without growing it.
        let mut got = Vec::with_capacity(2 * SMALL);
        let start = Instant::now();
        while start.elapsed() < phase && rtts.len() < 200_000 {
            let t0 = Instant::now();
            let mut s = kas.open(head("/rtt"), false)?;
            s.write_all(&msg).await?;
            s.close().await?;
            s.response().await?;
            got.clear();
            s.read_to_end(&mut got).await?;
            rtts.push(t0.elapsed());
        }
        rtts.sort();
        Ok(rtts)
    }
}

// ---------------------------------------------------------------------------------- proxy path

/// A real HTTP CONNECT proxy: `tinyproxy` in the foreground on 127.0.0.1, with a generated
/// configuration (as kas/tests/transports.rs starts it); killed on drop.
struct Tinyproxy {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Tinyproxy {
    /// Starts it, or says why not (not installed, did not listen within 5 s).
    async fn start() -> Result<Tinyproxy> {
        let program = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join("tinyproxy"))
            .find(|p| p.exists())
            .context("tinyproxy is not installed (apt-get install tinyproxy)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("bench-tinyproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 16\nLogLevel Warning\n\
                 LogFile \"{}\"\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
                dir.join("tinyproxy.log").display()
            ),
        )?;
        let child = std::process::Command::new(program)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&dir);
            })
            .context("starting tinyproxy")?;
        let proxy = Tinyproxy { child, port, dir };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(proxy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("tinyproxy did not listen on 127.0.0.1:{port} within 5 s")
    }

    fn config(&self) -> Result<runtime_core::transport::ProxyConfig> {
        Ok(runtime_core::transport::ProxyConfig::parse(&format!(
            "http://127.0.0.1:{}",
            self.port
        ))?)
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The proxy rows: bulk and round trip through the proxy, and direct again in the same rounds.
struct ProxyRows {
    tls: [Bulk; 2],
    tls_direct: Bulk,
    tls_rtt: Vec<Duration>,
    wss: [Bulk; 2],
    wss_direct: Bulk,
    wss_rtt: Vec<Duration>,
}

async fn proxy_phase(
    rt: &Arc<dyn runtime_core::Runtime>,
    t: &Tls,
    direct: [&runtime_core::Connection; 2],
) -> Result<ProxyRows> {
    let proxy = Tinyproxy::start().await?;
    let pid = Some(proxy.child.id());
    let mut rows = ProxyRows {
        tls: Default::default(),
        tls_direct: Bulk::default(),
        tls_rtt: Vec::new(),
        wss: Default::default(),
        wss_direct: Bulk::default(),
        wss_rtt: Vec::new(),
    };
    let (_s1, tls_agent, tls_kas) = tunnel::pair(rt, t, Scheme::Tls, Some(proxy.config()?)).await?;
    let (_s2, wss_agent, wss_kas) = tunnel::pair(rt, t, Scheme::Wss, Some(proxy.config()?)).await?;
    for (agent, kas) in [(&tls_agent, &tls_kas), (&wss_agent, &wss_kas)] {
        tunnel::sink(rt, kas.clone());
        tunnel::responder(rt, agent.clone());
    }
    for _ in 0..ROUNDS {
        measure(tunnel::bulk(rt, direct[0], 1), &mut rows.tls_direct).await?;
        measure_with(tunnel::bulk(rt, &tls_agent, 1), &mut rows.tls[0], pid).await?;
        measure_with(tunnel::bulk(rt, &tls_agent, 64), &mut rows.tls[1], pid).await?;
        measure(tunnel::bulk(rt, direct[1], 1), &mut rows.wss_direct).await?;
        measure_with(tunnel::bulk(rt, &wss_agent, 1), &mut rows.wss[0], pid).await?;
        measure_with(tunnel::bulk(rt, &wss_agent, 64), &mut rows.wss[1], pid).await?;
    }
    rows.tls_rtt = tunnel::latency(&tls_kas, phase()).await?;
    rows.wss_rtt = tunnel::latency(&wss_kas, phase()).await?;
    Ok(rows)
}

// ---------------------------------------------------------------------------- idle connections

/// Child process: opens `n` agent connections to `addr` (32 handshakes in flight), reports "ready",
/// holds them until stdin closes.
fn idle_clients(addr: SocketAddr, n: usize) -> Result<()> {
    let ca = std::env::var("BENCH_CA_PEM").context("BENCH_CA_PEM")?;
    let client = tunnel_tls::client_config(&tunnel_tls::Roots::Pem(ca.into_bytes()), None)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let next = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..32 {
            let (client, next) = (client.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut held = Vec::new();
                while (next.fetch_add(1, Ordering::SeqCst) as usize) < n {
                    let (c, _) = runtime_tokio::connect_agent(
                        addr,
                        client.clone(),
                        tunnel_tls::server_name("localhost")?,
                        opts(),
                    )
                    .await?;
                    held.push(c);
                }
                anyhow::Ok(held)
            }));
        }
        let mut held = Vec::new();
        for w in workers {
            held.extend(w.await??);
        }
        println!("ready {}", held.len());
        let mut line = String::new();
        let _ = tokio::io::BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await;
        drop(held);
        anyhow::Ok(())
    })
}

struct Idle {
    n: usize,
    kib_per_conn: f64,
    accepts_per_s: f64,
}

async fn idle_phase(rt: &Arc<dyn runtime_core::Runtime>, t: &Tls, n: usize) -> Result<Idle> {
    let server = tunnel::server(rt, t)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--idle-clients")
        .arg(server.local_addr().to_string())
        .arg(n.to_string())
        .env("BENCH_CA_PEM", &t.ca_pem)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let deadline = Duration::from_secs(120);
    while conns.len() < n {
        match tokio::time::timeout(deadline, server.accept()).await {
            Ok(c) => conns.push(c?.connection),
            Err(_) => bail!("only {} of {n} connections in {deadline:?}", conns.len()),
        }
    }
    let accept_time = start.elapsed();
    let mut out = tokio::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).await?;
    if !line.starts_with("ready") {
        bail!("child said {line:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib();
    drop(child.stdin.take());
    let _ = child.wait().await;
    // Let every connection notice the end before the next phase starts.
    for _ in 0..300 {
        if conns.iter().all(runtime_core::Connection::is_closed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Idle {
        n,
        kib_per_conn: after.saturating_sub(before) as f64 / n as f64,
        accepts_per_s: n as f64 / accept_time.as_secs_f64(),
    })
}

// ----------------------------------------------------------------------------------------- main

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One row of the main table: the medians of `a` and `b` over the rounds, the median of the
/// rounds' ratios `a_i / b_i`, and the smallest and largest of those ratios.
fn median_row(name: &str, a: &[f64], b: &[f64], decimals: usize) {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| {
            (l.min(*r), h.max(*r))
        });
    println!(
        "{name:<44} {:>12.decimals$} {:>12.decimals$} {:>6.2}x  {lo:.2}–{hi:.2}",
        median(a.to_vec()),
        median(b.to_vec()),
        median(ratios),
    );
}

/// The main table: tunnel vs raw TLS, bulk throughput and CPU per GiB, round trip; every figure a
/// median over `rounds` alternating rounds (`bulk` = raw, 1 stream, 64 streams).
fn print_main_table(
    use_smol: bool,
    rounds: usize,
    bulk: [&[Bulk]; 3],
    tun_rtts: &[Vec<Duration>],
    raw_rtts: &[Vec<Duration>],
) {
    let runtime = if use_smol {
        "runtime-smol"
    } else {
        "runtime-tokio"
    };
    let c = config();
    println!(
        "agent tunnel benchmark ({runtime}, frames {} KiB, windows {} KiB/stream {} KiB/connection; \
         loopback, TLS 1.3, rustls/ring, same TLS configurations, TCP_NODELAY both; release)",
        c.settings.max_frame_size / 1024,
        c.settings.initial_stream_window / 1024,
        c.settings.initial_connection_window / 1024
    );
    println!(
        "{:<44} {:>12} {:>12} {:>7}  ratio range",
        format!("measure (median of {rounds} alternating rounds)"),
        "tunnel",
        "raw TLS",
        "ratio"
    );
    let [raw, t1, t64] = bulk;
    let f = |v: &[Bulk], g: fn(&Bulk) -> f64| v.iter().map(g).collect::<Vec<f64>>();
    for (name, t) in [("1 stream", t1), ("64 streams on 1 connection", t64)] {
        median_row(
            &format!("bulk, {name} (MiB/s)"),
            &f(t, |b| b.mib_s),
            &f(raw, |b| b.mib_s),
            0,
        );
    }
    for (name, t) in [("1 stream", t1), ("64 streams", t64)] {
        median_row(
            &format!("CPU s per GiB, {name} (both ends)"),
            &f(t, |b| b.cpu_per_gib),
            &f(raw, |b| b.cpu_per_gib),
            2,
        );
    }
    let us = |v: &[Vec<Duration>], p: f64| -> Vec<f64> {
        v.iter()
            .map(|r| percentile(r, p).as_secs_f64() * 1e6)
            .collect()
    };
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        median_row(
            &format!("round trip 64 B / 64 B, {name} (µs)"),
            &us(tun_rtts, p),
            &us(raw_rtts, p),
            1,
        );
    }
    let n = |v: &[Vec<Duration>]| v.iter().map(Vec::len).sum::<usize>();
    println!(
        "{:<44} {:>12} {:>12}",
        "round trips measured",
        n(tun_rtts),
        n(raw_rtts)
    );
}

/// One table row: `a`, `b` with `decimals`, and `a / b`.
fn ratio_row(name: &str, a: f64, b: f64, decimals: usize) {
    println!(
        "{name:<44} {a:>12.decimals$} {b:>12.decimals$} {:>6.2}x",
        a / b
    );
}

/// The round-trip rows (p50, p99 in µs) of `a` next to `b`.
fn rtt_rows(a: &[Duration], b: &[Duration]) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        ratio_row(
            &format!("round trip 64 B / 64 B, {name} (µs)"),
            us(percentile(a, p)),
            us(percentile(b, p)),
            1,
        );
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--idle-clients") {
        let addr = args.get(2).context("addr")?.parse()?;
        let n = args.get(3).context("n")?.parse()?;
        return idle_clients(addr, n);
    }
    let use_smol = args.iter().any(|a| a == "--smol");
    // only the main table (tunnel vs raw TLS): no wss://, proxy or idle rows
    let core_only = args.iter().any(|a| a == "--core");
    let idle_n = args
        .iter()
        .position(|a| a == "--idle")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Everything runs in a task on the runtime's workers, as kas's and agentk's request handlers do:
    // a loop in `block_on` itself would wake (and be woken by) the workers across threads on every
    // step, which no real caller pays.
    rt.block_on(async move {
        tokio::spawn(async move {
            let t = tls()?;
            let tunnel_rt = if use_smol {
                runtime_smol::runtime()
            } else {
                runtime_tokio::runtime()
            };
            let idle = if idle_n > 0 && !core_only {
                idle_phase(&tunnel_rt, &t, idle_n).await
            } else {
                Err(anyhow::anyhow!("skipped (--idle 0)"))
            };

            // The main table: raw TLS and the tunnel measured alternately, `rounds` times; each figure
            // is the median over the rounds and each ratio the median of the rounds' ratios (a round's
            // two figures share the machine's load of that moment).
            let rounds = rounds();
            let (mut raw_s, mut t1_s, mut t64_s) = (Vec::new(), Vec::new(), Vec::new());
            let (_server, agent, kas) = tunnel::pair(&tunnel_rt, &t, Scheme::Tls, None).await?;
            tunnel::sink(&tunnel_rt, kas.clone());
            tunnel::responder(&tunnel_rt, agent.clone());
            // `BENCH_ONLY=raw|bulk1|bulk64|rtt|rawrtt`: run that part alone (for a profiler)
            let only = std::env::var("BENCH_ONLY").ok();
            let part = |p: &str| only.as_deref().is_none_or(|o| o == p);
            for _ in 0..rounds {
                if part("raw") {
                    raw_s.push(sample(raw_bulk(&t)).await?);
                }
                if part("bulk1") {
                    t1_s.push(sample(tunnel::bulk(&tunnel_rt, &agent, 1)).await?);
                }
                if part("bulk64") {
                    t64_s.push(sample(tunnel::bulk(&tunnel_rt, &agent, 64)).await?);
                }
            }
            let (mut tun_rtts, mut raw_rtts) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                if part("rtt") {
                    tun_rtts.push(tunnel::latency(&kas, phase() / 2).await?);
                }
                if part("rawrtt") {
                    raw_rtts.push(raw_latency(&t, phase() / 2).await?);
                }
            }
            if only.is_some() {
                for (name, v) in [("raw", &raw_s), ("bulk1", &t1_s), ("bulk64", &t64_s)] {
                    for b in v.iter() {
                        println!(
                            "{name}: {:.0} MiB/s, {:.2} CPU s/GiB",
                            b.mib_s, b.cpu_per_gib
                        );
                    }
                }
                for (name, v) in [("rtt", &tun_rtts), ("rawrtt", &raw_rtts)] {
                    for r in v.iter() {
                        let p50 = percentile(r, 0.5).as_secs_f64() * 1e6;
                        println!("{name}: {} round trips, p50 {p50:.1} µs", r.len());
                    }
                }
                return anyhow::Ok(());
            }
            print_main_table(
                use_smol,
                rounds,
                [&raw_s, &t1_s, &t64_s],
                &tun_rtts,
                &raw_rtts,
            );
            if core_only {
                return anyhow::Ok(());
            }
            let best = |v: &[Bulk]| v.iter().fold(Bulk::default(), |a, b| a.better(*b));
            let (mut t1, t64) = (best(&t1_s), best(&t64_s));
            let mut tun_rtt = tun_rtts.concat();
            tun_rtt.sort();
            // The WebSocket transport (wss://) in the same run, next to the tls:// rows above.
            let (mut w1, mut w64) = (Bulk::default(), Bulk::default());
            let (_ws_server, ws_agent, ws_kas) =
                tunnel::pair(&tunnel_rt, &t, Scheme::Wss, None).await?;
            tunnel::sink(&tunnel_rt, ws_kas.clone());
            tunnel::responder(&tunnel_rt, ws_agent.clone());
            for _ in 0..ROUNDS {
                measure(tunnel::bulk(&tunnel_rt, &agent, 1), &mut t1).await?;
                measure(tunnel::bulk(&tunnel_rt, &ws_agent, 1), &mut w1).await?;
                measure(tunnel::bulk(&tunnel_rt, &ws_agent, 64), &mut w64).await?;
            }
            let ws_rtt = tunnel::latency(&ws_kas, phase()).await?;
            // Through a real HTTP CONNECT proxy, next to direct, in the same run.
            let proxied = proxy_phase(&tunnel_rt, &t, [&agent, &ws_agent]).await;

            println!();
            println!(
                "{:<44} {:>12} {:>12} {:>7}",
                "transport (same tunnel, same run)", "wss://", "tls://", "ratio"
            );
            for (name, w, b) in [("1 stream", w1, t1), ("64 streams", w64, t64)] {
                ratio_row(
                    &format!("bulk, {name} (MiB/s, best of 3)"),
                    w.mib_s,
                    b.mib_s,
                    0,
                );
                ratio_row(
                    &format!("CPU s per GiB, {name} (both ends)"),
                    w.cpu_per_gib,
                    b.cpu_per_gib,
                    2,
                );
            }
            rtt_rows(&ws_rtt, &tun_rtt);
            println!();
            match proxied {
                Ok(p) => {
                    println!(
                        "{:<44} {:>12} {:>12} {:>7}",
                        "proxy path (tinyproxy CONNECT, same run)", "via proxy", "direct", "ratio"
                    );
                    for (scheme, via, direct, rtt, direct_rtt) in [
                        (
                            "tls://",
                            p.tls,
                            [p.tls_direct.better(t1), t64],
                            &p.tls_rtt,
                            &tun_rtt,
                        ),
                        (
                            "wss://",
                            p.wss,
                            [p.wss_direct.better(w1), w64],
                            &p.wss_rtt,
                            &ws_rtt,
                        ),
                    ] {
                        for (k, name) in ["1 stream", "64 streams"].into_iter().enumerate() {
                            ratio_row(
                                &format!("{scheme} bulk, {name} (MiB/s)"),
                                via[k].mib_s,
                                direct[k].mib_s,
                                0,
                            );
                            ratio_row(
                                &format!("{scheme} CPU s/GiB, {name} (+proxy)"),
                                via[k].cpu_per_gib,
                                direct[k].cpu_per_gib,
                                2,
                            );
                        }
                        let us = |d: Duration| d.as_secs_f64() * 1e6;
                        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
                            ratio_row(
                                &format!("{scheme} round trip 64 B, {name} (µs)"),
                                us(percentile(rtt, q)),
                                us(percentile(direct_rtt, q)),
                                1,
                            );
                        }
                    }
                }
                Err(e) => println!("proxy path rows skipped: {e:#}"),
            }
            println!();
            match idle {
                Ok(i) => {
                    println!(
                        "{:<44} {:>12.1}",
                        format!("server RSS per idle connection, N={} (KiB)", i.n),
                        i.kib_per_conn
                    );
                    println!(
                        "{:<44} {:>12.0}",
                        "connections accepted per second (TLS+HELLO)", i.accepts_per_s
                    );
                }
                Err(e) => println!("idle connections: failed: {e:#}"),
            }
            anyhow::Ok(())
        })
        .await
        .context("the benchmark task")?
    })
}
