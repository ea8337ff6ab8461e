//! Is a kind namespaced or cluster-scoped? A pure crate cannot ask the API server's discovery, so it
//! takes a [`ScopeResolver`]: a built-in table of Kubernetes' cluster-scoped kinds
//! ([`WellKnownScopes`]) plus the CustomResourceDefinitions in the same desired set; a driver that has
//! discovery data can pass its own resolver.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Where objects of a kind live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In a namespace.
    Namespaced,
    /// Cluster-wide.
    Cluster,
}

/// Answers the scope of a group/kind, or `None` when it does not know.
pub trait ScopeResolver {
    /// The scope of `kind` in `group` (`""` is the core group).
    fn scope(&self, group: &str, kind: &str) -> Option<Scope>;
}

/// The cluster-scoped kinds of Kubernetes itself (every other built-in kind is namespaced).
pub const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "IPAddress"),
    ("networking.k8s.io", "ServiceCIDR"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
    ),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("certificates.k8s.io", "ClusterTrustBundle"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("policy", "PodSecurityPolicy"),
    ("resource.k8s.io", "DeviceClass"),
    ("resource.k8s.io", "ResourceSlice"),
    ("authentication.k8s.io", "TokenReview"),
    ("authentication.k8s.io", "SelfSubjectReview"),
    ("authorization.k8s.io", "SubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectRulesReview"),
];

/// Kubernetes' built-in kinds: the [`CLUSTER_SCOPED`] table says cluster, any other kind of a
/// built-in group says namespaced, a kind of another group is unknown.
#[derive(Debug, Clone, Copy, Default)]
pub struct WellKnownScopes;

const BUILT_IN_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "node.k8s.io",
    "discovery.k8s.io",
    "coordination.k8s.io",
    "events.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "admissionregistration.k8s.io",
    "certificates.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "resource.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
];

impl ScopeResolver for WellKnownScopes {
    fn scope(&self, group: &str, kind: &str) -> Option<Scope> {
        if CLUSTER_SCOPED
            .iter()
            .any(|(g, k)| *g == group && *k == kind)
        {
            Some(Scope::Cluster)
        } else if BUILT_IN_GROUPS.contains(&group) {
            Some(Scope::Namespaced)
        } else {
            None
        }
    }
}

/// Scopes declared by CustomResourceDefinitions (`spec.group`, `spec.names.kind`, `spec.scope`),
/// consulted before a fallback resolver.
#[derive(Debug, Clone, Default)]
pub struct CrdScopes<R> {
    declared: HashMap<(String, String), Scope>,
    fallback: R,
}

impl<R: ScopeResolver> CrdScopes<R> {
    /// No CRDs yet, `fallback` for everything else.
    pub fn new(fallback: R) -> Self {
        CrdScopes {
            declared: HashMap::new(),
            fallback,
        }
    }

    /// Learns the scope a CRD manifest declares (ignored if it is not a well-formed CRD).
    pub fn learn(&mut self, crd: &serde_json::Value) {
        let spec = &crd["spec"];
        let (Some(group), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str())
        else {
            return;
        };
        let scope = match spec["scope"].as_str() {
            Some("Cluster") => Scope::Cluster,
            _ => Scope::Namespaced,
        };
        self.declared
            .insert((group.to_string(), kind.to_string()), scope);
    }
}

impl<R: ScopeResolver> ScopeResolver for CrdScopes<R> {
    fn scope(&self, group: &str, kind: &str) -> Option<Scope> {
        self.declared
            .get(&(group.to_string(), kind.to_string()))
            .copied()
            .or_else(|| self.fallback.scope(group, kind))
    }
}

impl<T: ScopeResolver + ?Sized> ScopeResolver for &T {
    fn scope(&self, group: &str, kind: &str) -> Option<Scope> {
        (**self).scope(group, kind)
    }
}
