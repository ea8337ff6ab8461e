//! Bodies crossing the tunnel: the agent's response body as a hyper body (chunks are passed on as they
//! arrive, never buffered), and the client's request body pumped into the stream.
//!
//! A response body must match the `Content-Length` its head declared: one that ends early or runs
//! past it fails instead (hyper then cuts the connection, so the client sees a response shorter than
//! announced, never a well-formed lie); one known to be wrong before the head is sent is refused
//! ([`TunnelBody::check_start`], the caller answers 502).

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

use crate::agent_log::Misbehaviour;
use crate::metrics::Metrics;
use crate::registry::Lease;
use crate::state::KasState;

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
    /// An event taken by [`TunnelBody::check_start`], delivered first.
    ready: Option<Next>,
    done: bool,
    /// Octets still expected when the response head announced a Content-Length: once they are all
    /// delivered the body is complete, even if hyper drops it before seeing the stream's end.
    remaining: Option<u64>,
    _lease: Lease<Connection>,
    state: Arc<KasState>,
    agent_id: u64,
    span: tracing::Span,
}

impl TunnelBody {
    /// The body of `stream`, whose response head was received.
    pub fn new(
        stream: Arc<Stream>,
        lease: Lease<Connection>,
        state: Arc<KasState>,
        span: tracing::Span,
    ) -> Self {
        let agent_id = lease.agent_id();
        TunnelBody {
            stream,
            next: None,
            ready: None,
            done: false,
            remaining: None,
            _lease: lease,
            state,
            agent_id,
            span,
        }
    }
}

impl TunnelBody {
    /// Declares the length the response head announced (`Content-Length`), when a body of exactly
    /// that length must follow.
    pub fn with_content_length(mut self, length: Option<u64>) -> Self {
        self.remaining = length;
        self
    }

    /// Looks at what already arrived of the body, without waiting: an error if it already
    /// contradicts the declared length (the stream ended short, or more arrived than declared) or
    /// failed. The event is kept for the body either way.
    pub async fn check_start(&mut self) -> Result<(), String> {
        let mut next: NextFuture = Box::pin(next_event(self.stream.clone()));
        match futures_lite::future::poll_once(&mut next).await {
            None => {
                self.next = Some(next);
                Ok(())
            }
            Some(event) => {
                let verdict = match (&event, self.remaining) {
                    (Next::End, Some(left)) if left > 0 => Err(format!(
                        "the response declares {left} body octets and has none"
                    )),
                    (Next::Data(b), Some(left)) if b.len() as u64 > left => Err(format!(
                        "the response declares {left} body octets and sends more"
                    )),
                    (Next::Failed(m), _) => Err(m.clone()),
                    _ => Ok(()),
                };
                if let Err(m) = &verdict {
                    self.done = true;
                    self.stream.reset(ErrorCode::Cancel);
                    if !matches!(event, Next::Failed(_)) {
                        self.state
                            .agent_log
                            .warn(self.agent_id, Misbehaviour::BadResponseBody, m);
                    }
                }
                self.ready = Some(event);
                verdict
            }
        }
    }

    /// The body contradicts its head: the agent's fault.
    fn contradicts(&mut self, message: String) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state
            .agent_log
            .warn(self.agent_id, Misbehaviour::BadResponseBody, &message);
        self.fail(message)
    }

    fn fail(&mut self, message: String) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        self.stream.reset(ErrorCode::Cancel);
        self.span.in_scope(|| {
            tracing::info!(stream = self.stream.id().0, error = %message, "response body aborted")
        });
        Poll::Ready(Some(Err(message.into())))
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
        let event = match this.ready.take() {
            Some(event) => event,
            None => {
                let next = this
                    .next
                    .get_or_insert_with(|| Box::pin(next_event(this.stream.clone())));
                let Poll::Ready(event) = next.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                this.next = None;
                event
            }
        };
        match event {
            Next::Data(bytes) => {
                if let Some(left) = &mut this.remaining {
                    if bytes.len() as u64 > *left {
                        let declared = *left;
                        return this.contradicts(format!(
                            "the agent sent more body than the {declared} octets left of its content-length"
                        ));
                    }
                    *left -= bytes.len() as u64;
                    if *left == 0 {
                        // Everything announced has arrived: hyper may now drop the body unread.
                        this.done = true;
                    }
                }
                this.state.metrics.bytes_out(bytes.len());
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Next::End if this.remaining.is_some_and(|left| left > 0) => {
                let left = this.remaining.unwrap_or_default();
                this.contradicts(format!(
                    "the agent's body ended {left} octets short of its content-length"
                ))
            }
            Next::End => {
                this.done = true;
                this.span.in_scope(|| {
                    tracing::debug!(stream = this.stream.id().0, "response body complete")
                });
                Poll::Ready(None)
            }
            Next::Failed(message) => this.fail(message),
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

/// Passes the client's request body into the stream (without copying it), then finishes our direction. A client that fails
/// mid-body gets the stream reset with CANCEL; a stream that fails ends the copy (the response side
/// reports the failure).
pub async fn pump_request_body(
    mut body: Incoming,
    stream: Arc<Stream>,
    metrics: Arc<Metrics>,
    span: tracing::Span,
) {
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
                // Zero-copy: hyper's buffer is framed as it is.
                if let Err(e) = stream.write_chunk(data).await {
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
