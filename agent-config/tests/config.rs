//! The configuration file as users write it: GitLab's documented examples, every class of error with
//! its path and position, the wire form and fingerprint of agentk's part.

use std::time::Duration;

use agent_config::*;

fn errors(src: &str) -> Vec<ConfigError> {
    ConfigFile::parse(src)
        .expect_err("should be rejected")
        .errors
}

fn one_error(src: &str) -> ConfigError {
    let mut e = errors(src);
    assert_eq!(e.len(), 1, "{e:?}");
    e.remove(0)
}

const GITLAB_EXAMPLE: &str = r#"
# The example of GitLab's documentation, all sections.
gitops:
  manifest_projects:
  - id: gitlab-org/cluster-integration/gitlab-agent
    default_namespace: my-ns
    paths:
      # Read all YAML files from this directory.
    - glob: '/team1/app1/*.yaml'
      # Read all .yaml files from team2/apps and all subdirectories.
    - glob: '/team2/apps/**/*.yaml'
      # If 'paths' is not specified or is an empty list, the configuration below is used.
    - glob: '/**/*.{yaml,yml,json}'
    reconcile_timeout: 3600s
    dry_run_strategy: none
    prune: true
    prune_timeout: 3600s
    prune_propagation_policy: foreground
    inventory_policy: must_match
  - id: group/other
    ref:
      tag: v1.2.3
observability:
  logging:
    level: debug
    grpc_level: warn
ci_access:
  projects:
  - id: path/to/project
    default_namespace: my-ns
    environments: [staging, "review/*"]
    protected_branches_only: true
    access_as:
      impersonate:
        username: deployer
        uid: "1000"
        groups: [deployers]
        extra:
        - key: team
          val: [a, b]
  groups:
  - id: path/to/group
    access_as:
      ci_job: {}
user_access:
  access_as:
    user: {}
  projects:
  - id: group-1/project-1
  groups:
  - id: group-2
container_scanning:
  cadence: '0 0 * * *'
  vulnerability_report:
    namespaces: [default, kube-system]
  resource_requirements:
    requests: {cpu: 400m, memory: 1000Mi}
    limits: {cpu: 800m, memory: 2000Mi}
remote_development:
  enabled: true
  dns_zone: workspaces.example.dev
  network_policy:
    enabled: true
    egress:
    - allow: 0.0.0.0/0
      except: [10.0.0.0/8]
  workspaces_quota: -1
  annotations: {a: b}
flux:
  webhook_receiver_url: http://webhook-receiver.flux-system.svc.cluster.local
"#;

#[test]
fn gitlab_example_parses_with_defaults() {
    let file = ConfigFile::parse(GITLAB_EXAMPLE).expect("valid");
    let p = &file.gitops.manifest_projects;
    assert_eq!(p.len(), 2);
    assert_eq!(
        p[0].id.as_ref().map(ProjectId::as_str),
        Some("gitlab-org/cluster-integration/gitlab-agent")
    );
    assert_eq!(p[0].git_ref, GitRef::DefaultBranch);
    assert_eq!(p[0].paths.len(), 3);
    assert_eq!(p[0].namespace_or_default(), "my-ns");
    assert_eq!(p[1].git_ref, GitRef::Tag("v1.2.3".into()));
    // Defaults, as GitLab's.
    assert_eq!(p[1].paths, vec![ManifestGlob::default_glob()]);
    assert_eq!(p[1].reconcile_timeout, Duration::from_secs(3600));
    assert_eq!(p[1].prune_timeout, Duration::from_secs(3600));
    assert!(p[1].prune);
    assert_eq!(p[1].prune_propagation_policy, PropagationPolicy::Foreground);
    assert_eq!(p[1].inventory_policy, InventoryPolicy::MustMatch);
    assert_eq!(p[1].dry_run_strategy, DryRunStrategy::None);
    assert_eq!(p[1].namespace_or_default(), "default");

    assert_eq!(file.observability.logging.level, LogLevel::Debug);
    assert_eq!(file.observability.logging.grpc_level, LogLevel::Warning);

    let grant = &file.ci_access.projects[0];
    assert!(grant.scope.protected_branches_only);
    assert!(grant.scope.environments[1].matches("review/x"));
    match &grant.scope.access_as {
        CiAccessAs::Impersonate(i) => {
            assert_eq!(i.username, "deployer");
            assert_eq!(i.uid.as_deref(), Some("1000"));
            assert_eq!(i.extra[0].val, vec!["a", "b"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(file.ci_access.groups[0].scope.access_as, CiAccessAs::CiJob);
    assert_eq!(file.user_access.access_as, Some(UserAccessAs::User));
    assert_eq!(file.user_access.groups[0].as_str(), "group-2");
    assert!(file.remote_development.as_ref().is_some_and(|r| r.enabled));
}

#[test]
fn empty_and_comment_only_files_are_empty_configs() {
    for src in ["", "\n\n", "# nothing here\n", "---\n", "~\n", "---\n...\n"] {
        assert_eq!(ConfigFile::parse(src), Ok(ConfigFile::default()), "{src:?}");
    }
    // Sections present but empty are empty too.
    let file = ConfigFile::parse("gitops:\nobservability:\nci_access: {}\n").expect("valid");
    assert_eq!(file, ConfigFile::default());
}

#[test]
fn unknown_key_names_path_line_and_column() {
    let e =
        one_error("gitops:\n  manifest_projects:\n  - id: a/b\n    refx:\n      branch: main\n");
    assert_eq!(e.kind, ErrorKind::UnknownKey);
    assert_eq!(e.path, "gitops.manifest_projects[0].refx");
    assert_eq!((e.line, e.column), (4, 5));
    assert!(e.message.contains("did you mean `ref`"), "{}", e.message);
    assert!(e.message.contains("allowed: id, ref,"), "{}", e.message);
    let e = one_error("gitopz: {}\n");
    assert_eq!(e.path, "gitopz");
    assert!(e.message.contains("did you mean `gitops`"), "{}", e.message);
    assert_eq!(
        e.to_string(),
        format!("line 1, column 1: gitopz: {}", e.message)
    );
}

#[test]
fn every_error_is_reported_in_source_order() {
    let src = "\
observability:
  logging:
    level: loud
gitops:
  manifest_projects:
  - ref: {branch: main, tag: v1}
    prune: maybe
    reconcile_timeout: 1h
    dry_run_strategy: sometimes
    inventory_policy: adopt
    prune_propagation_policy: later
    paths: [{glob: 'a/[b'}, {}]
  - ref: {commit: abc}
    default_namespace: Not_A_Label
";
    let e = errors(src);
    let got: Vec<(&str, u32, ErrorKind)> = e
        .iter()
        .map(|e| (e.path.as_str(), e.line, e.kind))
        .collect();
    assert_eq!(
        got,
        vec![
            ("observability.logging.level", 3, ErrorKind::InvalidValue),
            (
                "gitops.manifest_projects[0].ref.tag",
                6,
                ErrorKind::InvalidValue
            ),
            (
                "gitops.manifest_projects[0].prune",
                7,
                ErrorKind::InvalidType
            ),
            (
                "gitops.manifest_projects[0].reconcile_timeout",
                8,
                ErrorKind::InvalidValue
            ),
            (
                "gitops.manifest_projects[0].dry_run_strategy",
                9,
                ErrorKind::InvalidValue
            ),
            (
                "gitops.manifest_projects[0].inventory_policy",
                10,
                ErrorKind::InvalidValue
            ),
            (
                "gitops.manifest_projects[0].prune_propagation_policy",
                11,
                ErrorKind::InvalidValue
            ),
            (
                "gitops.manifest_projects[0].paths[0].glob",
                12,
                ErrorKind::InvalidValue
            ),
            (
                "gitops.manifest_projects[0].paths[1].glob",
                12,
                ErrorKind::Missing
            ),
            (
                "gitops.manifest_projects[1].ref.commit",
                13,
                ErrorKind::InvalidValue
            ),
            (
                "gitops.manifest_projects[1].default_namespace",
                14,
                ErrorKind::InvalidValue
            ),
        ],
        "{e:#?}"
    );
    let level = &e[0];
    assert_eq!(
        level.message,
        "`loud` is not allowed; allowed: off, error, warning, warn, info, debug"
    );
    assert!(
        e[4].message.contains("allowed: none, client, server"),
        "{}",
        e[4].message
    );
    assert!(
        e[5].message
            .contains("must_match, adopt_if_no_inventory, adopt_all")
    );
    assert!(e[6].message.contains("orphan, background, foreground"));
    assert!(e[3].message.contains("like `3600s`"), "{}", e[3].message);
}

#[test]
fn refs() {
    let parse = |r: &str| {
        ConfigFile::parse(&format!("gitops:\n  manifest_projects:\n  - ref: {r}\n"))
            .map(|f| f.gitops.manifest_projects[0].git_ref.clone())
    };
    assert_eq!(parse("{branch: main}"), Ok(GitRef::Branch("main".into())));
    // A tag that YAML would read as a number keeps its text.
    assert_eq!(parse("{tag: 1.10}"), Ok(GitRef::Tag("1.10".into())));
    let sha = "0123456789ABCDEF0123456789abcdef01234567";
    assert_eq!(
        parse(&format!("{{commit: {sha}}}")),
        Ok(GitRef::Commit(sha.to_lowercase()))
    );
    // An all-digit commit id is still a string.
    let digits = "1234567890123456789012345678901234567890";
    assert_eq!(
        parse(&format!("{{commit: {digits}}}")),
        Ok(GitRef::Commit(digits.into()))
    );
    assert!(parse("{}").is_err());
    assert!(parse("{branch: 'a b'}").is_err());
    assert!(parse("main").is_err());
    assert_eq!(
        GitRef::Branch("main".into()).to_refspec(),
        "refs/heads/main"
    );
    assert_eq!(GitRef::DefaultBranch.to_refspec(), "HEAD");
}

#[test]
fn duplicate_manifest_projects_are_refused() {
    let e = one_error("gitops:\n  manifest_projects:\n  - id: a/b\n  - id: a/b\n");
    assert_eq!(e.path, "gitops.manifest_projects[1]");
    assert_eq!(e.line, 4);
    // Also on two refs: one inventory per project.
    let e = one_error(
        "gitops:\n  manifest_projects:\n  - id: a/b\n  - id: a/b\n    ref: {branch: x}\n",
    );
    assert!(e.message.contains("listed twice"), "{e}");
    assert!(ConfigFile::parse("gitops:\n  manifest_projects:\n  - id: a/b\n  - id: c/d\n").is_ok());
}

#[test]
fn access_as_is_exactly_one() {
    let ci = |access: &str| {
        ConfigFile::parse(&format!(
            "ci_access:\n  projects:\n  - id: a/b\n    access_as: {access}\n"
        ))
    };
    assert_eq!(
        ci("{agent: {}}").map(|f| f.ci_access.projects[0].scope.access_as.clone()),
        Ok(CiAccessAs::Agent)
    );
    assert_eq!(
        ci("{ci_job: }").map(|f| f.ci_access.projects[0].scope.access_as.clone()),
        Ok(CiAccessAs::CiJob)
    );
    let e = ci("{}").expect_err("none");
    assert_eq!(e.errors[0].kind, ErrorKind::Missing);
    assert!(
        e.errors[0]
            .message
            .contains("exactly one of `agent`, `impersonate`, `ci_job`")
    );
    let e = ci("{agent: {}, ci_job: {}}").expect_err("two");
    assert_eq!(e.errors[0].path, "ci_access.projects[0].access_as.ci_job");
    let e = ci("{agent: {x: 1}}").expect_err("agent takes no keys");
    assert_eq!(e.errors[0].path, "ci_access.projects[0].access_as.agent.x");
    let e = ci("{impersonate: {groups: ['']}}").expect_err("username");
    let paths: Vec<_> = e.errors.iter().map(|e| e.path.as_str()).collect();
    // Sorted by position: the missing username is reported at the mapping, before its items.
    assert_eq!(
        paths,
        [
            "ci_access.projects[0].access_as.impersonate.username",
            "ci_access.projects[0].access_as.impersonate.groups[0]"
        ]
    );
    let e = ci("{impersonate: {username: u, extra: [{key: k}]}}").expect_err("val");
    assert_eq!(
        e.errors[0].path,
        "ci_access.projects[0].access_as.impersonate.extra[0].val"
    );
    let e = ci("{user: {}}").expect_err("user is not a CI choice");
    assert_eq!(e.errors[0].kind, ErrorKind::UnknownKey);

    // A grant without access_as acts as the agent.
    let f = ConfigFile::parse("ci_access:\n  groups:\n  - id: g\n").expect("valid");
    assert_eq!(f.ci_access.groups[0].scope.access_as, CiAccessAs::Agent);
    let e = one_error("ci_access:\n  projects:\n  - default_namespace: x\n");
    assert_eq!(
        (e.path.as_str(), e.kind),
        ("ci_access.projects[0].id", ErrorKind::Missing)
    );

    let e = one_error("user_access:\n  projects: [{id: a/b}]\n");
    assert_eq!(e.path, "user_access.access_as");
    let e = one_error("user_access:\n  access_as: {impersonate: {}}\n  projects: [{id: a/b}]\n");
    assert_eq!(e.kind, ErrorKind::UnknownKey);
    let e = one_error("ci_access:\n  projects:\n  - id: a\n    environments: ['']\n");
    assert_eq!(e.path, "ci_access.projects[0].environments[0]");
}

#[test]
fn access_lists_are_bounded() {
    let mut src = String::from("ci_access:\n  projects:\n");
    for i in 0..501 {
        src.push_str(&format!("  - id: g/p{i}\n"));
    }
    let e = one_error(&src);
    assert_eq!(e.path, "ci_access.projects");
    assert!(e.message.contains("at most 500"), "{}", e.message);
    let ok: String = src
        .lines()
        .take(2 + 500)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        ConfigFile::parse(&ok).map(|f| f.ci_access.projects.len()),
        Ok(500)
    );
}

#[test]
fn type_errors_say_what_was_expected() {
    let e = one_error("gitops: [1, 2]\n");
    assert_eq!(e.kind, ErrorKind::InvalidType);
    assert_eq!(e.message, "expected a mapping, found a sequence");
    let e = one_error("gitops:\n  manifest_projects: {id: x}\n");
    assert_eq!(e.message, "expected a sequence, found a mapping");
    let e = one_error("just a string\n");
    assert_eq!((e.path.as_str(), e.line), ("", 1));
}

#[test]
fn yaml_errors_have_positions() {
    let e = one_error("gitops:\n  manifest_projects:\n  - id: [unclosed\n");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert!(e.line >= 3, "{e}");
    let e = one_error("a: 1\na: 2\n");
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("duplicate key `a`"));
    let e = one_error("gitops: {}\n---\nflux: {}\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("one YAML document"));
}

#[test]
fn non_utf8_bytes_are_an_error_with_position() {
    let e = ConfigFile::parse_bytes(b"gitops:\n  x: \xff\xfe\n", &yaml::Limits::default())
        .expect_err("binary");
    assert_eq!((e.errors[0].line, e.errors[0].column), (2, 6));
    assert!(e.errors[0].message.contains("UTF-8"));
    let limits = yaml::Limits {
        max_bytes: 10,
        ..Default::default()
    };
    let e = ConfigFile::parse_bytes(&[b'#'; 11], &limits).expect_err("large");
    assert!(
        e.errors[0]
            .message
            .contains("more than the limit of 10 bytes"),
        "{e}"
    );
}

#[test]
fn agent_names() {
    assert!(AgentName::new("my-agent").is_ok());
    for bad in ["", "My-Agent", "agent_1", "-a", "a-", &"a".repeat(64)] {
        let e = AgentName::new(bad).expect_err(bad);
        assert!(e.contains("RFC 1123"), "{e}");
    }
}

#[test]
fn agent_config_wire_form_is_stable() {
    let file = ConfigFile::parse(
        "observability: {logging: {level: debug}}\ngitops:\n  manifest_projects:\n  - paths: [{glob: /m/*.yaml}]\n    ref: {branch: main}\n    default_namespace: apps\n",
    )
    .expect("valid");
    let config = file.agent_config(&ProjectId::new("group/config").expect("id"));
    let json = String::from_utf8(config.to_json()).expect("utf8");
    assert_eq!(
        json,
        r#"{"observability":{"logging":{"level":"debug","grpc_level":"error"}},"gitops":{"manifest_projects":[{"id":"group/config","ref":{"branch":"main"},"default_namespace":"apps","paths":["/m/*.yaml"],"reconcile_timeout":"3600s","dry_run_strategy":"none","prune":true,"prune_timeout":"3600s","prune_propagation_policy":"foreground","inventory_policy":"must_match"}]}}"#
    );
    assert_eq!(
        AgentConfig::from_json(json.as_bytes()).expect("reads"),
        config
    );
    // Readers ignore fields they do not know (a newer kas).
    let newer = json.replacen('{', r#"{"future":{"x":1},"#, 1);
    assert_eq!(
        AgentConfig::from_json(newer.as_bytes()).expect("reads"),
        config
    );
    // "warn" on the wire is accepted as warning.
    let warn = json.replace(r#""level":"debug""#, r#""level":"warn""#);
    assert_eq!(
        AgentConfig::from_json(warn.as_bytes())
            .expect("reads")
            .observability
            .logging
            .level,
        LogLevel::Warning
    );
    // An invalid glob on the wire is refused.
    assert!(AgentConfig::from_json(json.replace("/m/*.yaml", "[").as_bytes()).is_err());
}

#[test]
fn fingerprint_follows_content_not_formatting() {
    let project = ProjectId::new("g/c").expect("id");
    let a = ConfigFile::parse("observability: {logging: {level: debug}}\n")
        .expect("a")
        .agent_config(&project);
    let b = ConfigFile::parse("# comment\nobservability:\n  logging:\n    level: debug   # loud\nci_access: {projects: [{id: x}]}\n")
        .expect("b")
        .agent_config(&project);
    assert_eq!(
        a.fingerprint(),
        b.fingerprint(),
        "same agentk content, same fingerprint"
    );
    let c = ConfigFile::parse("observability: {logging: {level: info}}\n")
        .expect("c")
        .agent_config(&project);
    assert_ne!(a.fingerprint(), c.fingerprint());
    assert_eq!(a.fingerprint().0.len(), 64);
    // The config project fills in missing ids, so it is part of the content.
    let d = ConfigFile::parse("gitops: {manifest_projects: [{}]}\n").expect("d");
    assert_ne!(
        d.agent_config(&project).fingerprint(),
        d.agent_config(&ProjectId::new("g/other").expect("id"))
            .fingerprint()
    );
}

#[test]
fn merge_keys_and_anchors_work_in_config() {
    let src = "\
x-defaults: &defaults
  prune: false
  inventory_policy: adopt_all
";
    // Unknown top-level key (the anchor holder) is still an error...
    assert_eq!(one_error(src).path, "x-defaults");
    // ...but anchors inside the schema work.
    let src = "\
gitops:
  manifest_projects:
  - &p
    id: a/b
    prune: false
  - <<: *p
    id: c/d
";
    let f = ConfigFile::parse(src).expect("valid");
    assert!(!f.gitops.manifest_projects[1].prune);
    assert_eq!(
        f.gitops.manifest_projects[1]
            .id
            .as_ref()
            .map(ProjectId::as_str),
        Some("c/d")
    );
}
