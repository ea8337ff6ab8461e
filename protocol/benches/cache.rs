//! Informer-cache benchmarks (not timed tests): prints two tables.
//!
//! 1. Store apply rate for 100k pods: relist, modifications, deletions; the store alone and with the
//!    default views maintained (`AgentCache`).
//! 2. Bytes on the wire for a churn workload (pods created, changing phase, deleted): the full watch
//!    events agentk receives (JSON, as the API server sends them) versus the view updates agentk sends to
//!    kas (protobuf), at several event rates and coalescing windows, with the ratio.
//!
//! Run with `cargo bench -p protocol --bench cache`.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use prost::Message;
use protocol::cache::proto::{self, ServerToAgent};
use protocol::cache::{
    AgentCache, Mirror, MirrorOutcome, PublisherConfig, ResourceKind, Store, WatchEvent,
    default_views,
};
use serde_json::{Value, json};

const NAMESPACES: usize = 50;
const PHASES: [&str; 4] = ["Pending", "Running", "Succeeded", "Failed"];

/// Small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A pod shaped like a typical Deployment-managed pod (about 2.3 KB of JSON, without managedFields,
/// which real watch events usually carry on top).
fn pod(i: usize, rv: u64, phase: &str) -> Value {
    let ns = format!("team-{}", i % NAMESPACES);
    let app = format!("app-{}", i % 500);
    let name = format!("{app}-7d9f8c6b5-{i:06x}");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": format!("{app}-7d9f8c6b5-"),
            "namespace": ns,
            "uid": format!("6f1c2a3e-0b4d-4c5e-9f6a-{i:012x}"),
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2024-05-01T12:00:00Z",
            "labels": {"app": app, "pod-template-hash": "7d9f8c6b5", "tier": "backend", "team": ns},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T11:59:00Z",
                            "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9f8c6b5"),
                                 "uid": "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d", "controller": true,
                                 "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{
                "name": "main",
                "image": format!("registry.example.com/{app}:1.24.3"),
                "ports": [{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 9090, "name": "metrics", "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/app"},
                                 {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
                "terminationMessagePath": "/dev/termination-log",
                "imagePullPolicy": "IfNotPresent"
            }],
            "volumes": [{"name": "config", "configMap": {"name": format!("{app}-config")}},
                        {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": format!("node-{}", i % 200),
            "schedulerName": "default-scheduler",
            "priority": 0,
            "enableServiceLinks": true
        },
        "status": {
            "phase": phase,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2024-05-01T12:00:01Z"},
                {"type": "Ready", "status": if phase == "Running" { "True" } else { "False" }, "lastTransitionTime": "2024-05-01T12:00:09Z"},
                {"type": "ContainersReady", "status": if phase == "Running" { "True" } else { "False" }, "lastTransitionTime": "2024-05-01T12:00:09Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-05-01T12:00:00Z"}
            ],
            "hostIP": format!("10.0.{}.{}", i % 200 / 100, i % 100),
            "podIP": format!("10.244.{}.{}", i / 250 % 250, i % 250),
            "startTime": "2024-05-01T12:00:00Z",
            "containerStatuses": [{
                "name": "main", "ready": phase == "Running", "restartCount": 0, "started": phase == "Running",
                "image": format!("registry.example.com/{app}:1.24.3"),
                "imageID": "registry.example.com/app@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
                "containerID": "containerd://9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b",
                "state": {"running": {"startedAt": "2024-05-01T12:00:08Z"}}
            }],
            "qosClass": "Burstable"
        }
    })
}

fn rate(events: usize, d: Duration) -> String {
    let per_s = events as f64 / d.as_secs_f64().max(1e-9);
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else {
        format!("{:.0} k", per_s / 1e3)
    }
}

trait Sink {
    fn apply(&mut self, kind: &ResourceKind, event: WatchEvent);
}

impl Sink for Store {
    fn apply(&mut self, kind: &ResourceKind, event: WatchEvent) {
        if let Err(e) = Store::apply(self, kind, event, &mut ()) {
            panic!("{e}");
        }
    }
}

impl Sink for AgentCache {
    fn apply(&mut self, kind: &ResourceKind, event: WatchEvent) {
        if let Err(e) = AgentCache::apply(self, kind, event) {
            panic!("{e}");
        }
    }
}

/// Applies `objects` events made by `make`, each generated just before it is applied (as a watch
/// event is decoded just before it is applied); only the applying is timed.
fn timed(sink: &mut dyn Sink, objects: usize, make: &dyn Fn(usize) -> WatchEvent) -> Duration {
    let kind = ResourceKind::pod();
    let mut total = Duration::ZERO;
    for i in 0..objects {
        let event = make(i);
        let t = Instant::now();
        sink.apply(&kind, event);
        total += t.elapsed();
    }
    total
}

fn apply_rate(objects: usize) {
    println!(
        "Store apply rate, {objects} pods (~{} bytes of JSON each)",
        serde_json::to_vec(&pod(1, 1, "Running")).map_or(0, |v| v.len())
    );
    println!();
    println!(
        "| workload                         | store only (events/s) | store + default views (events/s) |"
    );
    println!(
        "|----------------------------------|-----------------------|----------------------------------|"
    );
    let mut store = Store::new();
    let mut cache = match AgentCache::new(&default_views(), PublisherConfig::new(NonZeroU64::MIN)) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let kind = ResourceKind::pod();
    type Make = Box<dyn Fn(usize) -> WatchEvent>;
    let workloads: Vec<(&str, Make)> = vec![
        (
            "initial list (InitApply)",
            Box::new(|i| WatchEvent::InitApply(pod(i, 1, "Pending"))),
        ),
        (
            "modify: phase change (Apply)",
            Box::new(|i| WatchEvent::Apply(pod(i, 2, "Running"))),
        ),
        (
            "duplicate (Apply, same version)",
            Box::new(|i| WatchEvent::Apply(pod(i, 2, "Running"))),
        ),
        (
            "stale (Apply, older version)",
            Box::new(|i| WatchEvent::Apply(pod(i, 1, "Failed"))),
        ),
        (
            "delete (Delete)",
            Box::new(|i| WatchEvent::Delete(pod(i, 3, "Succeeded"))),
        ),
    ];
    for (i, (name, make)) in workloads.iter().enumerate() {
        let mut times = Vec::new();
        for sink in [&mut store as &mut dyn Sink, &mut cache as &mut dyn Sink] {
            if i == 0 {
                sink.apply(&kind, WatchEvent::Init);
            }
            let mut d = timed(sink, objects, make.as_ref());
            if i == 0 {
                let t = Instant::now();
                sink.apply(&kind, WatchEvent::InitDone);
                d += t.elapsed();
            }
            times.push(d);
        }
        println!(
            "| {name:<32} | {:>21} | {:>32} |",
            rate(objects, times[0]),
            rate(objects, times[1])
        );
    }
    assert!(store.is_empty() && cache.store().is_empty());
    println!();
}

struct ChurnResult {
    events: usize,
    watch_bytes: usize,
    messages: usize,
    view_bytes: usize,
    ack_bytes: usize,
}

/// Runs `seconds` of churn at `rate` events/s over an initially listed set of pods, with agentk's
/// publisher connected to a kas mirror in-process. Returns the traffic both ways.
fn churn(rate: u32, window: Duration, seconds: u32) -> ChurnResult {
    let mut config = PublisherConfig::new(NonZeroU64::MIN.saturating_add(41));
    config.window = window;
    config.max_unacked = 64;
    let mut agent = match AgentCache::new(&default_views(), config) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let mut mirror = Mirror::new();
    let kind = ResourceKind::pod();
    let mut now = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rv = 1u64;
    // Live pods: index -> phase.
    let mut live: Vec<(usize, usize)> = Vec::new();
    let mut next_index = 0usize;
    let _ = agent.apply(&kind, WatchEvent::Init);
    for _ in 0..2000 {
        let _ = agent.apply(&kind, WatchEvent::InitApply(pod(next_index, rv, "Running")));
        live.push((next_index, 1));
        next_index += 1;
    }
    let _ = agent.apply(&kind, WatchEvent::InitDone);
    agent.on_connected(now);
    let mut to_agent = vec![ServerToAgent {
        msg: Some(proto::server_to_agent::Msg::Resync(
            mirror.on_connected(now),
        )),
    }];
    let mut res = ChurnResult {
        events: 0,
        watch_bytes: 0,
        messages: 0,
        view_bytes: 0,
        ack_bytes: 0,
    };
    let pump = |agent: &mut AgentCache,
                mirror: &mut Mirror,
                to_agent: &mut Vec<ServerToAgent>,
                now: Instant,
                count: bool,
                res: &mut ChurnResult| {
        for _ in 0..100 {
            for m in to_agent.drain(..) {
                if count {
                    res.ack_bytes += m.encoded_len();
                }
                agent.handle(&m, now);
            }
            let Some(m) = agent.poll_transmit(now) else {
                break;
            };
            if count {
                res.messages += 1;
                res.view_bytes += m.encoded_len();
            }
            let reply = match mirror.handle(&m, now) {
                Ok(MirrorOutcome::Applied { ack, .. })
                | Ok(MirrorOutcome::Ignored { ack: Some(ack) }) => {
                    proto::server_to_agent::Msg::Ack(ack)
                }
                Ok(MirrorOutcome::ResyncNeeded { request }) => {
                    proto::server_to_agent::Msg::Resync(request)
                }
                Ok(MirrorOutcome::Ignored { ack: None }) => continue,
                Err(e) => panic!("{e}"),
            };
            to_agent.push(ServerToAgent { msg: Some(reply) });
        }
    };
    pump(&mut agent, &mut mirror, &mut to_agent, now, false, &mut res);
    let step = Duration::from_secs(1) / rate;
    for _ in 0..(rate * seconds) {
        rv += 1;
        now += step;
        let roll = rng.below(100);
        let (event_type, event) = if roll < 20 || live.len() < 100 {
            let i = next_index;
            next_index += 1;
            live.push((i, 0));
            ("ADDED", WatchEvent::Apply(pod(i, rv, PHASES[0])))
        } else if roll < 80 {
            let slot = rng.below(live.len());
            let (i, phase) = live[slot];
            let phase = (phase + 1 + rng.below(3)) % 4;
            live[slot].1 = phase;
            ("MODIFIED", WatchEvent::Apply(pod(i, rv, PHASES[phase])))
        } else {
            let slot = rng.below(live.len());
            let (i, phase) = live.swap_remove(slot);
            ("DELETED", WatchEvent::Delete(pod(i, rv, PHASES[phase])))
        };
        let object = match &event {
            WatchEvent::Apply(o) | WatchEvent::Delete(o) => o.clone(),
            _ => Value::Null,
        };
        res.watch_bytes += serde_json::to_vec(&json!({"type": event_type, "object": object}))
            .map_or(0, |v| v.len());
        res.events += 1;
        let _ = agent.apply(&kind, event);
        pump(&mut agent, &mut mirror, &mut to_agent, now, true, &mut res);
    }
    // Let the last window close.
    now += window + Duration::from_millis(1);
    pump(&mut agent, &mut mirror, &mut to_agent, now, true, &mut res);
    let reference = agent.views().recompute(agent.store().objects());
    assert_eq!(mirror.views(), &reference, "mirror diverged");
    res
}

fn bytes(n: usize) -> String {
    if n >= 10 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 10 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn churn_table(seconds: u32) {
    println!(
        "View-update traffic vs watch-event traffic, pod churn for {seconds} s over ~2000 pods in {NAMESPACES} namespaces"
    );
    println!(
        "(20% created, 60% phase changes, 20% deleted; default views; mirror checked equal to the store at the end)"
    );
    println!();
    println!(
        "| events/s | window | watch events | watch-event JSON | view msgs | view-update bytes | acks (kas→agentk) | ratio watch/view |"
    );
    println!(
        "|---------:|-------:|-------------:|-----------------:|----------:|------------------:|------------------:|-----------------:|"
    );
    for rate in [10u32, 100, 1000] {
        for window in [
            Duration::ZERO,
            Duration::from_millis(100),
            Duration::from_secs(1),
        ] {
            let r = churn(rate, window, seconds);
            println!(
                "| {rate:>8} | {:>6} | {:>12} | {:>16} | {:>9} | {:>17} | {:>17} | {:>15.0}x |",
                format!("{}ms", window.as_millis()),
                r.events,
                bytes(r.watch_bytes),
                r.messages,
                bytes(r.view_bytes),
                bytes(r.ack_bytes),
                r.watch_bytes as f64 / r.view_bytes.max(1) as f64,
            );
        }
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --all-targets`) gets a quick
    // smoke run at a small scale.
    if std::env::args().any(|a| a == "--bench") {
        churn_table(60);
        apply_rate(100_000);
    } else {
        churn_table(1);
        apply_rate(2_000);
    }
}
