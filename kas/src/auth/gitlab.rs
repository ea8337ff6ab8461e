//! Agent authentication by GitLab's internal API.
//!
//! For each token not in the cache, kas sends
//! `GET {gitlab}/api/v4/internal/kubernetes/agent_info` with `Authorization: Bearer <agent token>` and
//! `Gitlab-Kas-Api-Request: <JWT>` (HS256 under the shared secret, see [`super::jwt`]), as GitLab's own
//! kas does. Answers:
//!
//! | GitLab says                                   | result                              | cached for     |
//! |-----------------------------------------------|-------------------------------------|----------------|
//! | 200 + agent info JSON                         | [`AgentIdentity`]                   | `positive_ttl` |
//! | 401, 404                                      | [`AuthError::Unauthenticated`]      | `negative_ttl` |
//! | 403                                           | [`AuthError::PermissionDenied`]     | `negative_ttl` |
//! | 401 "KAS JWT authentication invalid"          | [`BackendError::JwtRejected`]       | never          |
//! | anything else, transport errors, bad JSON     | [`AuthError::Backend`]              | never          |
//!
//! The cache is keyed by the token's SHA-256, bounded in size, and never holds the token. Requests block
//! (ureq); async callers run them on a blocking pool. Redirects are not followed (the bearer token must
//! not travel elsewhere).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde::Deserialize;

use super::cache::TtlCache;
use super::token::TokenDigest;
use super::{
    AgentAuthenticator, AgentIdentity, AgentProject, AuthError, BackendError, jwt, precheck_token,
};
use crate::config::GitLabConfig;

/// Path of the agent info endpoint, appended to GitLab's base URL.
pub const AGENT_INFO_PATH: &str = "/api/v4/internal/kubernetes/agent_info";
/// Who a user of the Kubernetes API proxy is (POST, JWT-signed): [`GitLabAuthenticator::proxy_user`].
pub const AUTHORIZE_PROXY_USER_PATH: &str = "/api/v4/internal/kubernetes/authorize_proxy_user";
/// The CI job a job token belongs to (`JOB-TOKEN` header): [`GitLabAuthenticator::ci_job`].
pub const JOB_PATH: &str = "/api/v4/job";
/// Length of the decoded shared secret.
pub const SECRET_LEN: usize = 32;
/// Largest response body read from GitLab.
pub const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// GitLab's `agent_info` answer. `Debug` hides the Gitaly token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GitLabAgentInfo {
    /// The project the agent is registered in.
    pub project_id: u64,
    /// The agent id.
    pub agent_id: u64,
    /// The agent name.
    pub agent_name: String,
    /// Where the project's repository lives (Gitaly address and token).
    #[serde(default)]
    pub gitaly_info: Option<GitalyInfo>,
    /// The project's repository.
    #[serde(default)]
    pub gitaly_repository: Option<GitalyRepository>,
    /// The project's default branch.
    #[serde(default)]
    pub default_branch: Option<String>,
}

/// How to reach Gitaly. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct GitalyInfo {
    /// Gitaly's address, e.g. `tcp://gitaly:8075`.
    pub address: String,
    /// Gitaly's token (a secret).
    #[serde(default)]
    pub token: String,
    /// Gitaly feature flags.
    #[serde(default)]
    pub features: BTreeMap<String, String>,
}

impl fmt::Debug for GitalyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitalyInfo")
            .field("address", &self.address)
            .field("token", &"<redacted>")
            .field("features", &self.features)
            .finish()
    }
}

/// A repository in Gitaly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GitalyRepository {
    /// Storage shard name.
    pub storage_name: String,
    /// Path inside the storage.
    pub relative_path: String,
    /// GitLab's repository identifier, e.g. `project-1`.
    pub gl_repository: String,
    /// The project's full path, e.g. `group/project`.
    pub gl_project_path: String,
}

impl GitLabAgentInfo {
    /// The identity kas uses.
    pub fn identity(&self) -> AgentIdentity {
        AgentIdentity {
            agent_id: self.agent_id,
            name: self.agent_name.clone(),
            project: Some(AgentProject {
                project_id: self.project_id,
                path: self
                    .gitaly_repository
                    .as_ref()
                    .map(|r| r.gl_project_path.clone()),
                default_branch: self.default_branch.clone(),
            }),
        }
    }
}

/// Settings of a [`GitLabAuthenticator`].
#[derive(Clone)]
pub struct GitLabOptions {
    /// GitLab's base URL (`http` or `https`).
    pub base_url: String,
    /// The decoded shared secret ([`SECRET_LEN`] bytes).
    pub secret: Vec<u8>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Lifetime of cached successes (0: no caching).
    pub positive_ttl: Duration,
    /// Lifetime of cached rejections (0: no caching).
    pub negative_ttl: Duration,
    /// Cache size bound (of each cache: agents, users and jobs).
    pub max_cache_entries: usize,
    /// Lifetime of cached answers about users and CI jobs (0: no caching).
    pub user_positive_ttl: Duration,
    /// Lifetime of cached rejections of user and CI job credentials (0: no caching).
    pub user_negative_ttl: Duration,
    /// PEM CA certificates to trust instead of the built-in roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for GitLabOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitLabOptions")
            .field("base_url", &self.base_url)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("positive_ttl", &self.positive_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("max_cache_entries", &self.max_cache_entries)
            .field("user_positive_ttl", &self.user_positive_ttl)
            .field("user_negative_ttl", &self.user_negative_ttl)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .finish()
    }
}

impl GitLabOptions {
    /// Options with the defaults of [`GitLabConfig`] for everything but URL and secret.
    pub fn new(base_url: impl Into<String>, secret: Vec<u8>) -> Self {
        let d = GitLabConfig::default();
        Self {
            base_url: base_url.into(),
            secret,
            timeout: d.timeout,
            positive_ttl: d.cache.positive_ttl,
            negative_ttl: d.cache.negative_ttl,
            max_cache_entries: d.cache.max_entries,
            user_positive_ttl: d.user_cache.positive_ttl,
            user_negative_ttl: d.user_cache.negative_ttl,
            ca_pem: None,
        }
    }
}

/// Why a [`GitLabAuthenticator`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GitLabSetupError {
    /// The base URL is unusable.
    #[error("invalid GitLab URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The shared secret is not base64 of [`SECRET_LEN`] bytes.
    #[error("invalid GitLab shared secret{}: {reason}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    BadSecret {
        /// The file, if it came from one.
        path: Option<PathBuf>,
        /// What is wrong (never the secret).
        reason: String,
    },
    /// The CA file holds no usable certificate.
    #[error("invalid GitLab CA certificates{}: {reason}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    BadCa {
        /// The file, if it came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
}

/// Decodes a shared secret as GitLab writes it (`.gitlab_kas_secret`: base64, surrounding whitespace
/// ignored) and checks its length.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, GitLabSetupError> {
    let bad = |reason: String| GitLabSetupError::BadSecret { path: None, reason };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    if decoded.len() != SECRET_LEN {
        return Err(bad(format!(
            "decodes to {} bytes, expected {SECRET_LEN}",
            decoded.len()
        )));
    }
    Ok(decoded)
}

/// Reads and decodes a shared secret file.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, GitLabSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| GitLabSetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    decode_secret(&text).map_err(|e| match e {
        GitLabSetupError::BadSecret { reason, .. } => GitLabSetupError::BadSecret {
            path: Some(path.to_owned()),
            reason,
        },
        other => other,
    })
}

/// A cached answer.
#[derive(Clone)]
enum Answer {
    Agent(AgentIdentity),
    Unauthenticated,
    PermissionDenied,
}

/// Authenticates agents by asking GitLab, with caching.
pub struct GitLabAuthenticator {
    base: String,
    endpoint: String,
    secret: Arc<[u8]>,
    agent: ureq::Agent,
    positive_ttl: Duration,
    negative_ttl: Duration,
    cache: Mutex<TtlCache<Answer>>,
    user_positive_ttl: Duration,
    user_negative_ttl: Duration,
    users: Mutex<TtlCache<UserAnswer>>,
}

/// A cached answer about a user or CI job credential.
#[derive(Clone)]
enum UserAnswer {
    User(access_control::User),
    Job(access_control::CiJob),
    Unauthenticated,
    PermissionDenied,
}

impl fmt::Debug for GitLabAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitLabAuthenticator")
            .field("endpoint", &self.endpoint)
            .field("positive_ttl", &self.positive_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .finish_non_exhaustive()
    }
}

impl GitLabAuthenticator {
    /// Sets up the client (no request is made).
    pub fn new(options: GitLabOptions) -> Result<Self, GitLabSetupError> {
        let invalid = |reason: String| GitLabSetupError::InvalidUrl {
            url: options.base_url.clone(),
            reason,
        };
        let url = url::Url::parse(&options.base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(invalid("expected an http or https URL with a host".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("must not have a query or fragment".into()));
        }
        if options.secret.len() != SECRET_LEN {
            return Err(GitLabSetupError::BadSecret {
                path: None,
                reason: format!("{} bytes, expected {SECRET_LEN}", options.secret.len()),
            });
        }
        let endpoint = format!("{}{AGENT_INFO_PATH}", url.as_str().trim_end_matches('/'));

        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = &options.ca_pem {
            tls = tls.root_certs(parse_ca_pem(pem)?);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(options.timeout))
            .user_agent(concat!("kas/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build();
        Ok(Self {
            base: url.as_str().trim_end_matches('/').to_owned(),
            endpoint,
            secret: options.secret.into(),
            agent: ureq::Agent::new_with_config(config),
            positive_ttl: options.positive_ttl,
            negative_ttl: options.negative_ttl,
            cache: Mutex::new(TtlCache::new(options.max_cache_entries)),
            user_positive_ttl: options.user_positive_ttl,
            user_negative_ttl: options.user_negative_ttl,
            users: Mutex::new(TtlCache::new(options.max_cache_entries)),
        })
    }

    /// Sets up the client from configuration, reading the secret and CA files.
    pub fn from_config(config: &GitLabConfig) -> Result<Self, GitLabSetupError> {
        let secret = read_secret_file(&config.secret_file)?;
        let ca_pem = match &config.ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|source| GitLabSetupError::Read {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let options = GitLabOptions {
            base_url: config.url.clone(),
            secret,
            timeout: config.timeout,
            positive_ttl: config.cache.positive_ttl,
            negative_ttl: config.cache.negative_ttl,
            max_cache_entries: config.cache.max_entries,
            user_positive_ttl: config.user_cache.positive_ttl,
            user_negative_ttl: config.user_cache.negative_ttl,
            ca_pem,
        };
        Self::new(options).map_err(|e| match (e, &config.ca_file) {
            (GitLabSetupError::BadCa { reason, .. }, Some(p)) => GitLabSetupError::BadCa {
                path: Some(p.clone()),
                reason,
            },
            (e, _) => e,
        })
    }

    /// The full agent info URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Authenticates as of `now` (for cache lifetimes): from the cache if possible, else by asking
    /// GitLab and caching the answer.
    pub fn authenticate_at(&self, token: &str, now: Instant) -> Result<AgentIdentity, AuthError> {
        precheck_token(token)?;
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            // Could not be sent as a header value; no GitLab token looks like this.
            return Err(AuthError::Unauthenticated);
        }
        let key = TokenDigest::of(token);
        if let Some(answer) = self.lock_cache().get(&key, now) {
            tracing::debug!(digest = %key, "agent_info answered from cache");
            return answer.into_result();
        }
        let result = self.agent_info(token);
        let to_cache = match &result {
            Ok(info) => Some((Answer::Agent(info.identity()), self.positive_ttl)),
            Err(AuthError::Unauthenticated) => Some((Answer::Unauthenticated, self.negative_ttl)),
            Err(AuthError::PermissionDenied) => Some((Answer::PermissionDenied, self.negative_ttl)),
            Err(_) => None,
        };
        if let Some((answer, ttl)) = to_cache {
            self.lock_cache().insert(key, answer, ttl, now);
        }
        result.map(|info| info.identity())
    }

    /// Asks GitLab about `token`, without the cache.
    pub fn agent_info(&self, token: &str) -> Result<GitLabAgentInfo, AuthError> {
        let url = &self.endpoint;
        let signed = jwt::kas_request_token(&self.secret, SystemTime::now())
            .map_err(BackendError::Signing)?;
        let response = self
            .agent
            .get(url)
            .header("Authorization", format!("Bearer {token}"))
            .header(jwt::REQUEST_HEADER, signed)
            .header("Accept", "application/json")
            .call();
        let result = self.json_answer::<GitLabAgentInfo>(url, response);
        // Transport failures were logged by `json_answer`; the others once here.
        if let Err(AuthError::Backend(e)) = &result
            && !matches!(e, BackendError::Transport { .. })
        {
            tracing::warn!(error = %e, "GitLab agent_info failed");
        }
        result
    }

    /// Asks GitLab who the holder of a user credential is, for agent `agent_id`
    /// (`POST /api/v4/internal/kubernetes/authorize_proxy_user` with `agent_id`, `access_type`,
    /// `access_key`, `csrf_token`, JWT-signed as `agent_info`): the user and their roles in the
    /// projects and groups GitLab names ([`ProxyUserAnswer`]). kas then decides with the agent's
    /// `user_access` itself. 401/404: not a valid credential; 403: GitLab refuses access.
    pub fn proxy_user(
        &self,
        agent_id: u64,
        access_type: access_control::AccessType,
        access_key: &str,
        csrf_token: Option<&str>,
    ) -> Result<access_control::User, AuthError> {
        self.proxy_user_at(
            agent_id,
            access_type,
            access_key,
            csrf_token,
            Instant::now(),
        )
    }

    /// [`Self::proxy_user`] as of `now`: from the cache (`user_cache`) if possible, else by
    /// asking GitLab and caching the answer. The key is the digest of everything asked.
    pub fn proxy_user_at(
        &self,
        agent_id: u64,
        access_type: access_control::AccessType,
        access_key: &str,
        csrf_token: Option<&str>,
        now: Instant,
    ) -> Result<access_control::User, AuthError> {
        precheck_token(access_key)?;
        let key = TokenDigest::of(&format!(
            "authorize_proxy_user\0{agent_id}\0{}\0{access_key}\0{}",
            access_type.as_str(),
            csrf_token.unwrap_or_default()
        ));
        let answer = self.cached_user_answer(key, now, || {
            self.ask_proxy_user(agent_id, access_type, access_key, csrf_token)
                .map(UserAnswer::User)
        })?;
        match answer {
            UserAnswer::User(u) => Ok(u),
            _ => Err(AuthError::Unauthenticated),
        }
    }

    fn ask_proxy_user(
        &self,
        agent_id: u64,
        access_type: access_control::AccessType,
        access_key: &str,
        csrf_token: Option<&str>,
    ) -> Result<access_control::User, AuthError> {
        let body = serde_json::json!({
            "agent_id": agent_id,
            "access_type": access_type.as_str(),
            "access_key": access_key,
            "csrf_token": csrf_token.unwrap_or_default(),
        });
        let signed = jwt::kas_request_token(&self.secret, SystemTime::now())
            .map_err(BackendError::Signing)?;
        let url = format!("{}{AUTHORIZE_PROXY_USER_PATH}", self.base);
        let response = self
            .agent
            .post(&url)
            .header(jwt::REQUEST_HEADER, signed)
            .header("Accept", "application/json")
            .send_json(&body);
        let answer: ProxyUserAnswer = self.json_answer(&url, response)?;
        Ok(answer.into_user(access_type))
    }

    /// Asks GitLab which CI job a job token belongs to (`GET /api/v4/job` with `JOB-TOKEN`): the job,
    /// its pipeline, project, ancestor groups, environment and whether its ref is protected
    /// ([`JobAnswer`]). 401/404: not a valid (or a finished) job's token.
    pub fn ci_job(&self, job_token: &str) -> Result<access_control::CiJob, AuthError> {
        self.ci_job_at(job_token, Instant::now())
    }

    /// [`Self::ci_job`] as of `now`: from the cache (`user_cache`) if possible, else by asking
    /// GitLab and caching the answer.
    pub fn ci_job_at(
        &self,
        job_token: &str,
        now: Instant,
    ) -> Result<access_control::CiJob, AuthError> {
        precheck_token(job_token)?;
        if !job_token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Unauthenticated);
        }
        let key = TokenDigest::of(&format!("job\0{job_token}"));
        let answer =
            self.cached_user_answer(key, now, || self.ask_ci_job(job_token).map(UserAnswer::Job))?;
        match answer {
            UserAnswer::Job(j) => Ok(j),
            _ => Err(AuthError::Unauthenticated),
        }
    }

    /// A cached answer under `key`, else `ask`'s, cached for the user TTLs (refusals as
    /// refusals; backend failures never).
    fn cached_user_answer(
        &self,
        key: TokenDigest,
        now: Instant,
        ask: impl FnOnce() -> Result<UserAnswer, AuthError>,
    ) -> Result<UserAnswer, AuthError> {
        let lock = || self.users.lock().unwrap_or_else(|e| e.into_inner());
        // The guard must not live through the match: asking GitLab and caching lock again.
        let cached = lock().get(&key, now);
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let (answer, ttl) = match ask() {
                    Ok(a) => (a, self.user_positive_ttl),
                    Err(AuthError::Unauthenticated) => {
                        (UserAnswer::Unauthenticated, self.user_negative_ttl)
                    }
                    Err(AuthError::PermissionDenied) => {
                        (UserAnswer::PermissionDenied, self.user_negative_ttl)
                    }
                    Err(e) => return Err(e),
                };
                lock().insert(key, answer.clone(), ttl, now);
                answer
            }
        };
        match answer {
            UserAnswer::Unauthenticated => Err(AuthError::Unauthenticated),
            UserAnswer::PermissionDenied => Err(AuthError::PermissionDenied),
            a => Ok(a),
        }
    }

    fn ask_ci_job(&self, job_token: &str) -> Result<access_control::CiJob, AuthError> {
        let url = format!("{}{JOB_PATH}", self.base);
        let response = self
            .agent
            .get(&url)
            .header("JOB-TOKEN", job_token)
            .header("Accept", "application/json")
            .call();
        let answer: JobAnswer = self.json_answer(&url, response)?;
        Ok(answer.into_job())
    }

    /// GitLab's JSON answer, or the error its status means (as for `agent_info`).
    fn json_answer<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, AuthError> {
        let mut response = response.map_err(|e| {
            let err = BackendError::Transport {
                url: url.to_owned(),
                source: Box::new(e),
            };
            tracing::warn!(error = %err, "GitLab request failed");
            AuthError::from(err)
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .lossy_utf8(true)
            .read_to_string();
        tracing::debug!(status, url, "GitLab answered");
        let body = match body {
            Ok(b) => b,
            Err(e) if status == 200 => {
                return Err(BackendError::Transport {
                    url: url.to_owned(),
                    source: Box::new(e),
                }
                .into());
            }
            // For error statuses the body is only informative.
            Err(_) => String::new(),
        };
        match status {
            200 => serde_json::from_str::<T>(&body).map_err(|e| {
                AuthError::from(BackendError::InvalidResponse {
                    url: url.to_owned(),
                    reason: format!("JSON: {e}"),
                })
            }),
            401 if gitlab_message(&body).contains("KAS JWT") => {
                Err(AuthError::from(BackendError::JwtRejected {
                    url: url.to_owned(),
                    message: gitlab_message(&body),
                }))
            }
            401 | 404 => Err(AuthError::Unauthenticated),
            403 => Err(AuthError::PermissionDenied),
            _ => Err(AuthError::from(BackendError::Status {
                url: url.to_owned(),
                status,
                message: gitlab_message(&body),
            })),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, TtlCache<Answer>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A project or group in GitLab's answers: id, full path (`full_path` or `path_with_namespace`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GitLabRef {
    /// The numeric id.
    pub id: u64,
    /// The full path.
    #[serde(default, alias = "path_with_namespace")]
    pub full_path: String,
}

impl GitLabRef {
    fn to_ref(&self) -> access_control::GitlabRef {
        access_control::GitlabRef::new(self.id, self.full_path.clone())
    }
}

/// A project or group with the user's roles there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GitLabMembership {
    /// The project or group.
    #[serde(flatten)]
    pub of: GitLabRef,
    /// GitLab's role names (`developer`, `maintainer`, …); the highest known one counts.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The answer of `authorize_proxy_user`:
/// `{"agent": {"id", "config_project": {"id"}}, "user": {"id", "username"},
///   "access_as": {"user": {"projects": [{"id", "full_path", "roles"}], "groups": [...]}}}`
/// (`access_as` may also be `{"agent": {}}` with no memberships).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProxyUserAnswer {
    /// The user.
    pub user: GitLabUser,
    /// The user's memberships GitLab reports.
    #[serde(default)]
    pub access_as: ProxyAccessAs,
}

/// `user` of [`ProxyUserAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GitLabUser {
    /// The user id.
    pub id: u64,
    /// The username.
    pub username: String,
}

/// `access_as` of [`ProxyUserAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ProxyAccessAs {
    /// Present for `access_as: user`.
    #[serde(default)]
    pub user: Option<ProxyMemberships>,
}

/// The projects and groups with the user's roles.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ProxyMemberships {
    /// Projects.
    #[serde(default)]
    pub projects: Vec<GitLabMembership>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<GitLabMembership>,
}

fn memberships(list: &[GitLabMembership]) -> Vec<access_control::Membership> {
    list.iter()
        .filter_map(|m| {
            let role = m
                .roles
                .iter()
                .filter_map(|r| {
                    access_control::Role::ALL
                        .into_iter()
                        .find(|k| k.as_str().eq_ignore_ascii_case(r))
                })
                .max()?;
            Some(access_control::Membership {
                of: m.of.to_ref(),
                role,
            })
        })
        .collect()
}

impl ProxyUserAnswer {
    fn into_user(self, access_type: access_control::AccessType) -> access_control::User {
        let m = self.access_as.user.unwrap_or_default();
        access_control::User {
            user_id: self.user.id,
            username: self.user.username,
            access_type,
            project_roles: memberships(&m.projects),
            group_roles: memberships(&m.groups),
        }
    }
}

/// The answer of `GET /api/v4/job`:
/// `{"id", "ref_protected", "pipeline": {"id"}, "user": {"username"},
///   "project": {"id", "path_with_namespace", "groups": [{"id", "full_path"}, ...closest first]},
///   "environment": {"name", "slug", "tier"} | null}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobAnswer {
    /// The job id.
    pub id: u64,
    /// Whether the job's ref is protected.
    #[serde(default)]
    pub ref_protected: bool,
    /// The pipeline.
    pub pipeline: JobPipeline,
    /// The user the job runs for.
    pub user: JobUser,
    /// The project.
    pub project: JobProject,
    /// The environment it deploys to.
    #[serde(default)]
    pub environment: Option<JobEnvironment>,
}

/// `pipeline` of [`JobAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobPipeline {
    /// The pipeline id.
    pub id: u64,
}

/// `user` of [`JobAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobUser {
    /// The username.
    pub username: String,
}

/// `project` of [`JobAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobProject {
    /// The project.
    #[serde(flatten)]
    pub project: GitLabRef,
    /// Its ancestor groups, closest first.
    #[serde(default)]
    pub groups: Vec<GitLabRef>,
}

/// `environment` of [`JobAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobEnvironment {
    /// The name.
    pub name: String,
    /// The slug.
    pub slug: String,
    /// The tier.
    #[serde(default)]
    pub tier: Option<String>,
}

impl JobAnswer {
    fn into_job(self) -> access_control::CiJob {
        access_control::CiJob {
            job_id: self.id,
            pipeline_id: self.pipeline.id,
            username: self.user.username,
            project: self.project.project.to_ref(),
            ancestor_groups: self.project.groups.iter().map(GitLabRef::to_ref).collect(),
            environment: self.environment.map(|e| access_control::Environment {
                name: e.name,
                slug: e.slug,
                tier: e.tier.unwrap_or_else(|| "other".to_owned()),
            }),
            ref_protected: self.ref_protected,
        }
    }
}

impl Answer {
    fn into_result(self) -> Result<AgentIdentity, AuthError> {
        match self {
            Answer::Agent(id) => Ok(id),
            Answer::Unauthenticated => Err(AuthError::Unauthenticated),
            Answer::PermissionDenied => Err(AuthError::PermissionDenied),
        }
    }
}

impl AgentAuthenticator for GitLabAuthenticator {
    fn authenticate(&self, token: &str, source: IpAddr) -> Result<AgentIdentity, AuthError> {
        let result = self.authenticate_at(token, Instant::now());
        if let Ok(id) = &result {
            tracing::debug!(agent_id = id.agent_id, %source, "agent authenticated by GitLab");
        }
        result
    }
}

/// GitLab's error message (`{"message": ...}`) or the start of the body, at most 200 characters.
fn gitlab_message(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| match v.get("message") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
            None => None,
        })
        .unwrap_or_else(|| body.trim().to_owned());
    message.chars().take(200).collect()
}

fn parse_ca_pem(pem: &[u8]) -> Result<ureq::tls::RootCerts, GitLabSetupError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(GitLabSetupError::BadCa {
                    path: None,
                    reason: e.to_string(),
                });
            }
        }
    }
    if certs.is_empty() {
        return Err(GitLabSetupError::BadCa {
            path: None,
            reason: "no certificate found".into(),
        });
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_must_be_base64_of_32_bytes() {
        let good = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(
            decode_secret(&format!("{good}\n")).ok(),
            Some(vec![9u8; 32])
        );
        assert!(matches!(
            decode_secret("not base64!"),
            Err(GitLabSetupError::BadSecret { .. })
        ));
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 16]);
        assert!(matches!(
            decode_secret(&short),
            Err(GitLabSetupError::BadSecret { .. })
        ));
    }

    #[test]
    fn urls_are_checked_and_endpoint_built() -> Result<(), GitLabSetupError> {
        let a = GitLabAuthenticator::new(GitLabOptions::new(
            "https://gitlab.example.com/",
            vec![0; 32],
        ))?;
        assert_eq!(
            a.endpoint(),
            "https://gitlab.example.com/api/v4/internal/kubernetes/agent_info"
        );
        let a = GitLabAuthenticator::new(GitLabOptions::new("http://h:3000/gitlab", vec![0; 32]))?;
        assert_eq!(
            a.endpoint(),
            "http://h:3000/gitlab/api/v4/internal/kubernetes/agent_info"
        );
        for bad in ["ftp://h", "not a url", "http://h/?q=1", "unix:/x"] {
            assert!(
                matches!(
                    GitLabAuthenticator::new(GitLabOptions::new(bad, vec![0; 32])),
                    Err(GitLabSetupError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            GitLabAuthenticator::new(GitLabOptions::new("http://h", vec![0; 3])),
            Err(GitLabSetupError::BadSecret { .. })
        ));
        Ok(())
    }

    #[test]
    fn agent_info_json_as_gitlab_sends_it() -> Result<(), serde_json::Error> {
        let body = r#"{"project_id":5,"agent_id":12,"agent_name":"prod",
            "gitaly_info":{"address":"tcp://gitaly:8075","token":"s3cret","features":{"f":"true"}},
            "gitaly_repository":{"storage_name":"default","relative_path":"@hashed/ab.git",
              "gl_repository":"project-5","gl_project_path":"group/agents"},
            "default_branch":"main","unknown_future_field":1}"#;
        let info: GitLabAgentInfo = serde_json::from_str(body)?;
        let id = info.identity();
        assert_eq!((id.agent_id, id.name.as_str()), (12, "prod"));
        let project = id
            .project
            .as_ref()
            .map(|p| (p.project_id, p.path.as_deref(), p.default_branch.as_deref()));
        assert_eq!(project, Some((5, Some("group/agents"), Some("main"))));
        assert!(
            !format!("{info:?}").contains("s3cret"),
            "Gitaly token in Debug"
        );
        // Minimal answers (older GitLab) parse too.
        let info: GitLabAgentInfo =
            serde_json::from_str(r#"{"project_id":1,"agent_id":2,"agent_name":"a"}"#)?;
        assert_eq!(info.identity().project.and_then(|p| p.path), None);
        Ok(())
    }

    #[test]
    fn messages_are_extracted_and_bounded() {
        assert_eq!(
            gitlab_message(r#"{"message":"401 Unauthorized"}"#),
            "401 Unauthorized"
        );
        assert_eq!(gitlab_message("plain text\n"), "plain text");
        assert_eq!(gitlab_message(&"x".repeat(1000)).len(), 200);
    }

    #[test]
    fn bad_ca_pem_is_rejected() {
        let mut o = GitLabOptions::new("https://h", vec![0; 32]);
        o.ca_pem = Some(b"nothing here".to_vec());
        assert!(matches!(
            GitLabAuthenticator::new(o),
            Err(GitLabSetupError::BadCa { .. })
        ));
    }
}
