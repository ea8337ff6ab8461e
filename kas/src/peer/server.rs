//! The holder side of the private API: its own TLS listener; every request must carry the shared
//! secret; a request for an agent this replica holds runs through the same proxy code as a local one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use protocol::routing::ReplicaId;
use subtle::ConstantTimeEq as _;

use crate::api::proxy::Target;
use crate::api::response::{ErrorStyle, ResponseBody};
use crate::state::KasState;
use crate::users::{TokenKind, UserIdentity};

use super::Forwarded;

/// ALPN of the private API (an agent or HTTP client dialling it by mistake fails the handshake).
pub const ALPN: &[u8] = b"kas-peer/1";
/// Every control header starts with this; the client's own such headers are never forwarded.
pub const CONTROL_PREFIX: &str = "x-kas-";
/// The shared secret.
pub const SECRET: &str = "x-kas-peer-secret";
/// `api`: an HTTP API request run as a whole by the holder (views, events of the agents it holds);
/// absent: a tunnel request.
pub const OP: &str = "x-kas-op";
/// The agent.
pub const AGENT: &str = "x-kas-agent-id";
/// The tunnel service.
pub const SERVICE: &str = "x-kas-service";
/// The authorised user's name.
pub const USER: &str = "x-kas-user";
/// Their token kind.
pub const USER_KIND: &str = "x-kas-user-kind";
/// The gateway's access decision: the request's `Impersonation`, protobuf then base64 (absent: the
/// agent itself).
pub const IMPERSONATION: &str = "x-kas-impersonation";
/// Milliseconds left until the request's deadline.
pub const DEADLINE_MS: &str = "x-kas-deadline-ms";
/// The forwarding replica.
pub const FROM: &str = "x-kas-from";
/// Set on the holder's own errors: [`NOT_HELD`], [`BAD_SECRET`], `bad-request`, `failed`.
pub const PEER_ERROR: &str = "x-kas-peer-error";
/// The holder has no live connection of the agent.
pub const NOT_HELD: &str = "not-held";
/// The shared secret did not match.
pub const BAD_SECRET: &str = "bad-secret";

/// The secret the replicas share. Never logged (its `Debug` is redacted).
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a shared secret file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// It cannot be read.
    #[error("replicas shared secret {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It is too short or not printable.
    #[error("replicas shared secret {path}: must be at least 16 printable ASCII characters")]
    Weak {
        /// The file.
        path: String,
    },
}

impl Secret {
    /// Reads the secret (surrounding whitespace trimmed) from `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Secret, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let s = text.trim();
        if s.len() < 16 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::Weak {
                path: path.display().to_string(),
            });
        }
        Ok(Secret(s.into()))
    }

    /// The header value.
    pub(super) fn header(&self) -> http::HeaderValue {
        let mut v =
            http::HeaderValue::from_str(&self.0).unwrap_or(http::HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }

    /// Whether a header value is this secret (constant time in the secret's bytes).
    pub fn matches(&self, given: Option<&[u8]>) -> bool {
        given.is_some_and(|g| bool::from(g.ct_eq(self.0.as_bytes())))
    }
}

/// The private API's listener.
pub struct PeerServer {
    listener: smol::net::TcpListener,
    acceptor: futures_rustls::TlsAcceptor,
    secret: Secret,
}

impl std::fmt::Debug for PeerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerServer").finish_non_exhaustive()
    }
}

/// How long a peer may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl PeerServer {
    /// Serves on `listener` with the TLS `config` (ALPN set here), accepting `secret`.
    pub fn new(
        listener: smol::net::TcpListener,
        config: Arc<futures_rustls::rustls::ServerConfig>,
        secret: Secret,
    ) -> PeerServer {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![ALPN.to_vec()];
        PeerServer {
            listener,
            acceptor: futures_rustls::TlsAcceptor::from(Arc::new(config)),
            secret,
        }
    }

    /// Accepts connections until `stop` closes; runs the event relays (`relay.rs`) too.
    pub async fn run(self, state: Arc<KasState>, stop: async_channel::Receiver<()>) {
        state
            .spawner
            .spawn_detached(super::relay::run(state.clone(), stop.clone()));
        // Bounded by `stop`: every iteration accepts one connection or ends.
        loop {
            let next =
                futures_lite::future::or(async { Some(self.listener.accept().await) }, async {
                    let _ = stop.recv().await;
                    None
                })
                .await;
            let (tcp, peer) = match next {
                None => break,
                Some(Ok(x)) => x,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "private API accept failed");
                    smol::Timer::after(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (state2, acceptor, secret) =
                (state.clone(), self.acceptor.clone(), self.secret.clone());
            state.spawner.spawn_detached(async move {
                let tls = futures_lite::future::or(async { Some(acceptor.accept(tcp).await) }, async {
                    smol::Timer::after(HANDSHAKE_TIMEOUT).await;
                    None
                })
                .await;
                let io = match tls {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        tracing::info!(%peer, error = %e, "private API TLS handshake failed");
                        return;
                    }
                    None => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    let (state, secret) = (state2.clone(), secret.clone());
                    async move { Ok::<_, Infallible>(handle(state, secret, req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(crate::api::lazy_timer::LazyTimer::default())
                    .serve_connection(crate::api::http_io::HttpIo::new(io), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "private API connection ended with an error");
                }
            });
        }
    }
}

fn refuse(status: StatusCode, kind: &'static str, message: String) -> Response<ResponseBody> {
    let mut resp =
        crate::api::response::ApiError::new(status, message).into_response(ErrorStyle::Plain);
    resp.headers_mut()
        .insert(PEER_ERROR, http::HeaderValue::from_static(kind));
    resp
}

fn strip_control(headers: &mut http::HeaderMap) {
    let control: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(CONTROL_PREFIX))
        .cloned()
        .collect();
    for k in control {
        headers.remove(k);
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    state: Arc<KasState>,
    secret: Secret,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    if !secret.matches(req.headers().get(SECRET).map(|v| v.as_bytes())) {
        tracing::warn!(%peer, "private API request with a wrong or missing shared secret refused");
        return refuse(
            StatusCode::UNAUTHORIZED,
            BAD_SECRET,
            "the shared secret does not match this replica's".into(),
        );
    }
    if header(&req, OP) == Some("events") {
        let from = header(&req, FROM)
            .unwrap_or("?")
            .chars()
            .take(16)
            .collect::<String>();
        return super::relay::serve(&state, &from);
    }
    if header(&req, OP) == Some("api") {
        strip_control(req.headers_mut());
        req.extensions_mut().insert(super::ForwardedApi);
        return crate::api::handle(state, req, peer).await;
    }
    let parsed = (|| {
        let agent_id: u64 = header(&req, AGENT)?.parse().ok()?;
        let service = match header(&req, SERVICE)? {
            protocol::service::K8S_API => protocol::service::K8S_API,
            protocol::service::SERVICE_PROXY => protocol::service::SERVICE_PROXY,
            protocol::service::CACHE => protocol::service::CACHE,
            _ => return None,
        };
        let name = header(&req, USER)?.to_owned();
        let kind: TokenKind = header(&req, USER_KIND)?.parse().ok()?;
        let left: u64 = header(&req, DEADLINE_MS)?.parse().ok()?;
        let from: u32 = header(&req, FROM)?.parse().ok()?;
        let impersonation = match header(&req, IMPERSONATION) {
            None => None,
            Some(v) => {
                use base64::Engine as _;
                use prost::Message as _;
                let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
                Some(protocol::proto::Impersonation::decode(bytes.as_slice()).ok()?)
            }
        };
        Some((
            agent_id,
            service,
            UserIdentity {
                name,
                kind,
                agent_id,
                // The gateway decided access ([`super::ForwardedAccess`]); this is not consulted.
                principal: crate::users::Principal::Operator,
            },
            left,
            from,
            impersonation,
        ))
    })();
    let Some((agent_id, service, user, left, from, impersonation)) = parsed else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "a private API request needs the x-kas-* control headers".into(),
        );
    };
    if !state.registry.has_live_connection(agent_id) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            NOT_HELD,
            format!("this replica holds no live connection of agent {agent_id}"),
        );
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let headers = req.headers_mut();
    headers.remove(http::header::AUTHORIZATION);
    strip_control(headers);
    req.extensions_mut().insert(Forwarded {
        deadline: Instant::now() + Duration::from_millis(left.min(3_600_000)),
        from: ReplicaId(from),
    });
    req.extensions_mut()
        .insert(super::ForwardedAccess { impersonation });
    let span = tracing::info_span!(
        "forwarded",
        agent_id,
        from,
        connection_id = tracing::field::Empty,
        stream = tracing::field::Empty
    );
    let target = Target {
        service,
        method: None,
        path,
        agent_in_url: None,
    };
    match crate::api::proxy::proxy(&state, req, user, target, &span, None).await {
        Ok(resp) => resp,
        Err(e) => {
            let status = e.status;
            // 421 is the policy's `NotHeld` (rule 5a): the live connection this replica had when
            // the request arrived drained or closed before it could be placed; the gateway asks
            // again, leaving this replica out, as for a refusal on arrival.
            let kind = if status == StatusCode::MISDIRECTED_REQUEST {
                NOT_HELD
            } else {
                "failed"
            };
            let mut resp = e.into_response(ErrorStyle::Plain);
            resp.headers_mut()
                .insert(PEER_ERROR, http::HeaderValue::from_static(kind));
            *resp.status_mut() = status;
            resp
        }
    }
}
