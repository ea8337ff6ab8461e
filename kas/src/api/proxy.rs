//! Proxying an HTTP request through an agent's tunnel: `/k8s-proxy/...` (service `k8s-api`) and
//! `/api/v1/agents/{id}/proxy/...` (service `service-proxy`).
//!
//! 1. authorise the user (401/403, 429 when rate limited), then check the agent exists (404);
//! 2. route: a connection of the agent now, or wait for one until the routing deadline (503);
//! 3. open a stream with the request head (method, path and query, headers filtered by
//!    [`protocol::service::is_forwarded`]); the request body, if any, is pumped by its own task;
//! 4. wait for the response head at most the response timeout (504), then stream the body back
//!    unbuffered ([`TunnelBody`]).
//!
//! A request the agent provably never saw — the stream could not be opened (the connection is draining
//! or already gone), or the agent refused it — is rerouted to another connection of the same agent,
//! keeping the request's deadline; a refused stream only for requests without a body, which is not
//! replayable. Any other agent-side failure is 502.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use protocol::proto::{Header, RequestHead, ResponseHead};
use protocol::router::RouteError;
use protocol::service::is_forwarded;
use protocol::{ErrorCode, StreamError};
use runtime_smol::Error as TunnelError;

use crate::agent_listener;
use crate::registry::RouteFailure;
use crate::state::KasState;

use super::response::{ApiError, ResponseBody};
use super::tunnel_body::{TunnelBody, pump_request_body};

/// Most times one request is moved to another connection before giving up.
const MAX_ATTEMPTS: usize = 4;

/// Where a proxied request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The tunnel service (`k8s-api`, `service-proxy` or `cache`).
    pub service: &'static str,
    /// The method sent to the agent; `None`: the client's HTTP method (`cache` uses `LIST`).
    pub method: Option<&'static str>,
    /// The path and query sent to the agent.
    pub path: String,
    /// The agent named by the URL (service proxy); `None`: the bearer's agent (k8s-proxy).
    pub agent_in_url: Option<u64>,
}

/// The request head for the agent.
fn request_head(req: &Request<Incoming>, target: &Target) -> RequestHead {
    let headers = req
        .headers()
        .iter()
        .filter(|(name, _)| is_forwarded(name.as_str()))
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect();
    RequestHead {
        service: target.service.to_owned(),
        method: target
            .method
            .map_or_else(|| req.method().as_str().to_owned(), str::to_owned),
        path: target.path.clone(),
        headers,
        timeout_ms: 0,
    }
}

fn route_failure(e: RouteFailure) -> ApiError {
    let status = match &e {
        RouteFailure::Route(RouteError::ConnectionLost { .. }) => StatusCode::BAD_GATEWAY,
        RouteFailure::Route(RouteError::DuplicateRequest) => StatusCode::INTERNAL_SERVER_ERROR,
        RouteFailure::Route(_) | RouteFailure::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

fn tunnel_failure(agent_id: u64, e: &TunnelError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("request to agent {agent_id} failed: {e}"),
    )
}

/// Whether the agent provably did not process a stream that failed this way.
fn never_processed(e: &TunnelError) -> bool {
    e.is_going_away()
        || matches!(
            e,
            TunnelError::StreamReset {
                code: ErrorCode::RefusedStream,
                ..
            }
        )
}

/// The client's response from the agent's response head.
fn response_from(
    head: &ResponseHead,
    body: ResponseBody,
) -> Result<Response<ResponseBody>, String> {
    let status = u16::try_from(head.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("agent answered an invalid status {}", head.status))?;
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    for h in &head.headers {
        if !is_forwarded(&h.name) {
            continue;
        }
        match (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(&h.value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::debug!(name = %h.name, "dropping an invalid response header"),
        }
    }
    Ok(resp)
}

/// Proxies `req` from `peer` through the tunnel as `target` says. Every failure is an [`ApiError`]
/// ready to be written in the route's style.
pub async fn proxy(
    state: &Arc<KasState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    target: Target,
    span: &tracing::Span,
) -> Result<Response<ResponseBody>, ApiError> {
    let arrived = Instant::now();
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let user = state
        .users
        .authorize(authorization, target.agent_in_url, peer.ip())?;
    let agent_id = user.agent_id;
    span.record("agent_id", agent_id);
    span.record("user", user.name.as_str());
    if !state
        .directory
        .is_known(agent_id, state.registry.is_seen(agent_id))
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("agent {agent_id} does not exist"),
        ));
    }

    let head = request_head(&req, &target);
    let has_body = !req.body().is_end_stream();
    let mut body = Some(req.into_body());
    let deadline = arrived + state.routing.pending_request_deadline;
    let mut lease = state
        .registry
        .route(agent_id, deadline)
        .await
        .map_err(route_failure)?;

    for attempt in 1..=MAX_ATTEMPTS {
        let last = attempt == MAX_ATTEMPTS;
        let connection_id =
            agent_listener::connection_id(&state.instance, lease.connection_serial());
        span.record("connection_id", connection_id.as_str());
        let stream = match lease.connection().open(head.clone(), !has_body) {
            Ok(s) => Arc::new(s),
            Err(TunnelError::Protocol(StreamError::LimitReached { limit })) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("agent {agent_id} has no stream capacity left ({limit} in use)"),
                ));
            }
            // Nothing was sent: the connection is going away or gone. Another one may take it.
            Err(e) if !last => {
                tracing::debug!(parent: span, error = %e, "connection unusable: rerouting");
                lease = lease.reroute(true).await.map_err(route_failure)?;
                continue;
            }
            Err(e) => return Err(tunnel_failure(agent_id, &e)),
        };
        span.record("stream", stream.id().0);
        tracing::debug!(parent: span, service = target.service, path = %target.path, "stream opened");
        if let Some(body) = body.take().filter(|_| has_body) {
            state.spawner.spawn_detached(pump_request_body(
                body,
                stream.clone(),
                state.metrics.clone(),
                span.clone(),
            ));
        }
        let response = futures_lite::future::or(async { Some(stream.response().await) }, async {
            smol::Timer::after(state.routing.response_timeout).await;
            None
        })
        .await;
        match response {
            None => {
                stream.reset(ErrorCode::Cancel);
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "agent {agent_id} did not answer within {}",
                        crate::config::format_duration(state.routing.response_timeout)
                    ),
                ));
            }
            Some(Err(e)) if never_processed(&e) && !has_body && !last => {
                tracing::debug!(parent: span, error = %e, "stream refused: rerouting");
                let draining = lease.connection().is_draining();
                drop(stream);
                lease = lease.reroute(draining).await.map_err(route_failure)?;
                continue;
            }
            Some(Err(e)) => return Err(tunnel_failure(agent_id, &e)),
            Some(Ok(head)) => {
                let length = head
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(&h.value).ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let body = TunnelBody::new(stream, lease, state.metrics.clone(), span.clone())
                    .with_content_length(length);
                return response_from(&head, body.boxed_unsync()).map_err(|m| {
                    ApiError::new(StatusCode::BAD_GATEWAY, format!("agent {agent_id}: {m}"))
                });
            }
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("agent {agent_id}: no connection could take the request"),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn invalid_statuses_and_headers_are_handled() {
        let head = ResponseHead {
            status: 200,
            headers: vec![
                Header {
                    name: "content-type".into(),
                    value: bytes::Bytes::from_static(b"application/json"),
                },
                Header {
                    name: "transfer-encoding".into(),
                    value: bytes::Bytes::from_static(b"chunked"),
                },
                Header {
                    name: "bad name".into(),
                    value: bytes::Bytes::from_static(b"x"),
                },
                Header {
                    name: "x-multi".into(),
                    value: bytes::Bytes::from_static(b"1"),
                },
                Header {
                    name: "x-multi".into(),
                    value: bytes::Bytes::from_static(b"2"),
                },
            ],
        };
        let resp = response_from(&head, super::super::response::full("")).unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert!(resp.headers().get("transfer-encoding").is_none());
        assert_eq!(resp.headers().get_all("x-multi").iter().count(), 2);
        assert_eq!(resp.headers().len(), 3);
        let bad = ResponseHead {
            status: 7,
            headers: vec![],
        };
        assert!(response_from(&bad, super::super::response::full("")).is_err());
    }

    #[test]
    fn route_failures_map_to_statuses() {
        let s = |e: RouteFailure| route_failure(e).status.as_u16();
        assert_eq!(
            s(RouteFailure::Route(RouteError::AgentNotConnected {
                agent_id: 1,
                waited: std::time::Duration::ZERO
            })),
            503
        );
        assert_eq!(
            s(RouteFailure::Route(RouteError::TooManyPending {
                agent_id: 1
            })),
            503
        );
        assert_eq!(
            s(RouteFailure::Route(RouteError::ConnectionLost {
                agent_id: 1
            })),
            502
        );
        assert_eq!(s(RouteFailure::ShuttingDown), 503);
    }
}
