//! As whom a request acts in the cluster, and GitLab's exact identities for CI jobs and users.

use std::collections::BTreeMap;

use agent_config::Impersonation;

use crate::requester::{AgentContext, CiJob, Membership, Role, User};

/// The prefix of every extra key GitLab sets.
pub const EXTRA_PREFIX: &str = "agent.gitlab.com/";

/// As whom a request acts in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActAs {
    /// The agent's own service account: no impersonation.
    Agent,
    /// Kubernetes impersonation of this identity.
    Impersonate {
        /// `Impersonate-User`.
        user: String,
        /// `Impersonate-Uid`.
        uid: Option<String>,
        /// `Impersonate-Group`s, in order.
        groups: Vec<String>,
        /// `Impersonate-Extra-<key>`s.
        extra: BTreeMap<String, Vec<String>>,
    },
}

impl ActAs {
    /// The impersonated username, `None` for the agent's own identity.
    pub fn username(&self) -> Option<&str> {
        match self {
            ActAs::Agent => None,
            ActAs::Impersonate { user, .. } => Some(user),
        }
    }
}

/// For logs and the audit log: `agent` or the impersonated username.
impl std::fmt::Display for ActAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.username().unwrap_or("agent"))
    }
}

fn extra(pairs: impl IntoIterator<Item = (&'static str, String)>) -> BTreeMap<String, Vec<String>> {
    pairs
        .into_iter()
        .map(|(k, v)| (format!("{EXTRA_PREFIX}{k}"), vec![v]))
        .collect()
}

/// A CI job's identity (`access_as: ci_job`): user `gitlab:ci_job:<job id>`; groups `gitlab:ci_job`,
/// `gitlab:project:<pid>`, with an environment `gitlab:project_env:<pid>:<env slug>` and
/// `gitlab:project_env_tier:<pid>:<tier>`, then per ancestor group (closest first)
/// `gitlab:group:<gid>` and, with an environment, `gitlab:group_env_tier:<gid>:<tier>`; extras
/// `agent.gitlab.com/{id, config_project_id, project_id, ci_pipeline_id, ci_job_id, username}` and,
/// with an environment, `environment_slug`, `environment_tier`.
pub fn ci_job_identity(agent: &AgentContext, job: &CiJob) -> ActAs {
    let pid = job.project.id;
    let mut groups = vec!["gitlab:ci_job".to_string(), format!("gitlab:project:{pid}")];
    if let Some(env) = &job.environment {
        groups.push(format!("gitlab:project_env:{pid}:{}", env.slug));
        groups.push(format!("gitlab:project_env_tier:{pid}:{}", env.tier));
    }
    for g in &job.ancestor_groups {
        groups.push(format!("gitlab:group:{}", g.id));
        if let Some(env) = &job.environment {
            groups.push(format!("gitlab:group_env_tier:{}:{}", g.id, env.tier));
        }
    }
    let mut extra = extra([
        ("id", agent.agent_id.to_string()),
        ("config_project_id", agent.config_project.id.to_string()),
        ("project_id", pid.to_string()),
        ("ci_pipeline_id", job.pipeline_id.to_string()),
        ("ci_job_id", job.job_id.to_string()),
        ("username", job.username.clone()),
    ]);
    if let Some(env) = &job.environment {
        extra.extend(self::extra([
            ("environment_slug", env.slug.clone()),
            ("environment_tier", env.tier.clone()),
        ]));
    }
    ActAs::Impersonate {
        user: format!("gitlab:ci_job:{}", job.job_id),
        uid: None,
        groups,
        extra,
    }
}

/// A user's identity (`user_access.access_as: user`): user `gitlab:user:<username>`; groups
/// `gitlab:user`, then for each given project membership `gitlab:project_role:<pid>:<role>` and for
/// each group membership `gitlab:group_role:<gid>:<role>` — one group per role up to and including
/// the user's (a maintainer also gets `…:developer`, so a binding to developers covers them); extras
/// `agent.gitlab.com/{id, username, config_project_id, access_type}`. The caller passes only the
/// memberships of projects and groups listed in `user_access`.
pub fn user_identity(
    agent: &AgentContext,
    user: &User,
    projects: &[&Membership],
    groups: &[&Membership],
) -> ActAs {
    let mut out = vec!["gitlab:user".to_string()];
    for (kind, list) in [("project_role", projects), ("group_role", groups)] {
        for m in list {
            for role in Role::ALL.iter().filter(|r| **r <= m.role) {
                out.push(format!("gitlab:{kind}:{}:{role}", m.of.id));
            }
        }
    }
    ActAs::Impersonate {
        user: format!("gitlab:user:{}", user.username),
        uid: None,
        groups: out,
        extra: extra([
            ("id", agent.agent_id.to_string()),
            ("username", user.username.clone()),
            ("config_project_id", agent.config_project.id.to_string()),
            ("access_type", user.access_type.as_str().to_string()),
        ]),
    }
}

/// A fixed identity from `access_as: impersonate` (extras with the same key are merged, in order).
pub fn configured_identity(i: &Impersonation) -> ActAs {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kv in &i.extra {
        extra
            .entry(kv.key.clone())
            .or_default()
            .extend(kv.val.iter().cloned());
    }
    ActAs::Impersonate {
        user: i.username.clone(),
        uid: i.uid.clone(),
        groups: i.groups.clone(),
        extra,
    }
}
