//! Defence in depth: whatever a request head from kas carries, agentk forwards no client
//! impersonation, credentials, front-proxy identity assertions or `Connection`-named headers to the
//! API server. A fake kas sends them on a k8s-api stream; a relay in front of the simulated API server
//! records every header line that reaches it.

mod common;

use common::*;
use protocol::service::K8S_API;
use tunnel_tls::ThrowawayPki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_from_kas_cannot_choose_the_identity_the_api_server_sees() {
    init_tracing();
    let c = cluster();
    let relay = RecordingRelay::start(c.api.addr()).await;
    let kubeconfig = kubeconfig_for(c.dir.path(), "relay", &format!("http://{}", relay.addr));
    let pki = ThrowawayPki::generate().expect("pki");
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(agent_config(&pki, kas.addr, &kubeconfig));
    let conn = kas.next_connection().await;

    let path = "/api/v1/namespaces/default/pods?marker=forwarding-rule";
    let a = request(
        &conn.connection,
        head(
            K8S_API,
            "GET",
            path,
            vec![
                header("Impersonate-User", "system:admin"),
                header("Impersonate-Group", "system:masters"),
                header("Impersonate-Uid", "0"),
                header("Impersonate-Extra-Scopes", "everything"),
                header("Cookie", "_gitlab_session=secret"),
                header("Authorization", "Bearer not-for-the-api-server"),
                header("Proxy-Authorization", "Basic eDp5"),
                header("X-Remote-User", "admin"),
                header("X-Remote-Group", "system:masters"),
                header("X-Forwarded-User", "admin"),
                header("Connection", "X-Secret-Hop"),
                header("X-Secret-Hop", "1"),
                header("X-Test-Marker", "arrived"),
                header("Accept", "application/json"),
            ],
        ),
        &[],
    )
    .await;
    assert_eq!(a.head.status, 200, "{}", String::from_utf8_lossy(&a.body));

    let lines = relay.lines();
    let start = lines
        .iter()
        .position(|l| l.starts_with("GET ") && l.contains("marker=forwarding-rule"))
        .expect("the request reached the API server");
    let headers: Vec<String> = lines[start + 1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase())
        .collect();
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("x-test-marker: arrived")),
        "the relay saw the request's headers: {headers:?}"
    );
    for forbidden in [
        "impersonate-",
        "cookie:",
        "proxy-authorization:",
        "x-remote-",
        "x-forwarded-user:",
        "x-secret-hop:",
        "authorization: bearer not-for-the-api-server",
    ] {
        assert!(
            !headers.iter().any(|h| h.starts_with(forbidden)),
            "{forbidden} reached the API server: {headers:?}"
        );
    }
    agent.shutdown().await.expect("clean shutdown");
}
