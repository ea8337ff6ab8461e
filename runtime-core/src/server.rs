//! The server (accepting) side: a TCP listener, TLS, HELLO and the asynchronous authenticator — once,
//! for every runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_rustls::TlsAcceptor;
use protocol::Config;
use rustls::ServerConfig;

use crate::driver::Driver;
use crate::error::Error;
use crate::handle::ConnectionHandle;
use crate::handshake::{Authenticator, ServerConnection, server_handshake};
use crate::runtime::{AsyncIo, BoxIo, Listener, Runtime, accept, sleep, timeout};
use crate::session::Session;
use crate::transport::{Prefixed, WsIo, websocket};
use futures_lite::AsyncReadExt;

/// Authenticated connections waiting for [`Server::accept`].
const BACKLOG: usize = 1024;
/// Pause after a failed `accept` (EMFILE and friends) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listening tunnel server. Each TCP connection is handshaken on its own task (TLS, HELLO, the
/// authenticator), so a slow authentication delays nobody else; [`Server::accept`] yields the
/// authenticated ones. Dropping the server stops listening; accepted connections live on.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    intake: Intake,
    rx: Receiver<ServerConnection<ConnectionHandle>>,
    /// Dropped with the server: the accept loop sees its channel close and stops.
    _stop: Sender<()>,
}

impl Server {
    /// Listens on `addr`; `tls: None` serves plain TCP (tests, or TLS terminated in front).
    pub fn bind(
        rt: Arc<dyn Runtime>,
        addr: SocketAddr,
        tls: Option<Arc<ServerConfig>>,
        config: Config,
        authenticator: impl Authenticator,
    ) -> Result<Server, Error> {
        let listener = std::net::TcpListener::bind(addr).map_err(Error::Io)?;
        Self::from_listener(rt, listener, tls, config, authenticator)
    }

    /// Serves on a listener bound by the caller (e.g. with its own `listen(2)` backlog).
    pub fn from_listener(
        rt: Arc<dyn Runtime>,
        listener: std::net::TcpListener,
        tls: Option<Arc<ServerConfig>>,
        config: Config,
        authenticator: impl Authenticator,
    ) -> Result<Server, Error> {
        let listener = rt.listen(listener).map_err(Error::Io)?;
        let local_addr = listener.local_addr().map_err(Error::Io)?;
        let (tx, rx) = async_channel::bounded(BACKLOG);
        let (stop, stopped) = async_channel::bounded(1);
        let auth: Arc<dyn Authenticator> = Arc::new(authenticator);
        // WebSocket clients (`wss://`) negotiate HTTP/1.1 (see `transport::dial`).
        let acceptor = tls.map(|tls| {
            let mut tls = (*tls).clone();
            if !tls.alpn_protocols.is_empty()
                && !tls.alpn_protocols.iter().any(|p| p == b"http/1.1")
            {
                tls.alpn_protocols.push(b"http/1.1".to_vec());
            }
            TlsAcceptor::from(Arc::new(tls))
        });
        let intake = Intake {
            rt: rt.clone(),
            config: config.clone(),
            auth: auth.clone(),
            tx: tx.clone(),
        };
        let task = accept_loop(rt.clone(), listener, acceptor, config, auth, tx);
        rt.spawn(Box::pin(futures_lite::future::or(task, async move {
            let _ = stopped.recv().await;
        })));
        tracing::info!(%local_addr, "tunnel server listening");
        Ok(Server {
            local_addr,
            intake,
            rx,
            _stop: stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that feeds connections accepted elsewhere (a WebSocket upgraded by an HTTP
    /// server) into this server's handshake and [`Server::accept`] queue.
    pub fn intake(&self) -> Intake {
        self.intake.clone()
    }

    /// The next authenticated connection.
    pub async fn accept(&self) -> Result<ServerConnection<ConnectionHandle>, Error> {
        self.rx
            .recv()
            .await
            .map_err(|_| Error::Io(std::io::ErrorKind::NotConnected.into()))
    }
}

async fn accept_loop(
    rt: Arc<dyn Runtime>,
    listener: Box<dyn Listener>,
    tls: Option<TlsAcceptor>,
    config: Config,
    auth: Arc<dyn Authenticator>,
    tx: Sender<ServerConnection<ConnectionHandle>>,
) {
    loop {
        let (tcp, peer) = match accept(&*listener).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                sleep(&*rt, ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (rt2, tls, config, auth, tx) = (
            rt.clone(),
            tls.clone(),
            config.clone(),
            auth.clone(),
            tx.clone(),
        );
        rt.spawn(Box::pin(async move {
            let result = match tls {
                Some(acceptor) => {
                    match timeout(&*rt2, config.handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => accept_sniffed(rt2, Box::new(s), config, &*auth, peer).await,
                        Ok(Err(e)) => Err(Error::Tls(e)),
                        Err(e) => Err(e),
                    }
                }
                None => accept_sniffed(rt2, tcp, config, &*auth, peer).await,
            };
            match result {
                Ok(c) => {
                    let _ = tx.send(c).await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "tunnel handshake failed"),
            }
        }));
    }
}

/// Feeds connections accepted elsewhere into a [`Server`]: the same configuration, authenticator
/// and queue as the server's own listener. Cloneable; outlives nothing (once the server is dropped,
/// adopted connections are handshaken and then dropped).
#[derive(Clone)]
pub struct Intake {
    rt: Arc<dyn Runtime>,
    config: Config,
    auth: Arc<dyn Authenticator>,
    tx: Sender<ServerConnection<ConnectionHandle>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

impl Intake {
    /// Adopts a WebSocket whose HTTP upgrade an HTTP server already answered (`101`, with the
    /// subprotocol [`crate::transport::SUBPROTOCOL`]): the tunnel handshake runs on its own task,
    /// and the connection, once authenticated, comes out of [`Server::accept`].
    pub fn adopt_websocket(&self, io: impl AsyncIo, peer: SocketAddr) {
        let Intake {
            rt,
            config,
            auth,
            tx,
        } = self.clone();
        self.rt.spawn(Box::pin(async move {
            let ws = WsIo::upgraded_server(io).await;
            match accept_over(rt, ws, config, &*auth, peer).await {
                Ok(c) => {
                    let _ = tx.send(c).await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "tunnel handshake failed"),
            }
        }));
    }
}

/// Runs the server side of the tunnel over `io` after telling a WebSocket upgrade request from
/// the tunnel: a connection whose first octet is `G` has its request head read (at most 16 KiB,
/// within the handshake timeout); a `GET` with `Upgrade: websocket` goes through the WebSocket
/// handshake, anything else goes to the tunnel as it came (and so is a protocol error unless it is
/// the preface).
async fn accept_sniffed(
    rt: Arc<dyn Runtime>,
    mut io: BoxIo,
    config: Config,
    authenticator: &dyn Authenticator,
    peer: SocketAddr,
) -> Result<ServerConnection<ConnectionHandle>, Error> {
    let mut head = vec![0u8; 1];
    let n = timeout(&*rt, config.handshake_timeout, io.read(&mut head))
        .await?
        .map_err(Error::Io)?;
    if n == 0 {
        return Err(Error::TransportClosed);
    }
    if head[0] == b'G' {
        let _ = timeout(
            &*rt,
            config.handshake_timeout,
            websocket::read_request_head(&mut io, &mut head),
        )
        .await;
    }
    let upgrade = websocket::is_upgrade_request(&head);
    let io = Prefixed::new(head, io);
    if upgrade {
        let ws = timeout(&*rt, config.handshake_timeout, WsIo::server(io))
            .await?
            .map_err(Error::WebSocket)?;
        tracing::debug!(%peer, "agent connected over WebSocket");
        accept_over(rt, ws, config, authenticator, peer).await
    } else {
        accept_over(rt, io, config, authenticator, peer).await
    }
}

/// Runs the server side of the tunnel over any byte stream (TLS already done, or an in-memory pipe);
/// the connection's driver task runs on `rt`.
pub async fn accept_over(
    rt: Arc<dyn Runtime>,
    io: impl AsyncIo,
    config: Config,
    authenticator: &dyn Authenticator,
    peer: SocketAddr,
) -> Result<ServerConnection<ConnectionHandle>, Error> {
    let session = Session::server(config);
    rt.spawn(Box::pin(Driver::new(session.clone(), io, rt.clone())));
    server_handshake(session, authenticator, peer).await
}
