//! `GET /api/v1/agents/{id}/views` and `GET /api/v1/agents/{id}/views/{name}`: an agent's views,
//! answered from kas's memory (the mirror, [`crate::mirrors`]), never from the agent.
//!
//! ```json
//! {"agent_id": 1, "connected": true, "synced": true, "age_seconds": 0.4, "epoch": "8731…", "seq": 17,
//!  "views": {"nodes": {"name": "nodes", "kind": "Node", "group_by": [], "metrics": ["count", "ready", "not_ready"],
//!                      "rows": [{"count": 3, "ready": 3, "not_ready": 0}]},
//!            "pods_by_phase": {…, "rows": [{"namespace": "default", "phase": "Running", "count": 12}]}, …}}
//! ```
//!
//! `connected`: the agent's `views` stream is open (its views are live); `synced`: the mirror holds
//! agentk's state and is not waiting for a resync; `age_seconds`: time since the views last changed
//! (`null` before the first snapshot). The views of an agent that went away stay readable, with
//! `connected: false`. An agent that exists but never sent views has `"views": {}`. The one-view form
//! has `"view": {…}` instead of `"views"`. 404 for an unknown agent (the routing policy's one answer,
//! [`protocol::routing::existence`]) or view.

use std::time::Instant;

use http::{Response, StatusCode};
use serde_json::json;

use crate::mirrors::ViewLookup;
use crate::state::KasState;

use super::response::{self, ApiError, ResponseBody};

fn unknown_agent(agent_id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("agent {agent_id} does not exist"),
    )
}

/// All views of one agent.
pub fn views(state: &KasState, agent_id: u64) -> Result<Response<ResponseBody>, ApiError> {
    if !state.registry.agent_exists(agent_id) {
        return Err(unknown_agent(agent_id));
    }
    if let Some(v) = state.mirrors.views_json(agent_id, Instant::now()) {
        return Ok(response::json(StatusCode::OK, &v));
    }
    Ok(response::json(
        StatusCode::OK,
        &json!({
            "agent_id": agent_id,
            "connected": false,
            "synced": false,
            "age_seconds": null,
            "epoch": null,
            "seq": null,
            "views": {},
        }),
    ))
}

/// One view of one agent.
pub fn view(
    state: &KasState,
    agent_id: u64,
    name: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    if !state.registry.agent_exists(agent_id) {
        return Err(unknown_agent(agent_id));
    }
    match state.mirrors.view_json(agent_id, name, Instant::now()) {
        ViewLookup::Found(v) => Ok(response::json(StatusCode::OK, &v)),
        ViewLookup::NoView => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("agent {agent_id} has no view {name:?}"),
        )),
        ViewLookup::NoAgent => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("agent {agent_id} has sent no views"),
        )),
    }
}
