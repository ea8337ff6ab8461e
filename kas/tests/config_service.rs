//! The `config` tunnel service (protocol/SERVICES.md §8), end to end with a real `git daemon`: kas
//! polls a config project made with the `git` CLI (poll period 5 minutes, so only the push webhook
//! makes changes arrive quickly) and pushes each new good configuration on the agent's `config`
//! stream; a real agentk applies it live (its log level, the watch channel); a scripted agent on the
//! wire checks the contract message by message.

#![allow(clippy::unwrap_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_config::{ConfigUpdate, LogLevel, Logging};
use git_mirror::testing::{GitDaemon, TestRepo};
use kas::Running;
use kas::auth::TokenDigest;
use protocol::ErrorCode;
use protocol::cache::MessageDecoder;
use protocol::proto::RequestHead;
use protocol::service::{self, ConfigHead};
use runtime_smol::{Connection, Stream};
use serde_json::Value;
use support::{Env, GUARD, eventually, get, http, metric, metrics};

const SECRET: &str = "config-webhook-secret";
/// Long enough that only the first poll and the webhook fetch anything during a test.
const POLL_PERIOD: Duration = Duration::from_secs(300);

fn config_yaml(level: &str) -> String {
    format!(
        "observability:\n  logging:\n    level: {level}\nuser_access:\n  access_as: {{agent: {{}}}}\n  projects: [{{id: group/app}}]\n"
    )
}

/// kas (agents 1 and 2 on one config project served by `git daemon`; agent 3 without one).
struct Setup {
    env: Env,
    _git_root: tempfile::TempDir,
    _daemon: GitDaemon,
    repo: TestRepo,
    kas: Running,
}

impl Setup {
    fn start() -> Setup {
        let git_root = tempfile::tempdir().unwrap();
        let repo = TestRepo::create(git_root.path(), "group/config").unwrap();
        repo.write(".gitlab/agents/agent-1/config.yaml", config_yaml("info"))
            .unwrap();
        repo.write(".gitlab/agents/agent-2/config.yaml", config_yaml("error"))
            .unwrap();
        repo.commit("initial").unwrap();
        let daemon = GitDaemon::start(git_root.path()).unwrap();
        let mut env = Env::new();
        let mut yaml = String::from("agents:\n");
        for a in &env.agents {
            yaml.push_str(&format!(
                "- id: {}\n  name: {}\n  token_sha256: {}\n",
                a.id,
                a.name,
                TokenDigest::of(&a.token).to_hex()
            ));
            if a.id <= 2 {
                yaml.push_str(&format!(
                    "  config_project: {{url: '{}'}}\n",
                    daemon.url("group/config")
                ));
            }
        }
        std::fs::write(env.dir.path().join("agents.yaml"), yaml).unwrap();
        std::fs::write(env.dir.path().join("webhook.secret"), SECRET).unwrap();
        env.config.agent_configuration.poll_period = POLL_PERIOD;
        env.config.agent_configuration.fetch_timeout = Duration::from_secs(10);
        env.config.agent_configuration.webhook_secret_file =
            Some(env.dir.path().join("webhook.secret"));
        let kas = env.start();
        let s = Setup {
            env,
            _git_root: git_root,
            _daemon: daemon,
            repo,
            kas,
        };
        s.wait(1, "the first poll", |v| v["status"] == "ok");
        s
    }

    fn config(&self, agent_id: u64) -> Value {
        let reply = get(
            &format!("{}/api/v1/agents/{agent_id}/config", self.kas.api_url()),
            Some(&self.env.admin_bearer(agent_id)),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    }

    fn wait(&self, agent_id: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || {
            let v = self.config(agent_id);
            pred(&v).then_some(v)
        })
    }

    /// Commits `yaml` as agent `agent`'s file and sends the push webhook; returns the commit.
    fn push(&self, agent: u64, yaml: &str) -> String {
        self.repo
            .write(&format!(".gitlab/agents/agent-{agent}/config.yaml"), yaml)
            .unwrap();
        let commit = self.repo.commit("change").unwrap().to_string();
        let body = serde_json::json!({
            "object_kind": "push", "ref": "refs/heads/main",
            "project": {"path_with_namespace": "group/config"},
        })
        .to_string();
        let resp = http()
            .post(format!("{}/api/v1/webhooks/git", self.kas.api_url()))
            .header("X-Gitlab-Token", SECRET)
            .send(body.as_bytes())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        commit
    }

    fn sent(&self) -> f64 {
        metric(&metrics(&self.kas), "kas_agent_config_sent_total").unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// The real agentk

/// agentk for agent 1 (no informer cache), dialling kas through a proxy that can cut its
/// connections; its log-level changes are recorded.
struct Agent {
    runtime: tokio::runtime::Runtime,
    applied: agentk::AppliedConfigReceiver,
    levels: Arc<Mutex<Vec<LogLevel>>>,
    proxy: e2e::PartitionProxy,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Agent {
    fn start(s: &Setup) -> Agent {
        let proxy = e2e::PartitionProxy::start(s.kas.agent_addr());
        let kubeconfig = s.env.dir.path().join("unused.kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n\
             users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n",
        )
        .unwrap();
        let mut cfg = agentk::Config::new(proxy.addr.to_string(), s.env.token(1).to_owned());
        cfg.ca = s.env.pki.roots();
        cfg.tls_server_name = Some("localhost".into());
        cfg.kube = agentk::KubeSource::Kubeconfig {
            path: kubeconfig,
            context: None,
        };
        cfg.cache.watch_kinds = Vec::new();
        cfg.backoff.initial = Duration::from_millis(50);
        cfg.backoff.max = Duration::from_millis(500);
        let levels = Arc::new(Mutex::new(Vec::new()));
        let seen = levels.clone();
        cfg.log_level = Some(Arc::new(move |l: &Logging| {
            seen.lock().unwrap().push(l.level);
            Ok(())
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let agent = runtime.block_on(agentk::Agent::new(cfg)).unwrap();
        let applied = agent.applied_config();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        Agent {
            runtime,
            applied,
            levels,
            proxy,
            _stop: stop,
        }
    }

    /// The commit agentk applied last.
    fn commit(&self) -> Option<String> {
        self.applied.borrow().as_ref().map(|a| a.commit.clone())
    }

    fn wait_commit(&self, commit: &str) -> Arc<agentk::AppliedConfig> {
        let mut rx = self.applied.clone();
        self.runtime.block_on(async {
            let applied = tokio::time::timeout(
                GUARD,
                rx.wait_for(|a| a.as_ref().is_some_and(|a| a.commit == commit)),
            )
            .await
            .unwrap_or_else(|_| panic!("agentk did not apply {commit} in time"))
            .unwrap();
            applied.clone().unwrap()
        })
    }

    fn last_level(&self) -> Option<LogLevel> {
        self.levels.lock().unwrap().last().copied()
    }
}

#[test]
fn agentk_applies_pushed_configs_live_keeps_the_last_good_one_and_gets_nothing_twice() {
    let s = Setup::start();
    let first = s.config(1)["commit"].as_str().unwrap().to_owned();
    let agent = Agent::start(&s);
    let applied = agent.wait_commit(&first);
    assert_eq!(applied.config.observability.logging.level, LogLevel::Info);
    assert_eq!(agent.last_level(), Some(LogLevel::Info));
    // The access grants travel with it (kept for issue 14).
    assert_eq!(applied.user_access.projects[0].as_str(), "group/app");
    let v = s.wait(1, "the delivery", |v| v["delivery"]["up_to_date"] == true);
    assert_eq!(v["delivery"]["commit"], first.as_str());
    assert_eq!(v["delivery"]["streams"], 1);
    assert_eq!(s.sent(), 1.0);

    // A pushed change arrives through the webhook (the poll period is 5 minutes) and changes the
    // log level live.
    let events = s
        .kas
        .events()
        .subscribe(kas::events::Scope::All, "test")
        .unwrap();
    let pushed = Instant::now();
    let second = s.push(1, &config_yaml("debug"));
    let applied = agent.wait_commit(&second);
    let latency = pushed.elapsed();
    println!("push → applied by agentk through the webhook: {latency:?}");
    assert!(latency < POLL_PERIOD / 10, "{latency:?}: not the webhook");
    assert_eq!(applied.config.observability.logging.level, LogLevel::Debug);
    assert_eq!(agent.last_level(), Some(LogLevel::Debug));
    let delivered = eventually("the delivered event", || {
        let e = events.try_recv()?;
        (e.kind == "config").then_some(e)
    });
    let d: Value = serde_json::from_str(&delivered.data).unwrap();
    assert_eq!(d["status"], "delivered");
    assert_eq!(d["commit"], second.as_str());

    // A broken commit never reaches agentk: the error is in the API (commit and line) and on the
    // event stream; the agent keeps the previous configuration.
    let broken = s.push(1, "observability:\n  logging:\n    level: loud\n");
    let v = s.wait(1, "the broken commit", |v| v["commit"] == broken.as_str());
    assert_eq!(v["status"], "error");
    assert_eq!(v["errors"][0]["commit"], broken.as_str());
    assert_eq!(v["errors"][0]["line"], 3);
    assert_eq!(v["applied_commit"], second.as_str());
    assert_eq!(v["delivery"]["up_to_date"], true);
    let rejected = eventually("the rejected event", || {
        let e = events.try_recv()?;
        (e.kind == "config" && e.data.contains("rejected")).then_some(e)
    });
    assert!(rejected.data.contains(&broken), "{}", rejected.data);
    assert_eq!(agent.commit().as_deref(), Some(second.as_str()));
    assert_eq!(agent.last_level(), Some(LogLevel::Debug));
    assert_eq!(s.sent(), 2.0);

    // agentk reconnects (its connection is cut): the new stream names the commit it has, and kas
    // sends nothing again.
    let mut rx = agent.applied.clone();
    rx.mark_unchanged();
    agent.proxy.close_all();
    eventually("kas to see agent 1 gone", || {
        (!s.kas.connected_agents().contains(&1)).then_some(())
    });
    agent.proxy.heal();
    assert!(
        s.kas.wait_for_agents(&[1], GUARD),
        "agent 1 did not reconnect"
    );
    let v = s.wait(1, "the new config stream", |v| {
        v["delivery"]["streams"] == 1
    });
    assert_eq!(v["delivery"]["commit"], second.as_str());
    assert_eq!(v["delivery"]["up_to_date"], true);
    // The next change is the first thing the new stream carries.
    let third = s.push(1, &config_yaml("warning"));
    agent.wait_commit(&third);
    assert_eq!(s.sent(), 3.0, "exactly one message after the reconnect");
    assert_eq!(agent.last_level(), Some(LogLevel::Warning));
    assert_eq!(
        *agent.levels.lock().unwrap(),
        vec![LogLevel::Info, LogLevel::Debug, LogLevel::Warning]
    );
    let m = metrics(&s.kas);
    assert_eq!(metric(&m, "kas_agent_configs_up_to_date"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "kas_agent_config_streams"), Some(1.0), "{m}");
    s.kas.shutdown();
}

// ---------------------------------------------------------------------------------------------
// The wire contract, with a scripted agent

fn block_on<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    smol::block_on(async {
        futures_lite::future::or(async { Some(f.await) }, async {
            smol::Timer::after(GUARD).await;
            None
        })
        .await
    })
    .unwrap_or_else(|| panic!("{what}: nothing in time (hang guard)"))
}

fn connect(s: &Setup, agent_id: u64) -> Connection {
    support::try_connect(
        &s.env,
        s.kas.agent_addr(),
        s.env.token(agent_id),
        support::agent_meta("9.9.9"),
    )
    .unwrap()
}

/// Opens a config stream with `head`; returns it and kas's answer status.
fn open(conn: &Connection, head: RequestHead) -> (Stream, u32) {
    let stream = conn.open(head, false).unwrap();
    let status = block_on("the answer", stream.response()).unwrap().status;
    (stream, status)
}

/// The next message kas sends on `stream`.
fn next_update(stream: &Stream, decoder: &mut MessageDecoder) -> ConfigUpdate {
    block_on("a config message", async {
        loop {
            if let Some(bytes) = decoder.next_message().unwrap() {
                return ConfigUpdate::from_json(&bytes).unwrap();
            }
            let chunk = stream.read_chunk(64 * 1024).await.unwrap().unwrap();
            decoder.push(&chunk);
        }
    })
}

#[test]
fn config_streams_send_only_new_content_and_refuse_bad_heads() {
    let s = Setup::start();
    let conn = connect(&s, 1);

    // A fresh agent gets the configuration at once.
    let (fresh, status) = open(&conn, service::config_request_head(&ConfigHead::default()));
    assert_eq!(status, 200);
    let mut d1 = MessageDecoder::default();
    let c1 = next_update(&fresh, &mut d1);
    assert_eq!(c1.config.observability.logging.level, LogLevel::Info);
    assert!(service::is_commit_id(&c1.commit));

    // An agent that has this commit and content gets nothing on open...
    let have = ConfigHead {
        commit: Some(c1.commit.clone()),
        fingerprint: Some(c1.fingerprint.0.clone()),
    };
    let (current, status) = open(&conn, service::config_request_head(&have));
    assert_eq!(status, 200);
    // ...nor for a commit that changes only another agent's file (same content for agent 1)...
    let other = s.push(2, &config_yaml("debug"));
    s.wait(2, "agent 2's change", |v| {
        v["applied_commit"] == other.as_str()
    });
    // ...and the next change of its own is the first message either stream carries.
    let c3 = s.push(1, &config_yaml("debug"));
    let mut d2 = MessageDecoder::default();
    let got = next_update(&current, &mut d2);
    assert_eq!(
        got.commit, c3,
        "nothing before the change of agent 1's content"
    );
    assert_eq!(got.config.observability.logging.level, LogLevel::Debug);
    assert_eq!(next_update(&fresh, &mut d1).commit, c3);

    // Bad heads: 400 with a reason; an agent without a config project: 404 no-config.
    let mut bad = service::config_request_head(&ConfigHead::default());
    bad.method = "SYNC".into();
    let (st, status) = open(&conn, bad);
    assert_eq!(status, 400);
    drop(st);
    let bad_commit = service::config_request_head(&ConfigHead {
        commit: Some("main".into()),
        fingerprint: None,
    });
    assert_eq!(open(&conn, bad_commit).1, 400);
    let conn3 = connect(&s, 3);
    let (st, status) = open(&conn3, service::config_request_head(&ConfigHead::default()));
    assert_eq!(status, 404);
    let head = block_on("the 404 head", st.response()).unwrap();
    assert!(
        head.headers
            .iter()
            .any(|h| h.name == "x-tunnel-error" && &h.value[..] == b"no-config")
    );

    // Body octets from the agent are a protocol violation: the stream is reset, others live on.
    let (rogue, status) = open(&conn, service::config_request_head(&have));
    assert_eq!(status, 200);
    let mut w: &Stream = &rogue;
    block_on(
        "write",
        futures_lite::AsyncWriteExt::write_all(&mut w, b"hi"),
    )
    .unwrap();
    let reset = block_on("the reset", async {
        loop {
            match rogue.read_chunk(1024).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    });
    match reset.expect("a reset, not an end") {
        runtime_smol::Error::StreamReset { code, remote, .. } => {
            assert_eq!(code, ErrorCode::Protocol);
            assert!(remote);
        }
        other => panic!("expected a RESET from kas, got {other}"),
    }
    let c4 = s.push(1, &config_yaml("error"));
    assert_eq!(next_update(&current, &mut d2).commit, c4);

    // agentk finishing its direction ends the stream on both sides.
    current.finish().unwrap();
    let end = block_on("kas's end", async {
        loop {
            match current.read_chunk(1024).await {
                Some(Ok(_)) => {}
                other => return other.is_none(),
            }
        }
    });
    assert!(end, "kas finished its direction");
    s.wait(1, "one stream left", |v| v["delivery"]["streams"] == 1);
    s.kas.shutdown();
}
