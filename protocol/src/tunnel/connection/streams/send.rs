//! The sending half of a stream: queued body chunks, the end marker, and the peer's credit.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::proto;
use crate::tunnel::flow::SendWindow;

/// What is queued for transmission, in order.
#[derive(Debug)]
pub(crate) enum Chunk {
    Data(Bytes),
    /// End of this direction without a trailer (an empty DATA frame with END_STREAM if nothing carries it).
    Fin,
    Trailer(proto::Trailer),
}

/// Lifecycle of our direction of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    /// Acceptor only: the RESPONSE head has not been sent yet; no data may be sent.
    AwaitingHead,
    /// Body may be sent.
    Open,
    /// The end (FIN or TRAILER) is queued but not yet transmitted.
    Ending,
    /// The end was transmitted.
    Closed,
}

/// Invariant: `queued` equals the sum of the lengths of the `Data` chunks in `queue`, and
/// `queued <= window.available()` (we only accept what the credit covers, so queued data is always
/// sendable as far as the stream window goes).
#[derive(Debug)]
pub(crate) struct SendHalf {
    pub(crate) state: SendState,
    pub(crate) window: SendWindow,
    pub(crate) queue: VecDeque<Chunk>,
    pub(crate) queued: u64,
    /// The application was told "blocked" and waits for a `Writable` event.
    pub(crate) wants_writable: bool,
}

impl SendHalf {
    pub(crate) fn new(state: SendState, window: u32) -> SendHalf {
        SendHalf {
            state,
            window: SendWindow::new(window),
            queue: VecDeque::new(),
            queued: 0,
            wants_writable: false,
        }
    }

    /// Credit not yet claimed by queued data.
    pub(crate) fn unclaimed_credit(&self) -> u64 {
        self.window.available().saturating_sub(self.queued)
    }

    pub(crate) fn can_write(&self) -> bool {
        self.state == SendState::Open
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    pub(crate) fn check_invariants(&self) {
        debug_assert_eq!(
            self.queued,
            self.queue
                .iter()
                .map(|c| match c {
                    Chunk::Data(b) => b.len() as u64,
                    _ => 0,
                })
                .sum::<u64>()
        );
        debug_assert!(self.queued <= self.window.available());
    }
}
