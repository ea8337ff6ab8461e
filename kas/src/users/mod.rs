//! Users of kas's HTTP API and the agents each may reach.
//!
//! Requests carry `Authorization: Bearer <kind>:<agent-id>:<token>`, as with GitLab's kas Kubernetes
//! proxy: `kind` says what the token is (`pat`: personal access token, `ci`: CI job token, `session`),
//! `agent-id` selects the agent the request is for, and `token` authenticates the user. [`parse_bearer`]
//! splits the header; [`UsersFile::authorize`] decides, telling an unknown token (401,
//! [`UserAuthError::Unauthenticated`]) from a known user asking for an agent they may not reach (403,
//! [`UserAuthError::Forbidden`]).
//!
//! With the embedded default, a users file lists token digests (never tokens) and allowed agents:
//!
//! ```yaml
//! users:
//!   - name: alice
//!     token_sha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
//!     agents: [1, 2]        # or "*" for every agent
//!     kinds: [pat]          # optional: token kinds accepted (default: any)
//! ```
//!
//! `agents` makes the user a kas *operator* of those agents: requests act as the agent, whatever the
//! agent's configuration says. For deployments without GitLab the file can also say who a token is in
//! GitLab's terms; such requests are decided by the agent's configuration (`ci_access`,
//! `user_access`, [`crate::access`]) and act as the identity it grants:
//!
//! ```yaml
//! users:
//!   - name: dev                       # a person: user_access decides (pat and session tokens)
//!     token_sha256: …
//!     user_id: 12                     # optional (default 0); username: the name unless given
//!     projects: [{id: 5, path: group/app, role: developer}]
//!     groups: [{id: 3, path: group, role: maintainer}]
//!   - name: deploy-job                # a CI job token: ci_access decides (ci tokens)
//!     token_sha256: …
//!     kinds: [ci]
//!     ci_job:
//!       id: 42
//!       pipeline_id: 9
//!       user: dev                     # the user the job runs for
//!       project: {id: 5, path: group/app}
//!       groups: [{id: 3, path: group}]          # ancestor groups, closest first
//!       environment: {name: production, slug: production, tier: production}   # optional
//!       protected: true               # the job's ref is protected (default false)
//! ```
//!
//! A request of a listed operator acts as the agent; otherwise a `ci` token with `ci_job` is that CI
//! job, any other token of a user with `projects` or `groups` is that user; anything else is 403.

pub mod gate;

pub use gate::{GateError, UserGate};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::auth::files::{FileStamp, read_with_stamp, write_atomic};
use crate::auth::token::{DigestParseError, MAX_TOKEN_LEN, TokenDigest, generate_token};
use crate::config::{YamlError, parse_yaml};

/// File name of the users file in a state directory.
pub const USERS_FILE_NAME: &str = "users.yaml";

/// Name of the user [`UsersFile::generate_demo`] creates.
pub const DEMO_USER: &str = "demo";

/// What kind of token a bearer value carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A personal access token (`pat`).
    Pat,
    /// A CI job token (`ci`).
    Ci,
    /// A web session (`session`).
    Session,
}

impl TokenKind {
    /// Every kind.
    pub const ALL: [TokenKind; 3] = [TokenKind::Pat, TokenKind::Ci, TokenKind::Session];

    /// The kind as written in a bearer value.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Pat => "pat",
            TokenKind::Ci => "ci",
            TokenKind::Session => "session",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenKind {
    type Err = UserAuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TokenKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(UserAuthError::UnknownKind)
    }
}

/// The agents a user may reach: every agent (`"*"` in YAML) or a list of ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedAgents {
    /// Every agent.
    All,
    /// Only these agent ids.
    Only(BTreeSet<u64>),
}

impl AllowedAgents {
    /// Whether `agent_id` may be reached.
    pub fn allows(&self, agent_id: u64) -> bool {
        match self {
            AllowedAgents::All => true,
            AllowedAgents::Only(ids) => ids.contains(&agent_id),
        }
    }
}

impl Serialize for AllowedAgents {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AllowedAgents::All => s.serialize_str("*"),
            AllowedAgents::Only(ids) => s.collect_seq(ids),
        }
    }
}

impl<'de> Deserialize<'de> for AllowedAgents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AllowedAgents;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"*\" or a list of agent ids")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "*" {
                    Ok(AllowedAgents::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut ids = BTreeSet::new();
                while let Some(id) = seq.next_element::<u64>()? {
                    ids.insert(id);
                }
                Ok(AllowedAgents::Only(ids))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Who a request comes from, as kas authenticated it: what the authoriser ([`crate::access`])
/// decides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A kas operator of the agent (the users file's `agents`): acts as the agent, needing no grant
    /// of the agent's configuration.
    Operator,
    /// A GitLab user or CI job: the agent's configuration (`ci_access`, `user_access`) decides.
    Gitlab(access_control::Requester),
}

/// A user authorised for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    /// The user's name from the users file.
    pub name: String,
    /// The kind of token presented.
    pub kind: TokenKind,
    /// The agent the request is for (allowed).
    pub agent_id: u64,
    /// Who they are, for the authoriser.
    pub principal: Principal,
}

/// A user authenticated by token, with the agents they may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGrant {
    /// The user's name.
    pub name: String,
    /// The agents they may reach.
    pub agents: AllowedAgents,
}

/// Why an HTTP API request is not authorised. Messages never contain any part of the credentials:
/// a client that swaps the fields (`<token>:1:pat`) must not find its token in the 401 body or in
/// kas's log, so no field of the bearer is ever echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserAuthError {
    /// No `Bearer` credentials.
    #[error("expected Authorization: Bearer <kind>:<agent-id>:<token>")]
    MissingBearer,
    /// The credentials are not `<kind>:<agent-id>:<token>`.
    #[error("malformed bearer credentials: expected <kind>:<agent-id>:<token>")]
    Malformed,
    /// The kind is not `pat`, `ci` or `session`.
    #[error("unknown token kind (expected pat, ci or session)")]
    UnknownKind,
    /// The agent id is not a positive decimal integer.
    #[error("invalid agent id (expected a positive decimal integer)")]
    InvalidAgentId,
    /// The token is empty.
    #[error("empty token")]
    EmptyToken,
    /// No user has this token (of this kind).
    #[error("unauthenticated: invalid token")]
    Unauthenticated,
    /// The user may not reach this agent.
    #[error("user {user:?} may not access agent {agent_id}")]
    Forbidden {
        /// The user.
        user: String,
        /// The agent asked for.
        agent_id: u64,
    },
}

impl UserAuthError {
    /// The HTTP status to answer with: 403 for [`Forbidden`](UserAuthError::Forbidden), else 401.
    pub fn http_status(&self) -> u16 {
        match self {
            UserAuthError::Forbidden { .. } => 403,
            _ => 401,
        }
    }
}

/// Splits an `Authorization` header value `Bearer <kind>:<agent-id>:<token>` (scheme case-insensitive;
/// the token may itself contain `:`).
pub fn parse_bearer(header_value: &str) -> Result<(TokenKind, u64, &str), UserAuthError> {
    let value = header_value.trim();
    let (scheme, credentials) =
        crate::split::once(value, b' ').ok_or(UserAuthError::MissingBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(UserAuthError::MissingBearer);
    }
    let credentials = credentials.trim_start();
    // `kind:agent_id:token`; the token may hold further colons.
    let Some((kind, rest)) = crate::split::once(credentials, b':') else {
        return Err(UserAuthError::Malformed);
    };
    let Some((agent_id, token)) = crate::split::once(rest, b':') else {
        return Err(UserAuthError::Malformed);
    };
    let kind: TokenKind = kind.parse()?;
    let agent_id = parse_agent_id(agent_id)?;
    if token.is_empty() {
        return Err(UserAuthError::EmptyToken);
    }
    Ok((kind, agent_id, token))
}

fn parse_agent_id(s: &str) -> Result<u64, UserAuthError> {
    let invalid = || UserAuthError::InvalidAgentId;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match s.parse::<u64>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(id) => Ok(id),
    }
}

/// The bearer value for `kind`, `agent_id` and `token` (what goes after `Bearer `).
pub fn format_bearer(kind: TokenKind, agent_id: u64, token: &str) -> String {
    format!("{kind}:{agent_id}:{token}")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersDoc {
    #[serde(default)]
    users: Vec<UserRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRecord {
    name: String,
    token_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agents: Option<AllowedAgents>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kinds: Option<BTreeSet<TokenKind>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    projects: Vec<MembershipRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<MembershipRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ci_job: Option<CiJobRecord>,
}

/// A project or group: numeric id and full path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefRecord {
    id: u64,
    path: String,
}

/// The user's role in a project or group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipRecord {
    id: u64,
    path: String,
    role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentRecord {
    name: String,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    tier: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CiJobRecord {
    id: u64,
    #[serde(default)]
    pipeline_id: u64,
    user: String,
    project: RefRecord,
    #[serde(default)]
    groups: Vec<RefRecord>,
    #[serde(default)]
    environment: Option<EnvironmentRecord>,
    #[serde(default)]
    protected: bool,
}

struct UserEntry {
    name: String,
    digest: TokenDigest,
    agents: AllowedAgents,
    kinds: Option<BTreeSet<TokenKind>>,
    /// The GitLab user (with project and group roles), when `projects` or `groups` are given.
    gitlab_user: Option<access_control::User>,
    /// The CI job a `ci` token is.
    ci_job: Option<access_control::CiJob>,
}

fn role_named(name: &str) -> Option<access_control::Role> {
    access_control::Role::ALL
        .into_iter()
        .find(|r| r.as_str() == name)
}

fn gitlab_ref(r: RefRecord) -> access_control::GitlabRef {
    access_control::GitlabRef::new(r.id, r.path)
}

/// The GitLab identities of a record, or what is wrong with them.
fn gitlab_parts(
    r: &UserRecord,
) -> Result<(Option<access_control::User>, Option<access_control::CiJob>), String> {
    let memberships = |list: &[MembershipRecord]| {
        list.iter()
            .map(|m| {
                let role = role_named(&m.role).ok_or_else(|| {
                    format!(
                        "unknown role {:?} (guest, reporter, developer, maintainer, owner)",
                        m.role
                    )
                })?;
                Ok(access_control::Membership {
                    of: access_control::GitlabRef::new(m.id, m.path.clone()),
                    role,
                })
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let user = if r.projects.is_empty() && r.groups.is_empty() {
        None
    } else {
        Some(access_control::User {
            user_id: r.user_id.unwrap_or(0),
            username: r.username.clone().unwrap_or_else(|| r.name.clone()),
            access_type: access_control::AccessType::PersonalAccessToken,
            project_roles: memberships(&r.projects)?,
            group_roles: memberships(&r.groups)?,
        })
    };
    let job = r.ci_job.clone().map(|j| access_control::CiJob {
        job_id: j.id,
        pipeline_id: j.pipeline_id,
        username: j.user,
        project: gitlab_ref(j.project),
        ancestor_groups: j.groups.into_iter().map(gitlab_ref).collect(),
        environment: j.environment.map(|e| access_control::Environment {
            slug: e.slug.unwrap_or_else(|| e.name.clone()),
            tier: e.tier.unwrap_or_else(|| "other".to_owned()),
            name: e.name,
        }),
        ref_protected: j.protected,
    });
    Ok((user, job))
}

/// Problems with a users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// The file could not be read.
    #[error("cannot read users file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid YAML, or not the expected structure.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// Two users have the same name.
    #[error("users file {}: duplicate user {name:?}", path.display())]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// Two users have the same token digest.
    #[error("users file {}: users {first:?} and {second:?} have the same token_sha256", path.display())]
    DuplicateToken {
        /// The file.
        path: PathBuf,
        /// The first user.
        first: String,
        /// The second user.
        second: String,
    },
    /// A `token_sha256` is not 64 hex digits.
    #[error("users file {}: user {name:?}: bad token_sha256: {source}", path.display())]
    BadDigest {
        /// The file.
        path: PathBuf,
        /// The user.
        name: String,
        /// What is wrong.
        source: DigestParseError,
    },
    /// A user's GitLab identity (`projects`, `groups`, `ci_job`) is invalid.
    #[error("users file {}: user {name:?}: {reason}", path.display())]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// The user.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A user name is not 1-64 characters of `A-Z a-z 0-9 . _ -` (not starting with `.`).
    #[error("users file {}: invalid user name {name:?}", path.display())]
    InvalidName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
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

/// A user to create with [`UsersFile::generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The name (also used in the token file's name).
    pub name: String,
    /// The agents they may reach.
    pub agents: AllowedAgents,
    /// Token kinds accepted; `None` for any.
    pub kinds: Option<BTreeSet<TokenKind>>,
}

/// A user made by [`UsersFile::generate`]. `Debug` does not show the token.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedUser {
    /// The name.
    pub name: String,
    /// The clear token, as written to `token_file`.
    pub token: String,
    /// `<dir>/user-<name>.token`.
    pub token_file: PathBuf,
}

impl GeneratedUser {
    /// The bearer value to reach `agent_id` with this user's token as `kind`.
    pub fn bearer(&self, kind: TokenKind, agent_id: u64) -> String {
        format_bearer(kind, agent_id, &self.token)
    }
}

impl fmt::Debug for GeneratedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedUser")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("token_file", &self.token_file)
            .finish()
    }
}

struct Loaded {
    entries: Vec<UserEntry>,
    stamp: Option<FileStamp>,
}

/// Users authorised from a file (or from YAML in memory).
pub struct UsersFile {
    path: Option<PathBuf>,
    state: RwLock<Loaded>,
}

impl fmt::Debug for UsersFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsersFile")
            .field("path", &self.path)
            .field("users", &self.read_state().entries.len())
            .finish()
    }
}

impl UsersFile {
    /// Loads the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, UsersFileError> {
        let path = path.as_ref().to_owned();
        let loaded = read_file(&path)?;
        tracing::info!(path = %path.display(), users = loaded.entries.len(), "loaded users file");
        Ok(Self {
            path: Some(path),
            state: RwLock::new(loaded),
        })
    }

    /// Parses users-file YAML held in memory; `origin` names it in errors. Cannot be reloaded.
    pub fn from_yaml_str(text: &str, origin: &Path) -> Result<Self, UsersFileError> {
        Ok(Self {
            path: None,
            state: RwLock::new(Loaded {
                entries: parse(text, origin)?,
                stamp: None,
            }),
        })
    }

    /// The file this was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// User names, in file order.
    pub fn users(&self) -> Vec<String> {
        self.read_state()
            .entries
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// Reads the file again; on error the previous users stay in use. Returns the number of users.
    pub fn reload(&self) -> Result<usize, UsersFileError> {
        let Some(path) = &self.path else {
            return Ok(self.read_state().entries.len());
        };
        let loaded = read_file(path)?;
        let count = loaded.entries.len();
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        tracing::info!(path = %path.display(), users = count, "reloaded users file");
        Ok(count)
    }

    /// Reloads only if the file's modification time or size changed. Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, UsersFileError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let now = FileStamp::of(path).map_err(|source| UsersFileError::Read {
            path: path.clone(),
            source,
        })?;
        if self.read_state().stamp == Some(now) {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Authenticates a token of `kind`: the user it belongs to and the agents they may reach. Every
    /// entry is compared, in constant time.
    pub fn authenticate(&self, kind: TokenKind, token: &str) -> Result<UserGrant, UserAuthError> {
        if token.is_empty() {
            return Err(UserAuthError::EmptyToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(UserAuthError::Unauthenticated);
        }
        let digest = TokenDigest::of(token);
        let state = self.read_state();
        let mut found: Option<&UserEntry> = None;
        for entry in &state.entries {
            if entry.digest.ct_eq(&digest) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(UserAuthError::Unauthenticated)?;
        if entry.kinds.as_ref().is_some_and(|k| !k.contains(&kind)) {
            // A token of another kind: as far as this kind goes, it does not exist.
            return Err(UserAuthError::Unauthenticated);
        }
        Ok(UserGrant {
            name: entry.name.clone(),
            agents: entry.agents.clone(),
        })
    }

    /// Authorises a request by the holder of `token` (of `kind`) for `agent_id`.
    pub fn authorize(
        &self,
        kind: TokenKind,
        agent_id: u64,
        token: &str,
    ) -> Result<UserIdentity, UserAuthError> {
        let grant = self.authenticate(kind, token)?;
        let principal = if grant.agents.allows(agent_id) {
            Some(Principal::Operator)
        } else {
            self.gitlab_principal(&grant.name, kind)
        };
        let Some(principal) = principal else {
            tracing::debug!(user = %grant.name, agent_id, "user may not access agent");
            return Err(UserAuthError::Forbidden {
                user: grant.name,
                agent_id,
            });
        };
        Ok(UserIdentity {
            name: grant.name,
            kind,
            agent_id,
            principal,
        })
    }

    /// The GitLab identity of user `name` presenting a token of `kind`: the CI job for a `ci` token,
    /// the user (with the access type of `kind`) for the others.
    fn gitlab_principal(&self, name: &str, kind: TokenKind) -> Option<Principal> {
        let state = self.read_state();
        let entry = state.entries.iter().find(|e| e.name == name)?;
        let requester = match kind {
            TokenKind::Ci => access_control::Requester::CiJob(entry.ci_job.clone()?),
            TokenKind::Pat | TokenKind::Session => {
                let mut user = entry.gitlab_user.clone()?;
                user.access_type = match kind {
                    TokenKind::Session => access_control::AccessType::SessionCookie,
                    _ => access_control::AccessType::PersonalAccessToken,
                };
                access_control::Requester::User(user)
            }
        };
        Some(Principal::Gitlab(requester))
    }

    /// [`parse_bearer`] then [`UsersFile::authorize`].
    pub fn authorize_header(&self, header_value: &str) -> Result<UserIdentity, UserAuthError> {
        let (kind, agent_id, token) = parse_bearer(header_value)?;
        self.authorize(kind, agent_id, token)
    }

    /// Creates users with fresh random tokens: writes `<dir>/users.yaml` (digests only) and
    /// `<dir>/user-<name>.token` (the clear token, owner-only), replacing existing files. Creates `dir`
    /// if needed.
    pub fn generate(
        dir: impl AsRef<Path>,
        specs: &[UserSpec],
    ) -> Result<Vec<GeneratedUser>, UsersFileError> {
        let dir = dir.as_ref();
        let path = dir.join(USERS_FILE_NAME);
        let mut names = HashSet::new();
        for spec in specs {
            if !valid_name(&spec.name) {
                return Err(UsersFileError::InvalidName {
                    path,
                    name: spec.name.clone(),
                });
            }
            if !names.insert(spec.name.as_str()) {
                return Err(UsersFileError::DuplicateName {
                    path,
                    name: spec.name.clone(),
                });
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| UsersFileError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let mut users = Vec::with_capacity(specs.len());
        let mut records = Vec::with_capacity(specs.len());
        for spec in specs {
            let token = generate_token();
            let token_file = dir.join(format!("user-{}.token", spec.name));
            write_atomic(&token_file, format!("{token}\n").as_bytes(), true).map_err(|source| {
                UsersFileError::Write {
                    path: token_file.clone(),
                    source,
                }
            })?;
            records.push(UserRecord {
                name: spec.name.clone(),
                token_sha256: TokenDigest::of(&token).to_hex(),
                agents: Some(spec.agents.clone()),
                kinds: spec.kinds.clone(),
                user_id: None,
                username: None,
                projects: Vec::new(),
                groups: Vec::new(),
                ci_job: None,
            });
            users.push(GeneratedUser {
                name: spec.name.clone(),
                token,
                token_file,
            });
        }
        let yaml = serde_yaml::to_string(&UsersDoc { users: records }).map_err(|e| {
            UsersFileError::Write {
                path: path.clone(),
                source: std::io::Error::other(e),
            }
        })?;
        let text = format!(
            "# Users of kas's HTTP API: name, SHA-256 of the token (hex), agents they may reach\n\
             # (\"*\" or a list of ids), optionally the token kinds accepted. Tokens are not stored here.\n{yaml}"
        );
        write_atomic(&path, text.as_bytes(), false).map_err(|source| UsersFileError::Write {
            path: path.clone(),
            source,
        })?;
        tracing::info!(path = %path.display(), users = users.len(), "generated users file and token files");
        Ok(users)
    }

    /// The demo's users file: one user [`DEMO_USER`] allowed on every agent with any token kind.
    pub fn generate_demo(dir: impl AsRef<Path>) -> Result<GeneratedUser, UsersFileError> {
        let spec = UserSpec {
            name: DEMO_USER.to_owned(),
            agents: AllowedAgents::All,
            kinds: None,
        };
        let mut users = Self::generate(dir, &[spec])?;
        users.pop().ok_or_else(|| UsersFileError::Write {
            path: PathBuf::from(USERS_FILE_NAME),
            source: std::io::Error::other("no user generated"),
        })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn read_file(path: &Path) -> Result<Loaded, UsersFileError> {
    let (text, stamp) = read_with_stamp(path).map_err(|source| UsersFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Loaded {
        entries: parse(&text, path)?,
        stamp,
    })
}

fn parse(text: &str, origin: &Path) -> Result<Vec<UserEntry>, UsersFileError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: UsersDoc = parse_yaml(origin, text)?;
    let mut names = HashSet::with_capacity(doc.users.len());
    let mut digests: HashMap<TokenDigest, String> = HashMap::with_capacity(doc.users.len());
    let mut entries = Vec::with_capacity(doc.users.len());
    for r in doc.users {
        if !valid_name(&r.name) {
            return Err(UsersFileError::InvalidName {
                path: origin.to_owned(),
                name: r.name,
            });
        }
        if !names.insert(r.name.clone()) {
            return Err(UsersFileError::DuplicateName {
                path: origin.to_owned(),
                name: r.name,
            });
        }
        let digest =
            TokenDigest::from_hex(&r.token_sha256).map_err(|source| UsersFileError::BadDigest {
                path: origin.to_owned(),
                name: r.name.clone(),
                source,
            })?;
        if let Some(first) = digests.insert(digest, r.name.clone()) {
            return Err(UsersFileError::DuplicateToken {
                path: origin.to_owned(),
                first,
                second: r.name,
            });
        }
        let bad_identity = |reason: String| UsersFileError::BadIdentity {
            path: origin.to_owned(),
            name: r.name.clone(),
            reason,
        };
        let (gitlab_user, ci_job) = gitlab_parts(&r).map_err(bad_identity)?;
        if r.agents.is_none() && gitlab_user.is_none() && ci_job.is_none() {
            return Err(bad_identity(
                "gives neither agents nor a GitLab identity (projects, groups, ci_job)".into(),
            ));
        }
        entries.push(UserEntry {
            name: r.name,
            digest,
            agents: r.agents.unwrap_or(AllowedAgents::Only(BTreeSet::new())),
            kinds: r.kinds,
            gitlab_user,
            ci_job,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::tests::ct_compares;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn users_yaml() -> String {
        format!(
            "users:\n\
             - name: alice\n  token_sha256: {}\n  agents: [1, 2]\n\
             - name: bob\n  token_sha256: {}\n  agents: \"*\"\n  kinds: [ci]\n\
             - name: carol\n  token_sha256: {}\n  agents: []\n",
            TokenDigest::of("alice-token").to_hex(),
            TokenDigest::of("bob-token").to_hex(),
            TokenDigest::of("carol-token").to_hex(),
        )
    }

    #[test]
    fn parse_bearer_accepts_the_gitlab_format() {
        assert_eq!(
            parse_bearer("Bearer pat:12:glpat-abc"),
            Ok((TokenKind::Pat, 12, "glpat-abc"))
        );
        assert_eq!(
            parse_bearer("bearer  ci:1:tok:with:colons "),
            Ok((TokenKind::Ci, 1, "tok:with:colons"))
        );
        assert_eq!(
            parse_bearer("BEARER session:99:s"),
            Ok((TokenKind::Session, 99, "s"))
        );
    }

    #[test]
    fn parse_bearer_errors_are_typed() {
        let cases = [
            ("", UserAuthError::MissingBearer),
            ("Basic dXNlcjpwYXNz", UserAuthError::MissingBearer),
            ("Bearer", UserAuthError::MissingBearer),
            ("Bearer justatoken", UserAuthError::Malformed),
            ("Bearer pat:1", UserAuthError::Malformed),
            ("Bearer oauth:1:t", UserAuthError::UnknownKind),
            ("Bearer pat:x:t", UserAuthError::InvalidAgentId),
            ("Bearer pat:+1:t", UserAuthError::InvalidAgentId),
            ("Bearer pat:0:t", UserAuthError::InvalidAgentId),
            ("Bearer pat::t", UserAuthError::InvalidAgentId),
            (
                "Bearer pat:99999999999999999999999:t",
                UserAuthError::InvalidAgentId,
            ),
            ("Bearer pat:1:", UserAuthError::EmptyToken),
        ];
        for (header, expected) in cases {
            assert_eq!(parse_bearer(header), Err(expected), "{header:?}");
        }
    }

    #[test]
    fn no_field_of_the_credentials_is_echoed() {
        // Fields swapped by a clumsy client: the token sits where the kind or the agent id belongs.
        let token = "s3cr3t-T0KEN-value-that-must-never-leak-0123456789abcdef";
        for header in [
            format!("Bearer {token}:1:pat"),
            format!("Bearer pat:{token}:1"),
            format!("Bearer {token}:{token}:x"),
            format!("Bearer 1:pat:{token}"),
        ] {
            let e = parse_bearer(&header).expect_err(&header);
            let text = format!("{e} {e:?}");
            for window in token.as_bytes().windows(6) {
                let piece = std::str::from_utf8(window).unwrap_or_default();
                assert!(!text.contains(piece), "{header:?} echoed {piece:?}: {text}");
            }
        }
    }

    #[test]
    fn authorize_tells_401_from_403() -> TestResult {
        let users = UsersFile::from_yaml_str(&users_yaml(), Path::new("users.yaml"))?;
        let ok = users.authorize(TokenKind::Pat, 2, "alice-token")?;
        assert_eq!((ok.name.as_str(), ok.agent_id), ("alice", 2));
        let e = users.authorize(TokenKind::Pat, 3, "alice-token");
        assert_eq!(
            e,
            Err(UserAuthError::Forbidden {
                user: "alice".into(),
                agent_id: 3
            })
        );
        assert_eq!(e.err().map(|e| e.http_status()), Some(403));
        let e = users.authorize(TokenKind::Pat, 1, "wrong");
        assert_eq!(e, Err(UserAuthError::Unauthenticated));
        assert_eq!(e.err().map(|e| e.http_status()), Some(401));
        // bob: every agent, but only as a CI token.
        assert_eq!(
            users.authorize(TokenKind::Ci, 12345, "bob-token")?.name,
            "bob"
        );
        assert_eq!(
            users.authorize(TokenKind::Pat, 1, "bob-token"),
            Err(UserAuthError::Unauthenticated)
        );
        // carol: no agents at all.
        assert!(matches!(
            users.authorize(TokenKind::Pat, 1, "carol-token"),
            Err(UserAuthError::Forbidden { .. })
        ));
        assert_eq!(
            users.authorize_header("Bearer pat:1:alice-token")?.name,
            "alice"
        );
        Ok(())
    }

    #[test]
    fn gitlab_identities_come_from_the_file() -> TestResult {
        let yaml = format!(
            "users:\n\
             - name: dev\n  token_sha256: {}\n  user_id: 12\n  \
               projects: [{{id: 5, path: group/app, role: developer}}]\n  \
               groups: [{{id: 3, path: group, role: maintainer}}]\n\
             - name: job\n  token_sha256: {}\n  kinds: [ci]\n  ci_job:\n    id: 42\n    \
               pipeline_id: 9\n    user: dev\n    project: {{id: 5, path: group/app}}\n    \
               groups: [{{id: 3, path: group}}]\n    environment: {{name: review/x}}\n\
             - name: op\n  token_sha256: {}\n  agents: [1]\n  projects: [{{id: 5, path: g/a, role: guest}}]\n",
            TokenDigest::of("dev-token").to_hex(),
            TokenDigest::of("job-token").to_hex(),
            TokenDigest::of("op-token").to_hex(),
        );
        let users = UsersFile::from_yaml_str(&yaml, Path::new("users.yaml"))?;
        let dev = users.authorize(TokenKind::Session, 4, "dev-token")?;
        let Principal::Gitlab(access_control::Requester::User(u)) = dev.principal else {
            panic!("dev is a GitLab user: {dev:?}");
        };
        assert_eq!((u.user_id, u.username.as_str()), (12, "dev"));
        assert_eq!(u.access_type, access_control::AccessType::SessionCookie);
        assert_eq!(u.project_roles[0].role, access_control::Role::Developer);
        assert_eq!(u.group_roles[0].of.path, "group");
        // A user token is not a CI job token.
        assert!(matches!(
            users.authorize(TokenKind::Ci, 4, "dev-token"),
            Err(UserAuthError::Forbidden { .. })
        ));
        let job = users.authorize(TokenKind::Ci, 4, "job-token")?;
        let Principal::Gitlab(access_control::Requester::CiJob(j)) = job.principal else {
            panic!("a CI job: {job:?}");
        };
        assert_eq!((j.job_id, j.project.id, j.ref_protected), (42, 5, false));
        let env = j.environment.expect("environment");
        assert_eq!(
            (env.slug.as_str(), env.tier.as_str()),
            ("review/x", "other")
        );
        // An operator of agent 1 acts as the agent there, and as a GitLab user elsewhere.
        assert_eq!(
            users.authorize(TokenKind::Pat, 1, "op-token")?.principal,
            Principal::Operator
        );
        assert!(matches!(
            users.authorize(TokenKind::Pat, 2, "op-token")?.principal,
            Principal::Gitlab(_)
        ));
        let bad = format!(
            "users:\n- name: x\n  token_sha256: {}\n  projects: [{{id: 1, path: a, role: admin}}]\n",
            TokenDigest::of("x").to_hex()
        );
        assert!(matches!(
            UsersFile::from_yaml_str(&bad, Path::new("u.yaml")),
            Err(UsersFileError::BadIdentity { .. })
        ));
        Ok(())
    }

    #[test]
    fn lookup_compares_every_entry_in_constant_time() -> TestResult {
        let users = UsersFile::from_yaml_str(&users_yaml(), Path::new("users.yaml"))?;
        for token in ["alice-token", "nobody"] {
            let before = ct_compares();
            let _ = users.authorize(TokenKind::Pat, 1, token);
            assert_eq!(ct_compares() - before, 3, "{token}");
        }
        Ok(())
    }

    #[test]
    fn broken_users_files_give_typed_errors() {
        let d = TokenDigest::of("x").to_hex();
        let cases: Vec<(String, &str)> = vec![
            ("users:\n  - name: a\n    agents: [1\n".into(), "yaml"),
            (
                format!("users:\n  - {{name: a, token_sha256: {d}, agents: all}}\n"),
                "yaml",
            ),
            (
                format!("users:\n  - {{name: a, token_sha256: {d}, agents: [-1]}}\n"),
                "yaml",
            ),
            (
                format!("users:\n  - {{name: a, token_sha256: {d}}}\n"),
                "identity",
            ),
            (
                format!(
                    "users:\n  - {{name: a, token_sha256: {d}, agents: '*', kinds: [oauth]}}\n"
                ),
                "yaml",
            ),
            (
                format!(
                    "users:\n  - {{name: a, token_sha256: {d}, agents: '*'}}\n  - {{name: a, token_sha256: {}, agents: '*'}}\n",
                    TokenDigest::of("y").to_hex()
                ),
                "dup-name",
            ),
            (
                format!(
                    "users:\n  - {{name: a, token_sha256: {d}, agents: '*'}}\n  - {{name: b, token_sha256: {d}, agents: '*'}}\n"
                ),
                "dup-token",
            ),
            (
                "users:\n  - {name: a, token_sha256: 1234, agents: '*'}\n".into(),
                "digest",
            ),
            (
                format!("users:\n  - {{name: '../x', token_sha256: {d}, agents: '*'}}\n"),
                "name",
            ),
        ];
        for (text, kind) in cases {
            let r = UsersFile::from_yaml_str(&text, Path::new("u.yaml"));
            let ok = match (&r, kind) {
                (Err(UsersFileError::Yaml(e)), "yaml") => e.line.is_some(),
                (Err(UsersFileError::DuplicateName { .. }), "dup-name") => true,
                (Err(UsersFileError::DuplicateToken { .. }), "dup-token") => true,
                (Err(UsersFileError::BadDigest { .. }), "digest") => true,
                (Err(UsersFileError::InvalidName { .. }), "name") => true,
                (Err(UsersFileError::BadIdentity { .. }), "identity") => true,
                _ => false,
            };
            assert!(ok, "{kind}: {text:?} gave {r:?}");
        }
    }

    #[test]
    fn generate_demo_user_reaches_every_agent() -> TestResult {
        let dir = tempfile::tempdir()?;
        let demo = UsersFile::generate_demo(dir.path())?;
        assert_eq!(demo.name, DEMO_USER);
        assert!(!format!("{demo:?}").contains(&demo.token));
        let yaml = std::fs::read_to_string(dir.path().join(USERS_FILE_NAME))?;
        assert!(!yaml.contains(&demo.token), "clear token in users.yaml");
        let users = UsersFile::load(dir.path().join(USERS_FILE_NAME))?;
        let token = std::fs::read_to_string(&demo.token_file)?;
        for agent in [1, 2, 1000] {
            let header = format!(
                "Bearer {}",
                format_bearer(TokenKind::Pat, agent, token.trim())
            );
            assert_eq!(users.authorize_header(&header)?.agent_id, agent);
        }
        assert_eq!(
            demo.bearer(TokenKind::Ci, 7),
            format!("ci:7:{}", demo.token)
        );
        Ok(())
    }

    #[test]
    fn generate_rejects_bad_names_and_writes_lists() -> TestResult {
        let dir = tempfile::tempdir()?;
        let bad = UserSpec {
            name: "../evil".into(),
            agents: AllowedAgents::All,
            kinds: None,
        };
        assert!(matches!(
            UsersFile::generate(dir.path(), &[bad]),
            Err(UsersFileError::InvalidName { .. })
        ));
        let spec = UserSpec {
            name: "alice".into(),
            agents: AllowedAgents::Only([2, 1].into_iter().collect()),
            kinds: Some([TokenKind::Pat].into_iter().collect()),
        };
        let generated = UsersFile::generate(dir.path(), &[spec])?;
        let users = UsersFile::load(dir.path().join(USERS_FILE_NAME))?;
        let token = &generated[0].token;
        assert!(users.authorize(TokenKind::Pat, 1, token).is_ok());
        assert!(matches!(
            users.authorize(TokenKind::Pat, 3, token),
            Err(UserAuthError::Forbidden { .. })
        ));
        assert_eq!(
            users.authorize(TokenKind::Ci, 1, token),
            Err(UserAuthError::Unauthenticated)
        );
        Ok(())
    }

    #[test]
    fn reload_if_changed_sees_new_users() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(USERS_FILE_NAME);
        std::fs::write(&path, "users: []\n")?;
        let users = UsersFile::load(&path)?;
        assert_eq!(
            users.authorize(TokenKind::Pat, 1, "alice-token"),
            Err(UserAuthError::Unauthenticated)
        );
        assert!(!users.reload_if_changed()?);
        std::fs::write(&path, users_yaml())?;
        assert!(users.reload_if_changed()?);
        assert!(users.authorize(TokenKind::Pat, 1, "alice-token").is_ok());
        assert_eq!(users.users(), ["alice", "bob", "carol"]);
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn parse_bearer_never_panics(s in ".{0,80}") {
            let _ = parse_bearer(&s);
        }

        #[test]
        fn format_then_parse_round_trips(agent in 1u64.., token in "[A-Za-z0-9_:-]{1,60}", k in 0usize..3) {
            let kind = TokenKind::ALL[k];
            let header = format!("Bearer {}", format_bearer(kind, agent, &token));
            proptest::prop_assert_eq!(parse_bearer(&header), Ok((kind, agent, token.as_str())));
        }
    }
}
