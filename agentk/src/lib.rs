//! # agentk: the in-cluster agent
//!
//! agentk runs inside a Kubernetes cluster (typically behind NAT), dials **out** to kas over TLS,
//! keeps one multiplexed tunnel connection open (runtime-tokio), and serves the requests kas sends
//! into the cluster over it. It also keeps an informer cache of the cluster's objects and pushes
//! small precomputed *views* of it to kas. agentk never listens on any port. It stays small:
//! decisions (routing, authorisation, retries) belong in kas.
//!
//! ## Using it
//!
//! The binary (`agentk --kas-address tls://kas:8150 --token-file token [--ca-file ca.pem]
//! [--kubeconfig FILE [--context NAME] | --in-cluster] [--watch-kinds v1/Node,v1/Pod,...]
//! [--views-file views.yaml]`, see `agentk --help`) is a thin CLI over:
//!
//! ```no_run
//! # async fn demo() -> Result<(), agentk::Error> {
//! let mut config = agentk::Config::new("tls://127.0.0.1:8150", "the-agent-token");
//! config.ca = tunnel_tls::Roots::PemFile("ca.pem".into());
//! config.kube = agentk::KubeSource::Kubeconfig { path: "kubeconfig".into(), context: None };
//! // Runs until the future resolves; reconnects forever; errors only for unusable configuration.
//! agentk::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! [`Agent::new`] + [`Agent::run`] split the same into "check the configuration" and "run".
//! Both must run inside a tokio runtime (multi-threaded recommended): agentk spawns one task per
//! connection and per stream. [`Agent::new`] installs rustls' `ring` provider as the process
//! default if none is installed yet (kube's TLS configuration uses the process default).
//!
//! ## Architecture
//!
//! | module | what it is |
//! |---|---|
//! | [`config`] | [`Config`], [`KubeSource`], [`MetaOverrides`] (HELLO metadata), [`CacheConfig`], token and views files |
//! | [`address`] | the kas address (`host:port`, `tls://host:port`) |
//! | [`agent`] | the connection loop: dial, serve, GOAWAY handover, reconnect (decided by `protocol::tunnel::reconnect`) |
//! | [`dispatch`] | one task per kas-opened stream, by service; one log line per request |
//! | [`k8s_api`] | `k8s-api`: forward to the API server with agentk's own credentials |
//! | [`upgrade`] | `k8s-api` upgrades (exec, attach, cp, port-forward): HTTP/1.1 `101`, then a raw duplex byte pipe |
//! | [`informer`] | one `kube-runtime` watcher per configured kind, feeding the cache task; the service proxy's per-Service watches |
//! | [`cache`] | the one task driving the [`AgentViews`](protocol::cache::AgentViews) endpoint: events, queries, view sync, object-change batching |
//! | [`views`] | the `views` stream agentk opens on every connection, linked to the cache task |
//! | [`config_client`] | the `config` stream agentk opens on every connection: applies kas's configuration live, publishes it on a watch channel |
//! | [`cache_service`] | `cache`: LIST/GET of cached objects, answered from the store |
//! | [`service_proxy`] | `service-proxy`: resolve a Service, forward to `clusterIP:port` |
//! | [`service_pool`] | keep-alive HTTP/1.1 connections to services and the API server, driven by the stream's own task |
//! | [`proxy_path`] | the service-proxy path and Service resolution |
//! | [`forward`] | one HTTP exchange, streaming both ways, with cancel and deadline |
//! | [`body`] | tunnel streams as HTTP request bodies; noticing a RESET from kas |
//! | [`upstream`] | the Kubernetes API client: keep-alive connections of [`service_pool`] with kube's TLS and credentials (upgrades: kube's middleware over hyper-util) |
//! | [`head`] | tunnel heads ↔ HTTP (header filtering), Kubernetes `Status` answers |
//! | [`gitops`] | GitOps sync workers: one `gitops` stream per manifest project, `gitops::Sync` driven with server-side apply, inventory, prune |
//! | [`error`] | [`Error`]: why agentk could not start |
//!
//! ## Behaviour (binding conventions in `protocol/SERVICES.md`)
//!
//! - **Connecting.** TCP + TLS 1.3 (ALPN `agent-tunnel/1`, roots from [`Config::ca`]), then HELLO
//!   with the token and [`AgentMeta`](protocol::proto::AgentMeta): capabilities `k8s-api`,
//!   `service-proxy` (+ `cache`, `views` while the informer cache runs); version; pod, namespace
//!   and node from `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`.
//! - **Reconnecting.** Every failure (dial, TLS, REJECT, lost connection) waits per
//!   [`Reconnect`]: a random delay up to `initial * 2^(n-1)` capped at `max`,
//!   at least REJECT's `retry_after`; a connection that lived `stable_after` resets the count. A
//!   refused token (UNAUTHENTICATED) is retried the same way, since the token may be fixed; with
//!   [`Config::token_file`] set (the CLI sets it) the file is read again first, so a rotated token
//!   is picked up without a restart. Each failure is logged once, with the attempt number and the
//!   delay.
//! - **GOAWAY.** When kas says GOAWAY, agentk dials a replacement at once; the old connection keeps
//!   serving its in-flight streams until they finish (kas bounds that). A GOAWAY within a second of
//!   connecting counts as a failure (back-off), so a flapping kas is not dialled in a tight loop.
//! - **k8s-api.** The request goes to the API server of kube's configuration with agentk's own
//!   credentials (kas's `Authorization` never passes); request and response bodies stream (watches
//!   and `logs -f` flow live). If the API server cannot be reached: 502 with a `Status` body and
//!   `x-tunnel-error: connect|tls|timeout|upstream`. If the upstream body breaks mid-way: TRAILER
//!   `UNAVAILABLE`. kas's `timeout_ms`: 504 before the response head, TRAILER `DEADLINE_EXCEEDED`
//!   after it. A RESET from kas drops the upstream request at once (an idle watch too).
//! - **service-proxy.** `/{namespace}/{service}:{port}/{rest}`: the Service is resolved from a
//!   watch of it started by its first request ([`informer::ServiceInformer`]; no API call per
//!   request; 404 if it does not exist), its `clusterIP` and port (number or name) resolved (503 if
//!   headless or no such port), and the request sent over pooled keep-alive HTTP/1.1 to
//!   `clusterIP:port/rest`.
//! - **Informer cache.** From start-up, whether or not kas is connected, one watcher per kind of
//!   [`CacheConfig::watch_kinds`] (default `v1/Node`, `v1/Pod`, `apps/v1/Deployment`, `v1/Event`, all
//!   namespaces) feeds one cache task owning the store, the views ([`CacheConfig::views`], default
//!   `protocol::cache::default_views`) and the view publisher. Watch failures are retried with
//!   kube-runtime's back-off, each distinct failure logged once.
//! - **views.** After each handshake agentk opens one `views` stream (`SYNC /`); on 200 the cache
//!   task links to it (`on_connected`), answers kas's resync request with a catch-up update or a
//!   snapshot, and sends view updates (at most one per window, 100 ms) and object changes (batched,
//!   at most one message per window) as length-delimited protobuf, with the stream's flow control.
//!   The stream ends with the connection (or its GOAWAY); a bad message from kas resets it with
//!   `ErrorCode::Protocol`. The next connection opens a new one and resyncs incrementally.
//! - **cache.** `LIST /{kind}?namespace=&labelSelector=` and `GET /{kind}/{namespace}/{name}` are
//!   answered from the store (never from the API server): a Kubernetes `List` or the object; 404
//!   unknown kind or object, 400 bad request or selector, 503 while the kind is not listed yet.
//! - **Unknown service.** Answered with 404 and a `Status` body (reason `NotFound`), not a RESET.
//! - **Logging.** `tracing`: per connection (agent id, connection id) and per stream (stream id,
//!   service, method, path, status, duration). The token is never logged.

pub mod address;
pub mod agent;
pub mod body;
pub mod cache;
pub mod cache_service;
pub mod config;
pub mod config_client;
pub mod dispatch;
pub mod error;
pub mod forward;
pub mod gitops;
pub mod head;
pub mod informer;
pub mod k8s_api;
pub mod proxy_path;
pub mod service_pool;
pub mod service_proxy;
pub mod upgrade;
pub mod upstream;
pub mod views;

pub use address::{KasAddress, ProxySetting};
pub use agent::{Agent, run};
pub use config::{
    CACHE_CAPABILITIES, CAPABILITIES, CacheConfig, Config, KubeSource, MetaOverrides,
    default_watch_kinds, parse_watch_kinds, read_token_file, read_views_file,
};
pub use config_client::{AppliedConfig, AppliedConfigReceiver, ConfigHandle, LogLevelControl};
pub use error::Error;
pub use protocol::tunnel::reconnect::BackoffPolicy;
