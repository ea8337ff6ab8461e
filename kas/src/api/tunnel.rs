//! `/api/v1/tunnel`: agents reach kas's API port (usually the one behind the load balancer) and
//! run their tunnel in a WebSocket (`wss://kas.example/api/v1/tunnel`). kas answers the upgrade
//! itself (`101` with the subprotocol `agent-tunnel.v1`) and hands the upgraded connection to the
//! agent listener's tunnel server ([`runtime_smol::Intake`]): the same HELLO, authenticator and
//! registration as an agent dialing the agent listener.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use runtime_smol::transport::websocket::{SUBPROTOCOL, accept_key, offers_subprotocol};

use super::response::{ApiError, ResponseBody, full};
use super::upgraded_io::UpgradedIo;
use crate::state::KasState;

/// The path of the tunnel on the API port.
pub const PATH: &str = "/api/v1/tunnel";

fn header_has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Answers a WebSocket upgrade for the tunnel and adopts the connection once upgraded; anything
/// else is `400` (or `405`), with the reason.
pub fn upgrade(
    state: &Arc<KasState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ResponseBody>, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "the tunnel is a WebSocket upgrade (GET)",
        ));
    }
    let headers = req.headers();
    let bad = |m: &str| Err(ApiError::new(StatusCode::BAD_REQUEST, m.to_owned()));
    if !header_has_token(headers, UPGRADE, "websocket")
        || !header_has_token(headers, CONNECTION, "upgrade")
    {
        return bad("expected a WebSocket upgrade (Upgrade: websocket)");
    }
    if headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return bad("Sec-WebSocket-Version must be 13");
    }
    if !offers_subprotocol(headers.get_all(SEC_WEBSOCKET_PROTOCOL)) {
        return bad(&format!(
            "the WebSocket subprotocol {SUBPROTOCOL} is required"
        ));
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return bad("Sec-WebSocket-Key is missing");
    };
    let accept = accept_key(key.as_bytes());
    let Some(intake) = state.tunnel_intake.get().cloned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the tunnel server is not listening",
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    state.spawner.spawn_detached(async move {
        match on_upgrade.await {
            Ok(upgraded) => intake.adopt_websocket(UpgradedIo(upgraded), peer),
            Err(e) => tracing::debug!(%peer, error = %e, "tunnel upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, accept)
        .header(SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .body(full(""))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
