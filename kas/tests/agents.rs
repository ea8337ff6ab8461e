//! The agent side of a real kas on 127.0.0.1: authentication and REJECT codes, the agent listing,
//! health and metrics, and graceful shutdown (GOAWAY, in-flight requests finish).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use protocol::CloseReason;
use protocol::RejectCode;
use support::{
    Env, FakeAgent, GUARD, Script, agent_meta, eventually, get, metric, metrics, try_connect,
};

#[test]
fn bad_agent_token_is_rejected_and_failures_are_rate_limited() {
    let mut env = Env::new();
    env.config.rate_limits.agent_auth_failures.max_failures = 2;
    let kas = env.start();
    for _ in 0..2 {
        match try_connect(&env, kas.agent_addr(), "not-a-valid-token", agent_meta("1")) {
            Err(runtime_smol::Error::Refused {
                code, retry_after, ..
            }) => {
                assert_eq!(code, RejectCode::Unauthenticated);
                assert_eq!(retry_after, None);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // The token failed twice from this address: it is refused now, with a back-off...
    match try_connect(&env, kas.agent_addr(), "not-a-valid-token", agent_meta("1")) {
        Err(runtime_smol::Error::Refused {
            code, retry_after, ..
        }) => {
            assert_eq!(code, RejectCode::RateLimited);
            assert!(retry_after.is_some_and(|d| d > Duration::ZERO));
        }
        other => panic!("expected rate limiting, got {other:?}"),
    }
    // ...while a valid token from the same address is never locked out by another's failures.
    let good = try_connect(&env, kas.agent_addr(), env.token(1), agent_meta("1"))
        .expect("a valid token connects");
    let text = metrics(&kas);
    assert_eq!(
        metric(
            &text,
            "kas_agent_auth_failures_total{reason=\"unauthenticated\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "kas_agent_auth_failures_total{reason=\"rate_limited\"}"
        ),
        Some(1.0)
    );
    assert!(kas.wait_for_agents(&[1], Duration::from_secs(30)));
    drop(good);
    kas.shutdown();
}

#[test]
fn agents_listing_shows_connection_metadata() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _a = FakeAgent::connect(&env, &kas, 1, &script);
    let _b = FakeAgent::connect(&env, &kas, 1, &script);

    let admin = env.admin_bearer(1);
    // The agent has its ACCEPT a moment before kas lists the connection: wait for both.
    let list = eventually("both connections of agent 1 listed", || {
        let reply = get(&format!("{}/api/v1/agents", kas.api_url()), Some(&admin));
        assert_eq!(reply.status, 200);
        let list = reply.json();
        (list[0]["connections"] == 2).then_some(list)
    });
    let agents = list.as_array().expect("a JSON array");
    let ids: Vec<u64> = agents.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3], "agents of the agents file, sorted");
    let one = &agents[0];
    assert_eq!(one["name"], "agent-1");
    assert_eq!(one["connected"], true);
    assert_eq!(one["connections"], 2);
    assert_eq!(one["version"], "9.9.9");
    assert_eq!(one["pod"], "gitlab-agent/agentk-abc");
    assert_eq!(one["node"], "node-1");
    assert_eq!(one["open_streams"], 0);
    let since = one["connected_since"].as_str().expect("connected_since");
    assert_eq!(since.len(), 20, "{since}");
    assert!(
        since.ends_with('Z') && since.as_bytes()[10] == b'T',
        "{since}"
    );
    assert_eq!(one["tunnels"].as_array().unwrap().len(), 2);
    let two = &agents[1];
    assert_eq!(two["connected"], false);
    assert_eq!(two["connections"], 0);
    assert!(two["version"].is_null() && two["connected_since"].is_null());

    let single = get(&format!("{}/api/v1/agents/1", kas.api_url()), Some(&admin));
    assert_eq!(single.json()["connections"], 2);
    let missing = get(
        &format!("{}/api/v1/agents/42", kas.api_url()),
        Some(&env.admin_bearer(42)),
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["reason"], "NotFound");
    kas.shutdown();
}

/// Checks every line of a Prometheus text exposition; returns the samples.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap();
            let name = parts.next().expect("metric name");
            assert!(matches!(keyword, "HELP" | "TYPE"), "{line}");
            if keyword == "TYPE" {
                let kind = parts.next().expect("type");
                assert!(
                    matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ),
                    "{line}"
                );
                assert!(typed.insert(name.to_owned()), "duplicate TYPE for {name}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(!v.trim_end_matches('"').contains('"'));
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line:?}");
        samples.push((series.to_owned(), value));
    }
    samples
}

#[test]
fn health_readiness_and_metrics() {
    let env = Env::new();
    let kas = env.start();
    assert_eq!(get(&format!("{}/healthz", kas.api_url()), None).status, 200);
    let ready = get(&format!("{}/readyz", kas.api_url()), None);
    assert_eq!(ready.status, 200, "{}", ready.body);
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);
    for _ in 0..3 {
        let r = get(
            &format!("{}/api/v1/pods", kas.k8s_proxy_url()),
            Some(&env.admin_bearer(1)),
        );
        assert_eq!(r.status, 200);
    }
    let _ = get(
        &format!("{}/api/v1/pods", kas.k8s_proxy_url()),
        Some("Bearer pat:1:bad"),
    );

    let reply = get(&format!("{}/metrics", kas.api_url()), None);
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let samples = parse_prometheus(&reply.body);
    let value = |s: &str| {
        samples
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {s} in\n{}", reply.body))
    };
    assert_eq!(
        value("kas_http_requests_total{route=\"k8s-proxy\",code=\"200\"}"),
        3.0
    );
    assert_eq!(
        value("kas_http_requests_total{route=\"k8s-proxy\",code=\"401\"}"),
        1.0
    );
    assert_eq!(value("kas_agents_connected"), 1.0);
    assert_eq!(value("kas_agent_connections"), 1.0);
    assert_eq!(
        value("kas_user_auth_failures_total{reason=\"unauthenticated\"}"),
        1.0
    );
    assert!(value("kas_proxied_bytes_total{direction=\"out\"}") > 0.0);
    assert_eq!(
        value("kas_http_request_duration_seconds_count{route=\"k8s-proxy\"}"),
        4.0
    );
    // Histogram buckets are cumulative and end with +Inf = count.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, _)| {
            n.starts_with("kas_http_request_duration_seconds_bucket{route=\"k8s-proxy\"")
        })
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 5);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last().copied(), Some(4.0));
    kas.shutdown();
}

#[test]
fn readiness_fails_when_the_agents_file_becomes_unusable() {
    let env = Env::new();
    let kas = env.start();
    let url = format!("{}/readyz", kas.api_url());
    assert_eq!(get(&url, None).status, 200);
    std::fs::write(env.dir.path().join("agents.yaml"), "agents: [broken\n").unwrap();
    let reply = eventually("readiness to fail", || {
        let r = get(&url, None);
        (r.status == 503).then_some(r)
    });
    assert!(
        reply.body.contains("authentication backend"),
        "{}",
        reply.body
    );
    // Liveness is unaffected.
    assert_eq!(get(&format!("{}/healthz", kas.api_url()), None).status, 200);
    kas.shutdown();
}

#[test]
fn shutdown_sends_goaway_and_lets_in_flight_requests_finish() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let agent = FakeAgent::connect(&env, &kas, 1, &script);

    let url = format!("{}/after-release", kas.k8s_proxy_url());
    let bearer = env.admin_bearer(1);
    let client = std::thread::spawn(move || get(&url, Some(&bearer)));
    script.wait_for("request");

    let stopping = std::thread::spawn(move || kas.shutdown_within(GUARD));
    // The agent learns that kas is going away while its request is still in flight.
    let drained = smol::block_on(futures_lite::future::or(
        async {
            agent.conn.handle().draining().await;
            true
        },
        async {
            smol::Timer::after(GUARD).await;
            false
        },
    ));
    assert!(drained, "goaway did not reach the agent within {GUARD:?}");
    script.release();
    let reply = client.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "released");
    let report = stopping.join().unwrap();
    assert_eq!(report.agent_connections, 1);
    assert!(report.is_clean(), "{report:?}");
    let reason = smol::block_on(agent.conn.closed());
    assert!(
        matches!(reason, CloseReason::Graceful),
        "connection ended {reason:?}"
    );
}
