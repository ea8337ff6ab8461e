//! The upgraded subresources of pods: `exec`, `attach` and `portforward`. Chooses the
//! transport the client asked for (WebSocket with a Kubernetes subprotocol, or
//! `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version`), checks the request and the pod
//! before answering, reserves a session slot ([`crate::sessions::Sessions`]), answers `101 Switching Protocols`
//! and runs the session on the upgraded connection.
//!
//! Like the real API server, the WebSocket `GET` and the SPDY `POST` are both the `create` verb
//! on `pods/exec` (`pods/attach`, `pods/portforward`); other methods get 405. A request the
//! server cannot upgrade (no supported subprotocol, no `Upgrade` header) gets an ordinary error
//! response, which is what makes kubectl fall back from WebSocket to SPDY.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::body::ResponseBody;
use crate::exec::{self, Program, StreamOptions};
use crate::handlers::Context;
use crate::portforward;
use crate::sessions::{Ending, SessionGuard};
use crate::spdy;
use crate::status::ApiError;

/// The WebSocket subprotocol of port-forward: SPDY/3.1 frames carried in binary messages.
pub const PORT_FORWARD_WEBSOCKET: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY stream protocol of port-forward.
pub const PORT_FORWARD_SPDY: &str = "portforward.k8s.io";
/// The SPDY stream protocol of exec and attach.
pub const REMOTE_COMMAND_SPDY: &str = "v4.channel.k8s.io";

/// How long a closing session may wait for a peer that stopped reading.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest WebSocket frame and message accepted from a client.
const MAX_WS_FRAME: usize = 1024 * 1024;

/// Which upgraded subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `pods/exec`.
    Exec,
    /// `pods/attach`.
    Attach,
    /// `pods/portforward`.
    PortForward,
}

impl Subresource {
    /// The subresource named `name`, if it is an upgraded one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "exec" => Some(Self::Exec),
            "attach" => Some(Self::Attach),
            "portforward" => Some(Self::PortForward),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket(&'static str),
    Spdy(&'static str),
}

fn header_values<'a>(h: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn negotiate(sub: Subresource, headers: &HeaderMap) -> Result<Transport, ApiError> {
    let upgrade: Vec<String> = header_values(headers, "upgrade")
        .map(str::to_ascii_lowercase)
        .collect();
    let supported: &[&'static str] = match sub {
        Subresource::PortForward => &[
            PORT_FORWARD_WEBSOCKET,
            portforward::channels::PROTOCOL_V4,
            portforward::channels::PROTOCOL_V1,
        ],
        _ => exec::websocket::PROTOCOLS,
    };
    if upgrade.iter().any(|u| u == "websocket") {
        // The first of the client's protocols that is served.
        let offered: Vec<&str> = header_values(headers, "sec-websocket-protocol").collect();
        return offered
            .iter()
            .find_map(|o| supported.iter().find(|s| s == &o).copied())
            .map(Transport::WebSocket)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unable to upgrade connection: none of the WebSocket subprotocols {offered:?} is supported (supported: {supported:?})"
                ))
            });
    }
    if upgrade.iter().any(|u| u == "spdy/3.1") {
        let want = match sub {
            Subresource::PortForward => PORT_FORWARD_SPDY,
            _ => REMOTE_COMMAND_SPDY,
        };
        let offered: Vec<&str> = header_values(headers, "x-stream-protocol-version").collect();
        return if offered.contains(&want) {
            Ok(Transport::Spdy(want))
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "unable to upgrade connection: none of the stream protocols {offered:?} is supported (supported: [{want}])"
                ),
            ))
        };
    }
    Err(ApiError::bad_request(
        "unable to upgrade connection: the request must ask for an upgrade to WebSocket or SPDY/3.1",
    ))
}

/// What a session will run, checked before the upgrade so errors reach kubectl as a `Status`.
enum Plan {
    Command {
        container: Arc<exec::Container>,
        program: Program,
        opts: StreamOptions,
    },
    PortForward {
        pod: portforward::PodTarget,
        /// `ports` of the query (the channel protocol needs them).
        ports: Vec<u16>,
    },
}

/// Serves an upgrade request for `sub` of pod `ns/pod`.
pub(crate) fn serve(
    ctx: &Arc<Context>,
    sub: Subresource,
    ns: &str,
    pod: &str,
    parts: &mut http::request::Parts,
) -> Result<Response<ResponseBody>, ApiError> {
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(ApiError::method_not_allowed(
            &parts.method,
            parts.uri.path(),
        ));
    }
    let transport = negotiate(sub, &parts.headers)?;
    let plan = match sub {
        Subresource::PortForward => {
            let ports = portforward::channels::ports(parts.uri.query())?;
            if matches!(transport, Transport::WebSocket(p) if p != PORT_FORWARD_WEBSOCKET)
                && ports.is_empty()
            {
                return Err(ApiError::bad_request(
                    "query parameter \"ports\" is required for the port-forward channel protocol",
                ));
            }
            Plan::PortForward {
                pod: portforward::PodTarget::resolve(&ctx.store, ns, pod)?,
                ports,
            }
        }
        Subresource::Exec | Subresource::Attach => {
            let exec = sub == Subresource::Exec;
            let opts = StreamOptions::parse(parts.uri.query(), exec)?;
            let container =
                ctx.containers
                    .resolve(&ctx.store, ns, pod, opts.container.as_deref())?;
            let program = if exec {
                Program::Exec(opts.command.clone())
            } else {
                Program::Attach
            };
            Plan::Command {
                container,
                program,
                opts,
            }
        }
    };
    let ws_key = match transport {
        Transport::WebSocket(_) => Some(
            parts
                .headers
                .get("sec-websocket-key")
                .map(|k| derive_accept_key(k.as_bytes()))
                .ok_or_else(|| {
                    ApiError::bad_request("the WebSocket upgrade lacks Sec-WebSocket-Key")
                })?,
        ),
        Transport::Spdy(_) => None,
    };
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return Err(ApiError::bad_request(
            "unable to upgrade connection: upgrades need HTTP/1.1",
        ));
    };
    let Some(guard) = ctx.sessions.try_begin() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!(
                "too many streaming sessions: at most {} at once",
                ctx.sessions.max()
            ),
        ));
    };

    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    resp = resp.header(header::CONNECTION, "Upgrade");
    match (transport, &ws_key) {
        (Transport::WebSocket(proto), Some(accept)) => {
            resp = resp
                .header(header::UPGRADE, "websocket")
                .header("Sec-WebSocket-Accept", accept.as_str())
                .header("Sec-WebSocket-Protocol", HeaderValue::from_static(proto));
        }
        (Transport::Spdy(proto), _) => {
            resp = resp
                .header(header::UPGRADE, "SPDY/3.1")
                .header("X-Stream-Protocol-Version", HeaderValue::from_static(proto));
        }
        (Transport::WebSocket(_), None) => {}
    }
    let resp = resp.body(Full::new(Bytes::new()).boxed()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("cannot build the upgrade response: {e}"),
        )
    })?;

    let ctx = ctx.clone();
    let (ns, pod) = (ns.to_string(), pod.to_string());
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "the client did not complete the upgrade");
                return;
            }
        };
        let ending = run(ctx, transport, plan, upgraded, &guard).await;
        guard.end(&ending);
        tracing::debug!(namespace = %ns, %pod, ?sub, ?ending, "streaming session ended");
    });
    Ok(resp)
}

async fn run(
    ctx: Arc<Context>,
    transport: Transport,
    plan: Plan,
    io: TokioIo<hyper::upgrade::Upgraded>,
    guard: &SessionGuard,
) -> Ending {
    let idle = guard.sessions().idle_timeout();
    // Small buffers: thousands of sessions may be open (kubectl's messages are ≤ 32 KiB).
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_frame_size(Some(MAX_WS_FRAME))
        .max_message_size(Some(4 * MAX_WS_FRAME));
    match (transport, plan) {
        (
            Transport::WebSocket(proto),
            Plan::Command {
                container,
                program,
                opts,
            },
        ) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            exec::websocket::serve(ws, proto, container, program, opts, idle).await
        }
        (Transport::WebSocket(proto), Plan::PortForward { pod, ports })
            if proto != PORT_FORWARD_WEBSOCKET =>
        {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            portforward::channels::serve(ws, ctx.network.clone(), pod, ports, idle).await
        }
        (Transport::WebSocket(_), Plan::PortForward { pod, .. }) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            let (conn, pump) = spdy::tunnel::over_websocket(ws);
            let handler = portforward::Handler::new(ctx.network.clone(), pod);
            let session = spdy::session::serve(conn, handler, idle);
            tokio::pin!(pump, session);
            tokio::select! {
                ending = &mut session => {
                    // Bounded: a client that stopped reading must not hold the session slot.
                    let _ = tokio::time::timeout(LINGER, &mut pump).await;
                    ending
                }
                // The client went away: the session sees end of file and ends.
                () = &mut pump => session.await,
            }
        }
        (
            Transport::Spdy(_),
            Plan::Command {
                container,
                program,
                opts,
            },
        ) => {
            let handler = exec::spdy::Handler::new(container, program, opts);
            spdy::session::serve(io, handler, idle).await
        }
        (Transport::Spdy(_), Plan::PortForward { pod, .. }) => {
            let handler = portforward::Handler::new(ctx.network.clone(), pod);
            spdy::session::serve(io, handler, idle).await
        }
    }
}
