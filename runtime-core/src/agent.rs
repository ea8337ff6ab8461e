//! The agent (dialing) side: TCP, TLS (or a WebSocket, through a proxy: [`crate::transport`]), HELLO —
//! once, for every runtime.

use std::sync::Arc;

use futures_rustls::TlsConnector;
use protocol::Established;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::driver::Driver;
use crate::error::Error;
use crate::facade::Dial;
use crate::handle::ConnectionHandle;
use crate::handshake::{AgentOptions, agent_handshake};
use crate::runtime::{AsyncIo, Runtime, timeout};
use crate::transport::{self, Endpoint};

/// Dials `to` on `rt`, verifies the server as `server_name` over TLS, and runs the tunnel
/// handshake. The TLS handshake is bounded by the configured handshake timeout.
pub async fn connect_agent(
    rt: Arc<dyn Runtime>,
    to: impl Into<Dial>,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    opts: AgentOptions,
) -> Result<(ConnectionHandle, Established), Error> {
    let Dial { host, port } = to.into();
    let tcp = rt.connect(host, port).await.map_err(Error::Io)?;
    let tls = timeout(
        &*rt,
        opts.config.handshake_timeout,
        TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await?
    .map_err(Error::Tls)?;
    connect_agent_over(rt, tls, opts).await
}

/// Dials `endpoint` (`tls://`, `wss://` or `ws://`, through its proxy if it has one; see
/// [`transport::dial`]) and runs the tunnel handshake over it.
pub async fn connect_agent_to(
    rt: Arc<dyn Runtime>,
    endpoint: &Endpoint,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    opts: AgentOptions,
) -> Result<(ConnectionHandle, Established), Error> {
    let io = transport::dial(
        &*rt,
        endpoint,
        tls,
        server_name,
        opts.config.handshake_timeout,
    )
    .await?;
    connect_agent_over(rt, io, opts).await
}

/// Runs the agent side of the tunnel over any byte stream (TLS already done, or an in-memory pipe);
/// the connection's driver task runs on `rt`.
pub async fn connect_agent_over(
    rt: Arc<dyn Runtime>,
    io: impl AsyncIo,
    opts: AgentOptions,
) -> Result<(ConnectionHandle, Established), Error> {
    let session = opts.session();
    rt.spawn(Box::pin(Driver::new(session.clone(), io, rt.clone())));
    agent_handshake(session).await
}
