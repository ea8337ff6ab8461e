//! GitOps manifests from Git: kas polls every manifest project of every agent's configuration
//! (`gitops.manifest_projects`, as [`crate::agent_config`] last accepted it), selects files by
//! `paths[].glob`, parses and validates them with the `gitops` crate, and keeps each agent's and
//! project's last good desired set for the `gitops` streams ([`crate::gitops_stream`]).
//!
//! - **One fetch per repository and ref.** Projects that resolve to the same repository and ref
//!   share one [`FetchKey`] and one fetch per poll, however many agents use them; the parse is shared
//!   too by projects with the same globs and default namespace.
//! - **A broken commit changes nothing.** A commit whose selected files do not parse or validate (or
//!   exceed `max_manifest_file_size`, `max_total_manifest_file_size`, `max_number_of_files`) is
//!   recorded with its errors and never reaches an agent: the last good set stays. A failed fetch
//!   (repository gone, unreachable, credentials refused) keeps everything too.
//! - **Project ids.** A URL (`git://…`, `https://…`) is the repository itself; the config project's
//!   own path (or no `id`) is the config project with its credentials; any other path resolves on
//!   the config project's server (`https://host/group/config.git` + `group/app` →
//!   `https://host/group/app.git`) with the same credentials.
//! - **Logged once** per (agent, project, commit) or (agent, project, fetch error code); events
//!   (`gitops`) for every new set, rejection, fetch failure and agent report.
//! - **Triggers.** A full poll every `gitops.poll_period`; [`GitopsPoller::trigger`] (the push
//!   webhook) polls the matching repositories at once.
//!
//! Read by `GET /api/v1/agents/{id}/gitops` ([`GitopsPoller::agent_json`]); metrics in
//! [`GitopsPoller::render_metrics`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use agent_config::{GitRef, ManifestGlob, ManifestProject};
use git_mirror::{FetchKey, Limits, MirrorSet, Remote, RepoId, RepoUrl, Want};
use gitops::wire::StatusCode;
use gitops::{DesiredSet, ManifestError, ManifestErrorKind, ManifestLimits, ProjectStatus};
use serde_json::{Value, json};

use crate::agent_config::{AgentConfigs, fault_label, project_path, remote_of, url_of};
use crate::auth::ConfigProject;
use crate::config::Config;
use crate::directory::AgentDirectory;
use crate::events::{Event, EventHub};

/// Fetches of one poll running at once, at most.
pub const MAX_CONCURRENT_FETCHES: usize = 16;

/// What the poller needs from `kas.yaml`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between full polls.
    pub poll_period: Duration,
    /// Whole-fetch timeout.
    pub fetch_timeout: Duration,
    /// Bounds of one commit's manifests.
    pub limits: ManifestLimits,
    /// Where the mirrors live.
    pub mirrors_dir: PathBuf,
}

impl Settings {
    /// From `kas.yaml`.
    pub fn from_config(config: &Config) -> Settings {
        let g = &config.gitops;
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Settings {
            poll_period: g.poll_period,
            fetch_timeout: g.fetch_timeout,
            limits: ManifestLimits {
                max_files: g.max_number_of_files as usize,
                max_file_bytes: size(g.max_manifest_file_size),
                max_total_bytes: size(g.max_total_manifest_file_size),
                ..ManifestLimits::default()
            },
            mirrors_dir: config.gitops_mirrors_dir(),
        }
    }
}

/// Why a project's source is not usable now (the last good set, if any, stays in force).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceError {
    /// [`StatusCode::FetchFailed`] or [`StatusCode::Rejected`].
    pub code: StatusCode,
    /// The commit concerned (the last one examined for fetch failures), if any.
    pub commit: Option<String>,
    /// For people.
    pub message: String,
    /// The manifest errors of a rejected commit.
    pub errors: Vec<ManifestError>,
    /// Whose fault a fetch failure is (`remote`, `credentials`, …).
    pub fault: Option<&'static str>,
}

/// One agent's manifest project as kas last saw it.
#[derive(Debug, Clone, Default)]
struct ProjectState {
    repository: String,
    git_ref: String,
    /// The last commit examined.
    commit: Option<String>,
    fetched_at: Option<SystemTime>,
    /// The last good set.
    desired: Option<Arc<DesiredSet>>,
    desired_at: Option<SystemTime>,
    error: Option<SourceError>,
    /// The agent's last report.
    report: Option<ProjectStatus<u64>>,
    reported_at: Option<SystemTime>,
    logged: Option<String>,
}

/// What a `gitops` stream sends for a project now.
#[derive(Debug, Clone, Default)]
pub struct ProjectView {
    /// Whether the agent's configuration has the project.
    pub configured: bool,
    /// The last good set.
    pub desired: Option<Arc<DesiredSet>>,
    /// The current problem.
    pub error: Option<SourceError>,
}

/// A subscription to one agent's changes ([`GitopsPoller::watch`]); unsubscribes when dropped.
pub struct Watch {
    poller: Arc<GitopsPoller>,
    id: u64,
    rx: async_channel::Receiver<()>,
}

impl Watch {
    /// Resolves at the next change of the agent's projects (changes meanwhile coalesce).
    pub async fn changed(&self) {
        let _ = self.rx.recv().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.poller.watchers().remove(&self.id);
    }
}

/// One project of one agent that a fetch serves.
#[derive(Debug, Clone)]
struct Member {
    agent_id: u64,
    project: String,
    git_ref: String,
    paths: Vec<ManifestGlob>,
    default_namespace: String,
}

/// The projects sharing one fetch.
struct Group {
    key: FetchKey,
    remote: Remote,
    members: Vec<Member>,
}

/// A fetch's result: the commit and, per member, its set or the rejection.
type Fetched = (String, Vec<Result<DesiredSet, Vec<ManifestError>>>);

/// The manifest poller and its results.
pub struct GitopsPoller {
    settings: Settings,
    configs: Arc<AgentConfigs>,
    directory: AgentDirectory,
    events: EventHub,
    mirrors: OnceLock<Result<MirrorSet, git_mirror::Error>>,
    projects: Mutex<BTreeMap<(u64, String), ProjectState>>,
    watchers: Mutex<BTreeMap<u64, (u64, async_channel::Sender<()>)>>,
    next_watch: AtomicU64,
    pending: Mutex<BTreeSet<RepoId>>,
    full_requested: AtomicBool,
    wake_tx: async_channel::Sender<()>,
    wake_rx: async_channel::Receiver<()>,
    polls: AtomicU64,
    rejected: AtomicU64,
    reports: AtomicU64,
    sets_sent: AtomicU64,
    fetch_failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl std::fmt::Debug for GitopsPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitopsPoller")
            .field("mirrors_dir", &self.settings.mirrors_dir)
            .field("poll_period", &self.settings.poll_period)
            .finish_non_exhaustive()
    }
}

impl GitopsPoller {
    /// A poller over the manifest projects of the configurations `configs` accepts.
    pub fn new(
        settings: Settings,
        configs: Arc<AgentConfigs>,
        directory: AgentDirectory,
        events: EventHub,
    ) -> Arc<Self> {
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        Arc::new(GitopsPoller {
            settings,
            configs,
            directory,
            events,
            mirrors: OnceLock::new(),
            projects: Mutex::new(BTreeMap::new()),
            watchers: Mutex::new(BTreeMap::new()),
            next_watch: AtomicU64::new(1),
            pending: Mutex::new(BTreeSet::new()),
            full_requested: AtomicBool::new(false),
            wake_tx,
            wake_rx,
            polls: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            sets_sent: AtomicU64::new(0),
            fetch_failures: Mutex::new(BTreeMap::new()),
        })
    }

    fn projects(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, String), ProjectState>> {
        self.projects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watchers(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u64, async_channel::Sender<()>)>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls every poll period, and what [`GitopsPoller::trigger`] names at once, until `stop`
    /// closes.
    pub async fn run(self: Arc<Self>, stop: async_channel::Receiver<()>) {
        let schedule = crate::poll_schedule::Schedule {
            period: self.settings.poll_period,
            wake: &self.wake_rx,
            pending: &self.pending,
            full_requested: Some(&self.full_requested),
        };
        crate::poll_schedule::run(schedule, stop, |only| {
            let me = self.clone();
            async move { me.poll(only.as_ref()).await }
        })
        .await;
    }

    /// Asks for a full poll soon (a stream names a project kas has not polled yet: the agent's
    /// configuration may be newer than the last poll).
    pub fn request_poll(&self) {
        if !self.full_requested.swap(true, Ordering::Relaxed) {
            let _ = self.wake_tx.try_send(());
        }
    }

    /// Every configured manifest project, grouped by fetch, and every (agent, project) configured;
    /// projects whose source cannot be resolved get their error recorded here.
    fn groups(&self) -> (Vec<Group>, BTreeSet<(u64, String)>) {
        let mut groups: BTreeMap<FetchKey, Group> = BTreeMap::new();
        let mut configured = BTreeSet::new();
        for (agent_id, _, config_project) in self.directory.config_projects() {
            let Some(config) = self.configs.applied_config(agent_id) else {
                continue;
            };
            for project in &config.gitops.manifest_projects {
                let Some(id) = project.id.as_ref().map(|p| p.as_str().to_string()) else {
                    continue;
                };
                configured.insert((agent_id, id.clone()));
                let member = Member {
                    agent_id,
                    project: id.clone(),
                    git_ref: project.git_ref.to_refspec(),
                    paths: project.paths.clone(),
                    default_namespace: project
                        .default_namespace
                        .as_ref()
                        .map_or("default", |n| n.as_str())
                        .to_string(),
                };
                match source_of(project, &config_project) {
                    Ok((remote, want)) => {
                        let key = FetchKey {
                            repo: remote.url.id(),
                            want,
                        };
                        groups
                            .entry(key.clone())
                            .or_insert_with(|| Group {
                                key,
                                remote,
                                members: Vec::new(),
                            })
                            .members
                            .push(member);
                    }
                    Err(e) => self.fetch_failed(&member, &id, &e),
                }
            }
        }
        (groups.into_values().collect(), configured)
    }

    /// One poll of every group, or of those whose repository is in `only`.
    async fn poll(self: &Arc<Self>, only: Option<&BTreeSet<RepoId>>) {
        let (all, configured) = self.groups();
        if only.is_none() {
            // Projects no longer configured are forgotten (their streams learn it).
            let mut gone = BTreeSet::new();
            self.projects().retain(|k, _| {
                let keep = configured.contains(k);
                if !keep {
                    gone.insert(k.0);
                }
                keep
            });
            for agent in gone {
                self.notify(agent);
            }
        }
        let mut groups = all
            .into_iter()
            .filter(|g| only.is_none_or(|o| o.contains(&g.key.repo)));
        loop {
            let tasks: Vec<_> = groups
                .by_ref()
                .take(MAX_CONCURRENT_FETCHES)
                .map(|group| {
                    let this = self.clone();
                    smol::unblock(move || {
                        let result = this.fetch(&group);
                        (group, result)
                    })
                })
                .collect();
            if tasks.is_empty() {
                return;
            }
            for task in tasks {
                self.record(task.await);
            }
        }
    }

    /// Blocking: updates the group's mirror and parses each distinct selection at the new commit.
    fn fetch(&self, group: &Group) -> Result<Fetched, git_mirror::Error> {
        let mirrors = self
            .mirrors
            .get_or_init(|| {
                MirrorSet::open(
                    &self.settings.mirrors_dir,
                    Limits {
                        fetch_timeout: self.settings.fetch_timeout,
                        ..Limits::default()
                    },
                )
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let mirror = mirrors.mirror(&group.remote)?;
        let update = mirror.update(&group.key.want)?;
        let commit = update.commit.to_string();
        let snapshot = mirror.snapshot(update.commit)?;
        let listing = snapshot.walk("")?;
        let mut parsed: BTreeMap<(Vec<String>, String), Result<DesiredSet, Vec<ManifestError>>> =
            BTreeMap::new();
        let mut out = Vec::with_capacity(group.members.len());
        for m in &group.members {
            let key = (
                m.paths.iter().map(|g| g.as_str().to_string()).collect(),
                m.default_namespace.clone(),
            );
            let result = parsed
                .entry(key)
                .or_insert_with(|| {
                    self.parse(&snapshot, &listing, &m.paths, &m.default_namespace, &commit)
                })
                .clone();
            out.push(result);
        }
        Ok((commit, out))
    }

    /// Selects, reads (within the limits) and parses one project's files at a commit.
    fn parse(
        &self,
        snapshot: &git_mirror::Snapshot,
        listing: &git_mirror::Listing,
        globs: &[ManifestGlob],
        default_namespace: &str,
        commit: &str,
    ) -> Result<DesiredSet, Vec<ManifestError>> {
        let limits = &self.settings.limits;
        let too_large = |path: &str, message: String| ManifestError {
            kind: ManifestErrorKind::TooLarge,
            path: path.to_string(),
            line: 0,
            column: 0,
            message,
        };
        let entries: BTreeMap<&str, &git_mirror::Entry> =
            listing.files.iter().map(|e| (e.path.as_str(), e)).collect();
        let selected = gitops::manifest::select(globs, entries.keys().copied());
        if selected.len() > limits.max_files {
            return Err(vec![too_large(
                "",
                format!(
                    "the globs select {} files, more than the limit of {}",
                    selected.len(),
                    limits.max_files
                ),
            )]);
        }
        let mut files: Vec<(&str, Vec<u8>)> = Vec::with_capacity(selected.len());
        let mut total: u64 = 0;
        let mut errors = Vec::new();
        for path in selected {
            let entry = entries[path];
            let size = match snapshot.blob_size(entry.id) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(too_large(path, e.to_string()));
                    continue;
                }
            };
            if size > limits.max_file_bytes as u64 {
                errors.push(too_large(
                    path,
                    format!(
                        "the file is {size} bytes, more than the limit of {}",
                        limits.max_file_bytes
                    ),
                ));
                continue;
            }
            total += size;
            if total > limits.max_total_bytes as u64 {
                errors.push(too_large(
                    "",
                    format!(
                        "the selected files exceed the limit of {} bytes in all",
                        limits.max_total_bytes
                    ),
                ));
                return Err(errors);
            }
            match snapshot.read_blob(entry.id, limits.max_file_bytes as u64) {
                Ok(bytes) => files.push((path, bytes)),
                Err(e) => errors.push(too_large(path, e.to_string())),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let parsed = gitops::manifest::parse(
            files.iter().map(|(p, b)| (*p, b.as_slice())),
            default_namespace,
            &gitops::WellKnownScopes,
            limits,
        );
        parsed.into_desired(commit).map_err(|r| r.errors)
    }

    /// Records one group's fetch.
    fn record(&self, (group, result): (Group, Result<Fetched, git_mirror::Error>)) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let repository = group.remote.url.to_string();
        match result {
            Ok((commit, results)) => {
                for (member, result) in group.members.iter().zip(results) {
                    self.accept(member, &repository, &commit, result);
                }
            }
            Err(e) => {
                *self
                    .fetch_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(fault_label(e.fault()))
                    .or_default() += 1;
                for member in &group.members {
                    self.fetch_failed(member, &repository, &e);
                }
            }
        }
    }

    /// Records what a successful fetch found for one project of one agent.
    fn accept(
        &self,
        member: &Member,
        repository: &str,
        commit: &str,
        result: Result<DesiredSet, Vec<ManifestError>>,
    ) {
        let now = SystemTime::now();
        let agent_id = member.agent_id;
        let project = member.project.as_str();
        let event = {
            let mut projects = self.projects();
            let state = projects
                .entry((agent_id, member.project.clone()))
                .or_default();
            state.repository = repository.to_string();
            state.git_ref = member.git_ref.clone();
            state.commit = Some(commit.to_string());
            state.fetched_at = Some(now);
            match result {
                Ok(set) => {
                    let had_error = state.error.take().is_some();
                    state.logged = None;
                    if state.desired.as_deref() == Some(&set) {
                        had_error.then(|| json!({"type": "source_ok", "commit": commit}))
                    } else {
                        tracing::info!(
                            agent_id,
                            project,
                            %commit,
                            objects = set.objects.len(),
                            "gitops: new manifest set"
                        );
                        let objects = set.objects.len();
                        state.desired = Some(Arc::new(set));
                        state.desired_at = Some(now);
                        Some(json!({"type": "commit", "commit": commit, "objects": objects}))
                    }
                }
                Err(errors) => {
                    let message = errors.first().map(ToString::to_string).unwrap_or_default();
                    let logged = format!("commit:{commit}");
                    let first_time = state.logged.as_deref() != Some(logged.as_str());
                    if first_time {
                        self.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            agent_id,
                            project,
                            %commit,
                            errors = errors.len(),
                            first = %message,
                            "gitops: commit rejected; nothing of it is applied, the last good set stays"
                        );
                        state.logged = Some(logged);
                    }
                    state.error = Some(SourceError {
                        code: StatusCode::Rejected,
                        commit: Some(commit.to_string()),
                        message: format!(
                            "commit {commit} rejected: {} error(s), first: {message}",
                            errors.len()
                        ),
                        errors,
                        fault: None,
                    });
                    first_time
                        .then(|| json!({"type": "rejected", "commit": commit, "message": message}))
                }
            }
        };
        if let Some(data) = event {
            self.publish(agent_id, project, data);
            self.notify(agent_id);
        }
    }

    /// Records a fetch failure for one project of one agent; its last state stays.
    fn fetch_failed(&self, member: &Member, repository: &str, e: &git_mirror::Error) {
        let first_time = {
            let mut projects = self.projects();
            let state = projects
                .entry((member.agent_id, member.project.clone()))
                .or_default();
            state.repository = repository.to_string();
            state.git_ref = member.git_ref.clone();
            state.error = Some(SourceError {
                code: StatusCode::FetchFailed,
                commit: state.commit.clone(),
                message: e.to_string(),
                errors: Vec::new(),
                fault: Some(fault_label(e.fault())),
            });
            let logged = format!("fetch:{}", e.code());
            let first = state.logged.as_deref() != Some(logged.as_str());
            if first {
                tracing::warn!(
                    agent_id = member.agent_id,
                    project = member.project,
                    repository,
                    code = e.code(),
                    fault = fault_label(e.fault()),
                    error = %e,
                    "gitops: fetch failed; the last good set stays"
                );
                state.logged = Some(logged);
            }
            first
        };
        if first_time {
            self.publish(
                member.agent_id,
                &member.project,
                json!({"type": "fetch_failed", "code": e.code(), "fault": fault_label(e.fault()), "message": e.to_string()}),
            );
            self.notify(member.agent_id);
        }
    }

    fn publish(&self, agent_id: u64, project: &str, data: Value) {
        self.events.publish(&Event::Gitops {
            agent_id,
            project: project.to_string(),
            data,
        });
    }

    /// Wakes every stream of `agent_id`.
    fn notify(&self, agent_id: u64) {
        for (agent, tx) in self.watchers().values() {
            if *agent == agent_id {
                let _ = tx.try_send(());
            }
        }
    }

    /// Subscribes to changes of `agent_id`'s projects.
    pub fn watch(self: &Arc<Self>, agent_id: u64) -> Watch {
        let (tx, rx) = async_channel::bounded(1);
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        self.watchers().insert(id, (agent_id, tx));
        Watch {
            poller: self.clone(),
            id,
            rx,
        }
    }

    /// What a stream of `agent_id` for `project` sends now.
    pub fn view(&self, agent_id: u64, project: &str) -> ProjectView {
        let configured = self.configs.applied_config(agent_id).is_some_and(|c| {
            c.gitops
                .manifest_projects
                .iter()
                .any(|p| p.id.as_ref().is_some_and(|id| id.as_str() == project))
        });
        let projects = self.projects();
        let state = projects.get(&(agent_id, project.to_string()));
        ProjectView {
            configured,
            desired: state.and_then(|s| s.desired.clone()),
            error: state.and_then(|s| s.error.clone()),
        }
    }

    /// Counts a set sent to an agent.
    pub fn set_sent(&self) {
        self.sets_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an agent's sync report for a project (ignored for a project its configuration does
    /// not have: an agent cannot make kas keep state for names it makes up).
    pub fn handle_report(&self, agent_id: u64, project: &str, status: ProjectStatus<u64>) {
        if !self.view(agent_id, project).configured {
            return;
        }
        self.reports.fetch_add(1, Ordering::Relaxed);
        let data = json!({
            "type": "report",
            "phase": status.phase,
            "commit": status.commit,
            "synced_commit": status.synced_commit,
            "objects": status.objects.len(),
            "failed": status.objects.iter().filter(|o| o.result.is_failure()).count(),
        });
        let changed = {
            let mut projects = self.projects();
            let state = projects.entry((agent_id, project.to_string())).or_default();
            let changed = state.report.as_ref().is_none_or(|r| {
                r.phase != status.phase
                    || r.synced_commit != status.synced_commit
                    || r.objects != status.objects
            });
            state.report = Some(status);
            state.reported_at = Some(SystemTime::now());
            changed
        };
        if changed {
            self.publish(agent_id, project, data);
        }
    }

    /// Polls the repositories matching a push at once (the webhook): `path_with_namespace` and
    /// `git_http_url` are GitLab's `project` fields. Returns how many repositories will be polled.
    pub fn trigger(&self, path_with_namespace: Option<&str>, git_http_url: Option<&str>) -> usize {
        let by_url = git_http_url
            .and_then(|u| RepoUrl::parse_with_credentials(u).ok())
            .map(|(u, _)| u.id());
        let path = path_with_namespace.map(|p| p.trim_matches('/').trim_end_matches(".git"));
        let mut matched = BTreeSet::new();
        for group in self.groups().0 {
            let id = group.key.repo.clone();
            if by_url.as_ref() == Some(&id)
                || path.is_some_and(|p| !p.is_empty() && project_path(&group.remote.url) == p)
            {
                matched.insert(id);
            }
        }
        let n = matched.len();
        if n > 0 {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(matched);
            let _ = self.wake_tx.try_send(());
        }
        n
    }

    /// The API's answer for one agent (`GET /api/v1/agents/{id}/gitops`).
    pub fn agent_json(&self, agent_id: u64) -> Value {
        let configured: Vec<String> = self
            .configs
            .applied_config(agent_id)
            .map(|c| {
                c.gitops
                    .manifest_projects
                    .iter()
                    .filter_map(|p| p.id.as_ref().map(|i| i.as_str().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let projects = self.projects();
        let mut names: BTreeSet<String> = configured.iter().cloned().collect();
        names.extend(
            projects
                .keys()
                .filter(|(a, _)| *a == agent_id)
                .map(|(_, p)| p.clone()),
        );
        let items: Vec<Value> = names
            .iter()
            .map(|name| {
                let s = projects.get(&(agent_id, name.clone()));
                let status = match s {
                    None => "pending",
                    Some(s) if s.error.is_some() => "error",
                    Some(s) if s.desired.is_some() => "ok",
                    Some(_) => "pending",
                };
                let error = s.and_then(|s| s.error.as_ref()).map(|e| {
                    json!({
                        "kind": match e.code {
                            StatusCode::Rejected => "rejected",
                            _ => "fetch",
                        },
                        "commit": e.commit,
                        "message": e.message,
                        "fault": e.fault,
                        "errors": e.errors,
                    })
                });
                json!({
                    "project": name,
                    "configured": configured.contains(name),
                    "status": status,
                    "repository": s.map(|s| s.repository.clone()),
                    "ref": s.map(|s| s.git_ref.clone()),
                    "commit": s.and_then(|s| s.commit.clone()),
                    "fetched_at": s.and_then(|s| s.fetched_at).map(crate::rfc3339::format),
                    "desired_commit": s.and_then(|s| s.desired.as_ref().map(|d| d.commit.clone())),
                    "desired_objects": s.and_then(|s| s.desired.as_ref().map(|d| d.objects.len())),
                    "desired_at": s.and_then(|s| s.desired_at).map(crate::rfc3339::format),
                    "error": error,
                    "sync": s.and_then(|s| s.report.as_ref()).map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
                    "reported_at": s.and_then(|s| s.reported_at).map(crate::rfc3339::format),
                })
            })
            .collect();
        json!({"agent_id": agent_id, "projects": items})
    }

    /// Prometheus text: polls, fetch failures by fault, rejected commits, projects by status,
    /// sets sent, agent reports.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "kas_gitops_polls_total",
            "Fetches of manifest projects (one per repository and ref per poll).",
            self.polls.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kas_gitops_rejected_commits_total",
            "Commits whose manifests did not parse or validate (nothing of them was sent).",
            self.rejected.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kas_gitops_sets_sent_total",
            "Manifest sets sent to agents on gitops streams.",
            self.sets_sent.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kas_gitops_reports_total",
            "Sync reports received from agents.",
            self.reports.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP kas_gitops_fetch_failures_total Failed manifest project fetches, by whose fault.\n\
             # TYPE kas_gitops_fetch_failures_total counter"
        );
        for (fault, n) in self
            .fetch_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "kas_gitops_fetch_failures_total{{fault=\"{fault}\"}} {n}"
            );
        }
        let (mut ok, mut error, mut degraded) = (0, 0, 0);
        for s in self.projects().values() {
            if s.error.is_some() {
                error += 1;
            } else if s.desired.is_some() {
                ok += 1;
            }
            if s.report
                .as_ref()
                .is_some_and(|r| r.phase == gitops::Phase::Degraded)
            {
                degraded += 1;
            }
        }
        let _ = writeln!(
            out,
            "# HELP kas_gitops_projects Manifest projects of all agents, by source status.\n\
             # TYPE kas_gitops_projects gauge\n\
             kas_gitops_projects{{status=\"ok\"}} {ok}\n\
             kas_gitops_projects{{status=\"error\"}} {error}\n\
             # HELP kas_gitops_projects_degraded Manifest projects whose agent reports a failing sync.\n\
             # TYPE kas_gitops_projects_degraded gauge\n\
             kas_gitops_projects_degraded {degraded}"
        );
        out
    }
}

/// The repository and ref of a manifest project of an agent whose config project is
/// `config_project` (see the module documentation for how ids resolve).
fn source_of(
    project: &ManifestProject,
    config_project: &ConfigProject,
) -> Result<(Remote, Want), git_mirror::Error> {
    let want = match &project.git_ref {
        GitRef::DefaultBranch => Want::DefaultBranch,
        GitRef::Branch(b) => Want::branch(b)?,
        GitRef::Tag(t) => Want::tag(t)?,
        GitRef::Commit(c) => Want::commit(c)?,
    };
    let id = project.id.as_ref().map(|p| p.as_str()).unwrap_or_default();
    let remote = if id.contains("://") {
        Remote::parse(id)?
    } else {
        let config_url = url_of(config_project)?;
        let own = project_path(&config_url);
        let mut remote = remote_of(config_project)?;
        if !id.is_empty() && id != own {
            let url = config_project.url.trim();
            let Some(at) = url.rfind(own.as_str()) else {
                return Err(git_mirror::Error::InvalidUrl {
                    reason: format!(
                        "manifest project {id:?} cannot be resolved next to the config project; use a repository URL"
                    ),
                });
            };
            let sibling = format!("{}{id}{}", &url[..at], &url[at + own.len()..]);
            let resolved = Remote::parse(&sibling)?;
            remote.url = resolved.url;
        }
        remote
    };
    Ok((remote, want))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agent_config::ProjectId;

    fn project(id: &str) -> ManifestProject {
        ManifestProject::with_defaults(Some(ProjectId::new(id).unwrap()))
    }

    fn config_project(url: &str) -> ConfigProject {
        serde_json::from_value(json!({"url": url})).unwrap()
    }

    /// A poller with `limits` over no agents (its parse is what is tested).
    fn poller(limits: ManifestLimits, dir: &std::path::Path) -> Arc<GitopsPoller> {
        let file = crate::auth::AgentsFile::from_yaml_str(
            "agents: []\n",
            std::path::Path::new("agents.yaml"),
        )
        .unwrap();
        let directory = AgentDirectory::File(Arc::new(file));
        let configs = AgentConfigs::new(
            crate::agent_config::Settings {
                poll_period: Duration::from_secs(300),
                fetch_timeout: Duration::from_secs(5),
                max_file_size: 1024,
                mirrors_dir: dir.join("config-mirrors"),
                webhook_secret: None,
            },
            directory.clone(),
        );
        GitopsPoller::new(
            Settings {
                poll_period: Duration::from_secs(300),
                fetch_timeout: Duration::from_secs(5),
                limits,
                mirrors_dir: dir.join("mirrors"),
            },
            configs,
            directory,
            EventHub::new(16, 16),
        )
    }

    /// Hostile and oversized repository content is a clear error of the commit, never a partial set.
    #[test]
    fn selection_and_limits_reject_the_commit() {
        use git_mirror::testing::TestRepo;
        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::create(root.path(), "m").unwrap();
        let cm = |n: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}}}\n");
        repo.write("apps/a.yaml", cm("a")).unwrap();
        repo.write("apps/b.yaml", cm("b")).unwrap();
        repo.write("apps/.hidden/c.yaml", cm("c")).unwrap();
        repo.write("README.md", "# not selected\n").unwrap();
        let good = repo.commit("good").unwrap().to_string();
        let limits = ManifestLimits {
            max_files: 2,
            max_file_bytes: 256,
            max_total_bytes: 1024,
            ..ManifestLimits::default()
        };
        let p = poller(limits, root.path());
        let globs = vec![ManifestGlob::new("apps/**/*.yaml").unwrap()];
        let remote = Remote::new(RepoUrl::file(&repo.served).unwrap());
        let parse_head = || {
            let group = Group {
                key: FetchKey {
                    repo: remote.url.id(),
                    want: Want::DefaultBranch,
                },
                remote: remote.clone(),
                members: vec![Member {
                    agent_id: 1,
                    project: "m".into(),
                    git_ref: "HEAD".into(),
                    paths: globs.clone(),
                    default_namespace: "demo".into(),
                }],
            };
            let (commit, mut results) = p.fetch(&group).unwrap();
            (commit, results.remove(0))
        };
        let (commit, set) = parse_head();
        assert_eq!(commit, good);
        let set = set.unwrap();
        // Hidden directories and non-matching files are not selected; namespaces are defaulted.
        let names: Vec<&str> = set.objects.iter().map(|o| o.id.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(set.objects[0].id.namespace.as_deref(), Some("demo"));

        // One file too many.
        repo.write("apps/d.yaml", cm("d")).unwrap();
        repo.commit("three").unwrap();
        let errors = parse_head().1.unwrap_err();
        assert_eq!(errors[0].kind, ManifestErrorKind::TooLarge, "{errors:?}");
        repo.remove("apps/d.yaml").unwrap();
        // An oversized file.
        repo.write(
            "apps/b.yaml",
            format!("{}data: {{x: '{}'}}\n", cm("b"), "y".repeat(400)),
        )
        .unwrap();
        repo.commit("big").unwrap();
        let errors = parse_head().1.unwrap_err();
        assert_eq!(errors[0].path, "apps/b.yaml", "{errors:?}");
        assert_eq!(errors[0].kind, ManifestErrorKind::TooLarge);
        // A binary file matching the glob.
        repo.write("apps/b.yaml", [0u8, 159, 146, 150, 0, 1, 2])
            .unwrap();
        repo.commit("binary").unwrap();
        let errors = parse_head().1.unwrap_err();
        assert_eq!(errors[0].path, "apps/b.yaml", "{errors:?}");
        // A YAML bomb (aliases expanding beyond the budget).
        let mut bomb = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\nx:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!("  b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(bomb.len() <= 1024);
        let p2 = poller(
            ManifestLimits {
                max_file_bytes: 2048,
                ..ManifestLimits::default()
            },
            &root.path().join("p2"),
        );
        repo.write("apps/b.yaml", bomb).unwrap();
        let bombed = repo.commit("bomb").unwrap().to_string();
        let group = Group {
            key: FetchKey {
                repo: remote.url.id(),
                want: Want::DefaultBranch,
            },
            remote: remote.clone(),
            members: vec![Member {
                agent_id: 1,
                project: "m".into(),
                git_ref: "HEAD".into(),
                paths: globs.clone(),
                default_namespace: "demo".into(),
            }],
        };
        let (commit, results) = p2.fetch(&group).unwrap();
        assert_eq!(commit, bombed);
        let errors = results[0].clone().unwrap_err();
        assert_eq!(errors[0].path, "apps/b.yaml", "{errors:?}");
        assert_eq!(errors[0].kind, ManifestErrorKind::Syntax, "{errors:?}");
    }

    #[test]
    fn project_ids_resolve_to_repositories() {
        let cp = config_project("https://gitlab.example.com/group/config.git");
        let (r, w) = source_of(&project("group/app"), &cp).unwrap();
        assert_eq!(
            r.url.to_string(),
            "https://gitlab.example.com/group/app.git"
        );
        assert_eq!(w, Want::DefaultBranch);
        let (r, _) = source_of(&project("group/config"), &cp).unwrap();
        assert_eq!(
            r.url.to_string(),
            "https://gitlab.example.com/group/config.git"
        );
        let (r, _) = source_of(&project("git://git.example.com/m.git"), &cp).unwrap();
        assert_eq!(r.url.to_string(), "git://git.example.com/m.git");
        let mut tagged = project("group/app");
        tagged.git_ref = GitRef::Tag("v1".into());
        assert_eq!(source_of(&tagged, &cp).unwrap().1, Want::Tag("v1".into()));
    }
}
