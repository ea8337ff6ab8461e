//! Fake cluster objects (namespaces, nodes, pods, deployments, services, events) and the
//! store conveniences tests and generators use to make them (`add_node`, `add_pod`,
//! `set_pod_phase`, ...).

use serde_json::{Map, Value, json};

use super::store::{Store, StoreError};
use super::time;

/// Pods carrying this annotation (value `"true"`) are never advanced by the simulated kubelet.
pub const HOLD_PHASE_ANNOTATION: &str = "simulator.gitlab.com/hold-phase";

/// The kubelet version simulated nodes report.
pub const KUBELET_VERSION: &str = "v1.32.0";

/// A pod's lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// Accepted, containers not yet running.
    Pending,
    /// Containers running.
    Running,
    /// All containers exited with success.
    Succeeded,
    /// A container exited with failure.
    Failed,
    /// State unknown.
    Unknown,
}

impl PodPhase {
    /// The phase string in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
        }
    }

    /// The phase of a pod object (`Pending` when unset).
    pub fn of(pod: &Value) -> Self {
        match pod.pointer("/status/phase").and_then(Value::as_str) {
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            Some("Unknown") => Self::Unknown,
            _ => Self::Pending,
        }
    }
}

const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash` label value of a deployment.
pub fn template_hash(deployment: &str) -> String {
    let mut h = name_hash(deployment);
    (0..10)
        .map(|_| {
            let c = NAME_ALPHABET[(h % NAME_ALPHABET.len() as u64) as usize];
            h /= NAME_ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

/// `ownerReferences` naming `owner` (a stored object) as controller, blocking its deletion.
pub fn controller_ref(owner: &Value) -> Value {
    json!([{
        "apiVersion": owner.get("apiVersion"),
        "kind": owner.get("kind"),
        "name": owner.pointer("/metadata/name"),
        "uid": owner.pointer("/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// The `ReplicaSet` a (stored) deployment's controller keeps for its current template.
pub fn replicaset(deployment: &Value) -> Value {
    let app = deployment
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let hash = template_hash(app);
    let mut template = deployment
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    let mut selector = deployment
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or_else(|| json!({"matchLabels": {"app": app}}));
    selector["matchLabels"]["pod-template-hash"] = json!(hash);
    let replicas = deployment
        .pointer("/spec/replicas")
        .cloned()
        .unwrap_or(json!(1));
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{app}-{hash}"),
            "namespace": deployment.pointer("/metadata/namespace"),
            "labels": template["metadata"]["labels"].clone(),
            "annotations": {"deployment.kubernetes.io/revision": "1"},
            "ownerReferences": controller_ref(deployment),
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
        "status": {"replicas": replicas, "readyReplicas": replicas,
                   "availableReplicas": replicas, "fullyLabeledReplicas": replicas,
                   "observedGeneration": 1},
    })
}

/// A stable small hash (FNV-1a) for deriving fake addresses from names.
pub(crate) fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn pod_ip(ns: &str, name: &str) -> String {
    let h = name_hash(&format!("{ns}/{name}"));
    format!("10.244.{}.{}", (h >> 8) % 250 + 1, h % 250 + 2)
}

/// A `Namespace` object.
pub fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// A `Node` object with a Ready condition, capacity and node info.
pub fn node(name: &str, index: usize, ready: bool) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    });
    if index == 0
        && let Some(l) = labels.as_object_mut()
    {
        l.insert(
            "node-role.kubernetes.io/control-plane".to_string(),
            json!(""),
        );
    }
    let now = time::now_rfc3339();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": format!("10.244.{index}.0/24"), "providerID": format!("simulator://{name}")},
        "status": {
            "capacity": {"cpu": "4", "memory": "16348156Ki", "pods": "110", "ephemeral-storage": "102350Mi"},
            "allocatable": {"cpu": "4", "memory": "16245756Ki", "pods": "110", "ephemeral-storage": "96589Mi"},
            "conditions": node_conditions(ready, &now),
            "addresses": [
                {"type": "InternalIP", "address": format!("10.0.0.{}", index % 250 + 10)},
                {"type": "Hostname", "address": name}
            ],
            "nodeInfo": {
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "osImage": "Simulated Linux 1.0",
                "kernelVersion": "6.1.0-sim",
                "containerRuntimeVersion": "containerd://1.7.0",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "machineID": format!("{:032x}", name_hash(name)),
                "systemUUID": format!("{:032x}", name_hash(name).rotate_left(17)),
                "bootID": format!("{:032x}", name_hash(name).rotate_left(33)),
            },
        },
    })
}

fn node_conditions(ready: bool, now: &str) -> Value {
    let pressure = |ty: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": "False", "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!([
        pressure(
            "MemoryPressure",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        pressure(
            "DiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        pressure(
            "PIDPressure",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        if ready {
            json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
                   "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now})
        } else {
            json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                   "message": "container runtime network not ready", "lastHeartbeatTime": now, "lastTransitionTime": now})
        }
    ])
}

/// A single-container `Pod` in `phase` (status filled in to match).
pub fn pod(
    namespace: &str,
    name: &str,
    node: Option<&str>,
    labels: Value,
    image: &str,
    phase: PodPhase,
) -> Value {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "containers": [{
                "name": "main",
                "image": image,
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                "imagePullPolicy": "IfNotPresent",
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
        },
    });
    if let (Some(n), Some(spec)) = (node, p.get_mut("spec").and_then(Value::as_object_mut)) {
        spec.insert("nodeName".to_string(), json!(n));
    }
    set_pod_status(&mut p, phase);
    p
}

fn container_names(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("name")?.as_str()?.to_string(),
                c.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ))
        })
        .map(|(n, _)| n)
        .collect()
}

fn container_image(pod: &Value, name: &str) -> String {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|c| c.get("image"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Rewrites a pod's `status` for `phase` (conditions, container states, IPs, start time).
pub fn set_pod_status(pod: &mut Value, phase: PodPhase) {
    let now = time::now_rfc3339();
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .map(str::to_string);
    let old_status = pod.get("status").cloned().unwrap_or(Value::Null);
    let started = old_status
        .get("startTime")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| now.clone());
    let cond = |ty: &str, ok: bool| json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": now});
    let running = phase == PodPhase::Running;
    let scheduled = node.is_some();
    let mut status = Map::new();
    status.insert("phase".to_string(), json!(phase.as_str()));
    status.insert("qosClass".to_string(), json!("Burstable"));
    status.insert(
        "conditions".to_string(),
        json!([
            cond("PodReadyToStartContainers", phase != PodPhase::Pending),
            cond("Initialized", true),
            cond("Ready", running),
            cond("ContainersReady", running),
            cond("PodScheduled", scheduled),
        ]),
    );
    if let Some(n) = &node {
        let h = name_hash(n);
        status.insert(
            "hostIP".to_string(),
            json!(format!("10.0.0.{}", h % 250 + 10)),
        );
    }
    if phase != PodPhase::Pending || scheduled {
        status.insert("startTime".to_string(), json!(started));
    }
    if phase != PodPhase::Pending {
        let ip = pod_ip(&ns, &name);
        status.insert("podIP".to_string(), json!(ip));
        status.insert("podIPs".to_string(), json!([{"ip": ip}]));
    }
    let statuses: Vec<Value> = container_names(pod)
        .iter()
        .map(|c| {
            let state = match phase {
                PodPhase::Pending | PodPhase::Unknown => {
                    json!({"waiting": {"reason": "ContainerCreating"}})
                }
                PodPhase::Running => json!({"running": {"startedAt": now}}),
                PodPhase::Succeeded => json!({"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": started, "finishedAt": now}}),
                PodPhase::Failed => json!({"terminated": {"exitCode": 1, "reason": "Error",
                    "startedAt": started, "finishedAt": now}}),
            };
            let image = container_image(pod, c);
            json!({
                "name": c,
                "image": image,
                "imageID": format!("docker.io/library/{image}@sha256:{:016x}", name_hash(&image)),
                "containerID": format!("containerd://{:016x}{:016x}", name_hash(&name), name_hash(c)),
                "ready": running,
                "started": running,
                "restartCount": 0,
                "state": state,
            })
        })
        .collect();
    status.insert("containerStatuses".to_string(), Value::Array(statuses));
    if let Some(o) = pod.as_object_mut() {
        o.insert("status".to_string(), Value::Object(status));
    }
}

/// An `apps/v1` `Deployment` with `replicas` and a status claiming `ready` of them ready.
pub fn deployment(namespace: &str, name: &str, replicas: i64, ready: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image,
                                          "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
            },
        },
        "status": deployment_status(replicas, ready),
    })
}

/// A deployment `status` with `replicas` pods of which `ready` are ready and available.
pub fn deployment_status(replicas: i64, ready: i64) -> Value {
    let now = time::now_rfc3339();
    json!({
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": (replicas - ready).max(0),
        "conditions": [
            {"type": "Available", "status": if ready > 0 || replicas == 0 { "True" } else { "False" },
             "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability.",
             "lastUpdateTime": now, "lastTransitionTime": now},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": "ReplicaSet has successfully progressed.", "lastUpdateTime": now, "lastTransitionTime": now}
        ],
    })
}

/// A `ClusterIP` `Service` selecting `app=<selector_app>`.
pub fn service(namespace: &str, name: &str, selector_app: Option<&str>, port: i64) -> Value {
    let h = name_hash(&format!("{namespace}/{name}"));
    let ip = format!("10.96.{}.{}", (h >> 8) % 250, h % 250 + 2);
    let mut svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}],
            "sessionAffinity": "None",
        },
        "status": {"loadBalancer": {}},
    });
    if let (Some(app), Some(spec)) = (
        selector_app,
        svc.get_mut("spec").and_then(Value::as_object_mut),
    ) {
        spec.insert("selector".to_string(), json!({"app": app}));
    }
    svc
}

/// A `ConfigMap`.
pub fn configmap(namespace: &str, name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    })
}

/// A core `v1` `Event` about `involved` (an object with kind, metadata.name/namespace/uid).
pub fn event(involved: &Value, event_type: &str, reason: &str, message: &str, seq: u64) -> Value {
    let ns = involved
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = involved
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let now = time::now_rfc3339();
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{:016x}", name_hash(name).wrapping_add(seq)), "namespace": ns},
        "involvedObject": {
            "kind": involved.get("kind").cloned().unwrap_or(json!("Pod")),
            "apiVersion": involved.get("apiVersion").cloned().unwrap_or(json!("v1")),
            "namespace": ns,
            "name": name,
            "uid": involved.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        },
        "type": event_type,
        "reason": reason,
        "message": message,
        "source": {"component": "simulator"},
        "reportingComponent": "simulator",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    })
}

/// Conveniences for tests and generators.
impl Store {
    /// Creates namespace `name` (Active).
    pub fn add_namespace(&self, name: &str) -> Result<Value, StoreError> {
        self.create(namespace(name))
    }

    /// Creates a Ready node `name`.
    pub fn add_node(&self, name: &str) -> Result<Value, StoreError> {
        let index = self.list("v1", "Node", None).len();
        self.create(node(name, index, true))
    }

    /// Flips node `name`'s Ready condition.
    pub fn set_node_ready(&self, name: &str, ready: bool) -> Result<Value, StoreError> {
        let now = time::now_rfc3339();
        self.modify("v1", "Node", None, name, |n| {
            if let Some(status) = n.get_mut("status").and_then(Value::as_object_mut) {
                status.insert("conditions".to_string(), node_conditions(ready, &now));
            }
        })
    }

    /// Creates a Running pod `namespace/name` on the first node (if any) with label `app=<name>`.
    pub fn add_pod(&self, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let node = self.list("v1", "Node", None).first().and_then(|n| {
            n.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        self.create(pod(
            namespace,
            name,
            node.as_deref(),
            json!({"app": name}),
            "registry.example/app:1.0",
            PodPhase::Running,
        ))
    }

    /// Moves pod `namespace/name` to `phase`. Setting `Pending` also pins the pod there (the
    /// simulated kubelet leaves it alone) by setting [`HOLD_PHASE_ANNOTATION`].
    pub fn set_pod_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: PodPhase,
    ) -> Result<Value, StoreError> {
        self.modify("v1", "Pod", Some(namespace), name, |p| {
            if phase == PodPhase::Pending
                && let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut)
            {
                let ann = m
                    .entry("annotations")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(a) = ann.as_object_mut() {
                    a.insert(HOLD_PHASE_ANNOTATION.to_string(), json!("true"));
                }
            }
            set_pod_status(p, phase);
        })
    }

    /// The ReplicaSet of deployment `namespace/app`, created (owned by the deployment) if
    /// missing, as the deployment controller keeps it.
    pub fn ensure_replicaset(&self, namespace: &str, app: &str) -> Result<Value, StoreError> {
        let name = format!("{app}-{}", template_hash(app));
        if let Some(rs) = self.get("apps/v1", "ReplicaSet", Some(namespace), &name) {
            return Ok(rs);
        }
        let d = self
            .get("apps/v1", "Deployment", Some(namespace), app)
            .ok_or_else(|| StoreError::NotFound {
                resource: "deployments.apps".to_string(),
                name: app.to_string(),
            })?;
        self.create(replicaset(&d))
    }

    /// Deletes pod `namespace/name`.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<Value, StoreError> {
        self.delete("v1", "Pod", Some(namespace), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    #[test]
    fn conveniences() {
        let s = Store::new(StoreConfig::default());
        s.add_namespace("default").unwrap_or_else(|e| panic!("{e}"));
        s.add_node("n1").unwrap_or_else(|e| panic!("{e}"));
        let p = s.add_pod("default", "p1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p["spec"]["nodeName"], "n1");
        assert_eq!(PodPhase::of(&p), PodPhase::Running);
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
        let p = s
            .set_pod_phase("default", "p1", PodPhase::Failed)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(PodPhase::of(&p), PodPhase::Failed);
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Error"
        );
        let n = s
            .set_node_ready("n1", false)
            .unwrap_or_else(|e| panic!("{e}"));
        let ready = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        assert_eq!(ready["status"], "False");
        s.delete_pod("default", "p1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.get("v1", "Pod", Some("default"), "p1").is_none());
    }
}
