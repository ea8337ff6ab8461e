//! The `views` stream: after each handshake agentk opens one stream to kas (protocol/SERVICES.md
//! §6) and, once kas answers 200, links it to the cache task for the life of the connection. This
//! module only moves octets: the cache task's [`AgentViews`](protocol::cache::AgentViews) endpoint
//! decodes what kas sends and frames what agentk sends.
//!
//! ```text
//!  cache task ──framed AgentToServer (bounded channel)──▶ writer ──▶ stream (flow-controlled)
//!  cache task ◀──raw chunks (acks, resync requests)───── reader ◀── stream
//! ```
//!
//! The stream ends when the connection drains (GOAWAY either way: the replacement connection opens
//! its own stream) or closes, when kas ends its direction, or when the cache task hands the link to
//! a newer stream; then agentk finishes its direction and tells the cache task. A message kas sends
//! that does not decode, or one over 16 MiB, is a protocol violation: the stream is reset with
//! `ErrorCode::Protocol` and the violation logged once. A non-200 answer (503: kas has no mirror
//! capacity) is logged and retried on the next connection
//! ([`classify_views_response`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use protocol::ErrorCode;
use protocol::cache::{LinkEnd, ResponseVerdict, classify_views_response, views_request_head};
use runtime_tokio::{Connection, RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::cache::CacheHandle;

/// Encoded messages waiting for the stream at most (the cache task coalesces beyond this).
const OUTGOING_DEPTH: usize = 2;
/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// After agentk finished its direction, how long kas may take to finish its own before the
/// stream is dropped (and so reset).
const FINISH_WAIT: Duration = Duration::from_secs(2);

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Why the stream ended.
#[derive(Debug)]
enum End {
    /// The connection is draining (GOAWAY) or closing.
    Draining,
    /// The cache task dropped this link (a newer stream replaced it).
    Replaced,
    /// kas ended its direction.
    KasFinished,
    /// kas broke the protocol.
    Protocol(String),
    /// The stream failed (reset by kas, connection lost).
    Failed(String),
    /// The cache task is gone (shutdown).
    CacheStopped,
}

impl End {
    fn link_end(&self) -> LinkEnd {
        match self {
            End::Draining | End::CacheStopped => LinkEnd::Draining,
            End::Replaced => LinkEnd::Replaced,
            End::KasFinished => LinkEnd::KasFinished,
            End::Protocol(_) => LinkEnd::Violation,
            End::Failed(_) => LinkEnd::Failed,
        }
    }
}

/// Runs the views stream of `conn` until it ends (see the module documentation).
pub async fn run(conn: Connection, cache: CacheHandle) {
    if conn.is_draining() || conn.is_closed() {
        return;
    }
    let link = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let stream = match conn.open(views_request_head(), false) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot open the views stream");
            return;
        }
    };
    let answered = tokio::select! {
        r = stream.response() => r,
        () = draining(&conn) => {
            let _ = stream.finish();
            return;
        }
    };
    match answered.map(|h| (h.status, classify_views_response(h.status))) {
        Ok((_, ResponseVerdict::Linked)) => {}
        Ok((status, ResponseVerdict::RetryNextConnection)) => {
            tracing::info!(
                status,
                "kas does not mirror views now; retrying on the next connection"
            );
            let _ = stream.finish();
            return;
        }
        Ok((status, ResponseVerdict::Refused)) => {
            tracing::warn!(
                status,
                "kas refused the views stream; retrying on the next connection"
            );
            let _ = stream.finish();
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "the views stream failed before kas answered");
            return;
        }
    }
    let (recv, mut send) = stream.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUTGOING_DEPTH);
    let (violation_tx, violation_rx) = oneshot::channel();
    if cache.linked(link, out_tx, violation_tx).await.is_err() {
        return;
    }
    let end = tokio::select! {
        // A violation also drops the link (and so ends the writer): report it first.
        biased;
        Ok(error) = violation_rx => End::Protocol(error),
        e = read_loop(&recv, &cache, link) => e,
        e = write_loop(&mut send, &mut out_rx) => e,
        () = draining(&conn) => End::Draining,
    };
    drop(out_rx);
    let _ = cache.unlinked(link, end.link_end()).await;
    match end {
        End::Protocol(error) => {
            tracing::warn!(%error, "kas sent a bad message on the views stream; resetting it");
            send.reset(ErrorCode::Protocol);
        }
        End::Failed(error) => tracing::debug!(%error, "views stream ended"),
        End::KasFinished => {
            tracing::info!("kas ended the views stream; reopening on the next connection");
            let _ = send.shutdown().await;
        }
        End::Draining | End::Replaced | End::CacheStopped => {
            tracing::debug!(?end, "finishing the views stream");
            if send.shutdown().await.is_ok() {
                let _ = tokio::time::timeout(FINISH_WAIT, drain(&recv)).await;
            }
        }
    }
}

/// Writes what the cache task hands over, with the stream's flow control.
async fn write_loop(send: &mut SendStream, out: &mut mpsc::Receiver<Bytes>) -> End {
    // Bounded by the channel: it ends when the cache task drops this link.
    while let Some(bytes) = out.recv().await {
        if let Err(e) = send.write_all(&bytes).await {
            return End::Failed(e.to_string());
        }
    }
    End::Replaced
}

/// Hands kas's octets to the cache task as they come.
async fn read_loop(recv: &RecvStream, cache: &CacheHandle, link: u64) -> End {
    // Bounded by the stream: every iteration consumes a chunk or ends.
    loop {
        let chunk = match recv.read_chunk(READ_CHUNK).await {
            None => {
                return match cache.finished(link).await {
                    Ok(None) => End::KasFinished,
                    Ok(Some(error)) => End::Protocol(error),
                    Err(_) => End::CacheStopped,
                };
            }
            Some(Err(e)) => return End::Failed(e.to_string()),
            Some(Ok(chunk)) => chunk,
        };
        if cache.body(link, chunk).await.is_err() {
            return End::CacheStopped;
        }
    }
}

/// Resolves once the connection drains (GOAWAY either way) or closes.
async fn draining(conn: &Connection) {
    tokio::select! {
        () = crate::agent::draining(conn) => {}
        _ = conn.closed() => {}
    }
}

/// Reads and discards until kas ends its direction.
async fn drain(recv: &RecvStream) {
    // Bounded by the stream (and by FINISH_WAIT at the caller).
    while let Some(Ok(_)) = recv.read_chunk(READ_CHUNK).await {}
}
