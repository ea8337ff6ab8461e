//! End to end across restarts, with the real kas, the real agentk and the real `kubectl`:
//! - an agent stops (gracefully, or killed outright) and comes back: requests sent while it is
//!   gone wait in kas (routing deadline 10 s) and succeed once it is back;
//! - kas restarts on the same ports: the agents reconnect by themselves and requests work again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::time::Duration;

use e2e::{EchoServer, Stack, StackOptions, add_loopback_service, call, names, pod_names};
use sim_apiserver::objects::PodPhase;
use support::{GUARD, eventually, metric};

/// How the agent goes away.
#[derive(Debug, Clone, Copy)]
enum Away {
    /// agentk's shutdown future resolves: it closes its connection gracefully.
    Stopped,
    /// agentk is killed: its connection just drops.
    Killed,
}

/// Agent 1 goes away; a `kubectl get`, a `kubectl create` (a request with a body) and a plain HTTPS
/// GET are sent meanwhile; agent 1 comes back within the routing deadline and all three succeed.
fn requests_wait_for_the_agent_to_come_back(away: Away) {
    let mut s = Stack::start(StackOptions {
        agents: vec![1, 2],
        ..StackOptions::default()
    });
    let k1 = s.kubectl("agent-1");
    // Warm kubectl's discovery cache while the agent is up, so the requests during the gap are the
    // list and the create themselves.
    k1.ok(&["get", "pods", "-o", "name"]);
    k1.ok(&["get", "configmaps", "-o", "name"]);
    let expected = pod_names(s.cluster(1), Some("default"));
    let echo = EchoServer::start(s.runtime());
    add_loopback_service(s.cluster(1), "default", "echo", "http", echo.addr);

    match away {
        Away::Stopped => s.stop_agent(1),
        Away::Killed => s.kill_agent(1),
    }
    assert!(!s.kas().connected_agents().contains(&1));

    let list = {
        let k1 = k1.clone();
        std::thread::spawn(move || k1.run(&["get", "pods", "-o", "name"]))
    };
    let create = {
        let k1 = k1.clone();
        std::thread::spawn(move || {
            k1.run(&[
                "create",
                "configmap",
                "made-during-the-gap",
                "--from-literal=when=while agent 1 was away",
            ])
        })
    };
    let http = {
        let client = s.https();
        let url = format!("{}/api/v1/namespaces/default/pods", s.kas().k8s_proxy_url());
        let auth = s.admin(1);
        std::thread::spawn(move || call(&client, "GET", &url, &[("Authorization", &auth)], vec![]))
    };
    // A 1 MiB upload to an in-cluster service.
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let upload = {
        let client = s.https();
        let url = format!(
            "{}/api/v1/agents/1/proxy/default/echo:http/upload",
            s.kas().api_url()
        );
        let auth = s.admin(1);
        let payload = payload.clone();
        std::thread::spawn(move || {
            let req = ureq::http::Request::builder()
                .method("PUT")
                .uri(&url)
                .header("Authorization", &auth)
                .body(payload)
                .unwrap();
            let mut resp = client.run(req).unwrap();
            let status = resp.status().as_u16();
            let body = resp
                .body_mut()
                .with_config()
                .limit(4 * 1024 * 1024)
                .read_to_vec()
                .unwrap();
            (status, body)
        })
    };
    // All four are waiting in kas for agent 1.
    eventually("four requests waiting for agent 1", || {
        let pending = metric(&s.metrics(), "kas_pending_requests").unwrap_or(0.0);
        (pending >= 4.0).then_some(())
    });
    assert!(
        !list.is_finished()
            && !create.is_finished()
            && !http.is_finished()
            && !upload.is_finished()
    );
    assert!(
        !echo.has_unread(),
        "a request reached the service before the agent came back"
    );
    // Agent 2 is not affected meanwhile.
    let out = s.kubectl("agent-2").ok(&["get", "pods", "-o", "name"]);
    for pod in pod_names(s.cluster(2), Some("default")) {
        assert!(out.contains(&format!("pod/{pod}")), "{out}");
    }
    assert!(!s.kas().connected_agents().contains(&1));
    assert!(
        s.cluster(1)
            .store()
            .get("v1", "ConfigMap", Some("default"), "made-during-the-gap")
            .is_none()
    );

    // Agent 1 comes back within the deadline: every request goes through.
    s.start_agent(1);
    let out = list.join().unwrap();
    assert!(
        out.status.success(),
        "kubectl get during the gap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("pod/").to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, expected);

    let out = create.join().unwrap();
    assert!(
        out.status.success(),
        "kubectl create during the gap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = s
        .cluster(1)
        .store()
        .get("v1", "ConfigMap", Some("default"), "made-during-the-gap")
        .expect("the ConfigMap made during the gap is in cluster 1");
    assert_eq!(made["data"]["when"], "while agent 1 was away");

    let reply = http.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let list = reply.json();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(names(list["items"].as_array().unwrap()), expected);
    let (status, body) = upload.join().unwrap();
    assert_eq!(status, 201);
    let got = echo.next();
    assert_eq!(
        (got.method.as_str(), got.target.as_str()),
        ("PUT", "/upload")
    );
    assert!(
        got.body == payload,
        "the upload arrived changed ({} bytes)",
        got.body.len()
    );
    assert!(body.len() == payload.len() + 5 && body[5..] == payload[..]);
    assert!(s.kas().connected_agents().contains(&1));
    s.shutdown();
}

#[test]
fn requests_sent_while_an_agent_is_stopped_wait_and_then_succeed() {
    requests_wait_for_the_agent_to_come_back(Away::Stopped);
}

#[test]
fn requests_sent_while_an_agent_is_killed_wait_and_then_succeed() {
    requests_wait_for_the_agent_to_come_back(Away::Killed);
}

#[test]
fn agents_reconnect_by_themselves_after_kas_restarts_on_the_same_ports() {
    let mut s = Stack::start(StackOptions::default());
    let k1 = s.kubectl("agent-1");
    let k2 = s.kubectl("agent-2");
    k1.ok(&["get", "nodes", "-o", "name"]);
    let api_before = s.kas().api_addr();
    let agents_before = s.kas().agent_addr();

    // A watch open across the restart ends (kubectl exits) instead of hanging on a dead kas.
    let mut open_watch = k1.spawn(&["get", "pods", "--watch", "-o", "name"]);
    s.cluster(1)
        .store()
        .add_pod("default", "before-restart")
        .unwrap();
    // Seen through the watch (not only the initial list): the watch request itself is open.
    open_watch.wait_for("the watch to be open", |l| l == "pod/before-restart");
    s.cluster(1)
        .store()
        .set_pod_phase("default", "before-restart", PodPhase::Failed)
        .unwrap();
    open_watch.wait_for("a change through the open watch", |l| {
        l == "pod/before-restart"
    });

    let report = s.restart_kas(Duration::from_secs(2));
    // Both agents were sent GOAWAY (agent 1's connection, busy with the watch, and the watch's HTTP
    // connection are cut at the end of the grace period at the latest).
    assert_eq!(report.agent_connections, 2, "{report:?}");
    read_to_end(&mut open_watch);
    eventually("the open watch to end", || {
        (!open_watch.is_running()).then_some(())
    });
    assert_eq!(s.kas().api_addr(), api_before);
    assert_eq!(s.kas().agent_addr(), agents_before);

    // Nothing but the agents' own reconnect loop brings them back.
    let waiting = std::time::Instant::now();
    assert!(
        s.kas().wait_for_agents(&[1, 2], 2 * GUARD),
        "agents did not come back (connected: {:?})",
        s.kas().connected_agents()
    );
    eprintln!("agents back {:?} after kas restarted", waiting.elapsed());
    let agents = s.get("/api/v1/agents", Some(&s.admin(1)));
    assert_eq!(agents.status, 200, "{}", agents.body);
    let list = agents.json();
    for id in [1u64, 2] {
        let a = list
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("agent {id} missing: {list}"));
        assert_eq!(a["connected"], true, "{a}");
        assert_eq!(a["pod"], format!("gitlab-agent/agentk-{id}"), "{a}");
    }

    // The same kubeconfig works again, each context reaching its own cluster.
    for (k, id) in [(&k1, 1u64), (&k2, 2)] {
        let nodes = k.json(&["get", "nodes", "-o", "json"]);
        assert_eq!(
            names(nodes["items"].as_array().unwrap()),
            names(&s.cluster(id).store().list("v1", "Node", None)),
            "agent-{id}"
        );
        let out = k.ok(&["get", "pods", "-o", "name"]);
        for pod in pod_names(s.cluster(id), Some("default")) {
            assert!(out.contains(&format!("pod/{pod}")), "agent-{id}: {out}");
        }
    }
    // A live watch works after the restart too: the initial list, then a change made afterwards.
    let mut watch = k1.spawn(&["get", "configmaps", "--watch", "-o", "name"]);
    watch.wait_for("the initial list", |l| l == "configmap/kube-root-ca.crt");
    s.cluster(1)
        .store()
        .create(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "after-restart", "namespace": "default"},
            "data": {"k": "v"}
        }))
        .unwrap();
    watch.wait_for("the new ConfigMap", |l| l == "configmap/after-restart");
    drop(watch);
    s.shutdown();
}

/// Reads `stream` until kubectl closes its stdout (bounded: 10 000 lines, each within the guard).
fn read_to_end(stream: &mut e2e::KubectlStream) {
    for _ in 0..10_000 {
        if stream.next_line().is_none() {
            return;
        }
    }
    panic!("kubectl kept printing");
}

/// A watch and a followed log open through agent 1 end (kubectl exits) when agent 1 goes away,
/// rather than hanging open with nothing behind them.
fn open_streams_end_when_the_agent_goes_away(away: Away) {
    let mut s = Stack::start(StackOptions::default());
    s.cluster(1).store().add_pod("default", "logger").unwrap();
    let k1 = s.kubectl("agent-1");
    let mut watch = k1.spawn(&["get", "pods", "--watch", "-o", "name"]);
    watch.wait_for("the initial list", |l| l == "pod/logger");
    // A change seen through the watch: the watch request itself is open (not only the list).
    s.cluster(1)
        .store()
        .set_pod_phase("default", "logger", PodPhase::Pending)
        .unwrap();
    watch.wait_for("a change through the watch", |l| l == "pod/logger");
    s.cluster(1).store().add_pod("default", "logger-2").unwrap();
    let mut logs = k1.spawn(&["logs", "--follow", "--tail=1", "logger-2"]);
    logs.next_line().expect("a log line");
    logs.next_line().expect("a followed log line");
    assert!(watch.is_running() && logs.is_running());

    match away {
        Away::Stopped => s.stop_agent(1),
        Away::Killed => s.kill_agent(1),
    }
    read_to_end(&mut watch);
    read_to_end(&mut logs);
    eventually("kubectl get --watch to exit", || {
        (!watch.is_running()).then_some(())
    });
    eventually("kubectl logs -f to exit", || {
        (!logs.is_running()).then_some(())
    });
    s.shutdown();
}

#[test]
fn open_streams_end_when_the_agent_is_stopped() {
    open_streams_end_when_the_agent_goes_away(Away::Stopped);
}

#[test]
fn open_streams_end_when_the_agent_is_killed() {
    open_streams_end_when_the_agent_goes_away(Away::Killed);
}

/// Open tunnel streams of agent `id`, as kas's agent API reports them.
fn open_streams(s: &Stack, id: u64) -> u64 {
    let reply = s.get(&format!("/api/v1/agents/{id}"), Some(&s.admin(id)));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["open_streams"]
        .as_u64()
        .unwrap_or_else(|| panic!("no open_streams: {}", reply.body))
}

/// When kubectl goes away (Ctrl-C on a watch or a followed log), kas resets the tunnel stream and
/// agentk drops the upstream request: the agent's open streams go back to what they were.
#[test]
fn a_client_going_away_releases_its_tunnel_streams() {
    let s = Stack::start(StackOptions::default());
    s.cluster(1).store().add_pod("default", "logger").unwrap();
    let k1 = s.kubectl("agent-1");
    // Warm the discovery cache: kubectl's own discovery requests are not part of the count.
    k1.ok(&["get", "pods", "-o", "name"]);
    // Baseline: the agent's own long-lived streams (e.g. its views stream), idle.
    let baseline = eventually("a stable stream count", || {
        let a = open_streams(&s, 1);
        std::thread::sleep(Duration::from_millis(200));
        (open_streams(&s, 1) == a).then_some(a)
    });

    let mut watch = k1.spawn(&["get", "pods", "--watch", "-o", "name"]);
    watch.wait_for("the initial list", |l| l == "pod/logger");
    let mut logs = k1.spawn(&["logs", "--follow", "--tail=1", "logger"]);
    logs.next_line().expect("a log line");
    eventually("two more open streams", || {
        (open_streams(&s, 1) >= baseline + 2).then_some(())
    });

    drop(watch);
    drop(logs);
    eventually("the streams to be released", || {
        (open_streams(&s, 1) == baseline).then_some(())
    });
    s.shutdown();
}
