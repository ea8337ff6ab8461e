//! A simulated kas replica: kas's production routing policy ([`KasRouting`]) deciding which agent
//! connection carries each request, the production [`MirrorTable`] fed by the agents' views streams
//! ([`super::views`]), and
//! kas's side of the tunnel.
//!
//! A client request reaches a replica (the one holding a connection of the agent, found through the
//! directory of connected agents, or any replica when there is none), is placed by the policy, and
//! travels as a real tunnel stream (REQUEST, body DATA, RESPONSE, DATA, end of stream). What the agent
//! never processed (an open refused by GOAWAY or the stream limit, a RESET `REFUSED_STREAM`) goes back
//! to the policy, which reroutes or fails it; a lost connection fails what it carried, deadlines fail
//! what waited too long. The world tells every replica which replicas hold each agent
//! ([`KasRouting::handle_holders`], the seam issue 12 fills from Redis): requests waiting for an agent
//! another replica holds are forwarded there, at most `max_hops` times; a replica a request was
//! forwarded to that no longer holds a live connection of the agent sends it back to the replica the
//! client reached (the policy's rule 5a; kas answers `421 not-held`), which places it again.
//!
//! With `kas.agent_connections` (`K`) above 1, ACCEPT names the replica (`kas-<index>`) and says
//! `K` as kas decides it ([`protocol::tunnel::connection_set::connections_wanted`], capped by the
//! replicas): agents then hold connections on several replicas, and a request is served by the
//! replica the balancer chose when it holds one of them, as kas serves its own connections first.
//!
//! Replicas crash (connections vanish, silently or with RST; everything in memory is lost) and are
//! restarted in turn (GOAWAY, drain for at most the grace period, stop, start).

use std::collections::{BTreeMap, BTreeSet};

use protocol::cache::MirrorTable;
use protocol::routing::balance::{Balance, Candidate, shed_order};
use protocol::routing::{
    DrainCause, KasRouting, Listing, OpenFailure, Placement, ReplicaId, RequestFailure,
    RequestSpec, RouterConfig, RoutingConfig, RoutingEvent,
};
use protocol::{ErrorCode, Event, StreamId, proto};

use super::agent::{AGENT_HEADER, KIND_HEADER, REQUEST_HEADER};
use super::body::{BodyCheck, Digest, Direction};
use super::clients::Outcome;
use super::clock::SimTime;
use super::flow::{End, KasEnd, KasStream, Side, drain_outbox, send_body};
use super::net::Dir;
use super::report::StormCause;
use super::scenario::{Fault, Scenario};
use super::world::{Ev, World};

/// Whether the replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KasState {
    Up,
    /// Stopped; `host_up`: the machine answers (connection refused) rather than staying silent.
    Down {
        host_up: bool,
    },
}

/// Where a routed request is on its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Pending,
    Started { flow: u64, stream: StreamId },
}

/// One kas replica (see the module docs).
#[derive(Debug)]
pub struct SimKas {
    pub index: usize,
    pub state: KasState,
    accepting: bool,
    pub incarnation: u32,
    /// kas's routing policy (over the production router).
    pub router: KasRouting<u64, u64>,
    routing_config: RoutingConfig,
    /// The agents that exist (the agents file every replica reads).
    listing: Listing,
    /// Flows with a live kas end.
    pub conns: BTreeSet<u64>,
    /// Accepted connections among them.
    pub established: usize,
    pub mirrors: MirrorTable,
    pub requests: BTreeMap<u64, Stage>,
    pub router_timer_at: Option<SimTime>,
    /// The rolling restart (fault index) this replica is draining for.
    pub rolling: Option<usize>,
    pub restarts: u32,
    /// The balance decision (scenario `kas.balance`), per process.
    pub balance: Option<Balance>,
    /// Connections this replica drained to balance load.
    pub shed: u64,
    /// Its end of the tunnel: ACCEPT names the replica and `K` ([`Scenario::server_config`]).
    server_config: protocol::Config,
}

impl SimKas {
    /// Replica `index` of a world whose agents are `1..=agents`.
    pub fn new(index: usize, sc: &Scenario, agents: u64) -> SimKas {
        let routing_config = RoutingConfig {
            router: RouterConfig {
                max_pending_per_agent: sc.kas.max_pending_per_agent,
                max_pending_total: sc.kas.max_pending_total,
            },
            replica: Some(ReplicaId(u32::try_from(index).unwrap_or(u32::MAX))),
            ..RoutingConfig::default()
        };
        let listing = Listing::Authoritative((1..=agents).collect());
        SimKas {
            index,
            state: KasState::Up,
            accepting: true,
            incarnation: 0,
            router: KasRouting::new(routing_config, listing.clone()),
            routing_config,
            listing,
            conns: BTreeSet::new(),
            established: 0,
            mirrors: super::views::mirror_table(sc),
            requests: BTreeMap::new(),
            router_timer_at: None,
            rolling: None,
            restarts: 0,
            balance: sc.kas.balance.as_ref().map(|b| Balance::new(b.policy())),
            shed: 0,
            server_config: sc.server_config(index),
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == KasState::Up
    }

    pub fn host_up(&self) -> bool {
        !matches!(self.state, KasState::Down { host_up: false })
    }

    /// Up and taking new connections and requests.
    pub fn accepting(&self) -> bool {
        self.is_up() && self.accepting
    }

    /// Whether the replica holds a usable (non-draining) connection of `agent_id`.
    pub fn holds(&self, agent_id: u64) -> bool {
        self.router
            .connections(agent_id)
            .iter()
            .any(|c| !c.draining)
    }
}

fn parse_agent_token(token: &str) -> Option<u64> {
    token.strip_prefix("agent-")?.parse().ok()
}

impl World {
    // ------------------------------------------------------------------ connections

    pub(super) fn kas_syn(&mut self, fid: u64) {
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        let (k, i) = (flow.kas, flow.agent);
        let kas = &mut self.kas[k];
        if kas.accepting() && kas.incarnation == flow.incarnation && matches!(flow.k, End::Pending)
        {
            // Handshakes queue on the replica's cores (below). One whose turn comes only after the
            // dialer gave up (its connect timeout) costs nothing: by then the client has closed the
            // socket and kas finds it reset. Without this, every timed-out dial of a storm would
            // still hold the queue and delay the retries behind it: a collapse no real kas has.
            let start = self.now.max(self.handshake_free[k]);
            if start >= flow.created.plus(self.sc.network.connect_timeout) {
                flow.k = End::Gone;
                return;
            }
            let conn = protocol::Connection::server(kas.server_config.clone(), self.now_i);
            flow.k = End::Live(KasEnd::new(conn));
            kas.conns.insert(fid);
            // The handshake's CPU (TLS, HELLO, auth; `sim::profile`) queues on the replica's cores.
            self.handshake_free[k] = start.plus(self.profile.handshake_slot());
            let cpu = self.handshake_free[k].since(self.now);
            let faults = &self.agents[i].faults;
            if let Some(at) = flow.link.signal(Dir::Down, self.now, k, faults) {
                self.queue.push(at.plus(cpu), Ev::SynAck { flow: fid });
            }
            self.touch(fid, Side::Kas);
            return;
        }
        // Refused (or nobody home): the dial fails.
        let host_up = kas.host_up();
        flow.k = End::Gone;
        flow.a = End::Gone;
        let latency = flow.link.params().latency;
        self.flows.remove(&fid);
        let a = &self.agents[i];
        if a.state == (super::agent::AgentState::Dialing { flow: Some(fid) }) {
            let attempt = a.dial_gen;
            let at = if host_up {
                self.now.plus(latency)
            } else {
                self.now.plus(self.sc.network.connect_timeout)
            };
            self.queue.push(at, Ev::DialFailed { agent: i, attempt });
        }
    }

    pub(super) fn on_kas_event(&mut self, fid: u64, ev: Event) {
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        let k = flow.kas;
        let Some(end) = flow.k.live_mut() else {
            return;
        };
        match ev {
            Event::Hello(info) => {
                let kas = &self.kas[k];
                match parse_agent_token(&info.token) {
                    None => end.conn.reject(proto::Reject {
                        code: proto::RejectCode::Unauthenticated as i32,
                        message: "unknown token".into(),
                        ..Default::default()
                    }),
                    Some(_)
                        if self.sc.kas.max_connections > 0
                            && kas.established >= self.sc.kas.max_connections =>
                    {
                        let retry_after_ms =
                            u32::try_from(self.sc.kas.refuse_retry_after.as_millis())
                                .unwrap_or(u32::MAX);
                        end.conn.reject(proto::Reject {
                            code: proto::RejectCode::Unavailable as i32,
                            message: "too many connections".into(),
                            retry_after_ms,
                            ..Default::default()
                        });
                        self.metrics.kas[k].refused += 1;
                    }
                    Some(agent_id) => {
                        let agent_id = if self
                            .sc
                            .inject
                            .accept_as_other
                            .is_some_and(|i| i as u64 + 1 == agent_id)
                        {
                            // Deliberate bug: the token is mapped to another agent.
                            agent_id + 1000
                        } else {
                            agent_id
                        };
                        end.conn
                            .accept(agent_id, format!("k{k}-f{fid}"), self.now_i);
                    }
                }
            }
            Event::Connected(e) => {
                end.agent_id = Some(e.agent_id);
                end.registered = true;
                let kas = &mut self.kas[k];
                kas.established += 1;
                let added = kas.router.handle_connected(
                    e.agent_id,
                    fid,
                    e.peer_settings.max_concurrent_streams,
                    self.now_i,
                );
                if let Err(err) = added {
                    self.violate("router", format!("kas {k} add_connection({fid}): {err}"));
                    return;
                }
                self.drain_router(k);
                self.publish_holders(e.agent_id);
            }
            Event::StreamOpened { id, head, .. } => {
                if head.service == protocol::service::VIEWS
                    && let Some(agent_id) = end.agent_id
                    && end.views.is_none()
                {
                    self.kas_views_opened(k, fid, agent_id, id, &head);
                } else {
                    end.conn
                        .reset(id, ErrorCode::UnknownService, "no such service on kas");
                }
            }
            Event::Data { id, data } => {
                end.conn.release_capacity(id, data.len());
                if end.views == Some(id) {
                    if let Some(agent_id) = end.agent_id {
                        self.kas_views_data(k, fid, agent_id, id, &data);
                    }
                } else if let Some(s) = end.requests.get_mut(&id) {
                    s.body.received.update(&data);
                    self.metrics.kas[k].response_bytes += data.len() as u64;
                }
            }
            Event::Response {
                id,
                head,
                end_stream,
            } => {
                let Some(s) = end.requests.get_mut(&id) else {
                    return;
                };
                s.status = Some(head.status);
                s.body.declared = Digest::declared(&head.headers);
                let body = s.body;
                let request = s.request;
                let from = head
                    .headers
                    .iter()
                    .find(|h| h.name == AGENT_HEADER)
                    .and_then(|h| std::str::from_utf8(&h.value).ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if end_stream {
                    end.requests.remove(&id);
                }
                let meant = self.ledger.get(request).map(|r| r.agent);
                if meant.is_some() && from != meant {
                    let detail = format!(
                        "response to request {request} (for agent {meant:?}) came from agent {from:?}"
                    );
                    self.violate("misdelivered-response", detail);
                    return;
                }
                if end_stream {
                    if let Some(problem) = body.verify() {
                        let detail = format!("response to request {request}: {problem}");
                        self.violate("body-corrupted", detail);
                        return;
                    }
                    self.finish_request(k, request, Outcome::Response(head.status));
                }
            }
            Event::Finished { id } | Event::Trailer { id, .. } => {
                if let Some(s) = end.requests.remove(&id) {
                    if let Some(problem) = s.body.verify() {
                        let detail = format!("response to request {}: {problem}", s.request);
                        self.violate("body-corrupted", detail);
                        return;
                    }
                    let outcome = Outcome::Response(s.status.unwrap_or(0));
                    self.finish_request(k, s.request, outcome);
                } else if end.views == Some(id) {
                    self.kas_views_closed(k, fid, true);
                }
            }
            Event::Reset {
                id,
                code,
                remote,
                message,
            } => {
                end.outbox.remove(&id);
                let closing = end.conn.is_closed();
                if end.views == Some(id) {
                    if !(closing || remote && code == ErrorCode::Cancel) {
                        end.views = None;
                        let detail = format!(
                            "kas {k} flow {fid}: the views stream {id} was reset with {code} \
                             (remote {remote}): {message}"
                        );
                        self.violate("stream-error", detail);
                        return;
                    }
                    self.kas_views_closed(k, fid, false);
                } else if let Some(s) = end.requests.remove(&id) {
                    if code == ErrorCode::RefusedStream && remote {
                        // Never processed by the agent (GOAWAY or stream limit): the policy decides.
                        self.retry_request(k, s.request, None);
                    } else if closing {
                        self.finish_request(k, s.request, Outcome::ConnectionLost);
                    } else {
                        // The agent never resets a request it serves, and kas never sees its own
                        // cancellations: any other reset is a bug in the core or the glue.
                        let detail = format!(
                            "request {} on kas {k} flow {fid} stream {id} was reset with {code} \
                             (remote {remote}): {message}",
                            s.request
                        );
                        self.violate("stream-error", detail);
                    }
                }
            }
            Event::Writable { id } => {
                if let Err(e) = drain_outbox(&mut end.conn, &mut end.outbox, id) {
                    tracing::debug!(error = %e, "kas outbox");
                    end.outbox.remove(&id);
                }
            }
            Event::GoAway { .. } => {
                if end.registered {
                    let agent_id = end.agent_id;
                    if self.kas[k].router.connection(&fid).is_none() {
                        self.violate("router", format!("kas {k} set_draining({fid}): unknown"));
                    }
                    self.kas[k]
                        .router
                        .handle_draining(&fid, DrainCause::PeerGoaway, self.now_i);
                    self.drain_router(k);
                    if let Some(a) = agent_id {
                        self.publish_holders(a);
                    }
                }
            }
            Event::Closed(reason) => {
                let registered = end.registered;
                let agent_id = end.agent_id;
                let views = end.views.is_some();
                let leftovers: Vec<u64> = std::mem::take(&mut end.requests)
                    .into_values()
                    .map(|s| s.request)
                    .collect();
                if reason.fault() == protocol::Fault::PeerMisbehaved {
                    self.violate(
                        "protocol-error",
                        format!("kas {k} connection {fid} failed: {reason}"),
                    );
                }
                self.note(format_args!("kas-closed k={k} f={fid} {reason}"));
                if views {
                    self.kas_views_closed(k, fid, false);
                }
                let kas = &mut self.kas[k];
                kas.conns.remove(&fid);
                for r in leftovers {
                    // Streams are reported reset before Closed, so this only catches glue bugs.
                    self.finish_request(k, r, Outcome::ConnectionLost);
                }
                let keep = registered
                    && self.sc.inject.keep_closed_connection
                    && self.injected.insert("keep-closed-connection");
                if keep {
                    // Deliberate bug: the router is not told.
                    self.kas[k].established -= 1;
                    self.note(format_args!("INJECT keep-closed-connection f={fid}"));
                } else if registered {
                    self.kas[k].established -= 1;
                    if self.kas[k].router.connection(&fid).is_none() {
                        self.violate(
                            "router",
                            format!("kas {k} remove_connection({fid}): unknown"),
                        );
                    }
                    // Requests started on it fail through the policy's events (connection lost).
                    self.kas[k].router.handle_closed(&fid, self.now_i);
                    self.drain_router(k);
                    if let Some(a) = agent_id {
                        self.publish_holders(a);
                    }
                }
                self.check_connection_gone(k, fid);
                let kas = &self.kas[k];
                if let Some(fault) = kas.rolling
                    && kas.is_up()
                    && kas.conns.is_empty()
                {
                    let incarnation = kas.incarnation;
                    self.queue.push(
                        self.now,
                        Ev::KasStop {
                            kas: k,
                            incarnation,
                            fault,
                        },
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------------ requests

    /// The replica holding a usable connection of `agent_id`, lowest index first.
    pub(super) fn directory_owner(&self, agent_id: u64) -> Option<usize> {
        (0..self.kas.len()).find(|&k| self.kas[k].accepting() && self.kas[k].holds(agent_id))
    }

    /// Sends a request to the replica that will route it: the agent's owner, else `front`, else any
    /// accepting replica.
    pub(super) fn dispatch_request(&mut self, request: u64, front: Option<usize>) {
        let Some(r) = self.ledger.get_mut(request) else {
            return;
        };
        r.at_kas = None;
        let agent = r.agent;
        // With K > 1 the replica the balancer chose serves it when it holds a connection of the
        // agent, as kas does (its own connections first); else the holder the directory names
        // (where the policy would forward it). With K = 1 one replica holds an agent (but for
        // moments, a connection kas has not seen die yet): the directory's holder, as before, so
        // such runs keep their trace hashes.
        let front_holds = front.filter(|&k| {
            self.sc.connections_wanted() > 1 && self.kas[k].accepting() && self.kas[k].holds(agent)
        });
        let target = front_holds
            .or_else(|| self.directory_owner(agent))
            .or(front)
            .or_else(|| {
                let up: Vec<usize> = (0..self.kas.len())
                    .filter(|&k| self.kas[k].accepting())
                    .collect();
                (!up.is_empty()).then(|| up[usize::try_from(request).unwrap_or(0) % up.len()])
            });
        match target {
            Some(k) => {
                let at = if Some(k) == front {
                    self.now
                } else {
                    self.now.plus(self.sc.kas.hop_latency)
                };
                self.queue.push(at, Ev::KasArrive { kas: k, request });
            }
            None => self.complete(request, Outcome::KasUnavailable),
        }
    }

    pub(super) fn kas_arrive(&mut self, k: usize, request: u64) {
        let body_len = match self.ledger.get(request) {
            Some(r) => self.request_body_len(r.kind),
            None => return,
        };
        let Some(r) = self.ledger.get_mut(request) else {
            return;
        };
        if !self.kas[k].accepting() {
            self.complete(request, Outcome::KasUnavailable);
            return;
        }
        r.at_kas = Some(k);
        r.gateway.get_or_insert(k);
        let agent = r.agent;
        let deadline = self.now.plus(self.sc.kas.pending_timeout).min(r.deadline);
        let spec = RequestSpec {
            agent_id: agent,
            deadline: self.clock.instant(deadline),
            replayable: body_len == 0,
            hops: r.hops,
        };
        match self.kas[k].router.handle_request(request, spec, self.now_i) {
            Placement::Open(fid) => self.start_request(k, request, fid),
            Placement::Wait => {
                self.kas[k].requests.insert(request, Stage::Pending);
                self.pending_for.entry(agent).or_default().insert(request);
            }
            Placement::Forward(replica) => self.forward_request(request, replica),
            Placement::Reject(RequestFailure::NotHeld) => self.send_back(request),
            Placement::Reject(e) => self.complete(request, Outcome::from(&e)),
        }
        self.drain_router(k);
    }

    /// The replica `request` was forwarded to no longer holds a live connection of its agent (the
    /// policy's rule 5a): it goes back to the replica the client reached, which places it again —
    /// kas's gateway on `421 not-held`. At most once per replica (kas's gateway leaves one more
    /// replica out each round); then the client gets the failure.
    fn send_back(&mut self, request: u64) {
        let replicas = self.kas.len();
        let Some(r) = self.ledger.get_mut(request) else {
            return;
        };
        match r.gateway {
            Some(g) if usize::from(r.returns) < replicas => {
                r.returns += 1;
                r.hops = 0;
                r.at_kas = None;
                self.ledger.note_sent_back();
                let at = self.now.plus(self.sc.kas.hop_latency);
                self.queue.push(at, Ev::KasArrive { kas: g, request });
            }
            _ => self.complete(request, Outcome::from(&RequestFailure::NotHeld)),
        }
    }

    /// The agents replica `k` has connections of or requests waiting for.
    fn agents_of(&self, k: usize) -> BTreeSet<u64> {
        let mut agents: BTreeSet<u64> = self.kas[k]
            .conns
            .iter()
            .filter_map(|f| self.flows.get(f)?.k.live()?.agent_id)
            .collect();
        agents.extend(
            self.kas[k]
                .requests
                .keys()
                .filter_map(|r| self.ledger.get(*r).map(|o| o.agent)),
        );
        agents
    }

    /// A request's body length (what makes it replayable or not).
    fn request_body_len(&self, kind: usize) -> usize {
        self.sc
            .clients
            .mix
            .get(kind)
            .map_or(0, |k| usize::try_from(k.request_bytes).unwrap_or(0))
    }

    /// The policy forwards `request` to another replica (one more hop).
    fn forward_request(&mut self, request: u64, replica: ReplicaId) {
        let Some(r) = self.ledger.get_mut(request) else {
            return;
        };
        r.hops = r.hops.saturating_add(1);
        r.at_kas = None;
        let k = usize::try_from(replica.0).unwrap_or(usize::MAX);
        if k < self.kas.len() {
            let at = self.now.plus(self.sc.kas.hop_latency);
            self.queue.push(at, Ev::KasArrive { kas: k, request });
        } else {
            self.complete(request, Outcome::KasUnavailable);
        }
    }

    /// Tells every replica which replicas hold a live connection of `agent_id` (accepting, not
    /// draining): the holders table issue 12 keeps in Redis, kept here by the world.
    pub(super) fn publish_holders(&mut self, agent_id: u64) {
        // Entries never expire in the simulation: the world updates them on every change.
        let expires = self.now_i + std::time::Duration::from_secs(365 * 24 * 3600);
        let holders: Vec<(ReplicaId, std::time::Instant)> = (0..self.kas.len())
            .filter(|&k| self.kas[k].accepting() && self.kas[k].holds(agent_id))
            .map(|k| (ReplicaId(u32::try_from(k).unwrap_or(u32::MAX)), expires))
            .collect();
        for k in 0..self.kas.len() {
            if self.kas[k].is_up() {
                self.kas[k]
                    .router
                    .handle_holders(agent_id, &holders, self.now_i);
                self.drain_router(k);
            }
        }
    }

    fn unpend(&mut self, agent: u64, request: u64) {
        if let Some(set) = self.pending_for.get_mut(&agent) {
            set.remove(&request);
            if set.is_empty() {
                self.pending_for.remove(&agent);
            }
        }
    }

    /// Opens a started request's stream on connection `fid`.
    fn start_request(&mut self, k: usize, request: u64, fid: u64) {
        let Some(r) = self.ledger.get(request).copied() else {
            // Ended while queued in the router (cannot happen: ending cancels it there).
            self.kas[k].router.handle_finished(&request);
            return;
        };
        self.unpend(r.agent, request);
        let mut target = fid;
        if self.sc.inject.misroute_request == Some(request) {
            // Deliberate bug: open the stream on another agent's connection.
            let other = self.kas[k].conns.iter().copied().find(|f| {
                self.flows
                    .get(f)
                    .and_then(|fl| fl.k.live())
                    .is_some_and(|e| {
                        e.registered && e.agent_id != Some(r.agent) && !e.conn.is_draining()
                    })
            });
            if let Some(o) = other {
                self.note(format_args!("INJECT misroute r={request} f={fid}->{o}"));
                target = o;
            }
        }
        let kind = self.sc.clients.mix.get(r.kind);
        let body_len = kind.map_or(0, |k| usize::try_from(k.request_bytes).unwrap_or(0));
        let body = self.patterns.body(request, Direction::Request, body_len);
        let mut headers = vec![
            header(AGENT_HEADER, r.agent),
            header(REQUEST_HEADER, request),
            header(KIND_HEADER, r.kind as u64),
        ];
        headers.extend(Digest::of(&body).headers());
        let head = proto::RequestHead {
            service: kind.map_or_else(String::new, |k| k.service.clone()),
            method: kind.map_or_else(String::new, |k| k.method.clone()),
            path: kind.map_or_else(String::new, |k| k.path.clone()),
            headers,
            timeout_ms: u32::try_from(r.deadline.since(self.now).as_millis()).unwrap_or(u32::MAX),
            impersonation: None,
        };
        // What the response body must be, for kinds answered with a patterned body.
        let response_expected = kind
            .filter(|k| k.service != protocol::service::CACHE)
            .map(|k| {
                let len = usize::try_from(k.response_bytes).unwrap_or(0);
                Digest::of(&self.patterns.body(request, Direction::Response, len)).summary()
            });
        let opened = match self.flows.get_mut(&target).and_then(|f| f.k.live_mut()) {
            Some(end) => match end.conn.open_stream(head, body.is_empty()) {
                Ok(id) => {
                    end.requests.insert(
                        id,
                        KasStream {
                            request,
                            status: None,
                            body: BodyCheck {
                                expected: response_expected,
                                ..BodyCheck::default()
                            },
                        },
                    );
                    if !body.is_empty()
                        && let Err(e) = send_body(&mut end.conn, &mut end.outbox, id, body, true)
                    {
                        tracing::debug!(error = %e, "request body");
                    }
                    Ok(id)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "open_stream refused: back to the policy");
                    Err(open_failure(&e))
                }
            },
            None => Err(OpenFailure::Closed),
        };
        match opened {
            Ok(stream) => {
                self.kas[k].requests.insert(
                    request,
                    Stage::Started {
                        flow: target,
                        stream,
                    },
                );
                self.touch(target, Side::Kas);
            }
            Err(failure) => {
                // Nothing reached the wire: the policy decides (drain, another connection, fail).
                self.kas[k].requests.insert(
                    request,
                    Stage::Started {
                        flow: fid,
                        stream: StreamId(0),
                    },
                );
                self.retry_request(k, request, Some(failure));
            }
        }
    }

    /// A started request was never processed by the agent: `open`, its stream could not be opened
    /// (why); `None`, the agent refused it. The policy requeues, forwards or fails it.
    fn retry_request(&mut self, k: usize, request: u64, open: Option<OpenFailure>) {
        let kas = &mut self.kas[k];
        if kas.router.assigned_connection(&request).is_none() {
            self.violate("router", format!("kas {k} retry({request}): not started"));
            return;
        }
        match open {
            Some(failure) => kas.router.handle_open_failed(&request, failure, self.now_i),
            None => kas.router.handle_refused(&request, self.now_i),
        }
        if kas.router.knows(&request) && kas.router.assigned_connection(&request).is_none() {
            kas.requests.insert(request, Stage::Pending);
            if let Some(r) = self.ledger.get(request) {
                self.pending_for.entry(r.agent).or_default().insert(request);
            }
        }
        self.drain_router(k);
        if matches!(
            open,
            Some(OpenFailure::GoingAway | OpenFailure::IdsExhausted)
        ) && let Some(agent) = self.ledger.get(request).map(|r| r.agent)
        {
            self.publish_holders(agent);
        }
    }

    /// Starts assigned requests, fails expired ones, re-arms the router timer.
    pub(super) fn drain_router(&mut self, k: usize) {
        // Each round removes one request from the router's queues.
        for _ in 0..1_000_000u32 {
            match self.kas[k].router.poll_event() {
                Some(RoutingEvent::Assigned { request, conn }) => {
                    self.start_request(k, request, conn);
                }
                Some(RoutingEvent::Failed { request, failure }) => {
                    self.kas[k].requests.remove(&request);
                    if let Some(agent) = self.ledger.get(request).map(|r| r.agent) {
                        self.unpend(agent, request);
                    }
                    if failure == RequestFailure::NotHeld {
                        self.send_back(request);
                    } else {
                        self.complete(request, Outcome::from(&failure));
                    }
                }
                Some(RoutingEvent::Forward { request, replica }) => {
                    self.kas[k].requests.remove(&request);
                    if let Some(agent) = self.ledger.get(request).map(|r| r.agent) {
                        self.unpend(agent, request);
                    }
                    self.forward_request(request, replica);
                }
                None => break,
            }
        }
        let kas = &mut self.kas[k];
        if let Some(deadline) = kas.router.poll_timeout() {
            let t = self.clock.to_sim(deadline).max(self.now);
            if kas.router_timer_at.is_none_or(|s| t < s) {
                kas.router_timer_at = Some(t);
                self.queue.push(t, Ev::RouterTimer { kas: k });
            }
        }
    }

    pub(super) fn router_timer(&mut self, k: usize) {
        self.kas[k].router_timer_at = None;
        if self.kas[k].is_up() {
            self.kas[k].router.handle_timeout(self.now_i);
            self.drain_router(k);
        }
    }

    /// A started request ended on its stream.
    fn finish_request(&mut self, k: usize, request: u64, outcome: Outcome) {
        self.kas[k].requests.remove(&request);
        if self.sc.inject.double_finish.is_some_and(|n| request >= n)
            && self.injected.insert("double-finish")
        {
            // Deliberate bug: the router is told twice.
            self.kas[k].router.handle_finished(&request);
        }
        if !self.kas[k].router.handle_finished(&request) {
            self.violate(
                "router",
                format!("kas {k} request_finished({request}): unknown request"),
            );
            return;
        }
        self.complete(request, outcome);
        self.drain_router(k);
    }

    /// The client's deadline passed.
    pub(super) fn request_deadline(&mut self, request: u64) {
        let Some(r) = self.ledger.get(request).copied() else {
            return;
        };
        if let Some(k) = r.at_kas {
            match self.kas[k].requests.remove(&request) {
                Some(Stage::Pending) => {
                    self.kas[k].router.handle_cancelled(&request);
                    self.unpend(r.agent, request);
                }
                Some(Stage::Started { flow, stream }) => {
                    let abandon = self.abandoned == Some(request);
                    if let Some(end) = self.flows.get_mut(&flow).and_then(|f| f.k.live_mut()) {
                        end.requests.remove(&stream);
                        end.outbox.remove(&stream);
                        if !abandon {
                            end.conn.reset(stream, ErrorCode::Cancel, "client gave up");
                        }
                        self.touch(flow, Side::Kas);
                    }
                    if !self.kas[k].router.handle_finished(&request) {
                        self.violate(
                            "router",
                            format!("kas {k} request_finished({request}): unknown request"),
                        );
                    }
                }
                None => {}
            }
            self.complete(request, Outcome::Timeout);
            self.drain_router(k);
        } else {
            self.complete(request, Outcome::Timeout);
        }
    }

    // ------------------------------------------------------------------ replicas

    /// The replica's process ends: its sockets vanish (with RST if `notify`), its memory is lost, and
    /// everything it was handling fails.
    fn kas_down(&mut self, k: usize, notify: bool, host_up: bool) {
        let held = self.agents_of(k);
        let conns = std::mem::take(&mut self.kas[k].conns);
        for fid in conns {
            let Some(flow) = self.flows.get_mut(&fid) else {
                continue;
            };
            flow.k = End::Gone;
            if notify && flow.a.live().is_some() {
                self.send_signal(fid, Dir::Down, true);
            }
            self.maybe_remove_flow(fid);
        }
        let requests = std::mem::take(&mut self.kas[k].requests);
        // Everything in memory is gone before the clients hear of it.
        let kas = &mut self.kas[k];
        kas.router = KasRouting::new(kas.routing_config, kas.listing.clone());
        kas.mirrors.clear();
        kas.established = 0;
        kas.router_timer_at = None;
        kas.rolling = None;
        if let Some(b) = &mut kas.balance {
            *b = Balance::new(*b.policy());
        }
        kas.state = KasState::Down { host_up };
        kas.incarnation += 1;
        kas.restarts += 1;
        for (request, _) in requests {
            if let Some(agent) = self.ledger.get(request).map(|r| r.agent) {
                self.unpend(agent, request);
            }
            self.complete(request, Outcome::KasFailed);
        }
        for agent in held {
            self.publish_holders(agent);
        }
    }

    pub(super) fn kas_crash(&mut self, k: usize, fault: usize) {
        let Some(Fault::KasCrash(f)) = self.sc.faults.get(fault).cloned() else {
            return;
        };
        if !self.kas[k].is_up() {
            return;
        }
        self.storm_begin(k, StormCause::Crash);
        // A crash in the middle of a rolling restart: the restart goes on once this replica is back.
        let rolling = self.kas[k].rolling;
        self.kas_down(k, !f.silent, !f.silent);
        self.queue
            .push(self.now.plus(f.down_for), Ev::KasStart { kas: k, rolling });
    }

    pub(super) fn kas_start(&mut self, k: usize, rolling: Option<usize>) {
        let kas = &mut self.kas[k];
        kas.state = KasState::Up;
        kas.accepting = true;
        if let Some(fault) = rolling
            && let Some(Fault::RollingRestart(f)) = self.sc.faults.get(fault)
            && k + 1 < self.kas.len()
        {
            self.queue.push(
                self.now.plus(f.interval),
                Ev::RollingBegin { kas: k + 1, fault },
            );
        }
    }

    pub(super) fn rolling_begin(&mut self, k: usize, fault: usize) {
        let Some(Fault::RollingRestart(f)) = self.sc.faults.get(fault).cloned() else {
            return;
        };
        if !self.kas[k].is_up() {
            // Down already (crashed; it restarts on its own): nothing to drain, next replica.
            if k + 1 < self.kas.len() {
                self.queue.push(
                    self.now.plus(f.interval),
                    Ev::RollingBegin { kas: k + 1, fault },
                );
            }
            return;
        }
        self.storm_begin(k, StormCause::Rolling);
        let kas = &mut self.kas[k];
        kas.accepting = false;
        kas.rolling = Some(fault);
        let incarnation = kas.incarnation;
        let conns: Vec<u64> = kas.conns.iter().copied().collect();
        for fid in &conns {
            let mut registered = false;
            if let Some(end) = self.flows.get_mut(fid).and_then(|f| f.k.live_mut()) {
                end.conn.close(ErrorCode::NoError, "kas is restarting");
                registered = end.registered;
            }
            if registered {
                self.kas[k]
                    .router
                    .handle_draining(fid, DrainCause::Shutdown, self.now_i);
            }
            self.touch(*fid, Side::Kas);
        }
        self.drain_router(k);
        // This replica holds nothing any more: its waiting requests move to the holders.
        for agent in self.agents_of(k) {
            self.publish_holders(agent);
        }
        let stop_at = if conns.is_empty() {
            self.now
        } else {
            self.now.plus(f.grace)
        };
        self.queue.push(
            stop_at,
            Ev::KasStop {
                kas: k,
                incarnation,
                fault,
            },
        );
    }

    pub(super) fn kas_stop(&mut self, k: usize, incarnation: u32, fault: usize) {
        let kas = &self.kas[k];
        if kas.incarnation != incarnation || !kas.is_up() {
            return;
        }
        let Some(Fault::RollingRestart(f)) = self.sc.faults.get(fault).cloned() else {
            return;
        };
        self.note(format_args!("kas-stop k={k} remaining={}", kas.conns.len()));
        self.kas_down(k, true, true);
        self.queue.push(
            self.now.plus(f.down_for),
            Ev::KasStart {
                kas: k,
                rolling: Some(fault),
            },
        );
    }

    /// Replica `k`'s balance step: its usable connections against those of the other accepting
    /// replicas (the shared store's view in the real kas); `shed` of its connections, chosen by
    /// [`shed_order`] as kas chooses them (agents another replica holds first, oldest first, one per
    /// agent), get GOAWAY (agents hand over at once, through the balancer).
    pub(super) fn balance_step(&mut self, k: usize) {
        let Some(interval) = self.sc.kas.balance.as_ref().map(|b| b.interval) else {
            return;
        };
        let next = self.now.plus(interval);
        if next < self.end {
            self.queue.push(next, Ev::Balance { kas: k });
        }
        if !self.kas[k].accepting() {
            return;
        }
        let usable = |w: &World, r: usize| -> Vec<u64> {
            w.kas[r]
                .conns
                .iter()
                .copied()
                .filter(|fid| {
                    w.flows
                        .get(fid)
                        .and_then(|f| f.k.live())
                        .is_some_and(|e| e.registered && !e.conn.is_draining())
                })
                .collect()
        };
        // Every replica's step comes at the same instants, one event after another: the lists,
        // read off every connection, are made once for such a run (kept while nothing else
        // happened and no step shed a connection).
        let lists = match self.balance_usable.take() {
            Some((at, lists)) if at == self.event_index => lists,
            _ => (0..self.kas.len()).map(|r| usable(self, r)).collect(),
        };
        let own: &[u64] = lists.get(k).map_or(&[], Vec::as_slice);
        let peers: Vec<u64> = (0..self.kas.len())
            .filter(|&r| r != k && self.kas[r].accepting())
            .map(|r| lists.get(r).map_or(0, Vec::len) as u64)
            .collect();
        let now_i = self.now_i;
        let Some(balance) = self.kas[k].balance.as_mut() else {
            return;
        };
        let shed = balance.handle_loads(own.len() as u64, &peers, now_i);
        if shed == 0 {
            self.balance_usable = Some((self.event_index + 1, lists));
            return;
        }
        self.note(format_args!(
            "balance k={k} own={} peers={peers:?} shed={shed}",
            own.len()
        ));
        // A drained agent reconnects like after a fault: the end-of-run reconnect bound counts
        // from the last drain.
        let bound = self.now.plus(self.sc.reconnect_bound());
        self.reconnect_deadline = self.reconnect_deadline.max(bound);
        let shed = usize::try_from(shed).unwrap_or(usize::MAX);
        // Flow ids grow with time: `own` (a set's order) is oldest first, as shed_order wants. An
        // agent is held elsewhere when another replica publishes it (publish_holders' view).
        let candidates: Vec<Candidate<u64>> = own
            .iter()
            .filter_map(|fid| {
                let agent = self.flows.get(fid)?.k.live()?.agent_id?;
                let held_elsewhere = (0..self.kas.len())
                    .any(|r| r != k && self.kas[r].accepting() && self.kas[r].holds(agent));
                Some(Candidate {
                    connection: *fid,
                    agent,
                    held_elsewhere,
                })
            })
            .collect();
        let mut agents = Vec::new();
        for fid in shed_order(&candidates, shed) {
            if let Some(end) = self.flows.get_mut(&fid).and_then(|f| f.k.live_mut()) {
                end.conn.close(ErrorCode::NoError, "rebalancing");
                agents.extend(end.agent_id);
            }
            self.kas[k]
                .router
                .handle_draining(&fid, DrainCause::LocalClose, self.now_i);
            self.kas[k].shed += 1;
            self.touch(fid, Side::Kas);
        }
        self.drain_router(k);
        for agent in agents {
            self.publish_holders(agent);
        }
    }

    pub(super) fn lb_check(&mut self) {
        for k in 0..self.kas.len() {
            self.lb_up[k] = self.kas[k].accepting();
        }
        let next = self.now.plus(self.sc.network.lb_health_interval);
        if next < self.end {
            self.queue.push(next, Ev::LbCheck);
        }
    }

    /// Ends a request towards its client (exactly once, or it is a violation).
    pub(super) fn complete(&mut self, request: u64, outcome: Outcome) {
        if self.sc.inject.lose_request == Some(request) {
            self.note(format_args!("INJECT lose r={request}"));
            return;
        }
        match self.ledger.complete(request, outcome, self.now) {
            Ok(c) => {
                self.note(format_args!(
                    "done r={request} {} {}us",
                    outcome.name(),
                    c.latency_ns / 1000
                ));
                self.metrics.request_done(&c, self.now);
                if self.sc.inject.keep_tracking.is_some_and(|n| request >= n)
                    && self.injected.insert("keep-tracking")
                {
                    // Deliberate bug: a replica keeps the ended request.
                    self.kas[0].requests.insert(request, Stage::Pending);
                }
                self.check_released(request);
                if self.sc.inject.duplicate_completion == Some(request) {
                    self.note(format_args!("INJECT duplicate r={request}"));
                    self.complete(request, outcome);
                }
            }
            Err(e) => {
                self.violate(
                    "request-ended-twice",
                    format!("request {} ended again ({})", e.0, outcome.name()),
                );
            }
        }
    }

    /// Records that a flow needs its events handled and its output flushed after this event.
    pub(super) fn touch(&mut self, fid: u64, side: Side) {
        self.dirty.insert((fid, side));
    }
}

/// What a refused open means for the policy (nothing reached the wire).
fn open_failure(e: &protocol::OpenError) -> OpenFailure {
    match e {
        protocol::OpenError::GoingAway => OpenFailure::GoingAway,
        protocol::OpenError::LimitReached { limit } => OpenFailure::LimitReached { limit: *limit },
        protocol::OpenError::IdsExhausted => OpenFailure::IdsExhausted,
        protocol::OpenError::HeadTooLarge { len, max } => OpenFailure::HeadTooLarge {
            len: *len,
            max: *max,
        },
        _ => OpenFailure::Closed,
    }
}

fn header(name: &str, value: u64) -> proto::Header {
    proto::Header {
        name: name.to_owned(),
        value: value.to_string().into_bytes().into(),
    }
}
