//! The agents file: agent ids, names and token digests, in YAML.
//!
//! ```yaml
//! agents:
//!   - id: 1
//!     name: agent-1
//!     tokens:                       # one or more active tokens (two during a rotation)
//!       - id: 3f9c0a12              # the token's id: shown by `kas token list`, named by `revoke`
//!         sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//!         created: 2026-12-03T15:40:00Z   # optional
//!         description: rotation 2026-12   # optional
//!     # token_sha256: 5e88…         # the older one-token form, still read (token id `default`)
//!     config_project:               # optional: where .gitlab/agents/agent-1/config.yaml lives
//!       url: https://gitlab.example.com/group/config.git   # also git://…, a local path
//!       token_file: config.token    # optional: basic auth (username `oauth2` unless given)
//!       # header_file: auth-header  # or: a whole `Authorization` header value, re-read per fetch
//!       # ca_file: ca.pem           # optional: CA certificates for https
//!       # project_id: 7             # optional: GitLab's id of the project (access control)
//! ```
//!
//! Authentication hashes the presented token and looks the digest up in an index built when the file
//! is loaded (digest → agent), so a handshake costs the same with ten agents or a hundred thousand (a
//! linear scan made a reconnect storm of N agents quadratic); the digest found is then compared with
//! the presented one in constant time ([`TokenDigest::ct_eq`]) before it counts. The index is keyed
//! by SHA-256 digests, not tokens: what probing the table might reveal through timing is about the
//! digest of a token the caller already holds, which says nothing usable about a stored token.
//! [`AgentsFile::generate`] makes the embedded default: `agents.yaml` plus `agent-N.token` files with
//! the clear tokens, readable by their owner only.
//!
//! **Token lifecycle** (`kas token create|list|revoke`): [`AgentsFile::create_token`],
//! [`AgentsFile::list_tokens`] and [`AgentsFile::revoke_token`] edit the file under an exclusive lock
//! (`<file>.lock`) and replace it atomically; a new token is returned once and only its digest is
//! stored. A running kas re-reads the file when it changes and closes the connections whose token is
//! no longer listed ([`crate::connection_tokens`]). Edits rewrite the file without its comments.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

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
    /// The agent's active tokens (digests unique in the file, ids unique in the entry). None: the
    /// agent exists but cannot connect.
    pub tokens: Vec<AgentToken>,
    /// The repository holding the agent's configuration file, if any.
    pub config_project: Option<ConfigProject>,
}

/// One active token of an agent: its id and digest (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentToken {
    /// The token's id (1 to 64 of `A-Za-z0-9._-`; `default` for the one-token form).
    pub id: String,
    /// SHA-256 of the token.
    pub sha256: TokenDigest,
    /// When it was created (RFC 3339), if recorded.
    pub created: Option<String>,
    /// What it is for, if noted.
    pub description: Option<String>,
}

/// The id the older one-token form (`token_sha256:`) gives its token.
pub const DEFAULT_TOKEN_ID: &str = "default";

/// A token as `kas token list` shows it: metadata only, no token material (not even the digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// The agent's id.
    pub agent_id: u64,
    /// The agent's name.
    pub agent_name: String,
    /// The token's id.
    pub token_id: String,
    /// When it was created (RFC 3339), if recorded.
    pub created: Option<String>,
    /// What it is for, if noted.
    pub description: Option<String>,
}

/// A token just created: the clear token, shown once. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// What `kas token list` will show of it.
    pub info: TokenInfo,
    /// The clear token (not stored anywhere by kas).
    pub token: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .field("token", &"<redacted>")
            .finish()
    }
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

#[derive(Debug, Default, Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tokens: Vec<TokenRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_project: Option<ConfigProject>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    id: String,
    sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
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
    /// One agent lists the same token id twice.
    #[error("agents file {}: agent {id}: duplicate token id {token_id:?}", path.display())]
    DuplicateTokenId {
        /// The file.
        path: PathBuf,
        /// The agent id.
        id: u64,
        /// The token id.
        token_id: String,
    },
    /// A token id is empty, too long, or has characters other than `A-Za-z0-9._-`.
    #[error("agents file {}: agent {id}: bad token id {token_id:?} (1 to 64 of A-Za-z0-9._-)", path.display())]
    BadTokenId {
        /// The file.
        path: PathBuf,
        /// The agent id.
        id: u64,
        /// The token id.
        token_id: String,
    },
    /// An edit names an agent the file does not list.
    #[error("agents file {}: no agent {id} (give --name to add it)", path.display())]
    NoSuchAgent {
        /// The file.
        path: PathBuf,
        /// The agent id.
        id: u64,
    },
    /// A revocation names a token the agent does not have.
    #[error("agents file {}: agent {id} has no token {token_id:?}", path.display())]
    NoSuchToken {
        /// The file.
        path: PathBuf,
        /// The agent id.
        id: u64,
        /// The token id.
        token_id: String,
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
    /// Every token's digest → (index of its entry, index of the token in the entry).
    by_digest: HashMap<TokenDigest, (usize, usize)>,
    stamp: Option<FileStamp>,
}

impl Loaded {
    /// Indexes `entries` (checked: ids and digests are unique).
    fn new(entries: Vec<AgentEntry>, stamp: Option<FileStamp>) -> Self {
        let by_digest = entries
            .iter()
            .enumerate()
            .flat_map(|(i, e)| {
                e.tokens
                    .iter()
                    .enumerate()
                    .map(move |(j, t)| (t.sha256, (i, j)))
            })
            .collect();
        Self {
            entries,
            by_digest,
            stamp,
        }
    }

    /// The entry and token whose digest is `digest`: the index finds the candidate, a constant-time
    /// comparison confirms it.
    fn lookup(&self, digest: &TokenDigest) -> Option<(&AgentEntry, &AgentToken)> {
        let &(i, j) = self.by_digest.get(digest)?;
        let entry = &self.entries[i];
        let token = &entry.tokens[j];
        token.sha256.ct_eq(digest).then_some((entry, token))
    }
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
            state: RwLock::new(Loaded::new(entries, None)),
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
                token_sha256: None,
                tokens: vec![TokenRecord {
                    id: new_token_id(&[]),
                    sha256: TokenDigest::of(&token).to_hex(),
                    created: Some(crate::rfc3339::format(SystemTime::now())),
                    description: None,
                }],
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
        let text = render(&AgentsDoc { agents: records }, &path)?;
        write_atomic(&path, text.as_bytes(), false).map_err(|source| AgentsFileError::Write {
            path: path.clone(),
            source,
        })?;
        tracing::info!(path = %path.display(), agents = n, "generated agents file and token files");
        Ok(agents)
    }

    /// Adds a fresh random token to agent `agent_id` of the agents file at `path`, under the file's
    /// lock, replacing the file atomically; only the token's digest is written. With
    /// `new_agent_name`, an agent the file does not list is added (and a missing file created).
    /// Returns the clear token: the only time it is shown.
    pub fn create_token(
        path: &Path,
        agent_id: u64,
        new_agent_name: Option<&str>,
        description: Option<&str>,
        now: SystemTime,
    ) -> Result<NewToken, AgentsFileError> {
        edit(path, new_agent_name.is_some(), |doc| {
            let index = match doc.agents.iter().position(|a| a.id == agent_id) {
                Some(i) => i,
                None => {
                    let Some(name) = new_agent_name else {
                        return Err(AgentsFileError::NoSuchAgent {
                            path: path.to_owned(),
                            id: agent_id,
                        });
                    };
                    doc.agents.push(AgentRecord {
                        id: agent_id,
                        name: name.to_owned(),
                        token_sha256: None,
                        tokens: Vec::new(),
                        config_project: None,
                    });
                    doc.agents.len() - 1
                }
            };
            let agent = &mut doc.agents[index];
            let taken: Vec<&str> = agent.tokens.iter().map(|t| t.id.as_str()).collect();
            let token_id = new_token_id(&taken);
            let token = generate_token();
            let created = crate::rfc3339::format(now);
            agent.tokens.push(TokenRecord {
                id: token_id.clone(),
                sha256: TokenDigest::of(&token).to_hex(),
                created: Some(created.clone()),
                description: description.map(str::to_owned),
            });
            Ok(NewToken {
                info: TokenInfo {
                    agent_id,
                    agent_name: agent.name.clone(),
                    token_id,
                    created: Some(created),
                    description: description.map(str::to_owned),
                },
                token,
            })
        })
    }

    /// Every token of the agents file at `path` (metadata only), in file order.
    pub fn list_tokens(path: &Path) -> Result<Vec<TokenInfo>, AgentsFileError> {
        let loaded = read_file(path)?;
        Ok(loaded
            .entries
            .iter()
            .flat_map(|e| e.tokens.iter().map(|t| token_info(e, t)))
            .collect())
    }

    /// Removes token `token_id` of agent `agent_id` from the agents file at `path` (under its lock,
    /// replaced atomically). A running kas closes the connections it authenticated once it re-read
    /// the file. Returns what the token was.
    pub fn revoke_token(
        path: &Path,
        agent_id: u64,
        token_id: &str,
    ) -> Result<TokenInfo, AgentsFileError> {
        edit(path, false, |doc| {
            let no_token = || AgentsFileError::NoSuchToken {
                path: path.to_owned(),
                id: agent_id,
                token_id: token_id.to_owned(),
            };
            let agent = doc
                .agents
                .iter_mut()
                .find(|a| a.id == agent_id)
                .ok_or_else(|| AgentsFileError::NoSuchAgent {
                    path: path.to_owned(),
                    id: agent_id,
                })?;
            let (created, description) =
                if token_id == DEFAULT_TOKEN_ID && agent.token_sha256.is_some() {
                    agent.token_sha256 = None;
                    (None, None)
                } else {
                    let i = agent
                        .tokens
                        .iter()
                        .position(|t| t.id == token_id)
                        .ok_or_else(no_token)?;
                    let t = agent.tokens.remove(i);
                    (t.created, t.description)
                };
            Ok(TokenInfo {
                agent_id,
                agent_name: agent.name.clone(),
                token_id: token_id.to_owned(),
                created,
                description,
            })
        })
    }

    /// The id of the active token with this digest, if agent `agent_id` has one: whether a
    /// connection that token authenticated may stay open.
    pub fn token_id(&self, agent_id: u64, digest: &TokenDigest) -> Option<String> {
        let state = self.read_state();
        let (entry, token) = state.lookup(digest)?;
        (entry.id == agent_id).then(|| token.id.clone())
    }

    /// Looks the token up by its digest (index, then one constant-time comparison).
    fn find(&self, token: &str) -> Option<AgentIdentity> {
        let digest = TokenDigest::of(token);
        let state = self.read_state();
        state.lookup(&digest).map(|(e, _)| AgentIdentity {
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
    Ok(Loaded::new(entries, stamp))
}

fn parse(text: &str, origin: &Path) -> Result<Vec<AgentEntry>, AgentsFileError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: AgentsDoc = parse_yaml(origin, text)?;
    doc.agents
        .into_iter()
        .map(|r| {
            let digest = |hex: &str| {
                TokenDigest::from_hex(hex).map_err(|source| AgentsFileError::BadDigest {
                    path: origin.to_owned(),
                    id: r.id,
                    source,
                })
            };
            let mut tokens = Vec::with_capacity(r.tokens.len() + 1);
            if let Some(hex) = &r.token_sha256 {
                tokens.push(AgentToken {
                    id: DEFAULT_TOKEN_ID.to_owned(),
                    sha256: digest(hex)?,
                    created: None,
                    description: None,
                });
            }
            for t in &r.tokens {
                tokens.push(AgentToken {
                    id: t.id.clone(),
                    sha256: digest(&t.sha256)?,
                    created: t.created.clone(),
                    description: t.description.clone(),
                });
            }
            let base = origin.parent().unwrap_or(Path::new(""));
            let config_project = r
                .config_project
                .map(|p| check_config_project(p, r.id, base, origin))
                .transpose()?;
            Ok(AgentEntry {
                id: r.id,
                name: r.name,
                tokens,
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
        let mut token_ids = HashSet::with_capacity(e.tokens.len());
        for t in &e.tokens {
            if !valid_token_id(&t.id) {
                return Err(AgentsFileError::BadTokenId {
                    path: origin.to_owned(),
                    id: e.id,
                    token_id: t.id.clone(),
                });
            }
            if !token_ids.insert(t.id.as_str()) {
                return Err(AgentsFileError::DuplicateTokenId {
                    path: origin.to_owned(),
                    id: e.id,
                    token_id: t.id.clone(),
                });
            }
            if let Some(first) = digests.insert(t.sha256, e.id) {
                return Err(AgentsFileError::DuplicateToken {
                    path: origin.to_owned(),
                    first,
                    second: e.id,
                });
            }
        }
    }
    Ok(())
}

fn token_info(entry: &AgentEntry, token: &AgentToken) -> TokenInfo {
    TokenInfo {
        agent_id: entry.id,
        agent_name: entry.name.clone(),
        token_id: token.id.clone(),
        created: token.created.clone(),
        description: token.description.clone(),
    }
}

/// Runs `change` on the agents file at `path` under an exclusive lock on `<path>.lock`: the file
/// is checked as it is (a broken file is not edited), changed, checked again and replaced
/// atomically. A missing file counts as empty when `may_create`.
fn edit<T>(
    path: &Path,
    may_create: bool,
    change: impl FnOnce(&mut AgentsDoc) -> Result<T, AgentsFileError>,
) -> Result<T, AgentsFileError> {
    let write_err = |p: &Path| {
        let p = p.to_owned();
        move |source| AgentsFileError::Write { path: p, source }
    };
    let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let lock_path = path.with_file_name(lock_name);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(write_err(&lock_path))?;
    // Released when `lock` is closed (dropped), after the rename. Not taken on non-Unix systems.
    #[cfg(unix)]
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| write_err(&lock_path)(std::io::Error::from(e)))?;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => String::new(),
        Err(source) => {
            return Err(AgentsFileError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    check_entries(&parse(&text, path)?, path)?;
    let mut doc: AgentsDoc = if text.trim().is_empty() {
        AgentsDoc::default()
    } else {
        parse_yaml(path, &text)?
    };
    let out = change(&mut doc)?;
    let new_text = render(&doc, path)?;
    check_entries(&parse(&new_text, path)?, path)?;
    write_atomic(path, new_text.as_bytes(), false).map_err(write_err(path))?;
    drop(lock);
    Ok(out)
}

/// 1 to 64 characters of `A-Za-z0-9._-`.
fn valid_token_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A random 8-hex-digit token id not in `taken`.
fn new_token_id(taken: &[&str]) -> String {
    loop {
        let id = format!("{:08x}", rand::random::<u32>());
        if !taken.contains(&id.as_str()) && id != DEFAULT_TOKEN_ID {
            return id;
        }
    }
}

/// The file's text for `doc`, with its header comment.
fn render(doc: &AgentsDoc, path: &Path) -> Result<String, AgentsFileError> {
    let yaml = serde_yaml::to_string(doc).map_err(|e| AgentsFileError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    Ok(format!(
        "# Agents kas accepts: id, name and the SHA-256 (hex) of each active token. Tokens are not stored here.\n\
         # Edited by `kas token create|list|revoke` (comments are not kept).\n{yaml}"
    ))
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
    fn lookup_is_indexed_and_confirmed_in_constant_time() -> TestResult {
        // 10,000 agents: a linear scan would compare 10,000 digests per lookup.
        let tokens: Vec<String> = (1..=10_000).map(|i| format!("tok-{i}")).collect();
        let entries: Vec<(u64, String, &str)> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, format!("agent-{}", i + 1), t.as_str()))
            .collect();
        let refs: Vec<(u64, &str, &str)> = entries
            .iter()
            .map(|(id, n, t)| (*id, n.as_str(), *t))
            .collect();
        let f = AgentsFile::from_yaml_str(&yaml_for(&refs), Path::new("agents.yaml"))?;
        // First, middle and last entry: the right agent, with exactly one constant-time comparison.
        for id in [1u64, 5_000, 10_000] {
            let before = ct_compares();
            let identity = f.authenticate(&format!("tok-{id}"), SRC)?;
            assert_eq!(ct_compares() - before, 1, "agent {id}");
            assert_eq!(identity.agent_id, id);
            assert_eq!(identity.name, format!("agent-{id}"));
        }
        // An unknown token finds no candidate to compare.
        let before = ct_compares();
        assert!(matches!(
            f.authenticate("nope", SRC),
            Err(AuthError::Unauthenticated)
        ));
        assert_eq!(ct_compares() - before, 0);
        // A connection's token check: the digest must belong to that agent.
        let d = TokenDigest::of("tok-42");
        assert_eq!(f.token_id(42, &d).as_deref(), Some(DEFAULT_TOKEN_ID));
        assert_eq!(f.token_id(43, &d), None);
        assert_eq!(f.token_id(42, &TokenDigest::of("tok-43")), None);
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

    #[test]
    fn an_agent_may_have_several_tokens_and_each_is_revocable() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agents.yaml");
        std::fs::write(&path, yaml_for(&[(1, "one", "legacy-token")]))?;
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000);
        let second = AgentsFile::create_token(&path, 1, None, Some("rotation"), now)?;
        assert!(
            !format!("{second:?}").contains(&second.token),
            "token in Debug"
        );
        let text = std::fs::read_to_string(&path)?;
        assert!(!text.contains(&second.token), "clear token stored");
        assert!(text.contains(&TokenDigest::of(&second.token).to_hex()));

        let f = AgentsFile::load(&path)?;
        assert_eq!(f.authenticate("legacy-token", SRC)?.agent_id, 1);
        assert_eq!(f.authenticate(&second.token, SRC)?.agent_id, 1);
        assert_eq!(
            f.token_id(1, &TokenDigest::of(&second.token)),
            Some(second.info.token_id.clone())
        );
        assert_eq!(
            f.token_id(1, &TokenDigest::of("legacy-token")).as_deref(),
            Some(DEFAULT_TOKEN_ID)
        );
        assert_eq!(f.token_id(2, &TokenDigest::of(&second.token)), None);

        let list = AgentsFile::list_tokens(&path)?;
        assert_eq!(list.len(), 2);
        assert_eq!(list[1], second.info);
        assert_eq!(list[1].created.as_deref(), Some("2025-11-24T16:00:00Z"));
        let listed = serde_json::to_string(&list)?;
        assert!(
            !listed.contains(&second.token)
                && !listed.contains(&TokenDigest::of(&second.token).to_hex()[..16])
        );

        let revoked = AgentsFile::revoke_token(&path, 1, DEFAULT_TOKEN_ID)?;
        assert_eq!(revoked.token_id, DEFAULT_TOKEN_ID);
        assert!(f.reload_if_changed()?);
        assert!(matches!(
            f.authenticate("legacy-token", SRC),
            Err(AuthError::Unauthenticated)
        ));
        assert_eq!(f.token_id(1, &TokenDigest::of("legacy-token")), None);
        assert_eq!(f.authenticate(&second.token, SRC)?.agent_id, 1);

        assert!(matches!(
            AgentsFile::revoke_token(&path, 1, "nope"),
            Err(AgentsFileError::NoSuchToken { id: 1, .. })
        ));
        assert!(matches!(
            AgentsFile::revoke_token(&path, 9, &second.info.token_id),
            Err(AgentsFileError::NoSuchAgent { id: 9, .. })
        ));
        assert!(matches!(
            AgentsFile::create_token(&path, 9, None, None, now),
            Err(AgentsFileError::NoSuchAgent { id: 9, .. })
        ));
        // A new agent with --name; then the last token of agent 1 goes: it stays listed, unusable.
        let nine = AgentsFile::create_token(&path, 9, Some("nine"), None, now)?;
        AgentsFile::revoke_token(&path, 1, &second.info.token_id)?;
        assert!(f.reload_if_changed()?);
        assert_eq!(f.agents(), vec![(1, "one".into()), (9, "nine".into())]);
        assert!(f.authenticate(&second.token, SRC).is_err());
        assert_eq!(f.authenticate(&nine.token, SRC)?.agent_id, 9);
        Ok(())
    }

    #[test]
    fn editing_creates_a_missing_file_only_for_a_new_agent_and_never_a_broken_one() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agents.yaml");
        assert!(matches!(
            AgentsFile::revoke_token(&path, 1, "x"),
            Err(AgentsFileError::Read { .. })
        ));
        let t = AgentsFile::create_token(&path, 3, Some("three"), None, SystemTime::now())?;
        assert_eq!(
            AgentsFile::load(&path)?
                .authenticate(&t.token, SRC)?
                .agent_id,
            3
        );
        std::fs::write(&path, "agents: [oops\n")?;
        assert!(matches!(
            AgentsFile::create_token(&path, 3, None, None, SystemTime::now()),
            Err(AgentsFileError::Yaml(_))
        ));
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "agents: [oops\n",
            "broken file edited"
        );
        Ok(())
    }

    #[test]
    fn token_ids_are_checked() {
        let d1 = TokenDigest::of("a").to_hex();
        let d2 = TokenDigest::of("b").to_hex();
        for (tokens, want) in [
            (
                format!("[{{id: x, sha256: {d1}}}, {{id: x, sha256: {d2}}}]"),
                "duplicate token id",
            ),
            (format!("[{{id: 'a b', sha256: {d1}}}]"), "bad token id"),
            (format!("[{{id: '', sha256: {d1}}}]"), "bad token id"),
            (
                format!("[{{id: x, sha256: {d1}}}, {{id: y, sha256: {d1}}}]"),
                "same token_sha256",
            ),
            (
                format!("[{{id: x, sha256: {d1}, secret: 1}}]"),
                "unknown field",
            ),
        ] {
            let yaml = format!("agents:\n- {{id: 1, name: a, tokens: {tokens}}}\n");
            let err = AgentsFile::from_yaml_str(&yaml, Path::new("a.yaml"))
                .expect_err(&tokens)
                .to_string();
            assert!(err.contains(want), "{tokens}: {err}");
        }
    }

    #[test]
    fn concurrent_edits_lose_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agents.yaml");
        std::fs::write(&path, yaml_for(&[(1, "one", "first")]))?;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    AgentsFile::create_token(&path, 1, None, None, SystemTime::now())
                })
            })
            .collect();
        let mut tokens = Vec::new();
        for t in threads {
            tokens.push(t.join().map_err(|_| "thread panicked")??.token);
        }
        assert_eq!(AgentsFile::list_tokens(&path)?.len(), 9);
        let f = AgentsFile::load(&path)?;
        for t in &tokens {
            assert_eq!(f.authenticate(t, SRC)?.agent_id, 1);
        }
        Ok(())
    }
}
