//! # runtime-smol: the agent tunnel on smol
//!
//! The adapter only: [`Smol`] implements [`runtime_core::Runtime`] with smol's executor
//! (`smol::spawn`; `SMOL_THREADS` sets its thread count), `async_io` timers and smol's TCP types.
//! Everything else — driver, TLS (futures-rustls), handshakes, [`Server`], [`Connection`], the one
//! [`Stream`] type with the futures-io traits — is `runtime-core`'s, re-exported here with the runtime
//! fixed, so kas never names a runtime. `runtime-tokio` is the same adapter for tokio; the behaviour
//! suite (`runtime_core::testing`) runs against both.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use runtime_core::{AsyncTimer, BoxFuture, BoxIo, Dial, Listener, Runtime};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

pub use runtime_core::{
    Accepted, AgentOptions, Authenticator, Connection, ConnectionHandle, Error, RecvStream,
    SendStream, ServerConnection, Stream, protocol,
};

/// smol as a [`Runtime`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// The runtime to hand to `runtime_core`'s functions.
pub fn runtime() -> Arc<dyn Runtime> {
    Arc::new(Smol)
}

/// A listening tunnel server on smol (see [`runtime_core::Server`]).
pub type Server = runtime_core::ServerOn<Smol>;

/// Dials `to` (a `SocketAddr` or `(host, port)`), verifies the server as `server_name` over TLS, and
/// runs the tunnel handshake (see [`runtime_core::connect_agent`]).
pub async fn connect_agent(
    to: impl Into<Dial>,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    opts: AgentOptions,
) -> Result<(Connection, protocol::Established), Error> {
    runtime_core::connect_agent(runtime(), to, tls, server_name, opts).await
}

impl Runtime for Smol {
    fn spawn(&self, task: BoxFuture<()>) {
        smol::spawn(task).detach();
    }

    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(Timer(smol::Timer::at(at)))
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<io::Result<BoxIo>> {
        Box::pin(async move {
            let tcp = smol::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(Box::new(tcp) as BoxIo)
        })
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(TcpListener(smol::net::TcpListener::try_from(
            listener,
        )?)))
    }
}

/// `async_io::Timer`, re-armed in place.
#[derive(Debug)]
struct Timer(smol::Timer);

impl AsyncTimer for Timer {
    fn reset(self: Pin<&mut Self>, at: Instant) {
        self.get_mut().0.set_at(at);
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().0).poll(cx).map(|_| ())
    }
}

#[derive(Debug)]
struct TcpListener(smol::net::TcpListener);

impl Listener for TcpListener {
    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }

    fn accept(
        &self,
    ) -> Pin<Box<dyn Future<Output = io::Result<(BoxIo, std::net::SocketAddr)>> + Send + '_>> {
        Box::pin(async move {
            let (tcp, peer) = self.0.accept().await?;
            tcp.set_nodelay(true)?;
            Ok((Box::new(tcp) as BoxIo, peer))
        })
    }
}
