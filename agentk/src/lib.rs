//! # agentk: the in-cluster agent
//!
//! agentk runs inside a Kubernetes cluster (typically behind NAT), dials **out** to kas over TLS,
//! keeps one multiplexed tunnel connection open (runtime-tokio), and serves the requests kas sends
//! into the cluster over it. agentk never listens on any port. It stays small: decisions (routing,
//! authorisation, retries) belong in kas.
//!
//! ## Using it
//!
//! The binary (`agentk --kas-address tls://kas:8150 --token-file token [--ca-file ca.pem]
//! [--kubeconfig FILE [--context NAME] | --in-cluster]`, see `agentk --help`) is a thin CLI over:
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
//! | [`config`] | [`Config`], [`KubeSource`], [`MetaOverrides`] (HELLO metadata), token files |
//! | [`address`] | the kas address (`host:port`, `tls://host:port`) |
//! | [`reconnect`] | pure back-off policy: exponential, full jitter, bounded, honours REJECT `retry_after` |
//! | [`agent`] | the connection loop: dial, serve, GOAWAY handover, reconnect |
//! | [`dispatch`] | one task per kas-opened stream, by service; one log line per request |
//! | [`k8s_api`] | `k8s-api`: forward to the API server with agentk's own credentials |
//! | [`service_proxy`] | `service-proxy`: resolve a Service, forward to `clusterIP:port` |
//! | [`proxy_path`] | the service-proxy path and Service resolution |
//! | [`forward`] | one HTTP exchange, streaming both ways, with cancel and deadline |
//! | [`body`] | tunnel streams as HTTP request bodies; noticing a RESET from kas |
//! | [`upstream`] | the HTTP clients: kube's middleware over hyper-util; plain HTTP/1.1 |
//! | [`head`] | tunnel heads ↔ HTTP (header filtering), Kubernetes `Status` answers |
//! | [`error`] | [`Error`]: why agentk could not start |
//!
//! ## Behaviour (binding conventions in `notes/tunnel-services.md`)
//!
//! - **Connecting.** TCP + TLS 1.3 (ALPN `agent-tunnel/1`, roots from [`Config::ca`]), then HELLO
//!   with the token and [`AgentMeta`](protocol::proto::AgentMeta): capabilities `k8s-api`,
//!   `service-proxy`; version; pod, namespace and node from `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`.
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
//! - **service-proxy.** `/{namespace}/{service}:{port}/{rest}`: the Service is read from the API
//!   server (404 if it does not exist), its `clusterIP` and port (number or name) resolved (503 if
//!   headless or no such port), and the request sent over HTTP/1.1 to `clusterIP:port/rest`.
//! - **Unknown service.** Answered with 404 and a `Status` body (reason `NotFound`), not a RESET.
//! - **Logging.** `tracing`: per connection (agent id, connection id) and per stream (stream id,
//!   service, method, path, status, duration). The token is never logged.

pub mod address;
pub mod agent;
pub mod body;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod forward;
pub mod head;
pub mod k8s_api;
pub mod proxy_path;
pub mod reconnect;
pub mod service_proxy;
pub mod upstream;

pub use address::KasAddress;
pub use agent::{Agent, run};
pub use config::{CAPABILITIES, Config, KubeSource, MetaOverrides, read_token_file};
pub use error::Error;
pub use reconnect::{BackoffPolicy, Next, Reconnect};
