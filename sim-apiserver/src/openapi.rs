//! A minimal OpenAPI v3 document set: just enough for kubectl's field-validation check.
//!
//! `kubectl apply`/`create` (with the default `--validate=strict`) first asks `/openapi/v3` to
//! learn whether the server validates fields itself (a `fieldValidation` query parameter on the
//! resource's PATCH operation). Saying yes makes kubectl leave validation to the server (it
//! sends `fieldValidation=Strict`, which is accepted) instead of failing for lack of schemas.
//! No schemas are served, so `kubectl explain` does not work. `/openapi/v2` is a valid, empty
//! Swagger 2.0 document: kubectl falls back to it to validate kinds it cannot find in v3 (a
//! custom resource whose definition is applied in the same run), and skips kinds it has no
//! schema for, as with a real server.

use serde_json::{Map, Value, json};

use super::resource::Registry;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The content type of `/openapi/v2` in protobuf (kubectl asks for the older spelling with `@`,
/// which is not a valid media type, and is answered with this one, as by a real server).
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2` as JSON: a Swagger 2.0 document without paths or definitions.
pub fn v2_json() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": super::discovery::GIT_VERSION},
        "paths": {},
        "definitions": {},
    })
}

/// `/openapi/v2` as protobuf (gnostic `openapi.v2.Document`): `swagger` (field 1) and
/// `info.title`/`info.version` (fields 2.1, 2.2); no paths or definitions.
pub fn v2_protobuf() -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(tag << 3) | 2];
        let mut len = bytes.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(bytes);
        out
    }
    let mut info = field(1, b"Kubernetes");
    info.extend(field(2, super::discovery::GIT_VERSION.as_bytes()));
    let mut doc = field(1, b"2.0");
    doc.extend(field(2, &info));
    doc
}

/// `/openapi/v3`: the index of group-version documents.
pub fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, v) in registry.group_versions() {
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0000000000000000")}),
        );
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/{api/v1 | apis/G/V}`: PATCH operations advertising `fieldValidation`.
pub fn group_version(registry: &Registry, path: &str) -> Option<Value> {
    let (g, v) = registry
        .group_versions()
        .into_iter()
        .find(|(g, v)| gv_path(g, v) == path.trim_matches('/'))?;
    let mut paths = Map::new();
    for r in registry.in_group_version(&g, &v) {
        let base = format!("/{}", gv_path(&g, &v));
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
    fn v2_is_a_small_protobuf_document() {
        let pb = v2_protobuf();
        assert_eq!(&pb[..5], &[0x0a, 0x03, b'2', b'.', b'0']);
        assert_eq!(pb[5], 0x12);
        assert_eq!(pb[6] as usize, pb.len() - 7);
        assert_eq!(v2_json()["swagger"], "2.0");
    }

    #[test]
    fn documents() {
        let reg = Registry::builtin();
        let idx = index(&reg);
        assert!(
            idx["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .is_some()
        );
        assert!(idx["paths"]["apis/apps/v1"].is_object());
        let core = group_version(&reg, "api/v1").unwrap_or_default();
        let pods = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(pods["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(core["paths"]["/api/v1/nodes/{name}"].is_object());
        assert!(group_version(&reg, "apis/batch/v1").is_some());
        assert!(group_version(&reg, "apis/example.com/v1").is_none());
    }
}
