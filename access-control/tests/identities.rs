//! GitLab's identity strings, the impersonation headers, client header parsing, and decisions on
//! configurations parsed from YAML.

use std::collections::BTreeMap;

use access_control::client::is_impersonation_header;
use access_control::headers::extra_header_name;
use access_control::*;
use agent_config::ConfigFile;

fn agent() -> AgentContext {
    AgentContext {
        agent_id: 7,
        config_project: GitlabRef::new(1, "acme/agents"),
    }
}

fn job(project: (u64, &str), groups: &[(u64, &str)]) -> CiJob {
    CiJob {
        job_id: 4242,
        pipeline_id: 99,
        username: "alice".into(),
        project: GitlabRef::new(project.0, project.1),
        ancestor_groups: groups.iter().map(|(i, p)| GitlabRef::new(*i, *p)).collect(),
        environment: None,
        ref_protected: false,
    }
}

fn env(name: &str, slug: &str, tier: &str) -> Option<Environment> {
    Some(Environment {
        name: name.into(),
        slug: slug.into(),
        tier: tier.into(),
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn extras(v: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    v.iter()
        .map(|(k, val)| (format!("agent.gitlab.com/{k}"), vec![val.to_string()]))
        .collect()
}

#[test]
fn ci_job_identity_has_gitlabs_documented_strings() {
    let mut j = job((5, "acme/web/app"), &[(30, "acme/web"), (3, "acme")]);
    j.environment = env("review/feature-1", "review-feat-x1y2z3", "development");
    let ActAs::Impersonate {
        user,
        uid,
        groups,
        extra,
    } = ci_job_identity(&agent(), &j)
    else {
        panic!("a CI job identity impersonates")
    };
    assert_eq!(user, "gitlab:ci_job:4242");
    assert_eq!(uid, None);
    assert_eq!(
        groups,
        strings(&[
            "gitlab:ci_job",
            "gitlab:project:5",
            "gitlab:project_env:5:review-feat-x1y2z3",
            "gitlab:project_env_tier:5:development",
            "gitlab:group:30",
            "gitlab:group_env_tier:30:development",
            "gitlab:group:3",
            "gitlab:group_env_tier:3:development",
        ])
    );
    assert_eq!(
        extra,
        extras(&[
            ("id", "7"),
            ("config_project_id", "1"),
            ("project_id", "5"),
            ("ci_pipeline_id", "99"),
            ("ci_job_id", "4242"),
            ("username", "alice"),
            ("environment_slug", "review-feat-x1y2z3"),
            ("environment_tier", "development"),
        ])
    );
}

#[test]
fn ci_job_identity_without_environment_has_no_environment_groups_or_extras() {
    let j = job((5, "acme/app"), &[(3, "acme")]);
    let ActAs::Impersonate { groups, extra, .. } = ci_job_identity(&agent(), &j) else {
        panic!("impersonates")
    };
    assert_eq!(
        groups,
        strings(&["gitlab:ci_job", "gitlab:project:5", "gitlab:group:3"])
    );
    assert!(!extra.contains_key("agent.gitlab.com/environment_slug"));
    assert!(!extra.contains_key("agent.gitlab.com/environment_tier"));
    assert_eq!(extra.len(), 6);
}

fn user(roles_p: &[(u64, &str, Role)], roles_g: &[(u64, &str, Role)]) -> User {
    let m = |v: &[(u64, &str, Role)]| {
        v.iter()
            .map(|(i, p, r)| Membership {
                of: GitlabRef::new(*i, *p),
                role: *r,
            })
            .collect()
    };
    User {
        user_id: 11,
        username: "bob".into(),
        access_type: AccessType::PersonalAccessToken,
        project_roles: m(roles_p),
        group_roles: m(roles_g),
    }
}

#[test]
fn user_identity_has_gitlabs_documented_strings() {
    let file = ConfigFile::parse(
        "user_access:\n  access_as: {user: {}}\n  projects: [{id: acme/app}]\n  groups: [{id: '3'}]\n",
    )
    .expect("valid");
    let u = user(
        &[
            (5, "acme/app", Role::Developer),
            (6, "acme/other", Role::Owner), // not listed: no group
        ],
        &[(3, "acme", Role::Maintainer)],
    );
    let d = decide_for_config(
        &file,
        &agent(),
        &Requester::User(u),
        &ClientImpersonation::default(),
    );
    let Decision::Allow {
        act_as:
            ActAs::Impersonate {
                user,
                uid,
                groups,
                extra,
            },
        grant: MatchedGrant::UserAccess,
        needs_review: None,
    } = d
    else {
        panic!("{d:?}")
    };
    assert_eq!(user, "gitlab:user:bob");
    assert_eq!(uid, None);
    assert_eq!(
        groups,
        strings(&[
            "gitlab:user",
            "gitlab:project_role:5:guest",
            "gitlab:project_role:5:reporter",
            "gitlab:project_role:5:developer",
            "gitlab:group_role:3:guest",
            "gitlab:group_role:3:reporter",
            "gitlab:group_role:3:developer",
            "gitlab:group_role:3:maintainer",
        ])
    );
    assert_eq!(
        extra,
        extras(&[
            ("id", "7"),
            ("username", "bob"),
            ("config_project_id", "1"),
            ("access_type", "personal_access_token"),
        ])
    );
}

#[test]
fn user_below_developer_is_refused_and_unlisted_is_no_grant() {
    let file =
        ConfigFile::parse("user_access:\n  access_as: {agent: {}}\n  projects: [{id: acme/app}]\n")
            .expect("valid");
    let c = ClientImpersonation::default();
    let reporter = Requester::User(user(&[(5, "ACME/App", Role::Reporter)], &[]));
    assert_eq!(
        decide_for_config(&file, &agent(), &reporter, &c),
        Decision::Deny {
            reason: DenyReason::InsufficientRole {
                role: Role::Reporter
            }
        }
    );
    let stranger = Requester::User(user(&[(9, "other/app", Role::Owner)], &[]));
    let d = decide_for_config(&file, &agent(), &stranger, &c);
    let Decision::Deny { reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(reason.code(), "no_grant");
    assert_eq!(
        reason.message(),
        "the agent's configuration grants no access to this user"
    );
    let dev = Requester::User(user(&[(5, "acme/app", Role::Developer)], &[]));
    assert!(matches!(
        decide_for_config(&file, &agent(), &dev, &c),
        Decision::Allow {
            act_as: ActAs::Agent,
            ..
        }
    ));
}

#[test]
fn headers_are_exactly_kubernetes_impersonation_headers() {
    let mut j = job((5, "acme/app"), &[(3, "acme")]);
    j.environment = env("production", "production", "production");
    let h = to_impersonation_headers(&ci_job_identity(&agent(), &j)).expect("valid");
    let want: Vec<(&str, &str)> = vec![
        ("Impersonate-User", "gitlab:ci_job:4242"),
        ("Impersonate-Group", "gitlab:ci_job"),
        ("Impersonate-Group", "gitlab:project:5"),
        ("Impersonate-Group", "gitlab:project_env:5:production"),
        ("Impersonate-Group", "gitlab:project_env_tier:5:production"),
        ("Impersonate-Group", "gitlab:group:3"),
        ("Impersonate-Group", "gitlab:group_env_tier:3:production"),
        ("Impersonate-Extra-agent.gitlab.com%2Fci_job_id", "4242"),
        ("Impersonate-Extra-agent.gitlab.com%2Fci_pipeline_id", "99"),
        (
            "Impersonate-Extra-agent.gitlab.com%2Fconfig_project_id",
            "1",
        ),
        (
            "Impersonate-Extra-agent.gitlab.com%2Fenvironment_slug",
            "production",
        ),
        (
            "Impersonate-Extra-agent.gitlab.com%2Fenvironment_tier",
            "production",
        ),
        ("Impersonate-Extra-agent.gitlab.com%2Fid", "7"),
        ("Impersonate-Extra-agent.gitlab.com%2Fproject_id", "5"),
        ("Impersonate-Extra-agent.gitlab.com%2Fusername", "alice"),
    ];
    let got: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(got, want);
    assert_eq!(to_impersonation_headers(&ActAs::Agent), Ok(vec![]));
}

#[test]
fn extra_keys_are_escaped_like_client_go() {
    assert_eq!(extra_header_name("scopes"), "Impersonate-Extra-scopes");
    assert_eq!(
        extra_header_name("example.com/a b%c"),
        "Impersonate-Extra-example.com%2Fa%20b%25c"
    );
    assert_eq!(
        extra_header_name("tchar!#$&'*+-.^_`|~"),
        "Impersonate-Extra-tchar!#$&'*+-.^_`|~"
    );
    assert_eq!(extra_header_name("é"), "Impersonate-Extra-%C3%A9");
}

#[test]
fn configured_impersonation_uses_uid_groups_extras_and_refuses_control_characters() {
    let file = ConfigFile::parse(
        "ci_access:\n  groups:\n  - id: acme\n    access_as:\n      impersonate:\n        username: deployer\n        uid: u-1\n        groups: [ops, dev]\n        extra: [{key: team, val: [a, b]}]\n",
    )
    .expect("valid");
    let j = Requester::CiJob(job((5, "acme/web/app"), &[(30, "acme/web"), (3, "acme")]));
    let d = decide_for_config(&file, &agent(), &j, &ClientImpersonation::default());
    let Decision::Allow { act_as, grant, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        grant,
        MatchedGrant::CiGroup {
            index: 0,
            group_id: 3
        }
    );
    let h = to_impersonation_headers(&act_as).expect("valid");
    assert_eq!(
        h,
        vec![
            ("Impersonate-User".into(), "deployer".into()),
            ("Impersonate-Uid".into(), "u-1".into()),
            ("Impersonate-Group".into(), "ops".into()),
            ("Impersonate-Group".into(), "dev".into()),
            ("Impersonate-Extra-team".into(), "a".into()),
            ("Impersonate-Extra-team".into(), "b".into()),
        ]
    );
    let bad = ActAs::Impersonate {
        user: "evil\r\nX-Injected: 1".into(),
        uid: None,
        groups: vec![],
        extra: BTreeMap::new(),
    };
    assert_eq!(
        to_impersonation_headers(&bad),
        Err(HeaderValueError {
            header: "Impersonate-User".into()
        })
    );
    let padded = ActAs::Impersonate {
        user: "ok".into(),
        uid: None,
        groups: vec![" admins".into()],
        extra: BTreeMap::new(),
    };
    assert_eq!(
        to_impersonation_headers(&padded),
        Err(HeaderValueError {
            header: "Impersonate-Group".into()
        })
    );
    assert_eq!(act_as.to_string(), "deployer");
    assert_eq!(ActAs::Agent.to_string(), "agent");
}

#[test]
fn client_headers_parse_and_round_trip() {
    let act_as = ActAs::Impersonate {
        user: "jane".into(),
        uid: Some("42".into()),
        groups: strings(&["a", "b"]),
        extra: [("example.com/Scope".to_string(), strings(&["x", "y"]))].into(),
    };
    let h = to_impersonation_headers(&act_as).expect("valid");
    let mut with_noise: Vec<(&str, &[u8])> = vec![("Authorization", b"Bearer secret")];
    with_noise.extend(h.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let c = ClientImpersonation::from_headers(with_noise).expect("valid");
    assert_eq!(c.user.as_deref(), Some("jane"));
    assert_eq!(c.uid.as_deref(), Some("42"));
    assert_eq!(c.groups, strings(&["a", "b"]));
    // The API server lower-cases header names, so extra keys arrive lower-cased.
    assert_eq!(
        c.extra,
        [("example.com/scope".to_string(), strings(&["x", "y"]))].into()
    );
    let lower = ClientImpersonation::from_headers([("impersonate-user", &b"system:admin"[..])])
        .expect("valid");
    assert_eq!(lower.user.as_deref(), Some("system:admin"));
    assert!(
        ClientImpersonation::from_headers([("Accept", &b"*/*"[..])])
            .expect("valid")
            .is_empty()
    );
    assert_eq!(
        ClientImpersonation::from_headers([("Impersonate-Group", &b"g"[..])]),
        Err(ClientImpersonationError::MissingUser)
    );
    assert_eq!(
        ClientImpersonation::from_headers([
            ("Impersonate-User", &b"a"[..]),
            ("IMPERSONATE-USER", &b"b"[..])
        ]),
        Err(ClientImpersonationError::DuplicateUser)
    );
    assert_eq!(
        ClientImpersonation::from_headers([
            ("Impersonate-User", &b"a"[..]),
            ("Impersonate-Extra-", &b"b"[..])
        ]),
        Err(ClientImpersonationError::BadExtraKey)
    );
    assert!(is_impersonation_header("IMPERSONATE-user"));
    assert!(is_impersonation_header("Impersonate-Extra-x"));
    assert!(!is_impersonation_header("Impersonat"));
    assert!(!is_impersonation_header("Authorization"));
}

#[test]
fn client_impersonation_is_refused_under_impersonation_and_reviewed_under_agent() {
    let file = ConfigFile::parse(
        "ci_access:\n  projects:\n  - id: acme/app\n    access_as: {ci_job: {}}\n  - id: '6'\n",
    )
    .expect("valid");
    let admin = ClientImpersonation::from_headers([("Impersonate-User", &b"system:admin"[..])])
        .expect("valid");
    let j = Requester::CiJob(job((5, "acme/app"), &[]));
    assert_eq!(
        decide_for_config(&file, &agent(), &j, &admin),
        Decision::Deny {
            reason: DenyReason::NestedImpersonationRefused
        }
    );
    let j6 = Requester::CiJob(job((6, "acme/six"), &[]));
    assert_eq!(
        decide_for_config(&file, &agent(), &j6, &admin),
        Decision::Allow {
            act_as: ActAs::Agent,
            grant: MatchedGrant::CiProject { index: 1 },
            needs_review: Some(admin.clone()),
        }
    );
}

#[test]
fn environments_and_protected_branches_are_enforced_by_the_most_specific_grant() {
    let file = ConfigFile::parse(
        "ci_access:\n  projects:\n  - id: acme/app\n    environments: [production, 'review/*']\n    protected_branches_only: true\n  groups:\n  - id: acme\n",
    )
    .expect("valid");
    let c = ClientImpersonation::default();
    let mut j = job((5, "acme/app"), &[(3, "acme")]);
    let deny =
        |j: &CiJob| match decide_for_config(&file, &agent(), &Requester::CiJob(j.clone()), &c) {
            Decision::Deny { reason } => Some(reason),
            Decision::Allow { .. } => None,
        };
    // The project grant decides; the broader group grant is no fall-back.
    assert_eq!(
        deny(&j),
        Some(DenyReason::EnvironmentNotAllowed { environment: None })
    );
    j.environment = env("staging", "staging", "staging");
    let reason = deny(&j).expect("denied");
    assert_eq!(
        reason.message(),
        "the grant does not allow jobs of environment `staging`"
    );
    j.environment = env("review/x/y", "review-x-y", "development");
    assert_eq!(deny(&j), Some(DenyReason::UnprotectedRef));
    j.ref_protected = true;
    assert_eq!(deny(&j), None);
    // Another project of the group: the group grant, no conditions.
    let other = job((8, "acme/deep/other"), &[(31, "acme/deep"), (3, "acme")]);
    assert_eq!(deny(&other), None);
    // The configuration project is granted implicitly, as the agent.
    let cfg = Requester::CiJob(job((1, "elsewhere/agents"), &[]));
    assert_eq!(
        decide_for_config(&file, &agent(), &cfg, &c),
        Decision::Allow {
            act_as: ActAs::Agent,
            grant: MatchedGrant::ConfigProject,
            needs_review: None
        }
    );
    let outsider = Requester::CiJob(job((9, "evil/app"), &[(4, "evil")]));
    assert_eq!(
        decide_for_config(&file, &agent(), &outsider, &c),
        Decision::Deny {
            reason: DenyReason::NoGrant {
                requester: "CI job"
            }
        }
    );
}
