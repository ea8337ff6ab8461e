//! The review APIs, answered at once from the identity and the RBAC [`Policy`], never stored:
//!
//! * `authentication.k8s.io/v1` `SelfSubjectReview` (`kubectl auth whoami`): the caller's
//!   identity, after impersonation;
//! * `authorization.k8s.io/v1` `SelfSubjectAccessReview` (`kubectl auth can-i`),
//!   `SubjectAccessReview` and `LocalSubjectAccessReview` (may someone else do it; creating
//!   those needs the RBAC permission, as in Kubernetes), `SelfSubjectRulesReview`
//!   (`kubectl auth can-i --list`).

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Value, json};

use super::access::{str_at, strings_at};
use super::identity::UserInfo;
use super::rbac::{Decision, Policy};
use super::request_info::RequestInfo;
use super::resource::ResourceType;
use super::status::ApiError;

fn invalid(kind: &str, message: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("{kind}.{} \"\" is invalid: {message}", kind_group(kind)),
    );
    e.details =
        Some(json!({"kind": kind, "group": kind_group(kind), "causes": [{"message": message}]}));
    e
}

fn kind_group(kind: &str) -> &'static str {
    if kind == "SelfSubjectReview" {
        "authentication.k8s.io"
    } else {
        "authorization.k8s.io"
    }
}

/// The request a `resourceAttributes` / `nonResourceAttributes` spec asks about.
fn attributes(kind: &str, spec: &Value) -> Result<RequestInfo, ApiError> {
    match (
        spec.get("resourceAttributes").filter(|v| v.is_object()),
        spec.get("nonResourceAttributes").filter(|v| v.is_object()),
    ) {
        (Some(r), None) => Ok(RequestInfo {
            resource_request: true,
            verb: str_at(r, "/verb").to_string(),
            api_group: str_at(r, "/group").to_string(),
            api_version: str_at(r, "/version").to_string(),
            namespace: str_at(r, "/namespace").to_string(),
            resource: str_at(r, "/resource").to_string(),
            subresource: str_at(r, "/subresource").to_string(),
            name: str_at(r, "/name").to_string(),
            path: String::new(),
        }),
        (None, Some(n)) => Ok(RequestInfo::non_resource(
            str_at(n, "/verb"),
            str_at(n, "/path"),
        )),
        _ => Err(invalid(
            kind,
            "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn answer(kind: &str, mut obj: Value, status: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.insert("kind".into(), json!(kind));
        o.insert(
            "apiVersion".into(),
            json!(format!("{}/v1", kind_group(kind))),
        );
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("creationTimestamp".into(), Value::Null);
        }
        o.insert("status".into(), status);
    }
    obj
}

fn access_status(d: &Decision) -> Value {
    match d {
        Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Decision::NoOpinion => json!({"allowed": false}),
    }
}

/// Answers a `create` of review kind `r` by `user` (the identity after impersonation), with
/// the request body `body` (already decoded), in `namespace` (for `LocalSubjectAccessReview`).
pub fn create(
    r: &ResourceType,
    user: &UserInfo,
    policy: &Policy,
    namespace: Option<&str>,
    body: Value,
) -> Result<Value, ApiError> {
    let kind = r.kind.as_str();
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a {kind} object"
        )));
    }
    let empty = json!({});
    let spec = body.get("spec").unwrap_or(&empty).clone();
    match kind {
        "SelfSubjectReview" => Ok(answer(kind, body, json!({"userInfo": user.to_json()}))),
        "SelfSubjectAccessReview" => {
            let req = attributes(kind, &spec)?;
            Ok(answer(
                kind,
                body,
                access_status(&policy.authorize(user, &req)),
            ))
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let mut req = attributes(kind, &spec)?;
            if let Some(ns) = namespace {
                if !req.resource_request {
                    return Err(invalid(
                        kind,
                        "spec.nonResourceAttributes: Invalid value: disallowed on this kind of request",
                    ));
                }
                if req.namespace.is_empty() {
                    req.namespace = ns.to_string();
                } else if req.namespace != ns {
                    return Err(invalid(
                        kind,
                        "spec.resourceAttributes.namespace: Invalid value: must match metadata.namespace",
                    ));
                }
            }
            let subject = subject(&spec);
            if subject.username.is_empty() && subject.groups.is_empty() {
                return Err(invalid(
                    kind,
                    "spec.user: Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            Ok(answer(
                kind,
                body,
                access_status(&policy.authorize(&subject, &req)),
            ))
        }
        "SelfSubjectRulesReview" => {
            let ns = str_at(&spec, "/namespace");
            let rules = policy.rules_for(user, ns);
            let resource_rules: Vec<Value> = rules
                .resource_rules
                .iter()
                .map(|r| {
                    let mut v = r.to_json();
                    if let Some(o) = v.as_object_mut() {
                        o.entry("apiGroups").or_insert_with(|| json!([]));
                    }
                    v
                })
                .collect();
            let non_resource_rules: Vec<Value> = rules
                .non_resource_rules
                .iter()
                .map(|r| r.to_json())
                .collect();
            Ok(answer(
                kind,
                body,
                json!({
                    "resourceRules": resource_rules,
                    "nonResourceRules": non_resource_rules,
                    "incomplete": false,
                }),
            ))
        }
        _ => Err(ApiError::not_found_path(&r.plural)),
    }
}

/// The identity a `SubjectAccessReview` asks about (no `system:authenticated` added: the
/// review names every group itself, as in Kubernetes).
fn subject(spec: &Value) -> UserInfo {
    let extra: BTreeMap<String, Vec<String>> = spec
        .get("extra")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
            )
        })
        .collect();
    UserInfo {
        username: str_at(spec, "/user").to_string(),
        uid: str_at(spec, "/uid").to_string(),
        groups: strings_at(spec, "/groups"),
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Registry;

    fn kind(k: &str) -> crate::resource::Resource {
        Registry::builtin()
            .all()
            .iter()
            .find(|r| r.kind == k)
            .cloned()
            .unwrap_or_else(|| Registry::builtin().all()[0].clone())
    }

    #[test]
    fn answers() {
        let policy = Policy::new(&[]);
        let jane = UserInfo::new("jane", &["dev"]);
        let who =
            create(&kind("SelfSubjectReview"), &jane, &policy, None, json!({})).unwrap_or_default();
        assert_eq!(who["status"]["userInfo"]["username"], "jane");
        assert_eq!(who["apiVersion"], "authentication.k8s.io/v1");
        let ssar = |attrs: Value| {
            create(
                &kind("SelfSubjectAccessReview"),
                &jane,
                &policy,
                None,
                json!({"spec": attrs}),
            )
        };
        let no = ssar(json!({"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"}}))
            .unwrap_or_default();
        assert_eq!(no["status"]["allowed"], false);
        let yes = ssar(json!({"nonResourceAttributes": {"verb": "get", "path": "/api"}}))
            .unwrap_or_default();
        assert_eq!(yes["status"]["allowed"], true);
        assert_eq!(ssar(json!({})).map_err(|e| e.code.as_u16()), Err(422));
        let sar = create(
            &kind("SubjectAccessReview"),
            &UserInfo::admin(),
            &policy,
            None,
            json!({"spec": {"user": "x", "groups": ["system:masters"], "resourceAttributes": {"verb": "delete", "resource": "nodes"}}}),
        )
        .unwrap_or_default();
        assert_eq!(sar["status"]["allowed"], true);
        let rules = create(
            &kind("SelfSubjectRulesReview"),
            &jane,
            &policy,
            None,
            json!({"spec": {"namespace": "default"}}),
        )
        .unwrap_or_default();
        assert_eq!(rules["status"]["incomplete"], false);
        assert!(
            rules["status"]["resourceRules"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        );
    }
}
