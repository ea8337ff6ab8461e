//! Who may read views, events and the agent inventory (the routes with [`super::Access::Read`]).
//!
//! Views and events are read-only summaries (counts per view row; kind, namespace and name of changed
//! objects); the inventory (`/api/v1/agents`) lists agents with their peers, pods, nodes, versions and
//! connection ids. By default they need the same user bearer as the tunnel routes
//! (`Authorization: Bearer <kind>:<agent-id>:<token>`, [`crate::users::gate`]): one agent's views,
//! events and entry need a user allowed on that agent (401/403/429 as for the proxy);
//! `/api/v1/events` and `/api/v1/agents` need a valid user and carry the agents that user may reach.
//!
//! With `api_listener.public_read: true` in `kas.yaml` (the demo sets it, so its dashboard works
//! without a login), these are readable without a token by anyone who can reach kas's HTTP API; bind
//! that listener to a trusted address then. The cache route
//! (`/api/v1/agents/{id}/cache/...`) returns whole objects from the cluster and always needs a bearer,
//! as do the tunnel routes.

use std::net::IpAddr;

use crate::events::Scope;
use crate::state::KasState;

use super::response::ApiError;

/// What is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTarget {
    /// One agent's views or events.
    Agent(u64),
    /// Every agent's events.
    AllAgents,
}

/// Read access granted to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadGrant {
    /// What was asked for.
    pub target: ReadTarget,
    /// The agents whose events (and inventory entries) the request may see.
    pub scope: Scope,
    /// The user, when the request authenticated (`None`: public read without a token).
    pub user: Option<String>,
}

/// Whether the request may read `target`; what it may see.
pub fn authorize(
    state: &KasState,
    authorization: Option<&[u8]>,
    target: ReadTarget,
    source: IpAddr,
) -> Result<ReadGrant, ApiError> {
    if state.public_read {
        return Ok(ReadGrant {
            target,
            scope: match target {
                ReadTarget::Agent(id) => Scope::Agent(id),
                ReadTarget::AllAgents => Scope::All,
            },
            user: None,
        });
    }
    match target {
        ReadTarget::Agent(id) => {
            let user = state.users.authorize(authorization, Some(id), source)?;
            Ok(ReadGrant {
                target,
                scope: Scope::Agent(id),
                user: Some(user.name),
            })
        }
        ReadTarget::AllAgents => {
            let grant = state.users.grant(authorization, source)?;
            Ok(ReadGrant {
                target,
                scope: Scope::Allowed(grant.agents),
                user: Some(grant.name),
            })
        }
    }
}
