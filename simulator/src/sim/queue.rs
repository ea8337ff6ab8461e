//! The single event queue, ordered by (time, sequence number). The sequence number is assigned at
//! insertion, so events due at the same instant run in the order they were scheduled — a total order
//! that depends on nothing but the run's own history.
//!
//! Simulated time never goes backwards (nothing is scheduled before the event being handled), so the
//! queue is a *radix heap* over the 128-bit key `time << 64 | sequence`: an entry sits in the bucket
//! numbered by the highest bit in which its key differs from the last key popped, and only the
//! lowest non-empty bucket is ever searched and redistributed. Every entry moves down at most once per
//! bit, and each bucket is a plain vector, which makes it much cheaper than a binary heap with tens of
//! thousands of pending timers. Events sit in the buckets themselves, next to their keys: the
//! entries a pop takes were just redistributed, so they are in cache (a slab beside the buckets cost
//! a cache miss per pop, at a random slot). A bitmap of the non-empty buckets finds the lowest one
//! without scanning the bucket headers.

use super::clock::SimTime;

const BUCKETS: usize = 129;

/// Events of type `E` keyed by when they are due.
pub struct EventQueue<E> {
    buckets: Vec<Vec<(u128, E)>>,
    /// Bit `i - 1` is set when bucket `i` (1..=128) holds entries; bucket 0 is checked directly.
    nonempty: u128,
    last: u128,
    len: usize,
    next_seq: u64,
    peak: usize,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            nonempty: 0,
            last: 0,
            len: 0,
            next_seq: 0,
            peak: 0,
        }
    }
}

fn bucket(key: u128, last: u128) -> usize {
    let diff = key ^ last;
    if diff == 0 {
        0
    } else {
        BUCKETS - 1 - diff.leading_zeros() as usize
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Files an entry under its bucket relative to `last`.
    fn file(&mut self, key: u128, event: E) {
        let b = bucket(key, self.last);
        if b > 0 {
            self.nonempty |= 1 << (b - 1);
        }
        self.buckets[b].push((key, event));
    }

    /// Schedules `event` at `at`. Scheduling before the last event taken out is a bug; such an event
    /// runs next instead.
    pub fn push(&mut self, at: SimTime, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = (u128::from(at.0) << 64 | u128::from(seq)).max(self.last);
        debug_assert!(
            u128::from(at.0) >= self.last >> 64,
            "event scheduled in the past"
        );
        self.file(key, event);
        self.len += 1;
        self.peak = self.peak.max(self.len);
    }

    /// The earliest event, if any.
    pub fn pop(&mut self) -> Option<(SimTime, E)> {
        if self.buckets[0].is_empty() {
            if self.nonempty == 0 {
                return None;
            }
            let i = self.nonempty.trailing_zeros() as usize + 1;
            self.nonempty &= !(1 << (i - 1));
            let mut items = std::mem::take(&mut self.buckets[i]);
            let min = items.iter().map(|(k, _)| *k).min()?;
            self.last = min;
            for (k, event) in items.drain(..) {
                // Every entry lands in a lower bucket than `i` (they all share the bits above it).
                self.file(k, event);
            }
            // Keep the emptied vector's allocation for later use.
            if self.buckets[i].is_empty() {
                self.buckets[i] = items;
            }
        }
        let (key, event) = self.buckets[0].pop()?;
        self.len -= 1;
        Some((SimTime((key >> 64) as u64), event))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Largest number of events queued at once.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_sorted_order_under_random_interleaving() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut q = EventQueue::new();
        let mut reference = std::collections::BTreeSet::new();
        let mut now = 0u64;
        let mut seq = 0u64;
        for _ in 0..20_000 {
            if rng.random_bool(0.55) {
                let at = now + rng.random_range(0..1_000_000u64) * rng.random_range(0..3u64);
                q.push(SimTime(at), seq);
                reference.insert((at, seq));
                seq += 1;
            } else {
                let want = reference.pop_first();
                let got = q.pop().map(|(t, s)| (t.0, s));
                assert_eq!(got, want);
                if let Some((t, _)) = want {
                    now = t;
                }
            }
        }
        assert_eq!(q.len(), reference.len());
    }

    #[test]
    fn time_then_insertion_order() {
        let mut q = EventQueue::new();
        q.push(SimTime(5), "b");
        q.push(SimTime(1), "a");
        q.push(SimTime(5), "c");
        q.push(SimTime(9), "d");
        let out: Vec<_> = std::iter::from_fn(|| q.pop()).map(|(_, e)| e).collect();
        assert_eq!(out, ["a", "b", "c", "d"]);
    }
}
