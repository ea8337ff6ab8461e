//! Access control end to end (issue 14): the real `kubectl` through kas (HTTPS API) and a real agentk
//! in front of a simulated API server, with the agent's configuration (`ci_access`, `user_access`)
//! delivered from a config project served by `git daemon`. A recording relay between agentk and the
//! API server shows exactly which `Impersonate-*` headers reached the cluster.
//!
//! Who is asking comes from kas's users file (deployments without GitLab): CI job tokens (`ci`) with
//! their job, project, groups, environment and ref protection; users with their project roles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;
#[path = "support/wiretap.rs"]
mod wiretap;

use std::time::Duration;

use e2e::{Kubectl, Stack, StackOptions, call};
use git_mirror::testing::{GitDaemon, TestRepo};
use kas::auth::TokenDigest;
use support::{GUARD, eventually, metric};
use wiretap::WireTap;

/// The agent's configuration: CI jobs of `group/app` act as themselves in the production and review
/// environments; `group/tools` jobs act as the agent; `group/prod` jobs only from protected
/// branches; developers of `group/app` act as themselves.
const CONFIG: &str = "\
ci_access:
  projects:
  - id: group/app
    access_as: {ci_job: {}}
    environments: [production, 'review/*']
  - id: group/tools
  - id: group/prod
    protected_branches_only: true
user_access:
  access_as: {user: {}}
  projects: [{id: group/app}]
";

/// The cluster's RBAC: CI jobs of project 5 and developers of project 5 may read pods in
/// `default`, nothing else.
const RBAC: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: default}
rules:
- apiGroups: ['']
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ci-jobs-of-project-5, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'gitlab:project:5'}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: developers-of-project-5, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'gitlab:project_role:5:developer'}
";

/// One token of the users file: name, token kind, token, and the YAML of its GitLab identity.
struct Who {
    name: &'static str,
    kind: &'static str,
    yaml: String,
}

fn job(id: u64, project: (u64, &str), env: Option<&str>, protected: bool) -> String {
    let env = env.map_or(String::new(), |e| {
        format!(
            "    environment: {{name: '{e}', slug: '{}', tier: production}}\n",
            e.replace('/', "-")
        )
    });
    format!(
        "  kinds: [ci]\n  ci_job:\n    id: {id}\n    pipeline_id: 900\n    user: dev\n    \
         project: {{id: {}, path: {}}}\n    groups: [{{id: 3, path: group}}]\n{env}    protected: {protected}\n",
        project.0, project.1
    )
}

fn people() -> Vec<Who> {
    let user = |role: &str| {
        format!(
            "  kinds: [pat]\n  user_id: 12\n  projects: [{{id: 5, path: group/app, role: {role}}}]\n"
        )
    };
    vec![
        Who {
            name: "job-42",
            kind: "ci",
            yaml: job(42, (5, "group/app"), Some("production"), false),
        },
        Who {
            name: "job-43",
            kind: "ci",
            yaml: job(43, (5, "group/app"), Some("staging"), false),
        },
        Who {
            name: "job-44",
            kind: "ci",
            yaml: job(44, (9, "other/x"), None, false),
        },
        Who {
            name: "job-45",
            kind: "ci",
            yaml: job(45, (6, "group/tools"), None, false),
        },
        Who {
            name: "job-46",
            kind: "ci",
            yaml: job(46, (8, "group/prod"), None, false),
        },
        Who {
            name: "job-47",
            kind: "ci",
            yaml: job(47, (8, "group/prod"), None, true),
        },
        Who {
            name: "job-48",
            kind: "ci",
            yaml: job(48, (5, "group/app"), Some("review/feature-1"), false),
        },
        Who {
            name: "dev",
            kind: "pat",
            yaml: user("developer"),
        },
        Who {
            name: "rep",
            kind: "pat",
            yaml: user("reporter"),
        },
    ]
}

fn token_of(name: &str) -> String {
    format!("tok-{name}-0123456789abcdef")
}

struct Setup {
    stack: Stack,
    tap: WireTap,
    kubeconfig: std::path::PathBuf,
    _git_root: tempfile::TempDir,
    _daemon: GitDaemon,
}

impl Setup {
    fn start() -> Setup {
        let mut stack = Stack::start(StackOptions {
            agents: vec![1],
            pending_request_deadline: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            ..StackOptions::default()
        });
        // The config project, served by git daemon.
        let git_root = tempfile::tempdir().unwrap();
        let repo = TestRepo::create(git_root.path(), "group/config").unwrap();
        repo.write(".gitlab/agents/agent-1/config.yaml", CONFIG)
            .unwrap();
        repo.commit("access grants").unwrap();
        let daemon = GitDaemon::start(git_root.path()).unwrap();
        let dir = stack.env.dir.path().to_owned();
        // Agents file: agent 1's configuration project (GitLab id 7).
        let mut agents = String::from("agents:\n");
        for a in &stack.env.agents {
            agents.push_str(&format!(
                "- id: {}\n  name: {}\n  token_sha256: {}\n",
                a.id,
                a.name,
                TokenDigest::of(&a.token).to_hex()
            ));
            if a.id == 1 {
                agents.push_str(&format!(
                    "  config_project: {{url: '{}', project_id: 7}}\n",
                    daemon.url("group/config")
                ));
            }
        }
        std::fs::write(dir.join("agents.yaml"), agents).unwrap();
        // Users file: the operator `admin` (kept from the stack) and the GitLab identities.
        let mut users = format!(
            "users:\n- name: admin\n  token_sha256: {}\n  agents: '*'\n",
            TokenDigest::of(&stack.env.admin_token).to_hex()
        );
        for w in people() {
            users.push_str(&format!(
                "- name: {}\n  token_sha256: {}\n{}",
                w.name,
                TokenDigest::of(&token_of(w.name)).to_hex(),
                w.yaml
            ));
        }
        std::fs::write(dir.join("users.yaml"), users).unwrap();
        stack.env.config.agent_configuration.poll_period = Duration::from_secs(300);
        stack.env.config.agent_configuration.fetch_timeout = Duration::from_secs(10);
        stack.restart_kas(Duration::from_secs(2));
        // agentk talks to its API server through the recording relay.
        let tap = WireTap::start(stack.runtime(), stack.cluster(1).addr());
        std::fs::write(
            dir.join("cluster-1.kubeconfig"),
            sim_apiserver::kubeconfig::kubeconfig_yaml(
                &format!("http://{}", tap.addr),
                "cluster-1",
                stack.cluster(1).bearer_token(),
            ),
        )
        .unwrap();
        stack.stop_agent(1);
        stack.start_agent(1);
        assert!(stack.kas().wait_for_agents(&[1], GUARD));
        let kubeconfig = dir.join("access.kubeconfig");
        write_kubeconfig(&stack, &kubeconfig);
        let s = Setup {
            stack,
            tap,
            kubeconfig,
            _git_root: git_root,
            _daemon: daemon,
        };
        eventually("agent 1's configuration from Git", || {
            let v = s.access();
            (!v["config_commit"].is_null()).then_some(())
        });
        // The cluster's RBAC for the GitLab identities (created by the operator, as the agent).
        let rbac = s.stack.env.dir.path().join("rbac.yaml");
        std::fs::write(&rbac, RBAC).unwrap();
        s.kubectl("admin")
            .ok(&["apply", "-f", rbac.to_str().unwrap()]);
        s
    }

    /// `GET /api/v1/agents/1/access` as the operator.
    fn access(&self) -> serde_json::Value {
        let reply = self
            .stack
            .get("/api/v1/agents/1/access", Some(&self.stack.admin(1)));
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    }

    fn kubectl(&self, who: &str) -> Kubectl {
        Kubectl::new(
            &self.kubeconfig,
            who,
            &self.stack.env.dir.path().join("kube-cache-access"),
        )
    }

    /// The `Impersonate-*` header lines (lower case) of the request marked `marker` as the API
    /// server received it.
    fn impersonation(&self, marker: &str) -> Vec<String> {
        let headers = eventually(&format!("request {marker} at the API server"), || {
            self.tap.request_headers(marker)
        });
        headers
            .into_iter()
            .filter(|h| h.starts_with("impersonate-"))
            .collect()
    }
}

fn write_kubeconfig(stack: &Stack, path: &std::path::Path) {
    let server = stack.kas().k8s_proxy_url();
    let ca = stack.ca_file.display();
    let mut text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kas\n  cluster:\n    server: {server}\n    \
         certificate-authority: {ca}\nusers:\n"
    );
    let mut names: Vec<(String, String)> = people()
        .iter()
        .map(|w| {
            (
                w.name.to_owned(),
                format!("{}:1:{}", w.kind, token_of(w.name)),
            )
        })
        .collect();
    names.push(("admin".into(), format!("pat:1:{}", stack.env.admin_token)));
    for (name, token) in &names {
        text.push_str(&format!(
            "- name: {name}\n  user:\n    token: \"{token}\"\n"
        ));
    }
    text.push_str("contexts:\n");
    for (name, _) in &names {
        text.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: kas\n    user: {name}\n    namespace: default\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// `kubectl get pods -l marker=<marker>`: succeeds or fails as the decision says.
fn get_marked(k: &Kubectl, marker: &str) -> std::process::Output {
    k.run(&[
        "get",
        "pods",
        "-l",
        &format!("marker={marker}"),
        "-o",
        "name",
    ])
}

fn has(lines: &[String], line: &str) -> bool {
    lines.iter().any(|l| l == line)
}

#[test]
fn grants_decide_and_agentk_sends_exactly_the_decided_identity() {
    let s = Setup::start();

    // The effective grants are visible.
    let access = s.access();
    assert_eq!(access["config_project"]["id"], 7);
    assert_eq!(access["config_project"]["path"], "group/config");
    assert_eq!(access["ci_access"]["projects"][0]["id"], "group/app");
    assert_eq!(access["user_access"]["projects"][0], "group/app");

    // A CI job of a granted project, in an allowed environment: acts as its GitLab identity.
    let out = get_marked(&s.kubectl("job-42"), "ci42");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imp = s.impersonation("ci42");
    assert!(has(&imp, "impersonate-user: gitlab:ci_job:42"), "{imp:?}");
    for g in [
        "gitlab:ci_job",
        "gitlab:project:5",
        "gitlab:project_env:5:production",
        "gitlab:project_env_tier:5:production",
        "gitlab:group:3",
    ] {
        assert!(
            has(&imp, &format!("impersonate-group: {g}")),
            "{g}: {imp:?}"
        );
    }
    assert!(
        has(&imp, "impersonate-extra-agent.gitlab.com%2fci_job_id: 42"),
        "{imp:?}"
    );
    assert!(
        has(
            &imp,
            "impersonate-extra-agent.gitlab.com%2fconfig_project_id: 7"
        ),
        "{imp:?}"
    );
    assert!(
        !imp.iter().any(|h| h.starts_with("impersonate-uid")),
        "{imp:?}"
    );

    // Environment globs: review/* matches, staging does not (403 from kas, nothing sent).
    let out = get_marked(&s.kubectl("job-48"), "ci48");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has(
        &s.impersonation("ci48"),
        "impersonate-user: gitlab:ci_job:48"
    ));
    let err = s
        .kubectl("job-43")
        .fails(&["get", "pods", "-l", "marker=ci43"]);
    assert!(
        err.contains("Forbidden") && err.contains("staging"),
        "{err}"
    );
    assert!(s.tap.request_headers("ci43").is_none());

    // A project no grant names: 403 from kas, never reaches the cluster.
    let err = s
        .kubectl("job-44")
        .fails(&["get", "pods", "-l", "marker=ci44"]);
    assert!(
        err.contains("Forbidden") && err.contains("grants no access to this CI job"),
        "{err}"
    );
    assert!(s.tap.request_headers("ci44").is_none());

    // access_as: agent (the default): no impersonation at all.
    let out = get_marked(&s.kubectl("job-45"), "ci45");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.impersonation("ci45"), Vec::<String>::new());

    // protected_branches_only: the unprotected job is refused, the protected one acts as the agent.
    let err = s
        .kubectl("job-46")
        .fails(&["get", "pods", "-l", "marker=ci46"]);
    assert!(err.contains("protected branches"), "{err}");
    assert!(s.tap.request_headers("ci46").is_none());
    let out = get_marked(&s.kubectl("job-47"), "ci47");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.impersonation("ci47"), Vec::<String>::new());

    // user_access as user: gitlab:user:<name> with the role groups of the listed project.
    let out = get_marked(&s.kubectl("dev"), "dev1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imp = s.impersonation("dev1");
    assert!(has(&imp, "impersonate-user: gitlab:user:dev"), "{imp:?}");
    for g in ["gitlab:user", "gitlab:project_role:5:developer"] {
        assert!(
            has(&imp, &format!("impersonate-group: {g}")),
            "{g}: {imp:?}"
        );
    }
    assert!(!imp.iter().any(|h| h.contains("maintainer")), "{imp:?}");
    assert!(
        has(
            &imp,
            "impersonate-extra-agent.gitlab.com%2faccess_type: personal_access_token"
        ),
        "{imp:?}"
    );
    // A reporter is below the least role user_access accepts.
    let err = s
        .kubectl("rep")
        .fails(&["get", "pods", "-l", "marker=rep1"]);
    assert!(err.contains("developer role"), "{err}");

    // The client's own impersonation never reaches the cluster as such: under an impersonating
    // grant it is refused (nested impersonation); the operator's is stripped. (Under access_as
    // agent the cluster's review decides: the next test.)
    let err =
        s.kubectl("dev")
            .fails(&["--as", "system:admin", "get", "pods", "-l", "marker=nest1"]);
    assert!(err.contains("nested impersonation"), "{err}");
    let out = get_marked(&s.kubectl("admin"), "op1");
    assert!(out.status.success());
    let out = s.kubectl("admin").run(&[
        "--as",
        "system:admin",
        "--as-group",
        "system:masters",
        "get",
        "pods",
        "-l",
        "marker=op2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.impersonation("op2"), Vec::<String>::new());
    assert!(s.tap.request_headers("nest1").is_none());
    // (A review's body may name the target; no impersonation header ever does.)
    for line in s.tap.lines() {
        let l = line.to_ascii_lowercase();
        assert!(
            !l.starts_with("impersonate-")
                || !(l.contains("system:admin") || l.contains("system:masters")),
            "{line}"
        );
    }

    // Denials are counted by reason.
    let m = s.stack.metrics();
    for (reason, at_least) in [
        ("no_grant", 1.0),
        ("environment_not_allowed", 1.0),
        ("unprotected_ref", 1.0),
        ("insufficient_role", 1.0),
        ("nested_impersonation_refused", 1.0),
    ] {
        let n = metric(
            &m,
            &format!("kas_access_denied_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= at_least, "{reason}: {n}\n{m}");
    }
    assert!(
        metric(&m, "kas_access_allowed_total{acted_as=\"impersonated\"}").unwrap_or(0.0) >= 3.0,
        "{m}"
    );

    // A refusal is a Kubernetes Status with the reason.
    let url = format!(
        "{}/api/v1/namespaces/default/pods",
        s.stack.kas().k8s_proxy_url()
    );
    let bearer = format!("Bearer ci:1:{}", token_of("job-44"));
    let reply = call(
        &s.stack.https(),
        "GET",
        &url,
        &[("Authorization", bearer.as_str())],
        Vec::new(),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    let status = reply.json();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    s.stack.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Who is asking, from GitLab (GitLab itself cannot run here: a fake GitLab HTTP server on loopback)

mod gitlab {
    use std::io::{Read as _, Write as _};
    use std::net::{IpAddr, Ipv4Addr, TcpListener};
    use std::sync::{Arc, Mutex};

    use kas::auth::gitlab::{AGENT_INFO_PATH, AUTHORIZE_PROXY_USER_PATH, JOB_PATH};
    use kas::auth::{GitLabAuthenticator, GitLabOptions, RateLimitOptions};
    use kas::metrics::Metrics;
    use kas::users::{Principal, UserGate, UsersFile};

    const SECRET: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

    /// One request as the fake GitLab saw it: request line, headers (lower-case names), body.
    type Seen = (String, Vec<(String, String)>, String);

    /// Serves `count` requests, answering `/api/v4/job`, `authorize_proxy_user` and, for
    /// `agent_token`, `agent_info` (agent 1 `agent-1` in project 7 `group/config`).
    fn fake_gitlab(count: usize, agent_token: &str) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let agent_bearer = format!("Bearer {agent_token}");
        let agent_token = agent_token.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for _ in 0..count {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
                let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                let (status, answer) = if request_line
                    .starts_with(&format!("GET {AGENT_INFO_PATH} "))
                {
                    if !agent_token.is_empty()
                        && header("authorization") == Some(agent_bearer.clone())
                    {
                        (
                            200,
                            serde_json::json!({
                                "project_id": 7, "agent_id": 1, "agent_name": "agent-1",
                                "gitaly_info": {"address": "tcp://gitaly:8075", "token": "gitaly-secret"},
                                "gitaly_repository": {"storage_name": "default",
                                    "relative_path": "@hashed/aa/bb.git", "gl_repository": "project-7",
                                    "gl_project_path": "group/config"},
                                "default_branch": "main"
                            })
                            .to_string(),
                        )
                    } else {
                        (401, r#"{"message":"401 Unauthorized"}"#.to_owned())
                    }
                } else if request_line.starts_with(&format!("GET {JOB_PATH} ")) {
                    match header("job-token").as_deref() {
                        Some("job-token-42") => (
                            200,
                            serde_json::json!({
                                "id": 42, "ref_protected": true, "pipeline": {"id": 9},
                                "user": {"username": "dev"},
                                "project": {"id": 5, "path_with_namespace": "group/app",
                                            "groups": [{"id": 3, "full_path": "group"}]},
                                "environment": {"name": "production", "slug": "production",
                                                "tier": "production"}
                            })
                            .to_string(),
                        ),
                        _ => (401, r#"{"message":"401 Unauthorized"}"#.to_owned()),
                    }
                } else if request_line.starts_with(&format!("POST {AUTHORIZE_PROXY_USER_PATH} ")) {
                    let asked: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    if header("gitlab-kas-api-request").is_none() {
                        (
                            401,
                            r#"{"message":"KAS JWT authentication invalid"}"#.to_owned(),
                        )
                    } else if asked["access_key"] == "glpat-dev" {
                        (
                            200,
                            serde_json::json!({
                                "agent": {"id": asked["agent_id"], "config_project": {"id": 7}},
                                "user": {"id": 12, "username": "dev"},
                                "access_as": {"user": {
                                    "projects": [{"id": 5, "full_path": "group/app",
                                                  "roles": ["reporter", "developer"]}],
                                    "groups": []}}
                            })
                            .to_string(),
                        )
                    } else if asked["access_key"] == "glpat-boom" {
                        (500, r#"{"message":"500 Internal Server Error"}"#.to_owned())
                    } else {
                        (403, r#"{"message":"403 Forbidden"}"#.to_owned())
                    }
                } else {
                    (404, r#"{"message":"404 Not Found"}"#.to_owned())
                };
                log.lock().unwrap().push((request_line, headers, body));
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    )
                    .as_bytes(),
                );
            }
        });
        (url, seen)
    }

    #[test]
    fn gitlab_says_who_users_and_ci_jobs_are() {
        let (url, seen) = fake_gitlab(5, "");
        let gitlab = GitLabAuthenticator::new(GitLabOptions::new(url, SECRET.to_vec())).unwrap();
        let users =
            UsersFile::from_yaml_str("users: []\n", std::path::Path::new("users.yaml")).unwrap();
        let gate = UserGate::new(
            Arc::new(users),
            RateLimitOptions {
                max_failures: 100,
                window: std::time::Duration::from_secs(60),
                max_sources: 10,
            },
            Arc::new(Metrics::new()),
        )
        .with_gitlab(Arc::new(gitlab));
        assert!(gate.asks_gitlab());
        let src = IpAddr::V4(Ipv4Addr::LOCALHOST);

        let job = gate
            .authorize(Some(b"Bearer ci:1:job-token-42"), None, src)
            .unwrap();
        let Principal::Gitlab(access_control::Requester::CiJob(j)) = job.principal else {
            panic!("a CI job: {job:?}");
        };
        assert_eq!((j.job_id, j.pipeline_id, j.project.id), (42, 9, 5));
        assert_eq!(j.project.path, "group/app");
        assert_eq!(j.ancestor_groups[0].path, "group");
        assert!(j.ref_protected);
        assert_eq!(j.environment.unwrap().tier, "production");

        let dev = gate
            .authorize(Some(b"Bearer pat:1:glpat-dev"), None, src)
            .unwrap();
        let Principal::Gitlab(access_control::Requester::User(u)) = dev.principal else {
            panic!("a user: {dev:?}");
        };
        assert_eq!((u.user_id, u.username.as_str()), (12, "dev"));
        assert_eq!(u.project_roles[0].role, access_control::Role::Developer);

        // GitLab's refusals and failures: 401, 403, 503 — never a credential in the message.
        let e = gate
            .authorize(Some(b"Bearer ci:1:job-token-nope"), None, src)
            .unwrap_err();
        assert_eq!(e.http_status(), 401);
        let e = gate
            .authorize(Some(b"Bearer pat:1:glpat-other"), None, src)
            .unwrap_err();
        assert_eq!(e.http_status(), 403);
        let e = gate
            .authorize(Some(b"Bearer pat:1:glpat-boom"), None, src)
            .unwrap_err();
        assert_eq!(e.http_status(), 503);
        assert!(!e.to_string().contains("glpat-boom"), "{e}");

        // The requests as GitLab defines them.
        let seen = seen.lock().unwrap().clone();
        let (line, headers, _) = &seen[0];
        assert!(line.starts_with("GET /api/v4/job "), "{line}");
        assert!(headers.contains(&("job-token".into(), "job-token-42".into())));
        let (line, headers, body) = &seen[1];
        assert!(line.starts_with("POST /api/v4/internal/kubernetes/authorize_proxy_user "));
        assert!(headers.iter().any(|(k, _)| k == "gitlab-kas-api-request"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["agent_id"], 1);
        assert_eq!(body["access_type"], "personal_access_token");
        assert_eq!(body["access_key"], "glpat-dev");
    }

    /// GitLab's answers about users and CI jobs are reused for `user_cache`'s TTLs (kubectl sends
    /// dozens of requests per command), keyed by everything asked; backend failures never.
    #[test]
    fn user_and_job_answers_are_cached_for_their_ttls() {
        use std::time::{Duration, Instant};
        let (url, seen) = fake_gitlab(20, "");
        let mut options = GitLabOptions::new(url, SECRET.to_vec());
        options.user_positive_ttl = Duration::from_secs(10);
        options.user_negative_ttl = Duration::from_secs(5);
        let gitlab = GitLabAuthenticator::new(options).unwrap();
        let pat = access_control::AccessType::PersonalAccessToken;
        let t0 = Instant::now();
        let asked = || seen.lock().unwrap().len();
        gitlab.proxy_user_at(1, pat, "glpat-dev", None, t0).unwrap();
        gitlab
            .proxy_user_at(1, pat, "glpat-dev", None, t0 + Duration::from_secs(9))
            .unwrap();
        assert_eq!(asked(), 1, "the second answer comes from the cache");
        // Another agent is another question.
        gitlab.proxy_user_at(2, pat, "glpat-dev", None, t0).unwrap();
        assert_eq!(asked(), 2);
        gitlab
            .proxy_user_at(1, pat, "glpat-dev", None, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(asked(), 3, "expired after the positive TTL");
        // Refusals: cached for the negative TTL, as refusals.
        for at in [0, 4] {
            let e = gitlab
                .proxy_user_at(1, pat, "glpat-other", None, t0 + Duration::from_secs(at))
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                kas::auth::AuthError::PermissionDenied.to_string()
            );
        }
        assert_eq!(asked(), 4);
        let _ = gitlab.proxy_user_at(1, pat, "glpat-other", None, t0 + Duration::from_secs(5));
        assert_eq!(asked(), 5);
        // Backend failures are never cached.
        for _ in 0..2 {
            assert!(
                gitlab
                    .proxy_user_at(1, pat, "glpat-boom", None, t0)
                    .is_err()
            );
        }
        assert_eq!(asked(), 7);
        // CI job tokens likewise.
        gitlab.ci_job_at("job-token-42", t0).unwrap();
        gitlab
            .ci_job_at("job-token-42", t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(asked(), 8);
        assert!(gitlab.ci_job_at("job-token-nope", t0).is_err());
        assert!(gitlab.ci_job_at("job-token-nope", t0).is_err());
        assert_eq!(asked(), 9);
    }

    /// An agent GitLab authenticates gets the configuration of the project GitLab names for it
    /// (`agent_info`'s `gl_project_path`), cloned from `gitlab.repositories` — so its `user_access`
    /// grants decide for GitLab users. Without `gitlab.repositories` it gets none (fail closed).
    #[test]
    fn agents_gitlab_authenticates_read_their_configuration_from_gitlab() {
        use super::*;
        use kas::config::{AuthBackendConfig, GitLabConfig, GitLabRepositoriesConfig};

        let mut stack = Stack::start(StackOptions {
            agents: vec![1],
            ..StackOptions::default()
        });
        let git_root = tempfile::tempdir().unwrap();
        let repo = TestRepo::create(git_root.path(), "group/config").unwrap();
        repo.write(".gitlab/agents/agent-1/config.yaml", CONFIG)
            .unwrap();
        repo.commit("access grants").unwrap();
        let daemon = GitDaemon::start(git_root.path()).unwrap();
        let base = daemon
            .url("group/config")
            .trim_end_matches("/group/config")
            .trim_end_matches("/group/config.git")
            .to_owned();
        let agent_token = stack.env.agents[0].token.clone();
        let (url, seen) = fake_gitlab(50, &agent_token);
        let dir = stack.env.dir.path().to_owned();
        std::fs::write(
            dir.join("gitlab.secret"),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET),
        )
        .unwrap();
        let gitlab = |repositories| {
            AuthBackendConfig::Gitlab(GitLabConfig {
                url: url.clone(),
                secret_file: dir.join("gitlab.secret"),
                repositories,
                ..GitLabConfig::default()
            })
        };
        let access = |stack: &Stack| {
            let reply = stack.get("/api/v1/agents/1/access", Some(&stack.admin(1)));
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.json()
        };
        stack.env.config.agent_configuration.poll_period = Duration::from_secs(300);
        stack.env.config.agent_configuration.fetch_timeout = Duration::from_secs(10);

        // Without repository access: the agent connects, and has no configuration.
        stack.env.config.agent_auth.backend = gitlab(None);
        stack.restart_kas(Duration::from_secs(2));
        stack.stop_agent(1);
        stack.start_agent(1);
        assert!(stack.kas().wait_for_agents(&[1], GUARD));
        std::thread::sleep(Duration::from_secs(1));
        let v = access(&stack);
        assert!(v["config_commit"].is_null(), "{v}");

        // With it: the configuration from GitLab's project, polled as soon as the agent connects
        // (the poll period is 5 minutes).
        stack.env.config.agent_auth.backend = gitlab(Some(Box::new(GitLabRepositoriesConfig {
            url: Some(base),
            ..GitLabRepositoriesConfig::default()
        })));
        stack.restart_kas(Duration::from_secs(2));
        stack.stop_agent(1);
        stack.start_agent(1);
        assert!(stack.kas().wait_for_agents(&[1], GUARD));
        let v = eventually("agent 1's configuration from GitLab's project", || {
            let v = access(&stack);
            (!v["config_commit"].is_null()).then_some(v)
        });
        assert_eq!(v["config_project"]["id"], 7, "{v}");
        assert_eq!(v["config_project"]["path"], "group/config", "{v}");
        // kas asked GitLab who the agent is, with the agent's token (and never logged it).
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|(line, _, _)| line.starts_with(&format!("GET {AGENT_INFO_PATH} "))),
            "{seen:?}"
        );
        stack.shutdown();
        drop(daemon);
    }
}

/// With the cluster's RBAC: `kubectl auth whoami` shows the identity kas decided, and what the
/// RoleBindings to GitLab's groups allow is all the impersonated identities may do; the agent's own
/// identity is not limited by them; a nested impersonation the cluster's review allows is limited by
/// the impersonated user's own RBAC.
#[test]
fn the_clusters_rbac_limits_the_decided_identities() {
    let s = Setup::start();
    let whoami = |who: &str| {
        let v = s.kubectl(who).json(&["auth", "whoami", "-o", "json"]);
        let user = v["status"]["userInfo"].clone();
        let groups: Vec<String> = user["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (
            user["username"].as_str().unwrap_or_default().to_owned(),
            groups,
        )
    };
    let (name, groups) = whoami("job-42");
    assert_eq!(name, "gitlab:ci_job:42");
    assert!(groups.iter().any(|g| g == "gitlab:project:5"), "{groups:?}");
    let (name, groups) = whoami("dev");
    assert_eq!(name, "gitlab:user:dev");
    assert!(
        groups
            .iter()
            .any(|g| g == "gitlab:project_role:5:developer"),
        "{groups:?}"
    );
    let (agent, _) = whoami("job-45");
    assert!(!agent.starts_with("gitlab:"), "{agent}");

    for who in ["job-42", "dev"] {
        let k = s.kubectl(who);
        k.ok(&["get", "pods", "-n", "default", "-o", "name"]);
        let err = k.fails(&["get", "configmaps", "-n", "default"]);
        assert!(
            err.contains("Forbidden") && err.contains("cannot list"),
            "{who}: {err}"
        );
        let err = k.fails(&["get", "pods", "-n", "kube-system"]);
        assert!(err.contains("Forbidden"), "{who}: {err}");
        assert_eq!(k.ok(&["auth", "can-i", "list", "pods"]).trim(), "yes");
        let out = k.run(&["auth", "can-i", "delete", "pods"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{who}");
    }
    // access_as agent: the agent's own identity, not limited by the bindings above.
    s.kubectl("job-45")
        .ok(&["get", "configmaps", "-n", "default", "-o", "name"]);

    // Nested impersonation under access_as agent: the agent (cluster-admin here) may impersonate
    // jane, so kas sends her identity; jane has no bindings, so the cluster refuses.
    let err = s.kubectl("job-45").fails(&[
        "--as",
        "jane",
        "get",
        "pods",
        "-n",
        "default",
        "-l",
        "marker=nest-jane",
    ]);
    assert!(err.contains("jane") && err.contains("Forbidden"), "{err}");
    let imp = s.impersonation("nest-jane");
    assert!(has(&imp, "impersonate-user: jane"), "{imp:?}");
    s.stack.shutdown();
}
