//! Kubernetes objects of a desired set: their identity and their manifest.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of a `Namespace`.
pub const NAMESPACE_KIND: &str = "Namespace";
/// The group and kind of a `CustomResourceDefinition`.
pub const CRD_GROUP: &str = "apiextensions.k8s.io";
/// The kind of a `CustomResourceDefinition`.
pub const CRD_KIND: &str = "CustomResourceDefinition";

/// An object's identity: group, kind, namespace (`None` for cluster-scoped objects) and name — the
/// key of inventories, duplicates and prunes. The version is not part of it (Kubernetes serves one
/// object under every version of its group).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId {
    /// API group (`""` for the core group).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace, for namespaced objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectId {
    /// A namespaced object's id.
    pub fn namespaced(group: &str, kind: &str, namespace: &str, name: &str) -> Self {
        ObjectId {
            group: group.into(),
            kind: kind.into(),
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }

    /// A cluster-scoped object's id.
    pub fn cluster(group: &str, kind: &str, name: &str) -> Self {
        ObjectId {
            group: group.into(),
            kind: kind.into(),
            namespace: None,
            name: name.into(),
        }
    }

    /// True for a `Namespace`.
    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.kind == NAMESPACE_KIND
    }

    /// True for a `CustomResourceDefinition`.
    pub fn is_crd(&self) -> bool {
        self.group == CRD_GROUP && self.kind == CRD_KIND
    }
}

impl fmt::Display for ObjectId {
    /// `Kind.group ns/name` (`ConfigMap default/app`, `Deployment.apps web/api`, `Namespace web`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " {ns}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

/// Where an object came from in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Source {
    /// Repository path of the file.
    pub path: String,
    /// Line where the object's document (or list item) starts.
    pub line: u32,
}

/// One desired object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Its identity (namespace already defaulted).
    pub id: ObjectId,
    /// `apiVersion` as written (`apps/v1`).
    pub api_version: String,
    /// The manifest as JSON, with `metadata.namespace` set for namespaced objects.
    pub manifest: serde_json::Value,
    /// Where it was written.
    pub source: Source,
}

/// The group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}
