//! Structured operations on objects with a [`Shape`]: the field set of an object, the comparison
//! of two versions, the merge of an applied configuration into a live object, and the removal of
//! a set of fields — the building blocks of server-side apply, with the semantics of Kubernetes'
//! structured-merge-diff:
//!
//! * a field set holds leaves, atomic lists and objects, items of associative lists and set
//!   lists, map entries, and empty or null values;
//! * comparison reports leaves (and wholly added or removed objects, lists and items) as added,
//!   removed or modified; two empty or absent containers compare as leaves;
//! * merging keeps the applied value at leaves and atomic nodes, merges objects key by key and
//!   associative lists item by item (the applied order first for shared items, live-only items
//!   where they were);
//! * removing a path removes its whole subtree.
//!
//! A `null` in an applied configuration owns the field and removes it from the result (typed
//! objects have no nulls).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::fieldpath::{Path, PathElement, Set};
use crate::schema::{ListType, Shape};

/// A list item that cannot be identified (an applied configuration is rejected for it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ShapeError {
    /// Where, as Kubernetes prints paths.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn shape_error(path: &[PathElement], message: impl Into<String>) -> ShapeError {
    ShapeError {
        path: crate::fieldpath::path_string(path),
        message: message.into(),
    }
}

/// The path element of a list item, or why it has none.
fn item_element(lt: &ListType, item: &Value) -> Result<PathElement, String> {
    match lt {
        ListType::Atomic => Err("not an associative list".to_string()),
        ListType::Set => match item {
            Value::Object(_) | Value::Array(_) | Value::Null => {
                Err("a set-like list may only hold scalars".to_string())
            }
            v => Ok(PathElement::value(v)),
        },
        ListType::Map(keys) => {
            let Value::Object(m) = item else {
                return Err("associative list with keys may not have non-map elements".to_string());
            };
            let mut fields = Vec::new();
            for (name, default) in keys {
                match (m.get(name), default) {
                    (Some(v), _) => fields.push((name.clone(), v.clone())),
                    (None, Some(d)) => fields.push((name.clone(), d.clone())),
                    (None, None) => {}
                }
            }
            if fields.is_empty() {
                let names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "associative list with keys has an element that omits all key fields {names:?} (and doesn't have default values for any key fields)"
                ));
            }
            Ok(PathElement::key(&fields))
        }
    }
}

/// The items of a granular list with their path elements, or `None` if some item has none (the
/// list is then treated as atomic).
fn elements<'v>(lt: &ListType, items: &'v [Value]) -> Option<Vec<(PathElement, &'v Value)>> {
    items
        .iter()
        .map(|i| item_element(lt, i).ok().map(|pe| (pe, i)))
        .collect()
}

/// Checks that every associative and set list of an applied configuration names its items
/// uniquely (the real server rejects such a configuration).
pub fn validate(v: &Value, shape: &Shape) -> Result<(), ShapeError> {
    validate_at(v, shape, &mut Vec::new())
}

fn validate_at(v: &Value, shape: &Shape, path: &mut Path) -> Result<(), ShapeError> {
    match v {
        Value::Object(m) if !shape.atomic_object() => {
            for (k, c) in m {
                path.push(PathElement::Field(k.clone()));
                validate_at(c, &shape.field(k).0, path)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            let lt = shape.list_type();
            if lt == ListType::Atomic {
                return Ok(());
            }
            let item_shape = shape.item();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let pe = item_element(&lt, item)
                    .map_err(|m| shape_error(path, format!("element {i}: {m}")))?;
                if !seen.insert(pe.clone()) {
                    return Err(shape_error(path, format!("duplicate entries for key {pe}")));
                }
                path.push(pe);
                validate_at(item, &item_shape, path)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// The fields of `v`.
pub fn to_field_set(v: &Value, shape: &Shape) -> Set {
    let mut set = Set::new();
    field_set_at(v, shape, &mut Vec::new(), &mut set);
    set
}

fn field_set_at(v: &Value, shape: &Shape, path: &mut Path, set: &mut Set) {
    match v {
        Value::Object(m) => {
            if shape.atomic_object() {
                set.insert(path);
                return;
            }
            for (k, child) in m {
                let (cs, declared) = shape.field(k);
                path.push(PathElement::Field(k.clone()));
                field_set_at(child, &cs, path, set);
                let empty_object = matches!(child, Value::Object(o) if o.is_empty());
                if child.is_null() || empty_object || !declared {
                    set.insert(path);
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            let lt = shape.list_type();
            let Some(elems) = (lt != ListType::Atomic)
                .then(|| elements(&lt, items))
                .flatten()
            else {
                set.insert(path);
                return;
            };
            let item_shape = shape.item();
            let mut counts: HashMap<&PathElement, usize> = HashMap::new();
            for (pe, _) in &elems {
                *counts.entry(pe).or_default() += 1;
            }
            let mut done = HashSet::new();
            for (pe, item) in &elems {
                if !done.insert(pe) {
                    continue;
                }
                path.push(pe.clone());
                if counts[pe] == 1 {
                    field_set_at(item, &item_shape, path, set);
                }
                set.insert(path);
                path.pop();
            }
        }
        _ => set.insert(path),
    }
}

/// `set` with every declared struct field on the way to a member made a member too (a set
/// holding `.spec.replicas` then also owns `.spec`, but one holding `.metadata.labels.app` does
/// not own the map entry's parent entries).
pub fn ensure_named_fields_are_members(set: &Set, shape: &Shape) -> Set {
    let mut out = Set::new();
    for m in set.members() {
        out.insert(std::slice::from_ref(m));
    }
    for (pe, child) in set.children() {
        let child_shape = match pe {
            PathElement::Field(name) => {
                let (s, declared) = shape.field(name);
                if declared {
                    out.insert(std::slice::from_ref(pe));
                }
                s
            }
            _ => shape.item(),
        };
        let ensured = ensure_named_fields_are_members(child, &child_shape);
        for p in ensured.paths() {
            let mut full = vec![pe.clone()];
            full.extend(p);
            out.insert(&full);
        }
    }
    out
}

/// What changed between two versions of an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Fields only in the old version.
    pub removed: Set,
    /// Fields in both, with different values.
    pub modified: Set,
    /// Fields only in the new version.
    pub added: Set,
}

impl Comparison {
    /// Removes the fields in `ignored` (and everything below them) from all three sets.
    pub fn exclude(&mut self, ignored: &Set) {
        self.removed = self.removed.recursive_difference(ignored);
        self.modified = self.modified.recursive_difference(ignored);
        self.added = self.added.recursive_difference(ignored);
    }

    /// Whether nothing changed.
    pub fn is_same(&self) -> bool {
        self.removed.is_empty() && self.modified.is_empty() && self.added.is_empty()
    }
}

/// Compares `old` with `new`.
pub fn compare(old: &Value, new: &Value, shape: &Shape) -> Comparison {
    let mut out = Comparison::default();
    compare_at(Some(old), Some(new), shape, &mut Vec::new(), &mut out);
    out
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Form {
    Object,
    List,
    Scalar,
}

fn form(v: &Value) -> Form {
    match v {
        Value::Object(_) => Form::Object,
        Value::Array(_) => Form::List,
        _ => Form::Scalar,
    }
}

fn leaf(l: Option<&Value>, r: Option<&Value>, path: &Path, out: &mut Comparison) {
    match (l, r) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        (Some(a), Some(b)) if a != b => out.modified.insert(path),
        _ => {}
    }
}

static EMPTY_OBJECT: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));
static EMPTY_LIST: LazyLock<Value> = LazyLock::new(|| Value::Array(Vec::new()));

/// What a typed object holds for field `key` of an existing object when JSON has nothing there
/// (see [`Shape::always_present`]).
fn typed_zero<'v>(shape: &Shape, key: &str, sample: Option<&Value>) -> Option<&'v Value> {
    let sample = sample?;
    if !shape.always_present(key, sample) {
        return None;
    }
    Some(if sample.is_array() {
        &EMPTY_LIST
    } else {
        &EMPTY_OBJECT
    })
}

fn compare_at(
    l: Option<&Value>,
    r: Option<&Value>,
    shape: &Shape,
    path: &mut Path,
    out: &mut Comparison,
) {
    let f = match (l.map(form), r.map(form)) {
        (Some(a), Some(b)) if a != b => return leaf(l, r, path, out),
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return,
    };
    let as_leaf = match f {
        Form::Scalar => true,
        Form::Object => {
            let lm = l.and_then(Value::as_object);
            let rm = r.and_then(Value::as_object);
            let both_empty = lm.is_none_or(Map::is_empty) && rm.is_none_or(Map::is_empty);
            if shape.atomic_object() || both_empty {
                true
            } else {
                let mut keys: Vec<&String> = lm.into_iter().flat_map(|m| m.keys()).collect();
                keys.extend(rm.into_iter().flat_map(|m| m.keys()));
                keys.sort();
                keys.dedup();
                for k in keys {
                    let (lc, rc) = (lm.and_then(|m| m.get(k)), rm.and_then(|m| m.get(k)));
                    // A side that has this object holds typed zero values where JSON is silent.
                    let lc = lc.or_else(|| lm.and_then(|_| typed_zero(shape, k, rc)));
                    let rc = rc.or_else(|| rm.and_then(|_| typed_zero(shape, k, lc)));
                    path.push(PathElement::Field(k.clone()));
                    compare_at(lc, rc, &shape.field(k).0, path, out);
                    path.pop();
                }
                false
            }
        }
        Form::List => {
            let la: &[Value] = l.and_then(Value::as_array).map_or(&[], Vec::as_slice);
            let ra: &[Value] = r.and_then(Value::as_array).map_or(&[], Vec::as_slice);
            let lt = shape.list_type();
            let indexed = (lt != ListType::Atomic && !(la.is_empty() && ra.is_empty()))
                .then(|| Some((elements(&lt, la)?, elements(&lt, ra)?)))
                .flatten();
            match indexed {
                None => true,
                Some((le, re)) => {
                    compare_items(&le, &re, &shape.item(), path, out);
                    false
                }
            }
        }
    };
    if as_leaf {
        return leaf(l, r, path, out);
    }
    if l.is_none() {
        out.added.insert(path);
    } else if r.is_none() {
        out.removed.insert(path);
    }
}

fn group<'v>(
    elems: &[(PathElement, &'v Value)],
    order: &mut Vec<PathElement>,
) -> HashMap<PathElement, Vec<&'v Value>> {
    let mut m: HashMap<PathElement, Vec<&Value>> = HashMap::new();
    for (pe, v) in elems {
        if !m.contains_key(pe) && !order.contains(pe) {
            order.push(pe.clone());
        }
        m.entry(pe.clone()).or_default().push(v);
    }
    m
}

fn compare_items(
    le: &[(PathElement, &Value)],
    re: &[(PathElement, &Value)],
    item_shape: &Shape,
    path: &mut Path,
    out: &mut Comparison,
) {
    let mut order = Vec::new();
    let lm = group(le, &mut order);
    let rm = group(re, &mut order);
    for pe in order {
        let ls = lm.get(&pe).map_or(&[][..], Vec::as_slice);
        let rs = rm.get(&pe).map_or(&[][..], Vec::as_slice);
        path.push(pe);
        match (ls.len(), rs.len()) {
            (0..=1, 0..=1) => {
                compare_at(
                    ls.first().copied(),
                    rs.first().copied(),
                    item_shape,
                    path,
                    out,
                );
            }
            (a, b) if a >= 2 && b >= 2 => {
                if ls != rs {
                    out.modified.insert(path);
                }
            }
            (a, b) if a >= 2 => {
                if b == 1 {
                    compare_at(None, rs.first().copied(), item_shape, path, out);
                }
                out.removed.insert(path);
            }
            (a, _) => {
                if a == 1 {
                    compare_at(ls.first().copied(), None, item_shape, path, out);
                }
                out.added.insert(path);
            }
        }
        path.pop();
    }
}

/// Merges the applied configuration `applied` into `live`.
pub fn merge(live: &Value, applied: &Value, shape: &Shape) -> Value {
    merge_at(Some(live), Some(applied), shape).unwrap_or_else(|| Value::Object(Map::new()))
}

fn merge_at(l: Option<&Value>, r: Option<&Value>, shape: &Shape) -> Option<Value> {
    let Some(r) = r else {
        return l.cloned();
    };
    match (l, r) {
        (_, Value::Null) => None,
        (Some(Value::Object(_)) | None, Value::Object(rm)) if !shape.atomic_object() => {
            let lm = l.and_then(Value::as_object);
            if lm.is_none_or(Map::is_empty) && rm.is_empty() {
                return Some(r.clone());
            }
            let mut out = Map::new();
            for (k, lv) in lm.into_iter().flatten() {
                if !rm.contains_key(k) {
                    out.insert(k.clone(), lv.clone());
                }
            }
            for (k, rv) in rm {
                let lv = lm.and_then(|m| m.get(k));
                if let Some(v) = merge_at(lv, Some(rv), &shape.field(k).0) {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        (Some(Value::Array(_)) | None, Value::Array(ra)) => {
            let lt = shape.list_type();
            let empty: Vec<Value> = Vec::new();
            let la = l.and_then(Value::as_array).unwrap_or(&empty);
            if lt == ListType::Atomic || (la.is_empty() && ra.is_empty()) {
                return Some(strip_nulls(r));
            }
            let (Some(le), Some(re)) = (elements(&lt, la), elements(&lt, ra)) else {
                return Some(strip_nulls(r));
            };
            Some(Value::Array(merge_items(la, &le, &re, &shape.item())))
        }
        _ => Some(strip_nulls(r)),
    }
}

/// An applied value without `null` object fields (they are owned, not stored).
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Merges associative-list items: shared items in the applied order, live-only items kept
/// where they were relative to them, new items where the applied list has them.
fn merge_items(
    live: &[Value],
    le: &[(PathElement, &Value)],
    re: &[(PathElement, &Value)],
    item_shape: &Shape,
) -> Vec<Value> {
    let mut observed_l: HashMap<&PathElement, Option<&Value>> = HashMap::new();
    for (pe, v) in le {
        observed_l
            .entry(pe)
            .and_modify(|e| *e = None)
            .or_insert(Some(v));
    }
    let observed_r: HashMap<&PathElement, &Value> = re.iter().map(|(pe, v)| (pe, *v)).collect();
    let mut shared: std::collections::VecDeque<&PathElement> = re
        .iter()
        .map(|(pe, _)| pe)
        .filter(|pe| observed_l.contains_key(pe))
        .collect();
    let mut next_shared = shared.pop_front();
    let mut merged_r: HashSet<&PathElement> = HashSet::new();
    let mut out = Vec::new();
    let (l_len, r_len) = (le.len(), re.len());
    let (mut li, mut ri) = (0, 0);
    let mut push = |v: Option<Value>| {
        if let Some(v) = v {
            out.push(v);
        }
    };
    while li < l_len || ri < r_len {
        if li < l_len && ri < r_len {
            let pe = &le[li].0;
            if *pe == re[ri].0 {
                merged_r.insert(pe);
                push(merge_at(
                    observed_l.get(pe).copied().flatten(),
                    observed_r.get(pe).copied(),
                    item_shape,
                ));
                li += 1;
                ri += 1;
                next_shared = shared.pop_front();
                continue;
            }
            if observed_r.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                li += 1;
                continue;
            }
        }
        if li < l_len {
            let pe = &le[li].0;
            if !observed_r.contains_key(pe) {
                push(Some(live[li].clone()));
                li += 1;
                continue;
            } else if merged_r.contains(pe) {
                li += 1;
            }
        }
        if ri < r_len {
            let pe = &re[ri].0;
            merged_r.insert(pe);
            push(merge_at(
                observed_l.get(pe).copied().flatten(),
                observed_r.get(pe).copied(),
                item_shape,
            ));
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.pop_front();
            }
        }
    }
    out
}

/// `v` without the fields in `set` (each with everything below it). A container left empty by
/// the removal disappears.
pub fn remove_items(v: &Value, set: &Set, shape: &Shape) -> Value {
    remove_at(v, set, shape).unwrap_or_else(|| Value::Object(Map::new()))
}

fn remove_at(v: &Value, set: &Set, shape: &Shape) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.is_empty() || shape.atomic_object() {
                return None;
            }
            let mut out = Map::new();
            for (k, child) in m {
                let pe = PathElement::Field(k.clone());
                if set.has(std::slice::from_ref(&pe)) {
                    continue;
                }
                match set.with_prefix(&pe) {
                    Some(sub) => {
                        if let Some(c) = remove_at(child, sub, &shape.field(k).0) {
                            out.insert(k.clone(), c);
                        }
                    }
                    None => {
                        out.insert(k.clone(), child.clone());
                    }
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let lt = shape.list_type();
            if items.is_empty() || lt == ListType::Atomic {
                return None;
            }
            let item_shape = shape.item();
            let mut out = Vec::new();
            for item in items {
                let Ok(pe) = item_element(&lt, item) else {
                    out.push(item.clone());
                    continue;
                };
                if set.has(std::slice::from_ref(&pe)) {
                    continue;
                }
                match set.with_prefix(&pe) {
                    Some(sub) => {
                        if let Some(c) = remove_at(item, sub, &item_shape) {
                            out.push(c);
                        }
                    }
                    None => out.push(item.clone()),
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fieldpath::path_string;
    use crate::resource::known;
    use serde_json::json;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": image,
                                             "ports": [{"containerPort": 80}]}]}
                }
            }
        })
    }

    fn paths(s: &Set) -> Vec<String> {
        s.paths().iter().map(|p| path_string(p)).collect()
    }

    #[test]
    fn field_set_of_a_deployment() {
        let d = known::deployment();
        let set = to_field_set(&deployment(2, "nginx:1"), &Shape::root(&d));
        let got = paths(&set);
        for want in [
            ".apiVersion",
            ".kind",
            ".metadata.name",
            ".metadata.labels.app",
            ".spec.replicas",
            ".spec.selector",
            ".spec.template.metadata.labels.app",
            ".spec.template.spec.containers[name=\"app\"]",
            ".spec.template.spec.containers[name=\"app\"].image",
            ".spec.template.spec.containers[name=\"app\"].ports[containerPort=80,protocol=\"TCP\"]",
            ".spec.template.spec.containers[name=\"app\"].ports[containerPort=80,protocol=\"TCP\"].containerPort",
        ] {
            assert!(
                got.contains(&want.to_string()),
                "{want} missing from {got:#?}"
            );
        }
        assert!(!got.contains(&".spec".to_string()));
        assert!(!got.contains(&".spec.selector.matchLabels.app".to_string()));
        let fields = set.to_fields_v1();
        assert_eq!(fields["f:spec"]["f:selector"], json!({}));
        assert_eq!(
            fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["."],
            json!({})
        );
    }

    #[test]
    fn compare_reports_leaves_and_whole_new_nodes() {
        let d = known::deployment();
        let shape = Shape::root(&d);
        let mut new = deployment(3, "nginx:2");
        if let Some(a) = new["spec"]["template"]["spec"]["containers"].as_array_mut() {
            a.push(json!({"name": "side", "image": "s"}));
        }
        let c = compare(&deployment(2, "nginx:1"), &new, &shape);
        assert_eq!(
            paths(&c.modified),
            vec![
                ".spec.replicas",
                ".spec.template.spec.containers[name=\"app\"].image"
            ]
        );
        assert_eq!(
            paths(&c.added),
            vec![
                ".spec.template.spec.containers[name=\"side\"]",
                ".spec.template.spec.containers[name=\"side\"].image",
                ".spec.template.spec.containers[name=\"side\"].name"
            ]
        );
        assert!(c.removed.is_empty());
        let back = compare(&new, &deployment(2, "nginx:1"), &shape);
        assert_eq!(paths(&back.removed).len(), 3);
        assert!(compare(&new, &new, &shape).is_same());
    }

    #[test]
    fn merge_keys_lists_and_replaces_atomics() {
        let d = known::deployment();
        let shape = Shape::root(&d);
        let mut live = deployment(2, "nginx:1");
        live["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "A", "value": "1"}]);
        live["spec"]["selector"]["matchLabels"]["extra"] = json!("x");
        let applied = json!({
            "spec": {
                "replicas": null,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [
                    {"name": "side", "image": "s"},
                    {"name": "app", "image": "nginx:2"}
                ]}}
            }
        });
        let m = merge(&live, &applied, &shape);
        assert!(m["spec"].get("replicas").is_none(), "null removes: {m}");
        assert_eq!(
            m["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );
        let cs = &m["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["name"], "side");
        assert_eq!(cs[1]["image"], "nginx:2");
        assert_eq!(
            cs[1]["env"],
            json!([{"name": "A", "value": "1"}]),
            "live-only fields stay"
        );
        assert!(validate(&applied, &shape).is_ok());
        let dup =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
        let err = validate(&dup, &shape)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("duplicate entries for key [name=\"a\"]"),
            "{err}"
        );
        let nokey = json!({"spec": {"template": {"spec": {"containers": [{"image": "a"}]}}}});
        assert!(validate(&nokey, &shape).is_err());
    }

    #[test]
    fn remove_drops_subtrees_and_empty_parents() {
        let d = known::deployment();
        let shape = Shape::root(&d);
        let live = deployment(2, "nginx:1");
        let mut set = Set::new();
        set.insert(&[
            PathElement::Field("metadata".into()),
            PathElement::Field("labels".into()),
            PathElement::Field("app".into()),
        ]);
        set.insert(&[
            PathElement::Field("spec".into()),
            PathElement::Field("template".into()),
            PathElement::Field("spec".into()),
            PathElement::Field("containers".into()),
            PathElement::key(&[("name".into(), json!("app"))]),
        ]);
        let out = remove_items(&live, &set, &shape);
        assert!(out["metadata"].get("labels").is_none());
        assert!(out["spec"]["template"]["spec"].get("containers").is_none());
        assert_eq!(out["spec"]["replicas"], 2);
        let ensured = ensure_named_fields_are_members(&set, &shape);
        assert!(ensured.has(&[PathElement::Field("spec".into())]));
        assert!(ensured.has(&[
            PathElement::Field("metadata".into()),
            PathElement::Field("labels".into())
        ]));
    }
}
