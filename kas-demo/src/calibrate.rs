//! Calibration of the simulator's cost model against the real programs (`kas-calibrate`, run by
//! `simulator calibrate`).
//!
//! [`Bench`] starts a real `kas` **process** (the binary, so its RSS and CPU are its own, read from
//! `/proc/PID/status` and `/proc/PID/stat`) with a throw-away PKI, an agents file and the demo user;
//! one real agentk with its simulated Kubernetes API server (sim-apiserver) in this process; and a
//! [`Fleet`] of idle agent connections (`runtime_core::connect_agent`, one agent id each), each
//! reconnecting as agentk does: `protocol`'s [`Reconnect`] policy decides every back-off.
//!
//! [`Bench::measure`] then measures, in this order:
//!
//! 1. **request latency** at concurrency 1: `GET …/pods` through kas's `/k8s-proxy` → agentk →
//!    sim-apiserver, p50/p99, and the same request straight to sim-apiserver; kas CPU per request;
//! 2. **memory per idle connection**: kas RSS before and after the fleet of N connects;
//! 3. **memory per open stream**: M concurrent watches through kas (each an HTTPS exchange with kas's
//!    API and a stream in the tunnel), RSS before and during;
//! 4. **handshake CPU**: kas is killed (SIGKILL) and restarted on the same ports; the fleet
//!    reconnects (a reconnect storm); kas CPU from its start until every connection is back, over N,
//!    and the cores kas got meanwhile (its CPU seconds over the storm's wall seconds).
//!
//! [`Measured::profile`] turns the figures into a [`CostProfile`] for the simulator. The same pieces
//! run the calibration test's real scenario (`kas-demo/tests/calibration.rs`).
//!
//! **Which build.** A profile is meant to describe kas as users run it: a release build. The kas
//! binary is found beside the running executable ([`BenchOptions::find_kas`]: same target directory
//! and profile), its build is read from `kas --version` ([`KasBuild`]), and [`Bench::start`] refuses
//! a kas whose build differs from this program's (which runs the agentk and the fleet), unless mixed
//! builds are allowed, and always one with protocol's test hooks compiled in. The profile names the
//! build measured (`machine.build`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kas::auth::AgentsFile;
use kas::config::{AuthBackendConfig, Config};
use kas::users::{TokenKind, UsersFile};
use protocol::tunnel::reconnect::{BackoffPolicy, DialFailure, Reconnect};
use runtime_core::{AgentOptions, Runtime};
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};
use simulator::sim::profile::{CostProfile, CpuCosts, LatencyCosts, Machine, MemoryCosts};

/// Why a calibration could not run.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("{what} did not happen within {within:?}")]
    Timeout { what: String, within: Duration },
    #[error(
        "kas at {kas} is a {kas_build} build but this program (agentk, the fleet) is a {this_build} \
         build: build both the same way (`cargo build --release -p kas-demo --bins`, then kas on its \
         own: `cargo build --release -p kas --bin kas`), or pass --mixed-builds to measure them \
         anyway"
    )]
    MixedBuilds {
        kas: PathBuf,
        kas_build: &'static str,
        this_build: &'static str,
    },
    #[error(
        "kas at {0} has protocol's test hooks compiled in (`kas --version`): it was built in one \
         cargo invocation with a crate that enables them; build it on its own \
         (`cargo build --release -p kas --bin kas`)"
    )]
    TestHooks(PathBuf),
    #[error("cannot tell how kas at {kas} was built: `kas --version` said {said:?}")]
    UnknownBuild { kas: PathBuf, said: String },
}

/// `debug` (debug assertions on) or `release`: how this program was built.
pub const THIS_BUILD: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// How a kas binary was built, as its `--version` says (`kas 0.1.0 (release build)`, see
/// `kas::VERSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KasBuild {
    /// `debug` or `release`.
    pub profile: &'static str,
    /// Protocol's fault-injection hooks are compiled in.
    pub test_hooks: bool,
}

impl KasBuild {
    /// Parses `kas --version` output; `None` when it does not say.
    pub fn parse(version: &str) -> Option<KasBuild> {
        let inside = version.split_once('(')?.1.split_once(')')?.0;
        let mut parts = inside.split(',').map(str::trim);
        let profile = match parts.next()? {
            "release build" => "release",
            "debug build" => "debug",
            _ => return None,
        };
        let test_hooks = parts.any(|p| p == "protocol test hooks");
        Some(KasBuild {
            profile,
            test_hooks,
        })
    }

    /// Runs `kas --version`.
    pub fn of(kas: &Path) -> Result<KasBuild, CalibrateError> {
        let out = Command::new(kas)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!(
                "running {} --version (build it with `cargo build -p kas --bin kas`)",
                kas.display()
            )))?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        KasBuild::parse(&said).ok_or_else(|| CalibrateError::UnknownBuild {
            kas: kas.to_owned(),
            said,
        })
    }

    /// What a profile measured with this kas says in `machine.build`: the build, when kas and this
    /// program agree; an error when they do not, unless `allow_mixed` (then both are named). A kas
    /// with test hooks is refused: users never run one.
    pub fn check(&self, kas: &Path, allow_mixed: bool) -> Result<String, CalibrateError> {
        if self.test_hooks {
            return Err(CalibrateError::TestHooks(kas.to_owned()));
        }
        if self.profile == THIS_BUILD {
            return Ok(self.profile.to_owned());
        }
        if allow_mixed {
            return Ok(format!("kas {}, agentk {}", self.profile, THIS_BUILD));
        }
        Err(CalibrateError::MixedBuilds {
            kas: kas.to_owned(),
            kas_build: self.profile,
            this_build: THIS_BUILD,
        })
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CalibrateError {
    let what = what.into();
    move |source| CalibrateError::Io { what, source }
}

fn setup(e: impl std::fmt::Display) -> CalibrateError {
    CalibrateError::Setup(e.to_string())
}

/// RSS (bytes) and CPU seconds (user + system) of a process, from /proc.
pub fn usage(pid: u32) -> Result<(u64, f64), CalibrateError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(io(format!("reading /proc/{pid}/status")))?;
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| setup("no VmRSS in /proc/PID/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(io(format!("reading /proc/{pid}/stat")))?;
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are stat's fields 14 and 15; `fields` starts at field 3.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let ticks = tick(11)
        .zip(tick(12))
        .map(|(u, s)| u + s)
        .ok_or_else(|| setup("no utime/stime in /proc/PID/stat"))?;
    Ok((rss_kib * 1024, ticks / clock_ticks()))
}

/// `getconf CLK_TCK` (100 on Linux unless built otherwise).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A free loopback port (bound and released).
fn free_port() -> Result<u16, CalibrateError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("picking a free port"))
}

/// The real `kas` binary, run as a child process from a generated configuration.
pub struct KasProcess {
    bin: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    pub agent_addr: std::net::SocketAddr,
    pub api_url: String,
    /// When the current process started listening.
    pub listening_at: Instant,
}

impl KasProcess {
    /// Starts kas and waits until its agent listener accepts.
    pub fn start(
        bin: &Path,
        config: &Path,
        agent_addr: std::net::SocketAddr,
        api_url: String,
    ) -> Result<KasProcess, CalibrateError> {
        let mut k = KasProcess {
            bin: bin.to_owned(),
            config: config.to_owned(),
            child: None,
            agent_addr,
            api_url,
            listening_at: Instant::now(),
        };
        k.spawn()?;
        Ok(k)
    }

    fn spawn(&mut self) -> Result<(), CalibrateError> {
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io(format!(
                "starting {} (build it with `cargo build -p kas --bin kas`)",
                self.bin.display()
            )))?;
        self.child = Some(child);
        let t0 = Instant::now();
        let within = Duration::from_secs(60);
        while std::net::TcpStream::connect(self.agent_addr).is_err() {
            if t0.elapsed() > within {
                return Err(CalibrateError::Timeout {
                    what: format!("kas listening on {}", self.agent_addr),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.listening_at = Instant::now();
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// RSS bytes and CPU seconds.
    pub fn usage(&self) -> Result<(u64, f64), CalibrateError> {
        usage(self.pid())
    }

    /// SIGKILL (a crash: every connection gets a reset), then the same configuration again.
    /// Returns how long kas was not listening.
    pub fn crash_and_restart(&mut self) -> Result<Duration, CalibrateError> {
        let t0 = Instant::now();
        self.kill();
        self.spawn()?;
        Ok(t0.elapsed())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for KasProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// N idle agent connections, one agent each, reconnecting with agentk's back-off policy.
pub struct Fleet {
    connected: Arc<AtomicUsize>,
    pub size: usize,
}

impl Fleet {
    /// Connections currently established.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections are established; the time it took.
    pub fn wait_for(&self, n: usize, within: Duration) -> Result<Duration, CalibrateError> {
        let t0 = Instant::now();
        while self.connected() < n {
            if t0.elapsed() > within {
                return Err(CalibrateError::Timeout {
                    what: format!("{n} fleet connections (have {})", self.connected()),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(t0.elapsed())
    }
}

/// One fleet member: dial, hold, and on loss back off as `protocol`'s policy says.
async fn member(
    addr: std::net::SocketAddr,
    token: String,
    tls: Arc<rustls::ClientConfig>,
    connected: Arc<AtomicUsize>,
    dials: Arc<tokio::sync::Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let rt: Arc<dyn Runtime> = Arc::new(runtime_tokio::Tokio);
    let mut reconnect = Reconnect::<u64>::new(BackoffPolicy::default());
    let mut generation = 0u64;
    let Ok(name) = tunnel_tls::server_name("localhost") else {
        return;
    };
    // Bounded by `stop`, which the bench sets when it ends.
    while !*stop.borrow() {
        let opts = AgentOptions {
            token: token.clone(),
            meta: Default::default(),
            config: protocol::Config::default(),
        };
        let dialled = {
            let _permit = dials.acquire().await;
            tokio::time::timeout(
                Duration::from_secs(30),
                runtime_core::connect_agent(rt.clone(), addr, tls.clone(), name.clone(), opts),
            )
            .await
        };
        let unit: f64 = rand::random();
        let wait = match dialled {
            Ok(Ok((conn, _))) => {
                generation += 1;
                reconnect.handle_connected(generation, Instant::now());
                connected.fetch_add(1, Ordering::SeqCst);
                let reason = tokio::select! {
                    r = conn.closed() => r,
                    _ = stop.changed() => return,
                };
                connected.fetch_sub(1, Ordering::SeqCst);
                let now = Instant::now();
                reconnect
                    .handle_closed(&generation, &reason, now, unit)
                    .map_or(Duration::ZERO, |d| d.delay(now))
            }
            Ok(Err(e)) => {
                let failure = match e {
                    runtime_core::Error::Refused {
                        code, retry_after, ..
                    } => DialFailure::Refused { code, retry_after },
                    runtime_core::Error::Tls(_) => DialFailure::Tls,
                    _ => DialFailure::Network,
                };
                let now = Instant::now();
                reconnect.handle_dial_failed(failure, now, unit).delay(now)
            }
            Err(_) => {
                let now = Instant::now();
                reconnect
                    .handle_dial_failed(DialFailure::Timeout, now, unit)
                    .delay(now)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// What a bench is made of.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `kas` binary.
    pub kas_bin: PathBuf,
    /// Idle fleet connections (agents besides the real agentk).
    pub fleet: usize,
    /// Where files go (removed by the caller).
    pub dir: PathBuf,
    /// Measure a kas built differently from this program (debug against release) anyway.
    pub mixed_builds: bool,
}

impl BenchOptions {
    /// `kas` next to the running executable (or its parent: test binaries live in `deps/`): the same
    /// target directory and cargo profile as this program. Else `kas` on `PATH`.
    pub fn find_kas() -> PathBuf {
        let exe = std::env::current_exe().unwrap_or_default();
        let dirs = [exe.parent(), exe.parent().and_then(Path::parent)];
        dirs.into_iter()
            .flatten()
            .map(|d| d.join("kas"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("kas"))
    }
}

/// kas (a process), one real agentk with its sim-apiserver, and an idle fleet (not started yet).
pub struct Bench {
    pub kas: KasProcess,
    /// The build measured, for the profile's `machine.build` ([`KasBuild::check`]).
    pub build: String,
    runtime: Option<tokio::runtime::Runtime>,
    stop: tokio::sync::watch::Sender<bool>,
    apiserver: Option<RunningApiServer>,
    api: crate::api_client::ApiClient,
    direct: ureq::Agent,
    bearer: String,
    fleet_tokens: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    ca: PathBuf,
    pub fleet: Option<Fleet>,
}

/// Latency figures of a request loop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Response body bytes (the last one).
    pub response_bytes: usize,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The request every latency loop sends (a list of the cluster's pods, as `kubectl get pods`).
pub const REQUEST_PATH: &str = "/api/v1/namespaces/default/pods";

impl Bench {
    /// Generates the files, starts kas and the agentk; returns once the agent answers through kas.
    pub fn start(opts: &BenchOptions) -> Result<Bench, CalibrateError> {
        let build = KasBuild::of(&opts.kas_bin)?.check(&opts.kas_bin, opts.mixed_builds)?;
        let dir = &opts.dir;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let pki = tunnel_tls::ThrowawayPki::generate().map_err(setup)?;
        let files = pki.write_pem_files(dir).map_err(setup)?;
        let agents = AgentsFile::generate(opts.fleet + 1, dir).map_err(setup)?;
        let user = UsersFile::generate_demo(dir).map_err(setup)?;
        let agent_port = free_port()?;
        let api_port = free_port()?;
        let mut config = Config {
            state_dir: dir.clone(),
            ..Config::default()
        };
        config.agent_listener.address = ([127, 0, 0, 1], agent_port).into();
        config.agent_listener.tls.cert_file = files.server_cert.clone();
        config.agent_listener.tls.key_file = files.server_key.clone();
        config.api_listener.address = ([127, 0, 0, 1], api_port).into();
        config.api_listener.tls = Some(kas::config::TlsFilesConfig {
            cert_file: files.server_cert.clone(),
            key_file: files.server_key.clone(),
            client_ca_file: None,
        });
        config.agent_auth.backend = AuthBackendConfig::Embedded;
        config.users.file = dir.join("users.yaml");
        config.log.level = "error".into();
        let config_path = dir.join("kas.yaml");
        config.write(&config_path).map_err(setup)?;
        let api_url = format!("https://127.0.0.1:{api_port}");
        let kas = KasProcess::start(
            &opts.kas_bin,
            &config_path,
            config.agent_listener.address,
            api_url.clone(),
        )?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("calibrate")
            .enable_all()
            .build()
            .map_err(io("starting a tokio runtime"))?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let agent = &agents[0];
        let apiserver = ApiServer::start_on(
            runtime.handle(),
            ApiServerConfig {
                churn_rate: 0.0,
                seed: agent.id,
                ..ApiServerConfig::default()
            },
        )
        .map_err(setup)?;
        let kubeconfig = dir.join("cluster.kubeconfig");
        apiserver
            .write_kubeconfig(&kubeconfig, "cluster")
            .map_err(setup)?;
        let mut cfg = agentk::Config::new(kas.agent_addr.to_string(), agent.token.clone());
        cfg.token_file = Some(agent.token_file.clone());
        cfg.ca = tunnel_tls::Roots::PemFile(files.ca.clone());
        cfg.tls_server_name = Some("localhost".into());
        cfg.kube = agentk::KubeSource::Kubeconfig {
            path: kubeconfig,
            context: None,
        };
        let mut agent_stop = stop_rx.clone();
        runtime.spawn(async move {
            let shutdown = async move {
                let _ = agent_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = agentk::run(cfg, shutdown).await {
                tracing::error!(error = %e, "calibration agentk stopped");
            }
        });
        let api = crate::api_client::ApiClient::new(
            &format!("{api_url}{}", kas::api::K8S_PROXY_PREFIX),
            &files.ca,
            Duration::from_secs(30),
        )
        .map_err(setup)?;
        let direct = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        let tls = tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(files.ca.clone()), None)
            .map_err(setup)?;
        let bench = Bench {
            kas,
            build,
            runtime: Some(runtime),
            stop,
            apiserver: Some(apiserver),
            api,
            direct,
            bearer: format!(
                "Bearer {}",
                kas::users::format_bearer(TokenKind::Pat, agent.id, &user.token)
            ),
            fleet_tokens: agents[1..].iter().map(|a| a.token.clone()).collect(),
            tls,
            ca: files.ca,
            fleet: None,
        };
        bench.wait_for_agent(Duration::from_secs(60))?;
        Ok(bench)
    }

    /// Until a request through kas reaches the cluster.
    pub fn wait_for_agent(&self, within: Duration) -> Result<(), CalibrateError> {
        let t0 = Instant::now();
        loop {
            if let Ok((200, _)) = self.through_kas() {
                return Ok(());
            }
            if t0.elapsed() > within {
                return Err(CalibrateError::Timeout {
                    what: "the agent answering through kas".into(),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn through_kas(&self) -> Result<(u16, String), CalibrateError> {
        self.api
            .get_with(REQUEST_PATH, &[("Authorization", &self.bearer)])
            .map_err(setup)
    }

    /// `requests` sequential requests through kas (and, if `direct`, as many straight to the
    /// sim-apiserver); kas CPU seconds they cost.
    pub fn request_loop(&self, requests: usize) -> Result<(Latency, Latency, f64), CalibrateError> {
        let (_, cpu0) = self.kas.usage()?;
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        for _ in 0..requests {
            let t = Instant::now();
            let (status, body) = self.through_kas()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            if status != 200 {
                return Err(setup(format!("GET {REQUEST_PATH} through kas: {status}")));
            }
            bytes = body.len();
        }
        let (_, cpu1) = self.kas.usage()?;
        let url = format!(
            "{}{REQUEST_PATH}",
            self.apiserver
                .as_ref()
                .map_or_else(String::new, |a| a.url())
        );
        let mut direct = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            let resp = self.direct.get(&url).call();
            let ok = resp
                .map(|mut r| r.body_mut().read_to_vec().map(|_| ()))
                .is_ok();
            direct.push(t.elapsed().as_secs_f64() * 1e6);
            if !ok {
                return Err(setup(format!("GET {url} failed")));
            }
        }
        let lat = |mut v: Vec<f64>, bytes| {
            v.sort_by(f64::total_cmp);
            Latency {
                count: v.len(),
                p50_us: percentile(&v, 0.5),
                p99_us: percentile(&v, 0.99),
                response_bytes: bytes,
            }
        };
        Ok((lat(times, bytes), lat(direct, bytes), cpu1 - cpu0))
    }

    /// Starts the idle fleet (every connection at once, at most 1,024 dials in flight); returns
    /// once all are connected, with the time it took and the kas CPU seconds it cost.
    pub fn start_fleet(&mut self) -> Result<(Duration, f64), CalibrateError> {
        let (_, cpu0) = self.kas.usage()?;
        let n = self.fleet_tokens.len();
        raise_nofile(n)?;
        let connected = Arc::new(AtomicUsize::new(0));
        let dials = Arc::new(tokio::sync::Semaphore::new(1024));
        let runtime = self.runtime.as_ref().ok_or_else(|| setup("no runtime"))?;
        for token in &self.fleet_tokens {
            runtime.spawn(member(
                self.kas.agent_addr,
                token.clone(),
                self.tls.clone(),
                connected.clone(),
                dials.clone(),
                self.stop.subscribe(),
            ));
        }
        let fleet = Fleet { connected, size: n };
        let took = fleet.wait_for(n, Duration::from_secs(600))?;
        let (_, cpu1) = self.kas.usage()?;
        self.fleet = Some(fleet);
        Ok((took, cpu1 - cpu0))
    }

    /// `m` concurrent watches through kas held open; RSS (bytes) while they are. The watches end
    /// when `hold` is over.
    pub fn open_streams(&self, m: usize, hold: Duration) -> Result<u64, CalibrateError> {
        let opened = Arc::new(AtomicUsize::new(0));
        let client = crate::api_client::ApiClient::new(
            &format!("{}{}", self.kas.api_url, kas::api::K8S_PROXY_PREFIX),
            &self.ca,
            hold,
        )
        .map_err(setup)?;
        let mut threads = Vec::new();
        for _ in 0..m {
            let (client, opened, bearer) = (client.clone(), opened.clone(), self.bearer.clone());
            threads.push(std::thread::spawn(move || {
                let path = format!("{REQUEST_PATH}?watch=true");
                // Ends with the client's timeout (`hold`): a watch never ends by itself.
                let _ = client.stream_with(&path, &[("Authorization", &bearer)], || {
                    opened.fetch_add(1, Ordering::SeqCst);
                });
            }));
        }
        let t0 = Instant::now();
        while opened.load(Ordering::SeqCst) < m {
            let within = hold.saturating_sub(Duration::from_secs(5));
            if t0.elapsed() > within {
                return Err(CalibrateError::Timeout {
                    what: format!("{m} watches open (have {})", opened.load(Ordering::SeqCst)),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        let (rss, _) = self.kas.usage()?;
        for t in threads {
            let _ = t.join();
        }
        Ok(rss)
    }

    /// Crashes and restarts kas; returns (down time, storm: from the crash until every fleet
    /// connection is back, kas CPU seconds from its start to then).
    pub fn storm(&mut self) -> Result<(Duration, Duration, f64), CalibrateError> {
        let n = self.fleet.as_ref().map_or(0, |f| f.size);
        let t0 = Instant::now();
        let down = self.kas.crash_and_restart()?;
        let (_, cpu0) = self.kas.usage()?;
        if let Some(f) = &self.fleet {
            f.wait_for(n, Duration::from_secs(600))?;
        }
        let storm = t0.elapsed();
        let (_, cpu1) = self.kas.usage()?;
        Ok((down, storm, cpu1 - cpu0))
    }

    /// Runs the whole calibration (see the module docs).
    pub fn measure(&mut self, streams: usize, requests: usize) -> Result<Measured, CalibrateError> {
        // Warm up (first connections, allocator pools) before measuring.
        self.request_loop(requests.min(20))?;
        let (through, direct, request_cpu) = self.request_loop(requests)?;
        std::thread::sleep(Duration::from_secs(1));
        let (rss_base, _) = self.kas.usage()?;
        let (first_connect, connect_cpu) = self.start_fleet()?;
        std::thread::sleep(Duration::from_secs(2));
        let (rss_fleet, _) = self.kas.usage()?;
        let rss_streams = self.open_streams(streams, Duration::from_secs(30))?;
        let (down, storm, storm_cpu) = self.storm()?;
        std::thread::sleep(Duration::from_secs(1));
        let (rss_after, _) = self.kas.usage()?;
        let n = self.fleet.as_ref().map_or(0, |f| f.size);
        Ok(Measured {
            build: self.build.clone(),
            fleet: n,
            streams,
            through,
            direct,
            request_cpu_s: request_cpu,
            rss_base,
            rss_fleet,
            rss_streams,
            rss_after_storm: rss_after,
            first_connect,
            connect_cpu_s: connect_cpu,
            // Handshakes saturate kas while the fleet first connects (every dial at once): the
            // cores kas got then are what the model gives a replica's handshakes.
            connect_cores: (connect_cpu / first_connect.as_secs_f64().max(1e-3))
                .min(f64::from(cores())),
            down,
            storm,
            storm_cpu_s: storm_cpu,
        })
    }

    /// Stops the agentk, the fleet and the sim-apiserver (kas stops when the bench drops).
    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(a) = self.apiserver.take() {
            a.shutdown();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Raises this process's open-file limit to fit `n` connections (never lowers it); kas, a separate
/// process, has its own.
fn raise_nofile(n: usize) -> Result<(), CalibrateError> {
    runtime_core::testing::nofile::raise(n as u64 + 1024)
        .map(drop)
        .map_err(|e| setup(format!("{e} (for {n} connections)")))
}

/// Online CPUs.
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

/// Everything a calibration measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The build measured (`machine.build`).
    pub build: String,
    pub fleet: usize,
    pub streams: usize,
    pub through: Latency,
    pub direct: Latency,
    pub request_cpu_s: f64,
    /// kas RSS with the agentk connected, before the fleet.
    pub rss_base: u64,
    pub rss_fleet: u64,
    pub rss_streams: u64,
    pub rss_after_storm: u64,
    pub first_connect: Duration,
    /// kas CPU seconds while the fleet first connected.
    pub connect_cpu_s: f64,
    /// kas CPU seconds per wall second then.
    pub connect_cores: f64,
    pub down: Duration,
    pub storm: Duration,
    pub storm_cpu_s: f64,
}

impl Measured {
    pub fn per_connection_bytes(&self) -> u64 {
        self.rss_fleet.saturating_sub(self.rss_base) / self.fleet.max(1) as u64
    }

    pub fn per_stream_bytes(&self) -> u64 {
        self.rss_streams.saturating_sub(self.rss_fleet) / self.streams.max(1) as u64
    }

    /// kas CPU per handshake: the storm's and the first connect's, averaged.
    pub fn handshake_us(&self) -> f64 {
        (self.storm_cpu_s + self.connect_cpu_s) * 1e6 / (2 * self.fleet.max(1)) as f64
    }

    /// A printed table of the figures.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let ms = |us: f64| us / 1000.0;
        let rows = [
            (
                "kas RSS, agentk connected".to_owned(),
                format!("{:.1} MiB", mib(self.rss_base)),
            ),
            (
                format!("kas RSS, + {} idle connections", self.fleet),
                format!(
                    "{:.1} MiB  ({:.1} KiB per connection)",
                    mib(self.rss_fleet),
                    self.per_connection_bytes() as f64 / 1024.0
                ),
            ),
            (
                format!("kas RSS, + {} open watches", self.streams),
                format!(
                    "{:.1} MiB  ({:.1} KiB per stream)",
                    mib(self.rss_streams),
                    self.per_stream_bytes() as f64 / 1024.0
                ),
            ),
            (
                format!("request through kas, c=1 ({})", self.through.count),
                format!(
                    "p50 {:.2} ms  p99 {:.2} ms  ({} B response)",
                    ms(self.through.p50_us),
                    ms(self.through.p99_us),
                    self.through.response_bytes
                ),
            ),
            (
                "same request straight to sim-apiserver".to_owned(),
                format!(
                    "p50 {:.2} ms  p99 {:.2} ms",
                    ms(self.direct.p50_us),
                    ms(self.direct.p99_us)
                ),
            ),
            (
                "kas CPU per request".to_owned(),
                format!(
                    "{:.0} µs",
                    self.request_cpu_s * 1e6 / self.through.count.max(1) as f64
                ),
            ),
            (
                format!("first connect of {}, all at once", self.fleet),
                format!(
                    "{:.2} s; kas CPU {:.2} s on {:.2} cores",
                    self.first_connect.as_secs_f64(),
                    self.connect_cpu_s,
                    self.connect_cores
                ),
            ),
            (
                "kas crash → listening again".to_owned(),
                format!("{:.2} s", self.down.as_secs_f64()),
            ),
            (
                format!("reconnect storm of {} (from the crash)", self.fleet),
                format!(
                    "{:.2} s; kas CPU {:.2} s ({:.0} µs per handshake, both phases)",
                    self.storm.as_secs_f64(),
                    self.storm_cpu_s,
                    self.handshake_us(),
                ),
            ),
            (
                "kas RSS after the storm".to_owned(),
                format!("{:.1} MiB", mib(self.rss_after_storm)),
            ),
        ];
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut s = String::new();
        for (k, v) in rows {
            s.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        s
    }

    /// The cost profile these figures give, named `name`, measured on `date`.
    pub fn profile(&self, name: &str, date: &str, command: &str) -> CostProfile {
        let model = CostProfile::default_profile();
        // What kas and agentk add as a shifted exponential: the median beyond the API server's own
        // median is exact (base + spread × ln 2); the spread (the exponential's mean) comes from the
        // tail, (p99 - p50) / ln 50, which on a shared machine is mostly scheduling — capped so that
        // the base stays >= 0 (the median wins over the tail).
        let extra_us = (self.through.p50_us - self.direct.p50_us).max(0.0);
        let spread_us = ((self.through.p99_us - self.through.p50_us).max(0.0) / 50f64.ln())
            .min(extra_us / 2f64.ln());
        let base_us = (extra_us - spread_us * 2f64.ln()).max(0.0);
        CostProfile {
            name: name.to_owned(),
            date: date.to_owned(),
            machine: Machine {
                cores: cores(),
                cpu: cpu_model(),
                build: self.build.clone(),
                note: "measured while other builds shared the machine".into(),
            },
            command: command.to_owned(),
            memory: MemoryCosts {
                baseline_bytes: self.rss_base,
                per_connection_bytes: self.per_connection_bytes(),
                per_stream_bytes: self.per_stream_bytes(),
                per_pending_request_bytes: model.memory.per_pending_request_bytes,
                per_mirror_byte: model.memory.per_mirror_byte,
            },
            cpu: CpuCosts {
                handshake_us: round(self.handshake_us()),
                request_us: round(self.request_cpu_s * 1e6 / self.through.count.max(1) as f64),
                byte_ns: model.cpu.byte_ns,
                view_update_us: model.cpu.view_update_us,
                replica_cores: (self.connect_cores * 100.0).round().max(5.0) / 100.0,
            },
            latency: LatencyCosts {
                request_base_us: round(base_us),
                request_spread_us: round(spread_us),
            },
            measured: [
                "memory.baseline_bytes",
                "memory.per_connection_bytes",
                "memory.per_stream_bytes",
                "cpu.handshake_us",
                "cpu.request_us",
                "cpu.replica_cores",
                "latency.request_base_us",
                "latency.request_spread_us",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// To 0.1.
fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// `model name` from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kas_version_says_which_build() {
        assert_eq!(
            KasBuild::parse("kas 0.1.0 (release build)"),
            Some(KasBuild {
                profile: "release",
                test_hooks: false
            })
        );
        assert_eq!(
            KasBuild::parse("kas 0.1.0 (debug build, protocol test hooks)"),
            Some(KasBuild {
                profile: "debug",
                test_hooks: true
            })
        );
        // This workspace's kas says it the same way.
        assert!(KasBuild::parse(&format!("kas {}", kas::VERSION)).is_some());
        assert_eq!(KasBuild::parse("kas 0.1.0"), None);
        assert_eq!(KasBuild::parse("kas 0.1.0 (optimised)"), None);
    }

    #[test]
    fn mixed_builds_are_refused_unless_allowed_and_test_hooks_always() {
        let kas = Path::new("target/x/kas");
        let other = if THIS_BUILD == "debug" {
            "release"
        } else {
            "debug"
        };
        let same = KasBuild {
            profile: THIS_BUILD,
            test_hooks: false,
        };
        assert_eq!(same.check(kas, false).ok().as_deref(), Some(THIS_BUILD));
        let mixed = KasBuild {
            profile: other,
            test_hooks: false,
        };
        assert!(matches!(
            mixed.check(kas, false),
            Err(CalibrateError::MixedBuilds { .. })
        ));
        assert_eq!(
            mixed.check(kas, true).ok(),
            Some(format!("kas {other}, agentk {THIS_BUILD}"))
        );
        let hooks = KasBuild {
            profile: THIS_BUILD,
            test_hooks: true,
        };
        assert!(matches!(
            hooks.check(kas, true),
            Err(CalibrateError::TestHooks(_))
        ));
    }
}
