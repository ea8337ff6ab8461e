//! Counters a connection keeps about itself (exported as metrics by the drivers).

/// Monotonic counters since the connection was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Octets read from the transport.
    pub bytes_received: u64,
    /// Octets handed to the transport.
    pub bytes_sent: u64,
    /// Frames decoded.
    pub frames_received: u64,
    /// Frames encoded.
    pub frames_sent: u64,
    /// Body octets received in DATA frames.
    pub data_bytes_received: u64,
    /// Body octets sent in DATA frames.
    pub data_bytes_sent: u64,
    /// Streams this side opened.
    pub streams_opened_local: u64,
    /// Streams the peer opened.
    pub streams_opened_remote: u64,
    /// Streams refused (stream limit, or opened after GOAWAY).
    pub streams_refused: u64,
    /// RESET frames sent.
    pub streams_reset_sent: u64,
    /// RESET frames received.
    pub streams_reset_received: u64,
    /// PING frames sent (keepalive and liveness checks).
    pub pings_sent: u64,
    /// Frames of unknown types skipped (PROTOCOL.md: ignored for extensibility).
    pub unknown_frames_ignored: u64,
}
