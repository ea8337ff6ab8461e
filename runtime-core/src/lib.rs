//! # runtime-core: what both tunnel runtimes share
//!
//! `runtime-tokio` (agentk) and `runtime-smol` (kas) give the Sans-IO [`protocol::Connection`] sockets,
//! TLS and timers. Everything that does not depend on the async runtime lives here, so both behave the
//! same and each runtime crate is only I/O glue:
//!
//! | module | what it is |
//! |---|---|
//! | [`session`] | [`Session`]: the protocol connection behind one mutex, one slot per stream (received chunks, response head, trailer, reset, wakers), the queue of peer-opened streams, the handshake state, and the driver's waker |
//! | [`driver`] | [`Driver`]: the per-connection I/O task as a plain `Future`, generic over two small traits ([`Transport`], [`Timer`]) each runtime implements |
//! | [`handle`] | [`ConnectionHandle`]: open/accept streams, graceful close with a deadline, observe |
//! | [`stream`] | [`StreamHandle`]: poll functions behind the runtimes' `AsyncRead`/`AsyncWrite`, response/trailer/reset |
//! | [`handshake`] | agent and server handshakes after TLS, the async [`Authenticator`] |
//! | [`error`] | [`Error`], the one typed error, and its round trip through `std::io::Error` |
//! | [`suite`] | the behaviour suite: scenarios written once against [`suite::SuiteRuntime`], run by both runtimes' tests |
//!
//! ## How it fits together
//!
//! ```text
//!  application tasks                         driver task (one per connection)
//!  ─────────────────                         ────────────────────────────────
//!  StreamHandle::poll_write ─┐               read transport ─▶ Session::handle_input
//!  StreamHandle::poll_read  ─┼─▶ Session ◀── Session::step: timers, transmit batch, register waker
//!  ConnectionHandle::open   ─┘   (Mutex)     write batch (vectored) ─▶ flush ─▶ sleep until deadline
//!            ▲                      │
//!            └──── stream wakers ◀──┴── dispatch(): protocol events routed to stream slots
//! ```
//!
//! Commands (write, read, open, finish, reset, close) run directly on the shared state under the lock and
//! wake the driver only when they produced octets to transmit. Reading hands consumed octets back to
//! flow control (`release_capacity`), so a slow reader slows its own stream's sender and nothing else.
//! No async runtime is used here: only `std::task` wakers, `std::sync::Mutex` and `std::time::Instant`.

pub mod driver;
pub mod error;
pub mod handle;
pub mod handshake;
pub mod observer;
pub mod session;
pub mod stream;
pub mod suite;
mod wakers;

pub use driver::{Driver, Timer, Transport};
pub use error::Error;
pub use handle::ConnectionHandle;
pub use handshake::{
    Accepted, AgentOptions, AuthFuture, Authenticator, ServerConnection, agent_handshake,
    server_handshake,
};
pub use observer::{ConnectionEvent, Initiator};
pub use protocol;
pub use session::Session;
pub use stream::StreamHandle;
