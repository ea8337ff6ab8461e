//! The harness's certificates (a throw-away CA and a server certificate for `localhost`,
//! `127.0.0.1` and `::1`) and its TLS endpoints: accepting an agent's connection with a deadline, and
//! dialling a kas.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tunnel_tls::ThrowawayPki;

use crate::wire::Tls;

/// Why a TLS endpoint could not be set up or connected.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Tls(#[from] tunnel_tls::TlsError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("nothing connected before the deadline")]
    Timeout,
}

/// The harness's PKI and the rustls configurations built from it.
pub struct HarnessTls {
    pub pki: ThrowawayPki,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl HarnessTls {
    pub fn generate() -> Result<HarnessTls, TlsSetupError> {
        let pki = ThrowawayPki::generate()?;
        let server = tunnel_tls::server_config_with(pki.server.identity()?, None)?;
        let client = tunnel_tls::client_config(&pki.roots(), None)?;
        Ok(HarnessTls {
            pki,
            server,
            client,
        })
    }
}

/// Drives a TLS handshake on a blocking socket until done or the deadline.
fn handshake<C, S>(
    conn: &mut C,
    tcp: &mut TcpStream,
    deadline: Instant,
) -> Result<(), TlsSetupError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    // Bounded by the deadline: each round does I/O or times out.
    while conn.is_handshaking() {
        let now = Instant::now();
        if now >= deadline {
            return Err(TlsSetupError::Timeout);
        }
        tcp.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        match conn.complete_io(tcp) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(TlsSetupError::Handshake(
                    "the peer closed the connection".into(),
                ));
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(TlsSetupError::Handshake(e.to_string())),
        }
    }
    Ok(())
}

/// Accepts one TCP connection (polling, so the deadline holds) and completes the TLS handshake.
pub fn accept(
    listener: &TcpListener,
    config: &Arc<rustls::ServerConfig>,
    deadline: Instant,
) -> Result<(Tls, Instant), TlsSetupError> {
    let (tcp, at) = accept_tcp(listener, deadline)?.ok_or(TlsSetupError::Timeout)?;
    let mut tcp = tcp;
    let mut conn = rustls::ServerConnection::new(config.clone())
        .map_err(|e| TlsSetupError::Handshake(e.to_string()))?;
    handshake(
        &mut conn,
        &mut tcp,
        deadline.max(Instant::now() + Duration::from_secs(10)),
    )?;
    Ok((
        Tls::Server(Box::new(rustls::StreamOwned::new(conn, tcp))),
        at,
    ))
}

/// A TCP connection accepted before the deadline, with the instant it was accepted.
pub fn accept_tcp(
    listener: &TcpListener,
    deadline: Instant,
) -> Result<Option<(TcpStream, Instant)>, io::Error> {
    listener.set_nonblocking(true)?;
    // Bounded by the deadline.
    loop {
        match listener.accept() {
            Ok((tcp, _)) => {
                let at = Instant::now();
                tcp.set_nonblocking(false)?;
                let _ = tcp.set_nodelay(true);
                return Ok(Some((tcp, at)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Dials `addr` and completes the TLS handshake, verifying the server as `localhost`.
pub fn connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    deadline: Instant,
) -> Result<Tls, TlsSetupError> {
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)?;
    let _ = tcp.set_nodelay(true);
    let name = tunnel_tls::server_name("localhost")?;
    let mut conn = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| TlsSetupError::Handshake(e.to_string()))?;
    handshake(&mut conn, &mut tcp, deadline)?;
    Ok(Tls::Client(Box::new(rustls::StreamOwned::new(conn, tcp))))
}
