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
    /// A frame longer than the receiver's `max_frame_size`.
    #[error("frame payload of {len} octets exceeds the maximum of {max}")]
    TooLarge {
        /// Announced payload length.
        len: u32,
        /// The receiver's `max_frame_size`.
        max: u32,
    },
    /// A REQUEST, RESPONSE or TRAILER longer than the receiver's `max_header_size`.
    #[error("head payload of {len} octets exceeds the maximum header size of {max}")]
    HeaderTooLarge {
        /// Announced payload length.
        len: u32,
        /// The receiver's `max_header_size`.
        max: u32,
    },
    /// The reserved high bit of the stream identifier is set.
    #[error("reserved bit of the stream identifier is set")]
    ReservedBit,
    /// Flags the frame type does not define.
    #[error("frame type {kind:#x} has illegal flags {flags:#04x}")]
    BadFlags {
        /// Frame type.
        kind: u8,
        /// The flags octet received.
        flags: u8,
    },
    /// A stream frame on stream 0.
    #[error("frame type {kind:#x} is not allowed on stream 0")]
    StreamZero {
        /// Frame type.
        kind: u8,
    },
    /// A connection frame on a stream other than 0.
    #[error("frame type {kind:#x} is only allowed on stream 0, got stream {stream}")]
    NonZeroStream {
        /// Frame type.
        kind: u8,
        /// The stream identifier received.
        stream: u32,
    },
    /// A fixed-size frame with the wrong payload length.
    #[error("frame type {kind:#x} must have a {want}-octet payload, got {len}")]
    BadLength {
        /// Frame type.
        kind: u8,
        /// Payload length received.
        len: u32,
        /// Payload length the type requires.
        want: u32,
    },
    /// A WINDOW_UPDATE of 0 or above 2^31-1.
    #[error("window increment {increment} is outside 1..=2^31-1")]
    BadWindowIncrement {
        /// The increment received.
        increment: u32,
    },
    /// A protobuf payload that does not decode.
    #[error("frame type {kind:#x} carries an undecodable protobuf payload: {reason}")]
    BadPayload {
        /// Frame type.
        kind: u8,
        /// The decoder's message.
        reason: String,
    },
    /// The first octets are not the agent-tunnel preface.
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
    /// A malformed frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame other than the handshake's arrived before the handshake completed.
    #[error("{frame} frame received before the handshake completed")]
    BeforeHandshake {
        /// Name of the frame type.
        frame: &'static str,
    },
    /// A HELLO, ACCEPT or REJECT arrived after the handshake.
    #[error("unexpected handshake frame {frame} after the handshake")]
    UnexpectedHandshake {
        /// Name of the frame type.
        frame: &'static str,
    },
    /// The peers' version ranges do not overlap.
    #[error(
        "no common protocol version: ours {ours_min}..={ours_max}, theirs {theirs_min}..={theirs_max}"
    )]
    VersionMismatch {
        /// Our lowest version.
        ours_min: u32,
        /// Our highest version.
        ours_max: u32,
        /// The peer's lowest version.
        theirs_min: u32,
        /// The peer's highest version.
        theirs_max: u32,
    },
    /// The peer opened a stream with an identifier of our parity.
    #[error("stream {stream} opened with the wrong parity for the peer's role")]
    WrongParity {
        /// The stream.
        stream: StreamId,
    },
    /// The peer opened a stream whose identifier is not above its previous ones.
    #[error("stream {stream} is not newer than the last stream the peer opened")]
    StreamIdReused {
        /// The stream.
        stream: StreamId,
    },
    /// A frame other than REQUEST for a stream that was never opened.
    #[error("frame for idle stream {stream}")]
    IdleStream {
        /// The stream.
        stream: StreamId,
    },
    /// The peer sent more DATA than the connection window allowed.
    #[error("peer exceeded the connection flow-control window")]
    ConnectionWindowExceeded,
    /// The peer sent more DATA than the stream window allowed.
    #[error("stream {stream} exceeded its flow-control window")]
    StreamWindowExceeded {
        /// The stream.
        stream: StreamId,
    },
    /// A WINDOW_UPDATE took a window above 2^31-1.
    #[error("window update overflows 2^31-1 on stream {stream}")]
    WindowOverflow {
        /// The stream (0: the connection).
        stream: StreamId,
    },
    /// A frame the stream's state does not allow (e.g. DATA after END_STREAM).
    #[error("{frame} on stream {stream} violates the stream state")]
    BadStreamState {
        /// The stream.
        stream: StreamId,
        /// Name of the frame type.
        frame: &'static str,
    },
    /// A PING acknowledgement for a PING we did not send.
    #[error("peer sent a PING acknowledgement nobody asked for")]
    UnsolicitedPingAck,
    /// The handshake did not complete in time.
    #[error("handshake not completed within the handshake timeout")]
    HandshakeTimeout,
    /// Nothing arrived for longer than the idle timeout.
    #[error("peer silent for longer than the idle timeout")]
    IdleTimeout,
    /// The peer announced settings outside the allowed ranges.
    #[error("peer settings invalid: {reason}")]
    BadSettings {
        /// Which setting and why.
        reason: String,
    },
    /// The peer sent more frames of one costly-but-useless kind than the flood limit allows
    /// (PROTOCOL.md §17).
    #[error("flood: more than {limit} {kind} frames within {window:?}")]
    Flood {
        /// The kind of frame.
        kind: crate::tunnel::connection::FloodKind,
        /// The limit per window.
        limit: u32,
        /// The window the limit applies to.
        window: std::time::Duration,
    },
    /// The peer made us queue more answers than the bound without reading them (PROTOCOL.md §17).
    #[error("peer does not read: {queued} octets of answers queued (bound {bound})")]
    UnreadAnswers {
        /// Octets of answers queued.
        queued: usize,
        /// The bound (`FloodLimits::max_queued_answers`).
        bound: usize,
    },
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

/// A stream could not be opened; nothing was sent, so the request was not processed. Every variant
/// but [`OpenError::HeadTooLarge`] may be retried on another connection
/// ([`OpenError::retry_elsewhere`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The handshake has not completed (or the connection already ended).
    #[error("the connection is not established")]
    NotEstablished,
    /// The connection is draining after GOAWAY (either side's); no new streams.
    #[error("the connection is closing (goaway); no new streams")]
    GoingAway,
    /// The peer's `max_concurrent_streams` is reached.
    #[error("the peer allows at most {limit} concurrent streams")]
    LimitReached {
        /// The peer's limit.
        limit: u32,
    },
    /// Every stream identifier of our parity was used on this connection.
    #[error("stream ids are exhausted on this connection")]
    IdsExhausted,
    /// The encoded request head exceeds the peer's `max_header_size`: no connection would take it.
    #[error("encoded head of {len} octets exceeds the peer's maximum of {max}")]
    HeadTooLarge {
        /// Encoded length of the head.
        len: usize,
        /// The peer's `max_header_size`.
        max: u32,
    },
}

impl OpenError {
    /// Whether another connection (a fresh one, or another agent connection) could take the
    /// stream: everything but a head too large for any peer.
    pub fn retry_elsewhere(&self) -> bool {
        !matches!(self, OpenError::HeadTooLarge { .. })
    }
}

/// The application broke the API contract: a bug in the caller, never the peer's fault (rustls'
/// `ApiMisuse`). The connection is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiMisuse {
    /// `send_response` on a stream that already has a response head.
    #[error("stream {0} already has a response head")]
    AlreadyResponded(StreamId),
    /// `send_response` on a stream we opened: only the acceptor responds.
    #[error("stream {0} was opened locally; only the acceptor responds")]
    NotAcceptor(StreamId),
    /// Data, trailer or end of stream before the response head.
    #[error("stream {0} needs a response head before data")]
    NoResponseYet(StreamId),
    /// Data, trailer or end of stream after we ended our direction.
    #[error("stream {0} was already finished in this direction")]
    SendAfterFinish(StreamId),
    /// The response head of a stream we opened was asked for again: it is handed over once.
    #[error("the response head of stream {0} was already taken")]
    ResponseTaken(StreamId),
}

/// An operation on an existing stream failed. Never closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream is gone: reset by the peer, ended, or the connection closed. A race with the peer,
    /// not a bug.
    #[error("stream {0} is gone (reset or closed)")]
    Gone(StreamId),
    /// The encoded response head or trailer exceeds the peer's `max_header_size`.
    #[error("encoded head of {len} octets exceeds the peer's maximum of {max}")]
    HeadTooLarge {
        /// Encoded length of the head.
        len: usize,
        /// The peer's `max_header_size`.
        max: u32,
    },
    /// The caller broke the API contract (see [`ApiMisuse`]).
    #[error(transparent)]
    Misuse(#[from] ApiMisuse),
}

impl StreamError {
    /// Whether the caller broke the API contract (a bug), as opposed to a race with the peer.
    pub fn is_misuse(&self) -> bool {
        matches!(self, StreamError::Misuse(_))
    }
}

/// Why the server refused a HELLO (REJECT, PROTOCOL.md §7.3): the typed form of
/// [`crate::proto::RejectCode`], keeping unknown wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// 0: no reason given.
    Unspecified,
    /// 1: token missing, malformed or not recognised.
    Unauthenticated,
    /// 2: no common protocol version.
    VersionUnsupported,
    /// 3: too many attempts; retry after `retry_after_ms`.
    RateLimited,
    /// 4: the server is shutting down or overloaded; retry elsewhere or later.
    Unavailable,
    /// 5: the token is valid but the agent may not connect.
    PermissionDenied,
    /// 6: the HELLO itself was malformed.
    BadHello,
    /// Any other wire value.
    Unknown(i32),
}

impl RejectCode {
    /// From the wire value; never fails.
    pub fn from_wire(v: i32) -> RejectCode {
        use crate::proto::RejectCode as W;
        match W::try_from(v) {
            Ok(W::Unspecified) => RejectCode::Unspecified,
            Ok(W::Unauthenticated) => RejectCode::Unauthenticated,
            Ok(W::VersionUnsupported) => RejectCode::VersionUnsupported,
            Ok(W::RateLimited) => RejectCode::RateLimited,
            Ok(W::Unavailable) => RejectCode::Unavailable,
            Ok(W::PermissionDenied) => RejectCode::PermissionDenied,
            Ok(W::BadHello) => RejectCode::BadHello,
            Err(_) => RejectCode::Unknown(v),
        }
    }

    /// The wire value.
    pub fn to_wire(self) -> i32 {
        use crate::proto::RejectCode as W;
        match self {
            RejectCode::Unspecified => W::Unspecified as i32,
            RejectCode::Unauthenticated => W::Unauthenticated as i32,
            RejectCode::VersionUnsupported => W::VersionUnsupported as i32,
            RejectCode::RateLimited => W::RateLimited as i32,
            RejectCode::Unavailable => W::Unavailable as i32,
            RejectCode::PermissionDenied => W::PermissionDenied as i32,
            RejectCode::BadHello => W::BadHello as i32,
            RejectCode::Unknown(v) => v,
        }
    }

    /// The upper-case name used in PROTOCOL.md and logs.
    pub fn name(self) -> &'static str {
        match self {
            RejectCode::Unspecified => "UNSPECIFIED",
            RejectCode::Unauthenticated => "UNAUTHENTICATED",
            RejectCode::VersionUnsupported => "VERSION_UNSUPPORTED",
            RejectCode::RateLimited => "RATE_LIMITED",
            RejectCode::Unavailable => "UNAVAILABLE",
            RejectCode::PermissionDenied => "PERMISSION_DENIED",
            RejectCode::BadHello => "BAD_HELLO",
            RejectCode::Unknown(_) => "UNKNOWN",
        }
    }

    /// Whether the agent's credentials are the problem (the token should be checked or re-read).
    pub fn is_credential_problem(self) -> bool {
        matches!(
            self,
            RejectCode::Unauthenticated | RejectCode::PermissionDenied
        )
    }
}

impl From<crate::proto::RejectCode> for RejectCode {
    fn from(c: crate::proto::RejectCode) -> RejectCode {
        RejectCode::from_wire(c as i32)
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectCode::Unknown(v) => write!(f, "UNKNOWN({v})"),
            c => f.write_str(c.name()),
        }
    }
}

/// Whose fault the end of a connection was ([`CloseReason::fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Nobody's: a graceful close, or an orderly GOAWAY with a non-error code.
    None,
    /// The peer broke the protocol (or reported that we did): a bug on one side, worth a loud log.
    PeerMisbehaved,
    /// Our own application closed or aborted it, or a local limit or timer ended it.
    Local,
    /// The transport failed or went silent.
    Network,
    /// The server refused the handshake.
    Refused,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides drained after GOAWAY with NO_ERROR.
    Graceful,
    /// We detected an error and closed (GOAWAY with the code was queued).
    Local(ConnectionError),
    /// The application aborted the connection.
    Aborted {
        /// The code sent in GOAWAY.
        code: ErrorCode,
        /// The message sent in GOAWAY.
        message: String,
    },
    /// The peer sent GOAWAY with an error code and its streams are gone.
    Remote {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// The server refused the handshake (REJECT).
    Refused {
        /// Why.
        code: RejectCode,
        /// The server's explanation (for logs).
        message: String,
        /// Minimum back-off before the next attempt, in milliseconds (0: the agent's own policy).
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
                write!(f, "handshake refused ({code}): {message}")
            }
            CloseReason::TransportClosed => f.write_str("transport closed"),
        }
    }
}

impl CloseReason {
    /// Whose fault the end was. A protocol-level code (PROTOCOL_ERROR, FLOW_CONTROL_ERROR,
    /// STREAM_CLOSED, FRAME_SIZE_ERROR, HEADER_TOO_LARGE, INTERNAL_ERROR) in either direction is
    /// [`Fault::PeerMisbehaved`]: only a buggy peer (or core) causes one. The exception is a GOAWAY
    /// received during the handshake: a peer giving up on the handshake sends one (PROTOCOL.md 7.6),
    /// which is the network's doing (a slow link), not a bug.
    pub fn fault(&self) -> Fault {
        let code = match self {
            CloseReason::Graceful => return Fault::None,
            CloseReason::Refused { .. } => return Fault::Refused,
            CloseReason::TransportClosed => return Fault::Network,
            CloseReason::Aborted { .. } => return Fault::Local,
            CloseReason::Local(ConnectionError::BeforeHandshake { frame: "GOAWAY" }) => {
                return Fault::Network;
            }
            CloseReason::Local(
                ConnectionError::HandshakeTimeout | ConnectionError::IdleTimeout,
            ) => return Fault::Network,
            CloseReason::Local(e) => e.code(),
            CloseReason::Remote { code, .. } => *code,
        };
        match code {
            ErrorCode::Protocol
            | ErrorCode::FlowControl
            | ErrorCode::StreamClosed
            | ErrorCode::FrameSize
            | ErrorCode::HeaderTooLarge
            | ErrorCode::Internal => Fault::PeerMisbehaved,
            ErrorCode::Timeout => Fault::Network,
            _ if matches!(self, CloseReason::Local(_)) => Fault::Local,
            _ => Fault::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_codes_round_trip_and_keep_unknown_values() {
        for v in -1..10 {
            let c = RejectCode::from_wire(v);
            assert_eq!(c.to_wire(), v);
            assert_eq!(c == RejectCode::Unknown(v), !(0..=6).contains(&v), "{v}");
        }
        assert_eq!(
            RejectCode::from(crate::proto::RejectCode::RateLimited),
            RejectCode::RateLimited
        );
        assert_eq!(
            RejectCode::PermissionDenied.to_string(),
            "PERMISSION_DENIED"
        );
        assert_eq!(RejectCode::Unknown(42).to_string(), "UNKNOWN(42)");
        assert!(RejectCode::Unauthenticated.is_credential_problem());
        assert!(RejectCode::PermissionDenied.is_credential_problem());
        assert!(!RejectCode::RateLimited.is_credential_problem());
    }

    #[test]
    fn close_reasons_say_whose_fault_it_is() {
        let remote = |code| CloseReason::Remote {
            code,
            message: String::new(),
        };
        let cases = [
            (CloseReason::Graceful, Fault::None),
            (CloseReason::TransportClosed, Fault::Network),
            (
                CloseReason::Refused {
                    code: RejectCode::Unavailable,
                    message: String::new(),
                    retry_after_ms: 0,
                },
                Fault::Refused,
            ),
            (
                CloseReason::Aborted {
                    code: ErrorCode::Cancel,
                    message: String::new(),
                },
                Fault::Local,
            ),
            (remote(ErrorCode::Protocol), Fault::PeerMisbehaved),
            (remote(ErrorCode::FlowControl), Fault::PeerMisbehaved),
            (remote(ErrorCode::Timeout), Fault::Network),
            (remote(ErrorCode::NoError), Fault::None),
            (
                CloseReason::Local(ConnectionError::UnsolicitedPingAck),
                Fault::PeerMisbehaved,
            ),
            (
                CloseReason::Local(ConnectionError::IdleTimeout),
                Fault::Network,
            ),
            // A peer giving up on the handshake sends GOAWAY (PROTOCOL.md 7.6): a slow link, no bug.
            (
                CloseReason::Local(ConnectionError::BeforeHandshake { frame: "GOAWAY" }),
                Fault::Network,
            ),
            (
                CloseReason::Local(ConnectionError::BeforeHandshake { frame: "DATA" }),
                Fault::PeerMisbehaved,
            ),
            (
                CloseReason::Local(ConnectionError::UnreadAnswers {
                    queued: 1,
                    bound: 0,
                }),
                Fault::Local,
            ),
        ];
        for (reason, fault) in cases {
            assert_eq!(reason.fault(), fault, "{reason}");
        }
    }

    #[test]
    fn misuse_is_apart_from_retryable_outcomes() {
        let id = StreamId(3);
        assert!(OpenError::GoingAway.retry_elsewhere());
        assert!(OpenError::LimitReached { limit: 1 }.retry_elsewhere());
        assert!(OpenError::NotEstablished.retry_elsewhere());
        assert!(OpenError::IdsExhausted.retry_elsewhere());
        assert!(!OpenError::HeadTooLarge { len: 2, max: 1 }.retry_elsewhere());
        for m in [
            ApiMisuse::AlreadyResponded(id),
            ApiMisuse::NotAcceptor(id),
            ApiMisuse::NoResponseYet(id),
            ApiMisuse::SendAfterFinish(id),
        ] {
            let e = StreamError::from(m.clone());
            assert!(e.is_misuse());
            assert_eq!(e.to_string(), m.to_string());
        }
        assert!(!StreamError::Gone(id).is_misuse());
        assert!(!StreamError::HeadTooLarge { len: 2, max: 1 }.is_misuse());
    }
}
