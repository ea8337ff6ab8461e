//! Patch semantics: JSON merge patch (RFC 7386), JSON patch (RFC 6902), a practical subset of
//! Kubernetes strategic merge patch, and the merge used for server-side apply.
//!
//! Strategic merge patch: lists whose elements are objects are merged by a per-field merge key
//! (`containers`, `volumes`, `env` by `name`; `volumeMounts` by `mountPath`; container `ports` by
//! `containerPort`, service `ports` by `port`; `conditions` by `type`; ...); other lists are
//! replaced. The directives `$patch: delete|replace|merge`, `$retainKeys`,
//! `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>` are understood, and never end
//! up in stored objects. Server-side apply uses the same keyed merge without directives (field
//! ownership and removal of fields a manager stopped applying are not modelled).

use serde_json::{Map, Value};

/// How a PATCH body is to be interpreted, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    StrategicMerge,
    /// `application/json-patch+json`
    Json,
    /// `application/apply-patch+yaml` (server-side apply)
    Apply,
}

impl PatchKind {
    /// The patch kind for a `Content-Type` header value, ignoring parameters.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// A patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is not of the expected shape.
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON patch operation failed (e.g. a `test` did not hold or a path is missing).
    #[error("the JSON patch could not be applied: {0}")]
    Failed(String),
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch; `patch` must be an array of operations.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Invalid(format!("not a JSON patch operation list: {e}")))?;
    json_patch::patch(target, &ops).map_err(|e| PatchError::Failed(e.to_string()))
}

/// The merge key for list `field` whose elements look like `sample`, if the list is keyed.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    let has = |k: &str| sample.is_some_and(|s| s.get(k).is_some());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" if has("containerPort") => Some("containerPort"),
        "ports" if has("port") => Some("port"),
        "addresses" if has("type") => Some("type"),
        _ => None,
    }
}

/// Lists of primitives that are merged (union) rather than replaced.
fn is_merged_primitive_list(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a Kubernetes strategic merge patch.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".to_string(),
        ));
    }
    smp_object(target, patch, true);
    Ok(())
}

/// Merges an applied configuration into the live object (server-side apply without ownership).
pub fn apply_merge(target: &mut Value, applied: &Value) {
    smp_object(target, applied, false);
}

fn smp_object(target: &mut Value, patch: &Value, directives: bool) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if directives {
        match pm.get("$patch").and_then(Value::as_str) {
            Some("replace") => {
                let mut replaced = patch.clone();
                strip_directives(&mut replaced);
                *target = replaced;
                return;
            }
            Some("delete") => {
                *target = Value::Null;
                return;
            }
            _ => {}
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tm) = target.as_object_mut() else {
        return;
    };
    if directives && let Some(Value::Array(keep)) = pm.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        tm.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, pv) in pm {
        if key.starts_with('$') {
            if directives
                && let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/")
                && let (Some(Value::Array(live)), Value::Array(del)) = (tm.get_mut(field), pv)
            {
                live.retain(|x| !del.contains(x));
            }
            continue;
        }
        if pv.is_null() {
            tm.remove(key);
            continue;
        }
        match pv {
            Value::Object(_) => {
                let deleted =
                    directives && pv.get("$patch").and_then(Value::as_str) == Some("delete");
                if deleted {
                    tm.remove(key);
                    continue;
                }
                let entry = tm.entry(key.clone()).or_insert(Value::Null);
                smp_object(entry, pv, directives);
            }
            Value::Array(items) => {
                let merged = smp_list(key, tm.get(key), items, directives);
                tm.insert(key.clone(), merged);
            }
            _ => {
                tm.insert(key.clone(), pv.clone());
            }
        }
    }
    if directives {
        for (key, order) in pm {
            if let Some(field) = key.strip_prefix("$setElementOrder/")
                && let (Some(Value::Array(list)), Value::Array(order)) = (tm.get_mut(field), order)
            {
                reorder(field, list, order);
            }
        }
    }
}

fn smp_list(field: &str, live: Option<&Value>, items: &[Value], directives: bool) -> Value {
    let live_items: Vec<Value> = live.and_then(Value::as_array).cloned().unwrap_or_default();
    if directives
        && items
            .iter()
            .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let mut out: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        out.iter_mut().for_each(strip_directives);
        return Value::Array(out);
    }
    if is_merged_primitive_list(field) && items.iter().all(|i| !i.is_object()) {
        let mut out = live_items;
        for i in items {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        return Value::Array(out);
    }
    let sample = items.iter().find(|i| i.is_object());
    let Some(mk) = merge_key(field, sample.or(live_items.first())) else {
        let mut out = items.to_vec();
        out.iter_mut().for_each(strip_directives);
        return Value::Array(out);
    };
    let mut out = live_items;
    for item in items {
        let Some(key_value) = item.get(mk) else {
            let mut i = item.clone();
            strip_directives(&mut i);
            out.push(i);
            continue;
        };
        let pos = out.iter().position(|l| l.get(mk) == Some(key_value));
        let delete = directives && item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(p), true) => {
                out.remove(p);
            }
            (None, true) => {}
            (Some(p), false) => smp_object(&mut out[p], item, directives),
            (None, false) => {
                let mut i = item.clone();
                strip_directives(&mut i);
                out.push(i);
            }
        }
    }
    Value::Array(out)
}

fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let mk = merge_key(field, list.first());
    let key_of = |v: &Value| -> Value {
        match mk {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let rank = |v: &Value| -> usize {
        let k = key_of(v);
        order
            .iter()
            .position(|o| *o == k || o.get(mk.unwrap_or("")) == Some(&k))
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

/// Removes `$`-prefixed directive keys recursively.
fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "labels": {"app": "web", "tier": "front"}, "finalizers": ["a"]},
            "spec": {"containers": [
                {"name": "app", "image": "app:1", "ports": [{"containerPort": 80}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "side:1"}
            ]}
        })
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchKind::StrategicMerge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/json-patch+json"),
            Some(PatchKind::Json)
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml"),
            Some(PatchKind::Apply)
        );
        assert_eq!(PatchKind::from_content_type("application/json"), None);
    }

    #[test]
    fn merge_patch_replaces_lists_and_deletes_nulls() {
        let mut p = pod();
        merge_patch(
            &mut p,
            &json!({"metadata": {"labels": {"tier": null, "new": "x"}},
                    "spec": {"containers": [{"name": "only"}]}}),
        );
        assert_eq!(p["metadata"]["labels"], json!({"app": "web", "new": "x"}));
        assert_eq!(p["spec"]["containers"], json!([{"name": "only"}]));
    }

    #[test]
    fn json_patch_ops() {
        let mut p = pod();
        json_patch(
            &mut p,
            &json!([
                {"op": "replace", "path": "/spec/containers/0/image", "value": "app:2"},
                {"op": "add", "path": "/metadata/labels/x", "value": "y"},
                {"op": "remove", "path": "/metadata/labels/tier"},
                {"op": "test", "path": "/metadata/name", "value": "p"}
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p["spec"]["containers"][0]["image"], "app:2");
        assert_eq!(p["metadata"]["labels"], json!({"app": "web", "x": "y"}));
        let before = p.clone();
        let err = json_patch(
            &mut p,
            &json!([{"op": "test", "path": "/metadata/name", "value": "other"}]),
        );
        assert!(matches!(err, Err(PatchError::Failed(_))));
        assert_eq!(p, before, "a failed JSON patch leaves the object alone");
        assert!(matches!(
            json_patch(&mut p, &json!({"op": "add"})),
            Err(PatchError::Invalid(_))
        ));
    }

    #[test]
    fn strategic_merge_by_key() {
        let mut p = pod();
        strategic_merge_patch(
            &mut p,
            &json!({
                "metadata": {"finalizers": ["b"]},
                "spec": {
                    "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
                    "containers": [
                        {"name": "app", "image": "app:2",
                         "env": [{"name": "B", "value": "3"}, {"name": "A", "$patch": "delete"}]},
                        {"name": "sidecar", "$patch": "delete"},
                        {"name": "new", "image": "new:1"}
                    ]
                }
            }),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cs = p["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, vec!["app", "new"]);
        assert_eq!(cs[0]["image"], "app:2");
        assert_eq!(cs[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(cs[0]["env"], json!([{"name": "B", "value": "3"}]));
        assert_eq!(p["metadata"]["finalizers"], json!(["a", "b"]));
        assert!(
            !p.to_string().contains('$'),
            "directives must not be stored: {p}"
        );
    }

    #[test]
    fn strategic_merge_replace_and_retain() {
        let mut p = pod();
        strategic_merge_patch(
            &mut p,
            &json!({"metadata": {"labels": {"$patch": "replace", "only": "1"}},
                    "spec": {"$retainKeys": ["containers"], "containers": [{"name": "app", "image": "z"}]}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p["metadata"]["labels"], json!({"only": "1"}));
        assert_eq!(p["spec"]["containers"][0]["image"], "z");
        assert!(strategic_merge_patch(&mut p, &json!([1])).is_err());
    }

    #[test]
    fn apply_merges_keyed_lists() {
        let mut p = pod();
        apply_merge(
            &mut p,
            &json!({"spec": {"containers": [{"name": "sidecar", "image": "side:2"}]}}),
        );
        assert_eq!(p["spec"]["containers"][0]["image"], "app:1");
        assert_eq!(p["spec"]["containers"][1]["image"], "side:2");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|i| json!(i)),
            "[a-z]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn merge_patch_is_idempotent(target in arb_json(), patch in arb_json()) {
            let mut once = target.clone();
            merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn strategic_merge_without_keyed_lists_equals_merge_patch(
            target in arb_json(), patch in prop::collection::btree_map("[a-d]{1,3}", arb_json(), 0..4)
        ) {
            let patch = Value::Object(patch.into_iter().collect());
            let mut a = target.clone();
            merge_patch(&mut a, &patch);
            let mut b = target.clone();
            strategic_merge_patch(&mut b, &patch).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(a, b);
        }
    }
}
