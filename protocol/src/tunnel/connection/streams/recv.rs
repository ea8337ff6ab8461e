//! The receiving half of a stream: its state and the credit we granted the peer.

use crate::tunnel::flow::RecvWindow;

/// Lifecycle of the peer's direction of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvState {
    /// Opener only: waiting for the RESPONSE head; DATA before it is a protocol violation.
    AwaitingHead,
    /// Body may arrive.
    Open,
    /// The peer ended its direction (END_STREAM or TRAILER).
    Closed,
}

#[derive(Debug)]
pub(crate) struct RecvHalf {
    pub(crate) state: RecvState,
    pub(crate) window: RecvWindow,
}

impl RecvHalf {
    pub(crate) fn new(state: RecvState, window: u32) -> RecvHalf {
        RecvHalf {
            state,
            window: RecvWindow::new(window),
        }
    }
}
