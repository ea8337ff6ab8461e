//! Inverted request routing: which agent connection carries a request kas received.
//!
//! kas *accepted* the tunnel connections from its agents, yet it is kas that sends requests over them
//! (an HTTP request for agent 42 becomes a stream kas opens on one of agent 42's connections). The
//! [`Router`] is the pure bookkeeping behind that decision, shared by kas (over either runtime) and by the
//! deterministic simulator. It does no I/O and reads no clock: `now` is always passed in.
//!
//! # Model
//!
//! The router is generic over the connection handle `H` (whatever the runtime uses to address a driver
//! task; the simulator uses plain integers) and over the request token `R` the caller uses to name one
//! client request. Both must be `Ord`: every table is a `BTreeMap`/`BTreeSet`, so iteration order, and
//! with it every decision, is deterministic.
//!
//! For each agent id the router keeps that agent's live connections, each with
//! - its *load*: the number of requests assigned to it and not yet finished,
//! - the maximum number of concurrent streams the peer allows kas to open on it (`max_streams`),
//! - a *draining* flag (set on goaway or graceful close).
//!
//! A connection is **usable** when it is not draining and its load is below `max_streams`.
//!
//! **Load model.** The load of a connection is request-based: it counts exactly the requests the router
//! assigned to it that the caller has not yet reported as finished ([`Router::request_finished`]), lost
//! ([`Router::remove_connection`]), re-queued ([`Router::retry`]) or cancelled ([`Router::cancel`]). Streams
//! the *agent* opens towards kas (event pushes) are not counted: they are bounded by kas's own limit in the
//! other direction and do not consume the credit `max_streams` describes.
//!
//! # Request life cycle
//!
//! [`Router::route`] either assigns the request at once ([`Route::Assigned`]: open the stream now), holds it
//! ([`Route::Pending`]) or rejects it ([`Route::Rejected`]). Inside the router a request is in exactly one
//! of these states:
//!
//! | state    | meaning                                                                 | leaves by |
//! |----------|-------------------------------------------------------------------------|-----------|
//! | pending  | waiting for a usable connection of its agent, until its deadline        | assignment, timeout, [`cancel`](Router::cancel) |
//! | ready    | assigned to a connection, waiting in the queue read by [`Router::poll_assigned`] | being polled (→ started), [`cancel`](Router::cancel), its connection draining or removed (→ pending) |
//! | started  | handed to the caller, who opened (or is opening) its stream             | [`request_finished`](Router::request_finished), [`remove_connection`](Router::remove_connection) (→ lost), [`retry`](Router::retry) (→ pending) |
//! | failed   | timed out, waiting in the queue read by [`Router::poll_failed`]         | being polled, [`cancel`](Router::cancel) |
//!
//! and once it leaves the last state the router forgets it. Seen from the caller, every routed request
//! therefore **ends exactly once**: it is rejected by `route`, or started (returned by `route` or
//! `poll_assigned`) and then finished/lost, or failed through `poll_failed`, or cancelled.
//!
//! # Rules
//!
//! - **Choice.** A new request goes to the usable connection of its agent with the smallest load; ties go
//!   to the oldest connection (the one added first). Draining and full connections are never chosen.
//! - **Pending.** With no usable connection the request waits, in FIFO order per agent, until a
//!   connection is added, capacity frees up, or its deadline passes. Expired requests fail with
//!   [`RouteError::AgentNotConnected`] (no non-draining connection) or [`RouteError::AgentSaturated`]
//!   (connected, but every connection at its stream limit). Waiting is bounded by
//!   [`RouterConfig::max_pending_per_agent`] and [`RouterConfig::max_pending_total`]; beyond them `route`
//!   rejects with [`RouteError::TooManyPending`].
//! - **Connection removed.** Requests already started on it cannot be safely retried (the agent may have
//!   acted on them), so they fail with [`RouteError::ConnectionLost`], returned by `remove_connection`.
//!   Requests assigned to it but not yet handed to the caller never reached the wire: they go back to
//!   pending at their original place. Pending requests are unaffected and keep waiting.
//! - **Connection draining.** No new request is assigned to it; started requests run to completion;
//!   not-yet-handed-out ones go back to pending as above.
//! - **Retry.** Only the caller knows that a started stream was never processed by the peer (refused, or
//!   above the last stream id of a goaway); [`Router::retry`] then puts the request back to pending, keeping
//!   its deadline and its FIFO place.
//! - Requests that re-enter pending (draining, removal, retry) were already admitted and do not count
//!   against the pending limits at that moment; the limits apply to admission by `route`.
//!
//! # Invariants
//!
//! Checked by [`Router::check_invariants`], which every mutating method runs through `debug_assert!` in
//! debug builds:
//! 1. Every request is in exactly one state, and is present in exactly the index of that state (the agent's
//!    pending queue and the deadline index; the ready queue; its connection's assigned set; the failed queue).
//! 2. The load of a connection equals the number of ready or started requests assigned to it, and each of
//!    them belongs to the same agent as the connection.
//! 3. No ready request is assigned to a draining connection, nor to one whose load exceeds its
//!    `max_streams` (possible only after the limit was lowered, and then only through started requests).
//! 4. Work conservation: an agent has pending requests only if none of its connections is usable.
//! 5. An agent entry exists only while it has a connection or a pending request; the connection table and
//!    the per-agent connection sets agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Limits of a [`Router`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterConfig {
    /// Most requests that may wait for one agent at once.
    pub max_pending_per_agent: usize,
    /// Most requests that may wait, over all agents.
    pub max_pending_total: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_pending_per_agent: 256,
            max_pending_total: 16_384,
        }
    }
}

/// Why a request could not be routed; what the client of kas is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The agent had no usable connection before the request's deadline, and no non-draining connection
    /// at that moment.
    #[error("agent {agent_id} is not connected (waited {waited:?})")]
    AgentNotConnected {
        /// The agent.
        agent_id: u64,
        /// How long the request waited.
        waited: Duration,
    },
    /// The agent is connected, but every connection stayed at its concurrent stream limit until the
    /// request's deadline.
    #[error("agent {agent_id} is connected but has no stream capacity left (waited {waited:?})")]
    AgentSaturated {
        /// The agent.
        agent_id: u64,
        /// How long the request waited.
        waited: Duration,
    },
    /// Too many requests are already waiting (for this agent or in total).
    #[error("too many requests are waiting for agent {agent_id}")]
    TooManyPending {
        /// The agent.
        agent_id: u64,
    },
    /// The connection carrying the started request went away; the request may have had effects, so it
    /// is not retried.
    #[error("the connection to agent {agent_id} carrying the request was lost")]
    ConnectionLost {
        /// The agent.
        agent_id: u64,
    },
    /// A request with the same token is already known to the router.
    #[error("a request with the same token is already being routed")]
    DuplicateRequest,
}

/// A caller mistake (a programming error in the runtime glue, not a client-facing failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The connection was added twice.
    #[error("connection handle is already registered")]
    DuplicateConnection,
    /// No connection with this handle.
    #[error("unknown connection handle")]
    UnknownConnection,
    /// No request with this token.
    #[error("unknown request")]
    UnknownRequest,
    /// The request was never handed out to a connection.
    #[error("request has not been handed out (it is pending, queued or failed)")]
    NotStarted,
}

/// The router's answer to [`Router::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<H> {
    /// Open the request's stream on this connection now.
    Assigned(H),
    /// The request waits; it comes back from [`Router::poll_assigned`] or [`Router::poll_failed`].
    Pending,
    /// The request was not accepted; the router does not remember it.
    Rejected(RouteError),
}

/// One agent as seen by [`Router::agents`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent.
    pub agent_id: u64,
    /// Live connections, draining ones included.
    pub connections: usize,
    /// Requests waiting for this agent.
    pub pending: usize,
}

/// One connection as seen by [`Router::connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo<H> {
    /// The driver's handle of the connection.
    pub handle: H,
    /// The agent it belongs to.
    pub agent_id: u64,
    /// Assigned, unfinished requests.
    pub load: usize,
    /// The agent's concurrent stream limit on it.
    pub max_streams: u32,
    /// Whether it drains (no new requests).
    pub draining: bool,
    /// When it was added.
    pub connected_since: Instant,
}

/// Totals over the whole router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouterStats {
    /// Agents with at least one connection or pending request.
    pub agents: usize,
    /// Live connections, draining ones included.
    pub connections: usize,
    /// Requests waiting for a connection.
    pub pending: usize,
    /// Requests assigned to a connection (handed out or queued for [`Router::poll_assigned`]).
    pub assigned: usize,
    /// Failures queued for [`Router::poll_failed`].
    pub failed_queued: usize,
}

/// An internal invariant of the router does not hold (a bug in the router).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("router invariant violated: {0}")]
pub struct InvariantViolation(pub String);

#[derive(Debug)]
struct Conn<R> {
    agent_id: u64,
    max_streams: u32,
    draining: bool,
    connected_since: Instant,
    /// Order of addition; the tie-breaker (older wins).
    order: u64,
    /// Ready and started requests on this connection; its load is the size.
    assigned: BTreeSet<R>,
}

impl<R> Conn<R> {
    fn usable(&self) -> bool {
        !self.draining && self.assigned.len() < self.max_streams as usize
    }
}

#[derive(Debug)]
struct Agent<H, R> {
    connections: BTreeSet<H>,
    /// FIFO of waiting requests, keyed by arrival number.
    pending: BTreeMap<u64, R>,
}

impl<H, R> Agent<H, R> {
    fn new() -> Self {
        Agent {
            connections: BTreeSet::new(),
            pending: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State<H> {
    Pending,
    Ready { conn: H, seq: u64 },
    Started { conn: H },
    Failed { seq: u64, error: RouteError },
}

#[derive(Debug)]
struct Req<H> {
    agent_id: u64,
    /// Arrival number: the request's FIFO place among its agent's pending requests.
    arrival: u64,
    deadline: Instant,
    routed_at: Instant,
    state: State<H>,
}

/// The routing table of kas; see the [module documentation](self).
#[derive(Debug)]
pub struct Router<H, R> {
    config: RouterConfig,
    connections: BTreeMap<H, Conn<R>>,
    agents: BTreeMap<u64, Agent<H, R>>,
    requests: BTreeMap<R, Req<H>>,
    /// Pending requests by (deadline, arrival).
    deadlines: BTreeMap<(Instant, u64), R>,
    /// Assigned requests not yet handed out, in assignment order.
    ready: BTreeMap<u64, R>,
    /// Failed requests not yet reported, in failure order.
    failed: BTreeMap<u64, R>,
    pending_total: usize,
    next_seq: u64,
}

impl<H, R> Default for Router<H, R>
where
    H: Clone + Eq + Ord + Debug,
    R: Clone + Eq + Ord + Debug,
{
    fn default() -> Self {
        Self::new(RouterConfig::default())
    }
}

impl<H, R> Router<H, R>
where
    H: Clone + Eq + Ord + Debug,
    R: Clone + Eq + Ord + Debug,
{
    /// An empty router.
    pub fn new(config: RouterConfig) -> Self {
        Router {
            config,
            connections: BTreeMap::new(),
            agents: BTreeMap::new(),
            requests: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            ready: BTreeMap::new(),
            failed: BTreeMap::new(),
            pending_total: 0,
            next_seq: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    // ----- connections -----

    /// Registers a live connection of `agent_id` on which the peer allows `max_streams` concurrent streams
    /// opened by kas. Requests waiting for this agent are assigned to it as capacity allows; collect them
    /// with [`poll_assigned`](Self::poll_assigned).
    pub fn add_connection(
        &mut self,
        agent_id: u64,
        handle: H,
        max_streams: u32,
        now: Instant,
    ) -> Result<(), RouterError> {
        if self.connections.contains_key(&handle) {
            tracing::warn!(agent_id, ?handle, "router: connection added twice");
            return Err(RouterError::DuplicateConnection);
        }
        let order = self.take_seq();
        self.connections.insert(
            handle.clone(),
            Conn {
                agent_id,
                max_streams,
                draining: false,
                connected_since: now,
                order,
                assigned: BTreeSet::new(),
            },
        );
        self.agents
            .entry(agent_id)
            .or_insert_with(Agent::new)
            .connections
            .insert(handle.clone());
        tracing::debug!(agent_id, ?handle, max_streams, "router: connection added");
        self.assign_pending(agent_id);
        self.debug_check();
        Ok(())
    }

    /// Marks a connection as draining (goaway received or sent, graceful close): it is never chosen again.
    /// Its started requests run on; requests queued for it but not yet handed out go back to pending
    /// (and may be assigned to another connection at once). Idempotent.
    pub fn set_draining(&mut self, handle: &H) -> Result<(), RouterError> {
        let Some(conn) = self.connections.get_mut(handle) else {
            tracing::warn!(?handle, "router: set_draining on unknown connection");
            return Err(RouterError::UnknownConnection);
        };
        if conn.draining {
            return Ok(());
        }
        conn.draining = true;
        let agent_id = conn.agent_id;
        tracing::debug!(agent_id, ?handle, "router: connection draining");
        self.requeue_ready_of(handle);
        self.assign_pending(agent_id);
        self.debug_check();
        Ok(())
    }

    /// Updates how many concurrent streams the peer allows on a connection (a settings change). Lowering
    /// it below the current load leaves started requests alone; requests queued for the connection but not
    /// yet handed out go back to pending (and are assigned again as capacity allows).
    pub fn set_max_streams(&mut self, handle: &H, max_streams: u32) -> Result<(), RouterError> {
        let Some(conn) = self.connections.get_mut(handle) else {
            tracing::warn!(?handle, "router: set_max_streams on unknown connection");
            return Err(RouterError::UnknownConnection);
        };
        conn.max_streams = max_streams;
        let agent_id = conn.agent_id;
        if conn.assigned.len() > max_streams as usize {
            self.requeue_ready_of(handle);
        }
        self.assign_pending(agent_id);
        self.debug_check();
        Ok(())
    }

    /// Forgets a connection that closed or broke, and returns the requests the caller must now fail.
    ///
    /// The rule: requests whose stream was already handed out on this connection (returned by
    /// [`route`](Self::route) or [`poll_assigned`](Self::poll_assigned) and not finished) cannot be safely
    /// retried, since the agent may have acted on them; they are returned with
    /// [`RouteError::ConnectionLost`], in arrival order, and the router forgets them. Requests assigned to
    /// the connection but not yet handed out never reached the wire: they go back to pending at their
    /// original place (and may be assigned to another connection at once). Pending requests are
    /// unaffected and keep waiting until their deadline.
    pub fn remove_connection(&mut self, handle: &H) -> Result<Vec<(R, RouteError)>, RouterError> {
        let Some(conn) = self.connections.remove(handle) else {
            tracing::warn!(?handle, "router: remove of unknown connection");
            return Err(RouterError::UnknownConnection);
        };
        let agent_id = conn.agent_id;
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.connections.remove(handle);
        }
        let mut lost: Vec<(u64, R)> = Vec::new();
        for request in conn.assigned {
            let Some(req) = self.requests.get(&request) else {
                continue;
            };
            match req.state.clone() {
                State::Started { .. } => {
                    lost.push((req.arrival, request.clone()));
                    self.requests.remove(&request);
                }
                State::Ready { seq, .. } => {
                    self.ready.remove(&seq);
                    self.make_pending(&request);
                }
                State::Pending | State::Failed { .. } => {}
            }
        }
        lost.sort();
        tracing::debug!(
            agent_id,
            ?handle,
            lost = lost.len(),
            "router: connection removed"
        );
        self.assign_pending(agent_id);
        self.gc_agent(agent_id);
        self.debug_check();
        Ok(lost
            .into_iter()
            .map(|(_, r)| (r, RouteError::ConnectionLost { agent_id }))
            .collect())
    }

    // ----- requests -----

    /// Routes a new request for `agent_id`. See [`Route`] for the three outcomes; a pending request waits
    /// until `deadline` at most. A request whose deadline is not after `now` is rejected at once if it
    /// cannot be assigned.
    pub fn route(
        &mut self,
        agent_id: u64,
        request: R,
        deadline: Instant,
        now: Instant,
    ) -> Route<H> {
        if self.requests.contains_key(&request) {
            tracing::warn!(agent_id, ?request, "router: duplicate request token");
            return Route::Rejected(RouteError::DuplicateRequest);
        }
        let outcome = if let Some(handle) = self.pick(agent_id) {
            let arrival = self.take_seq();
            self.insert_assigned(&handle, request.clone());
            self.requests.insert(
                request.clone(),
                Req {
                    agent_id,
                    arrival,
                    deadline,
                    routed_at: now,
                    state: State::Started {
                        conn: handle.clone(),
                    },
                },
            );
            Route::Assigned(handle)
        } else if deadline <= now {
            Route::Rejected(self.wait_error(agent_id, Duration::ZERO))
        } else if self.pending_total >= self.config.max_pending_total
            || self
                .agents
                .get(&agent_id)
                .is_some_and(|a| a.pending.len() >= self.config.max_pending_per_agent)
        {
            Route::Rejected(RouteError::TooManyPending { agent_id })
        } else {
            let arrival = self.take_seq();
            self.requests.insert(
                request.clone(),
                Req {
                    agent_id,
                    arrival,
                    deadline,
                    routed_at: now,
                    state: State::Pending,
                },
            );
            self.index_pending(&request);
            Route::Pending
        };
        tracing::debug!(agent_id, ?request, ?outcome, "router: routed");
        self.debug_check();
        outcome
    }

    /// The next request assigned to a connection while it was pending (FIFO): open its stream on that
    /// connection. The request is then *started*.
    pub fn poll_assigned(&mut self) -> Option<(R, H)> {
        let (_, request) = self.ready.pop_first()?;
        let req = self.requests.get_mut(&request)?;
        let State::Ready { conn, .. } = req.state.clone() else {
            return None;
        };
        req.state = State::Started { conn: conn.clone() };
        self.debug_check();
        Some((request, conn))
    }

    /// The next request that failed while pending (deadline passed); fail it towards its client.
    pub fn poll_failed(&mut self) -> Option<(R, RouteError)> {
        let (_, request) = self.failed.pop_first()?;
        let req = self.requests.remove(&request)?;
        let State::Failed { error, .. } = req.state else {
            return None;
        };
        self.debug_check();
        Some((request, error))
    }

    /// The earliest deadline of a pending request, when [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|((at, _), _)| *at)
    }

    /// Fails every pending request whose deadline is not after `now`; collect them with
    /// [`poll_failed`](Self::poll_failed).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let request = entry.remove();
            let Some(req) = self.requests.get(&request) else {
                continue;
            };
            let (agent_id, arrival, routed_at) = (req.agent_id, req.arrival, req.routed_at);
            let waited = now.saturating_duration_since(routed_at);
            let error = self.wait_error(agent_id, waited);
            if let Some(agent) = self.agents.get_mut(&agent_id) {
                agent.pending.remove(&arrival);
            }
            self.pending_total -= 1;
            let seq = self.take_seq();
            self.failed.insert(seq, request.clone());
            if let Some(req) = self.requests.get_mut(&request) {
                req.state = State::Failed {
                    seq,
                    error: error.clone(),
                };
            }
            tracing::debug!(agent_id, ?request, %error, "router: pending request expired");
            self.gc_agent(agent_id);
        }
        self.debug_check();
    }

    /// The caller finished a started request (response complete, stream reset, or client gone and stream
    /// reset): the connection's load drops and a waiting request may take the freed slot.
    pub fn request_finished(&mut self, request: &R) -> Result<(), RouterError> {
        let Some(req) = self.requests.get(request) else {
            return Err(RouterError::UnknownRequest);
        };
        let State::Started { conn } = req.state.clone() else {
            return Err(RouterError::NotStarted);
        };
        let agent_id = req.agent_id;
        self.requests.remove(request);
        if let Some(c) = self.connections.get_mut(&conn) {
            c.assigned.remove(request);
        }
        self.assign_pending(agent_id);
        self.debug_check();
        Ok(())
    }

    /// The client went away before its request was started: forget a pending request, a request queued for
    /// [`poll_assigned`](Self::poll_assigned) (freeing its slot), or an unreported failure. Returns whether
    /// something was removed; `false` for unknown requests and for started ones (reset their stream and
    /// call [`request_finished`](Self::request_finished)).
    pub fn cancel(&mut self, request: &R) -> bool {
        let Some(req) = self.requests.get(request) else {
            return false;
        };
        let agent_id = req.agent_id;
        match req.state.clone() {
            State::Started { .. } => return false,
            State::Pending => {
                self.unindex_pending(request);
                self.requests.remove(request);
                self.gc_agent(agent_id);
            }
            State::Ready { conn, seq } => {
                self.ready.remove(&seq);
                if let Some(c) = self.connections.get_mut(&conn) {
                    c.assigned.remove(request);
                }
                self.requests.remove(request);
                self.assign_pending(agent_id);
            }
            State::Failed { seq, .. } => {
                self.failed.remove(&seq);
                self.requests.remove(request);
            }
        }
        tracing::debug!(agent_id, ?request, "router: request cancelled");
        self.debug_check();
        true
    }

    /// Puts a started request back to pending, keeping its deadline and FIFO place. Only for a stream the
    /// peer provably never processed (refused, or above the last stream id of a goaway); set the
    /// connection draining first if it is going away. The request comes back through
    /// [`poll_assigned`](Self::poll_assigned) or [`poll_failed`](Self::poll_failed).
    pub fn retry(&mut self, request: &R) -> Result<(), RouterError> {
        let Some(req) = self.requests.get(request) else {
            return Err(RouterError::UnknownRequest);
        };
        let State::Started { conn } = req.state.clone() else {
            return Err(RouterError::NotStarted);
        };
        let agent_id = req.agent_id;
        if let Some(c) = self.connections.get_mut(&conn) {
            c.assigned.remove(request);
        }
        self.make_pending(request);
        tracing::debug!(agent_id, ?request, "router: request re-queued");
        self.assign_pending(agent_id);
        self.debug_check();
        Ok(())
    }

    // ----- queries -----

    /// Every agent with a connection or a waiting request, by id.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .map(|(&agent_id, a)| AgentInfo {
                agent_id,
                connections: a.connections.len(),
                pending: a.pending.len(),
            })
            .collect()
    }

    /// The connections of one agent, oldest first.
    pub fn connections(&self, agent_id: u64) -> Vec<ConnectionInfo<H>> {
        let Some(agent) = self.agents.get(&agent_id) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, ConnectionInfo<H>)> = agent
            .connections
            .iter()
            .filter_map(|h| self.connections.get(h).map(|c| (c.order, Self::info(h, c))))
            .collect();
        out.sort_by_key(|(order, _)| *order);
        out.into_iter().map(|(_, info)| info).collect()
    }

    /// One connection.
    pub fn connection(&self, handle: &H) -> Option<ConnectionInfo<H>> {
        self.connections.get(handle).map(|c| Self::info(handle, c))
    }

    /// The connection a request is assigned to (started or queued), if any.
    pub fn assigned_connection(&self, request: &R) -> Option<&H> {
        match &self.requests.get(request)?.state {
            State::Ready { conn, .. } | State::Started { conn } => Some(conn),
            State::Pending | State::Failed { .. } => None,
        }
    }

    /// Requests waiting for a connection, over all agents.
    pub fn pending_count(&self) -> usize {
        self.pending_total
    }

    /// Requests waiting for one agent.
    pub fn pending_count_for(&self, agent_id: u64) -> usize {
        self.agents.get(&agent_id).map_or(0, |a| a.pending.len())
    }

    /// Totals over the whole router.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            agents: self.agents.len(),
            connections: self.connections.len(),
            pending: self.pending_total,
            assigned: self.connections.values().map(|c| c.assigned.len()).sum(),
            failed_queued: self.failed.len(),
        }
    }

    /// True when the router holds no connection and no request.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty() && self.requests.is_empty()
    }

    /// Checks every invariant listed in the module documentation.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let fail = |msg: String| Err(InvariantViolation(msg));
        // 5: agents and connections agree; no empty agent entries.
        for (h, c) in &self.connections {
            if !self
                .agents
                .get(&c.agent_id)
                .is_some_and(|a| a.connections.contains(h))
            {
                return fail(format!(
                    "connection {h:?} missing from agent {}",
                    c.agent_id
                ));
            }
        }
        let mut agent_conns = 0;
        let mut agent_pending = 0;
        for (id, a) in &self.agents {
            if a.connections.is_empty() && a.pending.is_empty() {
                return fail(format!("agent {id} has neither connections nor pending"));
            }
            for h in &a.connections {
                if self.connections.get(h).map(|c| c.agent_id) != Some(*id) {
                    return fail(format!("agent {id} lists foreign connection {h:?}"));
                }
            }
            agent_conns += a.connections.len();
            agent_pending += a.pending.len();
            // 4: work conservation.
            if !a.pending.is_empty()
                && a.connections
                    .iter()
                    .any(|h| self.connections.get(h).is_some_and(|c| c.usable()))
            {
                return fail(format!(
                    "agent {id} has pending requests and a usable connection"
                ));
            }
        }
        if agent_conns != self.connections.len() {
            return fail("agent connection sets disagree with the connection table".into());
        }
        // 1, 2, 3: every request is in its state's index, counts match.
        let (mut n_pending, mut n_ready, mut n_assigned, mut n_failed) = (0, 0, 0, 0);
        for (r, req) in &self.requests {
            match &req.state {
                State::Pending => {
                    n_pending += 1;
                    let in_queue = self
                        .agents
                        .get(&req.agent_id)
                        .and_then(|a| a.pending.get(&req.arrival));
                    if in_queue != Some(r) {
                        return fail(format!("pending {r:?} not in its agent's queue"));
                    }
                    if self.deadlines.get(&(req.deadline, req.arrival)) != Some(r) {
                        return fail(format!("pending {r:?} not in the deadline index"));
                    }
                }
                State::Ready { conn, seq } => {
                    n_ready += 1;
                    n_assigned += 1;
                    if self.ready.get(seq) != Some(r) {
                        return fail(format!("ready {r:?} not in the ready queue"));
                    }
                    let Some(c) = self.connections.get(conn) else {
                        return fail(format!("ready {r:?} on unknown connection {conn:?}"));
                    };
                    if c.draining {
                        return fail(format!("ready {r:?} on draining connection {conn:?}"));
                    }
                    if c.assigned.len() > c.max_streams as usize {
                        return fail(format!("ready {r:?} on over-full connection {conn:?}"));
                    }
                    if c.agent_id != req.agent_id || !c.assigned.contains(r) {
                        return fail(format!("ready {r:?} not assigned on {conn:?}"));
                    }
                }
                State::Started { conn } => {
                    n_assigned += 1;
                    let Some(c) = self.connections.get(conn) else {
                        return fail(format!("started {r:?} on unknown connection {conn:?}"));
                    };
                    if c.agent_id != req.agent_id || !c.assigned.contains(r) {
                        return fail(format!("started {r:?} not assigned on {conn:?}"));
                    }
                }
                State::Failed { seq, .. } => {
                    n_failed += 1;
                    if self.failed.get(seq) != Some(r) {
                        return fail(format!("failed {r:?} not in the failed queue"));
                    }
                }
            }
        }
        let load: usize = self.connections.values().map(|c| c.assigned.len()).sum();
        if n_pending != self.pending_total
            || n_pending != agent_pending
            || n_pending != self.deadlines.len()
        {
            return fail(format!(
                "pending counts disagree: states {n_pending}, total {}, queues {agent_pending}, deadlines {}",
                self.pending_total,
                self.deadlines.len()
            ));
        }
        if n_ready != self.ready.len() {
            return fail(format!(
                "ready counts disagree: {n_ready} vs {}",
                self.ready.len()
            ));
        }
        if n_assigned != load {
            return fail(format!(
                "load {load} differs from assigned requests {n_assigned}"
            ));
        }
        if n_failed != self.failed.len() {
            return fail(format!(
                "failed counts disagree: {n_failed} vs {}",
                self.failed.len()
            ));
        }
        Ok(())
    }

    // ----- internals -----

    fn info(handle: &H, c: &Conn<R>) -> ConnectionInfo<H> {
        ConnectionInfo {
            handle: handle.clone(),
            agent_id: c.agent_id,
            load: c.assigned.len(),
            max_streams: c.max_streams,
            draining: c.draining,
            connected_since: c.connected_since,
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The usable connection of `agent_id` with the least load, the oldest on ties.
    fn pick(&self, agent_id: u64) -> Option<H> {
        let agent = self.agents.get(&agent_id)?;
        agent
            .connections
            .iter()
            .filter_map(|h| self.connections.get(h).map(|c| (h, c)))
            .filter(|(_, c)| c.usable())
            .min_by_key(|(_, c)| (c.assigned.len(), c.order))
            .map(|(h, _)| h.clone())
    }

    fn wait_error(&self, agent_id: u64, waited: Duration) -> RouteError {
        let connected = self.agents.get(&agent_id).is_some_and(|a| {
            a.connections
                .iter()
                .any(|h| self.connections.get(h).is_some_and(|c| !c.draining))
        });
        if connected {
            RouteError::AgentSaturated { agent_id, waited }
        } else {
            RouteError::AgentNotConnected { agent_id, waited }
        }
    }

    fn insert_assigned(&mut self, handle: &H, request: R) {
        if let Some(c) = self.connections.get_mut(handle) {
            c.assigned.insert(request);
        }
    }

    /// Sets an existing request (not in any index) to pending and indexes it.
    fn make_pending(&mut self, request: &R) {
        if let Some(req) = self.requests.get_mut(request) {
            req.state = State::Pending;
        }
        self.index_pending(request);
    }

    /// Adds a request already in `State::Pending` to its agent's queue and the deadline index.
    fn index_pending(&mut self, request: &R) {
        let Some(req) = self.requests.get(request) else {
            return;
        };
        let (agent_id, arrival, deadline) = (req.agent_id, req.arrival, req.deadline);
        self.agents
            .entry(agent_id)
            .or_insert_with(Agent::new)
            .pending
            .insert(arrival, request.clone());
        self.deadlines.insert((deadline, arrival), request.clone());
        self.pending_total += 1;
    }

    fn unindex_pending(&mut self, request: &R) {
        let Some(req) = self.requests.get(request) else {
            return;
        };
        let (agent_id, arrival, deadline) = (req.agent_id, req.arrival, req.deadline);
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.pending.remove(&arrival);
        }
        self.deadlines.remove(&(deadline, arrival));
        self.pending_total -= 1;
    }

    /// Sends the ready requests of a connection back to pending.
    fn requeue_ready_of(&mut self, handle: &H) {
        let Some(conn) = self.connections.get(handle) else {
            return;
        };
        let ready: Vec<(R, u64)> = conn
            .assigned
            .iter()
            .filter_map(|r| match self.requests.get(r).map(|q| &q.state) {
                Some(State::Ready { seq, .. }) => Some((r.clone(), *seq)),
                _ => None,
            })
            .collect();
        for (request, seq) in ready {
            self.ready.remove(&seq);
            if let Some(c) = self.connections.get_mut(handle) {
                c.assigned.remove(&request);
            }
            self.make_pending(&request);
        }
    }

    /// Assigns the agent's pending requests, oldest first, while it has a usable connection.
    fn assign_pending(&mut self, agent_id: u64) {
        loop {
            let Some(request) = self
                .agents
                .get(&agent_id)
                .and_then(|a| a.pending.first_key_value())
                .map(|(_, r)| r.clone())
            else {
                break;
            };
            let Some(handle) = self.pick(agent_id) else {
                break;
            };
            self.unindex_pending(&request);
            self.insert_assigned(&handle, request.clone());
            let seq = self.take_seq();
            self.ready.insert(seq, request.clone());
            if let Some(req) = self.requests.get_mut(&request) {
                req.state = State::Ready {
                    conn: handle.clone(),
                    seq,
                };
            }
            tracing::debug!(
                agent_id,
                ?request,
                ?handle,
                "router: pending request assigned"
            );
        }
        self.gc_agent(agent_id);
    }

    fn gc_agent(&mut self, agent_id: u64) {
        if self
            .agents
            .get(&agent_id)
            .is_some_and(|a| a.connections.is_empty() && a.pending.is_empty())
        {
            self.agents.remove(&agent_id);
        }
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            let result = self.check_invariants();
            debug_assert!(result.is_ok(), "{result:?}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type R = Router<u32, u32>;

    fn t0() -> Instant {
        Instant::now()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn router() -> R {
        Router::new(RouterConfig {
            max_pending_per_agent: 3,
            max_pending_total: 5,
        })
    }

    #[test]
    fn picks_least_loaded_then_oldest() {
        let now = t0();
        let mut r = router();
        // handle 9 is added first: it is the oldest despite the larger handle.
        r.add_connection(1, 9, 10, now).unwrap();
        r.add_connection(1, 3, 10, now).unwrap();
        assert_eq!(r.route(1, 100, now + secs(5), now), Route::Assigned(9));
        assert_eq!(r.route(1, 101, now + secs(5), now), Route::Assigned(3));
        assert_eq!(r.route(1, 102, now + secs(5), now), Route::Assigned(9));
        r.request_finished(&101).unwrap();
        r.request_finished(&102).unwrap();
        // loads now 9:1, 3:0
        assert_eq!(r.route(1, 103, now + secs(5), now), Route::Assigned(3));
        assert_eq!(r.connection(&9).unwrap().load, 1);
        assert_eq!(r.connection(&3).unwrap().load, 1);
    }

    #[test]
    fn never_picks_another_agents_connection() {
        let now = t0();
        let mut r = router();
        r.add_connection(2, 1, 10, now).unwrap();
        assert_eq!(r.route(1, 100, now + secs(5), now), Route::Pending);
        assert_eq!(r.poll_assigned(), None);
    }

    #[test]
    fn skips_draining_and_full_connections() {
        let now = t0();
        let mut r = router();
        r.add_connection(1, 1, 1, now).unwrap();
        r.add_connection(1, 2, 5, now).unwrap();
        r.add_connection(1, 3, 5, now).unwrap();
        r.set_draining(&2).unwrap();
        assert_eq!(r.route(1, 100, now + secs(5), now), Route::Assigned(1));
        // 1 is full now, 2 draining: 3 despite its load equal to... 0 < 1 anyway
        assert_eq!(r.route(1, 101, now + secs(5), now), Route::Assigned(3));
        assert_eq!(r.route(1, 102, now + secs(5), now), Route::Assigned(3));
        r.set_draining(&3).unwrap();
        assert_eq!(r.route(1, 103, now + secs(5), now), Route::Pending);
    }

    #[test]
    fn pending_requests_are_assigned_fifo_when_a_connection_arrives() {
        let now = t0();
        let mut r = router();
        for req in [10, 11, 12] {
            assert_eq!(r.route(7, req, now + secs(5), now), Route::Pending);
        }
        assert_eq!(r.pending_count(), 3);
        r.add_connection(7, 1, 2, now + secs(1)).unwrap();
        assert_eq!(r.poll_assigned(), Some((10, 1)));
        assert_eq!(r.poll_assigned(), Some((11, 1)));
        assert_eq!(r.poll_assigned(), None);
        assert_eq!(r.pending_count(), 1);
        // a new request waits behind the older pending one
        assert_eq!(r.route(7, 13, now + secs(5), now), Route::Pending);
        r.request_finished(&10).unwrap();
        assert_eq!(r.poll_assigned(), Some((12, 1)));
        r.request_finished(&11).unwrap();
        assert_eq!(r.poll_assigned(), Some((13, 1)));
        assert_eq!(r.pending_count(), 0);
    }

    #[test]
    fn pending_requests_time_out_with_typed_errors() {
        let now = t0();
        let mut r = router();
        assert_eq!(r.route(1, 10, now + secs(3), now), Route::Pending);
        assert_eq!(r.route(1, 11, now + secs(2), now + secs(1)), Route::Pending);
        assert_eq!(r.poll_timeout(), Some(now + secs(2)));
        r.handle_timeout(now + secs(1));
        assert_eq!(r.poll_failed(), None);
        r.handle_timeout(now + secs(2));
        assert_eq!(
            r.poll_failed(),
            Some((
                11,
                RouteError::AgentNotConnected {
                    agent_id: 1,
                    waited: secs(1)
                }
            ))
        );
        assert_eq!(r.poll_timeout(), Some(now + secs(3)));
        // a full connection: the agent is connected but saturated
        r.add_connection(1, 5, 0, now + secs(2)).unwrap();
        r.handle_timeout(now + secs(3));
        assert_eq!(
            r.poll_failed(),
            Some((
                10,
                RouteError::AgentSaturated {
                    agent_id: 1,
                    waited: secs(3)
                }
            ))
        );
        assert_eq!(r.poll_failed(), None);
        assert_eq!(r.poll_timeout(), None);
        r.remove_connection(&5).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn expired_deadline_is_rejected_at_once() {
        let now = t0();
        let mut r = router();
        assert_eq!(
            r.route(1, 10, now, now),
            Route::Rejected(RouteError::AgentNotConnected {
                agent_id: 1,
                waited: Duration::ZERO
            })
        );
        assert!(r.is_empty());
        // but an assignable request is assigned regardless of its deadline
        r.add_connection(1, 1, 1, now).unwrap();
        assert_eq!(r.route(1, 10, now, now), Route::Assigned(1));
    }

    #[test]
    fn pending_is_bounded_per_agent_and_in_total() {
        let now = t0();
        let mut r = router();
        let d = now + secs(5);
        for req in 0..3 {
            assert_eq!(r.route(1, req, d, now), Route::Pending);
        }
        assert_eq!(
            r.route(1, 3, d, now),
            Route::Rejected(RouteError::TooManyPending { agent_id: 1 })
        );
        assert_eq!(r.route(2, 4, d, now), Route::Pending);
        assert_eq!(r.route(2, 5, d, now), Route::Pending);
        assert_eq!(
            r.route(3, 6, d, now),
            Route::Rejected(RouteError::TooManyPending { agent_id: 3 })
        );
        assert!(r.cancel(&0));
        assert_eq!(r.route(3, 6, d, now), Route::Pending);
        assert_eq!(r.pending_count(), 5);
        assert_eq!(r.pending_count_for(1), 2);
    }

    #[test]
    fn cancel_in_each_state() {
        let now = t0();
        let mut r = router();
        let d = now + secs(5);
        assert_eq!(r.route(1, 10, d, now), Route::Pending);
        assert_eq!(r.route(1, 11, d, now), Route::Pending);
        assert!(r.cancel(&10));
        assert!(!r.cancel(&10));
        // queued for poll_assigned: cancelling frees the slot for the next one
        assert_eq!(r.route(1, 12, d, now), Route::Pending);
        r.add_connection(1, 1, 1, now).unwrap();
        assert_eq!(r.assigned_connection(&11), Some(&1));
        assert!(r.cancel(&11));
        assert_eq!(r.poll_assigned(), Some((12, 1)));
        // started: not cancellable
        assert!(!r.cancel(&12));
        assert_eq!(r.connection(&1).unwrap().load, 1);
        // failed but not yet reported
        assert_eq!(r.route(2, 20, d, now), Route::Pending);
        r.handle_timeout(d);
        assert!(r.cancel(&20));
        assert_eq!(r.poll_failed(), None);
        r.request_finished(&12).unwrap();
        r.remove_connection(&1).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn removal_fails_started_requeues_ready_and_keeps_pending() {
        let now = t0();
        let mut r = router();
        let d = now + secs(5);
        r.add_connection(1, 1, 2, now).unwrap();
        assert_eq!(r.route(1, 10, d, now), Route::Assigned(1));
        assert_eq!(r.route(1, 11, d, now), Route::Assigned(1));
        r.request_finished(&10).unwrap();
        assert_eq!(r.route(1, 12, d, now), Route::Assigned(1));
        assert_eq!(r.route(1, 13, d, now), Route::Pending);
        assert_eq!(r.route(1, 14, d, now), Route::Pending);
        r.request_finished(&11).unwrap(); // 13 becomes ready on 1
        assert_eq!(r.assigned_connection(&13), Some(&1));
        let lost = r.remove_connection(&1).unwrap();
        assert_eq!(lost, vec![(12, RouteError::ConnectionLost { agent_id: 1 })]);
        // 13 is pending again, ahead of 14
        assert_eq!(r.poll_assigned(), None);
        assert_eq!(r.pending_count(), 2);
        r.add_connection(1, 2, 1, now).unwrap();
        assert_eq!(r.poll_assigned(), Some((13, 2)));
        assert_eq!(r.poll_assigned(), None);
        assert_eq!(r.request_finished(&12), Err(RouterError::UnknownRequest));
        assert_eq!(r.remove_connection(&1), Err(RouterError::UnknownConnection));
    }

    #[test]
    fn removal_reroutes_ready_requests_to_another_connection() {
        let now = t0();
        let mut r = router();
        let d = now + secs(5);
        assert_eq!(r.route(1, 10, d, now), Route::Pending);
        r.add_connection(1, 1, 5, now).unwrap();
        r.add_connection(1, 2, 5, now).unwrap();
        // 10 is queued on 1 (added first) and not yet polled
        assert!(r.remove_connection(&1).unwrap().is_empty());
        assert_eq!(r.poll_assigned(), Some((10, 2)));
    }

    #[test]
    fn draining_requeues_ready_requests_and_keeps_started_ones() {
        let now = t0();
        let mut r = router();
        let d = now + secs(5);
        r.add_connection(1, 1, 5, now).unwrap();
        assert_eq!(r.route(1, 9, d, now), Route::Assigned(1));
        r.set_draining(&1).unwrap();
        assert_eq!(r.route(1, 10, d, now), Route::Pending);
        r.set_draining(&1).unwrap(); // idempotent
        r.add_connection(1, 2, 5, now).unwrap();
        r.set_draining(&2).unwrap(); // 10 was ready on 2: back to pending
        assert_eq!(r.poll_assigned(), None);
        assert_eq!(r.pending_count(), 1);
        assert_eq!(r.connection(&1).unwrap().load, 1);
        assert!(r.connection(&2).unwrap().draining);
        r.add_connection(1, 3, 5, now).unwrap();
        assert_eq!(r.poll_assigned(), Some((10, 3)));
        r.request_finished(&9).unwrap();
    }

    #[test]
    fn retry_keeps_fifo_place_and_deadline() {
        let now = t0();
        let mut r = router();
        let d = now + secs(5);
        r.add_connection(1, 1, 1, now).unwrap();
        assert_eq!(r.route(1, 10, d, now), Route::Assigned(1));
        assert_eq!(r.route(1, 11, now + secs(9), now), Route::Pending);
        r.set_draining(&1).unwrap();
        r.retry(&10).unwrap();
        assert_eq!(r.pending_count(), 2);
        assert_eq!(r.poll_timeout(), Some(d));
        r.add_connection(1, 2, 1, now).unwrap();
        assert_eq!(r.poll_assigned(), Some((10, 2)));
        assert_eq!(r.retry(&11), Err(RouterError::NotStarted));
        assert_eq!(r.retry(&99), Err(RouterError::UnknownRequest));
    }

    #[test]
    fn misuse_gets_typed_errors() {
        let now = t0();
        let mut r = router();
        r.add_connection(1, 1, 1, now).unwrap();
        assert_eq!(
            r.add_connection(2, 1, 1, now),
            Err(RouterError::DuplicateConnection)
        );
        assert_eq!(r.set_draining(&5), Err(RouterError::UnknownConnection));
        assert_eq!(
            r.set_max_streams(&5, 3),
            Err(RouterError::UnknownConnection)
        );
        assert_eq!(r.route(1, 10, now + secs(1), now), Route::Assigned(1));
        assert_eq!(
            r.route(1, 10, now + secs(1), now),
            Route::Rejected(RouteError::DuplicateRequest)
        );
        assert_eq!(r.route(1, 11, now + secs(1), now), Route::Pending);
        assert_eq!(r.request_finished(&11), Err(RouterError::NotStarted));
        assert_eq!(r.request_finished(&12), Err(RouterError::UnknownRequest));
    }

    #[test]
    fn raising_max_streams_assigns_waiting_requests() {
        let now = t0();
        let mut r = router();
        r.add_connection(1, 1, 0, now).unwrap();
        assert_eq!(r.route(1, 10, now + secs(1), now), Route::Pending);
        r.set_max_streams(&1, 1).unwrap();
        assert_eq!(r.poll_assigned(), Some((10, 1)));
    }

    #[test]
    fn lowering_max_streams_requeues_queued_requests_only() {
        let now = t0();
        let mut r = router();
        let d = now + secs(5);
        assert_eq!(r.route(1, 10, d, now), Route::Pending);
        assert_eq!(r.route(1, 11, d, now), Route::Pending);
        r.add_connection(1, 1, 3, now).unwrap();
        assert_eq!(r.poll_assigned(), Some((10, 1)));
        // 11 is queued on 1, 10 started; the peer now allows a single stream
        r.set_max_streams(&1, 1).unwrap();
        assert_eq!(r.poll_assigned(), None);
        assert_eq!(r.pending_count(), 1);
        assert_eq!(r.assigned_connection(&10), Some(&1));
        r.add_connection(1, 2, 1, now).unwrap();
        assert_eq!(r.poll_assigned(), Some((11, 2)));
    }

    #[test]
    fn queries_report_agents_connections_and_totals() {
        let now = t0();
        let mut r = router();
        r.add_connection(5, 50, 4, now).unwrap();
        r.add_connection(5, 40, 4, now + secs(1)).unwrap();
        r.add_connection(6, 60, 4, now).unwrap();
        assert_eq!(r.route(5, 1, now + secs(1), now), Route::Assigned(50));
        assert_eq!(r.route(8, 2, now + secs(1), now), Route::Pending);
        r.set_draining(&60).unwrap();
        assert_eq!(
            r.agents(),
            vec![
                AgentInfo {
                    agent_id: 5,
                    connections: 2,
                    pending: 0
                },
                AgentInfo {
                    agent_id: 6,
                    connections: 1,
                    pending: 0
                },
                AgentInfo {
                    agent_id: 8,
                    connections: 0,
                    pending: 1
                },
            ]
        );
        let conns = r.connections(5);
        assert_eq!(conns.len(), 2);
        assert_eq!((conns[0].handle, conns[0].load), (50, 1));
        assert_eq!((conns[1].handle, conns[1].load), (40, 0));
        assert_eq!(conns[1].connected_since, now + secs(1));
        assert!(r.connections(6)[0].draining);
        assert!(r.connections(99).is_empty());
        assert_eq!(
            r.stats(),
            RouterStats {
                agents: 3,
                connections: 3,
                pending: 1,
                assigned: 1,
                failed_queued: 0
            }
        );
    }

    #[test]
    fn invariant_check_detects_corruption() {
        let now = t0();
        let mut r = router();
        r.add_connection(1, 1, 2, now).unwrap();
        assert_eq!(r.route(1, 10, now + secs(1), now), Route::Assigned(1));
        assert_eq!(r.check_invariants(), Ok(()));
        // a load that no longer matches the assigned requests
        if let Some(c) = r.connections.get_mut(&1) {
            c.assigned.insert(99);
        }
        assert!(r.check_invariants().is_err());
        if let Some(c) = r.connections.get_mut(&1) {
            c.assigned.remove(&99);
        }
        // a pending request while a usable connection exists (work conservation)
        r.requests.insert(
            11,
            Req {
                agent_id: 1,
                arrival: 1000,
                deadline: now,
                routed_at: now,
                state: State::Pending,
            },
        );
        r.index_pending(&11);
        let err = r.check_invariants().unwrap_err();
        assert!(err.0.contains("usable"), "{err}");
    }
}
