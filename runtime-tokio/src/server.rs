//! The server (accepting) side: a TCP listener, TLS, HELLO and the asynchronous authenticator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::Config;
use runtime_core::{Authenticator, Driver, Error, ServerConnection, Session, server_handshake};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::connection::Connection;
use crate::io::{TokioTimer, TokioTransport};

/// Authenticated connections waiting for [`Server::accept`].
const BACKLOG: usize = 1024;

/// A listening tunnel server. Each TCP connection is handshaken on its own task (TLS, HELLO, the
/// authenticator), so a slow authentication delays nobody else; [`Server::accept`] yields the
/// authenticated ones. Dropping the server stops listening; accepted connections live on.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    rx: Mutex<mpsc::Receiver<ServerConnection<Connection>>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Listens on `addr`; `tls: None` serves plain TCP (tests, or TLS terminated in front).
    pub async fn bind(
        addr: impl ToSocketAddrs,
        tls: Option<Arc<ServerConfig>>,
        config: Config,
        authenticator: impl Authenticator,
    ) -> Result<Server, Error> {
        let listener = TcpListener::bind(addr).await.map_err(Error::Io)?;
        let local_addr = listener.local_addr().map_err(Error::Io)?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        let auth: Arc<dyn Authenticator> = Arc::new(authenticator);
        let acceptor = tls.map(TlsAcceptor::from);
        let task = tokio::spawn(accept_loop(listener, acceptor, config, auth, tx));
        tracing::info!(%local_addr, "tunnel server listening");
        Ok(Server {
            local_addr,
            rx: Mutex::new(rx),
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next authenticated connection.
    pub async fn accept(&self) -> Result<ServerConnection<Connection>, Error> {
        self.rx
            .lock()
            .await
            .recv()
            .await
            .ok_or(Error::Io(std::io::ErrorKind::NotConnected.into()))
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Config,
    auth: Arc<dyn Authenticator>,
    tx: mpsc::Sender<ServerConnection<Connection>>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, config, auth, tx) = (tls.clone(), config.clone(), auth.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(s)) => accept_over(s, config, &*auth, peer).await,
                        Ok(Err(e)) => Err(Error::Tls(e)),
                        Err(_) => Err(Error::Timeout),
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
        });
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
    tokio::spawn(Driver::new(
        session.clone(),
        TokioTransport(io),
        TokioTimer::new(),
    ));
    let c = server_handshake(session, authenticator, peer).await?;
    Ok(c.map(Connection::new))
}
