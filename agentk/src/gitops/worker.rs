//! One manifest project's sync worker: it keeps the project's `gitops` stream open on the current
//! connection ([`Link`]), feeds what kas sends to the pure sync decision ([`gitops::Sync`]), runs
//! the actions it asks for with the [`Executor`] (at most [`MAX_IN_FLIGHT`] at once), answers their
//! outcomes, fires its timers, and reports the project's status to kas after every round and every
//! commit kas could not use.
//!
//! The decision is all in `Sync`: what to apply and prune, in which order (Namespaces and CRDs
//! first), the inventory, the back-off of a failing API server, drift correction every
//! `resync_period`. This task only does I/O. A stream that fails is reopened with back-off (1 s
//! doubling to 30 s), at once when a new connection appears; the worker keeps syncing the last set
//! meanwhile (kas being away changes nothing in the cluster).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agent_config::ManifestProject;
use gitops::wire::{self, StatusCode};
use gitops::{InventoryRef, Outcome, Sync, SyncConfig, SyncEvent};
use tokio::task::JoinSet;

use super::executor::Executor;
use super::link::{FromKas, Link};
use super::{ConnSource, WorkerSettings};

/// Actions running at once, at most.
pub const MAX_IN_FLIGHT: usize = 8;
/// First delay before reopening a failed stream.
const REOPEN_MIN: Duration = Duration::from_secs(1);
/// Longest delay before reopening a failed stream.
const REOPEN_MAX: Duration = Duration::from_secs(30);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sync configuration of `project` under `settings`.
pub fn sync_config(project: &ManifestProject, settings: &WorkerSettings) -> SyncConfig {
    let id = project.id.as_ref().map(|p| p.as_str()).unwrap_or_default();
    let inventory = InventoryRef::for_project(&settings.inventory_namespace, &settings.agent, id);
    let mut config = SyncConfig::new(project, inventory);
    config.field_manager = settings.field_manager.clone();
    config.force_conflicts = settings.force_conflicts;
    config.resync_period = settings.resync_period;
    config
}

/// Runs the worker of `project` until the task is aborted (the manager does that when the project
/// leaves the configuration) or the connection source closes.
pub async fn run(
    project: ManifestProject,
    settings: Arc<WorkerSettings>,
    client: kube::Client,
    mut conns: ConnSource,
    seed: u64,
) {
    let id = project
        .id
        .as_ref()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut sync = Sync::new(sync_config(&project, &settings), seed);
    let executor = Arc::new(Executor::new(client));
    let mut running: JoinSet<(gitops::ActionId, Outcome)> = JoinSet::new();
    let mut link: Option<Link> = None;
    let mut reopen_at: Option<Instant> = Some(Instant::now());
    let mut reopen_delay = REOPEN_MIN;
    let mut told_unknown = false;
    let mut last_synced: Option<String> = None;
    tracing::info!(project = %id, inventory = %sync.config().inventory.name, "gitops worker started");
    // Every iteration waits for one input (an outcome, a message, a timer, a connection change).
    loop {
        while running.len() < MAX_IN_FLIGHT {
            let Some(action) = sync.poll_action() else {
                break;
            };
            let executor = executor.clone();
            running.spawn(async move {
                let outcome = executor.execute(&action).await;
                (action.id(), outcome)
            });
        }
        let mut report = false;
        while let Some(event) = sync.poll_event() {
            match event {
                SyncEvent::RoundStarted { round, commit } => {
                    tracing::debug!(project = %id, round, %commit, "gitops round started")
                }
                SyncEvent::RoundFinished {
                    round,
                    commit,
                    outcome,
                    ..
                } => {
                    // Drift-correction rounds that change nothing are routine: debug.
                    if outcome == gitops::RoundOutcome::Synced
                        && last_synced.as_deref() == Some(commit.as_str())
                    {
                        tracing::debug!(project = %id, round, %commit, "gitops round finished");
                    } else {
                        tracing::info!(project = %id, round, %commit, ?outcome, "gitops round finished");
                    }
                    if outcome == gitops::RoundOutcome::Synced {
                        last_synced = Some(commit);
                    }
                    report = true;
                }
                SyncEvent::Object(status) => {
                    if status.result.is_failure() {
                        tracing::warn!(project = %id, object = %status.object, result = ?status.result, message = ?status.message, "gitops object failed");
                    }
                }
            }
        }
        if report && let Some(l) = &link {
            l.send(protocol::cache::encode_message(&wire::report(
                &sync.report(Instant::now(), unix_ms()),
            )));
        }
        let timeout = sync.poll_timeout();
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                match done {
                    Ok((action, outcome)) => {
                        if let Err(e) = sync.handle_outcome(action, outcome, Instant::now()) {
                            tracing::error!(project = %id, error = %e, "gitops: outcome refused (agentk's bug)");
                        }
                    }
                    Err(e) => tracing::error!(project = %id, error = %e, "gitops action task failed"),
                }
            }
            from = next_from(&mut link) => {
                let now = Instant::now();
                match from {
                    FromKas::Set(set) => {
                        tracing::info!(project = %id, commit = %set.commit, objects = set.objects.len(), "gitops: new set from kas");
                        reopen_delay = REOPEN_MIN;
                        told_unknown = false;
                        sync.handle_desired(set, now);
                    }
                    FromKas::Status(s) => {
                        let code = StatusCode::try_from(s.code).unwrap_or(StatusCode::Unspecified);
                        match code {
                            StatusCode::Rejected | StatusCode::FetchFailed => {
                                tracing::warn!(project = %id, commit = %s.commit, message = %s.message, "gitops: kas cannot use the source; nothing changes");
                                sync.handle_commit_failed(&s.commit, &s.message, now);
                                if let Some(l) = &link {
                                    l.send(protocol::cache::encode_message(&wire::report(&sync.report(now, unix_ms()))));
                                }
                            }
                            StatusCode::UnknownProject if !told_unknown => {
                                told_unknown = true;
                                tracing::warn!(project = %id, message = %s.message, "gitops: kas does not know this project (yet)");
                            }
                            _ => tracing::debug!(project = %id, ?code, "gitops status"),
                        }
                    }
                    FromKas::Refused(status) => {
                        tracing::warn!(project = %id, status, "kas refused the gitops stream");
                        link = None;
                        reopen_at = Some(now + reopen_delay);
                        reopen_delay = (reopen_delay * 2).min(REOPEN_MAX);
                    }
                    FromKas::Ended(why) => {
                        tracing::debug!(project = %id, %why, "gitops stream ended");
                        link = None;
                        reopen_at = Some(now + reopen_delay);
                        reopen_delay = (reopen_delay * 2).min(REOPEN_MAX);
                    }
                }
            }
            () = sleep_until(timeout) => sync.handle_timeout(Instant::now()),
            () = sleep_until(reopen_at), if link.is_none() => {
                let conn = conns.borrow().clone();
                match conn {
                    Some(conn) if !conn.is_draining() && !conn.is_closed() => {
                        let has = sync.desired().map(|d| d.commit.clone());
                        let l = Link::open(conn, &id, has.as_deref());
                        if sync.desired().is_some() {
                            l.send(protocol::cache::encode_message(&wire::report(&sync.report(Instant::now(), unix_ms()))));
                        }
                        link = Some(l);
                    }
                    // No usable connection: wait for the next one.
                    _ => reopen_at = None,
                }
            }
            changed = conns.changed() => {
                if changed.is_err() {
                    tracing::info!(project = %id, "gitops worker stopping: no more connections");
                    return;
                }
                if link.is_none() {
                    reopen_at = Some(Instant::now());
                    reopen_delay = REOPEN_MIN;
                }
            }
        }
    }
}

async fn next_from(link: &mut Option<Link>) -> FromKas {
    match link {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
