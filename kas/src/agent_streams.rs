//! Streams the agent opens towards kas (most streams go the other way): accepted for the life of one
//! connection and dispatched by service. Today that is `views` ([`crate::views_stream`]); any other
//! service is answered 404 (with `x-tunnel-error: unknown-service`), so a newer agent offering a
//! service this kas does not know learns it at once instead of waiting.

use protocol::proto::{Header, ResponseHead};
use protocol::service;
use runtime_smol::Connection;

use crate::mirrors::Mirrors;
use crate::pool::Spawner;

/// Accepts the streams `agent_id` opens on `connection` until the connection is over, serving each on
/// its own task.
pub async fn serve(
    connection: Connection,
    agent_id: u64,
    connection_id: String,
    mirrors: Mirrors,
    spawner: Spawner,
) {
    // Bounded by the connection: `accept_stream` returns `None` once it is over.
    while let Some((head, stream)) = connection.accept_stream().await {
        match head.service.as_str() {
            service::VIEWS => {
                let mirrors = mirrors.clone();
                let connection_id = connection_id.clone();
                spawner.spawn_detached(async move {
                    let end = crate::views_stream::serve(&mirrors, agent_id, &head, stream).await;
                    tracing::debug!(agent_id, %connection_id, ?end, "views stream over");
                });
            }
            other => {
                tracing::info!(
                    agent_id,
                    %connection_id,
                    service = %other,
                    "agent opened a stream for an unknown service: 404"
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
