//! The demo's Git side with the real `git`: the demo serves its config and manifests repositories with
//! `git daemon` on loopback; a user clones the config repository, edits an agent's `config.yaml`,
//! pushes, and kas sees the new commit at once through the `post-receive` hook (`kas-demo webhook` →
//! `POST /api/v1/webhooks/git`), while kas's poll period is 5 minutes so that only the webhook can
//! explain it. A second start on the same state directory keeps the repositories and what was pushed.
//!
//! `git` is required (the test command installs it); without it these tests fail, saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use git_mirror::testing::git;
use kas_demo::api_client::ApiClient;
use kas_demo::git::{CONFIG_REPO, HookClient, MANIFESTS_REPO};
use kas_demo::{Demo, DemoOptions};

/// How long kas may take to show a pushed commit: far below the 5-minute poll period.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

fn options(state: PathBuf, agents: usize) -> DemoOptions {
    git_mirror::testing::git(Path::new("."), &["--version"])
        .expect("`git` is required (Debian package `git`)");
    let mut opts = DemoOptions::new(agents, state);
    opts.agent_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.git_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.churn = 0.0;
    opts.hooks = Some(HookClient::KasDemo(PathBuf::from(env!(
        "CARGO_BIN_EXE_kas-demo"
    ))));
    opts.config_poll_period = Duration::from_secs(300);
    opts
}

/// Polls `GET /api/v1/agents/{id}/config` until `done` holds or `within` passes; returns the last
/// answer and whether `done` held.
fn wait_config(
    api: &ApiClient,
    agent: u64,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, bool) {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = api
            .get_json(&format!("/api/v1/agents/{agent}/config"))
            .unwrap();
        assert_eq!(status, 200, "{v}");
        if done(&v) {
            return (v, true);
        }
        if Instant::now() > deadline {
            return (v, false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `git push` with its `remote:` lines (the hook's output) returned.
fn push(work: &Path) -> String {
    let out = Command::new("git")
        .current_dir(work)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["push", "origin", "HEAD:main"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "git push failed: {stderr}");
    stderr
}

fn clone(url: &str, into: &Path) -> PathBuf {
    git(
        into.parent().unwrap(),
        &["clone", "-q", url, &into.to_string_lossy()],
    )
    .unwrap();
    into.to_owned()
}

#[test]
fn a_pushed_config_change_reaches_kas_through_the_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(&options(dir.path().join("state"), 2)).unwrap();
    assert!(
        matches!(demo.hook_client(), HookClient::KasDemo(_)),
        "{:?}",
        demo.hook_client()
    );
    let url = demo.git_url(CONFIG_REPO).unwrap();
    let banner = demo.banner();
    assert!(banner.contains(&format!("git clone {url}")), "{banner}");
    assert!(
        banner.contains(&format!(
            "git clone {}",
            demo.git_url(MANIFESTS_REPO).unwrap()
        )),
        "{banner}"
    );
    let manual = std::fs::read_to_string(demo.state_dir().join("manual-commands.sh")).unwrap();
    assert!(
        manual.contains("git daemon") && manual.contains("--enable=receive-pack"),
        "{manual}"
    );
    let api = demo.api_client(Duration::from_secs(5)).unwrap();

    // The first poll (at start) reads the generated config: GitOps on the manifests repository.
    let work = clone(&url, &dir.path().join("config"));
    let first = git(&work, &["rev-parse", "HEAD"]).unwrap();
    for agent in [1, 2] {
        let (v, ok) = wait_config(&api, agent, Duration::from_secs(30), |v| {
            v["status"] == "ok" && v["commit"] == first.as_str()
        });
        assert!(ok, "agent {agent}: kas never read {first}: {v}");
        assert_eq!(
            v["config"]["gitops"]["manifest_projects"][0]["id"],
            demo.git_url(MANIFESTS_REPO).unwrap().as_str(),
            "{v}"
        );
        assert_eq!(v["config"]["observability"]["logging"]["level"], "info");
    }
    let manifests = clone(
        &demo.git_url(MANIFESTS_REPO).unwrap(),
        &dir.path().join("manifests"),
    );
    assert!(
        std::fs::read_to_string(manifests.join("demo.yaml"))
            .unwrap()
            .contains("kind: ConfigMap")
    );

    // Edit agent-1's config and push: kas reads the new commit long before its next poll.
    let file = work.join(".gitlab/agents/agent-1/config.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("level: info"), "{text}");
    std::fs::write(&file, text.replace("level: info", "level: debug")).unwrap();
    git(&work, &["commit", "-q", "-am", "agent-1: debug logs"]).unwrap();
    let pushed = git(&work, &["rev-parse", "HEAD"]).unwrap();
    let started = Instant::now();
    let remote = push(&work);
    assert!(remote.contains("kas is reading it now"), "{remote}");
    let (v, ok) = wait_config(&api, 1, SEEN_WITHIN, |v| v["commit"] == pushed.as_str());
    let seen = started.elapsed();
    assert!(
        ok,
        "kas did not see {pushed} within {SEEN_WITHIN:?} (poll period 300 s): {v}"
    );
    eprintln!("push → commit visible at kas: {seen:?}");
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["applied_commit"], pushed.as_str());
    assert_eq!(v["config"]["observability"]["logging"]["level"], "debug");
    // agent-2 shares the repository (one fetch) and sees the commit too, its config unchanged.
    let (v, ok) = wait_config(&api, 2, SEEN_WITHIN, |v| v["commit"] == pushed.as_str());
    assert!(ok, "{v}");
    assert_eq!(v["config"]["observability"]["logging"]["level"], "info");

    // A broken config is pushed too: kas shows the error and keeps the last good one.
    std::fs::write(
        &file,
        "observability: {logging: {level: loud}}\nbogus_key: 1\n",
    )
    .unwrap();
    git(&work, &["commit", "-q", "-am", "broken"]).unwrap();
    let broken = git(&work, &["rev-parse", "HEAD"]).unwrap();
    push(&work);
    let (v, ok) = wait_config(&api, 1, SEEN_WITHIN, |v| v["commit"] == broken.as_str());
    assert!(ok, "{v}");
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["applied_commit"], pushed.as_str(), "{v}");
    assert_eq!(v["config"]["observability"]["logging"]["level"], "debug");
    demo.shutdown();
}

#[test]
fn a_second_start_keeps_the_repositories_and_what_was_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let demo = Demo::start(&options(state.clone(), 1)).unwrap();
    let work = clone(
        &demo.git_url(CONFIG_REPO).unwrap(),
        &dir.path().join("config"),
    );
    std::fs::write(work.join("NOTES.md"), "kept across restarts\n").unwrap();
    git(&work, &["add", "NOTES.md"]).unwrap();
    git(&work, &["commit", "-q", "-m", "notes"]).unwrap();
    let pushed = git(&work, &["rev-parse", "HEAD"]).unwrap();
    push(&work);
    let secret = std::fs::read_to_string(demo.webhook_secret_file()).unwrap();
    demo.shutdown();

    let demo = Demo::start(&options(state.clone(), 1)).unwrap();
    let bare = demo.git_repo_path(CONFIG_REPO).unwrap();
    assert_eq!(git(&bare, &["rev-parse", "main"]).unwrap(), pushed);
    assert_eq!(
        std::fs::read_to_string(demo.webhook_secret_file()).unwrap(),
        secret,
        "the webhook secret changed"
    );
    let api = demo.api_client(Duration::from_secs(5)).unwrap();
    let (v, ok) = wait_config(&api, 1, Duration::from_secs(30), |v| {
        v["commit"] == pushed.as_str()
    });
    assert!(ok, "kas did not read the kept repository: {v}");
    assert_eq!(v["status"], "ok", "{v}");
    demo.shutdown();
}

#[test]
fn the_webhook_refuses_a_wrong_secret_and_names_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(&options(dir.path().join("state"), 1)).unwrap();
    let api = demo.api_client(Duration::from_secs(5)).unwrap();
    let event =
        serde_json::json!({"ref": "refs/heads/main", "project": {"path_with_namespace": "config"}});
    let (status, body) = api
        .post_json(
            "/api/v1/webhooks/git",
            &[("X-Gitlab-Token", "not-the-secret")],
            &event,
        )
        .unwrap();
    assert_eq!(status, 401, "{body}");
    let secret = std::fs::read_to_string(demo.webhook_secret_file()).unwrap();
    let secret = secret.trim();
    assert!(secret.len() >= 16);
    let (status, body) = api
        .post_json(
            "/api/v1/webhooks/git",
            &[("X-Gitlab-Token", secret)],
            &event,
        )
        .unwrap();
    assert_eq!(status, 202, "{body}");
    assert!(!body.contains(secret));
    let hook = std::fs::read_to_string(
        demo.git_repo_path(CONFIG_REPO)
            .unwrap()
            .join("hooks/post-receive"),
    )
    .unwrap();
    assert!(!hook.contains(secret), "the hook holds the secret: {hook}");
    demo.shutdown();
}

#[test]
fn the_curl_hook_reaches_kas_too() {
    Command::new("curl")
        .arg("--version")
        .output()
        .expect("`curl` is required (Debian package `curl`)");
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path().join("state"), 1);
    opts.hooks = Some(HookClient::Curl);
    let demo = Demo::start(&opts).unwrap();
    let api = demo.api_client(Duration::from_secs(5)).unwrap();
    let work = clone(
        &demo.git_url(CONFIG_REPO).unwrap(),
        &dir.path().join("config"),
    );
    std::fs::write(work.join("NOTES.md"), "via curl\n").unwrap();
    git(&work, &["add", "NOTES.md"]).unwrap();
    git(&work, &["commit", "-q", "-m", "notes"]).unwrap();
    let pushed = git(&work, &["rev-parse", "HEAD"]).unwrap();
    let remote = push(&work);
    assert!(remote.contains("\"polling\""), "{remote}");
    let (v, ok) = wait_config(&api, 1, SEEN_WITHIN, |v| v["commit"] == pushed.as_str());
    assert!(ok, "kas did not see {pushed}: {v}");
    let secret = std::fs::read_to_string(demo.webhook_secret_file()).unwrap();
    assert!(!remote.contains(secret.trim()), "{remote}");
    demo.shutdown();
}

/// Every fetch that brings a change adds a pack to kas's mirror; gix's default table of 32 pack
/// indices made the 32nd change fail every later fetch of the repository.
#[test]
fn forty_pushes_in_a_row_each_reach_kas() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(&options(dir.path().join("state"), 1)).unwrap();
    let api = demo.api_client(Duration::from_secs(5)).unwrap();
    let work = clone(
        &demo.git_url(CONFIG_REPO).unwrap(),
        &dir.path().join("config"),
    );
    for i in 0..40 {
        std::fs::write(work.join("counter.txt"), format!("{i}\n")).unwrap();
        git(&work, &["add", "counter.txt"]).unwrap();
        git(&work, &["commit", "-q", "-m", &format!("push {i}")]).unwrap();
        let pushed = git(&work, &["rev-parse", "HEAD"]).unwrap();
        push(&work);
        let (v, ok) = wait_config(&api, 1, SEEN_WITHIN, |v| v["commit"] == pushed.as_str());
        assert!(ok, "push {i}: kas did not see {pushed}: {v}");
        assert_eq!(v["status"], "ok", "push {i}: {v}");
    }
    demo.shutdown();
}
