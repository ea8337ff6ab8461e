//! kas's configuration file (`kas.yaml`).
//!
//! Every field has a default, so an empty file (or no file) is a valid configuration; a file only lists
//! what differs. Unknown keys are errors, so a typo does not silently fall back to a default.
//!
//! ```yaml
//! state_dir: .                      # embedded auth files live here
//! agent_listener:
//!   address: 0.0.0.0:8150
//!   tls: { cert_file: kas.crt, key_file: kas.key }   # client_ca_file: ca.crt (optional)
//!   backlog: 4096                   # listen(2) backlog (the kernel caps it at net.core.somaxconn)
//!   replica_id: kas-0               # this replica's name in ACCEPT; default the host name
//!   agent_connections: 1            # connections to distinct replicas per agent (K; 2 with replicas)
//!   max_connection_age: 2h          # GOAWAY after this (±10 % jitter); 0s: off
//! api_listener:
//!   address: 127.0.0.1:8080
//!   public_read: false              # true: views, events and the dashboard need no token
//!   backlog: 4096
//! events: { max_subscribers: 1000, max_per_source: 64, max_per_user: 32 }
//! agent_auth:
//!   backend: embedded               # or: { agents_file: agents.yaml }
//!                                   # or: { gitlab: { url: https://gitlab.example.com, secret_file: .gitlab_kas_secret,
//!                                   #   repositories: { token_file: read-repository.token } } }
//!                                   #   (repositories: clone each agent's config project from GitLab over HTTP)
//! users:
//!   file: users.yaml
//! routing: { pending_request_deadline: 20s, max_pending_per_agent: 256, max_pending_total: 16384 }
//! keepalive: { interval: 20s, idle_timeout: 60s, handshake_timeout: 10s }
//! limits:
//!   max_streams_per_connection: 256
//!   max_frame_size: 16384           # 16384..=16777215 (PROTOCOL.md §6)
//!   flood: { window: 10s, pings: 100, rapid_resets: 1000, empty_data: 1000,
//!            window_updates: 100000, unknown_frames: 1000, max_queued_answers: 262144 }
//! rate_limits:
//!   agent_auth_failures: { max_failures: 10, window: 1m, max_sources: 10000 }
//!   user_auth_failures: { max_failures: 20, window: 1m, max_sources: 10000 }
//! log: { level: info, format: text }   # level: a level, or target=level directives
//!                                     # separated by commas (info,kas=debug)
//! agent_configuration:                # each agent's config.yaml from its config project (agents file:
//!   poll_period: 5m                   #   `config_project: {url, token_file}` per agent)
//!   fetch_timeout: 30s
//!   max_file_size: 262144
//!   state_dir: git-mirrors            # default <state_dir>/git-mirrors
//!   webhook_secret_file: webhook.secret   # POST /api/v1/webhooks/git (X-Gitlab-Token); unset: off
//! upgrades: { max_sessions_per_agent: 4096, idle_timeout: 4h }   # exec, attach, cp, port-forward
//! audit: { path: audit.jsonl, max_file_size: 0 }   # `-`: stdout; unset: off; reopened on SIGHUP
//! recording: { path: traffic.jsonl, max_file_size: 67108864, sample_rate: 1.0 }   # unset: off;
//!                                     # `kas --record FILE` too; replay: `simulator run --replay FILE`
//! gitops:                             # manifest projects of the agents' configurations
//!   poll_period: 20s                  # the push webhook also polls the named repository at once
//!   fetch_timeout: 30s
//!   max_manifest_file_size: 5242880   # per file; and in all:
//!   max_total_manifest_file_size: 20971520
//!   max_number_of_files: 1000
//!   state_dir: gitops-mirrors         # default <state_dir>/gitops-mirrors
//! ```
//!
//! Durations are written as a number and a unit (`500ms`, `20s`, `5m`, `1h`, or combined: `1m30s`).
//! Relative paths are resolved against the directory of the file they were loaded from
//! ([`Config::load`]), so a state directory holding `kas.yaml` and the files it names can be moved as a
//! whole. [`Config::validate`] checks what loading cannot: that named files exist and values make sense.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::files::write_atomic;

/// The whole kas configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory of the embedded auth backend's files (`agents.yaml`); default `.` (the config file's
    /// directory once loaded).
    pub state_dir: PathBuf,
    /// Where agents (agentk) connect.
    pub agent_listener: AgentListenerConfig,
    /// kas's HTTP API (`/k8s-proxy`, `/api/v1`, health and metrics).
    pub api_listener: ApiListenerConfig,
    /// How agents are authenticated.
    pub agent_auth: AgentAuthConfig,
    /// Who may use the HTTP API, and reach which agents.
    pub users: UsersConfig,
    /// Event streams (Server-Sent Events) of the HTTP API.
    pub events: EventsConfig,
    /// Requests waiting for an agent.
    pub routing: RoutingConfig,
    /// Liveness of agent connections.
    pub keepalive: KeepaliveConfig,
    /// Per-connection protocol limits.
    pub limits: LimitsConfig,
    /// Limits on failed authentications per source address and credential.
    pub rate_limits: RateLimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Agent configuration files read from Git ([`crate::agent_config`]).
    pub agent_configuration: AgentConfigurationConfig,
    /// GitOps manifest projects read from Git ([`crate::gitops_poller`]).
    pub gitops: GitopsConfig,
    /// Several kas replicas on one Redis ([`crate::tracker`], [`crate::peer`]); unset: one kas alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasConfig>,
    /// Upgraded sessions through `/k8s-proxy` (exec, attach, cp, port-forward).
    pub upgrades: UpgradesConfig,
    /// The audit log of proxied requests and upgraded sessions ([`crate::audit`]).
    pub audit: AuditConfig,
    /// The traffic recording for replay in the simulator ([`crate::recording`]); off by default.
    pub recording: RecordingConfig,
}

/// The traffic recording ([`crate::recording`]): what kas saw, without secrets, for
/// `simulator run --replay FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// The file (relative to the config file; replaced at start); unset: no recording.
    pub path: Option<PathBuf>,
    /// Rotate at this many bytes (the previous part kept as `<path>.1`); 0: never. Default 64 MiB.
    pub max_file_size: u64,
    /// Fraction of agents recorded, in (0, 1] (each agent whole or not at all); default 1.
    pub sample_rate: SampleRate,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_file_size: 64 * 1024 * 1024,
            sample_rate: SampleRate(1.0),
        }
    }
}

/// A fraction in (0, 1] (compared by its bits, so the configuration stays `Eq`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SampleRate(pub f64);

impl PartialEq for SampleRate {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for SampleRate {}

/// Upgraded sessions (`kubectl exec`, `attach`, `cp`, `port-forward`; [`crate::api::upgrade`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradesConfig {
    /// Most concurrent sessions per agent; beyond, 429; default 4096. Each session holds one tunnel
    /// stream, so `limits.max_streams_per_connection` bounds them per connection too.
    pub max_sessions_per_agent: usize,
    /// A session with no byte in either direction this long is ended; default `4h`.
    #[serde(with = "duration_format")]
    pub idle_timeout: Duration,
}

impl Default for UpgradesConfig {
    fn default() -> Self {
        let d = crate::api::upgrade::UpgradeLimits::default();
        Self {
            max_sessions_per_agent: d.max_sessions_per_agent,
            idle_timeout: d.idle_timeout,
        }
    }
}

/// The audit log: one JSON line per proxied request and per upgraded session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Where records go: a file path (relative to the config file), `-` for stdout; unset: no audit
    /// log. The file is reopened on SIGHUP (for logrotate).
    pub path: Option<PathBuf>,
    /// Rotate the file when it reaches this many bytes (renamed to `<path>.1`, replacing an older
    /// one); 0 (default): never.
    pub max_file_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("."),
            agent_listener: AgentListenerConfig::default(),
            api_listener: ApiListenerConfig::default(),
            agent_auth: AgentAuthConfig::default(),
            users: UsersConfig::default(),
            events: EventsConfig::default(),
            routing: RoutingConfig::default(),
            keepalive: KeepaliveConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            log: LogConfig::default(),
            agent_configuration: AgentConfigurationConfig::default(),
            gitops: GitopsConfig::default(),
            upgrades: UpgradesConfig::default(),
            audit: AuditConfig::default(),
            recording: RecordingConfig::default(),
            replicas: None,
        }
    }
}

/// One replica of several: the tracker on Redis and the private kas-to-kas API (docs/replicas.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicasConfig {
    /// Redis, e.g. `redis://127.0.0.1:6379/0`.
    pub redis_url: String,
    /// Prefix of every Redis key; default `kas`.
    pub key_prefix: String,
    /// This replica's id, unique among the replicas sharing the Redis (default 1).
    pub replica_id: u32,
    /// Where the private kas-to-kas API listens (always TLS); default `0.0.0.0:8155`.
    pub private_address: SocketAddr,
    /// The host other replicas dial to reach this one (the private API's URL is
    /// `https://<advertise_host>:<port>`); default `127.0.0.1`.
    pub advertise_host: String,
    /// Certificate and key of the private API; default: the agent listener's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFilesConfig>,
    /// CA (PEM) the private API's certificates of the other replicas are verified against.
    pub ca_file: PathBuf,
    /// The name verified in the other replicas' certificates; default `localhost`.
    pub server_name: String,
    /// File holding the secret every replica shares (never a user's or agent's token).
    pub shared_secret_file: PathBuf,
    /// How long routing looks for a holder of an agent (Redis lookup, dialling a replica) before it
    /// moves on to the next one; default 2s.
    #[serde(with = "duration_format")]
    pub find_timeout: Duration,
    /// How often this replica re-publishes its agents; default 10s.
    #[serde(with = "duration_format")]
    pub refresh_period: Duration,
    /// How long a published entry lives without a refresh; default 30s (a crashed replica's entries
    /// are ignored after it, and removed by the other replicas' garbage collection).
    #[serde(with = "duration_format")]
    pub entry_ttl: Duration,
    /// Shedding: a replica holding more than its share of agent connections drains some with
    /// GOAWAY ([`crate::balance`]); on by default.
    pub balance: BalanceConfig,
}

/// A finite, non-negative number of the configuration ([`Config::validate`] checks it), comparable
/// for equality.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl Eq for Ratio {}

/// `replicas.balance`: the fields of `protocol::routing::balance::BalancePolicy` (the maximum
/// connection age is `agent_listener.max_connection_age`).
///
/// ```yaml
/// balance: { enabled: true, tolerance: 1.1, target: 1.0, interval: 10s, max_step_fraction: 0.05 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalanceConfig {
    /// Shed at all; default true.
    pub enabled: bool,
    /// Shed while holding more than this multiple of the fair share (≥ 1); default 1.1.
    pub tolerance: Ratio,
    /// Shed down to this multiple of the fair share (1 ≤ target ≤ tolerance); default 1.0.
    pub target: Ratio,
    /// At most one shedding step per interval; default 10s.
    #[serde(with = "duration_format")]
    pub interval: Duration,
    /// A step drains at most this fraction of the connections held (at least one; 0 < f ≤ 1);
    /// default 0.05.
    pub max_step_fraction: Ratio,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        let p = protocol::routing::balance::BalancePolicy::default();
        Self {
            enabled: true,
            tolerance: Ratio(p.tolerance),
            target: Ratio(p.target),
            interval: p.interval,
            max_step_fraction: Ratio(p.max_step_fraction),
        }
    }
}

impl BalanceConfig {
    /// The policy (no maximum age: kas retires old connections itself, `agent_listener`).
    pub fn policy(&self) -> protocol::routing::balance::BalancePolicy {
        protocol::routing::balance::BalancePolicy {
            tolerance: self.tolerance.0,
            target: self.target.0,
            interval: self.interval,
            max_step_fraction: self.max_step_fraction.0,
            max_connection_age: None,
            ..protocol::routing::balance::BalancePolicy::default()
        }
    }
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "kas".into(),
            replica_id: 1,
            private_address: SocketAddr::from(([0, 0, 0, 0], 8155)),
            advertise_host: "127.0.0.1".into(),
            tls: None,
            ca_file: PathBuf::from("ca.pem"),
            server_name: "localhost".into(),
            shared_secret_file: PathBuf::from("replicas.secret"),
            find_timeout: Duration::from_secs(2),
            refresh_period: Duration::from_secs(10),
            entry_ttl: Duration::from_secs(30),
            balance: BalanceConfig::default(),
        }
    }
}

/// GitOps: the manifest projects of every agent's configuration, polled by kas
/// ([`crate::gitops_poller`]); one fetch per repository and ref serves every agent using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitopsConfig {
    /// How often every manifest project is polled; default `20s` (GitLab's). The push webhook
    /// triggers a poll of the named repository at once.
    #[serde(with = "duration_format")]
    pub poll_period: Duration,
    /// Whole-fetch timeout; default `30s`.
    #[serde(with = "duration_format")]
    pub fetch_timeout: Duration,
    /// Largest manifest file, in bytes; default 5 MiB (GitLab's).
    pub max_manifest_file_size: u64,
    /// Most bytes of all the files a project selects; default 20 MiB (GitLab's).
    pub max_total_manifest_file_size: u64,
    /// Most files a project selects; default 1000.
    pub max_number_of_files: u32,
    /// Where the manifest mirrors live; default `<state_dir>/gitops-mirrors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
}

impl Default for GitopsConfig {
    fn default() -> Self {
        Self {
            poll_period: Duration::from_secs(20),
            fetch_timeout: Duration::from_secs(30),
            max_manifest_file_size: 5 << 20,
            max_total_manifest_file_size: 20 << 20,
            max_number_of_files: 1000,
            state_dir: None,
        }
    }
}

impl Config {
    /// The directory of the manifest project mirrors.
    pub fn gitops_mirrors_dir(&self) -> PathBuf {
        self.gitops
            .state_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("gitops-mirrors"))
    }
}

/// Agent configuration from Git: each agent's `.gitlab/agents/<name>/config.yaml` on its config
/// project's default branch, polled by kas ([`crate::agent_config`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfigurationConfig {
    /// How often every config project is polled; default `5m` (GitLab's 300 s). A push webhook
    /// (`POST /api/v1/webhooks/git`) triggers a poll at once.
    #[serde(with = "duration_format")]
    pub poll_period: Duration,
    /// Whole-fetch timeout; default `30s`.
    #[serde(with = "duration_format")]
    pub fetch_timeout: Duration,
    /// Largest configuration file read, in bytes; default 262144 (256 KiB).
    pub max_file_size: u64,
    /// Where the Git mirrors live; default `<state_dir>/git-mirrors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// File holding the push webhook's shared secret (GitLab's `X-Gitlab-Token`); default unset, and
    /// then the webhook answers 404.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
}

impl Default for AgentConfigurationConfig {
    fn default() -> Self {
        Self {
            poll_period: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(30),
            max_file_size: 256 * 1024,
            state_dir: None,
            webhook_secret_file: None,
        }
    }
}

impl Config {
    /// The replica name ACCEPT carries: `agent_listener.replica_id` when set; else, with several
    /// replicas on Redis, the tracker's id (`replica-<replicas.replica_id>`, so that two replicas on
    /// one host never look like one to an agent holding connections to distinct replicas); else the
    /// host name, else `kas`.
    pub fn accept_replica_id(&self) -> String {
        match (&self.agent_listener.replica_id, &self.replicas) {
            (None, Some(r)) => protocol::routing::ReplicaId(r.replica_id).to_string(),
            _ => self.agent_listener.replica_id(),
        }
    }

    /// The directory of the agent configuration mirrors.
    pub fn agent_config_mirrors_dir(&self) -> PathBuf {
        self.agent_configuration
            .state_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("git-mirrors"))
    }
}

/// The agent listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentListenerConfig {
    /// Address to listen on; default `0.0.0.0:8150`.
    pub address: SocketAddr,
    /// Server certificate and key (always TLS).
    pub tls: TlsFilesConfig,
    /// Connections the kernel queues before kas accepts them (`listen(2)`); default 4096. The kernel
    /// caps it at `net.core.somaxconn`. A fleet reconnecting at once after a kas restart needs room.
    pub backlog: u32,
    /// This replica's name in ACCEPT (PROTOCOL.md §7.4), distinct per replica; default the host name
    /// (the pod name in Kubernetes), else `kas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// How many connections, to distinct replicas, each agent should hold (`K`, ACCEPT's
    /// `connections_wanted`); default 1. A deployment of several replicas sets 2.
    pub agent_connections: u32,
    /// kas sends GOAWAY on an agent connection this old (±10 % jitter), so agents reconnect through
    /// the load balancer and load evens out; default `2h` (GitLab's); `0s` turns it off.
    #[serde(with = "duration_format")]
    pub max_connection_age: Duration,
}

/// Most connections kas may ask each agent to hold.
pub const MAX_AGENT_CONNECTIONS: u32 = protocol::tunnel::connection_set::MAX_CONNECTIONS;

impl AgentListenerConfig {
    /// The replica name ACCEPT carries: `replica_id`, else the host name, else `kas`.
    pub fn replica_id(&self) -> String {
        if let Some(id) = self.replica_id.as_ref().filter(|s| !s.trim().is_empty()) {
            return id.trim().to_owned();
        }
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kas".to_owned())
    }
}

/// Default `listen(2)` backlog of both listeners.
pub const DEFAULT_BACKLOG: u32 = 4096;

impl Default for AgentListenerConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([0, 0, 0, 0], 8150)),
            tls: TlsFilesConfig::default(),
            backlog: DEFAULT_BACKLOG,
            replica_id: None,
            agent_connections: 1,
            max_connection_age: Duration::from_secs(2 * 3600),
        }
    }
}

/// PEM files for a TLS server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFilesConfig {
    /// Certificate chain, PEM; default `kas.crt`.
    pub cert_file: PathBuf,
    /// Private key, PEM; default `kas.key`.
    pub key_file: PathBuf,
    /// If set, clients must present a certificate issued by one of these CAs (PEM); default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for TlsFilesConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::from("kas.crt"),
            key_file: PathBuf::from("kas.key"),
            client_ca_file: None,
        }
    }
}

/// The HTTP API listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiListenerConfig {
    /// Address to listen on; default `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// Serve HTTPS with this certificate and key (default: plain HTTP). kubectl sends bearer tokens
    /// only over TLS, so a kubeconfig with `token:` needs this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFilesConfig>,
    /// Views, events and the dashboard are readable without a token (default `false`: they need a
    /// user bearer allowed on the agent). The demo turns this on. Cache listings and the tunnel
    /// routes always need a bearer. The agent listing (`/api/v1/agents`) follows the same rule.
    pub public_read: bool,
    /// Connections the kernel queues before kas accepts them (`listen(2)`); default 4096.
    pub backlog: u32,
}

impl Default for ApiListenerConfig {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            public_read: false,
            backlog: DEFAULT_BACKLOG,
        }
    }
}

/// Limits on event streams (`/api/v1/events`, `/api/v1/agents/{id}/events`), so that no single
/// client, address or user can take every slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Event streams open at once in all; default 1000.
    pub max_subscribers: usize,
    /// Event streams open at once from one source address (IPv6: one /64); default 64.
    pub max_per_source: usize,
    /// Event streams open at once for one user (streams read without a token, with
    /// `api_listener.public_read`, count per source only); default 32.
    pub max_per_user: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_subscribers: crate::events::DEFAULT_MAX_SUBSCRIBERS,
            max_per_source: crate::events::DEFAULT_MAX_PER_SOURCE,
            max_per_user: crate::events::DEFAULT_MAX_PER_USER,
        }
    }
}

/// Agent authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentAuthConfig {
    /// Which backend decides; default `embedded`.
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub backend: AuthBackendConfig,
}

impl Default for AgentAuthConfig {
    fn default() -> Self {
        Self {
            backend: AuthBackendConfig::Embedded,
        }
    }
}

/// An agent authentication backend. In YAML: `embedded`, `{agents_file: PATH}` or `{gitlab: {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthBackendConfig {
    /// The agents file kas's demo generates: `<state_dir>/agents.yaml`
    /// (see [`crate::auth::AgentsFile::generate`]).
    Embedded,
    /// An agents file at this path (agent id, name and SHA-256 of the token).
    AgentsFile(PathBuf),
    /// Ask GitLab's internal API.
    Gitlab(GitLabConfig),
}

/// The GitLab backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitLabConfig {
    /// GitLab's base URL (kas appends `/api/v4/internal/kubernetes/agent_info`); default
    /// `http://127.0.0.1:8080`.
    pub url: String,
    /// File with the shared secret, base64 of 32 bytes (GitLab's `.gitlab_kas_secret`); default
    /// `.gitlab_kas_secret`.
    pub secret_file: PathBuf,
    /// Extra CA certificates (PEM) trusted for GitLab's HTTPS instead of the built-in roots; default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Whole-request timeout; default `10s`.
    #[serde(with = "duration_format")]
    pub timeout: Duration,
    /// Caching of GitLab's answers about agent tokens (`agent_info`).
    pub cache: AuthCacheConfig,
    /// Caching of GitLab's answers about users and CI job tokens (`authorize_proxy_user`,
    /// `/api/v4/job`): kubectl sends many requests per command (discovery alone is dozens), and
    /// each would otherwise be a request to GitLab. Short, as a revoked token or a changed role
    /// must take effect soon.
    pub user_cache: UserCacheConfig,
    /// Reading the configuration project of an agent GitLab authenticated (its
    /// `.gitlab/agents/<name>/config.yaml`, hence its `ci_access`/`user_access` grants and GitOps) from
    /// GitLab over smart HTTP. GitLab's own kas reads it from Gitaly; this kas has no Gitaly client.
    /// Unset (the default): such agents get no configuration, so GitLab users and CI jobs are refused
    /// for them (`no_grant`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repositories: Option<Box<GitLabRepositoriesConfig>>,
}

impl Default for GitLabConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".to_owned(),
            secret_file: PathBuf::from(".gitlab_kas_secret"),
            ca_file: None,
            timeout: Duration::from_secs(10),
            cache: AuthCacheConfig::default(),
            user_cache: UserCacheConfig::default(),
            repositories: None,
        }
    }
}

/// Where and how kas clones agents' configuration projects from GitLab: `{url}/{project path}.git`
/// (the path from GitLab's `agent_info`), with a token that may read repositories (a group or
/// instance access token with `read_repository`, never an agent's or user's token).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitLabRepositoriesConfig {
    /// Base URL of GitLab's Git over HTTP; default: `gitlab.url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Basic auth: a file holding the token (re-read before every fetch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Basic auth username with `token_file`; default `oauth2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding a whole `Authorization` header value, instead of `token_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for `https` instead of the built-in roots; default: `gitlab.ca_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// How long authentication answers are reused, keyed by the token's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthCacheConfig {
    /// Lifetime of a successful answer; default `5m`. `0s` disables.
    #[serde(with = "duration_format")]
    pub positive_ttl: Duration,
    /// Lifetime of a rejection (401/403/404); default `1m`. `0s` disables. Backend failures are never cached.
    #[serde(with = "duration_format")]
    pub negative_ttl: Duration,
    /// Most entries kept; the oldest go first; default 10000.
    pub max_entries: usize,
}

impl Default for AuthCacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(60),
            max_entries: 10_000,
        }
    }
}

/// How long GitLab's answers about users and CI job tokens are reused, keyed by the SHA-256 of
/// what was asked (agent, access type, credential). Entries count against `cache.max_entries`'s bound
/// in a cache of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserCacheConfig {
    /// Lifetime of a successful answer; default `10s`. `0s` disables.
    #[serde(with = "duration_format")]
    pub positive_ttl: Duration,
    /// Lifetime of a rejection (401/403/404); default `10s`. `0s` disables. Backend failures are
    /// never cached.
    #[serde(with = "duration_format")]
    pub negative_ttl: Duration,
}

impl Default for UserCacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(10),
        }
    }
}

/// Users of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    /// The users file (see [`crate::users::UsersFile`]); default `users.yaml`.
    pub file: PathBuf,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("users.yaml"),
        }
    }
}

/// Requests waiting for an agent connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// How long a request for an agent with no usable connection waits before 503; default `20s`.
    #[serde(with = "duration_format")]
    pub pending_request_deadline: Duration,
    /// How long kas waits for the agent's response head before 504; default `60s`.
    #[serde(with = "duration_format")]
    pub response_timeout: Duration,
    /// Most requests waiting for one agent; beyond, 503 at once; default 256.
    pub max_pending_per_agent: usize,
    /// Most requests waiting in total; default 16384.
    pub max_pending_total: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            pending_request_deadline: Duration::from_secs(20),
            response_timeout: Duration::from_secs(60),
            max_pending_per_agent: 256,
            max_pending_total: 16_384,
        }
    }
}

/// Liveness of agent connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeepaliveConfig {
    /// How often kas pings an otherwise quiet connection; default `20s`. Behind a load balancer or
    /// proxy that cuts idle connections (nginx: `proxy_read_timeout`, default 60 s; cloud load
    /// balancers: often 60 s or 350 s), keep it below that idle timeout: the pings are the traffic
    /// that keeps an idle tunnel open (kas/tests/transports.rs tests 1 s under nginx's 3 s).
    #[serde(with = "duration_format")]
    pub interval: Duration,
    /// A connection silent this long is closed; default `60s`. Must exceed `interval`.
    #[serde(with = "duration_format")]
    pub idle_timeout: Duration,
    /// Time allowed for TLS and protocol handshakes, including authentication; default `10s`.
    #[serde(with = "duration_format")]
    pub handshake_timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Smallest accepted `limits.max_frame_size` (PROTOCOL.md §6's minimum).
pub const MIN_FRAME_SIZE: u32 = protocol::tunnel::frame::MIN_MAX_FRAME_SIZE;
/// Largest accepted `limits.max_frame_size` (24-bit frame length).
pub const MAX_FRAME_SIZE: u32 = protocol::tunnel::frame::MAX_FRAME_SIZE_LIMIT;

/// Per-connection protocol limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most concurrent streams kas opens on one agent connection; default 256.
    pub max_streams_per_connection: u32,
    /// Largest frame payload kas accepts, in bytes ([`MIN_FRAME_SIZE`]..=[`MAX_FRAME_SIZE`]); default 16384.
    pub max_frame_size: u32,
    /// What an agent may make kas do without doing useful work (PROTOCOL.md §17).
    pub flood: FloodConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_streams_per_connection: 256,
            max_frame_size: 16 * 1024,
            flood: FloodConfig::default(),
        }
    }
}

/// Flood limits on agent connections ([`protocol::tunnel::config::FloodLimits`]): frames that cost kas work
/// without doing any are counted per `window`; an agent over a limit is closed with GOAWAY
/// `ENHANCE_YOUR_CALM`. A count of 0 disables that limit. Defaults are far above what agentk does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FloodConfig {
    /// The counting window; default `10s`.
    #[serde(with = "duration_format")]
    pub window: Duration,
    /// PINGs per window; default 100.
    pub pings: u32,
    /// Streams the agent opened that did no work (reset before kas answered, or refused) per
    /// window; default 1000.
    pub rapid_resets: u32,
    /// Empty DATA frames without END_STREAM per window; default 1000.
    pub empty_data: u32,
    /// WINDOW_UPDATE frames per window; default 100000.
    pub window_updates: u32,
    /// Frames of unknown types per window; default 1000.
    pub unknown_frames: u32,
    /// Octets of answers (PING acknowledgements, RESETs) the agent may leave unread before kas stops
    /// reading from it; four times this closes it. Default 262144.
    pub max_queued_answers: usize,
}

impl Default for FloodConfig {
    fn default() -> Self {
        let d = protocol::tunnel::config::FloodLimits::default();
        Self {
            window: d.window,
            pings: d.pings,
            rapid_resets: d.rapid_resets,
            empty_data: d.empty_data,
            window_updates: d.window_updates,
            unknown_frames: d.unknown_frames,
            max_queued_answers: d.max_queued_answers,
        }
    }
}

impl FloodConfig {
    /// The limits as the protocol takes them.
    pub fn to_protocol(&self) -> protocol::tunnel::config::FloodLimits {
        protocol::tunnel::config::FloodLimits {
            window: self.window,
            pings: self.pings,
            rapid_resets: self.rapid_resets,
            empty_data: self.empty_data,
            window_updates: self.window_updates,
            unknown_frames: self.unknown_frames,
            max_queued_answers: self.max_queued_answers,
        }
    }
}

/// Limits on failed authentications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Failed agent authentications; default 10 per minute per source and token.
    pub agent_auth_failures: RateLimitConfig,
    /// Failed HTTP API authentications; default 20 per minute per source and credential.
    pub user_auth_failures: RateLimitConfig,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            agent_auth_failures: RateLimitConfig::default(),
            user_auth_failures: RateLimitConfig {
                max_failures: 20,
                ..RateLimitConfig::default()
            },
        }
    }
}

/// A sliding-window limit on failures per source address (IPv6 sources grouped by /64) and
/// credential (its SHA-256): a credential that keeps failing is refused from that address for a
/// while; other credentials from the same address, valid ones in particular, are not affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Failures allowed per source and credential within `window`; further attempts with that
    /// credential from that source are refused without asking the
    /// backend until the oldest failure leaves the window. `0` disables the limit. Default 10.
    pub max_failures: u32,
    /// The window; default `1m`.
    #[serde(with = "duration_format")]
    pub window: Duration,
    /// Most (source, credential) pairs remembered; beyond, the least recently failing one is
    /// forgotten. Default 10000.
    pub max_sources: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(60),
            max_sources: 10_000,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter directive, e.g. `info` or `info,kas=debug`; default `info`. Use
    /// [`LogConfig::filter_directives`] to build the filter.
    pub level: String,
    /// Output format; default `text`.
    pub format: LogFormat,
}

/// Directives appended to every log filter: ureq's protocol layer logs raw request bytes at `trace`,
/// which would include agent tokens sent to GitLab, so it is capped at `info` whatever `level` says.
pub const FORCED_LOG_DIRECTIVES: &str = "ureq_proto=info";

/// The levels a `log.level` directive may name.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

impl LogConfig {
    /// Checks `level`: comma-separated directives, each a level ([`LOG_LEVELS`], any case) or
    /// `target=level` with a Rust module path as target (`kas::api=debug`). Anything else (which
    /// `tracing`'s filter would silently read as "log nothing but this odd target") is an error
    /// saying what is accepted.
    pub fn validate_level(&self) -> Result<(), String> {
        let level = self.level.trim().trim_end_matches(',');
        if level.is_empty() {
            return Err("must not be empty".into());
        }
        let is_level = |l: &str| LOG_LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l.trim()));
        let is_target = |t: &str| {
            let t = t.trim();
            !t.is_empty()
                && t.split("::").all(|seg| {
                    !seg.is_empty()
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
        };
        for directive in level.split(',') {
            let ok = match directive.split_once('=') {
                Some((target, l)) => is_target(target) && is_level(l),
                None => is_level(directive),
            };
            if !ok {
                let shown: String = directive.trim().chars().take(40).collect();
                return Err(format!(
                    "{shown:?} is not a log level ({}) or a target=level directive (e.g. info,kas=debug)",
                    LOG_LEVELS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The filter to give `tracing_subscriber::EnvFilter`: `level` plus [`FORCED_LOG_DIRECTIVES`].
    pub fn filter_directives(&self) -> String {
        let level = self.level.trim().trim_end_matches(',');
        if level.is_empty() {
            FORCED_LOG_DIRECTIVES.to_owned()
        } else {
            format!("{level},{FORCED_LOG_DIRECTIVES}")
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Errors loading or writing a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// The configuration could not be written.
    #[error("cannot write config file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration could not be serialized.
    #[error("cannot serialize config: {0}")]
    Serialize(#[source] serde_yaml::Error),
}

/// A YAML file that does not parse, or does not match the expected structure.
#[derive(Debug, thiserror::Error)]
#[error("invalid YAML in {}: {source}", path.display())]
pub struct YamlError {
    /// The file (or a name for in-memory text).
    pub path: PathBuf,
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// 1-based column of the problem, when known.
    pub column: Option<usize>,
    /// The parser's message (it also mentions the location).
    pub source: serde_yaml::Error,
}

/// Parses YAML text into `T`, naming `path` and the line on failure. Empty text parses as `null`,
/// which types with `#[serde(default)]` do not accept, so callers that allow empty files handle it.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(|source| {
        let location = source.location();
        YamlError {
            path: path.to_owned(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            source,
        }
    })
}

impl Config {
    /// Reads `path`, then resolves relative paths against its directory ([`Config::resolve_paths`]).
    /// An empty file gives the defaults. Does not validate; call [`Config::validate`].
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_yaml_str(&text, path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.resolve_paths(base);
        tracing::debug!(path = %path.display(), "loaded config");
        Ok(config)
    }

    /// Parses YAML text; `origin` names it in errors. Relative paths are left as written.
    pub fn from_yaml_str(text: &str, origin: &Path) -> Result<Config, YamlError> {
        if is_blank_yaml(text) {
            return Ok(Config::default());
        }
        parse_yaml(origin, text)
    }

    /// The configuration as YAML.
    pub fn to_yaml_string(&self) -> Result<String, ConfigError> {
        serde_yaml::to_string(self).map_err(ConfigError::Serialize)
    }

    /// Writes the configuration to `path` (atomically), as it is: relative paths stay relative, so they
    /// will be resolved against `path`'s directory when loaded again.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let body = self.to_yaml_string()?;
        let text = format!(
            "# kas configuration. Every key is optional; relative paths are relative to this file.\n{body}"
        );
        write_atomic(path, text.as_bytes(), false).map_err(|source| ConfigError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Makes every relative path absolute-ish by joining it to `base` (normally the config file's
    /// directory). Absolute paths are unchanged; an empty `base` changes nothing.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        fix(&mut self.agent_listener.tls.cert_file);
        fix(&mut self.agent_listener.tls.key_file);
        if let Some(ca) = &mut self.agent_listener.tls.client_ca_file {
            fix(ca);
        }
        match &mut self.agent_auth.backend {
            AuthBackendConfig::Embedded => {}
            AuthBackendConfig::AgentsFile(p) => fix(p),
            AuthBackendConfig::Gitlab(g) => {
                fix(&mut g.secret_file);
                if let Some(ca) = &mut g.ca_file {
                    fix(ca);
                }
                if let Some(r) = &mut g.repositories {
                    for p in [&mut r.token_file, &mut r.header_file, &mut r.ca_file]
                        .into_iter()
                        .flatten()
                    {
                        fix(p);
                    }
                }
            }
        }
        fix(&mut self.users.file);
        if let Some(dir) = &mut self.agent_configuration.state_dir {
            fix(dir);
        }
        if let Some(secret) = &mut self.agent_configuration.webhook_secret_file {
            fix(secret);
        }
        if let Some(dir) = &mut self.gitops.state_dir {
            fix(dir);
        }
        if let Some(audit) = &mut self.audit.path
            && audit.as_os_str() != "-"
        {
            fix(audit);
        }
        if let Some(recording) = &mut self.recording.path {
            fix(recording);
        }
        if let Some(tls) = &mut self.api_listener.tls {
            fix(&mut tls.cert_file);
            fix(&mut tls.key_file);
        }
        if let Some(r) = &mut self.replicas {
            fix(&mut r.ca_file);
            fix(&mut r.shared_secret_file);
            if let Some(tls) = &mut r.tls {
                fix(&mut tls.cert_file);
                fix(&mut tls.key_file);
            }
        }
    }

    /// The agents file the configured backend reads: `<state_dir>/agents.yaml` for `embedded`, the
    /// given path for `agents_file`, `None` for `gitlab`.
    pub fn agents_file_path(&self) -> Option<PathBuf> {
        match &self.agent_auth.backend {
            AuthBackendConfig::Embedded => Some(self.state_dir.join(crate::auth::AGENTS_FILE_NAME)),
            AuthBackendConfig::AgentsFile(p) => Some(p.clone()),
            AuthBackendConfig::Gitlab(_) => None,
        }
    }

    /// Checks that named files exist and values are in range. Returns every problem found.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        let mut need_file = |what: &'static str, path: &Path| {
            if !path.is_file() {
                errors.push(ValidationError::MissingFile {
                    what,
                    path: path.to_owned(),
                });
            }
        };
        let tls = &self.agent_listener.tls;
        need_file("agent listener TLS certificate", &tls.cert_file);
        need_file("agent listener TLS key", &tls.key_file);
        if let Some(ca) = &tls.client_ca_file {
            need_file("agent listener client CA", ca);
        }
        if let Some(agents) = self.agents_file_path() {
            need_file("agents file", &agents);
        }
        if let AuthBackendConfig::Gitlab(g) = &self.agent_auth.backend {
            need_file("GitLab shared secret", &g.secret_file);
            if let Some(ca) = &g.ca_file {
                need_file("GitLab CA", ca);
            }
            if let Some(r) = &g.repositories {
                for (what, p) in [
                    ("gitlab.repositories token", &r.token_file),
                    ("gitlab.repositories header", &r.header_file),
                    ("gitlab.repositories CA", &r.ca_file),
                ] {
                    if let Some(p) = p {
                        need_file(what, p);
                    }
                }
            }
        }
        need_file("users file", &self.users.file);
        if let Some(r) = &self.replicas {
            need_file("replicas CA", &r.ca_file);
            need_file("replicas shared secret", &r.shared_secret_file);
        }
        if let Some(secret) = &self.agent_configuration.webhook_secret_file {
            need_file("agent_configuration webhook secret", secret);
        }

        let mut invalid = |field: &'static str, reason: String| {
            errors.push(ValidationError::InvalidValue { field, reason });
        };
        let rate = self.recording.sample_rate.0;
        if !(rate > 0.0 && rate <= 1.0) {
            invalid(
                "recording.sample_rate",
                format!("must be in (0, 1], got {rate}"),
            );
        }
        if let AuthBackendConfig::Gitlab(g) = &self.agent_auth.backend {
            match url::Url::parse(&g.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                Ok(u) => invalid(
                    "agent_auth.backend.gitlab.url",
                    format!(
                        "scheme must be http or https with a host, got {:?}",
                        u.scheme()
                    ),
                ),
                Err(e) => invalid("agent_auth.backend.gitlab.url", e.to_string()),
            }
            if g.timeout.is_zero() {
                invalid("agent_auth.backend.gitlab.timeout", "must be > 0".into());
            }
            if let Some(r) = &g.repositories {
                let field = "agent_auth.backend.gitlab.repositories";
                if r.token_file.is_some() && r.header_file.is_some() {
                    invalid(field, "give token_file or header_file, not both".into());
                }
                if r.username.is_some() && r.token_file.is_none() {
                    invalid(field, "username needs token_file".into());
                }
                if let Some(url) = &r.url {
                    // A base: checked as the URL of a project under it, without echoing
                    // credentials it may carry.
                    let sample = format!("{}/group/project.git", url.trim_end_matches('/'));
                    if let Err(e) = git_mirror::RepoUrl::parse_with_credentials(&sample) {
                        invalid(field, format!("url: {e}"));
                    }
                }
            }
        }
        if self.keepalive.interval.is_zero() {
            invalid("keepalive.interval", "must be > 0".into());
        }
        if self.keepalive.idle_timeout <= self.keepalive.interval {
            invalid(
                "keepalive.idle_timeout",
                format!(
                    "must exceed keepalive.interval ({})",
                    format_duration(self.keepalive.interval)
                ),
            );
        }
        if self.keepalive.handshake_timeout.is_zero() {
            invalid("keepalive.handshake_timeout", "must be > 0".into());
        }
        if self.routing.response_timeout.is_zero() {
            invalid("routing.response_timeout", "must be > 0".into());
        }
        if self.upgrades.max_sessions_per_agent == 0 {
            invalid("upgrades.max_sessions_per_agent", "must be >= 1".into());
        }
        if self.upgrades.idle_timeout.is_zero() {
            invalid("upgrades.idle_timeout", "must be > 0".into());
        }
        if self.limits.max_streams_per_connection == 0 {
            invalid("limits.max_streams_per_connection", "must be >= 1".into());
        }
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&self.limits.max_frame_size) {
            invalid(
                "limits.max_frame_size",
                format!(
                    "{} is outside {MIN_FRAME_SIZE}..={MAX_FRAME_SIZE} (PROTOCOL.md §6: 16 KiB is the default and the minimum)",
                    self.limits.max_frame_size
                ),
            );
        }
        if self.limits.flood.window.is_zero() {
            invalid("limits.flood.window", "must be > 0".into());
        }
        for (field, backlog) in [
            ("agent_listener.backlog", self.agent_listener.backlog),
            ("api_listener.backlog", self.api_listener.backlog),
        ] {
            if backlog == 0 {
                invalid(field, "must be >= 1".into());
            }
        }
        if !(1..=MAX_AGENT_CONNECTIONS).contains(&self.agent_listener.agent_connections) {
            invalid(
                "agent_listener.agent_connections",
                format!("must be 1..={MAX_AGENT_CONNECTIONS}"),
            );
        }
        let ev = &self.events;
        if ev.max_subscribers == 0 || ev.max_per_source == 0 || ev.max_per_user == 0 {
            invalid(
                "events",
                "max_subscribers, max_per_source and max_per_user must be >= 1".into(),
            );
        }
        for (field, rl) in [
            (
                "rate_limits.agent_auth_failures.window",
                &self.rate_limits.agent_auth_failures,
            ),
            (
                "rate_limits.user_auth_failures.window",
                &self.rate_limits.user_auth_failures,
            ),
        ] {
            if rl.max_failures > 0 && rl.window.is_zero() {
                invalid(field, "must be > 0 when max_failures > 0".into());
            }
        }
        if let Some(r) = &self.replicas {
            if !(r.redis_url.starts_with("redis://") || r.redis_url.starts_with("unix://")) {
                invalid(
                    "replicas.redis_url",
                    "must start with redis:// or unix://".into(),
                );
            }
            if r.key_prefix.is_empty() || r.key_prefix.contains(char::is_whitespace) {
                invalid(
                    "replicas.key_prefix",
                    "must be non-empty, without spaces".into(),
                );
            }
            if r.find_timeout.is_zero() || r.refresh_period.is_zero() {
                invalid(
                    "replicas",
                    "find_timeout and refresh_period must be > 0".into(),
                );
            }
            let b = &r.balance;
            if !(b.target.0.is_finite()
                && b.tolerance.0.is_finite()
                && 1.0 <= b.target.0
                && b.target.0 <= b.tolerance.0)
            {
                invalid("replicas.balance", "needs 1 ≤ target ≤ tolerance".into());
            }
            if !(b.max_step_fraction.0 > 0.0 && b.max_step_fraction.0 <= 1.0) {
                invalid(
                    "replicas.balance.max_step_fraction",
                    "must be > 0 and ≤ 1".into(),
                );
            }
            if b.interval.is_zero() {
                invalid("replicas.balance.interval", "must be > 0".into());
            }
            if r.entry_ttl <= r.refresh_period {
                invalid(
                    "replicas.entry_ttl",
                    format!(
                        "must exceed replicas.refresh_period ({})",
                        format_duration(r.refresh_period)
                    ),
                );
            }
        }
        let ac = &self.agent_configuration;
        if ac.poll_period < Duration::from_millis(100) {
            invalid(
                "agent_configuration.poll_period",
                "must be at least 100ms".into(),
            );
        }
        if ac.fetch_timeout.is_zero() {
            invalid("agent_configuration.fetch_timeout", "must be > 0".into());
        }
        if !(1..=16 * 1024 * 1024).contains(&ac.max_file_size) {
            invalid(
                "agent_configuration.max_file_size",
                format!("{} is outside 1..=16777216 bytes", ac.max_file_size),
            );
        }
        let g = &self.gitops;
        if g.poll_period < Duration::from_millis(100) {
            invalid("gitops.poll_period", "must be at least 100ms".into());
        }
        if g.fetch_timeout.is_zero() {
            invalid("gitops.fetch_timeout", "must be > 0".into());
        }
        if !(1..=64 * 1024 * 1024).contains(&g.max_manifest_file_size) {
            invalid(
                "gitops.max_manifest_file_size",
                format!("{} is outside 1..=67108864 bytes", g.max_manifest_file_size),
            );
        }
        if !(g.max_manifest_file_size..=1024 * 1024 * 1024)
            .contains(&g.max_total_manifest_file_size)
        {
            invalid(
                "gitops.max_total_manifest_file_size",
                "must be at least max_manifest_file_size and at most 1 GiB".into(),
            );
        }
        if g.max_number_of_files == 0 {
            invalid("gitops.max_number_of_files", "must be > 0".into());
        }
        if let Err(reason) = self.log.validate_level() {
            invalid("log.level", reason);
        }
        if self.agent_listener.address == self.api_listener.address {
            errors.push(ValidationError::AddressConflict(self.api_listener.address));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

/// One problem found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A file the configuration names does not exist (or is not a regular file).
    #[error("{what} {} does not exist", path.display())]
    MissingFile {
        /// What the file is for.
        what: &'static str,
        /// The path as configured (after resolution).
        path: PathBuf,
    },
    /// A value is out of range.
    #[error("{field}: {reason}")]
    InvalidValue {
        /// The YAML key path.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The agent and API listeners use the same address.
    #[error("agent_listener.address and api_listener.address are both {0}")]
    AddressConflict(SocketAddr),
}

/// Every problem found by [`Config::validate`] (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. 500ms, 20s, 5m, 1h, 1m30s)")]
pub struct DurationParseError {
    input: String,
    reason: &'static str,
}

/// Parses `500ms`, `20s`, `5m`, `1h`, `1m30s`, `0s`... (units `ms`, `s`, `m`, `h`; at most 8 parts).
pub fn parse_duration(input: &str) -> Result<Duration, DurationParseError> {
    let err = |reason| DurationParseError {
        input: input.chars().take(40).collect(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    for _ in 0..8 {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = rest.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.checked_mul(60).ok_or_else(|| err("too large"))?),
            "h" => Duration::from_secs(value.checked_mul(3600).ok_or_else(|| err("too large"))?),
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        total = total.checked_add(part).ok_or_else(|| err("too large"))?;
        rest = after;
        if rest.is_empty() {
            return Ok(total);
        }
    }
    Err(err("too many parts"))
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest exact unit
/// (`300s` → `5m`, `1500ms` → `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit_ms, unit) in [(3_600_000u128, "h"), (60_000, "m"), (1000, "s")] {
        let whole = ms / unit_ms;
        if whole * unit_ms == ms {
            return format!("{whole}{unit}");
        }
    }
    format!("{ms}ms")
}

/// Serde adapter for durations written as `20s`, `5m`, ... (sub-millisecond parts are dropped when
/// writing).
pub mod duration_format {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize as _, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes `d` as e.g. `20s`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads e.g. `20s`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn agent_configuration_defaults_parse_and_validation() -> TestResult {
        let c = Config::from_yaml_str(
            "agent_configuration: { poll_period: 30s, max_file_size: 1024 }\n",
            Path::new("kas.yaml"),
        )?;
        assert_eq!(c.agent_configuration.poll_period, Duration::from_secs(30));
        assert_eq!(c.agent_configuration.fetch_timeout, Duration::from_secs(30));
        assert_eq!(c.agent_config_mirrors_dir(), PathBuf::from("./git-mirrors"));
        assert_eq!(
            Config::default().agent_configuration.poll_period,
            Duration::from_secs(300)
        );
        let err = Config::from_yaml_str(
            "agent_configuration: { pol_period: 1s }\n",
            Path::new("kas.yaml"),
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("pol_period"), "{err}");
        let mut c = Config::default();
        c.agent_configuration.poll_period = Duration::from_millis(10);
        c.agent_configuration.fetch_timeout = Duration::ZERO;
        c.agent_configuration.max_file_size = 0;
        c.agent_configuration.webhook_secret_file = Some(PathBuf::from("/nonexistent/secret"));
        let text = c.validate().expect_err("invalid").to_string();
        for field in [
            "agent_configuration.poll_period",
            "agent_configuration.fetch_timeout",
            "agent_configuration.max_file_size",
            "webhook secret",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        Ok(())
    }

    #[test]
    fn empty_file_is_defaults() -> TestResult {
        let c = Config::from_yaml_str("# nothing\n", Path::new("kas.yaml"))?;
        assert_eq!(c, Config::default());
        let c = Config::from_yaml_str("{}", Path::new("kas.yaml"))?;
        assert_eq!(c, Config::default());
        Ok(())
    }

    #[test]
    fn partial_file_overrides_only_what_it_names() -> TestResult {
        let text = "api_listener:\n  address: 127.0.0.1:9999\nrouting:\n  pending_request_deadline: 1m30s\n";
        let c = Config::from_yaml_str(text, Path::new("kas.yaml"))?;
        assert_eq!(
            c.api_listener.address,
            SocketAddr::from(([127, 0, 0, 1], 9999))
        );
        assert_eq!(c.routing.pending_request_deadline, Duration::from_secs(90));
        assert_eq!(
            c.routing.max_pending_per_agent,
            RoutingConfig::default().max_pending_per_agent
        );
        assert_eq!(c.keepalive, KeepaliveConfig::default());
        Ok(())
    }

    #[test]
    fn backends_parse_in_map_form() -> TestResult {
        let c = Config::from_yaml_str("agent_auth:\n  backend: embedded\n", Path::new("k"))?;
        assert_eq!(c.agent_auth.backend, AuthBackendConfig::Embedded);
        let c = Config::from_yaml_str(
            "agent_auth:\n  backend:\n    agents_file: /etc/kas/agents.yaml\n",
            Path::new("k"),
        )?;
        assert_eq!(
            c.agent_auth.backend,
            AuthBackendConfig::AgentsFile(PathBuf::from("/etc/kas/agents.yaml"))
        );
        let text = "agent_auth:\n  backend:\n    gitlab:\n      url: https://gitlab.example.com\n      secret_file: s\n      cache: { positive_ttl: 10s, negative_ttl: 0s }\n";
        let c = Config::from_yaml_str(text, Path::new("k"))?;
        let AuthBackendConfig::Gitlab(g) = &c.agent_auth.backend else {
            return Err(format!("not gitlab: {:?}", c.agent_auth.backend).into());
        };
        assert_eq!(g.url, "https://gitlab.example.com");
        assert_eq!(g.cache.positive_ttl, Duration::from_secs(10));
        assert_eq!(g.cache.negative_ttl, Duration::ZERO);
        assert_eq!(g.cache.max_entries, 10_000);
        assert_eq!(g.timeout, Duration::from_secs(10));
        Ok(())
    }

    #[test]
    fn broken_yaml_names_file_and_line() {
        let text = "api_listener:\n  address: 127.0.0.1:8080\nrouting: [\n";
        let Err(e) = Config::from_yaml_str(text, Path::new("/etc/kas/kas.yaml")) else {
            panic!("broken YAML accepted");
        };
        assert_eq!(e.path, Path::new("/etc/kas/kas.yaml"));
        assert!(e.line.is_some_and(|l| l >= 3), "line {:?}", e.line);
        assert!(e.to_string().contains("/etc/kas/kas.yaml"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_with_lines() {
        let cases = [
            ("api_listenr:\n  address: 1.2.3.4:5\n", 1),
            ("routing:\n  pending_request_deadline: 20\n", 2),
            ("routing:\n  pending_request_deadline: 20 parsecs\n", 2),
            ("agent_auth:\n  backend: nope\n", 2),
            ("agent_listener:\n  address: not-an-address\n", 2),
            ("log:\n  format: xml\n", 2),
        ];
        for (text, line) in cases {
            match Config::from_yaml_str(text, Path::new("kas.yaml")) {
                Ok(c) => panic!("accepted {text:?}: {c:?}"),
                Err(e) => assert_eq!(e.line, Some(line), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn write_then_load_round_trips() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("kas.yaml");
        let mut c = Config::default();
        c.agent_auth.backend = AuthBackendConfig::Gitlab(GitLabConfig {
            url: "https://gitlab.example.com/".into(),
            ca_file: Some(PathBuf::from("gitlab-ca.pem")),
            ..GitLabConfig::default()
        });
        c.routing.pending_request_deadline = Duration::from_millis(1500);
        c.log.format = LogFormat::Json;
        c.write(&path)?;
        let loaded = Config::load(&path)?;
        let mut expected = c.clone();
        expected.resolve_paths(dir.path());
        assert_eq!(loaded, expected);
        // The written text keeps relative paths relative.
        let text = std::fs::read_to_string(&path)?;
        assert!(text.contains("secret_file: .gitlab_kas_secret"), "{text}");
        assert!(text.contains("pending_request_deadline: 1500ms"), "{text}");
        Ok(())
    }

    #[test]
    fn load_resolves_relative_paths_against_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("kas.yaml");
        std::fs::write(
            &path,
            "users: { file: u.yaml }\nagent_auth: { backend: { agents_file: /abs/agents.yaml } }\n",
        )?;
        let c = Config::load(&path)?;
        assert_eq!(c.users.file, dir.path().join("u.yaml"));
        assert_eq!(c.agent_listener.tls.cert_file, dir.path().join("kas.crt"));
        assert_eq!(
            c.agents_file_path(),
            Some(PathBuf::from("/abs/agents.yaml"))
        );
        Ok(())
    }

    #[test]
    fn load_of_missing_file_is_a_read_error() {
        match Config::load("/nonexistent/dir/kas.yaml") {
            Err(ConfigError::Read { path, .. }) => {
                assert_eq!(path, Path::new("/nonexistent/dir/kas.yaml"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn validate_reports_missing_files_and_bad_values() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut c = Config::default();
        c.resolve_paths(dir.path());
        c.keepalive.idle_timeout = c.keepalive.interval;
        c.limits.max_frame_size = 10;
        let Err(ValidationErrors(errors)) = c.validate() else {
            return Err("invalid config accepted".into());
        };
        let missing: Vec<_> = errors
            .iter()
            .filter_map(|e| match e {
                ValidationError::MissingFile { what, .. } => Some(*what),
                _ => None,
            })
            .collect();
        assert_eq!(
            missing,
            [
                "agent listener TLS certificate",
                "agent listener TLS key",
                "agents file",
                "users file"
            ]
        );
        let fields: Vec<_> = errors
            .iter()
            .filter_map(|e| match e {
                ValidationError::InvalidValue { field, .. } => Some(*field),
                _ => None,
            })
            .collect();
        assert_eq!(fields, ["keepalive.idle_timeout", "limits.max_frame_size"]);

        // Create the files and fix the values: now valid.
        for f in ["kas.crt", "kas.key", "agents.yaml", "users.yaml"] {
            std::fs::write(dir.path().join(f), "x")?;
        }
        c.keepalive = KeepaliveConfig::default();
        c.limits = LimitsConfig::default();
        c.validate()?;
        Ok(())
    }

    #[test]
    fn validate_checks_gitlab_settings() -> TestResult {
        let mut c = Config::default();
        c.agent_auth.backend = AuthBackendConfig::Gitlab(GitLabConfig {
            url: "ftp://gitlab".into(),
            ..GitLabConfig::default()
        });
        let Err(ValidationErrors(errors)) = c.validate() else {
            return Err("invalid config accepted".into());
        };
        assert!(
            errors.iter().any(|e| matches!(
                e,
                ValidationError::MissingFile {
                    what: "GitLab shared secret",
                    ..
                }
            )),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| matches!(
                e,
                ValidationError::InvalidValue {
                    field: "agent_auth.backend.gitlab.url",
                    ..
                }
            )),
            "{errors:?}"
        );
        // No agents file is needed with GitLab.
        assert!(
            !errors.iter().any(|e| matches!(
                e,
                ValidationError::MissingFile {
                    what: "agents file",
                    ..
                }
            )),
            "{errors:?}"
        );
        Ok(())
    }

    #[test]
    fn frame_sizes_below_the_protocol_minimum_are_rejected_with_the_right_range() {
        let mut c = Config::default();
        for bad in [0, 1000, 1024, 16_383, 16_777_216] {
            c.limits.max_frame_size = bad;
            let Err(ValidationErrors(errors)) = c.validate() else {
                panic!("{bad} accepted");
            };
            let message = errors
                .iter()
                .find_map(|e| match e {
                    ValidationError::InvalidValue {
                        field: "limits.max_frame_size",
                        reason,
                    } => Some(reason.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{bad}: no max_frame_size error in {errors:?}"));
            assert!(message.contains("16384..=16777215"), "{message}");
            assert!(message.contains(&bad.to_string()), "{message}");
        }
        for good in [16_384, 65_536, 16_777_215] {
            c.limits.max_frame_size = good;
            let errors = c.validate().err().map(|e| e.0).unwrap_or_default();
            assert!(
                !errors.iter().any(|e| matches!(
                    e,
                    ValidationError::InvalidValue {
                        field: "limits.max_frame_size",
                        ..
                    }
                )),
                "{good}: {errors:?}"
            );
        }
    }

    #[test]
    fn replicas_balance_parses_and_is_checked() -> TestResult {
        let yaml = "replicas:\n  balance: { tolerance: 1.25, target: 1.05, interval: 2s, max_step_fraction: 0.2 }\n";
        let c: Config = serde_yaml::from_str(yaml)?;
        let b = &c.replicas.as_ref().ok_or("replicas section")?.balance;
        assert!(b.enabled, "on by default");
        let p = b.policy();
        assert_eq!(
            (p.tolerance, p.target, p.max_step_fraction),
            (1.25, 1.05, 0.2)
        );
        assert_eq!(p.interval, Duration::from_secs(2));
        assert_eq!(p.max_connection_age, None);
        for bad in [
            "{ tolerance: 1.0, target: 1.1 }",
            "{ target: 0.5 }",
            "{ max_step_fraction: 0 }",
            "{ max_step_fraction: 1.5 }",
            "{ interval: 0s }",
        ] {
            let mut c: Config = serde_yaml::from_str(&format!("replicas:\n  balance: {bad}\n"))?;
            c.replicas
                .as_mut()
                .ok_or("replicas section")?
                .shared_secret_file = "/dev/null".into();
            match c.validate() {
                Ok(()) => panic!("{bad} passed validation"),
                Err(errors) => {
                    let errors = format!("{errors:?}");
                    assert!(errors.contains("replicas.balance"), "{bad}: {errors}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn accept_names_the_tracker_replica_unless_set() {
        let mut c = Config::default();
        c.agent_listener.replica_id = Some("kas-a".into());
        assert_eq!(c.accept_replica_id(), "kas-a");
        c.replicas = Some(ReplicasConfig {
            replica_id: 3,
            ..ReplicasConfig::default()
        });
        assert_eq!(c.accept_replica_id(), "kas-a");
        c.agent_listener.replica_id = None;
        assert_eq!(c.accept_replica_id(), "replica-3");
    }

    #[test]
    fn log_levels_are_checked() {
        let check = |level: &str| {
            LogConfig {
                level: level.into(),
                ..LogConfig::default()
            }
            .validate_level()
        };
        for good in [
            "info",
            "WARN",
            "off",
            "info,kas=debug",
            "warn,kas::api=trace,runtime_core=info,",
            " debug ",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in [
            "loud!!",
            "",
            "   ",
            "kas",
            "info,kas=loud",
            "=info",
            "kas::=info",
            "info;kas=debug",
        ] {
            let e = check(bad).expect_err(bad);
            assert!(
                e.contains("not a log level") || e.contains("empty"),
                "{bad}: {e}"
            );
        }
        let e = check("loud!!").expect_err("loud!! accepted");
        assert!(
            e.contains("\"loud!!\"") && e.contains("trace, debug, info"),
            "{e}"
        );
        let mut c = Config::default();
        c.log.level = "loud!!".into();
        let Err(ValidationErrors(errors)) = c.validate() else {
            panic!("accepted");
        };
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().starts_with("log.level: "))
        );
    }

    #[test]
    fn log_filter_never_traces_raw_http() {
        let mut log = LogConfig::default();
        assert_eq!(log.filter_directives(), "info,ureq_proto=info");
        log.level = "trace,".into();
        assert_eq!(log.filter_directives(), "trace,ureq_proto=info");
    }

    #[test]
    fn durations_parse_and_format() {
        let ok = [
            ("0s", 0),
            ("500ms", 500),
            ("20s", 20_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1h1ms", 3_600_001),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in [
            "",
            "20",
            "s",
            "5 m",
            "1d",
            "-1s",
            "1s1s1s1s1s1s1s1s1s",
            "99999999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    proptest::proptest! {
        #[test]
        fn duration_format_round_trips(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
