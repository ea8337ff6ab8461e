//! The registry of resource types the simulated API server serves: the built-in kinds, and the
//! kinds that `CustomResourceDefinition`s add while the server runs.
//!
//! Each [`ResourceType`] describes one REST resource at one version (`pods`, `deployments.apps`,
//! `widgets.example.com/v1`): group and version, kind, plural and singular names, scope, short
//! names, subresources, and for custom resources the OpenAPI schema server-side apply merges by.
//! Discovery, routing, OpenAPI and storage are all derived from the one [`Registry`], so they
//! cannot disagree. Objects of one resource are stored once, whatever version they are served at
//! (see [`ResourceType::storage_key`]).

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use serde_json::Value;

/// Verbs every resource supports.
pub(crate) const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A shared handle to a resource type.
pub type Resource = Arc<ResourceType>;

/// A printer column of a custom resource (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type (`string`, `integer`, `date`, ...).
    pub ty: String,
    /// Simple JSONPath into the object (`.spec.replicas`).
    pub json_path: String,
    /// 0 = shown by default; higher = `-o wide`.
    pub priority: i64,
}

/// One REST resource type at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// API version within the group, e.g. `v1`.
    pub version: String,
    /// Object kind, e.g. `Pod`.
    pub kind: String,
    /// Kind of the list object, e.g. `PodList`.
    pub list_kind: String,
    /// Plural resource name used in URLs, e.g. `pods`.
    pub plural: String,
    /// Singular resource name, e.g. `pod`.
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names understood by kubectl (`po`, `deploy`, ...).
    pub short_names: Vec<String>,
    /// Discovery categories (`all`).
    pub categories: Vec<String>,
    /// Whether the resource has a `status` subresource.
    pub has_status: bool,
    /// Whether the resource has a `scale` subresource (`spec.replicas`).
    pub has_scale: bool,
    /// Whether `metadata.generation` counts changes outside metadata and status.
    pub tracks_generation: bool,
    /// For custom resources: the name of the `CustomResourceDefinition` serving it.
    pub crd: Option<String>,
    /// For custom resources: the version's `openAPIV3Schema` (`None` for built-in kinds, whose
    /// field shapes are in [`crate::schema`]).
    pub schema: Option<Arc<Value>>,
    /// For custom resources: `additionalPrinterColumns`.
    pub printer_columns: Vec<PrinterColumn>,
    /// A review API (`SelfSubjectReview`, `SubjectAccessReview`, ...): only `create`, answered
    /// at once and never stored ([`crate::reviews`]).
    pub create_only: bool,
}

impl ResourceType {
    /// `apiVersion` as written in objects: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind of the list object, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        self.list_kind.clone()
    }

    /// Whether `api_version`/`kind` name this resource type.
    pub fn matches(&self, api_version: &str, kind: &str) -> bool {
        self.kind == kind && self.api_version() == api_version
    }

    /// Where objects of this resource are stored: the same for every version it is served at.
    pub fn storage_key(&self) -> StorageKey {
        (self.group.clone(), self.plural.clone())
    }

    /// The qualified resource name used in messages (`pods`, `deployments.apps`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The kind qualified by its group, as in `Invalid` messages (`Deployment.apps`).
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// `obj` as served at this version: custom resources are stored once and served at every
    /// version of their definition with only `apiVersion` differing (conversion strategy `None`).
    pub fn present<'v>(&self, obj: &'v Value) -> Cow<'v, Value> {
        let api_version = self.api_version();
        if self.crd.is_none()
            || obj.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str())
        {
            return Cow::Borrowed(obj);
        }
        let mut out = obj.clone();
        if let Some(o) = out.as_object_mut() {
            o.insert("apiVersion".to_string(), Value::String(api_version));
        }
        Cow::Owned(out)
    }
}

/// `(group, plural)`: the storage bucket of a resource, shared by all its versions.
pub type StorageKey = (String, String);

/// A built-in kind, as listed in [`BUILTIN`].
struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    all: bool,
    status: bool,
    scale: bool,
    generation: bool,
    create_only: bool,
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short_names,
        all: false,
        status: false,
        scale: false,
        generation: false,
        create_only: false,
    }
}

impl Builtin {
    const fn all(mut self) -> Self {
        self.all = true;
        self
    }
    const fn status(mut self) -> Self {
        self.status = true;
        self
    }
    const fn scale(mut self) -> Self {
        self.scale = true;
        self
    }
    const fn generation(mut self) -> Self {
        self.generation = true;
        self
    }
    const fn create_only(mut self) -> Self {
        self.create_only = true;
        self
    }
}

/// The built-in kinds, in discovery order.
const BUILTIN: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", false, &["ns"]).status(),
    b("", "v1", "Node", "nodes", false, &["no"]).status(),
    b("", "v1", "Pod", "pods", true, &["po"]).all().status(),
    b("", "v1", "Service", "services", true, &["svc"])
        .all()
        .status(),
    b("", "v1", "ConfigMap", "configmaps", true, &["cm"]),
    b("", "v1", "Secret", "secrets", true, &[]),
    b("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"]),
    b("", "v1", "Event", "events", true, &["ev"]),
    b(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        &["pvc"],
    )
    .status(),
    b(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        false,
        &["pv"],
    )
    .status(),
    b(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        true,
        &["quota"],
    )
    .status(),
    b("", "v1", "LimitRange", "limitranges", true, &["limits"]),
    b("apps", "v1", "Deployment", "deployments", true, &["deploy"])
        .all()
        .status()
        .scale()
        .generation(),
    b("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"])
        .all()
        .status()
        .scale()
        .generation(),
    b("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"])
        .all()
        .status()
        .generation(),
    b("apps", "v1", "StatefulSet", "statefulsets", true, &["sts"])
        .all()
        .status()
        .scale()
        .generation(),
    b("batch", "v1", "Job", "jobs", true, &[])
        .all()
        .status()
        .generation(),
    b("batch", "v1", "CronJob", "cronjobs", true, &["cj"])
        .all()
        .status()
        .generation(),
    b(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        &["hpa"],
    )
    .all()
    .status()
    .generation(),
    b(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
    )
    .status()
    .generation(),
    b(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        true,
        &["ing"],
    )
    .status()
    .generation(),
    b(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        false,
        &[],
    )
    .generation(),
    b(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        &["netpol"],
    )
    .generation(),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        &[],
    ),
    b(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        false,
        &["sc"],
    ),
    b("coordination.k8s.io", "v1", "Lease", "leases", true, &[]),
    b(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        false,
        &["pc"],
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
    )
    .status()
    .generation(),
    b(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        false,
        &[],
    )
    .create_only(),
    b(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
        &[],
    )
    .create_only(),
    b(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        false,
        &[],
    )
    .create_only(),
    b(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        false,
        &[],
    )
    .create_only(),
    b(
        "authorization.k8s.io",
        "v1",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        true,
        &[],
    )
    .create_only(),
];

static BUILTIN_TYPES: LazyLock<Vec<Resource>> = LazyLock::new(|| {
    BUILTIN
        .iter()
        .map(|b| {
            Arc::new(ResourceType {
                group: b.group.to_string(),
                version: b.version.to_string(),
                kind: b.kind.to_string(),
                list_kind: format!("{}List", b.kind),
                plural: b.plural.to_string(),
                singular: b.kind.to_ascii_lowercase(),
                namespaced: b.namespaced,
                short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
                categories: if b.all {
                    vec!["all".to_string()]
                } else {
                    Vec::new()
                },
                has_status: b.status,
                has_scale: b.scale,
                tracks_generation: b.generation,
                crd: None,
                schema: None,
                printer_columns: Vec::new(),
                create_only: b.create_only,
            })
        })
        .collect()
});

/// The served resource types: the built-in kinds plus those of established
/// `CustomResourceDefinition`s. Cheap to clone (the types are shared).
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<Resource>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

/// Orders API versions as Kubernetes does: GA before beta before alpha before anything else,
/// higher numbers first (`v2` > `v1` > `v1beta2` > `v1beta1` > `v1alpha1` > `foo`).
pub fn version_priority(v: &str) -> (u8, u64, u64, String) {
    let parse = || -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, u64::MAX - major, 0));
        }
        for (i, pre) in ["beta", "alpha"].iter().enumerate() {
            if let Some(n) = tail.strip_prefix(pre) {
                let minor: u64 = n.parse().ok()?;
                return Some((i as u8 + 1, u64::MAX - major, u64::MAX - minor));
            }
        }
        None
    };
    match parse() {
        Some((rank, major, minor)) => (rank, major, minor, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

impl Registry {
    /// The built-in kinds only.
    pub fn builtin() -> Self {
        Self {
            types: BUILTIN_TYPES.clone(),
        }
    }

    /// Every served resource type, in discovery order.
    pub fn all(&self) -> &[Resource] {
        &self.types
    }

    /// The resource type served at `group`/`version`/`plural`.
    pub fn by_plural(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.types
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// The resource type of objects with this `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Resource> {
        self.types
            .iter()
            .find(|r| r.matches(api_version, kind))
            .cloned()
    }

    /// A resource type of `kind` in the group of `api_version`, at any version (owner
    /// references may name a version that is no longer served).
    pub fn by_group_kind(&self, api_version: &str, kind: &str) -> Option<Resource> {
        let group = api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or_default();
        self.by_kind(api_version, kind).or_else(|| {
            self.types
                .iter()
                .find(|r| r.group == group && r.kind == kind)
                .cloned()
        })
    }

    /// The resource type stored under `key`, at its preferred version.
    pub fn by_storage_key(&self, key: &StorageKey) -> Option<Resource> {
        self.types
            .iter()
            .filter(|r| r.group == key.0 && r.plural == key.1)
            .min_by_key(|r| version_priority(&r.version))
            .cloned()
    }

    /// The resource types of one group version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Resource> {
        self.types
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .cloned()
            .collect()
    }

    /// Named API groups with their versions, preferred (highest priority) version first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.types.iter().filter(|r| !r.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) => {
                    if !vs.contains(&r.version) {
                        vs.push(r.version.clone());
                    }
                }
                None => groups.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        for (_, vs) in &mut groups {
            vs.sort_by_key(|v| version_priority(v));
        }
        groups
    }

    /// Group versions in discovery order (`("", "v1")` first).
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut gvs = vec![(String::new(), "v1".to_string())];
        for (g, vs) in self.groups() {
            for v in vs {
                gvs.push((g.clone(), v));
            }
        }
        gvs
    }

    /// Replaces the types served for custom resource definition `crd` with `types`.
    pub(crate) fn set_custom(&mut self, crd: &str, types: Vec<Resource>) {
        self.remove_custom(crd);
        self.types.extend(types);
    }

    /// Stops serving the types of custom resource definition `crd`.
    pub(crate) fn remove_custom(&mut self, crd: &str) {
        self.types.retain(|r| r.crd.as_deref() != Some(crd));
    }

    /// Whether a built-in kind is stored under `key`.
    pub fn is_builtin(&self, key: &StorageKey) -> bool {
        BUILTIN_TYPES
            .iter()
            .any(|r| r.group == key.0 && r.plural == key.1)
    }
}

/// The built-in resource types by name.
pub mod known {
    use super::{BUILTIN_TYPES, Resource};

    fn find(kind: &str) -> Resource {
        // The table is static and contains every kind named below; fall back to the first
        // entry only to stay panic-free.
        BUILTIN_TYPES
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or(&BUILTIN_TYPES[0])
            .clone()
    }

    /// The `namespaces` resource type.
    pub fn namespace() -> Resource {
        find("Namespace")
    }
    /// The `nodes` resource type.
    pub fn node() -> Resource {
        find("Node")
    }
    /// The `pods` resource type.
    pub fn pod() -> Resource {
        find("Pod")
    }
    /// The `services` resource type.
    pub fn service() -> Resource {
        find("Service")
    }
    /// The `configmaps` resource type.
    pub fn configmap() -> Resource {
        find("ConfigMap")
    }
    /// The `events` resource type.
    pub fn event() -> Resource {
        find("Event")
    }
    /// The `deployments` resource type.
    pub fn deployment() -> Resource {
        find("Deployment")
    }
    /// The `replicasets` resource type.
    pub fn replicaset() -> Resource {
        find("ReplicaSet")
    }
    /// The `customresourcedefinitions` resource type.
    pub fn crd() -> Resource {
        find("CustomResourceDefinition")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree() {
        let reg = Registry::builtin();
        for r in reg.all() {
            assert_eq!(
                reg.by_plural(&r.group, &r.version, &r.plural).as_ref(),
                Some(r)
            );
            assert_eq!(reg.by_kind(&r.api_version(), &r.kind).as_ref(), Some(r));
        }
        assert!(reg.by_plural("", "v1", "widgets").is_none());
        assert_eq!(known::deployment().api_version(), "apps/v1");
        assert_eq!(known::pod().list_kind(), "PodList");
        assert_eq!(known::deployment().qualified(), "deployments.apps");
        assert_eq!(
            reg.by_group_kind("apps/v1beta1", "Deployment"),
            Some(known::deployment())
        );
    }

    #[test]
    fn version_order() {
        let mut vs = vec!["v1alpha1", "foo", "v1", "v1beta2", "v2", "v1beta1", "v10"];
        vs.sort_by_key(|v| version_priority(v));
        assert_eq!(
            vs,
            vec!["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }
}
