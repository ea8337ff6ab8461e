//! # The deterministic simulator
//!
//! Thousands of agents, their clusters and a few kas replicas in virtual time, with faults, driving
//! the production code directly: [`protocol::Connection`] (frames, flow control, keepalive, GOAWAY) on
//! both ends of every tunnel, [`protocol::routing::router::Router`] in every replica,
//! the views endpoints [`protocol::cache::AgentViews`] in every agent and
//! [`protocol::cache::MirrorTable`] in every replica,
//! and agentk's connection set [`protocol::tunnel::connection_set::ConnectionSet`] deciding when agents
//! dial. No async runtime and no clock reads in the loop; one thread runs the world. Other threads
//! only ever take work that depends on nothing but what is handed to them, and the loop takes it
//! back at points fixed by the run's own history, so nothing can depend on timing: a batch of
//! deferred keepalive-round work, each flow's own (`flow::FlowTable::take_deferred`, a scoped
//! thread joined before the loop goes on), and the cluster changes, each agent's own
//! ([`informer`]: worker threads; the loop joins a change when the watch latency has passed or
//! before anything else touches that agent).
//!
//! | module | what it is |
//! |---|---|
//! | [`scenario`] | scenario files (YAML) and command-line overrides |
//! | [`units`] | durations and sizes as written in scenarios |
//! | [`clock`] | virtual time and its mapping onto the `Instant`s the core takes |
//! | [`queue`] | the single event queue, ordered by (time, sequence) |
//! | [`trace`] | the canonical event trace and its FNV-1a hash |
//! | [`world`] | the world, the event loop and the transport mechanics |
//! | [`round`] | keepalive rounds: an idle connection's PING/PONG taken by the flow itself, lazily |
//! | [`net`] | the network model of a connection: latency, jitter, bandwidth, partitions, NAT |
//! | [`flow`] | one connection: its two endpoints and what the applications keep beside them |
//! | [`agent`] | a simulated agentk: cache, views stream, requests, reconnects |
//! | [`body`] | patterned request and response bodies with declared length and digest |
//! | [`kas`] | a simulated kas replica: router, mirrors, requests, crash and rolling restart |
//! | [`cluster`] | a simulated cluster: objects and churn |
//! | [`clients`] | client requests and the exactly-once ledger |
//! | [`faults`] | the scenario's faults as events |
//! | [`gitops`] | GitOps in virtual time: `gitops::Sync` against model clusters under commits, outages, restarts |
//! | [`informer`] | the agents' informers: cluster changes processed on worker threads beside the loop, joined deterministically |
//! | [`views`] | the views stream: agents drive `AgentViews`, replicas `MirrorTable`; fault injection |
//! | [`invariants`] | what must always hold, and the checks |
//! | [`profile`] | cost profiles: what the real programs cost (memory, CPU, latency), measured by `simulator calibrate` |
//! | [`report`] | capacity metrics and the report |
//! | [`plot`] | the report's curves as SVG |
//! | [`progress`] | the progress line (the only other wall-clock reader) |
//! | [`live`] | the live view in the browser (`--serve`): snapshots, pause and step, its HTTP server |
//! | [`replay`] | a kas recording (`traffic_trace`) as the workload (`--replay FILE --scale 10x`) |
//!
//! ## Determinism
//!
//! One [`rand_chacha::ChaCha8Rng`] seeded from the scenario's seed makes every random choice, in the
//! order events happen, except each cluster's changes (its own stream of the seed) and each link's
//! jitter (likewise); events are totally ordered by (time, insertion sequence); every table is a
//! `BTreeMap`/`BTreeSet`; simulated time is an integer ([`clock::SimTime`]) mapped onto instants as
//! offsets from one epoch. The same scenario and seed therefore give the same trace, byte for byte,
//! and the same [trace hash](world::Outcome::trace_hash).
//!
//! ## Running one
//!
//! ```no_run
//! use simulator::sim::{Scenario, RunOptions, run};
//! let scenario = Scenario::load("simulator/scenarios/steady.yaml".as_ref())?;
//! let outcome = run(scenario, RunOptions::default());
//! println!("trace hash: {:016x}", outcome.trace_hash);
//! assert!(outcome.violation.is_none());
//! # Ok::<(), simulator::sim::ScenarioError>(())
//! ```

pub mod agent;
pub mod body;
pub mod clients;
pub mod clock;
pub mod cluster;
pub mod faults;
pub mod flow;
pub mod gitops;
pub mod informer;
pub mod invariants;
pub mod kas;
pub mod live;
pub mod net;
pub mod plot;
pub mod profile;
pub mod progress;
pub mod queue;
pub mod replay;
pub mod report;
pub mod round;
pub mod scenario;
pub mod trace;
pub mod units;
pub mod views;
pub mod world;

pub use invariants::Violation;
pub use profile::CostProfile;
pub use report::Report;
pub use scenario::{Overrides, Scenario, ScenarioError};
pub use trace::TraceSink;
pub use world::{Outcome, RunOptions};

/// Runs a scenario (with its `seed`) to the end or to the first invariant violation.
pub fn run(scenario: Scenario, options: RunOptions) -> Outcome {
    world::World::new(scenario, options).run()
}
