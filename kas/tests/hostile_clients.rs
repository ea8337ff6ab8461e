//! Clients of kas's HTTP API as an attacker would be one, against a real kas on 127.0.0.1: the agent
//! inventory is readable only like views and events (every route declares its access), and no single
//! address or user can take every event-stream slot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};

use kas::Running;
use support::{Env, FakeAgent, GUARD, Script, get};

#[test]
fn the_agent_inventory_needs_read_access() {
    let env = Env::new();
    let kas = env.start();
    let script = Script::new("agent-1");
    let _agent = FakeAgent::connect(&env, &kas, 1, &script);
    let url = |p: &str| format!("{}{p}", kas.api_url());

    // No token: nothing about the agents (names, peers, pods, versions, connection ids).
    for path in ["/api/v1/agents", "/api/v1/agents/1", "/api/v1/agents/2"] {
        let reply = get(&url(path), None);
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert!(!reply.body.contains("agentk-abc"), "{path}: {}", reply.body);
    }
    let bad = get(&url("/api/v1/agents"), Some("Bearer pat:1:not-a-token"));
    assert_eq!(bad.status, 401);

    // alice may reach agent 1 only: she sees it, and only it.
    let alice = format!("Bearer pat:1:{}", env.alice_token);
    let list = get(&url("/api/v1/agents"), Some(&alice));
    assert_eq!(list.status, 200, "{}", list.body);
    let ids: Vec<u64> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1]);
    assert_eq!(get(&url("/api/v1/agents/1"), Some(&alice)).status, 200);
    let alice_on_2 = format!("Bearer pat:2:{}", env.alice_token);
    assert_eq!(get(&url("/api/v1/agents/2"), Some(&alice_on_2)).status, 403);
    // An admin sees every agent.
    let all = get(&url("/api/v1/agents"), Some(&env.admin_bearer(1)));
    assert_eq!(all.json().as_array().map(Vec::len), Some(3));
    kas.shutdown();

    // With public_read, the inventory is as public as views and events (the demo's dashboard).
    let mut env = env;
    env.config.api_listener.public_read = true;
    let kas = env.start();
    assert_eq!(
        get(&format!("{}/api/v1/agents", kas.api_url()), None).status,
        200
    );
    assert_eq!(
        get(&format!("{}/api/v1/agents/1", kas.api_url()), None).status,
        200
    );
    kas.shutdown();
}

/// Opens an event stream from `source` (an address of 127.0.0.0/8); returns the status and the
/// connection, which holds the stream open until dropped.
fn open_events(
    kas: &Running,
    source: IpAddr,
    path: &str,
    authorization: Option<&str>,
) -> (u16, BufReader<TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&kas.api_addr().into()).unwrap();
    let mut tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(GUARD)).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: kas\r\nAccept: text/event-stream\r\n{auth}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(tcp);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    (status, reader)
}

#[test]
fn one_address_cannot_take_every_event_stream() {
    let mut env = Env::new();
    env.config.api_listener.public_read = true;
    env.config.events.max_per_source = 5;
    env.config.events.max_subscribers = 50;
    let kas = env.start();
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let dashboard: IpAddr = "127.0.0.3".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        let (status, conn) = open_events(&kas, attacker, "/api/v1/events", None);
        assert_eq!(status, 200);
        held.push(conn);
    }
    for _ in 0..20 {
        let (status, _) = open_events(&kas, attacker, "/api/v1/events", None);
        assert_eq!(status, 429, "one address is limited");
    }
    // The dashboard, elsewhere, still gets its stream.
    let (status, _dash) = open_events(&kas, dashboard, "/api/v1/events", None);
    assert_eq!(status, 200);
    // A slot comes back when a stream ends.
    drop(held.pop());
    support::eventually("the slot to be released", || {
        let (status, conn) = open_events(&kas, attacker, "/api/v1/events", None);
        (status == 200).then_some(conn)
    });
    kas.shutdown();
}

#[test]
fn one_user_cannot_take_every_event_stream() {
    let mut env = Env::new();
    env.config.events.max_per_user = 3;
    env.config.events.max_per_source = 100;
    let kas = env.start();
    let alice = format!("Bearer pat:1:{}", env.alice_token);
    let mut held = Vec::new();
    // Spread over addresses: the limit follows the user.
    for i in 0..3 {
        let source: IpAddr = format!("127.0.1.{}", i + 1).parse().unwrap();
        let (status, conn) = open_events(&kas, source, "/api/v1/agents/1/events", Some(&alice));
        assert_eq!(status, 200);
        held.push(conn);
    }
    let source: IpAddr = "127.0.1.9".parse().unwrap();
    let (status, _) = open_events(&kas, source, "/api/v1/events", Some(&alice));
    assert_eq!(status, 429);
    // Another user is not affected.
    let (status, _admin) = open_events(&kas, source, "/api/v1/events", Some(&env.admin_bearer(1)));
    assert_eq!(status, 200);
    kas.shutdown();
}
