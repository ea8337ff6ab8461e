//! Flood limits and unread answers (PROTOCOL.md §17): an established server connection fed frames
//! that cost work without doing any. Over a limit within its window the connection closes with a
//! typed `Flood` error and GOAWAY `ENHANCE_YOUR_CALM`; the same frames spread over windows are fine;
//! answers the peer does not read stop the connection wanting input, and beyond four times the bound
//! close it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use protocol::testing::pair::Pair;
use protocol::tunnel::config::FloodLimits;
use protocol::tunnel::connection::FloodKind;
use protocol::tunnel::frame::{Decoder, Frame, StreamId};
use protocol::{AgentHello, CloseReason, Config, ConnectionError, ErrorCode, proto};

fn config(flood: FloodLimits) -> Config {
    Config {
        flood,
        ..Config::default()
    }
}

fn small_limits() -> FloodLimits {
    FloodLimits {
        window: Duration::from_secs(10),
        pings: 5,
        rapid_resets: 5,
        empty_data: 5,
        window_updates: 5,
        unknown_frames: 5,
        max_queued_answers: 64 * 1024,
    }
}

/// An established pair whose server has `flood`; the handshake's events are consumed.
fn connected(flood: FloodLimits) -> Pair {
    let mut p = Pair::new(
        Config::default(),
        config(flood),
        AgentHello::default(),
        7,
        Instant::now(),
    );
    p.handshake(1);
    while p.server.poll_event().is_some() {}
    while p.server.poll_transmit().is_some() {}
    p
}

fn ping(n: u64) -> Bytes {
    Frame::Ping {
        ack: false,
        payload: n.to_be_bytes(),
    }
    .to_bytes()
}

/// One frame of `kind` for stream ids from `n` (odd ids: the agent opens them).
fn frames_of(kind: FloodKind, n: u32) -> Vec<Bytes> {
    match kind {
        FloodKind::Ping => vec![ping(u64::from(n))],
        FloodKind::RapidReset => {
            let stream = StreamId(2 * n + 1);
            vec![
                Frame::Request {
                    stream,
                    head: proto::RequestHead {
                        service: "k8s-api".into(),
                        ..Default::default()
                    },
                    end_stream: false,
                }
                .to_bytes(),
                Frame::Reset {
                    stream,
                    reset: proto::Reset {
                        code: ErrorCode::Cancel.to_u32(),
                        message: String::new(),
                    },
                }
                .to_bytes(),
            ]
        }
        FloodKind::EmptyData => {
            // DATA needs an open stream: open one per frame pair so that each empty DATA is legal
            // apart from its emptiness.
            let stream = StreamId(2 * n + 1);
            vec![
                Frame::Request {
                    stream,
                    head: proto::RequestHead::default(),
                    end_stream: false,
                }
                .to_bytes(),
                Frame::Data {
                    stream,
                    data: Bytes::new(),
                    end_stream: false,
                }
                .to_bytes(),
            ]
        }
        FloodKind::WindowUpdate => vec![
            Frame::WindowUpdate {
                stream: StreamId(0),
                increment: 1,
            }
            .to_bytes(),
        ],
        FloodKind::UnknownFrame => {
            // Type 0x2a, no flags, stream 0, 3 octets of payload.
            vec![Bytes::from_static(&[0, 0, 3, 0x2a, 0, 0, 0, 0, 0, 1, 2, 3])]
        }
    }
}

const KINDS: [FloodKind; 5] = [
    FloodKind::Ping,
    FloodKind::RapidReset,
    FloodKind::EmptyData,
    FloodKind::WindowUpdate,
    FloodKind::UnknownFrame,
];

fn goaways(p: &mut Pair) -> Vec<proto::GoAway> {
    let mut d = Decoder::new(1 << 24, 1 << 24);
    while let Some(b) = p.server.poll_transmit() {
        d.feed(&b);
    }
    let mut out = Vec::new();
    while let Ok(Some(f)) = d.decode() {
        if let Frame::GoAway(g) = f {
            out.push(g);
        }
    }
    out
}

#[test]
fn each_kind_over_its_limit_is_closed_with_enhance_your_calm() {
    for kind in KINDS {
        let mut p = connected(small_limits());
        let now = p.now;
        for n in 0..5 {
            for b in frames_of(kind, n) {
                p.server.handle_input(&b, now);
            }
        }
        assert!(!p.server.is_closed(), "{kind}: the limit itself is allowed");
        for b in frames_of(kind, 5) {
            p.server.handle_input(&b, now);
        }
        match p.server.close_reason() {
            Some(CloseReason::Local(ConnectionError::Flood { kind: k, limit, .. })) => {
                assert_eq!((*k, *limit), (kind, 5), "{kind}");
            }
            other => panic!("{kind}: expected a flood close, got {other:?}"),
        }
        let g = goaways(&mut p);
        assert_eq!(
            g.last().map(|g| g.code),
            Some(ErrorCode::EnhanceYourCalm.to_u32()),
            "{kind}: GOAWAY ENHANCE_YOUR_CALM"
        );
    }
}

#[test]
fn the_same_frames_spread_over_windows_are_fine() {
    for kind in KINDS {
        let mut p = connected(small_limits());
        let mut now = p.now;
        for n in 0..50 {
            for b in frames_of(kind, n) {
                p.server.handle_input(&b, now);
            }
            // Five per window: a new window every five frames.
            if n % 5 == 4 {
                now += Duration::from_secs(10);
            }
            while p.server.poll_transmit().is_some() {}
            while p.server.poll_event().is_some() {}
        }
        assert!(
            !p.server.is_closed(),
            "{kind}: closed: {:?}",
            p.server.close_reason()
        );
    }
}

#[test]
fn default_limits_leave_a_correct_peer_alone() {
    // What agentk does in an hour: a keepalive PING every 20 s and an acknowledgement for each of kas's.
    let mut p = connected(FloodLimits::default());
    let mut now = p.now;
    for n in 0..180 {
        now += Duration::from_secs(20);
        p.server.handle_input(&ping(n), now);
        while p.server.poll_transmit().is_some() {}
        while p.server.poll_event().is_some() {}
    }
    assert!(!p.server.is_closed(), "{:?}", p.server.close_reason());
}

#[test]
fn unread_answers_stop_input_and_then_close_the_peer() {
    let limits = FloodLimits {
        pings: 0, // unlimited: only the unread answers count here
        max_queued_answers: 16 * 1024,
        ..FloodLimits::default()
    };
    let mut p = connected(limits);
    let now = p.now;
    // Every PING queues a 17-octet acknowledgement that nobody takes.
    let mut n = 0u64;
    while p.server.wants_input() {
        p.server.handle_input(&ping(n), now);
        n += 1;
        assert!(n < 100_000, "never stopped wanting input");
    }
    assert!(!p.server.is_closed());
    assert!(p.server.queued_answers() > 16 * 1024);
    // Taking the output (the peer read it) makes the connection want input again.
    while p.server.poll_transmit().is_some() {}
    assert!(p.server.wants_input());
    assert_eq!(p.server.queued_answers(), 0);
    // A driver that keeps feeding anyway: closed once four times the bound piles up.
    for _ in 0..100_000 {
        if p.server.is_closed() {
            break;
        }
        p.server.handle_input(&ping(n), now);
        n += 1;
    }
    match p.server.close_reason() {
        Some(CloseReason::Local(e @ ConnectionError::UnreadAnswers { queued, bound })) => {
            assert_eq!(*bound, 16 * 1024);
            assert!(*queued > 4 * 16 * 1024);
            assert_eq!(e.code(), ErrorCode::EnhanceYourCalm);
        }
        other => panic!("expected UnreadAnswers, got {other:?}"),
    }
    let g = goaways(&mut p);
    assert_eq!(
        g.last().map(|g| g.code),
        Some(ErrorCode::EnhanceYourCalm.to_u32())
    );
}

#[test]
fn unread_response_heads_stop_input_but_never_close_the_peer() {
    // The peer opens stream after stream and reads none of the answers.
    let limits = FloodLimits {
        max_queued_answers: 4 * 1024,
        ..FloodLimits::default()
    };
    let mut p = connected(limits);
    let now = p.now;
    let mut n = 0u32;
    while p.server.wants_input() {
        let stream = StreamId(2 * n + 1);
        n += 1;
        let req = Frame::Request {
            stream,
            head: proto::RequestHead {
                service: "unknown".into(),
                ..Default::default()
            },
            end_stream: true,
        };
        p.server.handle_input(&req.to_bytes(), now);
        while p.server.poll_event().is_some() {}
        p.server
            .send_response(
                stream,
                proto::ResponseHead {
                    status: 404,
                    headers: vec![proto::Header {
                        name: "x-tunnel-error".into(),
                        value: Bytes::from_static(b"unknown-service"),
                    }],
                },
                true,
            )
            .expect("the stream is open");
        assert!(n < 10_000, "never stopped wanting input");
    }
    assert!(p.server.queued_answers() > 4 * 1024);
    // The application answering more (it is its own output) is no reason to close the peer.
    for _ in 0..1000 {
        let stream = StreamId(2 * n + 1);
        n += 1;
        let req = Frame::Request {
            stream,
            head: proto::RequestHead::default(),
            end_stream: true,
        };
        p.server.handle_input(&req.to_bytes(), now);
        while p.server.poll_event().is_some() {}
        let _ = p.server.send_response(
            stream,
            proto::ResponseHead {
                status: 404,
                headers: vec![],
            },
            true,
        );
    }
    assert!(!p.server.is_closed(), "{:?}", p.server.close_reason());
    while p.server.poll_transmit().is_some() {}
    assert!(p.server.wants_input());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a peer sends, the answers queued without being read stay within four times the
    /// bound plus one frame's answer, and a connection that wants no input is never fed answers
    /// beyond that.
    #[test]
    fn queued_answers_stay_bounded(
        ops in prop::collection::vec((0usize..5, 0u64..2000, any::<bool>()), 1..400),
    ) {
        let limits = FloodLimits {
            window: Duration::from_secs(1),
            pings: 50,
            rapid_resets: 50,
            empty_data: 50,
            window_updates: 50,
            unknown_frames: 50,
            max_queued_answers: 2048,
        };
        let mut p = connected(limits);
        let mut now = p.now;
        for (i, (k, gap_ms, drain)) in ops.into_iter().enumerate() {
            now += Duration::from_millis(gap_ms);
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            for b in frames_of(KINDS[k], i) {
                p.server.handle_input(&b, now);
            }
            prop_assert!(p.server.queued_answers() <= 4 * 2048 + 256);
            if drain {
                while p.server.poll_transmit().is_some() {}
            }
            while p.server.poll_event().is_some() {}
            if p.server.is_closed() {
                let reason = p.server.close_reason().cloned();
                let calm = matches!(
                    reason,
                    Some(CloseReason::Local(
                        ConnectionError::Flood { .. } | ConnectionError::UnreadAnswers { .. }
                    ))
                );
                prop_assert!(calm, "closed for another reason: {reason:?}");
                break;
            }
        }
    }

    /// A peer that keeps every kind at or under its limit in every window is never closed.
    #[test]
    fn a_peer_within_the_limits_is_never_closed(
        per_window in prop::collection::vec(prop::collection::vec(0usize..5, 0..20), 1..10),
    ) {
        let limits = FloodLimits {
            window: Duration::from_secs(1),
            pings: 4,
            rapid_resets: 4,
            empty_data: 4,
            window_updates: 4,
            unknown_frames: 4,
            max_queued_answers: 64 * 1024,
        };
        let mut p = connected(limits);
        let mut now = p.now;
        let mut n = 0u32;
        for window in per_window {
            let mut counts = [0u32; 5];
            for k in window {
                if counts[k] == 4 {
                    continue;
                }
                counts[k] += 1;
                for b in frames_of(KINDS[k], n) {
                    p.server.handle_input(&b, now);
                }
                n += 1;
                while p.server.poll_transmit().is_some() {}
                while p.server.poll_event().is_some() {}
            }
            now += Duration::from_secs(1);
        }
        prop_assert!(!p.server.is_closed(), "{:?}", p.server.close_reason());
    }
}
