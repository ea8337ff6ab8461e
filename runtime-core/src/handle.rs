//! The application's handle on a connection: open and accept streams, close, observe.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use protocol::proto::RequestHead;
use protocol::{CloseReason, ConnectionStats, ErrorCode, Established, Role};

use crate::error::Error;
use crate::observer::ConnectionEvent;
use crate::session::{DROP_GRACE, Session};
use crate::stream::StreamHandle;

/// Closes the connection gracefully when the last [`ConnectionHandle`] clone is dropped.
#[derive(Debug)]
struct CloseOnDrop(Session);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.start_close(DROP_GRACE);
    }
}

/// A cloneable handle on one tunnel connection. When every clone is gone the connection starts a
/// graceful close (streams still open get [`DROP_GRACE`] to finish).
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    session: Session,
    _guard: Arc<CloseOnDrop>,
}

impl ConnectionHandle {
    /// A handle on an established session.
    pub fn new(session: Session) -> ConnectionHandle {
        ConnectionHandle {
            _guard: Arc::new(CloseOnDrop(session.clone())),
            session,
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Opens a stream with a request head; `end_stream`: no body follows. Fails with
    /// `Error::Open(OpenError::GoingAway)` once either side sent GOAWAY, with
    /// `OpenError::LimitReached` at the peer's concurrency limit, and with the connection's error once
    /// it is over. The head is only encoded: pass it by reference to keep it (`&head`), e.g. to
    /// send it again on another connection.
    pub fn open(
        &self,
        head: impl std::borrow::Borrow<RequestHead>,
        end_stream: bool,
    ) -> Result<StreamHandle, Error> {
        let id = self.session.open(head.borrow(), end_stream)?;
        Ok(StreamHandle::new(self.session.clone(), id))
    }

    /// The next stream the peer opened, with its request head; `None` once the connection is over.
    pub fn poll_accept_stream(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(RequestHead, StreamHandle)>> {
        self.session
            .poll_accept(cx)
            .map(|o| o.map(|(id, head)| (head, StreamHandle::new(self.session.clone(), id))))
    }

    /// See [`ConnectionHandle::poll_accept_stream`].
    pub async fn accept_stream(&self) -> Option<(RequestHead, StreamHandle)> {
        poll_fn(|cx| self.poll_accept_stream(cx)).await
    }

    /// Starts a graceful close without waiting: GOAWAY now, abort if streams remain after `grace`.
    pub fn start_close(&self, grace: Duration) {
        self.session.start_close(grace);
    }

    /// Graceful close: GOAWAY (no new streams either way), waits for in-flight streams to finish, and
    /// aborts those still open after `grace`. Returns how the connection ended.
    pub async fn close(&self, grace: Duration) -> CloseReason {
        self.start_close(grace);
        self.closed().await
    }

    /// Closes at once; every open stream fails.
    pub fn abort(&self, code: ErrorCode, message: &str) {
        self.session.abort(code, message);
    }

    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        self.session.poll_closed(cx)
    }

    /// Waits until the connection is over and returns why.
    pub async fn closed(&self) -> CloseReason {
        poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// The handshake result (`None` only before it completed, which a handle never sees).
    pub fn established(&self) -> Option<Established> {
        self.session.with_conn(|c| c.established().cloned())
    }

    pub fn stats(&self) -> ConnectionStats {
        self.session.with_conn(|c| *c.stats())
    }

    pub fn poll_draining(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.session.poll_draining(cx)
    }

    /// Waits until the connection drains: either side sent GOAWAY (no new streams from then on), or
    /// it is over. Woken by the protocol's GOAWAY event and by our own close, never by polling.
    pub async fn draining(&self) {
        poll_fn(|cx| self.poll_draining(cx)).await
    }

    /// Registers a synchronous observer of this connection's life ([`crate::observer`]): called with
    /// [`ConnectionEvent::Draining`] (at most once, GOAWAY either way) and then
    /// [`ConnectionEvent::Closed`] (once), right after the session lock is released by the call that
    /// produced the event — on the driver or the commanding task, before that driver transmits any
    /// later output — in protocol order. Registered late, it is called at once for what already
    /// happened (replay). Must not block; it may call the connection.
    pub fn on_event(&self, f: impl Fn(&ConnectionEvent) + Send + Sync + 'static) {
        self.session.on_event(Arc::new(f));
    }

    /// Whether either side sent GOAWAY (no new streams).
    pub fn is_draining(&self) -> bool {
        self.session.with_conn(|c| c.is_draining())
    }

    pub fn is_closed(&self) -> bool {
        self.session.with_conn(|c| c.is_closed())
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.session.with_conn(|c| c.close_reason().cloned())
    }

    /// Streams currently open: (ours, the peer's).
    pub fn open_streams(&self) -> (u32, u32) {
        self.session.with_conn(|c| c.open_streams())
    }

    pub fn role(&self) -> Role {
        self.session.with_conn(|c| c.role())
    }
}
