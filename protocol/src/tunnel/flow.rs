//! Credit-based flow control: what we may send ([`SendWindow`]) and what we let the peer send
//! ([`RecvWindow`]). One pair exists per stream and one for the whole connection.
//!
//! Invariants (checked with `debug_assert!`):
//! - a send window never goes below zero: DATA is only framed within the credit;
//! - a receive window never exceeds [`MAX_WINDOW`], and received-but-unreleased octets never exceed the
//!   initial window (the peer can only send within credit we granted).

use crate::tunnel::frame::MAX_WINDOW;

/// A window rule was broken; the caller turns it into a FLOW_CONTROL_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// A window update would take the window above 2^31-1.
    #[error("window would exceed 2^31-1")]
    Overflow,
    /// The peer sent more than the window allowed.
    #[error("peer sent more than the window allowed")]
    Exceeded,
}

/// Credit granted by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    credit: u64,
}

impl SendWindow {
    /// A window with the peer's initial credit.
    pub fn new(initial: u32) -> SendWindow {
        SendWindow {
            credit: initial.into(),
        }
    }

    /// Octets we may still send.
    pub fn available(&self) -> u64 {
        self.credit
    }

    /// Spends credit for `n` octets framed as DATA.
    pub fn consume(&mut self, n: u64) {
        debug_assert!(n <= self.credit, "send window would go negative");
        self.credit = self.credit.saturating_sub(n);
    }

    /// Applies a WINDOW_UPDATE; fails if the window would exceed 2^31-1.
    pub fn grow(&mut self, increment: u32) -> Result<(), FlowError> {
        #[cfg(feature = "testing")]
        let increment = match crate::testing::faults::flow_fault() {
            Some(crate::testing::faults::FlowFault::DoubleCredit) => increment.saturating_mul(2),
            None => increment,
        };
        let next = self.credit + u64::from(increment);
        if next > u64::from(MAX_WINDOW) {
            return Err(FlowError::Overflow);
        }
        self.credit = next;
        Ok(())
    }
}

/// Credit we granted to the peer, and what the application has handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    initial: u32,
    /// Octets the peer may still send.
    remaining: u32,
    /// Octets received and released by the application but not yet returned with WINDOW_UPDATE.
    released: u32,
}

impl RecvWindow {
    /// A window with our initial credit.
    pub fn new(initial: u32) -> RecvWindow {
        RecvWindow {
            initial,
            remaining: initial,
            released: 0,
        }
    }

    /// Octets the peer may still send.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Octets received that the application has not released yet.
    pub fn unreleased(&self) -> u32 {
        self.initial - self.remaining - self.released
    }

    /// Accounts for `n` received octets; fails when the peer exceeded the window.
    pub fn receive(&mut self, n: u32) -> Result<(), FlowError> {
        if n > self.remaining {
            return Err(FlowError::Exceeded);
        }
        self.remaining -= n;
        Ok(())
    }

    /// The application consumed `n` octets. Returns the increment to announce now, if any: updates
    /// are batched until at least half the window is released, so a steady reader costs one
    /// WINDOW_UPDATE per half window.
    pub fn release(&mut self, n: u32) -> Option<u32> {
        let n = n.min(self.unreleased());
        self.released += n;
        if self.released > 0 && self.released >= self.initial / 2 {
            Some(self.take_released())
        } else {
            None
        }
    }

    /// Returns all released credit at once (e.g. when the stream ends).
    pub fn take_released(&mut self) -> u32 {
        let inc = self.released;
        self.remaining += inc;
        self.released = 0;
        debug_assert!(self.remaining <= self.initial);
        inc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_grows_and_refuses_overflow() {
        let mut w = SendWindow::new(10);
        w.consume(10);
        assert_eq!(w.available(), 0);
        assert!(w.grow(5).is_ok());
        assert_eq!(w.available(), 5);
        assert!(w.grow(MAX_WINDOW).is_err());
    }

    #[test]
    fn recv_window_batches_updates() {
        let mut w = RecvWindow::new(100);
        assert!(w.receive(60).is_ok());
        assert!(w.receive(41).is_err());
        assert_eq!(w.release(30), None);
        assert_eq!(w.release(30), Some(60));
        assert_eq!(w.remaining(), 100);
        assert_eq!(w.unreleased(), 0);
    }

    #[test]
    fn release_never_exceeds_received() {
        let mut w = RecvWindow::new(100);
        assert!(w.receive(10).is_ok());
        assert_eq!(w.release(1000), None);
        assert_eq!(w.take_released(), 10);
        assert_eq!(w.remaining(), 100);
    }
}
