//! Cost profiles: what the real programs cost on one machine, measured by `simulator calibrate`.
//!
//! The simulator runs the real protocol core, router and cache, but not the real process: it does
//! not know what a TLS session, hyper's buffers or the allocator cost. A [`CostProfile`] says so,
//! from a measurement of the real `kas` (and agentk and sim-apiserver) on a named machine:
//!
//! - **memory**: kas RSS with nothing connected, per idle agent connection, per open stream (a
//!   request in flight), per pending request, per mirror byte;
//! - **CPU**: per request, per TLS+HELLO handshake, and the cores a replica has;
//! - **latency**: the fixed time a request spends in kas and agentk (loopback, c=1), added to the
//!   cluster API server's own time.
//!
//! One function computes memory from usage ([`CostProfile::memory`]); the report and the plan both
//! call it. Fields the calibration measures are listed in [`CostProfile::measured`]; the others keep
//! the model's estimate and are listed as such, so nobody mistakes them for measurements.
//!
//! The default profile (`simulator/profiles/default.yaml`, release builds measured on this project's
//! 2-core machine) is compiled in; `simulator run … --profile FILE` reads another one.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The checked-in default profile (YAML).
pub const DEFAULT_PROFILE_YAML: &str = include_str!("../../profiles/default.yaml");

/// A profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse profile {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("invalid profile {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// What the real programs cost on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostProfile {
    /// A short name, e.g. `dev-2core-2026-12-03`.
    pub name: String,
    /// When it was measured (`YYYY-MM-DD`).
    pub date: String,
    pub machine: Machine,
    /// The command that measured it.
    pub command: String,
    pub memory: MemoryCosts,
    pub cpu: CpuCosts,
    pub latency: LatencyCosts,
    /// Names of the fields measured on the real programs (the rest are the model's estimates).
    #[serde(default)]
    pub measured: Vec<String>,
}

/// The machine a profile was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Online CPUs.
    pub cores: u32,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// `debug` or `release` build of the measured programs.
    pub build: String,
    /// Anything that qualifies the figures (e.g. "shared with other builds").
    #[serde(default)]
    pub note: String,
}

/// Bytes of kas memory (RSS).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryCosts {
    /// RSS of a kas process with no agent connected.
    pub baseline_bytes: u64,
    /// Per idle agent connection (TLS session, buffers, connection state, router entry).
    pub per_connection_bytes: u64,
    /// Per open stream (a request in flight, with its API-side HTTP exchange).
    pub per_stream_bytes: u64,
    /// Per request waiting in the router.
    pub per_pending_request_bytes: u64,
    /// RSS per byte of mirror content (rows as the model counts them).
    pub per_mirror_byte: f64,
}

/// CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuCosts {
    /// kas CPU per accepted agent connection (TCP accept, TLS 1.3 handshake, HELLO, auth), µs.
    pub handshake_us: f64,
    /// kas CPU per proxied request (small response), µs.
    pub request_us: f64,
    /// kas CPU per byte carried on a tunnel (frames, TLS), ns.
    pub byte_ns: f64,
    /// kas CPU per views update applied to a mirror, µs.
    pub view_update_us: f64,
    /// Cores a replica's handshakes run on in the model (measured: kas CPU seconds over wall
    /// seconds during the reconnect storm).
    pub replica_cores: f64,
}

/// Fixed latencies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyCosts {
    /// Median time a request spends in kas and agentk on loopback at concurrency 1, beyond the
    /// cluster API server's own time, µs. Added to every request the simulated agent answers.
    pub request_base_us: f64,
    /// Mean of an exponential delay added to that, µs: fitted to the tail, `(p99 - p50) / ln 50`,
    /// at most what keeps the base >= 0; the base is then the median beyond the API server's own
    /// median minus `spread × ln 2`.
    pub request_spread_us: f64,
}

/// What a replica holds at one moment, as the model counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub connections: usize,
    pub streams: usize,
    pub pending_requests: usize,
    /// Octets buffered in send queues (counted one for one).
    pub buffered_bytes: usize,
    /// Mirror content as the model measures it.
    pub mirror_bytes: usize,
}

impl CostProfile {
    /// The compiled-in default profile.
    pub fn default_profile() -> CostProfile {
        match CostProfile::parse(DEFAULT_PROFILE_YAML, "default.yaml") {
            Ok(p) => p,
            // The file is checked by a test; a broken one cannot be built into a release.
            Err(e) => panic!("the built-in profile is broken: {e}"),
        }
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<CostProfile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        CostProfile::parse(&text, &path.display().to_string())
    }

    /// Parses and validates a profile (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<CostProfile, ProfileError> {
        let p: CostProfile = serde_yaml::from_str(text).map_err(|source| ProfileError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        p.validate().map_err(|reason| ProfileError::Invalid {
            path: origin.to_owned(),
            reason,
        })?;
        Ok(p)
    }

    /// Every figure is finite and not negative; a replica has some CPU.
    pub fn validate(&self) -> Result<(), String> {
        let figures = [
            ("cpu.handshake_us", self.cpu.handshake_us),
            ("cpu.request_us", self.cpu.request_us),
            ("cpu.byte_ns", self.cpu.byte_ns),
            ("cpu.view_update_us", self.cpu.view_update_us),
            ("cpu.replica_cores", self.cpu.replica_cores),
            ("memory.per_mirror_byte", self.memory.per_mirror_byte),
            ("latency.request_base_us", self.latency.request_base_us),
            ("latency.request_spread_us", self.latency.request_spread_us),
        ];
        for (name, v) in figures {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} is {v}: must be a finite number >= 0"));
            }
        }
        if self.cpu.replica_cores <= 0.0 {
            return Err("cpu.replica_cores must be > 0".into());
        }
        Ok(())
    }

    /// Serialises as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// kas RSS for `usage`: the one place memory is computed.
    pub fn memory(&self, usage: &Usage) -> u64 {
        let m = &self.memory;
        m.baseline_bytes
            + usage.connections as u64 * m.per_connection_bytes
            + usage.streams as u64 * m.per_stream_bytes
            + usage.pending_requests as u64 * m.per_pending_request_bytes
            + usage.buffered_bytes as u64
            + (usage.mirror_bytes as f64 * m.per_mirror_byte) as u64
    }

    /// CPU time of one handshake on one replica's cores: how long it holds the replica's handshake
    /// capacity (`handshake_us / replica_cores`).
    pub fn handshake_slot(&self) -> Duration {
        Duration::from_secs_f64(self.cpu.handshake_us * 1e-6 / self.cpu.replica_cores)
    }

    /// The mean of the exponential part of a request's kas + agentk time (zero: none).
    pub fn request_spread(&self) -> Duration {
        Duration::from_secs_f64(self.latency.request_spread_us * 1e-6)
    }

    /// The fixed kas + agentk time of one request.
    pub fn request_base(&self) -> Duration {
        Duration::from_secs_f64(self.latency.request_base_us * 1e-6)
    }

    /// This profile with every cost multiplied by `factor` (to show a comparison can fail).
    pub fn scaled(&self, factor: f64) -> CostProfile {
        let mut p = self.clone();
        let s = |v: u64| (v as f64 * factor) as u64;
        p.name = format!("{} ×{factor}", self.name);
        p.memory.baseline_bytes = s(p.memory.baseline_bytes);
        p.memory.per_connection_bytes = s(p.memory.per_connection_bytes);
        p.memory.per_stream_bytes = s(p.memory.per_stream_bytes);
        p.memory.per_pending_request_bytes = s(p.memory.per_pending_request_bytes);
        p.memory.per_mirror_byte *= factor;
        p.cpu.handshake_us *= factor;
        p.cpu.request_us *= factor;
        p.cpu.byte_ns *= factor;
        p.cpu.view_update_us *= factor;
        p.latency.request_base_us *= factor;
        p.latency.request_spread_us *= factor;
        p
    }

    /// A plan for `agents` agents (see [`Plan`]).
    pub fn plan(&self, q: &PlanQuestion) -> Plan {
        let conns = q.agents.saturating_mul(q.connections_per_agent.max(1));
        // Enough replicas that each stays under the connection cap, plus one spare so that losing
        // any one replica leaves the rest within it; at least `min_replicas`.
        let cap = q.max_connections_per_replica.max(1);
        let replicas = (conns.div_ceil(cap) + 1).max(q.min_replicas).max(1);
        // Memory is sized for a replica holding its share after one replica failed.
        let survivors = (replicas - 1).max(1);
        let per_replica_conns = conns.div_ceil(survivors);
        let streams = (per_replica_conns as f64 * q.streams_per_connection).ceil() as usize;
        let usage = Usage {
            connections: per_replica_conns,
            streams,
            mirror_bytes: q
                .agents
                .div_ceil(survivors)
                .saturating_mul(q.mirror_bytes_per_agent),
            ..Usage::default()
        };
        let bytes = self.memory(&usage) as f64 * (1.0 + q.headroom);
        let gib = (bytes / GIB * 4.0).ceil() / 4.0;
        // A storm: every agent reconnects at once, spread evenly over all replicas.
        let storm_cpu_s = conns.div_ceil(replicas) as f64 * self.cpu.handshake_us * 1e-6;
        let cores = (storm_cpu_s / q.storm_within.as_secs_f64()).ceil().max(1.0) as u32;
        Plan {
            agents: q.agents,
            connections: conns,
            replicas,
            memory_gib: gib.max(0.25),
            memory_bytes_per_replica: bytes as u64,
            connections_per_replica_after_failure: per_replica_conns,
            cores,
            storm_cpu_s_per_replica: storm_cpu_s,
            storm_within_s: q.storm_within.as_secs_f64(),
        }
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What a planner asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanQuestion {
    pub agents: usize,
    /// Tunnel connections each agent keeps.
    pub connections_per_agent: usize,
    /// Open streams per connection at peak besides the views stream every agentk keeps (requests
    /// and watches in flight).
    pub streams_per_connection: f64,
    /// Mirror content per agent (its cluster's view rows, as the model counts them), bytes.
    pub mirror_bytes_per_agent: usize,
    /// Connections one replica may hold.
    pub max_connections_per_replica: usize,
    /// At least this many replicas (high availability).
    pub min_replicas: usize,
    /// Extra memory above the model's figure (0.25 = 25 %).
    pub headroom: f64,
    /// A reconnect storm of every agent must be absorbed within this long.
    pub storm_within: Duration,
}

impl PlanQuestion {
    /// The defaults `simulator plan` uses.
    pub fn new(agents: usize) -> PlanQuestion {
        PlanQuestion {
            agents,
            connections_per_agent: 1,
            streams_per_connection: 0.1,
            mirror_bytes_per_agent: 16 * 1024,
            max_connections_per_replica: 20_000,
            min_replicas: 2,
            headroom: 0.25,
            storm_within: Duration::from_secs(10),
        }
    }
}

/// The answer: replicas, memory each, cores each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Plan {
    pub agents: usize,
    pub connections: usize,
    pub replicas: usize,
    /// Memory limit per replica (rounded up to 0.25 GiB).
    pub memory_gib: f64,
    pub memory_bytes_per_replica: u64,
    pub connections_per_replica_after_failure: usize,
    /// Cores per replica for the storm to finish in time.
    pub cores: u32,
    pub storm_cpu_s_per_replica: f64,
    pub storm_within_s: f64,
}

impl Plan {
    /// Markdown table header.
    pub const HEADER: &'static str = "| agents | replicas | memory per replica | cores per replica (storm of all agents within) |\n|---:|---:|---:|---:|";

    /// One Markdown table row.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {:.2} GiB | {} ({:.0} s; {:.1} CPU-s of handshakes each) |",
            self.agents,
            self.replicas,
            self.memory_gib,
            self.cores,
            self.storm_within_s,
            self.storm_cpu_s_per_replica
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_parses_and_is_dated() {
        let p = CostProfile::default_profile();
        assert_eq!(p.date.len(), 10, "{}", p.date);
        assert!(p.memory.per_connection_bytes > 0);
        assert!(p.cpu.handshake_us > 0.0);
        assert!(!p.measured.is_empty());
    }

    #[test]
    fn memory_is_linear_in_usage() {
        let p = CostProfile::default_profile();
        let one = Usage {
            connections: 1,
            ..Usage::default()
        };
        let two = Usage {
            connections: 2,
            ..Usage::default()
        };
        assert_eq!(
            p.memory(&two) - p.memory(&one),
            p.memory.per_connection_bytes
        );
        assert_eq!(p.memory(&Usage::default()), p.memory.baseline_bytes);
    }

    #[test]
    fn broken_profiles_are_refused() {
        let mut p = CostProfile::default_profile();
        p.cpu.replica_cores = 0.0;
        let text = p.to_yaml();
        assert!(matches!(
            CostProfile::parse(&text, "x"),
            Err(ProfileError::Invalid { .. })
        ));
        assert!(matches!(
            CostProfile::parse("name: [", "x"),
            Err(ProfileError::Parse { .. })
        ));
        let unknown = CostProfile::default_profile().to_yaml() + "typo: 1\n";
        assert!(CostProfile::parse(&unknown, "x").is_err());
    }

    #[test]
    fn plans_grow_with_agents_and_survive_one_failure() {
        let p = CostProfile::default_profile();
        let small = p.plan(&PlanQuestion::new(1_000));
        let big = p.plan(&PlanQuestion::new(100_000));
        assert!(big.replicas > small.replicas);
        assert!(small.replicas >= 2);
        assert!(big.connections_per_replica_after_failure * (big.replicas - 1) >= big.connections);
        assert!(big.memory_gib >= small.memory_gib);
    }
}
