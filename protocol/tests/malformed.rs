//! Table test: malformed input fed to an established server connection. Each case must produce its
//! typed error and close the connection with a GOAWAY carrying the right code — or, for stream-level
//! violations, reset only that stream — and never panic.

use std::time::Instant;

use bytes::{BufMut, BytesMut};
use prost::Message;
use protocol::testing::pair::Pair;
use protocol::tunnel::frame::{Decoder, Frame};
use protocol::{
    AgentHello, CloseReason, Config, ConnectionError, ErrorCode, Event, FrameError, Settings, proto,
};

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u32(stream);
    b.put_slice(payload);
    b.to_vec()
}

fn request(stream: u32) -> Vec<u8> {
    let head = proto::RequestHead {
        service: "x".into(),
        ..Default::default()
    };
    raw(1, 0, stream, &head.encode_to_vec())
}

fn small_windows() -> Config {
    Config {
        settings: Settings {
            initial_stream_window: 32 * 1024,
            initial_connection_window: 64 * 1024,
            max_header_size: 2048,
            ..Settings::default()
        },
        ..Config::default()
    }
}

/// An established pair whose server has small windows; the agent's own output is discarded.
fn connected() -> Pair {
    let mut p = Pair::new(
        Config::default(),
        small_windows(),
        AgentHello::default(),
        1,
        Instant::now(),
    );
    p.handshake(1);
    while p.server.poll_event().is_some() {}
    p
}

/// What the server must do with the input.
enum Expect {
    /// Close with this typed error (checked by the predicate) and this GOAWAY code.
    Close(fn(&ConnectionError) -> bool, ErrorCode),
    /// Reset this stream with this code, and stay open.
    ResetStream(u32, ErrorCode),
    /// Nothing: the input is legal and ignored.
    Ignore,
}

fn last_goaway(p: &mut Pair) -> Option<proto::GoAway> {
    let mut d = Decoder::new(1 << 20, 1 << 20);
    while let Some(b) = p.server.poll_transmit() {
        d.feed(&b);
    }
    let mut last = None;
    while let Ok(Some(f)) = d.decode() {
        if let Frame::GoAway(g) = f {
            last = Some(g);
        }
    }
    last
}

fn check(name: &str, input: Vec<u8>, expect: Expect) {
    let mut p = connected();
    let now = p.now;
    // Deliver one byte at a time to also exercise arbitrary splits.
    for b in &input {
        p.server.handle_input(std::slice::from_ref(b), now);
    }
    let events: Vec<Event> = std::iter::from_fn(|| p.server.poll_event()).collect();
    match expect {
        Expect::Close(pred, code) => {
            let reason = p.server.close_reason().cloned();
            let Some(CloseReason::Local(e)) = reason else {
                panic!("{name}: expected a local close, got {reason:?}");
            };
            assert!(pred(&e), "{name}: wrong error {e:?}");
            assert_eq!(e.code(), code, "{name}: wrong code");
            let g = last_goaway(&mut p).unwrap_or_else(|| panic!("{name}: no GOAWAY"));
            assert_eq!(g.code, code.to_u32(), "{name}: GOAWAY code");
            assert!(events.iter().any(|e| matches!(e, Event::Closed(_))));
        }
        Expect::ResetStream(id, code) => {
            assert!(!p.server.is_closed(), "{name}: must stay open");
            assert!(
                events.iter().any(
                    |e| matches!(e, Event::Reset { id: i, code: c, .. } if i.0 == id && *c == code)
                ),
                "{name}: expected reset of {id} with {code}, got {events:?}"
            );
        }
        Expect::Ignore => {
            assert!(!p.server.is_closed(), "{name}: must stay open");
        }
    }
}

#[test]
fn malformed_inputs_table() {
    use ConnectionError as C;
    use FrameError as F;
    let big = vec![0u8; 16 * 1024 + 1];
    let chunk = vec![0u8; 16 * 1024];
    let mut window_flood = request(1);
    for _ in 0..3 {
        window_flood.extend(raw(0, 0, 1, &chunk));
    }
    let mut conn_flood = Vec::new();
    for id in [1, 3, 5] {
        conn_flood.extend(request(id));
        conn_flood.extend(raw(0, 0, id, &chunk));
        conn_flood.extend(raw(0, 0, id, &chunk));
    }
    let huge_head = proto::RequestHead {
        service: "x".repeat(4096),
        ..Default::default()
    }
    .encode_to_vec();
    let mut stale = request(5);
    stale.extend(request(3));
    let mut after_close = request(1);
    after_close.extend(raw(0, 1, 1, b""));
    after_close.extend(raw(0, 0, 1, b"more"));

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "oversized DATA",
            raw(0, 0, 1, &big),
            Expect::Close(
                |e| matches!(e, C::Frame(F::TooLarge { .. })),
                ErrorCode::FrameSize,
            ),
        ),
        (
            "DATA on stream 0",
            raw(0, 0, 0, b"x"),
            Expect::Close(
                |e| matches!(e, C::Frame(F::StreamZero { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "REQUEST on stream 0",
            raw(1, 0, 0, b""),
            Expect::Close(
                |e| matches!(e, C::Frame(F::StreamZero { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "RESET on stream 0",
            raw(4, 0, 0, b""),
            Expect::Close(
                |e| matches!(e, C::Frame(F::StreamZero { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "PING on stream 1",
            raw(6, 0, 1, &[0; 8]),
            Expect::Close(
                |e| matches!(e, C::Frame(F::NonZeroStream { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "GOAWAY on stream 3",
            raw(7, 0, 3, b""),
            Expect::Close(
                |e| matches!(e, C::Frame(F::NonZeroStream { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "flags on RESET",
            raw(4, 1, 1, b""),
            Expect::Close(
                |e| matches!(e, C::Frame(F::BadFlags { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "unknown flag on DATA",
            raw(0, 2, 1, b""),
            Expect::Close(
                |e| matches!(e, C::Frame(F::BadFlags { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "short PING",
            raw(6, 0, 0, &[0; 7]),
            Expect::Close(
                |e| matches!(e, C::Frame(F::BadLength { .. })),
                ErrorCode::FrameSize,
            ),
        ),
        (
            "long WINDOW_UPDATE",
            raw(5, 0, 0, &[0, 0, 0, 1, 0]),
            Expect::Close(
                |e| matches!(e, C::Frame(F::BadLength { .. })),
                ErrorCode::FrameSize,
            ),
        ),
        (
            "zero window increment",
            raw(5, 0, 0, &[0, 0, 0, 0]),
            Expect::Close(
                |e| matches!(e, C::Frame(F::BadWindowIncrement { .. })),
                ErrorCode::FlowControl,
            ),
        ),
        (
            "window increment above 2^31-1",
            raw(5, 0, 0, &[0x80, 0, 0, 0]),
            Expect::Close(
                |e| matches!(e, C::Frame(F::BadWindowIncrement { .. })),
                ErrorCode::FlowControl,
            ),
        ),
        (
            "reserved bit",
            {
                let mut v = raw(6, 0, 0, &[0; 8]);
                v[5] |= 0x80;
                v
            },
            Expect::Close(
                |e| matches!(e, C::Frame(F::ReservedBit)),
                ErrorCode::Protocol,
            ),
        ),
        (
            "truncated protobuf",
            raw(1, 0, 1, &[0x0a, 0x05, b'a']),
            Expect::Close(
                |e| matches!(e, C::Frame(F::BadPayload { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "bad protobuf wire type in GOAWAY",
            raw(7, 0, 0, &[0x0f]),
            Expect::Close(
                |e| matches!(e, C::Frame(F::BadPayload { .. })),
                ErrorCode::Protocol,
            ),
        ),
        (
            "REQUEST with server parity",
            request(2),
            Expect::Close(|e| matches!(e, C::WrongParity { .. }), ErrorCode::Protocol),
        ),
        (
            "REQUEST reusing an older id",
            stale,
            Expect::Close(
                |e| matches!(e, C::StreamIdReused { .. }),
                ErrorCode::Protocol,
            ),
        ),
        (
            "DATA on idle stream",
            raw(0, 0, 9, b"x"),
            Expect::Close(|e| matches!(e, C::IdleStream { .. }), ErrorCode::Protocol),
        ),
        (
            "RESET on idle stream",
            raw(4, 0, 11, b""),
            Expect::Close(|e| matches!(e, C::IdleStream { .. }), ErrorCode::Protocol),
        ),
        (
            "WINDOW_UPDATE on idle stream",
            raw(5, 0, 13, &[0, 0, 0, 1]),
            Expect::Close(|e| matches!(e, C::IdleStream { .. }), ErrorCode::Protocol),
        ),
        (
            "HELLO after the handshake",
            raw(8, 0, 0, b""),
            Expect::Close(
                |e| matches!(e, C::UnexpectedHandshake { .. }),
                ErrorCode::Protocol,
            ),
        ),
        (
            "ACCEPT sent to a server",
            raw(9, 0, 0, b""),
            Expect::Close(
                |e| matches!(e, C::UnexpectedHandshake { .. }),
                ErrorCode::Protocol,
            ),
        ),
        (
            "head above max header size",
            raw(1, 0, 1, &huge_head),
            Expect::Close(
                |e| matches!(e, C::Frame(F::HeaderTooLarge { .. })),
                ErrorCode::HeaderTooLarge,
            ),
        ),
        (
            "stream window exceeded",
            window_flood,
            Expect::Close(
                |e| matches!(e, C::StreamWindowExceeded { .. }),
                ErrorCode::FlowControl,
            ),
        ),
        (
            "connection window exceeded",
            conn_flood,
            Expect::Close(
                |e| matches!(e, C::ConnectionWindowExceeded),
                ErrorCode::FlowControl,
            ),
        ),
        (
            "connection window overflow",
            raw(5, 0, 0, &[0x7f, 0xff, 0xff, 0xff]),
            Expect::Close(
                |e| matches!(e, C::WindowOverflow { .. }),
                ErrorCode::FlowControl,
            ),
        ),
        (
            "DATA after END_STREAM",
            after_close,
            Expect::ResetStream(1, ErrorCode::StreamClosed),
        ),
        (
            "unknown frame type",
            raw(0x42, 0xff, 7, b"future"),
            Expect::Ignore,
        ),
        (
            "unknown frame type on stream 0",
            raw(0xEE, 0, 0, b""),
            Expect::Ignore,
        ),
        (
            "unsolicited PING ack",
            raw(6, 1, 0, &[9; 8]),
            Expect::Ignore,
        ),
    ];
    assert!(cases.len() >= 20);
    for (name, input, expect) in cases {
        check(name, input, expect);
    }
}

#[test]
fn handshake_phase_violations() {
    // Wrong preface.
    let mut c = protocol::Connection::server(Config::default(), Instant::now());
    c.handle_input(b"GET / HTTP/1.1\r\n", Instant::now());
    assert!(matches!(
        c.close_reason(),
        Some(CloseReason::Local(ConnectionError::Frame(
            FrameError::BadPreface
        )))
    ));
    // A REQUEST instead of HELLO.
    let mut c = protocol::Connection::server(Config::default(), Instant::now());
    let mut input = protocol::tunnel::frame::PREFACE.to_vec();
    input.extend(request(1));
    c.handle_input(&input, Instant::now());
    assert!(matches!(
        c.close_reason(),
        Some(CloseReason::Local(ConnectionError::BeforeHandshake { .. }))
    ));
    // Bad settings in HELLO are refused with BAD_HELLO.
    let mut c = protocol::Connection::server(Config::default(), Instant::now());
    let hello = proto::Hello {
        min_version: 1,
        max_version: 1,
        settings: Some(proto::Settings {
            max_frame_size: 100,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut input = protocol::tunnel::frame::PREFACE.to_vec();
    input.extend(Frame::Hello(hello).to_bytes());
    c.handle_input(&input, Instant::now());
    assert!(matches!(
        c.close_reason(),
        Some(CloseReason::Local(ConnectionError::BadSettings { .. }))
    ));
}

#[test]
fn data_before_response_resets_only_that_stream() {
    let mut p = connected();
    let id = p
        .server
        .open_stream(proto::RequestHead::default(), true)
        .expect("open");
    let other = p
        .server
        .open_stream(proto::RequestHead::default(), true)
        .expect("open");
    let now = p.now;
    p.server.handle_input(&raw(0, 0, id.0, b"early"), now);
    let events: Vec<Event> = std::iter::from_fn(|| p.server.poll_event()).collect();
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Reset { id: i, code: ErrorCode::Protocol, .. } if *i == id)
        )
    );
    assert!(!p.server.is_closed());
    assert!(p.server.stream_exists(other));
}

#[test]
fn valid_preface_and_hello_split_byte_by_byte_is_accepted() {
    let now = Instant::now();
    let mut agent = protocol::Connection::agent(Config::default(), AgentHello::default(), now);
    let mut server = protocol::Connection::server(Config::default(), now);
    while let Some(b) = agent.poll_transmit() {
        for byte in b.iter() {
            server.handle_input(std::slice::from_ref(byte), now);
        }
    }
    assert!(!server.is_closed(), "{:?}", server.close_reason());
    assert!(matches!(server.poll_event(), Some(Event::Hello(_))));
}

#[test]
fn closed_is_always_the_last_event() {
    // Found by the connection_input fuzz target: the agent opens stream 1 and sends GOAWAY, then breaks
    // the stream's rules; resetting the last stream of the draining connection closes it, and the
    // stream's Reset must still come before Closed.
    let mut p = connected();
    let now = p.now;
    let mut input = request(1);
    input.extend(Frame::GoAway(proto::GoAway::default()).to_bytes());
    input.extend(
        Frame::Response {
            stream: protocol::StreamId(1),
            head: proto::ResponseHead::default(),
            end_stream: false,
        }
        .to_bytes(),
    );
    p.server.handle_input(&input, now);
    let events: Vec<Event> = std::iter::from_fn(|| p.server.poll_event()).collect();
    assert!(
        p.server.is_closed(),
        "draining connection with no streams left closes"
    );
    assert!(
        matches!(events.last(), Some(Event::Closed(CloseReason::Graceful))),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Reset {
            code: ErrorCode::Protocol,
            ..
        }
    )));
}
