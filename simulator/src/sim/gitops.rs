//! GitOps in virtual time: many agents' manifest projects synced by the production decision
//! [`gitops::Sync`] against [`gitops::testing::ModelCluster`]s, under a stream of commits (some broken,
//! some unfetchable), API server outages and agent restarts — deterministic for a seed, with the
//! invariants checked at the end and a trace hash over every action.
//!
//! This is the simulator's hook for the `gitops` service: kas's side is modelled as what it sends
//! (the last good commit's set, or a status for a rejected or unfetchable commit, SERVICES.md §9), the
//! agent's side is the very `Sync` agentk drives, the API server is the model cluster (which itself
//! refuses deletes of objects no inventory owns). After the faults stop and the run quiesces, every
//! cluster must hold exactly the last good commit's objects at their last version, and every object
//! no inventory owned must still be there.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_config::{ManifestProject, ProjectId};
use gitops::testing::{Fault, ModelCluster};
use gitops::{
    Action, ApiError, DesiredSet, InventoryRef, Object, ObjectId, Source, Sync, SyncConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::trace::Fnv64;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct GitopsSpec {
    /// Agents, each with one manifest project and its own cluster.
    pub agents: usize,
    /// Objects the commits choose from.
    pub pool: usize,
    /// Time between commits (per project).
    pub commit_interval: Duration,
    /// Probability that a commit is rejected by kas (parse/validation failure).
    pub broken_commits: f64,
    /// Probability that a poll cannot fetch.
    pub fetch_failures: f64,
    /// Probability, per commit interval, that an agent's API server fails for one interval.
    pub outages: f64,
    /// Probability, per commit interval, that an agent restarts (a new `Sync`).
    pub restarts: f64,
    /// Time with faults and commits.
    pub duration: Duration,
    /// Time without either at the end.
    pub quiesce: Duration,
}

impl Default for GitopsSpec {
    fn default() -> Self {
        GitopsSpec {
            agents: 20,
            pool: 12,
            commit_interval: Duration::from_secs(30),
            broken_commits: 0.2,
            fetch_failures: 0.1,
            outages: 0.1,
            restarts: 0.05,
            duration: Duration::from_secs(1800),
            quiesce: Duration::from_secs(900),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitopsOutcome {
    /// FNV-1a over every action and outcome, in order.
    pub trace_hash: u64,
    /// Actions executed.
    pub actions: u64,
    /// Commits delivered (good ones).
    pub commits: u64,
    /// Rejected or unfetchable commits reported instead.
    pub rejected: u64,
    /// Broken invariants (empty when all held).
    pub violations: Vec<String>,
}

struct Agent {
    sync: Sync,
    cluster: ModelCluster,
    inventory: InventoryRef,
    /// The last good set kas has for this project.
    good: Option<DesiredSet>,
    down_until: Option<Instant>,
    foreign: ObjectId,
}

fn object(i: usize, version: u64) -> Object {
    let name = format!("o{i}");
    Object {
        id: ObjectId::namespaced("", "ConfigMap", "apps", &name),
        api_version: "v1".into(),
        manifest: serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "apps"},
            "data": {"version": version.to_string()},
        }),
        source: Source {
            path: "apps.yaml".into(),
            line: 1,
        },
    }
}

fn config(agent: usize) -> SyncConfig {
    let project = ManifestProject::with_defaults(Some(
        ProjectId::new("group/manifests")
            .unwrap_or_else(|_| unreachable!("a constant valid project id")),
    ));
    let inventory =
        InventoryRef::for_project("gitlab-agent", &format!("agent-{agent}"), "group/manifests");
    let mut c = SyncConfig::new(&project, inventory);
    c.resync_period = Duration::from_secs(60);
    c
}

/// Runs the simulation.
pub fn run(spec: &GitopsSpec, seed: u64) -> GitopsOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let epoch = Instant::now();
    let at = |d: Duration| epoch + d;
    let mut hash = Fnv64::default();
    let mut out = GitopsOutcome {
        trace_hash: 0,
        actions: 0,
        commits: 0,
        rejected: 0,
        violations: Vec::new(),
    };
    let mut agents: Vec<Agent> = (0..spec.agents)
        .map(|i| {
            let config = config(i);
            let inventory = config.inventory.clone();
            let mut cluster = ModelCluster::new();
            let foreign = ObjectId::namespaced("", "ConfigMap", "apps", "foreign");
            cluster.create_foreign(&foreign, None, "not ours");
            Agent {
                sync: Sync::new(config, rng.random()),
                cluster,
                inventory,
                good: None,
                down_until: None,
                foreign,
            }
        })
        .collect();
    let end_faults = spec.duration;
    let end = spec.duration + spec.quiesce;
    let mut next_commit = Duration::ZERO;
    let mut commit_no = 0u64;
    let mut now = Duration::ZERO;
    // Bounded by `end`: every iteration advances virtual time to the next due event, and a round
    // issues a bounded number of actions (Sync's invariant).
    while now <= end {
        if now >= next_commit && now < end_faults {
            commit_no += 1;
            for (i, a) in agents.iter_mut().enumerate() {
                let broken = rng.random_bool(spec.broken_commits);
                let unfetchable = rng.random_bool(spec.fetch_failures);
                let commit = format!("c{commit_no:04}");
                if broken || unfetchable {
                    out.rejected += 1;
                    a.sync.handle_commit_failed(&commit, "rejected", at(now));
                } else {
                    let members: Vec<Object> = (0..spec.pool)
                        .filter(|_| rng.random_bool(0.6))
                        .map(|o| object(o, commit_no))
                        .collect();
                    let set = DesiredSet::new(commit, members)
                        .unwrap_or_else(|_| unreachable!("distinct names"));
                    out.commits += 1;
                    a.good = Some(set.clone());
                    a.sync.handle_desired(set, at(now));
                }
                if rng.random_bool(spec.outages) {
                    a.down_until = Some(at(now + spec.commit_interval));
                }
                if rng.random_bool(spec.restarts) {
                    // A restarted agent starts from the cluster's inventory; kas resends its set.
                    a.sync = Sync::new(config(i), rng.random());
                    if let Some(g) = &a.good {
                        a.sync.handle_desired(g.clone(), at(now));
                    }
                }
            }
            next_commit += spec.commit_interval;
        }
        for a in &mut agents {
            a.sync.handle_timeout(at(now));
            // Bounded: each round issues finitely many actions, and answers come at once.
            while let Some(action) = a.sync.poll_action() {
                let fault = a.down_until.filter(|t| *t > at(now)).map(|_| {
                    Fault::Refuse(ApiError {
                        code: Some(503),
                        message: "the API server is down".into(),
                    })
                });
                let outcome = a.cluster.execute(&action, fault);
                out.actions += 1;
                hash.update(
                    format!("{} {} {:?}\n", now.as_millis(), describe(&action), outcome).as_bytes(),
                );
                if let Err(e) = a.sync.handle_outcome(action.id(), outcome, at(now)) {
                    out.violations
                        .push(format!("the driver answered wrongly: {e}"));
                }
            }
            while a.sync.poll_event().is_some() {}
        }
        // The next due time: a commit, an agent's timer, or the end.
        let mut next = if now < end_faults {
            next_commit
        } else {
            end + Duration::from_millis(1)
        };
        for a in &agents {
            if let Some(t) = a.sync.poll_timeout() {
                next = next.min(t.saturating_duration_since(epoch));
            }
        }
        now = next.max(now + Duration::from_millis(1));
    }
    for (i, a) in agents.iter().enumerate() {
        out.violations.extend(
            a.cluster
                .violations
                .iter()
                .map(|v| format!("agent {i}: {v}")),
        );
        if !a.cluster.objects.contains_key(&a.foreign) {
            out.violations.push(format!(
                "agent {i}: an object no inventory owned was deleted"
            ));
        }
        let inv = a.inventory.object_id();
        let live: BTreeMap<&ObjectId, &serde_json::Value> = a
            .cluster
            .objects
            .iter()
            .filter(|(id, _)| **id != inv && **id != a.foreign)
            .map(|(id, o)| (id, &o.manifest["data"]))
            .collect();
        let want: BTreeMap<&ObjectId, &serde_json::Value> = a
            .good
            .iter()
            .flat_map(|g| g.objects.iter().map(|o| (&o.id, &o.manifest["data"])))
            .collect();
        if live != want {
            out.violations.push(format!(
                "agent {i}: the cluster did not converge to commit {:?}",
                a.good.as_ref().map(|g| &g.commit)
            ));
        }
    }
    out.trace_hash = hash.finish();
    out
}

fn describe(action: &Action) -> String {
    match action {
        Action::ReadInventory { .. } => "read-inventory".into(),
        Action::WriteInventory { .. } => "write-inventory".into(),
        Action::ReadObject { object, .. } => format!("read {object}"),
        Action::Apply { object, .. } => format!("apply {object}"),
        Action::Prune { object, .. } => format!("prune {object}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_deterministically_and_deletes_nothing_foreign() {
        let spec = GitopsSpec::default();
        let a = run(&spec, 7);
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert!(a.commits > 0 && a.rejected > 0 && a.actions > 0, "{a:?}");
        let b = run(&spec, 7);
        assert_eq!(a, b, "the same seed gives the same run");
        let c = run(&spec, 8);
        assert_ne!(a.trace_hash, c.trace_hash);
    }

    #[test]
    fn a_cluster_that_never_comes_back_is_caught() {
        // Outages forever (no quiesce): convergence fails and the check says so.
        let spec = GitopsSpec {
            agents: 3,
            outages: 1.0,
            quiesce: Duration::ZERO,
            broken_commits: 0.0,
            fetch_failures: 0.0,
            ..GitopsSpec::default()
        };
        let out = run(&spec, 1);
        assert!(
            out.violations
                .iter()
                .any(|v| v.contains("did not converge")),
            "{out:?}"
        );
    }
}
