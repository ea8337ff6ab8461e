//! End to end through the service proxy: an HTTPS client → kas
//! `/api/v1/agents/{id}/proxy/{namespace}/{service}:{port}/{path}` → tunnel → the real agentk, which
//! resolves the Service in its (simulated) cluster → an HTTP server started by the test, standing in
//! for an in-cluster service (its Service has cluster IP 127.0.0.1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use e2e::{EchoServer, Stack, StackOptions, add_loopback_service, call};

#[test]
fn service_proxy_carries_method_path_query_headers_and_bodies_both_ways() {
    let s = Stack::start(StackOptions::default());
    let server = EchoServer::start(s.runtime());
    add_loopback_service(s.cluster(1), "apps", "echo", "http", server.addr);
    let client = s.https();
    let base = format!("{}/api/v1/agents/1/proxy/apps/echo", s.kas().api_url());
    let admin = s.admin(1);

    // POST by port name, with a query and a body of known length.
    let url = format!("{base}:http/v1/items/42?verbose=true&tag=a%20b&tag=c");
    let reply = call(
        &client,
        "POST",
        &url,
        &[
            ("Authorization", &admin),
            ("Content-Type", "application/json"),
            ("X-Request-Marker", "e2e-1"),
        ],
        br#"{"hello":"cluster"}"#.to_vec(),
    );
    let got = server.next();
    assert_eq!(got.method, "POST");
    assert_eq!(got.target, "/v1/items/42?verbose=true&tag=a%20b&tag=c");
    assert_eq!(got.body, br#"{"hello":"cluster"}"#);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-request-marker"), Some("e2e-1"));
    // The user's credentials for kas never reach the service.
    assert_eq!(got.header("authorization"), None, "{:?}", got.headers);
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.header("x-served-by"), Some("echo-server"));
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    assert_eq!(reply.body, r#"echo:{"hello":"cluster"}"#);

    // PUT by port number, a 1 MiB body sent chunked (no length known in advance) and echoed back.
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let url = format!("{base}:{}/upload", server.addr.port());
    let req = ureq::http::Request::builder()
        .method("PUT")
        .uri(&url)
        .header("Authorization", &admin)
        .body(ureq::SendBody::from_owned_reader(std::io::Cursor::new(
            payload.clone(),
        )))
        .unwrap();
    let reply = e2e::into_reply(client.run(req).unwrap());
    let got = server.next();
    assert_eq!(got.method, "PUT");
    assert_eq!(got.target, "/upload");
    assert_eq!(got.body.len(), payload.len());
    assert!(got.body == payload, "the body arrived changed");
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body.len(), payload.len() + 5);
    assert!(
        reply.body.as_bytes()[5..] == payload[..],
        "the answer came back changed"
    );

    // GET of the service's root (the path after `service:port` may be empty).
    let reply = call(
        &client,
        "GET",
        &format!("{base}:http"),
        &[("Authorization", &admin)],
        vec![],
    );
    let got = server.next();
    assert_eq!((got.method.as_str(), got.target.as_str()), ("GET", "/"));
    assert!(got.body.is_empty());
    assert_eq!((reply.status, reply.body.as_str()), (201, "echo:"));
    assert!(!server.has_unread());
}

#[test]
fn service_proxy_resolves_the_service_in_the_agents_own_cluster() {
    let s = Stack::start(StackOptions::default());
    let server = EchoServer::start(s.runtime());
    // The Service exists in cluster 2 only.
    add_loopback_service(s.cluster(2), "default", "only-two", "web", server.addr);
    let client = s.https();
    let api = s.kas().api_url();

    let reply = call(
        &client,
        "GET",
        &format!("{api}/api/v1/agents/2/proxy/default/only-two:web/ping"),
        &[("Authorization", &s.admin(2))],
        vec![],
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body, "echo:");
    assert_eq!(server.next().target, "/ping");

    // Through agent 1 the Service does not exist: agentk answers 404 from its own cluster, and the
    // server gets nothing.
    let reply = call(
        &client,
        "GET",
        &format!("{api}/api/v1/agents/1/proxy/default/only-two:web/ping"),
        &[("Authorization", &s.admin(1))],
        vec![],
    );
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(reply.body.contains("only-two"), "{}", reply.body);
    // A port the Service does not have: 503 from agentk (no such port), nothing reaches the server.
    let reply = call(
        &client,
        "GET",
        &format!("{api}/api/v1/agents/2/proxy/default/only-two:nope/ping"),
        &[("Authorization", &s.admin(2))],
        vec![],
    );
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(!server.has_unread());
}

/// Many clients at once over one tunnel: every answer belongs to its own request (streams are not
/// mixed up), through both the service proxy and `/k8s-proxy`.
#[test]
fn concurrent_requests_share_the_tunnel_without_mixing_answers() {
    let s = Stack::start(StackOptions::default());
    let server = EchoServer::start(s.runtime());
    add_loopback_service(s.cluster(1), "default", "echo", "http", server.addr);
    let base = format!(
        "{}/api/v1/agents/1/proxy/default/echo:http",
        s.kas().api_url()
    );
    let pods = format!("{}/api/v1/namespaces/default/pods", s.kas().k8s_proxy_url());
    let expected_pods = e2e::pod_names(s.cluster(1), Some("default"));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let client = s.https();
            let (base, pods, auth) = (base.clone(), pods.clone(), s.admin(1));
            let expected_pods = expected_pods.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    // Bodies of different sizes, so a mix-up would show.
                    let body = format!("{t}-{i}-")
                        .repeat(1 + (t * 5 + i) * 300)
                        .into_bytes();
                    let reply = call(
                        &client,
                        "POST",
                        &format!("{base}/t{t}/r{i}"),
                        &[("Authorization", &auth)],
                        body.clone(),
                    );
                    assert_eq!(reply.status, 201, "{}", reply.body);
                    assert!(
                        reply.body.as_bytes()[5..] == body[..],
                        "thread {t} request {i}: another request's answer"
                    );
                    let reply = call(&client, "GET", &pods, &[("Authorization", &auth)], vec![]);
                    assert_eq!(reply.status, 200, "{}", reply.body);
                    assert_eq!(
                        e2e::names(reply.json()["items"].as_array().unwrap()),
                        expected_pods
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut targets: Vec<String> = (0..80).map(|_| server.next().target).collect();
    targets.sort();
    let mut expected: Vec<String> = (0..16)
        .flat_map(|t| (0..5).map(move |i| format!("/t{t}/r{i}")))
        .collect();
    expected.sort();
    assert_eq!(targets, expected);
    assert!(!server.has_unread());
}
