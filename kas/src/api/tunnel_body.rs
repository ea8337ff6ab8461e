//! Bodies crossing the tunnel: the agent's response body as a hyper body (chunks are passed on as they
//! arrive, never buffered), and the client's request body pumped into the stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use protocol::ErrorCode;
use protocol::service::status;
use runtime_smol::{Connection, Stream};

use crate::metrics::Metrics;
use crate::registry::Lease;

use super::response::BodyError;

/// Largest chunk read from the stream at once.
const MAX_CHUNK: usize = 64 * 1024;

/// What reading the stream produced next.
enum Next {
    Data(Bytes),
    End,
    Failed(String),
}

async fn next_event(stream: Arc<Stream>) -> Next {
    match stream.read_chunk(MAX_CHUNK).await {
        Some(Ok(bytes)) => Next::Data(bytes),
        Some(Err(e)) => Next::Failed(format!("agent stream failed: {e}")),
        None => match stream.trailer().await {
            Ok(None) => Next::End,
            Ok(Some(t)) if t.code == status::OK => Next::End,
            Ok(Some(t)) => Next::Failed(format!(
                "agent reported a failure after the response head (code {}): {}",
                t.code, t.message
            )),
            Err(e) => Next::Failed(format!("agent stream failed: {e}")),
        },
    }
}

type NextFuture = Pin<Box<dyn Future<Output = Next> + Send>>;

/// The agent's response body. Holds the request's [`Lease`] until the body ends, so the router counts
/// the request as running while it streams. Dropped before its end (the client went away), it resets
/// the stream with CANCEL so the agent stops (a watch, `logs -f`).
pub struct TunnelBody {
    stream: Arc<Stream>,
    next: Option<NextFuture>,
    done: bool,
    /// Octets still expected when the response head announced a Content-Length: once they are all
    /// delivered the body is complete, even if hyper drops it before seeing the stream's end.
    remaining: Option<u64>,
    _lease: Lease<Connection>,
    metrics: Arc<Metrics>,
    span: tracing::Span,
}

impl TunnelBody {
    /// The body of `stream`, whose response head was received.
    pub fn new(
        stream: Arc<Stream>,
        lease: Lease<Connection>,
        metrics: Arc<Metrics>,
        span: tracing::Span,
    ) -> Self {
        TunnelBody {
            stream,
            next: None,
            done: false,
            remaining: None,
            _lease: lease,
            metrics,
            span,
        }
    }
}

impl TunnelBody {
    /// Declares the length the response head announced (`Content-Length`).
    pub fn with_content_length(mut self, length: Option<u64>) -> Self {
        self.remaining = length;
        self
    }
}

impl Body for TunnelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let next = this
            .next
            .get_or_insert_with(|| Box::pin(next_event(this.stream.clone())));
        let Poll::Ready(event) = next.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        this.next = None;
        match event {
            Next::Data(bytes) => {
                this.metrics.bytes_out(bytes.len());
                if let Some(left) = &mut this.remaining {
                    *left = left.saturating_sub(bytes.len() as u64);
                    if *left == 0 {
                        // Everything announced has arrived: hyper may now drop the body unread.
                        this.done = true;
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Next::End => {
                this.done = true;
                this.span.in_scope(|| {
                    tracing::debug!(stream = this.stream.id().0, "response body complete")
                });
                Poll::Ready(None)
            }
            Next::Failed(message) => {
                this.done = true;
                this.span.in_scope(|| {
                    tracing::info!(stream = this.stream.id().0, error = %message, "response body aborted")
                });
                Poll::Ready(Some(Err(message.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for TunnelBody {
    fn drop(&mut self) {
        if !self.done {
            self.stream.reset(ErrorCode::Cancel);
            self.span.in_scope(|| {
                tracing::info!(
                    stream = self.stream.id().0,
                    "client went away before the end of the response: stream reset"
                )
            });
        }
    }
}

/// Copies the client's request body into the stream, then finishes our direction. A client that fails
/// mid-body gets the stream reset with CANCEL; a stream that fails ends the copy (the response side
/// reports the failure).
pub async fn pump_request_body(
    mut body: Incoming,
    stream: Arc<Stream>,
    metrics: Arc<Metrics>,
    span: tracing::Span,
) {
    use futures_lite::AsyncWriteExt as _;
    // Bounded by the body: each iteration consumes one frame of it.
    loop {
        match body.frame().await {
            None => {
                if let Err(e) = stream.finish() {
                    span.in_scope(|| tracing::debug!(error = %e, "request body: finish failed"));
                }
                return;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // HTTP trailers do not cross the tunnel
                };
                metrics.bytes_in(data.len());
                let mut writer: &Stream = &stream;
                if let Err(e) = writer.write_all(&data).await {
                    span.in_scope(
                        || tracing::debug!(error = %e, "request body: stream write failed"),
                    );
                    return;
                }
            }
            Some(Err(e)) => {
                span.in_scope(
                    || tracing::info!(error = %e, "client request body failed: stream reset"),
                );
                stream.reset(ErrorCode::Cancel);
                return;
            }
        }
    }
}
