//! The `cache` service through a real tunnel: kas's LIST/GET queries are answered from agentk's
//! informer store. agentk reaches the API server through a relay that records every request, so
//! the test sees that a query causes no API server request at all.

mod common;

use std::collections::BTreeSet;

use common::*;
use protocol::service::CACHE;
use serde_json::json;
use sim_apiserver::{PodPhase, objects};
use tunnel_tls::ThrowawayPki;

fn pod_with(labels: serde_json::Value, ns: &str, name: &str) -> serde_json::Value {
    objects::pod(
        ns,
        name,
        None,
        labels,
        "registry.example/app:1",
        PodPhase::Running,
    )
}

fn item_names(a: &Answer) -> BTreeSet<String> {
    a.json()["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", String::from_utf8_lossy(&a.body)))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Whether a request line is a list (not a watch) of pods.
fn is_pod_list(request: &str) -> bool {
    let target = request.split(' ').nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pods = path == "/api/v1/pods"
        || (path.starts_with("/api/v1/namespaces/") && path.ends_with("/pods"));
    pods && !query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
}

/// Repeats a cache request while its kind is not synced yet (503); the first other answer.
async fn until_synced(conn: &runtime_tokio::Connection, h: protocol::proto::RequestHead) -> Answer {
    guard("the kind is synced", async {
        loop {
            let a = request(conn, h.clone(), &[]).await;
            if a.head.status != 503 {
                return a;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_namespace_and_selector_is_answered_from_the_store() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let relay = RecordingRelay::start(c.api.addr()).await;
    let kubeconfig = kubeconfig_for(
        c.dir.path(),
        "relay-kubeconfig",
        &format!("http://{}", relay.addr),
    );
    let store = c.api.store();
    store.add_namespace("other").expect("namespace");
    for (ns, name, labels) in [
        ("default", "front-a", json!({"tier": "front", "team": "x"})),
        ("default", "front-b", json!({"tier": "front", "team": "y"})),
        ("default", "back-c", json!({"tier": "back", "team": "x"})),
        ("other", "front-d", json!({"tier": "front", "team": "x"})),
    ] {
        store
            .create(pod_with(labels, ns, name))
            .expect("create pod");
    }
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(cache_agent_config(&pki, kas.addr, &kubeconfig));
    let conn = kas.next_connection().await;
    let list = |path: &str| head(CACHE, "LIST", path, vec![]);
    let query = "/pods?namespace=default&labelSelector=tier%3Dfront";

    // Until the pods' first list completes the kind is not synced (503); then 200.
    let first = until_synced(&conn.connection, list(query)).await;
    assert_eq!(
        first.head.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(
        first.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(first.json()["kind"], "List");

    // The relay sees the informers' traffic (the initial list of every pod).
    let before = relay.requests();
    assert!(
        before.iter().any(|r| r.starts_with("GET /api/v1/pods?")),
        "the relay records the informer's pod list: {before:?}"
    );

    // Exactly the pods of the namespace matching the selector, as the API server would select.
    let a = request(&conn.connection, list(query), &[]).await;
    assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let expected: BTreeSet<String> = store
        .list("v1", "Pod", Some("default"))
        .iter()
        .filter(|p| p["metadata"]["labels"]["tier"] == "front")
        .map(|p| p["metadata"]["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        expected,
        BTreeSet::from(["front-a".to_owned(), "front-b".to_owned()])
    );
    assert_eq!(item_names(&a), expected);
    for item in a.json()["items"].as_array().expect("items") {
        assert_eq!(item["kind"], "Pod");
        assert_eq!(item["apiVersion"], "v1");
        assert_eq!(item["metadata"]["namespace"], "default");
    }

    // Other selections of the same cache.
    let a = request(
        &conn.connection,
        list("/v1/Pod?labelSelector=tier+in+%28front%29%2Cteam%3Dx"),
        &[],
    )
    .await;
    assert_eq!(
        item_names(&a),
        BTreeSet::from(["front-a".to_owned(), "front-d".to_owned()])
    );
    let created = store
        .get("v1", "Pod", Some("other"), "front-d")
        .expect("front-d exists");
    let a = request(
        &conn.connection,
        head(CACHE, "GET", "/pods/other/front-d", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 200);
    assert_eq!(a.json()["metadata"]["uid"], created["metadata"]["uid"]);
    let a = until_synced(
        &conn.connection,
        head(CACHE, "GET", "/nodes/-/sim-node-1", vec![]),
    )
    .await;
    assert_eq!(a.head.status, 200);
    assert_eq!(a.json()["kind"], "Node");
    for (method, path, status) in [
        ("GET", "/pods/default/no-such-pod", 404),
        ("LIST", "/services", 404),
        ("LIST", "/pods?labelSelector=tier%3D%3D%3D", 400),
        ("WATCH", "/pods", 405),
    ] {
        let a = request(&conn.connection, head(CACHE, method, path, vec![]), &[]).await;
        assert_eq!(a.head.status, status, "{method} {path}");
        assert_eq!(a.json()["kind"], "Status");
    }

    // None of these queries reached the API server.
    let after = relay.requests();
    let new: Vec<&String> = after[before.len()..].iter().collect();
    assert!(
        !new.iter().any(|r| is_pod_list(r)),
        "a cache query listed pods at the API server: {new:?}"
    );
    assert!(
        !after.iter().any(|r| r.contains("labelSelector")
            || r.contains("front-d")
            || r.contains("no-such-pod")),
        "a cache query reached the API server: {after:?}"
    );
    agent.shutdown().await.expect("clean shutdown");
}
