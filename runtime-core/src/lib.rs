//! # runtime-core: the agent tunnel over any async runtime
//!
//! Gives the Sans-IO [`protocol::Connection`] sockets, TLS and timers, written once over the small
//! [`Runtime`] trait (spawn, timer, TCP connect and listen; quinn's `runtime` module with TCP).
//! `runtime-smol` (kas) and `runtime-tokio` (agentk) are adapters of about a hundred lines each that
//! implement it and re-export this crate's API; both therefore behave the same by construction:
//!
//! | module | what it is |
//! |---|---|
//! | [`session`] | [`Session`]: the protocol connection behind one mutex, one slot per stream (received chunks, response head, trailer, reset, wakers), the queue of peer-opened streams, the handshake state, and the driver's waker |
//! | [`runtime`] | the [`Runtime`] trait the adapters implement, [`BoxIo`] (a futures-io byte stream), timeouts |
//! | [`driver`] | [`Driver`]: the per-connection I/O task as a plain `Future` over a futures-io transport and the runtime's timer |
//! | [`agent`] | [`connect_agent`] (TCP + futures-rustls + HELLO) and [`connect_agent_over`] (any byte stream) |
//! | [`server`] | [`Server`] (listener, TLS, async authenticator, one handshake task per connection) and [`accept_over`] |
//! | [`facade`] | [`ServerOn`] and [`Dial`]: the adapters' `Server` and `connect_agent` address, written once |
//! | [`handle`] | [`ConnectionHandle`] (alias [`Connection`]): open/accept streams, graceful close with a deadline, observe |
//! | [`stream`] | [`Stream`], [`RecvStream`], [`SendStream`]: `futures_io` I/O traits always, `tokio::io` with the `tokio` feature |
//! | [`handshake`] | agent and server handshakes after TLS, the async [`Authenticator`] |
//! | [`transport`] | the byte streams under the driver: `tls://`, `wss://`/`ws://` (WebSocket), HTTP CONNECT proxies; [`transport::Endpoint`] and [`transport::dial`] |
//! | [`error`] | [`Error`], the one typed error, and its round trip through `std::io::Error` |
//! | `testing` | (feature `testing`) the behaviour suite: scenarios written once, run by each adapter's tests; `testing::nofile`, the open-file limit raiser of every test and bench binary that holds thousands of sockets |
//!
//! ## How it fits together
//!
//! ```text
//!  application tasks                         driver task (one per connection)
//!  ─────────────────                         ────────────────────────────────
//!  Stream::poll_write       ─┐               read transport ─▶ Session::handle_input_bytes (zero-copy)
//!  Stream::poll_read        ─┼─▶ Session ◀── Session::step: timers, transmit batch, register waker
//!  ConnectionHandle::open   ─┘   (Mutex)     write batch (vectored) ─▶ flush ─▶ sleep until deadline
//!            ▲                      │
//!            └──── stream wakers ◀──┴── dispatch(): protocol events routed to stream slots
//! ```
//!
//! Commands (write, read, open, finish, reset, close) run directly on the shared state under the lock and
//! wake the driver only when they produced octets to transmit; a command that ends a stream's data
//! (finish, trailer, reset) writes those octets from its own task instead when the driver is not
//! polling — the first such end after each input read; later ones are left to the driver, which
//! batches them — and still wakes it for anything it must act on (see `driver::InlineWrite`). Reading hands consumed octets back to
//! flow control (`release_capacity`), so a slow reader slows its own stream's sender and nothing else.
//! No async runtime is named here: tasks, timers and sockets come from the [`Runtime`] the caller passes.

pub mod agent;
pub mod driver;
pub mod error;
pub mod facade;
pub mod handle;
pub mod handshake;
pub mod observer;
pub mod runtime;
pub mod server;
pub mod session;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
mod wakers;

pub use agent::{connect_agent, connect_agent_over, connect_agent_to};
pub use driver::Driver;
pub use error::Error;
pub use facade::{Dial, ServerOn};
pub use handle::ConnectionHandle;
pub use handshake::{
    Accepted, AgentOptions, AuthFuture, Authenticator, ServerConnection, agent_handshake,
    server_handshake,
};
pub use observer::{ConnectionEvent, Initiator};
pub use protocol;
pub use runtime::{AsyncIo, AsyncTimer, BoxFuture, BoxIo, Listener, Runtime};
pub use server::{Intake, Server, accept_over};
pub use session::Session;
#[cfg(test)]
pub(crate) use stream::StreamHandle;
pub use stream::{RecvStream, SendStream, Stream};

/// The application's cloneable handle on one tunnel connection: open and accept [`Stream`]s,
/// graceful close, drain and close notifications, stats.
pub type Connection = ConnectionHandle;

impl ConnectionHandle {
    /// The handle itself (callers written against the former per-runtime wrapper call
    /// `connection.handle()`).
    #[doc(hidden)]
    pub fn handle(&self) -> &ConnectionHandle {
        self
    }
}
