//! The one error type of the runtimes, and its mapping to and from `std::io::Error`.

use std::io;
use std::time::Duration;

use protocol::{
    ApiMisuse, CloseReason, ConnectionError, ErrorCode, OpenError, RejectCode, StreamError,
};

/// Everything that can go wrong for an application using a tunnel connection or stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport ended (EOF, reset, write failure) without a goodbye: the peer vanished.
    #[error("the peer vanished: the transport closed")]
    TransportClosed,
    /// The TLS handshake failed (certificate, ALPN, protocol version...).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// An HTTP CONNECT proxy refused the tunnel (407, 403, 502...) or answered nonsense.
    #[error("proxy: {0}")]
    Proxy(#[from] crate::transport::ProxyError),
    /// The WebSocket upgrade failed (refused by kas or a load balancer, wrong subprotocol).
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(#[source] io::Error),
    /// The server refused the agent's HELLO.
    #[error("handshake refused ({code}): {message}")]
    Refused {
        /// Why.
        code: RejectCode,
        message: String,
        /// Minimum back-off the server asked for, if any.
        retry_after: Option<Duration>,
    },
    /// The stream was reset; `remote`: by the peer.
    #[error("stream reset ({code}, {}): {message}", if *remote { "by peer" } else { "locally" })]
    StreamReset {
        code: ErrorCode,
        message: String,
        remote: bool,
    },
    /// The connection is over for another reason (idle timeout, protocol error, abort, goaway with error).
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// A stream could not be opened (nothing was sent; see [`OpenError::retry_elsewhere`]).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An operation on an open stream failed: the stream is gone, a head is too large, or the
    /// application misused the API ([`StreamError::Misuse`]).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A deadline passed (TLS handshake, connect).
    #[error("timed out")]
    Timeout,
    /// An I/O error outside a connection (bind, connect, accept).
    #[error("I/O error: {0}")]
    Io(io::Error),
}

impl Error {
    /// The error a connection's end maps to.
    pub fn from_close(reason: &CloseReason) -> Error {
        match reason {
            CloseReason::TransportClosed => Error::TransportClosed,
            CloseReason::Refused {
                code,
                message,
                retry_after_ms,
            } => Error::Refused {
                code: *code,
                message: message.clone(),
                retry_after: (*retry_after_ms > 0)
                    .then(|| Duration::from_millis((*retry_after_ms).into())),
            },
            r => Error::Closed(r.clone()),
        }
    }

    /// Whether this is `Open(OpenError::GoingAway)`: the connection is draining, open elsewhere.
    pub fn is_going_away(&self) -> bool {
        matches!(self, Error::Open(OpenError::GoingAway))
    }

    /// Whether the application broke the API contract (a bug in the caller, not the peer's fault).
    pub fn is_misuse(&self) -> bool {
        matches!(self, Error::Stream(StreamError::Misuse(_)))
    }

    /// Whether the connection ended because the peer was silent beyond the idle timeout.
    pub fn is_idle_timeout(&self) -> bool {
        matches!(
            self,
            Error::Closed(CloseReason::Local(ConnectionError::IdleTimeout))
        )
    }

    /// The `std::io::ErrorKind` this error is reported with through the I/O traits.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            Error::TransportClosed => io::ErrorKind::ConnectionAborted,
            Error::Tls(_) | Error::WebSocket(_) => io::ErrorKind::InvalidData,
            Error::Proxy(_) => io::ErrorKind::ConnectionRefused,
            Error::Refused { .. } => io::ErrorKind::ConnectionRefused,
            Error::StreamReset { .. } => io::ErrorKind::ConnectionReset,
            Error::Closed(_) => io::ErrorKind::ConnectionAborted,
            Error::Stream(StreamError::Misuse(ApiMisuse::SendAfterFinish(_))) => {
                io::ErrorKind::BrokenPipe
            }
            Error::Stream(StreamError::Gone(_)) => io::ErrorKind::NotConnected,
            Error::Stream(_) | Error::Open(_) => io::ErrorKind::InvalidInput,
            Error::Timeout => io::ErrorKind::TimedOut,
            Error::Io(e) => e.kind(),
        }
    }

    /// Recovers the typed error from an `io::Error` produced by a stream (its inner error), or wraps
    /// any other `io::Error` as [`Error::Io`].
    pub fn from_io(e: io::Error) -> Error {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = e.into_inner()
                && let Ok(typed) = inner.downcast::<Error>()
            {
                return *typed;
            }
            return Error::Io(io::Error::other("unrecoverable inner error"));
        }
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            e => io::Error::new(e.io_kind(), e),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::from_io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_error_survives_a_round_trip_through_io_error() {
        let e = Error::StreamReset {
            code: ErrorCode::Cancel,
            message: "bye".into(),
            remote: true,
        };
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
        match Error::from(io) {
            Error::StreamReset { code, remote, .. } => {
                assert_eq!(code, ErrorCode::Cancel);
                assert!(remote);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn foreign_io_error_stays_io() {
        let e = Error::from(io::Error::new(io::ErrorKind::AddrInUse, "x"));
        assert!(matches!(e, Error::Io(ref io) if io.kind() == io::ErrorKind::AddrInUse));
    }

    #[test]
    fn close_reasons_map_to_typed_errors() {
        assert!(matches!(
            Error::from_close(&CloseReason::TransportClosed),
            Error::TransportClosed
        ));
        let refused = Error::from_close(&CloseReason::Refused {
            code: RejectCode::Unauthenticated,
            message: "no".into(),
            retry_after_ms: 1500,
        });
        assert!(matches!(
            refused,
            Error::Refused { code: RejectCode::Unauthenticated, retry_after: Some(d), .. }
                if d == Duration::from_millis(1500)
        ));
        assert!(
            Error::from_close(&CloseReason::Local(ConnectionError::IdleTimeout)).is_idle_timeout()
        );
        assert!(Error::Open(OpenError::GoingAway).is_going_away());
        assert!(
            Error::Stream(ApiMisuse::AlreadyResponded(protocol::StreamId(1)).into()).is_misuse()
        );
        assert!(!Error::Stream(StreamError::Gone(protocol::StreamId(1))).is_misuse());
    }
}
