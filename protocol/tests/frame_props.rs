//! Property tests of the frame codec: every frame type round-trips whatever the input split, and no
//! input makes the decoder panic.

use bytes::Bytes;
use proptest::prelude::*;
use protocol::tunnel::frame::{Decoder, Frame, MAX_FRAME_SIZE_LIMIT};
use protocol::{StreamId, proto};

fn stream_id() -> impl Strategy<Value = StreamId> {
    (1u32..0x7fff_ffff).prop_map(StreamId)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn headers() -> impl Strategy<Value = Vec<proto::Header>> {
    prop::collection::vec(
        (".{0,20}", bytes(40)).prop_map(|(name, value)| proto::Header { name, value }),
        0..5,
    )
}

fn settings() -> impl Strategy<Value = Option<proto::Settings>> {
    prop::option::of(
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c, d)| {
            proto::Settings {
                max_concurrent_streams: a,
                initial_stream_window: b,
                initial_connection_window: c,
                max_frame_size: d,
                max_header_size: a ^ d,
                idle_timeout_ms: b ^ c,
                keepalive_interval_ms: c,
            }
        }),
    )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (stream_id(), bytes(5000), any::<bool>()).prop_map(|(stream, data, end_stream)| {
            Frame::Data {
                stream,
                data,
                end_stream,
            }
        }),
        (
            stream_id(),
            ".{0,30}",
            ".{0,8}",
            ".{0,60}",
            headers(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(
                |(stream, service, method, path, headers, timeout_ms, end_stream)| {
                    Frame::Request {
                        stream,
                        head: proto::RequestHead {
                            service,
                            method,
                            path,
                            headers,
                            timeout_ms,
                            impersonation: None,
                        },
                        end_stream,
                    }
                }
            ),
        (stream_id(), any::<u32>(), headers(), any::<bool>()).prop_map(
            |(stream, status, headers, end_stream)| Frame::Response {
                stream,
                head: proto::ResponseHead { status, headers },
                end_stream,
            }
        ),
        (stream_id(), any::<u32>(), ".{0,40}", headers()).prop_map(
            |(stream, code, message, headers)| Frame::Trailer {
                stream,
                trailer: proto::Trailer {
                    code,
                    message,
                    headers,
                },
            }
        ),
        (stream_id(), any::<u32>(), ".{0,40}").prop_map(|(stream, code, message)| Frame::Reset {
            stream,
            reset: proto::Reset { code, message },
        }),
        (0u32..0x7fff_ffff, 1u32..=0x7fff_ffff).prop_map(|(s, increment)| Frame::WindowUpdate {
            stream: StreamId(s),
            increment,
        }),
        (any::<bool>(), any::<[u8; 8]>()).prop_map(|(ack, payload)| Frame::Ping { ack, payload }),
        (any::<u32>(), any::<u32>(), ".{0,40}").prop_map(|(last_stream_id, code, message)| {
            Frame::GoAway(proto::GoAway {
                last_stream_id,
                code,
                message,
            })
        }),
        (any::<u32>(), any::<u32>(), ".{0,40}", ".{0,20}", settings()).prop_map(
            |(min_version, max_version, token, pod, settings)| Frame::Hello(proto::Hello {
                min_version,
                max_version,
                token,
                meta: Some(proto::AgentMeta {
                    pod_name: pod,
                    capabilities: vec!["k8s-api".into()],
                    ..Default::default()
                }),
                settings,
            })
        ),
        (
            (any::<u32>(), any::<u64>(), settings(), ".{0,20}"),
            (".{0,20}", any::<u32>())
        )
            .prop_map(
                |(
                    (version, agent_id, settings, connection_id),
                    (replica_id, connections_wanted),
                )| {
                    Frame::Accept(proto::Accept {
                        version,
                        agent_id,
                        settings,
                        connection_id,
                        replica_id,
                        connections_wanted,
                    })
                }
            ),
        (0i32..7, ".{0,40}", any::<u32>()).prop_map(|(code, message, retry_after_ms)| {
            Frame::Reject(proto::Reject {
                code,
                message,
                retry_after_ms,
                min_version: 1,
                max_version: 1,
            })
        }),
        (0x0Bu8..=0xFF, any::<u8>(), 0u32..0x7fff_ffff, bytes(100)).prop_map(
            |(kind, flags, s, payload)| Frame::Unknown {
                kind,
                flags,
                stream: StreamId(s),
                payload,
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn roundtrip_split_anywhere(frames in prop::collection::vec(frame(), 1..8), splits in prop::collection::vec(any::<prop::sample::Index>(), 0..10)) {
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&f.to_bytes());
        }
        let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(0);
        cuts.push(wire.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut d = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
        let mut out = Vec::new();
        for w in cuts.windows(2) {
            d.feed(&wire[w[0]..w[1]]);
            while let Some(f) = d.decode().expect("valid input") {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
        prop_assert_eq!(d.buffered(), 0);
    }

    /// Zero-copy input (`feed_bytes`) mixed with copied input (`feed`) at arbitrary cuts decodes
    /// the same frames, and DATA payloads decoded from a whole frame in zero-copy input are slices
    /// of it (same memory).
    #[test]
    fn zero_copy_input_decodes_the_same(frames in prop::collection::vec(frame(), 1..8), splits in prop::collection::vec(any::<prop::sample::Index>(), 0..10), zero_copy in prop::collection::vec(any::<bool>(), 12)) {
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&f.to_bytes());
        }
        let wire = bytes::Bytes::from(wire);
        let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(0);
        cuts.push(wire.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut d = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
        let mut out = Vec::new();
        for (k, w) in cuts.windows(2).enumerate() {
            let part = wire.slice(w[0]..w[1]);
            let whole_buffer_empty = d.buffered() == 0;
            if zero_copy[k % zero_copy.len()] {
                d.feed_bytes(part.clone());
            } else {
                d.feed(&part);
            }
            // Offset in `part` of the next frame while every frame so far lay wholly in `part`.
            let mut offset = (zero_copy[k % zero_copy.len()] && whole_buffer_empty).then_some(0usize);
            while let Some(f) = d.decode().expect("valid input") {
                let len = f.to_bytes().len();
                if let Some(o) = offset {
                    if o + len <= part.len() {
                        if let Frame::Data { data, .. } = &f
                            && !data.is_empty()
                        {
                            let start = part.as_ptr() as usize;
                            let p = data.as_ptr() as usize;
                            prop_assert!((start..start + part.len()).contains(&p), "payload was copied");
                        }
                        offset = Some(o + len);
                    } else {
                        offset = None;
                    }
                }
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..4096), max in 0u32..70_000) {
        let mut d = Decoder::new(max, max);
        d.feed(&input);
        for _ in 0..input.len() + 1 {
            match d.decode() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn connection_never_panics_on_arbitrary_input(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..10), with_preface in any::<bool>()) {
        let now = std::time::Instant::now();
        let mut c = protocol::Connection::server(protocol::Config::default(), now);
        if with_preface {
            c.handle_input(protocol::tunnel::frame::PREFACE, now);
        }
        for ch in &chunks {
            c.handle_input(ch, now);
        }
        while c.poll_event().is_some() {}
        while c.poll_transmit().is_some() {}
    }
}
