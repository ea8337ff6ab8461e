//! The behaviour suite, defined once and run by each runtime adapter's tests: every scenario is an
//! `async fn(Rt)` over the one [`Connection`]/[`Stream`] API, and [`behaviour_suite!`](crate::behaviour_suite)
//! expands to one `#[test]` per scenario, each bounded by [`HANG_GUARD`] (a hang guard, not a timing
//! assertion):
//!
//! ```ignore
//! runtime_core::behaviour_suite!(runtime_smol::runtime(), smol::block_on);
//! ```
//!
//! Connections are made by [`pair`] over TCP + TLS on 127.0.0.1 through the runtime's own
//! `listen`/`connect`; each side's raw TCP stream (below TLS) goes through a [`Switched`] transport
//! the scenario controls.
//!
//! [`nofile`] reads and raises the open-file limit for test and bench binaries that hold thousands
//! of sockets.

pub mod nofile;
pub mod scenarios;
pub mod switch;
pub mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_rustls::{TlsAcceptor, TlsConnector};
use protocol::proto::Reject;
use protocol::{Config, HelloInfo};
use tunnel_tls::ThrowawayPki;

use crate::agent::connect_agent_over;
use crate::error::Error;
use crate::handle::ConnectionHandle as Connection;
use crate::handshake::{Accepted, AgentOptions};
use crate::runtime::{BoxFuture, Runtime, accept};
use crate::server::accept_over;
use crate::transport::WsIo;
pub use switch::{Switch, SwitchState, Switched};
pub use tasks::{Gate, JoinHandle, Rt, sleep, spawn, timeout};

#[cfg(doc)]
use crate::stream::Stream;

/// Upper bound of one scenario; only there so that a hang fails instead of blocking the test run.
/// `SUITE_HANG_GUARD_SECS` overrides it (for debugging a hang).
pub const HANG_GUARD: Duration = Duration::from_secs(240);

fn hang_guard() -> Duration {
    std::env::var("SUITE_HANG_GUARD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(HANG_GUARD, Duration::from_secs)
}

/// How to build a pair.
#[derive(Debug, Clone)]
pub struct Setup {
    pub agent: Config,
    pub server: Config,
    /// The server's authenticator refuses with this.
    pub reject: Option<Reject>,
    /// Controls the agent's raw TCP stream.
    pub agent_switch: Switch,
    /// Controls the server's raw TCP stream.
    pub server_switch: Switch,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            agent: Config::default(),
            server: Config::default(),
            reject: None,
            agent_switch: Switch::new(),
            server_switch: Switch::new(),
        }
    }
}

/// An agent connected to a server.
#[derive(Debug, Clone)]
pub struct Pair {
    pub agent: Connection,
    pub server: Connection,
}

/// An agent and a server on `rt`, connected over TCP + TLS on 127.0.0.1, each raw TCP stream going
/// through its switch. With `setup.reject`, the agent's error (`Error::Refused`).
pub async fn pair(rt: Rt, setup: Setup) -> Result<Pair, Error> {
    let pki = ThrowawayPki::generate().expect("pki");
    let server_tls = tunnel_tls::server_config_with(pki.server.identity().expect("identity"), None)
        .expect("server tls");
    let client_tls = tunnel_tls::client_config(&pki.roots(), None).expect("client tls");
    let transport = transport_of(rt);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::Io)?;
    let listener = rt.listen(listener).map_err(Error::Io)?;
    let addr = listener.local_addr().map_err(Error::Io)?;
    let Setup {
        agent,
        server,
        reject,
        agent_switch,
        server_switch,
    } = setup;
    let server_rt = Arc::clone(rt);
    let server_side = spawn(rt, async move {
        let (tcp, peer) = accept(&*listener).await.map_err(Error::Io)?;
        let tls = TlsAcceptor::from(server_tls)
            .accept(Switched {
                inner: tcp,
                switch: server_switch,
            })
            .await
            .map_err(Error::Tls)?;
        let auth = move |_hello: HelloInfo, _peer: SocketAddr| {
            let reject = reject.clone();
            async move {
                match reject {
                    Some(r) => Err(r),
                    None => Ok(Accepted {
                        agent_id: 42,
                        connection_id: "suite".into(),
                    }),
                }
            }
        };
        match transport {
            Transport::Tls => accept_over(server_rt, tls, server, &auth, peer).await,
            Transport::WebSocket => {
                let ws = WsIo::server(tls).await.map_err(Error::WebSocket)?;
                accept_over(server_rt, ws, server, &auth, peer).await
            }
        }
    });
    let tcp = rt
        .connect(addr.ip().to_string(), addr.port())
        .await
        .map_err(Error::Io)?;
    let tls = TlsConnector::from(client_tls)
        .connect(
            tunnel_tls::server_name("localhost").expect("name"),
            Switched {
                inner: tcp,
                switch: agent_switch,
            },
        )
        .await
        .map_err(Error::Tls)?;
    let opts = AgentOptions {
        token: "suite-token".into(),
        meta: Default::default(),
        config: agent,
    };
    let agent = match transport {
        Transport::Tls => connect_agent_over(Arc::clone(rt), tls, opts).await,
        Transport::WebSocket => match WsIo::client(tls, "ws://localhost/suite").await {
            Ok(ws) => connect_agent_over(Arc::clone(rt), ws, opts).await,
            Err(e) => Err(Error::WebSocket(e)),
        },
    };
    let server = server_side.await;
    let (agent, established) = agent?;
    let server = server?;
    assert_eq!(established.agent_id, 42);
    assert_eq!(server.agent_id, 42);
    Ok(Pair {
        agent,
        server: server.connection,
    })
}

/// The transport a suite run's pairs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The tunnel straight over TLS.
    Tls,
    /// The tunnel in a WebSocket over TLS ([`crate::transport::WsIo`], both handshakes).
    WebSocket,
}

/// The runtimes (by address of the leaked `Arc`, one per test) whose pairs run over WebSocket.
static OVER_WEBSOCKET: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn transport_of(rt: Rt) -> Transport {
    let key = std::ptr::from_ref(rt) as usize;
    let list = OVER_WEBSOCKET
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if list.contains(&key) {
        Transport::WebSocket
    } else {
        Transport::Tls
    }
}

/// Runs one scenario on `rt` with the hang guard; `block_on` runs a future to completion on the
/// test's thread (`smol::block_on`, a tokio runtime's `block_on`).
pub fn run<Fut>(
    name: &str,
    rt: Arc<dyn Runtime>,
    block_on: impl FnOnce(BoxFuture<Option<()>>) -> Option<()>,
    scenario: impl FnOnce(Rt) -> Fut,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    run_over(Transport::Tls, name, rt, block_on, scenario);
}

/// [`run`], with the scenario's pairs connected over `transport`.
pub fn run_over<Fut>(
    transport: Transport,
    name: &str,
    rt: Arc<dyn Runtime>,
    block_on: impl FnOnce(BoxFuture<Option<()>>) -> Option<()>,
    scenario: impl FnOnce(Rt) -> Fut,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let guard = hang_guard();
    let rt: Rt = Box::leak(Box::new(rt));
    if transport == Transport::WebSocket {
        OVER_WEBSOCKET
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(std::ptr::from_ref(rt) as usize);
    }
    let scenario = scenario(rt);
    let done = block_on(Box::pin(async move {
        let handle = spawn(rt, scenario);
        timeout(rt, guard, handle).await
    }));
    assert!(
        done.is_some(),
        "scenario {name} did not finish within the hang guard of {guard:?}"
    );
}

/// Expands to one `#[test]` per scenario, run on the runtime `$rt` (an `Arc<dyn Runtime>`) with
/// `$block_on` (a function from a future to its output).
#[macro_export]
macro_rules! behaviour_suite {
    ($rt:expr, $block_on:expr) => {
        $crate::behaviour_suite!($rt, $block_on, over = Tls);
    };
    ($rt:expr, $block_on:expr, over = $transport:ident) => {
        $crate::behaviour_suite!(@tests ($rt, $block_on, $transport);
            echo_one_stream_each_direction,
            echo_1000_concurrent_streams,
            large_body_slow_reader_does_not_block_others,
            half_close_opener_finishes_first,
            half_close_acceptor_finishes_first,
            reset_by_opener,
            reset_by_acceptor,
            dropped_streams_return_connection_window,
            peer_killed_mid_stream,
            handshake_refused,
            keepalive_timeout_on_silent_peer,
            keepalive_keeps_idle_connection_open,
            goaway_drains_in_flight_streams,
            goaway_deadline_aborts_stuck_streams,
            stream_limit_is_a_typed_error,
            draining_is_reported_without_polling,
            io_traits_roundtrip
        );
    };
    (@tests ($rt:expr, $block_on:expr, $transport:ident); $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::testing::run_over(
                    $crate::testing::Transport::$transport,
                    stringify!($name),
                    $rt,
                    $block_on,
                    $crate::testing::scenarios::$name,
                );
            }
        )*
    };
}
