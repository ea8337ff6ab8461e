//! Views, events and cache listings end to end: a real agentk (on tokio) watching the simulated
//! Kubernetes API server, connected to kas over TLS; the HTTP API read with plain HTTP clients.
//! A fake agent (runtime-smol) checks the views stream's protocol handling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures_lite::AsyncWriteExt as _;
use protocol::ErrorCode;
use protocol::cache::proto;
use protocol::proto::RequestHead;
use support::live::{AGENT, Live, SseClient, row_value};
use support::{Env, GUARD, agent_meta, eventually, get, try_connect};

#[test]
fn views_equal_the_truth_and_follow_the_cluster() {
    let live = Live::start(true);
    let v = live.wait_views_equal_truth("kas's views equal the cluster");
    let nodes = live.api.store().list("v1", "Node", None).len() as i64;
    assert_eq!(nodes, 2);
    assert_eq!(row_value(&v["views"], "nodes", &[], "count"), nodes);
    assert_eq!(row_value(&v["views"], "nodes", &[], "ready"), nodes);
    assert!(v["age_seconds"].is_number(), "{v}");
    assert!(v["epoch"].is_string(), "{v}");
    let running = row_value(
        &v["views"],
        "pods_by_phase",
        &[("namespace", "default"), ("phase", "Running")],
        "count",
    );

    live.api.store().add_node("added-node").unwrap();
    live.api.store().add_pod("default", "added-pod").unwrap();
    let v = live.wait_views_equal_truth("the views show the added node and pod");
    assert_eq!(row_value(&v["views"], "nodes", &[], "count"), nodes + 1);
    assert_eq!(
        row_value(
            &v["views"],
            "pods_by_phase",
            &[("namespace", "default"), ("phase", "Running")],
            "count"
        ),
        running + 1
    );

    // One view; unknown views and agents.
    let one = get(&live.url("/api/v1/agents/1/views/nodes"), None);
    assert_eq!(one.status, 200, "{}", one.body);
    let one = one.json();
    assert_eq!(one["view"]["name"], "nodes");
    assert_eq!(one["view"]["rows"][0]["count"], nodes + 1);
    assert_eq!(one["connected"], true);
    assert_eq!(
        get(&live.url("/api/v1/agents/1/views/nope"), None).status,
        404
    );
    assert_eq!(get(&live.url("/api/v1/agents/99/views"), None).status, 404);
    assert_eq!(
        get(&live.url("/api/v1/agents/99/views/nodes"), None).status,
        404
    );
    // Agent 2 exists (agents file) but never sent views.
    let empty = get(&live.url("/api/v1/agents/2/views"), None);
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json()["views"], serde_json::json!({}));
    assert_eq!(empty.json()["connected"], false);
    live.shutdown();
}

#[test]
fn views_stay_readable_while_the_agent_is_away_and_resync_when_it_returns() {
    let mut live = Live::start(true);
    live.wait_views_equal_truth("in sync");
    let mut events = SseClient::open(&live.kas, "/api/v1/agents/1/events", None);
    live.stop_agent();
    events.wait_for("agent disconnected", |e| {
        e.event == "agent" && e.data["connected"] == false && e.data["agent_id"] == AGENT
    });
    let away = eventually("the views marked disconnected", || {
        let v = live.views_json();
        (v["connected"] == false).then_some(v)
    });
    assert_eq!(
        away["views"],
        serde_json::to_value(live.truth()).unwrap(),
        "the last views are kept"
    );
    // The cluster changes while the agent is away; it comes back and kas catches up.
    live.api.store().add_node("while-away").unwrap();
    live.start_agent();
    events.wait_for("agent connected", |e| {
        e.event == "agent" && e.data["connected"] == true
    });
    let v = live.wait_views_equal_truth("caught up after reconnecting");
    assert_eq!(row_value(&v["views"], "nodes", &[], "count"), 3);
    live.shutdown();
}

#[test]
fn event_streams_carry_object_and_view_events() {
    let live = Live::start(true);
    live.wait_views_equal_truth("in sync");
    let mut all = SseClient::open(&live.kas, "/api/v1/events", None);
    let mut one = SseClient::open(&live.kas, "/api/v1/agents/1/events", None);
    let text = support::metrics(&live.kas);
    assert_eq!(
        support::metric(&text, "kas_event_subscribers"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(support::metric(&text, "kas_views_agents"), Some(1.0));
    let created = live.api.store().add_pod("default", "sse-pod").unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap().to_owned();
    for client in [&mut all, &mut one] {
        let e = client.wait_for("an object event for the added pod", |e| {
            e.event == "object" && e.data["name"] == "sse-pod" && e.data["type"] == "Added"
        });
        assert_eq!(e.data["agent_id"], AGENT);
        assert_eq!(e.data["kind"], "Pod");
        assert_eq!(e.data["version"], "v1");
        assert_eq!(e.data["namespace"], "default");
        assert_eq!(e.data["uid"], uid.as_str());
        assert!(e.id.is_some());
    }
    let e = all.wait_for("a view event for pods_by_phase", |e| {
        e.event == "view" && e.data["view"] == "pods_by_phase"
    });
    assert_eq!(e.data["agent_id"], AGENT);
    let rows = e.data["changes"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["key"]["namespace"] == "default" && r["values"]["count"].is_number()),
        "{e:?}"
    );
    live.api.store().delete_pod("default", "sse-pod").unwrap();
    one.wait_for("a Deleted event", |e| {
        e.event == "object" && e.data["name"] == "sse-pod" && e.data["type"] == "Deleted"
    });
    live.shutdown();
}

#[test]
fn views_and_events_need_a_token_unless_public() {
    let live = Live::start(false);
    let url = live.url("/api/v1/agents/1/views");
    assert_eq!(get(&url, None).status, 401);
    assert_eq!(
        get(
            &url,
            Some(&format!("Bearer pat:1:{}", live.env.alice_token))
        )
        .status,
        200
    );
    let alice_on_2 = format!("Bearer pat:2:{}", live.env.alice_token);
    assert_eq!(
        get(&live.url("/api/v1/agents/2/views"), Some(&alice_on_2)).status,
        403
    );
    assert_eq!(get(&live.url("/api/v1/events"), None).status, 401);
    assert_eq!(get(&live.url("/api/v1/agents/1/events"), None).status, 401);
    // The dashboard page itself holds no data: always served.
    let page = get(&live.url("/"), None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/ui/dashboard.js"));
    // alice (agent 1 only) on the all-agents stream sees agent 1's events.
    let alice = format!("Bearer pat:1:{}", live.env.alice_token);
    live.wait_views_equal_truth("in sync");
    let mut events = SseClient::open(&live.kas, "/api/v1/events", Some(&alice));
    live.api.store().add_pod("default", "private-pod").unwrap();
    events.wait_for("alice sees agent 1's pod", |e| {
        e.event == "object" && e.data["name"] == "private-pod"
    });
    live.shutdown();
}

#[test]
fn the_cache_route_lists_objects_from_agentks_store() {
    let live = Live::start(true);
    live.wait_views_equal_truth("in sync");
    let admin = live.env.admin_bearer(AGENT);
    let names = |path: &str| -> Vec<String> {
        let r = get(&live.url(path), Some(&admin));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        assert!(v["kind"].as_str().unwrap().ends_with("List"), "{v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let truth = |ns: Option<&str>| -> Vec<String> {
        let mut n: Vec<String> = live
            .api
            .store()
            .list("v1", "Pod", ns)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    let mut listed = names("/api/v1/agents/1/cache/pods?namespace=default");
    listed.sort();
    assert_eq!(listed, truth(Some("default")));
    assert!(!listed.is_empty());

    live.api.store().add_pod("default", "cached-pod").unwrap();
    let selected = eventually("the added pod in the cache", || {
        let n = names("/api/v1/agents/1/cache/v1/Pod?labelSelector=app%3Dcached-pod");
        (!n.is_empty()).then_some(n)
    });
    assert_eq!(selected, vec!["cached-pod".to_owned()]);
    let mut all = names("/api/v1/agents/1/cache/Pod");
    all.sort();
    assert_eq!(all, truth(None));

    // agentk's statuses pass through; kas's own checks come first.
    let status = |path: &str, auth: Option<&str>| get(&live.url(path), auth).status;
    assert_eq!(
        status("/api/v1/agents/1/cache/nosuchkind", Some(&admin)),
        404
    );
    assert_eq!(
        status(
            "/api/v1/agents/1/cache/pods?labelSelector=%3D%3D%3D",
            Some(&admin)
        ),
        400
    );
    assert_eq!(status("/api/v1/agents/1/cache/pods", None), 401);
    assert_eq!(status("/api/v1/agents/1/cache/a/b/c/d", Some(&admin)), 400);
    live.shutdown();
}

/// Waits for `f`, at most [`GUARD`].
async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::or(f, async {
        smol::Timer::after(GUARD).await;
        panic!("hang guard")
    })
    .await
}

/// A fake agent's views stream: the first message is kas's resync request; a bad message gets the
/// stream reset with PROTOCOL; the mirror is disconnected only when the last stream ends.
#[test]
fn the_views_stream_enforces_the_protocol() {
    let env = Env::new();
    let kas = env.start();
    let first = try_connect(&env, kas.agent_addr(), env.token(3), agent_meta("1.0")).unwrap();
    let second = try_connect(&env, kas.agent_addr(), env.token(3), agent_meta("1.0")).unwrap();
    let head = |method: &str| RequestHead {
        service: protocol::service::VIEWS.into(),
        method: method.into(),
        path: "/".into(),
        headers: vec![],
        timeout_ms: 0,
        impersonation: None,
    };
    smol::block_on(async {
        // Wrong method: 400.
        let bad = first.open(head("GET"), true).unwrap();
        assert_eq!(guard(bad.response()).await.unwrap().status, 400);
        // Other services agents may not open: 404.
        let other = first
            .open(
                RequestHead {
                    service: "k8s-api".into(),
                    ..head("GET")
                },
                true,
            )
            .unwrap();
        assert_eq!(guard(other.response()).await.unwrap().status, 404);

        let a = first.open(head("SYNC"), false).unwrap();
        assert_eq!(guard(a.response()).await.unwrap().status, 200);
        let chunk = guard(async { a.read_chunk(1024).await.unwrap().unwrap() }).await;
        let mut decoder = protocol::cache::MessageDecoder::default();
        decoder.push(&chunk);
        let msg = decoder.next_message().unwrap().unwrap();
        let request = protocol::cache::decode_server_message(&msg).unwrap();
        assert!(
            matches!(request.msg, Some(proto::server_to_agent::Msg::Resync(ref r)) if r.epoch == 0),
            "{request:?}"
        );
        assert!(kas.mirrors().is_connected(3));

        // A second stream (the GOAWAY handover's replacement) opens before the first ends.
        let b = second.open(head("SYNC"), false).unwrap();
        assert_eq!(guard(b.response()).await.unwrap().status, 200);

        // Garbage on the first: reset with PROTOCOL.
        let mut w: &runtime_smol::Stream = &a;
        w.write_all(&[0xff; 12]).await.unwrap();
        let err = guard(async {
            // Bounded: the resync request may still be unread; then the reset.
            for _ in 0..10 {
                match a.read_chunk(1024).await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Some(e),
                    None => return None,
                }
            }
            None
        })
        .await;
        assert!(
            matches!(
                err,
                Some(runtime_smol::Error::StreamReset {
                    code: ErrorCode::Protocol,
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(kas.mirrors().is_connected(3), "the second stream is open");
        // The agent finishes the second stream: kas finishes its side too; the mirror is
        // disconnected.
        b.finish().unwrap();
        let end = guard(async {
            for _ in 0..10 {
                if b.read_chunk(1024).await.is_none() {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(end, "kas finished its side");
    });
    eventually("the mirror is disconnected", || {
        (!kas.mirrors().is_connected(3)).then_some(())
    });
    assert!(kas.mirrors().has(3));
    kas.shutdown();
}
