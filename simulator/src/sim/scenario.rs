//! Scenario files: what world to build, how it behaves, and which faults to inject when.
//!
//! A scenario is a YAML document (see `simulator/scenarios/*.yaml`); every field has a default, so a
//! file only states what differs. Durations are written `250ms`, `20s`, `5m`, `1h30m` (or a number of
//! seconds), sizes `65536`, `64KiB`, `10MB`, `100Mbit`. Unknown fields are errors, so a typo is never
//! silently ignored.
//!
//! ```yaml
//! name: example
//! duration: 10m
//! agents: 1000
//! kas: { replicas: 3, balance: { tolerance: 1.1 } }   # balance: optional, replicas shed load
//! cluster: { churn_per_minute: 1 }
//! clients: { rate: 20 }
//! faults:
//!   - { kind: kas_crash, at: 3m, kas: 1, down_for: 20s }
//! ```
//!
//! # Timeline
//!
//! Agents boot at random times within `agent.start_spread`. Clients start at `clients.start`. Faults
//! happen in their windows. In the last `quiesce` of the run no new client request and no cluster
//! change is generated, so that at the end every request has ended and every view has converged; the
//! end-of-run invariants are checked then. [`Scenario::validate`] checks that the faults end early
//! enough for agents to reconnect within the bound before the end (see [`Scenario::reconnect_bound`]).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::units::{de_bytes, de_duration};

/// A scenario file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse scenario {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

fn d_s(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn d_ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Default seed (overridden by `--seed`).
    pub seed: u64,
    /// Simulated time of the whole run.
    #[serde(deserialize_with = "de_duration")]
    pub duration: Duration,
    /// Number of agents, each with its own cluster.
    pub agents: usize,
    pub kas: KasSpec,
    pub agent: AgentSpec,
    pub protocol: ProtocolSpec,
    pub network: NetworkSpec,
    pub cluster: ClusterSpec,
    pub clients: ClientSpec,
    pub faults: Vec<Fault>,
    /// Final period without new requests, cluster changes or faults.
    #[serde(deserialize_with = "de_duration")]
    pub quiesce: Duration,
    /// How often metrics are sampled and the periodic invariants checked.
    #[serde(deserialize_with = "de_duration")]
    pub sample_interval: Duration,
    /// Deliberate bugs, to prove the invariant checker catches them.
    pub inject: Injection,
    /// The workload of a recorded kas, when replaying one (`--replay`, [`super::replay`]); not
    /// part of scenario files.
    #[serde(skip)]
    pub replay: Option<std::sync::Arc<super::replay::ReplayPlan>>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "unnamed".into(),
            description: String::new(),
            seed: 1,
            duration: d_s(600),
            agents: 100,
            kas: KasSpec::default(),
            agent: AgentSpec::default(),
            protocol: ProtocolSpec::default(),
            network: NetworkSpec::default(),
            cluster: ClusterSpec::default(),
            clients: ClientSpec::default(),
            faults: Vec::new(),
            quiesce: d_s(60),
            sample_interval: d_s(10),
            inject: Injection::default(),
            replay: None,
        }
    }
}

/// The kas replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KasSpec {
    pub replicas: usize,
    /// Agent connections one replica accepts (0: unlimited); beyond it HELLO is refused with
    /// UNAVAILABLE and `retry_after`.
    pub max_connections: usize,
    /// `retry_after` sent with such refusals.
    #[serde(deserialize_with = "de_duration")]
    pub refuse_retry_after: Duration,
    /// How long a request may wait in the router for a usable connection.
    #[serde(deserialize_with = "de_duration")]
    pub pending_timeout: Duration,
    /// Router limits.
    pub max_pending_per_agent: usize,
    pub max_pending_total: usize,
    /// Latency of forwarding a request from the kas that received it to the kas holding the agent.
    #[serde(deserialize_with = "de_duration")]
    pub hop_latency: Duration,
    /// How long a replica keeps an agent's mirror after the agent's last connection to it closed.
    #[serde(deserialize_with = "de_duration")]
    pub mirror_retention: Duration,
    /// Interval of the mirror's repeated resync requests.
    #[serde(deserialize_with = "de_duration")]
    pub resync_interval: Duration,
    /// Replicas even out their load ([`protocol::routing::balance`]); absent: they do not.
    pub balance: Option<BalanceSpec>,
    /// How many connections, to distinct replicas, each agent should hold (`K`, kas's
    /// `agent_listener.agent_connections`); ACCEPT says
    /// [`protocol::tunnel::connection_set::connections_wanted`] of it and `replicas`. Default 1.
    pub agent_connections: u32,
}

/// Balance between replicas: paced GOAWAY shedding above a tolerance of the fair share, as
/// [`protocol::routing::balance::Balance`] decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceSpec {
    /// Shed while above this multiple of the fair share.
    pub tolerance: f64,
    /// Shed down to this multiple of the fair share.
    pub target: f64,
    /// One shedding step per interval.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// A step drains at most this fraction of the replica's connections.
    pub max_step_fraction: f64,
}

impl Default for BalanceSpec {
    fn default() -> Self {
        let p = protocol::routing::balance::BalancePolicy::default();
        BalanceSpec {
            tolerance: p.tolerance,
            target: p.target,
            interval: p.interval,
            max_step_fraction: p.max_step_fraction,
        }
    }
}

impl BalanceSpec {
    /// The policy replicas drive (the maximum connection age is longer than simulated runs need
    /// and stays off here).
    pub fn policy(&self) -> protocol::routing::balance::BalancePolicy {
        protocol::routing::balance::BalancePolicy {
            tolerance: self.tolerance,
            target: self.target,
            interval: self.interval,
            max_step_fraction: self.max_step_fraction,
            max_connection_age: None,
            ..protocol::routing::balance::BalancePolicy::default()
        }
    }
}

impl Default for KasSpec {
    fn default() -> Self {
        KasSpec {
            replicas: 3,
            max_connections: 0,
            refuse_retry_after: d_s(5),
            pending_timeout: d_s(10),
            max_pending_per_agent: 256,
            max_pending_total: 16_384,
            hop_latency: d_ms(1),
            mirror_retention: d_s(300),
            resync_interval: d_s(1),
            balance: None,
            agent_connections: 1,
        }
    }
}

/// How agents pick a kas replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    Random,
    RoundRobin,
}

/// Agent behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSpec {
    /// Agents boot at uniformly random times within this period.
    #[serde(deserialize_with = "de_duration")]
    pub start_spread: Duration,
    pub load_balancing: LoadBalancing,
    pub backoff: BackoffSpec,
    /// Publisher coalescing window.
    #[serde(deserialize_with = "de_duration")]
    pub views_window: Duration,
    /// Publisher re-send timeout.
    #[serde(deserialize_with = "de_duration")]
    pub views_ack_timeout: Duration,
    pub views_max_unacked: usize,
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            start_spread: d_s(30),
            load_balancing: LoadBalancing::Random,
            backoff: BackoffSpec::default(),
            views_window: d_ms(100),
            views_ack_timeout: d_s(5),
            views_max_unacked: 16,
        }
    }
}

/// `protocol::tunnel::reconnect::BackoffPolicy`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffSpec {
    #[serde(deserialize_with = "de_duration")]
    pub initial: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub stable_after: Duration,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        let p = protocol::tunnel::reconnect::BackoffPolicy::default();
        BackoffSpec {
            initial: p.initial,
            max: p.max,
            stable_after: p.stable_after,
        }
    }
}

/// Tunnel settings, for both sides.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolSpec {
    #[serde(deserialize_with = "de_duration")]
    pub keepalive_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    pub max_concurrent_streams: u32,
    #[serde(deserialize_with = "de_bytes")]
    pub initial_stream_window: u64,
    #[serde(deserialize_with = "de_bytes")]
    pub initial_connection_window: u64,
}

impl Default for ProtocolSpec {
    fn default() -> Self {
        let s = protocol::Settings::default();
        ProtocolSpec {
            keepalive_interval: s.keepalive_interval,
            idle_timeout: s.idle_timeout,
            handshake_timeout: protocol::tunnel::config::defaults::HANDSHAKE_TIMEOUT,
            max_concurrent_streams: s.max_concurrent_streams,
            initial_stream_window: s.initial_stream_window.into(),
            initial_connection_window: s.initial_connection_window.into(),
        }
    }
}

/// The network between agents and kas.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// Mean one-way latency of an agent's link.
    #[serde(deserialize_with = "de_duration")]
    pub latency: Duration,
    /// Each agent's base latency is `latency × (1 ± spread)`, uniformly.
    pub latency_spread: f64,
    /// Extra random delay per packet, uniform in `0..jitter` (delivery stays in order).
    #[serde(deserialize_with = "de_duration")]
    pub jitter: Duration,
    /// Bytes per second of each link, each direction.
    #[serde(deserialize_with = "de_bytes")]
    pub bandwidth: u64,
    /// A dial that gets no answer fails after this long.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// How often the load balancer in front of kas re-checks which replicas are up.
    #[serde(deserialize_with = "de_duration")]
    pub lb_health_interval: Duration,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            latency: d_ms(20),
            latency_spread: 0.5,
            jitter: d_ms(2),
            bandwidth: 10_000_000,
            connect_timeout: d_s(5),
            lb_health_interval: d_s(5),
        }
    }
}

/// Each agent's simulated cluster.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub namespaces: usize,
    pub pods_per_namespace: usize,
    pub deployments_per_namespace: usize,
    /// Object changes per cluster per minute (Poisson).
    pub churn_per_minute: f64,
    /// Fraction of clusters that are "hot" ...
    pub hot_fraction: f64,
    /// ... and churn this many times faster.
    pub hot_factor: f64,
    /// From a change in the API server to the agent's informer having it (the watch's latency);
    /// the agent publishes what changed then.
    #[serde(deserialize_with = "de_duration")]
    pub watch_latency: Duration,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 2,
            namespaces: 2,
            pods_per_namespace: 3,
            deployments_per_namespace: 1,
            churn_per_minute: 1.0,
            hot_fraction: 0.0,
            hot_factor: 10.0,
            watch_latency: d_ms(50),
        }
    }
}

/// Clients of kas's API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSpec {
    /// Requests per second over all agents (Poisson), each for a uniformly random agent.
    pub rate: f64,
    /// When clients start.
    #[serde(deserialize_with = "de_duration")]
    pub start: Duration,
    /// The client gives up after this long (kas then resets the stream and answers 504).
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// What requests look like.
    pub mix: Vec<RequestKind>,
}

impl Default for ClientSpec {
    fn default() -> Self {
        ClientSpec {
            rate: 10.0,
            start: d_s(30),
            timeout: d_s(30),
            mix: vec![
                RequestKind {
                    name: "get".into(),
                    service: protocol::service::K8S_API.into(),
                    method: "GET".into(),
                    path: "/api/v1/namespaces/ns-0/pods".into(),
                    weight: 6.0,
                    request_bytes: 0,
                    response_bytes: 4096,
                    think: d_ms(5),
                },
                RequestKind {
                    name: "cache-list".into(),
                    service: protocol::service::CACHE.into(),
                    method: "LIST".into(),
                    path: "/Pod?namespace=ns-0".into(),
                    weight: 3.0,
                    request_bytes: 0,
                    response_bytes: 0,
                    think: d_ms(1),
                },
                RequestKind {
                    name: "apply".into(),
                    service: protocol::service::K8S_API.into(),
                    method: "PATCH".into(),
                    path: "/apis/apps/v1/namespaces/ns-0/deployments/app-0".into(),
                    weight: 1.0,
                    request_bytes: 16 * 1024,
                    response_bytes: 2048,
                    think: d_ms(20),
                },
            ],
        }
    }
}

/// One kind of client request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestKind {
    pub name: String,
    /// `k8s-api`, `service-proxy` (answered with `response_bytes` of body) or `cache` (answered from
    /// the agent's informer cache: `path` is `/{kind}?namespace=..`).
    pub service: String,
    pub method: String,
    pub path: String,
    /// Relative frequency.
    pub weight: f64,
    #[serde(deserialize_with = "de_bytes")]
    pub request_bytes: u64,
    #[serde(deserialize_with = "de_bytes")]
    pub response_bytes: u64,
    /// Mean time the agent takes to answer (exponential).
    #[serde(deserialize_with = "de_duration")]
    pub think: Duration,
}

impl Default for RequestKind {
    fn default() -> Self {
        RequestKind {
            name: "request".into(),
            service: protocol::service::K8S_API.into(),
            method: "GET".into(),
            path: "/".into(),
            weight: 1.0,
            request_bytes: 0,
            response_bytes: 1024,
            think: d_ms(5),
        }
    }
}

/// A fault, by kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Established connections break at random: RST to both sides, or silently (`silent` fraction:
    /// every packet lost from then on, only keepalive can tell).
    Drop(DropFault),
    /// A fraction of agents (optionally only towards one kas) cannot exchange packets with kas
    /// during the window; TCP holds what is sent and delivers it after the partition heals.
    Partition(PartitionFault),
    /// A fraction of agents sits behind a NAT that forgets connections idle for `idle_timeout`,
    /// silently, during the window.
    NatTimeout(NatFault),
    /// One kas replica crashes and comes back after `down_for`.
    KasCrash(KasCrashFault),
    /// Every kas replica in turn: GOAWAY to its agents, drain up to `grace`, stop, restart after
    /// `down_for`, wait `interval`, next replica.
    RollingRestart(RollingRestartFault),
    /// Agents restart at random (new process: new cache epoch, new back-off state).
    AgentRestarts(AgentRestartFault),
    /// A fraction of clusters' API servers answer `factor` times slower during the window (the
    /// `think` of `k8s-api` requests; `cache` answers come from agentk's informer cache, unaffected).
    SlowApi(SlowApiFault),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropFault {
    #[serde(deserialize_with = "de_duration")]
    pub from: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub to: Duration,
    /// Drops per connection per hour.
    pub rate_per_hour: f64,
    /// Fraction of drops that are silent (no RST).
    #[serde(default)]
    pub silent: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionFault {
    #[serde(deserialize_with = "de_duration")]
    pub at: Duration,
    #[serde(rename = "for", deserialize_with = "de_duration")]
    pub duration: Duration,
    pub fraction: f64,
    /// Only towards this replica (default: all).
    #[serde(default)]
    pub kas: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatFault {
    #[serde(deserialize_with = "de_duration")]
    pub from: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub to: Duration,
    pub fraction: f64,
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KasCrashFault {
    #[serde(deserialize_with = "de_duration")]
    pub at: Duration,
    pub kas: usize,
    #[serde(deserialize_with = "de_duration")]
    pub down_for: Duration,
    /// Host gone (no RST; dials time out) rather than process killed (peers get RST at once).
    #[serde(default = "yes")]
    pub silent: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingRestartFault {
    #[serde(deserialize_with = "de_duration")]
    pub at: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub grace: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub down_for: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRestartFault {
    #[serde(deserialize_with = "de_duration")]
    pub from: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub to: Duration,
    /// Restarts per agent per hour.
    pub rate_per_hour: f64,
    /// Time from the old process dying to the new one dialling.
    #[serde(deserialize_with = "de_duration")]
    pub down_for: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowApiFault {
    #[serde(deserialize_with = "de_duration")]
    pub from: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub to: Duration,
    /// Fraction of clusters whose API server is slow.
    pub fraction: f64,
    /// Multiplier of the mean answer time of `k8s-api` requests.
    pub factor: f64,
}

/// Deliberate bugs in the simulated agents, kas replicas and transport, to prove that each invariant's
/// check fires (`simulator/tests/sim_checker.rs` runs every one). Request ids count from 1 in issue
/// order; agent indexes from 0. All off by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Injection {
    /// kas opens this request's stream on a connection of another agent.
    pub misroute_request: Option<u64>,
    /// kas never tells the client that this request ended.
    pub lose_request: Option<u64>,
    /// kas tells the client twice that this request ended.
    pub duplicate_completion: Option<u64>,
    /// The agent answers this request claiming to be another agent.
    pub wrong_responder: Option<u64>,
    /// The agent flips one octet of this request's response body after declaring its digest.
    pub corrupt_body: Option<u64>,
    /// The agent resets this request's stream with FLOW_CONTROL_ERROR instead of answering.
    pub reset_request: Option<u64>,
    /// The transport appends a DATA frame on stream 0 to the n-th chunk any connection transmits.
    pub corrupt_transmit: Option<u64>,
    /// The protocol core grants itself twice the credit each WINDOW_UPDATE gives (the
    /// `protocol::testing::faults::FlowFault` of the sender's thread).
    pub double_credit: bool,
    /// Agents forget their consecutive failures before each one (back-off never grows).
    pub forget_backoff: bool,
    /// Every back-off delay is multiplied by this.
    pub stretch_backoff: Option<f64>,
    /// This agent never dials again after its first connection ends.
    pub never_redial: Option<usize>,
    /// This agent's cache misses the n-th watch event of the run (counting every agent's).
    pub skip_watch_event: Option<u64>,
    /// The n-th watch event of the run reaches the cache without metadata (malformed).
    pub malformed_watch_event: Option<u64>,
    /// The production view evaluator counts failed pods as pending
    /// (`protocol::testing::faults::ViewFault`), in every agent and replica.
    pub view_fault: bool,
    /// kas applies this agent's first view update with one value changed.
    pub corrupt_view_value: Option<usize>,
    /// This agent's first view message carries a row with units but no nanos.
    pub malformed_view: Option<usize>,
    /// This agent's first view message gets a length prefix no message has.
    pub garble_views_frame: Option<usize>,
    /// kas accepts this agent (index) under another agent id.
    pub accept_as_other: Option<usize>,
    /// This agent starts closing its connection before it opens its views stream.
    pub close_before_views: Option<usize>,
    /// kas tells its router twice that this request finished.
    pub double_finish: Option<u64>,
    /// kas keeps tracking this request after it ended.
    pub keep_tracking: Option<u64>,
    /// kas keeps the first connection that closes in its router.
    pub keep_closed_connection: bool,
    /// kas forgets to reset this request's stream when the client gives up, while the agent's
    /// upstream never answers it.
    pub abandon_request: Option<u64>,
}

impl Fault {
    /// When the fault's effects are over at the latest (restarts included).
    pub fn end(&self, kas_replicas: usize) -> Duration {
        match self {
            Fault::Drop(f) => f.to,
            Fault::Partition(f) => f.at + f.duration,
            Fault::NatTimeout(f) => f.to,
            Fault::KasCrash(f) => f.at + f.down_for,
            Fault::RollingRestart(f) => {
                f.at + (f.grace + f.down_for + f.interval)
                    * u32::try_from(kas_replicas).unwrap_or(u32::MAX)
            }
            Fault::AgentRestarts(f) => f.to + f.down_for,
            Fault::SlowApi(f) => f.to,
        }
    }

    pub fn start(&self) -> Duration {
        match self {
            Fault::Drop(f) => f.from,
            Fault::Partition(f) => f.at,
            Fault::NatTimeout(f) => f.from,
            Fault::KasCrash(f) => f.at,
            Fault::RollingRestart(f) => f.at,
            Fault::AgentRestarts(f) => f.from,
            Fault::SlowApi(f) => f.from,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Fault::Drop(_) => "drop",
            Fault::Partition(_) => "partition",
            Fault::NatTimeout(_) => "nat_timeout",
            Fault::KasCrash(_) => "kas_crash",
            Fault::RollingRestart(_) => "rolling_restart",
            Fault::AgentRestarts(_) => "agent_restarts",
            Fault::SlowApi(_) => "slow_api",
        }
    }
}

/// Command-line overrides of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub seed: Option<u64>,
    pub agents: Option<usize>,
    pub kas: Option<usize>,
    pub duration: Option<Duration>,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and validates a scenario; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = serde_yaml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Applies command-line overrides and validates the result.
    pub fn with_overrides(mut self, o: &Overrides) -> Result<Scenario, ScenarioError> {
        if let Some(s) = o.seed {
            self.seed = s;
        }
        if let Some(a) = o.agents {
            self.agents = a;
        }
        if let Some(k) = o.kas {
            self.kas.replicas = k;
        }
        if let Some(d) = o.duration {
            self.duration = d;
        }
        self.validate()?;
        Ok(self)
    }

    /// When the last fault's effects are over (zero without faults).
    pub fn faults_end(&self) -> Duration {
        self.faults
            .iter()
            .map(|f| f.end(self.kas.replicas))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// How long after the faults end every agent must be connected again at the latest: a silently
    /// dead connection is noticed within the idle timeout; the load balancer may still send a dial to a
    /// replica that just went down until its next health check, and that dial fails within the connect
    /// timeout; the back-off then waits at most `backoff.max` (or a refusal's `retry_after`); the dial
    /// plus handshake take at most the connect and handshake timeouts; one more second covers network
    /// latency.
    pub fn reconnect_bound(&self) -> Duration {
        self.protocol.idle_timeout
            + self.network.lb_health_interval
            + self.network.connect_timeout
            + self.agent.backoff.max.max(self.kas.refuse_retry_after)
            + self.network.connect_timeout
            + self.protocol.handshake_timeout
            + d_s(1)
    }

    /// Time after reconnecting for views to converge: a resync exchange, with one lost message
    /// re-sent after the publisher's ack timeout.
    pub fn views_settle(&self) -> Duration {
        self.agent.views_ack_timeout * 2 + d_s(5)
    }

    /// Checks ranges and the timeline; every problem is a clear message.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.agents == 0 {
            return bad("agents must be at least 1".into());
        }
        if self.agents > 1_000_000 {
            return bad("agents must be at most 1,000,000".into());
        }
        if self.kas.replicas == 0 || self.kas.replicas > 1000 {
            return bad("kas.replicas must be between 1 and 1000".into());
        }
        let max_k = protocol::tunnel::connection_set::MAX_CONNECTIONS;
        if !(1..=max_k).contains(&self.kas.agent_connections) {
            return bad(format!(
                "kas.agent_connections must be between 1 and {max_k}"
            ));
        }
        if let Some(b) = &self.kas.balance
            && !(b.target >= 1.0
                && b.tolerance >= b.target
                && b.max_step_fraction > 0.0
                && b.max_step_fraction <= 1.0
                && !b.interval.is_zero())
        {
            return bad(
                "kas.balance needs 1 <= target <= tolerance, 0 < max_step_fraction <= 1 and \
                 an interval > 0"
                    .into(),
            );
        }
        if self.duration.is_zero() || self.duration > d_s(30 * 24 * 3600) {
            return bad("duration must be between 1ns and 30 days".into());
        }
        if self.sample_interval < d_ms(100) {
            return bad("sample_interval must be at least 100ms".into());
        }
        if self.quiesce >= self.duration {
            return bad(format!(
                "quiesce ({:?}) must be shorter than the duration ({:?})",
                self.quiesce, self.duration
            ));
        }
        let min_quiesce = self.clients.timeout + self.kas.hop_latency * 2 + d_s(5);
        if self.quiesce < min_quiesce {
            return bad(format!(
                "quiesce ({:?}) must be at least the client timeout plus 5s ({min_quiesce:?}) so that \
                 every request ends before the run does",
                self.quiesce
            ));
        }
        for (name, f) in [
            ("network.latency_spread", self.network.latency_spread),
            ("cluster.hot_fraction", self.cluster.hot_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!("{name} must be within 0..=1, got {f}"));
            }
        }
        for (name, f) in [
            ("cluster.churn_per_minute", self.cluster.churn_per_minute),
            ("cluster.hot_factor", self.cluster.hot_factor),
            ("clients.rate", self.clients.rate),
        ] {
            if !f.is_finite() || f < 0.0 {
                return bad(format!("{name} must be a non-negative number, got {f}"));
            }
        }
        if self.cluster.watch_latency > d_s(1) {
            return bad(format!(
                "cluster.watch_latency must be at most 1s (changes are published before the run \
                 quiesces), got {:?}",
                self.cluster.watch_latency
            ));
        }
        if self.network.bandwidth == 0 {
            return bad("network.bandwidth must be positive".into());
        }
        if self.protocol.keepalive_interval.is_zero() || self.protocol.idle_timeout.is_zero() {
            return bad("protocol.keepalive_interval and idle_timeout must be positive".into());
        }
        if self.protocol.max_concurrent_streams == 0 {
            return bad("protocol.max_concurrent_streams must be positive".into());
        }
        let settings = self.settings();
        settings
            .validate()
            .map_err(|e| ScenarioError::Invalid(format!("protocol: {e}")))?;
        if self.agent.backoff.initial.is_zero()
            || self.agent.backoff.max < self.agent.backoff.initial
        {
            return bad("agent.backoff needs 0 < initial <= max".into());
        }
        if self.clients.rate > 0.0 {
            if self.clients.mix.is_empty() {
                return bad("clients.mix must not be empty when clients.rate > 0".into());
            }
            if self
                .clients
                .mix
                .iter()
                .any(|k| !k.weight.is_finite() || k.weight < 0.0)
                || self.clients.mix.iter().map(|k| k.weight).sum::<f64>() <= 0.0
            {
                return bad("clients.mix weights must be non-negative with a positive sum".into());
            }
            for k in &self.clients.mix {
                if k.service == protocol::service::CACHE && !k.path.starts_with('/') {
                    return bad(format!(
                        "request kind {}: cache paths start with '/'",
                        k.name
                    ));
                }
                if k.response_bytes > 64 * 1024 * 1024 || k.request_bytes > 64 * 1024 * 1024 {
                    return bad(format!(
                        "request kind {}: bodies are limited to 64MiB",
                        k.name
                    ));
                }
            }
        }
        let quiet_from = self.duration - self.quiesce;
        for (i, f) in self.faults.iter().enumerate() {
            let what = format!("faults[{i}] ({})", f.name());
            if f.end(self.kas.replicas) < f.start() {
                return bad(format!("{what} ends before it starts"));
            }
            if f.end(self.kas.replicas) > quiet_from {
                return bad(format!(
                    "{what} lasts until {:?}, into the final quiet period that starts at {quiet_from:?}",
                    f.end(self.kas.replicas)
                ));
            }
            let fraction_ok = |x: f64| (0.0..=1.0).contains(&x);
            match f {
                Fault::Drop(d) => {
                    if !d.rate_per_hour.is_finite()
                        || d.rate_per_hour < 0.0
                        || !fraction_ok(d.silent)
                    {
                        return bad(format!("{what}: rate_per_hour >= 0 and silent in 0..=1"));
                    }
                }
                Fault::Partition(p) => {
                    if !fraction_ok(p.fraction) || p.kas.is_some_and(|k| k >= self.kas.replicas) {
                        return bad(format!("{what}: fraction in 0..=1 and kas < replicas"));
                    }
                }
                Fault::NatTimeout(n) => {
                    if !fraction_ok(n.fraction) || n.idle_timeout.is_zero() {
                        return bad(format!("{what}: fraction in 0..=1 and idle_timeout > 0"));
                    }
                }
                Fault::KasCrash(c) => {
                    if c.kas >= self.kas.replicas {
                        return bad(format!(
                            "{what}: kas {} does not exist ({} replicas)",
                            c.kas, self.kas.replicas
                        ));
                    }
                }
                Fault::RollingRestart(_) => {}
                Fault::AgentRestarts(a) => {
                    if !a.rate_per_hour.is_finite() || a.rate_per_hour < 0.0 {
                        return bad(format!("{what}: rate_per_hour must be >= 0"));
                    }
                }
                Fault::SlowApi(s) => {
                    if !fraction_ok(s.fraction) || !s.factor.is_finite() || s.factor < 1.0 {
                        return bad(format!("{what}: fraction in 0..=1 and factor >= 1"));
                    }
                }
            }
        }
        let needed = self.faults_end().max(self.agent.start_spread)
            + self.reconnect_bound()
            + self.views_settle();
        if needed > self.duration {
            return bad(format!(
                "the run ({:?}) is too short: faults and start-up end at {:?}, and agents need up to \
                 {:?} to reconnect plus {:?} for views to settle before the end-of-run checks",
                self.duration,
                self.faults_end().max(self.agent.start_spread),
                self.reconnect_bound(),
                self.views_settle()
            ));
        }
        Ok(())
    }

    /// The tunnel settings both sides announce.
    pub fn settings(&self) -> protocol::Settings {
        let p = &self.protocol;
        protocol::Settings {
            max_concurrent_streams: p.max_concurrent_streams,
            initial_stream_window: u32::try_from(p.initial_stream_window).unwrap_or(u32::MAX),
            initial_connection_window: u32::try_from(p.initial_connection_window)
                .unwrap_or(u32::MAX),
            idle_timeout: p.idle_timeout,
            keepalive_interval: p.keepalive_interval,
            ..protocol::Settings::default()
        }
    }

    /// The connection configuration both sides use.
    /// `K` every replica announces in ACCEPT (kas's decision, with the replica count known here).
    pub fn connections_wanted(&self) -> u32 {
        let replicas = u32::try_from(self.kas.replicas).unwrap_or(u32::MAX);
        protocol::tunnel::connection_set::connections_wanted(
            self.kas.agent_connections,
            Some(replicas),
        )
    }

    /// The tunnel configuration of replica `k`'s end of its connections: the scenario's, with
    /// ACCEPT naming the replica and `K`. With `K = 1` ACCEPT carries no name (nothing to tell
    /// duplicates from), so such runs keep the trace hashes they had before replicas were named.
    pub fn server_config(&self, k: usize) -> protocol::Config {
        let mut c = self.connection_config();
        let wanted = self.connections_wanted();
        if wanted > 1 {
            c.replica = protocol::tunnel::ReplicaInfo {
                replica_id: format!("kas-{k}"),
                connections_wanted: wanted,
            };
        }
        c
    }

    pub fn connection_config(&self) -> protocol::Config {
        protocol::Config {
            settings: self.settings(),
            handshake_timeout: self.protocol.handshake_timeout,
            ..protocol::Config::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fields_parse() {
        let s = Scenario::from_yaml(
            "name: t\nduration: 10m\nagents: 5\nkas: {replicas: 2}\n\
             faults:\n  - {kind: kas_crash, at: 1m, kas: 1, down_for: 10s}\n  \
             - {kind: partition, at: 2m, for: 30s, fraction: 0.5}\n",
            "test",
        )
        .unwrap();
        assert_eq!(s.agents, 5);
        assert_eq!(s.faults.len(), 2);
        assert_eq!(s.faults_end(), Duration::from_secs(150));
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(matches!(
            Scenario::from_yaml("agentz: 5\n", "t"),
            Err(ScenarioError::Parse { .. })
        ));
        let e = Scenario::from_yaml(
            "duration: 5m\nfaults:\n  - {kind: kas_crash, at: 4m50s, kas: 0, down_for: 5s}\n",
            "t",
        );
        assert!(matches!(e, Err(ScenarioError::Invalid(_))), "{e:?}");
        let e = Scenario::from_yaml(
            "kas: {replicas: 2}\nfaults:\n  - {kind: kas_crash, at: 1m, kas: 2, down_for: 5s}\n",
            "t",
        );
        assert!(matches!(e, Err(ScenarioError::Invalid(_))), "{e:?}");
        assert!(Scenario::from_yaml("duration: 3 fortnights\n", "t").is_err());
        let e = Scenario::from_yaml("cluster: {watch_latency: 2s}\n", "t");
        assert!(
            matches!(&e, Err(ScenarioError::Invalid(m)) if m.contains("watch_latency")),
            "{e:?}"
        );
        let ok = Scenario::from_yaml("cluster: {watch_latency: 200ms}\n", "t").unwrap();
        assert_eq!(ok.cluster.watch_latency, Duration::from_millis(200));
    }
}
