//! One request stream as the application holds it, for every runtime: [`Stream`] and its halves
//! [`RecvStream`] and [`SendStream`]. Each implements `futures_io::AsyncRead`/`AsyncWrite` (reads are
//! the peer's body, `close` finishes our direction) and, with the `tokio` feature, `tokio::io`'s
//! (`shutdown` finishes) — one type, two sets of traits, as quinn's `RecvStream` does
//! (quinn-rs/quinn `quinn/src/recv_stream.rs`).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use protocol::proto::{ResponseHead, Trailer};
use protocol::{ErrorCode, StreamId};

use crate::error::Error;
use crate::session::Session;

/// The stream's slot in its session. Dropping it releases unread octets and resets the stream if it
/// is not finished (see [`Session`]'s `drop_stream`).
#[derive(Debug)]
struct Slot {
    session: Session,
    id: StreamId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.session.drop_stream(self.id);
    }
}

impl Slot {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.session.poll_read(self.id, cx, buf)
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.session.poll_write(self.id, cx, buf)
    }

    async fn write_chunk(&self, mut data: Bytes) -> Result<(), Error> {
        // Bounded by `data`: every ready poll sends at least one octet of it.
        while !data.is_empty() {
            poll_fn(|cx| self.session.poll_write_bytes(self.id, cx, &mut data))
                .await
                .map_err(Error::from)?;
        }
        Ok(())
    }

    fn poll_finish(&self) -> Poll<io::Result<()>> {
        Poll::Ready(self.session.finish(self.id).map_err(io::Error::from))
    }

    async fn response(&self, take: bool) -> Result<ResponseHead, Error> {
        poll_fn(|cx| self.session.poll_response(self.id, cx, take)).await
    }

    async fn trailer(&self) -> Result<Option<Trailer>, Error> {
        poll_fn(|cx| self.session.poll_trailer(self.id, cx)).await
    }

    async fn read_chunk(&self, max: usize) -> Option<Result<Bytes, Error>> {
        poll_fn(|cx| self.session.poll_read_chunk(self.id, cx, max))
            .await
            .map(|r| r.map_err(Error::from))
    }
}

/// One request stream: `AsyncRead` yields the peer's body (EOF when it finished; a reset is an
/// `io::Error` whose inner error is [`Error`], recover it with `Error::from`), `AsyncWrite` sends
/// ours, `close`/`shutdown` finishes our direction. Reading and writing also work through `&Stream`,
/// so one task can read while another writes. Dropping an unfinished stream resets it.
#[derive(Debug)]
pub struct Stream {
    /// Held inline: only [`Stream::split`] shares it (an allocation per stream spared).
    inner: Slot,
}

/// The name the connection handle uses.
pub(crate) use Stream as StreamHandle;

/// The receiving half of a [`Stream`] (see [`Stream::split`]).
#[derive(Debug)]
pub struct RecvStream {
    inner: Arc<Slot>,
}

/// The sending half of a [`Stream`] (see [`Stream::split`]).
#[derive(Debug)]
pub struct SendStream {
    inner: Arc<Slot>,
}

impl Stream {
    pub(crate) fn new(session: Session, id: StreamId) -> Stream {
        Stream {
            inner: Slot { session, id },
        }
    }

    /// Poll functions for the session's unit tests.
    #[cfg(test)]
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_read(cx, buf)
    }

    #[cfg(test)]
    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }

    #[cfg(test)]
    pub(crate) fn poll_response(&self, cx: &mut Context<'_>) -> Poll<Result<ResponseHead, Error>> {
        self.inner.session.poll_response(self.inner.id, cx, false)
    }

    /// Ends our direction (what `close`/`shutdown` do). Idempotent.
    pub fn finish(&self) -> Result<(), Error> {
        self.inner.session.finish(self.inner.id)
    }

    /// Splits into a receiving and a sending half usable from different tasks. The stream is dropped
    /// (and reset if unfinished) when both halves are.
    pub fn split(self) -> (RecvStream, SendStream) {
        let inner = Arc::new(self.inner);
        (
            RecvStream {
                inner: inner.clone(),
            },
            SendStream { inner },
        )
    }
}

/// Inherent methods shared by a stream and the half they belong to.
macro_rules! recv_methods {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn id(&self) -> StreamId {
                self.inner.id
            }

            /// Opener: waits for the acceptor's response head (a copy: the stream keeps it).
            pub async fn response(&self) -> Result<ResponseHead, Error> {
                self.inner.response(false).await
            }

            /// Opener: waits for the acceptor's response head and hands it over instead of
            /// copying it; any later `response` or `take_response` fails with
            /// `ApiMisuse::ResponseTaken`.
            pub async fn take_response(&self) -> Result<ResponseHead, Error> {
                self.inner.response(true).await
            }

            /// Waits for the end of the peer's direction and returns its trailer (`None`: it ended
            /// without one).
            pub async fn trailer(&self) -> Result<Option<Trailer>, Error> {
                self.inner.trailer().await
            }

            /// The next received chunk without copying (at most `max` octets); `None` at the end.
            pub async fn read_chunk(&self, max: usize) -> Option<Result<Bytes, Error>> {
                self.inner.read_chunk(max).await
            }
        }
    )*};
}

macro_rules! send_methods {
    ($($t:ty),*) => {$(
        impl $t {
            /// Acceptor: answers with a response head; `end_stream`: no body follows.
            pub fn respond(&self, head: ResponseHead, end_stream: bool) -> Result<(), Error> {
                self.inner.session.respond(self.inner.id, head, end_stream)
            }

            /// Ends our direction with a trailer (after the queued body).
            pub fn send_trailer(&self, trailer: Trailer) -> Result<(), Error> {
                self.inner.session.send_trailer(self.inner.id, trailer)
            }

            /// Sends all of `data` as body without copying it (slices of it are framed and written
            /// as they are), waiting for flow-control credit like `write_all`.
            pub async fn write_chunk(&self, data: Bytes) -> Result<(), Error> {
                self.inner.write_chunk(data).await
            }

            /// Abandons the stream in both directions; the peer sees a RESET with `code`.
            pub fn reset(&self, code: ErrorCode) {
                self.inner.session.reset(self.inner.id, code)
            }
        }
    )*};
}

impl SendStream {
    pub fn id(&self) -> StreamId {
        self.inner.id
    }
}

recv_methods!(Stream, RecvStream);
send_methods!(Stream, SendStream);

/// Writes the I/O trait implementations of one trait family for the stream types: `read` for those
/// that receive, `write` for those that send. `$read_body` adapts the family's read buffer to the
/// slot's `poll_read(cx, &mut [u8])`.
macro_rules! io_impls {
    (
        $read_trait:path, $write_trait:path, $close:ident,
        read($rself:ident, $cx:ident, $buf:ident: $buf_ty:ty) -> $read_out:ty $read_body:block;
        read: [$($r:ty),*];
        write: [$($w:ty),*];
    ) => {
        $(impl $read_trait for $r {
            fn poll_read(
                self: Pin<&mut Self>,
                $cx: &mut Context<'_>,
                $buf: $buf_ty,
            ) -> Poll<io::Result<$read_out>> {
                let $rself: &Slot = &self.inner;
                $read_body
            }
        })*
        $(impl $write_trait for $w {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.inner.poll_write(cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            /// Finishes our direction (END_STREAM after the queued body).
            fn $close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.inner.poll_finish()
            }
        })*
    };
}

io_impls! {
    futures_io::AsyncRead, futures_io::AsyncWrite, poll_close,
    read(slot, cx, buf: &mut [u8]) -> usize { slot.poll_read(cx, buf) };
    read: [Stream, &Stream, RecvStream];
    write: [Stream, &Stream, SendStream];
}

#[cfg(feature = "tokio")]
mod tokio_io {
    use super::*;
    use tokio::io::ReadBuf;

    io_impls! {
        tokio::io::AsyncRead, tokio::io::AsyncWrite, poll_shutdown,
        read(slot, cx, buf: &mut ReadBuf<'_>) -> () {
            let n = std::task::ready!(slot.poll_read(cx, buf.initialize_unfilled()))?;
            buf.advance(n);
            Poll::Ready(Ok(()))
        };
        read: [Stream, &Stream, RecvStream];
        write: [Stream, &Stream, SendStream];
    }
}
