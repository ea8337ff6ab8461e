//! Idle agents on one kas: opens N real agent tunnel connections (TLS 1.3, HELLO with a token the
//! kas authenticates, the agent handshake of runtime-core) to a real `kas` process started here as a
//! child with a throw-away PKI and an agents file, then measures kas from /proc: RSS per connection,
//! the CPU kas spends on keepalive while they idle, and how long kas takes to list all of them again
//! after every connection dropped at once (the reconnect storm), with its peak RSS meanwhile.
//!
//! `cargo build --release -p kas --bin kas && cargo run --release -p runtime-tokio --example
//! idle_agents -- [--n N[,N2…]] [--agents K] [--idle-secs S] [--kas PATH] [--keepalive-secs K]
//! [--per-process P] [--concurrency C] [--handshake-secs H] [--kas-wrap CMD]`
//!
//! - Several N (`--n 5000,19000`): each with a fresh kas, so the per-connection figures of the
//!   runs show whether memory grows linearly; the summary's slope between the smallest and the
//!   largest N is what the 100,000 projection uses.
//! - The agents are spread over client processes (this binary with `--client`), at most P (default
//!   10,000) connections each, so no client process needs more file descriptors than kas does;
//!   connections come from many source addresses in 127.0.0.0/8 ([`PER_SOURCE`] each), so neither
//!   ephemeral ports nor the TIME_WAIT sockets the storm leaves behind bound N. kas needs N + ~500
//!   descriptors: the open-file limit is raised (`runtime_core::testing::nofile`) where permitted;
//!   in a container without CAP_SYS_RESOURCE the hard limit caps N.
//! - K agents (default N: one connection per agent), connections spread over them round-robin.
//! - Phases, each bounded in time: (1) connect all N (each client process at most C handshakes in
//!   flight) until kas's `/metrics` says `kas_agent_connections N`; (2) idle S seconds (default
//!   three keepalive intervals): RSS (VmRSS and smaps_rollup's anonymous memory) and CPU
//!   (utime+stime) of kas; (3) every client drops every connection at once; once kas holds none,
//!   every client redials all of its connections at once (at most 4,096 in flight per process) and
//!   the storm lasts until kas lists all N again; kas's peak RSS (VmHWM, reset before the storm
//!   through /proc/PID/clear_refs) is read after it, with kas's CPU time over the storm.
//! - The agents' handshake timeout is H (default 60 s, as kas's in the generated config): with
//!   agentk's 10 s, a herd larger than kas accepts in 10 s times out and redials, and the storm
//!   then measures that wasted work too (the dials retried are printed either way).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use protocol::Config;
use runtime_core::testing::nofile;
use runtime_core::{AgentOptions, AsyncTimer, BoxFuture, BoxIo, Listener, Runtime};

/// Connections per source address: with as many TIME_WAIT sockets left by the storm, still below
/// the ~28k ephemeral ports of Linux's default range.
const PER_SOURCE: usize = 5_000;

/// The projection's target.
const TARGET: f64 = 100_000.0;

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
    ns: Vec<usize>,
    agents: Option<usize>,
    idle: Option<Duration>,
    keepalive: u64,
    kas: PathBuf,
    concurrency: usize,
    per_process: usize,
    /// The agents' handshake timeout (agentk's default is 10 s).
    handshake: Duration,
    /// A command kas runs under (a profiler: `--kas-wrap 'heaptrack -o /tmp/kas'`).
    wrap: Option<String>,
}

fn flag(argv: &[String], name: &str) -> Option<String> {
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .cloned()
}

fn args(argv: &[String]) -> Result<Args> {
    let get = |name: &str| flag(argv, name);
    let ns = get("--n")
        .unwrap_or_else(|| "10000".into())
        .split(',')
        .map(|v| v.trim().parse::<usize>().context("--n"))
        .collect::<Result<Vec<_>>>()?;
    if ns.is_empty() || ns.contains(&0) {
        bail!("--n: one or more positive counts");
    }
    let exe = std::env::current_exe()?;
    let default_kas = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("kas"))
        .context("no kas path")?;
    Ok(Args {
        ns,
        agents: get("--agents").map(|v| v.parse()).transpose()?,
        idle: get("--idle-secs")
            .map(|v| v.parse().map(Duration::from_secs))
            .transpose()?,
        keepalive: get("--keepalive-secs").map_or(Ok(20), |v| v.parse())?,
        kas: get("--kas").map_or(default_kas, PathBuf::from),
        concurrency: get("--concurrency").map_or(Ok(256), |v| v.parse())?,
        per_process: get("--per-process").map_or(Ok(10_000), |v| v.parse())?,
        wrap: get("--kas-wrap"),
        handshake: Duration::from_secs(get("--handshake-secs").map_or(Ok(60), |v| v.parse())?),
    })
}

// ------------------------------------------------------------------------------------------ /proc

/// What /proc says about kas at one moment.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// VmRSS, KiB.
    rss: u64,
    /// VmHWM (peak RSS since start or the last clear_refs 5), KiB.
    hwm: u64,
    /// smaps_rollup's `Anonymous` (heap and stacks), KiB.
    anon: u64,
    /// utime + stime, seconds.
    cpu: f64,
    threads: u64,
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3. Clock ticks of
    // 1/100 s (USER_HZ on every Linux architecture Rust targets).
    let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
        + fields.get(12).context("stime")?.parse::<f64>()?;
    Ok(Usage {
        rss: status_kib(&status, "VmRSS:").context("VmRSS")?,
        hwm: status_kib(&status, "VmHWM:").context("VmHWM")?,
        anon: status_kib(&rollup, "Anonymous:").unwrap_or(0),
        cpu: ticks / 100.0,
        threads: status_kib(&status, "Threads:").unwrap_or(0),
    })
}

/// Resets kas's peak RSS (VmHWM) to its current RSS; false where /proc does not allow it.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

// ------------------------------------------------------------------------------------------ kas

struct Kas {
    child: Child,
    /// kas's process id: the child's, or under `--kas-wrap` the descendant named `kas`.
    pid: u32,
    addr: SocketAddr,
    api: SocketAddr,
    ca: PathBuf,
    tokens: PathBuf,
    dir: PathBuf,
}

impl Drop for Kas {
    fn drop(&mut self) {
        if self.pid != self.child.id() && self.pid != 0 {
            // Under a wrapper (a profiler): let kas exit on SIGTERM so the wrapper writes its
            // data; bounded to 60 s.
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(60)
                && matches!(self.child.try_wait(), Ok(None))
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_listening(addr: SocketAddr) -> Result<()> {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("kas did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts kas knowing `agents` agents; their tokens are written to `Kas::tokens`, one a line.
fn start_kas(a: &Args, agents: usize, run: usize) -> Result<Kas> {
    let dir = std::env::temp_dir().join(format!("idle-agents-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pki = tunnel_tls::ThrowawayPki::generate()?;
    let files = pki.write_pem_files(&dir)?;
    let tokens: Vec<String> = (0..agents)
        .map(|i| format!("idle-agent-token-{i}-{:016x}-{run}", std::process::id()))
        .collect();
    // Digests with coreutils' sha256sum (one call per 1,000 tokens).
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
    let mut digests = Vec::with_capacity(agents);
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
    let mut yaml = String::from("agents:\n");
    for (i, d) in digests.iter().enumerate() {
        yaml.push_str(&format!(
            "  - id: {}\n    name: idle-{}\n    token_sha256: {d}\n",
            i + 1,
            i + 1
        ));
    }
    std::fs::write(dir.join("agents.yaml"), yaml)?;
    std::fs::write(dir.join("users.yaml"), "users: []\n")?;
    let token_file = dir.join("tokens.txt");
    std::fs::write(&token_file, tokens.join("\n"))?;
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
    let mut command = match &a.wrap {
        Some(wrap) => {
            let mut words = wrap.split_whitespace();
            let mut c = Command::new(words.next().context("--kas-wrap is empty")?);
            c.args(words).arg(&a.kas);
            c
        }
        None => Command::new(&a.kas),
    };
    let child = command
        .arg("--config")
        .arg(dir.join("kas.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", a.kas.display()))?;
    let kas = Kas {
        pid: 0,
        child,
        addr: format!("127.0.0.1:{port}").parse()?,
        api: format!("127.0.0.1:{api}").parse()?,
        ca: files.ca,
        tokens: token_file,
        dir,
    };
    wait_listening(kas.addr)?;
    wait_listening(kas.api)?;
    let mut kas = kas;
    kas.pid = kas_pid(kas.child.id()).context("no kas process under the wrapper")?;
    Ok(kas)
}

/// The process named `kas` among `root` and its descendants (breadth first, at most 64 visited).
fn kas_pid(root: u32) -> Option<u32> {
    let mut queue = std::collections::VecDeque::from([root]);
    let mut visited = 0;
    while let Some(pid) = queue.pop_front() {
        visited += 1;
        if visited > 64 {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "kas" {
            return Some(pid);
        }
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        queue.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    None
}

/// `kas_agent_connections` from kas's `/metrics` (plain HTTP/1.0 on loopback: one request, read
/// to the end).
fn kas_connections(api: SocketAddr) -> Result<u64> {
    let mut tcp = std::net::TcpStream::connect_timeout(&api, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: kas\r\n\r\n")?;
    let mut body = String::new();
    tcp.read_to_string(&mut body)?;
    body.lines()
        .find_map(|l| l.strip_prefix("kas_agent_connections "))
        .and_then(|v| v.trim().parse().ok())
        .context("no kas_agent_connections in /metrics")
}

/// Polls `/metrics` every 50 ms until kas holds `want` connections; returns the time it took and
/// the largest RSS sampled meanwhile (KiB). Bounded by `deadline`.
fn until_kas_holds(kas: &Kas, want: u64, deadline: Duration) -> Result<(Duration, u64)> {
    let t0 = Instant::now();
    let mut peak = 0;
    loop {
        let now = kas_connections(kas.api)?;
        peak = peak.max(usage(kas.pid)?.rss);
        if now == want {
            return Ok((t0.elapsed(), peak));
        }
        if t0.elapsed() > deadline {
            bail!("kas holds {now} connections, not {want}, after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Raises this process's open-file limit (kas and the clients, started after, inherit it); where
/// that is not permitted (a container without CAP_SYS_RESOURCE), the current limit must already
/// fit N in kas.
fn raise_nofile(n: usize) -> Result<()> {
    nofile::raise(n as u64 + 512).map_err(|e| {
        anyhow::anyhow!("{e}: use --n {} or less", e.limit.soft.saturating_sub(512))
    })?;
    Ok(())
}

fn nofile_soft() -> usize {
    usize::try_from(nofile::limit().soft).unwrap_or(usize::MAX)
}

// ------------------------------------------------------------------------------------------ clients

/// One client process: `--client` mode of this binary, talking in lines on stdin/stdout.
struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client {
    fn start(
        kas: &Kas,
        first: usize,
        count: usize,
        agents: usize,
        c: usize,
        handshake: Duration,
    ) -> Result<Client> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--client")
            .args(["--addr", &kas.addr.to_string()])
            .arg("--ca")
            .arg(&kas.ca)
            .arg("--tokens")
            .arg(&kas.tokens)
            .args(["--first", &first.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--agents", &agents.to_string()])
            .args(["--concurrency", &c.to_string()])
            .args(["--handshake-secs", &handshake.as_secs().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().context("client stdin")?;
        let stdout = child.stdout.take().context("client stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Bounded by the child: ends at its EOF.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Client {
            child,
            stdin,
            lines,
        })
    }

    fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}")?;
        Ok(self.stdin.flush()?)
    }

    /// The client's next answer; an `error …` line or silence past `within` is an error.
    fn answer(&self, within: Duration) -> Result<String> {
        let line = self
            .lines
            .recv_timeout(within)
            .map_err(|_| anyhow::anyhow!("a client process did not answer within {within:?}"))?;
        if let Some(e) = line.strip_prefix("error ") {
            bail!("client process: {e}");
        }
        Ok(line)
    }
}

/// The `--client` mode: connects `count` connections (global indexes from `first`), answers
/// `up SECONDS` and then obeys `check` (answers `closed K`), `drop` (answers `dropped`),
/// `connect` (answers `up SECONDS`) and `quit` (or end of input).
fn client_main(argv: &[String]) -> Result<()> {
    let get = |name: &str| flag(argv, name).with_context(|| format!("{name} missing"));
    let addr: SocketAddr = get("--addr")?.parse()?;
    let ca = PathBuf::from(get("--ca")?);
    let tokens: Vec<String> = std::fs::read_to_string(get("--tokens")?)?
        .lines()
        .map(str::to_owned)
        .collect();
    let first: usize = get("--first")?.parse()?;
    let count: usize = get("--count")?.parse()?;
    let concurrency: usize = get("--concurrency")?.parse()?;
    let handshake = Duration::from_secs(get("--handshake-secs")?.parse()?);
    if tokens.is_empty() {
        bail!("no tokens");
    }
    let tls = tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(ca), None)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let dial = |c: usize| {
        let (tls, tokens) = (tls.clone(), tokens.clone());
        rt.block_on(connect_all(addr, first, count, tokens, tls, c, handshake))
    };
    let mut held = match dial(concurrency) {
        Ok((held, took)) => {
            say(format!(
                "up {} {}",
                took.as_secs_f64(),
                RETRIES.load(Ordering::Relaxed)
            ));
            held
        }
        Err(e) => {
            say(format!("error {e:#}"));
            return Err(e);
        }
    };
    // Bounded by the parent, which sends a handful of commands and then `quit` or closes stdin.
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "check" => say(format!(
                "closed {}",
                held.iter().filter(|c| c.is_closed()).count()
            )),
            "drop" => {
                held.clear();
                say("dropped".into());
            }
            "connect" => match dial(count.min(4096)) {
                Ok((h, took)) => {
                    held = h;
                    say(format!(
                        "up {} {}",
                        took.as_secs_f64(),
                        RETRIES.load(Ordering::Relaxed)
                    ));
                }
                Err(e) => {
                    say(format!("error {e:#}"));
                    return Err(e);
                }
            },
            _ => break,
        }
    }
    drop(held);
    Ok(())
}

/// Opens `count` connections (global indexes `first..first + count`), at most `concurrency`
/// handshakes at once; returns them and the time taken.
async fn connect_all(
    addr: SocketAddr,
    first: usize,
    count: usize,
    tokens: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    concurrency: usize,
    handshake: Duration,
) -> Result<(Vec<runtime_tokio::Connection>, Duration)> {
    RETRIES.store(0, Ordering::Relaxed);
    let next = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(tokens);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (next, tls, tokens) = (next.clone(), tls.clone(), tokens.clone());
        workers.push(tokio::spawn(async move {
            let mut held = Vec::new();
            // Bounded by `count`: each iteration takes the next index.
            loop {
                let j = next.fetch_add(1, Ordering::SeqCst);
                if j >= count {
                    break;
                }
                let i = first + j;
                let source = Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(127, 0, 0, 2)) + (i / PER_SOURCE) as u32,
                );
                let config = Config {
                    handshake_timeout: handshake,
                    ..Config::default()
                };
                let opts = AgentOptions {
                    token: tokens[i % tokens.len()].clone(),
                    meta: Default::default(),
                    config,
                };
                let mut attempt = 0;
                // Bounded: at most 6 attempts.
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
                            RETRIES.fetch_add(1, Ordering::Relaxed);
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
    let mut held = Vec::with_capacity(count);
    for w in workers {
        held.extend(
            tokio::time::timeout(Duration::from_secs(600), w)
                .await
                .context("connecting took over 10 minutes")???,
        );
    }
    Ok((held, start.elapsed()))
}

/// Dials retried in the current phase (this client process).
static RETRIES: AtomicUsize = AtomicUsize::new(0);

/// Retries are rare; printing the first few is enough.
fn log_retry(line: &str) {
    static SHOWN: AtomicUsize = AtomicUsize::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("{line}");
    }
}

// ------------------------------------------------------------------------------------------ a run

/// The figures of one N.
struct Run {
    n: usize,
    agents: usize,
    processes: usize,
    before: Usage,
    idle_start: Usage,
    idle_end: Usage,
    idle: Duration,
    first: Duration,
    storm: Duration,
    storm_clients: f64,
    storm_peak: u64,
    /// kas's CPU seconds from the redial until it listed all N.
    storm_cpu: f64,
    /// Dials the clients retried (their handshake timed out or failed).
    first_retries: usize,
    storm_retries: usize,
    peak_from_hwm: bool,
    after_storm: Usage,
}

impl Run {
    fn kib_per_conn(&self, later: u64, earlier: u64) -> f64 {
        later.saturating_sub(earlier) as f64 / self.n as f64
    }

    /// RSS per connection at the end of the idle window, KiB.
    fn rss_per_conn(&self) -> f64 {
        self.kib_per_conn(self.idle_end.rss, self.before.rss)
    }

    fn anon_per_conn(&self) -> f64 {
        self.kib_per_conn(self.idle_end.anon, self.before.anon)
    }

    /// kas CPU milliseconds per 1,000 idle connections per minute.
    fn keepalive_cpu(&self) -> f64 {
        let cpu = self.idle_end.cpu - self.idle_start.cpu;
        cpu * 1000.0 / (self.n as f64 / 1000.0) / (self.idle.as_secs_f64() / 60.0)
    }
}

/// `up SECONDS RETRIES` from a client.
fn up_line(line: &str) -> Result<(f64, usize)> {
    let mut words = line
        .strip_prefix("up ")
        .context("client answer")?
        .split(' ');
    let secs = words
        .next()
        .and_then(|s| s.parse().ok())
        .context("client answer")?;
    let retries = words
        .next()
        .and_then(|s| s.parse().ok())
        .context("client answer")?;
    Ok((secs, retries))
}

fn run(a: &Args, n: usize, index: usize) -> Result<Run> {
    let agents = a.agents.unwrap_or(n).max(1);
    let kas = start_kas(a, agents, index)?;
    let pid = kas.pid;
    std::thread::sleep(Duration::from_millis(500));
    let before = usage(pid)?;
    let per = a.per_process.max(1);
    let processes = n.div_ceil(per);
    let mut clients = Vec::with_capacity(processes);
    let t0 = Instant::now();
    for p in 0..processes {
        let first = p * per;
        let count = per.min(n - first);
        clients.push(Client::start(
            &kas,
            first,
            count,
            agents,
            a.concurrency,
            a.handshake,
        )?);
    }
    let mut first_retries = 0;
    for c in &clients {
        first_retries += up_line(&c.answer(Duration::from_secs(600))?)?.1;
    }
    until_kas_holds(&kas, n as u64, Duration::from_secs(60))?;
    let first = t0.elapsed();
    // Let the handshakes' leftovers settle (the driver shrinks its receive buffer after 2 s quiet).
    std::thread::sleep(Duration::from_secs(3));
    let idle = a
        .idle
        .unwrap_or(Duration::from_secs(a.keepalive * 3))
        .max(Duration::from_secs(1));
    let idle_start = usage(pid)?;
    std::thread::sleep(idle);
    let idle_end = usage(pid)?;
    for c in &mut clients {
        c.send("check")?;
    }
    for c in &clients {
        let closed = c.answer(Duration::from_secs(30))?;
        if closed != "closed 0" {
            bail!("connections closed while idle ({closed})");
        }
    }
    // The storm: every connection drops at once; once kas holds none, all redial together.
    for c in &mut clients {
        c.send("drop")?;
    }
    for c in &clients {
        c.answer(Duration::from_secs(60))?;
    }
    until_kas_holds(&kas, 0, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(1));
    let peak_from_hwm = reset_peak(pid);
    let before_storm = usage(pid)?;
    for c in &mut clients {
        c.send("connect")?;
    }
    let (storm, sampled_peak) = until_kas_holds(&kas, n as u64, Duration::from_secs(600))?;
    let mut storm_clients: f64 = 0.0;
    let mut storm_retries = 0;
    for c in &clients {
        let (secs, retries) = up_line(&c.answer(Duration::from_secs(600))?)?;
        storm_clients = storm_clients.max(secs);
        storm_retries += retries;
    }
    let after_storm = usage(pid)?;
    let storm_peak = if peak_from_hwm {
        after_storm.hwm.max(sampled_peak)
    } else {
        sampled_peak
    };
    for c in &mut clients {
        let _ = c.send("quit");
    }
    drop(clients);
    Ok(Run {
        n,
        agents,
        processes,
        before,
        idle_start,
        idle_end,
        idle,
        first,
        storm,
        storm_clients,
        storm_peak,
        storm_cpu: after_storm.cpu - before_storm.cpu,
        first_retries,
        storm_retries,
        peak_from_hwm,
        after_storm,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn report(a: &Args, runs: &[Run]) {
    let hard = match nofile::limit().hard {
        u64::MAX => "unlimited".to_owned(),
        h => h.to_string(),
    };
    println!(
        "idle agents on one real kas process (release build; real TLS 1.3, tokens, agent handshake; \
         keepalive every {} s; agents' handshake timeout {} s; open-file limit {}, hard {hard})",
        a.keepalive,
        a.handshake.as_secs(),
        nofile_soft()
    );
    for r in runs {
        println!(
            "  N={}: {} agents, {} client processes, sources 127.0.0.2.. ({} connections each)",
            r.n, r.agents, r.processes, PER_SOURCE
        );
        println!(
            "    kas before: RSS {:.1} MiB, anon {:.1} MiB, {} threads; with N idle: RSS {:.1} MiB, anon {:.1} MiB, {} threads",
            mib(r.before.rss),
            mib(r.before.anon),
            r.before.threads,
            mib(r.idle_end.rss),
            mib(r.idle_end.anon),
            r.idle_end.threads
        );
        println!(
            "    first connect ({} in flight per process) until kas listed all: {:.2} s ({} dials retried); reconnect storm: kas listed all after {:.2} s (clients saw theirs up after {:.2} s; {} dials retried; kas CPU {:.1} s = {:.0} µs per connection, {} threads after); peak RSS {:.1} MiB ({}), RSS after {:.1} MiB",
            a.concurrency,
            r.first.as_secs_f64(),
            r.first_retries,
            r.storm.as_secs_f64(),
            r.storm_clients,
            r.storm_retries,
            r.storm_cpu,
            r.storm_cpu * 1e6 / r.n as f64,
            r.after_storm.threads,
            mib(r.storm_peak),
            if r.peak_from_hwm {
                "VmHWM"
            } else {
                "sampled every 50 ms"
            },
            mib(r.after_storm.rss)
        );
    }
    println!();
    println!(
        "| N | kas RSS idle | RSS per connection | anon per connection | 100,000 projected | keepalive CPU | first connect | reconnect storm | peak RSS in storm |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {} | {:.1} MiB | {:.1} KiB | {:.1} KiB | {:.2} GiB | {:.1} ms per 1k conns per min ({:.2}% of a core) | {:.1} s | {:.1} s ({:.0}/s) | {:.1} MiB |",
            r.n,
            mib(r.idle_end.rss),
            r.rss_per_conn(),
            r.anon_per_conn(),
            (r.before.rss as f64 + TARGET * r.rss_per_conn()) / 1024.0 / 1024.0,
            r.keepalive_cpu(),
            100.0 * (r.idle_end.cpu - r.idle_start.cpu) / r.idle.as_secs_f64(),
            r.first.as_secs_f64(),
            r.storm.as_secs_f64(),
            r.n as f64 / r.storm.as_secs_f64(),
            mib(r.storm_peak)
        );
    }
    if let (Some(lo), Some(hi)) = (
        runs.iter().min_by_key(|r| r.n),
        runs.iter().max_by_key(|r| r.n),
    ) && hi.n > lo.n
    {
        let slope = (hi.idle_end.rss as f64 - lo.idle_end.rss as f64) / (hi.n as f64 - lo.n as f64);
        let projected = lo.idle_end.rss as f64 + slope * (TARGET - lo.n as f64);
        println!();
        println!(
            "slope between N={} and N={}: {:.1} KiB per connection; 100,000 idle agents projected at {:.2} GiB \
             (linear from the measured N; the goal is 2 GiB)",
            lo.n,
            hi.n,
            slope,
            projected / 1024.0 / 1024.0
        );
    }
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--client") {
        return client_main(&argv);
    }
    let a = args(&argv)?;
    let most = a.ns.iter().copied().max().unwrap_or(0);
    raise_nofile(most)?;
    if a.per_process + 512 > nofile_soft() {
        bail!(
            "--per-process must leave 512 of the {} descriptors",
            nofile_soft()
        );
    }
    let mut runs = Vec::new();
    for (i, &n) in a.ns.iter().enumerate() {
        runs.push(run(&a, n, i).with_context(|| format!("N={n}"))?);
    }
    report(&a, &runs);
    Ok(())
}
