//! The private kas-to-kas API: a request that reaches a replica without a usable connection of its
//! agent goes to a replica that holds one, and the answer streams back.
//!
//! **Why HTTP/1.1 (hyper) over TLS, not HTTP/2 or the tunnel protocol.** hyper is already kas's HTTP
//! server; its HTTP/1 client needs no new dependency and no tokio runtime (hyper's HTTP/2 goes through
//! `h2`, which needs tokio's I/O traits in kas's tree), and one TCP connection per request in flight
//! gets flow control both ways from TCP itself (a slow client slows only its own request);
//! connections are pooled and reused one request after another (`client.rs`). The tunnel
//! protocol would need a second kind of peer on the agent listener and the reverse direction (replica
//! to replica) that it was not built for. See docs/replicas.md.
//!
//! **What travels.** The gateway (the replica the client reached) authorises the user, builds the
//! tunnel request head as for a local request (the one header rule), and sends it as an HTTP request:
//! method and path-and-query of the head, its headers, the body streamed; control headers carry the
//! agent, the service, the user, the time left until the request's deadline (relative, so clocks need
//! not agree) and the shared secret (`Authorization: Bearer`, compared in constant time, never
//! logged). The holder checks the secret, refuses at once (`421`, `x-kas-peer-error: not-held`) if it
//! has no live connection of the agent, and otherwise runs the request through the same proxy code as
//! a local one, marked [`Forwarded`]: the policy never forwards it again (hops = 1: no loops), and it
//! waits at most until the deadline that came with it — and only while a live connection of the agent
//! is here: when the last one drains or closes first, the policy fails it `NotHeld` and the holder
//! refuses it as on arrival (`421 not-held`; `protocol::routing` rule 5a).
//!
//! **Which holder.** The routing policy (`protocol::routing::KasRouting`) decides, with the holders
//! read from Redis ([`crate::tracker`]) as its input ([`route`]). A holder that refuses (`not-held`)
//! or cannot be reached within the find timeout is left out and the policy asked again (a request
//! with a body only when nothing was sent yet). A holder that dies mid-request: `502` if no response
//! head came yet, else the response is cut short; never a hang (every wait is bounded).
//!
//! **Upgraded sessions** (`kubectl exec`, `port-forward`) travel the same way with
//! `Connection: Upgrade`; on the holder's `101` both replicas hand their connections over and the
//! bytes flow client ↔ gateway ↔ holder ↔ agent stream ([`crate::api::upgrade`]).
//!
//! **Events** of every replica reach every replica's hub through relay streams (`relay.rs`).

mod client;
mod relay;
mod server;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Response};
use hyper::body::Incoming;
use protocol::proto::RequestHead;
use protocol::routing::{ReplicaId, RequestFailure};

use crate::api::response::{ApiError, ResponseBody};
use crate::registry::{Lease, Routed};
use crate::state::KasState;
use crate::tracker::Tracker;
use crate::users::UserIdentity;

pub use client::{PeerClient, PoolLimits};
pub use server::{CONTROL_PREFIX, PeerServer, Secret};

/// Marks a request that came from another replica (a request extension): its deadline, and that it
/// is never forwarded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Waiting for a connection of the agent ends here.
    pub deadline: Instant,
    /// The replica that forwarded it.
    pub from: ReplicaId,
}

/// The access decision the forwarding replica made for a request (a request extension next to
/// [`Forwarded`]): the holder applies it as it is and does not decide again (the gateway saw the
/// client's credentials and headers; the holder only sees what the private API carries).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ForwardedAccess {
    /// Whom the request acts as (`None`: the agent itself).
    pub impersonation: Option<protocol::proto::Impersonation>,
}

/// Marks an HTTP API request another replica forwarded whole (a request extension): it is served
/// here, never forwarded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedApi;

/// The replica an HTTP API request about `agent_id` (its views or events) goes to: `None` when it is
/// served here (one kas; the agent has a live connection here; no other replica holds it; the
/// request was forwarded already). The holder is picked by `protocol::routing::Holders`, the
/// routing policy's own table, from the tracker's view of Redis.
pub fn api_holder(
    state: &KasState,
    agent_id: u64,
    req: &http::Request<Incoming>,
) -> Option<ReplicaId> {
    let r = state.replicas.as_ref()?;
    if req.extensions().get::<ForwardedApi>().is_some()
        || state.registry.has_live_connection(agent_id)
    {
        return None;
    }
    let entries = r.tracker.cluster().remove(&agent_id)?;
    let mut holders = protocol::routing::Holders::new();
    holders.set(agent_id, &crate::tracker::as_policy_holders(&entries));
    holders.pick(agent_id, Some(r.tracker.replica()), Instant::now())
}

/// The replicas part of a kas's state: the tracker and the client of the other replicas.
#[derive(Debug, Clone)]
pub struct Replicas {
    /// The tracker on Redis.
    pub tracker: Arc<Tracker>,
    /// The private API client.
    pub peers: Arc<PeerClient>,
}

/// Reads `agent_id`'s holders from Redis (bounded by the find timeout) and gives them, less `skip`,
/// to the routing policy. Redis down: the holders known before stay.
pub async fn refresh_holders(
    state: &KasState,
    tracker: &Arc<Tracker>,
    peers: &PeerClient,
    agent_id: u64,
) {
    refresh_holders_skipping(state, tracker, peers, agent_id, &BTreeSet::new()).await;
}

async fn refresh_holders_skipping(
    state: &KasState,
    tracker: &Arc<Tracker>,
    peers: &PeerClient,
    agent_id: u64,
    skip: &BTreeSet<ReplicaId>,
) {
    let t = tracker.clone();
    let Ok(entries) = smol::unblock(move || t.holders(agent_id)).await else {
        return;
    };
    peers.cache_holders(agent_id, &entries, Instant::now());
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| !skip.contains(&e.replica))
        .collect();
    peers.learn(&entries);
    state
        .registry
        .set_holders(agent_id, &crate::tracker::as_policy_holders(&entries));
}

/// Where [`route`] put a request.
pub enum Route {
    /// On a connection of this replica: the caller opens the stream.
    Here(Lease<runtime_smol::Connection>),
    /// Another replica answered it (or forwarding failed): the caller returns this.
    Answered(Result<Response<ResponseBody>, ApiError>),
}

/// Everything [`route`] needs about one proxied request.
pub struct Request<'a> {
    /// The authorised user (and the agent).
    pub user: &'a UserIdentity,
    /// The tunnel request head.
    pub head: &'a RequestHead,
    /// The client's method (for checking the answer).
    pub method: &'a Method,
    /// The request body, taken when the request is forwarded.
    pub body: &'a mut Option<Incoming>,
    /// Whether there is a body.
    pub has_body: bool,
    /// Waiting for a connection ends here.
    pub deadline: Instant,
    /// Set when the request came from another replica.
    pub forwarded: Option<Forwarded>,
    /// The client's upgrade (`kubectl exec`, `port-forward`), if it asks for one. Forwarded, the
    /// request asks the holder to upgrade too; on its `101` this is taken and the session carried
    /// between the client and the holder ([`crate::api::upgrade::switched_via_replica`]).
    pub upgrade: &'a mut Option<crate::api::upgrade::ClientUpgrade>,
}

/// Routes a proxied request: the routing policy decides between a connection here and a replica
/// holding one (from the tracker's holders); a forwarded request is sent there and its answer
/// returned. A single kas (no `replicas` configured) never forwards. `moved`: the policy already
/// chose that replica (a request the agent never processed here, refused or not opened, moved there:
/// [`crate::registry::Lease::refused`]); it is sent there first.
pub async fn route(
    state: &Arc<KasState>,
    mut req: Request<'_>,
    mut moved: Option<ReplicaId>,
    span: &tracing::Span,
) -> Result<Route, RequestFailure> {
    let agent_id = req.user.agent_id;
    // A request another replica forwarded is never forwarded again (the policy's `max_hops`).
    let hops = u8::from(req.forwarded.is_some());
    let mut skip = BTreeSet::new();
    // Bounded: each round leaves one more replica out, and there are finitely many.
    loop {
        let replica = match moved.take() {
            Some(replica) => replica,
            None => match route_here_or_holder(state, &req, hops, &skip).await? {
                Routed::Here(lease) => return Ok(Route::Here(lease)),
                Routed::Forward(replica) => replica,
            },
        };
        let Some(r) = &state.replicas else {
            // Holders only come from the tracker: cannot happen.
            return Err(RequestFailure::NotConnected {
                waited: Duration::ZERO,
            });
        };
        match r.peers.forward(state, replica, &mut req, span).await {
            client::Outcome::Answered(result) => return Ok(Route::Answered(result)),
            client::Outcome::NotThere(why) => {
                tracing::debug!(parent: span, %replica, why, "holder skipped");
                skip.insert(replica);
                state.registry.set_holders(agent_id, &[]);
                r.peers.cache_holders(agent_id, &[], Instant::now());
                if req.body.is_none() && req.has_body {
                    // The body went to the holder that refused it: nothing to send again.
                    return Ok(Route::Answered(Err(ApiError::new(
                        http::StatusCode::BAD_GATEWAY,
                        format!(
                            "agent {agent_id}: {replica} no longer holds the agent and the request body was already sent; retry"
                        ),
                    ))));
                }
            }
        }
    }
}

/// One round of [`route`]: reads the agent's holders (cached for a moment, or from Redis without the
/// replicas in `skip`) when no connection here is live, and asks the policy.
async fn route_here_or_holder(
    state: &Arc<KasState>,
    req: &Request<'_>,
    hops: u8,
    skip: &BTreeSet<ReplicaId>,
) -> Result<Routed<runtime_smol::Connection>, RequestFailure> {
    let agent_id = req.user.agent_id;
    if let (Some(r), None) = (&state.replicas, req.forwarded)
        && !state.registry.has_live_connection(agent_id)
    {
        // The holders read for an earlier request serve for a moment (not after one of them
        // failed this request: then Redis is read again).
        match r
            .peers
            .cached_holders(agent_id, Instant::now())
            .filter(|_| skip.is_empty())
        {
            Some(entries) => state
                .registry
                .set_holders(agent_id, &crate::tracker::as_policy_holders(&entries)),
            None => {
                refresh_holders_skipping(state, &r.tracker, &r.peers, agent_id, skip).await;
            }
        }
    }
    state
        .registry
        .route_or_forward(agent_id, req.deadline, !req.has_body, hops)
        .await
}

/// Why the replicas part of kas could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The private API's address could not be bound.
    #[error("cannot listen for the private API on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The private API's certificate, key or CA is unusable.
    #[error("private API TLS: {0}")]
    Tls(#[from] tunnel_tls::TlsError),
    /// The shared secret is unusable.
    #[error(transparent)]
    Secret(#[from] server::SecretError),
    /// The Redis URL is unusable.
    #[error(transparent)]
    Redis(#[from] crate::tracker::TrackerError),
}

/// Binds the private API and builds the tracker and the client for a kas configured with `replicas`.
pub fn setup(
    config: &crate::config::Config,
    replicas: &crate::config::ReplicasConfig,
) -> Result<(Replicas, PeerServer), SetupError> {
    let addr = replicas.private_address;
    let socket = crate::listener::bind(addr, config.api_listener.backlog)
        .map_err(|source| SetupError::Listen { addr, source })?;
    let bound = socket
        .local_addr()
        .map_err(|source| SetupError::Listen { addr, source })?;
    let listener = smol::net::TcpListener::try_from(socket)
        .map_err(|source| SetupError::Listen { addr, source })?;
    let files = replicas.tls.as_ref().unwrap_or(&config.agent_listener.tls);
    let server_tls = tunnel_tls::server_config(&files.cert_file, &files.key_file, None)?;
    let client_tls =
        tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(replicas.ca_file.clone()), None)?;
    let secret = Secret::from_file(&replicas.shared_secret_file)?;
    let url = format!("https://{}:{}", replicas.advertise_host, bound.port());
    let tracker = Arc::new(Tracker::new(replicas, url)?);
    let peers = Arc::new(PeerClient::new(
        ReplicaId(replicas.replica_id),
        secret.clone(),
        client_tls,
        tunnel_tls::server_name(&replicas.server_name)?,
        replicas.find_timeout,
    ));
    tracing::info!(replica = %tracker.replica(), private_api = %tracker.url(), "replica of several (redis tracker)");
    Ok((
        Replicas { tracker, peers },
        PeerServer::new(listener, server_tls, secret),
    ))
}

impl Replicas {
    /// Prometheus text: `kas_redis_up`, `kas_redis_errors_total`, `kas_replica_connections` per
    /// live replica (as read from Redis at the last refresh).
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP kas_redis_up Whether the last call to Redis (the replicas' tracker) succeeded.\n# TYPE kas_redis_up gauge\nkas_redis_up {}",
            u8::from(self.tracker.is_up())
        );
        let _ = writeln!(
            s,
            "# HELP kas_redis_errors_total Failed calls to Redis since start.\n# TYPE kas_redis_errors_total counter\nkas_redis_errors_total {}",
            self.tracker.errors()
        );
        let _ = writeln!(
            s,
            "# HELP kas_replica_connections Agent connections each live replica published.\n# TYPE kas_replica_connections gauge"
        );
        for (replica, load) in self.tracker.replica_loads() {
            let _ = writeln!(
                s,
                "kas_replica_connections{{replica=\"{}\"}} {load}",
                replica.0
            );
        }
        s.push_str(&self.peers.render_metrics());
        s
    }
}
