//! What agentk receives: [`AgentConfig`], the part of the configuration file the agent acts on, with
//! a stable JSON form for the wire and a content fingerprint.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::file::ConfigFile;
use crate::gitops::ManifestProject;
use crate::names::ProjectId;
use crate::observability::Logging;

/// agentk's configuration: its logging and its manifest projects (with every default applied and
/// every project id resolved; no credentials — kas holds those).
///
/// The JSON form is the wire form (kas → agentk on the `config` service): field names are snake_case
/// and stable; readers ignore fields they do not know, so kas may add fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentConfig {
    /// `observability` as agentk applies it.
    #[serde(default)]
    pub observability: AgentObservability,
    /// `gitops` as agentk applies it.
    #[serde(default)]
    pub gitops: AgentGitops,
}

/// The observability part of [`AgentConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentObservability {
    /// Log levels.
    #[serde(default)]
    pub logging: Logging,
}

/// The GitOps part of [`AgentConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentGitops {
    /// The manifest projects; `id` is always set.
    #[serde(default)]
    pub manifest_projects: Vec<ManifestProject>,
}

/// A content fingerprint: lowercase hex SHA-256 of the canonical JSON. Equal configurations have
/// equal fingerprints; kas resends only when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AgentConfig {
    /// agentk's part of `file`; manifest projects without an `id` get `config_project`.
    pub fn from_file(file: &ConfigFile, config_project: &ProjectId) -> AgentConfig {
        let manifest_projects = file
            .gitops
            .manifest_projects
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.id.get_or_insert_with(|| config_project.clone());
                p
            })
            .collect();
        let config = AgentConfig {
            observability: AgentObservability {
                logging: file.observability.logging,
            },
            gitops: AgentGitops { manifest_projects },
        };
        debug_assert!(
            config
                .gitops
                .manifest_projects
                .iter()
                .all(|p| p.id.is_some())
        );
        config
    }

    /// The wire form (canonical JSON: struct fields in declaration order, no whitespace).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an AgentConfig always serialises")
    }

    /// Reads the wire form.
    pub fn from_json(bytes: &[u8]) -> Result<AgentConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The content fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(hex::encode(Sha256::digest(self.to_json())))
    }
}

impl ConfigFile {
    /// agentk's part of this file (see [`AgentConfig::from_file`]).
    pub fn agent_config(&self, config_project: &ProjectId) -> AgentConfig {
        AgentConfig::from_file(self, config_project)
    }
}
