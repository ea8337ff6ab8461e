//! The agent (dialing) side: TCP, TLS, HELLO.

use std::sync::Arc;

use futures_rustls::TlsConnector;
use protocol::Established;
use runtime_core::{AgentOptions, Driver, Error, agent_handshake};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use smol::io::{AsyncRead, AsyncWrite};
use smol::net::{AsyncToSocketAddrs, TcpStream};

use crate::connection::Connection;
use crate::io::{SmolTimer, SmolTransport};
use crate::with_timeout;

/// Dials `addr`, verifies the server as `server_name` over TLS, and runs the tunnel handshake.
/// The TLS handshake is bounded by the configured handshake timeout.
pub async fn connect_agent(
    addr: impl AsyncToSocketAddrs,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    opts: AgentOptions,
) -> Result<(Connection, Established), Error> {
    let tcp = TcpStream::connect(addr).await.map_err(Error::Io)?;
    tcp.set_nodelay(true).map_err(Error::Io)?;
    let tls = with_timeout(
        opts.config.handshake_timeout,
        TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await?
    .map_err(Error::Tls)?;
    connect_agent_over(tls, opts).await
}

/// Runs the agent side of the tunnel over any byte stream (TLS already done, or an in-memory pipe).
pub async fn connect_agent_over<T>(
    io: T,
    opts: AgentOptions,
) -> Result<(Connection, Established), Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = opts.session();
    smol::spawn(Driver::new(
        session.clone(),
        SmolTransport(io),
        SmolTimer::new(),
    ))
    .detach();
    let (handle, established) = agent_handshake(session).await?;
    Ok((Connection::new(handle), established))
}
