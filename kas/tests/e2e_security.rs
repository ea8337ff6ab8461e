//! Security end to end, through the real stack (kas with its HTTPS API, real agentk, simulated
//! clusters): what a client sends that must never reach the cluster (impersonation, credentials,
//! front-proxy identity assertions, `Connection`-named headers), and a client request that must never
//! take an agent offline (a head larger than the agent accepts is 431 for that request only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;
#[path = "support/wiretap.rs"]
mod wiretap;

use std::time::Duration;

use e2e::{EchoServer, Stack, StackOptions, add_loopback_service, call};
use wiretap::WireTap;

/// Every header a client might use to choose who it is upstream, or to smuggle a credential or a
/// hop-by-hop header through the tunnel.
const HOSTILE: &[(&str, &str)] = &[
    ("Impersonate-User", "system:admin"),
    ("Impersonate-Group", "system:masters"),
    ("impersonate-uid", "0"),
    ("Impersonate-Extra-Scopes", "everything"),
    ("Cookie", "_gitlab_session=do-not-leak"),
    ("Proxy-Authorization", "Basic eDp5"),
    ("X-Remote-User", "admin"),
    ("X-Remote-Group", "system:masters"),
    ("X-Remote-Extra-Scopes", "all"),
    ("X-Forwarded-User", "admin"),
    ("Connection", "X-Secret-Hop"),
    ("X-Secret-Hop", "1"),
    ("X-Test-Marker", "arrived"),
];

/// Header-line prefixes (lower case) that must not appear upstream.
const FORBIDDEN: &[&str] = &[
    "impersonate-",
    "cookie:",
    "proxy-authorization:",
    "x-remote-",
    "x-forwarded-user:",
    "x-secret-hop:",
];

fn stack() -> Stack {
    Stack::start(StackOptions {
        agents: vec![1],
        pending_request_deadline: Duration::from_secs(5),
        response_timeout: Duration::from_secs(10),
        ..StackOptions::default()
    })
}

#[test]
fn client_impersonation_and_credentials_never_reach_the_api_server() {
    let mut s = stack();
    // Put a recording relay between agentk and its API server: agentk is restarted with a
    // kubeconfig pointing at the relay.
    let tap = WireTap::start(s.runtime(), s.cluster(1).addr());
    let kubeconfig = s.env.dir.path().join("cluster-1.kubeconfig");
    std::fs::write(
        &kubeconfig,
        sim_apiserver::kubeconfig::kubeconfig_yaml(
            &format!("http://{}", tap.addr),
            "cluster-1",
            s.cluster(1).bearer_token(),
        ),
    )
    .unwrap();
    s.stop_agent(1);
    s.start_agent(1);
    assert!(s.kas().wait_for_agents(&[1], support::GUARD));

    let url = format!(
        "{}/api/v1/namespaces/default/pods?labelSelector=sec-marker%3D1",
        s.kas().k8s_proxy_url()
    );
    let admin = s.admin(1);
    let mut headers = vec![("Authorization", admin.as_str())];
    headers.extend_from_slice(HOSTILE);
    let reply = call(&s.https(), "GET", &url, &headers, Vec::new());
    assert_eq!(reply.status, 200, "{}", reply.body);

    let upstream = tap
        .request_headers("sec-marker")
        .expect("the request reached the API server through the relay");
    assert!(
        upstream
            .iter()
            .any(|h| h.starts_with("x-test-marker: arrived")),
        "{upstream:?}"
    );
    for f in FORBIDDEN {
        assert!(
            !upstream.iter().any(|h| h.starts_with(f)),
            "{f} reached the API server: {upstream:?}"
        );
    }
    // agentk's own credentials are the ones the API server saw, not the user's.
    let token = s.cluster(1).bearer_token().map(str::to_owned);
    if let Some(token) = token {
        assert!(
            upstream
                .iter()
                .any(|h| h == &format!("authorization: bearer {}", token.to_ascii_lowercase())),
            "{upstream:?}"
        );
    }
    assert!(
        !upstream
            .iter()
            .any(|h| h.contains(&s.env.admin_token.to_ascii_lowercase())),
        "the user's token reached the API server"
    );
    s.shutdown();
}

#[test]
fn cookies_and_connection_named_headers_never_reach_an_in_cluster_service() {
    let s = stack();
    let echo = EchoServer::start(s.runtime());
    add_loopback_service(s.cluster(1), "default", "echo", "http", echo.addr);
    let url = format!(
        "{}/api/v1/agents/1/proxy/default/echo:http/hello",
        s.kas().api_url()
    );
    let admin = s.admin(1);
    let mut headers = vec![("Authorization", admin.as_str())];
    headers.extend_from_slice(HOSTILE);
    let reply = call(&s.https(), "POST", &url, &headers, b"body".to_vec());
    assert_eq!(reply.status, 201, "{}", reply.body);
    let got = echo.next();
    assert_eq!(got.header("x-test-marker"), Some("arrived"));
    for (name, _) in &got.headers {
        let name = name.to_ascii_lowercase();
        assert!(
            !FORBIDDEN.iter().any(|f| format!("{name}:").starts_with(f)),
            "{name} reached the service: {:?}",
            got.headers
        );
        assert_ne!(name, "authorization", "{:?}", got.headers);
    }
    s.shutdown();
}

#[test]
fn an_oversized_head_is_431_and_the_agent_stays_online() {
    let s = stack();
    let url = format!("{}/api/v1/namespaces/default/pods", s.kas().k8s_proxy_url());
    let admin = s.admin(1);
    // 70 KiB of header: more than agentk's max_header_size (64 KiB) once encoded.
    let big = "a".repeat(70 * 1024);
    for _ in 0..3 {
        let reply = call(
            &s.https(),
            "GET",
            &url,
            &[("Authorization", admin.as_str()), ("X-Big", big.as_str())],
            Vec::new(),
        );
        e2e::assert_status(&reply, 431, "BadRequest");
    }
    // The agent is as online as before: the next requests are served at once, and kas does not
    // consider its connection draining.
    for _ in 0..3 {
        let reply = call(
            &s.https(),
            "GET",
            &url,
            &[("Authorization", admin.as_str())],
            Vec::new(),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let agent = s.get("/api/v1/agents/1", Some(&admin));
    assert_eq!(agent.status, 200, "{}", agent.body);
    let tunnels = agent.json()["tunnels"].clone();
    assert_eq!(tunnels.as_array().map(Vec::len), Some(1), "{tunnels}");
    assert_eq!(tunnels[0]["draining"], false, "{tunnels}");
    s.shutdown();
}
