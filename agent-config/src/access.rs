//! `ci_access:` and `user_access:` — who may use the agent through kas, and as whom it acts in the
//! cluster. Parsed and validated here; the authoriser (issue 14) decides requests against them.

use serde::{Deserialize, Serialize};

use crate::decode::{Decoder, Fields, join};
use crate::error::ErrorKind;
use crate::glob::EnvironmentPattern;
use crate::names::{Namespace, ProjectId};
use crate::yaml::Node;

/// Most entries in each of `ci_access.projects`, `ci_access.groups`, `user_access.projects` and
/// `user_access.groups` (GitLab's limit).
pub const MAX_ACCESS_ENTRIES: usize = 500;

/// `ci_access:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CiAccess {
    /// Projects whose CI jobs may use the agent.
    #[serde(default)]
    pub projects: Vec<CiAccessGrant>,
    /// Groups (and their subgroups) whose projects' CI jobs may use the agent.
    #[serde(default)]
    pub groups: Vec<CiAccessGrant>,
    /// `ci_access.instance`: every project of the instance (GitLab 17.x).
    #[serde(default)]
    pub instance: Option<CiAccessScope>,
}

/// One `ci_access.projects[]` / `ci_access.groups[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiAccessGrant {
    /// The project or group (full path or numeric id).
    pub id: ProjectId,
    /// What the grant allows and as whom.
    #[serde(flatten)]
    pub scope: CiAccessScope,
}

/// The settings of a CI access grant (everything but the id).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CiAccessScope {
    /// Namespace for the job's kubeconfig context.
    #[serde(default)]
    pub default_namespace: Option<Namespace>,
    /// As whom requests act (default: the agent).
    #[serde(default)]
    pub access_as: CiAccessAs,
    /// Only jobs of these environments (empty: any job).
    #[serde(default)]
    pub environments: Vec<EnvironmentPattern>,
    /// Only jobs running for protected branches.
    #[serde(default)]
    pub protected_branches_only: bool,
}

/// `access_as` of a CI access grant: exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CiAccessAs {
    /// `agent: {}` — the agent's own service account (the default).
    #[default]
    Agent,
    /// `impersonate: {…}` — a fixed identity.
    Impersonate(Impersonation),
    /// `ci_job: {}` — the job's identity (`gitlab:ci_job:<id>` and its groups).
    CiJob,
}

/// `access_as.impersonate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impersonation {
    /// `Impersonate-User` (required).
    pub username: String,
    /// `Impersonate-Uid`.
    #[serde(default)]
    pub uid: Option<String>,
    /// `Impersonate-Group`s.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `Impersonate-Extra-<key>`s.
    #[serde(default)]
    pub extra: Vec<ExtraKeyVal>,
}

/// One `impersonate.extra[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraKeyVal {
    /// The extra's key.
    pub key: String,
    /// Its values (at least one).
    pub val: Vec<String>,
}

/// `user_access:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserAccess {
    /// As whom users' requests act; required when projects or groups are listed.
    #[serde(default)]
    pub access_as: Option<UserAccessAs>,
    /// Projects whose members may use the agent.
    #[serde(default)]
    pub projects: Vec<ProjectId>,
    /// Groups whose members may use the agent.
    #[serde(default)]
    pub groups: Vec<ProjectId>,
}

/// `user_access.access_as`: exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserAccessAs {
    /// `agent: {}` — the agent's own service account.
    Agent,
    /// `user: {}` — the user's identity (`gitlab:user:<username>` and role groups).
    User,
}

const GRANT_KEYS: &[&str] = &[
    "id",
    "default_namespace",
    "access_as",
    "environments",
    "protected_branches_only",
];

pub(crate) fn decode_ci(d: &mut Decoder, node: &Node, path: &str) -> CiAccess {
    let Some(f) = d.fields(node, path, &["projects", "groups", "instance"]) else {
        return CiAccess::default();
    };
    let mut out = CiAccess::default();
    for (key, list) in [("projects", &mut out.projects), ("groups", &mut out.groups)] {
        if let Some(n) = f.get(key) {
            *list = d.bounded_list(n, &f.path_of(key), MAX_ACCESS_ENTRIES, |d, item, path| {
                let g = d.fields(item, path, GRANT_KEYS)?;
                let id = required_id(d, &g)?;
                Some(CiAccessGrant {
                    id,
                    scope: scope(d, &g),
                })
            });
        }
    }
    if let Some(n) = f.get("instance") {
        let keys = &GRANT_KEYS[1..];
        if let Some(g) = d.fields(n, &f.path_of("instance"), keys) {
            out.instance = Some(scope(d, &g));
        }
    }
    out
}

fn required_id(d: &mut Decoder, g: &Fields<'_>) -> Option<ProjectId> {
    match g.get("id") {
        Some(n) => d.checked(n, &g.path_of("id"), ProjectId::new),
        None => {
            d.error(
                ErrorKind::Missing,
                &g.path_of("id"),
                g.pos,
                "`id` is required",
            );
            None
        }
    }
}

fn scope(d: &mut Decoder, g: &Fields<'_>) -> CiAccessScope {
    let mut s = CiAccessScope::default();
    if let Some(n) = g.get("default_namespace") {
        s.default_namespace = d.checked(n, &g.path_of("default_namespace"), Namespace::new);
    }
    if let Some(n) = g.get("access_as")
        && let Some(a) = ci_access_as(d, n, &g.path_of("access_as"))
    {
        s.access_as = a;
    }
    if let Some(n) = g.get("environments") {
        s.environments = d.list(n, &g.path_of("environments"), |d, item, path| {
            d.checked(item, path, EnvironmentPattern::new)
        });
    }
    if let Some(n) = g.get("protected_branches_only") {
        s.protected_branches_only = d
            .boolean(n, &g.path_of("protected_branches_only"))
            .unwrap_or(false);
    }
    s
}

/// The single key of an `access_as` mapping, or an error naming the choices.
fn exactly_one<'n>(
    d: &mut Decoder,
    node: &'n Node,
    path: &str,
    choices: &[&str],
) -> Option<&'n crate::yaml::Entry> {
    let f = d.fields(node, path, choices)?;
    let present: Vec<_> = f
        .present()
        .filter(|e| choices.contains(&e.key.as_str()))
        .collect();
    // `agent: {}` and `agent:` (null) both select `agent`.
    let all: Vec<_> = node
        .as_map()
        .unwrap_or_default()
        .iter()
        .filter(|e| choices.contains(&e.key.as_str()))
        .collect();
    let picked = if present.is_empty() { all } else { present };
    match picked.as_slice() {
        [one] => Some(one),
        [] => {
            // An unknown key (already reported with the choices) is the likelier mistake.
            let unknown = node.as_map().is_some_and(|m| !m.is_empty());
            if !unknown {
                d.error(
                    ErrorKind::Missing,
                    path,
                    node.pos,
                    format!("exactly one of {} is required", quoted(choices)),
                );
            }
            None
        }
        [first, rest @ ..] => {
            for e in rest {
                d.error(
                    ErrorKind::InvalidValue,
                    &join(path, &e.key),
                    e.key_pos,
                    format!(
                        "`{}` and `{}` are both set; give exactly one of {}",
                        first.key,
                        e.key,
                        quoted(choices)
                    ),
                );
            }
            None
        }
    }
}

fn quoted(choices: &[&str]) -> String {
    choices
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ci_access_as(d: &mut Decoder, node: &Node, path: &str) -> Option<CiAccessAs> {
    let e = exactly_one(d, node, path, &["agent", "impersonate", "ci_job"])?;
    let p = join(path, &e.key);
    match e.key.as_str() {
        "agent" => {
            d.empty(&e.value, &p);
            Some(CiAccessAs::Agent)
        }
        "ci_job" => {
            d.empty(&e.value, &p);
            Some(CiAccessAs::CiJob)
        }
        _ => impersonation(d, &e.value, &p).map(CiAccessAs::Impersonate),
    }
}

fn non_empty(what: &'static str) -> impl Fn(&str) -> Result<String, String> {
    move |s: &str| {
        if s.is_empty() {
            Err(format!("{what} must not be empty"))
        } else {
            Ok(s.to_string())
        }
    }
}

fn impersonation(d: &mut Decoder, node: &Node, path: &str) -> Option<Impersonation> {
    let f = d.fields(node, path, &["username", "uid", "groups", "extra"]);
    let Some(f) = f else {
        if node.is_null() {
            d.error(
                ErrorKind::Missing,
                &join(path, "username"),
                node.pos,
                "`username` is required",
            );
        }
        return None;
    };
    let username = match f.get("username") {
        Some(n) => d.checked(n, &f.path_of("username"), non_empty("the username")),
        None => {
            d.error(
                ErrorKind::Missing,
                &f.path_of("username"),
                f.pos,
                "`username` is required",
            );
            None
        }
    };
    let uid = f
        .get("uid")
        .and_then(|n| d.checked(n, &f.path_of("uid"), non_empty("the uid")));
    let groups = f.get("groups").map_or_else(Vec::new, |n| {
        d.list(n, &f.path_of("groups"), |d, item, path| {
            d.checked(item, path, non_empty("a group"))
        })
    });
    let extra = f.get("extra").map_or_else(Vec::new, |n| {
        d.list(n, &f.path_of("extra"), |d, item, path| {
            let e = d.fields(item, path, &["key", "val"])?;
            let key = match e.get("key") {
                Some(k) => d.checked(k, &e.path_of("key"), non_empty("the key"))?,
                None => {
                    d.error(
                        ErrorKind::Missing,
                        &e.path_of("key"),
                        e.pos,
                        "`key` is required",
                    );
                    return None;
                }
            };
            let val = e.get("val").map_or_else(Vec::new, |v| {
                d.list(v, &e.path_of("val"), |d, item, path| {
                    d.checked(item, path, non_empty("a value"))
                })
            });
            if val.is_empty() {
                d.error(
                    ErrorKind::Missing,
                    &e.path_of("val"),
                    e.pos,
                    "`val` needs at least one value",
                );
                return None;
            }
            Some(ExtraKeyVal { key, val })
        })
    });
    Some(Impersonation {
        username: username?,
        uid,
        groups,
        extra,
    })
}

pub(crate) fn decode_user(d: &mut Decoder, node: &Node, path: &str) -> UserAccess {
    let Some(f) = d.fields(node, path, &["access_as", "projects", "groups"]) else {
        return UserAccess::default();
    };
    let mut out = UserAccess::default();
    if let Some(n) = f.get("access_as") {
        let p = f.path_of("access_as");
        if let Some(e) = exactly_one(d, n, &p, &["agent", "user"]) {
            d.empty(&e.value, &join(&p, &e.key));
            out.access_as = Some(if e.key == "agent" {
                UserAccessAs::Agent
            } else {
                UserAccessAs::User
            });
        }
    }
    for (key, list) in [("projects", &mut out.projects), ("groups", &mut out.groups)] {
        if let Some(n) = f.get(key) {
            *list = d.bounded_list(n, &f.path_of(key), MAX_ACCESS_ENTRIES, |d, item, path| {
                let g = d.fields(item, path, &["id"])?;
                required_id(d, &g)
            });
        }
    }
    if out.access_as.is_none()
        && f.get("access_as").is_none()
        && (!out.projects.is_empty() || !out.groups.is_empty())
    {
        d.error(
            ErrorKind::Missing,
            &f.path_of("access_as"),
            f.pos,
            "`access_as` is required (`agent: {}` or `user: {}`)",
        );
    }
    out
}
