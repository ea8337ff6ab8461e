//! The agent configuration file, `.gitlab/agents/<agent-name>/config.yaml`, in one place: its typed
//! schema (GitLab's: `gitops`, `observability`, `ci_access`, `user_access`, `container_scanning`,
//! `remote_development`, `flux`), a parser that reports *every* error with its key path, line and
//! column, and the subset agentk receives ([`AgentConfig`]) with its wire form and fingerprint.
//!
//! Pure: no I/O, no clock, no runtime. kas fetches the file from Git and parses it here; agentk
//! receives [`AgentConfig`]; the simulator and the conformance suites use the same types.
//!
//! ```
//! use agent_config::{ConfigFile, ProjectId};
//!
//! let file = ConfigFile::parse("gitops:\n  manifest_projects:\n  - paths: [{glob: '/manifests/*.yaml'}]\n")
//!     .expect("valid");
//! let config = file.agent_config(&ProjectId::new("group/config").expect("id"));
//! assert_eq!(config.gitops.manifest_projects[0].id.as_ref().map(|p| p.as_str()), Some("group/config"));
//!
//! let errors = ConfigFile::parse("gitops:\n  manifest_projects:\n  - refx: {branch: main}\n").unwrap_err();
//! assert_eq!(errors.errors[0].path, "gitops.manifest_projects[0].refx");
//! assert_eq!((errors.errors[0].line, errors.errors[0].column), (3, 5));
//! ```
//!
//! YAML is read by [`yaml`], a bounded, positioned loader shared with the `gitops` crate's manifest
//! parser (size, depth, node, alias-expansion limits: YAML bombs fail with a clear error).
#![warn(missing_docs)]

pub mod access;
pub mod agent;
mod decode;
pub mod delivery;
pub mod duration;
pub mod error;
pub mod extras;
pub mod file;
pub mod gitops;
pub mod glob;
pub mod names;
pub mod observability;
pub mod yaml;

pub use access::{
    CiAccess, CiAccessAs, CiAccessGrant, CiAccessScope, ExtraKeyVal, Impersonation, UserAccess,
    UserAccessAs,
};
pub use agent::{AgentConfig, AgentGitops, AgentObservability, Fingerprint};
pub use delivery::{ConfigUpdate, Delivery, UpdateError};
pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use file::ConfigFile;
pub use gitops::{
    DryRunStrategy, GitRef, GitopsConfig, InventoryPolicy, ManifestProject, PropagationPolicy,
};
pub use glob::{EnvironmentPattern, ManifestGlob};
pub use names::{AgentName, Namespace, ProjectId};
pub use observability::{LogLevel, Logging, Observability};
