//! Identity of cached objects: resource kinds, object metadata, and resourceVersion ordering.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A Kubernetes group/version/kind. The core group is the empty string.
///
/// Displays (and parses) as `apiVersion/Kind`: `v1/Pod`, `apps/v1/Deployment`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKind {
    /// API group, `""` for the core group.
    pub group: String,
    /// API version within the group, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
}

impl ResourceKind {
    /// A kind from its parts.
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        ResourceKind {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// A kind from an object's `apiVersion` (`v1`, `apps/v1`) and `kind`.
    pub fn from_api_version(api_version: &str, kind: &str) -> Self {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        ResourceKind::new(group, version, kind)
    }

    /// `v1/Node`.
    pub fn node() -> Self {
        ResourceKind::new("", "v1", "Node")
    }

    /// `v1/Pod`.
    pub fn pod() -> Self {
        ResourceKind::new("", "v1", "Pod")
    }

    /// `apps/v1/Deployment`.
    pub fn deployment() -> Self {
        ResourceKind::new("apps", "v1", "Deployment")
    }

    /// `v1/Event` (core events).
    pub fn event() -> Self {
        ResourceKind::new("", "v1", "Event")
    }

    /// The `apiVersion` string: `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.kind)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.kind)
        }
    }
}

/// A string that is not `version/Kind` or `group/version/Kind`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resource kind {0:?}: expected `version/Kind` or `group/version/Kind`")]
pub struct KindParseError(pub String);

impl FromStr for ResourceKind {
    type Err = KindParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let kind = match parts.as_slice() {
            [version, kind] => ResourceKind::new("", version, kind),
            [group, version, kind] => ResourceKind::new(group, version, kind),
            _ => return Err(KindParseError(s.to_owned())),
        };
        if kind.version.is_empty()
            || kind.kind.is_empty()
            || (parts.len() == 3 && kind.group.is_empty())
        {
            return Err(KindParseError(s.to_owned()));
        }
        Ok(kind)
    }
}

/// Metadata fields the store needs, borrowed from an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub resource_version: &'a str,
}

/// Why an object could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The value is not a JSON object.
    #[error("object is not a JSON object")]
    NotAnObject,
    /// `metadata.name` is missing, empty or not a string.
    #[error("object has no metadata.name")]
    MissingName,
    /// The object's `kind` field names another kind than the watcher it came from.
    #[error("object of kind {found:?} delivered for kind {expected}")]
    KindMismatch {
        /// The kind the event was applied for (`apiVersion/Kind`).
        expected: String,
        /// The object's `kind` field.
        found: String,
    },
}

fn str_field<'a>(metadata: Option<&'a Value>, field: &str) -> &'a str {
    metadata
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Reads namespace, name, uid and resourceVersion. Missing namespace means cluster-scoped; missing uid
/// and resourceVersion read as `""`.
pub(crate) fn meta(object: &Value) -> Result<Meta<'_>, ObjectError> {
    if !object.is_object() {
        return Err(ObjectError::NotAnObject);
    }
    let metadata = object.get("metadata");
    let name = str_field(metadata, "name");
    if name.is_empty() {
        return Err(ObjectError::MissingName);
    }
    Ok(Meta {
        namespace: str_field(metadata, "namespace"),
        name,
        uid: str_field(metadata, "uid"),
        resource_version: str_field(metadata, "resourceVersion"),
    })
}

/// Checks the object's `kind` against `kind` and fills in `apiVersion`/`kind` when absent (list items
/// often lack them), so stored objects are self-describing.
pub(crate) fn normalise(kind: &ResourceKind, mut object: Value) -> Result<Value, ObjectError> {
    let map = object.as_object_mut().ok_or(ObjectError::NotAnObject)?;
    match map.get("kind") {
        Some(Value::String(k)) if k == &kind.kind => {}
        Some(Value::String(k)) if !k.is_empty() => {
            return Err(ObjectError::KindMismatch {
                expected: kind.to_string(),
                found: k.clone(),
            });
        }
        _ => {
            map.insert("kind".into(), Value::String(kind.kind.clone()));
        }
    }
    if !matches!(map.get("apiVersion"), Some(Value::String(v)) if !v.is_empty()) {
        map.insert("apiVersion".into(), Value::String(kind.api_version()));
    }
    Ok(object)
}

/// Orders two resourceVersions.
///
/// Kubernetes documents resourceVersions as opaque strings that clients must only compare for
/// equality. In practice every API server backed by etcd uses the etcd revision, a decimal integer that
/// only grows. This cache relies on that to drop stale events: when **both** values parse as unsigned
/// decimal integers they are compared numerically. Otherwise equal strings are `Equal` and anything
/// else (including an empty value) is `None` — unknown — and the caller treats the incoming event as
/// newer, which is the behaviour of a plain informer.
pub fn compare_resource_versions(a: &str, b: &str) -> Option<Ordering> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => Some(x.cmp(&y)),
        _ if a == b => Some(Ordering::Equal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kind_display_parse() {
        for (s, k) in [
            ("v1/Pod", ResourceKind::pod()),
            ("apps/v1/Deployment", ResourceKind::deployment()),
        ] {
            assert_eq!(k.to_string(), s);
            assert_eq!(s.parse::<ResourceKind>(), Ok(k));
        }
        for bad in ["Pod", "", "/v1/Pod", "a/b/c/d", "v1/", "/Pod"] {
            assert!(bad.parse::<ResourceKind>().is_err(), "{bad:?}");
        }
        assert_eq!(
            ResourceKind::from_api_version("apps/v1", "Deployment"),
            ResourceKind::deployment()
        );
        assert_eq!(ResourceKind::deployment().api_version(), "apps/v1");
        assert_eq!(ResourceKind::pod().api_version(), "v1");
    }

    #[test]
    fn rv_ordering() {
        assert_eq!(compare_resource_versions("9", "10"), Some(Ordering::Less));
        assert_eq!(
            compare_resource_versions("10", "9"),
            Some(Ordering::Greater)
        );
        assert_eq!(compare_resource_versions("7", "7"), Some(Ordering::Equal));
        assert_eq!(
            compare_resource_versions("abc", "abc"),
            Some(Ordering::Equal)
        );
        assert_eq!(compare_resource_versions("abc", "9"), None);
        assert_eq!(compare_resource_versions("", ""), None);
    }

    #[test]
    fn meta_and_normalise() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "3"}});
        let m = meta(&obj);
        assert_eq!(
            m,
            Ok(Meta {
                namespace: "ns",
                name: "a",
                uid: "u",
                resource_version: "3"
            })
        );
        assert_eq!(
            meta(&json!({"metadata": {}})),
            Err(ObjectError::MissingName)
        );
        assert_eq!(meta(&json!([1])), Err(ObjectError::NotAnObject));
        let n = normalise(&ResourceKind::deployment(), obj);
        assert_eq!(
            n.as_ref().ok().and_then(|o| o.get("apiVersion")),
            Some(&json!("apps/v1"))
        );
        assert_eq!(
            n.as_ref().ok().and_then(|o| o.get("kind")),
            Some(&json!("Deployment"))
        );
        let wrong = json!({"kind": "Pod", "metadata": {"name": "a"}});
        assert!(matches!(
            normalise(&ResourceKind::node(), wrong),
            Err(ObjectError::KindMismatch { .. })
        ));
    }
}
