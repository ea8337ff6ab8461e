//! End to end refusals through the real stack (kas with its HTTPS API, real agentk for agents 1 and
//! 2, simulated clusters): wrong user token 401, unknown agent 404, user not allowed on the agent
//! 403, and an agent listed in the agents file that never connects (agent 3) 503 at the routing
//! deadline (500 ms here); a cluster whose API server is down 502; a service that never answers 504
//! at the response timeout (1 s here), with the connection to it dropped. On `/k8s-proxy` the bodies are Kubernetes `Status` objects (and kubectl
//! reports them as such); on the service proxy they are kas's `{code, reason, message}`.
//!
//! Deadlines are checked from both sides: `deadline <= waited < deadline + MARGIN`. And a silent
//! partition between the real agentk and kas (a black-hole proxy: no FIN, no RST) ends in 504 while
//! kas still believes the connection, 503 once keepalive has declared it dead, and recovery once the
//! path heals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::time::{Duration, Instant};

use e2e::{
    BlackHole, EchoServer, HoleEvent, Stack, StackOptions, add_loopback_service,
    assert_plain_error, assert_status,
};
use support::{GUARD, eventually};

const DEADLINE: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How late after its deadline an answer may come: an HTTPS request through kas on a busy 2-core
/// machine running the rest of the suite (a real bug — a deadline not enforced — waits tens of
/// seconds or forever).
const MARGIN: Duration = Duration::from_secs(3);

fn stack() -> Stack {
    Stack::start(StackOptions {
        agents: vec![1, 2],
        pending_request_deadline: DEADLINE,
        response_timeout: RESPONSE_TIMEOUT,
        ..StackOptions::default()
    })
}

/// `deadline <= waited < deadline + MARGIN`.
fn assert_within(waited: Duration, deadline: Duration, what: &str) {
    if let Err(e) = within(waited, deadline, what) {
        panic!("{e}");
    }
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
    // It waited for a connection until the deadline, and not much longer.
    assert_within(waited, DEADLINE, "k8s-proxy for agent 3");

    let started = Instant::now();
    let reply = s.get("/api/v1/agents/3/proxy/default/svc:80/", Some(&s.admin(3)));
    let waited = started.elapsed();
    assert_plain_error(&reply, 503, "ServiceUnavailable");
    assert_within(waited, DEADLINE, "service proxy for agent 3");

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
    assert_within(waited, RESPONSE_TIMEOUT, "a silent service");
    // The request did reach the service, and once kas gave up, agentk dropped the connection to it.
    assert_eq!(hole.next(), HoleEvent::Accepted);
    match hole.next() {
        HoleEvent::Closed(n) => assert!(n > 0, "the request never arrived"),
        other => panic!("the connection to the service stayed open: {other:?}"),
    }
}

/// `deadline <= waited < deadline + MARGIN`, as a result.
fn within(waited: Duration, deadline: Duration, what: &str) -> Result<(), String> {
    if waited < deadline || waited >= deadline + MARGIN {
        return Err(format!(
            "{what}: answered after {waited:?}; the deadline is {deadline:?} (margin {MARGIN:?})"
        ));
    }
    Ok(())
}

fn status(reply: &support::Reply, want: u16, what: &str) -> Result<(), String> {
    if reply.status == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: HTTP {} instead of {want}: {}",
            reply.status, reply.body
        ))
    }
}

/// The partition story (see the test below); `polite`: the proxy closes the connections (FIN)
/// instead of swallowing them — the deliberate mistake its self-test makes.
fn partition_story(polite: bool) -> Result<(), String> {
    const IDLE: Duration = Duration::from_secs(3);
    let s = Stack::start(StackOptions {
        agents: vec![1, 2],
        pending_request_deadline: DEADLINE,
        response_timeout: RESPONSE_TIMEOUT,
        behind_proxy: vec![1],
        keepalive: Some((Duration::from_millis(300), IDLE)),
    });
    // The control: through the proxy, agent 1 answers.
    status(&s.get(PODS, Some(&s.admin(1))), 200, "before the partition")?;

    if polite {
        s.close_proxied(1);
    } else {
        s.partition(1);
    }
    let partitioned_at = Instant::now();
    // kas still holds the connection: the request goes out on it and nothing comes back.
    let started = Instant::now();
    let reply = s.get(PODS, Some(&s.admin(1)));
    status(&reply, 504, "a request into the partition")?;
    within(
        started.elapsed(),
        RESPONSE_TIMEOUT,
        "a request into the partition",
    )?;

    // Keepalive declares the connection dead: not before the idle timeout, not much after.
    eventually("kas to see agent 1 gone", || {
        (!s.kas().connected_agents().contains(&1)).then_some(())
    });
    let noticed = partitioned_at.elapsed();
    if noticed + Duration::from_millis(300) < IDLE || noticed >= IDLE + MARGIN {
        return Err(format!(
            "kas noticed the dead connection after {noticed:?} (idle timeout {IDLE:?})"
        ));
    }

    // agentk cannot get through either (its new connections fall into the hole): requests wait
    // for the routing deadline.
    for _ in 0..2 {
        let started = Instant::now();
        let reply = s.get(PODS, Some(&s.admin(1)));
        status(&reply, 503, "a request while the path is down")?;
        within(
            started.elapsed(),
            DEADLINE,
            "a request while the path is down",
        )?;
    }
    // The other agent never noticed.
    status(&s.get(PODS, Some(&s.admin(2))), 200, "the other agent")?;

    // The path heals: agentk's handshake timeout, then its back-off (capped at 2 s), then a new
    // connection that gets through.
    s.heal(1);
    let healed_at = Instant::now();
    if !s.kas().wait_for_agents(&[1], GUARD) {
        return Err("agent 1 did not come back after the partition healed".into());
    }
    let back = healed_at.elapsed();
    if back >= IDLE + Duration::from_secs(2) + MARGIN {
        return Err(format!("agent 1 came back {back:?} after the heal"));
    }
    status(&s.get(PODS, Some(&s.admin(1))), 200, "after the heal")
}

/// A silent partition between the real agentk and kas (a black-hole proxy: octets vanish, nothing
/// closes): kas cannot know at once, so a request is routed onto the dead connection and answered
/// 504 at the response timeout; keepalive then declares the connection dead on both sides; while the
/// path is down, requests wait for the routing deadline and get 503; once it heals, agentk is back by
/// itself and requests succeed. Every deadline is checked from both sides.
#[test]
fn a_silent_partition_ends_in_504_then_503_within_bounds_and_heals() {
    if let Err(e) = partition_story(false) {
        panic!("{e}");
    }
}

/// The partition test can tell a silent partition from a polite one: if the "partition" closes the
/// connections (as killing agentk does), kas knows at once and the story fails.
#[test]
fn a_polite_close_fails_the_partition_checks() {
    let e = partition_story(true).expect_err("a polite close must not pass as a silent partition");
    eprintln!("caught: {e}");
    assert!(e.contains("partition") || e.contains("noticed"), "{e}");
}

/// The deadline checks have an upper bound that bites: a kas that waits 4 s where 500 ms were
/// configured (simulated by configuring 4 s and checking against 500 ms) fails them.
#[test]
fn a_deadline_kept_too_long_fails_the_check() {
    let s = Stack::start(StackOptions {
        agents: vec![1],
        pending_request_deadline: DEADLINE + Duration::from_millis(3500),
        response_timeout: RESPONSE_TIMEOUT,
        ..StackOptions::default()
    });
    let started = Instant::now();
    let reply = s.get(PODS, Some(&s.admin(3)));
    let waited = started.elapsed();
    assert_status(&reply, 503, "ServiceUnavailable");
    let e = within(waited, DEADLINE, "agent 3").expect_err("waiting 4 s for a 500 ms deadline");
    eprintln!("caught: {e}");
    assert!(e.contains("deadline is 500ms"), "{e}");
}
