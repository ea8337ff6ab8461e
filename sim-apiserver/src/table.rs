//! Server-side printing: `meta.k8s.io/v1` `Table` responses, which `kubectl get` asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`). Columns follow the real server's
//! printers for each kind (pods: Name, Ready, Status, Restarts, Age, IP, Node; ...).

use serde_json::{Value, json};

use super::resource::ResourceType;
use super::time;

/// What each row carries in `object` (the `includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// A `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, ty: &'static str, priority: u8) -> Column {
    Column {
        name,
        ty,
        format: "",
        priority,
        description: "",
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
        ],
        "Node" => vec![
            NAME,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("OS-Image", "string", 1),
        ],
        "Namespace" => vec![NAME, col("Status", "string", 0), col("Age", "string", 0)],
        "Service" => vec![
            NAME,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
            col("Selector", "string", 1),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "ConfigMap" => vec![NAME, col("Data", "integer", 0), col("Age", "string", 0)],
        "Secret" => vec![
            NAME,
            col("Type", "string", 0),
            col("Data", "integer", 0),
            col("Age", "string", 0),
        ],
        "Event" => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
            Column {
                priority: 1,
                ..NAME
            },
        ],
        _ => vec![NAME, col("Age", "string", 0)],
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(x: &str) -> String {
    if x.is_empty() {
        "<none>".to_string()
    } else {
        x.to_string()
    }
}

fn age(obj: &Value) -> String {
    time::age(
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
    )
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The STATUS column of a pod, as kubectl shows it.
pub fn pod_status(pod: &Value) -> String {
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return "Terminating".to_string();
    }
    let mut reason = s(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(pod, "/status/phase").to_string();
    }
    for cs in arr(pod, "/status/containerStatuses") {
        let waiting = s(cs, "/state/waiting/reason");
        let terminated = s(cs, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_string();
        } else if !terminated.is_empty() {
            reason = terminated.to_string();
        }
    }
    if reason.is_empty() {
        "Unknown".to_string()
    } else {
        reason
    }
}

fn cells(obj: &Value, kind: &str) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    match kind {
        "Pod" => {
            let total = arr(obj, "/spec/containers").len();
            let statuses = arr(obj, "/status/containerStatuses");
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts.to_string()),
                json!(age(obj)),
                json!(or_none(s(obj, "/status/podIP"))),
                json!(or_none(s(obj, "/spec/nodeName"))),
            ]
        }
        "Node" => {
            let ready = arr(obj, "/status/conditions")
                .iter()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| s(c, "/status"));
            let mut status = match ready {
                Some("True") => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<&str> = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|l| l.keys())
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            roles.sort_unstable();
            let internal_ip = arr(obj, "/status/addresses")
                .iter()
                .find(|a| s(a, "/type") == "InternalIP")
                .map(|a| s(a, "/address"))
                .unwrap_or("");
            vec![
                name,
                json!(status),
                json!(or_none(&roles.join(","))),
                json!(age(obj)),
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                json!(or_none(internal_ip)),
                json!(or_none(s(obj, "/status/nodeInfo/osImage"))),
            ]
        }
        "Namespace" => {
            let phase = s(obj, "/status/phase");
            vec![
                name,
                json!(if phase.is_empty() { "Active" } else { phase }),
                json!(age(obj)),
            ]
        }
        "Service" => {
            let ports: Vec<String> = arr(obj, "/spec/ports")
                .iter()
                .map(|p| {
                    let proto = s(p, "/protocol");
                    let proto = if proto.is_empty() { "TCP" } else { proto };
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                        None => format!("{}/{proto}", n(p, "/port")),
                    }
                })
                .collect();
            let selector: Vec<String> = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            let ty = s(obj, "/spec/type");
            vec![
                name,
                json!(if ty.is_empty() { "ClusterIP" } else { ty }),
                json!(or_none(s(obj, "/spec/clusterIP"))),
                json!("<none>"),
                json!(or_none(&ports.join(","))),
                json!(age(obj)),
                json!(or_none(&selector.join(","))),
            ]
        }
        "Deployment" => {
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let containers = arr(obj, "/spec/template/spec/containers");
            let cnames: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
            let images: Vec<&str> = containers.iter().map(|c| s(c, "/image")).collect();
            let selector: Vec<String> = obj
                .pointer("/spec/selector/matchLabels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            vec![
                name,
                json!(format!("{}/{want}", n(obj, "/status/readyReplicas"))),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                json!(age(obj)),
                json!(cnames.join(",")),
                json!(images.join(",")),
                json!(or_none(&selector.join(","))),
            ]
        }
        "ConfigMap" => {
            let count = ["/data", "/binaryData"]
                .iter()
                .filter_map(|p| obj.pointer(p).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, json!(count), json!(age(obj))]
        }
        "Secret" => {
            let count = ["/data", "/stringData"]
                .iter()
                .filter_map(|p| obj.pointer(p).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            let ty = s(obj, "/type");
            vec![
                name,
                json!(if ty.is_empty() { "Opaque" } else { ty }),
                json!(count),
                json!(age(obj)),
            ]
        }
        "Event" => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/firstTimestamp",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| obj.pointer(p).and_then(Value::as_str));
            vec![
                json!(time::age(last)),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(obj, "/involvedObject/kind").to_ascii_lowercase(),
                    s(obj, "/involvedObject/name")
                )),
                json!(s(obj, "/message")),
                name,
            ]
        }
        _ => vec![name, json!(age(obj))],
    }
}

fn row(obj: &Value, kind: &str, include: IncludeObject) -> Value {
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
        }),
    };
    let mut r = json!({"cells": cells(obj, kind)});
    if !object.is_null()
        && let Some(o) = r.as_object_mut()
    {
        o.insert("object".to_string(), object);
    }
    r
}

/// A `Table` of `objects` of type `r`. `resource_version`/`continue_token` go into its
/// list metadata; `with_columns = false` omits the column definitions (watch events after the
/// first).
pub fn table<'a>(
    r: &ResourceType,
    objects: impl IntoIterator<Item = &'a Value>,
    include: IncludeObject,
    list_meta: Value,
    with_columns: bool,
) -> Value {
    let defs: Vec<Value> = if with_columns {
        columns(r.kind)
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.ty,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": objects.into_iter().map(|o| row(o, r.kind, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{RESOURCES, known};

    #[test]
    fn pod_rows() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": time::now_rfc3339()},
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2},
                {"name": "b", "ready": false, "restartCount": 1}]}
        });
        let t = table(
            known::pod(),
            [&pod],
            IncludeObject::Metadata,
            json!({"resourceVersion": "5"}),
            true,
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web-1");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "3");
        assert!(cells[4].as_str().is_some_and(|a| a.ends_with('s')));
        assert_eq!(cells[6], "node-1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web-1");
    }

    #[test]
    fn every_kind_has_matching_cells() {
        for r in RESOURCES {
            let obj = json!({"metadata": {"name": "x"}});
            let t = table(r, [&obj], IncludeObject::None, json!({}), true);
            assert_eq!(
                t["columnDefinitions"].as_array().map(Vec::len),
                t["rows"][0]["cells"].as_array().map(Vec::len),
                "{}",
                r.kind
            );
            assert!(t["rows"][0].get("object").is_none());
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(
            pod_status(
                &json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}})
            ),
            "ContainerCreating"
        );
        assert_eq!(
            pod_status(
                &json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}})
            ),
            "Terminating"
        );
        assert_eq!(pod_status(&json!({})), "Unknown");
    }
}
