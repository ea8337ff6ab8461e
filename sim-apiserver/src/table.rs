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
    name: String,
    ty: &'static str,
    format: &'static str,
    priority: i64,
    description: &'static str,
}

fn col(name: &str, ty: &'static str, priority: i64) -> Column {
    Column {
        name: name.to_string(),
        ty,
        format: "",
        priority,
        description: "",
    }
}

const NAME: Column = Column {
    name: String::new(),
    ty: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};

fn columns(r: &ResourceType) -> Vec<Column> {
    let mut cols = kind_columns(r);
    if let Some(n) = cols.iter_mut().find(|c| c.format == "name") {
        n.name = "Name".to_string();
    }
    cols
}

/// The columns of a custom resource: Name and its printer columns (Age when it has none).
fn custom_columns(r: &ResourceType) -> Vec<Column> {
    let mut cols = vec![NAME];
    if r.printer_columns.is_empty() {
        cols.push(col("Age", "date", 0));
    }
    for p in &r.printer_columns {
        let ty = match p.ty.as_str() {
            "integer" => "integer",
            "number" => "number",
            "boolean" => "boolean",
            "date" => "date",
            _ => "string",
        };
        cols.push(col(&p.name, ty, p.priority));
    }
    cols
}

fn kind_columns(r: &ResourceType) -> Vec<Column> {
    if r.crd.is_some() {
        return custom_columns(r);
    }
    match r.kind.as_str() {
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
        "ReplicaSet" => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "StatefulSet" => vec![
            NAME,
            col("Ready", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
        ],
        "DaemonSet" => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            col("Age", "string", 0),
        ],
        "Job" => vec![
            NAME,
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            col("Age", "string", 0),
        ],
        "CronJob" => vec![
            NAME,
            col("Schedule", "string", 0),
            col("Timezone", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Last Schedule", "string", 0),
            col("Age", "string", 0),
        ],
        "Ingress" => vec![
            NAME,
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            col("Age", "string", 0),
        ],
        "NetworkPolicy" => vec![
            NAME,
            col("Pod-Selector", "string", 0),
            col("Age", "string", 0),
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            col("Age", "string", 0),
        ],
        "ServiceAccount" => vec![NAME, col("Secrets", "string", 0), col("Age", "string", 0)],
        "RoleBinding" | "ClusterRoleBinding" => {
            vec![NAME, col("Role", "string", 0), col("Age", "string", 0)]
        }
        "Role" | "ClusterRole" | "CustomResourceDefinition" => {
            vec![NAME, col("Created At", "date", 0)]
        }
        _ => vec![NAME, col("Age", "string", 0)],
    }
}

/// The value at a simple JSONPath (`.spec.replicas`, `.status.conditions[0].type`), printed.
fn json_path(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = match cur.get(field) {
            Some(v) => v,
            None => return Value::Null,
        };
        if let Some(i) = index {
            cur = match cur.get(i) {
                Some(v) => v,
                None => return Value::Null,
            };
        }
    }
    cur.clone()
}

fn selector_string(obj: &Value, ptr: &str) -> String {
    or_none(&crate::access::labels_at(obj, ptr))
}

fn template_containers(obj: &Value) -> (String, String) {
    let containers = arr(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn custom_cells(obj: &Value, r: &ResourceType, name: Value) -> Vec<Value> {
    let mut cells = vec![name];
    if r.printer_columns.is_empty() {
        cells.push(json!(age(obj)));
    }
    for p in &r.printer_columns {
        let v = json_path(obj, &p.json_path);
        cells.push(match (p.ty.as_str(), v) {
            ("date", Value::String(t)) => json!(time::age(Some(&t))),
            (_, Value::Null) => json!("<none>"),
            (_, Value::String(t)) => json!(t),
            (_, v) => v,
        });
    }
    cells
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

fn cells(obj: &Value, r: &ResourceType) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    if r.crd.is_some() {
        return custom_cells(obj, r, name);
    }
    match r.kind.as_str() {
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
            let ty = s(obj, "/spec/type");
            vec![
                name,
                json!(if ty.is_empty() { "ClusterIP" } else { ty }),
                json!(or_none(s(obj, "/spec/clusterIP"))),
                json!("<none>"),
                json!(or_none(&ports.join(","))),
                json!(age(obj)),
                json!(selector_string(obj, "/spec/selector")),
            ]
        }
        "Deployment" => {
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let (containers, images) = template_containers(obj);
            vec![
                name,
                json!(format!("{}/{want}", n(obj, "/status/readyReplicas"))),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                json!(age(obj)),
                json!(containers),
                json!(images),
                json!(selector_string(obj, "/spec/selector/matchLabels")),
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
        "ReplicaSet" => {
            let (containers, images) = template_containers(obj);
            vec![
                name,
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                json!(age(obj)),
                json!(containers),
                json!(images),
                json!(selector_string(obj, "/spec/selector/matchLabels")),
            ]
        }
        "StatefulSet" => {
            let (containers, images) = template_containers(obj);
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                name,
                json!(format!("{}/{want}", n(obj, "/status/readyReplicas"))),
                json!(age(obj)),
                json!(containers),
                json!(images),
            ]
        }
        "DaemonSet" => vec![
            name,
            json!(n(obj, "/status/desiredNumberScheduled")),
            json!(n(obj, "/status/currentNumberScheduled")),
            json!(n(obj, "/status/numberReady")),
            json!(n(obj, "/status/updatedNumberScheduled")),
            json!(n(obj, "/status/numberAvailable")),
            json!(selector_string(obj, "/spec/template/spec/nodeSelector")),
            json!(age(obj)),
        ],
        "Job" => {
            let want = obj
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let done = n(obj, "/status/succeeded");
            let complete = arr(obj, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Complete" && s(c, "/status") == "True");
            let failed = arr(obj, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Failed" && s(c, "/status") == "True");
            let status = if complete {
                "Complete"
            } else if failed {
                "Failed"
            } else {
                "Running"
            };
            vec![
                name,
                json!(status),
                json!(format!("{done}/{want}")),
                json!(""),
                json!(age(obj)),
            ]
        }
        "CronJob" => vec![
            name,
            json!(s(obj, "/spec/schedule")),
            json!(or_none(s(obj, "/spec/timeZone"))),
            json!(
                obj.pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            json!(arr(obj, "/status/active").len()),
            json!(or_none(s(obj, "/status/lastScheduleTime"))),
            json!(age(obj)),
        ],
        "Ingress" => {
            let hosts: Vec<&str> = arr(obj, "/spec/rules")
                .iter()
                .map(|r| s(r, "/host"))
                .filter(|h| !h.is_empty())
                .collect();
            let address: Vec<&str> = arr(obj, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| s(i, "/ip"))
                .collect();
            let ports = if arr(obj, "/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name,
                json!(or_none(s(obj, "/spec/ingressClassName"))),
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
                json!(address.join(",")),
                json!(ports),
                json!(age(obj)),
            ]
        }
        "NetworkPolicy" => vec![
            name,
            json!(selector_string(obj, "/spec/podSelector/matchLabels")),
            json!(age(obj)),
        ],
        "PersistentVolumeClaim" => {
            let modes: Vec<&str> = arr(obj, "/status/accessModes")
                .iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect();
            vec![
                name,
                json!(s(obj, "/status/phase")),
                json!(s(obj, "/spec/volumeName")),
                json!(s(obj, "/status/capacity/storage")),
                json!(modes.join(",")),
                json!(or_none(s(obj, "/spec/storageClassName"))),
                json!(age(obj)),
            ]
        }
        "ServiceAccount" => vec![
            name,
            json!(arr(obj, "/secrets").len().to_string()),
            json!(age(obj)),
        ],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            json!(format!(
                "{}/{}",
                s(obj, "/roleRef/kind"),
                s(obj, "/roleRef/name")
            )),
            json!(age(obj)),
        ],
        "Role" | "ClusterRole" | "CustomResourceDefinition" => {
            vec![name, json!(s(obj, "/metadata/creationTimestamp"))]
        }
        _ => vec![name, json!(age(obj))],
    }
}

fn row(obj: &Value, r: &ResourceType, include: IncludeObject) -> Value {
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
        }),
    };
    let mut row = json!({"cells": cells(obj, r)});
    if !object.is_null()
        && let Some(o) = row.as_object_mut()
    {
        o.insert("object".to_string(), object);
    }
    row
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
        columns(r)
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
        "rows": objects.into_iter().map(|o| row(o, r, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{PrinterColumn, Registry, known};

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
            &known::pod(),
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
        let mut custom = (*known::pod()).clone();
        custom.crd = Some("widgets.example.com".to_string());
        custom.printer_columns = vec![PrinterColumn {
            name: "Size".into(),
            ty: "integer".into(),
            json_path: ".spec.size".into(),
            priority: 0,
        }];
        let custom = std::sync::Arc::new(custom);
        let reg = Registry::builtin();
        for r in reg.all().iter().chain([&custom]) {
            let obj = json!({"metadata": {"name": "x"}, "spec": {"size": 3}});
            let t = table(r, [&obj], IncludeObject::None, json!({}), true);
            assert_eq!(
                t["columnDefinitions"].as_array().map(Vec::len),
                t["rows"][0]["cells"].as_array().map(Vec::len),
                "{}",
                r.kind
            );
            assert!(t["rows"][0].get("object").is_none());
        }
        let t = table(
            &custom,
            [&json!({"metadata": {"name": "x"}, "spec": {"size": 3}})],
            IncludeObject::None,
            json!({}),
            true,
        );
        assert_eq!(t["rows"][0]["cells"], json!(["x", 3]));
        assert_eq!(t["columnDefinitions"][1]["name"], "Size");
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
