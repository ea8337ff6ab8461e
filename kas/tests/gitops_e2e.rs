//! GitOps end to end, all real: `git daemon` on 127.0.0.1 serves a config project and a manifest
//! project made with the `git` CLI; kas (agents-file backend, agent 1 naming its config project)
//! polls both; agentk's GitOps workers (the library's `GitopsWorkers`, on a tunnel connection dialled
//! with agent 1's token, fed the configuration kas accepted) open the `gitops` stream and apply to a
//! simulated API server with server-side apply; the real `kubectl` checks the cluster and kas's
//! `GET /api/v1/agents/1/gitops` shows the sync.
//!
//! Until the `config` service feeds agentk's configuration watch, the test feeds it the
//! configuration kas shows on `GET /api/v1/agents/1/config` (the same JSON the service carries).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_config::AgentConfig;
use agentk::gitops::{GitopsWorkers, WorkerSettings};
use e2e::Kubectl;
use git_mirror::testing::{GitDaemon, TestRepo};
use kas::Running;
use kas::auth::TokenDigest;
use serde_json::Value;
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};
use support::{Env, eventually, get, http, metric, metrics};
use tokio::sync::watch;

const SECRET: &str = "gitops-webhook-secret";
const INVENTORY_NS: &str = "gitlab-agent";

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n";

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: demo\ndata:\n  value: {value}\n"
    )
}

struct Setup {
    env: Env,
    kas: Running,
    _git_root: tempfile::TempDir,
    _daemon: GitDaemon,
    manifests: TestRepo,
    cluster: Option<RunningApiServer>,
    kubectl: Kubectl,
    runtime: tokio::runtime::Runtime,
    _config_tx: watch::Sender<Option<Arc<AgentConfig>>>,
    _conn_tx: watch::Sender<Option<runtime_tokio::Connection>>,
}

/// Everything up, agent 1's workers running; `gitops_poll` is kas's `gitops.poll_period`.
fn setup(gitops_poll: Duration) -> Setup {
    e2e::init_logging();
    let git_root = tempfile::tempdir().unwrap();
    let config = TestRepo::create(git_root.path(), "group/config").unwrap();
    let manifests = TestRepo::create(git_root.path(), "group/manifests").unwrap();
    let daemon = GitDaemon::start(git_root.path()).unwrap();
    config
        .write(
            ".gitlab/agents/agent-1/config.yaml",
            format!(
                "gitops:\n  manifest_projects:\n  - id: '{}'\n    paths: [{{glob: 'apps/**/*.yaml'}}]\n    default_namespace: demo\n",
                daemon.url("group/manifests")
            ),
        )
        .unwrap();
    config.commit("gitops on").unwrap();
    manifests.write("apps/namespace.yaml", NAMESPACE).unwrap();
    manifests
        .write(
            "apps/config.yaml",
            format!(
                "{}---\n{}",
                configmap("app-config", "one"),
                configmap("old-config", "x")
            ),
        )
        .unwrap();
    manifests.write("README.md", "not a manifest\n").unwrap();
    manifests.commit("first").unwrap();

    let mut env = Env::new();
    let mut yaml = String::from("agents:\n");
    for a in &env.agents {
        yaml.push_str(&format!(
            "- id: {}\n  name: {}\n  token_sha256: {}\n",
            a.id,
            a.name,
            TokenDigest::of(&a.token).to_hex()
        ));
        if a.id == 1 {
            yaml.push_str(&format!(
                "  config_project: {{url: '{}'}}\n",
                daemon.url("group/config")
            ));
        }
    }
    std::fs::write(env.dir.path().join("agents.yaml"), yaml).unwrap();
    std::fs::write(env.dir.path().join("webhook.secret"), SECRET).unwrap();
    env.config.agent_configuration.poll_period = Duration::from_millis(300);
    env.config.agent_configuration.webhook_secret_file =
        Some(env.dir.path().join("webhook.secret"));
    env.config.gitops.poll_period = gitops_poll;
    env.config.gitops.fetch_timeout = Duration::from_secs(10);
    let kas = env.start();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gitops-e2e")
        .enable_all()
        .build()
        .unwrap();
    let cluster = ApiServer::start_on(
        runtime.handle(),
        ApiServerConfig {
            nodes: 1,
            pods: 0,
            ..ApiServerConfig::default()
        },
    )
    .unwrap();
    let kubeconfig = env.dir.path().join("cluster.kubeconfig");
    cluster.write_kubeconfig(&kubeconfig, "cluster").unwrap();
    let kubectl = Kubectl::new(&kubeconfig, "cluster", &env.dir.path().join("kube-cache"));
    kubectl.ok(&["create", "namespace", INVENTORY_NS]);

    // The configuration kas accepted for agent 1 (what the config service delivers).
    let config_json = eventually("agent 1's configuration", || {
        let v = get(
            &format!("{}/api/v1/agents/1/config", kas.api_url()),
            Some(&env.admin_bearer(1)),
        )
        .json();
        (v["status"] == "ok").then(|| v["config"].clone())
    });
    let agent_config = AgentConfig::from_json(config_json.to_string().as_bytes()).unwrap();
    assert_eq!(agent_config.gitops.manifest_projects.len(), 1);

    // agentk's side: a tunnel connection with agent 1's token, and the workers.
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, env.pki.ca_pem()).unwrap();
    let tls = tunnel_tls::client_config(&tunnel_tls::Roots::PemFile(ca), None).unwrap();
    let options = runtime_tokio::AgentOptions {
        token: env.token(1).to_string(),
        meta: protocol::proto::AgentMeta {
            version: "gitops-e2e".into(),
            ..Default::default()
        },
        config: Default::default(),
    };
    let addr = kas.agent_addr();
    let (conn, _) = runtime
        .block_on(runtime_tokio::connect_agent(
            addr,
            tls,
            tunnel_tls::server_name("localhost").unwrap(),
            options,
        ))
        .unwrap();
    let (conn_tx, conn_rx) = watch::channel(Some(conn));
    let (config_tx, config_rx) = watch::channel(Some(Arc::new(agent_config)));
    let kube_source = agentk::KubeSource::Kubeconfig {
        path: kubeconfig.clone(),
        context: None,
    };
    runtime.spawn(async move {
        let kube = agentk::upstream::load_kube_config(&kube_source)
            .await
            .unwrap();
        let client = kube::Client::try_from(kube).unwrap();
        let settings = WorkerSettings {
            agent: "agent-1".into(),
            inventory_namespace: INVENTORY_NS.into(),
            field_manager: "agentk".into(),
            force_conflicts: true,
            // Drift correction within the test's patience.
            resync_period: Duration::from_secs(1),
        };
        GitopsWorkers::new(client, settings)
            .run(conn_rx, config_rx)
            .await;
    });
    Setup {
        env,
        kas,
        _git_root: git_root,
        _daemon: daemon,
        manifests,
        cluster: Some(cluster),
        kubectl,
        runtime,
        _config_tx: config_tx,
        _conn_tx: conn_tx,
    }
}

impl Setup {
    fn gitops(&self) -> Value {
        let reply = get(
            &format!("{}/api/v1/agents/1/gitops", self.kas.api_url()),
            Some(&self.env.admin_bearer(1)),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    }

    fn project(&self) -> Value {
        self.gitops()["projects"][0].clone()
    }

    /// `value` of ConfigMap `name` in `demo`, `None` if it does not exist.
    fn value(&self, name: &str) -> Option<String> {
        let out = self
            .kubectl
            .run(&["get", "configmap", name, "-n", "demo", "-o", "json"]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound"), "kubectl get {name}: {err}");
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(v["data"]["value"].as_str().unwrap_or_default().to_string())
    }

    fn wait_value(&self, name: &str, want: Option<&str>) {
        eventually(&format!("configmap {name} = {want:?}"), || {
            (self.value(name).as_deref() == want).then_some(())
        });
    }

    fn wait_synced(&self, commit: &str) -> Value {
        eventually(&format!("agent reports commit {commit} synced"), || {
            let p = self.project();
            (p["sync"]["synced_commit"] == commit && p["sync"]["phase"] == "synced").then_some(p)
        })
    }

    fn webhook(&self, body: &str) -> u16 {
        http()
            .post(format!("{}/api/v1/webhooks/git", self.kas.api_url()))
            .header("Content-Type", "application/json")
            .header("X-Gitlab-Token", SECRET)
            .send(body.as_bytes())
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|e| match e {
                ureq::Error::StatusCode(c) => c,
                other => panic!("webhook: {other}"),
            })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.take() {
            c.shutdown();
        }
    }
}

fn head(repo: &TestRepo) -> String {
    repo.git(&["rev-parse", "HEAD"]).unwrap().trim().to_string()
}

#[test]
fn pushes_apply_removals_prune_foreign_objects_survive_broken_commits_change_nothing() {
    let s = setup(Duration::from_millis(300));
    let first = head(&s.manifests);

    // The first commit appears in the cluster.
    s.wait_value("app-config", Some("one"));
    s.wait_value("old-config", Some("x"));
    let p = s.wait_synced(&first);
    assert_eq!(p["status"], "ok");
    assert_eq!(p["desired_commit"], first.as_str());
    assert_eq!(p["desired_objects"], 3, "{p}");
    let results: Vec<&str> = p["sync"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].as_str().unwrap())
        .collect();
    assert!(
        results.iter().all(|r| *r == "applied" || *r == "unchanged"),
        "{p}"
    );
    // The inventory: one ConfigMap labelled with its id, listing the three objects.
    let inv = s.kubectl.json(&[
        "get",
        "configmaps",
        "-n",
        INVENTORY_NS,
        "-l",
        "cli-utils.sigs.k8s.io/inventory-id",
        "-o",
        "json",
    ]);
    let items = inv["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{inv}");
    assert_eq!(items[0]["data"].as_object().unwrap().len(), 3, "{inv}");
    // Applied objects name their inventory.
    let cm = s
        .kubectl
        .json(&["get", "configmap", "app-config", "-n", "demo", "-o", "json"]);
    assert_eq!(
        cm["metadata"]["annotations"]["config.k8s.io/owning-inventory"],
        p["sync"]["inventory"]
    );

    // An object not in the inventory, in the same namespace.
    s.kubectl.ok(&[
        "create",
        "configmap",
        "foreign",
        "-n",
        "demo",
        "--from-literal=value=mine",
    ]);

    // A push: one object changes, one leaves the set.
    s.manifests
        .write("apps/config.yaml", configmap("app-config", "two"))
        .unwrap();
    let second = s.manifests.commit("second").unwrap().to_string();
    s.wait_value("app-config", Some("two"));
    s.wait_value("old-config", None);
    let p = s.wait_synced(&second);
    assert!(
        p["sync"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["object"]["name"] == "old-config" && o["result"] == "pruned"),
        "{p}"
    );
    assert_eq!(s.value("foreign").as_deref(), Some("mine"));

    // Drift is corrected on the next reconcile.
    s.kubectl.ok(&[
        "patch",
        "configmap",
        "app-config",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"data":{"value":"drifted"}}"#,
    ]);
    s.wait_value("app-config", Some("two"));

    // A broken commit (one bad document, one changed object): nothing of it is applied.
    s.manifests
        .write("apps/config.yaml", configmap("app-config", "three"))
        .unwrap();
    s.manifests
        .write(
            "apps/broken.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
        )
        .unwrap();
    let broken = s.manifests.commit("broken").unwrap().to_string();
    let p = eventually("the broken commit's error", || {
        let p = s.project();
        (p["error"]["commit"] == broken.as_str()).then_some(p)
    });
    assert_eq!(p["status"], "error");
    assert_eq!(p["error"]["kind"], "rejected");
    assert_eq!(p["error"]["errors"][0]["path"], "apps/broken.yaml", "{p}");
    assert_eq!(p["desired_commit"], second.as_str());
    // The agent heard of it too, and keeps the last good commit.
    let p = eventually("the agent reports the rejected commit", || {
        let p = s.project();
        (p["sync"]["rejected_commit"]["commit"] == broken.as_str()).then_some(p)
    });
    assert_eq!(p["sync"]["synced_commit"], second.as_str());
    // Several polls and reconciles later, still nothing of it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.value("app-config").as_deref(), Some("two"));
    assert_eq!(s.value("foreign").as_deref(), Some("mine"));
    assert!(metric(&metrics(&s.kas), "kas_gitops_rejected_commits_total").unwrap() >= 1.0);

    // Fixing it applies the fixed commit.
    s.manifests.remove("apps/broken.yaml").unwrap();
    let fixed = s.manifests.commit("fixed").unwrap().to_string();
    s.wait_value("app-config", Some("three"));
    s.wait_synced(&fixed);
    assert_eq!(s.project()["status"], "ok");
}

#[test]
fn the_repository_going_away_keeps_the_last_state() {
    let s = setup(Duration::from_millis(300));
    let first = head(&s.manifests);
    s.wait_value("app-config", Some("one"));
    s.wait_synced(&first);
    s.manifests.delete_on_server().unwrap();
    let p = eventually("the fetch failure", || {
        let p = s.project();
        (p["error"]["kind"] == "fetch").then_some(p)
    });
    assert_eq!(p["status"], "error");
    assert_eq!(p["desired_commit"], first.as_str());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.value("app-config").as_deref(), Some("one"));
    assert_eq!(s.value("old-config").as_deref(), Some("x"));
    assert!(
        metric(
            &metrics(&s.kas),
            "kas_gitops_fetch_failures_total{fault=\"remote\"}"
        )
        .unwrap()
            >= 1.0
    );
    let _ = &s.runtime;
}

#[test]
fn the_webhook_makes_a_push_visible_while_the_poll_period_is_five_minutes() {
    let s = setup(Duration::from_secs(300));
    s.wait_value("app-config", Some("one"));
    // kas's event stream for agent 1 (SSE) shows the new commit and the agent's report.
    let (head_lines, mut events) = support::raw_get(
        s.kas.api_addr(),
        "/api/v1/agents/1/events",
        &s.env.admin_bearer(1),
    );
    assert!(head_lines.starts_with("HTTP/1.1 200"), "{head_lines}");
    s.manifests
        .write("apps/config.yaml", configmap("app-config", "pushed"))
        .unwrap();
    let pushed = s.manifests.commit("pushed").unwrap().to_string();
    let body = serde_json::json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "project": {"path_with_namespace": "group/manifests"},
    })
    .to_string();
    assert_eq!(s.webhook(&body), 202);
    s.wait_value("app-config", Some("pushed"));
    s.wait_synced(&pushed);
    let (mut saw_commit, mut saw_report) = (false, false);
    let mut text = String::new();
    // Bounded: at most 200 chunks (and each read by the guard).
    for _ in 0..200 {
        let Some(chunk) = support::read_chunk(&mut events) else {
            break;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        saw_commit |= text.contains(&format!("\"type\":\"commit\",\"commit\":\"{pushed}\""))
            || text.contains(&format!("\"commit\":\"{pushed}\",\"objects\""));
        saw_report |= text.contains("\"type\":\"report\"")
            && text.contains(&format!("\"synced_commit\":\"{pushed}\""));
        if saw_commit && saw_report {
            break;
        }
    }
    assert!(saw_commit && saw_report, "gitops events missing: {text}");
}

/// Reads the next `gitops` message kas sends on `stream`.
async fn next_message(
    stream: &runtime_tokio::Stream,
    decoder: &mut protocol::cache::MessageDecoder,
) -> gitops::wire::ServerMessage {
    use prost::Message as _;
    loop {
        if let Some(bytes) = decoder.next_message().unwrap() {
            return gitops::wire::ServerMessage::decode(bytes).unwrap();
        }
        let chunk = tokio::time::timeout(support::GUARD, stream.read_chunk(64 * 1024))
            .await
            .expect("a message from kas within the guard")
            .expect("the stream is open")
            .unwrap();
        decoder.push(&chunk);
    }
}

#[test]
fn streams_resume_by_commit_name_unknown_projects_and_refuse_bad_heads() {
    use gitops::wire::server_message::Kind;
    use protocol::proto::RequestHead;
    let s = setup(Duration::from_millis(300));
    let first = head(&s.manifests);
    s.wait_synced(&first);
    let project = s.project()["project"].as_str().unwrap().to_string();
    let conn = s._conn_tx.borrow().clone().unwrap();
    let manifests = s.manifests.clone();
    s.runtime.block_on(async move {
        let open = |head: RequestHead| conn.open(head, false).unwrap();
        // Bad heads: 400.
        let mut bad = agentk::gitops::link::head(&project, None);
        bad.method = "GET".into();
        assert_eq!(open(bad).response().await.unwrap().status, 400);
        let mut bad = agentk::gitops::link::head(&project, None);
        bad.headers.clear();
        assert_eq!(open(bad).response().await.unwrap().status, 400);
        assert_eq!(
            open(agentk::gitops::link::head(&project, Some("not-hex")))
                .response()
                .await
                .unwrap()
                .status,
            400
        );

        // A project the configuration does not have: 200 and UNKNOWN_PROJECT.
        let unknown = open(agentk::gitops::link::head("group/nope", None));
        assert_eq!(unknown.response().await.unwrap().status, 200);
        let mut d = Default::default();
        match next_message(&unknown, &mut d).await.kind {
            Some(Kind::Status(st)) => {
                assert_eq!(st.code, gitops::wire::StatusCode::UnknownProject as i32)
            }
            other => panic!("expected UNKNOWN_PROJECT, got {other:?}"),
        }

        // Naming the commit it has, an agent gets nothing until the next commit, then only that.
        let resumed = open(agentk::gitops::link::head(&project, Some(&first)));
        assert_eq!(resumed.response().await.unwrap().status, 200);
        // Without a commit, the current set at once.
        let fresh = open(agentk::gitops::link::head(&project, None));
        assert_eq!(fresh.response().await.unwrap().status, 200);
        let mut fd = Default::default();
        match next_message(&fresh, &mut fd).await.kind {
            Some(Kind::Begin(b)) => {
                assert_eq!(b.commit, first);
                assert_eq!(b.objects, 3);
            }
            other => panic!("expected Begin, got {other:?}"),
        }
        manifests
            .write("apps/config.yaml", configmap("app-config", "resumed"))
            .unwrap();
        let second = manifests.commit("second").unwrap().to_string();
        let mut rd = Default::default();
        match next_message(&resumed, &mut rd).await.kind {
            Some(Kind::Begin(b)) => {
                assert_eq!(
                    b.commit, second,
                    "the set of the commit the agent had was resent"
                );
                assert_eq!(b.objects, 2);
            }
            other => panic!("expected Begin, got {other:?}"),
        }

        // Garbage from the agent (a length prefix that is no varint): kas resets that stream only.
        use tokio::io::AsyncWriteExt as _;
        let mut hostile = open(agentk::gitops::link::head(&project, Some(&second)));
        assert_eq!(hostile.response().await.unwrap().status, 200);
        hostile.write_all(&[0xff; 12]).await.unwrap();
        let ended = tokio::time::timeout(support::GUARD, async {
            // Bounded by the guard: kas resets, so the read ends.
            while let Some(Ok(_)) = hostile.read_chunk(1024).await {}
        })
        .await;
        assert!(ended.is_ok(), "kas did not end a stream carrying garbage");
        // The other streams go on.
        manifests
            .write("apps/config.yaml", configmap("app-config", "after-garbage"))
            .unwrap();
        let third = manifests.commit("third").unwrap().to_string();
        match next_message(&fresh, &mut fd).await.kind {
            Some(Kind::Objects(_)) | Some(Kind::End(_)) => {}
            other => panic!("expected the rest of the first set, got {other:?}"),
        }
        let mut saw_third = false;
        for _ in 0..16 {
            if let Some(Kind::Begin(b)) = next_message(&fresh, &mut fd).await.kind
                && b.commit == third
            {
                saw_third = true;
                break;
            }
        }
        assert!(saw_third, "the healthy stream did not get the next commit");
    });
    s.wait_value("app-config", Some("after-garbage"));
    let bad = metric(
        &metrics(&s.kas),
        "kas_agent_misbehaviour_total{kind=\"gitops_stream\"}",
    )
    .unwrap_or(0.0);
    assert!(
        bad >= 4.0,
        "three bad heads and one garbage stream, counted {bad}"
    );
}
