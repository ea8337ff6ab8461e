//! The shape of object fields as server-side apply needs it: which lists are associative (and
//! by which keys), which are sets, which objects and lists are atomic, and which object keys are
//! declared fields of a struct rather than entries of a map.
//!
//! * Built-in kinds: the list types and atomic markers of the Kubernetes API types
//!   (`+listType=map`, `+listMapKey`, `+structType=atomic`, `+mapType=atomic`), as rules over the
//!   path of field names; every other object is a struct, every other list atomic.
//! * Custom resources: the version's `openAPIV3Schema` (`properties` are struct fields,
//!   `additionalProperties` map entries, `x-kubernetes-list-type`/`-list-map-keys`,
//!   `x-kubernetes-map-type: atomic`); where it says nothing
//!   (`x-kubernetes-preserve-unknown-fields`), the deduced shape.
//! * Deduced (no schema): every object key is a map entry, every list atomic — what the real
//!   server does for untyped data.

use serde_json::Value;

use crate::resource::ResourceType;

/// How a list merges and is owned.
#[derive(Debug, Clone, PartialEq)]
pub enum ListType {
    /// Replaced as a whole, owned as one field.
    Atomic,
    /// A set of scalars; each member owned on its own.
    Set,
    /// Items identified by these key fields (with a default for a missing key, if any).
    Map(Vec<(String, Option<Value>)>),
}

/// The shape at one position of an object.
#[derive(Debug, Clone)]
pub enum Shape<'a> {
    /// A built-in kind: `path` is the field names from the object's root (`[]` marks a list
    /// item).
    BuiltIn {
        /// The object's kind.
        kind: &'a str,
        /// Field names from the root.
        path: Vec<String>,
    },
    /// The root of a custom resource: its OpenAPI v3 schema, with `metadata` as for built-in
    /// kinds (ObjectMeta, whatever the schema says).
    CustomRoot {
        /// The version's `openAPIV3Schema`.
        schema: &'a Value,
        /// The object's kind.
        kind: &'a str,
    },
    /// A node of a custom resource's OpenAPI v3 schema.
    OpenApi(&'a Value),
    /// No schema.
    Deduced,
}

const ITEM: &str = "[]";

/// Object fields that are maps (their keys are entries, not declared fields).
const MAP_FIELDS: &[&str] = &[
    "labels",
    "annotations",
    "data",
    "binaryData",
    "stringData",
    "limits",
    "requests",
    "capacity",
    "allocatable",
    "hard",
    "used",
    "parameters",
    "matchLabels",
];

/// Object fields that are atomic structs or maps (owned and replaced as a whole).
const ATOMIC_OBJECTS: &[&str] = &[
    "selector",
    "podSelector",
    "namespaceSelector",
    "labelSelector",
    "nodeSelector",
    "roleRef",
    "involvedObject",
    "related",
    "fieldRef",
    "resourceFieldRef",
    "configMapKeyRef",
    "secretKeyRef",
    "aggregationRule",
];

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// Object fields of built-in kinds that are pointers in the Go types (absent unless set).
const POINTER_STRUCTS: &[&str] = &[
    "rollingUpdate",
    "securityContext",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "postStart",
    "preStop",
    "affinity",
    "nodeAffinity",
    "podAffinity",
    "podAntiAffinity",
    "dnsConfig",
    "valueFrom",
    "httpGet",
    "exec",
    "tcpSocket",
    "grpc",
    "emptyDir",
    "configMap",
    "secret",
    "persistentVolumeClaim",
    "hostPath",
    "projected",
    "downwardAPI",
    "nfs",
    "csi",
    "ephemeral",
    "seccompProfile",
    "appArmorProfile",
    "capabilities",
    "seLinuxOptions",
    "windowsOptions",
    "defaultBackend",
    "backend",
    "http",
    "service",
    "sessionAffinityConfig",
    "clientIP",
    "podFailurePolicy",
    "successPolicy",
    "persistentVolumeClaimRetentionPolicy",
    "ordinals",
    "behavior",
    "dataSource",
    "dataSourceRef",
    "aggregationRule",
];

fn keys(names: &[&str]) -> ListType {
    ListType::Map(names.iter().map(|n| (n.to_string(), None)).collect())
}

fn keys_with_protocol(first: &str) -> ListType {
    ListType::Map(vec![
        (first.to_string(), None),
        (
            "protocol".to_string(),
            Some(Value::String("TCP".to_string())),
        ),
    ])
}

impl<'a> Shape<'a> {
    /// The shape of a whole object of type `r`.
    pub fn root(r: &'a ResourceType) -> Shape<'a> {
        match &r.schema {
            Some(s) => Shape::CustomRoot {
                schema: s,
                kind: &r.kind,
            },
            None => Shape::BuiltIn {
                kind: &r.kind,
                path: Vec::new(),
            },
        }
    }

    fn built_in_list(kind: &str, path: &[String]) -> ListType {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let Some((&last, parent)) = p.split_last() else {
            return ListType::Atomic;
        };
        let in_container = matches!(parent, [.., c, ITEM] if CONTAINER_LISTS.contains(c));
        match last {
            "finalizers" if parent == ["metadata"] => ListType::Set,
            "ownerReferences" if parent == ["metadata"] => keys(&["uid"]),
            "managedFields" => ListType::Atomic,
            c if CONTAINER_LISTS.contains(&c) => keys(&["name"]),
            "ports" if in_container => keys_with_protocol("containerPort"),
            "ports" if kind == "Service" && parent == ["spec"] => keys_with_protocol("port"),
            "env" if in_container => keys(&["name"]),
            "volumeMounts" if in_container => keys(&["mountPath"]),
            "volumeDevices" if in_container => keys(&["devicePath"]),
            "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims" => {
                keys(&["name"])
            }
            "hostAliases" => keys(&["ip"]),
            "topologySpreadConstraints" => keys(&["topologyKey", "whenUnsatisfiable"]),
            "conditions" => keys(&["type"]),
            "addresses" if kind == "Node" => keys(&["type"]),
            _ => ListType::Atomic,
        }
    }

    /// Whether an object here is atomic (replaced and owned as a whole).
    pub fn atomic_object(&self) -> bool {
        match self {
            Shape::BuiltIn { path, .. } => path
                .last()
                .is_some_and(|l| ATOMIC_OBJECTS.contains(&l.as_str())),
            Shape::OpenApi(s) => {
                s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
            }
            Shape::CustomRoot { .. } | Shape::Deduced => false,
        }
    }

    /// Whether the Go type of a built-in kind always carries field `key` (holding `sample`) of
    /// an existing object here, even when JSON omits it: non-pointer structs (`spec`,
    /// `template`, `strategy`, ...) and the lists without `omitempty` (`containers`).
    /// Server-side apply compares typed objects, in which such a field is never added or
    /// removed as a whole.
    pub fn always_present(&self, key: &str, sample: &Value) -> bool {
        let Shape::BuiltIn { path, .. } = self else {
            return false;
        };
        if path
            .last()
            .is_some_and(|l| MAP_FIELDS.contains(&l.as_str()))
        {
            return false;
        }
        match sample {
            Value::Object(_) => {
                !MAP_FIELDS.contains(&key)
                    && !ATOMIC_OBJECTS.contains(&key)
                    && !POINTER_STRUCTS.contains(&key)
            }
            Value::Array(_) => key == "containers",
            _ => false,
        }
    }

    /// The shape of field `key` of an object here, and whether it is a declared field of a
    /// struct (`false`: an entry of a map).
    pub fn field(&self, key: &str) -> (Shape<'a>, bool) {
        match self {
            Shape::CustomRoot { kind, .. } if key == "metadata" => (
                Shape::BuiltIn {
                    kind,
                    path: vec!["metadata".to_string()],
                },
                true,
            ),
            Shape::CustomRoot { .. } if matches!(key, "apiVersion" | "kind") => {
                (Shape::Deduced, true)
            }
            Shape::CustomRoot { schema, .. } => Shape::OpenApi(schema).field(key),
            Shape::BuiltIn { kind, path } => {
                let is_map = path
                    .last()
                    .is_some_and(|l| MAP_FIELDS.contains(&l.as_str()));
                let mut p = path.clone();
                p.push(key.to_string());
                (Shape::BuiltIn { kind, path: p }, !is_map)
            }
            Shape::OpenApi(s) => {
                if let Some(prop) = s.get("properties").and_then(|p| p.get(key)) {
                    return (Shape::OpenApi(prop), true);
                }
                match s.get("additionalProperties") {
                    Some(ap @ Value::Object(_)) => (Shape::OpenApi(ap), false),
                    _ => (Shape::Deduced, false),
                }
            }
            Shape::Deduced => (Shape::Deduced, false),
        }
    }

    /// How a list here merges.
    pub fn list_type(&self) -> ListType {
        match self {
            Shape::BuiltIn { kind, path } => Self::built_in_list(kind, path),
            Shape::OpenApi(s) => match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => ListType::Set,
                Some("map") => {
                    let item = s.get("items");
                    let names = crate::access::strings_at(s, "/x-kubernetes-list-map-keys");
                    if names.is_empty() {
                        return ListType::Atomic;
                    }
                    ListType::Map(
                        names
                            .into_iter()
                            .map(|n| {
                                let default = item
                                    .and_then(|i| i.get("properties"))
                                    .and_then(|p| p.get(&n))
                                    .and_then(|p| p.get("default"))
                                    .cloned();
                                (n, default)
                            })
                            .collect(),
                    )
                }
                _ => ListType::Atomic,
            },
            Shape::CustomRoot { .. } | Shape::Deduced => ListType::Atomic,
        }
    }

    /// The shape of the items of a list here.
    pub fn item(&self) -> Shape<'a> {
        match self {
            Shape::BuiltIn { kind, path } => {
                let mut p = path.clone();
                p.push(ITEM.to_string());
                Shape::BuiltIn { kind, path: p }
            }
            Shape::OpenApi(s) => match s.get("items") {
                Some(i @ Value::Object(_)) => Shape::OpenApi(i),
                _ => Shape::Deduced,
            },
            Shape::CustomRoot { .. } | Shape::Deduced => Shape::Deduced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::known;
    use serde_json::json;

    fn at<'a>(mut s: Shape<'a>, path: &[&str]) -> Shape<'a> {
        for p in path {
            s = if *p == "[]" { s.item() } else { s.field(p).0 };
        }
        s
    }

    #[test]
    fn built_in_rules() {
        let d = known::deployment();
        let root = Shape::root(&d);
        let c = at(root.clone(), &["spec", "template", "spec", "containers"]);
        assert_eq!(c.list_type(), keys(&["name"]));
        let ports = at(c.clone(), &["[]", "ports"]);
        assert_eq!(ports.list_type(), keys_with_protocol("containerPort"));
        assert_eq!(at(c, &["[]", "args"]).list_type(), ListType::Atomic);
        assert!(at(root.clone(), &["spec", "selector"]).atomic_object());
        assert!(!at(root.clone(), &["spec", "template"]).atomic_object());
        let labels = at(root.clone(), &["metadata", "labels"]);
        assert!(!labels.field("app").1, "label keys are map entries");
        assert!(root.field("spec").1);
        assert_eq!(
            at(root, &["metadata", "finalizers"]).list_type(),
            ListType::Set
        );
        let svc = known::service();
        assert_eq!(
            at(Shape::root(&svc), &["spec", "ports"]).list_type(),
            keys_with_protocol("port")
        );
    }

    #[test]
    fn openapi_rules() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "items": {"type": "array", "x-kubernetes-list-type": "map",
                          "x-kubernetes-list-map-keys": ["id"],
                          "items": {"type": "object", "properties": {"id": {"type": "string", "default": "x"}}}},
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "config": {"type": "object", "additionalProperties": {"type": "string"}},
                "ref": {"type": "object", "x-kubernetes-map-type": "atomic"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }}
        }});
        let root = Shape::OpenApi(&schema);
        let spec = root.field("spec").0;
        assert_eq!(
            spec.field("items").0.list_type(),
            ListType::Map(vec![("id".to_string(), Some(json!("x")))])
        );
        assert_eq!(spec.field("tags").0.list_type(), ListType::Set);
        assert!(!spec.field("config").0.field("k").1);
        assert!(spec.field("ref").0.atomic_object());
        assert!(!spec.field("free").0.field("anything").1);
        assert!(spec.field("items").1);
    }
}
