//! Minimal agent and kas with injectable faults, built on the reference connection: without a fault
//! each passes its whole suite, and each fault breaks one rule — so the harness's own tests
//! (`tests/harness_detects_faults.rs`) can show that every check fails when an implementation breaks
//! what it checks, and that nothing else fails with it.
//!
//! | module | what it is |
//! |---|---|
//! | [`agent`] | `conformance selftest-agent`: forwards `k8s-api` to its kubeconfig's API server |
//! | [`gitops`] | the self-test agent's `gitops` streams: sets reassembled and reported, nothing applied |
//! | [`kas`] | `conformance selftest-kas`: agent listener, `/k8s-proxy` API, routing with a deadline |
//! | [`tamper`] | frame rewriting between a connection and its socket, for the wire faults |

pub mod agent;
pub mod gitops;
pub mod kas;
pub mod tamper;

pub use agent::{AgentOptions, Fault, SelftestError, run_agent};

/// The fault called `name` in a fault table.
fn by_name<F: Copy>(table: &[(&str, F)], name: &str) -> Result<F, String> {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            let known: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            format!("unknown fault {name:?} (known: {})", known.join(", "))
        })
}
