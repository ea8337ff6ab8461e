//! Where the list of agents comes from: the agents file (the truth) or GitLab (open). The answer to
//! "does agent N exist" is the routing policy's ([`protocol::routing::existence`]), fed by [`AgentDirectory::listing`].
//!
//! With an agents file (the embedded default or a configured one) the file is the truth: an agent it
//! does not list is unknown, connected or not. GitLab knows agents kas cannot enumerate, so with the
//! GitLab backend an agent is known once it has authenticated since kas started.

use std::sync::Arc;

use protocol::routing::Listing;

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
    /// What the directory says about existence, for the routing policy
    /// ([`protocol::routing::existence`]): the file's agents are the truth; GitLab's are open.
    pub fn listing(&self) -> Listing {
        match self {
            AgentDirectory::File(f) => {
                Listing::Authoritative(f.agents().iter().map(|(id, _)| *id).collect())
            }
            AgentDirectory::Seen => Listing::Open,
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
        assert_eq!(d.listing(), Listing::Authoritative([4].into()));
        assert_eq!(d.listed(), vec![(4, "four".to_owned())]);
        assert_eq!(AgentDirectory::Seen.listing(), Listing::Open);
    }
}
