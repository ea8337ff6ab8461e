//! One agent's simulated Kubernetes cluster: a tiny set of nodes, pods and deployments kept in compact
//! form (the truth), and the churn that changes it.
//!
//! Every change yields the watch events a `kube-runtime` watcher would deliver to agentk
//! ([`WatchEvent::Apply`]/[`WatchEvent::Delete`] with the object's JSON); a restarting agent relists
//! with [`Cluster::relist`]. The truth ([`Cluster::objects`]) is also what the invariants compute the
//! reference views from, with the naive oracle, independently of the agent's cache.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use protocol::cache::{ResourceKind, WatchEvent};
use rand::Rng;
use serde_json::{Value, json};

use super::scenario::ClusterSpec;
use super::trace::push_decimal;

const PHASES: [&str; 4] = ["Pending", "Running", "Succeeded", "Failed"];

// The three kinds, built once (`ResourceKind::pod()` allocates three strings): every watch event
// and every object listed for the invariants' oracle names its kind.
static NODE: LazyLock<ResourceKind> = LazyLock::new(ResourceKind::node);
static POD: LazyLock<ResourceKind> = LazyLock::new(ResourceKind::pod);
static DEPLOYMENT: LazyLock<ResourceKind> = LazyLock::new(ResourceKind::deployment);

// The objects' JSON shapes, built once: an object is its kind's shape cloned, with the fields that
// vary (null here) filled in, which costs a third less than `json!` building it (inserting every
// key into fresh maps, a search each). The tests compare them with the `json!` forms.
static NODE_SHAPE: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": null, "uid": null, "resourceVersion": null},
        "status": {"conditions": [{"type": "Ready", "status": null}]},
    })
});
static POD_SHAPE: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": null, "namespace": null, "uid": null, "resourceVersion": null,
                     "labels": {"app": "app-0"}},
        "spec": {"nodeName": null},
        "status": {"phase": null},
    })
});
static DEPLOYMENT_SHAPE: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": null, "namespace": null, "uid": null, "resourceVersion": null},
        "spec": {"replicas": null},
        "status": {"readyReplicas": null, "availableReplicas": null},
    })
});

/// Calls `f` with every field of the object `v` (nothing if `v` is not an object).
fn fill(v: &mut Value, mut f: impl FnMut(&str, &mut Value)) {
    if let Some(map) = v.as_object_mut() {
        for (key, field) in map.iter_mut() {
            f(key, field);
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    name: u32,
    uid: u64,
    ready: bool,
    rv: u64,
}

#[derive(Debug, Clone)]
struct Pod {
    uid: u64,
    phase: u8,
    node: u32,
    rv: u64,
}

#[derive(Debug, Clone)]
struct Deployment {
    uid: u64,
    replicas: u32,
    ready: u32,
    rv: u64,
}

/// `prefix` then `n` in decimal: what `format!("{prefix}{n}")` writes, through itoa, without the
/// formatting machinery (the objects' names and versions are built for every watch event).
fn numbered(prefix: &str, n: u64) -> String {
    let mut out = String::with_capacity(prefix.len() + 20);
    out.push_str(prefix);
    push_decimal(&mut out, n);
    out
}

/// A cluster's objects (see the module docs).
#[derive(Debug, Clone)]
pub struct Cluster {
    agent: u64,
    nodes: Vec<Node>,
    /// (namespace, pod number) → pod.
    pods: BTreeMap<(u32, u64), Pod>,
    /// (namespace, deployment number) → deployment.
    deployments: BTreeMap<(u32, u32), Deployment>,
    namespaces: u32,
    target_pods: usize,
    next_rv: u64,
    next_uid: u64,
    next_pod: u64,
    changes: u64,
    /// Every object's JSON, kept from the first [`Cluster::objects_cached`] on (the agents whose
    /// views the invariants check after every change): listing them for the oracle then builds
    /// nothing. Other clusters build JSON only for their watch events.
    json: Option<Box<Json>>,
}

/// The objects' JSON, keyed as the objects are.
#[derive(Debug, Clone, Default)]
struct Json {
    nodes: Vec<Value>,
    pods: BTreeMap<(u32, u64), Value>,
    deployments: BTreeMap<(u32, u32), Value>,
}

/// Which object a change touched.
#[derive(Debug, Clone, Copy)]
enum Touched {
    Node(usize),
    Pod((u32, u64)),
    Deployment((u32, u32)),
}

/// A kind's events, as the agent's watcher sees them.
pub type KindEvent = (&'static ResourceKind, WatchEvent);

impl Cluster {
    /// The initial cluster of agent `agent`.
    pub fn new(agent: u64, spec: &ClusterSpec) -> Cluster {
        let mut c = Cluster {
            agent,
            nodes: Vec::new(),
            pods: BTreeMap::new(),
            deployments: BTreeMap::new(),
            namespaces: u32::try_from(spec.namespaces.max(1)).unwrap_or(u32::MAX),
            target_pods: spec.pods_per_namespace * spec.namespaces.max(1),
            next_rv: 1,
            next_uid: 1,
            next_pod: 0,
            changes: 0,
            json: None,
        };
        for n in 0..spec.nodes.max(1) {
            let uid = c.uid();
            let rv = c.rv();
            c.nodes.push(Node {
                name: u32::try_from(n).unwrap_or(u32::MAX),
                uid,
                ready: true,
                rv,
            });
        }
        for ns in 0..c.namespaces {
            for d in 0..spec.deployments_per_namespace {
                let uid = c.uid();
                let rv = c.rv();
                let replicas = u32::try_from(spec.pods_per_namespace).unwrap_or(u32::MAX);
                c.deployments.insert(
                    (ns, u32::try_from(d).unwrap_or(u32::MAX)),
                    Deployment {
                        uid,
                        replicas,
                        ready: replicas,
                        rv,
                    },
                );
            }
            for _ in 0..spec.pods_per_namespace {
                c.create_pod(ns, 1);
            }
        }
        c
    }

    fn uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    fn rv(&mut self) -> u64 {
        self.next_rv += 1;
        self.next_rv
    }

    fn create_pod(&mut self, ns: u32, phase: u8) -> (u32, u64) {
        let n = self.next_pod;
        self.next_pod += 1;
        let uid = self.uid();
        let rv = self.rv();
        let node = u32::try_from(n % self.nodes.len().max(1) as u64).unwrap_or(0);
        self.pods.insert(
            (ns, n),
            Pod {
                uid,
                phase,
                node,
                rv,
            },
        );
        (ns, n)
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.nodes.len() + self.pods.len() + self.deployments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes applied so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// An object's uid, `a{agent}-{uid}`.
    fn uid_text(&self, uid: u64) -> String {
        let mut out = numbered("a", self.agent);
        out.push('-');
        push_decimal(&mut out, uid);
        out
    }

    /// Fills the fields of an object's `metadata` that vary: its name, namespace (a node's shape
    /// has none), uid and resourceVersion.
    fn fill_metadata(
        &self,
        meta: &mut Value,
        name: String,
        namespace: Option<u32>,
        uid: u64,
        rv: u64,
    ) {
        let mut name = Some(name);
        fill(meta, |key, f| match key {
            "name" => *f = name.take().unwrap_or_default().into(),
            "namespace" => {
                if let Some(ns) = namespace {
                    *f = numbered("ns-", ns.into()).into();
                }
            }
            "uid" => *f = self.uid_text(uid).into(),
            "resourceVersion" => *f = numbered("", rv).into(),
            _ => {}
        });
    }

    fn node_json(&self, n: &Node) -> Value {
        let mut v = NODE_SHAPE.clone();
        fill(&mut v, |key, f| match key {
            "metadata" => {
                self.fill_metadata(f, numbered("node-", n.name.into()), None, n.uid, n.rv);
            }
            "status" => fill(f, |key, f| {
                if key == "conditions"
                    && let Some(ready) = f.get_mut(0)
                {
                    fill(ready, |key, f| {
                        if key == "status" {
                            *f = (if n.ready { "True" } else { "False" }).into();
                        }
                    });
                }
            }),
            _ => {}
        });
        v
    }

    fn pod_json(&self, (ns, n): (u32, u64), p: &Pod) -> Value {
        let mut v = POD_SHAPE.clone();
        fill(&mut v, |key, f| match key {
            "metadata" => self.fill_metadata(f, numbered("pod-", n), Some(ns), p.uid, p.rv),
            "spec" => fill(f, |key, f| {
                if key == "nodeName" {
                    *f = numbered("node-", p.node.into()).into();
                }
            }),
            "status" => fill(f, |key, f| {
                if key == "phase" {
                    *f = PHASES[usize::from(p.phase) % PHASES.len()].into();
                }
            }),
            _ => {}
        });
        v
    }

    fn deployment_json(&self, (ns, n): (u32, u32), d: &Deployment) -> Value {
        let mut v = DEPLOYMENT_SHAPE.clone();
        fill(&mut v, |key, f| match key {
            "metadata" => {
                self.fill_metadata(f, numbered("app-", n.into()), Some(ns), d.uid, d.rv);
            }
            "spec" => fill(f, |key, f| {
                if key == "replicas" {
                    *f = d.replicas.into();
                }
            }),
            "status" => fill(f, |key, f| {
                if key == "readyReplicas" || key == "availableReplicas" {
                    *f = d.ready.into();
                }
            }),
            _ => {}
        });
        v
    }

    /// Every object with its kind (the truth), in kind order (nodes, pods, deployments).
    pub fn objects(&self) -> Vec<(&'static ResourceKind, Value)> {
        let mut out = Vec::with_capacity(self.len());
        for n in &self.nodes {
            out.push((&*NODE, self.node_json(n)));
        }
        for (k, p) in &self.pods {
            out.push((&*POD, self.pod_json(*k, p)));
        }
        for (k, d) in &self.deployments {
            out.push((&*DEPLOYMENT, self.deployment_json(*k, d)));
        }
        out
    }

    /// Every object with its kind, as [`Cluster::objects`] lists them, from JSON kept up to date
    /// from now on (built on the first call).
    pub fn objects_cached(&mut self) -> Vec<(&'static ResourceKind, &Value)> {
        if self.json.is_none() {
            let json = Json {
                nodes: self.nodes.iter().map(|n| self.node_json(n)).collect(),
                pods: (self.pods.iter())
                    .map(|(k, p)| (*k, self.pod_json(*k, p)))
                    .collect(),
                deployments: (self.deployments.iter())
                    .map(|(k, d)| (*k, self.deployment_json(*k, d)))
                    .collect(),
            };
            self.json = Some(Box::new(json));
        }
        let Some(json) = self.json.as_deref() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(self.len());
        out.extend(json.nodes.iter().map(|v| (&*NODE, v)));
        out.extend(json.pods.values().map(|v| (&*POD, v)));
        out.extend(json.deployments.values().map(|v| (&*DEPLOYMENT, v)));
        out
    }

    /// The events of a full relist of every kind (a starting watcher).
    pub fn relist(&self) -> Vec<KindEvent> {
        let mut out = Vec::with_capacity(self.len() + 6);
        let mut objects = self.objects().into_iter().peekable();
        for kind in [&*NODE, &*POD, &*DEPLOYMENT] {
            out.push((kind, WatchEvent::Init));
            while let Some((_, o)) = objects.next_if(|(k, _)| *k == kind) {
                out.push((kind, WatchEvent::InitApply(o)));
            }
            out.push((kind, WatchEvent::InitDone));
        }
        out
    }

    /// Applies one random change and returns its watch events.
    pub fn churn<R: Rng>(&mut self, rng: &mut R) -> Vec<KindEvent> {
        let (touched, events) = self.change(rng);
        if let (Some(json), Some(touched)) = (self.json.as_deref_mut(), touched) {
            for (_, event) in &events {
                match (event, touched) {
                    (WatchEvent::Apply(v), Touched::Node(i)) => {
                        if let Some(slot) = json.nodes.get_mut(i) {
                            *slot = v.clone();
                        }
                    }
                    (WatchEvent::Apply(v), Touched::Pod(k)) => {
                        json.pods.insert(k, v.clone());
                    }
                    (WatchEvent::Apply(v), Touched::Deployment(k)) => {
                        json.deployments.insert(k, v.clone());
                    }
                    (WatchEvent::Delete(_), Touched::Pod(k)) => {
                        json.pods.remove(&k);
                    }
                    _ => {}
                }
            }
        }
        events
    }

    /// Applies one random change: the object it touched and the watch events.
    fn change<R: Rng>(&mut self, rng: &mut R) -> (Option<Touched>, Vec<KindEvent>) {
        self.changes += 1;
        let roll: f64 = rng.random();
        if roll < 0.05 && !self.nodes.is_empty() {
            let i = rng.random_range(0..self.nodes.len());
            let rv = self.rv();
            let n = &mut self.nodes[i];
            n.ready = !n.ready;
            n.rv = rv;
            let n = &self.nodes[i];
            let event = (&*NODE, WatchEvent::Apply(self.node_json(n)));
            return (Some(Touched::Node(i)), vec![event]);
        }
        if roll < 0.20 && !self.deployments.is_empty() {
            let i = rng.random_range(0..self.deployments.len());
            let key = *self.deployments.keys().nth(i).unwrap_or(&(0, 0));
            let rv = self.rv();
            let scale = rng.random_bool(0.5);
            if let Some(d) = self.deployments.get_mut(&key) {
                if scale {
                    if rng.random_bool(0.5) && d.replicas < 20 {
                        d.replicas += 1;
                    } else if d.replicas > 1 {
                        d.replicas -= 1;
                    }
                    d.ready = d.ready.min(d.replicas);
                } else {
                    d.ready = rng.random_range(0..=d.replicas);
                }
                d.rv = rv;
            }
            let d = &self.deployments[&key];
            let event = (
                &*DEPLOYMENT,
                WatchEvent::Apply(self.deployment_json(key, d)),
            );
            return (Some(Touched::Deployment(key)), vec![event]);
        }
        // Pods: keep the population around its target.
        let too_few = self.pods.len() < self.target_pods;
        let too_many = self.pods.len() > self.target_pods + self.target_pods / 2 + 1;
        if roll < 0.40 && !too_many || self.pods.is_empty() {
            let ns = rng.random_range(0..self.namespaces);
            let key = self.create_pod(ns, 0);
            let p = &self.pods[&key];
            let event = (&*POD, WatchEvent::Apply(self.pod_json(key, p)));
            return (Some(Touched::Pod(key)), vec![event]);
        }
        let i = rng.random_range(0..self.pods.len());
        let Some(key) = self.pods.keys().nth(i).copied() else {
            return (None, Vec::new());
        };
        let finished = self.pods.get(&key).is_some_and(|p| p.phase >= 2);
        if (roll < 0.55 && !too_few) || finished && rng.random_bool(0.7) {
            if let Some(p) = self.pods.remove(&key) {
                // The deleted object's final state carries a new resourceVersion.
                let p = Pod { rv: self.rv(), ..p };
                let event = (&*POD, WatchEvent::Delete(self.pod_json(key, &p)));
                return (Some(Touched::Pod(key)), vec![event]);
            }
            return (None, Vec::new());
        }
        let rv = self.rv();
        if let Some(p) = self.pods.get_mut(&key) {
            p.phase = match p.phase {
                0 => 1,
                1 => {
                    if rng.random_bool(0.8) {
                        2
                    } else {
                        3
                    }
                }
                _ => 1,
            };
            p.rv = rv;
        }
        let p = &self.pods[&key];
        let event = (&*POD, WatchEvent::Apply(self.pod_json(key, p)));
        (Some(Touched::Pod(key)), vec![event])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::cache::{AgentCache, PublisherConfig, default_views};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::num::NonZeroU64;

    #[test]
    fn cache_fed_by_churn_matches_the_truth() {
        let spec = ClusterSpec::default();
        let mut c = Cluster::new(7, &spec);
        let mut cache = AgentCache::new(
            &default_views(),
            PublisherConfig::new(NonZeroU64::new(1).unwrap()),
        )
        .unwrap();
        for (kind, ev) in c.relist() {
            cache.apply(kind, ev).unwrap();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..2000 {
            for (kind, ev) in c.churn(&mut rng) {
                cache.apply(kind, ev).unwrap();
            }
        }
        assert_eq!(cache.store().len(), c.len());
        let truth = crate::sim::invariants::truth(&c);
        assert_eq!(cache.views().views(), truth);
        assert!(c.len() < 100, "the population stays bounded: {}", c.len());
    }

    /// The objects as `json!` writes them: what the shapes filled in must equal.
    fn reference(c: &Cluster) -> Vec<Value> {
        let mut out = Vec::new();
        for n in &c.nodes {
            out.push(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("node-{}", n.name), "uid": format!("a{}-{}", c.agent, n.uid),
                             "resourceVersion": n.rv.to_string()},
                "status": {"conditions": [{"type": "Ready", "status": if n.ready { "True" } else { "False" }}]},
            }));
        }
        for ((ns, n), p) in &c.pods {
            out.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{n}"), "namespace": format!("ns-{ns}"),
                             "uid": format!("a{}-{}", c.agent, p.uid), "resourceVersion": p.rv.to_string(),
                             "labels": {"app": "app-0"}},
                "spec": {"nodeName": format!("node-{}", p.node)},
                "status": {"phase": PHASES[usize::from(p.phase) % PHASES.len()]},
            }));
        }
        for ((ns, n), d) in &c.deployments {
            out.push(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": format!("app-{n}"), "namespace": format!("ns-{ns}"),
                             "uid": format!("a{}-{}", c.agent, d.uid), "resourceVersion": d.rv.to_string()},
                "spec": {"replicas": d.replicas},
                "status": {"readyReplicas": d.ready, "availableReplicas": d.ready},
            }));
        }
        out
    }

    #[test]
    fn filled_shapes_are_the_json_objects() {
        let mut c = Cluster::new(11, &ClusterSpec::default());
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut seen = [false; 2];
        for round in 0..300 {
            let objects: Vec<Value> = c.objects().into_iter().map(|(_, v)| v).collect();
            assert_eq!(objects, reference(&c), "after change {round}");
            for n in &c.nodes {
                seen[usize::from(n.ready)] = true;
            }
            c.churn(&mut rng);
        }
        assert_eq!(seen, [true, true], "both node conditions were built");
    }

    #[test]
    fn numbered_writes_what_format_writes() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(numbered("pod-", n), format!("pod-{n}"));
            assert_eq!(numbered("", n), n.to_string());
        }
        let c = Cluster::new(42, &ClusterSpec::default());
        assert_eq!(c.uid_text(7), "a42-7");
    }

    #[test]
    fn kept_json_follows_churn() {
        let mut c = Cluster::new(3, &ClusterSpec::default());
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for round in 0..500 {
            if round == 7 {
                assert_eq!(c.objects_cached().len(), c.len());
            }
            c.churn(&mut rng);
            if round >= 7 {
                let kept: Vec<(&ResourceKind, Value)> = (c.objects_cached().into_iter())
                    .map(|(k, v)| (k, v.clone()))
                    .collect();
                assert_eq!(kept, c.objects(), "after change {round}");
            }
        }
    }
}
