//! Counters a connection keeps about itself (exported as metrics by the drivers).

/// Monotonic counters since the connection was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub frames_sent: u64,
    pub data_bytes_received: u64,
    pub data_bytes_sent: u64,
    pub streams_opened_local: u64,
    pub streams_opened_remote: u64,
    pub streams_refused: u64,
    pub streams_reset_sent: u64,
    pub streams_reset_received: u64,
    pub pings_sent: u64,
    pub unknown_frames_ignored: u64,
}
