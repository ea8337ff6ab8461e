//! Agent configuration from Git: kas polls every agent's config project (agents-file backend:
//! `config_project` of each agent) and parses `.gitlab/agents/<name>/config.yaml` on its default
//! branch with [`agent_config::ConfigFile`].
//!
//! - **One fetch per repository.** Agents whose config projects normalise to the same repository share
//!   one [`FetchKey`] and one fetch per poll ([`git_mirror::Mirror::update`]), however many they are.
//! - **Blocking work off the executor.** Fetches, tree reads and parsing run in `smol::unblock`.
//! - **Last good config stays.** A commit whose file does not parse (or is too large, or not a file)
//!   records its errors (commit, path, line, column, message) and keeps the previously accepted
//!   config; a failed fetch (repository gone, unreachable, credentials refused) keeps everything and
//!   adds the fetch error. A missing file is an empty configuration.
//! - **Logged once.** A broken commit is logged once per (agent, commit); a fetch failure once per
//!   (agent, error code) until it clears. Messages come from `git-mirror`, which never puts a
//!   credential in an error.
//! - **Triggers.** A full poll every `agent_configuration.poll_period`, and [`AgentConfigs::trigger`]
//!   (the push webhook) polls the matching repositories at once.
//!
//! Read by `GET /api/v1/agents/{id}/config` ([`AgentConfigs::agent_json`]); metrics in
//! [`AgentConfigs::render_metrics`].
//!
//! **Delivery** (the `config` tunnel service, [`crate::config_stream`], protocol/SERVICES.md §8):
//! every accepted configuration is kept as the agent's last good [`ConfigUpdate`]
//! ([`AgentConfigs::good`]; its `ci_access`/`user_access` are where the authoriser of issue 14 finds
//! the grants). When it changes (commit or content), every open `config` stream of that agent is woken
//! at once ([`AgentConfigs::subscribe`]), so a commit reaches agentk within milliseconds of the poll
//! or webhook that found it. Each stream is a [`ConfigLink`] that records what the agent has, for the
//! API (`delivery`), the metrics (configs sent, agents up to date) and the event stream (`config`
//! events: `delivered`, `rejected`, `fetch_failed`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use agent_config::{AgentName, ConfigFile, ConfigUpdate, Delivery, ProjectId};
use git_mirror::{Auth, FetchKey, Limits, MirrorSet, Remote, RepoId, RepoUrl, Secret, Want};
use serde_json::{Value, json};

use crate::auth::{ConfigProject, TokenDigest};
use crate::config::Config;
use crate::directory::AgentDirectory;
use crate::events::{Event, EventHub};

/// Fetches of one poll running at once, at most.
pub const MAX_CONCURRENT_FETCHES: usize = 16;

/// `config` streams one agent may have open at once (a GOAWAY handover briefly needs two).
pub const MAX_CONFIG_STREAMS_PER_AGENT: u32 = 4;

/// What the poller needs from `kas.yaml`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between full polls.
    pub poll_period: Duration,
    /// Whole-fetch timeout.
    pub fetch_timeout: Duration,
    /// Largest configuration file read.
    pub max_file_size: u64,
    /// Where the mirrors live.
    pub mirrors_dir: PathBuf,
    /// The push webhook's shared secret, if configured.
    pub webhook_secret: Option<Secret>,
}

/// Why [`Settings::from_config`] failed.
#[derive(Debug, thiserror::Error)]
#[error("agent_configuration.webhook_secret_file {}: {reason}", path.display())]
pub struct SettingsError {
    /// The secret file.
    pub path: PathBuf,
    /// What is wrong (never the secret).
    pub reason: String,
}

impl Settings {
    /// From `kas.yaml`; reads the webhook secret file.
    pub fn from_config(config: &Config) -> Result<Settings, SettingsError> {
        let ac = &config.agent_configuration;
        let webhook_secret = match &ac.webhook_secret_file {
            None => None,
            Some(path) => {
                let fail = |reason: String| SettingsError {
                    path: path.clone(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
                let secret = text.trim();
                if secret.is_empty() {
                    return Err(fail("empty".into()));
                }
                Some(Secret::new(secret))
            }
        };
        Ok(Settings {
            poll_period: ac.poll_period,
            fetch_timeout: ac.fetch_timeout,
            max_file_size: ac.max_file_size,
            mirrors_dir: config.agent_config_mirrors_dir(),
            webhook_secret,
        })
    }
}

/// One agent's configuration as kas last saw it.
#[derive(Debug, Clone, Default)]
struct AgentState {
    /// The repository (redacted URL) it comes from.
    repository: String,
    /// The last commit examined.
    commit: Option<String>,
    /// When that commit was last fetched.
    fetched_at: Option<SystemTime>,
    /// The commit of the config in force.
    applied_commit: Option<String>,
    /// When the config in force was accepted (its content last changed).
    applied_at: Option<SystemTime>,
    /// The last good config, as agentk receives it.
    good: Option<Arc<ConfigUpdate>>,
    /// Current problems: parse errors of `commit`, or the last fetch failure.
    errors: Vec<Value>,
    /// What was last logged (`commit:<id>` or `fetch:<code>`), so each problem is logged once.
    logged: Option<String>,
}

/// The push webhook's answer ([`AgentConfigs::webhook`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// No secret is configured: the webhook is off.
    Disabled,
    /// The secret is missing or wrong.
    BadSecret,
    /// The body is not a push event kas understands.
    BadRequest(String),
    /// No agent's config project is this repository.
    NoMatch,
    /// A poll of this many repositories was triggered.
    Triggered(usize),
}

/// The agent configuration poller and its results.
pub struct AgentConfigs {
    settings: Settings,
    directory: AgentDirectory,
    mirrors: OnceLock<Result<MirrorSet, git_mirror::Error>>,
    states: Mutex<BTreeMap<u64, AgentState>>,
    pending: Mutex<BTreeSet<RepoId>>,
    wake_tx: async_channel::Sender<()>,
    wake_rx: async_channel::Receiver<()>,
    polls: AtomicU64,
    fetch_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Wakers of the open `config` streams, by agent.
    subscribers: Mutex<BTreeMap<u64, Vec<async_channel::Sender<()>>>>,
    /// What the agents with open `config` streams have.
    links: Mutex<BTreeMap<u64, LinkState>>,
    /// Configurations written to `config` streams.
    sent: AtomicU64,
    /// Where `config` events go (set once the hub exists).
    events: OnceLock<EventHub>,
}

/// One agent's `config` streams, as kas knows them.
#[derive(Debug, Clone, Default)]
struct LinkState {
    /// Open streams.
    streams: u32,
    /// What the agent has (from its request head, then from what kas sent).
    has: Delivery,
    /// When kas last sent it a configuration.
    delivered_at: Option<SystemTime>,
}

/// Why a `config` stream was refused ([`AgentConfigs::open_link`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent {agent_id} has {MAX_CONFIG_STREAMS_PER_AGENT} config streams open already")]
pub struct TooManyStreams {
    /// The agent.
    pub agent_id: u64,
}

/// One open `config` stream: decides what to send it ([`Delivery`]) and keeps the agent's
/// delivery state up to date. Dropping it closes the link.
#[derive(Debug)]
pub struct ConfigLink {
    configs: Arc<AgentConfigs>,
    agent_id: u64,
    has: Delivery,
}

impl ConfigLink {
    /// The agent.
    pub fn agent_id(&self) -> u64 {
        self.agent_id
    }

    /// The agent's last good configuration if this stream must send it now (see
    /// [`Delivery::offer`]); then it is recorded as delivered once [`ConfigLink::sent`] is called.
    pub fn to_send(&mut self) -> Option<Arc<ConfigUpdate>> {
        let good = self.configs.good(self.agent_id)?;
        self.has.offer(&good).then_some(good)
    }

    /// Records that `update` was written to the stream (metrics, API, a `delivered` event).
    pub fn sent(&self, update: &ConfigUpdate) {
        self.configs.sent.fetch_add(1, Ordering::Relaxed);
        {
            let mut links = self.configs.links();
            let link = links.entry(self.agent_id).or_default();
            link.has = self.has.clone();
            link.delivered_at = Some(SystemTime::now());
        }
        tracing::info!(
            agent_id = self.agent_id,
            commit = %update.commit,
            fingerprint = %update.fingerprint,
            "configuration delivered to the agent"
        );
        self.configs.publish(Event::Config {
            agent_id: self.agent_id,
            status: "delivered",
            commit: Some(update.commit.clone()),
            message: None,
        });
    }
}

impl Drop for ConfigLink {
    fn drop(&mut self) {
        let mut links = self.configs.links();
        if let Some(link) = links.get_mut(&self.agent_id) {
            link.streams = link.streams.saturating_sub(1);
            if link.streams == 0 {
                links.remove(&self.agent_id);
            }
        }
    }
}

impl std::fmt::Debug for AgentConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfigs")
            .field("mirrors_dir", &self.settings.mirrors_dir)
            .field("poll_period", &self.settings.poll_period)
            .finish_non_exhaustive()
    }
}

/// The agents sharing one fetch.
struct Group {
    key: FetchKey,
    remote: Remote,
    project: ProjectId,
    agents: Vec<(u64, String)>,
}

/// What one fetch of a group found, per agent: the file's bytes (`None`: no file) or a read error.
type Fetched = (String, Vec<(u64, Result<Option<Vec<u8>>, String>)>);

impl AgentConfigs {
    /// A poller over the agents `directory` lists (nothing is fetched before [`AgentConfigs::run`]).
    pub fn new(settings: Settings, directory: AgentDirectory) -> Arc<Self> {
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        Arc::new(AgentConfigs {
            settings,
            directory,
            mirrors: OnceLock::new(),
            states: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeSet::new()),
            wake_tx,
            wake_rx,
            polls: AtomicU64::new(0),
            fetch_failures: Mutex::new(BTreeMap::new()),
            subscribers: Mutex::new(BTreeMap::new()),
            links: Mutex::new(BTreeMap::new()),
            sent: AtomicU64::new(0),
            events: OnceLock::new(),
        })
    }

    /// Publishes `config` events on `hub` from now on (kas's state sets it once).
    pub fn attach_events(&self, hub: EventHub) {
        let _ = self.events.set(hub);
    }

    fn publish(&self, event: Event) {
        if let Some(hub) = self.events.get() {
            hub.publish(&event);
        }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, LinkState>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent's last good configuration, as agentk receives it.
    pub fn good(&self, agent_id: u64) -> Option<Arc<ConfigUpdate>> {
        self.states().get(&agent_id).and_then(|s| s.good.clone())
    }

    /// A wake-up for every change of the agent's last good configuration (a bounded(1) channel:
    /// changes while the receiver is busy coalesce into one wake-up). Subscribe before reading
    /// [`AgentConfigs::good`], so no change is missed.
    pub fn subscribe(&self, agent_id: u64) -> async_channel::Receiver<()> {
        let (tx, rx) = async_channel::bounded(1);
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let list = subs.entry(agent_id).or_default();
        list.retain(|t| !t.is_closed());
        list.push(tx);
        rx
    }

    /// Wakes the agent's `config` streams.
    fn notify(&self, agent_id: u64) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = subs.get_mut(&agent_id) {
            list.retain(|t| !t.is_closed());
            for t in list.iter() {
                // Full: a wake-up is pending already.
                let _ = t.try_send(());
            }
            if list.is_empty() {
                subs.remove(&agent_id);
            }
        }
    }

    /// Opens a `config` stream's link for an agent that has `has` (what its request head said).
    pub fn open_link(
        self: &Arc<Self>,
        agent_id: u64,
        has: Delivery,
    ) -> Result<ConfigLink, TooManyStreams> {
        let mut links = self.links();
        let link = links.entry(agent_id).or_default();
        if link.streams >= MAX_CONFIG_STREAMS_PER_AGENT {
            return Err(TooManyStreams { agent_id });
        }
        link.streams += 1;
        link.has = has.clone();
        Ok(ConfigLink {
            configs: self.clone(),
            agent_id,
            has,
        })
    }

    fn states(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, AgentState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls every poll period, and the repositories [`AgentConfigs::trigger`] names at once, until
    /// `stop` closes.
    pub async fn run(self: Arc<Self>, stop: async_channel::Receiver<()>) {
        let schedule = crate::poll_schedule::Schedule {
            period: self.settings.poll_period,
            wake: &self.wake_rx,
            pending: &self.pending,
            full_requested: None,
        };
        crate::poll_schedule::run(schedule, stop, |only| {
            let me = self.clone();
            async move { me.poll(only.as_ref()).await }
        })
        .await;
    }

    /// The agents with a config project, grouped by fetch; agents whose source is unusable get
    /// their error recorded here.
    fn groups(&self) -> Vec<Group> {
        let mut groups: BTreeMap<FetchKey, Group> = BTreeMap::new();
        for (agent_id, name, project) in self.directory.config_projects() {
            match remote_of(&project) {
                Ok(remote) => {
                    let key = FetchKey {
                        repo: remote.url.id(),
                        want: Want::DefaultBranch,
                    };
                    let project_id = project_id_of(&remote.url);
                    groups
                        .entry(key.clone())
                        .or_insert_with(|| Group {
                            key,
                            remote,
                            project: project_id,
                            agents: Vec::new(),
                        })
                        .agents
                        .push((agent_id, name));
                }
                Err(e) => self.fetch_failed(agent_id, &git_mirror::redact(&project.url), &e),
            }
        }
        groups.into_values().collect()
    }

    /// One poll of every group, or of those whose repository is in `only`.
    async fn poll(self: &Arc<Self>, only: Option<&BTreeSet<RepoId>>) {
        let groups: Vec<Group> = self
            .groups()
            .into_iter()
            .filter(|g| only.is_none_or(|o| o.contains(&g.key.repo)))
            .collect();
        let mut groups = groups.into_iter();
        loop {
            // At most MAX_CONCURRENT_FETCHES fetches at once: a poll of many repositories does not
            // take every blocking thread.
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

    /// Records one group's fetch.
    fn record(&self, (group, result): (Group, Result<Fetched, git_mirror::Error>)) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let repository = group.remote.url.to_string();
        match result {
            Ok((commit, files)) => {
                for (agent_id, file) in files {
                    let name = group
                        .agents
                        .iter()
                        .find(|(id, _)| *id == agent_id)
                        .map(|(_, n)| n.as_str())
                        .unwrap_or_default();
                    self.accept(agent_id, name, &repository, &group.project, &commit, file);
                }
            }
            Err(e) => {
                *self
                    .fetch_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(fault_label(e.fault()))
                    .or_default() += 1;
                for (agent_id, _) in &group.agents {
                    self.fetch_failed(*agent_id, &repository, &e);
                }
            }
        }
    }

    /// Blocking: updates the group's mirror and reads each agent's file at the new commit.
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
        let snapshot = mirror.snapshot(update.commit)?;
        let files = group
            .agents
            .iter()
            .map(|(agent_id, name)| {
                let file = match AgentName::new(name) {
                    Ok(n) => snapshot
                        .try_read_file(&n.config_path(), self.settings.max_file_size)
                        .map_err(|e| e.to_string()),
                    Err(reason) => Err(reason),
                };
                (*agent_id, file)
            })
            .collect();
        Ok((update.commit.to_string(), files))
    }

    /// Records what a successful fetch found for one agent.
    fn accept(
        &self,
        agent_id: u64,
        name: &str,
        repository: &str,
        project: &ProjectId,
        commit: &str,
        file: Result<Option<Vec<u8>>, String>,
    ) {
        let path = AgentName::new(name)
            .map(|n| n.config_path())
            .unwrap_or_default();
        let parsed = match file {
            Ok(None) => Ok(ConfigFile::default()),
            Ok(Some(bytes)) => {
                let limits = agent_config::yaml::Limits {
                    max_bytes: usize::try_from(self.settings.max_file_size).unwrap_or(usize::MAX),
                    ..agent_config::yaml::Limits::default()
                };
                ConfigFile::parse_bytes(&bytes, &limits).map_err(|errs| {
                    errs.errors
                        .iter()
                        .map(|e| {
                            json!({
                                "kind": e.kind,
                                "commit": commit,
                                "file": path,
                                "path": e.path,
                                "line": e.line,
                                "column": e.column,
                                "message": e.message,
                            })
                        })
                        .collect::<Vec<_>>()
                })
            }
            Err(message) => Err(vec![json!({
                "kind": "read",
                "commit": commit,
                "file": path,
                "path": "",
                "line": null,
                "column": null,
                "message": message,
            })]),
        };
        let now = SystemTime::now();
        let mut changed = false;
        let mut rejected = None;
        {
            let mut states = self.states();
            let state = states.entry(agent_id).or_default();
            state.repository = repository.to_owned();
            state.commit = Some(commit.to_owned());
            state.fetched_at = Some(now);
            match parsed {
                Ok(file) => {
                    let update = ConfigUpdate::new(commit, &file, project);
                    let old = state.good.as_ref();
                    if old.map(|g| &g.fingerprint) != Some(&update.fingerprint) {
                        state.applied_at = Some(now);
                        tracing::info!(agent_id, %commit, repository, "agent configuration accepted");
                    }
                    changed = old.is_none_or(|g| g.commit != update.commit);
                    state.good = Some(Arc::new(update));
                    state.applied_commit = Some(commit.to_owned());
                    state.errors.clear();
                    state.logged = None;
                }
                Err(errors) => {
                    let logged = format!("commit:{commit}");
                    if state.logged.as_deref() != Some(logged.as_str()) {
                        let first = errors.first().cloned().unwrap_or(Value::Null);
                        tracing::warn!(
                            agent_id,
                            %commit,
                            repository,
                            errors = errors.len(),
                            first = %first,
                            "agent configuration rejected; the previous one stays in force"
                        );
                        state.logged = Some(logged);
                        rejected = Some(first_message(&first));
                    }
                    state.errors = errors;
                }
            }
        }
        if changed {
            self.notify(agent_id);
        }
        if let Some(message) = rejected {
            self.publish(Event::Config {
                agent_id,
                status: "rejected",
                commit: Some(commit.to_owned()),
                message: Some(message),
            });
        }
    }

    /// Records a fetch failure for one agent; its last state stays.
    fn fetch_failed(&self, agent_id: u64, repository: &str, e: &git_mirror::Error) {
        if self.record_fetch_failure(agent_id, repository, e) {
            self.publish(Event::Config {
                agent_id,
                status: "fetch_failed",
                commit: None,
                message: Some(e.to_string()),
            });
        }
    }

    /// [`AgentConfigs::fetch_failed`]'s state change; whether the failure is new (logged now).
    fn record_fetch_failure(&self, agent_id: u64, repository: &str, e: &git_mirror::Error) -> bool {
        let mut states = self.states();
        let state = states.entry(agent_id).or_default();
        state.repository = repository.to_owned();
        state.errors = vec![json!({
            "kind": "fetch",
            "code": e.code(),
            "fault": fault_label(e.fault()),
            "commit": state.commit,
            "message": e.to_string(),
        })];
        let logged = format!("fetch:{}", e.code());
        if state.logged.as_deref() != Some(logged.as_str()) {
            tracing::warn!(
                agent_id,
                repository,
                code = e.code(),
                fault = fault_label(e.fault()),
                error = %e,
                "agent configuration fetch failed; the last state stays"
            );
            state.logged = Some(logged);
            return true;
        }
        false
    }

    /// Polls the repositories matching a push at once (the webhook). `path_with_namespace` and
    /// `git_http_url` are GitLab's `project` fields; either may match. Returns how many repositories
    /// will be polled.
    pub fn trigger(&self, path_with_namespace: Option<&str>, git_http_url: Option<&str>) -> usize {
        let by_url = git_http_url
            .and_then(|u| RepoUrl::parse_with_credentials(u).ok())
            .map(|(u, _)| u.id());
        let path = path_with_namespace.map(|p| p.trim_matches('/').trim_end_matches(".git"));
        let mut matched = BTreeSet::new();
        for (_, _, project) in self.directory.config_projects() {
            let Ok(url) = url_of(&project) else { continue };
            let id = url.id();
            if by_url.as_ref() == Some(&id)
                || path.is_some_and(|p| !p.is_empty() && project_path(&url) == p)
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
            // Full: a wake-up is already queued and will take the pending set.
            let _ = self.wake_tx.try_send(());
        }
        n
    }

    /// Handles a push webhook: checks `token` against the shared secret (in constant time), then
    /// triggers a poll of the repository the JSON `body` names.
    pub fn webhook(&self, token: Option<&[u8]>, body: &[u8]) -> WebhookOutcome {
        let Some(secret) = &self.settings.webhook_secret else {
            return WebhookOutcome::Disabled;
        };
        let Some(token) = token else {
            return WebhookOutcome::BadSecret;
        };
        // Digests of both, compared in constant time: neither length nor content leaks by timing.
        if !TokenDigest::of_bytes(token).ct_eq(&TokenDigest::of(secret.expose())) {
            return WebhookOutcome::BadSecret;
        }
        let push: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return WebhookOutcome::BadRequest(format!("the body is not JSON: {e}")),
        };
        let project = push.get("project");
        let field = |k: &str| project.and_then(|p| p.get(k)).and_then(Value::as_str);
        let path = field("path_with_namespace");
        let url = field("git_http_url").or_else(|| field("http_url"));
        if path.is_none() && url.is_none() {
            return WebhookOutcome::BadRequest(
                "expected a push event with project.path_with_namespace or project.git_http_url"
                    .into(),
            );
        }
        match self.trigger(path, url) {
            0 => WebhookOutcome::NoMatch,
            n => {
                let git_ref = push
                    .get("ref")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                tracing::info!(
                    project = path.unwrap_or_default(),
                    git_ref,
                    repositories = n,
                    "push webhook: polling now"
                );
                WebhookOutcome::Triggered(n)
            }
        }
    }

    /// The configuration in force for `agent_id` (its last good one), if any (read by the GitOps
    /// poller, [`crate::gitops_poller`]).
    pub fn applied_config(&self, agent_id: u64) -> Option<agent_config::AgentConfig> {
        self.good(agent_id).map(|g| g.config.clone())
    }

    /// Whether `agent_id` has a config project.
    pub fn has_source(&self, agent_id: u64) -> bool {
        self.directory
            .config_projects()
            .iter()
            .any(|(id, _, _)| *id == agent_id)
    }

    /// The API's answer for one agent (`GET /api/v1/agents/{id}/config`).
    pub fn agent_json(&self, agent_id: u64) -> Value {
        let states = self.states();
        let Some(s) = states.get(&agent_id) else {
            let status = if self.has_source(agent_id) {
                "pending"
            } else {
                "not_configured"
            };
            return json!({
                "agent_id": agent_id, "status": status, "repository": null, "commit": null,
                "fetched_at": null, "applied_commit": null, "applied_at": null,
                "errors": [], "config": null,
            });
        };
        let status = match (&s.good, s.errors.is_empty()) {
            (_, false) => "error",
            (Some(_), true) => "ok",
            (None, true) => "pending",
        };
        json!({
            "agent_id": agent_id,
            "status": status,
            "repository": s.repository,
            "commit": s.commit,
            "fetched_at": s.fetched_at.map(crate::rfc3339::format),
            "applied_commit": s.applied_commit,
            "applied_at": s.applied_at.map(crate::rfc3339::format),
            "errors": s.errors,
            "config": s.good.as_ref().map(|g| serde_json::to_value(&g.config).unwrap_or(Value::Null)),
            "fingerprint": s.good.as_ref().map(|g| g.fingerprint.to_string()),
            "delivery": self.delivery_json(agent_id, s.good.as_deref()),
        })
    }

    /// What the agent's open `config` streams know it has: `null` when none is open.
    fn delivery_json(&self, agent_id: u64, good: Option<&ConfigUpdate>) -> Value {
        let links = self.links();
        let Some(link) = links.get(&agent_id) else {
            return Value::Null;
        };
        json!({
            "streams": link.streams,
            "commit": link.has.commit(),
            "up_to_date": good.is_none_or(|g| link.has.is_up_to_date(g)),
            "delivered_at": link.delivered_at.map(crate::rfc3339::format),
        })
    }

    /// Prometheus text: polls, fetch failures by fault, agents whose config has errors.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kas_agent_config_polls_total Fetches of config projects (one per repository per poll).\n\
             # TYPE kas_agent_config_polls_total counter\n\
             kas_agent_config_polls_total {}",
            self.polls.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kas_agent_config_fetch_failures_total Failed config project fetches, by whose fault.\n\
             # TYPE kas_agent_config_fetch_failures_total counter"
        );
        for (fault, n) in self
            .fetch_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "kas_agent_config_fetch_failures_total{{fault=\"{fault}\"}} {n}"
            );
        }
        let with_errors = self
            .states()
            .values()
            .filter(|s| !s.errors.is_empty())
            .count();
        let _ = writeln!(
            out,
            "# HELP kas_agent_configs_with_errors Agents whose configuration currently has errors.\n\
             # TYPE kas_agent_configs_with_errors gauge\n\
             kas_agent_configs_with_errors {with_errors}"
        );
        let (streams, up_to_date) = {
            let states = self.states();
            let links = self.links();
            let streams: u64 = links.values().map(|l| u64::from(l.streams)).sum();
            let up_to_date = links
                .iter()
                .filter(|(id, l)| {
                    states
                        .get(id)
                        .and_then(|s| s.good.as_deref())
                        .is_none_or(|g| l.has.is_up_to_date(g))
                })
                .count();
            (streams, up_to_date)
        };
        let _ = writeln!(
            out,
            "# HELP kas_agent_config_sent_total Configurations sent to agents on config streams.\n\
             # TYPE kas_agent_config_sent_total counter\n\
             kas_agent_config_sent_total {}\n\
             # HELP kas_agent_config_streams Open config streams.\n\
             # TYPE kas_agent_config_streams gauge\n\
             kas_agent_config_streams {streams}\n\
             # HELP kas_agent_configs_up_to_date Agents with an open config stream that have their last good configuration.\n\
             # TYPE kas_agent_configs_up_to_date gauge\n\
             kas_agent_configs_up_to_date {up_to_date}",
            self.sent.load(Ordering::Relaxed)
        );
        out
    }
}

/// The message of a JSON error record, for an event.
fn first_message(error: &Value) -> String {
    let message = error["message"].as_str().unwrap_or("invalid configuration");
    match error["line"].as_u64() {
        Some(line) => format!("line {line}: {message}"),
        None => message.to_owned(),
    }
}

pub(crate) fn fault_label(fault: git_mirror::Fault) -> &'static str {
    match fault {
        git_mirror::Fault::Remote => "remote",
        git_mirror::Fault::Credentials => "credentials",
        git_mirror::Fault::Content => "content",
        git_mirror::Fault::Request => "request",
        git_mirror::Fault::Local => "local",
    }
}

/// The repository URL of a config project (credentials in the URL are dropped here).
pub(crate) fn url_of(project: &ConfigProject) -> Result<RepoUrl, git_mirror::Error> {
    let url = project.url.trim();
    if url.contains("://") {
        RepoUrl::parse_with_credentials(url).map(|(u, _)| u)
    } else {
        RepoUrl::file(Path::new(url))
    }
}

/// The remote with its credentials; the token file is read here, so a rotated token is used at once.
pub(crate) fn remote_of(project: &ConfigProject) -> Result<Remote, git_mirror::Error> {
    let url = project.url.trim();
    let mut remote = if url.contains("://") {
        Remote::parse(url)?
    } else {
        Remote::new(RepoUrl::file(Path::new(url))?)
    };
    if let Some(file) = &project.token_file {
        let token =
            std::fs::read_to_string(file).map_err(|e| git_mirror::Error::CredentialFile {
                url: remote.url.to_string(),
                detail: format!("{}: {e}", file.display()),
            })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(git_mirror::Error::CredentialFile {
                url: remote.url.to_string(),
                detail: format!("{}: empty", file.display()),
            });
        }
        remote.auth = Auth::Basic {
            username: project.username.clone().unwrap_or_else(|| "oauth2".into()),
            token: Secret::new(token),
        };
    } else if let Some(file) = &project.header_file {
        remote.auth = Auth::HeaderFile(file.clone());
    }
    if let Some(ca) = &project.ca_file {
        remote.ca_file = Some(ca.clone());
    }
    Ok(remote)
}

/// The project path of a repository URL: its path without slashes around it and without `.git`
/// (`https://gitlab.example.com/group/config.git` → `group/config`).
pub(crate) fn project_path(url: &RepoUrl) -> String {
    url.path()
        .trim_matches('/')
        .trim_end_matches(".git")
        .to_owned()
}

/// The [`ProjectId`] manifest projects default to: the project path, else the URL.
fn project_id_of(url: &RepoUrl) -> ProjectId {
    ProjectId::new(&project_path(url))
        .or_else(|_| ProjectId::new(&url.to_string()))
        .unwrap_or_else(|_| ProjectId::new("config").unwrap_or_else(|_| unreachable!()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::AgentsFile;

    fn configs(projects: &[(u64, &str)], secret: Option<&str>) -> Arc<AgentConfigs> {
        let mut yaml = String::from("agents:\n");
        for (id, url) in projects {
            yaml.push_str(&format!(
                "- id: {id}\n  name: agent-{id}\n  token_sha256: {}\n  config_project: {{url: '{url}'}}\n",
                TokenDigest::of(&format!("token-{id}")).to_hex()
            ));
        }
        let file = AgentsFile::from_yaml_str(&yaml, Path::new("agents.yaml")).unwrap();
        AgentConfigs::new(
            Settings {
                poll_period: Duration::from_secs(300),
                fetch_timeout: Duration::from_secs(5),
                max_file_size: 1024,
                mirrors_dir: PathBuf::from("unused"),
                webhook_secret: secret.map(Secret::new),
            },
            AgentDirectory::File(Arc::new(file)),
        )
    }

    #[test]
    fn agents_on_one_repository_share_one_fetch() {
        let c = configs(
            &[
                (1, "https://gitlab.example.com/group/config.git"),
                (2, "https://oauth2:tok@gitlab.example.com/group/config.git"),
                (3, "https://GITLAB.example.com/group/config.git"),
                (4, "https://gitlab.example.com/group/other.git"),
            ],
            None,
        );
        let groups = c.groups();
        assert_eq!(
            groups.len(),
            2,
            "{:?}",
            groups.iter().map(|g| g.key.to_string()).collect::<Vec<_>>()
        );
        let sizes: Vec<usize> = groups.iter().map(|g| g.agents.len()).collect();
        assert!(sizes.contains(&3) && sizes.contains(&1), "{sizes:?}");
        let shared = groups.iter().find(|g| g.agents.len() == 3).unwrap();
        assert_eq!(shared.project.as_str(), "group/config");
    }

    #[test]
    fn broken_commits_keep_the_last_good_config_and_are_logged_once() {
        let c = configs(&[(1, "https://gitlab.example.com/group/config.git")], None);
        let project = ProjectId::new("group/config").unwrap();
        let repo = "https://gitlab.example.com/group/config.git";
        let good = b"observability: {logging: {level: debug}}\n".to_vec();
        c.accept(1, "agent-1", repo, &project, "c1", Ok(Some(good.clone())));
        let v = c.agent_json(1);
        assert_eq!(v["status"], "ok");
        let applied_at = v["applied_at"].clone();
        c.accept(
            1,
            "agent-1",
            repo,
            &project,
            "c2",
            Ok(Some(b"bogus: 1\n".to_vec())),
        );
        let v = c.agent_json(1);
        assert_eq!(v["status"], "error");
        assert_eq!(v["errors"][0]["path"], "bogus");
        assert_eq!(v["errors"][0]["line"], 1);
        assert_eq!(v["applied_commit"], "c1");
        assert_eq!(v["config"]["observability"]["logging"]["level"], "debug");
        assert_eq!(
            c.states().get(&1).unwrap().logged.as_deref(),
            Some("commit:c2")
        );
        // An oversized file is an error of that commit, too.
        c.accept(
            1,
            "agent-1",
            repo,
            &project,
            "c3",
            Ok(Some(vec![b'#'; 2048])),
        );
        assert_eq!(c.agent_json(1)["errors"][0]["commit"], "c3");
        // A missing file is an empty configuration; the content changed, so applied_at moves on.
        c.accept(1, "agent-1", repo, &project, "c4", Ok(None));
        let v = c.agent_json(1);
        assert_eq!(v["status"], "ok");
        assert_eq!(v["config"]["observability"]["logging"]["level"], "info");
        assert_eq!(c.states().get(&1).unwrap().logged, None);
        assert!(v["applied_at"].is_string() && applied_at.is_string());
        // A fetch failure keeps everything and is shown with its fault.
        let e = git_mirror::Error::RepoNotFound {
            url: repo.into(),
            detail: "gone".into(),
        };
        c.fetch_failed(1, repo, &e);
        let v = c.agent_json(1);
        assert_eq!(v["status"], "error");
        assert_eq!(v["errors"][0]["fault"], "remote");
        assert_eq!(v["errors"][0]["commit"], "c4");
        assert_eq!(v["applied_commit"], "c4");
        assert!(
            c.render_metrics()
                .contains("kas_agent_configs_with_errors 1")
        );
    }

    #[test]
    fn webhook_checks_the_secret_and_matches_repositories() {
        let c = configs(
            &[(1, "https://user:pw@gitlab.example.com/group/config.git")],
            Some("hunter2"),
        );
        let body = br#"{"ref":"refs/heads/main","project":{"path_with_namespace":"group/config"}}"#;
        assert_eq!(c.webhook(None, body), WebhookOutcome::BadSecret);
        assert_eq!(c.webhook(Some(b"hunter"), body), WebhookOutcome::BadSecret);
        assert_eq!(
            c.webhook(Some(b"hunter22"), body),
            WebhookOutcome::BadSecret
        );
        assert_eq!(
            c.webhook(Some(b"hunter2"), body),
            WebhookOutcome::Triggered(1)
        );
        let by_url =
            br#"{"project":{"git_http_url":"https://gitlab.example.com/group/config.git"}}"#;
        assert_eq!(
            c.webhook(Some(b"hunter2"), by_url),
            WebhookOutcome::Triggered(1)
        );
        let other = br#"{"project":{"path_with_namespace":"group/other"}}"#;
        assert_eq!(c.webhook(Some(b"hunter2"), other), WebhookOutcome::NoMatch);
        assert!(matches!(
            c.webhook(Some(b"hunter2"), b"{}"),
            WebhookOutcome::BadRequest(_)
        ));
        assert!(matches!(
            c.webhook(Some(b"hunter2"), b"[1"),
            WebhookOutcome::BadRequest(_)
        ));
        let off = configs(&[(1, "https://gitlab.example.com/group/config.git")], None);
        assert_eq!(off.webhook(Some(b"x"), body), WebhookOutcome::Disabled);
    }
}
