//! Capacity metrics, sampled over the run, and the report written at the end (JSON, summary text).
//!
//! Per replica: connections, streams, pending requests and bytes per second at every sample, with
//! their peaks; request latency percentiles (virtual time, from the client sending the request to the
//! end of the response); memory from the calibrated cost model ([`CostProfile::memory`]: kas's
//! baseline RSS, per connection, per open stream, per pending request as measured on the real kas,
//! plus buffered octets and the mirrors' rows). The report names the profile it used. Reconnect
//! storms: for each replica crash or restart, how long until every agent it served was connected
//! again.

use std::collections::BTreeSet;
use std::time::Duration;

use protocol::cache::Mirror;
use serde::Serialize;

use super::clients::{Completed, Outcome};
use super::clock::SimTime;
use super::invariants::Violation;
use super::profile::{CostProfile, Usage};
use super::world::{Ev, World};

/// Mirrors measured per replica and sample (the rest is extrapolated).
const MIRROR_SAMPLE: usize = 256;
/// Estimated bytes of one B-tree entry beyond its key and value.
const NODE_OVERHEAD: usize = 48;

/// Why a reconnect storm started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StormCause {
    Crash,
    Rolling,
}

#[derive(Debug)]
struct Storm {
    kas: usize,
    cause: StormCause,
    at: SimTime,
    affected: usize,
    waiting: BTreeSet<usize>,
    end: Option<SimTime>,
}

/// One replica's counters.
#[derive(Debug, Default)]
pub struct KasCounters {
    /// Octets sent and received on agent connections.
    pub bytes: u64,
    pub response_bytes: u64,
    pub refused: u64,
    last_bytes: u64,
    peak_connections: usize,
    peak_streams: u64,
    peak_pending: usize,
    peak_bytes_per_s: f64,
    peak_memory: usize,
    peak_mirrors: usize,
    latencies: Vec<u64>,
    interval: Vec<u64>,
    requests: u64,
    errors: u64,
    series: KasSeries,
}

impl KasCounters {
    /// Requests completed through this replica so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The curves sampled so far.
    pub fn series(&self) -> &KasSeries {
        &self.series
    }
}

/// Curves of one replica, one point per sample.
#[derive(Debug, Default, Clone, Serialize)]
pub struct KasSeries {
    pub connections: Vec<usize>,
    pub streams: Vec<u64>,
    pub pending: Vec<usize>,
    pub bytes_per_s: Vec<f64>,
    pub latency_p99_ms: Vec<f64>,
    pub memory_bytes: Vec<usize>,
}

/// Everything measured during a run.
#[derive(Debug)]
pub struct Metrics {
    pub kas: Vec<KasCounters>,
    pub churn: u64,
    pub views_messages: u64,
    pub drops: u64,
    pub fault_targets: Vec<(&'static str, u64)>,
    storms: Vec<Storm>,
    all_latencies: Vec<u64>,
    sample_times: Vec<f64>,
    last_sample: SimTime,
}

impl Metrics {
    pub fn new(replicas: usize) -> Metrics {
        Metrics {
            kas: (0..replicas).map(|_| KasCounters::default()).collect(),
            churn: 0,
            views_messages: 0,
            drops: 0,
            fault_targets: Vec::new(),
            storms: Vec::new(),
            all_latencies: Vec::new(),
            sample_times: Vec::new(),
            last_sample: SimTime::ZERO,
        }
    }

    pub fn request_done(&mut self, c: &Completed, _now: SimTime) {
        let ok = matches!(c.outcome, Outcome::Response(_));
        if ok {
            self.all_latencies.push(c.latency_ns);
        }
        if let Some(k) = c.kas.and_then(|k| self.kas.get_mut(k)) {
            k.requests += 1;
            if ok {
                k.latencies.push(c.latency_ns);
                k.interval.push(c.latency_ns);
            } else {
                k.errors += 1;
            }
        }
    }

    /// Agent `i` completed a handshake.
    pub fn agent_connected(&mut self, i: usize, now: SimTime) {
        for s in self.storms.iter_mut().filter(|s| s.end.is_none()) {
            if s.waiting.remove(&i) && s.waiting.is_empty() {
                s.end = Some(now);
            }
        }
    }
}

/// Percentiles of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn percentiles(values: &mut [u64]) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_unstable();
    let at = |q: f64| {
        let i = ((values.len() as f64 - 1.0) * q).round() as usize;
        values[i.min(values.len() - 1)] as f64 / 1e6
    };
    Percentiles {
        count: values.len(),
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// Memory of one replica from the cost profile ([`CostProfile::memory`]).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryEstimate {
    /// The profile's baseline RSS (nothing connected).
    pub baseline_bytes: u64,
    /// The profile's bytes per idle connection.
    pub per_connection_bytes: u64,
    /// The profile's bytes per open stream.
    pub per_stream_bytes: u64,
    /// Peak of the model's total (RSS of the replica).
    pub peak_total_bytes: usize,
    /// That peak over the peak connections (baseline included).
    pub peak_per_connection_bytes: usize,
    pub peak_mirror_bytes: usize,
}

/// One replica in the report.
#[derive(Debug, Clone, Serialize)]
pub struct KasReport {
    pub index: usize,
    pub peak_connections: usize,
    pub peak_streams: u64,
    pub peak_pending: usize,
    pub peak_bytes_per_s: f64,
    pub mean_bytes_per_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub refused_handshakes: u64,
    pub restarts: u32,
    pub latency: Percentiles,
    pub memory: MemoryEstimate,
}

/// A reconnect storm in the report.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub kas: usize,
    pub cause: StormCause,
    pub at_s: f64,
    pub affected_agents: usize,
    /// Until every affected agent was connected again; `None` if some never were.
    pub duration_s: Option<f64>,
}

/// Request totals.
#[derive(Debug, Clone, Serialize)]
pub struct RequestReport {
    pub issued: u64,
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub latency: Percentiles,
    /// Times a replica a request was forwarded to no longer held the agent and sent the request
    /// back to the replica the client reached, which placed it again (the routing policy's rule 5a).
    pub sent_back: u64,
}

/// The capacity report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The cost profile the memory, handshake and latency model used.
    pub profile: CostProfile,
    pub seed: u64,
    pub agents: usize,
    pub kas_replicas: usize,
    pub simulated_s: f64,
    pub events: u64,
    pub trace_hash: String,
    pub wall_s: f64,
    pub events_per_s: f64,
    pub requests: RequestReport,
    pub cluster_changes: u64,
    pub view_messages: u64,
    pub connection_drops: u64,
    pub agent_restarts: u64,
    pub agent_connects: u64,
    pub fault_targets: Vec<(String, u64)>,
    pub kas: Vec<KasReport>,
    pub reconnect_storms: Vec<StormReport>,
    pub violation: Option<Violation>,
    /// Sample times (s) of the series.
    pub sample_times_s: Vec<f64>,
    pub series: Vec<KasSeries>,
}

fn mirror_bytes(mirror: &Mirror) -> usize {
    let mut n = std::mem::size_of::<Mirror>();
    for view in mirror.views().iter() {
        n += NODE_OVERHEAD + view.schema.name.len() * 2 + 64;
        for (key, values) in &view.rows {
            n += NODE_OVERHEAD
                + key.iter().map(|s| s.len() + 24).sum::<usize>()
                + values.len() * std::mem::size_of::<protocol::cache::Decimal>()
                + 48;
        }
    }
    n
}

impl World {
    /// Agents currently connected to replica `k` start a storm.
    pub(super) fn storm_begin(&mut self, k: usize, cause: StormCause) {
        let waiting: BTreeSet<usize> = (0..self.agents.len())
            .filter(|&i| {
                self.agents[i]
                    .connected_flow()
                    .and_then(|f| self.flows.get(&f))
                    .is_some_and(|f| f.kas == k)
            })
            .collect();
        let affected = waiting.len();
        self.note(format_args!("storm k={k} affected={affected}"));
        self.metrics.storms.push(Storm {
            kas: k,
            cause,
            at: self.now,
            affected,
            end: (affected == 0).then_some(self.now),
            waiting,
        });
    }

    /// Samples the curves, checks the periodic invariants and drops expired mirrors.
    pub(super) fn sample(&mut self) {
        self.take_deferred_rounds();
        let next = self.now.plus(self.sc.sample_interval);
        if next < self.end {
            self.queue.push(next, Ev::Sample);
        }
        let dt = self
            .now
            .since(self.metrics.last_sample)
            .as_secs_f64()
            .max(1e-9);
        self.metrics.last_sample = self.now;
        self.metrics.sample_times.push(self.now.as_secs_f64());
        for k in 0..self.kas.len() {
            self.expire_mirrors(k);
            let kas = &mut self.kas[k];
            let mut streams = 0u64;
            // Streams other than the views stream each agentk keeps (whose cost is its mirror).
            let mut request_streams = 0usize;
            let mut buffered = 0usize;
            for fid in &kas.conns {
                if let Some(e) = self.flows.get(fid).and_then(|f| f.k.live()) {
                    let (l, r) = e.conn.open_streams();
                    streams += u64::from(l + r);
                    request_streams +=
                        ((l + r) as usize).saturating_sub(usize::from(e.views.is_some()));
                    buffered += e.outbox.values().map(|o| o.bytes()).sum::<usize>()
                        + e.views_stream.as_ref().map_or(0, |s| s.buffered());
                }
            }
            // Measuring every mirror every sample would cost more than the rest of the sample:
            // measure at most MIRROR_SAMPLE of them, evenly spread, and scale up.
            let step = kas.mirrors.len().div_ceil(MIRROR_SAMPLE).max(1);
            let (measured, bytes) = kas
                .mirrors
                .mirrors()
                .step_by(step)
                .fold((0usize, 0usize), |(n, b), (_, m)| {
                    (n + 1, b + mirror_bytes(m))
                });
            let mirror_bytes = (bytes * kas.mirrors.len())
                .checked_div(measured)
                .unwrap_or(0);
            let router = kas.router.stats().router;
            let memory = if kas.is_up() {
                let usage = Usage {
                    connections: kas.conns.len(),
                    streams: request_streams,
                    pending_requests: router.pending,
                    buffered_bytes: buffered,
                    mirror_bytes,
                };
                usize::try_from(self.profile.memory(&usage)).unwrap_or(usize::MAX)
            } else {
                0
            };
            let c = &mut self.metrics.kas[k];
            let rate = (c.bytes - c.last_bytes) as f64 / dt;
            c.last_bytes = c.bytes;
            let p99 = percentiles(&mut c.interval).p99_ms;
            c.interval.clear();
            c.peak_connections = c.peak_connections.max(kas.established);
            c.peak_streams = c.peak_streams.max(streams);
            c.peak_pending = c.peak_pending.max(router.pending);
            c.peak_bytes_per_s = c.peak_bytes_per_s.max(rate);
            if memory > c.peak_memory {
                c.peak_memory = memory;
                c.peak_mirrors = mirror_bytes;
            }
            let s = &mut c.series;
            s.connections.push(kas.established);
            s.streams.push(streams);
            s.pending.push(router.pending);
            s.bytes_per_s.push(rate);
            s.latency_p99_ms.push(p99);
            s.memory_bytes.push(memory);
        }
        self.check_periodic();
    }

    /// The report of the run so far.
    pub(super) fn report(&mut self, wall: Duration) -> Report {
        let simulated = self.now.as_secs_f64().max(1e-9);
        let kas = self
            .metrics
            .kas
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                let peak_conns = c.peak_connections.max(1);
                KasReport {
                    index: i,
                    peak_connections: c.peak_connections,
                    peak_streams: c.peak_streams,
                    peak_pending: c.peak_pending,
                    peak_bytes_per_s: c.peak_bytes_per_s,
                    mean_bytes_per_s: c.bytes as f64 / simulated,
                    requests: c.requests,
                    errors: c.errors,
                    refused_handshakes: c.refused,
                    restarts: self.kas[i].restarts,
                    latency: percentiles(&mut c.latencies),
                    memory: MemoryEstimate {
                        baseline_bytes: self.profile.memory.baseline_bytes,
                        per_connection_bytes: self.profile.memory.per_connection_bytes,
                        per_stream_bytes: self.profile.memory.per_stream_bytes,
                        peak_total_bytes: c.peak_memory,
                        peak_per_connection_bytes: c.peak_memory / peak_conns,
                        peak_mirror_bytes: c.peak_mirrors,
                    },
                }
            })
            .collect();
        let storms = self
            .metrics
            .storms
            .iter()
            .map(|s| StormReport {
                kas: s.kas,
                cause: s.cause,
                at_s: s.at.as_secs_f64(),
                affected_agents: s.affected,
                duration_s: s.end.map(|e| e.since(s.at).as_secs_f64()),
            })
            .collect();
        let wall_s = wall.as_secs_f64();
        Report {
            scenario: self.sc.name.clone(),
            profile: self.profile.clone(),
            seed: self.seed,
            agents: self.agents.len(),
            kas_replicas: self.kas.len(),
            simulated_s: self.now.as_secs_f64(),
            events: self.event_index,
            trace_hash: format!("{:016x}", self.trace.hash()),
            wall_s,
            events_per_s: if wall_s > 0.0 {
                self.event_index as f64 / wall_s
            } else {
                0.0
            },
            requests: RequestReport {
                issued: self.ledger.issued(),
                outcomes: self
                    .ledger
                    .outcomes()
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
                latency: percentiles(&mut self.metrics.all_latencies),
                sent_back: self.ledger.sent_back(),
            },
            cluster_changes: self.metrics.churn,
            view_messages: self.metrics.views_messages,
            connection_drops: self.metrics.drops,
            agent_restarts: self.agents.iter().map(|a| u64::from(a.restarts)).sum(),
            agent_connects: self.agents.iter().map(|a| a.connects).sum(),
            fault_targets: self
                .metrics
                .fault_targets
                .iter()
                .map(|(n, c)| ((*n).to_owned(), *c))
                .collect(),
            kas,
            reconnect_storms: storms,
            violation: self.violation.clone(),
            sample_times_s: self.metrics.sample_times.clone(),
            series: self.metrics.kas.iter().map(|c| c.series.clone()).collect(),
        }
    }
}

impl Report {
    /// A human-readable summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} seed {}: {} agents, {} kas, {:.0}s simulated",
            self.scenario, self.seed, self.agents, self.kas_replicas, self.simulated_s
        );
        let p = &self.profile;
        let _ = writeln!(
            s,
            "cost profile {} ({}, {} cores, {} build): {:.1} KiB per connection, {:.1} KiB per stream, \
             {:.1} MiB baseline; handshake {:.0} µs CPU; request +{:.2} ms",
            p.name,
            p.date,
            p.machine.cores,
            p.machine.build,
            p.memory.per_connection_bytes as f64 / 1024.0,
            p.memory.per_stream_bytes as f64 / 1024.0,
            p.memory.baseline_bytes as f64 / (1024.0 * 1024.0),
            p.cpu.handshake_us,
            p.latency.request_base_us / 1000.0
        );
        let _ = writeln!(
            s,
            "events: {} in {:.2}s wall ({:.0} events/s)",
            self.events, self.wall_s, self.events_per_s
        );
        let outcomes: Vec<String> = self
            .requests
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let l = &self.requests.latency;
        let _ = writeln!(
            s,
            "requests: {} issued; {}; latency p50 {:.1}ms p90 {:.1}ms p99 {:.1}ms max {:.1}ms",
            self.requests.issued,
            outcomes.join(" "),
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms
        );
        if self.requests.sent_back > 0 {
            let _ = writeln!(
                s,
                "requests sent back to the replica the client reached (a replica forwarded to had lost the agent): {}",
                self.requests.sent_back
            );
        }
        let _ = writeln!(
            s,
            "cluster changes: {}, view messages applied: {}, connects: {}, drops: {}, agent restarts: {}",
            self.cluster_changes,
            self.view_messages,
            self.agent_connects,
            self.connection_drops,
            self.agent_restarts
        );
        for k in &self.kas {
            let _ = writeln!(
                s,
                "kas {}: peak conns {} streams {} pending {}; peak {:.0} B/s (mean {:.0}); {} requests, \
                 p99 {:.1}ms; memory {:.1} MiB peak (calibrated model; {:.1} KiB per connection \
                 incl. baseline); restarts {}",
                k.index,
                k.peak_connections,
                k.peak_streams,
                k.peak_pending,
                k.peak_bytes_per_s,
                k.mean_bytes_per_s,
                k.requests,
                k.latency.p99_ms,
                k.memory.peak_total_bytes as f64 / (1024.0 * 1024.0),
                k.memory.peak_per_connection_bytes as f64 / 1024.0,
                k.restarts
            );
        }
        for st in &self.reconnect_storms {
            let _ = writeln!(
                s,
                "reconnect storm after kas {} {:?} at {:.1}s: {} agents, {}",
                st.kas,
                st.cause,
                st.at_s,
                st.affected_agents,
                st.duration_s.map_or_else(
                    || "not all reconnected".to_owned(),
                    |d| format!("all back in {d:.2}s")
                )
            );
        }
        s
    }
}
