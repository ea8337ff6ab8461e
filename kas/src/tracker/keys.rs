//! The Redis key layout of the tracker, and how its values are written (pure; see docs/replicas.md).
//!
//! | key | type | content |
//! |---|---|---|
//! | `<prefix>:tunnel_tracker2:kas_by_agent_id:<agent id>` | hash | field `<replica id>` → `<expires ms> <private API URL>` |
//! | `<prefix>:tunnel_tracker2:replicas` | hash | field `<replica id>` → `<expires ms> <connections> <private API URL>` |
//! | `<prefix>:rate_limit:<limit>:<source>:<credential sha256>:<window number>` | string | failed attempts in that fixed window (`INCR`, expires after two windows) |
//!
//! Every value carries its own expiry (Unix milliseconds): Redis 7.0 has no per-field TTL, and a
//! crashed replica's field must stop counting at once when it expires, not when the whole hash does.
//! The hash keys also get a Redis TTL (refreshed with the fields), so a key nobody refreshes vanishes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::routing::ReplicaId;

/// The key of an agent's holders.
pub fn agent_key(prefix: &str, agent_id: u64) -> String {
    format!("{prefix}:tunnel_tracker2:kas_by_agent_id:{agent_id}")
}

/// The pattern matching every agent's holders key (for `SCAN`).
pub fn agent_key_pattern(prefix: &str) -> String {
    format!("{prefix}:tunnel_tracker2:kas_by_agent_id:*")
}

/// The agent id of a key [`agent_key`] made.
pub fn agent_of_key(prefix: &str, key: &str) -> Option<u64> {
    key.strip_prefix(prefix)?
        .strip_prefix(":tunnel_tracker2:kas_by_agent_id:")?
        .parse()
        .ok()
}

/// The key of the replicas' directory (URL and load of each).
pub fn replicas_key(prefix: &str) -> String {
    format!("{prefix}:tunnel_tracker2:replicas")
}

/// The failure counter of one (source, credential digest) pair under a rate limit, in fixed window
/// number `window` (Unix ms / window length).
pub fn rate_limit_key(prefix: &str, limit: &str, pair: &str, window: u64) -> String {
    format!("{prefix}:rate_limit:{limit}:{pair}:{window}")
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A holder's entry: `<expires ms> <url>`.
pub fn holder_value(expires: SystemTime, url: &str) -> String {
    format!("{} {url}", unix_ms(expires))
}

/// A replica's directory entry: `<expires ms> <connections> <url>`.
pub fn replica_value(expires: SystemTime, load: u64, url: &str) -> String {
    format!("{} {load} {url}", unix_ms(expires))
}

/// One live entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The replica.
    pub replica: ReplicaId,
    /// Its private API URL.
    pub url: String,
    /// When the entry stops counting.
    pub expires: SystemTime,
    /// Its connections (directory entries only; 0 for holders).
    pub load: u64,
}

/// Parses a field (`replica id`) and a value; `None` for garbage (never trusted, never panics).
pub fn parse_entry(field: &str, value: &str, with_load: bool) -> Option<Entry> {
    let replica = ReplicaId(field.parse().ok()?);
    let mut parts = value.splitn(if with_load { 3 } else { 2 }, ' ');
    let expires_ms: u64 = parts.next()?.parse().ok()?;
    let load = if with_load {
        parts.next()?.parse().ok()?
    } else {
        0
    };
    let url = parts.next()?.to_owned();
    if !url.starts_with("https://") {
        return None;
    }
    Some(Entry {
        replica,
        url,
        expires: UNIX_EPOCH + Duration::from_millis(expires_ms),
        load,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_refused() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let v = holder_value(at, "https://10.0.0.1:8155");
        let e = parse_entry("3", &v, false).unwrap();
        assert_eq!(e.replica, ReplicaId(3));
        assert_eq!(e.expires, at);
        assert_eq!(e.url, "https://10.0.0.1:8155");
        let v = replica_value(at, 42, "https://h:1");
        assert_eq!(parse_entry("1", &v, true).unwrap().load, 42);
        for (f, v) in [
            ("x", "1 https://a"),
            ("1", "nope https://a"),
            ("1", "1"),
            ("1", "1 http://plain"),
            ("-1", "1 https://a"),
        ] {
            assert_eq!(parse_entry(f, v, false), None, "{f} {v}");
        }
        assert_eq!(agent_of_key("kas", &agent_key("kas", 77)), Some(77));
        assert_eq!(agent_of_key("kas", "kas:other:1"), None);
    }
}
