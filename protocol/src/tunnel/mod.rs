//! The tunnel: one multiplexed connection between agentk and kas, as a Sans-IO state machine.
//!
//! | module | what it is |
//! |---|---|
//! | [`frame`] | the 9-octet frame header, every frame type, the incremental decoder and the encoder |
//! | [`config`] | local configuration and the settings peers announce |
//! | [`connection`] | the [`Connection`] state machine: handshake, streams, flow control, keepalive, GOAWAY |
//! | [`flow`] | credit windows |
//! | [`event`] | what a connection reports |
//! | [`error`] | error types and the wire error codes they map to |
//! | [`reconnect`] | agentk's reconnect policy: back-off after failures, handover after GOAWAY |
//! | [`connection_set`] | agentk's connections to `K` distinct kas replicas: when to dial, which duplicate to close |
//!
//! The wire format is specified in `PROTOCOL.md` beside this crate.

pub mod config;
pub mod connection;
pub mod connection_set;
pub mod error;
pub mod event;
pub mod flow;
pub mod frame;
pub mod reconnect;

pub use config::{Config, PROTOCOL_VERSION, ReplicaInfo, Settings};
pub use connection::{AgentHello, Connection, ConnectionStats, Phase, Role};
pub use error::{
    ApiMisuse, CloseReason, ConnectionError, ErrorCode, Fault, FrameError, OpenError, RejectCode,
    StreamError,
};
pub use event::{Established, Event, HelloInfo};
pub use frame::{Frame, StreamId};
