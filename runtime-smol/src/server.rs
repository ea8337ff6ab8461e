//! The server (accepting) side: a TCP listener, TLS, HELLO and the asynchronous authenticator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use protocol::Config;
use runtime_core::{Authenticator, Driver, Error, ServerConnection, Session, server_handshake};
use rustls::ServerConfig;
use smol::channel::{Receiver, Sender, bounded};
use smol::io::{AsyncRead, AsyncWrite};
use smol::net::{AsyncToSocketAddrs, TcpListener};

use crate::connection::Connection;
use crate::io::{SmolTimer, SmolTransport};
use crate::with_timeout;

/// Authenticated connections waiting for [`Server::accept`].
const BACKLOG: usize = 1024;

/// A listening tunnel server. Each TCP connection is handshaken on its own task (TLS, HELLO, the
/// authenticator), so a slow authentication delays nobody else; [`Server::accept`] yields the
/// authenticated ones. Dropping the server stops listening; accepted connections live on.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    rx: Receiver<ServerConnection<Connection>>,
    _task: smol::Task<()>,
}

impl Server {
    /// Listens on `addr`; `tls: None` serves plain TCP (tests, or TLS terminated in front).
    pub async fn bind(
        addr: impl AsyncToSocketAddrs,
        tls: Option<Arc<ServerConfig>>,
        config: Config,
        authenticator: impl Authenticator,
    ) -> Result<Server, Error> {
        let listener = TcpListener::bind(addr).await.map_err(Error::Io)?;
        Self::serve(listener, tls, config, authenticator)
    }

    /// Serves on a listener bound by the caller (e.g. with its own `listen(2)` backlog).
    pub fn from_listener(
        listener: std::net::TcpListener,
        tls: Option<Arc<ServerConfig>>,
        config: Config,
        authenticator: impl Authenticator,
    ) -> Result<Server, Error> {
        let listener = TcpListener::try_from(listener).map_err(Error::Io)?;
        Self::serve(listener, tls, config, authenticator)
    }

    fn serve(
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        config: Config,
        authenticator: impl Authenticator,
    ) -> Result<Server, Error> {
        let local_addr = listener.local_addr().map_err(Error::Io)?;
        let (tx, rx) = bounded(BACKLOG);
        let auth: Arc<dyn Authenticator> = Arc::new(authenticator);
        let acceptor = tls.map(TlsAcceptor::from);
        let task = smol::spawn(accept_loop(listener, acceptor, config, auth, tx));
        tracing::info!(%local_addr, "tunnel server listening");
        Ok(Server {
            local_addr,
            rx,
            _task: task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next authenticated connection.
    pub async fn accept(&self) -> Result<ServerConnection<Connection>, Error> {
        self.rx
            .recv()
            .await
            .map_err(|_| Error::Io(std::io::ErrorKind::NotConnected.into()))
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Config,
    auth: Arc<dyn Authenticator>,
    tx: Sender<ServerConnection<Connection>>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, config, auth, tx) = (tls.clone(), config.clone(), auth.clone(), tx.clone());
        smol::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let result = match tls {
                Some(acceptor) => {
                    match with_timeout(config.handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => accept_over(s, config, &*auth, peer).await,
                        Ok(Err(e)) => Err(Error::Tls(e)),
                        Err(e) => Err(e),
                    }
                }
                None => accept_over(tcp, config, &*auth, peer).await,
            };
            match result {
                Ok(c) => {
                    let _ = tx.send(c).await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "tunnel handshake failed"),
            }
        })
        .detach();
    }
}

/// Runs the server side of the tunnel over any byte stream (TLS already done, or an in-memory pipe).
pub async fn accept_over<T>(
    io: T,
    config: Config,
    authenticator: &dyn Authenticator,
    peer: SocketAddr,
) -> Result<ServerConnection<Connection>, Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Session::server(config);
    smol::spawn(Driver::new(
        session.clone(),
        SmolTransport(io),
        SmolTimer::new(),
    ))
    .detach();
    let c = server_handshake(session, authenticator, peer).await?;
    Ok(c.map(Connection::new))
}
