//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/{group}` and resource lists,
//! generated from the resource registry (so custom resources appear as soon as their
//! definition is stored).
//!
//! Both forms are served: the legacy documents, and aggregated discovery
//! (`apidiscovery.k8s.io` `v2` and `v2beta1` `APIGroupDiscoveryList` at `/api` and `/apis`,
//! chosen by the `Accept` header), which kubectl 1.32 and `kube`'s
//! `Discovery::run_aggregated` ask for first.

use serde_json::{Value, json};

use super::resource::{Registry, ResourceType, VERBS};

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

/// The aggregated-discovery version a client accepts (`v2` preferred, then `v2beta1`), from
/// its `Accept` header values.
pub fn aggregated_version<'a>(accept: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let mut best = None;
    for v in accept.flat_map(|h| h.split(',')) {
        let params: Vec<&str> = v.split(';').map(str::trim).collect();
        let has = |p: &str| params.contains(&p);
        if !has("g=apidiscovery.k8s.io") || !has("as=APIGroupDiscoveryList") {
            continue;
        }
        if has("v=v2") {
            return Some("v2");
        }
        if has("v=v2beta1") {
            best = Some("v2beta1");
        }
    }
    best
}

/// The content type of an aggregated discovery document of `version`.
pub fn aggregated_content_type(version: &str) -> &'static str {
    match version {
        "v2beta1" => "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
        _ => "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
    }
}

/// The verbs of a resource: all of them, or only `create` for the review APIs.
fn verbs(r: &ResourceType) -> &'static [&'static str] {
    if r.create_only { &["create"] } else { VERBS }
}

fn resource_discovery(r: &ResourceType) -> Value {
    let kind = |group: &str, version: &str, kind: &str| json!({"group": group, "version": version, "kind": kind});
    let mut subresources = Vec::new();
    if r.has_status {
        subresources.push(json!({
            "subresource": "status",
            "responseKind": kind(&r.group, &r.version, &r.kind),
            "verbs": ["get", "patch", "update"],
        }));
    }
    if r.has_scale {
        subresources.push(json!({
            "subresource": "scale",
            "responseKind": kind("autoscaling", "v1", "Scale"),
            "verbs": ["get", "patch", "update"],
        }));
    }
    if r.kind == "Pod" && r.group.is_empty() {
        subresources.push(json!({
            "subresource": "log",
            "responseKind": kind("", "v1", "Pod"),
            "verbs": ["get"],
        }));
    }
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": kind(&r.group, &r.version, &r.kind),
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": verbs(r),
    });
    if let Some(o) = entry.as_object_mut() {
        if !r.short_names.is_empty() {
            o.insert("shortNames".to_string(), json!(r.short_names));
        }
        if !r.categories.is_empty() {
            o.insert("categories".to_string(), json!(r.categories));
        }
        if !subresources.is_empty() {
            o.insert("subresources".to_string(), json!(subresources));
        }
    }
    entry
}

/// The aggregated discovery document (`APIGroupDiscoveryList` of `version`) of the core group
/// (`/api`, `core = true`) or of the named groups (`/apis`).
pub fn aggregated(registry: &Registry, core: bool, version: &str) -> Value {
    let groups: Vec<(String, Vec<String>)> = if core {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        registry.groups()
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry
                        .in_group_version(g, v)
                        .iter()
                        .map(|r| resource_discovery(r))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
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
            "verbs": verbs(&r),
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

    #[test]
    fn aggregated_documents() {
        let reg = Registry::builtin();
        let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version([accept].into_iter()), Some("v2"));
        assert_eq!(
            aggregated_version(
                ["application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"]
                    .into_iter()
            ),
            Some("v2beta1")
        );
        assert_eq!(aggregated_version(["application/json"].into_iter()), None);
        let core = aggregated(&reg, true, "v2");
        assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2");
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["resource"] == "pods")
            .cloned()
            .unwrap_or_default();
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["responseKind"]["kind"], "Pod");
        assert_eq!(pods["subresources"][0]["subresource"], "status");
        let apis = aggregated(&reg, false, "v2");
        assert_eq!(apis["items"][0]["metadata"]["name"], "apps");
        let deploy = &apis["items"][0]["versions"][0]["resources"][0];
        assert_eq!(deploy["resource"], "deployments");
        assert_eq!(deploy["subresources"][1]["responseKind"]["kind"], "Scale");
    }
}
