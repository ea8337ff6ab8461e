//! What every task of one running kas shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::agent_log::AgentLog;
use crate::config::RoutingConfig;
use crate::directory::AgentDirectory;
use crate::events::{EventHub, Presence, SubscriberLimits};
use crate::metrics::{Metrics, Snapshot};
use crate::mirrors::Mirrors;
use crate::pool::Spawner;
use crate::registry::Registry;
use crate::users::UserGate;

/// The registry of live agent connections, keyed by `runtime_smol` connection handles.
pub type AgentRegistry = Registry<runtime_smol::Connection>;

/// Shared state of one running kas.
#[derive(Debug)]
pub struct KasState {
    /// Live agent connections and the requests waiting for them.
    pub registry: AgentRegistry,
    /// Which agents exist.
    pub directory: AgentDirectory,
    /// HTTP API users.
    pub users: UserGate,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// What agents do wrong, rate-limited and counted.
    pub agent_log: AgentLog,
    /// Deadlines for requests through tunnels.
    pub routing: RoutingConfig,
    /// Spawns tasks on kas's executor.
    pub spawner: Spawner,
    /// A short random id of this kas process, the prefix of connection ids.
    pub instance: String,
    /// Every agent's view mirror (kept across reconnects).
    pub mirrors: Mirrors,
    /// Events for subscribers (views, objects, agents).
    pub events: EventHub,
    /// Which agents have a live connection (publishes `agent` events).
    pub presence: Presence,
    /// Views, events and the dashboard are readable without a token (`api_listener.public_read`).
    pub public_read: bool,
    /// Agent configurations polled from Git (`None` when not started, e.g. in unit tests).
    pub agent_config: Option<Arc<crate::agent_config::AgentConfigs>>,
    /// GitOps manifest projects polled from Git (`None` when not started).
    pub gitops: Option<Arc<crate::gitops_poller::GitopsPoller>>,
    /// Which token authenticated each agent connection (revocation closes them).
    pub tokens: crate::connection_tokens::ConnectionTokens,
    /// Counters of the access decisions (`kas_access_*`).
    pub access_metrics: crate::access::AccessMetrics,
    /// Several replicas on Redis: the tracker and the private API client (`None`: one kas alone).
    pub replicas: Option<crate::peer::Replicas>,
    /// Feeds WebSockets upgraded on the API port (`/api/v1/tunnel`) to the agent listener's tunnel
    /// server (set once it listens).
    pub tunnel_intake: std::sync::OnceLock<runtime_smol::Intake>,
    /// The audit log of user requests and upgraded sessions.
    pub audit: Arc<crate::audit::AuditLog>,
    /// Upgraded sessions (exec, attach, port-forward): counts, limits, shutdown signal.
    pub upgrades: Arc<crate::api::upgrade::Sessions>,
    shutting_down: AtomicBool,
    auth_backend_ok: AtomicBool,
    next_request: AtomicU64,
}

impl KasState {
    /// New state, with an empty event hub and no mirrored views (see [`KasState::with_public_read`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        registry: AgentRegistry,
        directory: AgentDirectory,
        users: UserGate,
        metrics: Arc<Metrics>,
        routing: RoutingConfig,
        spawner: Spawner,
        instance: String,
        event_limits: SubscriberLimits,
    ) -> Self {
        let events = EventHub::with_limits(crate::events::DEFAULT_QUEUE_DEPTH, event_limits);
        KasState {
            registry,
            directory,
            users,
            agent_log: AgentLog::new(metrics.clone()),
            metrics,
            routing,
            spawner,
            instance,
            mirrors: Mirrors::new(events.clone(), crate::mirrors::DEFAULT_MAX_AGENTS),
            events,
            presence: Presence::new(),
            public_read: false,
            agent_config: None,
            gitops: None,
            tokens: Default::default(),
            access_metrics: Default::default(),
            replicas: None,
            tunnel_intake: std::sync::OnceLock::new(),
            audit: Arc::new(crate::audit::AuditLog::disabled()),
            upgrades: Arc::new(crate::api::upgrade::Sessions::new(Default::default())),
            shutting_down: AtomicBool::new(false),
            auth_backend_ok: AtomicBool::new(true),
            next_request: AtomicU64::new(1),
        }
    }

    /// Sets the agent configuration poller.
    pub fn with_agent_config(mut self, configs: Arc<crate::agent_config::AgentConfigs>) -> Self {
        configs.attach_events(self.events.clone());
        self.agent_config = Some(configs);
        self
    }

    /// Sets the GitOps manifest poller.
    pub fn with_gitops(mut self, poller: Arc<crate::gitops_poller::GitopsPoller>) -> Self {
        self.gitops = Some(poller);
        self
    }

    /// Makes this kas one replica of several ([`crate::peer`], [`crate::tracker`]).
    pub fn with_replicas(mut self, replicas: crate::peer::Replicas) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// Whether Redis answered the last call (`None`: no replicas configured).
    pub fn redis_up(&self) -> Option<bool> {
        self.replicas.as_ref().map(|r| r.tracker.is_up())
    }

    /// Sets whether views, events and the dashboard are readable without a token.
    pub fn with_public_read(mut self, public_read: bool) -> Self {
        self.public_read = public_read;
        self
    }

    /// Sets the audit log.
    pub fn with_audit(mut self, audit: crate::audit::AuditLog) -> Self {
        self.audit = Arc::new(audit);
        self
    }

    /// Sets the limits of upgraded sessions.
    pub fn with_upgrade_limits(mut self, limits: crate::api::upgrade::UpgradeLimits) -> Self {
        self.upgrades = Arc::new(crate::api::upgrade::Sessions::new(limits));
        self
    }

    /// A fresh HTTP request id (for logs).
    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Marks shutdown as begun; returns whether it already was.
    pub fn begin_shutdown(&self) -> bool {
        self.shutting_down.swap(true, Ordering::SeqCst)
    }

    /// Whether the agent authentication backend answered last time it was asked (or its files could
    /// be read at the last check).
    pub fn auth_backend_ok(&self) -> bool {
        self.auth_backend_ok.load(Ordering::Relaxed)
    }

    /// Records whether the authentication backend is usable.
    pub fn set_auth_backend_ok(&self, ok: bool) {
        let was = self.auth_backend_ok.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!("agent authentication backend usable again");
            } else {
                tracing::warn!("agent authentication backend not usable");
            }
        }
    }

    /// The current-state gauges for `/metrics`.
    pub fn snapshot(&self) -> Snapshot {
        let connections = self.registry.connections();
        let stats = self.registry.stats();
        let mut agents: Vec<u64> = connections.iter().map(|c| c.agent_id).collect();
        agents.sort_unstable();
        agents.dedup();
        let open_streams = connections
            .iter()
            .map(|c| {
                let (ours, theirs) = c.handle.open_streams();
                u64::from(ours) + u64::from(theirs)
            })
            .sum();
        Snapshot {
            agents_connected: agents.len() as u64,
            connections: connections.len() as u64,
            open_streams,
            pending_requests: stats.router.pending as u64,
            requests_rerouted: stats.rerouted,
            views_agents: self.mirrors.agent_count() as u64,
            event_subscribers: self.events.subscribers() as u64,
            event_subscribers_dropped: self.events.dropped_slow(),
        }
    }
}
