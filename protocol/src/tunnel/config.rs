//! Local configuration and the settings both peers announce in the handshake.

use std::time::Duration;

use crate::proto;
use crate::tunnel::frame::{
    DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT, MAX_WINDOW, MIN_MAX_FRAME_SIZE,
};

/// The protocol version this crate implements.
pub const PROTOCOL_VERSION: u32 = 1;

/// Defaults applied when a peer announces 0 for a setting (PROTOCOL.md, "Settings").
pub mod defaults {
    use std::time::Duration;
    /// Streams the peer may have open at once.
    pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
    /// Initial flow-control window of each stream, in octets.
    pub const INITIAL_STREAM_WINDOW: u32 = 1024 * 1024;
    /// Initial flow-control window of the connection, in octets.
    pub const INITIAL_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    /// Largest frame payload accepted.
    pub const MAX_FRAME_SIZE: u32 = super::DEFAULT_MAX_FRAME_SIZE;
    /// Largest encoded REQUEST/RESPONSE/TRAILER payload accepted.
    pub const MAX_HEADER_SIZE: u32 = 64 * 1024;
    /// A peer silent this long is gone.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// A PING is sent after this long without sending anything.
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
    /// The handshake must complete within this time.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// The window flood limits are counted in.
    pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);
}

/// Limits one side is willing to receive, with defaults resolved (never zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How many streams the *peer* may have open towards us at once.
    pub max_concurrent_streams: u32,
    /// Initial per-stream receive window.
    pub initial_stream_window: u32,
    /// Initial connection receive window.
    pub initial_connection_window: u32,
    /// Largest frame payload we accept.
    pub max_frame_size: u32,
    /// Largest REQUEST/RESPONSE/TRAILER payload we accept.
    pub max_header_size: u32,
    /// We close the connection after this much silence from the peer.
    pub idle_timeout: Duration,
    /// We PING after this much silence from the peer.
    pub keepalive_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrent_streams: defaults::MAX_CONCURRENT_STREAMS,
            initial_stream_window: defaults::INITIAL_STREAM_WINDOW,
            initial_connection_window: defaults::INITIAL_CONNECTION_WINDOW,
            max_frame_size: defaults::MAX_FRAME_SIZE,
            max_header_size: defaults::MAX_HEADER_SIZE,
            idle_timeout: defaults::IDLE_TIMEOUT,
            keepalive_interval: defaults::KEEPALIVE_INTERVAL,
        }
    }
}

fn or_default(v: u32, d: u32) -> u32 {
    if v == 0 { d } else { v }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Settings {
    /// Resolves a received settings message: zero means default; out-of-range values are errors.
    pub fn from_wire(s: Option<&proto::Settings>) -> Result<Settings, String> {
        let d = Settings::default();
        let Some(s) = s else { return Ok(d) };
        let out = Settings {
            max_concurrent_streams: or_default(s.max_concurrent_streams, d.max_concurrent_streams),
            initial_stream_window: or_default(s.initial_stream_window, d.initial_stream_window),
            initial_connection_window: or_default(
                s.initial_connection_window,
                d.initial_connection_window,
            ),
            max_frame_size: or_default(s.max_frame_size, d.max_frame_size),
            max_header_size: or_default(s.max_header_size, d.max_header_size),
            idle_timeout: if s.idle_timeout_ms == 0 {
                d.idle_timeout
            } else {
                Duration::from_millis(s.idle_timeout_ms.into())
            },
            keepalive_interval: if s.keepalive_interval_ms == 0 {
                d.keepalive_interval
            } else {
                Duration::from_millis(s.keepalive_interval_ms.into())
            },
        };
        out.validate()?;
        Ok(out)
    }

    /// Checks the ranges PROTOCOL.md allows.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_MAX_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT).contains(&self.max_frame_size) {
            return Err(format!(
                "max_frame_size {} outside {MIN_MAX_FRAME_SIZE}..={MAX_FRAME_SIZE_LIMIT}",
                self.max_frame_size
            ));
        }
        if self.initial_stream_window > MAX_WINDOW || self.initial_connection_window > MAX_WINDOW {
            return Err("window above 2^31-1".into());
        }
        if self.max_header_size < 1024 || self.max_header_size > MAX_FRAME_SIZE_LIMIT {
            return Err(format!(
                "max_header_size {} outside 1024..={MAX_FRAME_SIZE_LIMIT}",
                self.max_header_size
            ));
        }
        Ok(())
    }

    /// The message announcing these settings.
    pub fn to_wire(&self) -> proto::Settings {
        proto::Settings {
            max_concurrent_streams: self.max_concurrent_streams,
            initial_stream_window: self.initial_stream_window,
            initial_connection_window: self.initial_connection_window,
            max_frame_size: self.max_frame_size,
            max_header_size: self.max_header_size,
            idle_timeout_ms: millis(self.idle_timeout),
            keepalive_interval_ms: millis(self.keepalive_interval),
        }
    }
}

/// Everything a [`crate::Connection`] needs besides its role.
#[derive(Debug, Clone)]
pub struct Config {
    /// What we announce and enforce.
    pub settings: Settings,
    /// Inclusive range of versions we speak.
    pub min_version: u32,
    /// Highest version we speak.
    pub max_version: u32,
    /// The handshake must complete within this time.
    pub handshake_timeout: Duration,
    /// Upper bound of one buffer returned by `poll_transmit`.
    pub max_transmit: usize,
    /// How much the peer may make us do without doing useful work (PROTOCOL.md §17).
    pub flood: FloodLimits,
    /// Server only: what ACCEPT says about the replica (PROTOCOL.md §7.4).
    pub replica: ReplicaInfo,
}

/// What a server's ACCEPT says about the replica that accepted (PROTOCOL.md §7.4): its name, and how
/// many connections to distinct replicas each agent should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// This replica's name, the same on all its connections; empty = unknown.
    pub replica_id: String,
    /// Connections to distinct replicas each agent should hold (`K`); 0 means 1.
    pub connections_wanted: u32,
}

impl Default for ReplicaInfo {
    fn default() -> Self {
        ReplicaInfo {
            replica_id: String::new(),
            connections_wanted: 1,
        }
    }
}

/// Limits on what a peer can make a connection do without consuming any of the limits it announced
/// (PROTOCOL.md §17, "Floods"): frames that cost work but carry nothing useful are counted per
/// `window` (a fixed window that restarts with the first frame after it ended), and answers the peer
/// does not read are bounded. A peer over a limit is closed with GOAWAY `ENHANCE_YOUR_CALM`.
///
/// A count of 0 disables that limit. The defaults are far above what a correct peer does (agentk
/// PINGs once per keepalive interval and never sends empty DATA) and far below what an attack needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// The counting window.
    pub window: Duration,
    /// PINGs (and unsolicited PING acknowledgements) per window.
    pub pings: u32,
    /// Streams the peer opened that did no work, per window: reset by the peer before we answered
    /// ("rapid reset"), or refused by us (over the concurrency limit, or after GOAWAY).
    pub rapid_resets: u32,
    /// DATA frames without payload and without END_STREAM, per window.
    pub empty_data: u32,
    /// WINDOW_UPDATE frames per window.
    pub window_updates: u32,
    /// Frames of unknown types (ignored otherwise, PROTOCOL.md §16) per window.
    pub unknown_frames: u32,
    /// Octets of answers to the peer (PING acknowledgements, RESETs, GOAWAY, response heads to the
    /// streams it opened) queued and not yet taken by `poll_transmit`. Above it
    /// [`crate::Connection::wants_input`] is false: a driver stops reading until the peer reads
    /// (back-pressure). Answers produced by input fed anyway beyond four times it close the peer
    /// with `ENHANCE_YOUR_CALM`.
    pub max_queued_answers: usize,
}

impl Default for FloodLimits {
    fn default() -> Self {
        FloodLimits {
            window: defaults::FLOOD_WINDOW,
            pings: 100,
            rapid_resets: 1000,
            empty_data: 1000,
            window_updates: 100_000,
            unknown_frames: 1000,
            max_queued_answers: 256 * 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            max_transmit: 256 * 1024,
            flood: FloodLimits::default(),
            replica: ReplicaInfo::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_below_the_protocol_minimum_is_invalid() {
        let mut s = Settings {
            max_frame_size: MIN_MAX_FRAME_SIZE - 1,
            ..Settings::default()
        };
        let err = s.validate().expect_err("16383 accepted");
        assert!(
            err.contains(&format!("{MIN_MAX_FRAME_SIZE}..={MAX_FRAME_SIZE_LIMIT}")),
            "{err}"
        );
        assert!(err.contains("16383"), "{err}");
        s.max_frame_size = MIN_MAX_FRAME_SIZE;
        assert_eq!(s.validate(), Ok(()));
    }
}
