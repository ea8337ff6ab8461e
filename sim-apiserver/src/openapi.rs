//! A minimal OpenAPI v3 document set: just enough for kubectl's field-validation check.
//!
//! `kubectl apply`/`create` (with the default `--validate=strict`) first asks `/openapi/v3` to
//! learn whether the server validates fields itself (a `fieldValidation` query parameter on the
//! resource's PATCH operation). Saying yes makes kubectl leave validation to the server (it
//! sends `fieldValidation=Strict`, which is accepted) instead of failing for lack of schemas.
//! No schemas are served, so `kubectl explain` does not work; `/openapi/v2` is 404.

use serde_json::{Map, Value, json};

use super::resource::{self, RESOURCES};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut gvs: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    gvs
}

/// `/openapi/v3`: the index of group-version documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0000000000000000")}),
        );
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/{api/v1 | apis/G/V}`: PATCH operations advertising `fieldValidation`.
pub fn group_version(path: &str) -> Option<Value> {
    let (g, v) = group_versions()
        .into_iter()
        .find(|(g, v)| gv_path(g, v) == path.trim_matches('/'))?;
    let mut paths = Map::new();
    for r in resource::in_group_version(g, v) {
        let base = format!("/{}", gv_path(g, v));
        let object_path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(
            object_path,
            json!({
                "patch": {
                    "operationId": format!("patch{}", r.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                    "parameters": [
                        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                        {"name": "force", "in": "query", "schema": {"type": "boolean"}}
                    ],
                    "responses": {"200": {"description": "OK"}}
                }
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::discovery::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let idx = index();
        assert!(
            idx["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .is_some()
        );
        assert!(idx["paths"]["apis/apps/v1"].is_object());
        let core = group_version("api/v1").unwrap_or_default();
        let pods = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(pods["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(core["paths"]["/api/v1/nodes/{name}"].is_object());
        assert!(group_version("apis/batch/v1").is_none());
    }
}
