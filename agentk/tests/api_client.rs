//! agentk's own client for the Kubernetes API server (`upstream::ApiClient`) through a real tunnel:
//! keep-alive connections (counted on the server side by a relay), kube's credentials (a token, a
//! token file) and TLS with the kubeconfig's own CA, the server URL's path prefix and `Host`.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use common::*;
use protocol::service::K8S_API;
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};
use tokio::io::AsyncWriteExt;
use tunnel_tls::ThrowawayPki;

struct Setup {
    _pki: ThrowawayPki,
    _kas: FakeKas,
    agent: RunningAgent,
    conn: runtime_tokio::ServerConnection<runtime_tokio::Connection>,
}

/// A fake kas and agentk connected to it, reaching the API server with `kubeconfig`.
async fn connect(kubeconfig: &Path) -> Setup {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(agent_config(&pki, kas.addr, kubeconfig));
    let conn = kas.next_connection().await;
    Setup {
        _pki: pki,
        _kas: kas,
        agent,
        conn,
    }
}

async fn get(s: &Setup, path: &str) -> Answer {
    request(&s.conn.connection, head(K8S_API, "GET", path, vec![]), &[]).await
}

/// A simulated API server over HTTPS with its own throw-away CA, admitting only `token`.
fn tls_api_server(token: &str) -> RunningApiServer {
    ApiServer::start(ApiServerConfig {
        kubelet: false,
        pods: 2,
        nodes: 1,
        tls: true,
        bearer_token: Some(token.to_owned()),
        ..ApiServerConfig::default()
    })
    .expect("start the simulated API server")
}

/// Writes a kubeconfig for `server` trusting `ca_pem`, with `user` as its user entry.
fn write_kubeconfig(
    dir: &Path,
    name: &str,
    server: &str,
    ca_pem: Option<&str>,
    user: serde_json::Value,
) -> std::path::PathBuf {
    let yaml = sim_apiserver::kubeconfig::kubeconfig_yaml_tls(server, "sim", None, ca_pem);
    let mut doc: serde_json::Value = serde_yaml::from_str(&yaml).expect("kubeconfig yaml");
    doc["users"][0]["user"] = user;
    let path = dir.join(name);
    std::fs::write(&path, serde_yaml::to_string(&doc).expect("yaml")).expect("write kubeconfig");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let c = cluster();
    let counting = CountingRelay::start(c.api.addr()).await;
    let kubeconfig = kubeconfig_for(
        c.dir.path(),
        "relay-kubeconfig",
        &format!("http://{}", counting.addr),
    );
    let s = connect(&kubeconfig).await;
    const REQUESTS: usize = 20;
    for i in 0..REQUESTS {
        if i % 5 == 4 {
            // A small body with its length (sent with the head), in two chunks on the stream.
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}"), "namespace": "default"},
                "data": {"i": i.to_string()},
            })
            .to_string();
            let (first, second) = body.as_bytes().split_at(body.len() / 2);
            let a = request(
                &s.conn.connection,
                create_configmap(body.len()),
                &[first, second],
            )
            .await;
            assert_eq!(a.head.status, 201, "{}", String::from_utf8_lossy(&a.body));
            assert_eq!(a.json()["data"]["i"], i.to_string());
        } else {
            let a = get(&s, "/api/v1/namespaces/default/pods").await;
            assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));
            assert_eq!(a.json()["kind"], "PodList");
        }
    }
    assert_eq!(
        counting.total.load(Ordering::SeqCst),
        1,
        "{REQUESTS} sequential requests, one upstream connection"
    );
    s.agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_api_server_with_its_own_ca_and_a_token_keeps_one_connection() {
    const API_TOKEN: &str = "the-api-servers-token";
    let api = tls_api_server(API_TOKEN);
    let counting = CountingRelay::start(api.addr()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = format!("https://{}", counting.addr);
    let kubeconfig = write_kubeconfig(
        dir.path(),
        "tls",
        &server,
        api.ca_pem(),
        serde_json::json!({"token": API_TOKEN}),
    );
    let s = connect(&kubeconfig).await;
    for _ in 0..10 {
        let a = get(&s, "/api/v1/namespaces/default/pods").await;
        assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    assert_eq!(counting.total.load(Ordering::SeqCst), 1);
    s.agent.shutdown().await.expect("clean shutdown");

    // The token is what admits them: with another one the API server refuses.
    let wrong = write_kubeconfig(
        dir.path(),
        "wrong-token",
        &server,
        api.ca_pem(),
        serde_json::json!({"token": "not-the-token"}),
    );
    let s = connect(&wrong).await;
    let a = get(&s, "/api/v1/namespaces/default/pods").await;
    assert_eq!(a.head.status, 401, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.header("x-tunnel-error"),
        None,
        "the API server's own answer"
    );
    s.agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_api_server_not_signed_by_the_kubeconfigs_ca_is_a_tls_error() {
    let api = tls_api_server("t");
    let other = ThrowawayPki::generate().expect("another CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = write_kubeconfig(
        dir.path(),
        "other-ca",
        &api.url(),
        Some(other.ca_pem()),
        serde_json::json!({"token": "t"}),
    );
    let s = connect(&kubeconfig).await;
    let a = get(&s, "/api/v1/namespaces/default/pods").await;
    assert_eq!(a.head.status, 502, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("x-tunnel-error").as_deref(), Some("tls"));
    assert_eq!(a.json()["reason"], "ServiceUnavailable");
    s.agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_in_the_kubeconfig_is_read_by_kube() {
    const API_TOKEN: &str = "token-from-a-file";
    let api = tls_api_server(API_TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    // As a service account token is mounted: no newline (kube sends the file as it is).
    std::fs::write(&token_file, API_TOKEN).expect("write token file");
    let kubeconfig = write_kubeconfig(
        dir.path(),
        "token-file",
        &api.url(),
        api.ca_pem(),
        serde_json::json!({"tokenFile": token_file}),
    );
    let s = connect(&kubeconfig).await;
    for _ in 0..3 {
        let a = get(&s, "/api/v1/namespaces/default/pods").await;
        assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    s.agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_urls_path_prefix_host_and_impersonation_reach_the_api_server() {
    let c = cluster();
    let relay = RecordingRelay::start(c.api.addr()).await;
    let yaml = sim_apiserver::kubeconfig::kubeconfig_yaml(
        &format!("http://{}/prefix/", relay.addr),
        "sim",
        None,
    );
    let mut doc: serde_json::Value = serde_yaml::from_str(&yaml).expect("kubeconfig yaml");
    doc["users"][0]["user"] = serde_json::json!({"as": "kubeconfig-user", "as-groups": ["g1"]});
    let kubeconfig = c.dir.path().join("prefixed");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&doc).expect("yaml"))
        .expect("write kubeconfig");
    let s = connect(&kubeconfig).await;
    // The simulated API server serves no prefix: its answer does not matter, what reached it does.
    let _ = get(&s, "/api/v1/pods?marker=prefix").await;
    let lines = relay.lines();
    let start = lines
        .iter()
        .position(|l| l.contains("marker=prefix"))
        .unwrap_or_else(|| panic!("the request reached the relay: {lines:?}"));
    assert_eq!(
        lines[start],
        "GET /prefix/api/v1/pods?marker=prefix HTTP/1.1"
    );
    let headers: Vec<String> = lines[start + 1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase())
        .collect();
    let has = |h: &str| headers.iter().any(|l| l == h);
    assert!(has(&format!("host: {}", relay.addr)), "{headers:?}");
    assert!(has("impersonate-user: kubeconfig-user"), "{headers:?}");
    assert!(has("impersonate-group: g1"), "{headers:?}");
    s.agent.shutdown().await.expect("clean shutdown");
}

/// A stand-in API server that answers every request `201` and records, per request, whether its
/// first read held the whole request (head and `Content-Length` body).
struct WholeReads {
    addr: std::net::SocketAddr,
    whole: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WholeReads {
    async fn start() -> WholeReads {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let whole = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = whole.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 64 * 1024];
                    // Bounded by the client: every round serves one request or ends the connection.
                    loop {
                        buf.clear();
                        let mut reads = 0;
                        let complete = loop {
                            let Ok(n) = conn.read(&mut chunk).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            reads += 1;
                            buf.extend_from_slice(&chunk[..n]);
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head =
                                    String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                                let len: usize = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .map_or(0, |v| v.trim().parse().unwrap_or(0));
                                if buf.len() >= end + 4 + len {
                                    break reads == 1;
                                }
                            }
                        };
                        log.lock().expect("log").push(complete);
                        let answer = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WholeReads { addr, whole, task }
    }
}

impl Drop for WholeReads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_leaves_with_its_head() {
    let server = WholeReads::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_for(dir.path(), "whole", &format!("http://{}", server.addr));
    let s = connect(&kubeconfig).await;
    const REQUESTS: usize = 8;
    for i in 0..REQUESTS {
        let body = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"cm-{i}\"}}}}"
        );
        let (first, second) = body.as_bytes().split_at(body.len() / 2);
        // The body arrives in two DATA frames after the head, the second a moment later (pacing
        // only, nothing is timed): agentk sends nothing upstream before it has all of it, then
        // head and body in one write, which the server reads at once. (Streamed as it came, the
        // head and the first half would reach the server alone.)
        let mut st = s
            .conn
            .connection
            .open(create_configmap(body.len()), false)
            .expect("open stream");
        st.write_all(first).await.expect("first half");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        st.write_all(second).await.expect("second half");
        st.finish().expect("finish");
        let a = read_answer(&st).await;
        assert_eq!(a.head.status, 201, "{}", String::from_utf8_lossy(&a.body));
    }
    let whole = server.whole.lock().expect("log").clone();
    assert_eq!(
        whole,
        vec![true; REQUESTS],
        "per request: read whole at once"
    );
    s.agent.shutdown().await.expect("clean shutdown");
}

/// The head of a `k8s-api` request creating a ConfigMap in `default` from a JSON body of `len` octets.
fn create_configmap(len: usize) -> protocol::proto::RequestHead {
    head(
        K8S_API,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        vec![
            header("content-type", "application/json"),
            header("content-length", &len.to_string()),
        ],
    )
}
