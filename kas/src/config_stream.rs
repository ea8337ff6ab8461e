//! Serving one `config` stream (protocol/SERVICES.md §8): agentk opens it after each handshake with
//! the commit (and content fingerprint) it applied last; kas answers 200 and sends the agent's last
//! good configuration whenever its commit *and* content differ from what the agent has
//! ([`agent_config::Delivery`], through [`ConfigLink`]).
//!
//! ```text
//!  agentk ──WATCH / (x-config-commit, x-config-fingerprint)──▶ kas: 200
//!  agentk ◀──ConfigUpdate (length-delimited JSON)─── on open, then on every change the poller or
//!                                                    the webhook finds (AgentConfigs::subscribe)
//! ```
//!
//! agentk sends no body; a body octet is a protocol violation (RESET `PROTOCOL_ERROR`). When agentk
//! finishes its direction kas finishes its own. A stream that fails just ends; dropping its
//! [`ConfigLink`] closes it.

use std::sync::Arc;

use agent_config::{Delivery, Fingerprint};
use futures_lite::AsyncWriteExt as _;
use protocol::ErrorCode;
use protocol::proto::{Header, RequestHead, ResponseHead};
use protocol::service::{self, ConfigHeadError};
use runtime_smol::Stream;

use crate::agent_config::{AgentConfigs, ConfigLink};

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 16 * 1024;

/// How a config stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// agentk finished its direction; kas finished its own.
    Finished,
    /// The stream failed (reset by agentk, connection lost, write failed).
    Failed(String),
    /// agentk broke the protocol: the stream was reset with `ErrorCode::Protocol`.
    Violation(String),
    /// A bad method or header: answered 400.
    BadRequest(String),
    /// The agent has no config project (or kas polls none): answered 404 `no-config`.
    NotConfigured,
    /// Too many config streams of this agent: answered 503 `no-capacity`.
    Refused(String),
}

impl StreamEnd {
    /// The agent's fault, for the misbehaviour log; `None` for ordinary ends.
    pub fn problem(&self) -> Option<String> {
        match self {
            StreamEnd::BadRequest(why) => Some(format!("config stream refused, 400: {why}")),
            StreamEnd::Refused(why) => Some(format!("config stream refused, 503: {why}")),
            StreamEnd::Violation(why) => Some(format!("config stream reset: {why}")),
            StreamEnd::Finished | StreamEnd::Failed(_) | StreamEnd::NotConfigured => None,
        }
    }
}

fn answer(stream: &Stream, status: u32, reason: &str) {
    let _ = stream.respond(
        ResponseHead {
            status,
            headers: vec![Header {
                name: "x-tunnel-error".into(),
                value: bytes::Bytes::copy_from_slice(reason.as_bytes()),
            }],
        },
        true,
    );
}

/// Serves a `config` stream opened by `agent_id` until it ends (see the module documentation).
pub async fn serve(
    configs: Option<&Arc<AgentConfigs>>,
    agent_id: u64,
    head: &RequestHead,
    stream: Stream,
) -> StreamEnd {
    let have = match service::parse_config_head(head) {
        Ok(h) => h,
        Err(e) => {
            let reason = match e {
                ConfigHeadError::BadMethod(_) => "bad-method",
                ConfigHeadError::BadHeader(_) => "bad-header",
            };
            answer(&stream, 400, reason);
            return StreamEnd::BadRequest(e.to_string());
        }
    };
    let Some(configs) = configs.filter(|c| c.has_source(agent_id)) else {
        answer(&stream, 404, "no-config");
        return StreamEnd::NotConfigured;
    };
    // Subscribe before the first look at the configuration: no change can fall in between.
    let changed = configs.subscribe(agent_id);
    let has = Delivery::new(have.commit, have.fingerprint.map(Fingerprint));
    let mut link = match configs.open_link(agent_id, has) {
        Ok(l) => l,
        Err(e) => {
            answer(&stream, 503, "no-capacity");
            return StreamEnd::Refused(e.to_string());
        }
    };
    let end = run(&mut link, &stream, &changed).await;
    match &end {
        StreamEnd::Violation(_) => stream.reset(ErrorCode::Protocol),
        StreamEnd::Failed(error) => {
            tracing::debug!(agent_id, stream = stream.id().0, %error, "config stream ended")
        }
        _ => tracing::debug!(agent_id, stream = stream.id().0, "config stream finished"),
    }
    end
}

enum Wake {
    Changed,
    Read(Option<Result<bytes::Bytes, runtime_smol::Error>>),
}

async fn run(
    link: &mut ConfigLink,
    stream: &Stream,
    changed: &async_channel::Receiver<()>,
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
        "config stream open"
    );
    let mut writer: &Stream = stream;
    // Bounded by the stream: every iteration waits for a change or for agentk's direction.
    loop {
        if let Some(update) = link.to_send() {
            if let Err(e) = writer.write_all(&update.encode_frame()).await {
                return StreamEnd::Failed(e.to_string());
            }
            link.sent(&update);
        }
        let wake = futures_lite::future::or(
            async {
                // The sender stays in the subscriber list while this receiver lives; should it
                // ever close, only agentk's direction can end the stream.
                if changed.recv().await.is_err() {
                    std::future::pending::<()>().await;
                }
                Wake::Changed
            },
            async { Wake::Read(stream.read_chunk(READ_CHUNK).await) },
        )
        .await;
        match wake {
            Wake::Changed => {}
            Wake::Read(None) => {
                return match stream.finish() {
                    Ok(()) => StreamEnd::Finished,
                    Err(e) => StreamEnd::Failed(e.to_string()),
                };
            }
            Wake::Read(Some(Err(e))) => return StreamEnd::Failed(e.to_string()),
            Wake::Read(Some(Ok(chunk))) if chunk.is_empty() => {}
            Wake::Read(Some(Ok(chunk))) => {
                return StreamEnd::Violation(format!(
                    "agentk sent {} body octets; a config stream carries none from the agent",
                    chunk.len()
                ));
            }
        }
    }
}
