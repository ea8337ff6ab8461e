//! The fixed registry of resource types the simulated API server serves.
//!
//! Each [`ResourceType`] describes one REST resource (`pods`, `deployments`, ...): its group and
//! version, kind, plural and singular names, scope, short names, verbs and subresources. Both
//! discovery and routing are generated from this one table, so they cannot disagree.

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

/// One REST resource type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group, e.g. `v1`.
    pub version: &'static str,
    /// Object kind, e.g. `Pod`.
    pub kind: &'static str,
    /// Plural resource name used in URLs, e.g. `pods`.
    pub plural: &'static str,
    /// Singular resource name, e.g. `pod`.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names understood by kubectl (`po`, `deploy`, ...).
    pub short_names: &'static [&'static str],
    /// Discovery categories (`all`).
    pub categories: &'static [&'static str],
    /// Whether the resource has a `status` subresource.
    pub has_status: bool,
}

impl ResourceType {
    /// `apiVersion` as written in objects: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind of the list object, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `api_version`/`kind` name this resource type.
    pub fn matches(&self, api_version: &str, kind: &str) -> bool {
        self.kind == kind && self.api_version() == api_version
    }
}

/// All resource types, in discovery order.
pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        has_status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        has_status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        has_status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        has_status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        has_status: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        has_status: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        has_status: false,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        has_status: true,
    },
];

/// The resource type served at `group`/`version`/`plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource type of objects with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.matches(api_version, kind))
}

/// The resource types of one group version.
pub fn in_group_version(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceType> {
    let group = group.to_string();
    let version = version.to_string();
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// The served resource types by name.
pub mod known {
    use super::{RESOURCES, ResourceType};

    fn find(kind: &str) -> &'static ResourceType {
        // The table above is static and contains every kind named below; fall back to the
        // first entry only to stay panic-free.
        RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or(&RESOURCES[0])
    }

    /// The `namespaces` resource type.
    pub fn namespace() -> &'static ResourceType {
        find("Namespace")
    }
    /// The `nodes` resource type.
    pub fn node() -> &'static ResourceType {
        find("Node")
    }
    /// The `pods` resource type.
    pub fn pod() -> &'static ResourceType {
        find("Pod")
    }
    /// The `services` resource type.
    pub fn service() -> &'static ResourceType {
        find("Service")
    }
    /// The `configmaps` resource type.
    pub fn configmap() -> &'static ResourceType {
        find("ConfigMap")
    }
    /// The `events` resource type.
    pub fn event() -> &'static ResourceType {
        find("Event")
    }
    /// The `deployments` resource type.
    pub fn deployment() -> &'static ResourceType {
        find("Deployment")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree() {
        for r in RESOURCES {
            assert_eq!(by_plural(r.group, r.version, r.plural), Some(r));
            assert_eq!(by_kind(&r.api_version(), r.kind), Some(r));
        }
        assert!(by_plural("", "v1", "widgets").is_none());
        assert_eq!(known::deployment().api_version(), "apps/v1");
        assert_eq!(known::pod().list_kind(), "PodList");
    }
}
