//! What a [`crate::Connection`] reports to its driver through `poll_event`.

use bytes::Bytes;

use crate::proto;
use crate::tunnel::config::Settings;
use crate::tunnel::error::{CloseReason, ErrorCode};
use crate::tunnel::frame::StreamId;

/// An agent's HELLO as the server application sees it. The token is redacted from `Debug`.
#[derive(Clone, PartialEq)]
pub struct HelloInfo {
    pub token: String,
    pub meta: proto::AgentMeta,
    /// The version the connection will use if accepted.
    pub version: u32,
    pub settings: Settings,
}

impl std::fmt::Debug for HelloInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelloInfo")
            .field("token", &"<redacted>")
            .field("meta", &self.meta)
            .field("version", &self.version)
            .finish()
    }
}

/// Handshake result, on both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct Established {
    pub version: u32,
    pub agent_id: u64,
    pub connection_id: String,
    /// What the peer announced.
    pub peer_settings: Settings,
}

/// Events, in the order they happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Server only: an agent said HELLO; answer with `accept` or `reject`.
    Hello(HelloInfo),
    /// The handshake completed; streams may be opened.
    Connected(Established),
    /// The peer opened a stream. `end_stream`: it will send no body.
    StreamOpened {
        id: StreamId,
        head: proto::RequestHead,
        end_stream: bool,
    },
    /// The acceptor of a stream we opened answered.
    Response {
        id: StreamId,
        head: proto::ResponseHead,
        end_stream: bool,
    },
    /// Body octets. The application must call `release_capacity(id, data.len())` once it has consumed
    /// them; until then they count against the windows (this is the backpressure).
    Data { id: StreamId, data: Bytes },
    /// The peer finished its direction of the stream without a trailer.
    Finished { id: StreamId },
    /// The peer finished its direction of the stream with a trailer.
    Trailer {
        id: StreamId,
        trailer: proto::Trailer,
    },
    /// The stream was reset. `remote`: by the peer (else by this side because of an error, a refusal
    /// after GOAWAY, or the connection closing).
    Reset {
        id: StreamId,
        code: ErrorCode,
        message: String,
        remote: bool,
    },
    /// A stream that could not take all offered data can take more now.
    Writable { id: StreamId },
    /// The peer is going away: no new streams; ours above `last_stream_id` were refused (each gets a
    /// `Reset` with `RefusedStream` and may be retried on another connection).
    GoAway {
        last_stream_id: u32,
        code: ErrorCode,
        message: String,
    },
    /// The connection is over. Flush `poll_transmit` and then close the transport.
    Closed(CloseReason),
}
