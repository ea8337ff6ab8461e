//! Field paths and field sets, as server-side apply tracks ownership with them, and their wire
//! form `FieldsV1` (the `fieldsV1` of each `metadata.managedFields` entry).
//!
//! A path is a list of [`PathElement`]s: a field name (`f:spec`), the key fields of an item of an
//! associative list (`k:{"name":"nginx"}`), a member of a set-like list (`v:"finalizer"`) or a
//! list index (`i:0`). A [`Set`] is a trie of paths in which any node may itself be a member. In
//! `FieldsV1` a member without children is `{}` and a member with children carries `".": {}`
//! next to them — the format the real server writes and kubectl's `csaupgrade` and the `kube`
//! crate read back. Paths print as Kubernetes prints them in conflict messages:
//! `.spec.template.spec.containers[name="nginx"].image`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of an object (`f:name`).
    Field(String),
    /// An associative-list item, named by its key fields: a canonical JSON object with the
    /// keys sorted (`k:{"containerPort":80,"protocol":"TCP"}`).
    Key(String),
    /// A member of a set-like list, as canonical JSON (`v:"a"`).
    Value(String),
    /// A list index (`i:3`); never produced here, accepted when reading `FieldsV1`.
    Index(usize),
}

/// A field path.
pub type Path = Vec<PathElement>;

/// Canonical JSON of a scalar or object: object keys sorted, whatever `serde_json`'s map order.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = String::from("{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                out.push_str(&canonical_json(&m[k]));
            }
            out.push('}');
            out
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

impl PathElement {
    /// The key element for the key fields `fields` (name, value) of a list item.
    pub fn key(fields: &[(String, Value)]) -> Self {
        let m: Map<String, Value> = fields.iter().cloned().collect();
        Self::Key(canonical_json(&Value::Object(m)))
    }

    /// The element of a set member.
    pub fn value(v: &Value) -> Self {
        Self::Value(canonical_json(v))
    }

    /// The `FieldsV1` key of this element (`f:spec`, `k:{...}`, `v:...`, `i:0`).
    pub fn serialize(&self) -> String {
        match self {
            Self::Field(f) => format!("f:{f}"),
            Self::Key(k) => format!("k:{k}"),
            Self::Value(v) => format!("v:{v}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `FieldsV1` key.
    pub fn deserialize(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid managed fields path element {s:?}: {why}");
        let (kind, rest) = s.split_once(':').ok_or_else(|| bad("missing colon"))?;
        match kind {
            "f" => Ok(Self::Field(rest.to_string())),
            "k" => {
                let v: Value = serde_json::from_str(rest).map_err(|e| bad(&e.to_string()))?;
                if !v.is_object() {
                    return Err(bad("the key is not a JSON object"));
                }
                Ok(Self::Key(canonical_json(&v)))
            }
            "v" => {
                let v: Value = serde_json::from_str(rest).map_err(|e| bad(&e.to_string()))?;
                Ok(Self::Value(canonical_json(&v)))
            }
            "i" => rest
                .parse()
                .map(Self::Index)
                .map_err(|_| bad("not an index")),
            _ => Err(bad("unknown element type")),
        }
    }
}

/// How Go's `%v`/`%q` show a JSON value in a path (`"nginx"`, `80`, `true`).
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", go_value(v)))
            .collect::<Vec<_>>()
            .join(""),
        Value::Array(a) => format!("[{}]", a.iter().map(go_value).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

impl std::fmt::Display for PathElement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Field(name) => write!(f, ".{name}"),
            Self::Key(k) => {
                let fields: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(n, v)| format!("{n}={}", go_value(v)))
                    .collect();
                write!(f, "[{}]", parts.join(","))
            }
            Self::Value(v) => {
                let v: Value = serde_json::from_str(v).unwrap_or(Value::Null);
                write!(f, "[={}]", go_value(&v))
            }
            Self::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path as Kubernetes prints it: `.spec.replicas`, `.spec.containers[name="app"].image`.
pub fn path_string(path: &[PathElement]) -> String {
    let mut s = String::new();
    for pe in path {
        let _ = write!(s, "{pe}");
    }
    s
}

/// A set of field paths (a trie whose nodes may be members).
///
/// Invariant: no child set is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, Set>,
}

impl Set {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the set has no paths.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds `path` (the empty path is not a member of anything and is ignored).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [pe] => {
                self.members.insert(pe.clone());
            }
            [pe, rest @ ..] => self.children.entry(pe.clone()).or_default().insert(rest),
        }
    }

    /// Whether `path` is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [pe] => self.members.contains(pe),
            [pe, rest @ ..] => self.children.get(pe).is_some_and(|c| c.has(rest)),
        }
    }

    /// The members directly below this node.
    pub fn members(&self) -> impl Iterator<Item = &PathElement> {
        self.members.iter()
    }

    /// The child sets below this node.
    pub fn children(&self) -> impl Iterator<Item = (&PathElement, &Set)> {
        self.children.iter()
    }

    /// The paths under `pe` (relative to it).
    pub fn with_prefix(&self, pe: &PathElement) -> Option<&Set> {
        self.children.get(pe)
    }

    /// Paths in either set.
    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (pe, c) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    /// Paths in both sets.
    pub fn intersection(&self, other: &Set) -> Set {
        let members = self.members.intersection(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(pe, c)| {
                let i = c.intersection(other.children.get(pe)?);
                (!i.is_empty()).then(|| (pe.clone(), i))
            })
            .collect();
        Set { members, children }
    }

    /// Paths in `self` that are not in `other` (exact paths: a member of `other` does not remove
    /// the paths below it).
    pub fn difference(&self, other: &Set) -> Set {
        let members = self.members.difference(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(pe, c)| {
                let d = match other.children.get(pe) {
                    Some(o) => c.difference(o),
                    None => c.clone(),
                };
                (!d.is_empty()).then(|| (pe.clone(), d))
            })
            .collect();
        Set { members, children }
    }

    /// Paths in `self` that are neither in `other` nor below a member of `other`.
    pub fn recursive_difference(&self, other: &Set) -> Set {
        let members = self.members.difference(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter(|(pe, _)| !other.members.contains(pe))
            .filter_map(|(pe, c)| {
                let d = match other.children.get(pe) {
                    Some(o) => c.recursive_difference(o),
                    None => c.clone(),
                };
                (!d.is_empty()).then(|| (pe.clone(), d))
            })
            .collect();
        Set { members, children }
    }

    /// Every member path, members of a node before the paths below it, each level in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        for m in &self.members {
            prefix.push(m.clone());
            out.push(prefix.clone());
            prefix.pop();
        }
        for (pe, c) in &self.children {
            prefix.push(pe.clone());
            c.collect_paths(prefix, out);
            prefix.pop();
        }
    }

    /// The `FieldsV1` form.
    pub fn to_fields_v1(&self) -> Value {
        let mut out = Map::new();
        let mut keys: BTreeSet<&PathElement> = self.members.iter().collect();
        keys.extend(self.children.keys());
        for pe in keys {
            let v = match self.children.get(pe) {
                Some(c) => {
                    let mut inner = match c.to_fields_v1() {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    if self.members.contains(pe) {
                        inner.insert(".".to_string(), Value::Object(Map::new()));
                    }
                    Value::Object(inner)
                }
                None => Value::Object(Map::new()),
            };
            out.insert(pe.serialize(), v);
        }
        Value::Object(out)
    }

    /// Parses the `FieldsV1` form.
    pub fn from_fields_v1(v: &Value) -> Result<Set, String> {
        let Value::Object(m) = v else {
            return Err("fieldsV1 must be a JSON object".to_string());
        };
        let mut set = Set::new();
        for (k, child) in m {
            if k == "." {
                continue;
            }
            let pe = PathElement::deserialize(k)?;
            let Value::Object(cm) = child else {
                return Err(format!("fieldsV1 entry {k:?} must be a JSON object"));
            };
            if cm.is_empty() || cm.contains_key(".") {
                set.members.insert(pe.clone());
            }
            let c = Set::from_fields_v1(child)?;
            if !c.is_empty() {
                set.children.insert(pe, c);
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn f(s: &str) -> PathElement {
        PathElement::Field(s.to_string())
    }

    #[test]
    fn fields_v1_round_trip_and_format() {
        let key = PathElement::key(&[("name".to_string(), json!("nginx"))]);
        let mut s = Set::new();
        s.insert(&[f("spec"), f("replicas")]);
        s.insert(&[f("metadata"), f("labels"), f("app")]);
        s.insert(&[f("spec"), f("containers"), key.clone()]);
        s.insert(&[f("spec"), f("containers"), key.clone(), f("image")]);
        s.insert(&[
            f("metadata"),
            f("finalizers"),
            PathElement::value(&json!("x")),
        ]);
        let v = s.to_fields_v1();
        assert_eq!(
            v,
            json!({
                "f:metadata": {"f:finalizers": {"v:\"x\"": {}}, "f:labels": {"f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}}},
                           "f:replicas": {}}
            })
        );
        assert_eq!(Set::from_fields_v1(&v), Ok(s.clone()));
        assert!(s.has(&[f("spec"), f("containers"), key.clone()]));
        assert!(!s.has(&[f("spec"), f("containers")]));
        assert_eq!(
            path_string(&[f("spec"), f("containers"), key, f("image")]),
            ".spec.containers[name=\"nginx\"].image"
        );
        assert_eq!(
            path_string(&[
                f("ports"),
                PathElement::key(&[
                    ("protocol".to_string(), json!("TCP")),
                    ("containerPort".to_string(), json!(80))
                ])
            ]),
            ".ports[containerPort=80,protocol=\"TCP\"]"
        );
        assert!(Set::from_fields_v1(&json!({"x:y": {}})).is_err());
        assert!(Set::from_fields_v1(&json!({"f:a": 1})).is_err());
        assert!(Set::from_fields_v1(&json!({"k:[1]": {}})).is_err());
    }

    #[test]
    fn set_algebra() {
        let mut a = Set::new();
        a.insert(&[f("a"), f("b")]);
        a.insert(&[f("a"), f("c")]);
        a.insert(&[f("d")]);
        let mut b = Set::new();
        b.insert(&[f("a"), f("b")]);
        b.insert(&[f("d"), f("e")]);
        assert_eq!(a.intersection(&b).paths(), vec![vec![f("a"), f("b")]]);
        assert_eq!(
            a.difference(&b).paths(),
            vec![vec![f("d")], vec![f("a"), f("c")]]
        );
        let mut only_a = Set::new();
        only_a.insert(&[f("a")]);
        assert_eq!(a.recursive_difference(&only_a).paths(), vec![vec![f("d")]]);
        assert_eq!(a.union(&b).paths().len(), 4);
    }

    fn arb_set() -> impl Strategy<Value = Set> {
        prop::collection::vec(prop::collection::vec("[a-c]", 1..4), 0..8).prop_map(|paths| {
            let mut s = Set::new();
            for p in paths {
                let p: Path = p.into_iter().map(PathElement::Field).collect();
                s.insert(&p);
            }
            s
        })
    }

    proptest! {
        #[test]
        fn algebra_laws(a in arb_set(), b in arb_set()) {
            let u = a.union(&b);
            for p in a.paths().iter().chain(b.paths().iter()) {
                prop_assert!(u.has(p));
            }
            let d = a.difference(&b);
            for p in d.paths() {
                prop_assert!(a.has(&p) && !b.has(&p));
            }
            let i = a.intersection(&b);
            for p in i.paths() {
                prop_assert!(a.has(&p) && b.has(&p));
            }
            prop_assert_eq!(d.union(&i), a.clone());
            prop_assert_eq!(Set::from_fields_v1(&a.to_fields_v1()), Ok(a));
        }
    }
}
