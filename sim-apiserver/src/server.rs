//! Starting and stopping the simulated API server: configuration, binding, the accept loop
//! (hyper HTTP/1.1 on tokio, plain HTTP or HTTPS with a throw-away CA), and the background tasks (simulated kubelet, churn).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::churn::{self, Churn, ChurnConfig};
use super::handlers::{self, Context};
use super::identity::{Authenticator, User};
use super::kubeconfig;
use super::kubelet;
use super::population;
use super::portforward::PodNetwork;
use super::recorder::{EventRecorder, RecordedRequest, RequestRecorder};
use super::sessions::{SessionStats, Sessions};
use super::store::{Store, StoreConfig, StoreError};

/// Settings of a simulated API server. `Default` gives a small cluster on an ephemeral
/// 127.0.0.1 port without churn.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Address to listen on (port 0 = any free port).
    pub listen: SocketAddr,
    /// Initial number of Ready nodes (`sim-node-1`, ...).
    pub nodes: usize,
    /// Initial number of running pods, spread over the initial deployments.
    pub pods: usize,
    /// Churn steps per second (0 = no churn).
    pub churn_rate: f64,
    /// Seed of the churn and naming RNG.
    pub seed: u64,
    /// Change events retained for watch resumption and paging (older versions get 410).
    pub history_size: usize,
    /// Capacity of the change broadcast; watchers lagging further behind are ended with 410.
    pub broadcast_capacity: usize,
    /// Interval between watch bookmarks (for watches with `allowWatchBookmarks=true`).
    pub bookmark_interval: Duration,
    /// Interval between fake log lines of each running container.
    pub log_interval: Duration,
    /// Run the simulated kubelet, which starts Pending pods.
    pub kubelet: bool,
    /// How long a Pending pod waits before the simulated kubelet starts it.
    pub pod_startup_delay: Duration,
    /// The admin credential (`kubernetes-admin` in `system:masters`). If set, every API
    /// request must carry `Authorization: Bearer <token>` of the admin or of one of `users`;
    /// if not, the server is open: requests without a known credential act as the admin.
    pub bearer_token: Option<String>,
    /// Serve HTTPS with a certificate (for `localhost`, `127.0.0.1`, `::1`) from a throw-away
    /// CA, which the written kubeconfigs trust. kubectl sends bearer tokens only over TLS, so
    /// a kubectl authenticating as one of `users` needs this.
    pub tls: bool,
    /// More credentials, each its own identity, authorised by RBAC (e.g. the agent's service
    /// account, [`User::service_account`]).
    pub users: Vec<User>,
    /// Objects created at start, after the initial population (e.g. the Roles and bindings
    /// that give `users` their permissions).
    pub initial_objects: Vec<serde_json::Value>,
    /// Most events kept from simulated activity.
    pub max_events: usize,
    /// Most concurrent streaming sessions (exec, attach, port-forward); more get 429.
    pub max_streaming_sessions: usize,
    /// A streaming session with no data in either direction for this long is ended (the
    /// default is the kubelet's `streamingConnectionIdleTimeout`, 4 h).
    pub streaming_idle_timeout: Duration,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nodes: 3,
            pods: 10,
            churn_rate: 0.0,
            seed: 1,
            history_size: 10_000,
            broadcast_capacity: 4096,
            bookmark_interval: Duration::from_secs(15),
            log_interval: Duration::from_secs(1),
            kubelet: true,
            pod_startup_delay: Duration::from_millis(500),
            bearer_token: None,
            tls: false,
            users: Vec::new(),
            initial_objects: Vec::new(),
            max_events: 200,
            max_streaming_sessions: 4096,
            streaming_idle_timeout: Duration::from_secs(4 * 3600),
        }
    }
}

/// Errors starting or using the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A tokio runtime could not be created.
    #[error("cannot start a tokio runtime for the API server: {0}")]
    Runtime(std::io::Error),
    /// The kubeconfig could not be written.
    #[error("cannot write kubeconfig {path}: {source}")]
    WriteKubeconfig {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The throw-away TLS certificate could not be made.
    #[error("cannot make the TLS certificate of the API server: {0}")]
    Tls(String),
    /// The initial cluster state could not be created.
    #[error("cannot create the initial cluster state: {0}")]
    Populate(#[from] StoreError),
}

/// Most requests [`RunningApiServer::requests`] keeps.
const MAX_RECORDED_REQUESTS: usize = 10_000;

/// Entry points to start a simulated API server.
pub struct ApiServer;

impl ApiServer {
    /// Binds and starts serving; returns at once. Inside a tokio runtime the server runs as
    /// tasks of that runtime (note: a current-thread runtime only serves while it is polled, so
    /// don't block it, e.g. with a blocking `kubectl` call); outside any runtime it gets its own
    /// runtime on a background thread.
    pub fn start(config: ApiServerConfig) -> Result<RunningApiServer, Error> {
        match Handle::try_current() {
            Ok(h) => Self::start_on(&h, config),
            Err(_) => Self::start_with_own_runtime(config),
        }
    }

    /// Starts the server on its own two-thread tokio runtime on a background thread; the
    /// runtime stops with [`RunningApiServer::shutdown`] (or when the handle is dropped).
    pub fn start_with_own_runtime(config: ApiServerConfig) -> Result<RunningApiServer, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sim-apiserver")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let mut running = Self::start_on(rt.handle(), config)?;
        let mut stop = running.shutdown.subscribe();
        let thread = std::thread::Builder::new()
            .name("sim-apiserver-rt".to_string())
            .spawn(move || {
                rt.block_on(async move {
                    // Ends when shutdown is signalled or the sender is dropped.
                    while !*stop.borrow_and_update() {
                        if stop.changed().await.is_err() {
                            break;
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(Error::Runtime)?;
        running.own_runtime = Some(thread);
        Ok(running)
    }

    /// Starts the server as tasks on the given tokio runtime.
    pub fn start_on(handle: &Handle, config: ApiServerConfig) -> Result<RunningApiServer, Error> {
        let _guard = handle.enter();
        let bind_err = |source| Error::Bind {
            addr: config.listen,
            source,
        };
        let std_listener = std::net::TcpListener::bind(config.listen).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = std_listener.local_addr().map_err(bind_err)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;
        let tls = if config.tls {
            Some(Tls::generate()?)
        } else {
            None
        };

        let store = Store::new(StoreConfig {
            history_size: config.history_size.max(1),
            broadcast_capacity: config.broadcast_capacity,
        });
        population::populate(&store, config.nodes, config.pods, config.seed)?;
        for obj in &config.initial_objects {
            store.create(obj.clone())?;
        }
        let recorder = EventRecorder::new(store.clone(), config.max_events);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let network = Arc::new(PodNetwork::new(shutdown_rx.clone()));
        let sessions = Sessions::new(config.max_streaming_sessions, config.streaming_idle_timeout);
        let ctx = Arc::new(Context {
            containers: Arc::default(),
            network: network.clone(),
            sessions: sessions.clone(),
            store: store.clone(),
            authn: Authenticator::new(config.bearer_token.as_deref(), &config.users),
            bookmark_interval: config.bookmark_interval,
            log_interval: config.log_interval,
            shutdown: shutdown_rx.clone(),
            server_address: addr.to_string(),
        });
        let requests = RequestRecorder::new(MAX_RECORDED_REQUESTS);
        handle.spawn(accept_loop(
            listener,
            tls.as_ref().map(|t| t.acceptor.clone()),
            ctx,
            requests.clone(),
            shutdown_rx.clone(),
        ));
        if config.kubelet {
            handle.spawn(kubelet::run(
                store.clone(),
                recorder.clone(),
                config.pod_startup_delay,
                shutdown_rx.clone(),
            ));
        }
        if config.churn_rate > 0.0 {
            let churn = Churn::new(
                store.clone(),
                recorder,
                ChurnConfig {
                    rate: config.churn_rate,
                    seed: config.seed,
                    target_pods: config.pods,
                },
            );
            handle.spawn(churn::run(churn, shutdown_rx));
        }
        tracing::info!(%addr, nodes = config.nodes, pods = config.pods, churn = config.churn_rate, "simulated API server listening");
        Ok(RunningApiServer {
            addr,
            store,
            network,
            sessions,
            requests,
            bearer_token: config.bearer_token,
            ca_pem: tls.map(|t| t.ca_pem),
            shutdown,
            own_runtime: None,
        })
    }
}

/// HTTPS: a server certificate from a throw-away CA.
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca_pem: String,
}

impl Tls {
    fn generate() -> Result<Self, Error> {
        let err = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
        let pki = tunnel_tls::ThrowawayPki::generate().map_err(|e| err(&e))?;
        let (chain, key) = pki.server.identity().map_err(|e| err(&e))?.into_parts();
        let mut config = tunnel_tls::rustls::ServerConfig::builder_with_provider(
            tunnel_tls::config::crypto_provider(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| err(&e))?;
        // HTTP/1.1 only: exec, attach and port-forward upgrade the connection.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            ca_pem: pki.ca_pem().to_string(),
        })
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Context>,
    requests: RequestRecorder,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (ctx, requests, shutdown) = (ctx.clone(), requests.clone(), shutdown.clone());
                    match &tls {
                        None => {
                            tokio::spawn(serve_connection(stream, peer, ctx, requests, shutdown));
                        }
                        Some(acceptor) => {
                            let accept = acceptor.accept(stream);
                            tokio::spawn(async move {
                                match tokio::time::timeout(Duration::from_secs(10), accept).await {
                                    Ok(Ok(tls)) => serve_connection(tls, peer, ctx, requests, shutdown).await,
                                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::debug!("simulated API server stopped accepting");
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    requests: RequestRecorder,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        requests.record(req.method(), req.uri());
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handlers::handle(ctx, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service)
        // exec, attach and port-forward switch protocols (`101`) on this connection.
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        },
        _ = shutdown.changed() => {}
    }
}

/// A running simulated API server. Dropping it stops the server.
pub struct RunningApiServer {
    addr: SocketAddr,
    store: Store,
    network: Arc<PodNetwork>,
    sessions: Arc<Sessions>,
    requests: RequestRecorder,
    bearer_token: Option<String>,
    ca_pem: Option<String>,
    shutdown: watch::Sender<bool>,
    own_runtime: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningApiServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT` (`https://` with [`ApiServerConfig::tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM certificate of the CA that issued the server's certificate (with
    /// [`ApiServerConfig::tls`]).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The object store behind the server: changes made here are served and watched like
    /// changes made through the API.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The simulated pod network: where port-forwarded pod ports really listen.
    pub fn pod_network(&self) -> &Arc<PodNetwork> {
        &self.network
    }

    /// Counters of streaming sessions (exec, attach, port-forward).
    pub fn streaming_sessions(&self) -> SessionStats {
        self.sessions.stats()
    }

    /// The last requests the server received (at most 10,000, oldest first) and how many it
    /// received in all.
    pub fn requests(&self) -> (u64, Vec<RecordedRequest>) {
        self.requests.snapshot()
    }

    /// The bearer token clients must present, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        self.bearer_token.as_deref()
    }

    /// A kubeconfig (YAML) for this server with one context named `context`.
    pub fn kubeconfig(&self, context: &str) -> String {
        kubeconfig::kubeconfig_yaml_tls(
            &self.url(),
            context,
            self.bearer_token.as_deref(),
            self.ca_pem(),
        )
    }

    /// A kubeconfig (YAML) for this server with one context named `context` authenticating
    /// with `token` (e.g. of one of [`ApiServerConfig::users`]).
    pub fn kubeconfig_with_token(&self, context: &str, token: &str) -> String {
        kubeconfig::kubeconfig_yaml_tls(&self.url(), context, Some(token), self.ca_pem())
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>, context: &str) -> Result<(), Error> {
        let path = path.as_ref();
        std::fs::write(path, self.kubeconfig(context)).map_err(|source| Error::WriteKubeconfig {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A receiver that sees `true` once the server is shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops accepting, ends open connections, streams and background tasks.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.own_runtime.take()
            && t.join().is_err()
        {
            tracing::warn!("the API server runtime thread panicked");
        }
    }
}

impl Drop for RunningApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
