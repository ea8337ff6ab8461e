//! kas replicas as separate OS processes (the `kas` binary) on one real `redis-server`, agents (the
//! real agentk, in this process, each with a simulated cluster) dialling one front address, and a
//! steady request loop — shared by `tests/replicas_processes.rs` and `examples/failover.rs`
//! (included with `#[path]`, next to `support`).
//!
//! - [`Redis`]: `redis-server` on a free loopback port; the replicas' published loads and each
//!   agent's holders as Redis holds them; `INFO commandstats` totals.
//! - [`Front`]: the agents' one address, a round-robin TCP balancer skipping replicas that refuse.
//! - [`Replica`]: one `kas` process with its configuration file (same ports across restarts);
//!   SIGTERM (graceful) or SIGKILL.
//! - [`Agents`]: agentk per agent on one tokio runtime.
//! - [`Load`]: `GET /k8s-proxy/version` for every agent through every replica marked up.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kas::auth::GeneratedAgent;
use kas::config::{BalanceConfig, ReplicasConfig};
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};

use crate::support::Env;

/// The key prefix of the replicas.
pub const PREFIX: &str = "kas-proc";

pub use crate::support::free_addr;

/// Polls `f` every 50 ms until it answers; panics after `limit` (a hang guard).
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `redis-server` on a free loopback port, killed on drop.
pub struct Redis {
    pub addr: SocketAddr,
    child: Child,
}

impl Redis {
    pub fn start() -> Redis {
        let addr = free_addr();
        let child = Command::new("redis-server")
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        let r = Redis { addr, child };
        wait_until("redis-server", Duration::from_secs(30), || {
            let mut c = r.client().get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
        r
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://{}/0", self.addr)).unwrap()
    }

    /// The fields of hash `key` whose value (`<expires unix ms> …`) has not expired, with the rest
    /// of the value.
    fn live_fields(&self, key: &str) -> Vec<(String, String)> {
        let mut c = self.client().get_connection().unwrap();
        let all: BTreeMap<String, String> = redis::cmd("HGETALL").arg(key).query(&mut c).unwrap();
        let now = unix_ms();
        all.into_iter()
            .filter_map(|(f, v)| {
                let (expires, rest) = v.split_once(' ')?;
                (expires.parse::<u64>().ok()? > now).then(|| (f, rest.to_owned()))
            })
            .collect()
    }

    /// Each live replica's published serving connections, by replica id.
    pub fn loads(&self) -> BTreeMap<u32, u64> {
        self.live_fields(&format!("{PREFIX}:tunnel_tracker2:replicas"))
            .into_iter()
            .filter_map(|(f, rest)| Some((f.parse().ok()?, rest.split(' ').next()?.parse().ok()?)))
            .collect()
    }

    /// The live replicas holding `agent`.
    pub fn holders(&self, agent: u64) -> Vec<u32> {
        self.live_fields(&format!("{PREFIX}:tunnel_tracker2:kas_by_agent_id:{agent}"))
            .into_iter()
            .filter_map(|(f, _)| f.parse().ok())
            .collect()
    }

    /// Every agent in `1..=agents` is held by `k` live replicas, none of them in `without`.
    pub fn all_hold(&self, agents: usize, k: usize, without: Option<u32>) -> bool {
        (1..=agents as u64).all(|a| {
            let h = self.holders(a);
            h.len() == k && without.is_none_or(|w| !h.contains(&w))
        })
    }

    /// Commands Redis executed so far, by command (`INFO commandstats`).
    pub fn commandstats(&self) -> BTreeMap<String, u64> {
        let mut c = self.client().get_connection().unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut c)
            .unwrap();
        // cmdstat_hset:calls=12,usec=...
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .split(',')
                    .next()?
                    .strip_prefix("calls=")?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The front every agent dials: round-robin over the replicas' agent listeners, skipping one that
/// refuses; bytes piped both ways until either side closes.
pub struct Front {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Front {
    pub fn start(backends: Vec<SocketAddr>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut next = 0usize;
            while !stopped.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let mut upstream = None;
                for _ in 0..backends.len() {
                    let b = backends[next % backends.len()];
                    next += 1;
                    if let Ok(s) = TcpStream::connect_timeout(&b, Duration::from_millis(300)) {
                        upstream = Some(s);
                        break;
                    }
                }
                let Some(upstream) = upstream else { continue };
                pipe(client, upstream);
            }
        });
        Front { addr, stop }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
            let _ = from.shutdown(std::net::Shutdown::Read);
        });
    };
    copy(a, b2);
    copy(b, a2);
}

/// Timing of the replicas (the tracker's and the balance's).
#[derive(Debug, Clone)]
pub struct Timing {
    pub find_timeout: Duration,
    pub refresh_period: Duration,
    pub entry_ttl: Duration,
    pub balance: BalanceConfig,
}

/// One replica: its configuration file and, while running, its `kas` process.
pub struct Replica {
    pub id: u32,
    config: PathBuf,
    log: PathBuf,
    pub api: SocketAddr,
    pub agent: SocketAddr,
    child: Option<Child>,
}

impl Replica {
    /// Writes the configuration files of `n` replicas (K = 2) into `dir`.
    pub fn configure(env: &Env, redis: &Redis, dir: &Path, n: u32, t: &Timing) -> Vec<Replica> {
        std::fs::write(dir.join("ca.pem"), env.pki.ca_pem()).unwrap();
        std::fs::write(
            dir.join("replicas.secret"),
            "the-replicas-shared-secret-0123\n",
        )
        .unwrap();
        (1..=n)
            .map(|id| {
                let (api, agent) = (free_addr(), free_addr());
                let mut c = env.config.clone();
                c.api_listener.address = api;
                c.agent_listener.address = agent;
                c.agent_listener.agent_connections = 2;
                c.log.level = "info".into();
                c.log.format = kas::config::LogFormat::Json;
                c.replicas = Some(ReplicasConfig {
                    redis_url: format!("redis://{}/0", redis.addr),
                    key_prefix: PREFIX.into(),
                    replica_id: id,
                    private_address: free_addr(),
                    advertise_host: "127.0.0.1".into(),
                    tls: None,
                    ca_file: dir.join("ca.pem"),
                    server_name: "localhost".into(),
                    shared_secret_file: dir.join("replicas.secret"),
                    find_timeout: t.find_timeout,
                    refresh_period: t.refresh_period,
                    entry_ttl: t.entry_ttl,
                    balance: t.balance.clone(),
                });
                let config = dir.join(format!("kas-{id}.yaml"));
                c.write(&config).unwrap();
                Replica {
                    id,
                    config,
                    log: dir.join(format!("kas-{id}.log")),
                    api,
                    agent,
                    child: None,
                }
            })
            .collect()
    }

    /// Starts the `kas` binary (`kas_bin`) and waits until `/readyz` answers 200.
    pub fn start(&mut self, kas_bin: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(kas_bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(["--shutdown-grace", "5s"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("http://{}/readyz", self.api);
        let (id, log) = (self.id, self.log.clone());
        let child = self.child.as_mut().unwrap();
        wait_until(
            &format!("kas-{} ready", self.id),
            Duration::from_secs(60),
            || {
                // A kas that exited (a port taken, a bad configuration) fails the start at once,
                // with its own words.
                if let Some(status) = child.try_wait().unwrap() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    panic!(
                        "kas-{id} exited ({status}) before it was ready; its log ends:\n{}",
                        lines[lines.len().saturating_sub(20)..].join("\n")
                    );
                }
                let r = ureq::get(&url)
                    .config()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(2)))
                    .build()
                    .call()
                    .ok()?;
                (r.status() == 200).then_some(())
            },
        );
    }

    /// The process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM (graceful: GOAWAY to every agent, requests in flight finish), then waits for the end.
    pub fn stop(&mut self) {
        self.signal("-TERM");
    }

    /// SIGKILL: the process ends at once, its sockets closed by the kernel.
    pub fn kill(&mut self) {
        self.signal("-KILL");
    }

    fn signal(&mut self, signal: &str) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kas-{} did not end after {signal}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's resident memory in KiB (`VmRSS`), while running.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// The log's warnings, errors and connections that ended with requests on them.
    pub fn log_excerpt(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("\"WARN\"")
                    || l.contains("\"ERROR\"")
                    || (l.contains("\"lost_requests\":") && !l.contains("\"lost_requests\":0"))
            })
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The value of a metric series on `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = ureq::get(&format!("http://{}/metrics", self.api))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        crate::support::metric(&text, series)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The agents: a simulated cluster each and agentk dialling the front, on one tokio runtime.
pub struct Agents {
    runtime: Option<tokio::runtime::Runtime>,
    _clusters: Vec<RunningApiServer>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Agents {
    /// agentk for each of `agents`, dialling `front`, its reconnect back-off capped at `backoff_max`.
    pub fn start(
        front: SocketAddr,
        agents: &[GeneratedAgent],
        dir: &Path,
        backoff_max: Duration,
    ) -> Agents {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut clusters = Vec::new();
        let mut stop = Vec::new();
        for a in agents {
            let cluster = ApiServer::start_on(
                runtime.handle(),
                ApiServerConfig {
                    nodes: 1,
                    pods: 3,
                    seed: a.id,
                    ..ApiServerConfig::default()
                },
            )
            .unwrap();
            let kubeconfig = dir.join(format!("cluster-{}.kubeconfig", a.id));
            cluster
                .write_kubeconfig(&kubeconfig, &format!("cluster-{}", a.id))
                .unwrap();
            let mut cfg = agentk::Config::new(front.to_string(), a.token.clone());
            cfg.ca = tunnel_tls::Roots::PemFile(dir.join("ca.pem"));
            cfg.tls_server_name = Some("localhost".into());
            cfg.kube = agentk::KubeSource::Kubeconfig {
                path: kubeconfig,
                context: None,
            };
            cfg.meta.pod_name = Some(format!("agentk-{}", a.id));
            cfg.meta.pod_namespace = Some("gitlab-agent".into());
            cfg.shutdown_grace = Duration::from_secs(1);
            cfg.backoff.max = backoff_max;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            runtime.spawn(async move {
                let _ = agentk::run(cfg, async move {
                    let _ = rx.await;
                })
                .await;
            });
            clusters.push(cluster);
            stop.push(tx);
        }
        Agents {
            runtime: Some(runtime),
            _clusters: clusters,
            stop,
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
        std::thread::sleep(Duration::from_millis(300));
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// What the request loop saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: AtomicU64,
    /// Failed requests: status (`None`: no HTTP answer) and what went wrong.
    pub failures: Mutex<Vec<(Option<u16>, String)>>,
    /// The longest a request took, in µs.
    pub longest_us: AtomicU64,
    /// Per agent (index 0 = agent 1), when a request for it last succeeded.
    pub last_ok: Mutex<Vec<Option<Instant>>>,
    /// The longest time between two successful requests of one agent, in µs (a stall).
    pub longest_gap_us: AtomicU64,
}

/// A steady request loop: `threads` threads, each sending `GET /k8s-proxy/version` for every agent
/// through every replica marked up, over and over, until stopped. A replica is marked down (the
/// write lock of `up`) only once no request to it is in flight.
pub struct Load {
    pub up: Arc<RwLock<Vec<bool>>>,
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(apis: Vec<SocketAddr>, bearers: Vec<String>, threads: usize) -> Load {
        let up = Arc::new(RwLock::new(vec![true; apis.len()]));
        let tally = Arc::new(Tally::default());
        *tally.last_ok.lock().unwrap() = vec![None; bearers.len()];
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|t| {
                let (apis, bearers) = (apis.clone(), bearers.clone());
                let (up, tally, stop) = (up.clone(), tally.clone(), stop.clone());
                std::thread::spawn(move || {
                    let http = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(30)))
                        .max_idle_connections(0)
                        .build()
                        .new_agent();
                    let mut n = t;
                    // Bounded: stops when told (every request is bounded by the 30 s timeout).
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let r = n % apis.len();
                        let i = (n / apis.len()) % bearers.len();
                        let guard = up.read().unwrap();
                        if !guard[r] {
                            continue;
                        }
                        tally.sent.fetch_add(1, Ordering::Relaxed);
                        let url = format!("http://{}/k8s-proxy/version", apis[r]);
                        let t0 = Instant::now();
                        let result = http
                            .get(&url)
                            .header("Authorization", &bearers[i])
                            .call()
                            .map_err(|e| (None, e.to_string()))
                            .and_then(|mut resp| {
                                let status = resp.status().as_u16();
                                let mut body = String::new();
                                let _ = resp.body_mut().as_reader().read_to_string(&mut body);
                                if status == 200 {
                                    Ok(())
                                } else {
                                    Err((Some(status), body))
                                }
                            });
                        let took = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        drop(guard);
                        tally.longest_us.fetch_max(took, Ordering::Relaxed);
                        if result.is_ok() {
                            let now = Instant::now();
                            let mut last = tally.last_ok.lock().unwrap();
                            if let Some(prev) = last[i].replace(now) {
                                let gap =
                                    u64::try_from((now - prev).as_micros()).unwrap_or(u64::MAX);
                                tally.longest_gap_us.fetch_max(gap, Ordering::Relaxed);
                            }
                        }
                        if let Err((status, e)) = result {
                            tally
                                .failures
                                .lock()
                                .unwrap()
                                .push((status, format!("agent {} via kas-{}: {e}", i + 1, r + 1)));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            up,
            tally,
            stop,
            threads: handles,
        }
    }

    /// Marks replica `index` (0-based) up or down; returns once no request to it is in flight.
    pub fn set_up(&self, index: usize, up: bool) {
        self.up.write().unwrap()[index] = up;
    }

    /// Stops the loop and waits for its threads.
    pub fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.tally
    }
}
