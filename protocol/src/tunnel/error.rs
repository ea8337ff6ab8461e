//! Errors and the wire error codes they map to (kept side by side, as in quinn-proto).

use crate::tunnel::frame::StreamId;

/// Error codes carried in RESET and GOAWAY frames (PROTOCOL.md, "Error codes").
///
/// Receivers map codes they do not know to [`ErrorCode::Internal`]'s handling (the raw value is kept
/// in [`ErrorCode::Unknown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: graceful: not an error.
    NoError,
    /// 1: the peer broke a rule of the protocol.
    Protocol,
    /// 2: the sender hit an internal failure.
    Internal,
    /// 3: the peer sent more DATA than the window allowed.
    FlowControl,
    /// 4: a frame arrived for a stream that was already closed in that direction.
    StreamClosed,
    /// 5: a frame exceeded the maximum size.
    FrameSize,
    /// 6: the stream was not processed; the opener may retry it (stream limit, goaway).
    RefusedStream,
    /// 7: the stream is no longer needed.
    Cancel,
    /// 8: a REQUEST/RESPONSE/TRAILER payload exceeded the maximum header size.
    HeaderTooLarge,
    /// 9: the peer was silent beyond the idle timeout, or the handshake took too long.
    Timeout,
    /// 10: the requested service does not exist on the receiver.
    UnknownService,
    /// 11: the peer is generating excessive load.
    EnhanceYourCalm,
    /// Any other value.
    Unknown(u32),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            ErrorCode::NoError => 0,
            ErrorCode::Protocol => 1,
            ErrorCode::Internal => 2,
            ErrorCode::FlowControl => 3,
            ErrorCode::StreamClosed => 4,
            ErrorCode::FrameSize => 5,
            ErrorCode::RefusedStream => 6,
            ErrorCode::Cancel => 7,
            ErrorCode::HeaderTooLarge => 8,
            ErrorCode::Timeout => 9,
            ErrorCode::UnknownService => 10,
            ErrorCode::EnhanceYourCalm => 11,
            ErrorCode::Unknown(v) => v,
        }
    }

    /// From the wire value; never fails.
    pub fn from_u32(v: u32) -> ErrorCode {
        match v {
            0 => ErrorCode::NoError,
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Internal,
            3 => ErrorCode::FlowControl,
            4 => ErrorCode::StreamClosed,
            5 => ErrorCode::FrameSize,
            6 => ErrorCode::RefusedStream,
            7 => ErrorCode::Cancel,
            8 => ErrorCode::HeaderTooLarge,
            9 => ErrorCode::Timeout,
            10 => ErrorCode::UnknownService,
            11 => ErrorCode::EnhanceYourCalm,
            v => ErrorCode::Unknown(v),
        }
    }

    /// The upper-case name used in PROTOCOL.md and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NoError => "NO_ERROR",
            ErrorCode::Protocol => "PROTOCOL_ERROR",
            ErrorCode::Internal => "INTERNAL_ERROR",
            ErrorCode::FlowControl => "FLOW_CONTROL_ERROR",
            ErrorCode::StreamClosed => "STREAM_CLOSED",
            ErrorCode::FrameSize => "FRAME_SIZE_ERROR",
            ErrorCode::RefusedStream => "REFUSED_STREAM",
            ErrorCode::Cancel => "CANCEL",
            ErrorCode::HeaderTooLarge => "HEADER_TOO_LARGE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::UnknownService => "UNKNOWN_SERVICE",
            ErrorCode::EnhanceYourCalm => "ENHANCE_YOUR_CALM",
            ErrorCode::Unknown(_) => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Unknown(v) => write!(f, "UNKNOWN({v})"),
            c => f.write_str(c.name()),
        }
    }
}

/// A malformed frame. Every variant is a connection error; [`FrameError::code`] is the GOAWAY code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload of {len} octets exceeds the maximum of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("head payload of {len} octets exceeds the maximum header size of {max}")]
    HeaderTooLarge { len: u32, max: u32 },
    #[error("reserved bit of the stream identifier is set")]
    ReservedBit,
    #[error("frame type {kind:#x} has illegal flags {flags:#04x}")]
    BadFlags { kind: u8, flags: u8 },
    #[error("frame type {kind:#x} is not allowed on stream 0")]
    StreamZero { kind: u8 },
    #[error("frame type {kind:#x} is only allowed on stream 0, got stream {stream}")]
    NonZeroStream { kind: u8, stream: u32 },
    #[error("frame type {kind:#x} must have a {want}-octet payload, got {len}")]
    BadLength { kind: u8, len: u32, want: u32 },
    #[error("window increment {increment} is outside 1..=2^31-1")]
    BadWindowIncrement { increment: u32 },
    #[error("frame type {kind:#x} carries an undecodable protobuf payload: {reason}")]
    BadPayload { kind: u8, reason: String },
    #[error("connection preface is wrong (not an agent-tunnel peer?)")]
    BadPreface,
}

impl FrameError {
    /// The code the connection is closed with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } | FrameError::BadLength { .. } => ErrorCode::FrameSize,
            FrameError::HeaderTooLarge { .. } => ErrorCode::HeaderTooLarge,
            FrameError::BadWindowIncrement { .. } => ErrorCode::FlowControl,
            _ => ErrorCode::Protocol,
        }
    }
}

/// A connection-level failure detected while processing input or timers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{frame} frame received before the handshake completed")]
    BeforeHandshake { frame: &'static str },
    #[error("unexpected handshake frame {frame} after the handshake")]
    UnexpectedHandshake { frame: &'static str },
    #[error(
        "no common protocol version: ours {ours_min}..={ours_max}, theirs {theirs_min}..={theirs_max}"
    )]
    VersionMismatch {
        ours_min: u32,
        ours_max: u32,
        theirs_min: u32,
        theirs_max: u32,
    },
    #[error("stream {stream} opened with the wrong parity for the peer's role")]
    WrongParity { stream: StreamId },
    #[error("stream {stream} is not newer than the last stream the peer opened")]
    StreamIdReused { stream: StreamId },
    #[error("frame for idle stream {stream}")]
    IdleStream { stream: StreamId },
    #[error("peer exceeded the connection flow-control window")]
    ConnectionWindowExceeded,
    #[error("stream {stream} exceeded its flow-control window")]
    StreamWindowExceeded { stream: StreamId },
    #[error("window update overflows 2^31-1 on stream {stream}")]
    WindowOverflow { stream: StreamId },
    #[error("{frame} on stream {stream} violates the stream state")]
    BadStreamState {
        stream: StreamId,
        frame: &'static str,
    },
    #[error("peer sent a PING acknowledgement nobody asked for")]
    UnsolicitedPingAck,
    #[error("handshake not completed within the handshake timeout")]
    HandshakeTimeout,
    #[error("peer silent for longer than the idle timeout")]
    IdleTimeout,
    #[error("peer settings invalid: {reason}")]
    BadSettings { reason: String },
    /// The peer sent more frames of one costly-but-useless kind than the flood limit allows
    /// (PROTOCOL.md §17).
    #[error("flood: more than {limit} {kind} frames within {window:?}")]
    Flood {
        kind: crate::tunnel::connection::FloodKind,
        limit: u32,
        window: std::time::Duration,
    },
    /// The peer made us queue more answers than the bound without reading them (PROTOCOL.md §17).
    #[error("peer does not read: {queued} octets of answers queued (bound {bound})")]
    UnreadAnswers { queued: usize, bound: usize },
}

impl ConnectionError {
    /// The code the connection is closed with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConnectionError::Frame(f) => f.code(),
            ConnectionError::ConnectionWindowExceeded
            | ConnectionError::StreamWindowExceeded { .. }
            | ConnectionError::WindowOverflow { .. } => ErrorCode::FlowControl,
            ConnectionError::HandshakeTimeout | ConnectionError::IdleTimeout => ErrorCode::Timeout,
            ConnectionError::Flood { .. } | ConnectionError::UnreadAnswers { .. } => {
                ErrorCode::EnhanceYourCalm
            }
            _ => ErrorCode::Protocol,
        }
    }
}

/// Misuse of the local API (the application asked for something the protocol does not allow now).
/// Never closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the connection is not established")]
    NotConnected,
    #[error("the connection is closing (goaway); no new streams")]
    GoingAway,
    #[error("the peer allows at most {limit} concurrent streams")]
    LimitReached { limit: u32 },
    #[error("stream ids are exhausted on this connection")]
    IdsExhausted,
    #[error("no such stream {0}")]
    UnknownStream(StreamId),
    #[error("stream {0} can no longer be written in this direction")]
    SendClosed(StreamId),
    #[error("stream {0} needs a response head before data")]
    NoResponseYet(StreamId),
    #[error("stream {0} already has a response head")]
    AlreadyResponded(StreamId),
    #[error("stream {0} was opened locally; only the acceptor responds")]
    NotAcceptor(StreamId),
    #[error("encoded head of {len} octets exceeds the peer's maximum of {max}")]
    HeadTooLarge { len: usize, max: u32 },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides drained after GOAWAY with NO_ERROR.
    Graceful,
    /// We detected an error and closed (GOAWAY with the code was queued).
    Local(ConnectionError),
    /// The application aborted the connection.
    Aborted { code: ErrorCode, message: String },
    /// The peer sent GOAWAY with an error code and its streams are gone.
    Remote { code: ErrorCode, message: String },
    /// The server refused the handshake (agent side).
    Refused {
        code: i32,
        message: String,
        retry_after_ms: u32,
    },
    /// The transport ended (reported by the driver through [`crate::Connection::handle_eof`]).
    TransportClosed,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Graceful => f.write_str("closed gracefully"),
            CloseReason::Local(e) => write!(f, "closed locally: {e} ({})", e.code()),
            CloseReason::Aborted { code, message } => write!(f, "aborted: {code} {message}"),
            CloseReason::Remote { code, message } => write!(f, "closed by peer: {code} {message}"),
            CloseReason::Refused { code, message, .. } => {
                write!(f, "handshake refused (code {code}): {message}")
            }
            CloseReason::TransportClosed => f.write_str("transport closed"),
        }
    }
}
