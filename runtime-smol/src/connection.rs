//! The application's handle on a tunnel connection, returning smol [`Stream`]s.

use std::time::Duration;

use protocol::proto::RequestHead;
use protocol::{CloseReason, ConnectionStats, ErrorCode, Established};
use runtime_core::{ConnectionHandle, Error};

use crate::stream::Stream;

/// A cloneable handle on one connection. When every clone is dropped the connection closes
/// gracefully (see [`runtime_core::session::DROP_GRACE`]).
#[derive(Debug, Clone)]
pub struct Connection(ConnectionHandle);

impl Connection {
    pub(crate) fn new(h: ConnectionHandle) -> Connection {
        Connection(h)
    }

    /// Opens a stream with a request head; `end_stream`: no body follows.
    pub fn open(&self, head: RequestHead, end_stream: bool) -> Result<Stream, Error> {
        self.0.open(head, end_stream).map(Stream::new)
    }

    /// The next stream the peer opened; `None` once the connection is over.
    pub async fn accept_stream(&self) -> Option<(RequestHead, Stream)> {
        self.0
            .accept_stream()
            .await
            .map(|(head, s)| (head, Stream::new(s)))
    }

    /// Graceful close: GOAWAY, wait for in-flight streams, abort after `grace`. Returns how it ended.
    pub async fn close(&self, grace: Duration) -> CloseReason {
        self.0.close(grace).await
    }

    /// Starts a graceful close without waiting.
    pub fn start_close(&self, grace: Duration) {
        self.0.start_close(grace)
    }

    /// Closes at once; every stream fails.
    pub fn abort(&self, code: ErrorCode, message: &str) {
        self.0.abort(code, message)
    }

    /// Waits until the connection is over.
    pub async fn closed(&self) -> CloseReason {
        self.0.closed().await
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.0.close_reason()
    }

    pub fn established(&self) -> Option<Established> {
        self.0.established()
    }

    pub fn stats(&self) -> ConnectionStats {
        self.0.stats()
    }

    pub fn is_draining(&self) -> bool {
        self.0.is_draining()
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Open streams: (ours, the peer's).
    pub fn open_streams(&self) -> (u32, u32) {
        self.0.open_streams()
    }

    /// The runtime-independent handle.
    pub fn handle(&self) -> &ConnectionHandle {
        &self.0
    }
}
