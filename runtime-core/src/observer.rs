//! Synchronous connection observers: what the application learns about a connection's life, in
//! protocol order, with no task and no polling in between.
//!
//! A watcher task woken by a drain event runs *after* the driver that processed the GOAWAY, and work
//! can be routed onto the draining connection in between. An observer registered with
//! [`crate::ConnectionHandle::on_event`] instead runs right after the session lock is released by the
//! call that produced the event (the driver's `handle_input`/`step`, or the commanding task's
//! `start_close`/`abort`/…), before that driver transmits anything later: a PING ACK for a PING that
//! followed a GOAWAY is sent only after the observer saw the GOAWAY.
//!
//! Each connection reports at most one [`ConnectionEvent::Draining`], then at most one
//! [`ConnectionEvent::Closed`] (a connection that ends without a GOAWAY reports only `Closed`).
//! Observers must not block; they may call the connection (the lock is not held).

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::CloseReason;

/// Which side sent the GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// We did (close, retirement, idle timeout).
    Local,
    /// The peer did.
    Peer,
}

/// Something an observer learns about a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionEvent {
    /// A GOAWAY was sent or received: no new streams from now on. `last_stream_id`: the peer's GOAWAY
    /// said streams above it were never processed (`None` for our own GOAWAY).
    Draining {
        initiator: Initiator,
        last_stream_id: Option<u32>,
    },
    /// The connection is over.
    Closed(CloseReason),
}

/// An observer callback.
pub(crate) type Observer = Arc<dyn Fn(&ConnectionEvent) + Send + Sync>;

/// The observer state of one session (behind the session's mutex).
#[derive(Default)]
pub(crate) struct Observers {
    pub(crate) list: Vec<Observer>,
    /// Every event so far, in order (at most two).
    history: Vec<ConnectionEvent>,
    /// Events not yet handed to the observers (a suffix of `history`).
    pub(crate) pending: VecDeque<ConnectionEvent>,
    /// A thread is delivering: it delivers what is queued meanwhile, in order.
    pub(crate) delivering: bool,
}

impl Observers {
    fn push(&mut self, ev: ConnectionEvent) {
        self.history.push(ev.clone());
        self.pending.push_back(ev);
    }

    /// A GOAWAY either way (only the first is reported, and none after the close).
    pub(crate) fn note_draining(&mut self, initiator: Initiator, last_stream_id: Option<u32>) {
        if self.history.is_empty() {
            self.push(ConnectionEvent::Draining {
                initiator,
                last_stream_id,
            });
        }
    }

    /// The connection closed (reported once).
    pub(crate) fn note_closed(&mut self, reason: &CloseReason) {
        if !self
            .history
            .iter()
            .any(|e| matches!(e, ConnectionEvent::Closed(_)))
        {
            self.push(ConnectionEvent::Closed(reason.clone()));
        }
    }

    /// The events already handed out (or being handed out): a late observer's replay.
    pub(crate) fn delivered(&self) -> Vec<ConnectionEvent> {
        self.history[..self.history.len() - self.pending.len()].to_vec()
    }
}
