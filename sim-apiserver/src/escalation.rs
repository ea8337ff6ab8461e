//! RBAC's escalation prevention, pure: nobody grants permissions they do not hold.
//!
//! As in Kubernetes, creating or updating a **Role/ClusterRole** is allowed when the writer
//! holds every permission it grants (its rules *cover* the new rules), or may `escalate`
//! roles/clusterroles; creating or updating a **RoleBinding/ClusterRoleBinding** is allowed
//! when the writer holds every permission of the referenced role (in the binding's namespace),
//! or may `bind` that role (by name). Coverage is Kubernetes' `Covers`: each new rule is broken
//! down into one (group, resource, verb[, name]) or (URL, verb) at a time, and each must be
//! within one of the writer's rules (`*` only within `*`; `pods/log` within `*/log`).
//! `system:masters` holds everything.

use serde_json::Value;

use super::access::str_at;
use super::identity::UserInfo;
use super::rbac::{GROUP, Policy, PolicyRule};
use super::request_info::RequestInfo;
use super::status::ApiError;

fn has(set: &[String], x: &str) -> bool {
    set.iter().any(|s| s == x)
}

fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |v: &str| vec![v.to_string()];
    let mut out = Vec::new();
    for g in &rule.api_groups {
        for r in &rule.resources {
            for v in &rule.verbs {
                if rule.resource_names.is_empty() {
                    out.push(PolicyRule {
                        verbs: one(v),
                        api_groups: one(g),
                        resources: one(r),
                        ..PolicyRule::default()
                    });
                }
                for n in &rule.resource_names {
                    out.push(PolicyRule {
                        verbs: one(v),
                        api_groups: one(g),
                        resources: one(r),
                        resource_names: one(n),
                        ..PolicyRule::default()
                    });
                }
            }
        }
    }
    for u in &rule.non_resource_urls {
        for v in &rule.verbs {
            out.push(PolicyRule::non_resource(&[v], &[u]));
        }
    }
    out
}

fn resource_covered(owner: &[String], r: &str) -> bool {
    has(owner, "*")
        || has(owner, r)
        || r.split_once('/')
            .is_some_and(|(_, sub)| has(owner, &format!("*/{sub}")))
}

fn covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let all = |set: &[String], want: &[String], wildcard: bool| {
        (wildcard && has(set, "*")) || want.iter().all(|w| has(set, w))
    };
    all(&owner.verbs, &sub.verbs, true)
        && all(&owner.api_groups, &sub.api_groups, true)
        && sub
            .resources
            .iter()
            .all(|r| resource_covered(&owner.resources, r))
        && sub.non_resource_urls.iter().all(|u| {
            owner
                .non_resource_urls
                .iter()
                .any(|o| o == u || o.strip_suffix('*').is_some_and(|p| u.starts_with(p)))
        })
        && (owner.resource_names.is_empty()
            || (!sub.resource_names.is_empty()
                && all(&owner.resource_names, &sub.resource_names, false)))
}

/// The rules of `servant` that `owner` does not cover (broken down), empty if covered.
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(breakdown)
        .filter(|s| !owner.iter().any(|o| covers(o, s)))
        .collect()
}

/// Kubernetes' compact form of a rule: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
fn compact(r: &PolicyRule) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !r.api_groups.is_empty() {
        parts.push(format!("APIGroups:[{}]", list(&r.api_groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:[{}]", list(&r.resources)));
    }
    if !r.resource_names.is_empty() {
        parts.push(format!("ResourceNames:[{}]", list(&r.resource_names)));
    }
    if !r.non_resource_urls.is_empty() {
        parts.push(format!("NonResourceURLs:[{}]", list(&r.non_resource_urls)));
    }
    parts.push(format!("Verbs:[{}]", list(&r.verbs)));
    format!("{{{}}}", parts.join(", "))
}

fn forbidden(resource: &str, name: &str, user: &UserInfo, missing: &[PolicyRule]) -> ApiError {
    let groups = user
        .groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    let rules = missing.iter().map(compact).collect::<Vec<_>>().join("\n");
    let mut e = ApiError::new(
        http::StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{resource}.{GROUP} {name:?} is forbidden: user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{rules}",
            user.username
        ),
    );
    e.details = Some(serde_json::json!({"name": name, "group": GROUP, "kind": resource}));
    e
}

fn may(policy: &Policy, user: &UserInfo, verb: &str, resource: &str, ns: &str, name: &str) -> bool {
    policy
        .authorize(
            user,
            &RequestInfo {
                resource_request: true,
                verb: verb.to_string(),
                api_group: GROUP.to_string(),
                api_version: "v1".to_string(),
                namespace: ns.to_string(),
                resource: resource.to_string(),
                name: name.to_string(),
                ..RequestInfo::default()
            },
        )
        .allowed()
}

/// Whether `user` may write `obj` (a Role, ClusterRole, RoleBinding or ClusterRoleBinding;
/// other kinds pass) without escalating: the 403 Kubernetes answers otherwise.
pub fn check(policy: &Policy, user: &UserInfo, obj: &Value) -> Result<(), ApiError> {
    let kind = str_at(obj, "/kind");
    let name = str_at(obj, "/metadata/name");
    let ns = str_at(obj, "/metadata/namespace");
    let (resource, ns) = match kind {
        "Role" => ("roles", ns),
        "ClusterRole" => ("clusterroles", ""),
        "RoleBinding" => ("rolebindings", ns),
        "ClusterRoleBinding" => ("clusterrolebindings", ""),
        _ => return Ok(()),
    };
    let owner = policy.rules_for(user, ns);
    let owner: Vec<PolicyRule> = owner
        .resource_rules
        .into_iter()
        .chain(owner.non_resource_rules)
        .collect();
    let missing = if kind.ends_with("Binding") {
        let ref_kind = str_at(obj, "/roleRef/kind");
        let ref_name = str_at(obj, "/roleRef/name");
        let (ref_resource, cluster) = if ref_kind == "ClusterRole" || ns.is_empty() {
            ("clusterroles", true)
        } else {
            ("roles", false)
        };
        if may(policy, user, "bind", ref_resource, ns, ref_name) {
            return Ok(());
        }
        let ns_opt = (!ns.is_empty()).then_some(ns);
        uncovered(&owner, policy.role_ref_rules(ns_opt, cluster, ref_name))
    } else {
        if may(policy, user, "escalate", resource, ns, name) {
            return Ok(());
        }
        let rules: Vec<PolicyRule> = obj
            .pointer("/rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(PolicyRule::from_json)
            .collect();
        uncovered(&owner, &rules)
    };
    if missing.is_empty() {
        Ok(())
    } else {
        Err(forbidden(resource, name, user, &missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::{self, Subject};

    fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule::resource(verbs, groups, resources)
    }

    #[test]
    fn coverage_as_kubernetes() {
        let owner = [
            r(&["get", "list"], &[""], &["pods", "*/log"]),
            PolicyRule::non_resource(&["get"], &["/apis/*"]),
        ];
        assert!(uncovered(&owner, &[r(&["get"], &[""], &["pods", "pods/log"])]).is_empty());
        assert!(
            uncovered(
                &owner,
                &[PolicyRule::non_resource(&["get"], &["/apis/apps"])]
            )
            .is_empty()
        );
        assert_eq!(
            uncovered(&owner, &[r(&["get", "delete"], &[""], &["pods"])]),
            vec![r(&["delete"], &[""], &["pods"])]
        );
        // `*` is covered only by `*`.
        assert_eq!(uncovered(&owner, &[r(&["get"], &[""], &["*"])]).len(), 1);
        // Names narrow: a named owner rule does not cover an unnamed grant.
        let named = [PolicyRule {
            resource_names: vec!["a".into()],
            ..r(&["get"], &[""], &["configmaps"])
        }];
        assert_eq!(
            uncovered(&named, &[r(&["get"], &[""], &["configmaps"])]).len(),
            1
        );
        assert!(
            uncovered(
                &named,
                &[PolicyRule {
                    resource_names: vec!["a".into()],
                    ..r(&["get"], &[""], &["configmaps"])
                }]
            )
            .is_empty()
        );
    }

    #[test]
    fn checks_roles_and_bindings() {
        let policy = Policy::new(&[
            rbac::role("ns", "reader", &[r(&["get", "list"], &[""], &["pods"])]),
            rbac::role(
                "ns",
                "rbac-writer",
                &[r(
                    &["create", "update"],
                    &[GROUP],
                    &["roles", "rolebindings"],
                )],
            ),
            rbac::role_binding("ns", "a", false, "reader", &[Subject::User("jane".into())]),
            rbac::role_binding(
                "ns",
                "b",
                false,
                "rbac-writer",
                &[Subject::User("jane".into())],
            ),
        ]);
        let jane = UserInfo::new("jane", &[]);
        let ok_role = rbac::role("ns", "sub", &[r(&["get"], &[""], &["pods"])]);
        assert_eq!(check(&policy, &jane, &ok_role), Ok(()));
        let bad_role = rbac::role("ns", "sub", &[r(&["delete"], &[""], &["pods"])]);
        let e = check(&policy, &jane, &bad_role).err().map(|e| e.message);
        assert_eq!(
            e.as_deref(),
            Some(
                "roles.rbac.authorization.k8s.io \"sub\" is forbidden: user \"jane\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}"
            )
        );
        // Binding what she holds is fine; binding cluster-admin is not; the admin may.
        let b = |role: &str, cluster: bool| {
            rbac::role_binding("ns", "x", cluster, role, &[Subject::User("bob".into())])
        };
        assert_eq!(check(&policy, &jane, &b("reader", false)), Ok(()));
        assert!(check(&policy, &jane, &b("cluster-admin", true)).is_err());
        assert_eq!(
            check(&policy, &UserInfo::admin(), &b("cluster-admin", true)),
            Ok(())
        );
        // `bind` on the role by name lifts the check.
        let with_bind = Policy::new(&[
            rbac::cluster_role(
                "binder",
                &[PolicyRule {
                    resource_names: vec!["cluster-admin".into()],
                    ..r(&["bind"], &[GROUP], &["clusterroles"])
                }],
            ),
            rbac::role_binding("ns", "c", true, "binder", &[Subject::User("jane".into())]),
        ]);
        assert_eq!(check(&with_bind, &jane, &b("cluster-admin", true)), Ok(()));
        // Other kinds pass.
        assert_eq!(
            check(&policy, &jane, &serde_json::json!({"kind": "Pod"})),
            Ok(())
        );
    }
}
