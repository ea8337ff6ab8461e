//! What kas shows for a manifest project (`GET /api/v1/agents/{id}/gitops`): the commit, the phase,
//! each object's last result, the last error, the times. Generic over the time type: the sync
//! decision keeps `Instant`s; [`ProjectStatus::map_time`] turns them into wall-clock milliseconds for
//! the wire. The JSON form is stable (snake_case names and values).

use serde::{Deserialize, Serialize};

use crate::object::ObjectId;

/// Where a project's sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No desired set yet (waiting for the first good commit).
    Waiting,
    /// A round is running.
    Syncing,
    /// The last round applied everything and pruned what left.
    Synced,
    /// The last round had failures; a retry is scheduled with back-off.
    Degraded,
}

/// The last result for one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectResult {
    /// Not processed yet in this round.
    Pending,
    /// Created or changed by server-side apply.
    Applied,
    /// Applied; nothing changed.
    Unchanged,
    /// The API server refused the apply (message: its answer).
    ApplyFailed,
    /// Not applied: another inventory (or none, under must_match) owns the live object.
    Skipped,
    /// Deleted (left the desired set).
    Pruned,
    /// Already gone when it was to be pruned.
    Gone,
    /// The API server refused the delete.
    PruneFailed,
    /// Not deleted: it is no longer ours (see message).
    PruneSkipped,
    /// Left the set and stays in the cluster because `prune` is false; no longer tracked.
    Abandoned,
    /// Dry run: would be applied.
    WouldApply,
    /// Dry run: would be pruned.
    WouldPrune,
}

impl ObjectResult {
    /// True for results that make the round fail (and be retried with back-off).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ObjectResult::ApplyFailed | ObjectResult::Skipped | ObjectResult::PruneFailed
        )
    }
}

/// One object's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus<T> {
    /// The object.
    pub object: ObjectId,
    /// Its last result.
    pub result: ObjectResult,
    /// The API server's message or why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the result came.
    pub at: T,
}

/// An error and when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAt<T> {
    /// The commit concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// What went wrong.
    pub message: String,
    /// When.
    pub at: T,
}

/// A project's sync status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectStatus<T> {
    /// The manifest project.
    pub project: String,
    /// Its inventory id.
    pub inventory: String,
    /// The commit being synced (the last good one).
    pub commit: Option<String>,
    /// The last commit fully synced (every object applied, every prune done).
    pub synced_commit: Option<String>,
    /// The phase.
    pub phase: Phase,
    /// Dry run (nothing is changed).
    pub dry_run: bool,
    /// Per-object results of the current or last round, in apply order.
    pub objects: Vec<ObjectStatus<T>>,
    /// The last sync error (a failed round).
    pub last_error: Option<ErrorAt<T>>,
    /// The last commit that could not be used (fetch or parse failure): nothing of it was applied.
    pub rejected_commit: Option<ErrorAt<T>>,
    /// Consecutive failed rounds.
    pub consecutive_failures: u32,
    /// When the last round started.
    pub last_attempt_at: Option<T>,
    /// When a round last succeeded.
    pub last_synced_at: Option<T>,
    /// When the next round is due.
    pub next_attempt_at: Option<T>,
}

impl<T> ProjectStatus<T> {
    /// The same status with every time converted by `f`.
    pub fn map_time<U>(self, f: impl Fn(T) -> U) -> ProjectStatus<U> {
        let err = |e: Option<ErrorAt<T>>| {
            e.map(|e| ErrorAt {
                commit: e.commit,
                message: e.message,
                at: f(e.at),
            })
        };
        ProjectStatus {
            project: self.project,
            inventory: self.inventory,
            commit: self.commit,
            synced_commit: self.synced_commit,
            phase: self.phase,
            dry_run: self.dry_run,
            objects: self
                .objects
                .into_iter()
                .map(|o| ObjectStatus {
                    object: o.object,
                    result: o.result,
                    message: o.message,
                    at: f(o.at),
                })
                .collect(),
            last_error: err(self.last_error),
            rejected_commit: err(self.rejected_commit),
            consecutive_failures: self.consecutive_failures,
            last_attempt_at: self.last_attempt_at.map(&f),
            last_synced_at: self.last_synced_at.map(&f),
            next_attempt_at: self.next_attempt_at.map(&f),
        }
    }
}
