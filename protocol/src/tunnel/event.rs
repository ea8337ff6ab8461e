//! What a [`crate::Connection`] reports to its driver through `poll_event`.

use bytes::Bytes;

use crate::proto;
use crate::tunnel::config::Settings;
use crate::tunnel::error::{CloseReason, ErrorCode};
use crate::tunnel::frame::StreamId;

/// An agent's HELLO as the server application sees it. The token is redacted from `Debug`.
#[derive(Clone, PartialEq)]
pub struct HelloInfo {
    /// The agent's token, to authenticate (never log it).
    pub token: String,
    /// What the agent says about itself (version, capabilities, pod).
    pub meta: proto::AgentMeta,
    /// The version the connection will use if accepted.
    pub version: u32,
    /// The settings the agent announced.
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
    /// The protocol version in use.
    pub version: u32,
    /// The agent's identity, as kas's ACCEPT named it.
    pub agent_id: u64,
    /// kas's name for this connection (for logs on both sides).
    pub connection_id: String,
    /// The kas replica that accepted the connection (ACCEPT's `replica_id`; empty = unknown).
    pub replica_id: String,
    /// How many connections to distinct replicas kas wants the agent to hold (ACCEPT's
    /// `connections_wanted`, 0 resolved to 1).
    pub connections_wanted: u32,
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
        /// The new stream.
        id: StreamId,
        /// Its request head.
        head: proto::RequestHead,
        /// No body follows.
        end_stream: bool,
    },
    /// The acceptor of a stream we opened answered.
    Response {
        /// The stream.
        id: StreamId,
        /// The response head.
        head: proto::ResponseHead,
        /// No body follows.
        end_stream: bool,
    },
    /// Body octets. The application must call `release_capacity(id, data.len())` once it has consumed
    /// them; until then they count against the windows (this is the backpressure).
    Data {
        /// The stream.
        id: StreamId,
        /// The octets.
        data: Bytes,
    },
    /// The peer finished its direction of the stream without a trailer.
    Finished {
        /// The stream.
        id: StreamId,
    },
    /// The peer finished its direction of the stream with a trailer.
    Trailer {
        /// The stream.
        id: StreamId,
        /// The trailer.
        trailer: proto::Trailer,
    },
    /// The stream was reset. `remote`: by the peer (else by this side because of an error, a refusal
    /// after GOAWAY, or the connection closing).
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: ErrorCode,
        /// The explanation (for logs).
        message: String,
        /// Reset by the peer.
        remote: bool,
    },
    /// A stream that could not take all offered data can take more now.
    Writable {
        /// The stream.
        id: StreamId,
    },
    /// The peer is going away: no new streams; ours above `last_stream_id` were refused (each gets a
    /// `Reset` with `RefusedStream` and may be retried on another connection).
    GoAway {
        /// The last of our streams the peer processes.
        last_stream_id: u32,
        /// `NO_ERROR` for a graceful drain, else why.
        code: ErrorCode,
        /// The explanation (for logs).
        message: String,
    },
    /// The connection is over. Flush `poll_transmit` and then close the transport.
    Closed(CloseReason),
}
