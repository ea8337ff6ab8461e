//! kas: the agent server. Agents (agentk) dial out to kas and keep a tunnel open; kas routes requests
//! from its HTTP API into the clusters over those tunnels.
//!
//! # Architecture
//!
//! ```text
//!  kubectl / curl ──HTTP──▶ api (hyper on smol) ──▶ users: 401/403 ──▶ directory: 404
//!                                 │
//!                                 ▼ registry.route(agent, deadline)      (protocol::routing::router decides)
//!                           Lease on a connection ──open stream──▶ agent_listener's connections
//!                                 │                                      (runtime-smol, TLS)
//!                                 ◀── response head (≤ response timeout) + body streamed back
//! ```
//!
//! Synchronous, runtime-independent modules: [`auth`] decides which agent a connection belongs to
//! (agents file, the embedded default generated into the state directory, or GitLab's internal API
//! with a signed JWT and a cache), with a per-source limit on failed attempts; [`users`] authorises
//! HTTP API requests (`Authorization: Bearer <kind>:<agent-id>:<token>`) against a users file;
//! [`config`] is `kas.yaml`; [`directory`] says which agents exist; [`metrics`] renders Prometheus
//! text; [`rfc3339`] formats timestamps.
//!
//! The running server, on smol: [`server`] ([`Kas::start`] → [`Running`]) binds both listeners and
//! spawns every task on kas's own executor threads ([`pool`]); [`agent_listener`] accepts agent
//! connections (TLS, HELLO authenticated on smol's blocking pool, REJECT codes) and registers them in
//! the [`registry`], the async face of `protocol::routing::router::Router` (waiting requests, one timer task,
//! leases); [`api`] is the HTTP API (health, readiness, metrics, agent listing, `/k8s-proxy` and the
//! service proxy, streaming both ways; HTTP upgrades for `kubectl exec`, `attach`, `cp` and
//! `port-forward` in [`api::upgrade`]). [`audit`] writes one JSON line per user request and per
//! upgraded session. [`state`] is what all tasks share; [`signals`] waits for SIGINT/SIGTERM (and
//! SIGHUP, which reopens the audit log). `kas demo` execs the `kas-demo` binary (crate `kas-demo`): the demo links agentk and
//! tokio, kas does not.
//!
//! Views and events (the informer cache, issue 5):
//!
//! ```text
//!  agentk ──views stream (SYNC /)──▶ agent_streams ──▶ views_stream ──▶ mirrors (MirrorTable)    
//!         ◀──acks, resync requests──                                      │ view / object changes
//!                                                                         ▼
//!  browser ◀── dashboard (/) ◀── api: /views (from memory), /events (SSE) ◀── events (hub, bounded queues)
//!  curl ──▶ api: /cache/{kind} ──▶ registry.route ──▶ `cache` stream ──▶ agentk's store
//! ```
//!
//! [`agent_streams`] accepts the streams an agent opens (the `views` stream); [`views_stream`] serves
//! one, moving octets to and from [`mirrors`], which drives the `protocol::cache::MirrorTable`
//! endpoint (every agent's `protocol::cache::Mirror` across reconnects) and turns changes into [`events`], the hub that
//! broadcasts them (and agent connects/disconnects) to subscribers with bounded queues; the
//! [`dashboard`] is one embedded page over that API.
//!
//! Git (issue 11): [`agent_config`] polls each agent's config project; [`gitops_poller`] polls the
//! manifest projects of the configurations it accepted (one fetch per repository and ref, glob
//! selection, parsing and validation with the `gitops` crate, the last good set kept) and
//! [`gitops_stream`] serves the `gitops` streams agentk opens, one per project (sets for new
//! commits, statuses, the agent's sync reports shown at `/api/v1/agents/{id}/gitops`).
//!
//! Starting kas in-process (as the demo does):
//!
//! ```no_run
//! let config = kas::config::Config::load("state/kas.yaml")?;
//! let running = kas::Kas::start(config)?;
//! println!("{} / {}", running.agent_addr(), running.k8s_proxy_url());
//! running.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod access;
pub mod agent_config;
pub mod agent_listener;
pub mod agent_log;
pub mod agent_streams;
pub mod api;
pub mod audit;
pub mod auth;
pub mod balance;
pub mod config;
pub mod config_stream;
pub mod connection_tokens;
pub mod dashboard;
pub mod directory;
pub mod events;
pub mod gitops_poller;
pub mod gitops_stream;
pub mod listener;
pub mod metrics;
pub mod mirrors;
pub mod peer;
pub mod poll_schedule;
pub mod pool;
pub mod recording;
pub mod registry;
pub mod rfc3339;
pub mod server;
pub mod signals;
pub mod split;
pub mod state;
pub mod tracker;
pub mod users;
pub mod views_stream;

pub use server::{Kas, Running, ShutdownReport, StartError, StartOptions};

/// What `kas --version` prints after the name: the version and how this binary was built, `release`
/// or `debug` (debug assertions on), with `protocol test hooks` when [`protocol::TESTING_HOOKS`] are
/// compiled in (kas built in one cargo invocation with a crate that enables them). The calibration
/// (`kas-calibrate`) reads it to say which build it measured.
pub const VERSION: &str = match (cfg!(debug_assertions), protocol::TESTING_HOOKS) {
    (false, false) => concat!(env!("CARGO_PKG_VERSION"), " (release build)"),
    (true, false) => concat!(env!("CARGO_PKG_VERSION"), " (debug build)"),
    (false, true) => concat!(
        env!("CARGO_PKG_VERSION"),
        " (release build, protocol test hooks)"
    ),
    (true, true) => concat!(
        env!("CARGO_PKG_VERSION"),
        " (debug build, protocol test hooks)"
    ),
};
