//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/{group}` and resource lists,
//! generated from the resource registry.
//!
//! Only the legacy (unaggregated) forms are served. When kubectl asks for aggregated discovery
//! (`as=APIGroupDiscoveryList`) it gets these with `Content-Type: application/json` and falls
//! back to the legacy protocol, as it does with older servers.

use serde_json::{Value, json};

use super::resource::{self, RESOURCES, VERBS};

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

fn groups() -> Vec<&'static str> {
    let mut gs: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !gs.contains(&r.group) {
            gs.push(r.group);
        }
    }
    gs
}

fn versions_of(group: &str) -> Vec<&'static str> {
    let mut vs: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        if !vs.contains(&r.version) {
            vs.push(r.version);
        }
    }
    vs
}

/// `/apis/{group}` (`None` if the group is unknown).
pub fn group(name: &str) -> Option<Value> {
    let versions = versions_of(name);
    let preferred = *versions.first()?;
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect::<Vec<_>>(),
        "preferredVersion": {"groupVersion": format!("{name}/{preferred}"), "version": preferred},
    }))
}

/// `/apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter_map(group)
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
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in resource::in_group_version(group, version) {
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
        if r.kind == "Pod" {
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
        let core = resource_list("", "v1").unwrap_or_default();
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
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(!names.contains(&"deployments"));
        let apps = resource_list("apps", "v1").unwrap_or_default();
        assert_eq!(apps["groupVersion"], "apps/v1");
        assert_eq!(apps["resources"][0]["shortNames"], json!(["deploy"]));
        assert!(resource_list("apps", "v2").is_none());
        assert_eq!(group_list()["groups"][0]["name"], "apps");
        assert!(group("batch").is_none());
    }
}
