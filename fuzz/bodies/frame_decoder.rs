//! Fuzz target: arbitrary octets → [`Decoder`] with arbitrary limits, input split at arbitrary points.
//!
//! Input layout: 4 octets max payload, 4 octets max header size (both little-endian, any value: the
//! decoder clamps them), 1 octet chunking seed, then the wire octets.
//!
//! Checked, beyond "never panics":
//! - the frames and the final outcome (error or need-more-input) are the same whether the wire arrives
//!   in one piece or in random chunks;
//! - every decoded frame re-encodes to octets that decode to an equal frame;
//! - a DATA payload never exceeds the payload limit;
//! - after an error the decoder is poisoned: it repeats the same error.
use protocol::FrameError;
use protocol::testing::pair::Rng;
use protocol::tunnel::frame::{Decoder, Frame, MAX_FRAME_SIZE_LIMIT};

/// Frames until the decoder wants more input, then the error if it stopped on one.
fn decode_all(d: &mut Decoder, out: &mut Vec<Frame>) -> Option<FrameError> {
    // Bounded: every decoded frame consumed at least its 9 header octets.
    for _ in 0..=d.buffered() / 9 + 1 {
        match d.decode() {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return None,
            Err(e) => {
                assert_eq!(
                    d.decode(),
                    Err(e.clone()),
                    "decoder not poisoned after an error"
                );
                return Some(e);
            }
        }
    }
    panic!("decoder returned more frames than the input can hold");
}

fn check_frame(f: &Frame, max_payload: u32) {
    if let Frame::Data { data, .. } = f {
        assert!(data.len() as u64 <= u64::from(max_payload.min(MAX_FRAME_SIZE_LIMIT)));
    }
    let bytes = f.to_bytes();
    let mut d = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
    d.feed(&bytes);
    match d.decode() {
        Ok(Some(again)) => assert_eq!(&again, f, "re-encoded frame decodes differently"),
        other => panic!("re-encoded frame does not decode: {other:?} for {f:?}"),
    }
    assert_eq!(d.buffered(), 0);
}

/// The target's body: runs one input through the checks above; panics on a violation.
pub fn run(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let max_payload = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let max_header = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    let seed = data[8];
    let wire = &data[9..];

    // Whole input at once.
    let mut whole = Decoder::new(max_payload, max_header);
    whole.feed(wire);
    let mut frames_whole = Vec::new();
    let err_whole = decode_all(&mut whole, &mut frames_whole);

    // Random chunks, decoding after each.
    let mut rng = Rng::new(u64::from(seed));
    let max_chunk = 1 + (u64::from(seed) % 64) * 37;
    let mut split = Decoder::new(max_payload, max_header);
    let mut frames_split = Vec::new();
    let mut err_split = None;
    let mut pos = 0;
    while pos < wire.len() && err_split.is_none() {
        let n = (1 + rng.below(max_chunk) as usize).min(wire.len() - pos);
        split.feed(&wire[pos..pos + n]);
        pos += n;
        err_split = decode_all(&mut split, &mut frames_split);
    }

    assert_eq!(
        frames_whole, frames_split,
        "frames depend on where the input splits"
    );
    assert_eq!(
        err_whole, err_split,
        "outcome depends on where the input splits"
    );
    for f in &frames_whole {
        check_frame(f, max_payload);
    }
}
