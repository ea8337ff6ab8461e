//! Two connections back to back on a simulated clock (see `protocol::testing::pair`): streams in both directions,
//! random chunking, random windows, slow readers, GOAWAY draining and keepalive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use protocol::testing::pair::{Pair, Rng, Side};
use protocol::{AgentHello, CloseReason, Config, ErrorCode, Event, Settings, StreamId, proto};

/// What one side's application does: it opens echo streams and echoes the streams the peer opens.
#[derive(Default)]
struct App {
    /// Streams we opened: body still to send, and the whole body for comparison.
    opened: BTreeMap<StreamId, Opened>,
    /// Streams the peer opened: octets received but not yet echoed (flow control held them back),
    /// and whether the peer finished.
    echoing: BTreeMap<StreamId, Echo>,
    /// Octets received and not yet released (the slow reader).
    unreleased: Vec<(StreamId, usize)>,
    completed: usize,
    resets: usize,
}

struct Opened {
    body: Vec<u8>,
    sent: usize,
    /// END_STREAM queued (with the last octets, or alone for an empty body).
    fin: bool,
    got: Vec<u8>,
    response: bool,
    done: bool,
}

#[derive(Default)]
struct Echo {
    pending: Vec<u8>,
    peer_done: bool,
    finished: bool,
}

fn head(path: &str) -> proto::RequestHead {
    proto::RequestHead {
        service: "echo".into(),
        method: "POST".into(),
        path: path.into(),
        ..Default::default()
    }
}

impl App {
    fn handle_events(&mut self, p: &mut Pair, side: Side) {
        while let Some(ev) = p.conn(side).poll_event() {
            match ev {
                Event::StreamOpened { id, end_stream, .. } => {
                    let c = p.conn(side);
                    c.send_response(
                        id,
                        proto::ResponseHead {
                            status: 200,
                            headers: vec![],
                        },
                        false,
                    )
                    .expect("respond");
                    self.echoing.insert(
                        id,
                        Echo {
                            peer_done: end_stream,
                            ..Default::default()
                        },
                    );
                }
                Event::Response { id, .. } => {
                    self.opened.get_mut(&id).expect("known stream").response = true;
                }
                Event::Data { id, data } => {
                    self.unreleased.push((id, data.len()));
                    if let Some(o) = self.opened.get_mut(&id) {
                        o.got.extend_from_slice(&data);
                    } else {
                        self.echoing
                            .get_mut(&id)
                            .expect("known stream")
                            .pending
                            .extend_from_slice(&data);
                    }
                }
                Event::Finished { id } | Event::Trailer { id, .. } => {
                    if let Some(o) = self.opened.get_mut(&id) {
                        assert_eq!(o.got, o.body, "stream {id} echo differs");
                        o.done = true;
                        self.completed += 1;
                    } else {
                        self.echoing.get_mut(&id).expect("known").peer_done = true;
                    }
                }
                Event::Reset { .. } => self.resets += 1,
                Event::Writable { .. } | Event::GoAway { .. } => {}
                Event::Closed(r) => panic!("unexpected close: {r}"),
                e => panic!("unexpected event {e:?}"),
            }
        }
    }

    /// Sends what flow control allows, echoes, releases some received octets.
    fn work(&mut self, p: &mut Pair, side: Side, rng: &mut Rng) {
        for (id, o) in self.opened.iter_mut() {
            if o.sent < o.body.len() {
                let chunk = Bytes::copy_from_slice(&o.body[o.sent..]);
                let n = p.conn(side).send_data(*id, chunk, true).expect("send");
                o.sent += n;
                // send_data queues END_STREAM with the last octets once it accepted them all.
                o.fin = o.sent == o.body.len();
            } else if !o.fin {
                // An empty body: END_STREAM alone (found when the case count was raised: such a
                // stream never ended and the harness waited forever).
                p.conn(side).finish(*id).expect("finish");
                o.fin = true;
            }
        }
        for (id, e) in self.echoing.iter_mut() {
            if !e.pending.is_empty() {
                let n = p
                    .conn(side)
                    .send_data(*id, Bytes::copy_from_slice(&e.pending), false)
                    .expect("echo");
                e.pending.drain(..n);
            }
            if e.peer_done && e.pending.is_empty() && !e.finished {
                p.conn(side).finish(*id).expect("finish");
                e.finished = true;
            }
        }
        // The slow reader: release a random part of what arrived.
        let keep = rng.below(3) == 0;
        if !keep {
            for (id, n) in std::mem::take(&mut self.unreleased) {
                p.conn(side).release_capacity(id, n);
            }
        }
    }

    fn busy(&self) -> bool {
        !self.unreleased.is_empty()
            || self.opened.values().any(|o| !o.done)
            || self.echoing.values().any(|e| !e.finished)
    }
}

struct Workload {
    streams_each_way: usize,
    max_body: usize,
    window: u32,
    conn_window: u32,
    frame: u32,
    max_chunk: usize,
    seed: u64,
}

fn run(w: &Workload) -> (App, App, Pair) {
    let settings = Settings {
        initial_stream_window: w.window,
        initial_connection_window: w.conn_window,
        max_frame_size: w.frame,
        ..Settings::default()
    };
    let cfg = Config {
        settings,
        max_transmit: 8 * 1024,
        ..Config::default()
    };
    let mut p = Pair::new(
        cfg.clone(),
        cfg,
        AgentHello::default(),
        w.seed,
        Instant::now(),
    );
    p.max_chunk = w.max_chunk;
    p.handshake(7);
    let mut rng = Rng::new(w.seed ^ 0xABCD);
    let (mut a, mut s) = (App::default(), App::default());
    for i in 0..w.streams_each_way {
        for (side, app) in [(Side::Agent, &mut a), (Side::Server, &mut s)] {
            let len = rng.below(w.max_body as u64 + 1) as usize;
            let body: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let id = p
                .conn(side)
                .open_stream(head(&format!("/{i}")), false)
                .expect("open");
            app.opened.insert(
                id,
                Opened {
                    body,
                    sent: 0,
                    fin: false,
                    got: vec![],
                    response: false,
                    done: false,
                },
            );
        }
    }
    for round in 0..2_000_000u32 {
        a.handle_events(&mut p, Side::Agent);
        s.handle_events(&mut p, Side::Server);
        a.work(&mut p, Side::Agent, &mut rng);
        s.work(&mut p, Side::Server, &mut rng);
        let moved = p.step();
        if !moved && !a.busy() && !s.busy() {
            break;
        }
        assert!(round < 1_999_999, "no progress: deadlock");
    }
    (a, s, p)
}

#[test]
fn echo_many_streams_both_directions() {
    let (a, s, p) = run(&Workload {
        streams_each_way: 50,
        max_body: 200_000,
        window: 16 * 1024,
        conn_window: 64 * 1024,
        frame: 16 * 1024,
        max_chunk: 3000,
        seed: 1,
    });
    assert_eq!(a.completed, 50);
    assert_eq!(s.completed, 50);
    assert_eq!(a.resets + s.resets, 0);
    assert_eq!(p.agent.open_streams(), (0, 0));
    assert_eq!(p.server.open_streams(), (0, 0));
    assert!(a.opened.values().all(|o| o.response));
}

proptest! {
    // Each case moves up to ~2 MB through two connections in memory (about 10 ms in the test
    // profile): 256 cases stay within a few seconds.
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn echo_random_windows_and_chunking(
        seed in any::<u64>(),
        streams in 1usize..20,
        max_body in 0usize..60_000,
        window in 1024u32..70_000,
        conn_window in 1024u32..200_000,
        frame in 16_384u32..40_000,
        max_chunk in 1usize..20_000,
    ) {
        let (a, s, p) = run(&Workload { streams_each_way: streams, max_body, window, conn_window, frame, max_chunk, seed });
        prop_assert_eq!(a.completed, streams);
        prop_assert_eq!(s.completed, streams);
        prop_assert_eq!(p.agent.open_streams(), (0, 0));
        prop_assert_eq!(p.server.open_streams(), (0, 0));
    }
}

#[test]
fn slow_reader_blocks_only_its_own_stream() {
    let mut p = Pair::connected(3, Instant::now());
    let slow = p.server.open_stream(head("/slow"), false).expect("open");
    let fast = p.server.open_stream(head("/fast"), false).expect("open");
    p.drive();
    let mut opened = vec![];
    while let Some(ev) = p.agent.poll_event() {
        if let Event::StreamOpened { id, .. } = ev {
            opened.push(id);
            p.agent
                .send_response(id, proto::ResponseHead::default(), false)
                .expect("respond");
        }
    }
    assert_eq!(opened, vec![slow, fast]);
    let window = Settings::default().initial_stream_window as usize;
    // Fill the slow stream's window: the agent never releases it.
    let n = p
        .server
        .send_data(slow, Bytes::from(vec![1u8; window * 2]), false)
        .expect("send");
    assert_eq!(n, window, "only the stream window is accepted");
    p.drive();
    let mut fast_got = 0usize;
    for _ in 0..20 {
        let n = p
            .server
            .send_data(fast, Bytes::from(vec![2u8; window]), false)
            .expect("send fast");
        assert!(n > 0, "fast stream must not be blocked by the slow one");
        p.drive();
        while let Some(ev) = p.agent.poll_event() {
            if let Event::Data { id, data } = ev
                && id == fast
            {
                fast_got += data.len();
                p.agent.release_capacity(id, data.len());
            }
        }
        p.drive();
    }
    assert!(fast_got >= window * 19);
    assert_eq!(p.server.send_capacity(slow), 0);
}

#[test]
fn goaway_drains_in_flight_streams_then_closes() {
    let mut p = Pair::connected(5, Instant::now());
    let id = p.server.open_stream(head("/long"), false).expect("open");
    p.drive();
    while let Some(ev) = p.agent.poll_event() {
        if let Event::StreamOpened { id, .. } = ev {
            p.agent
                .send_response(id, proto::ResponseHead::default(), false)
                .expect("respond");
        }
    }
    p.server.close(ErrorCode::NoError, "restart");
    p.drive();
    assert!(p.agent.is_draining());
    assert!(!p.agent.is_closed(), "in-flight stream keeps it open");
    assert!(matches!(
        p.agent.open_stream(head("/new"), true),
        Err(protocol::OpenError::GoingAway)
    ));
    // The in-flight stream still completes.
    p.agent
        .send_data(id, Bytes::from_static(b"late answer"), true)
        .expect("send");
    p.server.finish(id).expect("finish");
    p.drive();
    let mut got = Vec::new();
    let mut closed = None;
    while let Some(ev) = p.server.poll_event() {
        match ev {
            Event::Data { data, .. } => got.extend_from_slice(&data),
            Event::Closed(r) => closed = Some(r),
            _ => {}
        }
    }
    assert_eq!(got, b"late answer");
    assert_eq!(closed, Some(CloseReason::Graceful));
    assert!(p.agent.is_closed());
}

#[test]
fn goaway_refuses_streams_above_last_id() {
    let mut p = Pair::connected(6, Instant::now());
    // The agent opens a stream, the server says GOAWAY before seeing it.
    let id = p.agent.open_stream(head("/x"), true).expect("open");
    p.server.close(ErrorCode::NoError, "bye");
    // Deliver only the server's GOAWAY first.
    while let Some(b) = p.server.poll_transmit() {
        p.agent.handle_input(&b, p.now);
    }
    let mut refused = false;
    while let Some(ev) = p.agent.poll_event() {
        if let Event::Reset { id: r, code, .. } = ev {
            assert_eq!(r, id);
            assert_eq!(code, ErrorCode::RefusedStream);
            refused = true;
        }
    }
    assert!(refused);
}

#[test]
fn keepalive_keeps_a_healthy_connection_open() {
    let mut p = Pair::connected(8, Instant::now());
    p.advance(Duration::from_secs(600));
    assert!(!p.agent.is_closed());
    assert!(!p.server.is_closed());
    assert!(p.agent.stats().pings_sent > 0);
}

#[test]
fn keepalive_closes_a_silent_peer_at_the_idle_timeout() {
    let start = Instant::now();
    let mut p = Pair::connected(9, start);
    // The server goes silent: everything it sends is lost.
    let idle = Settings::default().idle_timeout;
    let mut t = Duration::ZERO;
    while !p.agent.is_closed() && t < idle * 2 {
        p.cut();
        let next = p.agent.poll_timeout().expect("armed");
        t = next - start;
        p.now = next;
        p.agent.handle_timeout(next);
        p.cut();
    }
    assert!(p.agent.is_closed());
    assert_eq!(t, idle, "closed exactly at the idle timeout");
    let reason = p.agent.close_reason().cloned();
    assert!(matches!(
        reason,
        Some(CloseReason::Local(protocol::ConnectionError::IdleTimeout))
    ));
}

#[test]
fn stream_limit_gives_typed_refusal() {
    let settings = Settings {
        max_concurrent_streams: 3,
        ..Settings::default()
    };
    let cfg = Config {
        settings,
        ..Config::default()
    };
    let mut p = Pair::new(cfg.clone(), cfg, AgentHello::default(), 10, Instant::now());
    p.handshake(1);
    for _ in 0..3 {
        p.server.open_stream(head("/"), false).expect("open");
    }
    assert_eq!(
        p.server.open_stream(head("/"), false),
        Err(protocol::OpenError::LimitReached { limit: 3 })
    );
}

#[test]
fn handshake_refused_and_version_mismatch() {
    let mut p = Pair::new(
        Config::default(),
        Config::default(),
        AgentHello {
            token: "bad".into(),
            ..Default::default()
        },
        11,
        Instant::now(),
    );
    p.drive();
    let Some(Event::Hello(h)) = p.server.poll_event() else {
        panic!("hello expected")
    };
    assert_eq!(h.token, "bad");
    assert!(
        !format!("{h:?}").contains("bad"),
        "token must not be logged"
    );
    p.server.reject(proto::Reject {
        code: proto::RejectCode::Unauthenticated as i32,
        message: "unknown token".into(),
        retry_after_ms: 500,
        ..Default::default()
    });
    p.drive();
    assert!(matches!(
        p.agent.close_reason(),
        Some(CloseReason::Refused {
            code: protocol::RejectCode::Unauthenticated,
            retry_after_ms: 500,
            ..
        })
    ));

    let newer = Config {
        min_version: 2,
        max_version: 3,
        ..Config::default()
    };
    let mut p = Pair::new(
        newer,
        Config::default(),
        AgentHello::default(),
        12,
        Instant::now(),
    );
    p.drive();
    assert!(matches!(
        p.agent.close_reason(),
        Some(CloseReason::Refused {
            code: protocol::RejectCode::VersionUnsupported,
            ..
        })
    ));
}

#[test]
fn handshake_timeout() {
    let start = Instant::now();
    let mut p = Pair::new(
        Config::default(),
        Config::default(),
        AgentHello::default(),
        13,
        start,
    );
    p.drive(); // the server never answers the hello
    p.advance(Duration::from_secs(11));
    assert!(matches!(
        p.agent.close_reason(),
        Some(CloseReason::Local(
            protocol::ConnectionError::HandshakeTimeout
        ))
    ));
}

/// Found by the raised case count of `echo_random_windows_and_chunking`: a stream with an empty body
/// must still end (the harness used to wait for it forever).
#[test]
fn echo_with_empty_bodies_completes() {
    let (a, s, _) = run(&Workload {
        streams_each_way: 14,
        max_body: 258,
        window: 1024,
        conn_window: 1024,
        frame: 16384,
        max_chunk: 1,
        seed: 2836600251039414010,
    });
    assert_eq!((a.completed, s.completed), (14, 14));
    assert!(
        a.opened
            .values()
            .chain(s.opened.values())
            .any(|o| o.body.is_empty()),
        "the case has an empty body"
    );
}

/// Caller misuse is told apart from a stream the peer took away (rustls' `ApiMisuse` split).
#[test]
fn stream_errors_say_whether_the_caller_or_the_peer_is_responsible() {
    use protocol::{ApiMisuse, StreamError};
    let mut p = Pair::connected(6, Instant::now());
    let ours = p.server.open_stream(head("/misuse"), false).expect("open");
    assert_eq!(
        p.server
            .send_response(ours, proto::ResponseHead::default(), false),
        Err(StreamError::Misuse(ApiMisuse::NotAcceptor(ours)))
    );
    p.drive();
    let mut theirs = None;
    while let Some(ev) = p.agent.poll_event() {
        if let Event::StreamOpened { id, .. } = ev {
            theirs = Some(id);
        }
    }
    let theirs = theirs.expect("the agent saw the stream");
    assert_eq!(
        p.agent.send_data(theirs, Bytes::from_static(b"x"), false),
        Err(StreamError::Misuse(ApiMisuse::NoResponseYet(theirs)))
    );
    p.agent
        .send_response(theirs, proto::ResponseHead::default(), false)
        .expect("respond");
    assert_eq!(
        p.agent
            .send_response(theirs, proto::ResponseHead::default(), false),
        Err(StreamError::Misuse(ApiMisuse::AlreadyResponded(theirs)))
    );
    p.server.finish(ours).expect("finish");
    assert_eq!(
        p.server.finish(ours),
        Err(StreamError::Misuse(ApiMisuse::SendAfterFinish(ours)))
    );
    // The server gives up on its stream: for the agent it is gone, a race and not a bug.
    p.server.reset(ours, ErrorCode::Cancel, "no longer needed");
    p.drive();
    assert_eq!(
        p.agent.send_data(theirs, Bytes::from_static(b"x"), true),
        Err(StreamError::Gone(theirs))
    );
}

#[test]
fn accept_names_the_replica_and_the_connections_wanted() {
    let server = Config {
        replica: protocol::tunnel::ReplicaInfo {
            replica_id: "kas-b".into(),
            connections_wanted: 2,
        },
        ..Config::default()
    };
    let mut p = Pair::new(
        Config::default(),
        server,
        AgentHello::default(),
        3,
        Instant::now(),
    );
    p.handshake(9);
    let e = p
        .conn(Side::Agent)
        .established()
        .expect("established")
        .clone();
    assert_eq!((e.replica_id.as_str(), e.connections_wanted), ("kas-b", 2));
    let s = p
        .conn(Side::Server)
        .established()
        .expect("established")
        .clone();
    assert_eq!((s.replica_id.as_str(), s.connections_wanted), ("kas-b", 2));
    // A server that predates the fields: unknown replica, one connection.
    let mut old = Pair::new(
        Config::default(),
        Config {
            replica: protocol::tunnel::ReplicaInfo {
                replica_id: String::new(),
                connections_wanted: 0,
            },
            ..Config::default()
        },
        AgentHello::default(),
        4,
        Instant::now(),
    );
    old.handshake(9);
    let e = old
        .conn(Side::Agent)
        .established()
        .expect("established")
        .clone();
    assert_eq!((e.replica_id.as_str(), e.connections_wanted), ("", 1));
}

/// `poll_transmit_vectored` hands out the very octets `poll_transmit` does (large DATA payloads as
/// slices of the sent buffers), for bodies around the zero-copy threshold, the frame size and the
/// transmit batch.
#[test]
fn vectored_transmit_is_the_same_octets() {
    let now = Instant::now();
    let mut copied = Pair::connected(7, now);
    let mut sliced = Pair::connected(7, now);
    let min = protocol::tunnel::connection::ZERO_COPY_MIN;
    let sizes = [
        0,
        1,
        100,
        min - 1,
        min,
        min + 1,
        16_384,
        16_385,
        70_000,
        300_000,
        900_000,
    ];
    for p in [&mut copied, &mut sliced] {
        for (i, &len) in sizes.iter().enumerate() {
            let id = p
                .agent
                .open_stream(head(&format!("/{i}")), false)
                .expect("open");
            let body: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
            let sent = p
                .agent
                .send_data(id, Bytes::from(body), true)
                .expect("send");
            assert_eq!(sent, len, "the windows take the whole body");
        }
    }
    let mut a = Vec::new();
    // Bounded: each call hands out at least one frame until nothing is queued.
    while let Some(b) = copied.agent.poll_transmit() {
        a.extend_from_slice(&b);
    }
    let mut out = std::collections::VecDeque::new();
    let mut total = 0;
    let mut batches = 0;
    loop {
        let n = sliced.agent.poll_transmit_vectored(&mut out);
        if n == 0 {
            break;
        }
        total += n;
        batches += 1;
    }
    let b: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(total, b.len());
    assert!(batches > 1, "the batch limit applies");
    assert!(out.len() > batches, "large payloads are separate slices");
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the vectored octets differ from poll_transmit's");
    assert_eq!(
        copied.agent.stats().bytes_sent,
        sliced.agent.stats().bytes_sent
    );
}
