//! The JSON shape of the vector files (`conformance/vectors/*.json`).
//!
//! Three files:
//!
//! - `frames.json` — well-formed frames of every type and flag: `hex` ⇄ `frames` (decoded meaning);
//! - `handshake.json` — prefaces, HELLO, ACCEPT and REJECT messages (including §18's worked example);
//! - `malformed.json` — input a receiver must refuse (or ignore), each with the outcome it must produce.
//!
//! Hex strings are lower-case without separators. Protobuf payloads are given decoded, every field
//! listed (proto3 defaults included); `bytes` fields as hex.

use serde::{Deserialize, Serialize};

/// One vector file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorFile<V> {
    /// What the file holds and how to use it.
    pub description: String,
    /// The specification the expectations were taken from.
    pub generated_from: String,
    pub vectors: Vec<V>,
}

/// Octets ⇄ meaning: decoding `hex` must give `frames` (after the preface if `preface`), and encoding
/// `frames` must give `hex` back (the encoding is canonical: fields in number order, defaults omitted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameVector {
    pub name: String,
    /// The lines of PROTOCOL.md this vector checks.
    pub spec: Vec<String>,
    /// The octets begin with the 8-octet connection preface.
    pub preface: bool,
    pub hex: String,
    pub frames: Vec<FrameMeaning>,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameMeaning {
    /// The §5 name (`DATA`, ...), or `UNKNOWN` for undefined type codes.
    #[serde(rename = "type")]
    pub type_name: String,
    pub type_code: u8,
    pub flags: u8,
    /// Names of the set flags, from §5.
    pub flag_names: Vec<String>,
    pub stream: u32,
    /// Payload length in octets (the header's Length field).
    pub length: u32,
    /// The payload, decoded: fields per `proto/tunnel.proto`, or `data_hex` / `payload_hex` for
    /// opaque octets, `increment` for WINDOW_UPDATE, `ack`/`payload_hex` for PING.
    pub payload: serde_json::Value,
}

/// Which side receives the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Receiver {
    /// kas: the input is what an agent sends.
    Server,
    /// agentk: the input is what a server sends.
    Agent,
}

/// When the input arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The connection starts with `input_hex` (server: the agent's preface is part of the input). A
    /// server accepts a HELLO reported to its application only after the whole input was processed.
    Handshake,
    /// `handshake_hex` completes the handshake first (server: the agent's preface and HELLO, which the
    /// application accepts; agent: the server's ACCEPT), then the receiver opens `local_streams`
    /// streams, then `input_hex` arrives.
    Established,
}

/// Settings the receiver announces (and enforces), all fields explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsJson {
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_frame_size: u32,
    pub max_header_size: u32,
    pub idle_timeout_ms: u32,
    pub keepalive_interval_ms: u32,
}

/// What the receiver must do with `input_hex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Send GOAWAY with `code`, process nothing more, close.
    ConnectionError,
    /// Send RESET with `code` on `stream`; the connection stays open.
    StreamError,
    /// Send REJECT with `reject_code`, close.
    Reject,
    /// Nothing: the connection stays open and sends no GOAWAY, RESET or REJECT.
    Ignored,
    /// Close without sending anything.
    ClosedSilently,
    /// Answer with exactly the frame(s) in `reply_hex` and stay open.
    Reply,
}

/// The expected reaction, taken from §13 (and §11 for replies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    pub outcome: Outcome,
    /// `connection`, `stream`, `handshake` or `none`.
    pub level: String,
    /// Error code name (§14) for connection and stream errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Error code value (§14) carried in the GOAWAY or RESET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    /// The stream reset, for stream errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
    /// `RejectCode` name and value (§7.4) for rejections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_value: Option<i32>,
    /// The frame(s) the receiver answers with, for replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_hex: Option<String>,
    /// The reference implementation's `protocol::FrameError` variant, for errors its frame decoder
    /// detects on its own (informative for other implementations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec_error: Option<String>,
}

/// Input a receiver must refuse or ignore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MalformedVector {
    pub name: String,
    pub spec: Vec<String>,
    pub receiver: Receiver,
    /// What the receiver announces; the sender of the input uses defaults (absent settings).
    pub receiver_settings: SettingsJson,
    pub phase: Phase,
    #[serde(default)]
    pub handshake_hex: String,
    /// Streams the receiver opens right after the handshake (ids 2, 4, ... for a server; 1, 3, ...
    /// for an agent), each a REQUEST with END_STREAM and head `{service: "vector", method: "GET",
    /// path: "/"}`.
    #[serde(default)]
    pub local_streams: u32,
    pub input_hex: String,
    /// Why this input is what it is, when not obvious.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub expect: Expect,
}
