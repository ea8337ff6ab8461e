//! A valid agent token in hostile hands, against a real kas on 127.0.0.1: scripted rogue agents
//! (raw frames over TLS with conformance's wire peer, or runtime-smol's agent API answering with
//! heads kas must not relay). One agent's abuse must cost kas bounded memory, close that agent only,
//! and never harm another agent's requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/rogue.rs"]
mod rogue;
mod support;

use std::io::Read as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::AsyncWriteExt as _;
use kas::Running;
use protocol::ErrorCode;
use protocol::proto::{Header, ResponseHead};
use rogue::{agent_2_answers, ping, rogue, wait_goaway};
use support::{
    Env, FakeAgent, GUARD, Script, agent_meta, eventually, metric, metrics, try_connect,
};

#[test]
fn a_ping_flood_is_closed_with_enhance_your_calm_and_other_agents_keep_working() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-2");
    let _good = FakeAgent::connect(&env, &kas, 2, &script);
    let mut peer = rogue(&env, &kas, 1);
    assert!(kas.wait_for_agents(&[1, 2], GUARD));

    // 1000 PINGs at once: ten times the default limit of 100 per 10 s.
    let burst: Vec<u8> = (0..1000).flat_map(ping).collect();
    peer.auto_pong = false;
    let _ = peer.send_raw(&burst);
    let goaway = wait_goaway(&mut peer);
    assert_eq!(
        ErrorCode::from_u32(goaway.code),
        ErrorCode::EnhanceYourCalm,
        "{goaway:?}"
    );
    assert!(goaway.message.contains("ping"), "{goaway:?}");
    peer.wait_eof(Instant::now() + GUARD).unwrap();

    eventually("kas to drop the abuser and count it", || {
        let text = metrics(&kas);
        let counted = metric(&text, "kas_agent_misbehaviour_total{kind=\"flood\"}");
        (!kas.connected_agents().contains(&1) && counted == Some(1.0)).then_some(())
    });
    agent_2_answers(&env, &kas);
    kas.shutdown();
}

#[test]
fn a_rapid_reset_flood_is_closed_with_enhance_your_calm() {
    let env = Env::new();
    let kas = env.start();
    let mut peer = rogue(&env, &kas, 1);
    // Streams opened and reset at once, 2000 of them (the default limit is 1000 per 10 s).
    let _ = peer.send_all(&conformance::wire::rapid_resets(2000, "nope"));
    let goaway = wait_goaway(&mut peer);
    assert_eq!(
        ErrorCode::from_u32(goaway.code),
        ErrorCode::EnhanceYourCalm,
        "{goaway:?}"
    );
    kas.shutdown();
}

/// What the rogue agent answers, by the request path's last segment.
async fn answer(path: &str, stream: runtime_smol::Stream) {
    let h = |name: &str, value: &str| Header {
        name: name.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    };
    let head = |status: u32, headers: Vec<Header>| ResponseHead { status, headers };
    let mut w: &runtime_smol::Stream = &stream;
    match path.rsplit('/').next().unwrap_or("") {
        "status-999" => drop(stream.respond(head(999, vec![]), true)),
        "status-101" => drop(stream.respond(head(101, vec![h("upgrade", "websocket")]), true)),
        "status-103" => drop(stream.respond(head(103, vec![]), true)),
        "status-7" => drop(stream.respond(head(7, vec![]), true)),
        "no-body" => drop(stream.respond(head(200, vec![h("content-length", "50")]), true)),
        "conflicting-length" => drop(stream.respond(
            head(
                200,
                vec![h("content-length", "5"), h("content-length", "6")],
            ),
            false,
        )),
        "bad-length" => drop(stream.respond(head(200, vec![h("content-length", "five")]), true)),
        "short-body" => {
            let _ = stream.respond(head(200, vec![h("content-length", "100")]), false);
            let _ = w.write_all(b"only ten!!").await;
            let _ = stream.finish();
        }
        "long-body" => {
            let _ = stream.respond(head(200, vec![h("content-length", "5")]), false);
            smol::Timer::after(Duration::from_millis(50)).await;
            let _ = w.write_all(b"ten octets").await;
            let _ = stream.finish();
        }
        _ => {
            let _ = stream.respond(head(200, vec![h("content-length", "2")]), false);
            let _ = w.write_all(b"ok").await;
            let _ = stream.finish();
        }
    }
}

/// A GET through kas to the rogue agent: the status (0 when the response failed before its head
/// was read), and the body or the error reading it.
fn fetch(kas: &Running, bearer: &str, path: &str) -> (u16, Result<Vec<u8>, String>) {
    let url = format!("{}{path}", kas.k8s_proxy_url());
    let resp = match support::http()
        .get(&url)
        .header("Authorization", bearer)
        .call()
    {
        Ok(resp) => resp,
        Err(e) => return (0, Err(e.to_string())),
    };
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let read = resp
        .into_body()
        .into_reader()
        .read_to_end(&mut body)
        .map(|_| body)
        .map_err(|e| e.to_string());
    (status, read)
}

#[test]
fn response_heads_kas_cannot_relay_are_502_and_bodies_that_contradict_them_fail() {
    let env = Env::new();
    let kas = env.start();
    let conn = try_connect(&env, kas.agent_addr(), env.token(1), agent_meta("rogue")).unwrap();
    let serving = conn.clone();
    let _task = smol::spawn(async move {
        // Bounded by the connection.
        while let Some((head, stream)) = serving.accept_stream().await {
            smol::spawn(async move { answer(&head.path, stream).await }).detach();
        }
    });
    assert!(kas.wait_for_agents(&[1], GUARD));
    let bearer = env.admin_bearer(1);

    for path in [
        "/status-999",
        "/status-101",
        "/status-103",
        "/status-7",
        "/no-body",
        "/conflicting-length",
        "/bad-length",
    ] {
        let (status, _) = fetch(&kas, &bearer, path);
        assert_eq!(status, 502, "{path}");
    }
    // Bodies found wrong after the head went out: the client sees the response fail (never a
    // complete response that is not what the agent announced).
    for (path, declared) in [("/short-body", 100), ("/long-body", 5)] {
        match fetch(&kas, &bearer, path) {
            (502, _) => {}
            (0 | 200, Err(_)) => {}
            (200, Ok(body)) => assert_ne!(
                body.len(),
                declared,
                "{path}: a body that contradicts its head was relayed as complete"
            ),
            (status, r) => panic!("{path}: {status} {r:?}"),
        }
    }
    // None of this took the agent offline.
    let (status, body) = fetch(&kas, &bearer, "/fine");
    assert_eq!((status, body), (200, Ok(b"ok".to_vec())));
    assert!(!conn.is_draining());
    let text = metrics(&kas);
    let count = |kind: &str| {
        metric(
            &text,
            &format!("kas_agent_misbehaviour_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(count("bad_response_head"), Some(6.0), "{text}");
    assert_eq!(count("bad_response_body"), Some(3.0), "{text}");
    kas.shutdown();
}
