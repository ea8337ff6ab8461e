//! Timestamps as Kubernetes writes them (RFC 3339, UTC, `Z`) and ages as kubectl prints them.
//!
//! Formatting and parsing by `humantime`; offsets other than `Z` are handled here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch of `t` (0 for times before the epoch).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2024-05-01T12:00:00Z` for Unix seconds `secs` (times before the epoch print as the epoch).
pub fn format_unix(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// RFC 3339 with nanoseconds, as in `kubectl logs --timestamps`.
pub fn format_nanos(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t.max(UNIX_EPOCH)).to_string()
}

/// The current time as a Kubernetes timestamp.
pub fn now_rfc3339() -> String {
    format_unix(unix_seconds(SystemTime::now()))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)` into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let (base, offset) = match s
        .len()
        .checked_sub(6)
        .and_then(|i| Some((s.get(..i)?, s.get(i..)?)))
    {
        Some((base, zone)) if zone.starts_with('+') || zone.starts_with('-') => {
            let b = zone.as_bytes();
            if b[3] != b':' {
                return None;
            }
            let oh: i64 = zone.get(1..3)?.parse().ok()?;
            let om: i64 = zone.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            (base, if b[0] == b'-' { -o } else { o })
        }
        _ => (s.strip_suffix('Z').or_else(|| s.strip_suffix('z'))?, 0),
    };
    let t = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
    let secs = i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    Some(secs - offset)
}

/// A short human duration the way kubectl's AGE column shows it (`45s`, `3m12s`, `5h`, `2d`).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rs = s % 60;
        return if rs == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rs}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rm = m % 60;
        return if rm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rm}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if d < 8 {
        let rh = h % 24;
        return if rh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rh}h")
        };
    }
    if d < 365 * 2 {
        return format!("{d}d");
    }
    format!("{}y", d / 365)
}

/// Age of an object created at `created` (RFC 3339) as of now, or `<unknown>`.
pub fn age(created: Option<&str>) -> String {
    match created.and_then(parse_rfc3339) {
        Some(c) => human_duration(unix_seconds(SystemTime::now()) - c),
        None => "<unknown>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00Z"), Some(1_714_564_800));
        assert_eq!(
            parse_rfc3339("2024-05-01T14:00:00.123+02:00"),
            Some(1_714_564_800)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2024-13-01T12:00:00Z"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(130), "2m10s");
        assert_eq!(human_duration(3600 * 3 + 60), "3h1m");
        assert_eq!(human_duration(86_400 * 3), "3d");
    }

    proptest! {
        #[test]
        fn roundtrip(secs in 0i64..10_000_000_000) {
            prop_assert_eq!(parse_rfc3339(&format_unix(secs)), Some(secs));
        }
    }
}
