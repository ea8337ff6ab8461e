//! The agent listener: TLS, HELLO authenticated through the configured [`AgentAuthenticator`] on smol's
//! blocking pool, REJECT with the right code, and registration of accepted connections in the registry.
//!
//! Each accepted connection gets a synchronous observer that marks it draining in the registry the
//! moment the protocol processed a GOAWAY (either way; no task, no polling) and removes it once it
//! closed, and a task accepting the streams the agent opens
//! ([`crate::agent_streams`]: the `views` stream). Agents' first connections and last disconnections
//! are published as `agent` events ([`crate::events::Presence`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use protocol::proto::{Reject, RejectCode};
use protocol::routing::DrainCause;
use protocol::{CloseReason, ConnectionError, HelloInfo, PROTOCOL_VERSION};
use runtime_smol::{Accepted, Connection, ConnectionEvent, Initiator, ServerConnection};

use crate::agent_log::Misbehaviour;
use crate::auth::{AgentAuthenticator, AuthError};
use crate::config::Config;
use crate::registry::ConnectionEntry;
use crate::state::KasState;

/// How long a connection kas retires (GOAWAY) gives its streams in flight.
pub const RETIRE_GRACE: Duration = Duration::from_secs(30);

/// Most HELLOs authenticated at once. The backend runs on smol's blocking pool, which grows a thread
/// per waiting call (up to 500): in a reconnect storm of thousands of agents that was ~300 threads
/// and tens of MiB of stacks and allocator arenas for calls that take microseconds (agents file) or
/// one HTTP round trip (GitLab). The rest wait here, within their handshake timeout.
const AUTH_CONCURRENCY: usize = 64;

/// What an agent is told to wait before reconnecting when the backend could not answer.
const BACKEND_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The tunnel configuration kas announces to agents, and the flood limits it enforces on them.
/// `config` must be valid ([`Config::validate`]): values are used as they are.
pub fn tunnel_config(config: &Config) -> protocol::Config {
    let mut c = protocol::Config::default();
    c.settings.idle_timeout = config.keepalive.idle_timeout;
    c.settings.keepalive_interval = config.keepalive.interval;
    c.settings.max_frame_size = config.limits.max_frame_size;
    c.handshake_timeout = config.keepalive.handshake_timeout;
    c.flood = config.limits.flood.to_protocol();
    c.replica = protocol::tunnel::ReplicaInfo {
        replica_id: config.accept_replica_id(),
        // The replica count is unknown here (peers come from Redis): the configured `K`.
        connections_wanted: protocol::tunnel::connection_set::connections_wanted(
            config.agent_listener.agent_connections,
            None,
        ),
    };
    debug_assert!(
        c.settings.validate().is_ok(),
        "tunnel settings out of range"
    );
    c
}

fn reject(code: RejectCode, message: impl Into<String>, retry_after: Option<Duration>) -> Reject {
    Reject {
        code: code as i32,
        message: message.into(),
        retry_after_ms: retry_after
            .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1))
            .unwrap_or(0),
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
    }
}

/// The connection id sent in ACCEPT: `<instance>-<serial>`.
pub fn connection_id(instance: &str, serial: u64) -> String {
    format!("{instance}-{serial}")
}

/// The serial inside a connection id made by [`connection_id`].
fn serial_of(connection_id: &str) -> Option<u64> {
    connection_id.rsplit_once('-')?.1.parse().ok()
}

/// The authenticator the tunnel server calls for each HELLO.
pub fn authenticator(
    state: Arc<KasState>,
    backend: Arc<dyn AgentAuthenticator>,
) -> impl Fn(HelloInfo, SocketAddr) -> futures_lite::future::Boxed<Result<Accepted, Reject>>
+ Send
+ Sync
+ 'static {
    let permits = Arc::new(smol::lock::Semaphore::new(AUTH_CONCURRENCY));
    move |hello: HelloInfo, peer: SocketAddr| {
        let state = state.clone();
        let backend = backend.clone();
        let permits = permits.clone();
        Box::pin(async move {
            if state.is_shutting_down() {
                state.metrics.agent_auth_failure("shutting_down");
                return Err(reject(
                    RejectCode::Unavailable,
                    "kas is shutting down",
                    Some(Duration::from_secs(1)),
                ));
            }
            let token = hello.token;
            let digest = crate::auth::TokenDigest::of(&token);
            let result = {
                let _permit = permits.acquire().await;
                smol::unblock(move || backend.authenticate(&token, peer.ip())).await
            };
            match result {
                Ok(identity) => {
                    state.set_auth_backend_ok(true);
                    state.registry.note_agent(identity.agent_id, &identity.name);
                    // GitLab named the agent's project: read its configuration at once.
                    if let (Some(path), Some(configs)) = (
                        state.directory.note_authenticated(&identity),
                        &state.agent_config,
                    ) {
                        configs.trigger(Some(&path), None);
                    }
                    let serial = state.registry.next_connection_serial();
                    if let crate::directory::AgentDirectory::File(f) = &state.directory {
                        let token_id = f.token_id(identity.agent_id, &digest);
                        (state.tokens).authenticated(serial, identity.agent_id, digest, token_id);
                    }
                    tracing::debug!(agent_id = identity.agent_id, %peer, "agent authenticated");
                    Ok(Accepted {
                        agent_id: identity.agent_id,
                        connection_id: connection_id(&state.instance, serial),
                    })
                }
                Err(e) => {
                    let (code, reason, retry_after) = match &e {
                        AuthError::Unauthenticated => {
                            state.set_auth_backend_ok(true);
                            (RejectCode::Unauthenticated, "unauthenticated", None)
                        }
                        AuthError::PermissionDenied => {
                            state.set_auth_backend_ok(true);
                            (RejectCode::PermissionDenied, "permission_denied", None)
                        }
                        AuthError::RateLimited { retry_after } => {
                            (RejectCode::RateLimited, "rate_limited", Some(*retry_after))
                        }
                        AuthError::Backend(_) => {
                            state.set_auth_backend_ok(false);
                            (
                                RejectCode::Unavailable,
                                "backend",
                                Some(BACKEND_RETRY_AFTER),
                            )
                        }
                    };
                    state.metrics.agent_auth_failure(reason);
                    tracing::info!(%peer, reason, error = %e, "agent authentication failed");
                    Err(reject(code, e.to_string(), retry_after))
                }
            }
        })
    }
}

/// Registers an accepted connection and starts observing it; `max_age` (±10 % jitter, decided by
/// [`protocol::routing::balance::connection_deadline`]) retires it with GOAWAY once that old.
pub fn register(
    state: &Arc<KasState>,
    accepted: ServerConnection<Connection>,
    max_streams: u32,
    max_age: Option<Duration>,
) {
    let ServerConnection {
        connection,
        agent_id,
        connection_id,
        meta,
        peer,
        established,
    } = accepted;
    let Some(serial) = serial_of(&connection_id) else {
        tracing::error!(%connection_id, "accepted connection with a foreign id; closing it");
        connection.abort(protocol::ErrorCode::Internal, "internal error");
        return;
    };
    let max_streams = max_streams.min(established.peer_settings.max_concurrent_streams);
    let entry = ConnectionEntry {
        serial,
        agent_id,
        connection_id: connection_id.clone(),
        handle: connection.clone(),
        meta: meta.clone(),
        peer,
        connected_since: SystemTime::now(),
        draining: false,
    };
    if let Err(e) = state.registry.add_connection(entry, max_streams) {
        tracing::info!(agent_id, %connection_id, error = %e, "not registering agent connection");
        state.tokens.forget(serial);
        connection.start_close(Duration::from_secs(1));
        return;
    }
    state.metrics.connection_accepted();
    state.presence.connection_up(agent_id, &state.events);
    tracing::info!(
        agent_id,
        %connection_id,
        %peer,
        token_id = state.tokens.token_id(serial).as_deref().unwrap_or("-"),
        version = %meta.version,
        pod = %format!("{}/{}", meta.pod_namespace, meta.pod_name),
        max_streams,
        "agent connected"
    );
    state.spawner.spawn_detached(crate::agent_streams::serve(
        connection.clone(),
        agent_id,
        connection_id.clone(),
        state.clone(),
    ));
    if let Some(age) = max_age {
        retire_at_age(state, &connection, agent_id, connection_id.clone(), age);
    }
    observe(state, &connection, serial, agent_id, connection_id);
}

/// The jitter of the maximum connection age (gRPC's `MaxConnectionAge` uses ±10 % too).
const AGE_JITTER: f64 = 0.1;

/// Sends GOAWAY on `connection` once it is `max_age` old (± [`AGE_JITTER`]): the agent dials a
/// replacement at once through the load balancer while in-flight streams finish within
/// [`RETIRE_GRACE`], so load evens out across replicas without a failed request.
fn retire_at_age(
    state: &Arc<KasState>,
    connection: &Connection,
    agent_id: u64,
    connection_id: String,
    max_age: Duration,
) {
    let now = std::time::Instant::now();
    let deadline =
        protocol::routing::balance::connection_deadline(now, max_age, AGE_JITTER, rand::random());
    let conn = connection.clone();
    state.spawner.spawn_detached(async move {
        let aged = futures_lite::future::or(
            async {
                smol::Timer::at(deadline).await;
                true
            },
            async {
                conn.closed().await;
                false
            },
        )
        .await;
        if aged && !conn.is_draining() {
            tracing::info!(
                agent_id,
                %connection_id,
                age_ms = u64::try_from(now.elapsed().as_millis()).unwrap_or(u64::MAX),
                "agent connection reached its maximum age; sending GOAWAY"
            );
            conn.start_close(RETIRE_GRACE);
        }
    });
}

/// Follows one connection with a synchronous observer ([`ConnectionEvent`]): it is
/// marked draining the moment the protocol processed a GOAWAY (either way) — before the driver that
/// processed it transmits anything else, so no request can be placed on it afterwards — and removed
/// once closed. No task, no polling.
fn observe(
    state: &Arc<KasState>,
    connection: &Connection,
    serial: u64,
    agent_id: u64,
    connection_id: String,
) {
    let state = state.clone();
    connection.handle().on_event(move |event| match event {
        ConnectionEvent::Draining { initiator, .. } => {
            let cause = match initiator {
                Initiator::Peer => DrainCause::PeerGoaway,
                Initiator::Local if state.is_shutting_down() => DrainCause::Shutdown,
                Initiator::Local => DrainCause::LocalClose,
            };
            if state.registry.set_draining(serial, cause) {
                tracing::info!(agent_id, %connection_id, ?cause, "agent connection draining (goaway)");
            }
        }
        ConnectionEvent::Closed(reason) => {
            let lost = state.registry.remove_connection(serial);
            state.tokens.forget(serial);
            state.presence.connection_down(agent_id, &state.events);
            if let CloseReason::Local(
                e @ (ConnectionError::Flood { .. } | ConnectionError::UnreadAnswers { .. }),
            ) = reason
            {
                state
                    .agent_log
                    .warn(agent_id, Misbehaviour::Flood, &e.to_string());
            }
            state.agent_log.flush(agent_id);
            tracing::info!(
                agent_id,
                %connection_id,
                reason = ?reason,
                lost_requests = lost,
                "agent disconnected"
            );
        }
    });
}

/// Accepts authenticated connections until `stop` closes.
pub async fn accept_loop(
    state: Arc<KasState>,
    server: runtime_smol::Server,
    max_streams: u32,
    max_age: Option<Duration>,
    stop: async_channel::Receiver<()>,
) {
    loop {
        let next = futures_lite::future::or(async { Some(server.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok(accepted)) => register(&state, accepted, max_streams, max_age),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "agent listener stopped accepting");
                break;
            }
        }
    }
    tracing::debug!("agent listener closed");
    drop(server);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_carry_the_serial() {
        let id = connection_id("a1b2c3d4", 17);
        assert_eq!(id, "a1b2c3d4-17");
        assert_eq!(serial_of(&id), Some(17));
        assert_eq!(serial_of("nonsense"), None);
        assert_eq!(serial_of("x-y"), None);
    }

    #[test]
    fn rejects_carry_retry_after_and_versions() {
        let r = reject(
            RejectCode::RateLimited,
            "slow down",
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(r.code, RejectCode::RateLimited as i32);
        assert_eq!(r.retry_after_ms, 1500);
        assert_eq!((r.min_version, r.max_version), (1, 1));
        assert_eq!(
            reject(RejectCode::Unauthenticated, "", None).retry_after_ms,
            0
        );
    }

    #[test]
    fn tunnel_config_follows_kas_config() {
        let mut config = Config::default();
        config.keepalive.interval = Duration::from_secs(7);
        config.limits.max_frame_size = 65_536;
        config.limits.flood.pings = 3;
        config.agent_listener.replica_id = Some("kas-b".into());
        config.agent_listener.agent_connections = 2;
        let c = tunnel_config(&config);
        assert_eq!(c.replica.replica_id, "kas-b");
        assert_eq!(c.replica.connections_wanted, 2);
        assert_eq!(c.settings.keepalive_interval, Duration::from_secs(7));
        assert_eq!(c.settings.max_frame_size, 65_536);
        assert_eq!(c.flood.pings, 3);
        assert!(c.settings.validate().is_ok());
    }
}
