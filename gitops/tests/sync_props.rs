//! Property tests of the sync decision against a model cluster: for any sequence of good and broken
//! commits, API failures (refused, or acted-then-failed like timeouts), unanswered requests and agent
//! restarts, once failures stop the cluster converges to the last good commit; nothing outside the
//! inventory is ever deleted; objects others own are left alone as the inventory policy says; an
//! invalid object fails alone; a broken commit changes nothing; retries back off and never storm.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use agent_config::{DryRunStrategy, InventoryPolicy, ManifestProject, ProjectId};
use gitops::testing::{Fault, ModelCluster, inventory_object};
use gitops::{
    Action, ApiError, DesiredSet, InventoryRef, Object, ObjectId, ObjectResult, Phase,
    RoundOutcome, Source, Sync, SyncConfig, SyncEvent,
};
use proptest::prelude::*;

/// The objects commits draw from: every wave, a CRD and a custom resource.
fn pool() -> Vec<(ObjectId, &'static str)> {
    vec![
        (ObjectId::cluster("", "Namespace", "ns-a"), "v1"),
        (ObjectId::cluster("", "Namespace", "ns-b"), "v1"),
        (
            ObjectId::cluster(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                "widgets.example.com",
            ),
            "apiextensions.k8s.io/v1",
        ),
        (
            ObjectId::cluster("rbac.authorization.k8s.io", "ClusterRole", "reader"),
            "rbac.authorization.k8s.io/v1",
        ),
        (ObjectId::namespaced("", "ConfigMap", "ns-a", "a"), "v1"),
        (ObjectId::namespaced("", "ConfigMap", "ns-a", "b"), "v1"),
        (ObjectId::namespaced("", "ConfigMap", "ns-b", "a"), "v1"),
        (ObjectId::namespaced("", "Secret", "ns-b", "s"), "v1"),
        (
            ObjectId::namespaced("example.com", "Widget", "ns-a", "w1"),
            "example.com/v1",
        ),
        (
            ObjectId::namespaced("apps", "Deployment", "ns-a", "web"),
            "apps/v1",
        ),
    ]
}

fn manifest(id: &ObjectId, api_version: &str, version: u8, invalid: bool) -> serde_json::Value {
    let mut m = serde_json::json!({
        "apiVersion": api_version,
        "kind": id.kind,
        "metadata": { "name": id.name },
        "data": { "v": version },
    });
    if let Some(ns) = &id.namespace {
        m["metadata"]["namespace"] = ns.as_str().into();
    }
    if invalid {
        m["invalid"] = true.into();
    }
    m
}

fn commit(n: usize, members: u16, invalid: u16, version: u8) -> DesiredSet {
    let objects = pool()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| members & (1 << i) != 0)
        .map(|(i, (id, av))| Object {
            manifest: manifest(&id, av, version, invalid & (1 << i) != 0),
            api_version: av.to_string(),
            id,
            source: Source {
                path: "m.yaml".into(),
                line: 1,
            },
        })
        .collect();
    DesiredSet::new(format!("commit-{n}"), objects).expect("unique")
}

fn config(policy: InventoryPolicy, prune: bool, dry_run: DryRunStrategy) -> SyncConfig {
    let mut project =
        ManifestProject::with_defaults(Some(ProjectId::new("group/manifests").expect("id")));
    project.inventory_policy = policy;
    project.prune = prune;
    project.dry_run_strategy = dry_run;
    project.reconcile_timeout = Duration::from_secs(60);
    project.prune_timeout = Duration::from_secs(60);
    let mut c = SyncConfig::new(
        &project,
        InventoryRef::for_project("gitlab-agent", "agent-1", "group/manifests"),
    );
    c.answer_grace = Duration::from_secs(10);
    c
}

#[derive(Debug, Clone)]
enum Op {
    /// A good commit: which pool objects, which of them the API server finds invalid, content version.
    Commit {
        members: u16,
        invalid: u16,
        version: u8,
    },
    /// A commit that failed to fetch or parse.
    Broken,
    /// agentk restarts (state lost; kas re-sends the last good set).
    Restart,
    /// The next `count` requests fail: refused (503), or performed and then reported failed (timeout).
    Faults { count: u8, act_then_fail: bool },
    /// The next request is never answered.
    Hang,
    /// The API server slows down: only this many more requests are answered until time passes, so
    /// the next commits arrive mid-round.
    Stall { answers: u8 },
    /// Virtual time passes.
    Wait { secs: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u16>(), prop_oneof![4 => Just(0u16), 1 => any::<u16>().prop_map(|m| m & m.rotate_left(3))], any::<u8>())
            .prop_map(|(members, invalid, version)| Op::Commit { members: members & 0x3ff, invalid: invalid & 0x3ff, version }),
        1 => Just(Op::Broken),
        1 => Just(Op::Restart),
        2 => (1u8..30, any::<bool>()).prop_map(|(count, act_then_fail)| Op::Faults { count, act_then_fail }),
        1 => Just(Op::Hang),
        2 => (0u8..12).prop_map(|answers| Op::Stall { answers }),
        3 => (0u16..900).prop_map(|secs| Op::Wait { secs }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Log {
    Action(Duration, Action),
    Started(Duration),
    FailedRound(Duration),
    NewCommit(Duration),
}

struct Harness {
    cluster: ModelCluster,
    sync: Sync,
    config: SyncConfig,
    start: Instant,
    now: Instant,
    queue: Vec<Action>,
    faults: u32,
    act_then_fail: bool,
    hang: bool,
    /// Answers left before the API server stalls (None: no stall).
    budget: Option<usize>,
    order: u64,
    last_good: Option<DesiredSet>,
    rejected: Option<String>,
    log: Vec<Log>,
    restarts: u64,
}

impl Harness {
    fn new(config: SyncConfig, order_seed: u64) -> Self {
        let start = Instant::now();
        Harness {
            cluster: ModelCluster::new(),
            sync: Sync::new(config.clone(), 1),
            config,
            start,
            now: start,
            queue: Vec::new(),
            faults: 0,
            act_then_fail: false,
            hang: false,
            budget: None,
            order: order_seed | 1,
            last_good: None,
            rejected: None,
            log: Vec::new(),
            restarts: 0,
        }
    }

    fn t(&self) -> Duration {
        self.now - self.start
    }

    fn next_index(&mut self, n: usize) -> usize {
        // xorshift: answers come back in a scrambled order.
        self.order ^= self.order << 13;
        self.order ^= self.order >> 7;
        self.order ^= self.order << 17;
        (self.order % n as u64) as usize
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.sync.poll_event() {
            match e {
                SyncEvent::RoundStarted { .. } => self.log.push(Log::Started(self.t())),
                SyncEvent::RoundFinished {
                    outcome: RoundOutcome::Failed { .. },
                    ..
                } => self.log.push(Log::FailedRound(self.t())),
                _ => {}
            }
        }
    }

    fn pull(&mut self) {
        while let Some(a) = self.sync.poll_action() {
            self.log.push(Log::Action(self.t(), a.clone()));
            self.queue.push(a);
        }
    }

    /// Answers every request (in a scrambled order) until none is left.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            self.pull();
            self.drain_events();
            if self.queue.is_empty() || self.budget == Some(0) {
                return;
            }
            if let Some(b) = &mut self.budget {
                *b -= 1;
            }
            let i = self.next_index(self.queue.len());
            let action = self.queue.swap_remove(i);
            if self.hang {
                self.hang = false;
                continue; // never answered
            }
            let fault = (self.faults > 0).then(|| {
                self.faults -= 1;
                let e = ApiError {
                    code: Some(503),
                    message: "the server is currently unable to handle the request".into(),
                };
                if self.act_then_fail {
                    Fault::ActThenFail(e)
                } else {
                    Fault::Refuse(e)
                }
            });
            let outcome = self.cluster.execute(&action, fault);
            self.sync
                .handle_outcome(action.id(), outcome, self.now)
                .expect("the harness answers correctly");
        }
        panic!("no quiescence after 100,000 answers: a storm");
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..100_000 {
            self.settle();
            match self.sync.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.sync.handle_timeout(self.now);
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("timers fired 100,000 times in {d:?}: a storm");
    }

    fn apply(&mut self, op: &Op, n: usize) {
        match op {
            Op::Commit {
                members,
                invalid,
                version,
            } => {
                let set = commit(n, *members, *invalid, *version);
                self.log.push(Log::NewCommit(self.t()));
                self.last_good = Some(set.clone());
                self.rejected = None;
                self.sync.handle_desired(set, self.now);
            }
            Op::Broken => {
                self.pull();
                let commit = format!("broken-{n}");
                self.sync.handle_commit_failed(
                    &commit,
                    "yaml: line 3: mapping values are not allowed here",
                    self.now,
                );
                assert!(
                    self.sync.poll_action().is_none(),
                    "a broken commit issues nothing"
                );
                self.rejected = Some(commit);
            }
            Op::Restart => {
                self.pull();
                self.queue.clear();
                self.restarts += 1;
                self.sync = Sync::new(self.config.clone(), 1 + self.restarts);
                self.log.push(Log::NewCommit(self.t()));
                if let Some(set) = self.last_good.clone() {
                    self.sync.handle_desired(set, self.now);
                }
                if let Some(c) = self.rejected.clone() {
                    self.sync.handle_commit_failed(&c, "still broken", self.now);
                }
            }
            Op::Faults {
                count,
                act_then_fail,
            } => {
                self.faults = u32::from(*count);
                self.act_then_fail = *act_then_fail;
            }
            Op::Hang => self.hang = true,
            Op::Stall { answers } => self.budget = Some(usize::from(*answers)),
            Op::Wait { secs } => {
                self.budget = None;
                self.run_for(Duration::from_secs(u64::from(*secs)));
            }
        }
        self.settle();
    }
}

fn wave(id: &ObjectId) -> usize {
    gitops::order::wave(id)
}

/// Checks the per-round order of what was issued: applies go up the waves, prunes come after every
/// apply and go down the waves. (That the inventory lists an object before it is applied is checked
/// by the model cluster on every apply.)
fn check_order(log: &[Log]) -> Result<(), String> {
    let mut applies: Vec<usize> = Vec::new();
    let mut prunes: Vec<usize> = Vec::new();
    let check = |applies: &[usize], prunes: &[usize]| -> Result<(), String> {
        if applies.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("applies out of wave order: {applies:?}"));
        }
        if prunes.windows(2).any(|w| w[0] < w[1]) {
            return Err(format!("prunes out of reverse wave order: {prunes:?}"));
        }
        Ok(())
    };
    for entry in log {
        let Log::Action(_, action) = entry else {
            continue;
        };
        match action {
            Action::ReadInventory { .. } => {
                check(&applies, &prunes)?;
                applies.clear();
                prunes.clear();
            }
            Action::Apply { object, .. } => {
                if !prunes.is_empty() {
                    return Err(format!("{object} applied after a prune in the same round"));
                }
                applies.push(wave(object));
            }
            Action::Prune { object, .. } => prunes.push(wave(object)),
            Action::WriteInventory { .. } | Action::ReadObject { .. } => {}
        }
    }
    check(&applies, &prunes)
}

fn adoptable(policy: InventoryPolicy, owner: Option<&str>) -> bool {
    match policy {
        InventoryPolicy::MustMatch => false,
        InventoryPolicy::AdoptIfNoInventory => owner.is_none(),
        InventoryPolicy::AdoptAll => true,
    }
}

fn scenario(
    policy: InventoryPolicy,
    prune: bool,
    foreign: Vec<(usize, bool)>,
    ops: Vec<Op>,
    order_seed: u64,
) -> Result<(), TestCaseError> {
    let config = config(policy, prune, DryRunStrategy::None);
    let ours = config.inventory.id.clone();
    let mut h = Harness::new(config.clone(), order_seed);
    let pool = pool();
    // Objects created by others with the same names as ours.
    let mut foreign_ids: Vec<(ObjectId, Option<&str>)> = Vec::new();
    for (i, other_inventory) in foreign {
        let id = pool[i % pool.len()].0.clone();
        if foreign_ids.iter().any(|(f, _)| *f == id) {
            continue;
        }
        let owner = other_inventory.then_some("someone-else");
        h.cluster.create_foreign(&id, owner, "theirs");
        foreign_ids.push((id, owner));
    }
    let foreign_before = h.cluster.clone();

    for (n, op) in ops.iter().enumerate() {
        h.apply(op, n);
        prop_assert!(
            h.cluster.violations.is_empty(),
            "{:?}",
            h.cluster.violations
        );
    }
    // Failures stop: no faults, no hangs; three hours pass.
    h.faults = 0;
    h.hang = false;
    h.budget = None;
    let quiet_from = h.t();
    h.run_for(Duration::from_secs(3 * 3600));

    // Nothing outside the inventory (or owned by another) was ever deleted.
    prop_assert!(
        h.cluster.violations.is_empty(),
        "{:?}",
        h.cluster.violations
    );
    if !prune {
        prop_assert!(
            h.cluster.deleted.is_empty(),
            "prune is off, yet deleted {:?}",
            h.cluster.deleted
        );
    }
    // Objects others own stay untouched unless the policy lets us adopt them.
    for (id, owner) in &foreign_ids {
        if !adoptable(policy, *owner) {
            prop_assert_eq!(
                h.cluster.objects.get(id),
                foreign_before.objects.get(id),
                "{} was touched",
                id
            );
        }
    }

    let Some(good) = h.last_good.clone() else {
        prop_assert_eq!(
            h.cluster.mutations,
            0,
            "no good commit, yet the cluster changed"
        );
        return Ok(());
    };
    let conflicts: BTreeSet<ObjectId> = foreign_ids
        .iter()
        .filter(|(id, owner)| good.get(id).is_some() && !adoptable(policy, *owner))
        .map(|(id, _)| id.clone())
        .collect();
    let mut failing = false;
    // Converged: every valid object of the last good commit is there, ours, with its content.
    for object in &good.objects {
        let invalid = object.manifest["invalid"] == true;
        failing |= invalid;
        if conflicts.contains(&object.id) {
            failing = true;
            continue;
        }
        if invalid {
            continue;
        }
        let live = h.cluster.objects.get(&object.id);
        prop_assert!(live.is_some(), "{} missing", object.id);
        let live = live.expect("checked");
        prop_assert_eq!(live.owner(), Some(ours.as_str()), "{} not ours", object.id);
        prop_assert_eq!(
            &live.manifest["data"],
            &object.manifest["data"],
            "{} stale",
            object.id
        );
    }
    // Nothing of ours outside the last good commit remains (when pruning).
    for (id, live) in &h.cluster.objects {
        if *id == inventory_object(&config.inventory) || good.get(id).is_some() {
            continue;
        }
        if prune {
            prop_assert!(
                live.owner() != Some(ours.as_str()),
                "{} should have been pruned",
                id
            );
        }
    }
    // The inventory lists exactly the last good commit's objects that are ours to manage.
    let inventory = h
        .cluster
        .inventory(&config.inventory)
        .map(|i| i.objects)
        .unwrap_or_default();
    let expected: BTreeSet<ObjectId> = good
        .ids()
        .filter(|id| !conflicts.contains(id))
        .cloned()
        .collect();
    prop_assert_eq!(inventory, expected);
    // An invalid object fails alone: it shows its error, the rest applied.
    let status = h.sync.status();
    for object in &good.objects {
        if object.manifest["invalid"] == true && !conflicts.contains(&object.id) {
            let s = status.objects.iter().find(|s| s.object == object.id);
            prop_assert!(
                s.is_some_and(|s| s.result == ObjectResult::ApplyFailed
                    && s.message.as_deref().is_some_and(|m| m.contains("invalid"))),
                "{:?}",
                s
            );
        }
    }
    if failing {
        prop_assert_eq!(status.phase, Phase::Degraded);
    } else {
        prop_assert_eq!(status.phase, Phase::Synced);
        prop_assert_eq!(status.synced_commit.as_deref(), Some(good.commit.as_str()));
    }
    prop_assert_eq!(status.commit.as_deref(), Some(good.commit.as_str()));

    // Order within rounds.
    check_order(&h.log).map_err(TestCaseError::fail)?;

    // Back-off: after a failed round, the next starts no sooner than the lower bound (unless a new
    // commit or a restart came in between).
    let lower = config.backoff.lower_bound();
    let mut failed_at: Option<Duration> = None;
    for entry in &h.log {
        match entry {
            Log::FailedRound(t) => failed_at = Some(*t),
            Log::NewCommit(_) => failed_at = None,
            Log::Started(t) => {
                if let Some(f) = failed_at.take() {
                    prop_assert!(*t >= f + lower, "retry at {t:?} after failure at {f:?}");
                }
            }
            Log::Action(..) => {}
        }
    }
    // No storm: in any 10 s window, at most (10 s / min interval + 1) rounds' worth of actions.
    let per_round = 4 * pool.len() + 3;
    let cap = (10 / config.min_round_interval.as_secs().max(1) as usize + 1) * per_round;
    let times: Vec<Duration> = h
        .log
        .iter()
        .filter_map(|e| {
            if let Log::Action(t, _) = e {
                Some(*t)
            } else {
                None
            }
        })
        .collect();
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= Duration::from_secs(10) {
            lo += 1;
        }
        prop_assert!(
            hi - lo < cap,
            "{} actions within 10 s at {:?}",
            hi - lo + 1,
            times[hi]
        );
    }
    // Once quiet, a permanently failing commit is retried ever more slowly: in the last hour at
    // most one round per backoff.max/2 (plus one).
    let last_hour = quiet_from + Duration::from_secs(2 * 3600);
    let late_rounds = h
        .log
        .iter()
        .filter(|e| matches!(e, Log::Started(t) if *t >= last_hour))
        .count();
    let max_rounds = (3600 / (config.backoff.max.as_secs() / 2)) as usize + 1;
    prop_assert!(
        late_rounds <= max_rounds.max((3600 / config.resync_period.as_secs()) as usize + 1),
        "{late_rounds} rounds in the last quiet hour"
    );
    Ok(())
}

fn policy() -> impl Strategy<Value = InventoryPolicy> {
    prop_oneof![
        2 => Just(InventoryPolicy::MustMatch),
        1 => Just(InventoryPolicy::AdoptIfNoInventory),
        1 => Just(InventoryPolicy::AdoptAll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn converges_to_the_last_good_commit_and_never_deletes_what_is_not_ours(
        policy in policy(),
        prune in prop_oneof![4 => Just(true), 1 => Just(false)],
        foreign in proptest::collection::vec((0usize..10, any::<bool>()), 0..4),
        ops in proptest::collection::vec(op(), 1..40),
        order_seed in any::<u64>(),
    ) {
        scenario(policy, prune, foreign, ops, order_seed)?;
    }
}

fn converge(h: &mut Harness, set: DesiredSet) {
    h.last_good = Some(set.clone());
    h.sync.handle_desired(set, h.now);
    h.run_for(Duration::from_secs(60));
}

#[test]
fn a_broken_commit_changes_nothing_and_prunes_nothing() {
    let mut h = Harness::new(
        config(InventoryPolicy::MustMatch, true, DryRunStrategy::None),
        7,
    );
    converge(&mut h, commit(1, 0b11_1111_1111, 0, 1));
    assert_eq!(h.sync.status().phase, Phase::Synced);
    let before = h.cluster.objects.clone();
    let deleted = h.cluster.deleted.len();
    h.sync
        .handle_commit_failed("broken", "yaml: line 1: did not find expected key", h.now);
    h.run_for(Duration::from_secs(3600));
    assert_eq!(h.cluster.objects, before);
    assert_eq!(h.cluster.deleted.len(), deleted);
    let status = h.sync.status();
    assert_eq!(status.commit.as_deref(), Some("commit-1"));
    assert_eq!(
        status.rejected_commit.map(|r| r.commit),
        Some(Some("broken".to_string()))
    );
    // Drift is still corrected meanwhile (the last good commit stays the target).
    let id = ObjectId::namespaced("", "ConfigMap", "ns-a", "a");
    h.cluster.objects.get_mut(&id).expect("exists").manifest["data"]["v"] = 99.into();
    h.run_for(Duration::from_secs(301));
    assert_eq!(h.cluster.objects[&id].manifest["data"]["v"], 1);
}

#[test]
fn an_invalid_object_fails_alone_and_is_retried_with_backoff() {
    let mut h = Harness::new(
        config(InventoryPolicy::MustMatch, true, DryRunStrategy::None),
        3,
    );
    // ConfigMap ns-a/a (bit 4) is invalid.
    converge(&mut h, commit(1, 0b11_1111_1111, 1 << 4, 1));
    let status = h.sync.status();
    assert_eq!(status.phase, Phase::Degraded);
    let bad = ObjectId::namespaced("", "ConfigMap", "ns-a", "a");
    for s in &status.objects {
        if s.object == bad {
            assert_eq!(s.result, ObjectResult::ApplyFailed);
            assert!(
                s.message.as_deref().is_some_and(|m| m.starts_with("422: ")),
                "{s:?}"
            );
        } else {
            assert!(
                matches!(s.result, ObjectResult::Applied | ObjectResult::Unchanged),
                "{s:?}"
            );
        }
    }
    assert!(
        status
            .last_error
            .is_some_and(|e| e.message.contains("is invalid"))
    );
    assert!(status.next_attempt_at.is_some());
    assert!(status.consecutive_failures >= 1);
    // Fixing it (a new commit) converges at once.
    converge(&mut h, commit(2, 0b11_1111_1111, 0, 2));
    assert_eq!(h.sync.status().phase, Phase::Synced);
    assert!(h.cluster.objects.contains_key(&bad));
}

#[test]
fn removed_objects_are_pruned_in_reverse_order_and_the_inventory_follows() {
    let mut h = Harness::new(
        config(InventoryPolicy::MustMatch, true, DryRunStrategy::None),
        5,
    );
    converge(&mut h, commit(1, 0b11_1111_1111, 0, 1));
    let inv = h.config.inventory.clone();
    assert_eq!(h.cluster.inventory(&inv).map(|i| i.objects.len()), Some(10));
    h.log.clear();
    converge(&mut h, commit(2, 0b00_0000_0001, 0, 1));
    let pruned: Vec<ObjectId> = h
        .log
        .iter()
        .filter_map(|e| match e {
            Log::Action(_, Action::Prune { object, .. }) => Some(object.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(pruned.len(), 9);
    let waves: Vec<usize> = pruned.iter().map(wave).collect();
    assert!(waves.windows(2).all(|w| w[0] >= w[1]), "{waves:?}");
    // Namespaces go last (after the CRD, which goes after everything namespaced).
    assert_eq!(pruned.last().map(|o| o.kind.as_str()), Some("Namespace"));
    assert_eq!(pruned[pruned.len() - 2].kind, "CustomResourceDefinition");
    assert_eq!(h.cluster.inventory(&inv).map(|i| i.objects.len()), Some(1));
    assert_eq!(
        h.cluster.objects.len(),
        2,
        "the namespace and the inventory"
    );
}

#[test]
fn dry_runs_change_nothing() {
    for strategy in [DryRunStrategy::Client, DryRunStrategy::Server] {
        let mut h = Harness::new(config(InventoryPolicy::MustMatch, true, strategy), 9);
        let stale = ObjectId::namespaced("", "ConfigMap", "ns-a", "old");
        h.cluster.create_foreign(
            &stale,
            Some(&h.config.inventory.id.clone()),
            "ours from before",
        );
        converge(&mut h, commit(1, 0b11_1111_1111, 0, 1));
        assert_eq!(h.cluster.mutations, 0, "{strategy:?}");
        assert!(h.cluster.objects.contains_key(&stale));
        let status = h.sync.status();
        assert!(status.dry_run);
        assert!(
            status
                .objects
                .iter()
                .all(|s| s.result == ObjectResult::WouldApply),
            "{strategy:?}: {:?}",
            status.objects
        );
        assert!(
            !h.log
                .iter()
                .any(|e| matches!(e, Log::Action(_, Action::WriteInventory { .. })))
        );
        let applies = h
            .log
            .iter()
            .filter(|e| matches!(e, Log::Action(_, Action::Apply { .. })))
            .count();
        match strategy {
            DryRunStrategy::Client => assert_eq!(applies, 0),
            _ => assert!(h.log.iter().all(|e| match e {
                Log::Action(_, Action::Apply { dry_run, .. } | Action::Prune { dry_run, .. }) =>
                    *dry_run,
                _ => true,
            })),
        }
    }
}

#[test]
fn a_restart_mid_round_resumes_from_the_inventory() {
    let mut h = Harness::new(
        config(InventoryPolicy::MustMatch, true, DryRunStrategy::None),
        11,
    );
    converge(&mut h, commit(1, 0b11_1111_1111, 0, 1));
    // Commit 2 drops everything but the namespaces; the agent dies after a few answers.
    h.sync
        .handle_desired(commit(2, 0b00_0000_0011, 0, 1), h.now);
    h.pull();
    h.queue.truncate(1);
    let a = h.queue.remove(0);
    let outcome = h.cluster.execute(&a, None);
    h.sync.handle_outcome(a.id(), outcome, h.now).expect("ok");
    h.apply(&Op::Restart, 3);
    h.last_good = Some(commit(2, 0b00_0000_0011, 0, 1));
    h.sync
        .handle_desired(commit(2, 0b00_0000_0011, 0, 1), h.now);
    h.run_for(Duration::from_secs(120));
    assert_eq!(h.sync.status().phase, Phase::Synced);
    assert_eq!(
        h.cluster.objects.len(),
        3,
        "two namespaces and the inventory"
    );
    assert!(h.cluster.violations.is_empty());
}

#[test]
fn an_unanswered_request_times_out_and_the_round_is_retried() {
    let mut h = Harness::new(
        config(InventoryPolicy::MustMatch, true, DryRunStrategy::None),
        13,
    );
    h.hang = true;
    converge(&mut h, commit(1, 0b11_1111_1111, 0, 1));
    // 60 s reconcile timeout + 10 s grace, then back-off, then success.
    h.run_for(Duration::from_secs(120));
    let status = h.sync.status();
    assert_eq!(status.phase, Phase::Synced, "{status:?}");
    assert!(
        status
            .last_error
            .is_some_and(|e| e.message.contains("did not finish in time"))
    );
}

#[test]
fn status_reports_wall_clock_times() {
    let mut h = Harness::new(
        config(InventoryPolicy::MustMatch, true, DryRunStrategy::None),
        17,
    );
    converge(&mut h, commit(1, 0b1, 0, 1));
    let report = h.sync.report(h.now, 1_000_000);
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["phase"], "synced");
    assert_eq!(json["commit"], "commit-1");
    assert_eq!(json["objects"][0]["object"]["kind"], "Namespace");
    assert_eq!(json["objects"][0]["result"], "applied");
    let synced = json["last_synced_at"].as_u64().expect("time");
    assert!((1_000_000 - 60_000..=1_000_000).contains(&synced));
    assert!(json["next_attempt_at"].as_u64().expect("next") > 1_000_000);
}

#[test]
fn a_manifest_named_like_the_inventory_is_never_applied() {
    let mut h = Harness::new(
        config(InventoryPolicy::AdoptAll, true, DryRunStrategy::None),
        19,
    );
    let inv = h.config.inventory.clone();
    let id = inventory_object(&inv);
    let set = DesiredSet::new(
        "c1",
        vec![Object {
            manifest: manifest(&id, "v1", 1, false),
            api_version: "v1".into(),
            id: id.clone(),
            source: Source::default(),
        }],
    )
    .expect("set");
    converge(&mut h, set);
    let status = h.sync.status();
    assert_eq!(status.phase, Phase::Degraded);
    assert!(
        status
            .objects
            .iter()
            .any(|s| s.object == id && s.result == ObjectResult::Skipped)
    );
    // The inventory is still an inventory, and does not list itself: a later commit cannot prune it.
    let listed = h
        .cluster
        .inventory(&inv)
        .map(|i| i.objects)
        .unwrap_or_default();
    assert!(!listed.contains(&id));
    converge(&mut h, commit(2, 0b1, 0, 1));
    assert!(h.cluster.inventory(&inv).is_some());
    assert!(h.cluster.violations.is_empty());
}

#[test]
fn a_wrong_answer_is_the_driver_s_bug_and_changes_nothing() {
    let c = config(InventoryPolicy::MustMatch, true, DryRunStrategy::None);
    let mut sync = Sync::new(c, 1);
    let now = Instant::now();
    sync.handle_desired(commit(1, 0b1, 0, 1), now);
    let action = sync.poll_action().expect("read inventory");
    let wrong = sync.handle_outcome(
        action.id(),
        gitops::Outcome::Applied(Ok(gitops::Applied::Created)),
        now,
    );
    assert!(
        matches!(wrong, Err(gitops::sync::Misuse::WrongOutcome { .. })),
        "{wrong:?}"
    );
    // The right answer still counts; a stale id is ignored.
    sync.handle_outcome(action.id(), gitops::Outcome::Inventory(Ok(None)), now)
        .expect("ok");
    sync.handle_outcome(
        gitops::ActionId(9999),
        gitops::Outcome::Inventory(Ok(None)),
        now,
    )
    .expect("ignored");
    assert!(matches!(
        sync.poll_action(),
        Some(Action::WriteInventory { .. })
    ));
}
