//! A bounded cache of authentication answers with per-entry lifetimes, keyed by token digest.
//!
//! Keys are [`TokenDigest`]s, never tokens. Entries expire after the TTL given at insertion; when the
//! cache is full the oldest insertion is evicted. Time is passed in (`now: Instant`), so tests control it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::token::TokenDigest;

struct Entry<V> {
    value: V,
    expires: Instant,
    seq: u64,
}

/// A bounded TTL cache keyed by token digest.
pub struct TtlCache<V> {
    max_entries: usize,
    map: HashMap<TokenDigest, Entry<V>>,
    /// Insertion order; entries whose `seq` no longer matches the map are stale and skipped.
    order: VecDeque<(TokenDigest, u64)>,
    next_seq: u64,
}

impl<V: Clone> TtlCache<V> {
    /// An empty cache holding at most `max_entries` entries (0 disables caching).
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// The live value for `key` at `now`, if any. Expired entries are removed.
    pub fn get(&mut self, key: &TokenDigest, now: Instant) -> Option<V> {
        let entry = self.map.get(key)?;
        if now < entry.expires {
            return Some(entry.value.clone());
        }
        self.map.remove(key);
        None
    }

    /// Stores `value` for `ttl` from `now`, replacing any previous value. A zero `ttl` stores nothing
    /// (and removes a previous value).
    pub fn insert(&mut self, key: TokenDigest, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() || self.max_entries == 0 {
            self.map.remove(&key);
            return;
        }
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        if !self.map.contains_key(&key) {
            self.make_room(now);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.map.insert(
            key,
            Entry {
                value,
                expires,
                seq,
            },
        );
        self.order.push_back((key, seq));
        if self.order.len() > self.max_entries.saturating_mul(2).max(16) {
            self.compact();
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &TokenDigest) {
        self.map.remove(key);
    }

    /// Number of entries held (some may have expired but not been removed yet).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Evicts until one more entry fits: expired entries first (if the oldest is expired), else the
    /// oldest insertion.
    fn make_room(&mut self, now: Instant) {
        if self.map.len() < self.max_entries {
            return;
        }
        // Drop expired entries in one pass when full, so live ones are not evicted needlessly.
        self.map.retain(|_, e| now < e.expires);
        // Each iteration pops one element; the deque is finite.
        while self.map.len() >= self.max_entries {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key);
            }
        }
    }

    fn compact(&mut self) {
        let map = &self.map;
        self.order
            .retain(|(k, seq)| map.get(k).is_some_and(|e| e.seq == *seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> TokenDigest {
        TokenDigest::of(&n.to_string())
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(10);
        c.insert(key(1), "a", Duration::from_secs(10), t0);
        c.insert(key(2), "b", Duration::from_secs(1), t0);
        assert_eq!(c.get(&key(1), t0 + Duration::from_secs(5)), Some("a"));
        assert_eq!(c.get(&key(2), t0 + Duration::from_secs(5)), None);
        assert_eq!(c.get(&key(1), t0 + Duration::from_secs(10)), None);
        assert!(c.is_empty());
    }

    #[test]
    fn zero_ttl_or_zero_size_caches_nothing() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(10);
        c.insert(key(1), 1, Duration::ZERO, t0);
        assert_eq!(c.get(&key(1), t0), None);
        let mut c = TtlCache::new(0);
        c.insert(key(1), 1, Duration::from_secs(1), t0);
        assert_eq!(c.get(&key(1), t0), None);
    }

    #[test]
    fn full_cache_evicts_oldest_insertion() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut c = TtlCache::new(2);
        c.insert(key(1), 1, ttl, t0);
        c.insert(key(2), 2, ttl, t0);
        c.insert(key(1), 11, ttl, t0); // refresh: now 2 is the oldest
        c.insert(key(3), 3, ttl, t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&key(2), t0), None);
        assert_eq!(c.get(&key(1), t0), Some(11));
        assert_eq!(c.get(&key(3), t0), Some(3));
    }

    #[test]
    fn full_cache_prefers_evicting_expired_entries() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(2);
        c.insert(key(1), 1, Duration::from_secs(60), t0);
        c.insert(key(2), 2, Duration::from_secs(1), t0);
        c.insert(
            key(3),
            3,
            Duration::from_secs(60),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(c.get(&key(1), t0 + Duration::from_secs(2)), Some(1));
        assert_eq!(c.get(&key(3), t0 + Duration::from_secs(2)), Some(3));
    }

    proptest::proptest! {
        #[test]
        fn size_stays_bounded(ops in proptest::collection::vec((0u32..50, 0u64..5), 0..400), max in 1usize..8) {
            let t0 = Instant::now();
            let mut c = TtlCache::new(max);
            for (i, (k, ttl)) in ops.iter().enumerate() {
                let now = t0 + Duration::from_secs(i as u64);
                c.insert(key(*k), i, Duration::from_secs(*ttl), now);
                proptest::prop_assert!(c.len() <= max);
                proptest::prop_assert!(c.order.len() <= (max * 2).max(16) + 1);
                if *ttl > 0 {
                    proptest::prop_assert_eq!(c.get(&key(*k), now), Some(i));
                }
            }
        }
    }
}
