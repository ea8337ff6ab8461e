//! kas: the agent server. Agents (agentk) dial out to kas and keep a tunnel open; kas routes requests
//! from its HTTP API into the clusters over those tunnels.
//!
//! Authentication, authorisation and configuration are synchronous, runtime-independent modules:
//! [`auth`] decides which agent a connection belongs to (agents file, the embedded default generated
//! into the state directory, or GitLab's internal API with a signed JWT and a cache), with a per-source
//! limit on failed attempts; [`users`] authorises HTTP API requests (`Authorization: Bearer
//! <kind>:<agent-id>:<token>`) against a users file; [`config`] is `kas.yaml`. Blocking calls (file
//! reads, HTTP to GitLab) are meant to run on the async runtime's blocking pool; nothing here spawns
//! threads or needs a runtime.

pub mod auth;
pub mod config;
pub mod users;
