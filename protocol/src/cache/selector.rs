//! Kubernetes label selectors (the `labelSelector` query parameter) for cache queries.
//!
//! Syntax as in `kubectl -l`: comma-separated requirements, all of which must hold:
//! `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` (exists),
//! `!key` (does not exist). As in Kubernetes, `!=` and `notin` also match objects without the label.
//! The empty selector matches everything.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// A parsed label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// What the label's value must satisfy.
    pub op: SelectorOp,
}

/// The operator of a [`Requirement`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorOp {
    /// `key=value` / `key==value`.
    Equals(String),
    /// `key!=value` (also matches when the label is absent).
    NotEquals(String),
    /// `key in (a,b)`.
    In(BTreeSet<String>),
    /// `key notin (a,b)` (also matches when the label is absent).
    NotIn(BTreeSet<String>),
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
}

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector text.
    pub selector: String,
    /// What is wrong.
    pub reason: String,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 317
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// The requirements, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Parses selector text. Leading and trailing whitespace around tokens is ignored.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let err = |reason: &str| SelectorError {
            selector: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let parts = split_top_level(text).ok_or_else(|| err("unbalanced parentheses"))?;
        let mut requirements = Vec::with_capacity(parts.len());
        for part in parts {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement"));
            }
            let requirement = if let Some(open) = part.find('(') {
                let close = part
                    .rfind(')')
                    .filter(|c| *c == part.len() - 1)
                    .ok_or_else(|| err("expected ')' at the end of a set"))?;
                let head: Vec<&str> = part[..open].split_whitespace().collect();
                let (key, negated) = match head.as_slice() {
                    [key, "in"] => (*key, false),
                    [key, "notin"] => (*key, true),
                    _ => return Err(err("expected `key in (...)` or `key notin (...)`")),
                };
                let mut values = BTreeSet::new();
                for v in part[open + 1..close].split(',') {
                    let v = v.trim();
                    if !valid_value(v) {
                        return Err(err("invalid value in set"));
                    }
                    values.insert(v.to_owned());
                }
                Requirement {
                    key: key.to_owned(),
                    op: if negated {
                        SelectorOp::NotIn(values)
                    } else {
                        SelectorOp::In(values)
                    },
                }
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement {
                    key: k.trim().to_owned(),
                    op: SelectorOp::NotEquals(v.trim().to_owned()),
                }
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement {
                    key: k.trim().to_owned(),
                    op: SelectorOp::Equals(v.trim().to_owned()),
                }
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement {
                    key: k.trim().to_owned(),
                    op: SelectorOp::DoesNotExist,
                }
            } else {
                Requirement {
                    key: part.to_owned(),
                    op: SelectorOp::Exists,
                }
            };
            if !valid_key(&requirement.key) {
                return Err(err("invalid label key"));
            }
            if let SelectorOp::Equals(v) | SelectorOp::NotEquals(v) = &requirement.op
                && !valid_value(v)
            {
                return Err(err("invalid label value"));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether `labels` (an object's `metadata.labels`, or `None` if it has none) satisfies every
    /// requirement.
    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match (&r.op, value) {
                (SelectorOp::Equals(want), Some(v)) => v == want,
                (SelectorOp::Equals(_), None) => false,
                (SelectorOp::NotEquals(want), v) => v != Some(want.as_str()),
                (SelectorOp::In(set), Some(v)) => set.contains(v),
                (SelectorOp::In(_), None) => false,
                (SelectorOp::NotIn(set), v) => v.is_none_or(|v| !set.contains(v)),
                (SelectorOp::Exists, v) => v.is_some(),
                (SelectorOp::DoesNotExist, v) => v.is_none(),
            }
        })
    }

    /// Whether the object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, object: &Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        let labels = object
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        self.matches_labels(labels)
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let set = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
            match &r.op {
                SelectorOp::Equals(v) => write!(f, "{}={v}", r.key)?,
                SelectorOp::NotEquals(v) => write!(f, "{}!={v}", r.key)?,
                SelectorOp::In(s) => write!(f, "{} in ({})", r.key, set(s))?,
                SelectorOp::NotIn(s) => write!(f, "{} notin ({})", r.key, set(s))?,
                SelectorOp::Exists => write!(f, "{}", r.key)?,
                SelectorOp::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    fn sel(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn operators() {
        let web = obj(json!({"app": "web", "tier": "front"}));
        let db = obj(json!({"app": "db"}));
        let none = json!({"metadata": {"name": "y"}});
        let cases = [
            ("", [true, true, true]),
            ("app=web", [true, false, false]),
            ("app==web", [true, false, false]),
            ("app!=web", [false, true, true]),
            ("app in (web, db)", [true, true, false]),
            ("app notin (web)", [false, true, true]),
            ("tier", [true, false, false]),
            ("!tier", [false, true, true]),
            ("app=web,tier=front", [true, false, false]),
            ("app in (db,web),!tier", [false, true, false]),
        ];
        for (s, want) in cases {
            let s2 = sel(s);
            assert_eq!(
                [s2.matches(&web), s2.matches(&db), s2.matches(&none)],
                want,
                "{s:?}"
            );
            // Display round-trips.
            assert_eq!(sel(&s2.to_string()), s2, "{s:?}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "app in (web",
            "app in web)",
            "app between (a)",
            "a,,b",
            "=x",
            "a=b c",
            "a b",
            "in (a)",
            "a in (x y)",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
