//! What a runtime adapter exports, written once: [`adapter!`](crate::adapter) writes an adapter's
//! public API with its runtime fixed by type (`runtime_smol::Server` is `ServerOn<Smol>`), so that
//! kas and agentk never pass a runtime.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use protocol::Config;
pub use rustls::pki_types::ServerName;
pub use rustls::{ClientConfig, ServerConfig};

use crate::error::Error;
use crate::handshake::Authenticator;
use crate::runtime::Runtime;
use crate::server::Server;

/// Where an agent dials: a host name or address, and a port (resolved by the runtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    pub host: String,
    pub port: u16,
}

impl From<SocketAddr> for Dial {
    fn from(a: SocketAddr) -> Dial {
        Dial {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl From<(&str, u16)> for Dial {
    fn from((host, port): (&str, u16)) -> Dial {
        Dial {
            host: host.to_owned(),
            port,
        }
    }
}

impl From<(String, u16)> for Dial {
    fn from((host, port): (String, u16)) -> Dial {
        Dial { host, port }
    }
}

/// A [`Server`] on the runtime `R` (a unit type the adapter defines).
pub struct ServerOn<R> {
    server: Server,
    runtime: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for ServerOn<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.server.fmt(f)
    }
}

impl<R: Runtime + Default> ServerOn<R> {
    /// Listens on `addr`; `tls: None` serves plain TCP (tests, or TLS terminated in front).
    pub async fn bind(
        addr: impl std::net::ToSocketAddrs,
        tls: Option<Arc<ServerConfig>>,
        config: Config,
        authenticator: impl Authenticator,
    ) -> Result<Self, Error> {
        let listener = std::net::TcpListener::bind(addr).map_err(Error::Io)?;
        Self::from_listener(listener, tls, config, authenticator)
    }

    /// Serves on a listener bound by the caller (e.g. with its own `listen(2)` backlog).
    pub fn from_listener(
        listener: std::net::TcpListener,
        tls: Option<Arc<ServerConfig>>,
        config: Config,
        authenticator: impl Authenticator,
    ) -> Result<Self, Error> {
        let rt: Arc<dyn Runtime> = Arc::new(R::default());
        Ok(ServerOn {
            server: Server::from_listener(rt, listener, tls, config, authenticator)?,
            runtime: PhantomData,
        })
    }
}

impl<R> Deref for ServerOn<R> {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

/// Writes a runtime adapter's public API for its runtime type `$rt` (a unit struct implementing
/// [`Runtime`] and `Default`): the re-exports of this crate's types, `runtime()`, `Server` and
/// `connect_agent`.
#[macro_export]
macro_rules! adapter {
    ($rt:ident) => {
        pub use $crate::{
            Accepted, AgentOptions, Authenticator, Connection, ConnectionEvent, ConnectionHandle, Error,
            Initiator, Intake, RecvStream, SendStream, ServerConnection, Stream, protocol, transport,
        };

        /// The runtime to hand to `runtime_core`'s functions.
        pub fn runtime() -> ::std::sync::Arc<dyn $crate::Runtime> {
            ::std::sync::Arc::new($rt)
        }

        /// A listening tunnel server on this runtime (see `runtime_core::Server`).
        pub type Server = $crate::ServerOn<$rt>;

        /// Dials `to` (a `SocketAddr` or `(host, port)`), verifies the server as `server_name` over
        /// TLS, and runs the tunnel handshake (see `runtime_core::connect_agent`).
        pub async fn connect_agent(
            to: impl ::std::convert::Into<$crate::Dial>,
            tls: ::std::sync::Arc<$crate::facade::ClientConfig>,
            server_name: $crate::facade::ServerName<'static>,
            opts: $crate::AgentOptions,
        ) -> ::std::result::Result<($crate::Connection, $crate::protocol::Established), $crate::Error>
        {
            $crate::connect_agent(runtime(), to, tls, server_name, opts).await
        }

        /// Dials `endpoint` (`tls://`, `wss://`, `ws://`, through its HTTP proxy if any) and runs
        /// the tunnel handshake (see `runtime_core::connect_agent_to`).
        pub async fn connect_agent_to(
            endpoint: &$crate::transport::Endpoint,
            tls: ::std::sync::Arc<$crate::facade::ClientConfig>,
            server_name: $crate::facade::ServerName<'static>,
            opts: $crate::AgentOptions,
        ) -> ::std::result::Result<($crate::Connection, $crate::protocol::Established), $crate::Error>
        {
            $crate::connect_agent_to(runtime(), endpoint, tls, server_name, opts).await
        }
    };
}
