//! A simulated Kubernetes API server, faithful enough for unmodified `kubectl`, the `kube`
//! crate's client and `kube::runtime::watcher`.
//!
//! It is a test double and the demo's stand-in for a cluster: `kas demo` and kas's tests,
//! agentk's tests and the conformance tooling run against it. It lives in its own crate so that
//! neither the production kas binary nor the pure `simulator` links it (it brings tokio and hyper).
//!
//! # Architecture
//!
//! * [`store`]: the HTTP-free core. Objects (`serde_json::Value`) keyed by resource type,
//!   namespace and name; one global `resourceVersion` counter; a bounded history of changes
//!   (with each object's previous state) that makes watches resumable and list pages
//!   consistent, answering versions older than the history with 410 Expired; a broadcast of
//!   changes for watchers.
//! * [`resource`]: the fixed table of served resource types, from which [`discovery`] and
//!   [`router`] are derived.
//! * [`selector`], [`patch`], [`table`], [`query`]: label/field selectors, patch semantics
//!   (merge, strategic merge, JSON patch, apply), server-side printing for `kubectl get`, and
//!   query-string parsing, each unit-tested on its own; [`protobuf`] decodes the few protobuf
//!   bodies kubectl's typed commands send (`kubectl create namespace|configmap|secret|deployment`).
//! * [`watch`] and [`logs`]: streamed responses (watch event streams, followed pod logs).
//! * `handlers` (REST verbs, `Status` errors from [`status`]) on top of [`body`], served by
//!   [`server`] (hyper HTTP/1.1 on tokio, plain HTTP, optional bearer token).
//! * Simulated activity, all through the store so watchers see it: [`population`] (initial
//!   namespaces, nodes, deployments, services, pods), [`kubelet`] (starts Pending pods),
//!   [`churn`] (seeded random pod/node changes at a rate), [`recorder`] (bounded `Event`s).
//! * [`kubeconfig`]: kubeconfig files for clients; [`openapi`]: the minimal OpenAPI v3 index
//!   kubectl's field-validation check needs.
//!
//! # Example
//!
//! ```no_run
//! use sim_apiserver::{ApiServer, ApiServerConfig};
//! let server = ApiServer::start(ApiServerConfig::default())?;
//! server.write_kubeconfig("/tmp/kubeconfig", "sim")?;
//! server.store().add_pod("default", "hello")?;
//! println!("serving at {}", server.url());
//! server.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod access;
pub mod body;
pub mod churn;
pub mod crd;
pub mod discovery;
pub mod fieldpath;
pub(crate) mod handlers;
pub mod kubeconfig;
pub mod kubelet;
pub mod logs;
pub mod managed;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod population;
pub mod protobuf;
pub mod query;
pub mod recorder;
pub mod resource;
pub mod router;
pub mod schema;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;
pub mod strategy;
pub mod table;
pub mod time;
pub mod typed;
pub mod watch;
pub(crate) mod writes;

pub use objects::{HOLD_PHASE_ANNOTATION, PodPhase};
pub use resource::{Registry, Resource, ResourceType};
pub use selector::{FieldSelector, LabelSelector, Selectors};
pub use server::{ApiServer, ApiServerConfig, Error, RunningApiServer};
pub use status::ApiError;
pub use store::{EventType, Store, StoreConfig, StoreError, StoreEvent};
