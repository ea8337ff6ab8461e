//! The agent: dial kas, serve its streams, reconnect forever.
//!
//! ```text
//!  dial (TCP, TLS, HELLO) ──ok──▶ serve streams (own task) ──┬─ GOAWAY ─▶ dial a replacement at once;
//!        │                                                  │            the old connection drains
//!        └─err──▶ back off (Reconnect) ◀── connection lost ─┘
//! ```
//!
//! kas's ACCEPT names its replica and how many connections to distinct replicas it wants (`K`): the
//! agent keeps dialling (one dial at a time) until it holds `K`, closing a connection that reached a
//! replica it already holds. Each connection serves streams on its own task; connections that got
//! GOAWAY keep serving their in-flight streams until kas closes them. Every decision (back-off after
//! a failure, handover after GOAWAY, duplicates) comes from protocol's pure [`ConnectionSet`], which
//! the simulator drives too; this module only supplies clock and randomness, waits for the
//! connections' events (no polling) and does the I/O.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use protocol::CloseReason;
use protocol::cache::{AgentCache, PublisherConfig, ResourceKind};
use protocol::tunnel::connection_set::{Admit, ConnectionSet};
use protocol::tunnel::reconnect::{BackoffPolicy, Decision, DialFailure, Why};
use runtime_tokio::transport::Endpoint;
use runtime_tokio::{AgentOptions, Connection, Error as TunnelError, connect_agent_to};
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
    /// The address with its transport and proxy.
    endpoint: Endpoint,
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

/// A connection still serving streams (serving, or draining after GOAWAY).
struct Live {
    serial: u64,
    conn: Connection,
    connection_id: String,
    agent_id: u64,
    task: JoinHandle<()>,
}

/// What a connection's watcher reports.
enum Watched {
    /// Either side sent GOAWAY.
    Draining,
    /// It ended.
    Closed(CloseReason),
}

/// A dial in flight.
type DialFuture =
    futures::future::BoxFuture<'static, Result<(Connection, protocol::Established), TunnelError>>;

/// How long a duplicate connection (to a replica already held) serves streams kas opened before
/// it saw our GOAWAY.
const DUPLICATE_GRACE: Duration = Duration::from_secs(5);

/// Sleeps until `at`, or forever if `None`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
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
        let endpoint = address.endpoint(&config.proxy, |k| std::env::var(k).ok())?;
        if config.token.trim().is_empty() {
            return Err(Error::EmptyToken);
        }
        let tls = tunnel_tls::client_config(&config.ca, None)?;
        let server_name =
            tunnel_tls::server_name(config.tls_server_name.as_deref().unwrap_or(&address.host))?;
        let kube_config = upstream::load_kube_config(&config.kube).await?;
        tracing::info!(api_server = %kube_config.cluster_url, "Kubernetes API configuration loaded");
        let services = Services {
            api: Arc::new(upstream::ApiClient::new(&kube_config)?),
            kube: upstream::kube_service(&kube_config)?,
            pool: Default::default(),
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
            endpoint,
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
    /// reconnecting forever. kas's ACCEPT says how many connections to distinct replicas to hold
    /// (`K`); every decision (dial, back-off, handover, closing a duplicate) comes from the pure
    /// [`ConnectionSet`]. On shutdown, every connection is closed gracefully (in-flight requests get
    /// the shutdown grace), then the cache stops.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let running_cache = self.cache.take().map(CacheSetup::start);
        let services = Arc::new(Services {
            cache: running_cache.as_ref().map(|c| c.handle.clone()),
            ..self.services.clone()
        });
        // Connections are named by a serial number.
        let mut set: ConnectionSet<u64> = ConnectionSet::new(self.backoff);
        let mut serial = 0u64;
        let mut live: Vec<Live> = Vec::new();
        let mut reload_token = false;
        // Each live connection reports its drain and its end here (one watcher task each).
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<(u64, Watched)>();
        let mut dial: Option<std::pin::Pin<Box<DialFuture>>> = None;
        // GitOps: workers follow the applied configuration and use one serving connection.
        let (conn_tx, conn_rx) = tokio::sync::watch::channel(None::<Connection>);
        let mut gitops: Option<JoinHandle<()>> = None;
        let mut gitops_serial: Option<u64> = None;
        tracing::info!(kas = %self.address, proxy = ?self.endpoint.proxy, "agentk starting");
        // Runs until shutdown; every iteration waits for a dial, a connection event or the next
        // dial's time, so it never spins.
        loop {
            live.retain(|l| !l.task.is_finished());
            let now = Instant::now();
            if dial.is_none() && set.poll_dial(now) {
                if std::mem::take(&mut reload_token) {
                    self.reload_token();
                }
                dial = Some(Box::pin(self.dial()));
            }
            let wake = set.poll_timeout(now);
            tokio::select! {
                () = &mut shutdown => break,
                result = async { dial.as_mut().expect("guarded").await }, if dial.is_some() => {
                    dial = None;
                    match result {
                        Ok((conn, established)) => {
                            serial += 1;
                            let admit = set.handle_connected(
                                serial,
                                &established.replica_id,
                                established.connections_wanted,
                                Instant::now(),
                                rand::random(),
                            );
                            if gitops.is_none() {
                                gitops = Some(self.start_gitops(established.agent_id, conn_rx.clone()));
                            }
                            live.push(self.start_serving(
                                serial,
                                conn,
                                &established,
                                admit,
                                &services,
                                &set,
                                events_tx.clone(),
                            ));
                        }
                        Err(e) => {
                            let decision = set.handle_dial_failed(
                                dial_failure(&e),
                                Instant::now(),
                                rand::random(),
                            );
                            log_failure(&e, set.failures(), decision.delay(Instant::now()));
                            reload_token = decision.reload_credentials;
                        }
                    }
                }
                Some((id, watched)) = events.recv() => {
                    let now = Instant::now();
                    let replica = set.replica_of(&id).map(str::to_owned);
                    let (decision, reason) = match watched {
                        Watched::Draining => (set.handle_draining(&id, now, rand::random()), None),
                        Watched::Closed(reason) => {
                            (set.handle_closed(&id, &reason, now, rand::random()), Some(reason))
                        }
                    };
                    if let (Some(decision), Some(l)) =
                        (decision, live.iter().find(|l| l.serial == id))
                    {
                        log_connection_end(&decision, &set, l, replica.as_deref(), reason.as_ref());
                    }
                }
                () = sleep_until_opt(wake) => {}
            }
            // GitOps streams go to the oldest serving connection.
            let oldest = set.serving().next().map(|(id, _)| *id);
            if oldest != gitops_serial {
                gitops_serial = oldest;
                let conn = oldest
                    .and_then(|id| live.iter().find(|l| l.serial == id))
                    .map(|l| l.conn.clone());
                conn_tx.send_replace(conn);
            }
        }
        if let Some(g) = gitops {
            g.abort();
        }
        self.close_all(live).await;
        drop(running_cache);
    }

    /// One dial (TCP connect, TLS, HELLO/ACCEPT), bounded by [`DIAL_TIMEOUT`]; owns what it needs.
    fn dial(&self) -> DialFuture {
        let (endpoint, tls, name, options) = (
            self.endpoint.clone(),
            self.tls.clone(),
            self.server_name.clone(),
            self.options.clone(),
        );
        async move {
            tokio::time::timeout(
                DIAL_TIMEOUT,
                connect_agent_to(&endpoint, tls, name, options),
            )
            .await
            .unwrap_or(Err(TunnelError::Timeout))
        }
        .boxed()
    }

    /// Serves a connection that completed its handshake, as the set admitted it: its streams, the
    /// views and config streams, and a watcher reporting its drain and end. A duplicate (or
    /// surplus) connection is closed gracefully at once: streams kas opened before seeing our
    /// GOAWAY are still served.
    #[allow(clippy::too_many_arguments)]
    fn start_serving(
        &self,
        serial: u64,
        conn: Connection,
        established: &protocol::Established,
        admit: Admit,
        services: &Arc<Services>,
        set: &ConnectionSet<u64>,
        events: tokio::sync::mpsc::UnboundedSender<(u64, Watched)>,
    ) -> Live {
        let replica = established.replica_id.as_str();
        let span = tracing::info_span!(
            "connection",
            agent_id = established.agent_id,
            connection_id = %established.connection_id,
            replica,
        );
        let serving = set.serving().count();
        match admit {
            Admit::Keep => tracing::info!(
                agent_id = established.agent_id,
                connection_id = %established.connection_id,
                replica,
                serving,
                wanted = set.wanted(),
                "connected to kas"
            ),
            Admit::Duplicate { next } => tracing::info!(
                connection_id = %established.connection_id,
                replica,
                serving,
                wanted = set.wanted(),
                delay_ms = delay_ms(next.saturating_duration_since(Instant::now())),
                "connected to a kas replica already held; closing this connection and dialling again"
            ),
            Admit::Surplus => tracing::info!(
                connection_id = %established.connection_id,
                replica,
                wanted = set.wanted(),
                "kas wants fewer connections; closing this one"
            ),
        }
        let serving = serve_connection(conn.clone(), services.clone());
        let keep = admit == Admit::Keep;
        let views = keep
            .then(|| services.cache.clone().map(|c| views::run(conn.clone(), c)))
            .flatten();
        let config = keep.then(|| config_client::run(conn.clone(), self.config.clone()));
        let watched = conn.clone();
        let task = tokio::spawn(
            async move {
                let watch = async {
                    tokio::select! {
                        () = draining(&watched) => {
                            let _ = events.send((serial, Watched::Draining));
                        }
                        _ = watched.closed() => {}
                    }
                    let reason = watched.closed().await;
                    let _ = events.send((serial, Watched::Closed(reason)));
                };
                let extras = async {
                    if let Some(v) = views {
                        v.await;
                    }
                };
                let config = async {
                    if let Some(c) = config {
                        c.await;
                    }
                };
                tokio::join!(serving, extras, config, watch);
            }
            .instrument(span),
        );
        if !keep {
            conn.start_close(DUPLICATE_GRACE);
        }
        Live {
            serial,
            conn,
            connection_id: established.connection_id.clone(),
            agent_id: established.agent_id,
            task,
        }
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

/// One log line for the end (or drain) of a serving connection, by the policy's reason.
fn log_connection_end(
    decision: &Decision,
    set: &ConnectionSet<u64>,
    live: &Live,
    replica: Option<&str>,
    reason: Option<&CloseReason>,
) {
    let delay_ms = delay_ms(decision.delay(Instant::now()));
    let attempt = set.failures();
    let connection_id = &live.connection_id;
    let replica = replica.unwrap_or_default();
    let serving = set.serving().count();
    match decision.why {
        Why::Handover => tracing::info!(
            agent_id = live.agent_id,
            %connection_id,
            replica,
            serving,
            "kas is going away: opening a new connection while this one drains"
        ),
        Why::EarlyGoaway { lived } => tracing::warn!(
            %connection_id,
            replica,
            attempt,
            delay_ms,
            lived_ms = self::delay_ms(lived),
            "kas sent GOAWAY right after connecting; reconnecting after a back-off"
        ),
        _ => tracing::warn!(
            %connection_id,
            replica,
            serving,
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
