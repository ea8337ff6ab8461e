//! Agent configuration from Git, end to end: a real `git daemon` on 127.0.0.1 serves a config project
//! made with the `git` CLI; kas (agents-file backend, each agent naming its `config_project`) polls it
//! and shows the result on `GET /api/v1/agents/{id}/config`; GitLab's push webhook triggers a poll.

#![allow(clippy::unwrap_used)]

#[path = "support/logcapture.rs"]
mod logcapture;
mod support;

use std::time::{Duration, Instant};

use git_mirror::testing::{GitDaemon, HttpAuth, HttpGitServer, TestRepo};
use kas::Running;
use kas::auth::TokenDigest;
use serde_json::Value;
use support::{Env, eventually, get, http, metric, metrics};

const SECRET: &str = "s3cret-webhook-value";

/// A served config project with agent-1's and agent-2's config files, and kas polling it.
struct Setup {
    env: Env,
    _git_root: tempfile::TempDir,
    /// The Git server (dropped: stopped).
    _server: Box<dyn std::any::Any>,
    /// The Git server's port.
    port: u16,
    repo: TestRepo,
    kas: Running,
}

fn config_yaml(level: &str) -> String {
    format!(
        "observability:\n  logging:\n    level: {level}\ngitops:\n  manifest_projects:\n  - paths: [{{glob: '/manifests/*.yaml'}}]\n"
    )
}

fn config_repo() -> (tempfile::TempDir, TestRepo) {
    let git_root = tempfile::tempdir().unwrap();
    let repo = TestRepo::create(git_root.path(), "group/config").unwrap();
    repo.write(".gitlab/agents/agent-1/config.yaml", config_yaml("info"))
        .unwrap();
    repo.write(".gitlab/agents/agent-2/config.yaml", config_yaml("debug"))
        .unwrap();
    repo.commit("initial").unwrap();
    (git_root, repo)
}

/// The config project on `git daemon`.
fn setup(poll_period: Duration) -> Setup {
    let (git_root, repo) = config_repo();
    let daemon = GitDaemon::start(git_root.path()).unwrap();
    let project = format!("{{url: '{}'}}", daemon.url("group/config"));
    let port = daemon.port();
    start(
        poll_period,
        git_root,
        Box::new(daemon),
        port,
        repo,
        &project,
        &[],
    )
}

/// kas whose agents 1 and 2 name `config_project` (flow YAML), with `files` written to its state dir.
fn start(
    poll_period: Duration,
    git_root: tempfile::TempDir,
    server: Box<dyn std::any::Any>,
    port: u16,
    repo: TestRepo,
    config_project: &str,
    files: &[(&str, &[u8])],
) -> Setup {
    logcapture::capture();
    let mut env = Env::new();
    // Agents 1 and 2 share the config project (one fetch); agent 3 has none.
    let mut yaml = String::from("agents:\n");
    for a in &env.agents {
        yaml.push_str(&format!(
            "- id: {}\n  name: {}\n  token_sha256: {}\n",
            a.id,
            a.name,
            TokenDigest::of(&a.token).to_hex()
        ));
        if a.id <= 2 {
            yaml.push_str(&format!("  config_project: {config_project}\n"));
        }
    }
    std::fs::write(env.dir.path().join("agents.yaml"), yaml).unwrap();
    std::fs::write(env.dir.path().join("webhook.secret"), format!("{SECRET}\n")).unwrap();
    for (name, content) in files {
        std::fs::write(env.dir.path().join(name), content).unwrap();
    }
    env.config.agent_configuration.poll_period = poll_period;
    env.config.agent_configuration.fetch_timeout = Duration::from_secs(10);
    env.config.agent_configuration.webhook_secret_file =
        Some(env.dir.path().join("webhook.secret"));
    let kas = env.start();
    Setup {
        env,
        _git_root: git_root,
        _server: server,
        port,
        repo,
        kas,
    }
}

impl Setup {
    fn config(&self, agent_id: u64) -> Value {
        let reply = get(
            &format!("{}/api/v1/agents/{agent_id}/config", self.kas.api_url()),
            Some(&self.env.admin_bearer(agent_id)),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    }

    /// Waits until agent `agent_id`'s state satisfies `pred`.
    fn wait(&self, agent_id: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || {
            let v = self.config(agent_id);
            pred(&v).then_some(v)
        })
    }

    fn webhook(&self, token: Option<&str>, body: &str) -> (u16, String) {
        let mut req = http()
            .post(format!("{}/api/v1/webhooks/git", self.kas.api_url()))
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("X-Gitlab-Token", t);
        }
        let mut resp = req.send(body.as_bytes()).unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }
}

fn level(v: &Value) -> &str {
    v["config"]["observability"]["logging"]["level"]
        .as_str()
        .unwrap_or("")
}

fn push_body() -> String {
    serde_json::json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "project": {"path_with_namespace": "group/config", "git_http_url": "http://gitlab.invalid/group/config.git"},
    })
    .to_string()
}

#[test]
fn config_is_polled_updated_and_broken_commits_keep_the_last_good_one() {
    let s = setup(Duration::from_millis(300));
    let first = s.repo.git(&["rev-parse", "HEAD"]).unwrap();
    let v = s.wait(1, "the first config", |v| v["status"] == "ok");
    assert_eq!(v["commit"], first.trim());
    assert_eq!(v["applied_commit"], first.trim());
    assert!(v["applied_at"].is_string());
    assert_eq!(level(&v), "info");
    // The manifest project defaults to the config project.
    assert_eq!(
        v["config"]["gitops"]["manifest_projects"][0]["id"],
        "group/config"
    );
    let v2 = s.wait(2, "agent 2's config", |v| v["status"] == "ok");
    assert_eq!(level(&v2), "debug");
    // Agent 3 names no config project.
    assert_eq!(s.config(3)["status"], "not_configured");
    // Two agents on one repository: one fetch per poll.
    let polls = |s: &Setup| metric(&metrics(&s.kas), "kas_agent_config_polls_total").unwrap();
    let p0 = polls(&s);
    std::thread::sleep(Duration::from_millis(1000));
    let p1 = polls(&s);
    assert!(
        p1 - p0 <= 5.0,
        "2 agents on 1 repository polled every 300 ms: {p0} → {p1} fetches"
    );

    // A new commit changes the log level.
    s.repo
        .write(".gitlab/agents/agent-1/config.yaml", config_yaml("warning"))
        .unwrap();
    let second = s.repo.commit("warning").unwrap().to_string();
    let v = s.wait(1, "the new log level", |v| v["commit"] == second.as_str());
    assert_eq!(v["status"], "ok");
    assert_eq!(level(&v), "warning");
    assert_eq!(v["applied_commit"], second.as_str());

    // A broken commit: the error names the line; the previous good config stays in force.
    s.repo
        .write(
            ".gitlab/agents/agent-1/config.yaml",
            "observability:\n  logging:\n    levle: debug\n",
        )
        .unwrap();
    let broken = s.repo.commit("typo").unwrap().to_string();
    let v = s.wait(1, "the broken commit", |v| v["commit"] == broken.as_str());
    assert_eq!(v["status"], "error");
    let e = &v["errors"][0];
    assert_eq!(e["commit"], broken.as_str());
    assert_eq!(e["line"], 3);
    assert_eq!(e["column"], 5);
    assert_eq!(e["path"], "observability.logging.levle");
    assert_eq!(e["file"], ".gitlab/agents/agent-1/config.yaml");
    assert_eq!(v["applied_commit"], second.as_str());
    assert_eq!(level(&v), "warning", "the last good config is still served");
    // Logged once, however many polls see the broken commit.
    std::thread::sleep(Duration::from_millis(1000));
    let log = logcapture::capture();
    assert_eq!(
        log.lines_with(&["agent configuration rejected", &broken])
            .len(),
        1,
        "{}",
        log.text()
    );
    // Agent 2's file did not change: it stays ok.
    assert_eq!(s.config(2)["status"], "ok");
    let m = metrics(&s.kas);
    assert_eq!(metric(&m, "kas_agent_configs_with_errors"), Some(1.0));

    // Invalid YAML syntax is reported with its line too.
    s.repo
        .write(
            ".gitlab/agents/agent-1/config.yaml",
            "observability:\n  logging: [unclosed\n",
        )
        .unwrap();
    let syntax = s.repo.commit("syntax").unwrap().to_string();
    let v = s.wait(1, "the syntax error", |v| v["commit"] == syntax.as_str());
    assert_eq!(v["status"], "error");
    assert_eq!(v["errors"][0]["kind"], "syntax");
    assert!(v["errors"][0]["line"].as_u64().unwrap() >= 2);
    assert_eq!(level(&v), "warning");

    // The repository is deleted: the last state stays, with a fetch error.
    s.repo.delete_on_server().unwrap();
    let v = s.wait(1, "the fetch error", |v| v["errors"][0]["kind"] == "fetch");
    assert_eq!(v["status"], "error");
    assert_eq!(v["errors"][0]["fault"], "remote");
    assert_eq!(v["commit"], syntax.as_str());
    assert_eq!(v["applied_commit"], second.as_str());
    assert_eq!(level(&v), "warning");
    let v2 = s.wait(2, "agent 2's fetch error", |v| v["status"] == "error");
    std::thread::sleep(Duration::from_millis(1000));
    let port = format!(":{}/", s.port);
    let failed = log.lines_with(&["fetch failed", "agent_id=1", &port]);
    assert_eq!(
        failed.len(),
        1,
        "logged once per agent and error: {failed:?}"
    );
    assert_eq!(level(&v2), "debug", "agent 2 keeps its config");
    let m = metrics(&s.kas);
    assert!(
        metric(
            &m,
            "kas_agent_config_fetch_failures_total{fault=\"remote\"}"
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    s.kas.shutdown();
}

#[test]
fn push_webhook_polls_at_once_and_checks_its_secret() {
    // Poll period 5 minutes: only the first poll (at start) and the webhook fetch anything.
    let s = setup(Duration::from_secs(300));
    let v = s.wait(1, "the first config", |v| v["status"] == "ok");
    assert_eq!(level(&v), "info");

    s.repo
        .write(".gitlab/agents/agent-1/config.yaml", config_yaml("debug"))
        .unwrap();
    let next = s.repo.commit("debug").unwrap().to_string();

    // Wrong or missing secret: 401, and the secret is never echoed; nothing is polled.
    let (status, body) = s.webhook(Some("wrong-secret"), &push_body());
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("wrong-secret") && !body.contains(SECRET));
    let (status, _) = s.webhook(None, &push_body());
    assert_eq!(status, 401);
    // A repository no agent uses: 404; not a push event: 400.
    let other = r#"{"ref":"refs/heads/main","project":{"path_with_namespace":"other/repo"}}"#;
    assert_eq!(s.webhook(Some(SECRET), other).0, 404);
    assert_eq!(s.webhook(Some(SECRET), "not json").0, 400);
    std::thread::sleep(Duration::from_millis(500));
    assert_ne!(s.config(1)["commit"], next.as_str());
    assert!(!logcapture::capture().text().contains("wrong-secret"));
    // An agent kas does not know: 404.
    let reply = get(
        &format!("{}/api/v1/agents/99/config", s.kas.api_url()),
        Some(&s.env.admin_bearer(99)),
    );
    assert_eq!(reply.status, 404, "{}", reply.body);

    // The right secret: 202, and the new commit is visible within 2 s.
    let pushed = Instant::now();
    let (status, body) = s.webhook(Some(SECRET), &push_body());
    assert_eq!(status, 202, "{body}");
    let v = s.wait(1, "the webhook's poll", |v| v["commit"] == next.as_str());
    let took = pushed.elapsed();
    assert!(took < Duration::from_secs(2), "visible after {took:?}");
    assert_eq!(level(&v), "debug");
    s.kas.shutdown();
}

#[test]
fn https_with_a_token_file_and_refused_credentials_never_leak_the_token() {
    const TOKEN: &str = "glpat-test-token-0123456789";
    let (git_root, repo) = config_repo();
    let server = HttpGitServer::start(
        git_root.path(),
        HttpAuth::Basic {
            user: "oauth2".into(),
            password: TOKEN.into(),
        },
        true,
    )
    .unwrap();
    let ca = std::fs::read(server.ca_file.as_ref().unwrap()).unwrap();
    let project = format!(
        "{{url: '{}', token_file: config.token, ca_file: git-ca.pem}}",
        server.url("group/config")
    );
    let port = server.port();
    let s = start(
        Duration::from_millis(300),
        git_root,
        Box::new(server),
        port,
        repo,
        &project,
        &[
            ("config.token", format!("{TOKEN}\n").as_bytes()),
            ("git-ca.pem", &ca),
        ],
    );
    let v = s.wait(1, "the config over https", |v| v["status"] == "ok");
    assert_eq!(level(&v), "info");

    // The token is rotated on the server side only: refused, whose fault is said, nothing leaks.
    std::fs::write(
        s.env.dir.path().join("config.token"),
        "glpat-wrong-token-999\n",
    )
    .unwrap();
    let v = s.wait(1, "the refusal", |v| v["errors"][0]["kind"] == "fetch");
    assert_eq!(v["errors"][0]["fault"], "credentials", "{v}");
    assert_eq!(level(&v), "info", "the last good config stays");
    let body = v.to_string();
    assert!(!body.contains("glpat"), "{body}");
    let log = logcapture::capture().text();
    assert!(!log.contains("glpat"), "a token reached the log");
    assert!(!metrics(&s.kas).contains("glpat"));

    // The right token again: picked up from the file without a restart.
    std::fs::write(s.env.dir.path().join("config.token"), TOKEN).unwrap();
    s.wait(1, "recovery", |v| v["status"] == "ok");
    s.kas.shutdown();
}
