//! Who is calling: the users table (bearer token → user), authentication of a request, and the
//! identity Kubernetes attaches to it (`user.Info`: name, uid, groups, extra).
//!
//! Credentials:
//!
//! * the server's admin token ([`crate::ApiServerConfig::bearer_token`]) is
//!   [`UserInfo::admin`], `kubernetes-admin` in `system:masters` (allowed everything);
//! * each [`User`] of [`crate::ApiServerConfig::users`] (or of `sim-apiserver --users FILE`) is
//!   its own identity, e.g. the agent's service account [`User::service_account`];
//! * a request without a known credential is refused (401 `Unauthorized`) when the server has an
//!   admin token; on an open server (no admin token, the default of the tests and the demo) it
//!   acts as the admin, as the old insecure port of kube-apiserver did.
//!
//! Every authenticated identity is in the group `system:authenticated`, as in Kubernetes. Tokens
//! are compared in constant time and never logged.

use std::collections::BTreeMap;

use http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::status::ApiError;

/// The group every authenticated identity is in.
pub const ALL_AUTHENTICATED: &str = "system:authenticated";
/// The group of unauthenticated requests.
pub const ALL_UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group allowed everything.
pub const MASTERS: &str = "system:masters";
/// The prefix of service account user names (`system:serviceaccount:NS:NAME`).
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An identity, as Kubernetes' `user.Info` and `SelfSubjectReview.status.userInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User name (`jane`, `system:serviceaccount:gitlab-agent:agentk`).
    pub username: String,
    /// Unique id (may be empty).
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (keys are lower case).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user `name` in `groups` (plus `system:authenticated`).
    pub fn new(name: &str, groups: &[&str]) -> Self {
        Self {
            username: name.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Self::default()
        }
        .authenticated()
    }

    /// The admin identity of the server's own credential: `kubernetes-admin` in
    /// `system:masters`.
    pub fn admin() -> Self {
        Self::new("kubernetes-admin", &[MASTERS])
    }

    /// Adds `system:authenticated` unless present (or the identity is unauthenticated).
    pub fn authenticated(mut self) -> Self {
        if !self
            .groups
            .iter()
            .any(|g| g == ALL_AUTHENTICATED || g == ALL_UNAUTHENTICATED)
        {
            self.groups.push(ALL_AUTHENTICATED.to_string());
        }
        self
    }

    /// Whether the identity is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// `SelfSubjectReview.status.userInfo` / `SubjectAccessReview` style JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.username, "groups": self.groups});
        if let Some(o) = v.as_object_mut() {
            if !self.uid.is_empty() {
                o.insert("uid".into(), json!(self.uid));
            }
            if !self.extra.is_empty() {
                o.insert("extra".into(), json!(self.extra));
            }
        }
        v
    }
}

/// The namespace and name of a service account user name (`system:serviceaccount:NS:NAME`).
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// One credential of the users table: a bearer token and the identity it authenticates.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The bearer token (never logged).
    pub token: String,
    /// Who presents it.
    pub info: UserInfo,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("token", &"<redacted>")
            .field("info", &self.info)
            .finish()
    }
}

impl User {
    /// A user `name` in `groups` authenticated by `token`.
    pub fn new(token: &str, name: &str, groups: &[&str]) -> Self {
        Self {
            token: token.to_string(),
            info: UserInfo::new(name, groups),
        }
    }

    /// The service account `namespace/name` authenticated by `token`, with the groups
    /// Kubernetes gives service accounts (`system:serviceaccounts`,
    /// `system:serviceaccounts:NS`). The agent's own credential is such a user, e.g.
    /// `User::service_account("gitlab-agent", "agentk", token)`.
    pub fn service_account(namespace: &str, name: &str, token: &str) -> Self {
        let ns_group = format!("system:serviceaccounts:{namespace}");
        Self::new(
            token,
            &format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"),
            &["system:serviceaccounts", &ns_group],
        )
    }
}

/// The users file of `sim-apiserver --users FILE` (YAML or JSON).
///
/// ```yaml
/// users:
///   - token: s3cret
///     username: system:serviceaccount:gitlab-agent:agentk
///     groups: [system:serviceaccounts, system:serviceaccounts:gitlab-agent]
///   - token: jane-token
///     username: jane
///     uid: "1001"
///     groups: [developers]
///     extra: {team: [blue]}
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The credentials.
    pub users: Vec<UserEntry>,
}

/// One entry of a [`UsersFile`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The bearer token.
    #[serde(default)]
    pub token: String,
    /// User name (`name` is accepted too).
    #[serde(default, alias = "name")]
    pub username: String,
    /// Unique id.
    #[serde(default)]
    pub uid: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes.
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Errors reading a users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// Not valid YAML of the expected shape.
    #[error("the users file is not valid: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// A credential has no token or no user name, or two credentials share a token.
    #[error("the users file is not valid: user #{index} {problem}")]
    Invalid {
        /// Position (from 1).
        index: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

impl UsersFile {
    /// Parses and checks a users file; every user gets `system:authenticated`.
    pub fn parse(text: &str) -> Result<Vec<User>, UsersFileError> {
        let file: UsersFile = serde_yaml::from_str(text)?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(file.users.len());
        for (i, e) in file.users.into_iter().enumerate() {
            let u = User {
                token: e.token,
                info: UserInfo {
                    username: e.username,
                    uid: e.uid,
                    groups: e.groups,
                    extra: e.extra,
                }
                .authenticated(),
            };
            let invalid = |problem| UsersFileError::Invalid {
                index: i + 1,
                problem,
            };
            if u.token.is_empty() {
                return Err(invalid("has no token"));
            }
            if u.info.username.is_empty() {
                return Err(invalid("has no username"));
            }
            if !seen.insert(u.token.clone()) {
                return Err(invalid("repeats the token of an earlier user"));
            }
            out.push(u);
        }
        Ok(out)
    }
}

/// The authenticator: the users table and what a request without a known credential is.
#[derive(Debug, Clone)]
pub struct Authenticator {
    users: Vec<User>,
    /// Whether credential-less requests act as the admin (open server).
    open: bool,
}

fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Authenticator {
    /// The admin token (if any) and the other users. Without an admin token the server is
    /// open: requests without a known credential act as the admin.
    pub fn new(admin_token: Option<&str>, users: &[User]) -> Self {
        let mut all: Vec<User> = Vec::with_capacity(users.len() + 1);
        if let Some(t) = admin_token {
            all.push(User {
                token: t.to_string(),
                info: UserInfo::admin(),
            });
        }
        all.extend(users.iter().cloned().map(|mut u| {
            u.info = u.info.authenticated();
            u
        }));
        Self {
            users: all,
            open: admin_token.is_none(),
        }
    }

    /// The identity of a request: its bearer token's user; the admin on an open server when the
    /// token is absent or unknown; otherwise 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Compare with every token (no early exit) so timing says nothing about which matched.
        let found = token.and_then(|t| {
            self.users.iter().fold(None, |acc, u| {
                if same_token(&u.token, t) {
                    Some(u)
                } else {
                    acc
                }
            })
        });
        match found {
            Some(u) => Ok(u.info.clone()),
            None if self.open => Ok(UserInfo::admin()),
            None => Err(ApiError::unauthorized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap_or(HeaderValue::from_static("")),
        );
        h
    }

    #[test]
    fn authenticates_by_token() {
        let a = Authenticator::new(
            Some("admin-tok"),
            &[User::service_account("gitlab-agent", "agentk", "agent-tok")],
        );
        assert_eq!(a.authenticate(&bearer("admin-tok")), Ok(UserInfo::admin()));
        let agent = a.authenticate(&bearer("agent-tok")).unwrap_or_default();
        assert_eq!(agent.username, "system:serviceaccount:gitlab-agent:agentk");
        assert_eq!(
            agent.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:gitlab-agent",
                "system:authenticated"
            ]
        );
        assert_eq!(
            a.authenticate(&bearer("nope")).map_err(|e| e.code.as_u16()),
            Err(401)
        );
        assert!(a.authenticate(&HeaderMap::new()).is_err());
        // Open server: missing or unknown credentials act as the admin; known ones as themselves.
        let open = Authenticator::new(None, &[User::new("jane-tok", "jane", &[])]);
        assert_eq!(open.authenticate(&HeaderMap::new()), Ok(UserInfo::admin()));
        assert_eq!(open.authenticate(&bearer("x")), Ok(UserInfo::admin()));
        assert_eq!(
            open.authenticate(&bearer("jane-tok")).map(|u| u.username),
            Ok("jane".to_string())
        );
    }

    #[test]
    fn users_file() {
        let users = UsersFile::parse(
            "users:\n- token: t1\n  username: jane\n  uid: '7'\n  groups: [dev]\n  extra: {team: [blue]}\n- token: t2\n  name: bob\n",
        )
        .unwrap_or_default();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].info.groups, vec!["dev", "system:authenticated"]);
        assert_eq!(users[0].info.extra["team"], vec!["blue"]);
        assert_eq!(users[1].info.username, "bob");
        assert!(format!("{:?}", users[0]).contains("redacted"));
        assert!(!format!("{:?}", users[0]).contains("t1"));
        for bad in [
            "users:\n- token: ''\n  username: a\n",
            "users:\n- token: a\n",
            "users:\n- {token: a, username: x}\n- {token: a, username: y}\n",
            "users: 3",
            "users:\n- {token: a, username: x, color: red}\n",
        ] {
            assert!(UsersFile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_account_names() {
        assert_eq!(
            service_account_of("system:serviceaccount:ns:sa"),
            Some(("ns", "sa"))
        );
        assert_eq!(service_account_of("system:serviceaccount:ns"), None);
        assert_eq!(service_account_of("jane"), None);
    }
}
