//! Limits and bookkeeping of upgraded streaming sessions (exec, attach, port-forward): at most
//! [`Sessions::max`] at once (more are answered 429 before the upgrade), counted, and each
//! ended after [`Sessions::idle_timeout`] without data in either direction ([`Activity`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Counters of streaming sessions since the server started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Sessions open now.
    pub active: usize,
    /// Sessions started (upgraded).
    pub started: u64,
    /// Requests refused because [`Sessions::max`] sessions were open.
    pub rejected: u64,
    /// Sessions ended by a protocol error (malformed frames and the like).
    pub failed: u64,
    /// Sessions ended by the idle timeout.
    pub idle_timeouts: u64,
}

/// The session table of one server.
#[derive(Debug)]
pub struct Sessions {
    max: usize,
    idle_timeout: Duration,
    active: AtomicUsize,
    started: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    idle_timeouts: AtomicU64,
    start: Instant,
    last_log_ms: AtomicU64,
    suppressed: AtomicU64,
}

/// How a session ended, for the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Ended by either side as the protocol intends.
    Normal,
    /// A protocol error (the peer's fault): what was wrong.
    Failed(String),
    /// Nothing moved for the idle timeout.
    Idle,
}

impl Sessions {
    /// A table allowing `max` concurrent sessions, each idling at most `idle_timeout`.
    pub fn new(max: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            max,
            idle_timeout,
            active: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            start: Instant::now(),
            last_log_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        })
    }

    /// Whether a failure may be logged now (at most one a second); returns how many were
    /// suppressed since the last one logged.
    fn log_permit(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1000;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Most concurrent sessions.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How long a session may go without data.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Reserves a session slot, or `None` (counted as rejected) when all are taken.
    pub fn try_begin(self: &Arc<Self>) -> Option<SessionGuard> {
        let took = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        if took.is_err() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        Some(SessionGuard {
            sessions: self.clone(),
        })
    }

    /// The counters now.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            active: self.active.load(Ordering::Acquire),
            started: self.started.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            idle_timeouts: self.idle_timeouts.load(Ordering::Relaxed),
        }
    }
}

/// One open session; frees its slot when dropped.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
}

impl SessionGuard {
    /// The table this session belongs to.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Records how the session ended.
    pub fn end(&self, how: &Ending) {
        match how {
            Ending::Normal => {}
            Ending::Failed(why) => {
                self.sessions.failed.fetch_add(1, Ordering::Relaxed);
                // Logged at most once a second: a hostile client must not flood the log.
                if let Some(suppressed) = self.sessions.log_permit() {
                    tracing::info!(error = %why, suppressed, "streaming session ended: the client broke the protocol");
                }
            }
            Ending::Idle => {
                self.sessions.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let before = self.sessions.active.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "session count underflow");
    }
}

/// When data last moved in a session, for its idle timeout.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Data moved now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_counted() {
        let s = Sessions::new(2, Duration::from_secs(1));
        let a = s.try_begin();
        let b = s.try_begin();
        assert!(a.is_some() && b.is_some());
        assert!(s.try_begin().is_none());
        assert_eq!(s.stats().active, 2);
        if let Some(g) = &a {
            g.end(&Ending::Failed("bad frame".into()));
            assert_eq!(s.log_permit(), None);
        }
        drop(a);
        assert!(s.try_begin().is_some());
        let st = s.stats();
        assert_eq!(
            (st.started, st.rejected, st.failed, st.active),
            (3, 1, 1, 1)
        );
    }

    #[tokio::test]
    async fn idle_fires_after_quiet_period() {
        let a = Activity::new();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(60)).await;
        a.touch();
        a.idle(Duration::from_millis(100)).await;
        assert!(t0.elapsed() >= Duration::from_millis(160));
    }
}
