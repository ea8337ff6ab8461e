//! Proxying an HTTP request through an agent's tunnel: `/k8s-proxy/...` (service `k8s-api`) and
//! `/api/v1/agents/{id}/proxy/...` (service `service-proxy`).
//!
//! 1. the user was authorised by the route's access ([`super::authorize`]: 401/403, 429 when rate
//!    limited), and the request by the agent's access grants ([`crate::access::authorise`]: 403; the
//!    identity it decides goes in the head's `impersonation`); check the agent exists (404);
//! 2. route: a connection of the agent now, or wait for one until the routing deadline (503);
//! 3. open a stream with the request head (method, path and query, headers filtered by the one
//!    forwarding rule, [`protocol::service::HeaderRule`]: no credentials, impersonation, identity
//!    assertions or hop-by-hop headers); the request body, if any, is pumped by its own task. A head
//!    larger than the agent accepts is the client's problem: 431, and nothing else changes;
//! 4. wait for the response head at most the response timeout (504), check it ([`check_head`]: a
//!    final status in 200..=599, a consistent `Content-Length`; else 502), then stream the body back
//!    unbuffered ([`TunnelBody`]), which fails the response (the client sees it cut short) if the body
//!    does not match its `Content-Length`.
//!
//! Whether the agent exists, where the request goes and what happens to a request the agent provably
//! never saw (the stream could not be opened, or the agent refused it) is decided by the routing
//! policy, [`protocol::routing::KasRouting`], through the registry's [`crate::registry::Lease`]: this
//! module only reports what the tunnel said ([`open_failure`], [`unprocessed`]) and follows the answer:
//! a connection here again, or the replica holding the agent ([`crate::peer::route`]), also when the
//! connection closed before the refusal was reported. Any other agent-side failure is 502.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use protocol::proto::{RequestHead, ResponseHead};
use protocol::routing::{OpenFailure, ReplicaId, RequestFailure};
use protocol::service::HeaderRule;
use protocol::{ErrorCode, OpenError};
use runtime_smol::Error as TunnelError;

use crate::agent_listener;
use crate::registry::{Lease, Routed};
use crate::state::KasState;
use crate::users::UserIdentity;

use super::response::{ApiError, ResponseBody};
use super::tunnel_body::{TunnelBody, pump_request_body};

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

/// The request head for the agent: the client's headers as the forwarding rule allows.
/// For an upgrade ([`super::upgrade`]) the rule also lets `Upgrade` through. The target's path
/// moves into the head.
fn request_head(req: &Request<Incoming>, target: &mut Target, upgrade: bool) -> RequestHead {
    let rule = super::upgrade::request_rule(req, upgrade);
    let headers = protocol::service::pack_headers(
        || {
            req.headers()
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
        },
        |name| rule.forwards(name),
    );
    RequestHead {
        service: target.service.to_owned(),
        method: target
            .method
            .map_or_else(|| req.method().as_str().to_owned(), str::to_owned),
        path: std::mem::take(&mut target.path),
        headers,
        timeout_ms: 0,
        impersonation: None,
    }
}

/// Most times one request moves to another replica after the agent did not process it here.
const MAX_MOVES: u32 = 4;

/// The client's answer for a request the policy failed (statuses: [`RequestFailure::http_status`]).
fn route_failure(agent_id: u64, e: &RequestFailure) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let message = match e {
        RequestFailure::UnknownAgent => format!("agent {agent_id} does not exist"),
        e => format!("agent {agent_id}: {e}"),
    };
    ApiError::new(status, message)
}

fn tunnel_failure(agent_id: u64, e: &TunnelError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("request to agent {agent_id} failed: {e}"),
    )
}

/// What a failed open means for the routing policy: nothing reached the wire, and why. `None`: any
/// other failure (502).
fn open_failure(e: &TunnelError) -> Option<OpenFailure> {
    match e {
        _ if e.is_going_away() => Some(OpenFailure::GoingAway),
        TunnelError::Open(OpenError::LimitReached { limit }) => {
            Some(OpenFailure::LimitReached { limit: *limit })
        }
        TunnelError::Open(OpenError::IdsExhausted) => Some(OpenFailure::IdsExhausted),
        TunnelError::Open(OpenError::HeadTooLarge { len, max }) => {
            Some(OpenFailure::HeadTooLarge {
                len: *len,
                max: *max,
            })
        }
        TunnelError::Closed(_) | TunnelError::TransportClosed => Some(OpenFailure::Closed),
        _ => None,
    }
}

/// Whether the agent provably did not process a stream that failed this way before its response
/// head: refused, or above the last stream id of the agent's GOAWAY.
fn unprocessed(e: &TunnelError) -> bool {
    e.is_going_away()
        || matches!(
            e,
            TunnelError::StreamReset {
                code: ErrorCode::RefusedStream,
                ..
            }
        )
}

/// What a valid response head says about the body that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CheckedHead {
    status: StatusCode,
    /// The body length the head declares, when the body must have exactly that length.
    length: Option<u64>,
}

/// Checks the agent's response head for a request with `method`: the status must be a final one
/// (200..=599: the tunnel's RESPONSE is the final response; kas never asks for an upgrade, so 101 is
/// as wrong as any other 1xx), and every `Content-Length` must agree (RFC 9110 §8.6). A body follows
/// (and must match the length) except for HEAD requests and 204/304 answers.
fn check_head(head: &ResponseHead, method: &Method) -> Result<CheckedHead, String> {
    let status = match head.status {
        101 => return Err("agent switched protocols (101) without an upgrade request".into()),
        s @ 100..=199 => {
            return Err(format!(
                "agent answered the informational status {s} as its final response"
            ));
        }
        s @ 200..=599 => u16::try_from(s)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| format!("agent answered an invalid status {s}"))?,
        s => return Err(format!("agent answered an invalid status {s}")),
    };
    let mut length: Option<u64> = None;
    for h in head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        // A list of identical values is allowed; anything else is not a length.
        for part in h.value.split(|b| *b == b',') {
            let n = std::str::from_utf8(part)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("agent answered an invalid content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("agent answered conflicting content-length values".into());
            }
            length = Some(n);
        }
    }
    let has_body = method != Method::HEAD
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED;
    Ok(CheckedHead {
        status,
        length: length.filter(|_| has_body),
    })
}

/// The client's response from the agent's (checked) response head. The header values are the
/// head's own octets (shared, not copied).
fn response_from(
    head: ResponseHead,
    checked: CheckedHead,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = checked.status;
    let rule = HeaderRule::for_head(
        head.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_ref())),
    );
    let headers = resp.headers_mut();
    for h in head.headers {
        if !rule.forwards(&h.name) {
            continue;
        }
        match (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_maybe_shared(h.value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::debug!(name = %h.name, "dropping an invalid response header"),
        }
    }
    resp
}

/// Proxies `req`, authorised for `user`, through the tunnel as `target` says. Every failure is an
/// [`ApiError`] ready to be written in the route's style.
pub async fn proxy(
    state: &Arc<KasState>,
    mut req: Request<Incoming>,
    user: UserIdentity,
    mut target: Target,
    span: &tracing::Span,
    sleep: Option<super::lazy_timer::ConnectionSleep>,
) -> Result<Response<ResponseBody>, ApiError> {
    let arrived = Instant::now();
    let agent_id = user.agent_id;

    // Upgrades (exec, attach, port-forward) only on the Kubernetes API.
    let mut upgrade = if target.service == protocol::service::K8S_API {
        super::upgrade::take(state, &mut req, agent_id)?
    } else {
        None
    };
    let method = req.method().clone();
    // Access control: who asked and as whom the request acts (403 when no grant covers it). A
    // request another replica forwarded carries that replica's decision.
    let mut head = request_head(&req, &mut target, upgrade.is_some());
    head.impersonation = match req.extensions().get::<crate::peer::ForwardedAccess>() {
        Some(access) => access.impersonation.clone(),
        None => {
            let decided =
                crate::access::authorise(state, &user, req.headers(), target.service, span).await?;
            if let Some(audit) = req.extensions().get::<crate::audit::AuditContext>() {
                let _ = audit.acted_as.set(decided.acted_as());
            }
            decided.impersonation()
        }
    };
    let has_body = !req.body().is_end_stream();
    // An upgrade keeps kas's direction open for the bytes after the 101.
    let end_stream = !has_body && upgrade.is_none();
    // A request another replica forwarded keeps its deadline and is never forwarded again.
    let forwarded = req.extensions().get::<crate::peer::Forwarded>().copied();
    // The connection's reusable response timer (none on requests another replica forwarded).
    let sleep = sleep.unwrap_or_default();
    let mut body = Some(req.into_body());
    let deadline = forwarded.map_or(arrived + state.routing.pending_request_deadline, |f| {
        f.deadline
    });
    // The policy rejects unknown agents (404) and bounds the attempts: the loop ends.
    let failed = |e: RequestFailure| route_failure(agent_id, &e);
    // A request the agent never processed here (refused, or its stream not opened) goes where the
    // policy says: a connection here again (`placed`), or the replica holding the agent (`moved`).
    let mut placed: Option<Lease<runtime_smol::Connection>> = None;
    let mut moved: Option<ReplicaId> = None;
    // Each move starts a new placement (its attempts counted afresh): bounded here.
    let mut moves = 0u32;
    loop {
        if moved.is_some() {
            moves += 1;
            if moves > MAX_MOVES {
                return Err(failed(RequestFailure::Unprocessed { attempts: moves }));
            }
        }
        let lease = match placed.take() {
            Some(lease) => lease,
            None => {
                // Here, or on the replica holding the agent (crate::peer; a single kas never
                // forwards).
                let routed = crate::peer::Request {
                    user: &user,
                    head: &head,
                    method: &method,
                    body: &mut body,
                    has_body,
                    deadline,
                    forwarded,
                    upgrade: &mut upgrade,
                };
                match crate::peer::route(state, routed, moved.take(), span)
                    .await
                    .map_err(failed)?
                {
                    crate::peer::Route::Here(lease) => lease,
                    crate::peer::Route::Answered(answer) => return answer,
                }
            }
        };
        if !span.is_disabled() {
            let connection_id =
                agent_listener::connection_id(&state.instance, lease.connection_serial());
            span.record("connection_id", connection_id.as_str());
        }
        let stream = match lease.connection().open(&head, end_stream) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                let Some(failure) = open_failure(&e) else {
                    return Err(tunnel_failure(agent_id, &e));
                };
                if failure == OpenFailure::IdsExhausted {
                    // The connection can take no more streams: it is retired for real (GOAWAY).
                    lease
                        .connection()
                        .start_close(crate::agent_listener::RETIRE_GRACE);
                }
                tracing::debug!(parent: span, error = %e, ?failure, "stream not opened");
                match lease.open_failed(failure).await.map_err(failed)? {
                    Routed::Here(lease) => placed = Some(lease),
                    Routed::Forward(replica) => moved = Some(replica),
                }
                continue;
            }
        };
        span.record("stream", stream.id().0);
        tracing::debug!(parent: span, service = target.service, path = %head.path, "stream opened");
        if let Some(body) = body.take().filter(|_| has_body) {
            state.spawner.spawn_detached(pump_request_body(
                body,
                stream.clone(),
                state.metrics.clone(),
                span.clone(),
            ));
        }
        let response =
            futures_lite::future::or(async { Some(stream.take_response().await) }, async {
                sleep
                    .until(Instant::now() + state.routing.response_timeout)
                    .await;
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
            Some(Err(e)) if unprocessed(&e) => {
                tracing::debug!(parent: span, error = %e, "stream refused before its answer");
                drop(stream);
                match lease.refused().await.map_err(failed)? {
                    Routed::Here(lease) => placed = Some(lease),
                    Routed::Forward(replica) => moved = Some(replica),
                }
                continue;
            }
            Some(Err(e)) => return Err(tunnel_failure(agent_id, &e)),
            Some(Ok(head)) => {
                if let Some(up) = upgrade.take() {
                    if head.status == 101 {
                        return super::upgrade::switched(state, stream, lease, &head, up, span);
                    }
                    // Refused: an ordinary answer; kas's direction ends without a byte.
                    let _ = stream.finish();
                }
                let bad_gateway = |m: String| {
                    ApiError::new(StatusCode::BAD_GATEWAY, format!("agent {agent_id}: {m}"))
                };
                let checked = match check_head(&head, &method) {
                    Ok(c) => c,
                    Err(m) => {
                        stream.reset(ErrorCode::Cancel);
                        state.agent_log.warn(
                            agent_id,
                            crate::agent_log::Misbehaviour::BadResponseHead,
                            &m,
                        );
                        return Err(bad_gateway(m));
                    }
                };
                let mut body = TunnelBody::new(stream, lease, state.clone(), span.clone())
                    .with_content_length(checked.length);
                // A body already known to contradict its length is refused before the head goes
                // out: the client gets a 502 rather than a response cut short.
                if let Err(m) = body.check_start().await {
                    return Err(bad_gateway(m));
                }
                return Ok(response_from(head, checked, body.boxed_unsync()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::proto::Header;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    #[test]
    fn headers_are_filtered_by_the_forwarding_rule() {
        let head = ResponseHead {
            status: 200,
            headers: vec![
                h("content-type", "application/json"),
                h("transfer-encoding", "chunked"),
                h("connection", "x-hop"),
                h("x-hop", "1"),
                h("set-cookie", "session=1"),
                h("bad name", "x"),
                h("x-multi", "1"),
                h("x-multi", "2"),
            ],
        };
        let checked = check_head(&head, &Method::GET).unwrap();
        let resp = response_from(head, checked, super::super::response::full(""));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert!(resp.headers().get("transfer-encoding").is_none());
        assert!(resp.headers().get("x-hop").is_none());
        assert!(resp.headers().get("set-cookie").is_none());
        assert_eq!(resp.headers().get_all("x-multi").iter().count(), 2);
        assert_eq!(resp.headers().len(), 3);
    }

    #[test]
    fn only_final_statuses_pass() {
        let status = |s: u32| {
            check_head(
                &ResponseHead {
                    status: s,
                    headers: vec![],
                },
                &Method::GET,
            )
            .map(|c| c.status.as_u16())
        };
        for bad in [0, 7, 99, 100, 101, 103, 199, 600, 999, 1000, u32::MAX] {
            assert!(status(bad).is_err(), "{bad}");
        }
        assert!(status(101).unwrap_err().contains("upgrade"));
        for good in [200, 204, 301, 404, 431, 502, 599] {
            assert_eq!(status(good), Ok(u16::try_from(good).unwrap()));
        }
    }

    #[test]
    fn content_length_must_be_one_number() {
        let length = |values: &[&str], method: &Method, status: u32| {
            check_head(
                &ResponseHead {
                    status,
                    headers: values.iter().map(|v| h("Content-Length", v)).collect(),
                },
                method,
            )
            .map(|c| c.length)
        };
        assert_eq!(length(&["12"], &Method::GET, 200), Ok(Some(12)));
        assert_eq!(length(&["12, 12"], &Method::GET, 200), Ok(Some(12)));
        assert_eq!(length(&["12", "12"], &Method::GET, 200), Ok(Some(12)));
        assert_eq!(length(&[], &Method::GET, 200), Ok(None));
        assert!(length(&["12", "13"], &Method::GET, 200).is_err());
        assert!(length(&["-1"], &Method::GET, 200).is_err());
        assert!(length(&["+5"], &Method::GET, 200).is_err());
        assert!(length(&["0x10"], &Method::GET, 200).is_err());
        assert!(length(&[""], &Method::GET, 200).is_err());
        assert!(length(&["99999999999999999999999"], &Method::GET, 200).is_err());
        // No body follows: the length describes something else and is not enforced.
        assert_eq!(length(&["12"], &Method::HEAD, 200), Ok(None));
        assert_eq!(length(&["12"], &Method::GET, 304), Ok(None));
        assert_eq!(length(&["12"], &Method::GET, 204), Ok(None));
    }

    #[test]
    fn route_failures_map_to_statuses() {
        let s = |e: RequestFailure| route_failure(1, &e).status.as_u16();
        assert_eq!(s(RequestFailure::UnknownAgent), 404);
        assert_eq!(
            s(RequestFailure::NotConnected {
                waited: std::time::Duration::ZERO
            }),
            503
        );
        assert_eq!(s(RequestFailure::TooManyPending), 503);
        assert_eq!(s(RequestFailure::ConnectionLost), 502);
        assert_eq!(s(RequestFailure::Unprocessed { attempts: 4 }), 502);
        assert_eq!(s(RequestFailure::HeadTooLarge { len: 9, max: 4 }), 431);
        assert_eq!(s(RequestFailure::ShuttingDown), 503);
        assert!(
            route_failure(7, &RequestFailure::UnknownAgent)
                .message
                .contains("agent 7 does not exist")
        );
    }

    #[test]
    fn open_failures_are_classified_for_the_policy() {
        assert_eq!(
            open_failure(&TunnelError::Open(OpenError::GoingAway)),
            Some(OpenFailure::GoingAway)
        );
        assert_eq!(
            open_failure(&TunnelError::Open(OpenError::HeadTooLarge {
                len: 5,
                max: 4
            })),
            Some(OpenFailure::HeadTooLarge { len: 5, max: 4 })
        );
        assert_eq!(open_failure(&TunnelError::Timeout), None);
        assert!(unprocessed(&TunnelError::StreamReset {
            code: ErrorCode::RefusedStream,
            message: String::new(),
            remote: true
        }));
        assert!(!unprocessed(&TunnelError::StreamReset {
            code: ErrorCode::Internal,
            message: String::new(),
            remote: true
        }));
    }
}
