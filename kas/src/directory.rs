//! Where the list of agents comes from: the agents file (the truth) or GitLab (open). The answer to
//! "does agent N exist" is the routing policy's ([`protocol::routing::existence`]), fed by [`AgentDirectory::listing`].
//!
//! With an agents file (the embedded default or a configured one) the file is the truth: an agent it
//! does not list is unknown, connected or not. GitLab knows agents kas cannot enumerate, so with the
//! GitLab backend an agent is known once it has authenticated since kas started
//! ([`SeenAgents`]); with `gitlab.repositories` configured, its configuration project is the
//! project GitLab's `agent_info` named, cloned from GitLab over HTTP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use protocol::routing::Listing;

use crate::auth::{AgentIdentity, AgentsFile, AgentsFileError, ConfigProject};
use crate::config::GitLabRepositoriesConfig;

/// The source of truth for agent existence.
#[derive(Debug, Clone)]
pub enum AgentDirectory {
    /// Agents listed in a file.
    File(Arc<AgentsFile>),
    /// Agents GitLab vouched for since kas started.
    Seen(Arc<SeenAgents>),
}

impl AgentDirectory {
    /// A directory of agents GitLab vouches for, reading no configuration projects.
    pub fn seen() -> AgentDirectory {
        AgentDirectory::Seen(Arc::new(SeenAgents::new(None)))
    }

    /// What the directory says about existence, for the routing policy
    /// ([`protocol::routing::existence`]): the file's agents are the truth; GitLab's are open.
    pub fn listing(&self) -> Listing {
        match self {
            AgentDirectory::File(f) => {
                Listing::Authoritative(f.agents().iter().map(|(id, _)| *id).collect())
            }
            AgentDirectory::Seen(_) => Listing::Open,
        }
    }

    /// `(id, name)` of every agent the directory lists (none for [`AgentDirectory::Seen`]).
    pub fn listed(&self) -> Vec<(u64, String)> {
        match self {
            AgentDirectory::File(f) => f.agents(),
            AgentDirectory::Seen(_) => Vec::new(),
        }
    }

    /// `(id, name, config project)` of every agent that has a config project: those the file
    /// lists with one, or those GitLab authenticated since kas started when kas may read their
    /// projects from GitLab.
    pub fn config_projects(&self) -> Vec<(u64, String, ConfigProject)> {
        match self {
            AgentDirectory::File(f) => f.config_projects(),
            AgentDirectory::Seen(s) => s.config_projects(),
        }
    }

    /// An agent authenticated as `identity`. Returns the project path to poll at once when this
    /// gave the agent a configuration project it did not have (GitLab backend with
    /// `gitlab.repositories`); `None` otherwise.
    pub fn note_authenticated(&self, identity: &AgentIdentity) -> Option<String> {
        match self {
            AgentDirectory::File(_) => None,
            AgentDirectory::Seen(s) => s.note(identity),
        }
    }

    /// Re-reads the file if it changed (blocking: call from a blocking pool). Returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, AgentsFileError> {
        match self {
            AgentDirectory::File(f) => f.reload_if_changed(),
            AgentDirectory::Seen(_) => Ok(false),
        }
    }
}

/// Agents GitLab authenticated since kas started, and — with `gitlab.repositories` — their
/// configuration projects: `{url}/{gl_project_path}.git` with kas's repository credentials.
#[derive(Debug)]
pub struct SeenAgents {
    repositories: Option<RepositorySource>,
    agents: Mutex<BTreeMap<u64, (String, ConfigProject)>>,
}

/// `gitlab.repositories` resolved: the base URL and the credentials every clone uses.
#[derive(Debug, Clone)]
struct RepositorySource {
    base: String,
    token_file: Option<PathBuf>,
    username: Option<String>,
    header_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

impl SeenAgents {
    /// `gitlab_url`/`gitlab_ca` are the backend's; `repositories` unset reads no projects.
    pub fn from_config(
        gitlab_url: &str,
        gitlab_ca: Option<&PathBuf>,
        repositories: Option<&GitLabRepositoriesConfig>,
    ) -> SeenAgents {
        SeenAgents::new(repositories.map(|r| {
            RepositorySource {
                base: r
                    .url
                    .as_deref()
                    .unwrap_or(gitlab_url)
                    .trim_end_matches('/')
                    .to_owned(),
                token_file: r.token_file.clone(),
                username: r.username.clone(),
                header_file: r.header_file.clone(),
                ca_file: r.ca_file.clone().or_else(|| gitlab_ca.cloned()),
            }
        }))
    }

    fn new(repositories: Option<RepositorySource>) -> SeenAgents {
        SeenAgents {
            repositories,
            agents: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (String, ConfigProject)>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config_projects(&self) -> Vec<(u64, String, ConfigProject)> {
        self.lock()
            .iter()
            .map(|(id, (name, p))| (*id, name.clone(), p.clone()))
            .collect()
    }

    fn note(&self, identity: &AgentIdentity) -> Option<String> {
        let source = self.repositories.as_ref()?;
        let project = identity.project.as_ref()?;
        let path = project.path.as_deref()?.trim_matches('/');
        if !is_project_path(path) {
            tracing::warn!(
                agent_id = identity.agent_id,
                "GitLab named a project path kas will not clone; the agent gets no configuration"
            );
            return None;
        }
        let config = ConfigProject {
            url: format!("{}/{path}.git", source.base),
            token_file: source.token_file.clone(),
            username: source.username.clone(),
            header_file: source.header_file.clone(),
            ca_file: source.ca_file.clone(),
            project_id: Some(project.project_id),
        };
        let entry = (identity.name.clone(), config);
        let mut agents = self.lock();
        if agents.get(&identity.agent_id) == Some(&entry) {
            return None;
        }
        agents.insert(identity.agent_id, entry);
        Some(path.to_owned())
    }
}

/// A GitLab project path: `/`-separated segments of letters, digits, `_`, `-`, `.`, none empty,
/// none `.` or `..`, none starting with `-` (so it can only name a project under the base URL).
fn is_project_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.starts_with('-')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

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
        assert_eq!(AgentDirectory::seen().listing(), Listing::Open);
    }

    fn identity(id: u64, path: Option<&str>) -> AgentIdentity {
        AgentIdentity {
            agent_id: id,
            name: format!("agent-{id}"),
            project: Some(crate::auth::AgentProject {
                project_id: 70 + id,
                path: path.map(str::to_owned),
                default_branch: None,
            }),
        }
    }

    #[test]
    fn gitlab_agents_get_their_project_only_with_repository_access() {
        // Without `gitlab.repositories`: no configuration projects (fail closed).
        let d = AgentDirectory::seen();
        assert_eq!(
            d.note_authenticated(&identity(1, Some("group/agents"))),
            None
        );
        assert!(d.config_projects().is_empty());

        let repos = GitLabRepositoriesConfig {
            token_file: Some(PathBuf::from("/etc/kas/read-repository.token")),
            ..GitLabRepositoriesConfig::default()
        };
        let d = AgentDirectory::Seen(Arc::new(SeenAgents::from_config(
            "https://gitlab.example.com/",
            None,
            Some(&repos),
        )));
        assert_eq!(
            d.note_authenticated(&identity(1, Some("group/agents"))),
            Some("group/agents".to_owned())
        );
        // The same again is no news; a moved project is.
        assert_eq!(
            d.note_authenticated(&identity(1, Some("group/agents"))),
            None
        );
        let projects = d.config_projects();
        assert_eq!(projects.len(), 1);
        let (id, name, p) = &projects[0];
        assert_eq!((*id, name.as_str()), (1, "agent-1"));
        assert_eq!(p.url, "https://gitlab.example.com/group/agents.git");
        assert_eq!(p.project_id, Some(71));
        assert_eq!(p.token_file, repos.token_file);
        // GitLab's path is data, not a URL: nothing outside the base is ever cloned.
        for hostile in [
            "../x",
            "group/../../x",
            "-u/x",
            "a//b",
            "a/b?x=1",
            "a/b#c",
            "",
            "a b",
        ] {
            assert_eq!(
                d.note_authenticated(&identity(2, Some(hostile))),
                None,
                "{hostile}"
            );
        }
        assert_eq!(d.note_authenticated(&identity(3, None)), None);
        assert_eq!(d.config_projects().len(), 1);
        assert_eq!(d.listing(), Listing::Open);
    }
}
