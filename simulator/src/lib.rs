//! The deterministic simulator.
//!
//! [`sim`]: thousands of agents, clusters and kas replicas in virtual time with faults, driving the
//! production protocol core, router, cache and reconnect policy with no async runtime; invariants,
//! traces with hashes, capacity reports. Used by `simulator run` and `simulator sweep`.
//!
//! The simulated Kubernetes API server that tests and the demo run against is the separate crate
//! `sim-apiserver` (tokio and HTTP), so that this crate stays free of an HTTP stack;
//! `simulator apiserver …` runs its binary.
pub mod sim;
