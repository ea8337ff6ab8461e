//! Maximum connection age: kas retires every agent connection with GOAWAY once it is
//! `agent_listener.max_connection_age` old (±10 %), and agentk hands over to a new connection at
//! once, so a steady request loop through kas sees no failure while the connection is replaced
//! several times. Real kas, real agentk, the simulated API server; the loop is bounded in count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions, call};
use support::metric;

#[test]
fn aged_connections_are_replaced_without_a_failed_request() {
    let s = Stack::start_with(
        StackOptions {
            agents: vec![1],
            ..StackOptions::default()
        },
        |config| config.agent_listener.max_connection_age = Duration::from_secs(2),
    );
    let client = s.https();
    let url = format!("{}/api/v1/namespaces/default/pods", s.kas().k8s_proxy_url());
    let auth = s.admin(1);
    let accepted = |s: &Stack| {
        metric(&s.metrics(), "kas_agent_connections_accepted_total").unwrap_or_default()
    };
    let first = accepted(&s);
    let started = Instant::now();
    let mut failures = Vec::new();
    // 50 requests, 150 ms apart: about 7.5 s, three to four connection ages.
    for i in 0..50 {
        let reply = call(
            &client,
            "GET",
            &url,
            &[("Authorization", &auth)],
            Vec::new(),
        );
        if reply.status != 200 {
            failures.push((i, reply.status, reply.body));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let elapsed = started.elapsed();
    let replaced = accepted(&s) - first;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        replaced >= 2.0,
        "only {replaced} new connections in {elapsed:?} with a 2 s maximum age"
    );
    s.shutdown();
}
