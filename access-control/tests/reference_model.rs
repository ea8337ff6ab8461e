//! Property test: for random grant sets (projects, nested groups, environment globs, protected
//! flags, every `access_as`) and random requesters (CI jobs, users, with or without client
//! impersonation), `decide` equals a naive reference model written here from the rules, sharing no
//! code with the crate beyond the input and output types.

use std::collections::BTreeMap;

use access_control::*;
use agent_config::{
    CiAccess, CiAccessAs, CiAccessGrant, CiAccessScope, EnvironmentPattern, ExtraKeyVal,
    Impersonation, ProjectId, UserAccess, UserAccessAs,
};
use proptest::prelude::*;

// ---- the universe: projects 1..=6 (`p<n>` under `g<n>`), groups 100..=105 ------------------

const PROJECTS: [u64; 6] = [1, 2, 3, 4, 5, 6];
const GROUPS: [u64; 6] = [100, 101, 102, 103, 104, 105];
const PATTERNS: [&str; 6] = ["production", "review/*", "*", "stag*", "*-eu", "dev"];
const ENV_NAMES: [&str; 6] = [
    "production",
    "review/a/b",
    "staging",
    "dev",
    "prod-eu",
    "qa",
];
const TIERS: [&str; 3] = ["production", "staging", "development"];

fn project_path(id: u64) -> String {
    format!("top/p{id}")
}

fn group_path(id: u64) -> String {
    format!("top/g{id}")
}

/// A configuration id naming `id`: numeric, its path, or its path in upper case.
fn config_id(id: u64, path: String, style: u8) -> ProjectId {
    let s = match style % 3 {
        0 => id.to_string(),
        1 => path,
        _ => path.to_uppercase(),
    };
    ProjectId::new(&s).expect("valid id")
}

fn scope() -> impl Strategy<Value = CiAccessScope> {
    (
        proptest::sample::subsequence(PATTERNS.to_vec(), 0..=2),
        any::<bool>(),
        0u8..3,
        0u8..4,
    )
        .prop_map(|(envs, protected, access, imp)| CiAccessScope {
            default_namespace: None,
            access_as: match access {
                0 => CiAccessAs::Agent,
                1 => CiAccessAs::CiJob,
                _ => CiAccessAs::Impersonate(Impersonation {
                    username: format!("imp{imp}"),
                    uid: (imp % 2 == 0).then(|| format!("uid{imp}")),
                    groups: (0..imp).map(|i| format!("grp{i}")).collect(),
                    extra: (0..imp % 3)
                        .map(|i| ExtraKeyVal {
                            key: format!("k{}", i % 2),
                            val: vec![format!("v{i}")],
                        })
                        .collect(),
                }),
            },
            environments: envs
                .into_iter()
                .map(|p| EnvironmentPattern::new(p).expect("pattern"))
                .collect(),
            protected_branches_only: protected,
        })
}

fn ci_access() -> impl Strategy<Value = CiAccess> {
    let project = (proptest::sample::select(PROJECTS.to_vec()), 0u8..3, scope()).prop_map(
        |(id, style, scope)| CiAccessGrant {
            id: config_id(id, project_path(id), style),
            scope,
        },
    );
    let group = (proptest::sample::select(GROUPS.to_vec()), 0u8..3, scope()).prop_map(
        |(id, style, scope)| CiAccessGrant {
            id: config_id(id, group_path(id), style),
            scope,
        },
    );
    (
        proptest::collection::vec(project, 0..4),
        proptest::collection::vec(group, 0..4),
        proptest::option::weighted(0.2, scope()),
    )
        .prop_map(|(projects, groups, instance)| CiAccess {
            projects,
            groups,
            instance,
        })
}

fn user_access() -> impl Strategy<Value = UserAccess> {
    (
        proptest::option::weighted(0.8, any::<bool>()),
        proptest::collection::vec((proptest::sample::select(PROJECTS.to_vec()), 0u8..3), 0..3),
        proptest::collection::vec((proptest::sample::select(GROUPS.to_vec()), 0u8..3), 0..3),
    )
        .prop_map(|(access_as, projects, groups)| UserAccess {
            access_as: access_as.map(|u| {
                if u {
                    UserAccessAs::User
                } else {
                    UserAccessAs::Agent
                }
            }),
            projects: projects
                .into_iter()
                .map(|(id, s)| config_id(id, project_path(id), s))
                .collect(),
            groups: groups
                .into_iter()
                .map(|(id, s)| config_id(id, group_path(id), s))
                .collect(),
        })
}

fn role() -> impl Strategy<Value = Role> {
    proptest::sample::select(Role::ALL.to_vec())
}

fn requester() -> impl Strategy<Value = Requester> {
    let job = (
        1u64..1_000_000,
        1u64..1_000_000,
        proptest::sample::select(PROJECTS.to_vec()),
        // Ancestors: a chain of distinct groups, closest first.
        proptest::sample::subsequence(GROUPS.to_vec(), 0..=4).prop_shuffle(),
        proptest::option::of((
            proptest::sample::select(ENV_NAMES.to_vec()),
            proptest::sample::select(TIERS.to_vec()),
        )),
        any::<bool>(),
    )
        .prop_map(|(job_id, pipeline_id, pid, groups, env, protected)| {
            Requester::CiJob(CiJob {
                job_id,
                pipeline_id,
                username: format!("u{}", job_id % 7),
                project: GitlabRef::new(pid, project_path(pid)),
                ancestor_groups: groups
                    .into_iter()
                    .map(|g| GitlabRef::new(g, group_path(g)))
                    .collect(),
                environment: env.map(|(n, t)| Environment {
                    name: n.to_string(),
                    slug: n.replace('/', "-"),
                    tier: t.to_string(),
                }),
                ref_protected: protected,
            })
        });
    let user = (
        1u64..1000,
        any::<bool>(),
        proptest::collection::vec((proptest::sample::select(PROJECTS.to_vec()), role()), 0..4),
        proptest::collection::vec((proptest::sample::select(GROUPS.to_vec()), role()), 0..4),
    )
        .prop_map(|(uid, pat, projects, groups)| {
            Requester::User(User {
                user_id: uid,
                username: format!("user{uid}"),
                access_type: if pat {
                    AccessType::PersonalAccessToken
                } else {
                    AccessType::SessionCookie
                },
                project_roles: projects
                    .into_iter()
                    .map(|(p, r)| Membership {
                        of: GitlabRef::new(p, project_path(p)),
                        role: r,
                    })
                    .collect(),
                group_roles: groups
                    .into_iter()
                    .map(|(g, r)| Membership {
                        of: GitlabRef::new(g, group_path(g)),
                        role: r,
                    })
                    .collect(),
            })
        });
    prop_oneof![job, user]
}

fn client() -> impl Strategy<Value = ClientImpersonation> {
    prop_oneof![
        3 => Just(ClientImpersonation::default()),
        1 => Just(ClientImpersonation {
            user: Some("system:admin".into()),
            ..ClientImpersonation::default()
        }),
    ]
}

// ---- the reference model -------------------------------------------------------------------

/// `*` matches any run of characters; naive recursion.
fn glob(p: &[char], s: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some(('*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

fn names(id: &ProjectId, numeric: u64, path: &str) -> bool {
    id.as_str() == numeric.to_string() || id.as_str().to_lowercase() == path.to_lowercase()
}

fn e(k: &str, v: String) -> (String, Vec<String>) {
    (format!("agent.gitlab.com/{k}"), vec![v])
}

const ROLE_NAMES: [&str; 5] = ["guest", "reporter", "developer", "maintainer", "owner"];

fn rank(r: Role) -> usize {
    match r {
        Role::Guest => 0,
        Role::Reporter => 1,
        Role::Developer => 2,
        Role::Maintainer => 3,
        Role::Owner => 4,
    }
}

/// A grant that names the job: (priority, its scope or `None` for the implicit grant, which).
type Candidate = ((usize, usize, usize), Option<CiAccessScope>, MatchedGrant);

fn model(
    ci: &CiAccess,
    ua: &UserAccess,
    agent: &AgentContext,
    who: &Requester,
    client: &ClientImpersonation,
) -> Decision {
    let deny = |reason| Decision::Deny { reason };
    let (act_as, grant) = match who {
        Requester::CiJob(job) => {
            // Candidates with a priority; the smallest wins.
            let mut cands: Vec<Candidate> = vec![];
            for (i, g) in ci.projects.iter().enumerate() {
                if names(&g.id, job.project.id, &job.project.path) {
                    cands.push((
                        (0, 0, i),
                        Some(g.scope.clone()),
                        MatchedGrant::CiProject { index: i },
                    ));
                }
            }
            for (depth, anc) in job.ancestor_groups.iter().enumerate() {
                for (i, g) in ci.groups.iter().enumerate() {
                    if names(&g.id, anc.id, &anc.path) {
                        cands.push((
                            (1, depth, i),
                            Some(g.scope.clone()),
                            MatchedGrant::CiGroup {
                                index: i,
                                group_id: anc.id,
                            },
                        ));
                    }
                }
            }
            if let Some(s) = &ci.instance {
                cands.push(((2, 0, 0), Some(s.clone()), MatchedGrant::CiInstance));
            }
            if job.project.id == agent.config_project.id {
                cands.push(((3, 0, 0), None, MatchedGrant::ConfigProject));
            }
            cands.sort_by_key(|c| c.0);
            let Some((_, scope, grant)) = cands.into_iter().next() else {
                return deny(DenyReason::NoGrant {
                    requester: "CI job",
                });
            };
            match scope {
                None => (ActAs::Agent, grant),
                Some(scope) => {
                    if !scope.environments.is_empty() {
                        let name = job.environment.as_ref().map(|e| e.name.clone());
                        let ok = match &name {
                            None => false,
                            Some(n) => scope.environments.iter().any(|p| {
                                glob(
                                    &p.as_str().chars().collect::<Vec<_>>(),
                                    &n.chars().collect::<Vec<_>>(),
                                )
                            }),
                        };
                        if !ok {
                            return deny(DenyReason::EnvironmentNotAllowed { environment: name });
                        }
                    }
                    if scope.protected_branches_only && !job.ref_protected {
                        return deny(DenyReason::UnprotectedRef);
                    }
                    let act_as = match scope.access_as {
                        CiAccessAs::Agent => ActAs::Agent,
                        CiAccessAs::Impersonate(i) => {
                            let mut extra = BTreeMap::<String, Vec<String>>::new();
                            for kv in i.extra {
                                let mut v = extra.remove(&kv.key).unwrap_or_default();
                                v.extend(kv.val);
                                extra.insert(kv.key, v);
                            }
                            ActAs::Impersonate {
                                user: i.username,
                                uid: i.uid,
                                groups: i.groups,
                                extra,
                            }
                        }
                        CiAccessAs::CiJob => {
                            let p = job.project.id;
                            let mut groups =
                                vec!["gitlab:ci_job".to_string(), format!("gitlab:project:{p}")];
                            let mut extra: BTreeMap<String, Vec<String>> = [
                                e("id", agent.agent_id.to_string()),
                                e("config_project_id", agent.config_project.id.to_string()),
                                e("project_id", p.to_string()),
                                e("ci_pipeline_id", job.pipeline_id.to_string()),
                                e("ci_job_id", job.job_id.to_string()),
                                e("username", job.username.clone()),
                            ]
                            .into_iter()
                            .collect();
                            match &job.environment {
                                Some(env) => {
                                    groups.push(format!("gitlab:project_env:{p}:{}", env.slug));
                                    groups
                                        .push(format!("gitlab:project_env_tier:{p}:{}", env.tier));
                                    for g in &job.ancestor_groups {
                                        groups.push(format!("gitlab:group:{}", g.id));
                                        groups.push(format!(
                                            "gitlab:group_env_tier:{}:{}",
                                            g.id, env.tier
                                        ));
                                    }
                                    extra.insert(
                                        e("environment_slug", env.slug.clone()).0,
                                        vec![env.slug.clone()],
                                    );
                                    extra.insert(
                                        e("environment_tier", env.tier.clone()).0,
                                        vec![env.tier.clone()],
                                    );
                                }
                                None => {
                                    for g in &job.ancestor_groups {
                                        groups.push(format!("gitlab:group:{}", g.id));
                                    }
                                }
                            }
                            ActAs::Impersonate {
                                user: format!("gitlab:ci_job:{}", job.job_id),
                                uid: None,
                                groups,
                                extra,
                            }
                        }
                    };
                    (act_as, grant)
                }
            }
        }
        Requester::User(user) => {
            let Some(access_as) = ua.access_as else {
                return deny(DenyReason::NoGrant { requester: "user" });
            };
            let lp: Vec<&Membership> = user
                .project_roles
                .iter()
                .filter(|m| ua.projects.iter().any(|id| names(id, m.of.id, &m.of.path)))
                .collect();
            let lg: Vec<&Membership> = user
                .group_roles
                .iter()
                .filter(|m| ua.groups.iter().any(|id| names(id, m.of.id, &m.of.path)))
                .collect();
            if lp.is_empty() && lg.is_empty() {
                return deny(DenyReason::NoGrant { requester: "user" });
            }
            let best = lp
                .iter()
                .chain(lg.iter())
                .map(|m| m.role)
                .max_by_key(|r| rank(*r));
            let best = best.expect("non-empty");
            if rank(best) < 2 {
                return deny(DenyReason::InsufficientRole { role: best });
            }
            let act_as = if access_as == UserAccessAs::Agent {
                ActAs::Agent
            } else {
                let mut groups = vec!["gitlab:user".to_string()];
                for m in lp.iter().filter(|m| rank(m.role) >= 2) {
                    for r in &ROLE_NAMES[..=rank(m.role)] {
                        groups.push(format!("gitlab:project_role:{}:{r}", m.of.id));
                    }
                }
                for m in lg.iter().filter(|m| rank(m.role) >= 2) {
                    for r in &ROLE_NAMES[..=rank(m.role)] {
                        groups.push(format!("gitlab:group_role:{}:{r}", m.of.id));
                    }
                }
                ActAs::Impersonate {
                    user: format!("gitlab:user:{}", user.username),
                    uid: None,
                    groups,
                    extra: [
                        e("id", agent.agent_id.to_string()),
                        e("username", user.username.clone()),
                        e("config_project_id", agent.config_project.id.to_string()),
                        e(
                            "access_type",
                            match user.access_type {
                                AccessType::PersonalAccessToken => "personal_access_token",
                                AccessType::SessionCookie => "session_cookie",
                            }
                            .to_string(),
                        ),
                    ]
                    .into_iter()
                    .collect(),
                }
            };
            (act_as, MatchedGrant::UserAccess)
        }
    };
    let client_asks = client.user.is_some();
    if client_asks && act_as != ActAs::Agent {
        return deny(DenyReason::NestedImpersonationRefused);
    }
    Decision::Allow {
        act_as,
        grant,
        needs_review: if client_asks {
            Some(client.clone())
        } else {
            None
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decide_equals_the_reference_model(
        ci in ci_access(),
        ua in user_access(),
        config_project in proptest::sample::select(PROJECTS.to_vec()),
        who in requester(),
        client in client(),
    ) {
        let agent = AgentContext {
            agent_id: 77,
            config_project: GitlabRef::new(config_project, project_path(config_project)),
        };
        let got = decide(&ci, &ua, &agent, &who, &client);
        let want = model(&ci, &ua, &agent, &who, &client);
        prop_assert_eq!(&got, &want);
        // Every allowed decision yields well-formed headers, and none without impersonation.
        if let Decision::Allow { act_as, .. } = &got {
            let h = to_impersonation_headers(act_as).expect("generated values are header-safe");
            prop_assert_eq!(h.is_empty(), *act_as == ActAs::Agent);
        }
    }
}
