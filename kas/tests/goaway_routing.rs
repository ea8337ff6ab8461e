//! A request arriving right after an agent's GOAWAY goes to the agent's new connection, without a
//! reroute: kas marks a connection draining synchronously, the moment its driver processed the
//! GOAWAY (`ConnectionHandle::on_event` → `KasRouting::handle_draining`), before it transmits
//! anything after it.
//!
//! Two scripted connections of agent 1 (raw frames over real TLS, conformance's wire peer): A, then B.
//! Left alone the router would pick A (equal load, older). A views stream the agent opened on A keeps
//! A open while it drains. On A the agent sends GOAWAY(last = 0,
//! NO_ERROR) and then a PING; once the PING's ACK arrives kas has processed the GOAWAY (the ACK is
//! transmitted after the observer ran: a wire barrier, no sleeping). Then `GET /k8s-proxy/api` must
//! arrive on B, nothing on A, answer 200, and `kas_requests_rerouted_total` must stay 0.
//!
//! With a drain watcher task (or the earlier 250 ms poll) the request can still be assigned to A,
//! fail to open with GoingAway, and be rerouted (metric 1), or be opened on A before kas noticed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/rogue.rs"]
mod rogue;
mod support;

use std::time::{Duration, Instant};

use conformance::wire::{Peer, summary};
use protocol::StreamId;
use protocol::proto;
use protocol::tunnel::frame::Frame;
use rogue::rogue;
use support::{Env, GUARD, eventually, get, metric, metrics};

/// Answers the first REQUEST on `peer` with 200 and a short body; returns its path.
fn answer_request(peer: &mut Peer) -> String {
    let (stream, path) = peer
        .wait_for(Instant::now() + GUARD, "REQUEST", |_, f| match f {
            Frame::Request { stream, head, .. } => Ok(Some((*stream, head.path.clone()))),
            _ => Ok(None),
        })
        .unwrap();
    peer.send(&Frame::Response {
        stream,
        head: proto::ResponseHead {
            status: 200,
            headers: vec![proto::Header {
                name: "content-type".into(),
                value: bytes::Bytes::from_static(b"application/json"),
            }],
        },
        end_stream: false,
    })
    .unwrap();
    peer.send(&Frame::Data {
        stream,
        data: bytes::Bytes::from_static(b"{\"from\":\"B\"}"),
        end_stream: true,
    })
    .unwrap();
    path
}

#[test]
fn a_request_right_after_goaway_goes_to_the_new_connection_without_a_reroute() {
    let env = Env::new();
    let kas = env.start();
    let admin = env.admin_bearer(1);
    let connections = || {
        get(&format!("{}/api/v1/agents/1", kas.api_url()), Some(&admin)).json()["connections"]
            .as_u64()
    };

    let mut a = rogue(&env, &kas, 1);
    eventually("connection A registered", || {
        (connections() == Some(1)).then_some(())
    });
    let mut b = rogue(&env, &kas, 1);
    eventually("connection B registered", || {
        (connections() == Some(2)).then_some(())
    });

    // A views stream the agent opened keeps A open while it drains (agent-opened streams are not
    // kas's load: the router still prefers A).
    a.send(&Frame::Request {
        stream: StreamId(1),
        head: proto::RequestHead {
            service: protocol::service::VIEWS.into(),
            method: "SYNC".into(),
            path: String::new(),
            headers: vec![],
            timeout_ms: 0,
            impersonation: None,
        },
        end_stream: false,
    })
    .unwrap();

    // GOAWAY on A, then a PING: its ACK proves kas processed the GOAWAY.
    let mut goaway = Frame::GoAway(proto::GoAway {
        last_stream_id: 0,
        code: 0,
        message: "goaway_routing: going away".into(),
    })
    .to_bytes()
    .to_vec();
    goaway.extend_from_slice(&rogue::ping(0x60a));
    a.send_raw(&goaway).unwrap();
    a.wait_for(Instant::now() + GUARD, "PING ACK", |_, f| match f {
        Frame::Ping { ack: true, payload } if *payload == 0x60au64.to_be_bytes() => Ok(Some(())),
        Frame::Request { .. } => Err(format!("a request reached A: {}", summary(f))),
        _ => Ok(None),
    })
    .unwrap();

    let url = format!("{}/api", kas.k8s_proxy_url());
    let bearer = admin.clone();
    let client = std::thread::spawn(move || get(&url, Some(&bearer)));
    let path = answer_request(&mut b);
    assert_eq!(path, "/api");
    let reply = client.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "{\"from\":\"B\"}");

    // Nothing reached A: no REQUEST among what A received until now (bounded read).
    let quiet_until = Instant::now() + Duration::from_millis(200);
    while let Ok(Some(f)) = a.recv(quiet_until) {
        assert!(
            !matches!(f, Frame::Request { .. }),
            "a request reached the draining connection: {}",
            summary(&f)
        );
    }
    let text = metrics(&kas);
    assert_eq!(
        metric(&text, "kas_requests_rerouted_total"),
        Some(0.0),
        "{text}"
    );
    kas.shutdown();
}
