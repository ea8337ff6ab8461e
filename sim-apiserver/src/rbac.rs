//! The RBAC authorizer, pure: Roles, ClusterRoles, RoleBindings and ClusterRoleBindings
//! (`rbac.authorization.k8s.io/v1`) decide whether an identity may do what a request asks
//! ([`RequestInfo`]), as Kubernetes' RBAC authorizer decides.
//!
//! * A **rule** allows a resource request when its `verbs` (or `*`), `apiGroups` (or `*`) and
//!   `resources` match — `*` matches every resource and subresource, `pods` only `pods`,
//!   `pods/log` only that subresource, `*/log` every `log` subresource — and `resourceNames` is
//!   empty or names the object (so a rule with names never allows `list` or `create`). A rule
//!   with `nonResourceURLs` allows a non-resource request whose path is listed, or starts with
//!   a listed prefix ending in `*`.
//! * A **ClusterRoleBinding** grants its ClusterRole's rules everywhere; a **RoleBinding**
//!   grants its Role's (or ClusterRole's) resource rules in its own namespace only.
//! * **Subjects**: `User` (by name), `Group` (by membership), `ServiceAccount` (the user
//!   `system:serviceaccount:NS:NAME`, NS defaulting to the binding's namespace).
//! * Nothing is denied explicitly: a request no rule allows is forbidden.
//!
//! **Bootstrap policy**, built in (not stored objects): the group `system:masters` is allowed
//! everything (short-circuit, as Kubernetes' privileged-group authorizer); every authenticated
//! identity may read discovery, OpenAPI, `/version` and health paths (`system:discovery`,
//! `system:public-info-viewer`) and create the self reviews (`system:basic-user`:
//! `selfsubjectreviews`, `selfsubjectaccessreviews`, `selfsubjectrulesreviews`); the default
//! ClusterRoles `cluster-admin`, `admin`, `edit` and `view` exist for bindings to refer to
//! (simplified rule sets; a stored ClusterRole of the same name replaces one). Aggregation is
//! not implemented.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::access::{str_at, strings_at};
use super::identity::{ALL_AUTHENTICATED, ALL_UNAUTHENTICATED, MASTERS, UserInfo};
use super::request_info::RequestInfo;

/// The API group of RBAC kinds.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// One rule of a role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// Verbs (`*` = all).
    pub verbs: Vec<String>,
    /// API groups (`""` = core, `*` = all).
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*/scale`, `*`).
    pub resources: Vec<String>,
    /// Object names (empty = any).
    pub resource_names: Vec<String>,
    /// Non-resource paths (`/healthz`, `/apis/*`, `*`).
    pub non_resource_urls: Vec<String>,
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl PolicyRule {
    /// A resource rule.
    pub fn resource(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Self {
        Self {
            verbs: strs(verbs),
            api_groups: strs(groups),
            resources: strs(resources),
            ..Self::default()
        }
    }

    /// A non-resource rule.
    pub fn non_resource(verbs: &[&str], urls: &[&str]) -> Self {
        Self {
            verbs: strs(verbs),
            non_resource_urls: strs(urls),
            ..Self::default()
        }
    }

    /// The rule of a role's `rules[]` entry.
    pub fn from_json(v: &Value) -> Self {
        Self {
            verbs: strings_at(v, "/verbs"),
            api_groups: strings_at(v, "/apiGroups"),
            resources: strings_at(v, "/resources"),
            resource_names: strings_at(v, "/resourceNames"),
            non_resource_urls: strings_at(v, "/nonResourceURLs"),
        }
    }

    /// The rule as a role's `rules[]` entry.
    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("verbs".into(), json!(self.verbs));
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                o.insert(k.into(), json!(v));
            }
        }
        Value::Object(o)
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        let combined = if subresource.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}/{subresource}")
        };
        self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
        })
    }

    /// Whether this rule allows `req`.
    pub fn allows(&self, req: &RequestInfo) -> bool {
        if !self.verb_matches(&req.verb) {
            return false;
        }
        if !req.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == req.path
                    || u.strip_suffix('*').is_some_and(|p| req.path.starts_with(p))
            });
        }
        self.api_groups
            .iter()
            .any(|g| g == "*" || *g == req.api_group)
            && self.resource_matches(&req.resource, &req.subresource)
            && (self.resource_names.is_empty() || self.resource_names.contains(&req.name))
    }
}

/// A subject of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A user, by name.
    User(String),
    /// A group.
    Group(String),
    /// A service account (`namespace`, `name`).
    ServiceAccount(String, String),
}

impl Subject {
    fn from_json(v: &Value, binding_namespace: &str) -> Option<Self> {
        let name = str_at(v, "/name").to_string();
        match str_at(v, "/kind") {
            "User" => Some(Self::User(name)),
            "Group" => Some(Self::Group(name)),
            "ServiceAccount" => {
                let ns = match str_at(v, "/namespace") {
                    "" => binding_namespace,
                    ns => ns,
                };
                Some(Self::ServiceAccount(ns.to_string(), name))
            }
            _ => None,
        }
    }

    /// The subject as a binding's `subjects[]` entry.
    pub fn to_json(&self) -> Value {
        match self {
            Self::User(n) => json!({"kind": "User", "apiGroup": GROUP, "name": n}),
            Self::Group(n) => json!({"kind": "Group", "apiGroup": GROUP, "name": n}),
            Self::ServiceAccount(ns, n) => {
                json!({"kind": "ServiceAccount", "namespace": ns, "name": n})
            }
        }
    }

    /// Whether this subject names `user`.
    pub fn applies_to(&self, user: &UserInfo) -> bool {
        match self {
            Self::User(n) => *n == user.username,
            Self::Group(g) => user.in_group(g),
            Self::ServiceAccount(ns, n) => {
                super::identity::service_account_of(&user.username) == Some((ns, n))
            }
        }
    }
}

/// A RoleBinding (with a namespace) or ClusterRoleBinding (without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Name (for reasons).
    pub name: String,
    /// The RoleBinding's namespace; `None` for a ClusterRoleBinding.
    pub namespace: Option<String>,
    /// Whether `role` names a ClusterRole (else a Role in `namespace`).
    pub cluster_role: bool,
    /// The role's name.
    pub role: String,
    /// Who it applies to.
    pub subjects: Vec<Subject>,
}

impl Binding {
    fn from_json(v: &Value) -> Self {
        let namespace = match str_at(v, "/metadata/namespace") {
            "" => None,
            ns => Some(ns.to_string()),
        };
        let ns = namespace.clone().unwrap_or_default();
        Self {
            name: str_at(v, "/metadata/name").to_string(),
            cluster_role: namespace.is_none() || str_at(v, "/roleRef/kind") == "ClusterRole",
            namespace,
            role: str_at(v, "/roleRef/name").to_string(),
            subjects: v
                .pointer("/subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| Subject::from_json(s, &ns))
                .collect(),
        }
    }
}

/// Why a request was allowed (Kubernetes' RBAC reason text) or that it was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the reason (`RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y"
    /// to User "z"`).
    Allow(String),
    /// No rule allows it.
    NoOpinion,
}

impl Decision {
    /// Whether allowed.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

/// The rules that apply to an identity in a namespace, for `SelfSubjectRulesReview`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// Resource rules.
    pub resource_rules: Vec<PolicyRule>,
    /// Non-resource rules.
    pub non_resource_rules: Vec<PolicyRule>,
}

/// A snapshot of the cluster's RBAC objects plus the bootstrap policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    bindings: Vec<Binding>,
}

/// The built-in ClusterRoles (used when no stored ClusterRole has the name).
pub fn bootstrap_cluster_roles() -> Vec<(&'static str, Vec<PolicyRule>)> {
    let read = &["get", "list", "watch"];
    let write = &[
        "create",
        "delete",
        "deletecollection",
        "patch",
        "update",
        "get",
        "list",
        "watch",
    ];
    let workload_groups = &[
        "",
        "apps",
        "batch",
        "autoscaling",
        "policy",
        "networking.k8s.io",
        "coordination.k8s.io",
    ];
    let viewable = &[
        "pods",
        "pods/log",
        "pods/status",
        "services",
        "services/status",
        "endpoints",
        "configmaps",
        "events",
        "serviceaccounts",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "replicationcontrollers",
        "resourcequotas",
        "limitranges",
        "namespaces",
        "namespaces/status",
        "deployments",
        "deployments/status",
        "deployments/scale",
        "replicasets",
        "replicasets/status",
        "replicasets/scale",
        "daemonsets",
        "daemonsets/status",
        "statefulsets",
        "statefulsets/status",
        "statefulsets/scale",
        "jobs",
        "jobs/status",
        "cronjobs",
        "cronjobs/status",
        "horizontalpodautoscalers",
        "horizontalpodautoscalers/status",
        "poddisruptionbudgets",
        "poddisruptionbudgets/status",
        "ingresses",
        "ingresses/status",
        "networkpolicies",
        "leases",
    ];
    let editable = &[
        "pods",
        "pods/exec",
        "pods/attach",
        "pods/portforward",
        "pods/log",
        "services",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "persistentvolumeclaims",
        "events",
        "deployments",
        "deployments/scale",
        "replicasets",
        "replicasets/scale",
        "daemonsets",
        "statefulsets",
        "statefulsets/scale",
        "jobs",
        "cronjobs",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
        "ingresses",
        "networkpolicies",
        "leases",
    ];
    let view = vec![PolicyRule::resource(read, workload_groups, viewable)];
    let mut edit = view.clone();
    edit.push(PolicyRule::resource(write, workload_groups, editable));
    let mut admin = edit.clone();
    admin.push(PolicyRule::resource(
        write,
        &[GROUP],
        &["roles", "rolebindings"],
    ));
    vec![
        (
            "cluster-admin",
            vec![
                PolicyRule::resource(&["*"], &["*"], &["*"]),
                PolicyRule::non_resource(&["*"], &["*"]),
            ],
        ),
        ("admin", admin),
        ("edit", edit),
        ("view", view),
        (
            "system:discovery",
            vec![PolicyRule::non_resource(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        (
            "system:public-info-viewer",
            vec![PolicyRule::non_resource(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        (
            "system:basic-user",
            vec![
                PolicyRule::resource(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
                PolicyRule::resource(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
            ],
        ),
    ]
}

/// The built-in ClusterRoleBindings.
fn bootstrap_bindings() -> Vec<Binding> {
    let crb = |name: &str, group: &str| Binding {
        name: name.to_string(),
        namespace: None,
        cluster_role: true,
        role: name.to_string(),
        subjects: vec![Subject::Group(group.to_string())],
    };
    vec![
        crb("cluster-admin", MASTERS),
        crb("system:discovery", ALL_AUTHENTICATED),
        crb("system:basic-user", ALL_AUTHENTICATED),
        Binding {
            subjects: vec![
                Subject::Group(ALL_AUTHENTICATED.to_string()),
                Subject::Group(ALL_UNAUTHENTICATED.to_string()),
            ],
            ..crb("system:public-info-viewer", ALL_AUTHENTICATED)
        },
    ]
}

impl Policy {
    /// The bootstrap policy plus the given stored objects (Role, ClusterRole, RoleBinding,
    /// ClusterRoleBinding as JSON; other kinds are ignored).
    pub fn new<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut p = Self {
            cluster_roles: bootstrap_cluster_roles()
                .into_iter()
                .map(|(n, r)| (n.to_string(), r))
                .collect(),
            bindings: bootstrap_bindings(),
            ..Self::default()
        };
        for o in objects {
            let rules = || {
                o.pointer("/rules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(PolicyRule::from_json)
                    .collect::<Vec<_>>()
            };
            let name = str_at(o, "/metadata/name").to_string();
            match str_at(o, "/kind") {
                "Role" => {
                    let ns = str_at(o, "/metadata/namespace").to_string();
                    p.roles.insert((ns, name), rules());
                }
                "ClusterRole" => {
                    p.cluster_roles.insert(name, rules());
                }
                "RoleBinding" | "ClusterRoleBinding" => p.bindings.push(Binding::from_json(o)),
                _ => {}
            }
        }
        p
    }

    /// The rules of the role a binding in `namespace` (`None`: a ClusterRoleBinding) refers to
    /// (`cluster_role`: a ClusterRole); empty if there is no such role.
    pub fn role_ref_rules(
        &self,
        namespace: Option<&str>,
        cluster_role: bool,
        name: &str,
    ) -> &[PolicyRule] {
        self.role_rules(&Binding {
            name: String::new(),
            namespace: namespace.map(str::to_string),
            cluster_role: cluster_role || namespace.is_none(),
            role: name.to_string(),
            subjects: Vec::new(),
        })
    }

    fn role_rules(&self, b: &Binding) -> &[PolicyRule] {
        let rules = if b.cluster_role {
            self.cluster_roles.get(&b.role)
        } else {
            self.roles
                .get(&(b.namespace.clone().unwrap_or_default(), b.role.clone()))
        };
        rules.map(Vec::as_slice).unwrap_or_default()
    }

    /// The bindings that apply to `user` for a request in `namespace` (`""`: cluster scope),
    /// with the rules each grants there.
    fn grants<'p>(
        &'p self,
        user: &'p UserInfo,
        namespace: &'p str,
    ) -> impl Iterator<Item = (&'p Binding, &'p [PolicyRule])> + 'p {
        self.bindings
            .iter()
            .filter(move |b| match &b.namespace {
                None => true,
                Some(ns) => !namespace.is_empty() && ns == namespace,
            })
            .filter(move |b| b.subjects.iter().any(|s| s.applies_to(user)))
            .map(move |b| (b, self.role_rules(b)))
    }

    /// Whether `user` may do `req`.
    pub fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision {
        if user.in_group(MASTERS) {
            return Decision::Allow(format!("group {MASTERS:?} is allowed everything"));
        }
        for (b, rules) in self.grants(user, &req.namespace) {
            // RoleBindings grant resource rules only.
            if b.namespace.is_some() && !req.resource_request {
                continue;
            }
            if rules.iter().any(|r| r.allows(req)) {
                let (bk, rk) = match (&b.namespace, b.cluster_role) {
                    (None, _) => ("ClusterRoleBinding", "ClusterRole"),
                    (Some(_), true) => ("RoleBinding", "ClusterRole"),
                    (Some(_), false) => ("RoleBinding", "Role"),
                };
                let at = b
                    .namespace
                    .as_ref()
                    .map(|ns| format!(" of namespace {ns:?}"))
                    .unwrap_or_default();
                return Decision::Allow(format!(
                    "RBAC: allowed by {bk} {:?}{at} of {rk} {:?} to {}",
                    b.name,
                    b.role,
                    subject_text(b, user)
                ));
            }
        }
        Decision::NoOpinion
    }

    /// The rules that apply to `user` in `namespace` (as `SelfSubjectRulesReview` lists them).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> RuleSet {
        let mut out = RuleSet::default();
        if user.in_group(MASTERS) {
            out.resource_rules
                .push(PolicyRule::resource(&["*"], &["*"], &["*"]));
            out.non_resource_rules
                .push(PolicyRule::non_resource(&["*"], &["*"]));
        }
        for (b, rules) in self.grants(user, namespace) {
            for r in rules {
                if !r.non_resource_urls.is_empty() {
                    if b.namespace.is_none() {
                        out.non_resource_rules.push(PolicyRule {
                            verbs: r.verbs.clone(),
                            non_resource_urls: r.non_resource_urls.clone(),
                            ..PolicyRule::default()
                        });
                    }
                } else if !r.resources.is_empty() {
                    out.resource_rules.push(r.clone());
                }
            }
        }
        out
    }
}

fn subject_text(b: &Binding, user: &UserInfo) -> String {
    b.subjects
        .iter()
        .find(|s| s.applies_to(user))
        .map(|s| match s {
            Subject::User(n) => format!("User {n:?}"),
            Subject::Group(g) => format!("Group {g:?}"),
            Subject::ServiceAccount(ns, n) => format!("ServiceAccount \"{ns}/{n}\""),
        })
        .unwrap_or_default()
}

/// The message of a forbidden request, as Kubernetes words it:
/// `pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace
/// "default"`.
pub fn forbidden_message(user: &UserInfo, req: &RequestInfo) -> String {
    let who = &user.username;
    if !req.resource_request {
        return format!(
            "forbidden: User {who:?} cannot {} path {:?}",
            req.verb, req.path
        );
    }
    let mut resource = req.resource.clone();
    if !req.subresource.is_empty() {
        resource = format!("{resource}/{}", req.subresource);
    }
    let scope = if req.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", req.namespace)
    };
    let what = format!(
        "User {who:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        req.verb, req.api_group
    );
    let gr = if req.api_group.is_empty() {
        req.resource.clone()
    } else {
        format!("{}.{}", req.resource, req.api_group)
    };
    if req.name.is_empty() {
        format!("{gr} is forbidden: {what}")
    } else {
        format!("{gr} {:?} is forbidden: {what}", req.name)
    }
}

/// The 403 `Forbidden` error of a forbidden request (with `details` as Kubernetes sets them).
pub fn forbidden(user: &UserInfo, req: &RequestInfo) -> super::status::ApiError {
    let mut e = super::status::ApiError::new(
        http::StatusCode::FORBIDDEN,
        "Forbidden",
        forbidden_message(user, req),
    );
    e.details = Some(if req.resource_request {
        json!({"name": req.name, "group": req.api_group, "kind": req.resource})
    } else {
        json!({})
    });
    e
}

/// A `Role` object in `namespace` with `rules` (to create in the store or apply).
pub fn role(namespace: &str, name: &str, rules: &[PolicyRule]) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules.iter().map(PolicyRule::to_json).collect::<Vec<_>>(),
    })
}

/// A `ClusterRole` object with `rules`.
pub fn cluster_role(name: &str, rules: &[PolicyRule]) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules.iter().map(PolicyRule::to_json).collect::<Vec<_>>(),
    })
}

/// A `RoleBinding` in `namespace` of the Role (or, with `cluster_role`, the ClusterRole)
/// `role` to `subjects`.
pub fn role_binding(
    namespace: &str,
    name: &str,
    cluster_role: bool,
    role: &str,
    subjects: &[Subject],
) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": GROUP, "kind": if cluster_role { "ClusterRole" } else { "Role" }, "name": role},
        "subjects": subjects.iter().map(Subject::to_json).collect::<Vec<_>>(),
    })
}

/// A `ClusterRoleBinding` of the ClusterRole `role` to `subjects`.
pub fn cluster_role_binding(name: &str, role: &str, subjects: &[Subject]) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects.iter().map(Subject::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const VERBS: &[&str] = &["get", "list", "create", "delete"];
    const GROUPS: &[&str] = &["", "apps"];
    const RESOURCES: &[&str] = &["pods", "deployments"];
    const SUBS: &[&str] = &["", "log", "exec"];
    const NAMES: &[&str] = &["", "a", "b"];
    const NAMESPACES: &[&str] = &["", "ns1", "ns2"];
    const PATHS: &[&str] = &["/healthz", "/apis", "/apis/apps", "/metrics"];
    const USERS: &[&str] = &["u1", "u2", "system:serviceaccount:ns1:sa"];
    const USER_GROUPS: &[&str] = &["g1", "g2"];

    fn pick(from: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::sample::select(from).prop_map(str::to_string)
    }

    fn some_of(from: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(from, 0..=from.len())
            .prop_map(|v: Vec<&'static str>| v.into_iter().map(str::to_string).collect())
    }

    fn rule() -> impl Strategy<Value = PolicyRule> {
        let verbs = prop_oneof![some_of(VERBS), Just(vec!["*".to_string()])];
        let groups = prop_oneof![some_of(GROUPS), Just(vec!["*".to_string()])];
        let resources = prop_oneof![
            some_of(&["pods", "deployments", "pods/log", "pods/exec", "*/log"]),
            Just(vec!["*".to_string()]),
        ];
        let names = some_of(&["a", "b"]);
        let urls = some_of(&["/healthz", "/apis", "/apis/*", "*"]);
        (verbs, groups, resources, names, urls, any::<bool>()).prop_map(
            |(verbs, api_groups, resources, resource_names, urls, non_resource)| {
                if non_resource {
                    PolicyRule {
                        verbs,
                        non_resource_urls: urls,
                        ..PolicyRule::default()
                    }
                } else {
                    PolicyRule {
                        verbs,
                        api_groups,
                        resources,
                        resource_names,
                        ..PolicyRule::default()
                    }
                }
            },
        )
    }

    fn subject() -> impl Strategy<Value = Subject> {
        prop_oneof![
            pick(&["u1", "u2"]).prop_map(Subject::User),
            pick(USER_GROUPS).prop_map(Subject::Group),
            pick(&["", "ns1", "ns2"]).prop_map(|ns| Subject::ServiceAccount(ns, "sa".into())),
        ]
    }

    /// (role name, namespace or None for a ClusterRole, rules)
    type RoleDef = (String, Option<String>, Vec<PolicyRule>);
    /// (binding namespace or None, role is ClusterRole, role name, subjects)
    type BindingDef = (Option<String>, bool, String, Vec<Subject>);

    fn policy_defs() -> impl Strategy<Value = (Vec<RoleDef>, Vec<BindingDef>)> {
        let role = (
            pick(&["r1", "r2"]),
            proptest::option::of(pick(&["ns1", "ns2"])),
            proptest::collection::vec(rule(), 0..3),
        );
        let binding = (
            proptest::option::of(pick(&["ns1", "ns2"])),
            any::<bool>(),
            pick(&["r1", "r2", "view"]),
            proptest::collection::vec(subject(), 1..3),
        );
        (
            proptest::collection::vec(role, 0..4),
            proptest::collection::vec(binding, 0..4),
        )
    }

    fn objects(roles: &[RoleDef], bindings: &[BindingDef]) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, ns, rules) in roles {
            out.push(match ns {
                Some(ns) => role(ns, name, rules),
                None => cluster_role(name, rules),
            });
        }
        for (i, (ns, cr, role, subjects)) in bindings.iter().enumerate() {
            let name = format!("b{i}");
            out.push(match ns {
                Some(ns) => role_binding(ns, &name, *cr, role, subjects),
                None => cluster_role_binding(&name, role, subjects),
            });
        }
        out
    }

    /// A concrete thing a request may do: resource (verb, group, resource, sub, name, ns) or
    /// non-resource (verb, path).
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    enum Act {
        Resource([String; 6]),
        Path(String, String),
    }

    /// The reference model: expand every grant into the set of concrete acts it allows over the
    /// small universe, by definition rather than by matching.
    fn model_allowed(roles: &[RoleDef], bindings: &[BindingDef], user: &UserInfo) -> HashSet<Act> {
        let mut allowed = HashSet::new();
        // Stored roles replace built-in ones of the same name; the last definition wins.
        let find = |name: &str, ns: Option<&str>| -> Option<Vec<PolicyRule>> {
            let stored = roles
                .iter()
                .rev()
                .find(|(n, rns, _)| n == name && rns.as_deref() == ns)
                .map(|(_, _, r)| r.clone());
            match (stored, ns) {
                (Some(r), _) => Some(r),
                (None, None) => bootstrap_cluster_roles()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, r)| r),
                (None, Some(_)) => None,
            }
        };
        for (bns, cr, role_name, subjects) in bindings {
            let bound = subjects.iter().any(|s| match s {
                Subject::User(n) => *n == user.username,
                Subject::Group(g) => user.groups.contains(g),
                Subject::ServiceAccount(ns, n) => {
                    let ns = if ns.is_empty() {
                        bns.clone().unwrap_or_default()
                    } else {
                        ns.clone()
                    };
                    user.username == format!("system:serviceaccount:{ns}:{n}")
                }
            });
            if !bound {
                continue;
            }
            let rules = if bns.is_none() || *cr {
                find(role_name, None)
            } else {
                find(role_name, bns.as_deref())
            };
            for rule in rules.unwrap_or_default() {
                let all = |list: &[String], universe: &[&str]| -> Vec<String> {
                    if list.iter().any(|x| x == "*") {
                        universe.iter().map(|s| s.to_string()).collect()
                    } else {
                        list.to_vec()
                    }
                };
                let verbs = all(&rule.verbs, VERBS);
                if !rule.non_resource_urls.is_empty() {
                    if bns.is_some() {
                        continue;
                    }
                    for v in &verbs {
                        for p in PATHS {
                            let ok = rule.non_resource_urls.iter().any(|u| {
                                u == "*"
                                    || u == p
                                    || (u.ends_with('*') && p.starts_with(&u[..u.len() - 1]))
                            });
                            if ok {
                                allowed.insert(Act::Path(v.clone(), p.to_string()));
                            }
                        }
                    }
                    continue;
                }
                let mut resource_pairs = Vec::new();
                for r in &rule.resources {
                    for res in RESOURCES {
                        for sub in SUBS {
                            let combined = if sub.is_empty() {
                                res.to_string()
                            } else {
                                format!("{res}/{sub}")
                            };
                            if r == "*"
                                || *r == combined
                                || (!sub.is_empty() && *r == format!("*/{sub}"))
                            {
                                resource_pairs.push((res.to_string(), sub.to_string()));
                            }
                        }
                    }
                }
                let names: Vec<String> = if rule.resource_names.is_empty() {
                    NAMES.iter().map(|s| s.to_string()).collect()
                } else {
                    rule.resource_names.clone()
                };
                let namespaces: Vec<String> = match bns {
                    Some(ns) => vec![ns.clone()],
                    None => NAMESPACES.iter().map(|s| s.to_string()).collect(),
                };
                for v in &verbs {
                    for g in all(&rule.api_groups, GROUPS) {
                        for (res, sub) in &resource_pairs {
                            for n in &names {
                                for ns in &namespaces {
                                    allowed.insert(Act::Resource([
                                        v.clone(),
                                        g.clone(),
                                        res.clone(),
                                        sub.clone(),
                                        n.clone(),
                                        ns.clone(),
                                    ]));
                                }
                            }
                        }
                    }
                }
            }
        }
        allowed
    }

    fn request() -> impl Strategy<Value = RequestInfo> {
        prop_oneof![
            (
                pick(VERBS),
                pick(GROUPS),
                pick(RESOURCES),
                pick(SUBS),
                pick(NAMES),
                pick(NAMESPACES)
            )
                .prop_map(
                    |(verb, api_group, resource, subresource, name, namespace)| RequestInfo {
                        resource_request: true,
                        verb,
                        api_group,
                        api_version: "v1".into(),
                        namespace,
                        resource,
                        subresource,
                        name,
                        path: String::new(),
                    }
                ),
            (pick(VERBS), pick(PATHS)).prop_map(|(v, p)| RequestInfo::non_resource(&v, &p)),
        ]
    }

    fn user() -> impl Strategy<Value = UserInfo> {
        (pick(USERS), some_of(USER_GROUPS)).prop_map(|(name, groups)| UserInfo {
            username: name,
            groups,
            ..UserInfo::default()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For random roles, bindings, identities and requests, the authorizer decides as the
        /// reference model (which expands every grant into the acts it allows). Identities here
        /// are not authenticated, so only the stored policy (and the built-in roles it binds)
        /// applies.
        #[test]
        fn decides_as_the_reference_model(
            (roles, bindings) in policy_defs(),
            user in user(),
            reqs in proptest::collection::vec(request(), 1..16),
        ) {
            let policy = Policy::new(&objects(&roles, &bindings));
            let allowed = model_allowed(&roles, &bindings, &user);
            for req in reqs {
                let act = if req.resource_request {
                    Act::Resource([
                        req.verb.clone(),
                        req.api_group.clone(),
                        req.resource.clone(),
                        req.subresource.clone(),
                        req.name.clone(),
                        req.namespace.clone(),
                    ])
                } else {
                    Act::Path(req.verb.clone(), req.path.clone())
                };
                prop_assert_eq!(
                    policy.authorize(&user, &req).allowed(),
                    allowed.contains(&act),
                    "request {:?}", req
                );
            }
        }
    }

    #[test]
    fn table() {
        let objs = vec![
            role(
                "ns1",
                "reader",
                &[PolicyRule::resource(
                    &["get", "list"],
                    &[""],
                    &["pods", "pods/log"],
                )],
            ),
            role_binding(
                "ns1",
                "rb",
                false,
                "reader",
                &[Subject::Group("devs".into())],
            ),
            cluster_role(
                "nodes",
                &[
                    PolicyRule::resource(&["get"], &[""], &["nodes"]),
                    PolicyRule::non_resource(&["get"], &["/metrics"]),
                ],
            ),
            role_binding(
                "ns1",
                "nodes-in-ns",
                true,
                "nodes",
                &[Subject::User("jane".into())],
            ),
            cluster_role_binding(
                "sa-view",
                "view",
                &[Subject::ServiceAccount(
                    "gitlab-agent".into(),
                    "agentk".into(),
                )],
            ),
        ];
        let p = Policy::new(&objs);
        let jane = UserInfo::new("jane", &["devs"]);
        let sa = UserInfo::new("system:serviceaccount:gitlab-agent:agentk", &[]);
        let get =
            |m: &str, path: &str| RequestInfo::new(&m.parse().unwrap_or_default(), path, None);
        let cases = [
            (&jane, get("GET", "/api/v1/namespaces/ns1/pods"), true),
            (&jane, get("GET", "/api/v1/namespaces/ns1/pods/p/log"), true),
            (&jane, get("GET", "/api/v1/namespaces/ns2/pods"), false),
            (
                &jane,
                get("GET", "/api/v1/namespaces/ns1/pods/p/exec"),
                false,
            ),
            (&jane, get("DELETE", "/api/v1/namespaces/ns1/pods/p"), false),
            // A ClusterRole bound by a RoleBinding: namespaced effect only, no paths.
            (&jane, get("GET", "/api/v1/nodes/n1"), false),
            (&jane, get("GET", "/metrics"), false),
            (&jane, get("GET", "/apis"), true),
            (
                &jane,
                get(
                    "POST",
                    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                ),
                true,
            ),
            (&sa, get("GET", "/apis/apps/v1/deployments"), true),
            (&sa, get("GET", "/api/v1/namespaces/default/secrets"), false),
            (
                &sa,
                get("POST", "/api/v1/namespaces/default/configmaps"),
                false,
            ),
            (&UserInfo::admin(), get("DELETE", "/api/v1/nodes/n1"), true),
        ];
        for (user, req, want) in cases {
            assert_eq!(
                p.authorize(user, &req).allowed(),
                want,
                "{} {req:?}",
                user.username
            );
        }
        let reason = p.authorize(&jane, &get("GET", "/api/v1/namespaces/ns1/pods"));
        assert_eq!(
            reason,
            Decision::Allow(
                "RBAC: allowed by RoleBinding \"rb\" of namespace \"ns1\" of Role \"reader\" to Group \"devs\"".into()
            )
        );
        let rules = p.rules_for(&jane, "ns1");
        assert!(
            rules
                .resource_rules
                .iter()
                .any(|r| r.resources.contains(&"pods/log".to_string()))
        );
        assert!(
            rules
                .resource_rules
                .iter()
                .any(|r| r.resources.contains(&"nodes".to_string()))
        );
        assert!(
            !rules
                .non_resource_rules
                .iter()
                .any(|r| r.non_resource_urls.contains(&"/metrics".to_string()))
        );
    }
}
