//! End to end refusals through the real stack (kas with its HTTPS API, real agentk for agents 1 and
//! 2, simulated clusters): wrong user token 401, unknown agent 404, user not allowed on the agent
//! 403, and an agent listed in the agents file that never connects (agent 3) 503 at the routing
//! deadline (500 ms here); a cluster whose API server is down 502; a service that never answers 504
//! at the response timeout (1 s here), with the connection to it dropped. On `/k8s-proxy` the bodies are Kubernetes `Status` objects (and kubectl
//! reports them as such); on the service proxy they are kas's `{code, reason, message}`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::time::{Duration, Instant};

use e2e::{
    BlackHole, EchoServer, HoleEvent, Stack, StackOptions, add_loopback_service,
    assert_plain_error, assert_status,
};

const DEADLINE: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

fn stack() -> Stack {
    Stack::start(StackOptions {
        agents: vec![1, 2],
        pending_request_deadline: DEADLINE,
        response_timeout: RESPONSE_TIMEOUT,
    })
}

const PODS: &str = "/k8s-proxy/api/v1/namespaces/default/pods";

#[test]
fn a_wrong_user_token_is_401() {
    let s = stack();
    // The control: the right token works.
    assert_eq!(s.get(PODS, Some(&s.admin(1))).status, 200);

    let reply = s.get(PODS, Some("Bearer pat:1:not-a-valid-token"));
    assert_status(&reply, 401, "Unauthorized");
    assert!(!reply.body.contains("not-a-valid-token"), "{}", reply.body);
    let reply = s.get(PODS, None);
    assert_status(&reply, 401, "Unauthorized");
    let reply = s.get(PODS, Some("Bearer not-even-the-format"));
    assert_status(&reply, 401, "Unauthorized");

    // kubectl says so too.
    let err = s.kubectl("wrong-1").fails(&["get", "pods"]);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
    // And the service proxy.
    let reply = s.get(
        "/api/v1/agents/1/proxy/default/svc:80/",
        Some("Bearer pat:1:not-a-valid-token"),
    );
    assert_plain_error(&reply, 401, "Unauthorized");
}

#[test]
fn an_unknown_agent_is_404() {
    let s = stack();
    let reply = s.get(PODS, Some(&s.admin(99)));
    assert_status(&reply, 404, "NotFound");
    assert!(reply.body.contains("99"), "{}", reply.body);
    let reply = s.get(
        "/api/v1/agents/99/proxy/default/svc:80/x",
        Some(&s.admin(99)),
    );
    assert_plain_error(&reply, 404, "NotFound");
    // Answered at once, not after waiting for a connection that cannot come.
    assert_eq!(
        support::metric(&s.metrics(), "kas_pending_requests"),
        Some(0.0)
    );
}

#[test]
fn a_user_not_allowed_on_the_agent_is_403() {
    let s = stack();
    let server = EchoServer::start(s.runtime());
    add_loopback_service(s.cluster(2), "default", "echo", "http", server.addr);
    add_loopback_service(s.cluster(1), "default", "echo", "http", server.addr);

    // alice may reach agent 1 ...
    assert_eq!(s.get(PODS, Some(&s.alice(1))).status, 200);
    let out = s.kubectl("alice-1").ok(&["get", "pods", "-o", "name"]);
    assert!(out.contains("pod/"), "{out}");
    let reply = s.get(
        "/api/v1/agents/1/proxy/default/echo:http/",
        Some(&s.alice(1)),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    server.next();
    // ... but not agent 2 (which exists and is connected).
    let reply = s.get(PODS, Some(&s.alice(2)));
    assert_status(&reply, 403, "Forbidden");
    let err = s.kubectl("alice-2").fails(&["get", "pods"]);
    assert!(err.contains("Forbidden"), "{err}");
    let reply = s.get(
        "/api/v1/agents/2/proxy/default/echo:http/",
        Some(&s.alice(2)),
    );
    assert_plain_error(&reply, 403, "Forbidden");
    // Naming agent 1 in the bearer does not open agent 2's service proxy: the URL's agent counts.
    let reply = s.get(
        "/api/v1/agents/2/proxy/default/echo:http/",
        Some(&s.alice(1)),
    );
    assert_plain_error(&reply, 403, "Forbidden");
    assert!(
        !server.has_unread(),
        "a refused request reached the service"
    );
}

#[test]
fn an_agent_that_never_connects_is_503_at_the_deadline() {
    let s = stack();
    assert!(!s.kas().connected_agents().contains(&3));
    // kas knows agent 3 (the agents file lists it) and says it is not connected.
    let agent = s.get("/api/v1/agents/3", Some(&s.admin(3)));
    assert_eq!(agent.status, 200, "{}", agent.body);
    assert_eq!(agent.json()["connected"], false, "{}", agent.body);
    let started = Instant::now();
    let reply = s.get(PODS, Some(&s.admin(3)));
    let waited = started.elapsed();
    assert_status(&reply, 503, "ServiceUnavailable");
    // It waited for a connection (the deadline is a lower bound; no upper bound is asserted).
    assert!(waited >= DEADLINE, "answered after {waited:?}");

    let started = Instant::now();
    let reply = s.get("/api/v1/agents/3/proxy/default/svc:80/", Some(&s.admin(3)));
    let waited = started.elapsed();
    assert_plain_error(&reply, 503, "ServiceUnavailable");
    assert!(waited >= DEADLINE, "answered after {waited:?}");

    // kubectl reports the failure (it may retry; each attempt ends at the deadline).
    let out = s.kubectl("agent-3").run(&["get", "pods"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ServiceUnavailable") || err.contains("503") || err.contains("unavailable"),
        "{err}"
    );
    // The connected agents keep working.
    assert_eq!(s.get(PODS, Some(&s.admin(1))).status, 200);
    assert_eq!(s.get(PODS, Some(&s.admin(2))).status, 200);
}

#[test]
fn a_cluster_whose_api_server_is_down_is_502() {
    let mut s = stack();
    s.stop_cluster(2);
    // agentk 2 is still connected; it cannot reach its API server and says so.
    assert!(s.kas().connected_agents().contains(&2));
    let reply = s.get(PODS, Some(&s.admin(2)));
    assert_eq!(reply.status, 502, "{}", reply.body);
    let v = reply.json();
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], 502, "{v}");
    let err = s.kubectl("agent-2").fails(&["get", "pods"]);
    assert!(!err.is_empty());
    // Cluster 1 is unaffected.
    assert_eq!(s.get(PODS, Some(&s.admin(1))).status, 200);
}

#[test]
fn a_service_that_never_answers_is_504_and_its_connection_is_dropped() {
    let s = stack();
    let hole = BlackHole::start();
    add_loopback_service(s.cluster(1), "default", "silent", "http", hole.addr);
    let started = Instant::now();
    let reply = s.get(
        "/api/v1/agents/1/proxy/default/silent:http/slow",
        Some(&s.admin(1)),
    );
    let waited = started.elapsed();
    assert_plain_error(&reply, 504, "Timeout");
    assert!(waited >= RESPONSE_TIMEOUT, "answered after {waited:?}");
    // The request did reach the service, and once kas gave up, agentk dropped the connection to it.
    assert_eq!(hole.next(), HoleEvent::Accepted);
    match hole.next() {
        HoleEvent::Closed(n) => assert!(n > 0, "the request never arrived"),
        other => panic!("the connection to the service stayed open: {other:?}"),
    }
}
