//! [`decide`]: the one authorisation decision for a request through kas.
//!
//! CI jobs (`ci_access`): the most specific grant that names the job's project decides, with no
//! fall-back to a less specific one (as GitLab, which keeps one authorisation per agent): a
//! `projects[]` entry, else a `groups[]` entry for the closest ancestor group that has one (groups
//! cover all their subgroups), else `instance`, else — for the agent's own configuration project
//! only — an implicit grant acting as the agent. The chosen grant's `environments` (when listed,
//! the job's environment name must match one glob; a job without an environment is refused) and
//! `protected_branches_only` (the job's ref must be protected) must then hold.
//!
//! Users (`user_access`): the user needs at least the Developer role ([`MIN_USER_ROLE`], GitLab's
//! rule) in a project or group listed there; `access_as: user` carries a role group for each such
//! project and group.
//!
//! Client `Impersonate-*` headers: refused when the request already impersonates (GitLab: nested
//! impersonation is not supported); under `access_as: agent` they are allowed only after the
//! cluster agrees (`needs_review`).

use agent_config::{CiAccess, CiAccessAs, CiAccessScope, ConfigFile, UserAccess, UserAccessAs};

use crate::client::ClientImpersonation;
use crate::identity::{ActAs, ci_job_identity, configured_identity, user_identity};
use crate::requester::{AgentContext, CiJob, Membership, Requester, Role, User};

/// The least role a user needs in a listed project or group (GitLab: Developer).
pub const MIN_USER_ROLE: Role = Role::Developer;

/// Which grant allowed a request (for the audit log and `default_namespace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchedGrant {
    /// `ci_access.projects[index]`.
    CiProject {
        /// Index in `ci_access.projects`.
        index: usize,
    },
    /// `ci_access.groups[index]`, for the job's ancestor group `group_id`.
    CiGroup {
        /// Index in `ci_access.groups`.
        index: usize,
        /// The ancestor group it named.
        group_id: u64,
    },
    /// `ci_access.instance`.
    CiInstance,
    /// The implicit grant of the agent's configuration project to its own CI jobs.
    ConfigProject,
    /// `user_access`.
    UserAccess,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may go to the cluster.
    Allow {
        /// As whom it acts.
        act_as: ActAs,
        /// Which grant allowed it.
        grant: MatchedGrant,
        /// The client's own impersonation, allowed only if the cluster says the agent's identity may
        /// impersonate it (a SubjectAccessReview through the tunnel, done by kas before sending);
        /// `None` when the client asked for none.
        needs_review: Option<ClientImpersonation>,
    },
    /// The request is refused (kas answers 403 with the reason's message).
    Deny {
        /// Why.
        reason: DenyReason,
    },
}

/// Why a request is refused: the requester's standing, never kas's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// No `ci_access` / `user_access` entry covers the requester.
    #[error("the agent's configuration grants no access to this {requester}")]
    NoGrant {
        /// `CI job` or `user`.
        requester: &'static str,
    },
    /// The grant lists environments and the job's is not among them.
    #[error("{}", match environment {
        Some(e) => format!("the grant does not allow jobs of environment `{e}`"),
        None => "the grant allows only jobs with an environment, and this job has none".to_string(),
    })]
    EnvironmentNotAllowed {
        /// The job's environment name, if any.
        environment: Option<String>,
    },
    /// The grant is `protected_branches_only` and the job's ref is not protected.
    #[error("the grant allows only jobs running for protected branches")]
    UnprotectedRef,
    /// The user's role in the listed projects and groups is below Developer.
    #[error(
        "user access needs at least the developer role in a listed project or group; the user's highest there is {role}"
    )]
    InsufficientRole {
        /// The user's highest role among the listed projects and groups.
        role: Role,
    },
    /// The client sent `Impersonate-*` headers while the grant already impersonates.
    #[error(
        "the request already acts as an impersonated identity; nested impersonation (Impersonate-* headers) is not supported"
    )]
    NestedImpersonationRefused,
}

impl DenyReason {
    /// A stable label for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::NoGrant { .. } => "no_grant",
            DenyReason::EnvironmentNotAllowed { .. } => "environment_not_allowed",
            DenyReason::UnprotectedRef => "unprotected_ref",
            DenyReason::InsufficientRole { .. } => "insufficient_role",
            DenyReason::NestedImpersonationRefused => "nested_impersonation_refused",
        }
    }

    /// The human message (kas's 403 body).
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// [`decide`] with the grants of a parsed configuration file.
pub fn decide_for_config(
    file: &ConfigFile,
    agent: &AgentContext,
    requester: &Requester,
    client: &ClientImpersonation,
) -> Decision {
    decide(&file.ci_access, &file.user_access, agent, requester, client)
}

/// Decides a request of `requester` to the agent `agent`, whose configuration grants `ci_access`
/// and `user_access`, with the client's own impersonation `client`.
pub fn decide(
    ci_access: &CiAccess,
    user_access: &UserAccess,
    agent: &AgentContext,
    requester: &Requester,
    client: &ClientImpersonation,
) -> Decision {
    let granted = match requester {
        Requester::CiJob(job) => decide_ci(ci_access, agent, job),
        Requester::User(user) => decide_user(user_access, agent, user),
    };
    match granted {
        Err(reason) => Decision::Deny { reason },
        Ok((ActAs::Impersonate { .. }, _)) if !client.is_empty() => Decision::Deny {
            reason: DenyReason::NestedImpersonationRefused,
        },
        Ok((act_as, grant)) => {
            debug_assert!(client.is_empty() || act_as == ActAs::Agent);
            Decision::Allow {
                act_as,
                grant,
                needs_review: (!client.is_empty()).then(|| client.clone()),
            }
        }
    }
}

fn decide_ci(
    ci: &CiAccess,
    agent: &AgentContext,
    job: &CiJob,
) -> Result<(ActAs, MatchedGrant), DenyReason> {
    let Some((scope, grant)) = ci_grant(ci, agent, job) else {
        return Err(DenyReason::NoGrant {
            requester: "CI job",
        });
    };
    let Some(scope) = scope else {
        // The configuration project's implicit grant: no conditions, the agent's identity.
        return Ok((ActAs::Agent, grant));
    };
    if !scope.environments.is_empty() {
        let env = job.environment.as_ref().map(|e| e.name.as_str());
        if !env.is_some_and(|e| scope.environments.iter().any(|p| p.matches(e))) {
            return Err(DenyReason::EnvironmentNotAllowed {
                environment: env.map(str::to_string),
            });
        }
    }
    if scope.protected_branches_only && !job.ref_protected {
        return Err(DenyReason::UnprotectedRef);
    }
    let act_as = match &scope.access_as {
        CiAccessAs::Agent => ActAs::Agent,
        CiAccessAs::Impersonate(i) => configured_identity(i),
        CiAccessAs::CiJob => ci_job_identity(agent, job),
    };
    Ok((act_as, grant))
}

/// The most specific grant for the job (`None` scope: the implicit configuration-project grant).
fn ci_grant<'c>(
    ci: &'c CiAccess,
    agent: &AgentContext,
    job: &CiJob,
) -> Option<(Option<&'c CiAccessScope>, MatchedGrant)> {
    if let Some(index) = ci
        .projects
        .iter()
        .position(|g| job.project.is_named_by(&g.id))
    {
        return Some((
            Some(&ci.projects[index].scope),
            MatchedGrant::CiProject { index },
        ));
    }
    for group in &job.ancestor_groups {
        if let Some(index) = ci.groups.iter().position(|g| group.is_named_by(&g.id)) {
            return Some((
                Some(&ci.groups[index].scope),
                MatchedGrant::CiGroup {
                    index,
                    group_id: group.id,
                },
            ));
        }
    }
    if let Some(scope) = &ci.instance {
        return Some((Some(scope), MatchedGrant::CiInstance));
    }
    (job.project.id == agent.config_project.id).then_some((None, MatchedGrant::ConfigProject))
}

fn decide_user(
    ua: &UserAccess,
    agent: &AgentContext,
    user: &User,
) -> Result<(ActAs, MatchedGrant), DenyReason> {
    let no_grant = DenyReason::NoGrant { requester: "user" };
    let Some(access_as) = ua.access_as else {
        return Err(no_grant);
    };
    let projects = listed(&user.project_roles, &ua.projects);
    let groups = listed(&user.group_roles, &ua.groups);
    let listed_roles = projects
        .iter()
        .map(|&i| &user.project_roles[i])
        .chain(groups.iter().map(|&i| &user.group_roles[i]));
    let Some(best) = listed_roles.map(|m| m.role).max() else {
        return Err(no_grant);
    };
    if best < MIN_USER_ROLE {
        return Err(DenyReason::InsufficientRole { role: best });
    }
    let act_as = match access_as {
        UserAccessAs::Agent => ActAs::Agent,
        UserAccessAs::User => {
            let p = qualifying(&user.project_roles, &projects);
            let g = qualifying(&user.group_roles, &groups);
            user_identity(agent, user, &p, &g)
        }
    };
    Ok((act_as, MatchedGrant::UserAccess))
}

/// Indices of the memberships whose project or group one of `ids` names.
fn listed(ms: &[Membership], ids: &[agent_config::ProjectId]) -> Vec<usize> {
    (0..ms.len())
        .filter(|&i| ids.iter().any(|id| ms[i].of.is_named_by(id)))
        .collect()
}

/// The memberships at `idx` with at least [`MIN_USER_ROLE`].
fn qualifying<'m>(ms: &'m [Membership], idx: &[usize]) -> Vec<&'m Membership> {
    idx.iter()
        .map(|&i| &ms[i])
        .filter(|m| m.role >= MIN_USER_ROLE)
        .collect()
}
