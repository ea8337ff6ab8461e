//! The informer cache's views and object changes pushed to a fake kas running the real
//! `protocol::cache::Mirror`, against the simulated API server (fake kas ⇄ agentk ⇄ API server).

mod common;

use common::*;
use protocol::ErrorCode;
use protocol::cache::{ChangeType, ResourceKind};
use sim_apiserver::PodPhase;
use tunnel_tls::ThrowawayPki;

fn nodes(api: &sim_apiserver::RunningApiServer) -> i64 {
    api.store().list("v1", "Node", None).len() as i64
}

fn pods_in_phase(api: &sim_apiserver::RunningApiServer, ns: &str, phase: PodPhase) -> i64 {
    api.store()
        .list("v1", "Pod", Some(ns))
        .iter()
        .filter(|p| PodPhase::of(p) == phase)
        .count() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_follows_the_cluster() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(cache_agent_config(&pki, kas.addr, &c.kubeconfig));
    let conn = kas.next_connection().await;
    assert_eq!(
        conn.meta.capabilities,
        vec![
            "k8s-api",
            "service-proxy",
            "config",
            "gitops",
            "cache",
            "views"
        ]
    );
    let state = SharedMirror::default();
    let _kas_side = serve_views(conn.connection.clone(), state.clone());

    eventually("the mirror equals the API server's truth", || {
        mirror_is_truth(&state, &c.api)
    })
    .await;
    let v = mirror_views(&state);
    let initial_nodes = nodes(&c.api);
    assert_eq!(initial_nodes, 2, "the test cluster starts with two nodes");
    assert_eq!(view_value(&v, "nodes", &[], "count"), initial_nodes);
    assert_eq!(view_value(&v, "nodes", &[], "ready"), initial_nodes);
    let running = pods_in_phase(&c.api, "default", PodPhase::Running);
    assert_eq!(
        view_value(&v, "pods_by_phase", &["default", "Running"], "count"),
        running
    );
    {
        let s = state.lock().expect("mirror lock");
        assert!(
            matches!(s.view_messages(1).first(), Some(Received::Snapshot { .. })),
            "a mirror without state gets a snapshot first: {:?}",
            s.view_messages(1)
        );
        assert_eq!(s.resyncs_needed, 0);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }

    // The cluster changes: the views follow.
    c.api.store().add_node("added-node").expect("add node");
    c.api
        .store()
        .add_pod("default", "added-pod")
        .expect("add pod");
    eventually("the mirror shows the added node and pod", || {
        let v = mirror_views(&state);
        view_value(&v, "nodes", &[], "count") == initial_nodes + 1
            && view_value(&v, "pods_by_phase", &["default", "Running"], "count") == running + 1
    })
    .await;
    eventually("the mirror equals the truth again", || {
        mirror_is_truth(&state, &c.api)
    })
    .await;

    c.api
        .store()
        .set_pod_phase("default", "added-pod", PodPhase::Failed)
        .expect("fail pod");
    eventually("the failed pod moves between phase rows", || {
        let v = mirror_views(&state);
        view_value(&v, "pods_by_phase", &["default", "Failed"], "count")
            == pods_in_phase(&c.api, "default", PodPhase::Failed)
            && view_value(&v, "pods_by_phase", &["default", "Running"], "count") == running
    })
    .await;
    c.api
        .store()
        .delete_pod("default", "added-pod")
        .expect("delete pod");
    eventually("the deleted pod's row disappears", || {
        let v = mirror_views(&state);
        view_value(&v, "pods_by_phase", &["default", "Failed"], "count") == 0
            && mirror_is_truth(&state, &c.api)
    })
    .await;
    {
        let s = state.lock().expect("mirror lock");
        assert_eq!(s.streams, 1, "one views stream per connection");
        assert_eq!(s.resyncs_needed, 0, "updates arrived in order");
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_changes_arrive_for_an_added_pod() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(cache_agent_config(&pki, kas.addr, &c.kubeconfig));
    let conn = kas.next_connection().await;
    let state = SharedMirror::default();
    let _kas_side = serve_views(conn.connection.clone(), state.clone());
    eventually("the mirror is in sync", || mirror_is_truth(&state, &c.api)).await;

    let created = c
        .api
        .store()
        .add_pod("default", "watched-pod")
        .expect("add pod");
    let uid = created["metadata"]["uid"].as_str().expect("uid").to_owned();
    let has = |t: ChangeType| {
        let state = state.clone();
        let uid = uid.clone();
        move || {
            state
                .lock()
                .expect("mirror lock")
                .object_changes()
                .iter()
                .any(|ch| {
                    ch.kind == ResourceKind::pod()
                        && ch.namespace == "default"
                        && ch.name == "watched-pod"
                        && ch.uid == uid
                        && ch.change_type == t
                })
        }
    };
    eventually("an Added change for the pod", has(ChangeType::Added)).await;
    c.api
        .store()
        .delete_pod("default", "watched-pod")
        .expect("delete pod");
    eventually("a Deleted change for the pod", has(ChangeType::Deleted)).await;

    let changes = state.lock().expect("mirror lock").object_changes();
    let initial: Vec<String> = c
        .api
        .store()
        .list("v1", "Pod", None)
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert!(!initial.is_empty());
    assert!(
        changes
            .iter()
            .all(|ch| !(ch.change_type == ChangeType::Added && initial.contains(&ch.name))),
        "the initial list is not reported as changes: {changes:?}"
    );
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kas_comes_back_the_mirror_resyncs_incrementally() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(cache_agent_config(&pki, kas.addr, &c.kubeconfig));
    let conn = kas.next_connection().await;
    // The mirror is kas's: it outlives connections.
    let state = SharedMirror::default();
    let first = serve_views(conn.connection.clone(), state.clone());
    eventually("the mirror is in sync", || mirror_is_truth(&state, &c.api)).await;
    let epoch = state.lock().expect("mirror lock").mirror.epoch();

    // kas goes away: the connection is cut and kas refuses agentk until it is back. Once agentk
    // has been refused, it has certainly noticed the loss.
    let hellos = kas.hellos.load(std::sync::atomic::Ordering::SeqCst);
    kas.set_verdict(Verdict::Reject {
        code: protocol::proto::RejectCode::Unavailable,
        retry_after_ms: 0,
    });
    conn.connection.abort(ErrorCode::Internal, "kas restarts");
    guard("the first views stream ends", first).await.ok();
    eventually("agentk tried again and was refused", || {
        kas.hellos.load(std::sync::atomic::Ordering::SeqCst) > hellos
    })
    .await;
    assert!(!state.lock().expect("mirror lock").mirror.is_connected());

    // Meanwhile the cluster changes.
    c.api.store().add_node("node-while-away").expect("add node");
    c.api
        .store()
        .add_pod("default", "pod-while-away")
        .expect("add pod");
    let victim = c
        .api
        .store()
        .list("v1", "Pod", Some("default"))
        .iter()
        .find(|p| p["metadata"]["name"] != "pod-while-away")
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .expect("an initial pod");
    c.api
        .store()
        .set_pod_phase("default", &victim, PodPhase::Succeeded)
        .expect("phase");

    // kas is back; agentk reconnects and resyncs.
    kas.set_verdict(Verdict::Accept);
    let conn = kas.next_connection().await;
    let _second = serve_views(conn.connection.clone(), state.clone());
    eventually("the mirror equals the truth after the reconnect", || {
        mirror_is_truth(&state, &c.api)
    })
    .await;

    {
        let s = state.lock().expect("mirror lock");
        assert_eq!(s.streams, 2);
        assert_eq!(s.mirror.epoch(), epoch, "same agentk process, same epoch");
        let (_, _, resumed_from) = *s
            .opening_requests
            .iter()
            .find(|(stream, _, _)| *stream == 2)
            .expect("the second stream opened with a resync request");
        let second = s.view_messages(2);
        assert!(
            second
                .iter()
                .all(|m| !matches!(m, Received::Snapshot { .. })),
            "no snapshot after a reconnect when the mirror has state: {second:?}"
        );
        match second.first() {
            Some(Received::Update {
                epoch: e, base_seq, ..
            }) => {
                assert_eq!(Some(*e), epoch);
                assert_eq!(
                    *base_seq, resumed_from,
                    "catch-up from where the mirror was"
                );
            }
            other => panic!("expected a catch-up update first, got {other:?}"),
        }
        assert_eq!(s.resyncs_needed, 0);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    eventually("changes made while kas was away are reported", || {
        state
            .lock()
            .expect("mirror lock")
            .received
            .iter()
            .any(|(stream, r)| {
                *stream == 2
                    && matches!(r, Received::ObjectChanges(cs)
                        if cs.iter().any(|ch| ch.name == "pod-while-away"
                            && ch.change_type == ChangeType::Added))
            })
    })
    .await;
    agent.shutdown().await.expect("clean shutdown");
}

/// The next stream agentk opens on `conn` (hang guard).
async fn next_stream(
    conn: &runtime_tokio::Connection,
) -> (protocol::proto::RequestHead, runtime_tokio::Stream) {
    guard("agentk opens a stream", conn.accept_stream())
        .await
        .expect("connection open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_stream_is_reopened_per_connection_and_reset_on_a_bad_message() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(cache_agent_config(&pki, kas.addr, &c.kubeconfig));

    // First connection: kas has no mirror capacity.
    let conn = kas.next_connection().await;
    let (h, s) = next_stream(&conn.connection).await;
    assert_eq!(
        (h.service.as_str(), h.method.as_str(), h.path.as_str()),
        ("views", "SYNC", "/")
    );
    s.respond(
        protocol::proto::ResponseHead {
            status: 503,
            headers: vec![],
        },
        true,
    )
    .expect("answer 503");
    guard("agentk finishes the refused stream", async {
        while let Some(Ok(_)) = s.read_chunk(1024).await {}
    })
    .await;
    conn.connection
        .abort(ErrorCode::Internal, "next connection please");

    // Second connection: a new views stream; kas sends a message that does not decode.
    let conn = kas.next_connection().await;
    let (h, s) = next_stream(&conn.connection).await;
    assert_eq!(h.service, "views");
    s.respond(
        protocol::proto::ResponseHead {
            status: 200,
            headers: vec![],
        },
        false,
    )
    .expect("answer 200");
    let mut w = &s;
    tokio::io::AsyncWriteExt::write_all(&mut w, &[3, 0xff, 0xff, 0xff])
        .await
        .expect("write garbage");
    let error = guard("agentk resets the stream", async {
        loop {
            match s.read_chunk(64 * 1024).await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await;
    match error {
        Some(runtime_tokio::Error::StreamReset { code, remote, .. }) => {
            assert_eq!(code, ErrorCode::Protocol);
            assert!(remote);
        }
        other => panic!("expected a PROTOCOL reset from agentk, got {other:?}"),
    }
    // The connection itself is fine: kas's other requests are still served.
    let a = request(
        &conn.connection,
        head("cache", "LIST", "/nodes", vec![]),
        &[],
    )
    .await;
    assert!(
        a.head.status == 200 || a.head.status == 503,
        "{}",
        a.head.status
    );
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_hands_the_views_over_to_the_new_connection() {
    init_tracing();
    let pki = ThrowawayPki::generate().expect("pki");
    let c = cluster();
    let mut kas = FakeKas::start(&pki, "127.0.0.1:0".parse().expect("addr"), Verdict::Accept).await;
    let agent = spawn_agent(cache_agent_config(&pki, kas.addr, &c.kubeconfig));
    let old = kas.next_connection().await;
    let state = SharedMirror::default();
    let _old_side = serve_views(old.connection.clone(), state.clone());
    eventually("the mirror is in sync", || mirror_is_truth(&state, &c.api)).await;

    // kas restarts gracefully with a long grace: the long-lived views stream must not hold the
    // old connection open; agentk ends it and opens one on the new connection.
    old.connection
        .start_close(std::time::Duration::from_secs(600));
    let new = kas.next_connection().await;
    let _new_side = serve_views(new.connection.clone(), state.clone());
    guard(
        "the old connection closes once its views stream ended",
        old.connection.closed(),
    )
    .await;
    c.api
        .store()
        .add_pod("default", "after-goaway")
        .expect("add pod");
    eventually("the mirror follows through the new connection", || {
        let on_new_stream = {
            let s = state.lock().expect("mirror lock");
            s.streams == 2 && !s.view_messages(2).is_empty()
        };
        on_new_stream && mirror_is_truth(&state, &c.api)
    })
    .await;
    {
        let s = state.lock().expect("mirror lock");
        assert!(
            s.view_messages(2)
                .iter()
                .all(|m| matches!(m, Received::Update { .. })),
            "the new stream continues with updates: {:?}",
            s.view_messages(2)
        );
        assert_eq!(s.resyncs_needed, 0);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    agent.shutdown().await.expect("clean shutdown");
}
