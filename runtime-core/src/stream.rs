//! One request stream as the application holds it: poll functions the runtimes' I/O trait
//! implementations call, and the async conveniences built on them.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use protocol::proto::{ResponseHead, Trailer};
use protocol::{ErrorCode, StreamId};

use crate::error::Error;
use crate::session::Session;

/// A stream of a tunnel connection. Dropping it releases unread octets and resets the stream if it
/// is not finished (see [`Session`]'s `drop_stream`).
#[derive(Debug)]
pub struct StreamHandle {
    session: Session,
    id: StreamId,
}

impl StreamHandle {
    pub(crate) fn new(session: Session, id: StreamId) -> StreamHandle {
        StreamHandle { session, id }
    }

    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Copies received body octets into `buf`; `Ok(0)` at the end of the peer's direction. Octets
    /// read are handed back to flow control, which is what lets the peer send more.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.session.poll_read(self.id, cx, buf)
    }

    /// The next received chunk without copying (at most `max` octets); `None` at the end.
    pub fn poll_read_chunk(
        &self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Option<io::Result<Bytes>>> {
        self.session.poll_read_chunk(self.id, cx, max)
    }

    /// Queues body octets as far as flow control allows; `Pending` when it allows nothing.
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.session.poll_write(self.id, cx, buf)
    }

    /// Ends our direction (END_STREAM after the queued body). Idempotent.
    pub fn poll_finish(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.session.finish(self.id).map_err(io::Error::from))
    }

    /// Opener: the acceptor's response head.
    pub fn poll_response(&self, cx: &mut Context<'_>) -> Poll<Result<ResponseHead, Error>> {
        self.session.poll_response(self.id, cx)
    }

    /// The peer's trailer, once its direction ended (`None`: it ended without one).
    pub fn poll_trailer(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Trailer>, Error>> {
        self.session.poll_trailer(self.id, cx)
    }

    /// Opener: waits for the response head.
    pub async fn response(&self) -> Result<ResponseHead, Error> {
        poll_fn(|cx| self.poll_response(cx)).await
    }

    /// Waits for the end of the peer's direction and returns its trailer, if it sent one.
    pub async fn trailer(&self) -> Result<Option<Trailer>, Error> {
        poll_fn(|cx| self.poll_trailer(cx)).await
    }

    /// Reads into `buf`; `Ok(0)` at the end.
    pub async fn read(&self, buf: &mut [u8]) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_read(cx, buf))
            .await
            .map_err(Error::from)
    }

    /// The next chunk without copying; `None` at the end.
    pub async fn read_chunk(&self, max: usize) -> Option<Result<Bytes, Error>> {
        poll_fn(|cx| self.poll_read_chunk(cx, max))
            .await
            .map(|r| r.map_err(Error::from))
    }

    /// Writes all of `buf`, waiting for flow-control credit as needed.
    pub async fn write_all(&self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = poll_fn(|cx| self.poll_write(cx, buf)).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Ends our direction. Idempotent.
    pub fn finish(&self) -> Result<(), Error> {
        self.session.finish(self.id)
    }

    /// Acceptor: answers with a response head; `end_stream`: no body follows.
    pub fn respond(&self, head: ResponseHead, end_stream: bool) -> Result<(), Error> {
        self.session.respond(self.id, head, end_stream)
    }

    /// Ends our direction with a trailer (after the queued body).
    pub fn send_trailer(&self, trailer: Trailer) -> Result<(), Error> {
        self.session.send_trailer(self.id, trailer)
    }

    /// Abandons the stream in both directions; the peer sees a RESET with `code`.
    pub fn reset(&self, code: ErrorCode) {
        self.session.reset(self.id, code)
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.session.drop_stream(self.id);
    }
}
