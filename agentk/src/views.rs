//! The `views` stream: after each handshake agentk opens one stream to kas (protocol/SERVICES.md
//! §6) and, once kas answers 200, links it to the cache task for the life of the connection.
//!
//! ```text
//!  cache task ──encoded AgentToServer (bounded channel)──▶ writer ──▶ stream (flow-controlled)
//!  cache task ◀──ServerToAgent (acks, resync requests)─── reader ◀── stream (length-delimited)
//! ```
//!
//! The stream ends when the connection drains (GOAWAY either way: the replacement connection opens
//! its own stream) or closes, when kas ends its direction, or when the cache task hands the link to
//! a newer stream; then agentk finishes its direction and tells the cache task (which calls
//! `on_disconnected`). A message kas sends that does not decode, or one over 16 MiB, is a protocol
//! violation: the stream is reset with `ErrorCode::Protocol` and the violation logged once. A
//! non-200 answer (503: kas has no mirror capacity) is logged and retried on the next connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use protocol::ErrorCode;
use protocol::cache::decode_server_message;
use protocol::proto::RequestHead;
use protocol::service;
use runtime_tokio::{Connection, RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::cache::CacheHandle;
use crate::frame::FrameDecoder;

/// Encoded messages waiting for the stream at most (the cache task coalesces beyond this).
const OUTGOING_DEPTH: usize = 2;
/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// After agentk finished its direction, how long kas may take to finish its own before the
/// stream is dropped (and so reset).
const FINISH_WAIT: Duration = Duration::from_secs(2);

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// The request head of the views stream.
pub fn views_head() -> RequestHead {
    RequestHead {
        service: service::VIEWS.into(),
        method: "SYNC".into(),
        path: "/".into(),
        headers: Vec::new(),
        timeout_ms: 0,
    }
}

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

/// Runs the views stream of `conn` until it ends (see the module documentation).
pub async fn run(conn: Connection, cache: CacheHandle) {
    if conn.is_draining() || conn.is_closed() {
        return;
    }
    let link = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let stream = match conn.open(views_head(), false) {
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
    match answered {
        Ok(h) if h.status == 200 => {}
        Ok(h) if h.status == 503 || h.status == 404 => {
            tracing::info!(
                status = h.status,
                "kas does not mirror views now; retrying on the next connection"
            );
            let _ = stream.finish();
            return;
        }
        Ok(h) => {
            tracing::warn!(
                status = h.status,
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
    if cache.connected(link, out_tx).await.is_err() {
        return;
    }
    let end = tokio::select! {
        e = write_loop(&mut send, &mut out_rx) => e,
        e = read_loop(&recv, &cache, link) => e,
        () = draining(&conn) => End::Draining,
    };
    drop(out_rx);
    let _ = cache.disconnected(link).await;
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

/// Decodes kas's messages and hands them to the cache task.
async fn read_loop(recv: &RecvStream, cache: &CacheHandle, link: u64) -> End {
    let mut decoder = FrameDecoder::default();
    // Bounded by the stream: every iteration consumes a chunk or ends.
    loop {
        let chunk = match recv.read_chunk(READ_CHUNK).await {
            None => {
                return match decoder.finish() {
                    Ok(()) => End::KasFinished,
                    Err(e) => End::Protocol(e.to_string()),
                };
            }
            Some(Err(e)) => return End::Failed(e.to_string()),
            Some(Ok(chunk)) => chunk,
        };
        decoder.push(&chunk);
        // Bounded by the buffered octets.
        loop {
            let bytes = match decoder.next_message() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return End::Protocol(e.to_string()),
            };
            let message = match decode_server_message(&bytes) {
                Ok(m) => m,
                Err(e) => return End::Protocol(e.to_string()),
            };
            if cache.from_kas(link, message).await.is_err() {
                return End::CacheStopped;
            }
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
