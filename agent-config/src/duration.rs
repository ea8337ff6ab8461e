//! Durations as GitLab's configuration writes them (protobuf JSON): seconds with an `s` suffix and up
//! to nine fractional digits, e.g. `3600s`, `1.5s`.

use std::time::Duration;

/// Parses `3600s` / `0.25s`. Negative durations are refused.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{s}` is not a duration: write seconds with an `s` suffix, like `3600s` or `1.5s`")
    };
    let body = s.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || whole.len() > 12 {
        return Err(bad());
    }
    if frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (body.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let secs: u64 = whole.parse().map_err(|_| bad())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration the way [`parse`] reads it (`3600s`, `1.5s`).
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        let frac = format!("{:09}", d.subsec_nanos());
        format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
    }
}

/// serde for a [`Duration`] written as `3600s`.
pub mod serde_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises as `3600s`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    /// Reads `3600s`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// serde for an optional [`Duration`] written as `3600s`.
pub mod serde_opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises as `3600s` or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads `3600s` or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (text, d) in [
            ("3600s", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.000000001s", Duration::from_nanos(1)),
        ] {
            assert_eq!(parse(text), Ok(d));
            assert_eq!(format(d), text);
        }
        for bad in [
            "",
            "s",
            "10",
            "1h",
            "-1s",
            "1.s",
            ".5s",
            "1.0000000001s",
            "1e3s",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
