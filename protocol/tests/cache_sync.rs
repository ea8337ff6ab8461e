//! Publisher ↔ mirror synchronisation: coalescing, acks, resume, resync, snapshots.

mod cache_harness;

use std::time::Duration;

use cache_harness::*;
use protocol::cache::proto::{self, agent_to_server::Msg};
use protocol::cache::{
    Decimal, Mirror, MirrorOutcome, PublisherConfig, ResourceKind, ViewSpec, WatchEvent,
};

fn pods() -> ResourceKind {
    ResourceKind::pod()
}

fn count(link: &Link, view: &str, key: &[&str], metric: usize) -> Option<Decimal> {
    let key: Vec<String> = key.iter().map(|s| s.to_string()).collect();
    link.mirror
        .views()
        .get(view)?
        .rows
        .get(&key)?
        .get(metric)
        .copied()
}

/// Messages agentk sent since `from`, classified.
fn kinds(link: &Link, from: usize) -> Vec<&'static str> {
    link.outcomes[from..]
        .iter()
        .map(|o| match o {
            MirrorOutcome::Applied { .. } => "applied",
            MirrorOutcome::Ignored { .. } => "ignored",
            MirrorOutcome::ResyncNeeded { .. } => "resync",
        })
        .collect()
}

#[test]
fn first_connect_sends_a_snapshot_then_updates() {
    let mut link = Link::new(agent(7));
    link.apply(&pods(), WatchEvent::Apply(pod("a", "p", "p", 1, "Pending")));
    link.settle();
    assert_eq!(link.agent.publisher().stats().snapshots, 1);
    assert_eq!(link.mirror.epoch(), Some(7));
    assert_eq!(link.mirror.views(), &link.reference());
    assert_eq!(
        count(&link, "pods_by_phase", &["a", "Pending"], 0),
        Some(Decimal::from_int(1))
    );

    link.advance(Duration::from_secs(1));
    link.apply(&pods(), WatchEvent::Apply(pod("a", "p", "p", 2, "Running")));
    let before = link.outcomes.len();
    link.settle();
    assert_eq!(kinds(&link, before), vec!["applied"]);
    assert_eq!(link.agent.publisher().stats().snapshots, 1);
    assert_eq!(count(&link, "pods_by_phase", &["a", "Pending"], 0), None);
    assert_eq!(
        count(&link, "pods_by_phase", &["a", "Running"], 0),
        Some(Decimal::from_int(1))
    );
    assert_eq!(link.mirror.views(), &link.reference());
    assert_eq!(link.mirror.last_update(), Some(link.now));
}

#[test]
fn a_storm_is_coalesced_into_one_update_per_window() {
    let mut link = Link::new(agent(1));
    link.settle();
    let start_msgs = link.messages_sent;
    let start = link.now;
    // 2000 phase flips on 50 pods over two seconds, one every millisecond.
    let phases = ["Pending", "Running", "Succeeded", "Failed"];
    for i in 0..2000u64 {
        let name = format!("p{}", i % 50);
        let phase = phases[(i / 50 % 4) as usize];
        link.apply(
            &pods(),
            WatchEvent::Apply(pod("ns", &name, &name, i + 1, phase)),
        );
        link.advance(Duration::from_millis(1));
        link.pump();
    }
    link.settle();
    let elapsed = link.now - start;
    let windows = (elapsed.as_millis() / WINDOW.as_millis()) as usize + 1;
    let updates = link.messages_sent - start_msgs;
    assert!(updates <= windows, "{updates} updates in {windows} windows");
    assert!(updates >= 2, "the storm must still be published");
    assert_eq!(link.mirror.views(), &link.reference());
}

#[test]
fn changes_that_cancel_out_within_a_window_send_nothing() {
    let mut link = Link::new(agent(1));
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("ns", "keep", "k", 1, "Running")),
    );
    link.settle();
    // Open a window with one real change.
    link.advance(Duration::from_secs(1));
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("ns", "a", "a", 2, "Running")),
    );
    let sent = link.messages_sent;
    link.pump();
    assert_eq!(link.messages_sent, sent + 1);
    let sent = link.messages_sent;
    // Inside the window: a pod comes and goes; a phase flips and flips back.
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("ns", "tmp", "t", 3, "Pending")),
    );
    link.apply(
        &pods(),
        WatchEvent::Delete(pod("ns", "tmp", "t", 4, "Pending")),
    );
    link.apply(&pods(), WatchEvent::Apply(pod("ns", "a", "a", 5, "Failed")));
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("ns", "a", "a", 6, "Running")),
    );
    link.settle();
    assert_eq!(link.messages_sent, sent);
    assert_eq!(link.mirror.views(), &link.reference());
}

#[test]
fn reconnect_resumes_with_only_the_changed_rows() {
    let mut link = Link::new(agent(3));
    for i in 0..20u64 {
        let ns = format!("ns{i}");
        link.apply(
            &pods(),
            WatchEvent::Apply(pod(&ns, "p", &ns, i + 1, "Running")),
        );
    }
    link.settle();
    let seq_before = link.agent.publisher().seq();
    link.disconnect();
    // While disconnected: one namespace changes, one disappears, one appears.
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("ns0", "p", "ns0", 100, "Failed")),
    );
    link.apply(
        &pods(),
        WatchEvent::Delete(pod("ns1", "p", "ns1", 101, "Running")),
    );
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("new", "p", "new", 102, "Pending")),
    );
    link.advance(Duration::from_secs(30));
    link.connect();
    link.poll();
    link.agent_receive(Fate::Deliver); // kas's "I am at (3, seq)"
    link.poll();
    assert_eq!(link.to_kas.len(), 1);
    let Some(Msg::Update(u)) = link.to_kas[0].msg.clone() else {
        panic!("expected a catch-up update, got {:?}", link.to_kas[0]);
    };
    assert_eq!(u.base_seq, seq_before);
    let rows: usize = u
        .views
        .iter()
        .map(|d| d.upserts.len() + d.removed.len())
        .sum();
    // pods_by_phase: ns0/Running removed, ns0/Failed added, ns1/Running removed, new/Pending added;
    // objects_by_kind: Pod/ns1 removed, Pod/new added.
    assert_eq!(rows, 6, "{u:?}");
    link.settle();
    assert_eq!(link.agent.publisher().stats().snapshots, 1);
    assert_eq!(link.mirror.views(), &link.reference());
}

#[test]
fn kas_restart_gets_a_snapshot() {
    let mut link = Link::new(agent(3));
    link.apply(&pods(), WatchEvent::Apply(pod("a", "p", "p", 1, "Running")));
    link.settle();
    link.restart_kas();
    link.settle();
    assert_eq!(link.agent.publisher().stats().snapshots, 2);
    assert_eq!(link.mirror.views(), &link.reference());
}

#[test]
fn agent_restart_is_a_new_epoch() {
    let mut link = Link::new(agent(3));
    link.apply(&pods(), WatchEvent::Apply(pod("a", "p", "p", 1, "Running")));
    link.apply(&pods(), WatchEvent::Apply(pod("b", "p", "p", 1, "Running")));
    link.settle();
    link.restart_agent(agent(4));
    link.apply(&pods(), WatchEvent::Init);
    link.apply(
        &pods(),
        WatchEvent::InitApply(pod("a", "p", "p", 5, "Running")),
    );
    link.apply(&pods(), WatchEvent::InitDone);
    link.settle();
    assert_eq!(link.mirror.epoch(), Some(4));
    assert_eq!(link.agent.publisher().stats().snapshots, 1);
    assert_eq!(link.mirror.views(), &link.reference());
    assert_eq!(count(&link, "pods_by_phase", &["b", "Running"], 0), None);

    // An update of another epoch is refused with a resync request.
    let mut other = Mirror::new();
    let snapshot = proto::Snapshot {
        epoch: 9,
        seq: 0,
        views: vec![],
    };
    assert!(other.apply_snapshot(&snapshot, link.now).is_ok());
    let update = proto::ViewUpdate {
        epoch: 4,
        base_seq: 0,
        seq: 1,
        views: vec![],
    };
    let outcome = other.apply_update(&update, link.now);
    assert!(
        matches!(&outcome, Ok(MirrorOutcome::ResyncNeeded { request })
            if request.epoch == 9 && request.reason == proto::ResyncReason::EpochChanged as i32),
        "{outcome:?}"
    );
}

#[test]
fn a_lost_update_is_detected_as_a_gap_and_repaired() {
    let mut link = Link::new(agent(5));
    link.settle();
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p1", "p1", 1, "Running")),
    );
    link.poll();
    assert!(link.kas_receive(Fate::Drop));
    link.advance(WINDOW);
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p2", "p2", 2, "Running")),
    );
    link.poll();
    link.advance(WINDOW);
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p3", "p3", 3, "Running")),
    );
    link.poll();
    let from = link.outcomes.len();
    assert!(link.kas_receive(Fate::Deliver));
    assert!(link.kas_receive(Fate::Deliver));
    // One request for the gap; the second unusable update is ignored without another request.
    assert_eq!(kinds(&link, from), vec!["resync", "ignored"]);
    assert_eq!(link.to_agent.len(), 1);
    link.settle();
    assert_eq!(
        link.agent.publisher().stats().snapshots,
        1,
        "a gap needs no snapshot"
    );
    assert_eq!(link.mirror.views(), &link.reference());
    assert_eq!(
        count(&link, "pods_by_phase", &["a", "Running"], 0),
        Some(Decimal::from_int(3))
    );
}

#[test]
fn an_unacknowledged_update_is_resent_after_the_ack_timeout() {
    let mut link = Link::new(agent(5));
    link.settle();
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p1", "p1", 1, "Running")),
    );
    link.poll();
    assert!(link.kas_receive(Fate::Drop));
    // Nothing else happens: the mirror cannot notice. The publisher must.
    let due = link.agent.poll_timeout();
    assert_eq!(due, Some(link.now + ACK_TIMEOUT));
    link.advance(ACK_TIMEOUT);
    assert_eq!(link.poll(), 1);
    link.pump();
    assert_eq!(link.mirror.views(), &link.reference());
    assert!(link.agent.publisher().is_idle());
    assert_eq!(link.agent.poll_timeout(), None);
}

#[test]
fn silent_kas_after_reconnect_gets_a_resume_from_the_last_ack() {
    let mut link = Link::new(agent(5));
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p1", "p1", 1, "Running")),
    );
    link.settle();
    link.disconnect();
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p2", "p2", 2, "Running")),
    );
    link.connect();
    assert!(link.agent_receive(Fate::Drop)); // kas's request is lost
    assert_eq!(link.poll(), 0, "waits for kas first");
    link.advance(ACK_TIMEOUT);
    assert_eq!(link.poll(), 1);
    let Some(Msg::Update(u)) = link.to_kas[0].msg.clone() else {
        panic!("expected an update from the last ack");
    };
    assert_eq!(Some(u.base_seq), link.mirror.seq());
    link.settle();
    assert_eq!(link.mirror.views(), &link.reference());
    assert_eq!(link.agent.publisher().stats().snapshots, 1);
}

#[test]
fn pruned_tombstones_force_a_snapshot() {
    let cfg = PublisherConfig {
        max_tombstones: 4,
        ..config(2)
    };
    let mut link = Link::new(agent_with(2, &protocol::cache::default_views(), cfg));
    for i in 0..10u64 {
        let ns = format!("ns{i}");
        link.apply(
            &pods(),
            WatchEvent::Apply(pod(&ns, "p", &ns, 2 * i + 1, "Running")),
        );
    }
    link.settle();
    let snapshots = link.agent.publisher().stats().snapshots;
    link.disconnect();
    // Remove everything while a mirror is far behind: ten removals per view exceed four tombstones.
    let behind = link.mirror.seq();
    for i in 0..10u64 {
        let ns = format!("ns{i}");
        link.apply(
            &pods(),
            WatchEvent::Delete(pod(&ns, "p", &ns, 2 * i + 2, "Running")),
        );
        // Publish each removal separately, to another kas session this mirror does not see.
        link.agent.on_connected(link.now);
        link.agent.handle(
            &proto::ServerToAgent {
                msg: Some(proto::server_to_agent::Msg::Resync(proto::ResyncRequest {
                    epoch: 2,
                    seq: link.agent.publisher().seq(),
                    reason: 0,
                })),
            },
            link.now,
        );
        let _ = link.agent.poll_transmit(link.now);
        link.agent.on_disconnected();
        link.advance(WINDOW);
    }
    assert!(link.agent.publisher().seq() > behind.unwrap_or(0));
    link.settle();
    assert_eq!(link.agent.publisher().stats().snapshots, snapshots + 1);
    assert_eq!(link.mirror.views(), &link.reference());
    assert!(
        link.mirror
            .views()
            .get("pods_by_phase")
            .is_some_and(|v| v.rows.is_empty())
    );
}

#[test]
fn flow_control_holds_updates_until_acked() {
    let cfg = PublisherConfig {
        max_unacked: 1,
        ..config(8)
    };
    let mut link = Link::new(agent_with(8, &protocol::cache::default_views(), cfg));
    link.settle();
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p1", "p1", 1, "Running")),
    );
    assert_eq!(link.poll(), 1);
    link.advance(WINDOW * 3);
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p2", "p2", 2, "Running")),
    );
    assert_eq!(link.poll(), 0, "one update in flight already");
    assert!(link.kas_receive(Fate::Deliver));
    assert!(link.agent_receive(Fate::Deliver)); // the ack
    assert_eq!(link.poll(), 1);
    link.settle();
    assert_eq!(link.mirror.views(), &link.reference());
}

#[test]
fn poll_timeout_respects_the_window() {
    let mut link = Link::new(agent(8));
    link.settle();
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p1", "p1", 1, "Running")),
    );
    assert_eq!(
        link.poll(),
        1,
        "first change after a quiet period goes out at once"
    );
    let flushed = link.now;
    link.pump();
    link.advance(Duration::from_millis(10));
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p2", "p2", 2, "Running")),
    );
    assert_eq!(link.poll(), 0);
    assert_eq!(link.agent.poll_timeout(), Some(flushed + WINDOW));
    link.advance(Duration::from_millis(90));
    assert_eq!(link.poll(), 1);
}

#[test]
fn the_mirror_rejects_malformed_messages_without_changing() {
    let mut link = Link::new(agent(6));
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p1", "p1", 1, "Running")),
    );
    link.settle();
    let views = link.mirror.views().clone();
    let seq = link.mirror.seq().unwrap_or_default();
    let good_row = proto::Row {
        key: vec!["a".into(), "Failed".into()],
        units: vec![1],
        nanos: vec![],
    };
    let update = |views: Vec<proto::ViewDelta>| proto::ViewUpdate {
        epoch: 6,
        base_seq: seq,
        seq: seq + 1,
        views,
    };
    let delta = |view: &str, row: proto::Row| proto::ViewDelta {
        view: view.into(),
        upserts: vec![row],
        removed: vec![],
    };
    let bad = [
        update(vec![delta("nope", good_row.clone())]),
        update(vec![
            delta("pods_by_phase", good_row.clone()),
            delta(
                "pods_by_phase",
                proto::Row {
                    units: vec![1, 2],
                    ..good_row.clone()
                },
            ),
        ]),
        update(vec![delta(
            "pods_by_phase",
            proto::Row {
                key: vec!["a".into()],
                ..good_row.clone()
            },
        )]),
        proto::ViewUpdate {
            base_seq: seq + 2,
            seq: seq + 1,
            ..update(vec![])
        },
        // Nanos out of range, after a good row.
        update(vec![
            delta("pods_by_phase", good_row.clone()),
            delta(
                "pods_by_phase",
                proto::Row {
                    nanos: vec![1_000_000_000],
                    ..good_row.clone()
                },
            ),
        ]),
        // A removed key of the wrong shape, after a good removal.
        update(vec![proto::ViewDelta {
            view: "pods_by_phase".into(),
            upserts: vec![],
            removed: vec![
                proto::RemovedRow {
                    key: vec!["a".into(), "Running".into()],
                },
                proto::RemovedRow {
                    key: vec!["a".into()],
                },
            ],
        }]),
    ];
    for u in bad {
        assert!(link.mirror.apply_update(&u, link.now).is_err(), "{u:?}");
        assert_eq!(link.mirror.views(), &views);
        assert_eq!(link.mirror.seq(), Some(seq));
    }
    let dup_rows = proto::Snapshot {
        epoch: 6,
        seq: seq + 5,
        views: vec![proto::ViewData {
            schema: Some(proto::ViewSchema {
                name: "v".into(),
                kind: "Pod".into(),
                group_by: vec!["ns".into()],
                metrics: vec![],
            }),
            rows: vec![
                proto::Row {
                    key: vec!["x".into()],
                    units: vec![],
                    nanos: vec![],
                },
                proto::Row {
                    key: vec!["x".into()],
                    units: vec![],
                    nanos: vec![],
                },
            ],
        }],
    };
    assert!(link.mirror.apply_snapshot(&dup_rows, link.now).is_err());
    assert!(
        link.mirror
            .apply_snapshot(
                &proto::Snapshot {
                    epoch: 0,
                    ..dup_rows
                },
                link.now
            )
            .is_err()
    );
    assert_eq!(link.mirror.views(), &views);
    assert!(
        link.mirror
            .handle(&proto::AgentToServer { msg: None }, link.now)
            .is_err()
    );
}

/// An update's removals are applied before its upserts, whichever delta carries them (a view
/// named by two deltas: the upsert of a key wins over its removal).
#[test]
fn the_mirror_applies_removals_before_upserts() {
    let mut link = Link::new(agent(7));
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p1", "p1", 1, "Running")),
    );
    link.settle();
    let seq = link.mirror.seq().unwrap_or_default();
    let key: Vec<String> = vec!["a".into(), "Failed".into()];
    let u = proto::ViewUpdate {
        epoch: 7,
        base_seq: seq,
        seq: seq + 1,
        views: vec![
            proto::ViewDelta {
                view: "pods_by_phase".into(),
                upserts: vec![proto::Row {
                    key: key.clone(),
                    units: vec![2],
                    nanos: vec![],
                }],
                removed: vec![],
            },
            proto::ViewDelta {
                view: "pods_by_phase".into(),
                upserts: vec![],
                removed: vec![proto::RemovedRow { key: key.clone() }],
            },
        ],
    };
    assert!(matches!(
        link.mirror.apply_update(&u, link.now),
        Ok(MirrorOutcome::Applied { .. })
    ));
    let rows = link.mirror.views().get("pods_by_phase").map(|v| &v.rows);
    assert_eq!(
        rows.and_then(|r| r.get(&key)).map(Vec::len),
        Some(1),
        "{rows:?}"
    );
    assert_eq!(link.mirror.seq(), Some(seq + 1));
}

#[test]
fn mirror_reports_changes_for_the_event_feed() {
    let mut link = Link::new(agent(6));
    link.settle();
    link.apply(
        &pods(),
        WatchEvent::Apply(pod("a", "p1", "p1", 1, "Running")),
    );
    let from = link.outcomes.len();
    link.settle();
    let MirrorOutcome::Applied { changes, .. } = &link.outcomes[from] else {
        panic!("expected applied");
    };
    let json: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| link.mirror.views().change_json(c))
        .collect();
    assert_eq!(
        json,
        vec![
            serde_json::json!({"view": "objects_by_kind", "key": {"kind": "Pod", "namespace": "a"}, "values": {"count": 1}}),
            serde_json::json!({"view": "pods_by_phase", "key": {"namespace": "a", "phase": "Running"}, "values": {"count": 1}}),
        ]
    );
}

#[test]
fn custom_views_from_json_config() {
    let specs: Vec<ViewSpec> = serde_json::from_str(
        r#"[{"name": "cpu", "kind": "Node", "group_by": [{"name": "zone", "path": "metadata.labels[\"topology.kubernetes.io/zone\"]"}],
             "metrics": [{"name": "nodes"}, {"name": "cpu", "op": "sum", "path": "status.allocatable.cpu"}]}]"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut link = Link::new(agent_with(1, &specs, config(1)));
    let n = |name: &str, zone: &str, cpu: &str| {
        serde_json::json!({"metadata": {"name": name, "uid": name, "resourceVersion": "1",
            "labels": {"topology.kubernetes.io/zone": zone}}, "status": {"allocatable": {"cpu": cpu}}})
    };
    link.apply(
        &ResourceKind::node(),
        WatchEvent::Apply(n("a", "z1", "3500m")),
    );
    link.apply(&ResourceKind::node(), WatchEvent::Apply(n("b", "z1", "2")));
    link.apply(&ResourceKind::node(), WatchEvent::Apply(n("c", "z2", "1")));
    link.settle();
    let view = link.mirror.views().get("cpu");
    assert_eq!(
        view.map(|v| serde_json::to_value(v).unwrap_or_default()["rows"].clone()),
        Some(serde_json::json!([
            {"zone": "z1", "nodes": 2, "cpu": 5.5},
            {"zone": "z2", "nodes": 1, "cpu": 1}
        ]))
    );
}
