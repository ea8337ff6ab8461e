//! Streams the agent opens towards kas (most streams go the other way): accepted for the life of one
//! connection and dispatched by service. Today that is `views` ([`crate::views_stream`]); any other
//! service is answered 404 (with `x-tunnel-error: unknown-service`), so a newer agent offering a
//! service this kas does not know learns it at once instead of waiting.
//!
//! What an agent does wrong here (unknown services, views streams it breaks or kas cannot take) goes
//! to the agent misbehaviour log ([`crate::agent_log`]): counted every time, logged at most once a
//! minute per agent and kind, so that an agent opening thousands of bad streams cannot flood kas's
//! log.

use std::sync::Arc;

use protocol::proto::{Header, ResponseHead};
use protocol::service;
use runtime_smol::Connection;

use crate::agent_log::Misbehaviour;
use crate::state::KasState;
use crate::views_stream::StreamEnd;

/// Accepts the streams `agent_id` opens on `connection` until the connection is over, serving each on
/// its own task.
pub async fn serve(
    connection: Connection,
    agent_id: u64,
    connection_id: String,
    state: Arc<KasState>,
) {
    // Bounded by the connection: `accept_stream` returns `None` once it is over.
    while let Some((head, stream)) = connection.accept_stream().await {
        match head.service.as_str() {
            service::VIEWS => {
                let state2 = state.clone();
                let connection_id = connection_id.clone();
                state.spawner.spawn_detached(async move {
                    let end =
                        crate::views_stream::serve(&state2.mirrors, agent_id, &head, stream).await;
                    let problem = match &end {
                        StreamEnd::Refused(why) => Some(format!(
                            "views stream refused ({}): {why}",
                            why.response_head().status
                        )),
                        StreamEnd::Violation(why) => {
                            Some(format!("views protocol broken, stream reset: {why}"))
                        }
                        StreamEnd::Finished | StreamEnd::Failed(_) => None,
                    };
                    match problem {
                        Some(p) => state2
                            .agent_log
                            .warn(agent_id, Misbehaviour::ViewsStream, &p),
                        None => {
                            tracing::debug!(agent_id, %connection_id, ?end, "views stream over")
                        }
                    }
                });
            }
            service::GITOPS if state.gitops.is_some() => {
                let state2 = state.clone();
                state.spawner.spawn_detached(async move {
                    let Some(poller) = &state2.gitops else { return };
                    use crate::gitops_stream::StreamEnd;
                    match crate::gitops_stream::serve(poller, agent_id, &head, stream).await {
                        StreamEnd::BadRequest(why) | StreamEnd::Violation(why) => state2
                            .agent_log
                            .warn(agent_id, Misbehaviour::GitopsStream, &why),
                        end => tracing::debug!(agent_id, ?end, "gitops stream over"),
                    }
                });
            }
            service::CONFIG => {
                let state2 = state.clone();
                state.spawner.spawn_detached(async move {
                    let configs = state2.agent_config.as_ref();
                    let end = crate::config_stream::serve(configs, agent_id, &head, stream).await;
                    if let Some(p) = end.problem() {
                        state2
                            .agent_log
                            .warn(agent_id, Misbehaviour::ConfigStream, &p);
                    }
                });
            }
            other => {
                state.agent_log.warn(
                    agent_id,
                    Misbehaviour::UnknownService,
                    &format!("stream for unknown service {other:?}: 404"),
                );
                let _ = stream.respond(
                    ResponseHead {
                        status: 404,
                        headers: vec![Header {
                            name: "x-tunnel-error".into(),
                            value: bytes::Bytes::from_static(b"unknown-service"),
                        }],
                    },
                    true,
                );
            }
        }
    }
}
