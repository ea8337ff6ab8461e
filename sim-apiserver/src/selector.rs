//! Label and field selectors: parsing the query-string syntax and matching objects.
//!
//! Label selectors support `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists)
//! and `!k` (does not exist), comma separated (all must hold). Field selectors support `f=v`,
//! `f==v` and `f!=v` over `metadata.name`, `metadata.namespace` and a few per-kind fields, as the
//! real API server does; unknown fields are rejected.

use serde_json::Value;

use super::resource::ResourceType;

/// A selector string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && k.matches('/').count() <= 1
        && !k.ends_with('/')
        && !k.starts_with('/')
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| SelectorError(format!("unbalanced ')' in selector {s:?}")))?;
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!("unbalanced '(' in selector {s:?}")));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_set(term: &str, rest: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("expected a parenthesised set in {term:?}")))?;
    let mut values = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_value(v) {
            return Err(SelectorError(format!(
                "invalid label value {v:?} in {term:?}"
            )));
        }
        values.push(v.to_string());
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses a label selector (`app=web,tier!=db,env in (a,b),!legacy`).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for term in split_terms(s)? {
            let t = term.trim();
            if t.is_empty() {
                return Err(SelectorError(format!("empty term in label selector {s:?}")));
            }
            let req = if let Some(k) = t.strip_prefix('!') {
                let k = k.trim();
                if !valid_key(k) {
                    return Err(SelectorError(format!("invalid label key {k:?}")));
                }
                LabelRequirement::DoesNotExist(k.to_string())
            } else if let Some((k, v)) = t.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = t.split_once("==") {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = t.split_once('=') {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some(idx) = find_word(t, "notin") {
                LabelRequirement::NotIn(t[..idx].trim().to_string(), parse_set(t, &t[idx + 5..])?)
            } else if let Some(idx) = find_word(t, "in") {
                LabelRequirement::In(t[..idx].trim().to_string(), parse_set(t, &t[idx + 2..])?)
            } else {
                LabelRequirement::Exists(t.to_string())
            };
            let (key, value) = match &req {
                LabelRequirement::Equals(k, v) | LabelRequirement::NotEquals(k, v) => {
                    (k.as_str(), Some(v.as_str()))
                }
                LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::DoesNotExist(k) => (k.as_str(), None),
            };
            if !valid_key(key) {
                return Err(SelectorError(format!(
                    "invalid label key {key:?} in selector {s:?}"
                )));
            }
            if let Some(v) = value
                && !valid_value(v)
            {
                return Err(SelectorError(format!(
                    "invalid label value {v:?} in selector {s:?}"
                )));
            }
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// Whether the selector is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with these labels matches.
    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
        })
    }

    /// Whether `obj`'s `metadata.labels` match.
    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_labels(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

/// Position of `word` in `t` as a whitespace-delimited operator followed by `(` or space.
fn find_word(t: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = t[from..].find(word) {
        let idx = from + pos;
        let before_ok = idx > 0 && t[..idx].ends_with(char::is_whitespace);
        let after = &t[idx + word.len()..];
        let after_ok = after.starts_with(char::is_whitespace) || after.starts_with('(');
        if before_ok && after_ok {
            return Some(idx);
        }
        from = idx + word.len();
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    value: String,
    negate: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// Fields beyond `metadata.name`/`metadata.namespace` that each kind supports.
fn extra_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses a field selector for objects of `resource`.
    pub fn parse(s: &str, resource: &ResourceType) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for term in s.split(',') {
            let t = term.trim();
            let (field, value, negate) = if let Some((f, v)) = t.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = t.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = t.split_once('=') {
                (f, v, false)
            } else {
                return Err(SelectorError(format!(
                    "invalid field selector term {t:?}: expected field=value or field!=value"
                )));
            };
            let field = field.trim();
            let supported = matches!(field, "metadata.name" | "metadata.namespace")
                || extra_fields(&resource.kind).contains(&field);
            if !supported {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                value: value.trim().to_string(),
                negate,
            });
        }
        Ok(Self { requirements })
    }

    /// Whether the selector is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The name this selector pins with `metadata.name=NAME`, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == "metadata.name" && !r.negate)
            .map(|r| r.value.as_str())
    }

    /// Whether `obj` matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(obj, &r.field);
            (actual == r.value) != r.negate
        })
    }
}

/// The string value of a dotted field path, "" when missing (as the real server does).
fn field_value(obj: &Value, field: &str) -> String {
    let mut cur = obj;
    for part in field.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Label and field selector together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether `obj` matches both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::known;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "p1", "namespace": "default", "labels": labels},
               "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}})
    }

    fn m(sel: &str, labels: Value) -> bool {
        LabelSelector::parse(sel)
            .unwrap_or_else(|e| panic!("{sel}: {e}"))
            .matches(&obj(labels))
    }

    #[test]
    fn label_operators() {
        let l = json!({"app": "web", "tier": "front", "example.com/team": "a"});
        assert!(m("", l.clone()));
        assert!(m("app=web", l.clone()));
        assert!(m("app==web", l.clone()));
        assert!(!m("app=api", l.clone()));
        assert!(m("app!=api", l.clone()));
        assert!(m("missing!=x", l.clone()));
        assert!(!m("app!=web", l.clone()));
        assert!(m("app in (api, web)", l.clone()));
        assert!(!m("app in (api,db)", l.clone()));
        assert!(m("app notin (api,db)", l.clone()));
        assert!(m("missing notin (api)", l.clone()));
        assert!(!m("app notin (web)", l.clone()));
        assert!(m("tier", l.clone()));
        assert!(!m("missing", l.clone()));
        assert!(m("!missing", l.clone()));
        assert!(!m("!tier", l.clone()));
        assert!(m("example.com/team=a,app in (web),!missing", l.clone()));
        assert!(!m("example.com/team=a,app in (web),!tier", l.clone()));
        assert!(m("app=web", json!({"app": "web"})));
        assert!(!m("app", json!(null)));
        assert!(m("!app", json!(null)));
    }

    #[test]
    fn label_parse_errors() {
        for bad in [
            "app in web",
            "app in (a",
            "=x",
            "a b=c",
            "app=we b",
            ",",
            "app=web,",
        ] {
            assert!(
                LabelSelector::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn field_selectors() {
        let pod = known::pod();
        let o = obj(json!({}));
        let f = |s: &str| FieldSelector::parse(s, &pod).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(f("").matches(&o));
        assert!(f("metadata.name=p1").matches(&o));
        assert!(f("metadata.name==p1,metadata.namespace=default").matches(&o));
        assert!(!f("metadata.name=p2").matches(&o));
        assert!(f("metadata.name!=p2").matches(&o));
        assert!(f("spec.nodeName=node-1,status.phase!=Pending").matches(&o));
        assert!(!f("status.phase=Pending").matches(&o));
        assert_eq!(f("metadata.name=p1").pinned_name(), Some("p1"));
        assert!(FieldSelector::parse("spec.bogus=1", &pod).is_err());
        assert!(FieldSelector::parse("spec.nodeName=x", &known::configmap()).is_err());
        assert!(FieldSelector::parse("metadata.name", &pod).is_err());
    }

    proptest! {
        #[test]
        fn equality_selector_matches_iff_label_equal(
            k in "[a-z]{1,8}", v in "[a-z0-9]{0,8}", actual in proptest::option::of("[a-z0-9]{0,8}")
        ) {
            let labels = match &actual { Some(a) => json!({ k.clone(): a }), None => json!({}) };
            let eq = LabelSelector::parse(&format!("{k}={v}")).map_err(|e| TestCaseError::fail(e.0))?;
            let ne = LabelSelector::parse(&format!("{k}!={v}")).map_err(|e| TestCaseError::fail(e.0))?;
            let o = obj(labels);
            prop_assert_eq!(eq.matches(&o), actual.as_deref() == Some(v.as_str()));
            prop_assert_eq!(ne.matches(&o), !eq.matches(&o));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = LabelSelector::parse(&s);
            let _ = FieldSelector::parse(&s, &known::pod());
        }
    }
}
