//! `CustomResourceDefinition`s: validation, the defaults and status the real server fills in,
//! and the resource types an established definition serves.
//!
//! A definition is established as soon as it is stored (its `NamesAccepted` and `Established`
//! conditions are `True` at once): its kinds are served at every `served` version, stored once
//! whatever the version (conversion strategy `None`: only `apiVersion` differs), with the
//! version's `openAPIV3Schema` as the shape server-side apply merges by. Deleting a definition
//! deletes its custom resources first (finalizer `customresourcecleanup.apiextensions.k8s.io`).
//!
//! Not modelled: validation of custom resources against the schema (types, required fields,
//! pruning of unknown fields), defaulting from the schema, conversion webhooks, the `scale`
//! subresource of custom resources.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::access;
use crate::resource::{PrinterColumn, Registry, Resource, ResourceType};
use crate::time;

/// The finalizer that holds a definition until its custom resources are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// What is wrong with a definition (answered as 422 Invalid): the field errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join(", "))]
pub struct InvalidCrd(pub Vec<String>);

use crate::access::str_at as s;

fn dns_subdomain(x: &str) -> bool {
    !x.is_empty()
        && x.len() <= 253
        && x.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Validates `crd` (as created or updated over `old`), fills in the defaulted names, the
/// cleanup finalizer and the status, and returns the resource types it serves.
pub fn prepare(
    crd: &mut Value,
    old: Option<&Value>,
    registry: &Registry,
) -> Result<Vec<Resource>, InvalidCrd> {
    let name = s(crd, "/metadata/name").to_string();
    let group = s(crd, "/spec/group").to_string();
    let plural = s(crd, "/spec/names/plural").to_string();
    let kind = s(crd, "/spec/names/kind").to_string();
    let scope = s(crd, "/spec/scope").to_string();
    let mut errors = Vec::new();
    if group.is_empty() {
        errors.push("spec.group: Required value".to_string());
    } else if !group.contains('.') || !dns_subdomain(&group) {
        errors.push(format!(
            "spec.group: Invalid value: {group:?}: should be a domain with at least one dot"
        ));
    }
    if plural.is_empty() {
        errors.push("spec.names.plural: Required value".to_string());
    } else if !dns_subdomain(&plural) || plural.contains('.') {
        errors.push(format!(
            "spec.names.plural: Invalid value: {plural:?}: a lowercase RFC 1123 label"
        ));
    }
    if kind.is_empty() {
        errors.push("spec.names.kind: Required value".to_string());
    }
    if name != format!("{plural}.{group}") {
        errors.push(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        ));
    }
    if !matches!(scope.as_str(), "Namespaced" | "Cluster") {
        errors.push(format!(
            "spec.scope: Unsupported value: {scope:?}: supported values: \"Cluster\", \"Namespaced\""
        ));
    }
    let versions: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errors.push(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .to_string(),
        );
    }
    let storage: Vec<&str> = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .map(|v| s(v, "/name"))
        .collect();
    if !versions.is_empty() && storage.len() != 1 {
        errors.push(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .to_string(),
        );
    }
    if registry.is_builtin(&(group.clone(), plural.clone())) {
        errors.push(format!(
            "spec.names.plural: Invalid value: {plural:?}: {plural}.{group} is served by a built-in API"
        ));
    }
    if let Some(old) = old {
        if s(old, "/spec/group") != group {
            errors.push("spec.group: Invalid value: field is immutable".to_string());
        }
        if s(old, "/spec/scope") != scope {
            errors.push("spec.scope: Invalid value: field is immutable".to_string());
        }
    }
    for (i, v) in versions.iter().enumerate() {
        let vn = s(v, "/name");
        if vn.is_empty() || !dns_subdomain(vn) || vn.contains('.') {
            errors.push(format!(
                "spec.versions[{i}].name: Invalid value: {vn:?}: a DNS-1035 label"
            ));
        }
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            errors.push(format!(
                "spec.versions[{i}].schema.openAPIV3Schema: Required value: schemas are required"
            ));
        }
    }
    if !errors.is_empty() {
        return Err(InvalidCrd(errors));
    }

    // Defaults the real server fills in.
    let names = crd
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut);
    if let Some(n) = names {
        n.entry("singular")
            .or_insert_with(|| json!(kind.to_ascii_lowercase()));
        n.entry("listKind")
            .or_insert_with(|| json!(format!("{kind}List")));
    }
    if crd.pointer("/metadata/deletionTimestamp").is_none()
        && let Some(m) = crd.get_mut("metadata").and_then(Value::as_object_mut)
    {
        let fins = m.entry("finalizers").or_insert_with(|| json!([]));
        if let Some(a) = fins.as_array_mut()
            && !a.iter().any(|f| f == CLEANUP_FINALIZER)
        {
            a.push(json!(CLEANUP_FINALIZER));
        }
    }
    let accepted = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    let now = time::now_rfc3339();
    let since = |ty: &str| {
        old.and_then(|o| o.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now))
    };
    let mut stored: Vec<String> = old
        .map(|o| access::strings_at(o, "/status/storedVersions"))
        .unwrap_or_default();
    if let Some(sv) = storage.first()
        && !stored.iter().any(|x| x == sv)
    {
        stored.push((*sv).to_string());
    }
    if let Some(o) = crd.as_object_mut() {
        o.insert(
            "status".to_string(),
            json!({
                "acceptedNames": accepted,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": since("Established")}
                ],
                "storedVersions": stored,
            }),
        );
    }
    Ok(served_types(crd))
}

/// The resource types a (valid) definition serves: one per served version.
pub fn served_types(crd: &Value) -> Vec<Resource> {
    let name = s(crd, "/metadata/name");
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    let strings = |k: &str| access::strings_at(&names, &format!("/{k}"));
    let kind = s(&names, "/kind").to_string();
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
        .map(|v| {
            let printer_columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: s(c, "/name").to_string(),
                    ty: s(c, "/type").to_string(),
                    json_path: s(c, "/jsonPath").to_string(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                })
                .collect();
            Arc::new(ResourceType {
                group: s(crd, "/spec/group").to_string(),
                version: s(v, "/name").to_string(),
                kind: kind.clone(),
                list_kind: match s(&names, "/listKind") {
                    "" => format!("{kind}List"),
                    lk => lk.to_string(),
                },
                plural: s(&names, "/plural").to_string(),
                singular: match s(&names, "/singular") {
                    "" => kind.to_ascii_lowercase(),
                    x => x.to_string(),
                },
                namespaced: s(crd, "/spec/scope") == "Namespaced",
                short_names: strings("shortNames"),
                categories: strings("categories"),
                has_status: v.pointer("/subresources/status").is_some(),
                has_scale: false,
                tracks_generation: true,
                crd: Some(name.to_string()),
                schema: v.pointer("/schema/openAPIV3Schema").cloned().map(Arc::new),
                printer_columns,
                create_only: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                     "subresources": {"status": {}}},
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v1alpha1", "served": false, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}}
                ]
            }
        })
    }

    #[test]
    fn prepares_valid_definitions() {
        let mut crd = widget_crd();
        let types = prepare(&mut crd, None, &Registry::builtin()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(types.len(), 2);
        assert_eq!(types[0].api_version(), "example.com/v1");
        assert_eq!(types[0].list_kind, "WidgetList");
        assert_eq!(types[0].short_names, vec!["wd"]);
        assert!(types[0].has_status && !types[1].has_status);
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
        assert_eq!(crd["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
        assert_eq!(crd["spec"]["names"]["singular"], "widget");
    }

    #[test]
    fn rejects_invalid_definitions() {
        let reg = Registry::builtin();
        let mut bad = widget_crd();
        bad["metadata"]["name"] = json!("widgets.other.com");
        let e = prepare(&mut bad, None, &reg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("must be spec.names.plural+\".\"+spec.group"),
            "{e}"
        );
        let mut bad = widget_crd();
        bad["spec"]["versions"][1]["storage"] = json!(true);
        assert!(prepare(&mut bad, None, &reg).is_err());
        let mut bad = widget_crd();
        bad["spec"]["group"] = json!("apps");
        bad["metadata"]["name"] = json!("widgets.apps");
        assert!(prepare(&mut bad, None, &reg).is_err());
        let mut clash = widget_crd();
        clash["spec"]["group"] = json!("networking.k8s.io");
        clash["spec"]["names"]["plural"] = json!("ingresses");
        clash["metadata"]["name"] = json!("ingresses.networking.k8s.io");
        let e = prepare(&mut clash, None, &reg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("built-in"), "{e}");
        let mut ok = widget_crd();
        let old = ok.clone();
        ok["spec"]["scope"] = json!("Cluster");
        assert!(prepare(&mut ok, Some(&old), &reg).is_err());
    }
}
