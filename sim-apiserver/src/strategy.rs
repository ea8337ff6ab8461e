//! Per-kind server-side strategy: what the real server's defaulting, REST strategies and (here
//! absent) controllers fill in on write, and which part of an object each endpoint may change.
//!
//! * Status is the server's: writes to the main resource keep the stored `status` of kinds with
//!   a status subresource, writes to `/status` change nothing else.
//! * Defaults: a new Pod is `Pending`; a Namespace is `Active`; a Service gets `type` and a
//!   cluster IP; ports get `protocol: TCP`.
//! * No workload controllers run: Deployments, ReplicaSets, StatefulSets and DaemonSets report
//!   all their replicas ready as soon as they are written, a PersistentVolumeClaim is `Bound` at
//!   once. (Pods for them are not created; the simulated kubelet only starts existing pods.)

use serde_json::{Value, json};

use crate::objects::{self, PodPhase};
use crate::resource::ResourceType;

/// Replaces `new`'s status with `current`'s (main-resource writes of kinds with a status
/// subresource; `None`: a create, which starts without status — except for Nodes, which their
/// kubelet registers with one).
pub fn keep_status(r: &ResourceType, current: Option<&Value>, new: &mut Value) {
    if !r.has_status || (current.is_none() && r.kind == "Node" && r.crd.is_none()) {
        return;
    }
    if let Some(o) = new.as_object_mut() {
        match current.and_then(|c| c.get("status")) {
            Some(s) => o.insert("status".to_string(), s.clone()),
            None => o.remove("status"),
        };
    }
}

/// `current` with `new`'s status (writes to `/status`).
pub fn only_status(current: &Value, new: &Value) -> Value {
    let mut out = current.clone();
    if let Some(o) = out.as_object_mut() {
        match new.get("status") {
            Some(s) => o.insert("status".to_string(), s.clone()),
            None => o.remove("status"),
        };
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            // A status write may carry a resourceVersion precondition, and its managed fields.
            for field in ["resourceVersion", "managedFields"] {
                match new.pointer(&format!("/metadata/{field}")) {
                    Some(v) => m.insert(field.to_string(), v.clone()),
                    None => m.remove(field),
                };
            }
        }
    }
    out
}

/// `protocol: TCP` on every port of a list that lacks one.
fn default_protocols(ports: Option<&mut Value>) {
    for p in ports.and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(p) = p.as_object_mut() {
            p.entry("protocol").or_insert_with(|| json!("TCP"));
        }
    }
}

fn default_pod_spec(spec: Option<&mut Value>) {
    let Some(spec) = spec else { return };
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default_protocols(c.get_mut("ports"));
        }
    }
}

fn replicas(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn generation(obj: &Value) -> i64 {
    obj.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// Whether the status already reports this generation (a controller would catch up).
fn observed(obj: &Value) -> bool {
    obj.pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
        == Some(generation(obj))
}

fn set_status(obj: &mut Value, status: Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert("status".to_string(), status);
    }
}

/// Fills in what the real server's strategies (and controllers) would on write. `nodes` is the
/// number of nodes (for DaemonSets).
pub fn normalize(r: &ResourceType, obj: &mut Value, creating: bool, nodes: usize) {
    if r.crd.is_some() {
        return;
    }
    match r.kind.as_str() {
        "Pod" => {
            default_pod_spec(obj.get_mut("spec"));
            if creating {
                // Status is the kubelet's, not the client's: a new pod is Pending.
                objects::set_pod_status(obj, PodPhase::Pending);
            }
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            default_pod_spec(obj.pointer_mut("/spec/template/spec"));
        }
        "CronJob" => default_pod_spec(obj.pointer_mut("/spec/jobTemplate/spec/template/spec")),
        _ => {}
    }
    match r.kind.as_str() {
        "Namespace" if obj.pointer("/status/phase").is_none() => {
            set_status(obj, json!({"phase": "Active"}));
        }
        "Service" => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("type").or_insert(json!("ClusterIP"));
                if !spec.contains_key("clusterIP") {
                    let h = objects::name_hash(&format!("{ns}/{name}"));
                    let ip = format!("10.96.{}.{}", (h >> 8) % 250, h % 250 + 2);
                    spec.insert("clusterIP".to_string(), json!(ip));
                    spec.insert("clusterIPs".to_string(), json!([ip]));
                }
            }
            default_protocols(obj.pointer_mut("/spec/ports"));
        }
        "Deployment" => {
            // No controller runs pods for user deployments; report them as fully available.
            let want = replicas(obj);
            let have = obj.pointer("/status/replicas").and_then(Value::as_i64);
            if creating || have != Some(want) || !observed(obj) {
                let mut st = objects::deployment_status(want, want);
                st["observedGeneration"] = json!(generation(obj));
                set_status(obj, st);
            }
        }
        "ReplicaSet" | "StatefulSet" => {
            let want = replicas(obj);
            let have = obj.pointer("/status/replicas").and_then(Value::as_i64);
            if creating || have != Some(want) || !observed(obj) {
                let mut st = json!({
                    "replicas": want, "readyReplicas": want, "availableReplicas": want,
                    "observedGeneration": generation(obj),
                });
                if r.kind == "StatefulSet" {
                    st["currentReplicas"] = json!(want);
                    st["updatedReplicas"] = json!(want);
                } else {
                    st["fullyLabeledReplicas"] = json!(want);
                }
                set_status(obj, st);
            }
        }
        "DaemonSet" => {
            let n = nodes as i64;
            let have = obj
                .pointer("/status/desiredNumberScheduled")
                .and_then(Value::as_i64);
            if creating || have != Some(n) || !observed(obj) {
                set_status(
                    obj,
                    json!({
                        "desiredNumberScheduled": n, "currentNumberScheduled": n, "numberReady": n,
                        "updatedNumberScheduled": n, "numberAvailable": n, "numberMisscheduled": 0,
                        "observedGeneration": generation(obj),
                    }),
                );
            }
        }
        "PersistentVolumeClaim" if creating => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let storage = obj
                .pointer("/spec/resources/requests/storage")
                .cloned()
                .unwrap_or(json!("1Gi"));
            let modes = obj
                .pointer("/spec/accessModes")
                .cloned()
                .unwrap_or(json!(["ReadWriteOnce"]));
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("volumeName")
                    .or_insert_with(|| json!(format!("pvc-{:016x}", objects::name_hash(&name))));
                spec.entry("storageClassName")
                    .or_insert_with(|| json!("standard"));
                spec.entry("volumeMode")
                    .or_insert_with(|| json!("Filesystem"));
            }
            set_status(
                obj,
                json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": storage}}),
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::known;

    #[test]
    fn defaults_and_status() {
        let mut svc = json!({"metadata": {"name": "s", "namespace": "d"},
                             "spec": {"ports": [{"port": 80}]}});
        normalize(&known::service(), &mut svc, true, 0);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        let mut d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3,
            "template": {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 1}]}]}}}});
        normalize(&known::deployment(), &mut d, false, 0);
        assert_eq!(d["status"]["readyReplicas"], 3);
        assert_eq!(d["status"]["observedGeneration"], 2);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"],
            "TCP"
        );
        let mut new = json!({"spec": {"x": 1}, "status": {"phase": "Evil"}});
        keep_status(
            &known::pod(),
            Some(&json!({"status": {"phase": "Running"}})),
            &mut new,
        );
        assert_eq!(new["status"]["phase"], "Running");
        let s = only_status(
            &json!({"spec": {"x": 1}, "metadata": {"resourceVersion": "3"}}),
            &json!({"spec": {"x": 2}, "status": {"ok": true}, "metadata": {"resourceVersion": "3"}}),
        );
        assert_eq!(s["spec"]["x"], 1);
        assert_eq!(s["status"]["ok"], true);
    }
}
