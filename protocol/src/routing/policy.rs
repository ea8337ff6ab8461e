//! kas's routing policy: the one place that decides where a request goes, when it moves, and when it
//! fails — existence, placement, reroute of requests the agent provably never processed, forwarding to
//! another replica.
//!
//! [`KasRouting`] is Sans-IO: the driver reports what happened (`handle_*`, with `now`), and collects
//! the outcomes of waiting requests with [`KasRouting::poll_event`]. kas's registry drives it with real
//! connections; the simulator drives it on every replica.
//!
//! # Rules
//!
//! 1. **No draining pick.** After [`handle_draining`](KasRouting::handle_draining) or
//!    [`handle_closed`](KasRouting::handle_closed) of a connection nothing is placed on it
//!    ([`Placement::Open`], [`RoutingEvent::Assigned`]). The driver calls `handle_draining` from the
//!    connection's synchronous drain observer, so once the protocol processed a GOAWAY no request is
//!    assigned to that connection: a request arriving after the GOAWAY is never rerouted.
//! 2. **Each request ends exactly once:** [`Placement::Reject`] / [`Placement::Forward`], a
//!    [`RoutingEvent::Failed`] / [`RoutingEvent::Forward`], or
//!    [`handle_finished`](KasRouting::handle_finished) / [`handle_cancelled`](KasRouting::handle_cancelled)
//!    after it was placed.
//! 3. **Requeue only when provably unprocessed.** An open that failed before anything reached the wire
//!    ([`OpenFailure::GoingAway`], [`OpenFailure::IdsExhausted`], [`OpenFailure::Closed`]) drains that
//!    connection and requeues the request; [`OpenFailure::LimitReached`] lowers the connection's stream
//!    limit and requeues; [`OpenFailure::HeadTooLarge`] fails the request (431) and drains nothing. A
//!    stream the agent refused (RESET `REFUSED_STREAM`, or above a GOAWAY's last stream id) is requeued
//!    only if the request is replayable (no body). Requeued requests keep their deadline and FIFO place,
//!    and count in [`RoutingStats::rerouted`]; a request is opened at most
//!    [`RoutingConfig::max_attempts`] times, then fails with [`RequestFailure::Unprocessed`].
//!
//!    **3a. A closed connection orphans, it does not fail.** [`handle_closed`](KasRouting::handle_closed)
//!    takes the requests placed on the connection out of the router, but the policy keeps them (with
//!    their [`RequestSpec`] and attempts) until the driver, which still holds each one, reports how its
//!    stream ended: [`handle_finished`](KasRouting::handle_finished) /
//!    [`handle_cancelled`](KasRouting::handle_cancelled) (the agent may have processed it: the driver
//!    fails it itself), or [`handle_refused`](KasRouting::handle_refused) /
//!    [`handle_open_failed`](KasRouting::handle_open_failed) (provably unprocessed: the refusal or
//!    failed open was only reported after the close). An unprocessed orphan is placed again as a new
//!    request with its original deadline, `replayable` and `hops` — on another connection, waiting
//!    for one, or forwarded to a replica holding the agent — under rule 3's conditions (replayable if
//!    refused, attempts bounded); it goes to the back of the line. This closes the race where an
//!    agent closes a connection (a duplicate, a shed one) after refusing a stream but before kas
//!    processed the refusal.
//! 4. **Existence.** A request for an agent that does not exist ([`super::existence`]) is rejected with
//!    [`RequestFailure::UnknownAgent`] (404).
//! 5. **Replicas.** A request is forwarded only while its `hops` are below
//!    [`RoutingConfig::max_hops`], and only when no local connection of the agent is live (not
//!    draining) and another replica holds one ([`super::holders`]). Requests already waiting move the
//!    same way when such a holder appears or the last local connection drains. Without holders (a single
//!    kas) nothing is ever forwarded.
//!
//!    **5a. A forwarded request does not strand.** A request that was forwarded here (`hops > 0`,
//!    not [`RequestSpec::LOCAL_ONLY`]) and can be neither placed on a live connection here nor
//!    forwarded further fails at once with [`RequestFailure::NotHeld`] — when it arrives, when it is
//!    placed again (rule 3, 3a), and when the last live connection here drains or closes while it
//!    waits — instead of waiting until its deadline for the agent to come back *here*: the agent's
//!    other connections are elsewhere, and the replica that forwarded it asks again (kas:
//!    `421 not-held`; the simulator models the same).
//! 6. The [`Router`]'s invariants hold (delegated).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use super::existence::{Existence, Listing};
use super::holders::{Holders, ReplicaId};
use super::router::{
    ConnectionInfo, InvariantViolation, Route, RouteError, Router, RouterConfig, RouterError,
    RouterStats,
};

/// Limits of a [`KasRouting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingConfig {
    /// The router's limits (pending requests).
    pub router: RouterConfig,
    /// Most times one request is opened on a connection (the first attempt included).
    pub max_attempts: u32,
    /// Most times a request is forwarded between replicas (1: a forwarded request is never forwarded
    /// again, so requests cannot loop).
    pub max_hops: u8,
    /// This replica, when there are several (never forwarded to itself).
    pub replica: Option<ReplicaId>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            router: RouterConfig::default(),
            max_attempts: 4,
            max_hops: 1,
            replica: None,
        }
    }
}

/// What the driver knows about a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpec {
    /// The agent the request is for.
    pub agent_id: u64,
    /// Waiting for a connection ends here.
    pub deadline: Instant,
    /// The request can be sent again after a refusal (it has no body).
    pub replayable: bool,
    /// Times the request was already forwarded between replicas; [`RequestSpec::LOCAL_ONLY`] for a
    /// request kas makes itself that must be served here (never forwarded, it waits here).
    pub hops: u8,
}

impl RequestSpec {
    /// `hops` of a request that is served by this replica or not at all: it is never forwarded, and
    /// it waits here for a connection of its agent (rule 5a does not send it back: there is no
    /// replica that forwarded it).
    pub const LOCAL_ONLY: u8 = u8::MAX;
}

/// Where a new request goes, decided at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement<H> {
    /// Open its stream on this connection now.
    Open(H),
    /// Wait: the outcome comes through [`KasRouting::poll_event`].
    Wait,
    /// Forward it to this replica.
    Forward(ReplicaId),
    /// Fail it.
    Reject(RequestFailure),
}

/// The outcome of a request that waited (or was requeued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingEvent<H, R> {
    /// Open its stream on `conn` now.
    Assigned {
        /// The request.
        request: R,
        /// The connection to open it on.
        conn: H,
    },
    /// Fail it.
    Failed {
        /// The request.
        request: R,
        /// Why, as the client is told.
        failure: RequestFailure,
    },
    /// Forward it to `replica`.
    Forward {
        /// The request.
        request: R,
        /// The replica holding a connection of the agent.
        replica: ReplicaId,
    },
}

/// Why a connection drains (for logs; every cause drains alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainCause {
    /// The agent sent GOAWAY.
    PeerGoaway,
    /// kas sent GOAWAY (retired the connection).
    LocalClose,
    /// kas is shutting down.
    Shutdown,
}

/// Why opening a request's stream failed; nothing reached the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// Either side sent GOAWAY on the connection.
    GoingAway,
    /// The agent's concurrent stream limit is reached.
    LimitReached {
        /// The agent's limit.
        limit: u32,
    },
    /// The connection used up its stream ids.
    IdsExhausted,
    /// The request head is larger than the agent accepts (the client's problem).
    HeadTooLarge {
        /// The head's encoded length.
        len: usize,
        /// The most the agent accepts.
        max: u32,
    },
    /// The connection is over.
    Closed,
}

/// Why a request failed; what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    /// No such agent (404).
    #[error("the agent does not exist")]
    UnknownAgent,
    /// The agent exists but had no connection until the deadline (503).
    #[error("the agent is not connected (waited {waited:?})")]
    NotConnected {
        /// How long the request waited for a connection.
        waited: Duration,
    },
    /// Every connection of the agent was at its stream limit until the deadline (503).
    #[error("the agent is connected but has no stream capacity left (waited {waited:?})")]
    Saturated {
        /// How long the request waited for capacity.
        waited: Duration,
    },
    /// The agent's queue of waiting requests is full (503).
    #[error("too many requests are waiting for the agent")]
    TooManyPending,
    /// The connection carrying the request ended before it was processed, and it cannot be
    /// sent again (502).
    #[error("the connection to the agent carrying the request was lost")]
    ConnectionLost,
    /// The request head is larger than the agent accepts (431, the client's problem).
    #[error(
        "the request's headers take {len} octets on the tunnel; the agent accepts at most {max}"
    )]
    HeadTooLarge {
        /// The head's encoded length.
        len: usize,
        /// The most the agent accepts.
        max: u32,
    },
    /// Every attempt was refused unprocessed (GOAWAY, REFUSED_STREAM) up to the bound (502).
    #[error("the agent did not process the request after {attempts} attempts")]
    Unprocessed {
        /// Attempts made.
        attempts: u32,
    },
    /// kas is shutting down (503).
    #[error("kas is shutting down")]
    ShuttingDown,
    /// A request forwarded here finds no live connection of its agent here any more (rule 5a, 421):
    /// the replica that forwarded it places it again.
    #[error("this replica no longer holds a live connection of the agent")]
    NotHeld,
    /// A caller bug: the request token is already being routed.
    #[error("a request with the same token is already being routed")]
    DuplicateRequest,
}

impl RequestFailure {
    /// The HTTP status the client gets.
    pub fn http_status(&self) -> u16 {
        match self {
            RequestFailure::UnknownAgent => 404,
            RequestFailure::NotConnected { .. }
            | RequestFailure::Saturated { .. }
            | RequestFailure::TooManyPending
            | RequestFailure::ShuttingDown => 503,
            RequestFailure::ConnectionLost | RequestFailure::Unprocessed { .. } => 502,
            RequestFailure::HeadTooLarge { .. } => 431,
            RequestFailure::NotHeld => 421,
            RequestFailure::DuplicateRequest => 500,
        }
    }
}

impl From<RouteError> for RequestFailure {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::AgentNotConnected { waited, .. } => RequestFailure::NotConnected { waited },
            RouteError::AgentSaturated { waited, .. } => RequestFailure::Saturated { waited },
            RouteError::TooManyPending { .. } => RequestFailure::TooManyPending,
            RouteError::ConnectionLost { .. } => RequestFailure::ConnectionLost,
            RouteError::DuplicateRequest => RequestFailure::DuplicateRequest,
        }
    }
}

/// Totals of a [`KasRouting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoutingStats {
    /// The connection router's totals.
    pub router: RouterStats,
    /// Requests put back in line after an unprocessed attempt.
    pub rerouted: u64,
    /// Streams the agent refused.
    pub refused: u64,
    /// Requests forwarded to another replica.
    pub forwarded: u64,
    /// Requests for agents that do not exist.
    pub unknown_agent: u64,
    /// Forwarded requests sent back because no live connection of the agent was here (rule 5a).
    pub not_held: u64,
}

#[derive(Debug, Clone)]
struct Req {
    spec: RequestSpec,
    /// Times the request was opened (or is being opened) on a connection.
    attempts: u32,
    /// Placed on a connection that closed before the driver reported the request's outcome (rule 3a):
    /// the router forgot it, the driver still holds it.
    orphaned: bool,
}

impl Req {
    fn new(spec: RequestSpec, attempts: u32) -> Self {
        Req {
            spec,
            attempts,
            orphaned: false,
        }
    }
}

/// kas's routing policy over the [`Router`], [`Existence`] and [`Holders`]. See the module docs.
#[derive(Debug)]
pub struct KasRouting<H, R> {
    config: RoutingConfig,
    router: Router<H, R>,
    existence: Existence,
    holders: Holders,
    /// Every request placed or waiting here, until it ends.
    requests: BTreeMap<R, Req>,
    events: VecDeque<RoutingEvent<H, R>>,
    shutting_down: bool,
    stats: RoutingStats,
}

impl<H, R> KasRouting<H, R>
where
    H: Clone + Ord + Debug,
    R: Clone + Ord + Debug,
{
    /// A policy with `config`, knowing agents as `listing` says.
    pub fn new(config: RoutingConfig, listing: Listing) -> Self {
        KasRouting {
            config,
            router: Router::new(config.router),
            existence: Existence::new(listing),
            holders: Holders::new(),
            requests: BTreeMap::new(),
            events: VecDeque::new(),
            shutting_down: false,
            stats: RoutingStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    // ----- existence -----

    /// The agents file was (re)loaded.
    pub fn handle_listing(&mut self, listing: Listing) {
        self.existence.handle_listing(listing);
    }

    /// `agent_id` authenticated ("seen").
    pub fn handle_authenticated(&mut self, agent_id: u64) {
        self.existence.handle_authenticated(agent_id);
    }

    /// Whether `agent_id` exists: THE answer for the proxy, `/agents/{id}` and `/views`.
    pub fn agent_exists(&self, agent_id: u64, now: Instant) -> bool {
        let remote = self
            .holders
            .held_elsewhere(agent_id, self.config.replica, now);
        self.existence.exists(agent_id, remote)
    }

    /// What is known about existence (the listing, the agents seen).
    pub fn existence(&self) -> &Existence {
        &self.existence
    }

    // ----- connections -----

    /// A connection of `agent_id` on which kas may open `max_streams` concurrent streams. Waiting
    /// requests may be assigned to it at once.
    pub fn handle_connected(
        &mut self,
        agent_id: u64,
        conn: H,
        max_streams: u32,
        now: Instant,
    ) -> Result<(), RouterError> {
        self.existence.handle_authenticated(agent_id);
        self.router
            .add_connection(agent_id, conn, max_streams, now)?;
        self.collect();
        Ok(())
    }

    /// The connection drains: nothing is placed on it any more; requests waiting for it go elsewhere.
    /// Idempotent; unknown connections are ignored.
    pub fn handle_draining(&mut self, conn: &H, cause: DrainCause, now: Instant) {
        let Some(agent_id) = self.router.connection(conn).map(|c| c.agent_id) else {
            return;
        };
        tracing::debug!(agent_id, ?conn, ?cause, "routing: connection draining");
        let _ = self.router.set_draining(conn);
        self.collect();
        self.forward_stranded(agent_id, now);
    }

    /// The connection is gone. Requests started on it are orphaned (rule 3a): the driver still holds
    /// them and reports how each ended — finished (the agent may have acted on it), or refused / open
    /// failed (never processed: placed again). Unknown connections are ignored.
    pub fn handle_closed(&mut self, conn: &H, now: Instant) {
        let Some(agent_id) = self.router.connection(conn).map(|c| c.agent_id) else {
            return;
        };
        let started = self.router.remove_connection(conn).unwrap_or_default();
        for (request, _) in started {
            if let Some(req) = self.requests.get_mut(&request) {
                req.orphaned = true;
            }
        }
        self.collect();
        self.forward_stranded(agent_id, now);
    }

    // ----- requests -----

    /// Places a new request (rules 4, 5, then the router's choice).
    pub fn handle_request(&mut self, request: R, spec: RequestSpec, now: Instant) -> Placement<H> {
        let agent_id = spec.agent_id;
        if self.shutting_down {
            return Placement::Reject(RequestFailure::ShuttingDown);
        }
        if self.requests.contains_key(&request) {
            return Placement::Reject(RequestFailure::DuplicateRequest);
        }
        if !self.agent_exists(agent_id, now) {
            self.stats.unknown_agent += 1;
            return Placement::Reject(RequestFailure::UnknownAgent);
        }
        let placement = self.place(request, spec, 0, now);
        self.debug_check();
        placement
    }

    /// Places a request opened `attempts` times before: forwarded (rule 5), on a connection, waiting,
    /// or rejected by the router. Known to the policy afterwards unless forwarded or rejected.
    fn place(
        &mut self,
        request: R,
        spec: RequestSpec,
        attempts: u32,
        now: Instant,
    ) -> Placement<H> {
        if let Some(replica) = self.forward_target(spec.agent_id, spec.hops, now) {
            self.stats.forwarded += 1;
            return Placement::Forward(replica);
        }
        if self.stranded(spec.agent_id, spec.hops) {
            self.stats.not_held += 1;
            return Placement::Reject(RequestFailure::NotHeld);
        }
        match self
            .router
            .route(spec.agent_id, request.clone(), spec.deadline, now)
        {
            Route::Assigned(conn) => {
                self.requests.insert(request, Req::new(spec, attempts + 1));
                Placement::Open(conn)
            }
            Route::Pending => {
                self.requests.insert(request, Req::new(spec, attempts));
                Placement::Wait
            }
            Route::Rejected(e) => Placement::Reject(e.into()),
        }
    }

    /// Places an orphan the agent never processed again (rule 3a), as a new request with its original
    /// spec; the outcome is an event, as for a requeue.
    fn replace_orphan(&mut self, request: &R, now: Instant) {
        let Some(req) = self.requests.remove(request) else {
            return;
        };
        debug_assert!(req.orphaned, "only orphans are placed anew");
        let failure = if req.attempts >= self.config.max_attempts {
            Some(RequestFailure::Unprocessed {
                attempts: req.attempts,
            })
        } else if self.shutting_down {
            Some(RequestFailure::ShuttingDown)
        } else {
            None
        };
        if let Some(failure) = failure {
            self.events.push_back(RoutingEvent::Failed {
                request: request.clone(),
                failure,
            });
            return;
        }
        self.stats.rerouted += 1;
        let request = request.clone();
        let event = match self.place(request.clone(), req.spec, req.attempts, now) {
            Placement::Open(conn) => Some(RoutingEvent::Assigned { request, conn }),
            Placement::Wait => None,
            Placement::Forward(replica) => Some(RoutingEvent::Forward { request, replica }),
            Placement::Reject(failure) => Some(RoutingEvent::Failed { request, failure }),
        };
        self.events.extend(event);
    }

    fn is_orphan(&self, request: &R) -> bool {
        self.requests.get(request).is_some_and(|q| q.orphaned)
    }

    /// Opening the request's stream failed before anything reached the wire (rule 3).
    pub fn handle_open_failed(&mut self, request: &R, failure: OpenFailure, now: Instant) {
        if self.is_orphan(request) {
            // Its connection closed before the failure was reported (rule 3a): nothing to drain.
            if let OpenFailure::HeadTooLarge { len, max } = failure {
                self.requests.remove(request);
                self.events.push_back(RoutingEvent::Failed {
                    request: request.clone(),
                    failure: RequestFailure::HeadTooLarge { len, max },
                });
            } else {
                self.replace_orphan(request, now);
            }
            self.collect();
            self.debug_check();
            return;
        }
        let Some(conn) = self.router.assigned_connection(request).cloned() else {
            self.lost(request);
            return;
        };
        match failure {
            OpenFailure::HeadTooLarge { len, max } => {
                self.finish(request, RequestFailure::HeadTooLarge { len, max });
            }
            OpenFailure::GoingAway | OpenFailure::IdsExhausted | OpenFailure::Closed => {
                let _ = self.router.set_draining(&conn);
                self.requeue(request, now);
            }
            OpenFailure::LimitReached { limit } => {
                let _ = self.router.set_max_streams(&conn, limit);
                self.requeue(request, now);
            }
        }
        self.collect();
        self.debug_check();
    }

    /// The agent refused the request's stream before answering (RESET `REFUSED_STREAM`, or the stream
    /// was above a GOAWAY's last stream id): requeued if replayable, else failed (rule 3).
    pub fn handle_refused(&mut self, request: &R, now: Instant) {
        let Some(req) = self.requests.get(request) else {
            return;
        };
        let orphaned = req.orphaned;
        if !orphaned && self.router.assigned_connection(request).is_none() {
            self.lost(request);
            return;
        }
        self.stats.refused += 1;
        if req.spec.replayable {
            if orphaned {
                // Refused, and its connection closed before the refusal was reported (rule 3a).
                self.replace_orphan(request, now);
            } else {
                self.requeue(request, now);
            }
        } else {
            let attempts = req.attempts;
            self.finish(request, RequestFailure::Unprocessed { attempts });
        }
        self.collect();
        self.debug_check();
    }

    /// The request placed on a connection ended (answered, reset, client gone). Returns whether the
    /// request was known: an unknown one (its connection was lost meanwhile, or it was reported twice)
    /// changes nothing.
    pub fn handle_finished(&mut self, request: &R) -> bool {
        if self.requests.remove(request).is_none() {
            return false;
        }
        let _ = self.router.request_finished(request);
        self.collect();
        true
    }

    /// The client went away: forgets the request wherever it is. Returns whether it was known.
    pub fn handle_cancelled(&mut self, request: &R) -> bool {
        if self.requests.remove(request).is_none() {
            return false;
        }
        if !self.router.cancel(request) {
            let _ = self.router.request_finished(request);
        }
        self.collect();
        true
    }

    /// The replicas holding connections of `agent_id` (rule 5; issue 12's shared store feeds it).
    pub fn handle_holders(
        &mut self,
        agent_id: u64,
        holders: &[(ReplicaId, Instant)],
        now: Instant,
    ) {
        self.holders.set(agent_id, holders);
        self.forward_stranded(agent_id, now);
    }

    /// Shutdown: every connection drains, every waiting request fails with
    /// [`RequestFailure::ShuttingDown`], new requests are rejected. Placed requests run on.
    pub fn handle_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let conns: Vec<H> = self
            .router
            .agents()
            .iter()
            .flat_map(|a| self.router.connections(a.agent_id))
            .map(|c| c.handle)
            .collect();
        for c in &conns {
            let _ = self.router.set_draining(c);
        }
        let waiting: Vec<R> = self
            .requests
            .iter()
            .filter(|(r, q)| !q.orphaned && self.router.assigned_connection(r).is_none())
            .map(|(r, _)| r.clone())
            .collect();
        for request in waiting {
            self.router.cancel(&request);
            self.requests.remove(&request);
            self.events.push_back(RoutingEvent::Failed {
                request,
                failure: RequestFailure::ShuttingDown,
            });
        }
        self.collect();
    }

    /// The next outcome of a waiting request.
    pub fn poll_event(&mut self) -> Option<RoutingEvent<H, R>> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.router.poll_timeout()
    }

    /// Fails the waiting requests whose deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.router.handle_timeout(now);
        self.collect();
    }

    // ----- queries -----

    /// Totals since creation.
    pub fn stats(&self) -> RoutingStats {
        RoutingStats {
            router: self.router.stats(),
            ..self.stats
        }
    }

    /// The connections of one agent, oldest first.
    pub fn connections(&self, agent_id: u64) -> Vec<ConnectionInfo<H>> {
        self.router.connections(agent_id)
    }

    /// One connection.
    pub fn connection(&self, conn: &H) -> Option<ConnectionInfo<H>> {
        self.router.connection(conn)
    }

    /// Requests waiting for a connection of `agent_id`.
    pub fn pending_for(&self, agent_id: u64) -> usize {
        self.router.pending_count_for(agent_id)
    }

    /// The connection a request is placed on, if any.
    pub fn assigned_connection(&self, request: &R) -> Option<&H> {
        self.router.assigned_connection(request)
    }

    /// Whether the request is still routed here (waiting or placed).
    pub fn knows(&self, request: &R) -> bool {
        self.requests.contains_key(request)
    }

    /// The router's invariants, plus: every request known here is known to the router, and none was
    /// opened more than `max_attempts` times.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.router.check_invariants()?;
        for (r, req) in &self.requests {
            if req.orphaned && (req.attempts == 0 || self.router.assigned_connection(r).is_some()) {
                return Err(InvariantViolation(format!(
                    "orphan {r:?} was never opened or is still on a connection"
                )));
            }
            if req.attempts > self.config.max_attempts {
                return Err(InvariantViolation(format!(
                    "request {r:?} opened {} times",
                    req.attempts
                )));
            }
        }
        if self.requests.len() < self.router.stats().pending + self.router.stats().assigned {
            return Err(InvariantViolation(
                "the router holds requests the policy forgot".into(),
            ));
        }
        Ok(())
    }

    // ----- internals -----

    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_invariants() {
            panic!("{e}");
        }
    }

    /// Moves the router's queued outcomes into the event queue.
    fn collect(&mut self) {
        loop {
            if let Some((request, conn)) = self.router.poll_assigned() {
                if let Some(req) = self.requests.get_mut(&request) {
                    req.attempts += 1;
                }
                self.events
                    .push_back(RoutingEvent::Assigned { request, conn });
                continue;
            }
            if let Some((request, error)) = self.router.poll_failed() {
                self.requests.remove(&request);
                self.events.push_back(RoutingEvent::Failed {
                    request,
                    failure: error.into(),
                });
                continue;
            }
            break;
        }
    }

    /// Puts a placed request back in line, or fails it once it used all its attempts.
    fn requeue(&mut self, request: &R, now: Instant) {
        let Some(req) = self.requests.get(request) else {
            return;
        };
        let (agent_id, attempts) = (req.spec.agent_id, req.attempts);
        if attempts >= self.config.max_attempts {
            self.finish(request, RequestFailure::Unprocessed { attempts });
            return;
        }
        if self.router.retry(request).is_err() {
            self.lost(request);
            return;
        }
        self.stats.rerouted += 1;
        self.collect();
        self.forward_stranded(agent_id, now);
    }

    /// Ends a placed request with `failure` (through an event, like every other failure).
    fn finish(&mut self, request: &R, failure: RequestFailure) {
        self.requests.remove(request);
        let _ = self.router.request_finished(request);
        self.events.push_back(RoutingEvent::Failed {
            request: request.clone(),
            failure,
        });
    }

    /// A request the router no longer has on a connection (its connection was removed meanwhile).
    fn lost(&mut self, request: &R) {
        if self.requests.remove(request).is_some() {
            self.router.cancel(request);
            self.events.push_back(RoutingEvent::Failed {
                request: request.clone(),
                failure: RequestFailure::ConnectionLost,
            });
        }
    }

    /// The replica a request for `agent_id` with `hops` goes to instead of waiting here.
    fn forward_target(&self, agent_id: u64, hops: u8, now: Instant) -> Option<ReplicaId> {
        if hops >= self.config.max_hops {
            return None;
        }
        let live_here = self
            .router
            .connections(agent_id)
            .iter()
            .any(|c| !c.draining);
        if live_here {
            return None;
        }
        self.holders.pick(agent_id, self.config.replica, now)
    }

    /// Whether a request for `agent_id` forwarded `hops` times, which cannot be forwarded further,
    /// would wait here without a live connection of its agent (rule 5a).
    fn stranded(&self, agent_id: u64, hops: u8) -> bool {
        hops > 0
            && hops != RequestSpec::LOCAL_ONLY
            && !self
                .router
                .connections(agent_id)
                .iter()
                .any(|c| !c.draining)
    }

    /// Forwards the requests waiting for `agent_id` when another replica can serve them (rule 5);
    /// fails the forwarded ones that would strand here (rule 5a).
    fn forward_stranded(&mut self, agent_id: u64, now: Instant) {
        if self.router.pending_count_for(agent_id) == 0 {
            return;
        }
        let waiting: Vec<(R, u8)> = self
            .requests
            .iter()
            .filter(|(r, q)| {
                q.spec.agent_id == agent_id
                    && !q.orphaned
                    && self.router.assigned_connection(r).is_none()
            })
            .map(|(r, q)| (r.clone(), q.spec.hops))
            .collect();
        for (request, hops) in waiting {
            let event = match self.forward_target(agent_id, hops, now) {
                Some(replica) => RoutingEvent::Forward {
                    request: request.clone(),
                    replica,
                },
                None if self.stranded(agent_id, hops) => RoutingEvent::Failed {
                    request: request.clone(),
                    failure: RequestFailure::NotHeld,
                },
                None => continue,
            };
            if self.router.cancel(&request) {
                self.requests.remove(&request);
                match event {
                    RoutingEvent::Forward { .. } => self.stats.forwarded += 1,
                    _ => self.stats.not_held += 1,
                }
                self.events.push_back(event);
            }
        }
        self.debug_check();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Routing = KasRouting<u64, u64>;

    fn t0() -> Instant {
        Instant::now()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn spec(agent_id: u64, now: Instant, replayable: bool) -> RequestSpec {
        RequestSpec {
            agent_id,
            deadline: now + secs(10),
            replayable,
            hops: 0,
        }
    }

    fn open() -> Routing {
        KasRouting::new(RoutingConfig::default(), Listing::Open)
    }

    fn events(r: &mut Routing) -> Vec<RoutingEvent<u64, u64>> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    #[test]
    fn unknown_agents_are_rejected_with_404() {
        let now = t0();
        let mut r = KasRouting::<u64, u64>::new(
            RoutingConfig::default(),
            Listing::Authoritative([1].into()),
        );
        let p = r.handle_request(1, spec(2, now, true), now);
        assert_eq!(p, Placement::Reject(RequestFailure::UnknownAgent));
        assert_eq!(RequestFailure::UnknownAgent.http_status(), 404);
        assert_eq!(r.stats().unknown_agent, 1);
        assert_eq!(
            r.handle_request(2, spec(1, now, true), now),
            Placement::Wait
        );
    }

    #[test]
    fn a_request_after_the_drain_goes_to_the_new_connection_without_a_reroute() {
        let now = t0();
        let mut r = open();
        r.handle_connected(1, 10, 8, now).unwrap();
        r.handle_connected(1, 11, 8, now).unwrap();
        r.handle_draining(&10, DrainCause::PeerGoaway, now);
        assert_eq!(
            r.handle_request(1, spec(1, now, true), now),
            Placement::Open(11)
        );
        assert_eq!(r.stats().rerouted, 0);
    }

    #[test]
    fn going_away_drains_and_requeues_to_another_connection() {
        let now = t0();
        let mut r = open();
        r.handle_connected(1, 10, 8, now).unwrap();
        assert_eq!(
            r.handle_request(7, spec(1, now, false), now),
            Placement::Open(10)
        );
        r.handle_connected(1, 11, 8, now).unwrap();
        r.handle_open_failed(&7, OpenFailure::GoingAway, now);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Assigned {
                request: 7,
                conn: 11
            }]
        );
        assert!(r.connection(&10).unwrap().draining);
        assert_eq!(r.stats().rerouted, 1);
    }

    #[test]
    fn head_too_large_fails_the_request_and_drains_nothing() {
        let now = t0();
        let mut r = open();
        r.handle_connected(1, 10, 8, now).unwrap();
        r.handle_request(7, spec(1, now, true), now);
        r.handle_open_failed(&7, OpenFailure::HeadTooLarge { len: 9, max: 4 }, now);
        let failure = RequestFailure::HeadTooLarge { len: 9, max: 4 };
        assert_eq!(failure.http_status(), 431);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Failed {
                request: 7,
                failure
            }]
        );
        assert!(!r.connection(&10).unwrap().draining);
        assert_eq!(r.connection(&10).unwrap().load, 0);
    }

    #[test]
    fn refusals_requeue_replayable_requests_only() {
        let now = t0();
        let mut r = open();
        r.handle_connected(1, 10, 8, now).unwrap();
        r.handle_request(1, spec(1, now, true), now);
        r.handle_request(2, spec(1, now, false), now);
        r.handle_refused(&1, now);
        r.handle_refused(&2, now);
        assert_eq!(
            events(&mut r),
            vec![
                RoutingEvent::Assigned {
                    request: 1,
                    conn: 10
                },
                RoutingEvent::Failed {
                    request: 2,
                    failure: RequestFailure::Unprocessed { attempts: 1 }
                }
            ]
        );
        assert_eq!(r.stats().refused, 2);
    }

    #[test]
    fn attempts_are_bounded() {
        let now = t0();
        let mut r = open();
        r.handle_connected(1, 10, 8, now).unwrap();
        r.handle_request(1, spec(1, now, true), now);
        for _ in 1..4 {
            r.handle_refused(&1, now);
            assert!(matches!(
                r.poll_event(),
                Some(RoutingEvent::Assigned { request: 1, .. })
            ));
        }
        r.handle_refused(&1, now);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Failed {
                request: 1,
                failure: RequestFailure::Unprocessed { attempts: 4 }
            }]
        );
        assert_eq!(r.stats().rerouted, 3);
        assert_eq!(r.connection(&10).unwrap().load, 0);
    }

    #[test]
    fn limit_reached_lowers_the_limit_and_waits() {
        let now = t0();
        let mut r = open();
        r.handle_connected(1, 10, 8, now).unwrap();
        r.handle_request(1, spec(1, now, true), now);
        r.handle_request(2, spec(1, now, true), now);
        r.handle_open_failed(&2, OpenFailure::LimitReached { limit: 1 }, now);
        assert!(events(&mut r).is_empty(), "waits for the slot");
        assert_eq!(r.connection(&10).unwrap().max_streams, 1);
        r.handle_finished(&1);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Assigned {
                request: 2,
                conn: 10
            }]
        );
    }

    #[test]
    fn closing_orphans_started_requests_until_the_driver_reports_them() {
        let now = t0();
        let mut r = open();
        r.handle_connected(1, 10, 8, now).unwrap();
        r.handle_request(1, spec(1, now, true), now);
        r.handle_closed(&10, now);
        assert!(events(&mut r).is_empty(), "the driver still holds it");
        assert!(r.knows(&1) && r.assigned_connection(&1).is_none());
        // The agent may have processed it: the driver fails it itself and reports it finished.
        assert!(r.handle_finished(&1));
        assert!(!r.knows(&1));
        assert!(!r.handle_finished(&1), "once");
        assert!(events(&mut r).is_empty());
    }

    /// Rule 3a, the refused-stream race: the agent refuses a stream and closes the connection (a
    /// duplicate or shed one); kas processes the close before the refusal.
    #[test]
    fn an_unprocessed_request_whose_connection_closed_is_placed_again() {
        let now = t0();
        let mut r = open();
        r.handle_connected(1, 10, 8, now).unwrap();
        r.handle_connected(1, 11, 8, now).unwrap();
        let deadline = now + secs(10);
        // Placed on 10 (the oldest), then 10 closes; the refusal is reported afterwards.
        assert_eq!(
            r.handle_request(1, spec(1, now, true), now),
            Placement::Open(10)
        );
        r.handle_closed(&10, now);
        r.handle_refused(&1, now);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Assigned {
                request: 1,
                conn: 11
            }]
        );
        assert_eq!(r.connection(&11).unwrap().load, 1);
        assert_eq!((r.stats().rerouted, r.stats().refused), (1, 1));
        // A body cannot be sent again after a refusal: typed failure, as on a live connection.
        assert_eq!(
            r.handle_request(2, spec(1, now, false), now),
            Placement::Open(11)
        );
        r.handle_closed(&11, now);
        r.handle_refused(&2, now);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Failed {
                request: 2,
                failure: RequestFailure::Unprocessed { attempts: 1 }
            }]
        );
        // Request 1 was orphaned again; its failed open (nothing on the wire) waits for a connection
        // with the original deadline, then takes the next one.
        r.handle_open_failed(&1, OpenFailure::Closed, now);
        assert!(events(&mut r).is_empty());
        assert_eq!(r.pending_for(1), 1);
        assert_eq!(r.poll_timeout(), Some(deadline));
        r.handle_connected(1, 12, 8, now).unwrap();
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Assigned {
                request: 1,
                conn: 12
            }]
        );
        // Attempts stay bounded across orphaning: 3 so far, the 4th (max) is the last.
        r.handle_closed(&12, now);
        r.handle_connected(1, 13, 8, now).unwrap();
        r.handle_refused(&1, now);
        assert!(matches!(
            events(&mut r).as_slice(),
            [RoutingEvent::Assigned {
                request: 1,
                conn: 13
            }]
        ));
        r.handle_closed(&13, now);
        r.handle_refused(&1, now);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Failed {
                request: 1,
                failure: RequestFailure::Unprocessed { attempts: 4 }
            }]
        );
        assert!(!r.knows(&1));
        r.check_invariants().unwrap();
    }

    #[test]
    fn an_orphan_moves_to_a_replica_holding_the_agent() {
        let now = t0();
        let config = RoutingConfig {
            replica: Some(ReplicaId(1)),
            ..RoutingConfig::default()
        };
        let mut r = KasRouting::<u64, u64>::new(config, Listing::Open);
        r.handle_connected(1, 10, 8, now).unwrap();
        r.handle_holders(1, &[(ReplicaId(2), now + secs(30))], now);
        // A body whose stream never opened can still go to the holder; a hop already made cannot.
        assert_eq!(
            r.handle_request(1, spec(1, now, false), now),
            Placement::Open(10)
        );
        let hopped = RequestSpec {
            hops: 1,
            ..spec(1, now, true)
        };
        assert_eq!(r.handle_request(2, hopped, now), Placement::Open(10));
        r.handle_closed(&10, now);
        r.handle_open_failed(&1, OpenFailure::GoingAway, now);
        r.handle_refused(&2, now);
        // The forwarded one does not wait here for the agent to come back (rule 5a).
        assert_eq!(
            events(&mut r),
            vec![
                RoutingEvent::Forward {
                    request: 1,
                    replica: ReplicaId(2)
                },
                RoutingEvent::Failed {
                    request: 2,
                    failure: RequestFailure::NotHeld
                }
            ]
        );
        assert_eq!(r.pending_for(1), 0);
        assert_eq!(r.stats().not_held, 1);
        // Shutdown: an orphan refused after it fails.
        r.handle_connected(1, 11, 8, now).unwrap();
        assert_eq!(r.handle_request(3, hopped, now), Placement::Open(11));
        r.handle_closed(&11, now);
        r.handle_shutdown();
        assert!(events(&mut r).is_empty(), "placed requests run on");
        r.handle_refused(&3, now);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Failed {
                request: 3,
                failure: RequestFailure::ShuttingDown
            }]
        );
    }

    #[test]
    fn a_forwarded_request_goes_back_when_no_live_connection_is_here() {
        let now = t0();
        let config = RoutingConfig {
            replica: Some(ReplicaId(1)),
            ..RoutingConfig::default()
        };
        let mut r = KasRouting::<u64, u64>::new(config, Listing::Open);
        let hopped = RequestSpec {
            hops: 1,
            ..spec(1, now, true)
        };
        r.handle_authenticated(1);
        assert_eq!(
            r.handle_request(1, hopped, now),
            Placement::Reject(RequestFailure::NotHeld),
            "no connection here"
        );
        // A live connection at its stream limit: the forwarded request waits for capacity ...
        r.handle_connected(1, 10, 1, now).unwrap();
        assert_eq!(
            r.handle_request(2, spec(1, now, true), now),
            Placement::Open(10)
        );
        assert_eq!(r.handle_request(3, hopped, now), Placement::Wait);
        // ... until the connection drains (a GOAWAY, a shed connection): then it goes back at once,
        // while the local request placed on it runs on.
        r.handle_draining(&10, DrainCause::PeerGoaway, now);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Failed {
                request: 3,
                failure: RequestFailure::NotHeld
            }]
        );
        assert!(r.knows(&2) && !r.knows(&3));
        assert_eq!(r.stats().not_held, 2);
        assert_eq!(RequestFailure::NotHeld.http_status(), 421);
        r.check_invariants().unwrap();
    }

    #[test]
    fn waiting_requests_move_to_a_replica_that_holds_the_agent() {
        let now = t0();
        let config = RoutingConfig {
            replica: Some(ReplicaId(0)),
            ..RoutingConfig::default()
        };
        let mut r = KasRouting::<u64, u64>::new(config, Listing::Open);
        r.handle_authenticated(1);
        assert_eq!(
            r.handle_request(1, spec(1, now, true), now),
            Placement::Wait
        );
        // Holding it ourselves changes nothing.
        r.handle_holders(1, &[(ReplicaId(0), now + secs(30))], now);
        assert!(events(&mut r).is_empty());
        r.handle_holders(1, &[(ReplicaId(2), now + secs(30))], now);
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Forward {
                request: 1,
                replica: ReplicaId(2)
            }]
        );
        assert_eq!(
            r.handle_request(2, spec(1, now, true), now),
            Placement::Forward(ReplicaId(2))
        );
        // A forwarded request is not forwarded again (max_hops 1), nor does it wait here for a
        // connection (rule 5a).
        let hopped = RequestSpec {
            hops: 1,
            ..spec(1, now, true)
        };
        assert_eq!(
            r.handle_request(3, hopped, now),
            Placement::Reject(RequestFailure::NotHeld)
        );
        assert_eq!(r.stats().forwarded, 2);
    }

    #[test]
    fn shutdown_fails_waiters_and_rejects_new_requests() {
        let now = t0();
        let mut r = open();
        r.handle_authenticated(1);
        r.handle_request(1, spec(1, now, true), now);
        r.handle_shutdown();
        assert_eq!(
            events(&mut r),
            vec![RoutingEvent::Failed {
                request: 1,
                failure: RequestFailure::ShuttingDown
            }]
        );
        assert_eq!(
            r.handle_request(2, spec(1, now, true), now),
            Placement::Reject(RequestFailure::ShuttingDown)
        );
    }
}
