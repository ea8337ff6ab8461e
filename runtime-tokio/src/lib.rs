//! # runtime-tokio: the agent tunnel on tokio
//!
//! I/O glue only: the protocol lives in `protocol`, the shared session state, driver loop and handshake
//! in `runtime-core`. This crate supplies:
//!
//! | module | what it is |
//! |---|---|
//! | [`io`] | `runtime_core::Transport` for any tokio `AsyncRead + AsyncWrite`, `runtime_core::Timer` for `tokio::time::Sleep` |
//! | [`agent`] | [`connect_agent`] (TCP + `tokio-rustls` + HELLO) and [`connect_agent_over`] (any byte stream) |
//! | [`server`] | [`Server`] (listener, TLS, async authenticator, one handshake task per connection) and [`accept_over`] |
//! | [`connection`] | [`Connection`], the cloneable handle: open/accept streams, graceful close, stats |
//! | [`stream`] | [`Stream`] with `tokio::io::AsyncRead + AsyncWrite` (shutdown = finish), split halves |
//!
//! Each connection runs one spawned driver task (`runtime_core::Driver`) that owns the transport.
//! `runtime-smol` has the same API for smol and `futures-io`; the behaviour suite in
//! `runtime_core::suite` runs against both.

pub mod agent;
pub mod connection;
pub mod io;
pub mod server;
pub mod stream;

pub use agent::{connect_agent, connect_agent_over};
pub use connection::Connection;
pub use runtime_core::{Accepted, AgentOptions, Authenticator, Error, ServerConnection, protocol};
pub use server::{Server, accept_over};
pub use stream::{RecvStream, SendStream, Stream};
