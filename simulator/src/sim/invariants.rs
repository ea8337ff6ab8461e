//! The invariants and their checks.
//!
//! Every invariant has a name (the `invariant` of a [`Violation`]), is listed in [`INVARIANTS`] with
//! when it is checked, and has a self-test in `simulator/tests/sim_checker.rs` that injects a
//! deliberate bug ([`Injection`](super::scenario::Injection)) and shows the check fire.
//!
//! Checked **continuously**, during the event that could break them:
//! - `request-ended-twice`: a request ends exactly once (the [`Ledger`](super::clients::Ledger));
//! - `misdelivered-request` / `misdelivered-response`: a request reaches the agent it is meant for
//!   (the agent checks the agent id the request carries) and its response comes from that agent;
//! - `protocol-error`: no connection fails with a protocol, flow-control or frame-level error (there is no
//!   malicious peer in the world, so such an error is a bug in the core or the glue);
//! - `stream-error`: no stream is reset with a code only a bug explains: a request stream may only be
//!   refused (`REFUSED_STREAM`, then retried) or die with its connection, a served stream may only be
//!   cancelled by kas, a views stream only cancelled or refused — never `PROTOCOL_ERROR`,
//!   `FLOW_CONTROL_ERROR`, `STREAM_CLOSED` or anything else;
//! - `body-corrupted`: every request and response body that ends arrives with the length and digest
//!   its sender declared, and patterned bodies are the request's own ([`body`](super::body));
//! - `backoff-bound`: no back-off delay exceeds the policy's maximum (or the server's `retry_after`);
//! - `backoff-too-short`: no back-off delay is shorter than an independent model of the policy says
//!   (full jitter over `min(max, initial·2^(n−1))` after `n` consecutive failures since a connection
//!   that lived `stable_after`, never below `retry_after`; dial at once only to replace a connection
//!   that lived at least a second and is going away);
//! - `flow-control`: after every event, on every connection it touched, octets in flight in each
//!   direction never exceed the receiver's connection window, no stream's send credit exceeds the
//!   peer's initial stream window, and open streams stay within both sides' limits;
//! - `views-diverged`: after every change an agent's cache takes (watch event, relist), its
//!   incremental views equal the views the naive oracle
//!   ([`protocol::testing::naive_views`]) computes over its cluster;
//! - `mirror-diverged`: whenever a replica's mirror has applied everything its agent's publisher sent
//!   (same epoch and sequence, nothing pending), it equals the oracle's views of the agent's cluster;
//! - `tracking-leak`: once a request has ended, no replica tracks it, waits for it or has it assigned
//!   in its router;
//! - `connection-leak`: once a connection has closed at kas, its replica's router no longer lists it;
//! - `router`: every router call the glue makes is accepted (no unknown connection or request);
//! - `views-messages` / `views-wire` / `agent-cache` / `views-stream` / `identity`: view messages
//!   frame, decode and apply; watch events apply; the views stream opens; an agent is accepted as
//!   itself;
//! - in debug builds, `Connection::check_invariants` and `Router::check_invariants` run inside the core
//!   after every call (`debug_assert!`).
//!
//! Checked **periodically** (every sample), because a full sweep costs O(world), by
//! [`World::check_periodic`]:
//! - `flow-control` on every connection (those no event touched included);
//! - `router`: `Router::check_invariants` on every replica (also in release builds);
//! - `tracking-leak`: every request a replica tracks is still open, and its router holds exactly the
//!   requests the replica tracks.
//!
//! Checked **at the end**, after the final quiet period, by [`World::check_end`]:
//! - `request-leak`: every request has ended;
//! - `tracking-leak`: no router holds a request, no replica tracks one;
//! - `reconnect-bound`: every agent is connected, and got connected no later than the reconnect
//!   deadline (start-up, faults and balance drains over, plus [`Scenario::reconnect_bound`](super::Scenario::reconnect_bound));
//! - `connection-leak` / `stream-leak`: each agent has exactly one connection, carrying only its views
//!   stream, with nothing queued;
//! - `views-diverged` / `mirror-diverged`: every agent's views, and the mirror on the replica it is
//!   connected to (at the publisher's epoch and sequence), equal the oracle's views of its cluster.

use serde::Serialize;

use protocol::cache::{ResourceKind, Views, default_views};
use protocol::testing::naive_views;

use super::agent::AgentState;
use super::clock::SimTime;
use super::cluster::Cluster;
use super::flow::{AgentEnd, Flow, KasEnd};
use super::informer::AgentLocal;
use super::kas::Stage;
use super::world::World;

/// Every invariant, with when it is checked (see the module docs).
pub const INVARIANTS: &[(&str, &str)] = &[
    ("request-ended-twice", "continuously"),
    ("misdelivered-request", "continuously"),
    ("misdelivered-response", "continuously"),
    ("protocol-error", "continuously"),
    ("stream-error", "continuously"),
    ("body-corrupted", "continuously"),
    ("backoff-bound", "continuously"),
    ("backoff-too-short", "continuously"),
    (
        "flow-control",
        "continuously (touched connections) and periodically (all)",
    ),
    ("views-diverged", "continuously and at the end"),
    ("mirror-diverged", "continuously and at the end"),
    ("tracking-leak", "continuously, periodically and at the end"),
    ("connection-leak", "continuously and at the end"),
    ("router", "continuously and periodically"),
    ("views-messages", "continuously"),
    ("views-wire", "continuously"),
    ("agent-cache", "continuously"),
    ("views-stream", "continuously"),
    ("identity", "continuously"),
    ("request-leak", "at the end"),
    ("reconnect-bound", "at the end"),
    ("stream-leak", "at the end"),
];

/// Agents whose views are checked after every change, at most (see
/// [`World::views_watched`]).
pub const VIEWS_WATCHED: usize = 1000;

/// Whether agent `i` of `agents` is one whose views are checked after every change
/// ([`World::views_watched`]).
pub fn views_watched(i: usize, agents: usize) -> bool {
    i.is_multiple_of(agents.div_ceil(VIEWS_WATCHED).max(1))
}

/// The truth an agent's views must equal: the naive oracle over its cluster's objects.
pub fn truth(cluster: &Cluster) -> Views {
    let objects = cluster.objects();
    oracle().evaluate(objects.iter().map(|(k, v)| (*k, v)))
}

/// [`truth`] from the cluster's kept JSON ([`Cluster::objects_cached`]), for the agents checked
/// after every change.
pub fn truth_cached(cluster: &mut Cluster) -> Views {
    oracle().evaluate(cluster.objects_cached())
}

/// [`truth_cached`] after a change that touched objects of the `changed` kinds only, from `truth`
/// as it was before: the views of other kinds are kept (they cannot have changed), the others are
/// computed again by the oracle from scratch. The end of the run compares every watched agent's
/// kept truth with a full [`truth`] (`stale-truth`).
pub fn update_truth(truth: &mut Views, changed: &[&ResourceKind], cluster: &mut Cluster) {
    oracle().update(truth, changed, cluster.objects_cached());
}

/// The naive oracle over the default views, their specs read once.
fn oracle() -> &'static naive_views::Oracle {
    static ORACLE: std::sync::OnceLock<naive_views::Oracle> = std::sync::OnceLock::new();
    ORACLE.get_or_init(|| naive_views::Oracle::new(&default_views()))
}

/// A broken invariant: which, where in the run, and the seed to replay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub seed: u64,
    /// Index of the event during which it was detected (the first field of its trace line).
    pub event_index: u64,
    #[serde(serialize_with = "ser_time")]
    pub time: SimTime,
    pub invariant: &'static str,
    pub detail: String,
}

fn ser_time<S: serde::Serializer>(t: &SimTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(t.as_secs_f64())
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invariant {} violated at event {} (t={}s, seed {}): {}",
            self.invariant, self.event_index, self.time, self.seed, self.detail
        )
    }
}

/// Flow-control bounds of one connection; the first broken one, described.
fn flow_control(fid: u64, flow: &Flow, a: &AgentEnd, k: &KasEnd) -> Option<String> {
    let (ac, kc) = (&a.conn, &k.conn);
    for (side, c) in [("agent", ac), ("kas", kc)] {
        let (local, remote) = c.open_streams();
        if local > c.peer_settings().max_concurrent_streams {
            return Some(format!(
                "flow {fid} {side}: {local} streams opened, peer allows {}",
                c.peer_settings().max_concurrent_streams
            ));
        }
        if remote > c.local_settings().max_concurrent_streams {
            return Some(format!(
                "flow {fid} {side}: peer opened {remote} streams, limit {}",
                c.local_settings().max_concurrent_streams
            ));
        }
    }
    let peer_window = |c: &protocol::Connection| u64::from(c.peer_settings().initial_stream_window);
    let a_ids = a
        .views
        .iter()
        .chain(a.outbox.keys())
        .chain(a.serving.keys());
    for id in a_ids {
        let cap = ac.send_capacity(*id) as u64;
        if cap > peer_window(ac) {
            return Some(format!(
                "flow {fid} agent stream {id}: send credit {cap} above the peer's window {}",
                peer_window(ac)
            ));
        }
    }
    let k_ids = k
        .views
        .iter()
        .chain(k.outbox.keys())
        .chain(k.requests.keys());
    for id in k_ids {
        let cap = kc.send_capacity(*id) as u64;
        if cap > peer_window(kc) {
            return Some(format!(
                "flow {fid} kas stream {id}: send credit {cap} above the peer's window {}",
                peer_window(kc)
            ));
        }
    }
    if !flow.link.is_dead() {
        let up = ac
            .stats()
            .data_bytes_sent
            .saturating_sub(kc.stats().data_bytes_received);
        let down = kc
            .stats()
            .data_bytes_sent
            .saturating_sub(ac.stats().data_bytes_received);
        let k_window = u64::from(kc.local_settings().initial_connection_window);
        let a_window = u64::from(ac.local_settings().initial_connection_window);
        if up > k_window {
            return Some(format!(
                "flow {fid}: {up} body octets in flight to kas, window {k_window}"
            ));
        }
        if down > a_window {
            return Some(format!(
                "flow {fid}: {down} body octets in flight to the agent, window {a_window}"
            ));
        }
    }
    None
}

impl World {
    /// The flow-control bounds of one flow, if both ends are established.
    fn flow_problem(&self, fid: u64) -> Option<String> {
        let flow = self.flows.get(&fid)?;
        let (a, k) = (flow.a.live()?, flow.k.live()?);
        if a.conn.established().is_none() || k.conn.established().is_none() {
            return None;
        }
        flow_control(fid, flow, a, k)
    }

    /// After every event: the flow-control bounds of every connection the event touched.
    pub(super) fn check_event(&mut self) {
        let mut pumped = std::mem::take(&mut self.pumped);
        pumped.sort_unstable();
        pumped.dedup();
        if self.violation.is_none() {
            for fid in pumped.iter().copied() {
                if let Some(p) = self.flow_problem(fid) {
                    self.violate("flow-control", p);
                    break;
                }
            }
        }
        pumped.clear();
        self.pumped = pumped;
    }

    /// Whether agent `i`'s views are checked against the oracle after every change (its cached
    /// oracle views kept current): every agent in runs of up to [`VIEWS_WATCHED`] agents, a fixed
    /// evenly spread sample of that many in larger ones, so the per-event views checks cost the same
    /// at 100,000 agents as at 1,000. Every agent is checked in full at the end of the run.
    pub(super) fn views_watched(&self, i: usize) -> bool {
        views_watched(i, self.agents.len())
    }

    /// After agent `i`'s cache took a change: its incremental views equal the oracle's (watched
    /// agents only, see [`views_watched`](Self::views_watched)).
    pub(super) fn check_agent_views(&mut self, i: usize) {
        if !self.views_watched(i) {
            return;
        }
        self.join_informer(i);
        if let Some(detail) = agent_views_diverged(i, self.agents[i].local()) {
            self.violate("views-diverged", detail);
        }
    }

    /// After replica `k` applied view messages of `agent_id`: if its mirror has everything the
    /// agent's publisher sent, it equals the oracle's views of the agent's cluster.
    pub(super) fn check_mirror(&mut self, k: usize, agent_id: u64) {
        let Some(i) = usize::try_from(agent_id)
            .ok()
            .and_then(|id| id.checked_sub(1))
            .filter(|i| *i < self.agents.len())
        else {
            return;
        };
        if !self.views_watched(i) {
            return;
        }
        self.join_informer(i);
        let a = self.agents[i].local();
        let (Some(cache), Some(mirror)) = (
            a.views.as_ref().map(|v| v.cache()),
            self.kas[k].mirrors.mirror(agent_id),
        ) else {
            return;
        };
        let p = cache.publisher();
        let caught_up =
            mirror.epoch() == Some(p.epoch()) && mirror.seq() == Some(p.seq()) && !p.has_pending();
        if caught_up && mirror.views() != &a.truth {
            let detail = format!(
                "kas {k}'s mirror of agent {i} is at the agent's (epoch, seq) {:?} but differs from \
                 the oracle's views of its cluster: {:?}",
                (p.epoch(), p.seq()),
                differing(mirror.views(), &a.truth)
            );
            self.violate("mirror-diverged", detail);
        }
    }

    /// After `request` ended: nothing tracks it any more.
    pub(super) fn check_released(&mut self, request: u64) {
        for (k, kas) in self.kas.iter().enumerate() {
            let stage = kas.requests.get(&request);
            let routed = kas.router.assigned_connection(&request);
            if stage.is_some() || routed.is_some() {
                let detail = format!(
                    "request {request} ended, yet kas {k} still tracks it (stage {stage:?}, router \
                     connection {routed:?})"
                );
                self.violate("tracking-leak", detail);
                return;
            }
        }
        if let Some((agent, _)) = self.pending_for.iter().find(|(_, s)| s.contains(&request)) {
            let detail =
                format!("request {request} ended, yet it is listed as waiting for agent {agent}");
            self.violate("tracking-leak", detail);
        }
    }

    /// After kas closed connection `fid`: its router no longer lists it.
    pub(super) fn check_connection_gone(&mut self, k: usize, fid: u64) {
        if let Some(c) = self.kas[k].router.connection(&fid) {
            let detail = format!(
                "kas {k} closed connection {fid} of agent {}, yet its router still lists it (load {})",
                c.agent_id, c.load
            );
            self.violate("connection-leak", detail);
        }
    }

    /// Every sample: flow-control bounds of every connection, the routers' own invariants, and
    /// that every replica's tracking agrees with its router and the ledger.
    pub(super) fn check_periodic(&mut self) {
        let ids: Vec<u64> = self.flows.iter().map(|(id, _)| id).collect();
        for fid in ids {
            if let Some(p) = self.flow_problem(fid) {
                self.violate("flow-control", p);
                return;
            }
        }
        for k in 0..self.kas.len() {
            let kas = &self.kas[k];
            if let Err(e) = kas.router.check_invariants() {
                self.violate("router", format!("kas {k}: {e}"));
                return;
            }
            let stats = kas.router.stats().router;
            let pending = kas
                .requests
                .values()
                .filter(|s| **s == Stage::Pending)
                .count();
            let started = kas.requests.len() - pending;
            if stats.pending != pending || stats.assigned != started || stats.failed_queued != 0 {
                let detail = format!(
                    "kas {k} tracks {pending} pending and {started} started requests, its router \
                     {stats:?}"
                );
                self.violate("tracking-leak", detail);
                return;
            }
            if let Some(r) = kas.requests.keys().find(|r| self.ledger.get(**r).is_none()) {
                let detail = format!("kas {k} tracks request {r}, which has ended");
                self.violate("tracking-leak", detail);
                return;
            }
        }
    }

    /// The end-of-run invariants (see the module docs).
    pub(super) fn check_end(&mut self) {
        self.check_periodic();
        if self.violation.is_some() {
            return;
        }
        if let Some((id, r)) = self.ledger.first_open() {
            let detail = format!(
                "{} request(s) never ended; the first, {id} for agent {}, was issued at {}s and \
                 is at kas {:?}",
                self.ledger.open_count(),
                r.agent,
                r.issued,
                r.at_kas
            );
            self.violate("request-leak", detail);
            return;
        }
        for (k, kas) in self.kas.iter().enumerate() {
            let s = kas.router.stats().router;
            if s.pending + s.assigned + s.failed_queued > 0 || !kas.requests.is_empty() {
                let detail = format!(
                    "kas {k} still holds requests: router {s:?}, tracked {}",
                    kas.requests.len()
                );
                self.violate("tracking-leak", detail);
                return;
            }
        }
        if let Some((agent, reqs)) = self.pending_for.iter().next() {
            let detail = format!("requests {reqs:?} still listed as waiting for agent {agent}");
            self.violate("tracking-leak", detail);
            return;
        }
        let deadline = self.reconnect_deadline;
        for i in 0..self.agents.len() {
            if let Some(detail) = self.agent_end_state(i, deadline) {
                let invariant = detail.0;
                self.violate(invariant, detail.1);
                return;
            }
        }
        // Each agent holds its K serving connections, nothing else.
        let connected: usize = self.agents.iter().map(|a| a.serving_flows().len()).sum();
        if self.flows.len() != connected {
            let stray = self
                .flows
                .iter()
                .find(|(id, f)| !self.agents[f.agent].is_serving(*id))
                .map(|(id, f)| (id, f.agent, f.kas));
            let detail = format!(
                "{} connections remain for {connected} agents; a stray one (flow, agent, kas): {stray:?}",
                self.flows.len()
            );
            self.violate("connection-leak", detail);
        }
    }

    /// The end-of-run state of one agent, if wrong: (invariant, detail).
    fn agent_end_state(&self, i: usize, deadline: SimTime) -> Option<(&'static str, String)> {
        let a = &self.agents[i];
        let (AgentState::Complete, Some(fid)) = (a.state, a.connected_flow()) else {
            return Some((
                "reconnect-bound",
                format!(
                    "agent {i} is not connected at the end (state {:?}, {} of {} connections)",
                    a.state,
                    a.serving_flows().len(),
                    a.reconnect.wanted()
                ),
            ));
        };
        if let Some(since) = a.connected_since
            && since > deadline
        {
            return Some((
                "reconnect-bound",
                format!(
                    "agent {i} connected only at {since}s, after the deadline {deadline}s \
                     (faults and start-up end + reconnect bound)"
                ),
            ));
        }
        let serving = a.serving_flows();
        if a.flows.len() != serving.len() {
            return Some((
                "connection-leak",
                format!(
                    "agent {i} holds {} connections, {} serving: {:?}",
                    a.flows.len(),
                    serving.len(),
                    a.flows
                ),
            ));
        }
        for &sfid in &serving {
            let Some(flow) = self.flows.get(&sfid) else {
                return Some((
                    "connection-leak",
                    format!("agent {i}'s flow {sfid} is gone"),
                ));
            };
            let (Some(ae), Some(ke)) = (flow.a.live(), flow.k.live()) else {
                return Some((
                    "connection-leak",
                    format!("agent {i}'s connection {sfid} is half closed"),
                ));
            };
            // The primary carries the views stream, the others nothing.
            let (want, wanted) = if sfid == fid {
                (((1, 0), (0, 1)), "only the views stream")
            } else {
                (((0, 0), (0, 0)), "none on a secondary connection")
            };
            let streams = (ae.conn.open_streams(), ke.conn.open_streams());
            if streams != want
                || !ae.outbox.is_empty()
                || !ke.outbox.is_empty()
                || !ae.serving.is_empty()
                || !ke.requests.is_empty()
            {
                return Some((
                    "stream-leak",
                    format!(
                        "agent {i} connection {sfid}: open streams (agent, kas) = {streams:?} \
                         (want {wanted}), outboxes {}/{}, serving {}, requests {}",
                        ae.outbox.len(),
                        ke.outbox.len(),
                        ae.serving.len(),
                        ke.requests.len()
                    ),
                ));
            }
        }
        let Some(flow) = self.flows.get(&fid) else {
            return Some(("connection-leak", format!("agent {i}'s flow {fid} is gone")));
        };
        // The end of the run took every state back from the informer jobs.
        let local = a.local();
        let cache = local.views.as_ref()?.cache();
        let truth = truth(&local.cluster);
        if self.views_watched(i) && truth != local.truth {
            return Some((
                "views-diverged",
                format!("agent {i}'s cached oracle views are stale (a glue bug in the simulator)"),
            ));
        }
        if !same_views(cache.views(), &truth) {
            let own = cache.views().views();
            return Some((
                "views-diverged",
                format!(
                    "agent {i}'s own incremental views differ from the oracle's views of its \
                     cluster: {:?}",
                    differing(&own, &truth)
                ),
            ));
        }
        let Some(mirror) = self.kas[flow.kas].mirrors.mirror(a.id) else {
            return Some((
                "mirror-diverged",
                format!("kas {} has no mirror of agent {i}", flow.kas),
            ));
        };
        let publisher = cache.publisher();
        let position = (mirror.epoch(), mirror.seq());
        let want = (Some(publisher.epoch()), Some(publisher.seq()));
        if position != want || mirror.views() != &truth {
            return Some((
                "mirror-diverged",
                format!(
                    "kas {}'s mirror of agent {i} is at (epoch, seq) {position:?}, the agent at \
                     {want:?}; views differing from the oracle's: {:?}",
                    flow.kas,
                    differing(mirror.views(), &truth)
                ),
            ));
        }
        None
    }
}

/// Whether agent `i`'s incremental views differ from the oracle's views of its cluster (what they
/// are and where, if so); nothing while the agent has no cache.
pub fn agent_views_diverged(i: usize, local: &AgentLocal) -> Option<String> {
    let cache = local.views.as_ref()?.cache();
    if same_views(cache.views(), &local.truth) {
        return None;
    }
    let have = cache.views().views();
    Some(format!(
        "agent {i}'s incremental views differ from the oracle's views of its cluster: {:?}",
        differing(&have, &local.truth)
    ))
}

/// Whether the incremental views equal `truth`, without copying them.
fn same_views(set: &protocol::cache::ViewSet, truth: &Views) -> bool {
    set.len() == truth.len()
        && (0..set.len()).all(|i| {
            set.schema(i).is_some_and(|schema| {
                truth.get(&schema.name).is_some_and(|t| {
                    &t.schema == schema
                        && t.rows.len() == set.rows(i).count()
                        && set
                            .rows(i)
                            .zip(&t.rows)
                            .all(|((k, v), (tk, tv))| k == tk && v == tv.as_slice())
                })
            })
        })
}

/// Names of the views that differ between `a` and `b`.
fn differing<'a>(a: &Views, b: &'a Views) -> Vec<&'a str> {
    b.iter()
        .filter(|v| a.get(&v.schema.name) != Some(*v))
        .map(|v| v.schema.name.as_str())
        .collect()
}
