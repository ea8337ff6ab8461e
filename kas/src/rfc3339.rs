//! RFC 3339 timestamps (`2024-05-01T12:34:56Z`) for the HTTP API, from `SystemTime`, in UTC.
//!
//! A dozen lines of calendar arithmetic (Howard Hinnant's `civil_from_days`) instead of a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds). Times before 1970 print as the epoch.
pub fn format(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_unix(secs)
}

/// Formats seconds since the Unix epoch.
pub fn format_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_unix(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    proptest::proptest! {
        #[test]
        fn shape_is_always_rfc3339(secs in 0u64..253_402_300_799) {
            let s = format_unix(secs);
            proptest::prop_assert_eq!(s.len(), 20);
            let b = s.as_bytes();
            proptest::prop_assert!(b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[19] == b'Z');
            let month: u32 = s[5..7].parse().unwrap_or(0);
            let day: u32 = s[8..10].parse().unwrap_or(0);
            proptest::prop_assert!((1..=12).contains(&month) && (1..=31).contains(&day));
        }
    }
}
