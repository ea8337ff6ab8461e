//! `GET /api/v1/agents/{id}/gitops` ([`crate::gitops_poller`]): per manifest project of the agent's
//! configuration, where its source stands and what the agent last reported.
//!
//! ```json
//! {"agent_id": 1, "projects": [{
//!   "project": "git://git.example.com/manifests.git", "configured": true, "status": "error",
//!   "repository": "git://git.example.com/manifests.git", "ref": "HEAD",
//!   "commit": "9fceb02…", "fetched_at": "2026-12-03T10:40:18Z",
//!   "desired_commit": "1b2c3d4…", "desired_objects": 3, "desired_at": "2026-12-03T10:35:02Z",
//!   "error": {"kind": "rejected", "commit": "9fceb02…", "message": "…", "fault": null,
//!             "errors": [{"kind": "syntax", "path": "app.yaml", "line": 3, "column": 5, "message": "…"}]},
//!   "sync": {"project": "…", "inventory": "gitops-…", "commit": "1b2c3d4…", "synced_commit": "1b2c3d4…",
//!            "phase": "synced", "objects": [{"object": {"group": "", "kind": "ConfigMap", "namespace": "default",
//!            "name": "app"}, "result": "applied", "at": 1796283302000}], "last_error": null, …},
//!   "reported_at": "2026-12-03T10:35:03Z"}]}
//! ```
//!
//! `status`: `ok` (the last commit is in force), `error` (the last commit was rejected or the last
//! fetch failed: `desired_commit` stays in force), `pending` (not fetched yet). `sync` is the agent's
//! last report (`null` before the first). 404 for an unknown agent.

use http::{Response, StatusCode};

use crate::state::KasState;

use super::response::{self, ApiError, ResponseBody};

/// One agent's GitOps status.
pub fn get(state: &KasState, agent_id: u64) -> Result<Response<ResponseBody>, ApiError> {
    let Some(poller) = &state.gitops else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "gitops is not enabled",
        ));
    };
    super::agents::require_known(state, agent_id)?;
    Ok(response::json(StatusCode::OK, &poller.agent_json(agent_id)))
}

/// Triggers a poll of the manifest projects a push webhook's JSON body names (the secret was
/// checked by the caller); `None` when GitOps is off or the body is not a push event.
pub fn trigger(state: &KasState, body: &[u8]) -> Option<usize> {
    let poller = state.gitops.as_ref()?;
    let push: serde_json::Value = serde_json::from_slice(body).ok()?;
    let field = |k: &str| {
        push.get("project")
            .and_then(|p| p.get(k))
            .and_then(|v| v.as_str())
    };
    let url = field("git_http_url").or_else(|| field("http_url"));
    Some(poller.trigger(field("path_with_namespace"), url))
}
