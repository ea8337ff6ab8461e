//! Exact decimal numbers for view metrics.
//!
//! View aggregates are maintained incrementally: a change subtracts the old object's contribution and
//! adds the new one. With floating point that drifts, and the incremental value would stop matching a
//! from-scratch recomputation. [`Decimal`] is therefore fixed point: an `i128` count of nano-units
//! (10⁻⁹), so addition and subtraction are exact. Inputs are JSON numbers, numeric strings and
//! Kubernetes quantities (`"500m"`, `"2Gi"`, `"1e3"`); digits beyond the ninth decimal are truncated.
//!
//! Arithmetic saturates at the `i128` range (about 1.7·10²⁰ units): far beyond any real cluster, and it
//! keeps a hostile object from causing a panic.

use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::Value;

/// Nano-units per unit.
const SCALE: i128 = 1_000_000_000;

/// A fixed-point decimal with nine fractional digits (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decimal {
    nanos: i128,
}

impl Decimal {
    /// Zero.
    pub const ZERO: Decimal = Decimal { nanos: 0 };
    /// One.
    pub const ONE: Decimal = Decimal { nanos: SCALE };

    /// A whole number.
    pub fn from_int(units: i64) -> Self {
        Decimal {
            nanos: i128::from(units) * SCALE,
        }
    }

    /// A value given in nano-units.
    pub fn from_nanos(nanos: i128) -> Self {
        Decimal { nanos }
    }

    /// The value in nano-units.
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// Whether the value has no fractional part.
    pub fn is_whole(self) -> bool {
        self.nanos % SCALE == 0
    }

    /// Sum, saturating at the `i128` range.
    #[must_use]
    pub fn saturating_add(self, other: Decimal) -> Decimal {
        Decimal {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }

    /// Difference, saturating at the `i128` range.
    #[must_use]
    pub fn saturating_sub(self, other: Decimal) -> Decimal {
        Decimal {
            nanos: self.nanos.saturating_sub(other.nanos),
        }
    }

    /// Splits into whole units and nano-units (both with the sign of the value), as carried on the
    /// wire. Values whose whole part does not fit an `i64` saturate.
    pub fn to_parts(self) -> (i64, i32) {
        let units = self.nanos / SCALE;
        let nanos = self.nanos % SCALE;
        let units = i64::try_from(units).unwrap_or(if units < 0 { i64::MIN } else { i64::MAX });
        // |nanos| < 10^9 < i32::MAX, so this conversion cannot fail.
        let nanos = i32::try_from(nanos).unwrap_or(0);
        (units, nanos)
    }

    /// Inverse of [`Decimal::to_parts`]; `None` if `nanos` is outside `-999_999_999..=999_999_999`.
    pub fn from_parts(units: i64, nanos: i32) -> Option<Decimal> {
        if i128::from(nanos).abs() >= SCALE {
            return None;
        }
        Some(Decimal {
            nanos: i128::from(units) * SCALE + i128::from(nanos),
        })
    }

    /// Reads a number out of a JSON value: numbers, and strings holding a decimal number or a
    /// Kubernetes quantity. Anything else (including booleans and null) is `None`.
    pub fn from_json(value: &Value) -> Option<Decimal> {
        match value {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Some(Decimal::from_int(i))
                } else if let Some(u) = n.as_u64() {
                    Some(Decimal {
                        nanos: i128::from(u) * SCALE,
                    })
                } else {
                    Decimal::parse(&n.to_string())
                }
            }
            Value::String(s) => Decimal::parse(s),
            _ => None,
        }
    }

    /// Parses a decimal number or a Kubernetes quantity: an optional sign, digits with an optional
    /// fraction, then an optional suffix — binary (`Ki` `Mi` `Gi` `Ti` `Pi` `Ei`), decimal SI (`n` `u`
    /// `m` `k` `M` `G` `T` `P` `E`) or an exponent (`e3`, `E-2`). `None` if malformed or out of range.
    pub fn parse(text: &str) -> Option<Decimal> {
        let bytes = text.as_bytes();
        let mut i = 0;
        let negative = match bytes.first() {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let mut mantissa: i128 = 0;
        let mut digits = 0usize;
        let mut fraction_digits: i32 = 0;
        let mut seen_point = false;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'0'..=b'9' => {
                    // Digits beyond what i128 can hold would overflow; quantities never need them.
                    mantissa = mantissa
                        .checked_mul(10)?
                        .checked_add(i128::from(b - b'0'))?;
                    digits += 1;
                    if seen_point {
                        fraction_digits += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                _ => break,
            }
            i += 1;
        }
        if digits == 0 {
            return None;
        }
        let suffix = text.get(i..)?;
        let (binary_shift, exponent): (u32, i32) = match suffix {
            "" => (0, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            "Ki" => (10, 0),
            "Mi" => (20, 0),
            "Gi" => (30, 0),
            "Ti" => (40, 0),
            "Pi" => (50, 0),
            "Ei" => (60, 0),
            s if s.starts_with(['e', 'E']) => {
                let e: i32 = s.get(1..)?.parse().ok()?;
                if !(-60..=60).contains(&e) {
                    return None;
                }
                (0, e)
            }
            _ => return None,
        };
        let mut nanos = mantissa.checked_mul(1i128.checked_shl(binary_shift)?)?;
        let scale = 9 - fraction_digits + exponent;
        if scale >= 0 {
            nanos = nanos.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?;
        } else {
            let divisor = u32::try_from(-scale)
                .ok()
                .and_then(|s| 10i128.checked_pow(s));
            nanos = match divisor {
                Some(d) => nanos / d,
                None => 0,
            };
        }
        Some(Decimal {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// The value as an `f64` (lossy for very large or very precise values).
    pub fn to_f64(self) -> f64 {
        // i128 -> f64 rounds; fine for display.
        (self.nanos as f64) / (SCALE as f64)
    }
}

impl fmt::Display for Decimal {
    /// Exact decimal notation without trailing fractional zeros: `3`, `-0.5`, `0.000000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let whole = abs / SCALE.unsigned_abs();
        let frac = abs % SCALE.unsigned_abs();
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let digits = format!("{frac:09}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl Serialize for Decimal {
    /// Whole values that fit an `i64` serialise as JSON integers, everything else as a JSON float.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_whole()
            && let Ok(units) = i64::try_from(self.nanos / SCALE)
        {
            return serializer.serialize_i64(units);
        }
        serializer.serialize_f64(self.to_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Option<String> {
        Decimal::parse(s).map(|d| d.to_string())
    }

    #[test]
    fn parses_numbers_and_quantities() {
        assert_eq!(d("3").as_deref(), Some("3"));
        assert_eq!(d("-2.50").as_deref(), Some("-2.5"));
        assert_eq!(d("500m").as_deref(), Some("0.5"));
        assert_eq!(d("1Ki").as_deref(), Some("1024"));
        assert_eq!(d("1.5Gi").as_deref(), Some("1610612736"));
        assert_eq!(d("2k").as_deref(), Some("2000"));
        assert_eq!(d("1e3").as_deref(), Some("1000"));
        assert_eq!(d("1E-3").as_deref(), Some("0.001"));
        assert_eq!(d("1E").as_deref(), Some("1000000000000000000"));
        assert_eq!(d("7n").as_deref(), Some("0.000000007"));
        assert_eq!(d("1.0000000001").as_deref(), Some("1"));
        assert_eq!(d(".5").as_deref(), Some("0.5"));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "", "-", "abc", "1x", "1..2", "1Qi", "1e", "1e999", "Ki", "1 ",
        ] {
            assert_eq!(Decimal::parse(s), None, "{s:?}");
        }
        // 1e60 Ei overflows i128 nanos and must be rejected, not wrap.
        assert_eq!(Decimal::parse("99999999999999999999999Ei"), None);
    }

    #[test]
    fn json_inputs() {
        assert_eq!(
            Decimal::from_json(&serde_json::json!(4)),
            Some(Decimal::from_int(4))
        );
        assert_eq!(
            Decimal::from_json(&serde_json::json!(0.25)).map(|d| d.to_string()),
            Some("0.25".into())
        );
        assert_eq!(
            Decimal::from_json(&serde_json::json!(u64::MAX)).map(|d| d.to_string()),
            Some(u64::MAX.to_string())
        );
        assert_eq!(
            Decimal::from_json(&serde_json::json!("250m")).map(|d| d.to_string()),
            Some("0.25".into())
        );
        assert_eq!(Decimal::from_json(&serde_json::json!(true)), None);
        assert_eq!(Decimal::from_json(&Value::Null), None);
    }

    #[test]
    fn serialises_whole_as_integer() {
        assert_eq!(
            serde_json::to_string(&Decimal::from_int(-7)).ok(),
            Some("-7".into())
        );
        assert_eq!(
            serde_json::to_string(&Decimal::parse("1.5").unwrap_or_default()).ok(),
            Some("1.5".into())
        );
    }

    proptest! {
        #[test]
        fn parts_round_trip(units in any::<i64>(), nanos in -999_999_999i32..=999_999_999) {
            // Mixed signs are not produced by to_parts, but from_parts must still be exact.
            let v = Decimal::from_parts(units, nanos);
            prop_assert!(v.is_some());
            let v = v.unwrap_or_default();
            let (u2, n2) = v.to_parts();
            prop_assert_eq!(Decimal::from_parts(u2, n2), Some(v));
        }

        #[test]
        fn display_parse_round_trip(n in any::<i64>(), frac in 0i128..1_000_000_000) {
            let v = Decimal::from_nanos(i128::from(n) * SCALE + if n < 0 { -frac } else { frac });
            prop_assert_eq!(Decimal::parse(&v.to_string()), Some(v));
        }

        #[test]
        fn add_sub_inverse(a in any::<i64>(), b in any::<i64>()) {
            let a = Decimal::from_nanos(i128::from(a));
            let b = Decimal::from_nanos(i128::from(b));
            prop_assert_eq!(a.saturating_add(b).saturating_sub(b), a);
        }
    }
}
