//! End-to-end test support: the real kas, the real agentk and simulated Kubernetes API servers in one
//! process, on 127.0.0.1 ports chosen by the OS, reached with the real `kubectl` and with an HTTPS
//! client (ureq) trusting the test CA.
//!
//! - [`Stack`]: kas with its HTTP API on HTTPS, the agents file of [`Env`] (agents 1..=3) and its users
//!   (`admin` may reach every agent, `alice` only agent 1); one tokio runtime holding, per started
//!   agent, a simulated API server (its "cluster") and an agentk connected to kas. Agents can be
//!   stopped and started again, and kas can be restarted on the same ports. An agent listed in the
//!   agents file but never started (agent 3 by default) never connects.
//! - [`Kubectl`]: the real `kubectl` with a kubeconfig and a context, every run bounded by a hang
//!   guard; [`KubectlStream`]: a long-running one (`--watch`, `logs -f`) whose stdout lines arrive as
//!   they are printed.
//! - [`https`] / [`call`]: an HTTPS client that reports 4xx/5xx as replies.
//! - [`EchoServer`]: an HTTP server in the test, standing in for an in-cluster service; it reports
//!   every request it gets.
//! - [`PartitionProxy`]: a TCP proxy between an agentk and kas that can become a black hole — it
//!   stops forwarding and never closes (no FIN, no RST): a silent partition between real processes.
//!
//! `kubectl` is required: when it is missing the tests fail with a message saying how to install it
//! (they never skip).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kas::config::Config;
use kas::{Kas, Running, ShutdownReport, StartOptions};
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};

use crate::support::{Env, GUARD, Reply, eventually};

/// How long kas and agentk get to finish in-flight work when a test stops them.
const GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// kubectl

/// The `kubectl` binary: `$KUBECTL` if set, else `/usr/bin/kubectl`, else the first on `PATH`;
/// checked once with `kubectl version --client`. Panics, saying how to install it, when there is
/// none that runs: these tests need the real client and must not pass by skipping.
pub fn kubectl_path() -> PathBuf {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Some(p) = std::env::var_os("KUBECTL") {
            candidates.push(PathBuf::from(p));
        } else {
            candidates.push(PathBuf::from("/usr/bin/kubectl"));
            if let Some(path) = std::env::var_os("PATH") {
                candidates.extend(std::env::split_paths(&path).map(|d| d.join("kubectl")));
            }
        }
        let path = candidates
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| "kubectl was not found ($KUBECTL, /usr/bin/kubectl, PATH)".to_owned())?;
        let out = run_bounded(
            {
                let mut c = Command::new(&path);
                c.args(["version", "--client"]);
                c
            },
            "kubectl version --client",
        );
        if out.status.success() {
            Ok(path)
        } else {
            Err(format!(
                "{} version --client failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    match found {
        Ok(path) => path.clone(),
        Err(why) => panic!(
            "{why}. The end-to-end tests drive the real kubectl and do not skip: install it \
             (Debian/Ubuntu: `apt-get install kubernetes-client`) and run again."
        ),
    }
}

/// Runs `cmd` to completion, reading stdout and stderr; kills it and panics after [`GUARD`].
fn run_bounded(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("{what} did not finish within {GUARD:?} (hang guard); stderr: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `kubectl` with one kubeconfig and context, and a discovery cache of its own.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub context: String,
    pub cache_dir: PathBuf,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path, context: &str, cache_dir: &Path) -> Kubectl {
        Kubectl {
            kubeconfig: kubeconfig.to_owned(),
            context: context.to_owned(),
            cache_dir: cache_dir.to_owned(),
        }
    }

    /// The same kubeconfig with another context.
    pub fn context(&self, context: &str) -> Kubectl {
        Kubectl {
            context: context.to_owned(),
            ..self.clone()
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kubectl_path());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--context")
            .arg(&self.context)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Runs `kubectl <args>` to completion (request timeout 20 s, hang guard [`GUARD`]).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--request-timeout=20s"];
        all.extend_from_slice(args);
        run_bounded(
            self.command(&all),
            &format!("kubectl --context {} {}", self.context, args.join(" ")),
        )
    }

    /// Runs `kubectl <args>`, asserts it succeeded, returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl --context {} {} failed ({}): {}",
            self.context,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `kubectl <args>`, asserts it failed, returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl --context {} {} succeeded but should have failed: {}",
            self.context,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs `kubectl <args>` and parses its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}): {out}"))
    }

    /// Starts a long-running `kubectl <args>` (no request timeout) whose stdout is read line by line.
    pub fn spawn(&self, args: &[&str]) -> KubectlStream {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            // Ends at EOF (kubectl exited or was killed).
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends at EOF.
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        KubectlStream {
            what: format!("kubectl --context {} {}", self.context, args.join(" ")),
            child,
            lines,
            stderr,
        }
    }
}

/// A running `kubectl` whose stdout lines are handed over as they come. Killed when dropped.
pub struct KubectlStream {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl KubectlStream {
    /// The next stdout line; `None` once kubectl closed its stdout. Panics after [`GUARD`].
    pub fn next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(GUARD) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{}: no output within {GUARD:?} (hang guard); stderr: {}",
                self.what,
                self.stderr()
            ),
        }
    }

    /// Reads lines until one satisfies `pred` and returns it (at most 10 000 lines, each within
    /// [`GUARD`]). Panics if kubectl ends first.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            match self.next_line() {
                Some(line) if pred(&line) => return line,
                Some(line) => seen.push(line),
                None => panic!(
                    "{}: ended before {what}; printed {seen:?}; stderr: {}",
                    self.what,
                    self.stderr()
                ),
            }
        }
        panic!("{}: 10000 lines without {what}", self.what);
    }

    /// Whether kubectl is still running (a followed stream has not ended).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for KubectlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pod names (`metadata.name`) in a simulated store, sorted.
pub fn pod_names(cluster: &RunningApiServer, namespace: Option<&str>) -> Vec<String> {
    names(&cluster.store().list("v1", "Pod", namespace))
}

/// `metadata.name` of each object, sorted.
pub fn names(items: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// HTTPS client

/// A blocking HTTPS client trusting only `ca_pem`; 4xx/5xx are replies, not errors.
pub fn https(ca_pem: &[u8]) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(ca_pem).unwrap();
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(GUARD))
        .build()
        .new_agent()
}

/// Sends one request; every header pair is added as is.
pub fn call(
    client: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = client
        .run(req.body(body).unwrap())
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    into_reply(resp)
}

pub fn into_reply(mut resp: ureq::http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// Asserts that `reply` is a Kubernetes `Status` failure with `code` and `reason`.
pub fn assert_status(reply: &Reply, code: u16, reason: &str) {
    assert_eq!(reply.status, code, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{}",
        reply.body
    );
    let v = reply.json();
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// Asserts that `reply` is kas's own JSON error (`{code, reason, message}`) with `code`.
pub fn assert_plain_error(reply: &Reply, code: u16, reason: &str) {
    assert_eq!(reply.status, code, "{}", reply.body);
    let v = reply.json();
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

// ---------------------------------------------------------------------------------------------
// The stack

/// What [`Stack::start`] starts.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Agents (ids in the agents file, 1..=3) that get a cluster and a running agentk.
    pub agents: Vec<u64>,
    /// kas's `routing.pending_request_deadline`.
    pub pending_request_deadline: Duration,
    /// kas's `routing.response_timeout`.
    pub response_timeout: Duration,
    /// Agents that reach kas through a [`PartitionProxy`] (see [`Stack::partition`]).
    pub behind_proxy: Vec<u64>,
    /// Keepalive interval and idle timeout of both kas and agentk (default: kas's and agentk's own),
    /// and agentk's handshake timeout.
    pub keepalive: Option<(Duration, Duration)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            agents: vec![1, 2],
            pending_request_deadline: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            behind_proxy: Vec::new(),
            keepalive: None,
        }
    }
}

struct Cluster {
    agent_id: u64,
    apiserver: RunningApiServer,
    kubeconfig: PathBuf,
}

/// One agentk on a tokio runtime of its own, so that it can be killed outright: dropping the
/// runtime drops every task and closes every socket at once, as the end of a killed process does.
struct AgentTask {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), agentk::Error>>,
    runtime: tokio::runtime::Runtime,
}

/// kas + simulated clusters + agentk, all real, in this process.
pub struct Stack {
    pub env: Env,
    kas: Option<Running>,
    runtime: Option<tokio::runtime::Runtime>,
    clusters: Vec<Cluster>,
    agents: HashMap<u64, AgentTask>,
    /// Proxies between agents and kas, by agent id.
    proxies: HashMap<u64, PartitionProxy>,
    keepalive: Option<(Duration, Duration)>,
    /// The CA of both kas listeners (PEM file).
    pub ca_file: PathBuf,
    /// Contexts `agent-N` (user `admin`, N = 1..=3), `alice-N` (user `alice`, N = 1..=2) and
    /// `wrong-1` (a token no user has), all pointing at kas's `/k8s-proxy`.
    pub kubeconfig: PathBuf,
    kube_cache: PathBuf,
}

fn kas_options(env: &Env) -> StartOptions {
    StartOptions {
        threads: 2,
        shutdown_grace: GRACE,
        api_tls: Some(env.config.agent_listener.tls.clone()),
    }
}

/// Logs to the test's output when `E2E_LOG` is set (a `tracing` filter, e.g. `info,kas=debug`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("E2E_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl Stack {
    pub fn start(opts: StackOptions) -> Stack {
        Stack::start_with(opts, |_| {})
    }

    /// [`Stack::start`], with kas's configuration adjusted by `adjust` first.
    pub fn start_with(opts: StackOptions, adjust: impl FnOnce(&mut Config)) -> Stack {
        init_logging();
        let mut env = Env::new();
        adjust(&mut env.config);
        env.config.routing.pending_request_deadline = opts.pending_request_deadline;
        env.config.routing.response_timeout = opts.response_timeout;
        if let Some((interval, idle)) = opts.keepalive {
            env.config.keepalive.interval = interval;
            env.config.keepalive.idle_timeout = idle;
        }
        let ca_file = env.dir.path().join("ca.pem");
        std::fs::write(&ca_file, env.pki.ca_pem()).unwrap();
        let kas = Kas::start_with(env.config.clone(), kas_options(&env)).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-clusters")
            .enable_all()
            .build()
            .unwrap();
        let mut clusters = Vec::new();
        for &id in &opts.agents {
            let apiserver = ApiServer::start_on(
                runtime.handle(),
                ApiServerConfig {
                    // Distinct clusters: node counts and pod names (seeded) differ.
                    nodes: 1 + id as usize,
                    pods: 4 + id as usize,
                    seed: id,
                    ..ApiServerConfig::default()
                },
            )
            .unwrap();
            let kubeconfig = env.dir.path().join(format!("cluster-{id}.kubeconfig"));
            apiserver
                .write_kubeconfig(&kubeconfig, &format!("cluster-{id}"))
                .unwrap();
            clusters.push(Cluster {
                agent_id: id,
                apiserver,
                kubeconfig,
            });
        }
        let kube_cache = env.dir.path().join("kube-cache");
        let kubeconfig = env.dir.path().join("kubeconfig");
        let proxies = opts
            .behind_proxy
            .iter()
            .map(|id| (*id, PartitionProxy::start(kas.agent_addr())))
            .collect();
        let mut stack = Stack {
            env,
            kas: Some(kas),
            runtime: Some(runtime),
            clusters,
            agents: HashMap::new(),
            proxies,
            keepalive: opts.keepalive,
            ca_file,
            kubeconfig,
            kube_cache,
        };
        stack.write_kubeconfig();
        for &id in &opts.agents {
            stack.start_agent(id);
        }
        assert!(
            stack.kas().wait_for_agents(&opts.agents, GUARD),
            "agents {:?} did not connect (connected: {:?})",
            opts.agents,
            stack.kas().connected_agents()
        );
        stack
    }

    pub fn kas(&self) -> &Running {
        self.kas.as_ref().expect("kas is running")
    }

    /// The simulated cluster behind agent `id`.
    pub fn cluster(&self, id: u64) -> &RunningApiServer {
        &self
            .clusters
            .iter()
            .find(|c| c.agent_id == id)
            .unwrap_or_else(|| panic!("no cluster for agent {id}"))
            .apiserver
    }

    /// Shuts down the simulated API server of agent `id`'s cluster (the agent stays connected).
    pub fn stop_cluster(&mut self, id: u64) {
        let i = self
            .clusters
            .iter()
            .position(|c| c.agent_id == id)
            .unwrap_or_else(|| panic!("no cluster for agent {id}"));
        self.clusters.remove(i).apiserver.shutdown();
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("runtime is running").handle()
    }

    /// `kubectl` through kas with context `context`.
    pub fn kubectl(&self, context: &str) -> Kubectl {
        Kubectl::new(&self.kubeconfig, context, &self.kube_cache)
    }

    /// An HTTPS client trusting the stack's CA.
    pub fn https(&self) -> ureq::Agent {
        https(self.env.pki.ca_pem().as_bytes())
    }

    /// `Bearer pat:<agent>:<admin token>`.
    pub fn admin(&self, agent_id: u64) -> String {
        self.env.admin_bearer(agent_id)
    }

    /// `Bearer pat:<agent>:<alice token>` (alice may reach agent 1 only).
    pub fn alice(&self, agent_id: u64) -> String {
        format!("Bearer pat:{agent_id}:{}", self.env.alice_token)
    }

    /// GET `<kas api>/<path>` with `authorization`.
    pub fn get(&self, path: &str, authorization: Option<&str>) -> Reply {
        let url = format!("{}{path}", self.kas().api_url());
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        call(&self.https(), "GET", &url, &headers, Vec::new())
    }

    /// kas's `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics", None).body
    }

    fn write_kubeconfig(&self) {
        let server = self.kas().k8s_proxy_url();
        let ca = self.ca_file.display();
        let mut users = vec![("wrong-1".to_owned(), "pat:1:not-a-valid-token".to_owned())];
        for id in 1..=3u64 {
            users.push((
                format!("agent-{id}"),
                format!("pat:{id}:{}", self.env.admin_token),
            ));
        }
        for id in 1..=2u64 {
            users.push((
                format!("alice-{id}"),
                format!("pat:{id}:{}", self.env.alice_token),
            ));
        }
        let mut text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: agent-1\nclusters:\n- name: kas\n  \
             cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n"
        );
        for (name, token) in &users {
            text.push_str(&format!(
                "- name: {name}\n  user:\n    token: \"{token}\"\n"
            ));
        }
        text.push_str("contexts:\n");
        for (name, _) in &users {
            text.push_str(&format!(
                "- name: {name}\n  context:\n    cluster: kas\n    user: {name}\n    namespace: default\n"
            ));
        }
        std::fs::write(&self.kubeconfig, text).unwrap();
    }

    /// Starts agentk for agent `id` (its cluster must exist), dialing kas's agent listener.
    pub fn start_agent(&mut self, id: u64) {
        assert!(
            !self.agents.contains_key(&id),
            "agent {id} is already running"
        );
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.agent_id == id)
            .unwrap_or_else(|| panic!("no cluster for agent {id}"));
        let kas_address = match self.proxies.get(&id) {
            Some(p) => p.addr,
            None => self.kas().agent_addr(),
        };
        let mut cfg = agentk::Config::new(kas_address.to_string(), self.env.token(id).to_owned());
        if let Some((interval, idle)) = self.keepalive {
            cfg.tunnel.settings.keepalive_interval = interval;
            cfg.tunnel.settings.idle_timeout = idle;
            cfg.tunnel.handshake_timeout = idle;
        }
        cfg.ca = tunnel_tls::Roots::PemFile(self.ca_file.clone());
        cfg.tls_server_name = Some("localhost".into());
        cfg.kube = agentk::KubeSource::Kubeconfig {
            path: cluster.kubeconfig.clone(),
            context: None,
        };
        cfg.meta.pod_name = Some(format!("agentk-{id}"));
        cfg.meta.pod_namespace = Some("gitlab-agent".into());
        cfg.shutdown_grace = Duration::from_secs(2);
        // Reconnect back-off capped at 2 s instead of 30 s: after kas restarts, agents are back
        // within seconds (the policy itself is agentk's, unchanged).
        cfg.backoff.max = Duration::from_secs(2);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("e2e-agentk-{id}"))
            .enable_all()
            .build()
            .unwrap();
        let done = runtime.spawn(async move {
            agentk::run(cfg, async move {
                let _ = stopped.await;
            })
            .await
        });
        self.agents.insert(
            id,
            AgentTask {
                stop,
                done,
                runtime,
            },
        );
    }

    /// Kills agentk `id` outright (no GOAWAY, no grace: its runtime is dropped, which closes its
    /// sockets) and waits for kas to see the agent gone.
    pub fn kill_agent(&mut self, id: u64) {
        let task = self
            .agents
            .remove(&id)
            .unwrap_or_else(|| panic!("agent {id} is not running"));
        task.runtime.shutdown_background();
        eventually(&format!("kas to see agent {id} disconnected"), || {
            (!self.kas().connected_agents().contains(&id)).then_some(())
        });
    }

    /// Stops agentk `id` (its shutdown future resolves), waits for it to end and for kas to see
    /// the agent gone.
    pub fn stop_agent(&mut self, id: u64) {
        let task = self
            .agents
            .remove(&id)
            .unwrap_or_else(|| panic!("agent {id} is not running"));
        let _ = task.stop.send(());
        let result = task
            .runtime
            .block_on(async { tokio::time::timeout(GUARD, task.done).await });
        task.runtime.shutdown_timeout(GRACE);
        match result {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("agent {id} failed: {e}"),
            Ok(Err(e)) => panic!("agent {id} task failed: {e}"),
            Err(_) => panic!("agent {id} did not stop within {GUARD:?} (hang guard)"),
        }
        eventually(&format!("kas to see agent {id} disconnected"), || {
            (!self.kas().connected_agents().contains(&id)).then_some(())
        });
    }

    /// Shuts kas down (grace period `grace`) and starts a new kas with the same configuration on the
    /// same agent and API ports. Returns the first kas's shutdown report.
    pub fn restart_kas(&mut self, grace: Duration) -> ShutdownReport {
        let old = self.kas.take().expect("kas is running");
        let (agent_addr, api_addr) = (old.agent_addr(), old.api_addr());
        let report = old.shutdown_within(grace);
        let mut config: Config = self.env.config.clone();
        config.agent_listener.address = agent_addr;
        config.api_listener.address = api_addr;
        let kas = Kas::start_with(config, kas_options(&self.env)).unwrap_or_else(|e| {
            panic!("kas could not start again on {agent_addr} / {api_addr}: {e}")
        });
        assert_eq!(kas.agent_addr(), agent_addr);
        assert_eq!(kas.api_addr(), api_addr);
        self.kas = Some(kas);
        report
    }

    /// Silently partitions agent `id` (started with `behind_proxy`) from kas: see
    /// [`PartitionProxy::partition`].
    pub fn partition(&self, id: u64) {
        self.proxies
            .get(&id)
            .unwrap_or_else(|| panic!("agent {id} is not behind a proxy"))
            .partition();
    }

    /// Closes agent `id`'s proxied connections politely (FIN both ways) and refuses new ones until
    /// [`Stack::heal`]: what a *killed* process looks like, for contrast with a partition.
    pub fn close_proxied(&self, id: u64) {
        self.proxies
            .get(&id)
            .unwrap_or_else(|| panic!("agent {id} is not behind a proxy"))
            .close_all();
    }

    /// Ends the partition of agent `id` for new connections.
    pub fn heal(&self, id: u64) {
        self.proxies
            .get(&id)
            .unwrap_or_else(|| panic!("agent {id} is not behind a proxy"))
            .heal();
    }

    /// Stops every agent, kas and the clusters.
    pub fn shutdown(mut self) {
        self.stop_everything();
    }

    fn stop_everything(&mut self) {
        for (_, task) in self.agents.drain() {
            let _ = task.stop.send(());
            task.runtime.shutdown_timeout(GRACE);
        }
        if let Some(kas) = self.kas.take() {
            kas.shutdown_within(GRACE);
        }
        for c in self.clusters.drain(..) {
            c.apiserver.shutdown();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(GRACE);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_everything();
    }
}

// ---------------------------------------------------------------------------------------------
// An in-cluster service

/// One request [`EchoServer`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server on 127.0.0.1 (a tokio task): reports each request, then answers `201` with
/// `x-served-by: echo-server`, `content-type: text/plain` and the body `echo:<request body>`.
pub struct EchoServer {
    pub addr: SocketAddr,
    received: mpsc::Receiver<Received>,
}

impl EchoServer {
    pub fn start(runtime: &tokio::runtime::Handle) -> EchoServer {
        use http_body_util::{BodyExt as _, Full};
        use hyper::body::Bytes;
        use hyper_util::rt::TokioIo;

        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, received) = mpsc::channel();
        runtime.spawn(async move {
            // Ends with the runtime.
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let method = req.method().to_string();
                                let target = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_owned())
                                    .unwrap_or_default();
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(n, v)| {
                                        (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let mut answer = b"echo:".to_vec();
                                answer.extend_from_slice(&body);
                                let _ = tx.send(Received {
                                    method,
                                    target,
                                    headers,
                                    body,
                                });
                                let resp = hyper::Response::builder()
                                    .status(201)
                                    .header("x-served-by", "echo-server")
                                    .header("content-type", "text/plain")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        EchoServer { addr, received }
    }

    /// The next request the server got (hang guard [`GUARD`]).
    pub fn next(&self) -> Received {
        self.received
            .recv_timeout(GUARD)
            .expect("the echo server got no request (hang guard)")
    }

    /// Whether a request arrived that was not taken with [`EchoServer::next`].
    pub fn has_unread(&self) -> bool {
        self.received.try_recv().is_ok()
    }
}

/// Creates Service `namespace/name` in `cluster` with cluster IP 127.0.0.1 and one port named
/// `port_name` with `addr`'s port (the simulated cluster's services are reachable on loopback).
pub fn add_loopback_service(
    cluster: &RunningApiServer,
    namespace: &str,
    name: &str,
    port_name: &str,
    addr: SocketAddr,
) {
    if cluster
        .store()
        .get("v1", "Namespace", None, namespace)
        .is_none()
    {
        cluster.store().add_namespace(namespace).unwrap();
    }
    cluster
        .store()
        .apply(
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "clusterIP": "127.0.0.1",
                    "ports": [{"name": port_name, "port": addr.port(), "protocol": "TCP"}],
                }
            }),
            "kas-e2e",
            true,
        )
        .unwrap();
}

/// What [`BlackHole`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoleEvent {
    /// A connection was accepted.
    Accepted,
    /// The peer closed it (EOF or error), after sending this many bytes.
    Closed(usize),
    /// The connection was still open after the hang guard [`GUARD`].
    StillOpen,
}

/// A TCP server on 127.0.0.1 that accepts connections, reads what comes and never answers.
pub struct BlackHole {
    pub addr: SocketAddr,
    events: mpsc::Receiver<HoleEvent>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            // Ends when the test's receiver is gone (the next accept's send fails) or on error.
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { return };
                if tx.send(HoleEvent::Accepted).is_err() {
                    return;
                }
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut total = 0;
                    let mut buf = [0u8; 4096];
                    // Ends when the peer closes (or after the hang guard: the read times out).
                    let _ = tcp.set_read_timeout(Some(GUARD));
                    let event = loop {
                        match tcp.read(&mut buf) {
                            Ok(0) => break HoleEvent::Closed(total),
                            Ok(n) => total += n,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                break HoleEvent::StillOpen;
                            }
                            Err(_) => break HoleEvent::Closed(total),
                        }
                    };
                    let _ = tx.send(event);
                });
            }
        });
        BlackHole { addr, events }
    }

    /// The next event (hang guard [`GUARD`] + 5 s, beyond the reader's own guard).
    pub fn next(&self) -> HoleEvent {
        self.events
            .recv_timeout(GUARD + Duration::from_secs(5))
            .expect("the black hole saw nothing (hang guard)")
    }
}

// ---------------------------------------------------------------------------------------------
// A silent partition

/// A TCP proxy in front of kas's agent listener that can become a black hole.
///
/// Forwarding, it copies octets both ways. [`PartitionProxy::partition`] turns every connection it
/// carries into a black hole: from then on it reads and discards what either side sends and never
/// closes either socket — no FIN, no RST, exactly what a dead path, a crashed NAT or a pulled cable
/// looks like to both ends, which only keepalive and timeouts can detect. New connections accepted
/// while partitioned are black holes from the start (the TCP handshake completes, nothing else does).
/// [`PartitionProxy::heal`] lets *new* connections through again; the ones that fell into the hole
/// stay dead (octets were lost in them). Dropping the proxy closes everything.
pub struct PartitionProxy {
    pub addr: SocketAddr,
    partitioned: Arc<AtomicBool>,
    /// Bumped at every partition: a connection started in an earlier generation and alive in a
    /// partitioned one is dead for good.
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Close (FIN) instead of swallowing: a polite "partition".
    polite: Arc<AtomicBool>,
}

impl PartitionProxy {
    pub fn start(upstream: SocketAddr) -> PartitionProxy {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let partitioned = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let polite = Arc::new(AtomicBool::new(false));
        let (p, g, st, pol) = (
            partitioned.clone(),
            generation.clone(),
            stop.clone(),
            polite.clone(),
        );
        std::thread::spawn(move || {
            // Until the proxy is dropped.
            while !st.load(Ordering::SeqCst) {
                let down = match listener.accept() {
                    Ok((down, _)) => down,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => return,
                };
                let _ = down.set_nonblocking(false);
                let born = g.load(Ordering::SeqCst);
                let hole = p.load(Ordering::SeqCst);
                let up = if hole {
                    None
                } else {
                    std::net::TcpStream::connect(upstream).ok()
                };
                let dead = Arc::new(AtomicBool::new(hole));
                match up {
                    Some(up) => {
                        for (from, to) in [
                            (down.try_clone().unwrap(), up.try_clone().unwrap()),
                            (up, down),
                        ] {
                            let (p, g, st, dead, pol) =
                                (p.clone(), g.clone(), st.clone(), dead.clone(), pol.clone());
                            std::thread::spawn(move || {
                                pump(from, to, born, &p, &g, &st, &dead, &pol)
                            });
                        }
                    }
                    None if pol.load(Ordering::SeqCst) => drop(down),
                    None => {
                        let st = st.clone();
                        std::thread::spawn(move || swallow(down, &st));
                    }
                }
            }
        });
        PartitionProxy {
            addr,
            partitioned,
            generation,
            stop,
            polite,
        }
    }

    /// Like [`Self::partition`], but closing every connection (FIN both ways) instead of
    /// swallowing it, and closing new ones at once.
    pub fn close_all(&self) {
        self.polite.store(true, Ordering::SeqCst);
        self.partition();
    }

    /// Every connection becomes a black hole; new ones are black holes until [`Self::heal`].
    pub fn partition(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.partitioned.store(true, Ordering::SeqCst);
    }

    /// New connections are forwarded again.
    pub fn heal(&self) {
        self.partitioned.store(false, Ordering::SeqCst);
        self.polite.store(false, Ordering::SeqCst);
    }
}

impl Drop for PartitionProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until the connection falls into the hole; then discards what `from`
/// sends and holds both sockets open (until the proxy is dropped) — or, `polite`, closes both.
#[allow(clippy::too_many_arguments)]
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    born: u64,
    partitioned: &AtomicBool,
    generation: &AtomicU64,
    stop: &AtomicBool,
    dead: &AtomicBool,
    polite: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    // Until the proxy is dropped, or the connection ends while it is still forwarded.
    while !stop.load(Ordering::SeqCst) {
        if partitioned.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
            dead.store(true, Ordering::SeqCst);
        }
        let n = if eof {
            std::thread::sleep(Duration::from_millis(50));
            0
        } else {
            match from.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    0
                }
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    0
                }
                Err(_) => {
                    eof = true;
                    0
                }
            }
        };
        if dead.load(Ordering::SeqCst) {
            if polite.load(Ordering::SeqCst) {
                let _ = from.shutdown(std::net::Shutdown::Both);
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
            // The hole: nothing passes, nothing closes.
            continue;
        }
        if eof {
            let _ = to.shutdown(std::net::Shutdown::Write);
            return;
        }
        if n > 0 && to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Holds a connection that fell into the hole at birth: reads and discards, never answers.
fn swallow(mut s: std::net::TcpStream, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 4096];
    // Until the proxy is dropped.
    while !stop.load(Ordering::SeqCst) {
        if let Ok(0) = s.read(&mut buf) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
