//! The budget of one fetch: a deadline and a maximum number of bytes received. Readers on the
//! connection charge it; when it runs out they fail with an I/O error, and the budget remembers why, so
//! that the fetch's error can be classified precisely whatever gix made of the I/O error.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a fetch's connection failed, as observed by the transport (more precise than gix's errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trip {
    /// The deadline passed.
    Deadline,
    /// More than the allowed bytes were received.
    TooManyBytes,
    /// The HTTP server answered with this non-success status.
    HttpStatus(u16),
    /// Connecting failed (DNS, refused, TLS handshake, reset).
    Connect(String),
}

pub(crate) struct Budget {
    started: Instant,
    timeout: Duration,
    max_bytes: u64,
    received: AtomicU64,
    trip: Mutex<Option<Trip>>,
}

impl Budget {
    pub(crate) fn new(timeout: Duration, max_bytes: u64) -> Arc<Self> {
        Arc::new(Budget {
            started: Instant::now(),
            timeout,
            max_bytes,
            received: AtomicU64::new(0),
            trip: Mutex::new(None),
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes received so far on this fetch's connections.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Time left, or an error (and a recorded trip) when none is left.
    pub(crate) fn remaining(&self) -> io::Result<Duration> {
        let left = self.timeout.saturating_sub(self.started.elapsed());
        if left.is_zero() {
            self.record(Trip::Deadline);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the fetch timeout elapsed",
            ));
        }
        Ok(left)
    }

    /// Counts `n` received bytes; fails once the total exceeds the limit.
    pub(crate) fn charge(&self, n: usize) -> io::Result<()> {
        let total = self.received.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > self.max_bytes {
            self.record(Trip::TooManyBytes);
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the fetch exceeded its byte limit",
            ));
        }
        Ok(())
    }

    /// Remembers the first reason a connection failed.
    pub(crate) fn record(&self, trip: Trip) {
        let mut t = self.trip.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_none() {
            *t = Some(trip);
        }
    }

    pub(crate) fn trip(&self) -> Option<Trip> {
        self.trip.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A reader that charges the budget and checks the deadline on every read.
pub(crate) struct BudgetReader<R> {
    inner: R,
    budget: Arc<Budget>,
}

impl<R> BudgetReader<R> {
    pub(crate) fn new(inner: R, budget: Arc<Budget>) -> Self {
        BudgetReader { inner, budget }
    }
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.budget.remaining()?;
        let n = self.inner.read(buf)?;
        self.budget.charge(n)?;
        Ok(n)
    }
}

/// One direction of a TCP connection whose socket timeouts follow the budget's deadline, so that a
/// server that stops sending cannot hold a fetch longer than its timeout.
pub(crate) struct TimedStream {
    stream: TcpStream,
    budget: Arc<Budget>,
}

impl TimedStream {
    pub(crate) fn new(stream: TcpStream, budget: Arc<Budget>) -> Self {
        TimedStream { stream, budget }
    }
}

fn map_timeout(budget: &Budget, e: io::Error) -> io::Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        budget.record(Trip::Deadline);
        io::Error::new(io::ErrorKind::TimedOut, "the fetch timeout elapsed")
    } else {
        e
    }
}

impl Read for TimedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.remaining()?;
        self.stream.set_read_timeout(Some(left))?;
        let n = self
            .stream
            .read(buf)
            .map_err(|e| map_timeout(&self.budget, e))?;
        self.budget.charge(n)?;
        Ok(n)
    }
}

impl Write for TimedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.budget.remaining()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream
            .write(buf)
            .map_err(|e| map_timeout(&self.budget, e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn byte_limit_trips_once_and_is_remembered() {
        let budget = Budget::new(Duration::from_secs(60), 10);
        let mut r = BudgetReader::new(&[7u8; 64][..], budget.clone());
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        let err = r.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(budget.trip(), Some(Trip::TooManyBytes));
        budget.record(Trip::Deadline);
        assert_eq!(
            budget.trip(),
            Some(Trip::TooManyBytes),
            "the first reason wins"
        );
    }

    #[test]
    fn deadline_trips() {
        let budget = Budget::new(Duration::ZERO, 10);
        let mut r = BudgetReader::new(&[7u8; 64][..], budget.clone());
        let mut buf = [0u8; 8];
        assert_eq!(
            r.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(budget.trip(), Some(Trip::Deadline));
    }
}
