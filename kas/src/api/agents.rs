//! `GET /api/v1/agents` and `GET /api/v1/agents/{id}`: agents with their connection status.
//!
//! The list holds the agents that exist — the one answer of the routing policy
//! ([`protocol::routing::existence`]: listed in the agents file, or authenticated since kas started
//! with GitLab) — sorted by id:
//!
//! ```json
//! [{"id": 1, "name": "agent-1", "connected": true, "connections": 1, "version": "0.1.0",
//!   "pod": "gitlab-agent/agentk-7d9f", "node": "node-1", "capabilities": ["k8s-api"],
//!   "connected_since": "2024-05-01T12:34:56Z", "open_streams": 2, "pending_requests": 0,
//!   "tunnels": [{"connection_id": "1a2b3c4d-1", "peer": "10.0.0.7:51234", "draining": false,
//!                "connected_since": "2024-05-01T12:34:56Z", "open_streams": 2, "requests": 1}]}]
//! ```
//!
//! `version`, `pod`, `node` and `capabilities` come from the newest connection's HELLO and are `null`
//! (empty for capabilities) when the agent is not connected; `connected_since` is the oldest live
//! connection's.
//!
//! With several replicas the list is cluster-wide: `replicas` names every replica holding a
//! connection of the agent (from the tracker's view of Redis, refreshed every refresh period), and an
//! agent held only by other replicas is listed `connected` (its `tunnels` are those of this replica).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::events::Scope;
use crate::registry::ConnectionEntry;
use crate::rfc3339;
use crate::state::KasState;

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn agent_json(
    state: &KasState,
    agent_id: u64,
    name: &str,
    conns: &[&ConnectionEntry<runtime_smol::Connection>],
    cluster: &Cluster,
) -> Value {
    let newest = conns.iter().max_by_key(|c| c.serial);
    let oldest = conns.iter().min_by_key(|c| c.connected_since);
    let mut open_streams = 0u64;
    let tunnels: Vec<Value> = conns
        .iter()
        .map(|c| {
            let (ours, theirs) = c.handle.open_streams();
            let n = u64::from(ours) + u64::from(theirs);
            open_streams += n;
            json!({
                "connection_id": c.connection_id,
                "peer": c.peer.to_string(),
                "draining": c.draining,
                "connected_since": rfc3339::format(c.connected_since),
                "open_streams": n,
                "requests": state.registry.load(c.serial),
            })
        })
        .collect();
    let pod = newest.and_then(|c| {
        let m = &c.meta;
        match (non_empty(&m.pod_namespace), non_empty(&m.pod_name)) {
            (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
            (None, Some(pod)) => Some(pod.to_owned()),
            _ => None,
        }
    });
    let mut replicas: Vec<u32> = Vec::new();
    if let Some(r) = &state.replicas {
        if !conns.is_empty() {
            replicas.push(r.tracker.replica().0);
        }
        if let Some(holders) = cluster.get(&agent_id) {
            replicas.extend(holders.iter().map(|e| e.replica.0));
        }
        replicas.sort_unstable();
        replicas.dedup();
    }
    json!({
        "id": agent_id,
        "name": name,
        "connected": !conns.is_empty() || !replicas.is_empty(),
        "replicas": replicas,
        "connections": conns.len(),
        "version": newest.and_then(|c| non_empty(&c.meta.version)),
        "pod": pod,
        "node": newest.and_then(|c| non_empty(&c.meta.node_name)),
        "capabilities": newest.map(|c| c.meta.capabilities.clone()).unwrap_or_default(),
        "connected_since": oldest.map(|c| rfc3339::format(c.connected_since)),
        "open_streams": open_streams,
        "pending_requests": state.registry.pending_for(agent_id),
        "tunnels": tunnels,
    })
}

/// Every agent's holders among the replicas (empty for a single kas).
type Cluster = BTreeMap<u64, Vec<crate::tracker::Entry>>;

fn cluster(state: &KasState) -> Cluster {
    state
        .replicas
        .as_ref()
        .map(|r| r.tracker.cluster())
        .unwrap_or_default()
}

/// The names the agents file gives (empty with GitLab).
fn listed_names(state: &KasState) -> BTreeMap<u64, String> {
    state.directory.listed().into_iter().collect()
}

/// Every agent in `scope` (what the request may read), as a JSON array sorted by id.
pub fn list(state: &KasState, scope: &Scope) -> Value {
    let connections = state.registry.connections();
    let listed = listed_names(state);
    let cluster = cluster(state);
    let mut known: BTreeMap<u64, Option<String>> =
        state.registry.known_agents().into_iter().collect();
    // Agents only other replicas have seen (GitLab backend): listed too, by id.
    for id in cluster.keys() {
        known.entry(*id).or_insert(None);
    }
    let agents: Vec<Value> = known
        .into_iter()
        .filter(|(id, _)| scope.includes(*id))
        .map(|(id, seen_name)| {
            let name = listed.get(&id).cloned().or(seen_name).unwrap_or_default();
            let conns: Vec<_> = connections.iter().filter(|c| c.agent_id == id).collect();
            agent_json(state, id, &name, &conns, &cluster)
        })
        .collect();
    Value::Array(agents)
}

/// `Ok` when kas knows `agent_id` (its configuration is read from Git, or it is listed, connected or
/// seen); else the 404 every per-agent resource answers.
pub fn require_known(state: &KasState, agent_id: u64) -> Result<(), super::response::ApiError> {
    let known = state
        .agent_config
        .as_ref()
        .is_some_and(|c| c.has_source(agent_id))
        || get(state, agent_id).is_some();
    if known {
        Ok(())
    } else {
        Err(super::response::ApiError::new(
            http::StatusCode::NOT_FOUND,
            format!("agent {agent_id} does not exist"),
        ))
    }
}

/// One agent, if it exists.
pub fn get(state: &KasState, agent_id: u64) -> Option<Value> {
    let cluster = cluster(state);
    if !state.registry.agent_exists(agent_id) && !cluster.contains_key(&agent_id) {
        return None;
    }
    let name = listed_names(state).remove(&agent_id).or_else(|| {
        state
            .registry
            .known_agents()
            .into_iter()
            .find(|(id, _)| *id == agent_id)
            .and_then(|(_, name)| name)
    });
    let connections = state.registry.connections_of(agent_id);
    let conns: Vec<_> = connections.iter().collect();
    Some(agent_json(
        state,
        agent_id,
        &name.unwrap_or_default(),
        &conns,
        &cluster,
    ))
}
