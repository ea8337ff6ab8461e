//! Simulated infrastructure for tests and the demo.
//!
//! * [`apiserver`]: an in-memory Kubernetes API server (discovery, CRUD, patch and apply,
//!   watch with bookmarks and 410 Gone, pod logs, churn) that real `kubectl` and the `kube`
//!   crate work against. Its core store is HTTP-free; the HTTP layer, the simulated kubelet and
//!   the churn generator all go through it. See the module docs for the layout.
pub mod apiserver;
