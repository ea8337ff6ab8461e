//! The HTTP API's tunnel routes against a real kas on 127.0.0.1 and a fake agent (runtime-smol's
//! agent API) answering with canned behaviour: proxying, streaming, bodies, and the status mapping.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read as _;
use std::time::Duration;

use support::{
    Env, FakeAgent, Script, eventually, get, http, metric, metrics, post, raw_get, read_chunk,
    reply,
};

#[test]
fn proxied_get_returns_the_agents_answer_with_headers() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);

    let url = format!(
        "{}/api/v1/namespaces/default/pods?labelSelector=app%3Dweb&limit=5",
        kas.k8s_proxy_url()
    );
    let reply = get(&url, Some(&env.admin_bearer(1)));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-agent"), Some("agent-1"));
    let v = reply.json();
    assert_eq!(v["service"], "k8s-api");
    assert_eq!(v["method"], "GET");
    // The prefix is stripped; the query is forwarded untouched.
    assert_eq!(
        v["path"],
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb&limit=5"
    );
    // Credentials and hop-by-hop headers never cross the tunnel.
    let headers: Vec<&str> = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert!(!headers.contains(&"authorization"), "{headers:?}");
    assert!(!headers.contains(&"host"), "{headers:?}");
    let seen = script.wait_for("request");
    assert_eq!(seen.head.service, "k8s-api");
    kas.shutdown();
}

#[test]
fn request_body_reaches_the_agent() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);

    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps/echo",
        kas.k8s_proxy_url()
    );
    let reply = post(&url, &env.admin_bearer(1), &body);
    assert_eq!(reply.status, 201);
    let seen = script.wait_for("request");
    assert_eq!(seen.head.method, "POST");
    assert_eq!(seen.body, body, "the agent received the whole body");
    assert!(
        seen.head
            .headers
            .iter()
            .any(|h| h.name == "content-type" && &h.value[..] == b"application/json")
    );
    assert_eq!(reply.body.len(), body.len());
    kas.shutdown();
}

#[test]
fn streamed_chunks_reach_the_client_before_the_stream_ends() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);

    let (head, mut reader) = raw_get(
        kas.api_addr(),
        "/k8s-proxy/api/v1/pods/watch?watch=true",
        &env.admin_bearer(1),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    // The agent still holds the stream open (it waits for release): the first event must arrive now.
    let first = read_chunk(&mut reader).expect("first chunk");
    assert_eq!(first, b"{\"type\":\"ADDED\"}\n");
    script.release();
    let second = read_chunk(&mut reader).expect("second chunk");
    assert_eq!(second, b"{\"type\":\"MODIFIED\"}\n");
    assert!(
        read_chunk(&mut reader).is_none(),
        "body ends after the agent finished"
    );
    kas.shutdown();
}

#[test]
fn client_disconnect_resets_the_tunnel_stream() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);

    // An agent that keeps writing notices the reset when its write fails.
    let (head, mut reader) = raw_get(kas.api_addr(), "/k8s-proxy/ticks", &env.admin_bearer(1));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_chunk(&mut reader).as_deref(), Some(&b"tick\n"[..]));
    drop(reader);
    script.wait_for("reset");

    // A quiet stream (a watch with no events) is reset too: kas's open stream count drops to 0.
    let (head, mut reader) = raw_get(kas.api_addr(), "/k8s-proxy/quiet", &env.admin_bearer(1));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_chunk(&mut reader).as_deref(), Some(&b"first\n"[..]));
    let open = metric(&metrics(&kas), "kas_tunnel_open_streams");
    assert_eq!(open, Some(1.0));
    drop(reader);
    eventually("the quiet stream to be reset", || {
        (metric(&metrics(&kas), "kas_tunnel_open_streams") == Some(0.0)).then_some(())
    });
    script.release();
    kas.shutdown();
}

#[test]
fn agent_failure_after_the_head_truncates_the_body() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);

    let (head, mut reader) = raw_get(
        kas.api_addr(),
        "/k8s-proxy/fail-midway",
        &env.admin_bearer(1),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_chunk(&mut reader).as_deref(), Some(&b"partial"[..]));
    // The agent now reports a failure in its trailer: the connection is cut without the last chunk.
    script.release();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("0\r\n\r\n"),
        "a failed body must not end cleanly: {rest:?}"
    );
    kas.shutdown();
}

#[test]
fn bad_or_missing_user_token_is_401() {
    let env = Env::new();
    let kas = env.start();
    let url = format!("{}/api/v1/pods", kas.k8s_proxy_url());
    for auth in [
        None,
        Some("Bearer pat:1:wrong-token".to_owned()),
        Some(format!("Basic {}", env.admin_token)),
        Some(format!("Bearer {}", env.admin_token)),
    ] {
        let reply = get(&url, auth.as_deref());
        assert_eq!(reply.status, 401, "{auth:?}: {}", reply.body);
        let v = reply.json();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["reason"], "Unauthorized");
        assert_eq!(v["code"], 401);
        assert!(!reply.body.contains(&env.admin_token), "token echoed");
    }
    kas.shutdown();
}

#[test]
fn user_not_allowed_is_403_and_unknown_agent_is_404() {
    let env = Env::new();
    let kas = env.start();
    let url = format!("{}/api/v1/pods", kas.k8s_proxy_url());
    // alice may reach agent 1 only.
    let reply = get(&url, Some(&format!("Bearer pat:2:{}", env.alice_token)));
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["reason"], "Forbidden");
    // admin may reach every agent, but agent 99 is not in the agents file.
    let reply = get(&url, Some(&env.admin_bearer(99)));
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.json()["reason"], "NotFound");
    assert_eq!(reply.json()["kind"], "Status");
    // The service proxy uses the URL's agent, with the same answers (plain JSON errors).
    let svc = format!("{}/api/v1/agents/2/proxy/default/web:80/", kas.api_url());
    let reply = get(&svc, Some(&format!("Bearer pat:1:{}", env.alice_token)));
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["code"], 403);
    kas.shutdown();
}

#[test]
fn agent_never_connects_is_503_at_the_deadline() {
    let mut env = Env::new();
    env.config.routing.pending_request_deadline = Duration::from_millis(300);
    let kas = env.start();
    let reply = get(
        &format!("{}/api/v1/pods", kas.k8s_proxy_url()),
        Some(&env.admin_bearer(2)),
    );
    assert_eq!(reply.status, 503, "{}", reply.body);
    let v = reply.json();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "ServiceUnavailable");
    assert!(
        v["message"].as_str().unwrap().contains("not connected"),
        "{v}"
    );
    assert_eq!(
        metric(
            &metrics(&kas),
            "kas_http_requests_total{route=\"k8s-proxy\",code=\"503\"}"
        ),
        Some(1.0)
    );
    kas.shutdown();
}

#[test]
fn late_answer_is_504() {
    let mut env = Env::new();
    env.config.routing.response_timeout = Duration::from_millis(300);
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);
    let reply = get(
        &format!("{}/slow", kas.k8s_proxy_url()),
        Some(&env.admin_bearer(1)),
    );
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert_eq!(reply.json()["reason"], "Timeout");
    script.wait_for("request");
    script.release();
    kas.shutdown();
}

/// The response timer is kept by the HTTP connection between its requests: one answered in time
/// does not use it up, and the next request on that connection still times out.
#[test]
fn late_answer_after_a_prompt_one_on_the_same_connection_is_504() {
    let mut env = Env::new();
    env.config.routing.response_timeout = Duration::from_millis(300);
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);
    // One client: ureq keeps the connection alive between the requests.
    let client = http();
    let bearer = env.admin_bearer(1);
    let prompt = client
        .get(format!("{}/api/v1/namespaces", kas.k8s_proxy_url()))
        .header("Authorization", &bearer)
        .call()
        .unwrap();
    assert_eq!(prompt.status(), 200);
    let late = reply(
        client
            .get(format!("{}/slow", kas.k8s_proxy_url()))
            .header("Authorization", &bearer)
            .call()
            .unwrap(),
    );
    assert_eq!(late.status, 504, "{}", late.body);
    assert_eq!(late.json()["reason"], "Timeout");
    script.release();
    kas.shutdown();
}

#[test]
fn agent_connection_dropped_mid_request_is_502() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);
    let reply = get(
        &format!("{}/drop", kas.k8s_proxy_url()),
        Some(&env.admin_bearer(1)),
    );
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.json()["kind"], "Status");
    // The dropped connection is forgotten.
    eventually("the connection to be removed", || {
        kas.connected_agents().is_empty().then_some(())
    });
    kas.shutdown();
}

#[test]
fn request_waiting_for_an_agent_succeeds_when_it_connects() {
    let env = Env::new();
    let kas = env.start();
    let url = format!("{}/api/v1/namespaces", kas.k8s_proxy_url());
    let bearer = env.admin_bearer(3);
    let client = std::thread::spawn(move || get(&url, Some(&bearer)));
    eventually("the request to wait for agent 3", || {
        (metric(&metrics(&kas), "kas_pending_requests") == Some(1.0)).then_some(())
    });
    let script = Script::new("agent-3");
    let _agent = FakeAgent::connect(&env, &kas, 3, &script);
    let reply = client.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["agent"], "agent-3");
    kas.shutdown();
}

#[test]
fn service_proxy_reaches_the_agent_as_service_proxy() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);
    let url = format!(
        "{}/api/v1/agents/1/proxy/monitoring/prometheus:9090/api/v1/query?query=up",
        kas.api_url()
    );
    let reply = get(&url, Some(&env.admin_bearer(1)));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json();
    assert_eq!(v["service"], "service-proxy");
    assert_eq!(
        v["path"],
        "/monitoring/prometheus:9090/api/v1/query?query=up"
    );
    let bad = get(
        &format!(
            "{}/api/v1/agents/1/proxy/monitoring/prometheus",
            kas.api_url()
        ),
        Some(&env.admin_bearer(1)),
    );
    assert_eq!(bad.status, 400);
    kas.shutdown();
}

#[test]
fn goaway_from_the_agent_moves_requests_to_its_new_connection() {
    let env = Env::new();
    let kas = env.start();
    let old_script = Script::new("old");
    let old = FakeAgent::connect(&env, &kas, 1, &old_script);
    let url = format!("{}/api/v1/pods", kas.k8s_proxy_url());
    assert_eq!(get(&url, Some(&env.admin_bearer(1))).json()["agent"], "old");

    // A replacement connects, then the old connection says goodbye (as agentk does on goaway).
    let new_script = Script::new("new");
    let _new = FakeAgent::connect(&env, &kas, 1, &new_script);
    old.conn.start_close(Duration::from_secs(5));
    for _ in 0..5 {
        let reply = get(&url, Some(&env.admin_bearer(1)));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["agent"], "new");
    }
    kas.shutdown();
}
