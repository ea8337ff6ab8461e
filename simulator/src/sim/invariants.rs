//! The invariants and their checks.
//!
//! Checked **continuously**, as events happen:
//! - `request-ended-twice`: a request ends exactly once (the [`Ledger`](super::clients::Ledger));
//! - `misdelivered-request` / `misdelivered-response`: a request reaches the agent it is meant for
//!   (the agent checks the agent id the request carries) and its response comes from that agent;
//! - `protocol-error`: no connection fails with a protocol, flow-control or framing error (there is no
//!   malicious peer in the world, so such an error is a bug in the core or the glue);
//! - `backoff-bound`: every back-off delay is within the policy's maximum (or the server's
//!   `retry_after`);
//! - `views-framing` / `views-wire` / `agent-cache`: view messages decode and apply;
//! - in debug builds, `Connection::check_invariants` and `Router::check_invariants` run inside the core
//!   after every call (`debug_assert!`).
//!
//! Checked **periodically** (every sample) by [`World::check_periodic`]:
//! - `flow-control`: per connection and direction, octets in flight never exceed the receiver's
//!   connection window; no stream's send credit exceeds the peer's initial stream window; open
//!   streams stay within both sides' concurrent-stream limits;
//! - `router`: `Router::check_invariants` holds on every replica (also in release builds).
//!
//! Checked **at the end**, after the final quiet period, by [`World::check_end`]:
//! - `request-leak`: every request has ended;
//! - `pending-leak`: no router holds a request, no replica tracks one;
//! - `reconnect-bound`: every agent is connected, and got connected no later than the reconnect
//!   deadline (start-up and faults over, plus [`Scenario::reconnect_bound`](super::Scenario::reconnect_bound));
//! - `connection-leak` / `stream-leak`: each agent has exactly one connection, carrying only its views
//!   stream, with nothing queued;
//! - `views-diverged`: the views of the mirror on the replica the agent is connected to equal views
//!   recomputed from scratch from the cluster's objects (and the agent's own incremental views do too),
//!   at the publisher's epoch and sequence number.

use serde::Serialize;

use super::agent::AgentState;
use super::clock::SimTime;
use super::flow::{AgentEnd, Flow, KasEnd};
use super::world::World;

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
    /// Flow-control bounds of every connection and the routers' own invariants.
    pub(super) fn check_periodic(&mut self) {
        let mut problem = None;
        for (fid, flow) in self.flows.iter() {
            if let (Some(a), Some(k)) = (flow.a.live(), flow.k.live())
                && a.conn.established().is_some()
                && k.conn.established().is_some()
                && let Some(p) = flow_control(fid, flow, a, k)
            {
                problem = Some(p);
                break;
            }
        }
        if let Some(p) = problem {
            self.violate("flow-control", p);
            return;
        }
        for k in 0..self.kas.len() {
            if let Err(e) = self.kas[k].router.check_invariants() {
                self.violate("router", format!("kas {k}: {e}"));
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
            let s = kas.router.stats();
            if s.pending + s.assigned + s.failed_queued > 0 || !kas.requests.is_empty() {
                let detail = format!(
                    "kas {k} still holds requests: router {s:?}, tracked {}",
                    kas.requests.len()
                );
                self.violate("pending-leak", detail);
                return;
            }
        }
        if let Some((agent, reqs)) = self.pending_for.iter().next() {
            let detail = format!("requests {reqs:?} still listed as waiting for agent {agent}");
            self.violate("pending-leak", detail);
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
        let connected = self.agents.len();
        if self.flows.len() != connected {
            let stray = self
                .flows
                .iter()
                .find(|(id, f)| self.agents[f.agent].connected_flow() != Some(*id))
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
        let AgentState::Connected { flow: fid } = a.state else {
            return Some((
                "reconnect-bound",
                format!(
                    "agent {i} is not connected at the end (state {:?})",
                    a.state
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
        if a.flows.len() != 1 {
            return Some((
                "connection-leak",
                format!(
                    "agent {i} holds {} connections: {:?}",
                    a.flows.len(),
                    a.flows
                ),
            ));
        }
        let Some(flow) = self.flows.get(&fid) else {
            return Some(("connection-leak", format!("agent {i}'s flow {fid} is gone")));
        };
        let (Some(ae), Some(ke)) = (flow.a.live(), flow.k.live()) else {
            return Some((
                "connection-leak",
                format!("agent {i}'s connection {fid} is half closed"),
            ));
        };
        let streams = (ae.conn.open_streams(), ke.conn.open_streams());
        if streams != ((1, 0), (0, 1))
            || !ae.outbox.is_empty()
            || !ke.outbox.is_empty()
            || !ae.serving.is_empty()
            || !ke.requests.is_empty()
        {
            return Some((
                "stream-leak",
                format!(
                    "agent {i} connection {fid}: open streams (agent, kas) = {streams:?} (want only \
                     the views stream), outboxes {}/{}, serving {}, requests {}",
                    ae.outbox.len(),
                    ke.outbox.len(),
                    ae.serving.len(),
                    ke.requests.len()
                ),
            ));
        }
        let cache = a.cache.as_ref()?;
        let objects = a.cluster.objects();
        let truth = cache.views().recompute(objects.iter().map(|(k, v)| (k, v)));
        if cache.views().views() != truth {
            return Some((
                "views-diverged",
                format!("agent {i}'s own incremental views differ from its cluster"),
            ));
        }
        let Some(slot) = self.kas[flow.kas].mirrors.get(&a.id) else {
            return Some((
                "views-diverged",
                format!("kas {} has no mirror of agent {i}", flow.kas),
            ));
        };
        let publisher = cache.publisher();
        let position = (slot.mirror.epoch(), slot.mirror.seq());
        let want = (Some(publisher.epoch()), Some(publisher.seq()));
        if position != want || slot.mirror.views() != &truth {
            let differing: Vec<&str> = truth
                .iter()
                .filter(|v| slot.mirror.views().get(&v.schema.name) != Some(*v))
                .map(|v| v.schema.name.as_str())
                .collect();
            return Some((
                "views-diverged",
                format!(
                    "kas {}'s mirror of agent {i} is at (epoch, seq) {position:?}, the agent at \
                     {want:?}; views differing from the cluster: {differing:?}",
                    flow.kas
                ),
            ));
        }
        None
    }
}
