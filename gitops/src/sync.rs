//! The sync decision of one manifest project, Sans-IO: given the desired set of the last good commit,
//! the inventory read from the cluster and the results of what it asked for, it decides what to read,
//! apply, prune and record, and when to try again. agentk drives it with server-side apply against
//! the API server; the simulator and the property tests drive the very same type against model
//! clusters.
//!
//! # Driving it
//! Feed inputs with `handle_*(…, now)`; take actions with [`Sync::poll_action`] and answer each one,
//! exactly once, with [`Sync::handle_outcome`] (a request timeout is an error outcome); call
//! [`Sync::handle_timeout`] at [`Sync::poll_timeout`]; read [`Sync::poll_event`] and
//! [`Sync::status`]. An agent restart is a new `Sync`: it starts from the inventory in the cluster.
//!
//! ```
//! use std::time::Instant;
//! use agent_config::{ManifestProject, ProjectId};
//! use gitops::{Action, DesiredSet, InventoryRef, Outcome, Sync, SyncConfig};
//!
//! let project = ManifestProject::with_defaults(Some(ProjectId::new("group/manifests").unwrap()));
//! let inventory = InventoryRef::for_project("gitlab-agent", "agent-1", "group/manifests");
//! let mut sync = Sync::new(SyncConfig::new(&project, inventory), 42);
//! let now = Instant::now();
//! sync.handle_desired(DesiredSet::new("c0ffee", vec![]).unwrap(), now);
//! // The first thing a round does is read the inventory; the driver answers (here: 404).
//! let Some(Action::ReadInventory { id, .. }) = sync.poll_action() else { panic!() };
//! sync.handle_outcome(id, Outcome::Inventory(Ok(None)), now).unwrap();
//! // Nothing desired, nothing inventoried: the round is done; drift correction is scheduled.
//! assert!(sync.poll_action().is_none());
//! assert_eq!(sync.status().phase, gitops::Phase::Synced);
//! assert!(sync.poll_timeout().is_some_and(|t| t > now));
//! ```
//!
//! # A round
//! 1. read the inventory (a ConfigMap; one that belongs to another inventory stops the round);
//! 2. record `old ∪ desired` in it *before* applying, so a crash mid-round can never leave an object
//!    we created untracked;
//! 3. apply in waves (Namespaces and CRDs, other cluster-scoped, namespaced), each object read first:
//!    an object another inventory owns (or, under `must_match`, one no inventory owns) is skipped,
//!    never touched — it fails alone while the rest applies;
//! 4. prune `old − desired` in reverse waves, each only if its live annotation names us (or, unless
//!    `must_match`, nobody), with its uid as a precondition;
//! 5. record the final inventory: what may still exist and is ours.
//!
//! # Invariants
//! - Rounds never overlap, and a round issues actions only while not stopped; results of abandoned
//!   actions are ignored.
//! - Nothing outside the inventory read at the round's start is ever pruned, nor anything in the
//!   desired set.
//! - Every object applied (not dry-run) is in the inventory written before the apply.
//! - A rejected commit (fetch or parse failure) changes nothing: the last good set stays the target.
//! - After a failed round the next starts no sooner than `backoff.lower_bound()` later; rounds start
//!   at least `min_round_interval` apart; a round issues at most `2·|desired| + 2·|inventory| + 3`
//!   actions. Together these bound the actions per unit of time (no storm).
//! - Client dry-run issues reads only; server dry-run issues applies/prunes marked `dry_run`; neither
//!   writes the inventory.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_config::{DryRunStrategy, InventoryPolicy, ManifestProject, PropagationPolicy};
use serde::{Deserialize, Serialize};

use crate::backoff::{Backoff, Jitter};
use crate::inventory::{
    Inventory, InventoryRef, Live, OWNING_INVENTORY_ANNOTATION, can_apply, can_prune,
};
use crate::manifest::DesiredSet;
use crate::object::ObjectId;
use crate::order::{WAVES, sort_for_apply, sort_for_prune, wave};
use crate::status::{ErrorAt, ObjectResult, ObjectStatus, Phase, ProjectStatus};

/// How one project is synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// The manifest project (for status).
    pub project: String,
    /// Where the inventory lives.
    pub inventory: InventoryRef,
    /// Delete objects that left the set.
    pub prune: bool,
    /// Deletion propagation for prunes.
    pub propagation: PropagationPolicy,
    /// Which existing objects may be taken over.
    pub inventory_policy: InventoryPolicy,
    /// Dry run strategy.
    pub dry_run: DryRunStrategy,
    /// Server-side apply field manager.
    pub field_manager: String,
    /// Server-side apply `force` (take over fields other managers own).
    pub force_conflicts: bool,
    /// How long the read-inventory-and-apply part of a round may take.
    pub reconcile_timeout: Duration,
    /// How long the prune part of a round may take.
    pub prune_timeout: Duration,
    /// How long after a successful round the next one (drift correction) starts.
    pub resync_period: Duration,
    /// Least time between the starts of two rounds.
    pub min_round_interval: Duration,
    /// How long a stopped round waits for answers to actions already issued before it gives up on
    /// them.
    pub answer_grace: Duration,
    /// Retry spacing after failed rounds.
    pub backoff: Backoff,
}

impl SyncConfig {
    /// A project's settings with agentk's defaults: field manager `agentk`, force on, drift
    /// correction every 5 minutes, rounds at least 1 s apart, 30 s grace for late answers.
    pub fn new(project: &ManifestProject, inventory: InventoryRef) -> Self {
        SyncConfig {
            project: project
                .id
                .as_ref()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            inventory,
            prune: project.prune,
            propagation: project.prune_propagation_policy,
            inventory_policy: project.inventory_policy,
            dry_run: project.dry_run_strategy,
            field_manager: "agentk".into(),
            force_conflicts: true,
            reconcile_timeout: project.reconcile_timeout,
            prune_timeout: project.prune_timeout,
            resync_period: Duration::from_secs(300),
            min_round_interval: Duration::from_secs(1),
            answer_grace: Duration::from_secs(30),
            backoff: Backoff::default(),
        }
    }
}

/// Identifies an action; its outcome is answered with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActionId(pub u64);

/// Something the driver must do against the API server, then answer with an [`Outcome`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// GET the inventory ConfigMap → [`Outcome::Inventory`].
    ReadInventory {
        /// Answer with this id.
        id: ActionId,
        /// Which ConfigMap.
        inventory: InventoryRef,
    },
    /// Create or replace the inventory ConfigMap → [`Outcome::InventoryWritten`].
    WriteInventory {
        /// Answer with this id.
        id: ActionId,
        /// Which ConfigMap.
        inventory: InventoryRef,
        /// Its full content.
        configmap: serde_json::Value,
    },
    /// GET a live object → [`Outcome::Object`] ([`Live::from_object`] reads what is needed).
    ReadObject {
        /// Answer with this id.
        id: ActionId,
        /// Which object.
        object: ObjectId,
        /// Its `apiVersion` when known from the desired set (absent for prune candidates: use
        /// discovery for the group's preferred version).
        api_version: Option<String>,
    },
    /// Server-side apply → [`Outcome::Applied`].
    Apply {
        /// Answer with this id.
        id: ActionId,
        /// Which object.
        object: ObjectId,
        /// Its `apiVersion`.
        api_version: String,
        /// The body (`application/apply-patch+yaml`; JSON is YAML), with our owning-inventory
        /// annotation.
        manifest: serde_json::Value,
        /// `fieldManager`.
        field_manager: String,
        /// `force`.
        force: bool,
        /// `dryRun=All`.
        dry_run: bool,
    },
    /// DELETE → [`Outcome::Pruned`].
    Prune {
        /// Answer with this id.
        id: ActionId,
        /// Which object.
        object: ObjectId,
        /// `preconditions.uid` (so an object re-created meanwhile is not deleted).
        uid: Option<String>,
        /// `propagationPolicy`.
        propagation: PropagationPolicy,
        /// `dryRun=All`.
        dry_run: bool,
    },
}

impl Action {
    /// The action's id.
    pub fn id(&self) -> ActionId {
        match self {
            Action::ReadInventory { id, .. }
            | Action::WriteInventory { id, .. }
            | Action::ReadObject { id, .. }
            | Action::Apply { id, .. }
            | Action::Prune { id, .. } => *id,
        }
    }
}

/// An API server error, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// HTTP status, when there was an answer (none for timeouts and transport errors).
    pub code: Option<u16>,
    /// The API server's message (or the transport error).
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "{c}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What a server-side apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Created.
    Created,
    /// Changed.
    Configured,
    /// Nothing changed.
    Unchanged,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pruned {
    /// Deleted (or deletion started).
    Deleted,
    /// It was already gone (404).
    NotFound,
}

/// The answer to an [`Action`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// To [`Action::ReadInventory`]: the ConfigMap, or `None` for 404.
    Inventory(Result<Option<serde_json::Value>, ApiError>),
    /// To [`Action::WriteInventory`].
    InventoryWritten(Result<(), ApiError>),
    /// To [`Action::ReadObject`]: [`Live::Absent`] for 404.
    Object(Result<Live, ApiError>),
    /// To [`Action::Apply`].
    Applied(Result<Applied, ApiError>),
    /// To [`Action::Prune`].
    Pruned(Result<Pruned, ApiError>),
}

/// The driver answered wrongly (its bug, not the cluster's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Misuse {
    /// The outcome does not answer the kind of action with that id.
    #[error("outcome {outcome} does not answer action {id:?}")]
    WrongOutcome {
        /// The action.
        id: ActionId,
        /// The outcome's kind.
        outcome: &'static str,
    },
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundOutcome {
    /// Everything applied, everything that left pruned.
    Synced,
    /// Something failed; retried with back-off.
    Failed {
        /// What failed.
        errors: Vec<String>,
    },
    /// A newer commit arrived; the next round starts at once.
    Superseded,
}

/// Something to report (kas shows it, emits events).
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    /// A round started.
    RoundStarted {
        /// Round number.
        round: u64,
        /// The commit.
        commit: String,
    },
    /// An object's result.
    Object(ObjectStatus<Instant>),
    /// A round ended.
    RoundFinished {
        /// Round number.
        round: u64,
        /// The commit.
        commit: String,
        /// How.
        outcome: RoundOutcome,
        /// When the next round is due.
        next_at: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    ReadInventory,
    WriteBefore,
    Apply(usize),
    Prune(usize),
    WriteAfter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Inventory,
    Write,
    ReadForApply(ObjectId),
    Apply(ObjectId),
    ReadForPrune(ObjectId),
    Prune(ObjectId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Superseded,
    Failed,
}

struct Round {
    number: u64,
    desired: Arc<DesiredSet>,
    desired_ids: BTreeSet<ObjectId>,
    stage: Stage,
    /// Deadline of the running part (apply or prune).
    deadline: Instant,
    /// When a stopped round gives up waiting for answers.
    abandon_at: Option<Instant>,
    outstanding: BTreeMap<ActionId, Pending>,
    /// The inventory read at the start.
    old: BTreeSet<ObjectId>,
    /// The inventory content in the cluster as this round last wrote it.
    written: Option<BTreeSet<ObjectId>>,
    /// The content of the write in flight.
    pending_write: Option<BTreeSet<ObjectId>>,
    /// Objects that must leave the inventory (not ours, gone, abandoned).
    drop: BTreeSet<ObjectId>,
    stop: Option<Stop>,
    errors: Vec<String>,
}

/// The sync decision of one manifest project. See the module documentation.
pub struct Sync {
    config: SyncConfig,
    jitter: Jitter,
    desired: Option<Arc<DesiredSet>>,
    round: Option<Round>,
    rounds: u64,
    next_round_at: Option<Instant>,
    last_round_start: Option<Instant>,
    failures: u32,
    next_id: u64,
    actions: VecDeque<Action>,
    events: VecDeque<SyncEvent>,
    status: ProjectStatus<Instant>,
    results: BTreeMap<ObjectId, ObjectStatus<Instant>>,
}

impl Sync {
    /// A new sync (also: after an agent restart). `seed` drives the back-off jitter. Nothing happens
    /// until the first desired set arrives.
    pub fn new(config: SyncConfig, seed: u64) -> Sync {
        let status = ProjectStatus {
            project: config.project.clone(),
            inventory: config.inventory.id.clone(),
            commit: None,
            synced_commit: None,
            phase: Phase::Waiting,
            dry_run: config.dry_run != DryRunStrategy::None,
            objects: Vec::new(),
            last_error: None,
            rejected_commit: None,
            consecutive_failures: 0,
            last_attempt_at: None,
            last_synced_at: None,
            next_attempt_at: None,
        };
        Sync {
            config,
            jitter: Jitter::new(seed),
            desired: None,
            round: None,
            rounds: 0,
            next_round_at: None,
            last_round_start: None,
            failures: 0,
            next_id: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            status,
            results: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The last good desired set.
    pub fn desired(&self) -> Option<&DesiredSet> {
        self.desired.as_deref()
    }

    /// A good commit's desired set. A new commit stops the running round (it drains) and starts
    /// the next at once; the same commit again changes nothing.
    pub fn handle_desired(&mut self, set: DesiredSet, now: Instant) {
        if self.desired.as_ref().is_some_and(|d| **d == set) {
            return;
        }
        self.status.commit = Some(set.commit.clone());
        if self
            .status
            .rejected_commit
            .as_ref()
            .is_some_and(|r| r.commit.as_deref() != Some(set.commit.as_str()))
        {
            self.status.rejected_commit = None;
        }
        self.desired = Some(Arc::new(set));
        self.failures = 0;
        match &mut self.round {
            Some(round) => {
                if round.stop.is_none() {
                    round.stop = Some(Stop::Superseded);
                    round.abandon_at = Some(now + self.config.answer_grace);
                }
            }
            None => self.next_round_at = Some(now),
        }
        self.kick(now);
    }

    /// A commit that could not be fetched or parsed. Nothing of it is applied and nothing is pruned:
    /// the last good set stays the target (and drift correction goes on).
    pub fn handle_commit_failed(&mut self, commit: &str, message: &str, now: Instant) {
        self.status.rejected_commit = Some(ErrorAt {
            commit: Some(commit.to_string()),
            message: message.to_string(),
            at: now,
        });
    }

    /// Answers an action. Answers to actions of an abandoned round are ignored.
    pub fn handle_outcome(
        &mut self,
        id: ActionId,
        outcome: Outcome,
        now: Instant,
    ) -> Result<(), Misuse> {
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        let Some(pending) = round.outstanding.remove(&id) else {
            return Ok(());
        };
        let wrong = |outcome: &'static str| Misuse::WrongOutcome { id, outcome };
        match (pending, outcome) {
            (Pending::Inventory, Outcome::Inventory(r)) => self.on_inventory(r, now),
            (Pending::Write, Outcome::InventoryWritten(r)) => self.on_written(r, now),
            (Pending::ReadForApply(obj), Outcome::Object(r)) => self.on_read_for_apply(obj, r, now),
            (Pending::Apply(obj), Outcome::Applied(r)) => self.on_applied(obj, r, now),
            (Pending::ReadForPrune(obj), Outcome::Object(r)) => self.on_read_for_prune(obj, r, now),
            (Pending::Prune(obj), Outcome::Pruned(r)) => self.on_pruned(obj, r, now),
            (pending, outcome) => {
                // Put it back: the right answer may still come.
                round.outstanding.insert(id, pending);
                return Err(wrong(match outcome {
                    Outcome::Inventory(_) => "Inventory",
                    Outcome::InventoryWritten(_) => "InventoryWritten",
                    Outcome::Object(_) => "Object",
                    Outcome::Applied(_) => "Applied",
                    Outcome::Pruned(_) => "Pruned",
                }));
            }
        }
        self.advance(now);
        Ok(())
    }

    /// Timers: a due round starts; a round past its deadline stops; a stopped round past its grace
    /// gives up on unanswered actions.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(round) = &mut self.round {
            if round.stop.is_none() && now >= round.deadline {
                let part = if matches!(round.stage, Stage::Prune(_)) {
                    "pruning"
                } else {
                    "applying"
                };
                round.errors.push(format!("{part} did not finish in time"));
                round.stop = Some(Stop::Failed);
                round.abandon_at = Some(now + self.config.answer_grace);
            }
            if round.abandon_at.is_some_and(|t| now >= t) {
                round.outstanding.clear();
            }
            self.advance(now);
        }
        self.kick(now);
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to report.
    pub fn poll_event(&mut self) -> Option<SyncEvent> {
        self.events.pop_front()
    }

    /// When [`Sync::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.round {
            Some(r) => Some(match r.abandon_at {
                Some(t) => t,
                None => r.deadline,
            }),
            None => self.next_round_at,
        }
    }

    /// The status (times as `Instant`s).
    pub fn status(&self) -> ProjectStatus<Instant> {
        let mut status = self.status.clone();
        let mut objects: Vec<_> = self.results.values().cloned().collect();
        objects.sort_by(|a, b| {
            crate::order::apply_key(&a.object).cmp(&crate::order::apply_key(&b.object))
        });
        status.objects = objects;
        status.next_attempt_at = if self.round.is_some() {
            None
        } else {
            self.next_round_at
        };
        status
    }

    /// The status with wall-clock times: `now` is `now_unix_ms` milliseconds since the Unix epoch.
    pub fn report(&self, now: Instant, now_unix_ms: u64) -> ProjectStatus<u64> {
        self.status().map_time(|t| {
            if t <= now {
                now_unix_ms.saturating_sub(u64::try_from((now - t).as_millis()).unwrap_or(u64::MAX))
            } else {
                now_unix_ms.saturating_add(u64::try_from((t - now).as_millis()).unwrap_or(u64::MAX))
            }
        })
    }

    // --- internals

    fn id(&mut self) -> ActionId {
        self.next_id += 1;
        ActionId(self.next_id)
    }

    /// Starts a round if one is due and none runs.
    fn kick(&mut self, now: Instant) {
        if self.round.is_some() {
            return;
        }
        let (Some(due), Some(desired)) = (self.next_round_at, self.desired.clone()) else {
            return;
        };
        let earliest = self
            .last_round_start
            .map_or(due, |t| due.max(t + self.config.min_round_interval));
        if now < earliest {
            self.next_round_at = Some(earliest);
            return;
        }
        self.start_round(desired, now);
    }

    fn start_round(&mut self, desired: Arc<DesiredSet>, now: Instant) {
        debug_assert!(self.round.is_none(), "rounds never overlap");
        self.rounds += 1;
        self.last_round_start = Some(now);
        self.next_round_at = None;
        self.status.phase = Phase::Syncing;
        self.status.last_attempt_at = Some(now);
        let id = self.id();
        let desired_ids: BTreeSet<ObjectId> = desired.ids().cloned().collect();
        self.events.push_back(SyncEvent::RoundStarted {
            round: self.rounds,
            commit: desired.commit.clone(),
        });
        self.actions.push_back(Action::ReadInventory {
            id,
            inventory: self.config.inventory.clone(),
        });
        self.round = Some(Round {
            number: self.rounds,
            desired,
            desired_ids,
            stage: Stage::ReadInventory,
            deadline: now + self.config.reconcile_timeout,
            abandon_at: None,
            outstanding: [(id, Pending::Inventory)].into_iter().collect(),
            old: BTreeSet::new(),
            written: None,
            pending_write: None,
            drop: BTreeSet::new(),
            stop: None,
            errors: Vec::new(),
        });
    }

    fn fail(&mut self, message: String, now: Instant) {
        if let Some(round) = &mut self.round {
            round.errors.push(message);
            if round.stop.is_none() {
                round.stop = Some(Stop::Failed);
                round.abandon_at = Some(now + self.config.answer_grace);
            }
        }
    }

    fn record(
        &mut self,
        object: &ObjectId,
        result: ObjectResult,
        message: Option<String>,
        now: Instant,
    ) {
        let status = ObjectStatus {
            object: object.clone(),
            result,
            message,
            at: now,
        };
        if result.is_failure()
            && let Some(round) = &mut self.round
        {
            round.errors.push(format!(
                "{object}: {}",
                status.message.as_deref().unwrap_or("failed")
            ));
        }
        self.results.insert(object.clone(), status.clone());
        self.events.push_back(SyncEvent::Object(status));
    }

    fn on_inventory(&mut self, r: Result<Option<serde_json::Value>, ApiError>, now: Instant) {
        let old = match r {
            Err(e) => return self.fail(format!("reading the inventory: {e}"), now),
            Ok(None) => BTreeSet::new(),
            Ok(Some(cm)) => match Inventory::from_configmap(&cm, &self.config.inventory) {
                Ok(inv) => inv.objects,
                Err(e) => return self.fail(e.to_string(), now),
            },
        };
        let Some(round) = &mut self.round else { return };
        // The inventory never tracks (so never prunes) itself.
        let mut old = old;
        old.remove(&self.config.inventory.object_id());
        // Results shown: this round's objects (desired and prune candidates) only.
        let shown: BTreeSet<ObjectId> = round.desired_ids.union(&old).cloned().collect();
        self.results.retain(|id, _| shown.contains(id));
        for id in &shown {
            self.results
                .entry(id.clone())
                .or_insert_with(|| ObjectStatus {
                    object: id.clone(),
                    result: ObjectResult::Pending,
                    message: None,
                    at: now,
                });
        }
        round.old = old;
    }

    fn on_written(&mut self, r: Result<(), ApiError>, now: Instant) {
        let Some(round) = &mut self.round else { return };
        let pending = round.pending_write.take();
        match r {
            Ok(()) => round.written = pending,
            Err(e) => self.fail(format!("writing the inventory: {e}"), now),
        }
    }

    /// The live object read, or the read error recorded as `failure`.
    fn live_or_record(
        &mut self,
        object: &ObjectId,
        r: Result<Live, ApiError>,
        failure: ObjectResult,
        now: Instant,
    ) -> Option<Live> {
        match r {
            Ok(live) => Some(live),
            Err(e) => {
                self.record(object, failure, Some(format!("reading it: {e}")), now);
                None
            }
        }
    }

    fn on_read_for_apply(&mut self, object: ObjectId, r: Result<Live, ApiError>, now: Instant) {
        let Some(live) = self.live_or_record(&object, r, ObjectResult::ApplyFailed, now) else {
            return;
        };
        let Some(round) = &mut self.round else { return };
        if round.stop.is_some() {
            return;
        }
        if object == self.config.inventory.object_id() {
            return self.record(
                &object,
                ObjectResult::Skipped,
                Some("this is the inventory object of the project; rename the manifest".into()),
                now,
            );
        }
        if let Err(not_ours) = can_apply(
            self.config.inventory_policy,
            &self.config.inventory.id,
            &live,
        ) {
            round.drop.insert(object.clone());
            return self.record(
                &object,
                ObjectResult::Skipped,
                Some(not_ours.to_string()),
                now,
            );
        }
        if self.config.dry_run == DryRunStrategy::Client {
            return self.record(&object, ObjectResult::WouldApply, None, now);
        }
        let Some(desired) = round.desired.get(&object) else {
            debug_assert!(false, "only desired objects are read for apply");
            return;
        };
        debug_assert!(
            self.config.dry_run != DryRunStrategy::None
                || round.written.as_ref().is_some_and(|w| w.contains(&object)),
            "every object applied is in the inventory written before the apply"
        );
        let mut manifest = desired.manifest.clone();
        if let Some(meta) = manifest
            .get_mut("metadata")
            .and_then(serde_json::Value::as_object_mut)
        {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if !annotations.is_object() {
                *annotations = serde_json::Value::Object(Default::default());
            }
            if let Some(a) = annotations.as_object_mut() {
                a.insert(
                    OWNING_INVENTORY_ANNOTATION.into(),
                    serde_json::Value::String(self.config.inventory.id.clone()),
                );
            }
        }
        let api_version = desired.api_version.clone();
        let id = self.id();
        if let Some(round) = &mut self.round {
            round.outstanding.insert(id, Pending::Apply(object.clone()));
        }
        self.actions.push_back(Action::Apply {
            id,
            object,
            api_version,
            manifest,
            field_manager: self.config.field_manager.clone(),
            force: self.config.force_conflicts,
            dry_run: self.config.dry_run == DryRunStrategy::Server,
        });
    }

    fn on_applied(&mut self, object: ObjectId, r: Result<Applied, ApiError>, now: Instant) {
        let dry = self.config.dry_run != DryRunStrategy::None;
        let (result, message) = match r {
            Ok(_) if dry => (ObjectResult::WouldApply, None),
            Ok(Applied::Created) => (ObjectResult::Applied, Some("created".to_string())),
            Ok(Applied::Configured) => (ObjectResult::Applied, Some("configured".to_string())),
            Ok(Applied::Unchanged) => (ObjectResult::Unchanged, None),
            Err(e) => (ObjectResult::ApplyFailed, Some(e.to_string())),
        };
        self.record(&object, result, message, now);
    }

    fn on_read_for_prune(&mut self, object: ObjectId, r: Result<Live, ApiError>, now: Instant) {
        let Some(live) = self.live_or_record(&object, r, ObjectResult::PruneFailed, now) else {
            return;
        };
        let Some(round) = &mut self.round else { return };
        let uid = match &live {
            Live::Absent => {
                round.drop.insert(object.clone());
                return self.record(&object, ObjectResult::Gone, None, now);
            }
            Live::Present { uid, .. } => uid.clone(),
        };
        if let Err(not_ours) = can_prune(
            self.config.inventory_policy,
            &self.config.inventory.id,
            &live,
        ) {
            round.drop.insert(object.clone());
            return self.record(
                &object,
                ObjectResult::PruneSkipped,
                Some(not_ours.to_string()),
                now,
            );
        }
        if round.stop.is_some() {
            return;
        }
        if self.config.dry_run == DryRunStrategy::Client {
            return self.record(&object, ObjectResult::WouldPrune, None, now);
        }
        debug_assert!(
            round.old.contains(&object) && !round.desired_ids.contains(&object),
            "only inventory objects that left the set are pruned"
        );
        self.next_id += 1;
        let id = ActionId(self.next_id);
        round.outstanding.insert(id, Pending::Prune(object.clone()));
        self.actions.push_back(Action::Prune {
            id,
            object,
            uid,
            propagation: self.config.propagation,
            dry_run: self.config.dry_run == DryRunStrategy::Server,
        });
    }

    fn on_pruned(&mut self, object: ObjectId, r: Result<Pruned, ApiError>, now: Instant) {
        let dry = self.config.dry_run != DryRunStrategy::None;
        let result = match r {
            Ok(_) if dry => ObjectResult::WouldPrune,
            Ok(Pruned::Deleted) => ObjectResult::Pruned,
            Ok(Pruned::NotFound) => ObjectResult::Gone,
            Err(e) => {
                return self.record(&object, ObjectResult::PruneFailed, Some(e.to_string()), now);
            }
        };
        if let Some(round) = &mut self.round
            && !dry
        {
            round.drop.insert(object.clone());
        }
        self.record(&object, result, None, now);
    }

    /// Moves a round whose stage is complete to the next stage (issuing its actions), or finishes it.
    fn advance(&mut self, now: Instant) {
        loop {
            let Some(round) = &mut self.round else { return };
            if !round.outstanding.is_empty() {
                return;
            }
            if round.stop.is_some() {
                return self.finish(now);
            }
            let dry = self.config.dry_run != DryRunStrategy::None;
            match round.stage {
                Stage::ReadInventory => {
                    let itself = self.config.inventory.object_id();
                    let union: BTreeSet<ObjectId> = round
                        .old
                        .union(&round.desired_ids)
                        .filter(|id| **id != itself)
                        .cloned()
                        .collect();
                    if dry {
                        round.stage = Stage::Apply(0);
                    } else if union == round.old {
                        round.written = Some(union);
                        round.stage = Stage::Apply(0);
                    } else {
                        round.stage = Stage::WriteBefore;
                        self.write_inventory(union);
                        continue;
                    }
                }
                Stage::WriteBefore => round.stage = Stage::Apply(0),
                Stage::Apply(w) if w + 1 < WAVES => round.stage = Stage::Apply(w + 1),
                Stage::Apply(_) => {
                    round.stage = Stage::Prune(0);
                    round.deadline = now + self.config.prune_timeout;
                }
                Stage::Prune(p) if p + 1 < WAVES => round.stage = Stage::Prune(p + 1),
                Stage::Prune(_) => {
                    let written = round.written.clone();
                    match written {
                        Some(written) if !dry => {
                            let last: BTreeSet<ObjectId> =
                                written.difference(&round.drop).cloned().collect();
                            round.stage = Stage::WriteAfter;
                            if last != written {
                                self.write_inventory(last);
                            }
                            continue;
                        }
                        _ => return self.finish(now),
                    }
                }
                Stage::WriteAfter => return self.finish(now),
            }
            self.issue_stage(now);
        }
    }

    /// Issues the actions of the round's current apply or prune wave.
    fn issue_stage(&mut self, now: Instant) {
        let Some(round) = &mut self.round else { return };
        match round.stage {
            Stage::Apply(w) => {
                let mut ids: Vec<ObjectId> = round
                    .desired_ids
                    .iter()
                    .filter(|id| wave(id) == w)
                    .cloned()
                    .collect();
                sort_for_apply(&mut ids);
                for object in ids {
                    let api_version = round.desired.get(&object).map(|o| o.api_version.clone());
                    self.next_id += 1;
                    let id = ActionId(self.next_id);
                    round
                        .outstanding
                        .insert(id, Pending::ReadForApply(object.clone()));
                    self.actions.push_back(Action::ReadObject {
                        id,
                        object,
                        api_version,
                    });
                }
            }
            Stage::Prune(p) => {
                let w = WAVES - 1 - p;
                let mut ids: Vec<ObjectId> = round
                    .old
                    .difference(&round.desired_ids)
                    .filter(|id| wave(id) == w)
                    .cloned()
                    .collect();
                sort_for_prune(&mut ids);
                if !self.config.prune {
                    round.drop.extend(ids.iter().cloned());
                    for object in ids {
                        self.record(
                            &object,
                            ObjectResult::Abandoned,
                            Some("prune is off: left in the cluster, no longer tracked".into()),
                            now,
                        );
                    }
                    return;
                }
                for object in ids {
                    self.next_id += 1;
                    let id = ActionId(self.next_id);
                    round
                        .outstanding
                        .insert(id, Pending::ReadForPrune(object.clone()));
                    self.actions.push_back(Action::ReadObject {
                        id,
                        object,
                        api_version: None,
                    });
                }
            }
            _ => {}
        }
    }

    fn write_inventory(&mut self, objects: BTreeSet<ObjectId>) {
        debug_assert_eq!(
            self.config.dry_run,
            DryRunStrategy::None,
            "dry runs never write the inventory"
        );
        let id = self.id();
        let configmap = Inventory {
            objects: objects.clone(),
        }
        .to_configmap(&self.config.inventory);
        if let Some(round) = &mut self.round {
            round.outstanding.insert(id, Pending::Write);
            round.pending_write = Some(objects);
        }
        self.actions.push_back(Action::WriteInventory {
            id,
            inventory: self.config.inventory.clone(),
            configmap,
        });
    }

    fn finish(&mut self, now: Instant) {
        let Some(round) = self.round.take() else {
            return;
        };
        let commit = round.desired.commit.clone();
        let outcome = match round.stop {
            Some(Stop::Superseded) => RoundOutcome::Superseded,
            _ if !round.errors.is_empty() => RoundOutcome::Failed {
                errors: round.errors.clone(),
            },
            Some(Stop::Failed) => RoundOutcome::Failed {
                errors: vec!["the round stopped".into()],
            },
            None => RoundOutcome::Synced,
        };
        let next_at = match &outcome {
            RoundOutcome::Synced => {
                self.failures = 0;
                self.status.phase = Phase::Synced;
                self.status.last_synced_at = Some(now);
                if self.config.dry_run == DryRunStrategy::None {
                    self.status.synced_commit = Some(commit.clone());
                }
                now + self.config.resync_period
            }
            RoundOutcome::Failed { errors } => {
                self.failures = self.failures.saturating_add(1);
                self.status.phase = Phase::Degraded;
                let shown: Vec<&str> = errors.iter().take(5).map(String::as_str).collect();
                let more = errors.len().saturating_sub(shown.len());
                let mut message = shown.join("; ");
                if more > 0 {
                    message.push_str(&format!("; and {more} more"));
                }
                self.status.last_error = Some(ErrorAt {
                    commit: Some(commit.clone()),
                    message,
                    at: now,
                });
                let delay = self.config.backoff.delay(self.failures, &mut self.jitter);
                debug_assert!(delay >= self.config.backoff.lower_bound());
                now + delay
            }
            RoundOutcome::Superseded => now,
        };
        self.status.consecutive_failures = self.failures;
        self.next_round_at = Some(next_at);
        self.events.push_back(SyncEvent::RoundFinished {
            round: round.number,
            commit,
            outcome,
            next_at,
        });
        self.kick(now);
        // `kick` may have pushed the next start past `next_at` (min interval): report the real time.
        if let Some(SyncEvent::RoundFinished { next_at, .. }) = self.events.back_mut()
            && self.round.is_none()
            && let Some(t) = self.next_round_at
        {
            *next_at = t;
        }
    }
}
