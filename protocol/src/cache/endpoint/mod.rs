//! The `views` stream's two endpoints (SERVICES.md §6), Sans-IO: body bytes in, body bytes and
//! events out, time passed in.
//!
//! - [`AgentViews`] ([`agent`]): agentk's side. It owns the [`AgentCache`](super::AgentCache),
//!   takes watch events, knows which stream ("link") is current, batches object changes, and hands
//!   out framed messages for kas.
//! - [`MirrorTable`] / [`ViewsStream`] ([`server`]): kas's side. Every agent's
//!   [`Mirror`](super::Mirror), fed by the agent's streams (two overlap during a GOAWAY handover),
//!   with capacity bounds, acks and resync requests out, and events for kas's event feed.
//!
//! agentk, kas and the simulator drive these types; none of them decodes a views message itself.
//!
//! ```text
//!  agentk driver                                   kas driver
//!  watch events ─▶ AgentViews ─poll_transmit─▶ bytes ══▶ MirrorTable::handle_body ─▶ MirrorEvent
//!                  AgentViews ◀─handle_body─── bytes ◀══ ViewsStream::poll_transmit (acks, resyncs)
//! ```

pub mod agent;
pub mod server;

use bytes::Bytes;

use super::messages::MessageError;
use super::wire::WireError;
use crate::proto::{Header, RequestHead};
use crate::service;

pub use agent::{AgentViews, AgentViewsConfig, AgentViewsEvent, LinkEnd, LinkId};
pub use server::{
    MirrorEvent, MirrorTable, MirrorTableConfig, StreamEnd, ViewsRefusal, ViewsStream,
};

/// The method of the request opening a `views` stream.
pub const VIEWS_METHOD: &str = "SYNC";

/// The request head agentk opens the `views` stream with: service `views`, method `SYNC`, path `/`.
pub fn views_request_head() -> RequestHead {
    RequestHead {
        service: service::VIEWS.into(),
        method: VIEWS_METHOD.into(),
        path: "/".into(),
        headers: Vec::new(),
        timeout_ms: 0,
        impersonation: None,
    }
}

/// What agentk does with kas's answer to the `views` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// 200: the stream is linked ([`AgentViews::handle_linked`]).
    Linked,
    /// 404 or 503: kas does not mirror views now (no capacity, not configured); retry on the next
    /// connection.
    RetryNextConnection,
    /// Anything else: kas refused the request; retry on the next connection, and say so louder.
    Refused,
}

/// Classifies kas's status answering the `views` request.
pub fn classify_views_response(status: u32) -> ResponseVerdict {
    match status {
        200 => ResponseVerdict::Linked,
        404 | 503 => ResponseVerdict::RetryNextConnection,
        _ => ResponseVerdict::Refused,
    }
}

/// The peer broke the `views` stream's rules: the driver resets the stream with
/// `ErrorCode::Protocol`. Whatever was applied before the offending message stays applied; the
/// offending message changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewsViolation {
    /// The body is not a sequence of length-delimited messages (bad length, over 16 MiB, ends
    /// inside a message).
    #[error("views stream: {0}")]
    Message(#[from] MessageError),
    /// A message does not decode or breaks the sync rules of `cache.proto`.
    #[error("views stream: {0}")]
    Wire(#[from] WireError),
}

/// An `x-tunnel-error` header.
pub(crate) fn tunnel_error(reason: &str) -> Header {
    Header {
        name: "x-tunnel-error".into(),
        value: Bytes::copy_from_slice(reason.as_bytes()),
    }
}
