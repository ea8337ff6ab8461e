//! Which agents exist: the answer behind "unknown agent → 404" and the agent listing.
//!
//! With an agents file (the embedded default or a configured one) the file is the truth: an agent it
//! does not list is unknown, connected or not. GitLab knows agents kas cannot enumerate, so with the
//! GitLab backend an agent is known once it has authenticated since kas started.

use std::sync::Arc;

use crate::auth::{AgentsFile, AgentsFileError};

/// The source of truth for agent existence.
#[derive(Debug, Clone)]
pub enum AgentDirectory {
    /// Agents listed in a file.
    File(Arc<AgentsFile>),
    /// Agents GitLab vouched for since kas started.
    Seen,
}

impl AgentDirectory {
    /// Whether `agent_id` exists; `seen`: it authenticated since kas started.
    pub fn is_known(&self, agent_id: u64, seen: bool) -> bool {
        match self {
            AgentDirectory::File(f) => f.agents().iter().any(|(id, _)| *id == agent_id),
            AgentDirectory::Seen => seen,
        }
    }

    /// `(id, name)` of every agent the directory lists (none for [`AgentDirectory::Seen`]).
    pub fn listed(&self) -> Vec<(u64, String)> {
        match self {
            AgentDirectory::File(f) => f.agents(),
            AgentDirectory::Seen => Vec::new(),
        }
    }

    /// `(id, name, config project)` of every listed agent that names a config project.
    pub fn config_projects(&self) -> Vec<(u64, String, crate::auth::ConfigProject)> {
        match self {
            AgentDirectory::File(f) => f.config_projects(),
            AgentDirectory::Seen => Vec::new(),
        }
    }

    /// Re-reads the file if it changed (blocking: call from a blocking pool). Returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, AgentsFileError> {
        match self {
            AgentDirectory::File(f) => f.reload_if_changed(),
            AgentDirectory::Seen => Ok(false),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn file_lists_decide_and_seen_decides_for_gitlab() {
        let yaml = format!(
            "agents:\n- id: 4\n  name: four\n  token_sha256: {}\n",
            crate::auth::TokenDigest::of("t").to_hex()
        );
        let file = AgentsFile::from_yaml_str(&yaml, Path::new("agents.yaml")).unwrap();
        let d = AgentDirectory::File(Arc::new(file));
        assert!(d.is_known(4, false));
        assert!(!d.is_known(5, true), "the file is the truth");
        assert_eq!(d.listed(), vec![(4, "four".to_owned())]);
        assert!(AgentDirectory::Seen.is_known(5, true));
        assert!(!AgentDirectory::Seen.is_known(5, false));
    }
}
