//! Tunnel stream bodies as HTTP bodies, and noticing that kas abandoned a stream.
//!
//! [`RequestBody`] turns the receiving half of a tunnel stream into an `http_body::Body` that hyper
//! streams upstream as it arrives (no buffering). [`ResetWatch`] resolves when kas resets the stream
//! (its client went away) or the connection dies, even while no octet flows either way (an idle
//! watch), so the upstream request can be dropped at once.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::{Body, Frame, SizeHint};
use runtime_tokio::{Error as TunnelError, RecvStream};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

/// Largest chunk handed to hyper at once.
const CHUNK: usize = 16 * 1024;
/// What [`RequestBody::from_tunnel`] peeks at most (on the stack).
const PEEK: usize = 2048;
/// Largest request body (by its `Content-Length`) read whole before the request is sent
/// ([`RequestBody::buffer_small`]), so that head and body leave in one write.
pub const SMALL_BODY: u64 = 64 * 1024;

/// A request body: empty, or the body kas streams on the tunnel stream.
///
/// When the tunnel body ends (or hyper drops it) the receiving half is handed back through the
/// channel given by [`RequestBody::from_tunnel`], so the stream can still be watched for a reset.
pub struct RequestBody {
    recv: Option<RecvStream>,
    buf: Vec<u8>,
    /// What the peek in [`RequestBody::from_tunnel`] read.
    first: Option<Result<Bytes, TunnelError>>,
    give_back: Option<oneshot::Sender<RecvStream>>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("streaming", &self.recv.is_some())
            .finish()
    }
}

impl RequestBody {
    /// No body.
    pub fn empty() -> RequestBody {
        RequestBody {
            recv: None,
            buf: Vec::new(),
            first: None,
            give_back: None,
        }
    }

    /// The body kas streams on `recv`, and the watch for kas abandoning the stream.
    ///
    /// A request opened with end of stream (no body) gives [`RequestBody::empty`], so hyper sends no
    /// body at all; otherwise hyper streams the tunnel body upstream as it arrives and hands the
    /// receiving half back to the [`ResetWatch`] when it is done with it.
    pub fn from_tunnel(mut recv: RecvStream) -> (RequestBody, ResetWatch) {
        // Peek without waiting: a stream opened with END_STREAM (most requests) reports its end at
        // once, and needs no buffer beyond this one on the stack.
        let mut peek = [0u8; PEEK];
        let mut cx = Context::from_waker(Waker::noop());
        let mut rb = ReadBuf::new(&mut peek);
        let first = match Pin::new(&mut recv).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                return (RequestBody::empty(), ResetWatch::Stream(recv));
            }
            Poll::Ready(Ok(())) => Some(Ok(Bytes::copy_from_slice(rb.filled()))),
            Poll::Ready(Err(e)) => Some(Err(TunnelError::from(e))),
            Poll::Pending => None,
        };
        let (tx, rx) = oneshot::channel();
        (
            RequestBody {
                recv: Some(recv),
                buf: Vec::new(),
                first,
                give_back: Some(tx),
            },
            ResetWatch::Lent(rx),
        )
    }

    /// This body read to its end first if `headers` give it a `Content-Length` of at most
    /// [`SMALL_BODY`], so hyper has all of it when it writes the head and sends both in one write
    /// (instead of the head alone, then the body when it arrives); as it is otherwise (no length:
    /// it may be a long stream, say a watch's request). A body that turns out longer than
    /// [`SMALL_BODY`] stops being read there and streams on. `Err`: the tunnel stream failed (kas
    /// reset it).
    pub async fn buffer_small(mut self, headers: &HeaderMap) -> Result<RequestBody, TunnelError> {
        let small = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n <= SMALL_BODY);
        if !small || self.recv.is_none() {
            return Ok(self);
        }
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len: u64 = 0;
        // Bounded: every frame adds octets, and more than SMALL_BODY of them ends the loop.
        while len <= SMALL_BODY {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self).poll_frame(cx)).await;
            let Some(frame) = frame else { break };
            if let Ok(data) = frame?.into_data() {
                len += data.len() as u64;
                chunks.push(data);
            }
        }
        let data = match chunks.len() {
            0 => return Ok(self),
            1 => chunks.pop().unwrap_or_default(),
            _ => Bytes::from(chunks.concat()),
        };
        self.first = Some(Ok(data));
        Ok(self)
    }

    fn release(&mut self) {
        if let (Some(recv), Some(tx)) = (self.recv.take(), self.give_back.take()) {
            // The serving task may be gone already; then the stream is simply dropped.
            let _ = tx.send(recv);
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.release();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = TunnelError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TunnelError>>> {
        let this = &mut *self;
        match this.first.take() {
            Some(Ok(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(e)) => {
                this.release();
                return Poll::Ready(Some(Err(e)));
            }
            None => {}
        }
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        if this.buf.is_empty() {
            this.buf = vec![0; CHUNK];
        }
        let mut rb = ReadBuf::new(&mut this.buf);
        match Pin::new(recv).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    this.release();
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(
                        &this.buf[..n],
                    )))))
                }
            }
            Poll::Ready(Err(e)) => {
                this.release();
                Poll::Ready(Some(Err(TunnelError::from(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_none() && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.recv, &self.first) {
            (None, None) => SizeHint::with_exact(0),
            // Read whole ([`RequestBody::buffer_small`]).
            (None, Some(Ok(data))) => SizeHint::with_exact(data.len() as u64),
            _ => SizeHint::default(),
        }
    }
}

/// Resolves when kas abandons the stream (RESET, or the connection died).
#[derive(Debug)]
pub enum ResetWatch {
    /// We hold the receiving half.
    Stream(RecvStream),
    /// The receiving half is inside a [`RequestBody`] and comes back when hyper is done with it.
    Lent(oneshot::Receiver<RecvStream>),
    /// The receiving half is gone (never resolves).
    Gone,
}

impl ResetWatch {
    /// Waits until the stream fails and returns why. Never resolves for a healthy stream.
    ///
    /// runtime-tokio has no dedicated "stream reset" future, so this waits on the acceptor's
    /// `response()`: an acceptor never receives a response head, so it resolves only with the
    /// stream's failure (a RESET from kas, or the connection's end).
    pub async fn reset(&mut self) -> TunnelError {
        loop {
            match self {
                ResetWatch::Stream(recv) => {
                    match recv.response().await {
                        Err(e) => return e,
                        // Not expected for an accepted stream; stop watching rather than spin.
                        Ok(_) => *self = ResetWatch::Gone,
                    }
                }
                ResetWatch::Lent(rx) => {
                    *self = match rx.await {
                        Ok(recv) => ResetWatch::Stream(recv),
                        Err(_) => ResetWatch::Gone,
                    }
                }
                ResetWatch::Gone => std::future::pending::<()>().await,
            }
        }
    }
}
