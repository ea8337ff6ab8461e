//! The agent: dial kas, serve its streams, reconnect forever.
//!
//! ```text
//!  dial (TCP, TLS, HELLO) ──ok──▶ serve streams (own task) ──┬─ GOAWAY ─▶ dial a replacement at once;
//!        │                                                  │            the old connection drains
//!        └─err──▶ back off (Reconnect) ◀── connection lost ─┘
//! ```
//!
//! Only one connection is "current"; connections that got GOAWAY keep serving their in-flight
//! streams on their own task until kas closes them. Every decision (back-off after a failure,
//! handover after GOAWAY) comes from protocol's pure [`Reconnect`], which the simulator drives too;
//! this module only supplies clock and randomness, waits for the connection's events (no polling)
//! and does the I/O.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::CloseReason;
use protocol::cache::{AgentCache, PublisherConfig, ResourceKind};
use protocol::tunnel::reconnect::{BackoffPolicy, Decision, DialFailure, Next, Reconnect, Why};
use runtime_tokio::{AgentOptions, Connection, Error as TunnelError, connect_agent};
use rustls::pki_types::ServerName;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::address::KasAddress;
use crate::cache::CacheHandle;
use crate::config::Config;
use crate::config_client::{AppliedConfigReceiver, ConfigHandle};
use crate::dispatch::{Services, serve_connection};
use crate::error::Error;
use crate::{cache, config_client, informer, upstream, views};

/// Upper bound of one dial (TCP connect, TLS, HELLO/ACCEPT), so an unroutable kas address does not
/// hang an attempt for the operating system's connect timeout.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A ready-to-run agent: configuration checked, TLS and upstream clients built.
pub struct Agent {
    address: KasAddress,
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    options: AgentOptions,
    token_file: Option<std::path::PathBuf>,
    backoff: BackoffPolicy,
    shutdown_grace: Duration,
    services: Services,
    cache: Option<CacheSetup>,
    config: ConfigHandle,
    /// The Kubernetes client the GitOps workers apply with (started after the first handshake,
    /// which names the agent and so its inventories).
    gitops_client: kube::Client,
}

/// The informer cache, built but not started.
struct CacheSetup {
    cache: AgentCache,
    client: kube::Client,
    kinds: Vec<ResourceKind>,
    window: Duration,
}

/// The running cache task and informers; dropping it stops them.
struct RunningCache {
    handle: CacheHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl CacheSetup {
    fn start(self) -> RunningCache {
        let (handle, task) = cache::spawn(self.cache, &self.kinds, self.window);
        let mut tasks = informer::spawn(&self.client, &self.kinds, &handle);
        tasks.push(task);
        tracing::info!(kinds = ?self.kinds.iter().map(ToString::to_string).collect::<Vec<_>>(), "informer cache started");
        RunningCache { handle, tasks }
    }
}

impl Drop for RunningCache {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A connection still serving streams (current, or draining after GOAWAY).
struct Live {
    conn: Connection,
    task: JoinHandle<()>,
}

impl Agent {
    /// Checks the configuration and builds everything that does not need kas: the TLS client
    /// configuration, the Kubernetes API client (loading kube's configuration), the service client,
    /// and the informer cache (views compiled, not started yet).
    pub async fn new(config: Config) -> Result<Agent, Error> {
        // kube builds its TLS configuration with rustls' process-wide provider; make it `ring`, the
        // one provider this workspace compiles in (a no-op if the application installed one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let address = KasAddress::parse(&config.kas_address)?;
        if config.token.trim().is_empty() {
            return Err(Error::EmptyToken);
        }
        let tls = tunnel_tls::client_config(&config.ca, None)?;
        let server_name =
            tunnel_tls::server_name(config.tls_server_name.as_deref().unwrap_or(&address.host))?;
        let kube_config = upstream::load_kube_config(&config.kube).await?;
        tracing::info!(api_server = %kube_config.cluster_url, "Kubernetes API configuration loaded");
        let services = Services {
            kube: upstream::kube_service(&kube_config)?,
            plain: upstream::plain_service(),
            services: informer::ServiceInformer::new(
                kube::Client::try_from(kube_config.clone())
                    .map_err(|e| Error::kube("the service watch client", e))?,
            ),
            cache: None,
        };
        let cache = if config.cache.enabled() {
            let mut publisher = PublisherConfig::new(rand::random());
            publisher.window = config.cache.window;
            publisher.ack_timeout = config.cache.ack_timeout;
            let cache = AgentCache::new(&config.cache.views, publisher)?;
            let client = kube::Client::try_from(kube_config.clone())
                .map_err(|e| Error::kube("the watch client", e))?;
            Some(CacheSetup {
                cache,
                client,
                kinds: config.cache.watch_kinds.clone(),
                window: config.cache.window,
            })
        } else {
            None
        };
        let options = AgentOptions {
            token: config.token.clone(),
            meta: config.meta.agent_meta(cache.is_some()),
            config: config.tunnel.clone(),
        };
        Ok(Agent {
            address,
            tls,
            server_name,
            options,
            token_file: config.token_file.clone(),
            backoff: config.backoff,
            shutdown_grace: config.shutdown_grace,
            services,
            cache,
            config: ConfigHandle::new(config.log_level.clone()),
            gitops_client: kube::Client::try_from(kube_config.clone())
                .map_err(|e| Error::kube("the GitOps client", e))?,
        })
    }

    /// The configuration kas sent, as applied (`None` until the first one): a `tokio::sync::watch`
    /// receiver that sees every later one. Take it before [`Agent::run`]; it stays valid across
    /// connections and ends (`changed()` fails) when the agent stops.
    pub fn applied_config(&self) -> AppliedConfigReceiver {
        self.config.subscribe()
    }

    /// Starts the informer cache, then connects to kas and serves it until `shutdown` resolves,
    /// reconnecting forever. On shutdown, every connection is closed gracefully (in-flight requests
    /// get the shutdown grace), then the cache stops.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let running_cache = self.cache.take().map(CacheSetup::start);
        let services = Arc::new(Services {
            cache: running_cache.as_ref().map(|c| c.handle.clone()),
            ..self.services.clone()
        });
        // Connections are named by a serial number; every decision comes from the pure policy.
        let mut reconnect: Reconnect<u64> = Reconnect::new(self.backoff);
        let mut serial = 0u64;
        let mut live: Vec<Live> = Vec::new();
        let mut reload_token = false;
        // GitOps: workers follow the applied configuration and use the current connection.
        let (conn_tx, conn_rx) = tokio::sync::watch::channel(None::<Connection>);
        let mut gitops: Option<JoinHandle<()>> = None;
        tracing::info!(kas = %self.address, "agentk starting");
        // Runs until shutdown; every iteration dials once and then waits (back-off, or the life of
        // the connection), so it never spins.
        loop {
            live.retain(|l| !l.task.is_finished());
            if std::mem::take(&mut reload_token) {
                self.reload_token();
            }
            let dial = async {
                tokio::time::timeout(
                    DIAL_TIMEOUT,
                    connect_agent(
                        (self.address.host.as_str(), self.address.port),
                        self.tls.clone(),
                        self.server_name.clone(),
                        self.options.clone(),
                    ),
                )
                .await
                .unwrap_or(Err(TunnelError::Timeout))
            };
            let result = tokio::select! {
                () = &mut shutdown => break,
                r = dial => r,
            };
            let decision = match result {
                Ok((conn, established)) => {
                    serial += 1;
                    reconnect.handle_connected(serial, Instant::now());
                    tracing::info!(
                        agent_id = established.agent_id,
                        connection_id = %established.connection_id,
                        "connected to kas"
                    );
                    let span = tracing::info_span!(
                        "connection",
                        agent_id = established.agent_id,
                        connection_id = %established.connection_id,
                    );
                    conn_tx.send_replace(Some(conn.clone()));
                    if gitops.is_none() {
                        gitops = Some(self.start_gitops(established.agent_id, conn_rx.clone()));
                    }
                    let serving = serve_connection(conn.clone(), services.clone());
                    let views = services.cache.clone().map(|c| views::run(conn.clone(), c));
                    let config = config_client::run(conn.clone(), self.config.clone());
                    let task = tokio::spawn(
                        async move {
                            match views {
                                Some(views) => {
                                    tokio::join!(serving, views, config);
                                }
                                None => {
                                    tokio::join!(serving, config);
                                }
                            }
                        }
                        .instrument(span),
                    );
                    live.push(Live {
                        conn: conn.clone(),
                        task,
                    });
                    let (decision, reason) = tokio::select! {
                        () = &mut shutdown => break,
                        reason = conn.closed() => (
                            reconnect.handle_closed(&serial, &reason, Instant::now(), rand::random()),
                            Some(reason),
                        ),
                        () = draining(&conn) => (
                            reconnect.handle_draining(&serial, Instant::now(), rand::random()),
                            None,
                        ),
                    };
                    // The connection is current and undecided, so the policy always answers.
                    let decision = decision.unwrap_or_else(|| {
                        reconnect.handle_dial_failed(
                            DialFailure::Network,
                            Instant::now(),
                            rand::random(),
                        )
                    });
                    log_connection_end(&decision, &reconnect, &established, reason.as_ref());
                    decision
                }
                Err(e) => {
                    let decision = reconnect.handle_dial_failed(
                        dial_failure(&e),
                        Instant::now(),
                        rand::random(),
                    );
                    log_failure(&e, reconnect.failures(), decision.delay(Instant::now()));
                    decision
                }
            };
            reload_token = decision.reload_credentials;
            if let Next::WaitUntil(at) = decision.next {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
        }
        if let Some(g) = gitops {
            g.abort();
        }
        self.close_all(live).await;
        drop(running_cache);
    }

    /// Starts the GitOps workers for agent `agent_id`: they follow the configuration kas sends
    /// (its `gitops.manifest_projects`) and open their streams on the connection in `conns`.
    fn start_gitops(
        &self,
        agent_id: u64,
        conns: tokio::sync::watch::Receiver<Option<Connection>>,
    ) -> JoinHandle<()> {
        let mut applied = self.config.subscribe();
        let (config_tx, config_rx) = tokio::sync::watch::channel(None);
        let workers = crate::gitops::GitopsWorkers::new(
            self.gitops_client.clone(),
            crate::gitops::WorkerSettings::for_agent(&agent_id.to_string()),
        );
        tokio::spawn(async move {
            let forward = async move {
                // Forwards each applied configuration (only its content matters to the workers).
                loop {
                    let config = applied
                        .borrow_and_update()
                        .as_ref()
                        .map(|a| Arc::new(a.config.clone()));
                    config_tx.send_replace(config);
                    if applied.changed().await.is_err() {
                        break;
                    }
                }
            };
            tokio::join!(forward, workers.run(conns, config_rx));
        })
    }

    /// Reads the token file again (after kas refused the token); keeps the old token on failure.
    fn reload_token(&mut self) {
        let Some(path) = &self.token_file else {
            return;
        };
        match crate::config::read_token_file(path) {
            Ok(token) if token != self.options.token => {
                tracing::info!(path = %path.display(), "the token file changed; using the new token");
                self.options.token = token;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the token file; keeping the token")
            }
        }
    }

    /// Graceful close of every connection, bounded by the shutdown grace.
    async fn close_all(self, mut live: Vec<Live>) {
        live.retain(|l| !l.task.is_finished());
        tracing::info!(connections = live.len(), "agentk shutting down");
        for l in &live {
            l.conn.start_close(self.shutdown_grace);
        }
        let wait = async {
            for l in live {
                let _ = l.task.await;
            }
        };
        if tokio::time::timeout(self.shutdown_grace + Duration::from_secs(1), wait)
            .await
            .is_err()
        {
            tracing::warn!("connections did not close within the shutdown grace");
        }
    }
}

/// Resolves once either side sent GOAWAY on `conn` (the runtime's drain event, no polling). A
/// connection that ends without GOAWAY never resolves it: the caller waits for its end as well.
pub(crate) async fn draining(conn: &Connection) {
    conn.handle().draining().await;
    if !conn.is_draining() {
        std::future::pending::<()>().await;
    }
}

/// The dial failure a runtime error stands for.
fn dial_failure(e: &TunnelError) -> DialFailure {
    match e {
        TunnelError::Refused {
            code, retry_after, ..
        } => DialFailure::Refused {
            code: *code,
            retry_after: *retry_after,
        },
        TunnelError::Timeout => DialFailure::Timeout,
        TunnelError::Tls(_) => DialFailure::Tls,
        _ => DialFailure::Network,
    }
}

/// One log line for the end (or drain) of the current connection, by the policy's reason.
fn log_connection_end(
    decision: &Decision,
    reconnect: &Reconnect<u64>,
    established: &protocol::Established,
    reason: Option<&CloseReason>,
) {
    let delay_ms = delay_ms(decision.delay(Instant::now()));
    let attempt = reconnect.failures();
    let connection_id = &established.connection_id;
    match decision.why {
        Why::Handover => tracing::info!(
            agent_id = established.agent_id,
            %connection_id,
            "kas is going away: opening a new connection while this one drains"
        ),
        Why::EarlyGoaway { lived } => tracing::warn!(
            %connection_id,
            attempt,
            delay_ms,
            lived_ms = self::delay_ms(lived),
            "kas sent GOAWAY right after connecting; reconnecting after a back-off"
        ),
        _ => tracing::warn!(
            %connection_id,
            reason = %reason.map_or_else(|| "draining".to_owned(), ToString::to_string),
            attempt,
            delay_ms,
            "connection to kas lost; reconnecting"
        ),
    }
}

fn delay_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One log line per failed attempt.
fn log_failure(e: &TunnelError, attempt: u32, delay: Duration) {
    let delay_ms = delay_ms(delay);
    match e {
        TunnelError::Refused { code, message, .. } if code.is_credential_problem() => {
            tracing::error!(
                attempt,
                delay_ms,
                code = %code,
                %message,
                "kas refused the agent's token; check the token (retrying)"
            );
        }
        TunnelError::Refused { code, message, .. } => {
            tracing::warn!(attempt, delay_ms, code = %code, %message, "kas refused the connection; retrying");
        }
        e => tracing::warn!(attempt, delay_ms, error = %e, "cannot connect to kas; retrying"),
    }
}

/// Connects to kas and serves it until `shutdown` resolves; reconnects forever. Fails only when the
/// configuration is unusable (see [`Agent::new`]).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Agent::new(config).await?.run(shutdown).await;
    Ok(())
}
