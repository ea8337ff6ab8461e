//! Starting and stopping one kas: [`Kas::start`] binds both listeners and spawns every task on kas's
//! own executor threads; [`Running`] tells where it listens and shuts it down gracefully.
//!
//! ```no_run
//! use kas::{Kas, config::Config};
//! let config = Config::load("/etc/kas/kas.yaml")?;
//! let running = Kas::start(config)?;
//! println!("agents connect to {}, HTTP API on {}", running.agent_addr(), running.api_addr());
//! kas::signals::wait_for_termination()?;
//! let report = running.shutdown();
//! println!("{report:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Shutdown: stop accepting (agents and HTTP), fail requests still waiting for an agent (503), GOAWAY
//! every agent connection (in-flight streams may finish), let every HTTP connection finish its
//! in-flight request, and wait for all that up to the grace period; then abort what is left and stop
//! the threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::routing::RouterConfig;

use crate::agent_listener;
use crate::auth::{
    AgentAuthenticator, AgentsFile, AuthSetupError, GitLabAuthenticator, RateLimitOptions,
    RateLimited,
};
use crate::config::{AuthBackendConfig, Config, TlsFilesConfig, ValidationError, ValidationErrors};
use crate::directory::AgentDirectory;
use crate::events::SubscriberLimits;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::registry::Registry;
use crate::state::KasState;
use crate::users::{UserGate, UsersFile, UsersFileError};

/// How often the agents and users files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Why kas could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid (missing files, bad values).
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The replicas part (private API, shared secret, Redis URL) could not be set up.
    #[error("replicas: {0}")]
    Replicas(#[from] crate::peer::SetupError),
    /// The agent listener's certificate or key is unusable.
    #[error("agent listener TLS: {0}")]
    Tls(#[from] tunnel_tls::TlsError),
    /// The agent authentication backend could not be set up.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// The users file could not be loaded.
    #[error(transparent)]
    Users(#[from] UsersFileError),
    /// The agent listener could not be bound.
    #[error("cannot listen for agents on {addr}: {source}")]
    AgentListen {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: runtime_smol::Error,
    },
    /// The HTTP API listener could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    ApiListen {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The executor threads could not be started.
    #[error("cannot start threads: {0}")]
    Threads(std::io::Error),
    /// The traffic recording's file could not be created.
    #[error("cannot create the traffic recording {path}: {source}")]
    Recording {
        /// The configured path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The audit log's file could not be opened.
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        /// The configured path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent configuration settings are unusable (the webhook secret file).
    #[error(transparent)]
    AgentConfig(#[from] crate::agent_config::SettingsError),
}

/// How kas runs, besides its configuration.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Executor threads; default: the available parallelism, 2 to 8.
    pub threads: usize,
    /// How long [`Running::shutdown`] waits for in-flight work; default 10 s.
    pub shutdown_grace: Duration,
    /// Serve the HTTP API over HTTPS with this certificate and key (PEM; `client_ca_file` is not
    /// used); default: plain HTTP. kubectl sends bearer tokens only over HTTPS.
    pub api_tls: Option<TlsFilesConfig>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8),
            shutdown_grace: Duration::from_secs(10),
            api_tls: None,
        }
    }
}

/// What [`Running::shutdown`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Agent connections that were sent GOAWAY.
    pub agent_connections: usize,
    /// Agent connections still open at the end of the grace period (aborted).
    pub agent_connections_aborted: usize,
    /// HTTP connections still busy at the end of the grace period (dropped).
    pub http_connections_aborted: usize,
}

impl ShutdownReport {
    /// Whether everything finished within the grace period.
    pub fn is_clean(&self) -> bool {
        self.agent_connections_aborted == 0 && self.http_connections_aborted == 0
    }
}

/// Starts kas.
#[derive(Debug)]
pub struct Kas;

impl Kas {
    /// Validates `config`, builds the authentication backend and the users file, binds the agent
    /// listener (TLS) and the HTTP API, and starts serving on kas's own threads. Returns once both
    /// listeners are bound (ports 0 are resolved: see [`Running::agent_addr`] / [`Running::api_addr`]).
    /// Paths in `config` must be resolved ([`Config::load`] does it).
    pub fn start(config: Config) -> Result<Running, StartError> {
        Self::start_with(config, StartOptions::default())
    }

    /// [`Kas::start`] with explicit [`StartOptions`].
    pub fn start_with(config: Config, options: StartOptions) -> Result<Running, StartError> {
        validate(&config)?;
        let tls = tunnel_tls::server_config(
            &config.agent_listener.tls.cert_file,
            &config.agent_listener.tls.key_file,
            config.agent_listener.tls.client_ca_file.as_deref(),
        )?;
        let limits = RateLimitOptions::from(&config.rate_limits.agent_auth_failures);
        let (backend, directory): (Box<dyn AgentAuthenticator>, AgentDirectory) =
            match &config.agent_auth.backend {
                AuthBackendConfig::Embedded | AuthBackendConfig::AgentsFile(_) => {
                    let path = config.agents_file_path().unwrap_or_default();
                    let file =
                        Arc::new(AgentsFile::load(&path).map_err(|e| StartError::Auth(e.into()))?);
                    (Box::new(file.clone()), AgentDirectory::File(file))
                }
                AuthBackendConfig::Gitlab(g) => (
                    Box::new(
                        GitLabAuthenticator::from_config(g)
                            .map_err(|e| StartError::Auth(e.into()))?,
                    ),
                    AgentDirectory::Seen(Arc::new(crate::directory::SeenAgents::from_config(
                        &g.url,
                        g.ca_file.as_ref(),
                        g.repositories.as_deref(),
                    ))),
                ),
            };
        // Several replicas: the private API and the tracker come first (the rate limits share it).
        let replicas = config
            .replicas
            .as_ref()
            .map(|r| crate::peer::setup(&config, r).map(|s| (s, r.refresh_period)))
            .transpose()?;
        let rate_limited = Arc::new(RateLimited::new(backend, limits));
        if let Some(((r, _), _)) = &replicas {
            rate_limited.share(r.tracker.clone());
        }
        let backend: Arc<dyn AgentAuthenticator> = rate_limited;
        let metrics = Arc::new(Metrics::new());
        let users = Arc::new(UsersFile::load(&config.users.file)?);
        let mut gate = UserGate::new(
            users,
            RateLimitOptions::from(&config.rate_limits.user_auth_failures),
            metrics.clone(),
        );
        if let AuthBackendConfig::Gitlab(g) = &config.agent_auth.backend {
            // Users and CI jobs the users file does not know are GitLab's (access control).
            let gitlab =
                GitLabAuthenticator::from_config(g).map_err(|e| StartError::Auth(e.into()))?;
            gate = gate.with_gitlab(Arc::new(gitlab));
        }
        if let Some(((r, _), _)) = &replicas {
            gate.share(r.tracker.clone());
        }
        let api_tls = options
            .api_tls
            .as_ref()
            .or(config.api_listener.tls.as_ref())
            .map(|files| crate::api::https_acceptor(&files.cert_file, &files.key_file))
            .transpose()?;
        let registry = Registry::new(
            protocol::routing::RoutingConfig {
                router: RouterConfig {
                    max_pending_per_agent: config.routing.max_pending_per_agent,
                    max_pending_total: config.routing.max_pending_total,
                },
                replica: config
                    .replicas
                    .as_ref()
                    .map(|r| protocol::routing::ReplicaId(r.replica_id)),
                ..protocol::routing::RoutingConfig::default()
            },
            directory.listing(),
        );
        let agent_configs = crate::agent_config::AgentConfigs::new(
            crate::agent_config::Settings::from_config(&config)?,
            directory.clone(),
        );
        let gitops_settings = crate::gitops_poller::Settings::from_config(&config);
        let gitops_directory = directory.clone();
        let pool = Pool::new(options.threads, "kas").map_err(StartError::Threads)?;
        let instance = format!("{:08x}", rand::random::<u32>());
        let audit =
            crate::audit::AuditLog::open(&config.audit).map_err(|source| StartError::Audit {
                path: config.audit.path.clone().unwrap_or_default(),
                source,
            })?;
        let recorder = crate::recording::Recorder::open(
            &config.recording,
            &config
                .replicas
                .as_ref()
                .map_or_else(|| "single".to_owned(), |r| r.replica_id.to_string()),
        )
        .map_err(|source| StartError::Recording {
            path: config.recording.path.clone().unwrap_or_default(),
            source,
        })?
        .map(Arc::new);
        if let Some(recorder) = &recorder {
            audit.set_recorder(recorder.clone());
            registry.set_recorder(recorder.clone());
        }
        let state = KasState::new(
            registry,
            directory,
            gate,
            metrics,
            config.routing.clone(),
            pool.spawner(),
            instance,
            SubscriberLimits {
                total: config.events.max_subscribers,
                per_source: config.events.max_per_source,
                per_user: config.events.max_per_user,
            },
        )
        .with_public_read(config.api_listener.public_read)
        .with_audit(audit)
        .with_upgrade_limits(crate::api::upgrade::UpgradeLimits {
            max_sessions_per_agent: config.upgrades.max_sessions_per_agent,
            idle_timeout: config.upgrades.idle_timeout,
        })
        .with_agent_config(agent_configs.clone());
        let (state, peer_server) = match replicas {
            Some(((replicas, server), refresh)) => {
                (state.with_replicas(replicas), Some((server, refresh)))
            }
            None => (state, None),
        };
        let gitops = crate::gitops_poller::GitopsPoller::new(
            gitops_settings,
            agent_configs.clone(),
            gitops_directory,
            state.events.clone(),
        );
        let state = Arc::new(state.with_gitops(gitops.clone()));
        if let Some(recorder) = recorder {
            state.mirrors.set_recorder(recorder);
        }

        let agent_addr = config.agent_listener.address;
        let api_addr = config.api_listener.address;
        let tunnel_config = agent_listener::tunnel_config(&config);
        let auth = agent_listener::authenticator(state.clone(), backend);
        let agent_listen_error = move |source| StartError::AgentListen {
            addr: agent_addr,
            source,
        };
        let agent_socket = crate::listener::bind(agent_addr, config.agent_listener.backlog)
            .map_err(|e| agent_listen_error(runtime_smol::Error::Io(e)))?;
        let api_socket =
            crate::listener::bind(api_addr, config.api_listener.backlog).map_err(|source| {
                StartError::ApiListen {
                    addr: api_addr,
                    source,
                }
            })?;
        // Started from a pool thread, so that the tunnel's accept loop, handshakes and every
        // connection's driver run on kas's threads, spread over them; an HTTP connection then
        // moves to the thread of the driver its requests go through (crate::pool).
        let (server, listener) = pool.block_on(pool.spawn(async move {
            let server =
                runtime_smol::Server::from_listener(agent_socket, Some(tls), tunnel_config, auth)
                    .map_err(agent_listen_error)?;
            let listener = smol::net::TcpListener::try_from(api_socket).map_err(|source| {
                StartError::ApiListen {
                    addr: api_addr,
                    source,
                }
            })?;
            Ok::<_, StartError>((server, listener))
        }))?;
        let agent_addr = server.local_addr();
        let _ = state.tunnel_intake.set(server.intake());
        let api_addr = listener
            .local_addr()
            .map_err(|source| StartError::ApiListen {
                addr: api_addr,
                source,
            })?;

        let (stop, stopped) = async_channel::bounded::<()>(1);
        let (http_active, http_idle) = async_channel::bounded::<()>(1);
        let timers = state.registry.clone();
        pool.spawn(async move { timers.run_timers().await })
            .detach();
        pool.spawn(agent_listener::accept_loop(
            state.clone(),
            server,
            config.limits.max_streams_per_connection,
            Some(config.agent_listener.max_connection_age).filter(|d| !d.is_zero()),
            stopped.clone(),
        ))
        .detach();
        let https = api_tls.is_some();
        pool.spawn(crate::api::serve(
            state.clone(),
            listener,
            api_tls,
            stopped.clone(),
            http_active,
        ))
        .detach();
        pool.spawn(agent_configs.run(stopped.clone())).detach();
        pool.spawn(gitops.run(stopped.clone())).detach();
        if let (Some((server, refresh)), Some(replicas)) = (peer_server, state.replicas.clone()) {
            pool.spawn(server.run(state.clone(), stopped.clone()))
                .detach();
            let shedding = config
                .replicas
                .as_ref()
                .filter(|r| r.balance.enabled)
                .map(|r| {
                    crate::balance::Shedding::new(r.balance.policy(), replicas.tracker.replica())
                });
            pool.spawn(crate::tracker::run(
                state.clone(),
                replicas.tracker,
                replicas.peers,
                refresh,
                shedding,
                stopped.clone(),
            ))
            .detach();
        }
        pool.spawn(reload_files(state.clone(), stopped)).detach();

        tracing::info!(
            %agent_addr,
            %api_addr,
            https,
            instance = %state.instance,
            threads = options.threads,
            "kas started"
        );
        Ok(Running {
            state,
            pool: Some(pool),
            agent_addr,
            api_addr,
            stop,
            http_idle,
            shutdown_grace: options.shutdown_grace,
            https,
        })
    }
}

/// [`Config::validate`], except that both listeners may ask for port 0 on the same address (each gets
/// its own ephemeral port: tests and the demo do this).
fn validate(config: &Config) -> Result<(), ValidationErrors> {
    match config.validate() {
        Ok(()) => Ok(()),
        Err(ValidationErrors(errors)) => {
            let errors: Vec<ValidationError> = errors
                .into_iter()
                .filter(|e| !matches!(e, ValidationError::AddressConflict(a) if a.port() == 0))
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(ValidationErrors(errors))
            }
        }
    }
}

/// Checks the agents and users files for changes every [`RELOAD_INTERVAL`] until `stop` closes.
async fn reload_files(state: Arc<KasState>, stop: async_channel::Receiver<()>) {
    loop {
        let stopped = futures_lite::future::or(
            async {
                let _ = stop.recv().await;
                true
            },
            async {
                smol::Timer::after(RELOAD_INTERVAL).await;
                false
            },
        )
        .await;
        if stopped {
            return;
        }
        let directory = state.directory.clone();
        let users = state.users.users().clone();
        let (agents, users) =
            smol::unblock(move || (directory.reload_if_changed(), users.reload_if_changed())).await;
        match agents {
            Ok(changed) => {
                if changed {
                    state.registry.set_listing(state.directory.listing());
                    crate::connection_tokens::close_revoked(&state);
                }
                if matches!(state.directory, AgentDirectory::File(_)) {
                    state.set_auth_backend_ok(true);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "agents file unusable; keeping the agents loaded before");
                state.set_auth_backend_ok(false);
            }
        }
        if let Err(e) = users {
            tracing::warn!(error = %e, "users file unusable; keeping the users loaded before");
        }
    }
}

/// A running kas.
#[derive(Debug)]
pub struct Running {
    state: Arc<KasState>,
    pool: Option<Pool>,
    agent_addr: SocketAddr,
    api_addr: SocketAddr,
    stop: async_channel::Sender<()>,
    http_idle: async_channel::Receiver<()>,
    shutdown_grace: Duration,
    https: bool,
}

impl Running {
    /// Reopens the audit log's file by name (kas does this on SIGHUP, after logrotate moved it).
    pub fn reopen_audit_log(&self) {
        self.state.audit.reopen();
    }

    /// Where agents connect (TLS).
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    /// Where the HTTP API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// `http://<api_addr>` (`https://` when the API is served over TLS).
    pub fn api_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.api_addr)
    }

    /// `<api_url>/k8s-proxy`: the server URL of a kubeconfig reaching agents through kas.
    pub fn k8s_proxy_url(&self) -> String {
        format!("{}{}", self.api_url(), crate::api::K8S_PROXY_PREFIX)
    }

    /// Counters and histograms.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// The client of the other replicas' private APIs (`None` for a single kas).
    pub fn peer_client(&self) -> Option<Arc<crate::peer::PeerClient>> {
        self.state.replicas.as_ref().map(|r| r.peers.clone())
    }

    /// Every agent's view mirror.
    pub fn mirrors(&self) -> &crate::mirrors::Mirrors {
        &self.state.mirrors
    }

    /// The event hub (views, objects, agents).
    pub fn events(&self) -> &crate::events::EventHub {
        &self.state.events
    }

    /// Ids of the agents with at least one live connection, sorted.
    pub fn connected_agents(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .state
            .registry
            .connections()
            .iter()
            .map(|c| c.agent_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Blocks until every agent in `agent_ids` has a live connection, or `timeout` passed. Returns
    /// whether they all did.
    pub fn wait_for_agents(&self, agent_ids: &[u64], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let connected = self.connected_agents();
            if agent_ids.iter().all(|id| connected.contains(id)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful shutdown with the grace period from [`StartOptions`]; blocks until done.
    pub fn shutdown(self) -> ShutdownReport {
        let grace = self.shutdown_grace;
        self.shutdown_within(grace)
    }

    /// Graceful shutdown: waits at most `grace` for in-flight work, then aborts what is left.
    /// Must not be called from one of kas's own tasks.
    pub fn shutdown_within(mut self, grace: Duration) -> ShutdownReport {
        let deadline = Instant::now() + grace;
        self.state.begin_shutdown();
        tracing::info!(grace = ?grace, "kas shutting down");
        // Stop accepting agents and HTTP connections; HTTP connections finish their request and close.
        self.stop.close();
        // Requests waiting for an agent get 503 now; no new request is routed.
        self.state.registry.close();
        // Event streams end (they never finish on their own), so HTTP connections can close.
        self.state.events.close();
        // Upgraded sessions (exec, port-forward) end too: their streams are reset, clients closed.
        self.state.upgrades.close_all();
        let connections = self.state.registry.connections();
        for c in &connections {
            tracing::info!(agent_id = c.agent_id, connection_id = %c.connection_id, "sending goaway");
            c.handle.start_close(grace);
        }
        let http_idle = self.http_idle.clone();
        let http_left = smol::block_on(async {
            let _ = futures_lite::future::or(
                async {
                    // Err once every connection task dropped its sender.
                    let _ = http_idle.recv().await;
                },
                async {
                    smol::Timer::at(deadline).await;
                },
            )
            .await;
            http_idle.sender_count()
        });
        let mut aborted = 0;
        smol::block_on(async {
            for c in &connections {
                let closed = futures_lite::future::or(
                    async {
                        c.handle.closed().await;
                        true
                    },
                    async {
                        smol::Timer::at(deadline).await;
                        false
                    },
                )
                .await;
                if !closed {
                    aborted += 1;
                    c.handle
                        .abort(protocol::ErrorCode::NoError, "kas shut down");
                }
            }
        });
        if let Some(pool) = self.pool.take() {
            pool.stop();
        }
        let report = ShutdownReport {
            agent_connections: connections.len(),
            agent_connections_aborted: aborted,
            http_connections_aborted: http_left,
        };
        tracing::info!(?report, "kas stopped");
        report
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.pool.is_some() {
            // Not shut down explicitly: stop at once.
            self.state.begin_shutdown();
            self.stop.close();
            self.state.registry.close();
            self.state.events.close();
            self.state.upgrades.close_all();
            for c in self.state.registry.connections() {
                c.handle.abort(protocol::ErrorCode::NoError, "kas stopped");
            }
            if let Some(pool) = self.pool.take() {
                pool.stop();
            }
        }
    }
}
