//! Per-stream state and the table of live streams.
//!
//! A stream is `idle` until its REQUEST is sent or received, then each direction runs on its own
//! ([`send::SendState`], [`recv::RecvState`]): `open` → `half-closed (local)` when our end is
//! transmitted, `half-closed (remote)` when the peer's end arrives, `closed` when both happened or on
//! RESET. A closed stream is removed from the table at once.

pub(crate) mod recv;
pub(crate) mod send;

use std::collections::{BTreeMap, VecDeque};

use crate::tunnel::frame::StreamId;
use recv::{RecvHalf, RecvState};
use send::{SendHalf, SendState};

#[derive(Debug)]
pub(crate) struct Stream {
    /// We sent the REQUEST (else the peer did).
    pub(crate) local: bool,
    pub(crate) send: SendHalf,
    pub(crate) recv: RecvHalf,
}

impl Stream {
    /// A stream we open: we may send body at once, the peer answers with a head first.
    pub(crate) fn opened_locally(send_window: u32, recv_window: u32) -> Stream {
        Stream {
            local: true,
            send: SendHalf::new(SendState::Open, send_window),
            recv: RecvHalf::new(RecvState::AwaitingHead, recv_window),
        }
    }

    /// A stream the peer opened: its body may follow, we must answer with a head first.
    pub(crate) fn opened_remotely(send_window: u32, recv_window: u32) -> Stream {
        Stream {
            local: false,
            send: SendHalf::new(SendState::AwaitingHead, send_window),
            recv: RecvHalf::new(RecvState::Open, recv_window),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.send.state == SendState::Closed && self.recv.state == RecvState::Closed
    }
}

/// The live streams plus the round-robin queue of streams with something to transmit.
///
/// Invariants: every id in `ready` is in `map` and has pending chunks, at most once;
/// `open_local` / `open_remote` count the streams in `map` by initiator.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    pub(crate) map: BTreeMap<StreamId, Stream>,
    pub(crate) ready: VecDeque<StreamId>,
    pub(crate) open_local: u32,
    pub(crate) open_remote: u32,
    /// Emptied send queues of finished streams, kept for the next streams (at most
    /// [`SPARE_QUEUES`]): a connection that opens a stream per request allocates no queue per
    /// stream.
    spare_queues: Vec<VecDeque<send::Chunk>>,
}

/// How many emptied send queues [`Streams`] keeps for reuse.
const SPARE_QUEUES: usize = 16;
/// The largest send queue kept for reuse (in chunks): a request's queue is a few chunks; a bulk
/// stream's grown queue is dropped, so a quiet connection holds at most `16 × 8` spare entries.
const SPARE_QUEUE_CAPACITY: usize = 8;

impl Streams {
    pub(crate) fn insert(&mut self, id: StreamId, mut s: Stream) {
        if s.send.queue.capacity() == 0
            && let Some(q) = self.spare_queues.pop()
        {
            s.send.queue = q;
        }
        if s.local {
            self.open_local += 1;
        } else {
            self.open_remote += 1;
        }
        self.map.insert(id, s);
    }

    pub(crate) fn remove(&mut self, id: StreamId) -> Option<Stream> {
        let s = self.map.remove(&id)?;
        if s.local {
            self.open_local -= 1;
        } else {
            self.open_remote -= 1;
        }
        self.ready.retain(|r| *r != id);
        Some(s)
    }

    /// Keeps the send queue of a stream that was removed, for a later stream.
    pub(crate) fn recycle(&mut self, s: Stream) {
        let mut q = s.send.queue;
        if q.capacity() > 0
            && q.capacity() <= SPARE_QUEUE_CAPACITY
            && self.spare_queues.len() < SPARE_QUEUES
        {
            q.clear();
            self.spare_queues.push(q);
        }
    }

    /// Puts the stream in the transmit rotation if it has something queued and is not there yet.
    pub(crate) fn schedule(&mut self, id: StreamId) {
        if self.map.get(&id).is_some_and(|s| s.send.has_pending()) && !self.ready.contains(&id) {
            self.ready.push_back(id);
        }
    }

    pub(crate) fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            let local = self.map.values().filter(|s| s.local).count() as u32;
            debug_assert_eq!(local, self.open_local);
            debug_assert_eq!(self.map.len() as u32 - local, self.open_remote);
            for id in &self.ready {
                debug_assert!(self.map.get(id).is_some_and(|s| s.send.has_pending()));
            }
            for s in self.map.values() {
                s.send.check_invariants();
            }
        }
    }
}
