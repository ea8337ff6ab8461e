//! The agent (dialing) side: TCP, TLS, HELLO.

use std::sync::Arc;

use protocol::Established;
use runtime_core::{AgentOptions, Driver, Error, agent_handshake};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;

use crate::connection::Connection;
use crate::io::{TokioTimer, TokioTransport};

/// Dials `addr`, verifies the server as `server_name` over TLS, and runs the tunnel handshake.
/// The TLS handshake is bounded by the configured handshake timeout.
pub async fn connect_agent(
    addr: impl ToSocketAddrs,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    opts: AgentOptions,
) -> Result<(Connection, Established), Error> {
    let tcp = TcpStream::connect(addr).await.map_err(Error::Io)?;
    tcp.set_nodelay(true).map_err(Error::Io)?;
    let tls = tokio::time::timeout(
        opts.config.handshake_timeout,
        TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await
    .map_err(|_| Error::Timeout)?
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
    tokio::spawn(Driver::new(
        session.clone(),
        TokioTransport(io),
        TokioTimer::new(),
    ));
    let (handle, established) = agent_handshake(session).await?;
    Ok((Connection::new(handle), established))
}
