//! The churn generator: a seeded random walk over the simulated cluster at a given rate.
//!
//! Each step does one of: create a pod for a deployment (Pending, on a Ready node; the
//! simulated kubelet starts it), end a running pod (Succeeded or Failed), delete an ended pod,
//! or flip a node between Ready and NotReady. Pod counts drift around the initial number.
//! Deployments' status follows their pods. Everything goes through the store, so watchers see
//! every change. The same seed gives the same sequence of decisions for the same state.

use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::kubelet::ready_nodes;
use super::objects::{self, PodPhase};
use super::recorder::EventRecorder;
use super::store::Store;

/// Churn settings.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// Steps per second (0 disables churn).
    pub rate: f64,
    /// RNG seed.
    pub seed: u64,
    /// Number of managed pods the walk drifts around.
    pub target_pods: usize,
}

/// What one churn step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChurnAction {
    /// Created pod `namespace/name`.
    CreatedPod(String, String),
    /// Pod `namespace/name` ended with this phase.
    EndedPod(String, String, PodPhase),
    /// Deleted pod `namespace/name`.
    DeletedPod(String, String),
    /// Node became NotReady.
    NodeNotReady(String),
    /// Node became Ready.
    NodeReady(String),
    /// Nothing was possible.
    Idle,
}

/// The churn state machine (one [`step`](Churn::step) per event).
pub struct Churn {
    store: Store,
    recorder: EventRecorder,
    rng: ChaCha8Rng,
    config: ChurnConfig,
}

const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub use super::objects::template_hash;

fn meta<'a>(v: &'a Value, field: &str) -> &'a str {
    v.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Churn {
    /// A churn generator over `store`.
    pub fn new(store: Store, recorder: EventRecorder, config: ChurnConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self {
            store,
            recorder,
            rng,
            config,
        }
    }

    fn suffix(&mut self) -> String {
        (0..5)
            .map(|_| char::from(NAME_ALPHABET[self.rng.random_range(0..NAME_ALPHABET.len())]))
            .collect()
    }

    /// Pods belonging to a deployment (label `app` naming a deployment in the namespace).
    fn managed_pods(&self, deployments: &[Value]) -> Vec<Value> {
        self.store
            .list("v1", "Pod", None)
            .into_iter()
            .filter(|p| {
                let app = p.pointer("/metadata/labels/app").and_then(Value::as_str);
                deployments.iter().any(|d| {
                    Some(meta(d, "name")) == app && meta(d, "namespace") == meta(p, "namespace")
                })
            })
            .collect()
    }

    /// Recomputes `status` of deployment `namespace/name` from its pods.
    pub fn sync_deployment(&self, namespace: &str, name: &str) {
        let pods: Vec<Value> = self
            .store
            .list("v1", "Pod", Some(namespace))
            .into_iter()
            .filter(|p| p.pointer("/metadata/labels/app").and_then(Value::as_str) == Some(name))
            .collect();
        let live = pods
            .iter()
            .filter(|p| matches!(PodPhase::of(p), PodPhase::Pending | PodPhase::Running))
            .count() as i64;
        let running = pods
            .iter()
            .filter(|p| PodPhase::of(p) == PodPhase::Running)
            .count() as i64;
        let result = self
            .store
            .modify("apps/v1", "Deployment", Some(namespace), name, |d| {
                let old = d.get("status").cloned().unwrap_or(Value::Null);
                if old["replicas"] == json!(live) && old["readyReplicas"] == json!(running) {
                    return;
                }
                let mut st = objects::deployment_status(live, running);
                st["observedGeneration"] = d
                    .pointer("/metadata/generation")
                    .cloned()
                    .unwrap_or(json!(1));
                d["status"] = st;
            });
        if let Err(e) = result {
            tracing::debug!(error = %e, deployment = name, "could not update deployment status");
        }
    }

    /// Performs one random action.
    pub fn step(&mut self) -> ChurnAction {
        let deployments = self.store.list("apps/v1", "Deployment", None);
        let pods = self.managed_pods(&deployments);
        let nodes = self.store.list("v1", "Node", None);
        let live = pods
            .iter()
            .filter(|p| matches!(PodPhase::of(p), PodPhase::Pending | PodPhase::Running))
            .count();
        let running: Vec<&Value> = pods
            .iter()
            .filter(|p| PodPhase::of(p) == PodPhase::Running)
            .collect();
        let ended: Vec<&Value> = pods
            .iter()
            .filter(|p| matches!(PodPhase::of(p), PodPhase::Succeeded | PodPhase::Failed))
            .collect();
        let target = self.config.target_pods;
        let max = (target * 2).max(target + 10);
        let w_create = if deployments.is_empty() || live >= max {
            0.0
        } else if live < target {
            4.0
        } else {
            1.0
        };
        let w_end = if running.is_empty() {
            0.0
        } else if live > target {
            3.0
        } else {
            1.5
        };
        let w_delete = if ended.is_empty() { 0.0 } else { 3.0 };
        let w_node = if nodes.is_empty() { 0.0 } else { 0.4 };
        let total = w_create + w_end + w_delete + w_node;
        if total <= 0.0 {
            return ChurnAction::Idle;
        }
        let mut x = self.rng.random_range(0.0..total);
        if x < w_create {
            let d = &deployments[self.rng.random_range(0..deployments.len())];
            return self.create_pod(d);
        }
        x -= w_create;
        if x < w_end {
            let p = running[self.rng.random_range(0..running.len())].clone();
            return self.end_pod(&p);
        }
        x -= w_end;
        if x < w_delete {
            let p = ended[self.rng.random_range(0..ended.len())].clone();
            return self.delete_pod(&p);
        }
        self.flip_node(&nodes)
    }

    fn create_pod(&mut self, d: &Value) -> ChurnAction {
        let ns = meta(d, "namespace").to_string();
        let app = meta(d, "name").to_string();
        let name = format!("{app}-{}-{}", template_hash(&app), self.suffix());
        let image = d
            .pointer("/spec/template/spec/containers/0/image")
            .and_then(Value::as_str)
            .unwrap_or("registry.example/app:1.0")
            .to_string();
        // As the deployment controller would: the pod belongs to the deployment's ReplicaSet.
        let rs = match self.store.ensure_replicaset(&ns, &app) {
            Ok(rs) => rs,
            Err(e) => {
                tracing::debug!(error = %e, "churn could not find the replica set");
                return ChurnAction::Idle;
            }
        };
        let mut pod = objects::pod(
            &ns,
            &name,
            None,
            json!({"app": app, "pod-template-hash": template_hash(&app)}),
            &image,
            PodPhase::Pending,
        );
        pod["metadata"]["ownerReferences"] = objects::controller_ref(&rs);
        match self.store.create(pod) {
            Ok(_) => {
                self.sync_deployment(&ns, &app);
                ChurnAction::CreatedPod(ns, name)
            }
            Err(e) => {
                tracing::debug!(error = %e, "churn could not create pod");
                ChurnAction::Idle
            }
        }
    }

    fn end_pod(&mut self, p: &Value) -> ChurnAction {
        let ns = meta(p, "namespace").to_string();
        let name = meta(p, "name").to_string();
        let phase = if self.rng.random_bool(0.7) {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed
        };
        match self.store.modify("v1", "Pod", Some(&ns), &name, |p| {
            objects::set_pod_status(p, phase)
        }) {
            Ok(updated) => {
                let (ty, reason, msg) = match phase {
                    PodPhase::Failed => ("Warning", "BackOff", "Container exited with code 1"),
                    _ => ("Normal", "Completed", "Container completed successfully"),
                };
                self.recorder.record(&updated, ty, reason, msg);
                if let Some(app) = p.pointer("/metadata/labels/app").and_then(Value::as_str) {
                    self.sync_deployment(&ns, app);
                }
                ChurnAction::EndedPod(ns, name, phase)
            }
            Err(e) => {
                tracing::debug!(error = %e, "churn could not end pod");
                ChurnAction::Idle
            }
        }
    }

    fn delete_pod(&mut self, p: &Value) -> ChurnAction {
        let ns = meta(p, "namespace").to_string();
        let name = meta(p, "name").to_string();
        match self.store.delete_pod(&ns, &name) {
            Ok(_) => {
                if let Some(app) = p.pointer("/metadata/labels/app").and_then(Value::as_str) {
                    self.sync_deployment(&ns, app);
                }
                ChurnAction::DeletedPod(ns, name)
            }
            Err(e) => {
                tracing::debug!(error = %e, "churn could not delete pod");
                ChurnAction::Idle
            }
        }
    }

    fn flip_node(&mut self, nodes: &[Value]) -> ChurnAction {
        let ready = ready_nodes(&self.store);
        let not_ready: Vec<String> = nodes
            .iter()
            .map(|n| meta(n, "name").to_string())
            .filter(|n| !ready.contains(n))
            .collect();
        let restore = !not_ready.is_empty() && (ready.len() <= 1 || self.rng.random_bool(0.7));
        let (name, to_ready) = if restore {
            (
                not_ready[self.rng.random_range(0..not_ready.len())].clone(),
                true,
            )
        } else if ready.len() > 1 {
            (ready[self.rng.random_range(0..ready.len())].clone(), false)
        } else {
            return ChurnAction::Idle;
        };
        match self.store.set_node_ready(&name, to_ready) {
            Ok(n) => {
                if to_ready {
                    self.recorder.record(
                        &n,
                        "Normal",
                        "NodeReady",
                        &format!("Node {name} status is now: NodeReady"),
                    );
                    ChurnAction::NodeReady(name)
                } else {
                    self.recorder.record(
                        &n,
                        "Warning",
                        "NodeNotReady",
                        &format!("Node {name} status is now: NodeNotReady"),
                    );
                    ChurnAction::NodeNotReady(name)
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "churn could not flip node");
                ChurnAction::Idle
            }
        }
    }
}

/// Runs churn at `config.rate` steps per second until `shutdown` flips.
pub async fn run(mut churn: Churn, mut shutdown: watch::Receiver<bool>) {
    let rate = churn.config.rate;
    if rate.is_nan() || rate <= 0.0 {
        return;
    }
    let period = Duration::from_secs_f64((1.0 / rate).clamp(0.01, 3600.0));
    let per_tick = rate * period.as_secs_f64();
    let mut budget = 0.0f64;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = interval.tick() => {
                budget += per_tick;
                let mut n = 0;
                while budget >= 1.0 && n < 10_000 {
                    let action = churn.step();
                    tracing::trace!(?action, "churn");
                    budget -= 1.0;
                    n += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn cluster() -> (Store, EventRecorder) {
        let s = Store::new(StoreConfig::default());
        s.add_namespace("default").unwrap_or_else(|e| panic!("{e}"));
        for i in 0..3 {
            s.add_node(&format!("n{i}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        s.create(objects::deployment("default", "web", 0, 0, "nginx:1"))
            .unwrap_or_else(|e| panic!("{e}"));
        let rec = EventRecorder::new(s.clone(), 50);
        (s, rec)
    }

    #[test]
    fn walk_stays_bounded_and_visits_every_action() {
        let (s, rec) = cluster();
        let mut churn = Churn::new(
            s.clone(),
            rec.clone(),
            ChurnConfig {
                rate: 1.0,
                seed: 7,
                target_pods: 5,
            },
        );
        let mut seen = [false; 5];
        let mut fk = HashMap::new();
        for _ in 0..600 {
            let a = churn.step();
            match a {
                ChurnAction::CreatedPod(..) => seen[0] = true,
                ChurnAction::EndedPod(..) => seen[1] = true,
                ChurnAction::DeletedPod(..) => seen[2] = true,
                ChurnAction::NodeNotReady(_) => seen[3] = true,
                ChurnAction::NodeReady(_) => seen[4] = true,
                ChurnAction::Idle => {}
            }
            // Play kubelet so pods get to run.
            crate::kubelet::step(
                &s,
                &rec,
                &mut fk,
                Duration::ZERO,
                tokio::time::Instant::now(),
            );
            assert!(s.list("v1", "Pod", None).len() <= 20);
            assert!(!ready_nodes(&s).is_empty(), "at least one node stays Ready");
        }
        assert_eq!(seen, [true; 5], "every kind of action happened");
        let d = s
            .get("apps/v1", "Deployment", Some("default"), "web")
            .unwrap_or_default();
        let live = s
            .list("v1", "Pod", Some("default"))
            .iter()
            .filter(|p| matches!(PodPhase::of(p), PodPhase::Pending | PodPhase::Running))
            .count();
        assert_eq!(d["status"]["replicas"], json!(live));
    }

    use std::collections::HashMap;

    #[test]
    fn same_seed_same_decisions() {
        let names = |seed| {
            let (s, rec) = cluster();
            let mut c = Churn::new(
                s,
                rec,
                ChurnConfig {
                    rate: 1.0,
                    seed,
                    target_pods: 3,
                },
            );
            (0..40)
                .map(|_| match c.step() {
                    ChurnAction::CreatedPod(_, n) => format!("c:{n}"),
                    other => format!("{other:?}").chars().take(8).collect(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(1), names(1));
        assert_ne!(names(1), names(2));
    }
}
