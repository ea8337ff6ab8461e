//! Serving one `views` stream (protocol/SERVICES.md §6): agentk opens it after each handshake and
//! keeps it for the connection's lifetime; kas feeds it to the agent's mirror ([`crate::mirrors`]).
//!
//! ```text
//!  agentk ──SYNC /──▶ kas: 200, then ResyncRequest (where the mirror is)
//!  agentk ──AgentToServer (snapshot | update | object_changes)──▶ mirror ──▶ events
//!  agentk ◀──ServerToAgent (ack | resync)──────────────────────── what each outcome says
//! ```
//!
//! Messages are length-delimited protobuf ([`crate::frame`]) both ways. A message that does not
//! frame (over 16 MiB, bad length prefix, stream ending inside a message), does not decode, or breaks
//! the sync rules is a protocol violation: the stream is reset with `ErrorCode::Protocol`; the caller
//! logs the [`StreamEnd`] through the agent misbehaviour log ([`crate::agent_log`]), which an agent
//! cannot flood. When agentk finishes its direction, kas finishes its own. A stream that
//! fails (reset, connection lost) just ends. Whatever the end, the stream's [`ViewsLink`] is dropped,
//! so the mirror is marked disconnected once the agent's last stream is gone.

use std::time::Instant;

use futures_lite::AsyncWriteExt as _;
use protocol::ErrorCode;
use protocol::cache::decode_agent_message;
use protocol::proto::{Header, RequestHead, ResponseHead};
use runtime_smol::Stream;

use crate::frame::{FrameDecoder, encode};
use crate::mirrors::{Mirrors, ViewsLink};

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// How a views stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// agentk finished its direction; kas finished its own.
    Finished,
    /// The stream failed (reset by agentk, connection lost, write failed).
    Failed(String),
    /// agentk broke the protocol: the stream was reset with `ErrorCode::Protocol`.
    Violation(String),
    /// Not a `SYNC` request (the method as received): answered 400.
    BadRequest(String),
    /// No mirror capacity: answered 503.
    Refused(String),
}

fn answer(stream: &Stream, status: u32, message: &str) {
    let _ = stream.respond(
        ResponseHead {
            status,
            headers: vec![Header {
                name: "x-tunnel-error".into(),
                value: bytes::Bytes::copy_from_slice(message.as_bytes()),
            }],
        },
        true,
    );
}

/// Serves a `views` stream opened by `agent_id` until it ends (see the module documentation).
pub async fn serve(
    mirrors: &Mirrors,
    agent_id: u64,
    head: &RequestHead,
    stream: Stream,
) -> StreamEnd {
    if head.method != "SYNC" {
        answer(&stream, 400, "bad-method");
        return StreamEnd::BadRequest(head.method.chars().take(64).collect());
    }
    let (link, first) = match mirrors.open(agent_id, Instant::now()) {
        Ok(x) => x,
        Err(e) => {
            answer(&stream, 503, "no-capacity");
            return StreamEnd::Refused(e.to_string());
        }
    };
    let end = run(&link, &stream, first).await;
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

async fn run(
    link: &ViewsLink,
    stream: &Stream,
    first: protocol::cache::proto::ServerToAgent,
) -> StreamEnd {
    if let Err(e) = stream.respond(
        ResponseHead {
            status: 200,
            headers: vec![],
        },
        false,
    ) {
        return StreamEnd::Failed(e.to_string());
    }
    tracing::debug!(
        agent_id = link.agent_id(),
        stream = stream.id().0,
        "views stream open"
    );
    let mut writer: &Stream = stream;
    if let Err(e) = writer.write_all(&encode(&first)).await {
        return StreamEnd::Failed(e.to_string());
    }
    let mut decoder = FrameDecoder::default();
    // Bounded by the stream: every iteration consumes a chunk of it or ends.
    loop {
        let chunk = match stream.read_chunk(READ_CHUNK).await {
            None => {
                if let Err(e) = decoder.finish() {
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
        decoder.push(&chunk);
        // Bounded by the octets buffered: every iteration consumes one message or stops.
        loop {
            let bytes = match decoder.next_message() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return StreamEnd::Violation(e.to_string()),
            };
            let message = match decode_agent_message(&bytes) {
                Ok(m) => m,
                Err(e) => return StreamEnd::Violation(e.to_string()),
            };
            let handled = match link.handle(&message, Instant::now()) {
                Ok(h) => h,
                Err(e) => return StreamEnd::Violation(e.to_string()),
            };
            if let Some(reply) = handled.reply
                && let Err(e) = writer.write_all(&encode(&reply)).await
            {
                return StreamEnd::Failed(e.to_string());
            }
        }
    }
}
