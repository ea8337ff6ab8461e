//! GitOps in agentk: one sync worker per manifest project of the applied configuration
//! (`gitops.manifest_projects`), started and stopped as the configuration changes.
//!
//! ```text
//!  config (watch: Option<Arc<AgentConfig>>) ──▶ GitopsWorkers ──▶ worker per project
//!  connection (watch: Option<Connection>) ──────────────────────▶   ├─ link: the `gitops` stream to kas
//!                                                                   ├─ gitops::Sync (the decision)
//!                                                                   └─ executor: server-side apply, prune, inventory
//! ```
//!
//! - A project is identified by its `id`; a worker whose project's settings change is restarted
//!   (its new `Sync` reads the inventory from the cluster, so nothing is lost); a project that
//!   leaves the configuration has its worker stopped (its objects stay, as with GitLab).
//! - [`ConnSource`] is the agent's current tunnel connection (`None` while disconnected); workers
//!   reopen their streams on every new connection and keep the last set in force meanwhile.
//!
//! Wiring in agentk (see the crate's `agent` module): publish the current connection with a
//! `tokio::sync::watch::Sender<Option<Connection>>` after each handshake, publish the applied
//! configuration with a `watch::Sender<Option<Arc<AgentConfig>>>`, and spawn
//! `GitopsWorkers::new(client, settings).run(conn_rx, config_rx)`.

pub mod executor;
pub mod link;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent_config::{AgentConfig, ManifestProject};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The agent's current tunnel connection (`None` while disconnected).
pub type ConnSource = watch::Receiver<Option<runtime_tokio::Connection>>;
/// The configuration in force (`None` before the first one).
pub type ConfigSource = watch::Receiver<Option<Arc<AgentConfig>>>;

/// How workers sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The agent's name or id (part of every inventory id).
    pub agent: String,
    /// Where inventories live: the agent's own namespace.
    pub inventory_namespace: String,
    /// Server-side apply field manager.
    pub field_manager: String,
    /// Server-side apply `force`.
    pub force_conflicts: bool,
    /// Drift correction: a successful round is repeated after this long.
    pub resync_period: Duration,
}

impl WorkerSettings {
    /// agentk's defaults for `agent`: inventories in `$POD_NAMESPACE` (else `gitlab-agent`), field
    /// manager `agentk`, force on, drift correction every 5 minutes.
    pub fn for_agent(agent: &str) -> Self {
        WorkerSettings {
            agent: agent.to_string(),
            inventory_namespace: std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "gitlab-agent".into()),
            field_manager: "agentk".into(),
            force_conflicts: true,
            resync_period: Duration::from_secs(300),
        }
    }
}

/// Starts and stops sync workers as the configuration changes.
pub struct GitopsWorkers {
    client: kube::Client,
    settings: Arc<WorkerSettings>,
}

struct Running {
    project: ManifestProject,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitopsWorkers {
    /// Workers applying with `client`.
    pub fn new(client: kube::Client, settings: WorkerSettings) -> Self {
        GitopsWorkers {
            client,
            settings: Arc::new(settings),
        }
    }

    /// Runs until `config_rx`'s sender is dropped (then every worker stops).
    pub async fn run(self, conn_source: ConnSource, mut config_rx: ConfigSource) {
        let mut workers: BTreeMap<String, Running> = BTreeMap::new();
        // Every iteration waits for one configuration change.
        loop {
            let projects: Vec<ManifestProject> = config_rx
                .borrow_and_update()
                .as_ref()
                .map(|c| c.gitops.manifest_projects.clone())
                .unwrap_or_default();
            self.reconcile(&mut workers, projects, &conn_source);
            if config_rx.changed().await.is_err() {
                break;
            }
        }
        tracing::info!(workers = workers.len(), "gitops workers stopping");
    }

    fn reconcile(
        &self,
        workers: &mut BTreeMap<String, Running>,
        projects: Vec<ManifestProject>,
        conns: &ConnSource,
    ) {
        let mut wanted: BTreeMap<String, ManifestProject> = BTreeMap::new();
        for p in projects {
            let Some(id) = p.id.as_ref().map(|i| i.as_str().to_string()) else {
                continue;
            };
            if wanted.contains_key(&id) {
                tracing::warn!(project = %id, "gitops: project listed twice; the first entry is used");
                continue;
            }
            wanted.insert(id, p);
        }
        workers.retain(|id, running| {
            let keep = wanted
                .get(id)
                .is_some_and(|p| *p == running.project && !running.task.is_finished());
            if !keep {
                tracing::info!(project = %id, "gitops worker stopped");
            }
            keep
        });
        for (id, project) in wanted {
            if workers.contains_key(&id) {
                continue;
            }
            let task = tokio::spawn(worker::run(
                project.clone(),
                self.settings.clone(),
                self.client.clone(),
                conns.clone(),
                rand::random(),
            ));
            workers.insert(id, Running { project, task });
        }
    }
}
