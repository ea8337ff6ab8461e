//! Where an agent dials and how: the scheme, the address, the proxy; and the dial itself.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsConnector;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::proxy::{ProxyConfig, ProxyError};
use super::websocket::WsIo;
use crate::error::Error;
use crate::runtime::{BoxIo, Runtime, timeout};

/// The transport the tunnel runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// TLS 1.3 straight over TCP, ALPN `agent-tunnel/1` (`tls://`).
    Tls,
    /// A WebSocket over TLS (`wss://`).
    Wss,
    /// A WebSocket over plain TCP (`ws://`: tests, or TLS terminated in front of kas).
    Ws,
}

impl Scheme {
    /// Whether TLS runs from the agent to the far end (kas or a TLS-terminating load balancer).
    pub fn is_tls(self) -> bool {
        !matches!(self, Scheme::Ws)
    }

    /// The URL scheme, with `://`.
    pub fn prefix(self) -> &'static str {
        match self {
            Scheme::Tls => "tls://",
            Scheme::Wss => "wss://",
            Scheme::Ws => "ws://",
        }
    }
}

/// Where the agent dials: scheme, host, port, the WebSocket path, and the HTTP proxy in between.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The WebSocket request path (`/` or e.g. `/api/v1/tunnel`); unused for `tls://`.
    pub path: String,
    /// The HTTP CONNECT proxy to go through, if any.
    pub proxy: Option<ProxyConfig>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self}")?;
        if let Some(p) = &self.proxy {
            write!(f, " via {p}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme.prefix())?;
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if self.scheme != Scheme::Tls && self.path != "/" {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

/// An endpoint that cannot be dialled as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad endpoint: {0}")]
pub struct EndpointError(pub String);

impl Endpoint {
    /// The tunnel over TLS to `host:port`, no proxy.
    pub fn tls(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            scheme: Scheme::Tls,
            host: host.into(),
            port,
            path: "/".into(),
            proxy: None,
        }
    }

    /// The URL of the WebSocket request (its `Host` header comes from it).
    fn ws_url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("ws://{host}:{}{}", self.port, self.path)
    }
}

/// Dials `endpoint` on `rt`: TCP (to the proxy, then CONNECT through it), TLS verified as
/// `server_name` unless the scheme is `ws://`, and the WebSocket upgrade for `ws(s)://`. Everything
/// after the TCP connect is bounded by `handshake_timeout`. The byte stream is ready for the tunnel
/// preface.
pub async fn dial(
    rt: &dyn Runtime,
    endpoint: &Endpoint,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    handshake_timeout: Duration,
) -> Result<BoxIo, Error> {
    let tcp = match &endpoint.proxy {
        Some(proxy) => rt.connect(proxy.host.clone(), proxy.port).await,
        None => rt.connect(endpoint.host.clone(), endpoint.port).await,
    }
    .map_err(Error::Io)?;
    timeout(
        rt,
        handshake_timeout,
        upgrade(tcp, endpoint, tls, server_name),
    )
    .await?
}

async fn upgrade(
    tcp: BoxIo,
    endpoint: &Endpoint,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> Result<BoxIo, Error> {
    let io: BoxIo = match &endpoint.proxy {
        Some(proxy) => Box::new(
            proxy
                .connect(tcp, &endpoint.host, endpoint.port)
                .await
                .map_err(proxy_error)?,
        ),
        None => tcp,
    };
    let tls = match endpoint.scheme {
        Scheme::Tls => tls,
        // An HTTP server in front (kas, a load balancer) negotiates HTTP/1.1; nginx refuses a
        // handshake whose ALPN offers none of its protocols.
        Scheme::Wss | Scheme::Ws => {
            let mut c = (*tls).clone();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        }
    };
    let url = endpoint.ws_url();
    match endpoint.scheme {
        Scheme::Tls => Ok(Box::new(
            TlsConnector::from(tls)
                .connect(server_name, io)
                .await
                .map_err(Error::Tls)?,
        )),
        Scheme::Wss => {
            let io = TlsConnector::from(tls)
                .connect(server_name, io)
                .await
                .map_err(Error::Tls)?;
            Ok(Box::new(
                WsIo::client(io, &url).await.map_err(Error::WebSocket)?,
            ))
        }
        Scheme::Ws => Ok(Box::new(
            WsIo::client(io, &url).await.map_err(Error::WebSocket)?,
        )),
    }
}

/// A proxy's refusal as [`Error::Proxy`]; other I/O errors as they are.
fn proxy_error(e: std::io::Error) -> Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<ProxyError>()) {
        return Error::Io(e);
    }
    match e.into_inner().map(|inner| inner.downcast::<ProxyError>()) {
        Some(Ok(p)) => Error::Proxy(*p),
        _ => Error::Io(std::io::Error::other("unrecoverable proxy error")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_display_without_credentials() {
        let mut e = Endpoint::tls("kas", 8150);
        assert_eq!(e.to_string(), "tls://kas:8150");
        e.scheme = Scheme::Wss;
        e.path = "/api/v1/tunnel".into();
        e.proxy = ProxyConfig::parse("http://u:secret@proxy:3128").ok();
        assert_eq!(e.to_string(), "wss://kas:8150/api/v1/tunnel");
        let debug = format!("{e:?}");
        assert!(
            debug.contains("via http://<redacted>@proxy:3128"),
            "{debug}"
        );
        assert!(!debug.contains("secret"));
        assert_eq!(e.ws_url(), "ws://kas:8150/api/v1/tunnel");
    }
}
