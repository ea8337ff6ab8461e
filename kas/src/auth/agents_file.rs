//! The agents file: agent ids, names and token digests, in YAML.
//!
//! ```yaml
//! agents:
//!   - id: 1
//!     name: agent-1
//!     token_sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//!     config_project:               # optional: where .gitlab/agents/agent-1/config.yaml lives
//!       url: https://gitlab.example.com/group/config.git   # also git://…, a local path
//!       token_file: config.token    # optional: basic auth (username `oauth2` unless given)
//!       # header_file: auth-header  # or: a whole `Authorization` header value, re-read per fetch
//!       # ca_file: ca.pem           # optional: CA certificates for https
//!       # project_id: 7             # optional: GitLab's id of the project (access control)
//! ```
//!
//! Authentication hashes the presented token and compares the digest with every entry in constant time
//! (no early exit), so timing reveals neither which entry matched nor how much of a digest did.
//! [`AgentsFile::generate`] makes the embedded default: `agents.yaml` plus `agent-N.token` files with the
//! clear tokens, readable by their owner only.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::files::{FileStamp, read_with_stamp, write_atomic};
use super::token::{TokenDigest, generate_token};
use super::{AGENTS_FILE_NAME, AgentAuthenticator, AgentIdentity, AuthError, precheck_token};
use crate::config::{YamlError, parse_yaml};

/// One agent as the file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEntry {
    /// The agent id (>= 1, unique in the file).
    pub id: u64,
    /// The agent's name (not empty).
    pub name: String,
    /// SHA-256 of the agent's token (unique in the file).
    pub token_sha256: TokenDigest,
    /// The repository holding the agent's configuration file, if any.
    pub config_project: Option<ConfigProject>,
}

/// Where an agent's configuration project is and how to authenticate to it. Relative file paths are
/// resolved against the agents file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigProject {
    /// The repository: `https://…`, `http://…` (credentials only to loopback), `git://…`, or a local path.
    pub url: String,
    /// Basic auth: a file holding the token (re-read before every fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Basic auth username with `token_file`; default `oauth2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding a whole `Authorization` header value (re-read before every fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for `https` instead of the built-in roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// GitLab's numeric id of the project (its path comes from `url`): names it in identities
    /// (`agent.gitlab.com/config_project_id`) and lets its own CI jobs use the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsDoc {
    #[serde(default)]
    agents: Vec<AgentRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentRecord {
    id: u64,
    name: String,
    token_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_project: Option<ConfigProject>,
}

/// Problems with an agents file.
#[derive(Debug, thiserror::Error)]
pub enum AgentsFileError {
    /// The file could not be read.
    #[error("cannot read agents file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid YAML, or not the expected structure.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// Two entries have the same id.
    #[error("agents file {}: duplicate agent id {id}", path.display())]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The id.
        id: u64,
    },
    /// Two entries have the same token digest.
    #[error("agents file {}: agents {first} and {second} have the same token_sha256", path.display())]
    DuplicateToken {
        /// The file.
        path: PathBuf,
        /// The first agent id.
        first: u64,
        /// The second agent id.
        second: u64,
    },
    /// A `token_sha256` is not 64 hex digits.
    #[error("agents file {}: agent {id}: bad token_sha256: {source}", path.display())]
    BadDigest {
        /// The file.
        path: PathBuf,
        /// The agent id.
        id: u64,
        /// What is wrong.
        source: super::token::DigestParseError,
    },
    /// An agent's `config_project` is invalid.
    #[error("agents file {}: agent {id}: config_project: {reason}", path.display())]
    BadConfigProject {
        /// The file.
        path: PathBuf,
        /// The agent id.
        id: u64,
        /// What is wrong (never a credential).
        reason: String,
    },
    /// An entry is invalid (id 0, empty name).
    #[error("agents file {}: entry {index}: {reason}", path.display())]
    InvalidEntry {
        /// The file.
        path: PathBuf,
        /// 0-based position in the list.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Generated files could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An agent made by [`AgentsFile::generate`]. `Debug` does not show the token.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedAgent {
    /// The agent id (1..=n).
    pub id: u64,
    /// `agent-<id>`.
    pub name: String,
    /// The clear token, as written to `token_file`.
    pub token: String,
    /// `<dir>/agent-<id>.token`.
    pub token_file: PathBuf,
}

impl std::fmt::Debug for GeneratedAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedAgent")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("token_file", &self.token_file)
            .finish()
    }
}

struct Loaded {
    entries: Vec<AgentEntry>,
    stamp: Option<FileStamp>,
}

/// Agents authenticated from a file (or from entries given in memory).
pub struct AgentsFile {
    /// Where entries come from; `None` for in-memory entries (nothing to reload).
    path: Option<PathBuf>,
    state: RwLock<Loaded>,
}

impl std::fmt::Debug for AgentsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentsFile")
            .field("path", &self.path)
            .field("agents", &self.len())
            .finish()
    }
}

impl AgentsFile {
    /// Loads the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AgentsFileError> {
        let path = path.as_ref().to_owned();
        let loaded = read_file(&path)?;
        tracing::info!(path = %path.display(), agents = loaded.entries.len(), "loaded agents file");
        Ok(Self {
            path: Some(path),
            state: RwLock::new(loaded),
        })
    }

    /// Parses agents-file YAML held in memory; `origin` names it in errors. Cannot be reloaded.
    pub fn from_yaml_str(text: &str, origin: &Path) -> Result<Self, AgentsFileError> {
        Self::from_entries(parse(text, origin)?, origin)
    }

    /// Uses the given entries (checked like a file's: unique ids and digests, ids >= 1, names set).
    pub fn from_entries(entries: Vec<AgentEntry>, origin: &Path) -> Result<Self, AgentsFileError> {
        check_entries(&entries, origin)?;
        Ok(Self {
            path: None,
            state: RwLock::new(Loaded {
                entries,
                stamp: None,
            }),
        })
    }

    /// The file this was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.read_state().entries.len()
    }

    /// True when no agent is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(id, name)` of every agent, in file order.
    pub fn agents(&self) -> Vec<(u64, String)> {
        self.read_state()
            .entries
            .iter()
            .map(|e| (e.id, e.name.clone()))
            .collect()
    }

    /// `(id, name, config project)` of every agent that names a config project, in file order.
    pub fn config_projects(&self) -> Vec<(u64, String, ConfigProject)> {
        self.read_state()
            .entries
            .iter()
            .filter_map(|e| e.config_project.clone().map(|p| (e.id, e.name.clone(), p)))
            .collect()
    }

    /// Reads the file again. On error the previous entries stay in use. Returns the number of agents.
    /// In-memory instances have nothing to reload and return their count.
    pub fn reload(&self) -> Result<usize, AgentsFileError> {
        let Some(path) = &self.path else {
            return Ok(self.len());
        };
        let loaded = read_file(path)?;
        let count = loaded.entries.len();
        *self.write_state() = loaded;
        tracing::info!(path = %path.display(), agents = count, "reloaded agents file");
        Ok(count)
    }

    /// Reloads only if the file's modification time or size changed since the last load.
    /// Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, AgentsFileError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let now = FileStamp::of(path).map_err(|source| AgentsFileError::Read {
            path: path.clone(),
            source,
        })?;
        if self.read_state().stamp == Some(now) {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Creates `n` agents with ids `1..=n`, names `agent-<id>` and fresh random tokens: writes
    /// `<dir>/agents.yaml` (digests only) and `<dir>/agent-<id>.token` (the clear token, owner-only),
    /// replacing existing files. Creates `dir` if needed. Returns the agents with their tokens.
    pub fn generate(
        n: usize,
        dir: impl AsRef<Path>,
    ) -> Result<Vec<GeneratedAgent>, AgentsFileError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| AgentsFileError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let mut agents = Vec::with_capacity(n);
        let mut records = Vec::with_capacity(n);
        for id in 1..=(n as u64) {
            let token = generate_token();
            let name = format!("agent-{id}");
            let token_file = dir.join(format!("{name}.token"));
            records.push(AgentRecord {
                id,
                name: name.clone(),
                token_sha256: TokenDigest::of(&token).to_hex(),
                config_project: None,
            });
            agents.push(GeneratedAgent {
                id,
                name,
                token,
                token_file,
            });
        }
        for agent in &agents {
            write_atomic(
                &agent.token_file,
                format!("{}\n", agent.token).as_bytes(),
                true,
            )
            .map_err(|source| AgentsFileError::Write {
                path: agent.token_file.clone(),
                source,
            })?;
        }
        let path = dir.join(AGENTS_FILE_NAME);
        let yaml = serde_yaml::to_string(&AgentsDoc { agents: records }).map_err(|e| {
            AgentsFileError::Write {
                path: path.clone(),
                source: std::io::Error::other(e),
            }
        })?;
        let text = format!(
            "# Agents kas accepts: id, name and SHA-256 of the token (hex). Tokens are not stored here.\n{yaml}"
        );
        write_atomic(&path, text.as_bytes(), false).map_err(|source| AgentsFileError::Write {
            path: path.clone(),
            source,
        })?;
        tracing::info!(path = %path.display(), agents = n, "generated agents file and token files");
        Ok(agents)
    }

    /// Looks the token up. Every entry is compared, in constant time.
    fn find(&self, token: &str) -> Option<AgentIdentity> {
        let digest = TokenDigest::of(token);
        let state = self.read_state();
        let mut found: Option<&AgentEntry> = None;
        for entry in &state.entries {
            // No early exit: the scan takes the same time wherever (or whether) the token matches.
            if entry.token_sha256.ct_eq(&digest) {
                found = Some(entry);
            }
        }
        found.map(|e| AgentIdentity {
            agent_id: e.id,
            name: e.name.clone(),
            project: None,
        })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, Loaded> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl AgentAuthenticator for AgentsFile {
    fn authenticate(&self, token: &str, source: IpAddr) -> Result<AgentIdentity, AuthError> {
        precheck_token(token)?;
        match self.find(token) {
            Some(identity) => {
                tracing::debug!(agent_id = identity.agent_id, %source, "agent authenticated");
                Ok(identity)
            }
            None => {
                tracing::debug!(%source, "unknown agent token");
                Err(AuthError::Unauthenticated)
            }
        }
    }
}

fn read_file(path: &Path) -> Result<Loaded, AgentsFileError> {
    let (text, stamp) = read_with_stamp(path).map_err(|source| AgentsFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let entries = parse(&text, path)?;
    check_entries(&entries, path)?;
    Ok(Loaded { entries, stamp })
}

fn parse(text: &str, origin: &Path) -> Result<Vec<AgentEntry>, AgentsFileError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: AgentsDoc = parse_yaml(origin, text)?;
    doc.agents
        .into_iter()
        .map(|r| {
            let token_sha256 = TokenDigest::from_hex(&r.token_sha256).map_err(|source| {
                AgentsFileError::BadDigest {
                    path: origin.to_owned(),
                    id: r.id,
                    source,
                }
            })?;
            let base = origin.parent().unwrap_or(Path::new(""));
            let config_project = r
                .config_project
                .map(|p| check_config_project(p, r.id, base, origin))
                .transpose()?;
            Ok(AgentEntry {
                id: r.id,
                name: r.name,
                token_sha256,
                config_project,
            })
        })
        .collect()
}

/// Checks a config project and resolves its relative paths against `base`.
fn check_config_project(
    mut p: ConfigProject,
    id: u64,
    base: &Path,
    origin: &Path,
) -> Result<ConfigProject, AgentsFileError> {
    let bad = |reason: String| AgentsFileError::BadConfigProject {
        path: origin.to_owned(),
        id,
        reason,
    };
    if p.token_file.is_some() && p.header_file.is_some() {
        return Err(bad("give token_file or header_file, not both".into()));
    }
    if p.username.is_some() && p.token_file.is_none() {
        return Err(bad("username needs token_file".into()));
    }
    // The URL is checked without echoing credentials it may carry.
    let url = p.url.trim();
    if url.contains("://") {
        git_mirror::RepoUrl::parse_with_credentials(url).map_err(|e| bad(format!("url: {e}")))?;
    } else if url.is_empty() {
        return Err(bad("url must not be empty".into()));
    }
    for f in [&mut p.token_file, &mut p.header_file, &mut p.ca_file]
        .into_iter()
        .flatten()
    {
        if f.is_relative() && !base.as_os_str().is_empty() {
            *f = base.join(&*f);
        }
    }
    if !url.contains("://") && Path::new(url).is_relative() && !base.as_os_str().is_empty() {
        p.url = base.join(url).to_string_lossy().into_owned();
    }
    Ok(p)
}

fn check_entries(entries: &[AgentEntry], origin: &Path) -> Result<(), AgentsFileError> {
    let mut ids = HashSet::with_capacity(entries.len());
    let mut digests = std::collections::HashMap::with_capacity(entries.len());
    for (index, e) in entries.iter().enumerate() {
        let invalid = |reason| AgentsFileError::InvalidEntry {
            path: origin.to_owned(),
            index,
            reason,
        };
        if e.id == 0 {
            return Err(invalid("agent id must be >= 1"));
        }
        if e.name.trim().is_empty() {
            return Err(invalid("agent name must not be empty"));
        }
        if !ids.insert(e.id) {
            return Err(AgentsFileError::DuplicateId {
                path: origin.to_owned(),
                id: e.id,
            });
        }
        if let Some(first) = digests.insert(e.token_sha256, e.id) {
            return Err(AgentsFileError::DuplicateToken {
                path: origin.to_owned(),
                first,
                second: e.id,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::tests::ct_compares;
    use std::net::Ipv4Addr;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn config_projects_are_parsed_checked_and_resolved() -> TestResult {
        let digest = TokenDigest::of("t1").to_hex();
        let yaml = format!(
            "agents:\n- id: 1\n  name: a\n  token_sha256: {digest}\n  config_project: {{url: 'https://gitlab.example.com/g/c.git', token_file: c.token}}\n"
        );
        let file = AgentsFile::from_yaml_str(&yaml, Path::new("/etc/kas/agents.yaml"))?;
        let projects = file.config_projects();
        assert_eq!(projects.len(), 1);
        assert_eq!(
            projects[0].2.token_file.as_deref(),
            Some(Path::new("/etc/kas/c.token"))
        );
        for (bad, why) in [
            (
                "{url: 'https://h/g.git', token_file: a, header_file: b}",
                "not both",
            ),
            (
                "{url: 'https://h/g.git', username: u}",
                "username needs token_file",
            ),
            ("{url: ''}", "must not be empty"),
            ("{url: 'ftp://user:secretpw@h/g.git'}", "url"),
            ("{url: 'https://h/g.git', tokenfile: a}", "unknown field"),
        ] {
            let yaml = format!(
                "agents:\n- id: 1\n  name: a\n  token_sha256: {digest}\n  config_project: {bad}\n"
            );
            let err = AgentsFile::from_yaml_str(&yaml, Path::new("agents.yaml"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("secretpw"), "{err}");
        }
        Ok(())
    }

    const SRC: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn yaml_for(entries: &[(u64, &str, &str)]) -> String {
        let mut s = String::from("agents:\n");
        for (id, name, token) in entries {
            s.push_str(&format!(
                "  - id: {id}\n    name: {name}\n    token_sha256: {}\n",
                TokenDigest::of(token).to_hex()
            ));
        }
        s
    }

    #[test]
    fn authenticates_known_tokens_only() -> TestResult {
        let f = AgentsFile::from_yaml_str(
            &yaml_for(&[(1, "one", "tok-1"), (7, "seven", "tok-7")]),
            Path::new("agents.yaml"),
        )?;
        let id = f.authenticate("tok-7", SRC)?;
        assert_eq!((id.agent_id, id.name.as_str()), (7, "seven"));
        assert!(matches!(
            f.authenticate("tok-2", SRC),
            Err(AuthError::Unauthenticated)
        ));
        assert!(matches!(
            f.authenticate("", SRC),
            Err(AuthError::Unauthenticated)
        ));
        let huge = "x".repeat(crate::auth::token::MAX_TOKEN_LEN + 1);
        assert!(matches!(
            f.authenticate(&huge, SRC),
            Err(AuthError::Unauthenticated)
        ));
        Ok(())
    }

    #[test]
    fn lookup_compares_every_entry_in_constant_time() -> TestResult {
        let f = AgentsFile::from_yaml_str(
            &yaml_for(&[(1, "a", "t1"), (2, "b", "t2"), (3, "c", "t3")]),
            Path::new("agents.yaml"),
        )?;
        // A match on the first entry still compares all three, and so does a miss.
        for token in ["t1", "nope"] {
            let before = ct_compares();
            let _ = f.authenticate(token, SRC);
            assert_eq!(ct_compares() - before, 3, "token {token}");
        }
        Ok(())
    }

    #[test]
    fn broken_files_give_typed_errors() {
        let d1 = TokenDigest::of("a").to_hex();
        let d2 = TokenDigest::of("b").to_hex();
        let cases: Vec<(String, &str)> = vec![
            ("agents: [\n".into(), "yaml"),
            ("agents:\n  - id: 1\n    nam: x\n".into(), "yaml"),
            (
                format!(
                    "agents:\n  - {{id: 1, name: a, token_sha256: {d1}}}\n  - {{id: 1, name: b, token_sha256: {d2}}}\n"
                ),
                "dup-id",
            ),
            (
                format!(
                    "agents:\n  - {{id: 1, name: a, token_sha256: {d1}}}\n  - {{id: 2, name: b, token_sha256: {d1}}}\n"
                ),
                "dup-token",
            ),
            (
                "agents:\n  - {id: 1, name: a, token_sha256: xyz}\n".into(),
                "digest",
            ),
            (
                format!("agents:\n  - {{id: 0, name: a, token_sha256: {d1}}}\n"),
                "entry",
            ),
            (
                format!("agents:\n  - {{id: 3, name: '', token_sha256: {d1}}}\n"),
                "entry",
            ),
        ];
        for (text, kind) in cases {
            let r = AgentsFile::from_yaml_str(&text, Path::new("a.yaml"));
            let ok = match (&r, kind) {
                (Err(AgentsFileError::Yaml(e)), "yaml") => e.line.is_some(),
                (Err(AgentsFileError::DuplicateId { id: 1, .. }), "dup-id") => true,
                (
                    Err(AgentsFileError::DuplicateToken {
                        first: 1,
                        second: 2,
                        ..
                    }),
                    "dup-token",
                ) => true,
                (Err(AgentsFileError::BadDigest { id: 1, .. }), "digest") => true,
                (Err(AgentsFileError::InvalidEntry { index: 0, .. }), "entry") => true,
                _ => false,
            };
            assert!(ok, "{kind}: {text:?} gave {r:?}");
        }
    }

    #[test]
    fn empty_file_has_no_agents() -> TestResult {
        let f = AgentsFile::from_yaml_str("", Path::new("a.yaml"))?;
        assert!(f.is_empty());
        let f = AgentsFile::from_yaml_str("agents: []\n", Path::new("a.yaml"))?;
        assert!(f.is_empty());
        Ok(())
    }

    #[test]
    fn generate_writes_hashes_and_token_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let agents = AgentsFile::generate(3, dir.path())?;
        assert_eq!(agents.len(), 3);
        let yaml = std::fs::read_to_string(dir.path().join(AGENTS_FILE_NAME))?;
        for a in &agents {
            assert!(!yaml.contains(&a.token), "clear token in agents.yaml");
            assert!(yaml.contains(&TokenDigest::of(&a.token).to_hex()));
            assert!(!format!("{a:?}").contains(&a.token), "token in Debug");
            let from_file = std::fs::read_to_string(&a.token_file)?;
            assert_eq!(from_file.trim(), a.token);
        }
        let f = AgentsFile::load(dir.path().join(AGENTS_FILE_NAME))?;
        for a in &agents {
            let token = std::fs::read_to_string(&a.token_file)?;
            let id = f.authenticate(token.trim(), SRC)?;
            assert_eq!((id.agent_id, id.name.as_str()), (a.id, a.name.as_str()));
        }
        assert_eq!(
            f.agents(),
            vec![
                (1, "agent-1".into()),
                (2, "agent-2".into()),
                (3, "agent-3".into())
            ]
        );
        Ok(())
    }

    #[test]
    fn reload_picks_up_changes_and_keeps_old_entries_on_error() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agents.yaml");
        std::fs::write(&path, yaml_for(&[(1, "one", "old")]))?;
        let f = AgentsFile::load(&path)?;
        assert!(!f.reload_if_changed()?, "unchanged file reloaded");
        std::fs::write(&path, yaml_for(&[(1, "one", "new"), (2, "two", "second")]))?;
        assert!(f.reload_if_changed()?);
        assert!(matches!(
            f.authenticate("old", SRC),
            Err(AuthError::Unauthenticated)
        ));
        assert_eq!(f.authenticate("second", SRC)?.agent_id, 2);
        std::fs::write(&path, "agents: [oops\n")?;
        assert!(matches!(f.reload(), Err(AgentsFileError::Yaml(_))));
        assert_eq!(
            f.authenticate("new", SRC)?.agent_id,
            1,
            "old entries dropped on error"
        );
        Ok(())
    }
}
