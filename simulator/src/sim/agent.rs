//! A simulated agentk: its cluster, its informer cache ([`AgentCache`], the production code), its
//! connection set ([`ConnectionSet`], the one agentk drives, from `protocol::tunnel::connection_set`:
//! how many connections to hold, when to dial, back-off, handover, duplicates) and its side of the
//! tunnel.
//!
//! Life of an agent: it boots (a new process: a new cache epoch, a relist of its cluster), dials a kas
//! replica picked by the load balancer, says HELLO, and once accepted opens the `views` stream on
//! which its publisher pushes view updates (length-delimited protobuf in DATA) and receives kas's
//! acknowledgements and resync requests. kas's ACCEPT says how many connections to distinct replicas
//! to hold (`K`, scenario `kas.agent_connections`): the agent dials again, one dial at a time, until it
//! holds `K`; a dial that lands on a replica it already holds is closed gracefully (GOAWAY) and the
//! next dial waits a back-off, as the set says. One connection (the primary) carries the views
//! stream; when it goes, the next serving one opens it. kas's requests arrive as streams on any of
//! them; the agent checks they are meant for it, takes a random think time and answers — from its
//! informer cache for the `cache` service, with a body of the configured size otherwise. When kas
//! sends GOAWAY the agent hands over: it dials a replacement at once and lets the old connection
//! finish its streams. When a connection is lost it backs off as [`ConnectionSet`] decides while the
//! others keep serving.

use std::collections::BTreeSet;
use std::num::NonZeroU64;
use std::time::Duration;

use bytes::Bytes;
use protocol::cache::{AgentCache, LabelSelector, LinkEnd, Views};
use protocol::tunnel::connection_set::{Admit, ConnectionSet};
use protocol::tunnel::reconnect::{
    BackoffPolicy, Decision, DialFailure, MIN_LIFETIME_FOR_HANDOVER, Next,
};
use protocol::{AgentHello, CloseReason, Connection, ErrorCode, Event, StreamId, proto};
use rand::Rng;

use super::body::{BodyCheck, Digest, Direction};
use super::clock::SimTime;
use super::cluster::Cluster;
use super::flow::{AgentEnd, End, Flow, Serving, Side, drain_outbox, send_body};
use super::informer::{AgentLocal, Job, WatchInjection};
use super::net::{Dir, Link, LinkParams, PathFaults, Window};
use super::scenario::{LoadBalancing, Scenario};
use super::world::{Ev, World};

/// Header naming the agent a request is meant for.
pub const AGENT_HEADER: &str = "x-sim-agent";
/// Header carrying the client request id.
pub const REQUEST_HEADER: &str = "x-sim-request";
/// Header carrying the request kind (index into the scenario's mix).
pub const KIND_HEADER: &str = "x-sim-kind";

/// Where an agent is in its connection life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// The process is not running.
    Down,
    /// Waiting for the back-off to pass (a `Dial` event is scheduled).
    Waiting,
    /// TCP connect in progress (`None`: it will fail).
    Dialing { flow: Option<u64> },
    /// HELLO sent.
    Handshaking { flow: u64 },
    /// Holds the connections it wants (`K` serving); no dial planned.
    Complete,
}

/// An independent model of agentk's back-off policy, the oracle of the `backoff-too-short`
/// invariant: exponential back-off with full jitter — after `n` consecutive failures the delay is
/// `unit × min(max, initial × 2^(n−1))` for the random `unit` drawn for that failure, never less
/// than the server's `retry_after`; the failures count from zero again after a connection that lived
/// `stable_after`; a connection that lived at least a second and is going away is replaced at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackoffModel {
    failures: u32,
    connected_at: Option<SimTime>,
}

/// What the back-off model allows for the next dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Dial at once (a hand-over).
    Now,
    /// Not before this delay.
    NotBefore(Duration),
}

/// One simulated agent (see the module docs).
#[derive(Debug)]
pub struct SimAgent {
    pub id: u64,
    pub up: bool,
    /// The cluster, the informer cache and the oracle's views: out with an informer job while a
    /// cluster change is processed ([`super::informer`]); [`World::join_informer`] takes it back.
    pub(super) local: Option<Box<AgentLocal>>,
    /// The connection set (dial, back-off, handover); connections are named by their flow id.
    pub reconnect: ConnectionSet<u64>,
    pub state: AgentState,
    /// Invalidates stale `Dial`/`DialFailed` events.
    pub dial_gen: u64,
    /// Flows with a live agent end (serving, draining, the one dialled, duplicates closing).
    pub flows: BTreeSet<u64>,
    /// The connection the views stream was last opened on (see [`SimAgent::connected_flow`]).
    views_flow: Option<u64>,
    /// Connections a views stream was opened on once (each gets one, as in agentk).
    views_tried: BTreeSet<u64>,
    pub timer_at: Option<SimTime>,
    pub connected_since: Option<SimTime>,
    pub faults: PathFaults,
    pub link: LinkParams,
    pub restarts: u32,
    pub connects: u64,
    /// Connections closed at once because they reached a replica the agent holds already.
    pub duplicates: u64,
    /// The back-off oracle's state.
    pub backoff_model: BackoffModel,
    /// Windows in which this cluster's API server answers slower, with the factor (`slow_api`).
    pub slow_api: Vec<(Window, f64)>,
}

impl SimAgent {
    /// Agent `index` of `agents`.
    pub fn new(
        index: usize,
        agents: usize,
        sc: &Scenario,
        latency: Duration,
        policy: BackoffPolicy,
    ) -> SimAgent {
        let id = index as u64 + 1;
        let cluster = Cluster::new(id, &sc.cluster);
        let watched = super::invariants::views_watched(index, agents);
        let truth = if watched {
            super::invariants::truth(&cluster)
        } else {
            Views::new()
        };
        SimAgent {
            id,
            up: false,
            local: Some(Box::new(AgentLocal::new(sc.seed, id, cluster, truth))),
            reconnect: ConnectionSet::new(policy),
            state: AgentState::Down,
            dial_gen: 0,
            flows: BTreeSet::new(),
            views_flow: None,
            views_tried: BTreeSet::new(),
            timer_at: None,
            connected_since: None,
            faults: PathFaults::default(),
            slow_api: Vec::new(),
            link: LinkParams {
                latency,
                jitter: sc.network.jitter,
                bandwidth: sc.network.bandwidth,
            },
            restarts: 0,
            connects: 0,
            duplicates: 0,
            backoff_model: BackoffModel::default(),
        }
    }

    /// The cluster, the informer cache and the oracle's views. The caller took them back from any
    /// informer job first ([`World::join_informer`]).
    pub fn local(&self) -> &AgentLocal {
        self.local
            .as_deref()
            .expect("an agent's state is taken back from its informer job before use")
    }

    /// [`SimAgent::local`], to change.
    pub fn local_mut(&mut self) -> &mut AgentLocal {
        self.local
            .as_deref_mut()
            .expect("an agent's state is taken back from its informer job before use")
    }

    /// The primary connection: the serving connection carrying the views stream, else the oldest
    /// serving one (with `K = 1`, the one connection while it serves).
    pub fn connected_flow(&self) -> Option<u64> {
        if !self.up {
            return None;
        }
        let mut serving = self.reconnect.serving().map(|(c, _)| *c);
        match self.views_flow {
            Some(v) if self.is_serving(v) => Some(v),
            _ => serving.next(),
        }
    }

    /// Whether `fid` is one of the serving connections (not draining).
    pub fn is_serving(&self, fid: u64) -> bool {
        self.up && self.reconnect.serving().any(|(c, _)| *c == fid)
    }

    /// The serving connections, oldest first.
    pub fn serving_flows(&self) -> Vec<u64> {
        if !self.up {
            return Vec::new();
        }
        self.reconnect.serving().map(|(c, _)| *c).collect()
    }
}

fn header_u64(head: &proto::RequestHead, name: &str) -> Option<u64> {
    head.headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| std::str::from_utf8(&h.value).ok())
        .and_then(|v| v.parse().ok())
}

fn header(name: &str, value: u64) -> proto::Header {
    proto::Header {
        name: name.to_owned(),
        value: value.to_string().into_bytes().into(),
    }
}

impl World {
    // ------------------------------------------------------------------ life cycle

    pub(super) fn agent_boot(&mut self, i: usize) {
        let epoch = NonZeroU64::new(self.rng.random::<u64>() | 1).unwrap_or(NonZeroU64::MIN);
        let Some(views) = self.agent_views_boot(i, epoch) else {
            return;
        };
        let a = &mut self.agents[i];
        a.local_mut().views = Some(views);
        a.up = true;
        a.reconnect = ConnectionSet::new(self.policy);
        a.views_flow = None;
        a.views_tried.clear();
        a.backoff_model = BackoffModel::default();
        a.dial_gen += 1;
        a.state = AgentState::Waiting;
        let attempt = a.dial_gen;
        self.note(format_args!("agent-up a={i} epoch={epoch}"));
        self.check_agent_views(i);
        self.agent_dial(i, attempt);
    }

    /// The process dies (its sockets are reset by the kernel); it boots again after `down_for`.
    pub(super) fn agent_crash(&mut self, i: usize, down_for: Duration) {
        if !self.agents[i].up {
            return;
        }
        self.join_informer(i);
        let a = &mut self.agents[i];
        a.up = false;
        a.local_mut().views = None;
        a.reconnect = ConnectionSet::new(self.policy);
        a.views_flow = None;
        a.views_tried.clear();
        a.dial_gen += 1;
        a.state = AgentState::Down;
        a.connected_since = None;
        a.restarts += 1;
        let flows = std::mem::take(&mut a.flows);
        self.note(format_args!("agent-down a={i} flows={}", flows.len()));
        for fid in flows {
            let Some(flow) = self.flows.get_mut(&fid) else {
                continue;
            };
            flow.a = End::Gone;
            if flow.k.live().is_some() {
                self.send_signal(fid, Dir::Up, true);
            }
            self.maybe_remove_flow(fid);
        }
        self.queue
            .push(self.now.plus(down_for), Ev::Boot { agent: i });
    }

    /// Picks a replica as the load balancer in front of kas does.
    fn lb_pick(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.kas.len()).filter(|k| self.lb_up[*k]).collect();
        if up.is_empty() {
            return None;
        }
        Some(match self.sc.agent.load_balancing {
            LoadBalancing::Random => up[self.rng.random_range(0..up.len())],
            LoadBalancing::RoundRobin => {
                let n = self.kas.len();
                let mut pick = up[0];
                for step in 0..n {
                    let k = (self.lb_next + step) % n;
                    if self.lb_up[k] {
                        pick = k;
                        break;
                    }
                }
                self.lb_next = (pick + 1) % n;
                pick
            }
        })
    }

    pub(super) fn agent_dial(&mut self, i: usize, attempt: u64) {
        let a = &self.agents[i];
        if !a.up || a.dial_gen != attempt || a.state != AgentState::Waiting {
            return;
        }
        let now_i = self.now_i;
        if !self.agents[i].reconnect.poll_dial(now_i) {
            let detail = format!(
                "agent {i}: the connection set does not allow the dial scheduled for {}",
                self.now
            );
            self.violate("reconnect", detail);
            return;
        }
        let a = &self.agents[i];
        let latency = a.link.latency;
        let connect_timeout = self.sc.network.connect_timeout;
        let Some(k) = self.lb_pick() else {
            self.agents[i].state = AgentState::Dialing { flow: None };
            self.queue
                .push(self.now, Ev::DialFailed { agent: i, attempt });
            return;
        };
        let kas = &self.kas[k];
        let partitioned = self.agents[i]
            .faults
            .partitioned_until(k, self.now)
            .is_some();
        let fail_at = if partitioned || !kas.host_up() {
            Some(self.now.plus(connect_timeout))
        } else if !kas.accepting() {
            Some(self.now.plus(latency * 2))
        } else {
            None
        };
        if let Some(at) = fail_at {
            self.agents[i].state = AgentState::Dialing { flow: None };
            self.queue.push(at, Ev::DialFailed { agent: i, attempt });
            return;
        }
        let fid = self.new_flow_id();
        let mut link = Link::new(self.agents[i].link, self.now, self.link_rng(fid));
        let syn = link.signal(Dir::Up, self.now, k, &self.agents[i].faults);
        self.flows.insert(
            fid,
            Flow {
                agent: i,
                kas: k,
                incarnation: self.kas[k].incarnation,
                link,
                a: End::Pending,
                k: End::Pending,
                created: self.now,
                round: None,
            },
        );
        self.agents[i].state = AgentState::Dialing { flow: Some(fid) };
        self.note(format_args!("dial a={i} k={k} f={fid}"));
        if let Some(at) = syn {
            self.queue.push(at, Ev::Syn { flow: fid });
        }
        // The connect gives up unless the SYN-ACK arrived by then (it may be lost or held).
        self.queue.push(
            self.now.plus(connect_timeout),
            Ev::DialFailed { agent: i, attempt },
        );
    }

    pub(super) fn agent_dial_failed(&mut self, i: usize, attempt: u64) {
        let a = &mut self.agents[i];
        if !a.up || a.dial_gen != attempt || !matches!(a.state, AgentState::Dialing { .. }) {
            return;
        }
        if let AgentState::Dialing { flow: Some(fid) } = a.state
            && let Some(flow) = self.flows.get_mut(&fid)
        {
            // The socket is abandoned; a SYN-ACK arriving later gets RST.
            flow.a = End::Gone;
            self.maybe_remove_flow(fid);
        }
        let unit: f64 = self.rng.random();
        self.inject_forget_backoff(i);
        let decision =
            self.agents[i]
                .reconnect
                .handle_dial_failed(DialFailure::Network, self.now_i, unit);
        let expect = self.model_failure(i, unit, None);
        self.note(format_args!("dial-failed a={i}"));
        self.schedule_dial(i, decision.next, None, expect);
    }

    /// Deliberate bug: the agent forgets its consecutive failures.
    fn inject_forget_backoff(&mut self, i: usize) {
        if self.sc.inject.forget_backoff {
            self.agents[i].reconnect.reset_failures();
        }
    }

    /// The back-off model's answer to a failure (dial, handshake, or a connection lost).
    fn model_failure(&mut self, i: usize, unit: f64, retry_after: Option<Duration>) -> Expect {
        let policy = self.policy;
        let now = self.now;
        let m = &mut self.agents[i].backoff_model;
        if let Some(at) = m.connected_at.take()
            && now.since(at) >= policy.stable_after
        {
            m.failures = 0;
        }
        m.failures = m.failures.saturating_add(1);
        let mut ceiling = policy.initial.min(policy.max);
        for _ in 1..m.failures {
            if ceiling >= policy.max {
                break;
            }
            ceiling = (ceiling * 2).min(policy.max);
        }
        Expect::NotBefore(
            ceiling
                .mul_f64(unit.clamp(0.0, 1.0))
                .max(retry_after.unwrap_or_default()),
        )
    }

    /// The back-off model's answer to the end (or draining) of a connection that lived `lived`.
    fn model_after_connection(
        &mut self,
        i: usize,
        going_away: bool,
        lived: Duration,
        unit: f64,
    ) -> Expect {
        if going_away && lived >= Duration::from_secs(1) {
            // The oracle's own constant: a second, as agentk's documentation promises.
            Expect::Now
        } else {
            self.model_failure(i, unit, None)
        }
    }

    /// The policy's decision for the end of agent `i`'s active connection `fid`: the agent considers
    /// it current, so the policy must answer; a silence is a violation.
    fn policy_answer(
        &mut self,
        i: usize,
        fid: u64,
        decision: Option<Decision>,
    ) -> Option<Decision> {
        if decision.is_none() {
            let detail =
                format!("agent {i}: no reconnect decision for its active connection {fid}");
            self.violate("reconnect", detail);
        }
        decision
    }

    /// Schedules the next dial as the reconnect policy said, checking it against the policy's bound
    /// and the back-off model.
    fn schedule_dial(
        &mut self,
        i: usize,
        next: Next,
        retry_after: Option<Duration>,
        expect: Expect,
    ) {
        let a = &mut self.agents[i];
        a.dial_gen += 1;
        a.state = AgentState::Waiting;
        let attempt = a.dial_gen;
        // The back-off model follows one connection; with `K > 1` (members ending at different
        // times, duplicates backing off on their own count) only the bound is checked.
        let expect = if a.reconnect.wanted() > 1 {
            Expect::NotBefore(Duration::ZERO)
        } else {
            expect
        };
        let mut at = match next {
            Next::Connect => self.now,
            Next::WaitUntil(t) => self.clock.to_sim(t).max(self.now),
        };
        if let Some(f) = self.sc.inject.stretch_backoff {
            // Deliberate bug: the delay is stretched.
            at = self.now.plus(at.since(self.now).mul_f64(f));
        }
        let delay = at.since(self.now);
        let (id, failures, connects) = (a.id, a.backoff_model.failures, a.connects);
        let bound = self.policy.max.max(retry_after.unwrap_or_default());
        if delay > bound {
            let detail = format!("agent {id} backs off {delay:?}, beyond the bound {bound:?}");
            self.violate("backoff-bound", detail);
        }
        // The model's delay and the policy's are computed the same way from the same random unit;
        // a microsecond covers the conversions between clocks.
        if let Expect::NotBefore(min) = expect
            && delay + Duration::from_micros(1) < min
        {
            let detail = format!(
                "agent {id} backs off {delay:?} after {failures} consecutive failure(s); the policy \
                 says at least {min:?}"
            );
            self.violate("backoff-too-short", detail);
        }
        if self.sc.inject.never_redial == Some(i) && connects > 0 {
            // Deliberate bug: the agent stays in back-off for good.
            self.note(format_args!("INJECT never-redial a={i}"));
            return;
        }
        self.queue.push(at, Ev::Dial { agent: i, attempt });
    }

    /// Plans the next dial from a decision the set just took: unless a dial is in flight (the set
    /// remembers the plan for after it), the dial is scheduled when the set says (`next` for the
    /// checks of [`Self::schedule_dial`]).
    fn redial(&mut self, i: usize, next: Next, retry_after: Option<Duration>, expect: Expect) {
        let a = &self.agents[i];
        if !a.up
            || matches!(
                a.state,
                AgentState::Dialing { .. } | AgentState::Handshaking { .. }
            )
        {
            return;
        }
        match a.reconnect.poll_timeout(self.now_i) {
            // Complete: nothing to dial (the connection that ended was drained on purpose, K fell).
            // (Stale `Dial` events find the state no longer `Waiting`.)
            None => self.agents[i].state = AgentState::Complete,
            // The set's plan may be later than this decision's (a duplicate's back-off); both are
            // within the bounds the checks know.
            Some(at) => {
                let next = match next {
                    Next::WaitUntil(t) if at > t => Next::WaitUntil(at),
                    Next::Connect if at > self.now_i => Next::WaitUntil(at),
                    n => n,
                };
                self.schedule_dial(i, next, retry_after, expect);
            }
        }
    }

    /// After a dial ended (kept or a duplicate): the next dial when the set wants one, else the
    /// agent is complete.
    fn arm_dial(&mut self, i: usize, expect: Expect) {
        let Some(at) = self.agents[i].reconnect.poll_timeout(self.now_i) else {
            self.agents[i].state = AgentState::Complete;
            return;
        };
        let next = if at <= self.now_i {
            Next::Connect
        } else {
            Next::WaitUntil(at)
        };
        self.schedule_dial(i, next, None, expect);
    }

    /// Opens the views stream on the oldest serving connection that never had one, unless a
    /// serving connection carries it already (agentk opens one per connection; the newest linked
    /// wins there; here one connection carries it, which is what kas's mirrors see either way).
    fn ensure_views(&mut self, i: usize) {
        self.join_informer(i);
        let a = &self.agents[i];
        if a.local().views.is_none() {
            return;
        }
        let serving = a.serving_flows();
        let carried = serving.iter().any(|f| {
            self.flows
                .get(f)
                .and_then(|fl| fl.a.live())
                .is_some_and(|e| e.views.is_some())
        });
        if carried {
            return;
        }
        let Some(fid) = serving.into_iter().find(|f| !a.views_tried.contains(f)) else {
            return;
        };
        let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.a.live_mut()) else {
            return;
        };
        let head = super::views::request_head();
        match end.conn.open_stream(head, false) {
            Ok(id) => end.views = Some(id),
            Err(err) => {
                let detail = format!(
                    "agent {} cannot open its views stream: {err}",
                    self.agents[i].id
                );
                self.violate("views-stream", detail);
            }
        }
        let a = &mut self.agents[i];
        a.views_tried.insert(fid);
        a.views_flow = Some(fid);
        self.touch(fid, Side::Agent);
    }

    pub(super) fn agent_syn_ack(&mut self, fid: u64) {
        let Some(flow) = self.flows.get(&fid) else {
            return;
        };
        let i = flow.agent;
        let a = &self.agents[i];
        let wanted = a.up && a.state == (AgentState::Dialing { flow: Some(fid) });
        if !wanted || !matches!(flow.a, End::Pending) {
            if let Some(flow) = self.flows.get_mut(&fid) {
                flow.a = End::Gone;
            }
            self.send_signal(fid, Dir::Up, true);
            self.maybe_remove_flow(fid);
            return;
        }
        let hello = AgentHello {
            token: format!("agent-{}", a.id),
            meta: proto::AgentMeta {
                version: "sim".into(),
                capabilities: vec![protocol::service::VIEWS.into()],
                ..Default::default()
            },
        };
        let conn = Connection::agent(self.config.clone(), hello, self.now_i);
        if let Some(flow) = self.flows.get_mut(&fid) {
            flow.a = End::Live(AgentEnd::new(conn));
        }
        let a = &mut self.agents[i];
        a.state = AgentState::Handshaking { flow: fid };
        a.flows.insert(fid);
        self.pump(fid, Side::Agent);
    }

    // ------------------------------------------------------------------ connection events

    pub(super) fn on_agent_event(&mut self, fid: u64, ev: Event) {
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        let i = flow.agent;
        let Some(end) = flow.a.live_mut() else {
            return;
        };
        match ev {
            Event::Connected(e) => {
                end.connected_at = Some(self.now);
                if e.agent_id != self.agents[i].id {
                    let detail = format!(
                        "agent {} was accepted as agent {}",
                        self.agents[i].id, e.agent_id
                    );
                    self.violate("identity", detail);
                }
                // `unit` only spreads the re-dial after a duplicate, which needs K > 1: no draw
                // otherwise, so runs with K = 1 keep their random sequence.
                let unit = if e.connections_wanted > 1 {
                    self.rng.random()
                } else {
                    0.5
                };
                let admit = self.agents[i].reconnect.handle_connected(
                    fid,
                    &e.replica_id,
                    e.connections_wanted,
                    self.now_i,
                    unit,
                );
                // The dial is over either way.
                self.agents[i].state = AgentState::Complete;
                if admit != Admit::Keep {
                    // A replica this agent holds already (or one too many): closed politely, the
                    // next dial when the set says.
                    if let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.a.live_mut()) {
                        end.conn
                            .close(ErrorCode::NoError, "already connected to this replica");
                    }
                    self.touch(fid, Side::Agent);
                    self.agents[i].duplicates += 1;
                    let kind = match admit {
                        Admit::Duplicate { .. } => "duplicate",
                        _ => "surplus",
                    };
                    self.note(format_args!("{kind} a={i} f={fid}"));
                    self.arm_dial(i, Expect::NotBefore(Duration::ZERO));
                    return;
                }
                if self.sc.inject.close_before_views == Some(i) {
                    // Deliberate bug: the agent starts closing before it opened its views stream.
                    if let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.a.live_mut()) {
                        end.conn.close(ErrorCode::NoError, "injected");
                    }
                }
                let a = &mut self.agents[i];
                a.backoff_model.connected_at = Some(self.now);
                if a.reconnect.serving().count() == 1 {
                    // The agent's first serving connection (with K = 1: every connection).
                    a.connected_since = Some(self.now);
                }
                a.connects += 1;
                self.ensure_views(i);
                self.metrics.agent_connected(i, self.now);
                self.note(format_args!("connected a={i} f={fid}"));
                self.arm_dial(i, Expect::NotBefore(Duration::ZERO));
            }
            Event::Response { id, head, .. } if end.views == Some(id) => {
                self.agent_views_answered(i, fid, head.status);
            }
            Event::Data { id, data } => {
                end.conn.release_capacity(id, data.len());
                if let Some(s) = end.serving.get_mut(&id) {
                    s.body.received.update(&data);
                } else if end.views == Some(id) {
                    self.agent_views_data(i, fid, &data);
                }
            }
            Event::Finished { id } | Event::Trailer { id, .. } => {
                if let Some(s) = end.serving.get_mut(&id) {
                    s.body_done = true;
                    if let Some(problem) = s.body.verify() {
                        let detail = format!("request {} at agent {i}: {problem}", s.request);
                        self.violate("body-corrupted", detail);
                        return;
                    }
                    self.schedule_respond(fid, id);
                } else if end.views == Some(id) {
                    // kas ended the views stream: close ours too and stop publishing on it.
                    end.views = None;
                    end.conn.reset(id, ErrorCode::Cancel, "views stream ended");
                    self.agent_views_gone(i, fid, LinkEnd::KasFinished);
                }
            }
            Event::StreamOpened {
                id,
                head,
                end_stream,
            } => {
                let target = header_u64(&head, AGENT_HEADER);
                let request = header_u64(&head, REQUEST_HEADER).unwrap_or(0);
                let kind = header_u64(&head, KIND_HEADER).unwrap_or(0) as usize;
                let me = self.agents[i].id;
                let request_bytes = self
                    .sc
                    .clients
                    .mix
                    .get(kind)
                    .map_or(0, |k| usize::try_from(k.request_bytes).unwrap_or(0));
                let body = BodyCheck {
                    declared: Digest::declared(&head.headers),
                    expected: Some(
                        Digest::of(
                            &self
                                .patterns
                                .body(request, Direction::Request, request_bytes),
                        )
                        .summary(),
                    ),
                    ..BodyCheck::default()
                };
                end.serving.insert(
                    id,
                    Serving {
                        request,
                        kind,
                        body_done: end_stream,
                        body,
                    },
                );
                if target != Some(me) {
                    let meant = target.map_or_else(|| "(none)".to_owned(), |t| t.to_string());
                    let detail = format!(
                        "request {request} meant for agent {meant} was delivered to agent {me} \
                         (flow {fid}, stream {id})"
                    );
                    self.violate("misdelivered-request", detail);
                }
                if end_stream {
                    if let Some(problem) = body.verify() {
                        let detail = format!("request {request} at agent {i}: {problem}");
                        self.violate("body-corrupted", detail);
                        return;
                    }
                    self.schedule_respond(fid, id);
                }
            }
            Event::Reset {
                id,
                code,
                remote,
                message,
            } => {
                let closing = end.conn.is_closed();
                let served = end.serving.remove(&id).is_some() | end.outbox.remove(&id).is_some();
                let views = end.views == Some(id);
                // kas cancels what it no longer needs, refuses what it cannot take; the rest goes
                // with the connection. Anything else is a bug in the core or the glue.
                let fine = closing
                    || (remote && code == ErrorCode::Cancel)
                    || (views && remote && code == ErrorCode::RefusedStream);
                if (served || views) && !fine {
                    let detail = format!(
                        "agent {i} flow {fid}: stream {id} ({}) was reset with {code} (remote \
                         {remote}): {message}",
                        if views { "views" } else { "request" }
                    );
                    self.violate("stream-error", detail);
                    return;
                }
                if views {
                    end.views = None;
                    self.agent_views_gone(i, fid, LinkEnd::Failed);
                }
            }
            Event::Writable { id } => {
                if let Err(e) = drain_outbox(&mut end.conn, &mut end.outbox, id) {
                    tracing::debug!(error = %e, "agent outbox");
                    end.outbox.remove(&id);
                }
            }
            Event::GoAway { .. } => {
                let active = self.agents[i].is_serving(fid);
                if active && !end.draining {
                    end.draining = true;
                    if let Some(v) = end.views.take() {
                        end.conn
                            .reset(v, ErrorCode::Cancel, "handing over to a new connection");
                    }
                    let lived = end
                        .connected_at
                        .map_or(Duration::ZERO, |t| self.now.since(t));
                    self.agent_views_gone(i, fid, LinkEnd::Draining);
                    let unit: f64 = self.rng.random();
                    if lived < reconnect_handover() {
                        self.inject_forget_backoff(i);
                    }
                    let decision = self.agents[i]
                        .reconnect
                        .handle_draining(&fid, self.now_i, unit);
                    let Some(decision) = self.policy_answer(i, fid, decision) else {
                        return;
                    };
                    let expect = self.model_after_connection(i, true, lived, unit);
                    self.note(format_args!("goaway a={i} f={fid}"));
                    self.ensure_views(i);
                    self.redial(i, decision.next, None, expect);
                }
            }
            Event::Closed(reason) => {
                let connected_at = end.connected_at;
                let carried_views = end.views.take().is_some();
                if reason.fault() == protocol::Fault::PeerMisbehaved {
                    let detail = format!("agent {i} connection {fid} failed: {reason}");
                    self.violate("protocol-error", detail);
                }
                self.note(format_args!("closed a={i} f={fid} {reason}"));
                let a = &mut self.agents[i];
                a.flows.remove(&fid);
                a.views_tried.remove(&fid);
                let serving = a.is_serving(fid);
                let dialled = a.state == (AgentState::Handshaking { flow: fid });
                if carried_views && (serving || dialled) {
                    self.agent_views_gone(i, fid, LinkEnd::Draining);
                }
                if !(serving || dialled) {
                    // Draining (its decision came with the drain) or a duplicate closing.
                    let _ = self.agents[i]
                        .reconnect
                        .handle_closed(&fid, &reason, self.now_i, 0.5);
                    return;
                }
                let unit: f64 = self.rng.random();
                let lived = connected_at.map_or(Duration::ZERO, |t| self.now.since(t));
                let graceful = reason == CloseReason::Graceful;
                if !(serving && graceful && lived >= reconnect_handover()) {
                    self.inject_forget_backoff(i);
                }
                let (next, retry_after, expect) = if serving {
                    let decision = self.agents[i]
                        .reconnect
                        .handle_closed(&fid, &reason, self.now_i, unit);
                    let Some(decision) = self.policy_answer(i, fid, decision) else {
                        return;
                    };
                    if self.agents[i].reconnect.serving().next().is_none() {
                        self.agents[i].connected_since = None;
                    }
                    let expect = self.model_after_connection(i, graceful, lived, unit);
                    (decision.next, None, expect)
                } else {
                    // Ended during the handshake: a failed dial (a REJECT carries its retry_after).
                    self.agents[i].state = AgentState::Complete;
                    let failure = DialFailure::from_close(&reason);
                    let retry_after = match failure {
                        DialFailure::Refused { retry_after, .. } => retry_after,
                        _ => None,
                    };
                    let decision = self.agents[i]
                        .reconnect
                        .handle_dial_failed(failure, self.now_i, unit);
                    let expect = self.model_failure(i, unit, retry_after);
                    (decision.next, retry_after, expect)
                };
                self.ensure_views(i);
                self.redial(i, next, retry_after, expect);
            }
            Event::Hello(_) | Event::Response { .. } => {}
        }
    }

    // ------------------------------------------------------------------ requests

    fn schedule_respond(&mut self, fid: u64, id: StreamId) {
        let kind = self
            .flows
            .get(&fid)
            .and_then(|f| f.a.live())
            .and_then(|e| e.serving.get(&id))
            .map_or(0, |s| s.kind);
        let mix = self.sc.clients.mix.get(kind);
        let mut mean = mix.map_or(Duration::ZERO, |k| k.think);
        if mix.is_some_and(|k| k.service == protocol::service::K8S_API)
            && let Some(a) = self.flows.get(&fid).map(|f| f.agent)
            && let Some(factor) = self.agents[a]
                .slow_api
                .iter()
                .filter(|(w, _)| w.contains(self.now))
                .map(|(_, f)| *f)
                .reduce(f64::max)
        {
            mean = mean.mul_f64(factor);
        }
        let think = if mean.is_zero() {
            Duration::ZERO
        } else {
            self.exp(1.0 / mean.as_secs_f64())
        };
        // Plus the time the real kas and agentk take (`sim::profile`): fixed, plus exponential.
        let spread = self.profile.request_spread();
        let extra = if spread.is_zero() {
            Duration::ZERO
        } else {
            self.exp(1.0 / spread.as_secs_f64())
        };
        let think = think + self.profile.request_base() + extra;
        self.queue.push(
            self.now.plus(think),
            Ev::AgentRespond {
                flow: fid,
                stream: id.0,
            },
        );
    }

    pub(super) fn agent_respond(&mut self, fid: u64, stream: u32) {
        let id = StreamId(stream);
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        let i = flow.agent;
        if flow.a.live().is_none() {
            return;
        }
        // A cache query reads the informer cache.
        self.join_informer(i);
        let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.a.live_mut()) else {
            return;
        };
        let Some(serving) = end.serving.remove(&id) else {
            return;
        };
        if !end.conn.stream_exists(id) {
            return;
        }
        let kind = self.sc.clients.mix.get(serving.kind).cloned();
        let kind = kind.as_ref();
        let request = serving.request;
        let patterned = kind.is_some_and(|k| k.service != protocol::service::CACHE);
        let inject = self.sc.inject.clone();
        let once = |w: &mut World, name: &'static str, from: Option<u64>| {
            from.is_some_and(|n| request >= n) && w.injected.insert(name)
        };
        if once(self, "abandon", inject.abandon_request) {
            // The upstream never answers this one (the kas side of this injection is the bug).
            self.abandoned = Some(request);
            self.note(format_args!("INJECT abandon r={request}"));
            return;
        }
        if once(self, "reset-request", inject.reset_request) {
            // Deliberate bug: the agent resets a stream with a protocol error code.
            if let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.a.live_mut()) {
                end.conn.reset(id, ErrorCode::FlowControl, "injected");
            }
            self.note(format_args!("INJECT reset r={request}"));
            self.pump(fid, Side::Agent);
            return;
        }
        let wrong_responder = once(self, "wrong-responder", inject.wrong_responder);
        let corrupt = patterned
            && kind.is_some_and(|k| k.response_bytes > 0)
            && once(self, "corrupt-body", inject.corrupt_body);
        let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.a.live_mut()) else {
            return;
        };
        let (status, body) = match kind {
            Some(k) if k.service == protocol::service::CACHE => {
                match self.agents[i]
                    .local()
                    .views
                    .as_ref()
                    .map(|v| cache_query(v.cache(), &k.path))
                {
                    Some(Ok(body)) => (200, body),
                    Some(Err(msg)) => (404, Bytes::from(msg)),
                    None => (503, Bytes::new()),
                }
            }
            Some(k) => {
                let n = usize::try_from(k.response_bytes).unwrap_or(0);
                (200, self.patterns.body(request, Direction::Response, n))
            }
            None => (400, Bytes::new()),
        };
        let me = self.agents[i].id;
        let claimed = if wrong_responder { me + 1 } else { me };
        let mut headers = vec![
            header(AGENT_HEADER, claimed),
            header(REQUEST_HEADER, request),
        ];
        headers.extend(Digest::of(&body).headers());
        let body = if corrupt {
            // Deliberate bug: one octet changes after the digest was declared.
            let mut b = body.to_vec();
            let mid = b.len() / 2;
            b[mid] ^= 0x20;
            Bytes::from(b)
        } else {
            body
        };
        let head = proto::ResponseHead { status, headers };
        let empty = body.is_empty();
        let result = end.conn.send_response(id, head, empty).and_then(|()| {
            if empty {
                Ok(())
            } else {
                send_body(&mut end.conn, &mut end.outbox, id, body, true)
            }
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, "agent cannot answer");
        }
        self.pump(fid, Side::Agent);
    }

    pub(super) fn agent_timer(&mut self, i: usize) {
        self.agents[i].timer_at = None;
        self.pump_views(i);
        if let Some(fid) = self.agents[i].connected_flow() {
            self.pump(fid, Side::Agent);
        }
    }

    /// Total cluster change rate (per second).
    pub(super) fn churn_rate(&self) -> f64 {
        let c = &self.sc.cluster;
        let per_agent = c.churn_per_minute / 60.0;
        self.agents.len() as f64 * per_agent
            + self.hot.len() as f64 * per_agent * (c.hot_factor - 1.0).max(0.0)
    }

    /// One cluster changes. The change, the oracle and the agent's informer cache taking the watch
    /// events go to an informer job ([`super::informer`]); the agent publishes what changed when
    /// the API server's watch latency has passed (`Ev::Watched`).
    pub(super) fn churn(&mut self) {
        if self.now >= self.quiet_from {
            return;
        }
        let rate = self.churn_rate();
        let next = self.now.plus(self.exp(rate));
        if next < self.quiet_from {
            self.queue.push(next, Ev::Churn);
        }
        let c = &self.sc.cluster;
        let n = self.agents.len() as f64;
        let base = n * c.churn_per_minute / 60.0;
        let i = if !self.hot.is_empty() && self.rng.random::<f64>() >= base / rate {
            self.hot[self.rng.random_range(0..self.hot.len())]
        } else {
            self.rng.random_range(0..self.agents.len())
        };
        self.metrics.churn += 1;
        // One job per agent at a time: an earlier change of this cluster is taken back first.
        self.join_informer(i);
        let (malformed, skip) = (
            self.sc.inject.malformed_watch_event,
            self.sc.inject.skip_watch_event,
        );
        if malformed.is_some() || skip.is_some() {
            // The injections count watch events over the run: every earlier change counted first.
            self.join_informers();
        }
        let inject = WatchInjection {
            before: self.watch_events,
            malformed,
            skip,
        };
        let watched = self.views_watched(i);
        let a = &mut self.agents[i];
        let Some(local) = a.local.take() else {
            return;
        };
        self.informers.submit(Job {
            agent: i,
            agent_id: a.id,
            local,
            watched,
            now: self.now_i,
            inject,
        });
        let at = self.now.plus(self.sc.cluster.watch_latency);
        self.queue.push(at, Ev::Watched { agent: i });
    }

    /// Agent `i`'s informer has seen a change: the agent publishes what changed.
    pub(super) fn watched(&mut self, i: usize) {
        self.join_informer(i);
        self.pump_views(i);
        if let Some(fid) = self.agents[i].connected_flow() {
            self.pump(fid, Side::Agent);
        }
    }

    /// Takes agent `i`'s state back from its informer job, if one has it, and reports what the
    /// job found (waits for the job when it is not done yet).
    pub(super) fn join_informer(&mut self, i: usize) {
        let Some(done) = self.informers.join(i) else {
            return;
        };
        self.agents[i].local = Some(done.local);
        self.watch_events += done.events;
        if done.skipped {
            self.trace.line(format_args!(
                "{} {} . INJECT skip-watch-event a={i}",
                self.event_index, self.now
            ));
        }
        if let Some((invariant, detail)) = done.violation {
            self.violate(invariant, detail);
        }
    }

    /// Takes every agent's state back from the informer jobs, in agent order.
    pub(super) fn join_informers(&mut self) {
        for i in self.informers.outstanding() {
            self.join_informer(i);
        }
    }
}

/// Answers a `cache` request (`/{kind}?namespace=..&labelSelector=..`) from the informer cache.
fn cache_query(cache: &AgentCache, path: &str) -> Result<Bytes, String> {
    let (kind, query) = path.split_once('?').unwrap_or((path, ""));
    let kind = kind.trim_start_matches('/');
    let mut namespace = None;
    let mut selector = LabelSelector::everything();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "namespace" => namespace = Some(v),
            "labelSelector" => {
                selector = LabelSelector::parse(v).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
    }
    let kind = cache.store().find_kind(kind).map_err(|e| e.to_string())?;
    (cache.store().list_json_vec(&kind, namespace, &selector))
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// How long a connection must have lived for GOAWAY to be a hand-over rather than a failure.
fn reconnect_handover() -> Duration {
    MIN_LIFETIME_FOR_HANDOVER
}
