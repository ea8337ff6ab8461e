//! Who may do what through kas: each request through an agent's tunnel is authorised against the
//! grants of the agent's configuration (`ci_access`, `user_access`, from Git:
//! [`crate::agent_config::AgentConfigs::good`]) with the one decision, [`access_control::decide`],
//! and the identity it decides travels to agentk in the request head
//! ([`protocol::proto::RequestHead::impersonation`]), which agentk applies as Kubernetes
//! `Impersonate-*` headers.
//!
//! - A kas operator ([`Principal::Operator`]: the users file's `agents`) acts as the agent.
//! - A GitLab user or CI job ([`Principal::Gitlab`]) is decided against the agent's configuration;
//!   an agent without a configuration grants nothing (but CI jobs of its configuration project).
//!   A request no grant covers is 403 with the reason ([`access_control::DenyReason`]), counted in
//!   `kas_access_denied_total{reason}`.
//! - The client's own `Impersonate-*` headers: operators' are stripped by the forwarding rule (as
//!   always); a GitLab requester's are refused with 403 under an impersonating grant (nested
//!   impersonation, as GitLab); under `access_as: agent` — beyond GitLab — they are allowed only when
//!   the cluster says the agent may impersonate every part of that identity
//!   ([`review`]: `SelfSubjectAccessReview`s through the tunnel), and then logged at `info`
//!   ("nested impersonation allowed") with [`DecidedAccess::nested`] set for the audit record.
//! - Routes other than the Kubernetes API (`service-proxy`, `cache`) act as the agent: a grant that
//!   impersonates does not extend to them (403).
//!
//! [`DecidedAccess`] is what was decided, for logs and the audit log (`acted_as`).

pub mod review;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use access_control::{
    ActAs, AgentContext, ClientImpersonation, Decision, GitlabRef, MatchedGrant, Requester,
};
use agent_config::{CiAccess, UserAccess};
use http::{HeaderMap, StatusCode};
use protocol::proto::Impersonation;

use crate::api::response::ApiError;
use crate::state::KasState;
use crate::users::{Principal, UserIdentity};

/// What kas decided for one request: who asked and as whom the request acts in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedAccess {
    /// As whom the request acts.
    pub act_as: ActAs,
    /// The grant of the agent's configuration that allowed it (`None` for an operator).
    pub grant: Option<MatchedGrant>,
    /// The identity is the client's own `Impersonate-*`, allowed by the cluster's review.
    pub nested: bool,
}

impl DecidedAccess {
    /// As whom the request acts, for logs and the audit record: `agent` or the impersonated user.
    pub fn acted_as(&self) -> String {
        self.act_as.to_string()
    }

    /// The impersonation for the request head (`None`: the agent's own identity).
    pub fn impersonation(&self) -> Option<Impersonation> {
        impersonation_of(&self.act_as)
    }
}

pub use access_control::wire::impersonation_of;

/// Counters of the authoriser (rendered into `/metrics`).
#[derive(Debug, Default)]
pub struct AccessMetrics {
    denied: Mutex<BTreeMap<&'static str, u64>>,
    allowed: Mutex<BTreeMap<&'static str, u64>>,
}

impl AccessMetrics {
    fn deny(&self, reason: &'static str) {
        *self
            .denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    fn allow(&self, acted_as: &'static str) {
        *self
            .allowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(acted_as)
            .or_default() += 1;
    }

    /// Prometheus text: `kas_access_denied_total{reason}`, `kas_access_allowed_total{acted_as}`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, label, map) in [
            (
                "kas_access_denied_total",
                "Requests through the tunnel refused by the agent's access grants, by reason.",
                "reason",
                &self.denied,
            ),
            (
                "kas_access_allowed_total",
                "Requests through the tunnel allowed, by identity kind (agent, impersonated).",
                "acted_as",
                &self.allowed,
            ),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (value, count) in map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                out.push_str(&format!("{name}{{{label}=\"{value}\"}} {count}\n"));
            }
        }
        out
    }
}

/// Why kas refused a request that authenticated: the reason code (metrics) and the 403 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable label (`no_grant`, `nested_impersonation_refused`, …).
    pub code: &'static str,
    /// What the client is told.
    pub message: String,
}

/// The path of a project's URL (`git://host/group/config.git` → `group/config`).
fn project_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = if url.contains("://") {
        after_scheme.split_once('/').map_or("", |(_, p)| p)
    } else {
        after_scheme
    };
    path.trim_matches('/')
        .trim_end_matches(".git")
        .trim_matches('/')
        .to_owned()
}

/// The agent as the decision sees it: its id and configuration project (id and path; `0` and empty
/// when kas knows none, so no CI job is its configuration project's).
pub fn agent_context(state: &KasState, agent_id: u64) -> AgentContext {
    let config_project = state
        .directory
        .config_projects()
        .into_iter()
        .find(|(id, _, _)| *id == agent_id)
        .map(|(_, _, p)| GitlabRef::new(p.project_id.unwrap_or(0), project_path(&p.url)))
        .unwrap_or_else(|| GitlabRef::new(0, ""));
    AgentContext {
        agent_id,
        config_project,
    }
}

/// The agent's grants: those of its last good configuration (none without one), and its commit.
pub fn grants(state: &KasState, agent_id: u64) -> (CiAccess, UserAccess, Option<String>) {
    match state.agent_config.as_ref().and_then(|c| c.good(agent_id)) {
        Some(u) => (
            u.ci_access.clone(),
            u.user_access.clone(),
            Some(u.commit.clone()),
        ),
        None => (CiAccess::default(), UserAccess::default(), None),
    }
}

/// A short name of who asked.
pub fn requester_label(user: &UserIdentity) -> String {
    match &user.principal {
        Principal::Operator => format!("operator:{}", user.name),
        Principal::Gitlab(Requester::User(u)) => format!("user:{}", u.username),
        Principal::Gitlab(Requester::CiJob(j)) => format!("ci_job:{}", j.job_id),
    }
}

/// Decides whether `user` may send this request (with the client's `headers`) to the tunnel
/// service `service`; pure apart from reading the agent's configuration.
pub fn decide(
    state: &KasState,
    user: &UserIdentity,
    headers: &HeaderMap,
    service: &str,
) -> Result<DecidedAccess, Refusal> {
    let Principal::Gitlab(who) = &user.principal else {
        return Ok(DecidedAccess {
            act_as: ActAs::Agent,
            grant: None,
            nested: false,
        });
    };
    let client = ClientImpersonation::from_headers(
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
    )
    .map_err(|e| Refusal {
        code: "bad_impersonation_headers",
        message: e.to_string(),
    })?;
    // The agent's last good configuration (shared, not copied); none grants nothing.
    let config = state
        .agent_config
        .as_ref()
        .and_then(|c| c.good(user.agent_id));
    let (none_ci, none_ua) = (CiAccess::default(), UserAccess::default());
    let (ci, ua) = config
        .as_deref()
        .map_or((&none_ci, &none_ua), |u| (&u.ci_access, &u.user_access));
    let agent = agent_context(state, user.agent_id);
    match access_control::decide(ci, ua, &agent, who, &client) {
        Decision::Deny { reason } => Err(Refusal {
            code: reason.code(),
            message: format!("agent {}: {}", user.agent_id, reason.message()),
        }),
        Decision::Allow {
            needs_review: Some(client),
            grant,
            ..
        } => {
            if service != protocol::service::K8S_API {
                return Err(Refusal {
                    code: "impersonation_unsupported_for_service",
                    message: format!("Impersonate-* headers are not accepted on {service}"),
                });
            }
            // Reviewed by the caller ([`authorise`]) before anything is sent.
            Ok(DecidedAccess {
                act_as: client_identity(&client),
                grant: Some(grant),
                nested: true,
            })
        }
        Decision::Allow { act_as, grant, .. } => {
            if service != protocol::service::K8S_API && act_as != ActAs::Agent {
                return Err(Refusal {
                    code: "impersonation_unsupported_for_service",
                    message: format!(
                        "the grant acts as {act_as}; the {service} service can act only as the agent"
                    ),
                });
            }
            access_control::to_impersonation_headers(&act_as).map_err(|e| Refusal {
                code: "invalid_identity",
                message: format!("the granted identity cannot be sent: {e}"),
            })?;
            Ok(DecidedAccess {
                act_as,
                grant: Some(grant),
                nested: false,
            })
        }
    }
}

/// The client's own impersonation as an identity to send.
fn client_identity(client: &ClientImpersonation) -> ActAs {
    ActAs::Impersonate {
        user: client.user.clone().unwrap_or_default(),
        uid: client.uid.clone(),
        groups: client.groups.clone(),
        extra: client.extra.clone(),
    }
}

/// The client's impersonation back from a nested decision (what the cluster must review).
fn reviewed_identity(act_as: &ActAs) -> ClientImpersonation {
    match act_as {
        ActAs::Agent => ClientImpersonation::default(),
        ActAs::Impersonate {
            user,
            uid,
            groups,
            extra,
        } => ClientImpersonation {
            user: Some(user.clone()),
            uid: uid.clone(),
            groups: groups.clone(),
            extra: extra.clone(),
        },
    }
}

/// [`decide`] (with the cluster's review of a nested impersonation), counted and logged: the
/// decision, or the 403 to answer.
pub async fn authorise(
    state: &Arc<KasState>,
    user: &UserIdentity,
    headers: &HeaderMap,
    service: &str,
    span: &tracing::Span,
) -> Result<DecidedAccess, ApiError> {
    let mut decided = decide(state, user, headers, service);
    if let Ok(d) = &decided
        && d.nested
    {
        let client = reviewed_identity(&d.act_as);
        match review::review(state, user.agent_id, &client).await {
            Ok(()) => tracing::info!(
                parent: span,
                requester = %requester_label(user),
                acted_as = %d.act_as,
                "nested impersonation allowed by the cluster's review"
            ),
            Err(why) => {
                decided = Err(Refusal {
                    code: "impersonation_not_allowed",
                    message: format!("Impersonate-* headers refused: {why}"),
                });
            }
        }
    }
    match decided {
        Ok(d) => {
            state.access_metrics.allow(match d.act_as {
                ActAs::Agent => "agent",
                ActAs::Impersonate { .. } => "impersonated",
            });
            // Labels formatted only for a span or log that takes them.
            if !span.is_disabled() {
                span.record("acted_as", d.acted_as().as_str());
            }
            tracing::debug!(parent: span, requester = %requester_label(user), acted_as = %d.act_as, grant = ?d.grant, "request allowed");
            Ok(d)
        }
        Err(r) => {
            state.access_metrics.deny(r.code);
            let status = if r.code == "bad_impersonation_headers" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::FORBIDDEN
            };
            tracing::info!(parent: span, requester = %requester_label(user), reason = r.code, message = %r.message, "request refused by the agent's access grants");
            Err(ApiError::new(status, r.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths_from_urls() {
        assert_eq!(
            project_path("git://127.0.0.1:9418/group/config"),
            "group/config"
        );
        assert_eq!(
            project_path("https://gitlab.example.com/g/sub/c.git"),
            "g/sub/c"
        );
        assert_eq!(project_path("/srv/git/c"), "srv/git/c");
    }
}
