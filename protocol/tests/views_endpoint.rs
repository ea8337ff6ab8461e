//! The `views` stream's endpoints ([`AgentViews`], [`MirrorTable`]) driven together, byte for byte:
//! split invariance, no spin, batching, link replacement, handover, capacity, retention,
//! violations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use protocol::cache::proto;
use protocol::cache::{
    AgentViews, AgentViewsConfig, AgentViewsEvent, LinkEnd, MirrorEvent, MirrorTable,
    MirrorTableConfig, PublisherConfig, ResourceKind, ResponseVerdict, ViewsRefusal,
    ViewsViolation, WatchEvent, classify_views_response, decode_agent_message, default_views,
    encode_message, views_request_head,
};
use serde_json::{Value, json};

const WINDOW: Duration = Duration::from_millis(100);

fn node(name: &str, ready: bool, rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv.to_string()},
           "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
}

fn agent(epoch: u64, t0: Instant) -> AgentViews {
    let mut publisher = PublisherConfig::new(NonZeroU64::new(epoch).unwrap());
    publisher.window = WINDOW;
    let mut a =
        AgentViews::new(&default_views(), publisher, AgentViewsConfig::new(WINDOW)).unwrap();
    let kind = ResourceKind::node();
    a.handle_watch(&kind, WatchEvent::Init, t0).unwrap();
    a.handle_watch(&kind, WatchEvent::InitApply(node("n1", true, 1)), t0)
        .unwrap();
    a.handle_watch(&kind, WatchEvent::InitDone, t0).unwrap();
    a
}

/// Everything the agent sends at `now`, one message per element.
fn drain_agent(a: &mut AgentViews, now: Instant) -> Vec<Bytes> {
    let out: Vec<Bytes> = std::iter::from_fn(|| a.poll_transmit(now))
        .take(1000)
        .collect();
    assert!(out.len() < 1000, "the agent kept sending");
    out
}

fn nodes_count(t: &MirrorTable, agent_id: u64) -> Option<String> {
    let m = t.mirror(agent_id)?;
    let view = m.views().get("nodes")?;
    view.rows.values().next().map(|r| format!("{:?}", r[0]))
}

/// Runs agent ↔ table for `rounds` rounds of `step` each, starting at `t`; returns the time reached.
fn exchange(
    a: &mut AgentViews,
    link: u64,
    t: &mut MirrorTable,
    s: &mut protocol::cache::ViewsStream,
    mut now: Instant,
    rounds: usize,
) -> Instant {
    for _ in 0..rounds {
        while let Some(b) = s.poll_transmit() {
            a.handle_body(link, &b, now).unwrap();
        }
        for b in drain_agent(a, now) {
            t.handle_body(s, &b, now).unwrap();
        }
        now += WINDOW;
    }
    now
}

#[test]
fn the_two_endpoints_sync_a_mirror_and_report_object_changes() {
    let t0 = Instant::now();
    let mut a = agent(7, t0);
    assert_eq!(
        a.poll_event(),
        Some(AgentViewsEvent::InitialListDone {
            kind: ResourceKind::node(),
            objects: 1
        })
    );
    assert_eq!(a.poll_transmit(t0), None, "nothing goes without a link");
    assert_eq!(a.poll_timeout(), None, "nothing to wake for without a link");
    let mut table = MirrorTable::new(MirrorTableConfig::default());
    let (mut s, ok) = table.handle_open(1, &views_request_head(), t0).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(classify_views_response(ok.status), ResponseVerdict::Linked);
    a.handle_linked(10, t0);
    assert_eq!(a.poll_event(), Some(AgentViewsEvent::Linked { link: 10 }));
    let now = exchange(&mut a, 10, &mut table, &mut s, t0, 5);
    assert_eq!(table.mirror(1).unwrap().views(), &a.cache().views().views());
    assert_eq!(
        table.poll_event(),
        Some(MirrorEvent::Connected { agent_id: 1 })
    );

    // A new node: one view update and one object-change batch, no change reported for the first
    // list.
    let kind = ResourceKind::node();
    a.handle_watch(&kind, WatchEvent::Apply(node("n2", false, 2)), now)
        .unwrap();
    let sent = drain_agent(&mut a, now);
    let kinds: Vec<&str> = sent
        .iter()
        .map(|b| {
            let mut d = protocol::cache::MessageDecoder::default();
            d.push(b);
            match decode_agent_message(&d.next_message().unwrap().unwrap())
                .unwrap()
                .msg
            {
                Some(proto::agent_to_server::Msg::Update(_)) => "update",
                Some(proto::agent_to_server::Msg::Snapshot(_)) => "snapshot",
                Some(proto::agent_to_server::Msg::ObjectChanges(_)) => "objects",
                None => "none",
            }
        })
        .collect();
    assert!(kinds.contains(&"objects"), "{kinds:?}");
    for b in &sent {
        table.handle_body(&mut s, b, now).unwrap();
    }
    assert_eq!(table.mirror(1).unwrap().views(), &a.cache().views().views());
    let events: Vec<MirrorEvent> = std::iter::from_fn(|| table.poll_event()).collect();
    let objects: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            MirrorEvent::Objects { changes, .. } => Some(changes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(objects.len(), 1, "{events:?}");
    assert_eq!(objects[0].name, "n2");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, MirrorEvent::ViewsChanged { agent_id: 1, .. }))
    );
    assert!(nodes_count(&table, 1).is_some());
}

#[test]
fn a_new_link_replaces_the_old_and_old_bodies_are_ignored() {
    let t0 = Instant::now();
    let mut a = agent(3, t0);
    while a.poll_event().is_some() {}
    a.handle_linked(1, t0);
    a.handle_linked(2, t0);
    assert_eq!(a.poll_event(), Some(AgentViewsEvent::Linked { link: 1 }));
    assert_eq!(
        a.poll_event(),
        Some(AgentViewsEvent::Unlinked {
            link: 1,
            end: LinkEnd::Replaced
        })
    );
    assert_eq!(a.poll_event(), Some(AgentViewsEvent::Linked { link: 2 }));
    assert_eq!(a.link(), Some(2));
    // Garbage on the old link changes nothing.
    assert_eq!(a.handle_body(1, &[0xff; 11], t0), Ok(()));
    a.handle_unlinked(1, LinkEnd::Failed);
    assert_eq!(a.link(), Some(2));
    a.handle_unlinked(2, LinkEnd::Draining);
    assert_eq!(a.link(), None);
    assert_eq!(a.poll_transmit(t0 + WINDOW), None);
    // A violation on the current link drops it.
    a.handle_linked(3, t0);
    assert!(matches!(
        a.handle_body(3, &[0xff; 11], t0),
        Err(ViewsViolation::Message(_))
    ));
    assert_eq!(a.link(), None);
    // So does a stream ending inside a message.
    a.handle_linked(4, t0);
    let ack = encode_message(&proto::ServerToAgent {
        msg: Some(proto::server_to_agent::Msg::Ack(proto::Ack {
            epoch: 3,
            seq: 0,
        })),
    });
    a.handle_body(4, &ack[..ack.len() - 1], t0).unwrap();
    assert!(a.handle_finished(4).is_err());
    assert_eq!(a.link(), None);
}

#[test]
fn object_changes_are_batched_per_window_and_bounded() {
    let t0 = Instant::now();
    let mut publisher = PublisherConfig::new(NonZeroU64::new(5).unwrap());
    publisher.window = WINDOW;
    let config = AgentViewsConfig {
        change_window: WINDOW,
        max_pending_changes: 5,
        max_changes_per_message: 2,
    };
    let mut a = AgentViews::new(&default_views(), publisher, config).unwrap();
    let kind = ResourceKind::node();
    a.handle_watch(&kind, WatchEvent::Init, t0).unwrap();
    a.handle_watch(&kind, WatchEvent::InitDone, t0).unwrap();
    a.handle_linked(1, t0);
    for i in 0..8 {
        a.handle_watch(
            &kind,
            WatchEvent::Apply(node(&format!("n{i}"), true, i)),
            t0,
        )
        .unwrap();
    }
    assert_eq!(a.pending_changes(), 5);
    let mut now = t0;
    let mut batches = Vec::new();
    for _ in 0..10 {
        for b in drain_agent(&mut a, now) {
            let mut d = protocol::cache::MessageDecoder::default();
            d.push(&b);
            if let Some(proto::agent_to_server::Msg::ObjectChanges(c)) =
                decode_agent_message(&d.next_message().unwrap().unwrap())
                    .unwrap()
                    .msg
            {
                batches.push((now, c.changes.len()));
            }
        }
        now += WINDOW / 2;
    }
    assert_eq!(
        batches.iter().map(|b| b.1).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    for w in batches.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= WINDOW,
            "one batch per window: {batches:?}"
        );
    }
    let dropped: Vec<_> = std::iter::from_fn(|| a.poll_event())
        .filter(|e| matches!(e, AgentViewsEvent::ChangesDropped { .. }))
        .collect();
    assert_eq!(dropped, vec![AgentViewsEvent::ChangesDropped { count: 3 }]);
}

#[test]
fn store_errors_are_reported_once_per_distinct_error() {
    let t0 = Instant::now();
    let mut a = agent(9, t0);
    while a.poll_event().is_some() {}
    let kind = ResourceKind::node();
    let bad = || WatchEvent::Apply(json!({"kind": "Node"}));
    assert!(a.handle_watch(&kind, bad(), t0).is_err());
    assert!(a.handle_watch(&kind, bad(), t0).is_err());
    let errors: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    a.handle_watch(&kind, WatchEvent::Apply(node("n9", true, 9)), t0)
        .unwrap();
    assert!(a.handle_watch(&kind, bad(), t0).is_err());
    assert_eq!(std::iter::from_fn(|| a.poll_event()).count(), 1);
}

#[test]
fn a_handover_keeps_the_mirror_connected_until_the_last_stream_ends() {
    let t0 = Instant::now();
    let mut a = agent(5, t0);
    let mut table = MirrorTable::new(MirrorTableConfig::default());
    let (mut old, _) = table.handle_open(1, &views_request_head(), t0).unwrap();
    a.handle_linked(1, t0);
    let now = exchange(&mut a, 1, &mut table, &mut old, t0, 4);
    // GOAWAY: the new connection's stream opens before the old one ends.
    let (mut new, _) = table.handle_open(1, &views_request_head(), now).unwrap();
    a.handle_linked(2, now);
    assert_eq!(table.streams(1), 2);
    table.handle_closed(old, now);
    assert!(table.mirror(1).unwrap().is_connected());
    a.handle_watch(
        &ResourceKind::node(),
        WatchEvent::Apply(node("n2", true, 2)),
        now,
    )
    .unwrap();
    let now = exchange(&mut a, 2, &mut table, &mut new, now, 4);
    assert_eq!(table.mirror(1).unwrap().views(), &a.cache().views().views());
    table.handle_closed(new, now);
    assert!(!table.mirror(1).unwrap().is_connected());
    let events: Vec<_> = std::iter::from_fn(|| table.poll_event())
        .filter(|e| {
            matches!(
                e,
                MirrorEvent::Connected { .. } | MirrorEvent::Disconnected { .. }
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            MirrorEvent::Connected { agent_id: 1 },
            MirrorEvent::Disconnected { agent_id: 1 }
        ]
    );
    // The views stay.
    assert_eq!(table.mirror(1).unwrap().views(), &a.cache().views().views());
}

#[test]
fn capacity_and_methods_are_refused_with_their_answers() {
    let t0 = Instant::now();
    let config = MirrorTableConfig {
        max_agents: 1,
        ..MirrorTableConfig::default()
    };
    let mut table = MirrorTable::new(config);
    let mut head = views_request_head();
    head.method = "STREAM".into();
    let refused = table.handle_open(1, &head, t0).unwrap_err();
    assert_eq!(refused, ViewsRefusal::BadMethod("STREAM".into()));
    assert_eq!(refused.response_head().status, 400);
    let streams: Vec<_> = (0..4)
        .map(|_| table.handle_open(1, &views_request_head(), t0).unwrap().0)
        .collect();
    let refused = table.handle_open(1, &views_request_head(), t0).unwrap_err();
    assert_eq!(
        refused,
        ViewsRefusal::TooManyStreams {
            agent_id: 1,
            streams: 4
        }
    );
    assert_eq!(refused.response_head().status, 503);
    assert_eq!(
        table.handle_open(2, &views_request_head(), t0).unwrap_err(),
        ViewsRefusal::TooManyAgents(1)
    );
    assert_eq!(
        classify_views_response(503),
        ResponseVerdict::RetryNextConnection
    );
    assert_eq!(classify_views_response(400), ResponseVerdict::Refused);
    for s in streams {
        table.handle_closed(s, t0);
    }
    assert!(table.handle_open(1, &views_request_head(), t0).is_ok());
}

#[test]
fn retention_evicts_only_mirrors_without_streams() {
    let t0 = Instant::now();
    let config = MirrorTableConfig {
        retention: Some(Duration::from_secs(10)),
        ..MirrorTableConfig::default()
    };
    let mut table = MirrorTable::new(config);
    let (a, _) = table.handle_open(1, &views_request_head(), t0).unwrap();
    let (_b, _) = table.handle_open(2, &views_request_head(), t0).unwrap();
    assert_eq!(table.poll_timeout(), None);
    table.handle_closed(a, t0);
    assert_eq!(table.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    table.handle_timeout(t0 + Duration::from_secs(9));
    assert_eq!(table.len(), 2);
    table.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(table.agents().collect::<Vec<_>>(), vec![2]);
    assert!(
        std::iter::from_fn(|| table.poll_event())
            .any(|e| e == MirrorEvent::Evicted { agent_id: 1 })
    );
}

#[test]
fn violations_change_nothing() {
    let t0 = Instant::now();
    let mut a = agent(3, t0);
    let mut table = MirrorTable::new(MirrorTableConfig::default());
    let (mut s, _) = table.handle_open(4, &views_request_head(), t0).unwrap();
    a.handle_linked(1, t0);
    let now = exchange(&mut a, 1, &mut table, &mut s, t0, 4);
    while table.poll_event().is_some() {}
    let before = table.mirror(4).unwrap().views().clone();
    let bad = [
        encode_message(&proto::AgentToServer { msg: None }),
        encode_message(&proto::AgentToServer {
            msg: Some(proto::agent_to_server::Msg::ObjectChanges(
                proto::ObjectChanges {
                    changes: vec![proto::ObjectChange::default()],
                },
            )),
        }),
        Bytes::from_static(&[0xff; 11]),
        Bytes::from_static(&[0x02, 0xff, 0xff]),
    ];
    for b in bad {
        let (mut s, _) = table.handle_open(4, &views_request_head(), now).unwrap();
        while s.poll_transmit().is_some() {}
        assert!(table.handle_body(&mut s, &b, now).is_err(), "{b:?}");
        assert_eq!(table.mirror(4).unwrap().views(), &before);
        table.handle_closed(s, now);
    }
    // Oversized and truncated.
    let mut prefix = Vec::new();
    prost::encoding::encode_varint((protocol::cache::MAX_MESSAGE + 1) as u64, &mut prefix);
    let (mut s2, _) = table.handle_open(4, &views_request_head(), now).unwrap();
    assert!(matches!(
        table.handle_body(&mut s2, &prefix, now),
        Err(ViewsViolation::Message(_))
    ));
    table.handle_closed(s2, now);
    let (mut s3, _) = table.handle_open(4, &views_request_head(), now).unwrap();
    table.handle_body(&mut s3, &[5, 1], now).unwrap();
    assert!(table.handle_end(&mut s3).is_err());
    table.handle_closed(s3, now);
    let published: Vec<_> = std::iter::from_fn(|| table.poll_event())
        .filter(|e| {
            matches!(
                e,
                MirrorEvent::ViewsChanged { .. } | MirrorEvent::Objects { .. }
            )
        })
        .collect();
    assert!(published.is_empty(), "{published:?}");
    table.handle_closed(s, now);
}

/// The bytes an agent sends for a scripted session: first list, then `changes`.
fn agent_bytes(changes: &[(u8, bool)]) -> Vec<u8> {
    let t0 = Instant::now();
    let mut a = agent(11, t0);
    a.handle_linked(1, t0);
    let mut now = t0;
    let mut wire = Vec::new();
    for b in drain_agent(&mut a, now) {
        wire.extend_from_slice(&b);
    }
    for (n, ready) in changes {
        now += WINDOW;
        a.handle_watch(
            &ResourceKind::node(),
            WatchEvent::Apply(node(&format!("m{n}"), *ready, u64::from(*n) + 10)),
            now,
        )
        .unwrap();
        for b in drain_agent(&mut a, now) {
            wire.extend_from_slice(&b);
        }
    }
    wire
}

fn chunks(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.push(0);
    cuts.push(wire.len());
    cuts.sort_unstable();
    cuts.windows(2).map(|w| wire[w[0]..w[1]].to_vec()).collect()
}

/// Feeds `parts` to a fresh table: the mirror's views, its events and what it sends back.
fn feed(parts: &[Vec<u8>]) -> (String, Vec<MirrorEvent>, Vec<Bytes>, bool) {
    let t0 = Instant::now();
    let mut table = MirrorTable::new(MirrorTableConfig::default());
    let (mut s, _) = table.handle_open(1, &views_request_head(), t0).unwrap();
    let mut ok = true;
    for p in parts {
        if table.handle_body(&mut s, p, t0).is_err() {
            ok = false;
            break;
        }
    }
    let out: Vec<Bytes> = std::iter::from_fn(|| s.poll_transmit()).collect();
    let views = format!("{:?}", table.mirror(1).unwrap().views());
    table.handle_closed(s, t0);
    (
        views,
        std::iter::from_fn(|| table.poll_event()).collect(),
        out,
        ok,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_split_of_the_agents_bytes_gives_the_same_mirror(
        changes in prop::collection::vec((0u8..6, any::<bool>()), 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        garbage in prop::option::of(prop::collection::vec(any::<u8>(), 1..8)),
    ) {
        let mut wire = agent_bytes(&changes);
        if let Some(g) = garbage {
            wire.extend_from_slice(&g);
        }
        let whole = feed(&[wire.clone()]);
        let split = feed(&chunks(&wire, &cuts));
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn any_split_of_kas_bytes_gives_the_same_agent(
        acks in prop::collection::vec(0u64..4, 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let t0 = Instant::now();
        let mut wire = Vec::new();
        for seq in &acks {
            wire.extend_from_slice(&encode_message(&proto::ServerToAgent {
                msg: Some(proto::server_to_agent::Msg::Ack(proto::Ack { epoch: 11, seq: *seq })),
            }));
        }
        let run = |parts: Vec<Vec<u8>>| {
            let mut a = agent(11, t0);
            a.handle_linked(1, t0);
            let mut sent = drain_agent(&mut a, t0);
            for p in &parts {
                a.handle_body(1, p, t0).unwrap();
            }
            sent.extend(drain_agent(&mut a, t0 + WINDOW));
            (sent, a.cache().publisher().last_acked(), a.poll_timeout())
        };
        prop_assert_eq!(run(vec![wire.clone()]), run(chunks(&wire, &cuts)));
    }

    /// After `poll_transmit(now)` gave `None`, `poll_timeout()` is later than `now` (no spin).
    #[test]
    fn never_spins(ops in prop::collection::vec((0u8..6, 0u64..300), 1..40)) {
        let t0 = Instant::now();
        let mut a = agent(13, t0);
        let mut now = t0;
        let mut link = 0u64;
        for (op, arg) in ops {
            now += Duration::from_millis(arg);
            match op {
                0 => {
                    link += 1;
                    a.handle_linked(link, now);
                }
                1 => a.handle_unlinked(link, LinkEnd::Draining),
                2 => {
                    let _ = a.handle_watch(
                        &ResourceKind::node(),
                        WatchEvent::Apply(node(&format!("p{}", arg % 5), arg % 2 == 0, arg)),
                        now,
                    );
                }
                3 => {
                    let ack = encode_message(&proto::ServerToAgent {
                        msg: Some(proto::server_to_agent::Msg::Ack(proto::Ack {
                            epoch: 13,
                            seq: a.cache().publisher().seq(),
                        })),
                    });
                    let _ = a.handle_body(link, &ack, now);
                }
                _ => {
                    // Drive like a driver: send while due, then check the promise.
                    for _ in 0..100 {
                        if a.poll_timeout().is_none_or(|t| t > now) {
                            break;
                        }
                        if a.poll_transmit(now).is_none() {
                            prop_assert!(a.poll_timeout().is_none_or(|t| t > now));
                            break;
                        }
                    }
                }
            }
            if a.link().is_none() {
                prop_assert_eq!(a.poll_transmit(now), None);
            }
        }
    }
}
