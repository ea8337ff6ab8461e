//! The initial state of a simulated cluster: system namespaces, `N` Ready nodes, a few
//! deployments with services, and `M` running pods spread over the deployments and nodes.

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::objects::{self, PodPhase, template_hash};
use super::store::{Store, StoreError};

/// Namespaces every simulated cluster has.
pub const NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Deployments (namespace, name, image) of the initial state.
pub const DEPLOYMENTS: &[(&str, &str, &str)] = &[
    ("default", "web", "registry.example/web:1.4.2"),
    ("default", "api", "registry.example/api:2.0.1"),
    ("default", "worker", "registry.example/worker:0.9.0"),
    (
        "kube-system",
        "coredns",
        "registry.k8s.io/coredns/coredns:v1.11.1",
    ),
];

/// The name of simulated node `i` (0-based).
pub fn node_name(i: usize) -> String {
    format!("sim-node-{}", i + 1)
}

/// Fills an empty store with the initial cluster state.
pub fn populate(store: &Store, nodes: usize, pods: usize, seed: u64) -> Result<(), StoreError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed0f_c1a5);
    for ns in NAMESPACES {
        store.create(objects::namespace(ns))?;
        store.create(objects::configmap(
            ns,
            "kube-root-ca.crt",
            json!({"ca.crt": "-----BEGIN CERTIFICATE-----\nsimulated\n-----END CERTIFICATE-----\n"}),
        ))?;
    }
    let mut kubernetes = objects::service("default", "kubernetes", None, 443);
    kubernetes["spec"]["clusterIP"] = json!("10.96.0.1");
    kubernetes["spec"]["clusterIPs"] = json!(["10.96.0.1"]);
    kubernetes["spec"]["ports"] =
        json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]);
    store.create(kubernetes)?;
    store.create(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "app-credentials", "namespace": "default"},
        "type": "Opaque",
        "data": {"username": "YWRtaW4=", "password": "c2ltdWxhdGVk"},
    }))?;
    let node_names: Vec<String> = (0..nodes).map(node_name).collect();
    for (i, n) in node_names.iter().enumerate() {
        store.create(objects::node(n, i, true))?;
    }
    let mut counts = vec![0i64; DEPLOYMENTS.len()];
    for i in 0..pods {
        counts[i % DEPLOYMENTS.len()] += 1;
    }
    // Deployments with their ReplicaSets (as the deployment controller keeps them) and services.
    let mut replicasets = Vec::new();
    for (d, (ns, app, image)) in DEPLOYMENTS.iter().enumerate() {
        let ready = if nodes == 0 { 0 } else { counts[d] };
        let deployment = store.create(objects::deployment(ns, app, counts[d], ready, image))?;
        replicasets.push(store.create(objects::replicaset(&deployment))?);
        let (svc, port) = if *app == "coredns" {
            ("kube-dns", 53)
        } else {
            (*app, 80)
        };
        if *app != "worker" {
            store.create(objects::service(ns, svc, Some(app), port))?;
        }
    }
    for i in 0..pods {
        let d = i % DEPLOYMENTS.len();
        let (ns, app, image) = DEPLOYMENTS[d];
        let suffix: String = (0..5)
            .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.random_range(0..27)]))
            .collect();
        let name = format!("{app}-{}-{suffix}", template_hash(app));
        let node = (!node_names.is_empty()).then(|| node_names[i % node_names.len()].as_str());
        let phase = if node.is_some() {
            PodPhase::Running
        } else {
            PodPhase::Pending
        };
        let mut pod = objects::pod(
            ns,
            &name,
            node,
            json!({"app": app, "pod-template-hash": template_hash(app)}),
            image,
            phase,
        );
        pod["metadata"]["ownerReferences"] = objects::controller_ref(&replicasets[d]);
        store.create(pod)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    #[test]
    fn populates() {
        let s = Store::new(StoreConfig::default());
        populate(&s, 3, 10, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.list("v1", "Node", None).len(), 3);
        assert_eq!(s.list("v1", "Pod", None).len(), 10);
        assert_eq!(s.list("v1", "Namespace", None).len(), NAMESPACES.len());
        let web = s
            .get("apps/v1", "Deployment", Some("default"), "web")
            .unwrap_or_default();
        assert_eq!(web["status"]["replicas"], 3);
        assert_eq!(web["status"]["availableReplicas"], 3);
        let rs = s.list("apps/v1", "ReplicaSet", Some("default"));
        assert_eq!(rs.len(), 3);
        let pod = &s.list("v1", "Pod", Some("default"))[0];
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        // Deleting a deployment takes its replica set and pods with it.
        s.delete("apps/v1", "Deployment", Some("default"), "web")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.list("apps/v1", "ReplicaSet", Some("default")).len(), 2);
        assert!(
            s.list("v1", "Pod", Some("default"))
                .iter()
                .all(|p| p["metadata"]["labels"]["app"] != "web")
        );
        assert!(
            s.get("v1", "Service", Some("default"), "kubernetes")
                .is_some()
        );
        let empty = Store::new(StoreConfig::default());
        populate(&empty, 0, 0, 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(empty.list("v1", "Pod", None).is_empty());
    }
}
