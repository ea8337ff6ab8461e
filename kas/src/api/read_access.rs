//! Who may read views and events.
//!
//! Views and events are read-only summaries (counts per view row; kind, namespace and name of changed
//! objects). By default they need the same user bearer as the tunnel routes
//! (`Authorization: Bearer <kind>:<agent-id>:<token>`, [`super::user_auth`]): one agent's views and
//! events need a user allowed on that agent (401/403/429 as for the proxy); `/api/v1/events` needs a
//! valid user and carries the events of the agents that user may reach.
//!
//! With `api_listener.public_read: true` in `kas.yaml` (the demo sets it, so its dashboard works
//! without a login), views, events and the dashboard are readable without a token by anyone who can
//! reach kas's HTTP API; bind that listener to a trusted address then. The cache route
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

/// Whether the request may read `target`; the scope of events it may see.
pub fn authorize(
    state: &KasState,
    authorization: Option<&[u8]>,
    target: ReadTarget,
    source: IpAddr,
) -> Result<Scope, ApiError> {
    if state.public_read {
        return Ok(match target {
            ReadTarget::Agent(id) => Scope::Agent(id),
            ReadTarget::AllAgents => Scope::All,
        });
    }
    match target {
        ReadTarget::Agent(id) => {
            state.users.authorize(authorization, Some(id), source)?;
            Ok(Scope::Agent(id))
        }
        ReadTarget::AllAgents => {
            let grant = state.users.grant(authorization, source)?;
            Ok(Scope::Allowed(grant.agents))
        }
    }
}
