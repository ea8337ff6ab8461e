//! The simulated kubelet and scheduler: pods that are `Pending` (created through the API, or by
//! the churn generator) get a node if they have none and start `Running` after a short startup
//! delay. Pods annotated with [`HOLD_PHASE_ANNOTATION`]
//! are left alone. Without a Ready node, pods stay `Pending`, as on a real cluster.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::objects::{self, HOLD_PHASE_ANNOTATION, PodPhase};
use super::recorder::EventRecorder;
use super::store::Store;

fn node_ready(n: &Value) -> bool {
    n.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Names of nodes whose Ready condition is True, sorted.
pub fn ready_nodes(store: &Store) -> Vec<String> {
    store
        .list("v1", "Node", None)
        .iter()
        .filter(|n| node_ready(n))
        .filter_map(|n| {
            n.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// Ready nodes not cordoned (`spec.unschedulable`), sorted.
fn schedulable_nodes(store: &Store) -> Vec<String> {
    store
        .list("v1", "Node", None)
        .iter()
        .filter(|n| {
            node_ready(n) && n.pointer("/spec/unschedulable").and_then(Value::as_bool) != Some(true)
        })
        .filter_map(|n| {
            n.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// One pass: starts every Pending pod first seen at least `delay` ago. Returns how many started.
pub fn step(
    store: &Store,
    recorder: &EventRecorder,
    first_seen: &mut HashMap<String, Instant>,
    delay: Duration,
    now: Instant,
) -> usize {
    let pods = store.list("v1", "Pod", None);
    let mut pending_uids = Vec::new();
    let mut started = 0;
    let mut ready: Option<Vec<String>> = None;
    for pod in &pods {
        if PodPhase::of(pod) != PodPhase::Pending {
            continue;
        }
        let held = pod
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(HOLD_PHASE_ANNOTATION))
            .and_then(Value::as_str)
            == Some("true");
        if held {
            continue;
        }
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        pending_uids.push(uid.clone());
        let seen = *first_seen.entry(uid).or_insert(now);
        if now.duration_since(seen) < delay {
            continue;
        }
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let has_node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let node = if has_node {
            None
        } else {
            let nodes = ready.get_or_insert_with(|| schedulable_nodes(store));
            if nodes.is_empty() {
                continue;
            }
            let idx = (objects::name_hash(name) % nodes.len() as u64) as usize;
            Some(nodes[idx].clone())
        };
        let result = store.modify("v1", "Pod", Some(ns), name, |p| {
            if let Some(n) = &node {
                p["spec"]["nodeName"] = json!(n);
            }
            objects::set_pod_status(p, PodPhase::Running);
        });
        match result {
            Ok(p) => {
                started += 1;
                if let Some(n) = &node {
                    recorder.record(
                        &p,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {ns}/{name} to {n}"),
                    );
                }
                let image = p
                    .pointer("/spec/containers/0/image")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                recorder.record(
                    &p,
                    "Normal",
                    "Pulled",
                    &format!("Container image \"{image}\" already present on machine"),
                );
                recorder.record(&p, "Normal", "Started", "Started container");
            }
            Err(e) => tracing::debug!(error = %e, pod = name, "kubelet could not start pod"),
        }
    }
    first_seen.retain(|uid, _| pending_uids.contains(uid));
    started
}

/// Runs the kubelet loop until `shutdown` flips.
pub async fn run(
    store: Store,
    recorder: EventRecorder,
    delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut first_seen = HashMap::new();
    let tick = (delay / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = interval.tick() => {
                step(&store, &recorder, &mut first_seen, delay, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    #[test]
    fn starts_pending_pods_after_delay() {
        let s = Store::new(StoreConfig::default());
        s.add_namespace("default").unwrap_or_else(|e| panic!("{e}"));
        let rec = EventRecorder::new(s.clone(), 100);
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        s.create(objects::pod(
            "default",
            "p",
            None,
            json!({}),
            "img",
            PodPhase::Pending,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        s.create(objects::pod(
            "default",
            "held",
            None,
            json!({}),
            "img",
            PodPhase::Pending,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        s.set_pod_phase("default", "held", PodPhase::Pending)
            .unwrap_or_else(|e| panic!("{e}"));
        let d = Duration::from_secs(1);
        assert_eq!(step(&s, &rec, &mut seen, d, t0), 0);
        // No Ready node: stays Pending.
        assert_eq!(step(&s, &rec, &mut seen, d, t0 + d), 0);
        s.add_node("n1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(step(&s, &rec, &mut seen, d, t0 + d), 1);
        let p = s.get("v1", "Pod", Some("default"), "p").unwrap_or_default();
        assert_eq!(PodPhase::of(&p), PodPhase::Running);
        assert_eq!(p["spec"]["nodeName"], "n1");
        let held = s
            .get("v1", "Pod", Some("default"), "held")
            .unwrap_or_default();
        assert_eq!(PodPhase::of(&held), PodPhase::Pending);
        assert!(!s.list("v1", "Event", Some("default")).is_empty());
    }
}
