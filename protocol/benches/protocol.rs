//! Throughput of the protocol core, printed as a table (not a timed test: nothing here can fail on
//! speed).
//!
//! ```text
//! cargo bench -p protocol --bench protocol
//! ```
//!
//! 1. Frame codec: encode a 16 KiB DATA frame into a buffer and decode it back with the incremental
//!    decoder, next to a `memcpy` of the same 16 KiB measured in the same run, with the ratio. The codec
//!    copies the payload twice (into the encode buffer, then into the decoder's buffer; the decoded
//!    payload itself is a zero-copy slice), so about 0.5x the memcpy rate is the ceiling. A second row
//!    frames the way the drivers do: only the header is encoded, the payload goes to the vectored
//!    write as a slice, so the receiver's copy into the decoder is the only one (ceiling about 1x).
//!    A third row receives as the drivers now do: the read is handed to the decoder as `Bytes` and
//!    the payload is a slice of it, so the codec copies nothing (TLS decryption wrote those octets).
//! 2. The pair harness ([`protocol::testing::pair::Pair`]): body octets per second moved from agent to server
//!    over 1 and 64 concurrent streams, default settings (16 KiB frames, 1 MiB stream windows, 16 MiB
//!    connection window), the receiver releasing capacity as soon as it sees the data, chunks of up to
//!    1 MiB between the connections. This is the whole Sans-IO stack without a socket: framing, flow
//!    control, stream scheduling and event delivery on both sides.
//!
//! Each measurement is the best of [`RUNS`] runs of about [`RUN`] each, the runs of the memcpy baseline
//! and of the codec interleaved, so that load from other processes on a shared machine (which only ever
//! slows a run down) disturbs the ratio as little as possible; the runs also vary buffer placement (see
//! [`placement_offset`]). `std::hint::black_box` keeps the work
//! from being optimised away.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::testing::pair::Pair;
use protocol::tunnel::frame::{Decoder, Frame, HEADER_LEN, MAX_FRAME_SIZE_LIMIT};
use protocol::{Event, StreamId, proto};

/// Duration of one run.
const RUN: Duration = Duration::from_millis(400);
/// Runs per measurement; the best is reported.
const RUNS: usize = 4;
const FRAME_PAYLOAD: usize = 16 * 1024;

/// Runs `batch` (which processes `bytes_per_batch` octets) repeatedly for about [`RUN`] after a
/// short warm-up; returns octets per second.
fn measure(bytes_per_batch: u64, mut batch: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < RUN / 10 {
        batch();
    }
    let start = Instant::now();
    let mut bytes = 0u64;
    // Bounded: at most this many batches even on an absurdly fast machine.
    for _ in 0..100_000_000u64 {
        batch();
        bytes += bytes_per_batch;
        if start.elapsed() >= RUN {
            break;
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// Relative placement of source and destination number `placement` (0..[`RUNS`]): destination at
/// `64 + placement * 1024` octets past the source, modulo a 4 KiB page.
///
/// Why placements matter: when a copy's source and destination sit at nearly the same offset within a
/// 4 KiB page, the CPU's store-to-load alias check ("4K aliasing") can slow the copy down more than
/// tenfold, and where heap allocations land decides it. Each run uses another placement, for the
/// baseline and for the codec alike, and the best run is reported: both numbers are then the fast case,
/// which is what the ratio should compare.
fn placement_offset(placement: usize) -> usize {
    64 + (placement % 4) * 1024
}

const PAGE: usize = 4096;

/// `memcpy` of 16 KiB between two cache-line aligned buffers.
fn memcpy_baseline(placement: usize) -> f64 {
    let src_buf = vec![0xA5u8; FRAME_PAYLOAD + PAGE];
    let s_off = (64 - src_buf.as_ptr() as usize % 64) % 64;
    let src = &src_buf[s_off..s_off + FRAME_PAYLOAD];
    let mut dst_buf = vec![0u8; FRAME_PAYLOAD + 2 * PAGE];
    let want = (src.as_ptr() as usize + placement_offset(placement)) % PAGE;
    let d_off = (want + PAGE - dst_buf.as_ptr() as usize % PAGE) % PAGE;
    let dst = &mut dst_buf[d_off..d_off + FRAME_PAYLOAD];
    const PER_BATCH: usize = 64;
    measure((FRAME_PAYLOAD * PER_BATCH) as u64, || {
        for _ in 0..PER_BATCH {
            dst.copy_from_slice(black_box(src));
            black_box(&mut *dst);
        }
    })
}

/// Decodes the one DATA frame the decoder holds (a 16 KiB payload).
fn decode_data(decoder: &mut Decoder) {
    match decoder.decode() {
        Ok(Some(Frame::Data { data, .. })) => {
            assert_eq!(data.len(), FRAME_PAYLOAD);
            black_box(data);
        }
        other => panic!("codec round trip failed: {other:?}"),
    }
}

/// Encode a DATA frame into a reused buffer, feed the buffer to a decoder, decode the frame.
fn codec(placement: usize) -> f64 {
    let payload = Bytes::from(vec![0xA5u8; FRAME_PAYLOAD]);
    // The encode buffer starts `placement_offset` octets into its allocation (and stays there: it is
    // cleared, never reallocated), which moves it relative to the payload and to the decoder's buffer.
    let pad = placement_offset(placement);
    let mut out = BytesMut::with_capacity(pad + HEADER_LEN + FRAME_PAYLOAD);
    out.resize(pad, 0);
    let mut out = out.split_off(pad);
    let mut decoder = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
    const PER_BATCH: usize = 64;
    measure((FRAME_PAYLOAD * PER_BATCH) as u64, || {
        for i in 0..PER_BATCH {
            let frame = Frame::Data {
                stream: StreamId(1 + 2 * (i as u32 % 8)),
                data: payload.clone(),
                end_stream: false,
            };
            out.clear();
            black_box(&frame).encode(&mut out);
            decoder.feed(black_box(&out[..]));
            decode_data(&mut decoder);
        }
    })
}

/// The codec as the drivers use it: the sender frames only the 9-octet header and hands the payload
/// to a vectored write as a slice of the application's buffer (no copy,
/// [`protocol::Connection::poll_transmit_vectored`]). The receiver either feeds what arrives to the
/// decoder (`zero_copy` false: one copy) or, as the drivers now do, hands over the read as `Bytes`
/// ([`Decoder::feed_bytes`], here one whole frame as TLS hands it over): the codec copies nothing.
/// Either way the payload comes back as a slice.
fn codec_vectored(placement: usize, zero_copy: bool) -> f64 {
    let payload = Bytes::from(vec![0xA5u8; FRAME_PAYLOAD]);
    let pad = placement_offset(placement);
    let mut out = BytesMut::with_capacity(pad + HEADER_LEN);
    out.resize(pad, 0);
    let mut out = out.split_off(pad);
    let mut wire = BytesMut::with_capacity(HEADER_LEN + FRAME_PAYLOAD);
    protocol::tunnel::frame::encode_data_header(StreamId(1), FRAME_PAYLOAD, false, &mut wire);
    wire.extend_from_slice(&payload);
    let wire = wire.freeze();
    let mut decoder = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
    const PER_BATCH: usize = 64;
    measure((FRAME_PAYLOAD * PER_BATCH) as u64, || {
        for i in 0..PER_BATCH {
            out.clear();
            let id = StreamId(1 + 2 * (i as u32 % 8));
            protocol::tunnel::frame::encode_data_header(id, payload.len(), false, &mut out);
            if zero_copy {
                black_box((&out, &payload));
                decoder.feed_bytes(black_box(wire.clone()));
            } else {
                for s in [&out[..], &black_box(&payload)[..]] {
                    decoder.feed(black_box(s));
                }
            }
            decode_data(&mut decoder);
        }
    })
}

/// Bulk transfer agent -> server on `streams` concurrent streams; returns body octets per second.
fn pair_throughput(streams: usize) -> f64 {
    let mut p = Pair::connected(streams as u64, Instant::now());
    p.max_chunk = 1 << 20;
    let mut ids = Vec::with_capacity(streams);
    for i in 0..streams {
        let head = proto::RequestHead {
            service: "bench".into(),
            method: "GET".into(),
            path: format!("/{i}"),
            ..Default::default()
        };
        ids.push(p.server.open_stream(head, true).expect("open stream"));
    }
    p.drive();
    let mut opened = 0;
    while let Some(ev) = p.agent.poll_event() {
        if let Event::StreamOpened { id, .. } = ev {
            p.agent
                .send_response(id, proto::ResponseHead::default(), false)
                .expect("respond");
            opened += 1;
        }
    }
    assert_eq!(opened, streams, "every stream reached the agent");
    // What the agent offers per stream per round: a slice of one shared buffer (no copy to offer).
    let body = Bytes::from(vec![0x5Au8; 256 * 1024]);
    let mut received = 0u64;
    let mut rounds = 0u64;
    let round = |p: &mut Pair| -> u64 {
        for id in &ids {
            let cap = p.agent.send_capacity(*id);
            if cap > 0 {
                let n = p
                    .agent
                    .send_data(*id, body.slice(..cap.min(body.len())), false)
                    .expect("send");
                black_box(n);
            }
        }
        p.step();
        let mut got = 0u64;
        while let Some(ev) = p.server.poll_event() {
            match ev {
                Event::Data { id, data } => {
                    got += data.len() as u64;
                    p.server.release_capacity(id, data.len());
                    black_box(data);
                }
                Event::Response { .. } => {}
                other => panic!("unexpected event during the transfer: {other:?}"),
            }
        }
        while p.agent.poll_event().is_some() {}
        got
    };
    // Warm-up: fill the pipe.
    for _ in 0..200 {
        round(&mut p);
    }
    let start = Instant::now();
    for _ in 0..100_000_000u64 {
        received += round(&mut p);
        rounds += 1;
        if start.elapsed() >= RUN {
            break;
        }
    }
    let rate = received as f64 / start.elapsed().as_secs_f64();
    assert!(received > 0, "no data moved in {rounds} rounds");
    assert!(!p.agent.is_closed() && !p.server.is_closed());
    rate
}

/// Best and worst of a measurement's runs.
#[derive(Clone, Copy)]
struct Runs {
    best: f64,
    worst: f64,
}

impl Runs {
    fn new() -> Runs {
        Runs {
            best: 0.0,
            worst: f64::INFINITY,
        }
    }

    fn add(&mut self, rate: f64) {
        self.best = self.best.max(rate);
        self.worst = self.worst.min(rate);
    }
}

fn gib(rate: f64) -> String {
    format!("{:>6.2} GiB/s", rate / (1u64 << 30) as f64)
}

fn row(name: &str, r: Runs, baseline: Runs) {
    println!(
        "| {name:<42} | {} | {} | {:>8.3}x |",
        gib(r.best),
        gib(r.worst),
        r.best / baseline.best
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any arguments are accepted and everything always runs (about
    // fifteen seconds in all).
    let (mut memcpy, mut codec, mut vectored, mut zero, mut one, mut many) = (
        Runs::new(),
        Runs::new(),
        Runs::new(),
        Runs::new(),
        Runs::new(),
        Runs::new(),
    );
    for run in 0..RUNS {
        memcpy.add(memcpy_baseline(run));
        codec.add(self::codec(run));
        vectored.add(codec_vectored(run, false));
        zero.add(codec_vectored(run, true));
        one.add(pair_throughput(1));
        many.add(pair_throughput(64));
    }
    println!();
    println!(
        "protocol benchmark: best of {RUNS} interleaved runs of {} ms each (slowest run shown too)",
        RUN.as_millis()
    );
    println!();
    println!(
        "| measurement                                | best         | slowest run  | vs memcpy |"
    );
    println!(
        "|--------------------------------------------|--------------|--------------|-----------|"
    );
    row("memcpy of 16 KiB (baseline)", memcpy, memcpy);
    row("DATA frame 16 KiB encode + decode", codec, memcpy);
    row(
        "DATA 16 KiB, header+slice, decoder copies",
        vectored,
        memcpy,
    );
    row("DATA 16 KiB, header+slice, zero-copy read", zero, memcpy);
    row("pair harness, 1 stream, agent -> server", one, memcpy);
    row("pair harness, 64 streams, agent -> server", many, memcpy);
    println!();
}
