//! Scripted rogue agents: a valid agent token driving raw frames over TLS (conformance's wire peer),
//! and the checks that another, well-behaved agent is unaffected.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use conformance::wire::{Peer, summary};
use kas::Running;
use protocol::Settings;
use protocol::proto;
use protocol::tunnel::frame::{Frame, PREFACE};

use crate::support::{Env, GUARD, agent_meta};

/// Dials kas's agent listener as agent `agent` with raw frames; returns once ACCEPT arrived.
pub fn rogue(env: &Env, kas: &Running, agent: u64) -> Peer {
    let tls = tunnel_tls::client_config(&env.pki.roots(), None).unwrap();
    let stream = conformance::tls::connect(kas.agent_addr(), &tls, Instant::now() + GUARD).unwrap();
    let mut peer = Peer::new(stream);
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(
        &Frame::Hello(proto::Hello {
            min_version: 1,
            max_version: 1,
            token: env.token(agent).to_owned(),
            meta: Some(agent_meta("rogue")),
            settings: Some(Settings::default().to_wire()),
        })
        .to_bytes(),
    );
    peer.send_raw(&hello).unwrap();
    peer.wait_for(Instant::now() + GUARD, "ACCEPT", |_, f| match f {
        Frame::Accept(_) => Ok(Some(())),
        other => Err(format!("expected ACCEPT, got {}", summary(other))),
    })
    .unwrap();
    peer
}

pub fn ping(n: u64) -> Vec<u8> {
    Frame::Ping {
        ack: false,
        payload: n.to_be_bytes(),
    }
    .to_bytes()
    .to_vec()
}

/// A request through kas to agent 2 (a well-behaved fake agent) succeeds.
pub fn agent_2_answers(env: &Env, kas: &Running) {
    let reply = crate::support::get(
        &format!("{}/api/v1/namespaces/default/pods", kas.k8s_proxy_url()),
        Some(&env.admin_bearer(2)),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-agent"), Some("agent-2"));
}

/// Waits for kas's GOAWAY (frames before it are skipped).
pub fn wait_goaway(peer: &mut Peer) -> proto::GoAway {
    peer.wait_for(Instant::now() + GUARD, "GOAWAY", |_, f| match f {
        Frame::GoAway(g) => Ok(Some(g.clone())),
        _ => Ok(None),
    })
    .unwrap()
}

/// This process's resident set (kas runs in it), in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}
