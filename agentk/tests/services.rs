//! k8s-api and service-proxy through a real tunnel: fake kas ⇄ agentk ⇄ simulated API server.

mod common;

use common::*;
use protocol::ErrorCode;
use protocol::service::{K8S_API, SERVICE_PROXY};
use tunnel_tls::ThrowawayPki;

struct Setup {
    _pki: ThrowawayPki,
    cluster: Cluster,
    _kas: FakeKas,
    agent: RunningAgent,
    conn: runtime_tokio::ServerConnection<runtime_tokio::Connection>,
}

/// A fake kas and agentk connected to it, serving `cluster` with `kubeconfig` (the cluster's own,
/// or one pointing elsewhere, e.g. at a relay in front of the API server).
async fn setup_in(cluster: Cluster, kubeconfig: std::path::PathBuf) -> Setup {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(agent_config(&pki, kas.addr, &kubeconfig));
    let conn = kas.next_connection().await;
    Setup {
        _pki: pki,
        cluster,
        _kas: kas,
        agent,
        conn,
    }
}

async fn setup() -> Setup {
    let c = cluster();
    let kubeconfig = c.kubeconfig.clone();
    setup_in(c, kubeconfig).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_announces_capabilities_and_version() {
    let s = setup().await;
    assert_eq!(s.conn.agent_id, 42);
    assert_eq!(
        s.conn.meta.capabilities,
        vec!["k8s-api", "service-proxy", "config", "gitops"]
    );
    assert_eq!(s.conn.meta.version, env!("CARGO_PKG_VERSION"));
    s.agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_list_through_the_tunnel_equals_a_direct_get() {
    let s = setup().await;
    let path = "/api/v1/namespaces/default/pods";
    let a = request(
        &s.conn.connection,
        head(
            K8S_API,
            "GET",
            path,
            vec![header("accept", "application/json")],
        ),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.trailer.is_none());
    let (status, direct) = direct_get(&s.cluster.api, path).await;
    assert_eq!(status, 200);
    let direct: serde_json::Value = serde_json::from_slice(&direct).expect("direct JSON");
    let tunneled = a.json();
    assert_eq!(tunneled["kind"], "PodList");
    assert!(
        !tunneled["items"].as_array().expect("items").is_empty(),
        "the simulated cluster has pods"
    );
    assert_eq!(tunneled, direct);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_through_the_tunnel_sees_a_live_change() {
    let s = setup().await;
    let rv = s.cluster.api.store().resource_version();
    let w = s
        .conn
        .connection
        .open(
            head(
                K8S_API,
                "GET",
                &format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}"),
                vec![],
            ),
            true,
        )
        .expect("open watch");
    let h = guard("watch head", w.response()).await.expect("watch head");
    assert_eq!(h.status, 200);
    // The change happens after the watch is established and flows while the stream stays open.
    s.cluster
        .api
        .store()
        .add_pod("default", "live-pod-1")
        .expect("add pod");
    let mut seen = String::new();
    read_until(&w, "live-pod-1", &mut seen).await;
    assert!(seen.contains("\"ADDED\""), "{seen}");
    s.cluster
        .api
        .store()
        .delete("v1", "Pod", Some("default"), "live-pod-1")
        .expect("delete pod");
    read_until(&w, "\"DELETED\"", &mut seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_a_streamed_body_creates_the_object() {
    let s = setup().await;
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "from-the-tunnel", "namespace": "default"},
        "data": {"greeting": "hello"},
    })
    .to_string();
    let (first, second) = body.as_bytes().split_at(body.len() / 2);
    let a = request(
        &s.conn.connection,
        head(
            K8S_API,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            vec![
                header("content-type", "application/json"),
                // kas never sends credentials; if it did, agentk must not forward them.
                header("authorization", "Bearer not-for-the-api-server"),
            ],
        ),
        &[first, second],
    )
    .await;
    assert_eq!(a.head.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["metadata"]["name"], "from-the-tunnel");
    let stored = s
        .cluster
        .api
        .store()
        .get("v1", "ConfigMap", Some("default"), "from-the-tunnel")
        .expect("created in the API server");
    assert_eq!(stored["data"]["greeting"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_pass_through_unchanged() {
    let s = setup().await;
    let a = request(
        &s.conn.connection,
        head(
            K8S_API,
            "GET",
            "/api/v1/namespaces/default/pods/no-such-pod",
            vec![],
        ),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 404);
    assert_eq!(a.json()["kind"], "Status");
    assert_eq!(
        a.header("x-tunnel-error"),
        None,
        "the API server answered, not agentk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kas_reset_of_a_watch_drops_the_upstream_request() {
    // agentk talks to the API server through a counting relay, so the test sees the upstream
    // connection of the watch close.
    let c = cluster();
    let counting = CountingRelay::start(c.api.addr()).await;
    let kubeconfig = kubeconfig_for(
        c.dir.path(),
        "relay-kubeconfig",
        &format!("http://{}", counting.addr),
    );
    let s = setup_in(c, kubeconfig).await;
    assert_eq!(
        counting.open(),
        0,
        "no upstream connection before the watch"
    );
    let rv = s.cluster.api.store().resource_version();
    let w = s
        .conn
        .connection
        .open(
            head(
                K8S_API,
                "GET",
                &format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}"),
                vec![],
            ),
            true,
        )
        .expect("open watch");
    assert_eq!(
        guard("watch head", w.response())
            .await
            .expect("head")
            .status,
        200
    );
    s.cluster
        .api
        .store()
        .add_pod("default", "before-reset")
        .expect("add pod");
    let mut seen = String::new();
    read_until(&w, "before-reset", &mut seen).await;
    assert_eq!(
        counting.open(),
        1,
        "the watch holds one upstream connection"
    );

    // kas's client went away: kas resets the stream while the watch is idle.
    w.reset(ErrorCode::Cancel);
    eventually("agentk closes the watch's upstream connection", || {
        counting.open() == 0
    })
    .await;
    // Only kas's streams: the `config` stream agentk opens on every connection stays pending here.
    eventually("the stream is gone on both ends", || {
        s.conn.connection.open_streams().0 == 0
    })
    .await;
    assert_eq!(counting.total.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_server_is_a_502_status() {
    // A port nothing listens on (bound then released).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_for(dir.path(), "dead", &format!("http://{closed}"));
    let s = setup_in(cluster(), kubeconfig).await;
    let a = request(
        &s.conn.connection,
        head(K8S_API, "GET", "/api/v1/pods", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 502);
    assert_eq!(a.header("x-tunnel-error").as_deref(), Some("connect"));
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/json")
    );
    let st = a.json();
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["status"], "Failure");
    assert_eq!(st["code"], 502);
    assert_eq!(st["reason"], "ServiceUnavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_a_404_status() {
    let s = setup().await;
    let a = request(
        &s.conn.connection,
        head("no-such-service", "GET", "/", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 404);
    assert_eq!(a.json()["reason"], "NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_heads_are_a_400_status() {
    let s = setup().await;
    let a = request(
        &s.conn.connection,
        head(K8S_API, "GET", "no-slash", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 400);
    assert_eq!(a.json()["reason"], "BadRequest");
    let a = request(
        &s.conn.connection,
        head(SERVICE_PROXY, "GET", "/default/missing-port/x", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_proxy_reaches_the_service_by_port_number_and_name() {
    let s = setup().await;
    let web = TestHttpServer::start().await;
    s.cluster
        .api
        .store()
        .create(loopback_service("default", "echo", web.addr.port()))
        .expect("create service");
    let port = web.addr.port();
    for port_ref in [port.to_string(), "http".to_owned()] {
        let a = request(
            &s.conn.connection,
            head(
                SERVICE_PROXY,
                "POST",
                &format!("/default/echo:{port_ref}/hello/world?x=1"),
                vec![header("content-type", "text/plain")],
            ),
            &[b"request ", b"body"],
        )
        .await;
        assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(
            String::from_utf8_lossy(&a.body),
            "POST /hello/world?x=1\nrequest body"
        );
        assert_eq!(a.header("x-echo").as_deref(), Some("yes"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_proxy_answers_missing_and_unroutable_services() {
    let s = setup().await;
    let a = request(
        &s.conn.connection,
        head(SERVICE_PROXY, "GET", "/default/nothing-here:80/", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 404);
    assert_eq!(a.json()["reason"], "NotFound");

    let mut headless = loopback_service("default", "headless", 80);
    headless["spec"]["clusterIP"] = serde_json::json!("None");
    headless["spec"]["clusterIPs"] = serde_json::json!(["None"]);
    s.cluster.api.store().create(headless).expect("create");
    let a = request(
        &s.conn.connection,
        head(SERVICE_PROXY, "GET", "/default/headless:80/", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 503);

    s.cluster
        .api
        .store()
        .create(loopback_service("default", "other", 80))
        .expect("create");
    let a = request(
        &s.conn.connection,
        head(SERVICE_PROXY, "GET", "/default/other:81/", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 503, "no such port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_before_the_answer_is_a_504() {
    let s = setup().await;
    let web = TestHttpServer::start().await;
    s.cluster
        .api
        .store()
        .create(loopback_service("default", "slow", web.addr.port()))
        .expect("create service");
    let mut h = head(SERVICE_PROXY, "GET", "/default/slow:http/slow", vec![]);
    h.timeout_ms = 300;
    let a = request(&s.conn.connection, h, &[]).await;
    assert_eq!(a.head.status, 504);
    assert_eq!(a.header("x-tunnel-error").as_deref(), Some("timeout"));
    let _ = web.release.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_body_failing_midway_ends_with_an_unavailable_trailer() {
    let s = setup().await;
    let web = TestHttpServer::start().await;
    s.cluster
        .api
        .store()
        .create(loopback_service("default", "broken", web.addr.port()))
        .expect("create service");
    let a = request(
        &s.conn.connection,
        head(SERVICE_PROXY, "GET", "/default/broken:http/broken", vec![]),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 200);
    assert_eq!(String::from_utf8_lossy(&a.body), "partial ");
    let trailer = a
        .trailer
        .expect("a trailer tells kas the body is incomplete");
    assert_eq!(trailer.code, protocol::service::status::UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_flow_live() {
    let s = setup().await;
    s.cluster
        .api
        .store()
        .add_pod("default", "logger")
        .expect("add pod");
    let logs = s
        .conn
        .connection
        .open(
            head(
                K8S_API,
                "GET",
                "/api/v1/namespaces/default/pods/logger/log?follow=true&tailLines=0",
                vec![],
            ),
            true,
        )
        .expect("open logs");
    let h = guard("logs head", logs.response()).await.expect("head");
    assert_eq!(h.status, 200);
    // tailLines=0: every line read was written after the request, while the stream stays open.
    let mut lines = String::new();
    guard("three live log lines", async {
        while lines.matches('\n').count() < 3 {
            match logs.read_chunk(64 * 1024).await {
                Some(Ok(c)) => lines.push_str(&String::from_utf8_lossy(&c)),
                other => panic!("log stream ended early: {other:?}; got {lines:?}"),
            }
        }
    })
    .await;
    logs.reset(protocol::ErrorCode::Cancel);
}

/// Requests to the API server for Services in `namespace` (list, watch or get), as it recorded them.
fn service_calls(api: &sim_apiserver::RunningApiServer, namespace: &str) -> usize {
    let prefix = format!("/api/v1/namespaces/{namespace}/services");
    api.requests()
        .1
        .iter()
        .filter(|r| r.path.starts_with(&prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_proxy_resolves_from_its_watch_not_per_request() {
    let s = setup().await;
    let web = TestHttpServer::start().await;
    let other = TestHttpServer::start().await;
    let api = &s.cluster.api;
    api.store()
        .create(loopback_service("default", "cached", web.addr.port()))
        .expect("create service");
    const REQUESTS: usize = 40;
    for i in 0..REQUESTS {
        let a = request(
            &s.conn.connection,
            head(
                SERVICE_PROXY,
                "GET",
                &format!("/default/cached:http/r{i}"),
                vec![],
            ),
            &[],
        )
        .await;
        assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(String::from_utf8_lossy(&a.body), format!("GET /r{i}\n"));
    }
    // One list and one watch (the watcher may restart its watch once), never one call per request.
    let calls = service_calls(api, "default");
    assert!(
        (1..=3).contains(&calls),
        "{calls} service calls for {REQUESTS} requests: {:?}",
        api.requests().1
    );

    // A change to the Service is followed: its port moves to the other server, then to a port
    // nothing listens on, then the Service goes away.
    let get = || async {
        request(
            &s.conn.connection,
            head(SERVICE_PROXY, "GET", "/default/cached:http/again", vec![]),
            &[],
        )
        .await
    };
    let set_port = |port: u16| {
        let mut svc = api
            .store()
            .get("v1", "Service", Some("default"), "cached")
            .expect("service");
        svc["spec"]["ports"][0]["port"] = serde_json::json!(port);
        api.store().replace(svc).expect("update service");
    };
    let eventually = |what: &'static str, want: u32| async move {
        // Bounded: at most 100 requests, 50 ms apart.
        for _ in 0..100 {
            let a = get().await;
            if a.head.status == want {
                return a;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{what}: never answered {want}");
    };
    set_port(other.addr.port());
    drop(web);
    let a = eventually("moved to the other server", 200).await;
    assert_eq!(String::from_utf8_lossy(&a.body), "GET /again\n");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let unused = closed.local_addr().expect("addr").port();
    drop(closed);
    set_port(unused);
    let a = eventually("moved to a closed port", 502).await;
    assert_eq!(a.header("x-tunnel-error").as_deref(), Some("connect"));
    api.store()
        .delete("v1", "Service", Some("default"), "cached")
        .expect("delete service");
    let a = eventually("deleted", 404).await;
    assert_eq!(a.json()["reason"], "NotFound");
    let calls = service_calls(api, "default");
    assert!(calls <= 4, "{calls} service calls after the changes");
}
