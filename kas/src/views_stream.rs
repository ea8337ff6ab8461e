//! Serving one `views` stream (protocol/SERVICES.md §6): agentk opens it after each handshake and
//! keeps it for the connection's lifetime; kas feeds it to the agent's mirror ([`crate::mirrors`]).
//! This module only moves octets: framing, decoding, the sync rules and the answers are the
//! `protocol::cache::MirrorTable` endpoint's.
//!
//! ```text
//!  agentk ──SYNC /──▶ kas: 200, then ResyncRequest (where the mirror is)
//!  agentk ──AgentToServer (snapshot | update | object_changes)──▶ mirror ──▶ events
//!  agentk ◀──ServerToAgent (ack | resync)──────────────────────── what each outcome says
//! ```
//!
//! A message that does not frame (over 16 MiB, bad length prefix, stream ending inside a message),
//! does not decode, or breaks the sync rules is a protocol violation: the stream is reset with
//! `ErrorCode::Protocol`; the caller logs the [`StreamEnd`] through the agent misbehaviour log
//! ([`crate::agent_log`]), which an agent cannot flood. When agentk finishes its direction, kas
//! finishes its own. A stream that fails (reset, connection lost) just ends. Whatever the end, the
//! stream's [`ViewsLink`] is dropped, so the mirror is marked disconnected once the agent's last
//! stream is gone.

use std::time::Instant;

use futures_lite::AsyncWriteExt as _;
use protocol::ErrorCode;
use protocol::proto::RequestHead;
use runtime_smol::Stream;

pub use protocol::cache::StreamEnd;

use crate::mirrors::{Mirrors, ViewsLink};

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Serves a `views` stream opened by `agent_id` until it ends (see the module documentation).
pub async fn serve(
    mirrors: &Mirrors,
    agent_id: u64,
    head: &RequestHead,
    stream: Stream,
) -> StreamEnd {
    let mut link = match mirrors.open(agent_id, head, Instant::now()) {
        Ok((link, ok)) => {
            if let Err(e) = stream.respond(ok, false) {
                return StreamEnd::Failed(e.to_string());
            }
            link
        }
        Err(refusal) => {
            let _ = stream.respond(refusal.response_head(), true);
            return StreamEnd::Refused(refusal);
        }
    };
    tracing::debug!(agent_id, stream = stream.id().0, "views stream open");
    let end = run(&mut link, &stream).await;
    match &end {
        StreamEnd::Violation(_) => stream.reset(ErrorCode::Protocol),
        StreamEnd::Failed(error) => {
            tracing::debug!(agent_id, stream = stream.id().0, %error, "views stream ended")
        }
        _ => tracing::debug!(agent_id, stream = stream.id().0, "views stream finished"),
    }
    drop(link);
    end
}

/// Writes what the endpoint queued for agentk.
async fn flush(link: &mut ViewsLink, stream: &Stream) -> Result<(), StreamEnd> {
    let mut writer: &Stream = stream;
    // Bounded by the queue (one ack or resync per message handled).
    while let Some(bytes) = link.poll_transmit() {
        if let Err(e) = writer.write_all(&bytes).await {
            return Err(StreamEnd::Failed(e.to_string()));
        }
    }
    Ok(())
}

async fn run(link: &mut ViewsLink, stream: &Stream) -> StreamEnd {
    if let Err(end) = flush(link, stream).await {
        return end;
    }
    // Bounded by the stream: every iteration consumes a chunk of it or ends.
    loop {
        let chunk = match stream.read_chunk(READ_CHUNK).await {
            None => {
                if let Err(e) = link.handle_end() {
                    return StreamEnd::Violation(e.to_string());
                }
                return match stream.finish() {
                    Ok(()) => StreamEnd::Finished,
                    Err(e) => StreamEnd::Failed(e.to_string()),
                };
            }
            Some(Err(e)) => return StreamEnd::Failed(e.to_string()),
            Some(Ok(chunk)) => chunk,
        };
        let handled = link.handle_body(&chunk, Instant::now());
        // What was applied before a violation is acknowledged like anything else.
        if let Err(end) = flush(link, stream).await {
            return end;
        }
        if let Err(e) = handled {
            return StreamEnd::Violation(e.to_string());
        }
    }
}
