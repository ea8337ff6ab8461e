//! Field paths: how a view spec points into a Kubernetes object.
//!
//! Grammar (a small subset of JSONPath / kubectl's field paths):
//!
//! ```text
//! path     := '@kind' | '@gvk' | step ( '.' field | '[' bracket ']' )*
//! step     := field | '[' bracket ']'
//! field    := one or more characters other than '.', '[', ']'
//! bracket  := digits                      array index:            spec.containers[0].image
//!           | '"' chars '"'               quoted key:             metadata.labels["app.kubernetes.io/name"]
//!           | field '=' value             first array element whose field equals value:
//!                                                                 status.conditions[type=Ready].status
//! ```
//!
//! `@kind` is the object's kind name (`Pod`) and `@gvk` its full kind (`apps/v1/Deployment`), taken
//! from the store rather than the object, since list items may lack them. Quoted keys and selector
//! values cannot contain `"` or `]`.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::object::ResourceKind;

/// A parsed field path (see the module documentation for the grammar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    root: Root,
    steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Root {
    Object,
    KindName,
    FullKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(usize),
    Select { field: String, value: String },
}

/// A path that does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path {path:?}: {reason}")]
pub struct PathError {
    /// The offending path.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// What a path found: a JSON value inside the object, or a string derived from the key.
#[derive(Clone, Debug, PartialEq)]
pub enum PathValue<'a> {
    /// A value inside the object.
    Json(&'a Value),
    /// `@kind` / `@gvk`.
    Str(Cow<'a, str>),
}

impl<'a> PathValue<'a> {
    /// The value as a string for grouping and comparison: strings as they are, numbers and booleans
    /// in JSON notation, arrays and objects as compact JSON; `None` for JSON `null`.
    pub fn as_text(&self) -> Option<Cow<'a, str>> {
        match self {
            PathValue::Str(s) => Some(s.clone()),
            PathValue::Json(Value::Null) => None,
            PathValue::Json(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
            PathValue::Json(Value::Bool(b)) => {
                Some(Cow::Borrowed(if *b { "true" } else { "false" }))
            }
            PathValue::Json(Value::Number(n)) => Some(Cow::Owned(n.to_string())),
            PathValue::Json(v) => Some(Cow::Owned(v.to_string())),
        }
    }
}

impl FieldPath {
    /// Parses a path.
    pub fn parse(text: &str) -> Result<FieldPath, PathError> {
        let err = |reason| PathError {
            path: text.to_owned(),
            reason,
        };
        match text {
            "@kind" => {
                return Ok(FieldPath {
                    text: text.to_owned(),
                    root: Root::KindName,
                    steps: Vec::new(),
                });
            }
            "@gvk" => {
                return Ok(FieldPath {
                    text: text.to_owned(),
                    root: Root::FullKind,
                    steps: Vec::new(),
                });
            }
            _ if text.starts_with('@') => return Err(err("only @kind and @gvk are known")),
            "" => return Err(err("empty path")),
            _ => {}
        }
        let mut steps = Vec::new();
        let mut rest = text;
        let mut first = true;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| err("unclosed '['"))?;
                let inner = &after[..end];
                steps.push(parse_bracket(inner).ok_or_else(|| err("bad bracket expression"))?);
                rest = &after[end + 1..];
            } else {
                let field_text = if first {
                    rest
                } else {
                    rest.strip_prefix('.')
                        .ok_or_else(|| err("expected '.' or '[' after a step"))?
                };
                let end = field_text.find(['.', '[', ']']).unwrap_or(field_text.len());
                if end == 0 {
                    return Err(err("empty field name"));
                }
                steps.push(Step::Field(field_text[..end].to_owned()));
                rest = &field_text[end..];
            }
            first = false;
        }
        Ok(FieldPath {
            text: text.to_owned(),
            root: Root::Object,
            steps,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A short default label: the last field name (`status.phase` → `phase`; `@kind` → `kind`).
    pub fn label(&self) -> String {
        match self.root {
            Root::KindName => "kind".into(),
            Root::FullKind => "gvk".into(),
            Root::Object => self
                .steps
                .iter()
                .rev()
                .find_map(|s| match s {
                    Step::Field(f) => Some(f.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| self.text.clone()),
        }
    }

    /// Evaluates the path; `None` when any step is missing.
    pub fn eval<'a>(&self, kind: &'a ResourceKind, object: &'a Value) -> Option<PathValue<'a>> {
        match self.root {
            Root::KindName => return Some(PathValue::Str(Cow::Borrowed(kind.kind.as_str()))),
            Root::FullKind => return Some(PathValue::Str(Cow::Owned(kind.to_string()))),
            Root::Object => {}
        }
        let mut cur = object;
        for step in &self.steps {
            cur = match step {
                Step::Field(f) => cur.get(f.as_str())?,
                Step::Index(i) => cur.get(*i)?,
                Step::Select { field, value } => cur.as_array()?.iter().find(|item| {
                    item.get(field.as_str())
                        .and_then(|v| PathValue::Json(v).as_text())
                        .is_some_and(|t| t == value.as_str())
                })?,
            };
        }
        Some(PathValue::Json(cur))
    }

    /// Evaluates the path to text ([`PathValue::as_text`]).
    pub fn eval_text<'a>(&self, kind: &'a ResourceKind, object: &'a Value) -> Option<Cow<'a, str>> {
        self.eval(kind, object).and_then(|v| v.as_text())
    }
}

fn parse_bracket(inner: &str) -> Option<Step> {
    if let Some(quoted) = inner.strip_prefix('"') {
        let key = quoted.strip_suffix('"')?;
        if key.contains('"') {
            return None;
        }
        return Some(Step::Field(key.to_owned()));
    }
    if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
        return inner.parse().ok().map(Step::Index);
    }
    let (field, value) = inner.split_once('=')?;
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if field.is_empty() || field.contains(['"', '.', '[']) || value.contains('"') {
        return None;
    }
    Some(Step::Select {
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for FieldPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldPath::parse(s)
    }
}

impl Serialize for FieldPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        FieldPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({
            "metadata": {"name": "n1", "labels": {"app.kubernetes.io/name": "x", "zone": "a"}},
            "spec": {"containers": [{"image": "i0"}, {"image": "i1"}]},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True"}
            ], "capacity": {"pods": 110}, "flag": true, "nothing": null}
        })
    }

    fn text(path: &str) -> Option<String> {
        let p = FieldPath::parse(path).ok()?;
        let k = ResourceKind::node();
        let obj = node();
        p.eval_text(&k, &obj).map(|c| c.into_owned())
    }

    #[test]
    fn evaluates() {
        assert_eq!(text("metadata.name").as_deref(), Some("n1"));
        assert_eq!(
            text("status.conditions[type=Ready].status").as_deref(),
            Some("True")
        );
        assert_eq!(
            text("status.conditions[type=\"Ready\"].status").as_deref(),
            Some("True")
        );
        assert_eq!(text("status.conditions[type=Disk].status"), None);
        assert_eq!(
            text("metadata.labels[\"app.kubernetes.io/name\"]").as_deref(),
            Some("x")
        );
        assert_eq!(text("spec.containers[1].image").as_deref(), Some("i1"));
        assert_eq!(text("spec.containers[2].image"), None);
        assert_eq!(text("status.capacity.pods").as_deref(), Some("110"));
        assert_eq!(text("status.flag").as_deref(), Some("true"));
        assert_eq!(text("status.nothing"), None);
        assert_eq!(text("@kind").as_deref(), Some("Node"));
        assert_eq!(text("@gvk").as_deref(), Some("v1/Node"));
        assert_eq!(text("[\"metadata\"].name").as_deref(), Some("n1"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", ".a", "a.", "a..b", "a[", "a[]", "a[=x]", "a]", "@other", "a[\"x]", "a.b[0]c",
        ] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels() {
        let l = |p: &str| FieldPath::parse(p).map(|p| p.label()).ok();
        assert_eq!(l("status.phase").as_deref(), Some("phase"));
        assert_eq!(
            l("status.conditions[type=Ready].status").as_deref(),
            Some("status")
        );
        assert_eq!(l("@kind").as_deref(), Some("kind"));
    }
}
