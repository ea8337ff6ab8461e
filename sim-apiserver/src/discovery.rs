//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/{group}` and resource lists,
//! generated from the resource registry (so custom resources appear as soon as their
//! definition is stored).
//!
//! Only the legacy (unaggregated) forms are served. When kubectl asks for aggregated discovery
//! (`as=APIGroupDiscoveryList`) it gets these with `Content-Type: application/json` and falls
//! back to the legacy protocol, as it does with older servers.

use serde_json::{Value, json};

use super::resource::{Registry, VERBS};

/// The Kubernetes version the simulator claims to be.
pub const GIT_VERSION: &str = "v1.32.0-simulated";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(name: &str, versions: &[String]) -> Option<Value> {
    let preferred = versions.first()?;
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect::<Vec<_>>(),
        "preferredVersion": {"groupVersion": format!("{name}/{preferred}"), "version": preferred},
    }))
}

/// `/apis/{group}` (`None` if the group is unknown).
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let groups = registry.groups();
    let (_, versions) = groups.iter().find(|(g, _)| g == name)?;
    group_doc(name, versions)
}

/// `/apis`.
pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .filter_map(|(g, vs)| group_doc(g, vs))
        .map(|mut g| {
            if let Some(o) = g.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            g
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/{group}/{version}` (`None` if unknown).
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in registry.in_group_version(group, version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if let Some(o) = entry.as_object_mut() {
            if !r.short_names.is_empty() {
                o.insert("shortNames".to_string(), json!(r.short_names));
            }
            if !r.categories.is_empty() {
                o.insert("categories".to_string(), json!(r.categories));
            }
        }
        resources.push(entry);
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.has_scale {
            resources.push(json!({
                "name": format!("{}/scale", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.kind == "Pod" && r.group.is_empty() {
            resources.push(json!({
                "name": "pods/log",
                "singularName": "",
                "namespaced": true,
                "kind": "Pod",
                "verbs": ["get"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let reg = Registry::builtin();
        let core = resource_list(&reg, "", "v1").unwrap_or_default();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        for n in [
            "pods",
            "pods/log",
            "nodes",
            "namespaces",
            "services",
            "configmaps",
            "secrets",
            "events",
            "serviceaccounts",
            "persistentvolumeclaims",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(!names.contains(&"deployments"));
        let apps = resource_list(&reg, "apps", "v1").unwrap_or_default();
        assert_eq!(apps["groupVersion"], "apps/v1");
        assert_eq!(apps["resources"][0]["shortNames"], json!(["deploy"]));
        assert!(resource_list(&reg, "apps", "v2").is_none());
        let groups: Vec<String> = group_list(&reg)["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str().map(str::to_string))
            .collect();
        for g in [
            "apps",
            "batch",
            "networking.k8s.io",
            "rbac.authorization.k8s.io",
            "apiextensions.k8s.io",
        ] {
            assert!(groups.iter().any(|x| x == g), "{g} missing from {groups:?}");
        }
        assert!(group(&reg, "example.com").is_none());
    }
}
