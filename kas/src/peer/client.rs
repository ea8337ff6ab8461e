//! The gateway side of the private API: sends a request to the replica holding the agent and streams
//! the answer back.

use std::collections::BTreeMap;
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

/// The client of the other replicas' private APIs.
pub struct PeerClient {
    replica: ReplicaId,
    secret: Secret,
    tls: futures_rustls::TlsConnector,
    server_name: futures_rustls::pki_types::ServerName<'static>,
    find_timeout: Duration,
    urls: Mutex<BTreeMap<ReplicaId, String>>,
}

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
            tls: futures_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            find_timeout,
            urls: Mutex::new(BTreeMap::new()),
        }
    }

    /// Remembers the private API URLs of these replicas.
    pub fn learn(&self, entries: &[Entry]) {
        let mut urls = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            urls.insert(e.replica, e.url.clone());
        }
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
            self.tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS with {replica} at {authority}: {e}"))
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

    /// An HTTP/1 connection to `replica`'s private API (its driver runs on kas's executor).
    async fn connect(
        &self,
        state: &KasState,
        replica: ReplicaId,
    ) -> Result<hyper::client::conn::http1::SendRequest<ResponseBody>, ConnectError> {
        let io = self.dial(replica).await.map_err(Unreachable)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(smol_hyper::rt::FuturesIo::new(io))
                .await
                .map_err(|e| Failed(format!("HTTP handshake failed: {e}")))?;
        state.spawner.spawn_detached(async move {
            let _ = conn.await;
        });
        Ok(sender)
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
        let mut sender = self.connect(state, replica).await.map_err(|e| match e {
            Unreachable(m) | Failed(m) => failed(m),
        })?;
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
        let resp =
            futures_lite::future::or(async { Some(sender.send_request(request).await) }, async {
                smol::Timer::after(limit).await;
                None
            })
            .await
            .ok_or_else(|| failed(format!("no answer within {limit:?}")))?
            .map_err(|e| failed(format!("the replica holding the agent failed: {e}")))?;
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
        let mut sender = match self.connect(state, replica).await {
            Ok(s) => s,
            Err(Unreachable(why)) => {
                tracing::info!(parent: span, %replica, agent_id, error = %why, "holder unreachable");
                return Outcome::NotThere("unreachable");
            }
            Err(Failed(why)) => return bad_gateway(why),
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
        let answer =
            futures_lite::future::or(async { Some(sender.send_request(request).await) }, async {
                smol::Timer::after(limit).await;
                None
            })
            .await;
        let resp = match answer {
            None => {
                return Outcome::Answered(Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("agent {agent_id} via {replica}: no answer within {limit:?}"),
                )));
            }
            Some(Err(e)) => {
                tracing::info!(parent: span, %replica, agent_id, error = %e, "holder failed mid-request");
                return bad_gateway(format!("the replica holding the agent failed: {e}"));
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
