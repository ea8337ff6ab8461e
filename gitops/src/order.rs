//! In what order objects are applied and pruned: Namespaces and CRDs first (wave 0), then the other
//! cluster-scoped objects (wave 1), then namespaced objects (wave 2); within a wave, kinds that others
//! depend on first (Helm's install order), then by id. Pruning goes through the waves in reverse.
//!
//! A wave starts only when every object of the previous wave has its result, so a custom resource is
//! never applied before its CRD's apply has returned.

use crate::object::ObjectId;

/// Number of waves.
pub const WAVES: usize = 3;

/// The wave of an object: 0 Namespaces and CRDs, 1 other cluster-scoped, 2 namespaced.
pub fn wave(id: &ObjectId) -> usize {
    if id.is_namespace() || id.is_crd() {
        0
    } else if id.namespace.is_none() {
        1
    } else {
        2
    }
}

/// Kinds in dependency order (after Helm's install order); unknown kinds come after these.
const KIND_ORDER: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// The sort key of an object in apply order.
pub fn apply_key(id: &ObjectId) -> (usize, usize, &ObjectId) {
    let rank = KIND_ORDER
        .iter()
        .position(|k| *k == id.kind)
        .unwrap_or(KIND_ORDER.len());
    (wave(id), rank, id)
}

/// Sorts ids into apply order.
pub fn sort_for_apply(ids: &mut [ObjectId]) {
    ids.sort_by(|a, b| apply_key(a).cmp(&apply_key(b)));
}

/// Sorts ids into prune order (the reverse of apply order).
pub fn sort_for_prune(ids: &mut [ObjectId]) {
    ids.sort_by(|a, b| apply_key(b).cmp(&apply_key(a)));
}
