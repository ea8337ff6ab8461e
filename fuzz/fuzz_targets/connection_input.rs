//! cargo-fuzz target: arbitrary input to `Connection::handle_input`. The body (and what it checks) is
//! `fuzz/bodies/connection_input.rs`, shared with the bounded stable run in `protocol/tests/fuzz_bodies.rs`.
#![no_main]

#[path = "../bodies/connection_input.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
