//! cargo-fuzz target: arbitrary octets into `frame::Decoder`. The body (and what it checks) is
//! `fuzz/bodies/frame_decoder.rs`, shared with the bounded stable run in `protocol/tests/fuzz_bodies.rs`.
#![no_main]

#[path = "../bodies/frame_decoder.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
