//! Replaying what a real kas recorded (`simulator run --replay FILE [--scale 10x] [--seed S]`): the
//! workload comes from a `traffic_trace` file (`kas --record FILE`), the world around it (replicas,
//! network, protocol, policies) from a scenario file (`--scenario`, optional; defaults otherwise).
//!
//! What a recording becomes:
//!
//! - **agents**: one simulated agent per recorded agent pseudonym, times the scale. An agent boots when
//!   its first connection was registered (at 0 if the recording started while it was connected). When
//!   its last open connection closed and it connected again later, the agent goes down then and boots
//!   again at its next connect (the process model of an agent restart); a final disconnect with no
//!   later connect is the end of the recording and is not replayed (an agent stays up to the end, as
//!   the end-of-run invariants expect). The restart is a crash: requests still in flight on the
//!   agent then fail (`connection_lost`), as they would if the agent had died; the simulated network
//!   (the scenario's `network.latency`) decides how long requests are in flight.
//! - **requests**: each recorded request arrives at its recorded time for its agent, with its recorded
//!   request and response body sizes; the agent answers after a think time with the recorded duration
//!   as its mean (exponential, from the seeded RNG). Requests of one service, class and sizes share a
//!   request kind named `"{service} {class}"`. `k8s-api` requests are `k8s-api` streams (a `slow_api`
//!   fault slows them); `service-proxy`, `cache` and `upgrade` ones are `service-proxy` streams with
//!   the recorded sizes (the simulated agent answers `cache` requests from its model cluster, whose
//!   sizes are not the recorded ones, and upgraded sessions are replayed as one exchange of their
//!   bytes).
//! - **views traffic**: the recorded rows changed per agent and minute (not counting each
//!   connection's first chunk, the snapshot) become the clusters' `churn_per_minute` (the
//!   simulator's views traffic is made by cluster changes).
//!
//! **Scale** multiplies *agents*: `--scale 10x` replays every recorded agent ten times, each clone
//! with its own agent id and the original's timeline shifted by a seeded offset under one second
//! (clone 0 is not shifted, so `--scale 1` replays the recording as it was). Each agent's request
//! rate stays what it was: ten times the agents make ten times the load, which is what "ten times
//! today's load" means for a kas fleet. Same file, scale and seed ⇒ same trace hash. A recording
//! made with `sample_rate` r holds about r of the agents and is replayed as it is: scale it by 1/r to
//! stand for all of them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use traffic_trace::{Counts, Record, Service, Trace};

use super::clients::Outcome as RequestOutcome;
use super::clock::SimTime;
use super::scenario::{RequestKind, Scenario, ScenarioError};
use super::world::{Ev, World};

/// Most agents a replay may make (recorded agents × scale).
pub const MAX_AGENTS: usize = 1_000_000;
/// Most request kinds a replay makes (distinct service, method, class and sizes).
pub const MAX_KINDS: usize = 100_000;

/// A recording that cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file cannot be opened.
    #[error("cannot open the recording {path}: {source}")]
    Open {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a trace.
    #[error("cannot read the recording {path}: {source}")]
    Trace {
        /// The path given.
        path: String,
        /// What is wrong.
        source: traffic_trace::TraceError,
    },
    /// A scale that is not `N` or `Nx` with N in 1..=10000.
    #[error("invalid scale {0:?}: expected e.g. 10x (a whole number from 1 to 10000)")]
    Scale(String),
    /// The recording holds no agent.
    #[error("the recording holds no agent")]
    NoAgents,
    /// Too large a replay.
    #[error("{0}")]
    TooLarge(String),
    /// The scenario it makes is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
}

/// `--scale`: how many times each recorded agent is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale(pub u32);

impl std::str::FromStr for Scale {
    type Err = ReplayError;

    fn from_str(s: &str) -> Result<Scale, ReplayError> {
        let n = s.trim().trim_end_matches(['x', 'X']);
        match n.parse::<u32>() {
            Ok(k) if (1..=10_000).contains(&k) => Ok(Scale(k)),
            _ => Err(ReplayError::Scale(s.to_owned())),
        }
    }
}

/// Something the replay makes happen at a time (besides boots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The agent's process goes down, to boot again after `down_for`.
    Down {
        /// Agent index.
        agent: usize,
        /// Until its next connect.
        down_for: Duration,
    },
    /// A client request for the agent, of this kind (index into the mix).
    Request {
        /// Agent index.
        agent: usize,
        /// Request kind.
        kind: usize,
    },
}

/// The workload a recording becomes (see the module documentation).
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The file it came from (for the report).
    pub source: String,
    /// How many times each recorded agent is replayed.
    pub scale: u32,
    /// Simulated agents (recorded agents × scale).
    pub agents: usize,
    /// When each agent first boots.
    pub boots: Vec<(SimTime, usize)>,
    /// Downs and requests, by time (stable).
    pub steps: Vec<(SimTime, Step)>,
    /// The request kinds.
    pub mix: Vec<RequestKind>,
    /// Recorded view rows changed per agent and minute (the clusters' churn).
    pub churn_per_minute: f64,
    /// When the last recorded event happened.
    pub span: Duration,
    /// What the recording holds (unscaled).
    pub recorded: Counts,
    /// What the plan replays (counted from the plan itself: what the simulation is asked to do).
    pub planned: Counts,
}

/// One recorded agent's timeline.
#[derive(Debug, Default)]
struct Timeline {
    boot: Option<u64>,
    /// (down at, up again at), in µs.
    downs: Vec<(u64, u64)>,
    /// (at, kind) in µs.
    requests: Vec<(u64, usize)>,
    open: u64,
    down_since: Option<u64>,
    connects: u64,
    disconnects: u64,
    seen_connection_event: bool,
    /// Connections whose first views chunk (the snapshot) is still to come.
    snapshots_pending: u64,
}

/// The key of a request kind.
type KindKey = (Service, String, String, u64, u64);

impl ReplayPlan {
    /// Reads `path` and plans its replay at `scale` (the seed shifts the clones).
    pub fn load(path: &Path, scale: Scale, seed: u64) -> Result<ReplayPlan, ReplayError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| ReplayError::Open {
            path: shown.clone(),
            source,
        })?;
        let trace =
            Trace::read(std::io::BufReader::new(file)).map_err(|source| ReplayError::Trace {
                path: shown.clone(),
                source,
            })?;
        ReplayPlan::new(&trace, &shown, scale, seed)
    }

    /// Plans the replay of `trace` at `scale`.
    pub fn new(
        trace: &Trace,
        source: &str,
        scale: Scale,
        seed: u64,
    ) -> Result<ReplayPlan, ReplayError> {
        let records = trace.sorted();
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut lines: Vec<Timeline> = Vec::new();
        let mut kinds: BTreeMap<KindKey, usize> = BTreeMap::new();
        let mut kind_durations: Vec<(u64, u64)> = Vec::new();
        let mut mix: Vec<RequestKind> = Vec::new();
        let mut rows = 0u64;
        let mut span = 0u64;
        for r in &records {
            span = span.max(r.t_us());
            let next = lines.len();
            let a = *index.entry(r.agent()).or_insert(next);
            if a == lines.len() {
                lines.push(Timeline::default());
            }
            let line = &mut lines[a];
            match r {
                Record::Connected { t_us, .. } => {
                    line.connects += 1;
                    if line.boot.is_none() {
                        line.boot = Some(*t_us);
                    } else if let Some(down) = line.down_since.take() {
                        line.downs.push((down, *t_us));
                    }
                    line.open += 1;
                    line.snapshots_pending += 1;
                    line.seen_connection_event = true;
                }
                Record::Disconnected { t_us, .. } => {
                    line.disconnects += 1;
                    if !line.seen_connection_event {
                        // Connected before the recording started.
                        line.boot = Some(0);
                        line.open = 1;
                    }
                    line.seen_connection_event = true;
                    line.open = line.open.saturating_sub(1);
                    if line.open == 0 {
                        line.down_since = Some(*t_us);
                    }
                }
                Record::Request {
                    t_us,
                    service,
                    method,
                    class,
                    request_bytes,
                    response_bytes,
                    duration_us,
                    ..
                } => {
                    let key = (
                        *service,
                        method.clone(),
                        class.clone(),
                        *request_bytes,
                        *response_bytes,
                    );
                    let kind = match kinds.get(&key) {
                        Some(k) => *k,
                        None => {
                            if mix.len() >= MAX_KINDS {
                                return Err(ReplayError::TooLarge(format!(
                                    "more than {MAX_KINDS} distinct request kinds"
                                )));
                            }
                            let k = mix.len();
                            kinds.insert(key, k);
                            mix.push(RequestKind {
                                name: format!("{} {class}", service.as_str()),
                                service: match service {
                                    Service::K8sApi => protocol::service::K8S_API,
                                    _ => protocol::service::SERVICE_PROXY,
                                }
                                .to_owned(),
                                method: method.clone(),
                                path: "/".to_owned(),
                                weight: 0.0,
                                request_bytes: *request_bytes,
                                response_bytes: *response_bytes,
                                think: Duration::ZERO,
                            });
                            kind_durations.push((0, 0));
                            k
                        }
                    };
                    kind_durations[kind].0 += duration_us;
                    kind_durations[kind].1 += 1;
                    line.requests.push((*t_us, kind));
                    if line.boot.is_none() {
                        line.boot = Some(0);
                    }
                }
                Record::Views { rows: n, .. } => {
                    // A connection's first chunk is the snapshot of the whole cache, not churn.
                    if line.snapshots_pending > 0 {
                        line.snapshots_pending -= 1;
                    } else {
                        rows += n;
                    }
                    if line.boot.is_none() {
                        line.boot = Some(0);
                    }
                }
            }
        }
        if lines.is_empty() {
            return Err(ReplayError::NoAgents);
        }
        let k = scale.0 as usize;
        let agents = lines.len().saturating_mul(k);
        if agents > MAX_AGENTS {
            return Err(ReplayError::TooLarge(format!(
                "{} recorded agents × {k} is over {MAX_AGENTS} agents",
                lines.len()
            )));
        }
        for (kind, (total, n)) in mix.iter_mut().zip(&kind_durations) {
            kind.think = Duration::from_micros(total / (*n).max(1));
            kind.weight = *n as f64;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_706c_6179);
        let mut boots = Vec::with_capacity(agents);
        let mut steps = Vec::new();
        let at = |us: u64, shift: u64| SimTime::from_duration(Duration::from_micros(us + shift));
        for clone in 0..k {
            for (orig, line) in lines.iter().enumerate() {
                let agent = clone * lines.len() + orig;
                let shift = if clone == 0 {
                    0
                } else {
                    rng.random_range(0..1_000_000u64)
                };
                boots.push((at(line.boot.unwrap_or(0), shift), agent));
                for (down, up) in &line.downs {
                    steps.push((
                        at(*down, shift),
                        Step::Down {
                            agent,
                            down_for: Duration::from_micros(up.saturating_sub(*down)),
                        },
                    ));
                }
                for (t, kind) in &line.requests {
                    steps.push((at(*t, shift), Step::Request { agent, kind: *kind }));
                }
            }
        }
        boots.sort_by_key(|(t, a)| (*t, *a));
        steps.sort_by_key(|(t, _)| *t);
        let minutes = (span as f64 / 60e6).max(1.0 / 60.0);
        let recorded = trace.counts();
        let mut planned = Counts {
            agents: agents as u64,
            connects: lines.iter().map(|l| 1 + l.downs.len() as u64).sum::<u64>() * k as u64,
            disconnects: lines.iter().map(|l| l.downs.len() as u64).sum::<u64>() * k as u64,
            views_updates: recorded.views_updates * k as u64,
            views_rows: recorded.views_rows * k as u64,
            views_bytes: recorded.views_bytes * k as u64,
            ..Counts::default()
        };
        for (_, step) in &steps {
            if let Step::Request { kind, .. } = step {
                let m = &mix[*kind];
                *planned.requests.entry(m.name.clone()).or_default() += 1;
                planned.request_bytes += m.request_bytes;
                planned.response_bytes += m.response_bytes;
            }
        }
        Ok(ReplayPlan {
            source: source.to_owned(),
            scale: scale.0,
            agents,
            boots,
            steps,
            mix,
            churn_per_minute: rows as f64 / lines.len() as f64 / minutes,
            span: Duration::from_micros(span),
            recorded,
            planned,
        })
    }

    /// The scenario that replays this plan in the world `base` describes (replicas, network,
    /// protocol, policies, faults): its agents, duration, clients and churn are the plan's.
    pub fn scenario(self, mut base: Scenario) -> Result<Scenario, ReplayError> {
        base.name = format!("replay of {} at {}x", self.source, self.scale);
        base.agents = self.agents;
        base.clients.rate = 0.0;
        base.clients.mix = self.mix.clone();
        base.cluster.churn_per_minute = self.churn_per_minute;
        base.cluster.hot_fraction = 0.0;
        let last_boot = self
            .boots
            .iter()
            .map(|(t, _)| t.as_duration())
            .chain(self.steps.iter().map(|(t, s)| match s {
                Step::Down { down_for, .. } => t.as_duration() + *down_for,
                Step::Request { .. } => Duration::ZERO,
            }))
            .max()
            .unwrap_or_default();
        // Agents must be connected by the reconnect deadline, which counts from the start spread.
        base.agent.start_spread = base.agent.start_spread.max(last_boot);
        // A client waits long enough for the slowest recorded kind (think times are exponential
        // around the recorded mean: 20 means leave a chance of e^-20), at most 6 h.
        let slowest = self.mix.iter().map(|k| k.think).max().unwrap_or_default();
        base.clients.timeout = base.clients.timeout.max(
            slowest
                .saturating_mul(20)
                .min(Duration::from_secs(6 * 3600)),
        );
        let min_quiesce = base.clients.timeout + base.kas.hop_latency * 2 + Duration::from_secs(5);
        base.quiesce = base.quiesce.max(min_quiesce);
        let busy = self.span.max(last_boot) + Duration::from_secs(1);
        // Long enough for the end-of-run checks: every agent reconnected and views settled after
        // the last boot or fault.
        let settled = base.faults_end().max(base.agent.start_spread)
            + base.reconnect_bound()
            + base.views_settle();
        base.duration = (busy.max(base.faults_end()) + base.quiesce).max(settled);
        base.replay = Some(Arc::new(self));
        base.validate()?;
        Ok(base)
    }

    /// The comparison of the recording with what the run did.
    pub fn report(&self, outcome: &super::Outcome) -> ReplayReport {
        let r = &outcome.report;
        ReplayReport {
            source: self.source.clone(),
            scale: self.scale,
            expected: self.recorded.scaled(u64::from(self.scale)),
            planned: self.planned.clone(),
            simulated_agents: r.agents as u64,
            simulated_connects: r.agent_connects,
            simulated_restarts: r.agent_restarts,
            simulated_requests: r.requests.issued,
            simulated_ok: r
                .requests
                .outcomes
                .get(RequestOutcome::Response(200).name())
                .copied()
                .unwrap_or(0),
            simulated_outcomes: r
                .requests
                .outcomes
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

/// The recording (scaled) beside what the replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// The recording.
    pub source: String,
    /// The scale.
    pub scale: u32,
    /// The recording's counts × scale.
    pub expected: Counts,
    /// What the plan replayed (agents booted, connects and disconnects replayed, requests issued by
    /// class and their body sizes, views traffic recorded).
    pub planned: Counts,
    /// Agents in the simulated world.
    pub simulated_agents: u64,
    /// Connections the simulated agents established.
    pub simulated_connects: u64,
    /// Agent restarts (replayed disconnects).
    pub simulated_restarts: u64,
    /// Requests the simulated clients issued.
    pub simulated_requests: u64,
    /// Of which answered.
    pub simulated_ok: u64,
    /// Ended requests by outcome.
    pub simulated_outcomes: BTreeMap<String, u64>,
}

impl ReplayReport {
    /// A few lines for the run's summary.
    pub fn summary(&self) -> String {
        let e = &self.expected;
        let p = &self.planned;
        let mut s = format!(
            "replay of {} at {}x: recorded×scale {} agents, {} connects, {} disconnects, {} requests \
             ({} B up, {} B down), {} view rows\n",
            self.source,
            self.scale,
            e.agents,
            e.connects,
            e.disconnects,
            e.requests.values().sum::<u64>(),
            e.request_bytes,
            e.response_bytes,
            e.views_rows
        );
        s.push_str(&format!(
            "replayed: {} agents, {} connects ({} planned), {} agent restarts, {} requests issued \
             ({} answered; {} B up, {} B down planned)\n",
            self.simulated_agents,
            self.simulated_connects,
            p.connects,
            self.simulated_restarts,
            self.simulated_requests,
            self.simulated_ok,
            p.request_bytes,
            p.response_bytes
        ));
        let outcomes: Vec<String> = self
            .simulated_outcomes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!("  outcomes: {}\n", outcomes.join(" ")));
        for (class, n) in &p.requests {
            s.push_str(&format!("  {class}: {n}\n"));
        }
        s
    }
}

impl World {
    /// The replay's initial events: boots at the recorded connects, downs and requests at their
    /// times.
    pub(super) fn schedule_replay(&mut self, plan: &ReplayPlan) {
        for (at, agent) in &plan.boots {
            self.queue.push(*at, Ev::Boot { agent: *agent });
        }
        for (index, (at, _)) in plan.steps.iter().enumerate() {
            self.queue.push(*at, Ev::Replay { index });
        }
    }

    /// A replayed down or request.
    pub(super) fn replay_step(&mut self, index: usize) {
        let Some(step) = self
            .sc
            .replay
            .as_ref()
            .and_then(|p| p.steps.get(index))
            .map(|(_, s)| *s)
        else {
            return;
        };
        match step {
            Step::Down { agent, down_for } => self.agent_crash(agent, down_for),
            Step::Request { agent, kind } => self.issue_request(agent as u64 + 1, kind),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use traffic_trace::{Header, RecordingOptions};

    fn trace() -> Trace {
        let c = |t: u64, a: &str| Record::Connected {
            t_us: t,
            agent: a.into(),
            connection: "c".into(),
            replica: "single".into(),
        };
        let d = |t: u64, a: &str| Record::Disconnected {
            t_us: t,
            agent: a.into(),
            connection: "c".into(),
            replica: "single".into(),
        };
        let req = |t: u64, a: &str, n: u64| Record::Request {
            t_us: t,
            agent: a.into(),
            service: Service::K8sApi,
            method: "GET".into(),
            class: "GET pods list".into(),
            status: 200,
            request_bytes: 0,
            response_bytes: n,
            duration_us: 3_000,
        };
        Trace {
            header: Header::new("0.1.0", 0, "single", RecordingOptions::default()),
            records: vec![
                c(1_000_000, "a-1"),
                c(1_500_000, "a-2"),
                req(3_000_000, "a-1", 4096),
                req(3_500_000, "a-2", 100),
                d(5_000_000, "a-2"),
                c(7_000_000, "a-2"),
                req(9_000_000, "a-2", 100),
                Record::Views {
                    t_us: 9_500_000,
                    agent: "a-1".into(),
                    rows: 4,
                    bytes: 300,
                },
                Record::Views {
                    t_us: 9_600_000,
                    agent: "a-1".into(),
                    rows: 6,
                    bytes: 200,
                },
            ],
        }
    }

    #[test]
    fn scales_parse() {
        assert_eq!("10x".parse::<Scale>().unwrap(), Scale(10));
        assert_eq!("3".parse::<Scale>().unwrap(), Scale(3));
        assert!("0x".parse::<Scale>().is_err());
        assert!("ten".parse::<Scale>().is_err());
        assert!("1.5x".parse::<Scale>().is_err());
    }

    #[test]
    fn a_plan_replays_the_recording_and_its_multiples() {
        let t = trace();
        let one = ReplayPlan::new(&t, "t", Scale(1), 1).unwrap();
        let recorded = t.counts();
        assert_eq!(one.planned.agents, recorded.agents);
        assert_eq!(one.planned.connects, recorded.connects);
        assert_eq!(one.planned.disconnects, recorded.disconnects);
        assert_eq!(one.planned.requests, recorded.requests);
        assert_eq!(one.planned.response_bytes, recorded.response_bytes);
        assert_eq!(
            one.boots[0],
            (SimTime::from_duration(Duration::from_secs(1)), 0)
        );
        assert!(one.steps.iter().any(|(t, s)| *t
            == SimTime::from_duration(Duration::from_secs(5))
            && *s
                == Step::Down {
                    agent: 1,
                    down_for: Duration::from_secs(2)
                }));
        // The snapshot (a connection's first views chunk) is not churn: 6 rows, 2 agents, 9.6 s.
        assert!(
            (one.churn_per_minute - 18.75).abs() < 1e-9,
            "{}",
            one.churn_per_minute
        );
        let ten = ReplayPlan::new(&t, "t", Scale(10), 1).unwrap();
        assert_eq!(ten.planned, recorded.scaled(10));
        // Same seed, same plan; another seed shifts the clones.
        let again = ReplayPlan::new(&t, "t", Scale(10), 1).unwrap();
        assert_eq!(ten.steps, again.steps);
        let other = ReplayPlan::new(&t, "t", Scale(10), 2).unwrap();
        assert_ne!(ten.steps, other.steps);
    }

    #[test]
    fn a_replay_runs_deterministically_and_answers_every_request() {
        let t = trace();
        let run = |scale: u32, seed: u64| {
            let plan = ReplayPlan::new(&t, "t", Scale(scale), seed).unwrap();
            let mut base = Scenario {
                seed,
                ..Scenario::default()
            };
            base.kas.replicas = 2;
            let sc = plan.clone().scenario(base).unwrap();
            let outcome = crate::sim::run(sc, crate::sim::RunOptions::default());
            (plan.report(&outcome), outcome)
        };
        let (r, o) = run(1, 7);
        assert!(o.violation.is_none(), "{:?}", o.violation);
        assert_eq!(r.simulated_agents, 2);
        assert_eq!(r.simulated_requests, 3);
        assert_eq!(r.simulated_ok, 3, "{}", r.summary());
        assert_eq!(r.simulated_connects, 3);
        assert_eq!(r.simulated_restarts, 1);
        let (_, again) = run(1, 7);
        assert_eq!(o.trace_hash, again.trace_hash);
        let (r10, o10) = run(10, 7);
        assert!(o10.violation.is_none(), "{:?}", o10.violation);
        assert_eq!(r10.simulated_requests, 30);
        assert_eq!(r10.simulated_ok, 30);
        assert_eq!(r10.simulated_connects, 30);
    }
}
