//! Simulated infrastructure for tests and the demo.
//!
//! * [`apiserver`]: an in-memory Kubernetes API server (discovery, CRUD, patch and apply,
//!   watch with bookmarks and 410 Gone, pod logs, churn) that real `kubectl` and the `kube`
//!   crate work against. Its core store is HTTP-free; the HTTP layer, the simulated kubelet and
//!   the churn generator all go through it. See the module docs for the layout.
//! * [`sim`]: the deterministic simulator: thousands of agents, clusters and kas replicas in virtual
//!   time with faults, driving the production protocol core, router, cache and reconnect policy with
//!   no async runtime; invariants, traces with hashes, capacity reports. Used by `simulator run` and
//!   `simulator sweep`. The [`apiserver`] is not part of it (it is tokio and HTTP).
pub mod apiserver;
pub mod sim;
