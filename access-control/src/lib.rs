//! The one authorisation decision for requests through kas: who is asking ([`Requester`]), which
//! grant of the agent's configuration (`ci_access`, `user_access`) covers them, and as whom the
//! request acts in the cluster ([`ActAs`], with GitLab's exact identities), plus what happens to the
//! client's own `Impersonate-*` headers ([`ClientImpersonation`]).
//!
//! Pure: no I/O, no clock, no async. kas learns the requester (GitLab backend or its users file),
//! calls [`decide`], and on [`Decision::Allow`] sends the [`to_impersonation_headers`] of the
//! decision to agentk; the simulator and the conformance suites drive the same function.
//!
//! ```
//! use access_control::*;
//! use agent_config::ConfigFile;
//!
//! let file = ConfigFile::parse("ci_access:\n  projects:\n  - id: group/app\n    access_as: {ci_job: {}}\n")
//!     .expect("valid");
//! let agent = AgentContext { agent_id: 7, config_project: GitlabRef::new(1, "group/agents") };
//! let job = Requester::CiJob(CiJob {
//!     job_id: 42,
//!     pipeline_id: 9,
//!     username: "alice".into(),
//!     project: GitlabRef::new(5, "group/app"),
//!     ancestor_groups: vec![GitlabRef::new(3, "group")],
//!     environment: None,
//!     ref_protected: false,
//! });
//! let d = decide_for_config(&file, &agent, &job, &ClientImpersonation::default());
//! let Decision::Allow { act_as, .. } = d else { panic!("denied") };
//! let headers = to_impersonation_headers(&act_as).expect("valid header values");
//! assert_eq!(headers[0], ("Impersonate-User".to_string(), "gitlab:ci_job:42".to_string()));
//! ```
#![warn(missing_docs)]

pub mod client;
pub mod decision;
pub mod headers;
pub mod identity;
pub mod requester;
pub mod wire;

pub use client::{ClientImpersonation, ClientImpersonationError};
pub use decision::{Decision, DenyReason, MatchedGrant, decide, decide_for_config};
pub use headers::{HeaderValueError, to_impersonation_headers};
pub use identity::{ActAs, ci_job_identity, user_identity};
pub use requester::{
    AccessType, AgentContext, CiJob, Environment, GitlabRef, Membership, Requester, Role, User,
};
