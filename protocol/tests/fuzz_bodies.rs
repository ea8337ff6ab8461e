//! The fuzz targets' bodies (`fuzz/bodies/*.rs`, also built by `cargo fuzz` from `fuzz/`), run on the
//! stable toolchain as an ordinary test, briefly and bounded: the committed regression inputs
//! (`fuzz/regressions/<target>/*.hex`), then inputs from a seeded generator — structure-aware seeds
//! (valid frames, a real preface and HELLO, operation streams) mutated at random (bit flips, inserted,
//! deleted and duplicated octets, truncation, splicing) — until `FUZZ_SECONDS` (default 4) or
//! `FUZZ_RUNS` (default 200,000) per target. `FUZZ_SEED` (default 1) picks the sequence; a failing input
//! is printed in hex, to be replayed with `cargo fuzz run <target> <file>` or added to the regressions.
//!
//! This is not coverage-guided fuzzing (that needs `cargo fuzz` and a nightly compiler; see
//! `fuzz/README.md`); it keeps every check of the targets exercised by every test run.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../../fuzz/bodies/connection_input.rs"]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod connection_input;
#[path = "../../fuzz/bodies/frame_decoder.rs"]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod frame_decoder;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::proto;
use protocol::testing::pair::Rng;
use protocol::tunnel::frame::{Frame, PREFACE, StreamId};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Committed inputs of one target (hex, one per file; whitespace ignored).
fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "hex") {
                let text: String = std::fs::read_to_string(&path)
                    .unwrap()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let bytes = (0..text.len() / 2)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out.sort();
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `body` on `input`; on a panic, prints the input and fails.
fn run_one(target: &str, body: fn(&[u8]), input: &[u8]) {
    let r = std::panic::catch_unwind(|| body(input));
    if let Err(e) = r {
        eprintln!(
            "fuzz target {target} failed on input (hex, {} octets):\n{}",
            input.len(),
            hex(input)
        );
        std::panic::resume_unwind(e);
    }
}

/// Random octets, fewer than `max`.
fn bytes(rng: &mut Rng, max: u64) -> Vec<u8> {
    let n = rng.below(max);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// A random well-formed frame.
fn frame(rng: &mut Rng) -> Frame {
    let stream = StreamId((rng.below(8) + 1) as u32);
    let small = |rng: &mut Rng| Bytes::from(bytes(rng, 64));
    match rng.below(12) {
        0..=2 => Frame::Data {
            stream,
            data: Bytes::from(bytes(rng, 3000)),
            end_stream: rng.below(2) == 0,
        },
        3 => Frame::Request {
            stream,
            head: proto::RequestHead {
                service: ["k8s-api", "views", "cache", ""][rng.below(4) as usize].into(),
                method: "GET".into(),
                path: "/api".into(),
                headers: vec![proto::Header {
                    name: "x".into(),
                    value: small(rng),
                }],
                timeout_ms: rng.below(10_000) as u32,
                impersonation: None,
            },
            end_stream: rng.below(2) == 0,
        },
        4 => Frame::Response {
            stream,
            head: proto::ResponseHead {
                status: 200,
                headers: Vec::new(),
            },
            end_stream: rng.below(2) == 0,
        },
        5 => Frame::Reset {
            stream,
            reset: proto::Reset {
                code: rng.below(16) as u32,
                message: "x".into(),
            },
        },
        6 => Frame::WindowUpdate {
            stream: StreamId(rng.below(4) as u32),
            increment: rng.below(1 << 20) as u32,
        },
        7 => Frame::Ping {
            ack: rng.below(2) == 0,
            payload: rng.next_u64().to_be_bytes(),
        },
        8 => Frame::GoAway(proto::GoAway {
            last_stream_id: rng.below(10) as u32,
            code: rng.below(16) as u32,
            message: String::new(),
        }),
        9 => Frame::Trailer {
            stream,
            trailer: proto::Trailer::default(),
        },
        10 => Frame::Hello(proto::Hello {
            min_version: 1,
            max_version: 1,
            token: "t".into(),
            ..Default::default()
        }),
        _ => Frame::Unknown {
            kind: 0x20 + rng.below(0xc0) as u8,
            flags: rng.next_u64() as u8,
            stream,
            payload: small(rng),
        },
    }
}

fn frames(rng: &mut Rng, n: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    for _ in 0..rng.below(n) + 1 {
        frame(rng).encode(&mut out);
    }
    out.to_vec()
}

/// Random mutations of `input`.
fn mutate(rng: &mut Rng, mut input: Vec<u8>, splice: &[u8]) -> Vec<u8> {
    for _ in 0..rng.below(4) {
        let len = input.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len as u64 + 1) as usize;
                let mut extra = bytes(rng, 8);
                extra.push(rng.next_u64() as u8);
                input.splice(i..i, extra);
            }
            2 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                let n = (rng.below(16) as usize + 1).min(len - i);
                input.drain(i..i + n);
            }
            3 if len > 0 => {
                input.truncate(rng.below(len as u64) as usize);
            }
            4 if len > 0 => {
                let i = rng.below(len as u64) as usize;
                input[i] = [0, 0xff, 0x7f, 0x80][rng.below(4) as usize];
            }
            5 if !splice.is_empty() => {
                let at = rng.below(len as u64 + 1) as usize;
                let from = rng.below(splice.len() as u64) as usize;
                let n = (rng.below(64) as usize + 1).min(splice.len() - from);
                input.splice(at..at, splice[from..from + n].iter().copied());
            }
            _ => {}
        }
    }
    input
}

/// An input for `frame_decoder`: limits, a chunking seed, then frames, mutated.
fn decoder_input(rng: &mut Rng) -> Vec<u8> {
    let max_payload: u32 = match rng.below(4) {
        0 => rng.below(64) as u32,
        1 => 16 * 1024,
        2 => rng.next_u64() as u32,
        _ => rng.below(5000) as u32,
    };
    let max_header: u32 = if rng.below(2) == 0 {
        rng.below(200) as u32
    } else {
        64 * 1024
    };
    let mut input = Vec::new();
    input.extend_from_slice(&max_payload.to_le_bytes());
    input.extend_from_slice(&max_header.to_le_bytes());
    input.push(rng.next_u64() as u8);
    let wire = frames(rng, 6);
    input.extend_from_slice(&wire);
    if rng.below(3) == 0 {
        input
    } else {
        let splice = frames(rng, 2);
        mutate(rng, input, &splice)
    }
}

/// An input for `connection_input`: a mode, options, then wire octets (modes 0, 3: a preface and
/// HELLO for mode 0, then frames) or operation octets (modes 1, 2, 4: mostly random bytes, which the
/// target reads as operations), mutated.
fn connection_input_input(rng: &mut Rng) -> Vec<u8> {
    let mode = rng.below(5) as u8;
    let mut input = vec![mode, rng.next_u64() as u8];
    match mode {
        0 => {
            input.extend_from_slice(PREFACE);
            let mut hello = BytesMut::new();
            Frame::Hello(proto::Hello {
                min_version: 1,
                max_version: 1,
                token: "token".into(),
                ..Default::default()
            })
            .encode(&mut hello);
            input.extend_from_slice(&hello);
            input.extend_from_slice(&frames(rng, 4));
        }
        3 => input.extend_from_slice(&frames(rng, 6)),
        _ => {
            input.extend_from_slice(&bytes(rng, 400));
        }
    }
    if rng.below(3) == 0 {
        input
    } else {
        let splice = frames(rng, 2);
        mutate(rng, input, &splice)
    }
}

/// Regressions, then generated inputs within the time and count bounds.
fn campaign(target: &str, body: fn(&[u8]), generate: fn(&mut Rng) -> Vec<u8>) {
    for (name, input) in regressions(target) {
        eprintln!("{target}: regression {name}");
        run_one(target, body, &input);
    }
    let seconds = env_u64("FUZZ_SECONDS", 4);
    let runs = env_u64("FUZZ_RUNS", 200_000);
    let seed = env_u64("FUZZ_SEED", 1);
    let mut rng = Rng::new(seed ^ target.len() as u64);
    let started = Instant::now();
    let mut done = 0u64;
    // Bounded by the run count and the time budget.
    while done < runs && started.elapsed() < Duration::from_secs(seconds) {
        let input = generate(&mut rng);
        run_one(target, body, &input);
        done += 1;
    }
    eprintln!(
        "{target}: {done} generated inputs in {:.1} s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
    assert!(done > 0, "no input ran");
}

#[test]
fn frame_decoder_body_bounded_run() {
    campaign("frame_decoder", frame_decoder::run, decoder_input);
}

#[test]
fn connection_input_body_bounded_run() {
    campaign(
        "connection_input",
        connection_input::run,
        connection_input_input,
    );
}

/// The harness can fail: a body that panics on some generated input is reported.
#[test]
fn a_failing_body_is_reported() {
    fn picky(data: &[u8]) {
        assert!(!data.windows(2).any(|w| w == [0xde, 0xad]), "found it");
    }
    let r = std::panic::catch_unwind(|| {
        run_one("picky", picky, &[1, 0xde, 0xad, 2]);
    });
    assert!(r.is_err());
}
