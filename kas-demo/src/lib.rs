//! `kas-demo` (also reachable as `kas demo`): a complete local deployment on embedded defaults, in one
//! process.
//!
//! It is a crate of its own because it links agentk, the simulated Kubernetes API server and a tokio
//! runtime; the production `kas` binary must link none of them (`kas demo …` only execs this binary).
//!
//! It generates everything a real deployment needs into a state directory — a throw-away CA and kas's
//! certificate, one token per agent (kas keeps only their SHA-256), a users file with a `demo` user
//! allowed on every agent, and `kas.yaml` — then starts kas, one simulated Kubernetes API server per
//! agent (with churn and a fake Prometheus service inside the "cluster"), and one agentk per cluster.
//! The agents dial kas over TLS exactly as they would from behind a NAT: nothing listens on their
//! side. Finally it writes `DIR/kubeconfig` with one context per agent (`agent-1`, …) pointing at kas's
//! `/k8s-proxy`, so the real `kubectl` reaches each cluster through kas.
//!
//! Every file in the state directory is what the hand-started pieces use, so the same deployment can be
//! run piece by piece (`kas --config DIR/kas.yaml`, `simulator apiserver …`, `agentk …`, `git daemon …`):
//! [`Demo::manual_commands`] prints those commands.
//!
//! With Debian's `git` installed it also creates a config repository and a manifests repository in
//! `DIR/git/` and serves them on loopback ([`git`]): every agent's `config_project` is the config
//! repository, whose `.gitlab/agents/agent-N/config.yaml` enables GitOps on the manifests repository, and
//! a push reaches kas at once through its push webhook (`kas-demo webhook`, [`webhook`]).

pub mod api_client;
pub mod calibrate;
pub mod git;
pub mod replicas;
pub mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};

use kas::auth::AgentsFile;
use kas::config::{AuthBackendConfig, Config};
use kas::users::{TokenKind, UsersFile};
use kas::{Kas, Running, StartOptions};

/// What to start.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub agents: usize,
    pub state_dir: PathBuf,
    /// kas's agent listener (TLS).
    pub agent_listen: SocketAddr,
    /// kas's HTTP API.
    pub api_listen: SocketAddr,
    /// Nodes and pods each simulated cluster starts with.
    pub nodes: usize,
    pub pods: usize,
    /// Churn steps per second in each cluster.
    pub churn: f64,
    /// The demo's `git://` server. Port 0 (the default here, so that demos started side by side by
    /// tests never collide): the OS chooses; the `kas-demo` command's default is 9418 (Git's port).
    pub git_listen: SocketAddr,
    /// How the repositories' `post-receive` hooks reach kas (`None`: [`git::HookClient::find`] — this
    /// program if it is `kas-demo`, else a `kas-demo` next to it, else `curl`).
    pub hooks: Option<git::HookClient>,
    /// kas's `agent_configuration.poll_period` (a push webhook makes kas read at once anyway).
    pub config_poll_period: Duration,
    /// kas replicas on one Redis (1: a single kas, no Redis). Replica 1 listens on `agent_listen` /
    /// `api_listen`, the others on free loopback ports; agent N dials replica `(N - 1) % replicas + 1`.
    pub replicas: usize,
}

impl DemoOptions {
    pub fn new(agents: usize, state_dir: PathBuf) -> DemoOptions {
        DemoOptions {
            agents,
            state_dir,
            agent_listen: SocketAddr::from(([127, 0, 0, 1], 8150)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            nodes: 3,
            pods: 12,
            churn: 0.5,
            git_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hooks: None,
            config_poll_period: Duration::from_secs(300),
            replicas: 1,
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo needs at least one agent")]
    NoAgents,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Tls(#[from] tunnel_tls::TlsError),
    #[error("agents file: {0}")]
    Agents(#[from] kas::auth::AgentsFileError),
    #[error("users file: {0}")]
    Users(#[from] kas::users::UsersFileError),
    #[error("kas configuration: {0}")]
    Config(#[from] kas::config::ConfigError),
    #[error("kas: {0}")]
    Kas(#[from] kas::StartError),
    #[error("simulated API server: {0}")]
    ApiServer(#[from] sim_apiserver::Error),
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("agent {0}: {1}")]
    Agent(u64, agentk::Error),
    #[error("agents {0:?} did not connect within {1:?}")]
    AgentsNotConnected(Vec<u64>, Duration),
    #[error("agents file {}: {reason}", path.display())]
    AgentsYaml { path: PathBuf, reason: String },
    #[error("API client: {0}")]
    Client(String),
    #[error(transparent)]
    Redis(#[from] replicas::RedisError),
}

/// The demo's Git side: serving, or why not.
enum GitSide {
    Serving {
        server: git::GitServer,
        repos: git::Repos,
        hooks: git::HookClient,
    },
    Off(String),
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|source| DemoError::Write {
        path: path.to_owned(),
        source,
    })
}

/// One simulated cluster with its agent.
struct Cluster {
    agent_id: u64,
    apiserver: RunningApiServer,
    kubeconfig: PathBuf,
    token_file: PathBuf,
    prometheus: SocketAddr,
    /// `simulator apiserver` flags that make the same cluster (manual commands).
    apiserver_flags: String,
}

/// The running demo. Dropping it without [`Demo::shutdown`] stops everything abruptly.
pub struct Demo {
    kas: Option<Running>,
    /// Replicas 2.. (with `--replicas`).
    more: Vec<Running>,
    redis: Option<replicas::DemoRedis>,
    clusters: Vec<Cluster>,
    runtime: Option<tokio::runtime::Runtime>,
    stop_agents: Option<tokio::sync::watch::Sender<bool>>,
    state_dir: PathBuf,
    ca_file: PathBuf,
    user_token: String,
    /// Where the demo user's token is (the banner names the file, never the token).
    user_token_file: PathBuf,
    /// The push webhook's shared secret.
    webhook_secret_file: PathBuf,
    git: GitSide,
}

impl Demo {
    /// Generates the state directory and starts everything; returns once every agent is connected.
    pub fn start(opts: &DemoOptions) -> Result<Demo, DemoError> {
        if opts.agents == 0 {
            return Err(DemoError::NoAgents);
        }
        let dir = &opts.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| DemoError::Write {
            path: dir.clone(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| DemoError::Write {
            path: dir.clone(),
            source,
        })?;

        // Credentials: kas's certificate, agent tokens (hashed for kas), the demo user.
        let pki = tunnel_tls::ThrowawayPki::generate()?;
        let files = pki.write_pem_files(&dir)?;
        let agents = AgentsFile::generate(opts.agents, &dir)?;
        let user = UsersFile::generate_demo(&dir)?;
        let webhook_secret_file = write_webhook_secret(&dir)?;
        let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
        let mut git_side = start_git(opts, &dir, &names);
        if let GitSide::Serving { server, .. } = &git_side {
            set_config_projects(&dir, &server.url(git::CONFIG_REPO))?;
        }

        let mut config = Config {
            state_dir: dir.clone(),
            ..Config::default()
        };
        config.agent_listener.address = opts.agent_listen;
        config.agent_listener.tls.cert_file = files.server_cert.clone();
        config.agent_listener.tls.key_file = files.server_key.clone();
        config.api_listener.address = opts.api_listen;
        // HTTPS, because kubectl sends bearer tokens only over TLS; the demo CA signs both listeners.
        config.api_listener.tls = Some(kas::config::TlsFilesConfig {
            cert_file: files.server_cert.clone(),
            key_file: files.server_key.clone(),
            client_ca_file: None,
        });
        // The dashboard, views and events are readable without a token on the demo's local listener.
        config.api_listener.public_read = true;
        config.agent_auth.backend = AuthBackendConfig::Embedded;
        config.users.file = dir.join("users.yaml");
        config.agent_configuration.poll_period = opts.config_poll_period;
        config.agent_configuration.webhook_secret_file = Some(webhook_secret_file.clone());
        let redis = if opts.replicas > 1 {
            Some(replicas::DemoRedis::start()?)
        } else {
            None
        };
        let mut more = Vec::new();
        if let Some(redis) = &redis {
            let secret = dir.join("replicas.secret");
            if std::fs::read_to_string(&secret)
                .unwrap_or_default()
                .trim()
                .len()
                < 16
            {
                write(&secret, &format!("{}\n", kas::auth::generate_token()))?;
            }
            set_owner_only(&secret);
            for id in 2..=opts.replicas {
                let mut c = config.clone();
                c.agent_listener.address = SocketAddr::from(([127, 0, 0, 1], 0));
                c.api_listener.address = SocketAddr::from(([127, 0, 0, 1], 0));
                let id = u32::try_from(id).unwrap_or(u32::MAX);
                c.replicas = Some(replicas::config(redis, id, &files.ca, secret.clone()));
                c.write(dir.join(format!("kas-{id}.yaml")))?;
                more.push(c);
            }
            config.replicas = Some(replicas::config(redis, 1, &files.ca, secret));
        }
        config.write(dir.join("kas.yaml"))?;
        let kas = Kas::start_with(config, StartOptions::default())?;
        let more = more
            .into_iter()
            .map(|c| Kas::start_with(c, StartOptions::default()))
            .collect::<Result<Vec<_>, _>>()?;
        if let GitSide::Serving { repos, hooks, .. } = &mut git_side {
            *hooks = opts
                .hooks
                .clone()
                .unwrap_or_else(|| git::HookClient::find(None));
            let target = git::HookTarget {
                url: format!("{}/api/v1/webhooks/git", kas.api_url()),
                ca_file: files.ca.clone(),
                secret_file: webhook_secret_file.clone(),
            };
            if let Err(e) = repos.write_hooks(hooks, &target) {
                tracing::warn!(error = %e, "cannot write the demo repositories' hooks; pushes reach kas at its next poll");
                *hooks = git::HookClient::None;
            }
        }

        // The clusters and their agents share one tokio runtime (agentk and the simulated API server
        // are tokio programs; kas runs on its own smol executor).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("demo-clusters")
            .enable_all()
            .build()
            .map_err(DemoError::Runtime)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut clusters = Vec::new();
        for agent in &agents {
            let apiserver = ApiServer::start_on(
                runtime.handle(),
                ApiServerConfig {
                    nodes: opts.nodes,
                    pods: opts.pods,
                    churn_rate: opts.churn,
                    seed: agent.id,
                    ..ApiServerConfig::default()
                },
            )?;
            let kubeconfig = dir.join(format!("cluster-{}.kubeconfig", agent.id));
            apiserver.write_kubeconfig(&kubeconfig, &format!("cluster-{}", agent.id))?;
            let prometheus = runtime
                .block_on(sim_apiserver::prometheus::start(
                    ([127, 0, 0, 1], 0).into(),
                    format!("cluster-{}", agent.id),
                ))
                .map_err(DemoError::Runtime)?;
            sim_apiserver::prometheus::add_service(apiserver.store(), prometheus);

            // Spread over the replicas: agent N dials replica (N - 1) % replicas + 1.
            let index = usize::try_from(agent.id.saturating_sub(1)).unwrap_or(0) % (more.len() + 1);
            let dial = if index == 0 {
                kas.agent_addr()
            } else {
                more[index - 1].agent_addr()
            };
            let mut cfg = agentk::Config::new(dial.to_string(), agent.token.clone());
            cfg.token_file = Some(agent.token_file.clone());
            cfg.ca = tunnel_tls::Roots::PemFile(files.ca.clone());
            cfg.tls_server_name = Some("localhost".into());
            cfg.kube = agentk::KubeSource::Kubeconfig {
                path: kubeconfig.clone(),
                context: None,
            };
            cfg.meta.pod_name = Some(format!("agentk-{}", agent.id));
            cfg.meta.node_name = Some("sim-node-1".into());
            let mut stop = stop_rx.clone();
            let id = agent.id;
            runtime.spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = agentk::run(cfg, shutdown).await {
                    tracing::error!(agent_id = id, error = %e, "agent stopped");
                }
            });
            clusters.push(Cluster {
                agent_id: agent.id,
                apiserver_flags: format!(
                    "--nodes {} --pods {} --churn {} --seed {} --prometheus cluster-{id} --context cluster-{id}",
                    opts.nodes,
                    opts.pods,
                    opts.churn,
                    agent.id,
                    id = agent.id
                ),
                apiserver,
                kubeconfig,
                token_file: agent.token_file.clone(),
                prometheus,
            });
        }

        let demo = Demo {
            kas: Some(kas),
            more,
            redis,
            clusters,
            runtime: Some(runtime),
            stop_agents: Some(stop_tx),
            state_dir: dir.clone(),
            ca_file: files.ca,
            user_token: user.token.clone(),
            user_token_file: user.token_file.clone(),
            webhook_secret_file,
            git: git_side,
        };
        demo.write_kubeconfig()?;
        write(&dir.join("manual-commands.sh"), &demo.manual_commands())?;
        let ids: Vec<u64> = demo.clusters.iter().map(|c| c.agent_id).collect();
        let wait = Duration::from_secs(60);
        if !demo.wait_for_agents(&ids, wait) {
            let connected = demo.connected_agents();
            let missing = ids.into_iter().filter(|i| !connected.contains(i)).collect();
            return Err(DemoError::AgentsNotConnected(missing, wait));
        }
        Ok(demo)
    }

    /// Every replica, replica 1 first (one, without `--replicas`).
    pub fn replicas(&self) -> Vec<&Running> {
        self.kas.iter().chain(self.more.iter()).collect()
    }

    /// Agents connected to any replica, sorted.
    pub fn connected_agents(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .replicas()
            .iter()
            .flat_map(|k| k.connected_agents())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn wait_for_agents(&self, ids: &[u64], timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let connected = self.connected_agents();
            if ids.iter().all(|i| connected.contains(i)) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Redis the replicas share (with `--replicas`).
    pub fn redis_addr(&self) -> Option<SocketAddr> {
        self.redis.as_ref().map(replicas::DemoRedis::addr)
    }

    /// The running kas (replica 1).
    pub fn kas(&self) -> &Running {
        // Present until shutdown consumes the demo.
        self.kas
            .as_ref()
            .unwrap_or_else(|| unreachable!("kas is set until shutdown"))
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `DIR/kubeconfig`.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    /// The demo's CA certificate (trust anchor of both kas listeners).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The file holding the demo user's token.
    pub fn user_token_file(&self) -> &Path {
        &self.user_token_file
    }

    /// A client of kas's API trusting the demo CA, each call bounded by `timeout`.
    pub fn api_client(&self, timeout: Duration) -> Result<api_client::ApiClient, DemoError> {
        api_client::ApiClient::new(&self.kas().api_url(), &self.ca_file, timeout)
            .map_err(|e| DemoError::Client(e.to_string()))
    }

    /// The file holding the push webhook's shared secret (`X-Gitlab-Token`).
    pub fn webhook_secret_file(&self) -> &Path {
        &self.webhook_secret_file
    }

    /// The clone URL of a demo repository ([`git::CONFIG_REPO`], [`git::MANIFESTS_REPO`]), or why
    /// the demo runs without Git.
    pub fn git_url(&self, repo: &str) -> Result<String, String> {
        match &self.git {
            GitSide::Serving { server, .. } => Ok(server.url(repo)),
            GitSide::Off(why) => Err(why.clone()),
        }
    }

    /// The bare repository of a demo repository, if Git is on.
    pub fn git_repo_path(&self, repo: &str) -> Option<PathBuf> {
        match &self.git {
            GitSide::Serving { repos, .. } => Some(repos.path(repo)),
            GitSide::Off(_) => None,
        }
    }

    /// How the repositories' hooks reach kas (none when Git is off).
    pub fn hook_client(&self) -> git::HookClient {
        match &self.git {
            GitSide::Serving { hooks, .. } => hooks.clone(),
            GitSide::Off(_) => git::HookClient::None,
        }
    }

    /// The demo user's bearer value for an agent (`pat:<id>:<token>`).
    pub fn bearer(&self, agent_id: u64) -> String {
        kas::users::format_bearer(TokenKind::Pat, agent_id, &self.user_token)
    }

    /// The simulated API server of agent `agent_id` (tests change the "cluster" through it).
    pub fn cluster(&self, agent_id: u64) -> Option<&RunningApiServer> {
        self.clusters
            .iter()
            .find(|c| c.agent_id == agent_id)
            .map(|c| &c.apiserver)
    }

    /// Agent ids, in order.
    pub fn agent_ids(&self) -> Vec<u64> {
        self.clusters.iter().map(|c| c.agent_id).collect()
    }

    fn write_kubeconfig(&self) -> Result<(), DemoError> {
        let mut clusters = String::new();
        let mut users = String::new();
        let mut contexts = String::new();
        // Replica 1's contexts are `agent-N`; replica R's (R ≥ 2) `agent-N@kas-R`.
        let replicas = self.replicas();
        let each = replicas
            .iter()
            .enumerate()
            .flat_map(|(r, k)| self.clusters.iter().map(move |c| (r, k.k8s_proxy_url(), c)));
        for (r, server, c) in each {
            let name = if r == 0 {
                format!("agent-{}", c.agent_id)
            } else {
                format!("agent-{}@kas-{}", c.agent_id, r + 1)
            };
            clusters.push_str(&format!(
                "- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority: {}\n",
                self.ca_file.display()
            ));
            users.push_str(&format!(
                "- name: {name}\n  user:\n    token: \"{}\"\n",
                self.bearer(c.agent_id)
            ));
            contexts.push_str(&format!(
                "- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n    namespace: default\n"
            ));
        }
        let text = format!(
            "# Written by `kas-demo`: one context per agent; every request goes through kas's /k8s-proxy\n\
             # and the agent's tunnel. The token is `pat:<agent id>:<demo user token>`.\n\
             apiVersion: v1\nkind: Config\ncurrent-context: agent-1\nclusters:\n{clusters}users:\n{users}contexts:\n{contexts}"
        );
        let path = self.kubeconfig_path();
        write(&path, &text)?;
        set_owner_only(&path);
        Ok(())
    }

    /// What to tell a person once the demo is up.
    pub fn banner(&self) -> String {
        let api = self.kas().api_url();
        let kubeconfig = self.kubeconfig_path();
        let mut s = String::new();
        s.push_str(&format!("kas API:        {api}\n"));
        for (r, k) in self.replicas().iter().enumerate().skip(1) {
            s.push_str(&format!(
                "kas replica {}:  {} (agents {}; kubectl contexts agent-N@kas-{})\n",
                r + 1,
                k.api_url(),
                k.agent_addr(),
                r + 1
            ));
        }
        if let Some(redis) = &self.redis {
            s.push_str(&format!(
                "redis:          {} (the replicas' tracker; contexts agent-N go through replica 1)\n",
                redis.addr()
            ));
        }
        s.push_str(&format!("dashboard:      {api}/\n"));
        s.push_str(&format!(
            "agent listener: {} (TLS)\n",
            self.kas().agent_addr()
        ));
        s.push_str(&format!("state dir:      {}\n", self.state_dir.display()));
        s.push_str(&format!("kubeconfig:     {}\n", kubeconfig.display()));
        match &self.git {
            GitSide::Serving { server, hooks, .. } => {
                let how = match hooks {
                    git::HookClient::None => "kas reads them at its next poll",
                    _ => "a push reaches kas at once",
                };
                s.push_str(&format!(
                    "git:            {} (config and GitOps; {how})\n\n",
                    server.addr()
                ));
                s.push_str("edit the agents' configuration and the manifests they apply:\n");
                for repo in [git::CONFIG_REPO, git::MANIFESTS_REPO] {
                    s.push_str(&format!("  git clone {}\n", server.url(repo)));
                }
                s.push('\n');
            }
            GitSide::Off(why) => s.push_str(&format!("git:            off: {why}\n\n")),
        }
        s.push_str("try:\n");
        s.push_str(&format!(
            "  kubectl --kubeconfig {} get pods\n",
            kubeconfig.display()
        ));
        s.push_str(&format!(
            "  kubectl --kubeconfig {} --context agent-2 get nodes\n",
            kubeconfig.display()
        ));
        s.push_str(&format!(
            "  kubectl --kubeconfig {} get pods --watch\n",
            kubeconfig.display()
        ));
        let ca = self.ca_file.display();
        s.push_str(&format!("  curl --cacert {ca} {api}/api/v1/agents\n"));
        if matches!(self.git, GitSide::Serving { .. }) {
            s.push_str(&format!(
                "  curl --cacert {ca} {api}/api/v1/agents/1/config\n"
            ));
        }
        // The token stays in its file: output that ends up in terminals' scrollback, CI logs or
        // screenshots shows where it is, not what it is.
        s.push_str(&format!(
            "  curl --cacert {ca} -H \"Authorization: Bearer pat:1:$(cat {})\" '{api}/api/v1/agents/1/proxy/monitoring/prometheus:web/api/v1/query?query=up'\n",
            self.user_token_file.display()
        ));
        s.push_str(&format!("  curl --cacert {ca} {api}/metrics\n"));
        s
    }

    /// Shell commands that start the same deployment piece by piece.
    pub fn manual_commands(&self) -> String {
        let dir = self.state_dir.display();
        let agent_addr = self.kas().agent_addr();
        let mut s = format!(
            "#!/bin/sh\n# The demo deployment, piece by piece (what `kas-demo` does in one process).\n\
             # On a real deployment kas runs on one machine and each agentk inside its cluster.\n\
                          kas --config {dir}/kas.yaml &\n"
        );
        for (r, _) in self.replicas().iter().enumerate().skip(1) {
            s.push_str(&format!("kas --config {dir}/kas-{}.yaml &\n", r + 1));
        }
        if let GitSide::Serving { server, .. } = &self.git {
            s.push_str(&format!("{} &\n", server.daemon_command()));
        }
        for c in &self.clusters {
            let port = c.apiserver.addr().port();
            s.push_str(&format!(
                "simulator apiserver --listen 127.0.0.1:{port} {} --kubeconfig-out {} &\n",
                c.apiserver_flags,
                c.kubeconfig.display()
            ));
            s.push_str(&format!(
                "POD_NAME=agentk-{} NODE_NAME=sim-node-1 agentk --kas-address {agent_addr} --tls-server-name localhost --ca-file {} --token-file {} --kubeconfig {} --log-level info &\n",
                c.agent_id,
                self.ca_file.display(),
                c.token_file.display(),
                c.kubeconfig.display()
            ));
            let _ = c.prometheus;
        }
        // The agents connect within seconds: retry (bounded) until kas reaches agent 1's cluster.
        s.push_str(&format!(
            "i=0; until kubectl --kubeconfig {dir}/kubeconfig get pods; do\n  \
             i=$((i + 1)); [ \"$i\" -ge 60 ] && exit 1; sleep 1\ndone\n"
        ));
        s
    }

    /// Stops agents, clusters and kas, in that order.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop_agents.take() {
            let _ = stop.send(true);
        }
        if let GitSide::Serving { server, .. } =
            std::mem::replace(&mut self.git, GitSide::Off("stopped".into()))
        {
            server.shutdown();
        }
        for kas in self.more.drain(..) {
            kas.shutdown_within(Duration::from_secs(5));
        }
        if let Some(kas) = self.kas.take() {
            kas.shutdown_within(Duration::from_secs(5));
        }
        self.redis.take();
        for c in self.clusters.drain(..) {
            c.apiserver.shutdown();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// `DIR/webhook.secret`: kept if it exists, else a new random secret (owner-only).
fn write_webhook_secret(dir: &Path) -> Result<PathBuf, DemoError> {
    let path = dir.join("webhook.secret");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    if existing.trim().is_empty() {
        write(&path, &format!("{}\n", kas::auth::generate_token()))?;
    }
    set_owner_only(&path);
    Ok(path)
}

/// Creates and serves the demo repositories, or says why the demo runs without them.
fn start_git(opts: &DemoOptions, dir: &Path, agents: &[String]) -> GitSide {
    let off = |why: String| {
        tracing::warn!(reason = %why, "the demo runs without its Git repositories");
        GitSide::Off(why)
    };
    if let Err(e) = git::find_git() {
        return off(e.to_string());
    }
    let root = dir.join("git");
    let server = match git::GitServer::start(opts.git_listen, &root) {
        Ok(s) => s,
        Err(e) => return off(format!("{e} (choose another with --git-listen)")),
    };
    match git::Repos::create(&root, agents, &server.url(git::MANIFESTS_REPO)) {
        Ok(repos) => GitSide::Serving {
            server,
            repos,
            hooks: git::HookClient::None,
        },
        Err(e) => off(e.to_string()),
    }
}

/// Points every agent of the generated agents file at the config repository.
fn set_config_projects(dir: &Path, url: &str) -> Result<(), DemoError> {
    let path = dir.join(kas::auth::AGENTS_FILE_NAME);
    let bad = |reason: String| DemoError::AgentsYaml {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let agents = doc
        .get_mut("agents")
        .and_then(serde_yaml::Value::as_sequence_mut)
        .ok_or_else(|| bad("no agents list".into()))?;
    for agent in agents.iter_mut() {
        let project = serde_yaml::to_value(kas::auth::ConfigProject {
            url: url.to_owned(),
            token_file: None,
            username: None,
            header_file: None,
            ca_file: None,
            project_id: None,
        })
        .map_err(|e| bad(e.to_string()))?;
        if let Some(map) = agent.as_mapping_mut() {
            map.insert("config_project".into(), project);
        }
    }
    let yaml = serde_yaml::to_string(&doc).map_err(|e| bad(e.to_string()))?;
    write(
        &path,
        &format!(
            "# Agents kas accepts: id, name, SHA-256 of the token (hex) and the config project\n\
             # (kas-demo's config repository). Tokens are not stored here.\n{yaml}"
        ),
    )
}

#[cfg(unix)]
pub(crate) fn set_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
pub(crate) fn set_owner_only(_: &Path) {}
