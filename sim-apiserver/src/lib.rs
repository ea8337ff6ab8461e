//! A simulated Kubernetes API server, faithful enough for unmodified `kubectl`, the `kube`
//! crate's client and `kube::runtime::watcher`.
//!
//! It is a test double and the demo's stand-in for a cluster: `kas-demo` and kas's tests,
//! agentk's tests and the conformance tooling run against it. It lives in its own crate so that
//! neither the production kas binary nor the pure `simulator` links it (it brings tokio and hyper).
//!
//! # What it serves
//!
//! * **Kinds:** 31 built-in stored kinds (core `v1` Namespace, Node, Pod, Service, ConfigMap, Secret,
//!   ServiceAccount, Event, PersistentVolumeClaim/Volume, ResourceQuota, LimitRange; `apps/v1`
//!   Deployment, ReplicaSet, DaemonSet, StatefulSet; `batch/v1` Job, CronJob; HPA, PDB;
//!   `networking.k8s.io` Ingress, IngressClass, NetworkPolicy; RBAC Role, ClusterRole and their
//!   bindings; StorageClass, Lease, PriorityClass; CustomResourceDefinition; plus five create-only
//!   review kinds of `authentication.k8s.io` and `authorization.k8s.io`) and every kind a
//!   stored `CustomResourceDefinition` defines, at each served version, as soon as it is stored.
//!   Everything else is the real 404 `Status`.
//! * **Verbs:** get, list (paged, consistent), watch (resumable, bookmarks), create, update,
//!   patch (JSON, merge, strategic merge), server-side apply, delete, deletecollection; `status`
//!   and `scale` subresources, pod logs; `dryRun=All` on every write; legacy and aggregated
//!   discovery, server-side printing (`Table`), OpenAPI v3 index (v2 empty).
//! * **Server-side apply** with `managedFields` as Kubernetes tracks them ([`managed`]):
//!   conflicts (409 naming managers and fields), `force`, removal of fields a manager stops
//!   applying, kubectl's client-side-apply migration.
//! * **Metadata:** `uid`, `creationTimestamp`, one `resourceVersion` sequence (409 on stale
//!   updates; unchanged writes keep it), `generation` for kinds that track it.
//! * **Deletion** ([`store`]): propagation policies, finalizers, `deletionTimestamp`, garbage
//!   collection through owner references, namespaces and definitions that empty themselves.
//!
//! * **Authentication, impersonation and RBAC**, enforced on every request but `/version` and
//!   health ([`identity`], [`impersonation`], [`request_info`], [`rbac`]): bearer tokens from a
//!   users table ([`ApiServerConfig::users`], `--users FILE`; the admin token
//!   [`ApiServerConfig::bearer_token`] is `kubernetes-admin` in `system:masters`; a server
//!   without an admin token is open: requests without a known token act as the admin, so
//!   existing clients keep working); `Impersonate-User/-Group/-Uid/-Extra-*` checked with the
//!   `impersonate` verb on users, serviceaccounts, groups, uids and userextras; Roles,
//!   ClusterRoles, RoleBindings and ClusterRoleBindings (verbs, apiGroups, resources and
//!   subresources, resourceNames, nonResourceURLs; User, Group and ServiceAccount subjects)
//!   with the bootstrap policy (`system:masters`, discovery for everyone authenticated, the
//!   default `cluster-admin`/`admin`/`edit`/`view` roles built in) and escalation prevention
//!   ([`escalation`]: writing a role or binding needs the permissions it grants, or the
//!   `escalate`/`bind` verbs); a refused request is the Kubernetes 403 `Status` in its words. The review APIs ([`reviews`]):
//!   `SelfSubjectReview` (`kubectl auth whoami`), `SelfSubjectAccessReview` (`kubectl auth
//!   can-i`), `SelfSubjectRulesReview` (`can-i --list`), `SubjectAccessReview`,
//!   `LocalSubjectAccessReview`. Optional HTTPS with a throw-away CA ([`ApiServerConfig::tls`],
//!   `--tls`): kubectl sends bearer tokens only over TLS.
//!
//! Simplified: no workload controllers (workloads report ready replicas, PVCs are bound, no
//! pods are created for them; the simulated kubelet starts pods that exist), no admission,
//! no ClusterRole aggregation, no schema validation of custom resources, no defaulting beyond a few fields,
//! no graceful pod termination (pods without finalizers go at once), garbage collection and
//! namespace termination complete within the write that starts them, protobuf request bodies
//! only for the kinds [`protobuf`] knows. Containers run no real processes: exec runs the
//! built-in commands of [`exec::shell`] (no signals, no background jobs), attach reaches a main
//! process that echoes its stdin, and a pod port answers with a small built-in HTTP server
//! unless a test registers its own listener ([`portforward::PodNetwork::register`]).
//!
//! # Architecture
//!
//! * [`store`]: the HTTP-free core. Objects (`serde_json::Value`) keyed by storage bucket,
//!   namespace and name; one global `resourceVersion` counter; a bounded history of changes
//!   (with each object's previous state) that makes watches resumable and list pages
//!   consistent, answering versions older than the history with 410 Expired; a broadcast of
//!   changes for watchers; writes as transactions, with the garbage collector (`store::gc`).
//! * [`resource`]: the [`Registry`] of served types, from which [`discovery`], [`openapi`] and
//!   [`router`] are derived; [`crd`]: what a definition serves.
//! * Server-side apply, pure and unit-tested: [`fieldpath`] (paths, sets, `FieldsV1`),
//!   [`schema`] (list types and atomic fields per kind, or a CRD's OpenAPI schema), [`typed`]
//!   (field sets, compare, merge, remove), [`managed`] (managers, apply and update).
//! * [`selector`], [`patch`], [`table`], [`query`]: label/field selectors, patch semantics,
//!   server-side printing for `kubectl get`, and query-string parsing, each unit-tested on its
//!   own; [`protobuf`] decodes the few protobuf bodies kubectl's typed commands send
//!   (`kubectl create namespace|configmap|secret|deployment`).
//! * [`watch`] and [`logs`]: streamed responses (watch event streams, followed pod logs).
//! * `handlers` (authentication, impersonation and authorisation, routing, reads, `Status`
//!   errors from [`status`]) and `writes` (the write verbs, with [`strategy`]: per-kind
//!   defaults and status) on top of [`body`], served by [`server`] (hyper HTTP/1.1 on tokio,
//!   plain HTTP or HTTPS). New subresources (exec, attach, port-forward) and request checks
//!   plug into `handlers::dispatch` as modules of their own.
//! * Upgraded subresources ([`upgrade`]): `pods/exec`, `pods/attach` and `pods/portforward`
//!   over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `SPDY/3.1+portforward.k8s.io`,
//!   and the kubelet's channel-pair port-forward, [`portforward::channels`]) and SPDY/3.1
//!   ([`spdy`]), as real kubectl speaks them; [`exec`] runs a small built-in
//!   command set (`sh -c`, `echo`, `cat`, `tar` for `kubectl cp`, …) in each container's
//!   in-memory filesystem ([`container_fs`]); [`portforward`] reaches a real TCP listener per
//!   pod port; [`sessions`] bounds, counts and idles out the sessions.
//! * Simulated activity, all through the store so watchers see it: [`population`] (initial
//!   namespaces, nodes, deployments with their replica sets, services, pods), [`kubelet`]
//!   (starts Pending pods), [`churn`] (seeded random pod/node changes at a rate), [`recorder`]
//!   (bounded `Event`s).
//! * [`kubeconfig`]: kubeconfig files for clients.
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
pub mod container_fs;
pub mod crd;
pub mod discovery;
pub mod escalation;
pub mod exec;
pub mod fieldpath;
pub(crate) mod handlers;
pub mod identity;
pub mod impersonation;
pub mod kubeconfig;
pub mod kubelet;
pub mod logs;
pub mod managed;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod population;
pub mod portforward;
pub mod prometheus;
pub mod protobuf;
pub mod query;
pub mod rbac;
pub mod recorder;
pub mod request_info;
pub mod resource;
pub mod reviews;
pub mod router;
pub mod schema;
pub mod selector;
pub mod server;
pub mod sessions;
pub mod spdy;
pub mod status;
pub mod store;
pub mod strategy;
pub mod table;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod typed;
pub mod upgrade;
pub mod watch;
pub(crate) mod writes;

pub use identity::{User, UserInfo};
pub use objects::{HOLD_PHASE_ANNOTATION, PodPhase};
pub use resource::{Registry, Resource, ResourceType};
pub use selector::{FieldSelector, LabelSelector, Selectors};
pub use server::{ApiServer, ApiServerConfig, Error, RunningApiServer};
pub use sessions::SessionStats;
pub use status::ApiError;
pub use store::{EventType, Store, StoreConfig, StoreError, StoreEvent};
