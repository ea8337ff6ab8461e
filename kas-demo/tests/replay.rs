//! Record → replay round trip: a real kas with two real agentk records a known load (requests of
//! known sizes through `/k8s-proxy`, an agent that disconnects and comes back, views traffic) to a
//! traffic trace; the trace holds none of the secrets the load carried (tokens, user names, object
//! names, namespaces, query values, header values, addresses); the simulator then replays the file at
//! scale 1 and 10, and what it replays — agents, connects, requests by class, bytes — is the recording,
//! and ten times the recording. (In kas-demo because this crate may link kas, agentk and the
//! simulator at once.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kas/tests/support/e2e.rs"]
mod e2e;
#[path = "../../kas/tests/support/mod.rs"]
mod support;

use e2e::{Stack, StackOptions, call, pod_names};
use simulator::sim::replay::{ReplayPlan, Scale};
use traffic_trace::Trace;

/// Requests per agent of each kind (bounded load).
const LISTS: usize = 6;
const GETS: usize = 3;

#[test]
fn a_recording_replays_at_scale_1_and_10() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traffic.jsonl");
    let path = file.clone();
    let mut stack = Stack::start_with(
        StackOptions {
            agents: vec![1, 2],
            ..StackOptions::default()
        },
        move |config| config.recording.path = Some(path),
    );
    let client = stack.https();
    let base = stack.kas().k8s_proxy_url();
    let secret_query = "qs-secret-7f3a9c";
    let secret_header = "hdr-secret-5b2e81";
    // GET `path` through kas for the agent `bearer` names; the response body's length.
    let get = |path: &str, headers: &[(&str, &str)]| {
        let reply = call(
            &client,
            "GET",
            &format!("{base}{path}"),
            headers,
            Vec::new(),
        );
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.body.len() as u64
    };
    let mut response_bytes = 0u64;
    let mut pods = Vec::new();
    for agent in [1u64, 2] {
        let bearer = stack.admin(agent);
        let names = pod_names(stack.cluster(agent), Some("default"));
        assert!(!names.is_empty());
        for _ in 0..LISTS {
            response_bytes += get(
                &format!("/api/v1/namespaces/default/pods?access_token={secret_query}"),
                &[("Authorization", &bearer), ("X-Private", secret_header)],
            );
        }
        for _ in 0..GETS {
            response_bytes += get(
                &format!("/api/v1/namespaces/default/pods/{}", names[0]),
                &[("Authorization", &bearer)],
            );
        }
        pods.extend(names);
    }
    // Agent 2 goes away and comes back: one disconnect, one more connect. (A pause first: the
    // replay turns a disconnect into an agent restart, which fails what is still in flight.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    stack.stop_agent(2);
    stack.start_agent(2);
    assert!(stack.kas().wait_for_agents(&[1, 2], support::GUARD));
    response_bytes += get(
        "/api/v1/namespaces/default/pods",
        &[("Authorization", &stack.admin(2))],
    );
    let requests = 2 * (LISTS + GETS) + 1;

    // Every request's record is written when its response ended (just after the client read it).
    let trace = support::eventually("every request recorded", || {
        let trace = Trace::read(std::fs::read(&file).ok()?.as_slice()).ok()?;
        (trace.counts().requests.values().sum::<u64>() == requests as u64).then_some(trace)
    });
    let text = std::fs::read_to_string(&file).unwrap();
    let mut secrets = vec![
        stack.env.admin_token.clone(),
        stack.env.alice_token.clone(),
        stack.env.token(1).to_owned(),
        stack.env.token(2).to_owned(),
        secret_query.to_owned(),
        secret_header.to_owned(),
        "admin".to_owned(),
        "default".to_owned(),
        "127.0.0.1".to_owned(),
        "agentk-".to_owned(),
    ];
    secrets.extend(pods);
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{secret:?} is in the recording:\n{text}"
        );
    }

    let recorded = trace.counts();
    assert_eq!(recorded.agents, 2, "{recorded:?}");
    // Each agentk holds one connection to a single kas; agent 2's second one is still open.
    assert_eq!(recorded.connects, 3, "{recorded:?}");
    assert_eq!(recorded.disconnects, 1, "{recorded:?}");
    assert_eq!(
        recorded.requests.get("k8s-api GET pods list"),
        Some(&(2 * LISTS as u64 + 1)),
        "{recorded:?}"
    );
    assert_eq!(
        recorded.requests.get("k8s-api GET pods get"),
        Some(&(2 * GETS as u64)),
        "{recorded:?}"
    );
    assert_eq!(recorded.response_bytes, response_bytes);
    assert_eq!(recorded.request_bytes, 0);
    assert!(
        recorded.views_updates > 0,
        "no views traffic recorded: {recorded:?}"
    );
    stack.shutdown();
    // Kept for a look after a failure (`simulator run --replay …`).
    let _ = std::fs::copy(
        &file,
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-recording.jsonl"),
    );

    // Replay: scale 1 is the recording; scale 10 ten times it; same seed, same trace hash.
    let replay = |scale: u32, seed: u64| {
        let plan = ReplayPlan::load(&file, Scale(scale), seed).unwrap();
        let mut base = simulator::sim::Scenario {
            seed,
            ..simulator::sim::Scenario::default()
        };
        // The recording was made on loopback.
        base.kas.replicas = 1;
        base.network.latency = std::time::Duration::from_millis(1);
        base.network.jitter = std::time::Duration::ZERO;
        let scenario = plan.clone().scenario(base).unwrap();
        let outcome = simulator::sim::run(scenario, simulator::sim::RunOptions::default());
        assert!(
            outcome.violation.is_none(),
            "scale {scale}: {:?}",
            outcome.violation
        );
        (plan.report(&outcome), outcome.trace_hash)
    };
    for scale in [1u32, 10] {
        let (report, hash) = replay(scale, 5);
        let want = recorded.scaled(u64::from(scale));
        let p = &report.planned;
        assert_eq!(
            (p.agents, p.connects, p.disconnects),
            (want.agents, want.connects, want.disconnects),
            "scale {scale}: {}",
            report.summary()
        );
        assert_eq!(p.requests, want.requests, "scale {scale}");
        assert_eq!(
            (p.request_bytes, p.response_bytes),
            (want.request_bytes, want.response_bytes),
            "scale {scale}"
        );
        // What the simulated world did with it.
        assert_eq!(report.simulated_agents, want.agents, "{}", report.summary());
        assert_eq!(
            report.simulated_connects,
            want.connects,
            "{}",
            report.summary()
        );
        assert_eq!(
            report.simulated_restarts,
            want.disconnects,
            "{}",
            report.summary()
        );
        let total: u64 = want.requests.values().sum();
        assert_eq!(report.simulated_requests, total, "{}", report.summary());
        assert_eq!(report.simulated_ok, total, "{}", report.summary());
        let (_, again) = replay(scale, 5);
        assert_eq!(
            hash, again,
            "scale {scale}: same file and seed, another trace hash"
        );
    }
}
