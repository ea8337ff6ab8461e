//! The behaviour suite: every scenario is written once, here, against three small traits that each
//! runtime implements in its `tests/` ([`SuiteRuntime`], [`SuiteConn`], [`SuiteStream`]); the
//! [`behaviour_suite!`](crate::behaviour_suite) macro expands to one `#[test]` per scenario, each
//! bounded by [`HANG_GUARD`] (a hang guard, not a timing assertion).
//!
//! Connections are made by [`SuiteRuntime::pair`] over TCP + TLS on 127.0.0.1. Each side's raw TCP
//! stream (below TLS) goes through a [`Switch`] the scenario controls: `freeze` makes the transport
//! silent (reads and writes pend forever: a peer that stopped reading), `kill` makes it fail (the
//! driver drops the socket: a peer killed mid-stream).

pub mod scenarios;
pub mod util;

use std::future::Future;
use std::time::Duration;

use protocol::proto::{Reject, RequestHead, ResponseHead, Trailer};
use protocol::{CloseReason, Config, ErrorCode};

use crate::error::Error;
pub use util::{Gate, JoinHandle, Switch, SwitchState, spawn, timeout};

/// Upper bound of one scenario; only there so that a hang fails instead of blocking the test run.
/// `SUITE_HANG_GUARD_SECS` overrides it (for debugging a hang).
pub const HANG_GUARD: Duration = Duration::from_secs(240);

fn hang_guard() -> Duration {
    std::env::var("SUITE_HANG_GUARD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(HANG_GUARD, Duration::from_secs)
}

/// A runtime's stream as the scenarios use it (all methods take `&self`: scenarios share streams
/// between a reading and a writing task through an `Arc`).
pub trait SuiteStream: Send + Sync + 'static {
    fn read<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = Result<usize, Error>> + Send + 'a;
    fn write_all<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;
    /// Finishes our direction through the I/O trait (`shutdown` / `close`).
    fn shutdown(&self) -> impl Future<Output = Result<(), Error>> + Send + '_;
    fn response(&self) -> impl Future<Output = Result<ResponseHead, Error>> + Send + '_;
    fn respond(&self, head: ResponseHead, end_stream: bool) -> Result<(), Error>;
    fn trailer(&self) -> impl Future<Output = Result<Option<Trailer>, Error>> + Send + '_;
    fn send_trailer(&self, trailer: Trailer) -> Result<(), Error>;
    fn reset(&self, code: ErrorCode);
}

/// A runtime's connection handle as the scenarios use it.
pub trait SuiteConn: Clone + Send + Sync + 'static {
    type Stream: SuiteStream;
    fn open(&self, head: RequestHead, end_stream: bool) -> Result<Self::Stream, Error>;
    fn accept_stream(
        &self,
    ) -> impl Future<Output = Option<(RequestHead, Self::Stream)>> + Send + '_;
    fn close(&self, grace: Duration) -> impl Future<Output = CloseReason> + Send + '_;
    fn closed(&self) -> impl Future<Output = CloseReason> + Send + '_;
    fn is_draining(&self) -> bool;
    fn open_streams(&self) -> (u32, u32);
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
pub struct Pair<C> {
    pub agent: C,
    pub server: C,
}

/// What a runtime provides to run the suite.
pub trait SuiteRuntime: Sized + 'static {
    type Conn: SuiteConn;
    /// Runs a future to completion on this runtime (the test's main thread).
    fn block_on<F: Future>(f: F) -> F::Output;
    fn spawn<F: Future<Output = ()> + Send + 'static>(f: F);
    fn sleep(d: Duration) -> impl Future<Output = ()> + Send;
    /// An agent and a server connected over TCP + TLS on 127.0.0.1, each raw TCP stream going through
    /// its switch. With `setup.reject`, the agent's error (`Error::Refused`).
    fn pair(setup: Setup) -> impl Future<Output = Result<Pair<Self::Conn>, Error>> + Send;
}

/// Runs one scenario on runtime `R` with the hang guard.
pub fn run<R: SuiteRuntime, F: Future<Output = ()> + Send + 'static>(name: &str, scenario: F) {
    let guard = hang_guard();
    let done = R::block_on(async move {
        let handle = spawn::<R, _>(scenario);
        timeout::<R, _>(guard, handle).await
    });
    assert!(
        done.is_some(),
        "scenario {name} did not finish within the hang guard of {guard:?}"
    );
}

/// Expands to one `#[test]` per scenario for the runtime type given.
#[macro_export]
macro_rules! behaviour_suite {
    ($rt:ty) => {
        $crate::behaviour_suite!(@tests $rt;
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
            stream_limit_is_a_typed_error
        );
    };
    (@tests $rt:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::suite::run::<$rt, _>(
                    stringify!($name),
                    $crate::suite::scenarios::$name::<$rt>(),
                );
            }
        )*
    };
}
