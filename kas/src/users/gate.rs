//! Who may use the tunnel routes of the HTTP API: `Authorization: Bearer <kind>:<agent-id>:<token>`
//! (or the same triple as Basic credentials, see [`UserGate::authorize`]) checked against the users
//! file, with a limit on failed attempts per source address and credential (a valid credential is
//! never refused because another one failed from the same address: see [`crate::auth::rate_limit`]).
//!
//! The order of checks never tells an unauthenticated client more than "401": a bad or missing token is
//! 401, a valid token for an agent the user may not reach is 403, and only then is the agent's existence
//! checked (404, by the caller).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{RateLimitOptions, RateLimiter, TokenDigest};
use crate::metrics::Metrics;

use super::{UserAuthError, UserGrant, UserIdentity, UsersFile, parse_bearer};

/// Why the gate refused a request; the HTTP layer turns it into its answer
/// ([`GateError::http_status`]: 401, 403 or 429).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// Too many failed attempts with these credentials from this address.
    #[error(
        "too many failed authentications with these credentials from this address; retry later"
    )]
    RateLimited {
        /// When the client may try again.
        retry_after: Duration,
    },
    /// Not authenticated (401) or not allowed to reach the agent (403).
    #[error(transparent)]
    Denied(#[from] UserAuthError),
    /// GitLab could not answer who the credential belongs to (503; never the client's fault).
    #[error("GitLab could not authorise the request: {0}")]
    Backend(String),
}

impl GateError {
    /// The HTTP status of the refusal.
    pub fn http_status(&self) -> u16 {
        match self {
            GateError::RateLimited { .. } => 429,
            GateError::Denied(e) => e.http_status(),
            GateError::Backend(_) => 503,
        }
    }
}

/// The users file behind a failure rate limit.
#[derive(Debug)]
pub struct UserGate {
    users: Arc<UsersFile>,
    /// Asked about credentials the users file does not know (`authorize_proxy_user`, `/api/v4/job`).
    gitlab: Option<Arc<crate::auth::GitLabAuthenticator>>,
    limiter: Mutex<RateLimiter>,
    metrics: Arc<Metrics>,
}

impl UserGate {
    /// A gate over `users`, limiting failures per source as `limits` says.
    pub fn new(users: Arc<UsersFile>, limits: RateLimitOptions, metrics: Arc<Metrics>) -> Self {
        UserGate {
            users,
            gitlab: None,
            limiter: Mutex::new(RateLimiter::new(limits)),
            metrics,
        }
    }

    /// Also asks GitLab about credentials the users file does not know: CI job tokens (`ci`) through
    /// `/api/v4/job`, personal access tokens and sessions through `authorize_proxy_user`. Such
    /// requesters are GitLab ones ([`super::Principal::Gitlab`]): the agent's configuration decides.
    /// GitLab's answers block: callers run [`UserGate::authorize`] on a blocking pool when
    /// [`UserGate::asks_gitlab`].
    pub fn with_gitlab(mut self, gitlab: Arc<crate::auth::GitLabAuthenticator>) -> Self {
        self.gitlab = Some(gitlab);
        self
    }

    /// Whether [`UserGate::authorize`] may ask GitLab (and so block).
    pub fn asks_gitlab(&self) -> bool {
        self.gitlab.is_some()
    }

    /// Who GitLab says the credential's holder is; `Ok(None)` when GitLab is not asked.
    fn ask_gitlab(
        &self,
        kind: super::TokenKind,
        agent_id: u64,
        token: &str,
    ) -> Result<Option<UserIdentity>, GateError> {
        use crate::auth::AuthError;
        let Some(gitlab) = &self.gitlab else {
            return Ok(None);
        };
        let requester = match kind {
            super::TokenKind::Ci => gitlab.ci_job(token).map(access_control::Requester::CiJob),
            super::TokenKind::Pat | super::TokenKind::Session => {
                let access_type = if kind == super::TokenKind::Session {
                    access_control::AccessType::SessionCookie
                } else {
                    access_control::AccessType::PersonalAccessToken
                };
                gitlab
                    .proxy_user(agent_id, access_type, token, None)
                    .map(access_control::Requester::User)
            }
        };
        let requester = match requester {
            Ok(r) => r,
            Err(AuthError::Unauthenticated) => {
                return Err(UserAuthError::Unauthenticated.into());
            }
            Err(AuthError::PermissionDenied) => {
                return Err(UserAuthError::Forbidden {
                    user: "(GitLab user)".into(),
                    agent_id,
                }
                .into());
            }
            Err(AuthError::Backend(e)) => return Err(GateError::Backend(e.to_string())),
            // Agent authentication's own limiter; GitLab's answers are never rate limited here.
            Err(e @ AuthError::RateLimited { .. }) => {
                return Err(GateError::Backend(e.to_string()));
            }
        };
        let name = match &requester {
            access_control::Requester::CiJob(j) => format!("ci_job:{}", j.job_id),
            access_control::Requester::User(u) => u.username.clone(),
        };
        Ok(Some(UserIdentity {
            name,
            kind,
            agent_id,
            principal: super::Principal::Gitlab(requester),
        }))
    }

    /// The users file (for reloading).
    pub fn users(&self) -> &Arc<UsersFile> {
        &self.users
    }

    /// Counts failures cluster-wide too (several replicas; [`RateLimiter::share`]).
    pub fn share(&self, store: Arc<dyn crate::auth::rate_limit::SharedFailures>) {
        self.limiter().share("user_auth", store);
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Authorises a request from `source` carrying `authorization` (the header's value, if any):
    /// `Bearer <kind>:<agent-id>:<token>`, or `Basic base64(<kind>:<agent-id>:<token>)`, which is what
    /// clients send for credentials in the server URL (`http://pat:1:<token>@host/k8s-proxy`; kubectl
    /// sends no bearer token over plain HTTP).
    /// `agent_id`: the agent named by the URL, when the route names one (the service proxy); otherwise
    /// the agent is the one in the bearer credentials. Errors say what to answer (401, 403 or 429).
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        agent_id: Option<u64>,
        source: IpAddr,
    ) -> Result<UserIdentity, GateError> {
        let now = Instant::now();
        // Failures count per credential: the header as received (no header at all is one more).
        let credential = TokenDigest::of_bytes(authorization.unwrap_or_default());
        if let Err(retry_after) = self.limiter().check(source, &credential, now) {
            self.metrics.user_auth_failure("rate_limited");
            tracing::debug!(%source, ?retry_after, "user authentication refused: rate limited");
            return Err(GateError::RateLimited { retry_after });
        }
        let header = authorization
            .ok_or(UserAuthError::MissingBearer)
            .and_then(|v| std::str::from_utf8(v).map_err(|_| UserAuthError::Malformed))
            .and_then(basic_as_bearer);
        let result = header
            .as_deref()
            .map_err(Clone::clone)
            .and_then(parse_bearer)
            .and_then(|(kind, bearer_agent, token)| {
                self.users
                    .authorize(kind, agent_id.unwrap_or(bearer_agent), token)
            });
        // A credential the users file does not know may be GitLab's.
        let result = match (result, self.gitlab.is_some()) {
            (Err(UserAuthError::Unauthenticated), true) => {
                let parsed = header.as_deref().ok().and_then(|h| parse_bearer(h).ok());
                match parsed {
                    Some((kind, bearer_agent, token)) => {
                        match self.ask_gitlab(kind, agent_id.unwrap_or(bearer_agent), token) {
                            Ok(Some(user)) => Ok(user),
                            Ok(None) => Err(UserAuthError::Unauthenticated),
                            Err(GateError::Denied(e)) => Err(e),
                            Err(e) => {
                                self.metrics.user_auth_failure("backend");
                                tracing::warn!(%source, error = %e, "GitLab could not authorise an HTTP API request");
                                return Err(e);
                            }
                        }
                    }
                    None => Err(UserAuthError::Unauthenticated),
                }
            }
            (result, _) => result,
        };
        match result {
            Ok(user) => Ok(user),
            Err(e) => {
                let status = e.http_status();
                if status == 401 {
                    self.limiter().record_failure(source, &credential, now);
                    self.metrics.user_auth_failure("unauthenticated");
                } else {
                    self.metrics.user_auth_failure("forbidden");
                }
                tracing::info!(%source, status, error = %e, "HTTP API request not authorised");
                Err(e.into())
            }
        }
    }
}

impl UserGate {
    /// Authenticates a request's credentials (as [`UserGate::authorize`] does, for the bearer's own
    /// agent) and returns the user with every agent they may reach: for routes spanning agents
    /// (`/api/v1/events`). Errors are those of [`UserGate::authorize`].
    pub fn grant(
        &self,
        authorization: Option<&[u8]>,
        source: IpAddr,
    ) -> Result<UserGrant, GateError> {
        let identity = self.authorize(authorization, None, source)?;
        // `authorize` accepted the credentials, so they parse again the same way.
        let header = authorization
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| basic_as_bearer(v).ok());
        let token = header
            .as_deref()
            .and_then(|h| parse_bearer(h).ok())
            .map(|(_, _, token)| token.to_owned())
            .unwrap_or_default();
        self.users
            .authenticate(identity.kind, &token)
            .map_err(GateError::from)
    }
}

/// `Basic base64("<kind>:<agent-id>:<token>")` is accepted as `Bearer <kind>:<agent-id>:<token>`:
/// clients such as kubectl send no bearer token over plain HTTP, but turn credentials in the server
/// URL (`http://pat:1:<token>@host/k8s-proxy`) into Basic authorisation. Other values pass unchanged.
fn basic_as_bearer(value: &str) -> Result<std::borrow::Cow<'_, str>, UserAuthError> {
    use base64::Engine as _;
    let value = value.trim();
    let Some((scheme, encoded)) = crate::split::once(value, b' ') else {
        return Ok(value.into());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(value.into());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| UserAuthError::Malformed)?;
    let credentials = String::from_utf8(decoded).map_err(|_| UserAuthError::Malformed)?;
    Ok(format!("Bearer {credentials}").into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::TokenDigest;
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::time::Duration;

    fn gate(max_failures: u32) -> UserGate {
        let yaml = format!(
            "users:\n- name: alice\n  token_sha256: {}\n  agents: [1]\n",
            TokenDigest::of("alice-token").to_hex()
        );
        let users = UsersFile::from_yaml_str(&yaml, Path::new("users.yaml")).unwrap();
        UserGate::new(
            Arc::new(users),
            RateLimitOptions {
                max_failures,
                window: Duration::from_secs(60),
                max_sources: 10,
            },
            Arc::new(Metrics::new()),
        )
    }

    const SRC: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn statuses() {
        let g = gate(100);
        let ok = g.authorize(Some(b"Bearer pat:1:alice-token"), None, SRC);
        assert_eq!(ok.map(|u| u.agent_id), Ok(1));
        let code = |h: Option<&[u8]>, a| g.authorize(h, a, SRC).map_err(|e| e.http_status());
        assert_eq!(code(None, None).err(), Some(401));
        assert_eq!(code(Some(b"Basic x"), None).err(), Some(401));
        assert_eq!(code(Some(b"Bearer pat:1:nope"), None).err(), Some(401));
        assert_eq!(
            code(Some(b"Bearer pat:2:alice-token"), None).err(),
            Some(403)
        );
        // The URL's agent wins over the bearer's.
        assert_eq!(
            code(Some(b"Bearer pat:1:alice-token"), Some(2)).err(),
            Some(403)
        );
        assert_eq!(
            code(Some(b"Bearer pat:2:alice-token"), Some(1))
                .ok()
                .map(|u| u.agent_id),
            Some(1)
        );
        assert_eq!(code(Some(&[0xff, 0xfe]), None).err(), Some(401));
    }

    #[test]
    fn basic_credentials_carry_the_same_triple() {
        use base64::Engine as _;
        let g = gate(100);
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let basic = format!("Basic {}", enc("pat:1:alice-token"));
        assert_eq!(
            g.authorize(Some(basic.as_bytes()), None, SRC)
                .map(|u| u.agent_id),
            Ok(1)
        );
        let wrong = format!("Basic {}", enc("pat:1:nope"));
        let e = g.authorize(Some(wrong.as_bytes()), None, SRC);
        assert_eq!(e.map_err(|e| e.http_status()).err(), Some(401));
        let e = g.authorize(Some(b"Basic !!!"), None, SRC);
        assert_eq!(e.map_err(|e| e.http_status()).err(), Some(401));
    }

    #[test]
    fn grants_list_the_users_agents() {
        let g = gate(100);
        let grant = g.grant(Some(b"Bearer pat:1:alice-token"), SRC).unwrap();
        assert_eq!(grant.name, "alice");
        assert!(grant.agents.allows(1) && !grant.agents.allows(2));
        let code = |h: Option<&[u8]>| g.grant(h, SRC).map_err(|e| e.http_status()).err();
        assert_eq!(code(None), Some(401));
        assert_eq!(code(Some(b"Bearer pat:1:nope")), Some(401));
        assert_eq!(code(Some(b"Bearer pat:2:alice-token")), Some(403));
    }

    #[test]
    fn failures_are_rate_limited_per_source_and_credential() {
        let g = gate(2);
        for _ in 0..2 {
            assert_eq!(
                g.authorize(Some(b"Bearer pat:1:bad"), None, SRC)
                    .map_err(|e| e.http_status())
                    .err(),
                Some(401)
            );
        }
        let e = g.authorize(Some(b"Bearer pat:1:bad"), None, SRC);
        let e = e
            .err()
            .map(|e| (e.http_status(), matches!(e, GateError::RateLimited { .. })));
        assert_eq!(e, Some((429, true)));
        // A valid token from the same address still works: failures never lock it out.
        assert!(
            g.authorize(Some(b"Bearer pat:1:alice-token"), None, SRC)
                .is_ok()
        );
        // Another source is unaffected even for the bad credential.
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(
            g.authorize(Some(b"Bearer pat:1:bad"), None, other)
                .map_err(|e| e.http_status())
                .err(),
            Some(401)
        );
    }
}
