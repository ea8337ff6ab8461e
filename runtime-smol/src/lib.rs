//! # runtime-smol: the agent tunnel on smol
//!
//! I/O glue only: the protocol lives in `protocol`, the shared session state, driver loop and handshake
//! in `runtime-core`. This crate supplies:
//!
//! | module | what it is |
//! |---|---|
//! | [`io`] | `runtime_core::Transport` for any futures-io `AsyncRead + AsyncWrite`, `runtime_core::Timer` for `async_io::Timer` |
//! | [`agent`] | [`connect_agent`] (TCP + `futures-rustls` + HELLO) and [`connect_agent_over`] (any byte stream) |
//! | [`server`] | [`Server`] (listener, TLS, async authenticator, one handshake task per connection) and [`accept_over`] |
//! | [`connection`] | [`Connection`], the cloneable handle: open/accept streams, graceful close, stats |
//! | [`stream`] | [`Stream`] with `futures_io::AsyncRead + AsyncWrite` (close = finish), split halves |
//!
//! Each connection runs one driver task (`runtime_core::Driver`) on smol's global executor
//! (`smol::spawn`; `SMOL_THREADS` sets its thread count). `runtime-tokio` has the same API for tokio;
//! the behaviour suite in `runtime_core::suite` runs against both.

pub mod agent;
pub mod connection;
pub mod io;
pub mod server;
pub mod stream;

use std::future::Future;
use std::time::Duration;

pub use agent::{connect_agent, connect_agent_over};
pub use connection::Connection;
pub use runtime_core::{Accepted, AgentOptions, Authenticator, Error, ServerConnection, protocol};
pub use runtime_core::{ConnectionEvent, Initiator};
pub use server::{Server, accept_over};
pub use stream::{RecvStream, SendStream, Stream};

/// `f`'s output, or `Error::Timeout` after `d`.
pub(crate) async fn with_timeout<T>(d: Duration, f: impl Future<Output = T>) -> Result<T, Error> {
    smol::future::or(async { Ok(f.await) }, async {
        smol::Timer::after(d).await;
        Err(Error::Timeout)
    })
    .await
}
