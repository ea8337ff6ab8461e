//! Serving one `gitops` stream (protocol/SERVICES.md §9): agentk opens one per manifest project of
//! its configuration, naming the project and the commit whose set it already has; kas sends the
//! project's set whenever the last good commit differs from what the agent has (nothing when it
//! already has it: resumable across reconnects), status messages when the source fails or recovers
//! or the project is unknown, and records the agent's sync reports ([`GitopsPoller::handle_report`]).
//!
//! ```text
//!  agentk ──WATCH / (gitops-project, gitops-commit)──▶ kas: 200
//!  agentk ◀── Begin · Objects* · End (a new commit) | Status ─────── poller changes
//!  agentk ──Report (ProjectStatus JSON)──▶ poller (API, events)
//! ```
//!
//! A bad head is answered 400 (`x-tunnel-error: bad-method | bad-head`); a message that does not
//! frame or decode is a protocol violation (stream reset with `ErrorCode::Protocol`), logged by the
//! caller through the agent misbehaviour log.

use std::sync::Arc;

use futures_lite::AsyncWriteExt as _;
use gitops::wire::{self, AgentMessage, StatusCode};
use prost::Message as _;
use protocol::ErrorCode;
use protocol::proto::{Header, RequestHead, ResponseHead};
use runtime_smol::Stream;

use crate::gitops_poller::GitopsPoller;
use protocol::cache::{MessageDecoder, encode_message as encode};

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// How a gitops stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// agentk finished its direction; kas finished its own.
    Finished,
    /// The stream failed (reset by agentk, connection lost, write failed).
    Failed(String),
    /// agentk broke the protocol: the stream was reset with `ErrorCode::Protocol`.
    Violation(String),
    /// A bad head (what was wrong): answered 400.
    BadRequest(String),
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

/// The project and commit a head names.
fn parse_head(head: &RequestHead) -> Result<(String, Option<String>), String> {
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.clone())
    };
    let project = header(wire::PROJECT_HEADER).ok_or("no gitops-project header")?;
    if project.is_empty() || project.len() > wire::MAX_PROJECT_ID {
        return Err(format!(
            "gitops-project must be 1..={} octets",
            wire::MAX_PROJECT_ID
        ));
    }
    let project = std::str::from_utf8(&project)
        .map_err(|_| "gitops-project is not UTF-8")?
        .to_string();
    let commit = match header(wire::COMMIT_HEADER) {
        None => None,
        Some(c) if c.is_empty() => None,
        Some(c) => {
            if c.len() > wire::MAX_COMMIT_ID || !c.iter().all(u8::is_ascii_hexdigit) {
                return Err("gitops-commit must be a hexadecimal commit id".into());
            }
            Some(String::from_utf8_lossy(&c).to_ascii_lowercase())
        }
    };
    Ok((project, commit))
}

/// Serves a `gitops` stream opened by `agent_id` until it ends (see the module documentation).
pub async fn serve(
    poller: &Arc<GitopsPoller>,
    agent_id: u64,
    head: &RequestHead,
    stream: Stream,
) -> StreamEnd {
    if head.method != wire::METHOD {
        answer(&stream, 400, "bad-method");
        return StreamEnd::BadRequest(format!(
            "method {:?}",
            head.method.chars().take(64).collect::<String>()
        ));
    }
    let (project, has) = match parse_head(head) {
        Ok(x) => x,
        Err(why) => {
            answer(&stream, 400, "bad-head");
            return StreamEnd::BadRequest(why);
        }
    };
    if let Err(e) = stream.respond(
        ResponseHead {
            status: 200,
            headers: vec![],
        },
        false,
    ) {
        return StreamEnd::Failed(e.to_string());
    }
    tracing::debug!(agent_id, project, commit = ?has, stream = stream.id().0, "gitops stream open");
    let end = futures_lite::future::or(
        send_loop(poller, agent_id, &project, has, &stream),
        read_loop(poller, agent_id, &project, &stream),
    )
    .await;
    match &end {
        StreamEnd::Violation(_) => stream.reset(ErrorCode::Protocol),
        StreamEnd::Finished => {
            let _ = stream.finish();
        }
        _ => {}
    }
    tracing::debug!(agent_id, project, ?end, "gitops stream over");
    end
}

/// Sends sets and statuses as the poller's view of the project changes. Ends only on a failed write.
async fn send_loop(
    poller: &Arc<GitopsPoller>,
    agent_id: u64,
    project: &str,
    mut has: Option<String>,
    stream: &Stream,
) -> StreamEnd {
    // Subscribed before the first look, so no change between the look and the wait is missed.
    let watch = poller.watch(agent_id);
    let mut writer: &Stream = stream;
    let mut sent_status: Option<(StatusCode, String, String)> = None;
    let mut asked_poll = false;
    // Bounded by the poller's changes: every iteration waits for one.
    loop {
        let view = poller.view(agent_id, project);
        let status = if !view.configured {
            Some((
                StatusCode::UnknownProject,
                String::new(),
                format!("the agent's configuration has no manifest project {project:?}"),
            ))
        } else {
            view.error.as_ref().map(|e| {
                (
                    e.code,
                    e.commit.clone().unwrap_or_default(),
                    e.message.clone(),
                )
            })
        };
        if view.configured && view.desired.is_none() && view.error.is_none() && !asked_poll {
            // Configured since the last poll: poll now rather than at the next period.
            poller.request_poll();
            asked_poll = true;
        }
        if status != sent_status {
            let message = match &status {
                Some((code, commit, message)) => wire::status(*code, commit, message),
                None => wire::status(StatusCode::Ok, "", ""),
            };
            if let Err(e) = writer.write_all(&encode(&message)).await {
                return StreamEnd::Failed(e.to_string());
            }
            sent_status = status;
        }
        if view.configured
            && let Some(set) = &view.desired
            && has.as_deref() != Some(set.commit.as_str())
        {
            match wire::encode_set(set, wire::MAX_CHUNK_BYTES) {
                Ok(messages) => {
                    for m in &messages {
                        if let Err(e) = writer.write_all(&encode(m)).await {
                            return StreamEnd::Failed(e.to_string());
                        }
                    }
                    poller.set_sent();
                    tracing::info!(agent_id, project, commit = %set.commit, objects = set.objects.len(), "gitops: set sent");
                }
                Err(why) => {
                    let m = wire::status(StatusCode::Rejected, &set.commit, &why);
                    if let Err(e) = writer.write_all(&encode(&m)).await {
                        return StreamEnd::Failed(e.to_string());
                    }
                }
            }
            has = Some(set.commit.clone());
        }
        watch.changed().await;
    }
}

/// Reads agentk's reports until it finishes its direction.
async fn read_loop(
    poller: &Arc<GitopsPoller>,
    agent_id: u64,
    project: &str,
    stream: &Stream,
) -> StreamEnd {
    let mut decoder = MessageDecoder::default();
    // Bounded by the stream: every iteration consumes a chunk of it or ends.
    loop {
        let chunk = match stream.read_chunk(READ_CHUNK).await {
            None => {
                return match decoder.finish() {
                    Ok(()) => StreamEnd::Finished,
                    Err(e) => StreamEnd::Violation(e.to_string()),
                };
            }
            Some(Err(e)) => return StreamEnd::Failed(e.to_string()),
            Some(Ok(chunk)) => chunk,
        };
        decoder.push(&chunk);
        // Bounded by the octets buffered.
        loop {
            let bytes = match decoder.next_message() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return StreamEnd::Violation(e.to_string()),
            };
            let message = match AgentMessage::decode(bytes) {
                Ok(m) => m,
                Err(e) => return StreamEnd::Violation(format!("undecodable message: {e}")),
            };
            match wire::decode_report(&message) {
                Ok(Some(status)) => poller.handle_report(agent_id, project, status),
                Ok(None) => {}
                Err(e) => return StreamEnd::Violation(e),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            service: protocol::service::GITOPS.into(),
            method: wire::METHOD.into(),
            path: "/".into(),
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: (*n).into(),
                    value: bytes::Bytes::copy_from_slice(v.as_bytes()),
                })
                .collect(),
            timeout_ms: 0,
            impersonation: None,
        }
    }

    #[test]
    fn heads_are_checked() {
        assert_eq!(
            parse_head(&head(&[
                ("gitops-project", "g/p"),
                ("gitops-commit", "ABC1")
            ]))
            .unwrap(),
            ("g/p".to_string(), Some("abc1".to_string()))
        );
        assert_eq!(
            parse_head(&head(&[("gitops-project", "g/p")])).unwrap().1,
            None
        );
        assert!(parse_head(&head(&[])).is_err());
        assert!(parse_head(&head(&[("gitops-project", "")])).is_err());
        assert!(parse_head(&head(&[("gitops-project", &"x".repeat(2000))])).is_err());
        assert!(parse_head(&head(&[("gitops-project", "p"), ("gitops-commit", "zz")])).is_err());
    }
}
