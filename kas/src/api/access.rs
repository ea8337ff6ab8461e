//! `GET /api/v1/agents/{id}/access`: the agent's effective access grants, as kas enforces them
//! ([`crate::access`]): those of its last good configuration from Git, and the implicit grant of its
//! configuration project to its own CI jobs.
//!
//! ```json
//! {"agent_id": 1, "config_commit": "9fceb02…",
//!  "config_project": {"id": 7, "path": "group/config"},
//!  "ci_access": {"projects": [{"id": "group/app", "default_namespace": null,
//!                "access_as": {"ci_job": null}, "environments": ["review/*"],
//!                "protected_branches_only": false}], "groups": [], "instance": null},
//!  "user_access": {"access_as": "user", "projects": ["group/app"], "groups": []},
//!  "implicit": ["CI jobs of the configuration project act as the agent"]}
//! ```
//!
//! `config_commit` is `null` while the agent has no good configuration (then nothing is granted but
//! the implicit grant). 404 for an unknown agent.

use http::{Response, StatusCode};

use crate::state::KasState;

use super::response::{self, ApiError, ResponseBody};

/// One agent's effective grants.
pub fn get(state: &KasState, agent_id: u64) -> Result<Response<ResponseBody>, ApiError> {
    super::agents::require_known(state, agent_id)?;
    let (ci_access, user_access, commit) = crate::access::grants(state, agent_id);
    let agent = crate::access::agent_context(state, agent_id);
    let implicit: Vec<&str> = if agent.config_project.path.is_empty() {
        Vec::new()
    } else {
        vec!["CI jobs of the configuration project act as the agent"]
    };
    Ok(response::json(
        StatusCode::OK,
        &serde_json::json!({
            "agent_id": agent_id,
            "config_commit": commit,
            "config_project": {
                "id": agent.config_project.id,
                "path": agent.config_project.path,
            },
            "ci_access": ci_access,
            "user_access": user_access,
            "implicit": implicit,
        }),
    ))
}
