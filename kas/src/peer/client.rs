//! The gateway side of the private API: sends a request to the replica holding the agent and streams
//! the answer back.
//!
//! **Connection pool.** Connections to each replica are kept alive and reused ([`Pool`]): a request
//! takes the most recently used idle connection of its replica, or dials a new one (TCP, then TLS,
//! which resumes the session of an earlier connection to the same replica when it can: a session
//! cache per replica, since the replicas share one server name, and the server's session store);
//! once its response has been read to the end the connection goes back to the pool. The pool is bounded per replica ([`PoolLimits`]: beyond
//! `max_idle_per_replica` the oldest idle connection is closed), an idle connection is closed after
//! `idle_timeout`, and a connection that failed (or was upgraded) never returns. A pooled connection
//! may turn out dead only when used (the other replica restarted or closed it as idle): hyper then
//! hands the request back unsent and it is sent again on a new connection; a request that may have
//! reached the other replica is never sent again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;
use protocol::routing::ReplicaId;
use protocol::service::HeaderRule;

use crate::api::response::{ApiError, BodyError, ResponseBody};
use crate::state::KasState;
use crate::tracker::Entry;

use super::server::{self, Secret};

/// What became of a forwarded request.
pub(super) enum Outcome {
    /// The holder answered (or failed in a way the client is told about).
    Answered(Result<http::Response<ResponseBody>, ApiError>),
    /// The holder does not hold the agent (any more), or could not be reached within the find
    /// timeout: ask the policy again without it.
    NotThere(&'static str),
}

/// An HTTP/1 connection to another replica's private API.
type Sender = hyper::client::conn::http1::SendRequest<ResponseBody>;

/// Bounds of the connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle connections kept per replica at most (the oldest beyond it is closed).
    pub max_idle_per_replica: usize,
    /// An idle connection unused this long is closed (below hyper's 30 s header read timeout on
    /// the other side, so the other replica rarely closes one just as it is reused).
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_idle_per_replica: 32,
            idle_timeout: Duration::from_secs(20),
        }
    }
}

/// An idle connection and since when.
struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle connections to each replica (see the module documentation).
///
/// Invariant: every connection in it was ready for a request when it was put back, and no replica
/// has more than `max_idle_per_replica`.
#[derive(Default)]
struct Pool {
    limits: PoolLimits,
    idle: Mutex<HashMap<ReplicaId, Vec<Idle>>>,
    /// Requests sent on a pooled connection.
    reused: AtomicU64,
    /// New connections whose TLS handshake was a full one.
    dialled_full: AtomicU64,
    /// New connections whose TLS session was resumed.
    dialled_resumed: AtomicU64,
    /// Requests a dead pooled connection handed back unsent, sent again on a new connection.
    retried: AtomicU64,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReplicaId, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live idle connection to `replica`; closes the expired and dead.
    fn take(&self, replica: ReplicaId, now: Instant) -> Option<Sender> {
        let mut map = self.lock();
        let list = map.get_mut(&replica)?;
        let found = std::iter::from_fn(|| list.pop()).find(|i| {
            now.saturating_duration_since(i.since) < self.limits.idle_timeout && i.sender.is_ready()
        });
        if list.is_empty() {
            map.remove(&replica);
        }
        found.map(|i| i.sender)
    }

    /// Puts a connection that is ready for another request back.
    fn put(&self, replica: ReplicaId, sender: Sender, now: Instant) {
        if !sender.is_ready() || self.limits.max_idle_per_replica == 0 {
            return;
        }
        let mut map = self.lock();
        let list = map.entry(replica).or_default();
        list.push(Idle { sender, since: now });
        if list.len() > self.limits.max_idle_per_replica {
            list.remove(0);
        }
        debug_assert!(list.len() <= self.limits.max_idle_per_replica);
    }

    /// Closes `replica`'s connections idle for the idle timeout or dead.
    fn expire(&self, replica: ReplicaId, now: Instant) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(&replica) {
            list.retain(|i| {
                now.saturating_duration_since(i.since) < self.limits.idle_timeout
                    && !i.sender.is_closed()
            });
            if list.is_empty() {
                map.remove(&replica);
            }
        }
    }

    /// Idle connections now, all replicas.
    fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

/// The client of the other replicas' private APIs.
pub struct PeerClient {
    replica: ReplicaId,
    secret: Secret,
    /// The TLS configuration every replica's connector starts from.
    tls: Arc<futures_rustls::rustls::ClientConfig>,
    /// One connector per replica, each with its own TLS session cache: the replicas share one
    /// server name, and a session one replica issued cannot be resumed with another.
    connectors: Mutex<HashMap<ReplicaId, futures_rustls::TlsConnector>>,
    server_name: futures_rustls::pki_types::ServerName<'static>,
    find_timeout: Duration,
    urls: Mutex<BTreeMap<ReplicaId, String>>,
    pool: Arc<Pool>,
    /// Event relay streams open now (`relay.rs`).
    relays: AtomicU64,
    /// Whether connections are pooled and holders remembered ([`PeerClient::set_pooling`]).
    pooling: AtomicBool,
    /// Holders read from Redis per agent, and when ([`HOLDERS_TTL`]).
    holders: Mutex<HashMap<u64, (Instant, Vec<Entry>)>>,
}

/// How long the holders of an agent read from Redis serve further requests to it without reading
/// again. A holder that left the agent in the meantime answers `not-held` (or cannot be reached)
/// and the request reads Redis again; no holders at all is never remembered.
pub const HOLDERS_TTL: Duration = Duration::from_secs(1);

/// TLS sessions remembered per replica (a TLS 1.3 ticket resumes one connection).
const SESSIONS_PER_REPLICA: usize = 64;

/// Agents whose holders are remembered at most (beyond, the expired ones are forgotten, then all).
const MAX_CACHED_AGENTS: usize = 100_000;

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client for `replica`, verifying the other replicas' certificates against `tls`'s roots
    /// under `server_name`, authenticating with `secret`.
    pub fn new(
        replica: ReplicaId,
        secret: Secret,
        tls: Arc<futures_rustls::rustls::ClientConfig>,
        server_name: futures_rustls::pki_types::ServerName<'static>,
        find_timeout: Duration,
    ) -> PeerClient {
        let mut config = (*tls).clone();
        config.alpn_protocols = vec![server::ALPN.to_vec()];
        PeerClient {
            replica,
            secret,
            tls: Arc::new(config),
            connectors: Mutex::new(HashMap::new()),
            server_name,
            find_timeout,
            urls: Mutex::new(BTreeMap::new()),
            pool: Arc::new(Pool::default()),
            relays: AtomicU64::new(0),
            pooling: AtomicBool::new(true),
            holders: Mutex::new(HashMap::new()),
        }
    }

    /// The same client with other pool bounds.
    pub fn with_pool_limits(mut self, limits: PoolLimits) -> PeerClient {
        self.pool = Arc::new(Pool {
            limits,
            ..Pool::default()
        });
        self
    }

    /// Turns pooling off (every request dials a new connection, resuming the TLS session, and
    /// reads its holders from Redis: the cost of a hop without the pool) or back on. On by
    /// default; for benchmarks (`kas-demo`'s `replica_hop` example measures both in one run).
    pub fn set_pooling(&self, on: bool) {
        self.pooling.store(on, Ordering::SeqCst);
    }

    fn pooling(&self) -> bool {
        self.pooling.load(Ordering::SeqCst)
    }

    /// Records how many event relay streams are open.
    pub(super) fn set_relays(&self, n: usize) {
        self.relays.store(n as u64, Ordering::Relaxed);
    }

    /// Opens the stream of every event `replica` publishes itself (`relay.rs`).
    pub(super) async fn open_events(
        &self,
        state: &KasState,
        replica: ReplicaId,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri("/events")
            .header(http::header::HOST, "kas-peer")
            .header(server::SECRET, self.secret.header())
            .header(server::OP, "events")
            .header(server::FROM, self.replica.0)
            .body(crate::api::response::full(""))
            .map_err(|e| e.to_string())?;
        let limit = self.find_timeout + state.routing.response_timeout;
        futures_lite::future::or(
            async { Some(self.send(state, replica, request).await) },
            async {
                smol::Timer::after(limit).await;
                None
            },
        )
        .await
        .ok_or_else(|| format!("{replica}: no answer within {limit:?}"))?
        .map_err(|e| e.to_string())
    }

    /// The pool's series in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let p = &self.pool;
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP kas_peer_pool_idle Idle connections to other replicas' private APIs.\n\
             # TYPE kas_peer_pool_idle gauge\n\
             kas_peer_pool_idle {}\n\
             # HELP kas_peer_connections_total Connections dialled to other replicas, by TLS handshake.\n\
             # TYPE kas_peer_connections_total counter\n\
             kas_peer_connections_total{{tls=\"full\"}} {}\n\
             kas_peer_connections_total{{tls=\"resumed\"}} {}\n\
             # HELP kas_peer_requests_reused_total Requests to other replicas sent on a pooled connection.\n\
             # TYPE kas_peer_requests_reused_total counter\n\
             kas_peer_requests_reused_total {}\n\
             # HELP kas_peer_requests_retried_total Requests a dead pooled connection handed back unsent, sent again on a new one.\n\
             # TYPE kas_peer_requests_retried_total counter\n\
             kas_peer_requests_retried_total {}\n\
             # HELP kas_peer_event_relays Event relay streams from other replicas open now.\n\
             # TYPE kas_peer_event_relays gauge\n\
             kas_peer_event_relays {}\n",
            p.idle_count(),
            c(&p.dialled_full),
            c(&p.dialled_resumed),
            c(&p.reused),
            c(&p.retried),
            c(&self.relays),
        )
    }

    /// Remembers the private API URLs of these replicas.
    pub fn learn(&self, entries: &[Entry]) {
        let mut urls = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            urls.insert(e.replica, e.url.clone());
        }
    }

    /// `agent_id`'s holders read within [`HOLDERS_TTL`] of `now`.
    pub fn cached_holders(&self, agent_id: u64, now: Instant) -> Option<Vec<Entry>> {
        if !self.pooling() {
            return None;
        }
        let map = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&agent_id)
            .filter(|(at, _)| now.saturating_duration_since(*at) < HOLDERS_TTL)
            .map(|(_, entries)| entries.clone())
    }

    /// Remembers `agent_id`'s holders as read from Redis at `now` (forgets them if there are none).
    pub fn cache_holders(&self, agent_id: u64, entries: &[Entry], now: Instant) {
        let mut map = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if entries.is_empty() {
            map.remove(&agent_id);
            return;
        }
        if map.len() >= MAX_CACHED_AGENTS {
            map.retain(|_, (at, _)| now.saturating_duration_since(*at) < HOLDERS_TTL);
            if map.len() >= MAX_CACHED_AGENTS {
                map.clear();
            }
        }
        map.insert(agent_id, (now, entries.to_vec()));
    }

    /// `replica`'s TLS connector (its own session cache, made on first use).
    fn connector(&self, replica: ReplicaId) -> futures_rustls::TlsConnector {
        let mut map = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(replica)
            .or_insert_with(|| {
                let mut config = (*self.tls).clone();
                config.resumption = futures_rustls::rustls::client::Resumption::in_memory_sessions(
                    SESSIONS_PER_REPLICA,
                );
                futures_rustls::TlsConnector::from(Arc::new(config))
            })
            .clone()
    }

    fn url(&self, replica: ReplicaId) -> Option<String> {
        self.urls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&replica)
            .cloned()
    }

    /// A TLS connection to `replica`'s private API, bounded by the find timeout.
    async fn dial(
        &self,
        replica: ReplicaId,
    ) -> Result<futures_rustls::client::TlsStream<smol::net::TcpStream>, String> {
        let url = self
            .url(replica)
            .ok_or_else(|| format!("no private API URL known for {replica}"))?;
        let authority = url
            .strip_prefix("https://")
            .map(|a| a.trim_end_matches('/').to_owned())
            .ok_or_else(|| format!("{replica}'s private API URL is not https"))?;
        let connect = async {
            let tcp = smol::net::TcpStream::connect(authority.as_str())
                .await
                .map_err(|e| format!("connecting to {replica} at {authority}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let io = self
                .connector(replica)
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS with {replica} at {authority}: {e}"))?;
            let resumed = io.get_ref().1.handshake_kind()
                == Some(futures_rustls::rustls::HandshakeKind::Resumed);
            if resumed {
                &self.pool.dialled_resumed
            } else {
                &self.pool.dialled_full
            }
            .fetch_add(1, Ordering::Relaxed);
            Ok(io)
        };
        futures_lite::future::or(connect, async {
            smol::Timer::after(self.find_timeout).await;
            Err(format!(
                "{replica} at {authority} not reached within the find timeout ({:?})",
                self.find_timeout
            ))
        })
        .await
    }

    /// A new HTTP/1 connection to `replica`'s private API (its driver runs on kas's executor;
    /// it can be upgraded).
    async fn connect(&self, state: &KasState, replica: ReplicaId) -> Result<Sender, ConnectError> {
        let io = self.dial(replica).await.map_err(Unreachable)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(crate::api::http_io::HttpIo::new(io))
                .await
                .map_err(|e| Failed(format!("HTTP handshake failed: {e}")))?;
        state.spawner.spawn_detached(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Sends `request` to `replica` on a pooled connection, or a new one; a pooled connection that
    /// hands the request back unsent (it was dead) is left and the request sent on a new one. The
    /// connection goes back to the pool once the response was read to the end.
    async fn send(
        &self,
        state: &KasState,
        replica: ReplicaId,
        request: http::Request<ResponseBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let mut request = request;
        let pooled = if self.pooling() {
            self.pool.take(replica, Instant::now())
        } else {
            None
        };
        if let Some(mut sender) = pooled {
            match sender.try_send_request(request).await {
                Ok(resp) => {
                    self.pool.reused.fetch_add(1, Ordering::Relaxed);
                    self.release(state, replica, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection was dead; a new one below.
                    Some(unsent) => {
                        tracing::debug!(%replica, error = %e.error(), "pooled connection to the replica was dead");
                        self.pool.retried.fetch_add(1, Ordering::Relaxed);
                        request = unsent;
                    }
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let mut sender = self
            .connect(state, replica)
            .await
            .map_err(SendError::Connect)?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(SendError::Failed)?;
        self.release(state, replica, sender);
        Ok(resp)
    }

    /// Puts `sender` back in the pool once its response has been read (it is ready for another
    /// request); a connection that ends instead (failed, upgraded, closed) is dropped. Closes it
    /// after the idle timeout if nobody took it.
    fn release(&self, state: &KasState, replica: ReplicaId, mut sender: Sender) {
        if !self.pooling() {
            return;
        }
        let pool = self.pool.clone();
        let spawner = state.spawner.clone();
        state.spawner.spawn_detached(async move {
            // Ends when the response was read (ready) or the connection ended (error).
            if sender.ready().await.is_err() {
                return;
            }
            pool.put(replica, sender, Instant::now());
            let idle_timeout = pool.limits.idle_timeout;
            spawner.spawn_detached(async move {
                smol::Timer::after(idle_timeout).await;
                pool.expire(replica, Instant::now());
            });
        });
    }

    /// Runs a whole HTTP API request (`req`, already authorised here) on `replica`, which holds
    /// `agent_id`, and streams its answer back (views and event streams of agents held elsewhere).
    /// The holder authorises it again with the same users file.
    pub async fn forward_api(
        &self,
        state: &KasState,
        replica: ReplicaId,
        agent_id: u64,
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<ResponseBody>, ApiError> {
        let failed = |m: String| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("agent {agent_id} via {replica}: {m}"),
            )
        };
        let (mut parts, body) = req.into_parts();
        let control: Vec<_> = parts
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with(server::CONTROL_PREFIX))
            .cloned()
            .collect();
        for k in control {
            parts.headers.remove(k);
        }
        parts.headers.insert(server::SECRET, self.secret.header());
        parts
            .headers
            .insert(server::OP, HeaderValue::from_static("api"));
        parts
            .headers
            .insert(server::FROM, HeaderValue::from(self.replica.0));
        let request = http::Request::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as BodyError).boxed_unsync(),
        );
        let limit = self.find_timeout + state.routing.response_timeout;
        let resp = futures_lite::future::or(
            async { Some(self.send(state, replica, request).await) },
            async {
                smol::Timer::after(limit).await;
                None
            },
        )
        .await
        .ok_or_else(|| failed(format!("no answer within {limit:?}")))?
        .map_err(|e| failed(e.to_string()))?;
        if resp
            .headers()
            .get(server::PEER_ERROR)
            .is_some_and(|v| v == server::BAD_SECRET)
        {
            tracing::error!(%replica,
                "the other replica refused this replica's shared secret: the replicas must share one secret");
            return Err(failed(
                "refused this replica's shared secret (the replicas are configured with different secrets)".into(),
            ));
        }
        let (parts, body) = resp.into_parts();
        Ok(http::Response::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as BodyError).boxed_unsync(),
        ))
    }

    /// Sends `req` to `replica` and returns its answer.
    pub(super) async fn forward(
        &self,
        state: &Arc<KasState>,
        replica: ReplicaId,
        req: &mut super::Request<'_>,
        span: &tracing::Span,
    ) -> Outcome {
        let agent_id = req.user.agent_id;
        let bad_gateway = |m: String| {
            Outcome::Answered(Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("agent {agent_id} via {replica}: {m}"),
            )))
        };
        let left = req.deadline.saturating_duration_since(Instant::now());
        let mut builder = http::Request::builder()
            .method(req.head.method.as_str())
            .uri(req.head.path.as_str())
            .header(http::header::HOST, "kas-peer")
            .header(server::SECRET, self.secret.header())
            .header(server::AGENT, agent_id)
            .header(server::SERVICE, req.head.service.as_str())
            .header(server::USER, req.user.name.as_str())
            .header(server::USER_KIND, req.user.kind.as_str())
            .header(server::DEADLINE_MS, left.as_millis().to_string())
            .header(server::FROM, self.replica.0);
        if let Some(imp) = &req.head.impersonation {
            use base64::Engine as _;
            use prost::Message as _;
            builder = builder.header(
                server::IMPERSONATION,
                base64::engine::general_purpose::STANDARD.encode(imp.encode_to_vec()),
            );
        }
        for h in &req.head.headers {
            match (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(&h.value),
            ) {
                (Ok(n), Ok(v)) if !n.as_str().starts_with(server::CONTROL_PREFIX) => {
                    builder = builder.header(n, v);
                }
                _ => {}
            }
        }
        if req.upgrade.is_some() {
            // The holder upgrades too: its 101 hands this connection over to the session.
            builder = builder.header(http::header::CONNECTION, "Upgrade");
        }
        let body: ResponseBody = match req.body.take().filter(|_| req.has_body) {
            Some(b) => b.map_err(|e| Box::new(e) as BodyError).boxed_unsync(),
            None => crate::api::response::full(""),
        };
        let request = match builder.body(body) {
            Ok(r) => r,
            Err(e) => return bad_gateway(format!("request not representable: {e}")),
        };
        // The holder waits for a connection until the deadline, then for the head at most its
        // response timeout: this bounds the wait here (plus a margin for the hop).
        let limit = left + state.routing.response_timeout + Duration::from_secs(1);
        let answer = futures_lite::future::or(
            async { Some(self.send(state, replica, request).await) },
            async {
                smol::Timer::after(limit).await;
                None
            },
        )
        .await;
        let resp = match answer {
            None => {
                return Outcome::Answered(Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("agent {agent_id} via {replica}: no answer within {limit:?}"),
                )));
            }
            Some(Err(SendError::Connect(Unreachable(why)))) => {
                tracing::info!(parent: span, %replica, agent_id, error = %why, "holder unreachable");
                return Outcome::NotThere("unreachable");
            }
            Some(Err(e)) if retryable(req) => {
                // An idempotent request without a body (RFC 9110 §9.2.2) whose hop failed before
                // any answer: tried again on another holder, as an HTTP client retries it.
                tracing::info!(parent: span, %replica, agent_id, error = %e, "holder failed before answering; trying another");
                return Outcome::NotThere("failed");
            }
            Some(Err(e)) => {
                tracing::info!(parent: span, %replica, agent_id, error = %e, "holder failed mid-request");
                return bad_gateway(e.to_string());
            }
            Some(Ok(resp)) => resp,
        };
        if let Some(kind) = resp.headers().get(server::PEER_ERROR) {
            let kind = kind.to_str().unwrap_or("").to_owned();
            let status = resp.status();
            let message = error_message(resp.into_body()).await;
            return match kind.as_str() {
                server::NOT_HELD => Outcome::NotThere("not-held"),
                server::BAD_SECRET => {
                    tracing::error!(parent: span, %replica,
                        "the other replica refused this replica's shared secret: the replicas must share one secret");
                    bad_gateway(format!(
                        "{replica} refused this replica's shared secret (the replicas are configured with different secrets)"
                    ))
                }
                _ => Outcome::Answered(Err(ApiError::new(status, message))),
            };
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(upgrade) = req.upgrade.take() else {
                return bad_gateway("switched protocols (101) without an upgrade request".into());
            };
            return Outcome::Answered(Ok(crate::api::upgrade::switched_via_replica(
                state, resp, upgrade, span,
            )));
        }
        let (parts, body) = resp.into_parts();
        let rule = HeaderRule::for_head(
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes())),
        );
        let mut out =
            http::Response::new(body.map_err(|e| Box::new(e) as BodyError).boxed_unsync());
        *out.status_mut() = parts.status;
        for (n, v) in &parts.headers {
            if rule.forwards(n.as_str()) || n == http::header::CONTENT_LENGTH {
                out.headers_mut().append(n.clone(), v.clone());
            }
        }
        Outcome::Answered(Ok(out))
    }
}

/// Whether a request whose hop failed before any answer may be sent to another holder: an
/// idempotent method, no body, not an upgrade (RFC 9110 §9.2.2).
fn retryable(req: &super::Request<'_>) -> bool {
    !req.has_body
        && req.upgrade.is_none()
        && matches!(req.head.method.as_str(), "GET" | "HEAD" | "OPTIONS")
}

/// Why a request to a replica got no response.
enum SendError {
    /// No connection came up (nothing was sent).
    Connect(ConnectError),
    /// The connection failed after the request may have been sent.
    Failed(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(Unreachable(m) | Failed(m)) => f.write_str(m),
            SendError::Failed(e) => write!(f, "the replica holding the agent failed: {e}"),
        }
    }
}

/// Why no connection to a replica came up.
enum ConnectError {
    /// Not reached within the find timeout (nothing was sent).
    Unreachable(String),
    /// Reached, but the connection failed.
    Failed(String),
}
use ConnectError::{Failed, Unreachable};

/// The `message` of an error body the holder sent (bounded read).
async fn error_message(body: hyper::body::Incoming) -> String {
    let limited = http_body_util::Limited::new(body, 16 * 1024);
    let bytes = futures_lite::future::or(async { limited.collect().await.ok() }, async {
        smol::Timer::after(Duration::from_secs(2)).await;
        None
    })
    .await
    .map(|c| c.to_bytes())
    .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "the replica holding the agent failed".to_owned())
}
