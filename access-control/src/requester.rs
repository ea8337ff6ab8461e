//! Who is asking, as kas learns it: a CI job (from its job token, `/api/v4/job`) or a user (from
//! `authorize_proxy_user` or kas's users file), and the agent being asked.

use std::fmt;

/// A GitLab project or group as kas knows it: numeric id and full path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GitlabRef {
    /// The numeric id.
    pub id: u64,
    /// The full path (`group/sub/project`).
    pub path: String,
}

impl GitlabRef {
    /// A project or group.
    pub fn new(id: u64, path: impl Into<String>) -> Self {
        GitlabRef {
            id,
            path: path.into(),
        }
    }

    /// Whether a configuration id (full path or numeric id) names this project or group. GitLab
    /// looks paths up case-insensitively.
    pub fn is_named_by(&self, config_id: &agent_config::ProjectId) -> bool {
        let s = config_id.as_str();
        s.eq_ignore_ascii_case(&self.path) || s.parse::<u64>().is_ok_and(|id| id == self.id)
    }
}

/// The agent a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentContext {
    /// The agent's id.
    pub agent_id: u64,
    /// The project holding the agent's configuration (its CI jobs are authorised implicitly).
    pub config_project: GitlabRef,
}

/// The environment a CI job deploys to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// The environment's name (`review/feature-1`): what `ci_access.environments` globs match.
    pub name: String,
    /// Its slug (`review-feature-1-abc123`): what identities carry.
    pub slug: String,
    /// Its tier (`production`, `staging`, `testing`, `development`, `other`).
    pub tier: String,
}

/// A CI job using the agent through its job token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiJob {
    /// The job's id.
    pub job_id: u64,
    /// The job's pipeline.
    pub pipeline_id: u64,
    /// The user the job runs for.
    pub username: String,
    /// The job's project.
    pub project: GitlabRef,
    /// The project's ancestor groups, closest first (the parent namespace, then its parent, …).
    pub ancestor_groups: Vec<GitlabRef>,
    /// The environment the job deploys to, if any.
    pub environment: Option<Environment>,
    /// Whether the job's ref is a protected branch (or tag).
    pub ref_protected: bool,
}

/// A GitLab role, ordered from least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Guest.
    Guest,
    /// Reporter.
    Reporter,
    /// Developer: the least role `user_access` accepts.
    Developer,
    /// Maintainer.
    Maintainer,
    /// Owner.
    Owner,
}

impl Role {
    /// Every role, least privileged first.
    pub const ALL: [Role; 5] = [
        Role::Guest,
        Role::Reporter,
        Role::Developer,
        Role::Maintainer,
        Role::Owner,
    ];

    /// GitLab's name for the role, as in `gitlab:project_role:<id>:<role>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Reporter => "reporter",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::Owner => "owner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a user authenticated to kas (`agent.gitlab.com/access_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessType {
    /// A personal access token.
    PersonalAccessToken,
    /// A GitLab web session cookie (with CSRF token).
    SessionCookie,
}

impl AccessType {
    /// GitLab's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessType::PersonalAccessToken => "personal_access_token",
            AccessType::SessionCookie => "session_cookie",
        }
    }
}

/// The user's effective (direct or inherited) role in one project or group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The project or group.
    pub of: GitlabRef,
    /// The user's role there.
    pub role: Role,
}

/// A user using the agent with their own credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id.
    pub user_id: u64,
    /// The username.
    pub username: String,
    /// How they authenticated.
    pub access_type: AccessType,
    /// Their roles in projects.
    pub project_roles: Vec<Membership>,
    /// Their roles in groups.
    pub group_roles: Vec<Membership>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// A CI job.
    CiJob(CiJob),
    /// A user.
    User(User),
}
