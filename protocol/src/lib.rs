//! # protocol: the Sans-IO core of the agent tunnel
//!
//! agentk dials out of a cluster behind NAT to kas and keeps one connection open; over it kas — which
//! *accepted* the connection — sends requests *into* the cluster, and agentk pushes its own streams
//! (cache views, events) to kas. This crate is everything about that connection that is not I/O:
//!
//! | module | what it is |
//! |---|---|
//! | [`tunnel`] | the connection: frames, flow control, the [`Connection`] state machine, events, errors |
//! | [`proto`] | protobuf control payloads generated from `proto/tunnel.proto` |
//! | [`routing`] | kas's inverted request routing: which connection of which agent serves a request |
//! | [`service`] | names and head conventions of the services carried over streams (k8s-api, ...) |
//! | [`cache`] | informer-cache semantics: store, views, view updates and the kas-side mirror |
//! | `testing` | (feature `testing`) test support: the `pair` harness (two connections on a simulated clock), the naive view oracle, injectable view bugs |
//!
//! No sockets, no async runtime, no threads, no clock reads: octets and `now` go in, octets, events and
//! deadlines come out. The wire format is specified in `PROTOCOL.md` beside this crate.
//!
//! ## The driving loop
//!
//! Every driver (the tokio and smol runtimes, the deterministic simulator, the tests' pair harness) runs
//! the same loop:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use protocol::{AgentHello, Config, Connection, Event};
//!
//! let start = Instant::now(); // the driver's clock, never read by the connection
//! let mut agent = Connection::agent(Config::default(), AgentHello::default(), start);
//! let mut server = Connection::server(Config::default(), start);
//!
//! let mut now = start;
//! for _round in 0..10 {
//!     // 1. What each side wants to send goes to the other side (a socket write in a real driver).
//!     while let Some(bytes) = agent.poll_transmit() {
//!         server.handle_input(&bytes, now);
//!     }
//!     while let Some(bytes) = server.poll_transmit() {
//!         agent.handle_input(&bytes, now);
//!     }
//!     // 2. Events are handled by the application, which issues commands.
//!     while let Some(ev) = server.poll_event() {
//!         if let Event::Hello(hello) = ev {
//!             // authenticate hello.token here (possibly asynchronously), then:
//!             server.accept(42, "conn-1".into(), now);
//!         }
//!     }
//!     while let Some(ev) = agent.poll_event() {
//!         if let Event::Connected(e) = ev {
//!             assert_eq!(e.agent_id, 42);
//!         }
//!     }
//!     // 3. Sleep until the earliest deadline (or until input arrives), then tell the connection.
//!     if let Some(deadline) = agent.poll_timeout() {
//!         now = now.max(deadline.min(now + Duration::from_millis(10)));
//!         agent.handle_timeout(now);
//!     }
//! }
//! assert!(agent.established().is_some());
//! ```
//!
//! Every command and `poll_transmit` itself may queue events (transmitting a stream's last frame can end
//! the stream, and with it a draining connection), so a driver drains `poll_event` after each of them.
//! Octets received go to [`Connection::handle_input`]; end of file to [`Connection::handle_eof`]. After
//! [`Event::Closed`], drain `poll_transmit` (a final GOAWAY or REJECT) and close the transport.
//!
//! ## Streams
//!
//! Either side opens a stream with [`Connection::open_stream`] and a [`proto::RequestHead`]; the other
//! side gets [`Event::StreamOpened`] and answers with [`Connection::send_response`]. Body octets go
//! through [`Connection::send_data`], which accepts only what flow control allows (the rest waits for
//! [`Event::Writable`]); received body arrives as [`Event::Data`] and must be handed back with
//! [`Connection::release_capacity`] once consumed, which is what lets a slow reader slow down its
//! sender, on its own stream only.

#![warn(missing_docs)]

pub mod cache;
pub mod routing;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tunnel;

/// Whether this build has the `testing` feature: its fault-injection hooks run in hot paths (flow
/// control, view evaluation). Cargo unifies features per invocation, so a program built in one
/// `cargo build` with a crate that enables them has them too; a program that reports its build
/// (`kas --version`) says so.
pub const TESTING_HOOKS: bool = cfg!(feature = "testing");

/// Protobuf messages generated from `proto/tunnel.proto` (package `agent_tunnel.v1`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/agent_tunnel.v1.rs"));
}

pub use tunnel::{
    AgentHello, ApiMisuse, CloseReason, Config, Connection, ConnectionError, ConnectionStats,
    ErrorCode, Established, Event, Fault, Frame, FrameError, HelloInfo, OpenError,
    PROTOCOL_VERSION, Phase, RejectCode, Role, Settings, StreamError, StreamId,
};
