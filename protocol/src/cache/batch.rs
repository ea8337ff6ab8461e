//! [`ChangeBatch`]: the object changes agentk's cache produced, waiting to go to kas as
//! `object_changes` messages — at most one message per window, at most `max_per_message` changes
//! each, at most `max_pending` waiting (the oldest are dropped beyond that, and counted).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::store::ObjectChange;

/// Changes waiting for kas at most (default); older ones are dropped beyond this.
pub const MAX_PENDING_CHANGES: usize = 10_000;
/// Changes per `object_changes` message at most (default).
pub const MAX_CHANGES_PER_MESSAGE: usize = 1_000;

/// Object changes waiting for kas (see the module documentation). Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pending: VecDeque<ObjectChange>,
    dropped: u64,
    last_sent: Option<Instant>,
    window: Duration,
    max_pending: usize,
    max_per_message: usize,
}

impl ChangeBatch {
    /// A batch sending at most once per `window`, with the default limits.
    pub fn new(window: Duration) -> ChangeBatch {
        ChangeBatch::with_limits(window, MAX_PENDING_CHANGES, MAX_CHANGES_PER_MESSAGE)
    }

    /// A batch with explicit limits (each at least 1).
    pub fn with_limits(
        window: Duration,
        max_pending: usize,
        max_per_message: usize,
    ) -> ChangeBatch {
        ChangeBatch {
            pending: VecDeque::new(),
            dropped: 0,
            last_sent: None,
            window,
            max_pending: max_pending.max(1),
            max_per_message: max_per_message.max(1),
        }
    }

    /// Adds changes, dropping the oldest beyond the limit.
    pub fn push(&mut self, changes: impl IntoIterator<Item = ObjectChange>) {
        for c in changes {
            if self.pending.len() >= self.max_pending {
                self.pending.pop_front();
                self.dropped += 1;
            }
            self.pending.push_back(c);
        }
        debug_assert!(self.pending.len() <= self.max_pending);
    }

    /// Changes waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Changes dropped since the last message.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// When the next message may go (`None`: nothing waits); at or before `now` means now.
    pub fn due_at(&self, now: Instant) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.window_end().unwrap_or(now))
    }

    /// When the current window ends (`None`: nothing was sent yet, any time will do).
    pub fn window_end(&self) -> Option<Instant> {
        self.last_sent.and_then(|t| t.checked_add(self.window))
    }

    /// The next message's changes and how many were dropped since the last one, if one is due.
    pub fn take(&mut self, now: Instant) -> Option<(Vec<ObjectChange>, u64)> {
        if self.due_at(now).is_none_or(|t| t > now) {
            return None;
        }
        let n = self.pending.len().min(self.max_per_message);
        let changes: Vec<ObjectChange> = self.pending.drain(..n).collect();
        self.last_sent = Some(now);
        Some((changes, std::mem::take(&mut self.dropped)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::cache::{ChangeType, ResourceKind};

    fn change(i: usize) -> ObjectChange {
        ObjectChange {
            kind: ResourceKind::pod(),
            namespace: "ns".into(),
            name: format!("p{i}"),
            uid: format!("u{i}"),
            resource_version: i.to_string(),
            change_type: ChangeType::Added,
        }
    }

    #[test]
    fn batches_at_most_once_per_window() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut b = ChangeBatch::new(w);
        assert_eq!(b.due_at(t0), None);
        assert_eq!(b.take(t0), None);
        b.push([change(1), change(2)]);
        assert_eq!(b.due_at(t0), Some(t0), "the first batch goes at once");
        let (first, dropped) = b.take(t0).expect("due");
        assert_eq!(first, vec![change(1), change(2)]);
        assert_eq!(dropped, 0);
        b.push([change(3)]);
        assert_eq!(b.due_at(t0), Some(t0 + w));
        assert_eq!(b.take(t0 + w / 2), None, "within the window");
        let (second, _) = b.take(t0 + w).expect("window over");
        assert_eq!(second, vec![change(3)]);
        assert!(b.is_empty());
        // After a quiet period, a change goes at once again.
        b.push([change(4)]);
        let later = t0 + 10 * w;
        assert!(b.due_at(later).is_some_and(|t| t <= later));
        assert!(b.take(later).is_some());
    }

    #[test]
    fn bounds_pending_changes_and_message_size() {
        let t0 = Instant::now();
        let mut b = ChangeBatch::with_limits(Duration::from_millis(100), 5, 2);
        b.push((0..8).map(change));
        assert_eq!(b.len(), 5);
        let (m, dropped) = b.take(t0).expect("due");
        assert_eq!(m, vec![change(3), change(4)], "the oldest were dropped");
        assert_eq!(dropped, 3);
        let (m, dropped) = b.take(t0 + Duration::from_millis(100)).expect("due");
        assert_eq!(m, vec![change(5), change(6)]);
        assert_eq!(dropped, 0);
    }
}
