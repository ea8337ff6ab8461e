//! Three kas replicas as separate OS processes (the `kas` binary) on one real `redis-server`, and
//! agents (the real agentk, in this process, each with its simulated cluster) holding `K = 2`
//! connections through one front address — a small round-robin TCP balancer in the test, which
//! skips replicas that refuse. All agents first land on replica 1 (the only one up), then the
//! three replicas are restarted one after the other (SIGTERM: GOAWAY to every agent, then a new
//! process on the same ports) while a steady request loop reaches every agent through every
//! replica that is up. Asserted: no request failed, every agent holds two connections again after
//! each restart, and within a bounded time after the last restart no replica holds more than
//! 1.25 × its fair share of the connections (shedding, `kas::balance`: without it the replica
//! restarted last stays empty and the others hold 1.5 × their share).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kas::auth::{AgentsFile, GeneratedAgent};
use kas::config::{BalanceConfig, Ratio, ReplicasConfig};
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};
use support::Env;

const AGENTS: usize = 6;
const REPLICAS: usize = 3;
const PREFIX: &str = "kas-proc";
/// Every wait of this test ends here at the latest (a hang guard, not a timed assertion).
const GUARD: Duration = Duration::from_secs(60);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-server` on a free loopback port, killed on drop.
struct Redis {
    addr: SocketAddr,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let addr = free_addr();
        let child = Command::new("redis-server")
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        let r = Redis { addr, child };
        wait_until("redis-server", GUARD, || {
            let mut c = r.client().get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
        r
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://{}/0", self.addr)).unwrap()
    }

    /// Each live replica's published serving connections, by replica id.
    fn loads(&self) -> BTreeMap<u32, u64> {
        let mut c = self.client().get_connection().unwrap();
        let dir: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{PREFIX}:tunnel_tracker2:replicas"))
            .query(&mut c)
            .unwrap();
        let now = unix_ms();
        dir.iter()
            .filter_map(|(f, v)| {
                let mut it = v.split(' ');
                let expires: u64 = it.next()?.parse().ok()?;
                let load: u64 = it.next()?.parse().ok()?;
                (expires > now).then_some((f.parse().ok()?, load))
            })
            .collect()
    }

    /// The live replicas holding `agent`.
    fn holders(&self, agent: u64) -> Vec<u32> {
        let mut c = self.client().get_connection().unwrap();
        let h: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{PREFIX}:tunnel_tracker2:kas_by_agent_id:{agent}"))
            .query(&mut c)
            .unwrap();
        let now = unix_ms();
        h.iter()
            .filter(|(_, v)| {
                v.split(' ')
                    .next()
                    .and_then(|e| e.parse::<u64>().ok())
                    .is_some_and(|e| e > now)
            })
            .filter_map(|(f, _)| f.parse().ok())
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The front every agent dials: round-robin over the replicas' agent listeners, skipping one that
/// refuses; bytes piped both ways until either side closes.
struct Front {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Front {
    fn start(backends: Vec<SocketAddr>) -> Front {
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

/// One replica: its configuration file and, while running, its `kas` process.
struct Replica {
    id: u32,
    config: PathBuf,
    log: PathBuf,
    api: SocketAddr,
    agent: SocketAddr,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kas"))
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
        wait_until(&format!("kas-{} ready", self.id), GUARD, || {
            let r = ureq::get(&url)
                .config()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .call()
                .ok()?;
            (r.status() == 200).then_some(())
        });
    }

    /// SIGTERM (graceful: GOAWAY to every agent, requests in flight finish), then waits for the end.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + GUARD;
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kas-{} did not stop after SIGTERM",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
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

fn write_configs(env: &Env, redis: &Redis, dir: &Path) -> Vec<Replica> {
    std::fs::write(dir.join("ca.pem"), env.pki.ca_pem()).unwrap();
    std::fs::write(
        dir.join("replicas.secret"),
        "the-replicas-shared-secret-0123\n",
    )
    .unwrap();
    (1..=REPLICAS as u32)
        .map(|id| {
            let (api, agent) = (free_addr(), free_addr());
            let mut c = env.config.clone();
            c.api_listener.address = api;
            c.agent_listener.address = agent;
            c.agent_listener.agent_connections = 2;
            c.log.level = "info".into();
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
                find_timeout: Duration::from_millis(500),
                refresh_period: Duration::from_millis(300),
                entry_ttl: Duration::from_millis(1500),
                balance: BalanceConfig {
                    enabled: true,
                    tolerance: Ratio(1.1),
                    target: Ratio(1.0),
                    interval: Duration::from_millis(600),
                    max_step_fraction: Ratio(0.34),
                },
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

/// The agents: a simulated cluster each and agentk dialling the front, on one tokio runtime.
struct Agents {
    runtime: tokio::runtime::Runtime,
    _clusters: Vec<RunningApiServer>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Agents {
    fn start(front: SocketAddr, agents: &[GeneratedAgent], dir: &Path) -> Agents {
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
            // The back-off capped at 1 s instead of 30 s: a scaled-down deployment.
            cfg.backoff.max = Duration::from_secs(1);
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
            runtime,
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
        let rt = std::mem::replace(
            &mut self.runtime,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        );
        rt.shutdown_timeout(Duration::from_secs(2));
    }
}

/// Requests sent and failed by the steady loop.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// `GET /k8s-proxy/version` for every agent through every replica marked up, over and over, until
/// `stop`; a replica is marked down (write lock) only once no request to it is in flight.
fn request_loop(
    apis: Vec<SocketAddr>,
    up: Arc<RwLock<Vec<bool>>>,
    bearers: Vec<String>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .max_idle_connections(0)
            .build()
            .new_agent();
        // Bounded: stops when the test says so (the test itself is bounded by its hang guards).
        while !stop.load(Ordering::Relaxed) {
            for (r, api) in apis.iter().enumerate() {
                for (i, bearer) in bearers.iter().enumerate() {
                    let guard = up.read().unwrap();
                    if !guard[r] {
                        continue;
                    }
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let url = format!("http://{api}/k8s-proxy/version");
                    let result = http
                        .get(&url)
                        .header("Authorization", bearer)
                        .call()
                        .map_err(|e| e.to_string())
                        .and_then(|mut resp| {
                            let status = resp.status();
                            let mut body = String::new();
                            let _ = resp.body_mut().as_reader().read_to_string(&mut body);
                            if status == 200 {
                                Ok(())
                            } else {
                                Err(format!("{status}: {body}"))
                            }
                        });
                    drop(guard);
                    if let Err(e) = result {
                        tally.failures.lock().unwrap().push(format!(
                            "agent {} via kas-{}: {e}",
                            i + 1,
                            r + 1
                        ));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Every agent holds two connections (to distinct replicas, as published in Redis).
fn all_hold_two(redis: &Redis) -> bool {
    (1..=AGENTS as u64).all(|a| redis.holders(a).len() == 2)
}

#[test]
fn rolling_restart_of_three_processes_keeps_every_agent_reachable_and_evens_out_load() {
    let env = Env::new();
    let agents = AgentsFile::generate(AGENTS, env.dir.path()).unwrap();
    let redis = Redis::start();
    let dir = env.dir.path().to_owned();
    let mut replicas = write_configs(&env, &redis, &dir);
    let front = Front::start(replicas.iter().map(|r| r.agent).collect());

    // Only replica 1 is up when the agents start: they all land there (and keep dialling for a
    // second replica, refused as duplicates through the front).
    replicas[0].start();
    let _agents = Agents::start(front.addr, &agents, &dir);
    wait_until("every agent on kas-1", GUARD, || {
        (1..=AGENTS as u64)
            .all(|a| redis.holders(a) == [1])
            .then_some(())
    });
    replicas[1].start();
    replicas[2].start();
    wait_until("every agent on two replicas", GUARD, || {
        all_hold_two(&redis).then_some(())
    });

    let up = Arc::new(RwLock::new(vec![true; REPLICAS]));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let bearers = (1..=AGENTS as u64).map(|a| env.admin_bearer(a)).collect();
    let requests = request_loop(
        replicas.iter().map(|r| r.api).collect(),
        up.clone(),
        bearers,
        tally.clone(),
        stop.clone(),
    );

    for r in 0..REPLICAS {
        // Let the loop reach every agent through every replica for a while first.
        std::thread::sleep(Duration::from_millis(1500));
        up.write().unwrap()[r] = false;
        replicas[r].stop();
        wait_until(
            &format!("every agent on two replicas without kas-{}", r + 1),
            GUARD,
            || {
                (1..=AGENTS as u64)
                    .all(|a| {
                        let h = redis.holders(a);
                        h.len() == 2 && !h.contains(&(r as u32 + 1))
                    })
                    .then_some(())
            },
        );
        replicas[r].start();
        up.write().unwrap()[r] = true;
    }

    // Bounded: scaled down from the 10 minutes (refresh 300 ms, a step per 600 ms).
    let fair = (2 * AGENTS) as f64 / REPLICAS as f64;
    let settle = Instant::now();
    let mut last = BTreeMap::new();
    let mut even_since: Option<Instant> = None;
    while settle.elapsed() < Duration::from_secs(30) {
        let loads = redis.loads();
        let even = loads.len() == REPLICAS
            && loads.values().sum::<u64>() == 2 * AGENTS as u64
            && loads.values().all(|l| *l as f64 <= 1.25 * fair)
            && all_hold_two(&redis);
        last = loads;
        // Even for two refresh periods in a row (not a passing moment).
        match (even, even_since) {
            (true, Some(t)) if t.elapsed() >= Duration::from_millis(700) => break,
            (true, None) => even_since = Some(Instant::now()),
            (false, _) => even_since = None,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let balanced_after = settle.elapsed();
    // Keep the loop running a moment longer: requests during the last moves count too.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    requests.join().unwrap();

    let failures = tally.failures.lock().unwrap().clone();
    let sent = tally.sent.load(Ordering::Relaxed);
    eprintln!(
        "{sent} requests, {} failed; loads {last:?} (fair share {fair:.2}) {balanced_after:?} after the last restart",
        failures.len()
    );
    if !failures.is_empty() || even_since.is_none() {
        for r in &replicas {
            eprintln!("--- kas-{} log tail:\n{}", r.id, r.log_tail());
        }
    }
    assert!(sent > 100, "the request loop ran ({sent} requests)");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:#?}",
        failures.len()
    );
    assert!(
        even_since.is_some(),
        "no replica may hold more than 1.25 × its fair share ({:.2}) within 30 s of the rolling restart: {last:?}",
        1.25 * fair
    );
    let metrics: u64 = replicas
        .iter()
        .map(|r| {
            let text = ureq::get(&format!("http://{}/metrics", r.api))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap();
            support::metric(&text, "kas_balance_shed_total").unwrap_or(0.0) as u64
        })
        .sum();
    assert!(
        metrics > 0,
        "the replicas shed connections (kas_balance_shed_total)"
    );
}
