//! Property test of `protocol::routing::router` against an independent reference model.
//!
//! Random operation sequences drive the [`Router`] and a [`Model`] side by side. The model is a naive
//! re-statement of the routing rules in the router's module documentation — connections with their
//! own limits and draining flags, requests with their own states, loads *computed* from the model's
//! requests, FIFO queues from arrival numbers, deadlines — and nothing it knows comes from the router.
//! After every operation the router's answers must equal the model's predictions exactly:
//!
//! - `route` assigns to the least-loaded usable connection of the agent (oldest on ties), waits only
//!   while **no connection of the agent is usable**, and is refused for the pending limits or an
//!   expired deadline with the right error;
//! - `poll_assigned` hands out requests in **FIFO** order of assignment, each assigned in arrival order
//!   per agent, never on a draining or full connection;
//! - `poll_failed` fails exactly the pending requests whose deadline passed, in deadline order, with
//!   `AgentNotConnected` when no non-draining connection exists and `AgentSaturated` otherwise
//!   (**timeouts versus connectivity**), after exactly the time they waited;
//! - `remove_connection` loses exactly the started requests of that connection; every request ends
//!   exactly once;
//! - the loads, limits, pending counts and `poll_timeout` the router reports equal the model's.
//!
//! The router's own `check_invariants` runs too, but nothing depends on it: [`mutants`] are routers
//! with deliberate bugs (wrappers that misbehave in one way each); the harness must catch every one
//! of them with the router's self-check switched off.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use protocol::routing::router::{Route, RouteError, Router, RouterConfig};

const AGENTS: u64 = 3;
const PER_AGENT: usize = 4;
const TOTAL: usize = 8;

#[derive(Debug, Clone)]
enum Op {
    AddConn { agent: u64, max_streams: u32 },
    RemoveConn(usize),
    Drain(usize),
    SetMax(usize, u32),
    Route { agent: u64, deadline_ms: u64 },
    PollAssigned,
    PollFailed,
    Finish(usize),
    Retry(usize),
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..AGENTS, 0u32..4).prop_map(|(agent, max_streams)| Op::AddConn { agent, max_streams }),
        1 => any::<usize>().prop_map(Op::RemoveConn),
        1 => any::<usize>().prop_map(Op::Drain),
        1 => (any::<usize>(), 0u32..4).prop_map(|(i, n)| Op::SetMax(i, n)),
        5 => (0..AGENTS, 0u64..3000).prop_map(|(agent, deadline_ms)| Op::Route { agent, deadline_ms }),
        3 => Just(Op::PollAssigned),
        2 => Just(Op::PollFailed),
        3 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Retry),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => (0u64..1500).prop_map(Op::Advance),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 0..120)
}

// ------------------------------------------------------------------------------- the model

#[derive(Debug, Clone)]
struct MConn {
    agent: u64,
    max: u32,
    draining: bool,
    /// Order of addition (older wins ties).
    order: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MState {
    Pending,
    /// Assigned, queued for `poll_assigned`; `seq` is the assignment order.
    Ready {
        conn: u32,
        seq: u64,
    },
    Started {
        conn: u32,
    },
    /// Timed out, queued for `poll_failed`; `seq` is the failure order.
    Failed {
        seq: u64,
        error: RouteError,
    },
    Ended,
}

#[derive(Debug, Clone)]
struct MReq {
    agent: u64,
    /// Arrival order: the FIFO place among the agent's waiting requests (kept across retries).
    arrival: u64,
    deadline: Instant,
    routed_at: Instant,
    state: MState,
}

/// What the routing rules say the router holds (see the module documentation).
#[derive(Debug, Default)]
struct Model {
    conns: BTreeMap<u32, MConn>,
    reqs: BTreeMap<u32, MReq>,
    seq: u64,
}

impl Model {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Requests assigned to `h` (queued or started): the load, computed, never stored.
    fn load(&self, h: u32) -> usize {
        self.reqs
            .values()
            .filter(|q| {
                matches!(q.state, MState::Ready { conn, .. } | MState::Started { conn } if conn == h)
            })
            .count()
    }

    fn usable(&self, h: u32) -> bool {
        self.conns
            .get(&h)
            .is_some_and(|c| !c.draining && self.load(h) < c.max as usize)
    }

    /// The usable connection of `agent` with the least load, the oldest on ties.
    fn pick(&self, agent: u64) -> Option<u32> {
        self.conns
            .iter()
            .filter(|(h, c)| c.agent == agent && self.usable(**h))
            .min_by_key(|(h, c)| (self.load(**h), c.order))
            .map(|(h, _)| *h)
    }

    fn connected(&self, agent: u64) -> bool {
        self.conns.values().any(|c| c.agent == agent && !c.draining)
    }

    fn pending_of(&self, agent: u64) -> Vec<u32> {
        let mut v: Vec<(u64, u32)> = self
            .reqs
            .iter()
            .filter(|(_, q)| q.agent == agent && q.state == MState::Pending)
            .map(|(r, q)| (q.arrival, *r))
            .collect();
        v.sort();
        v.into_iter().map(|(_, r)| r).collect()
    }

    fn pending_total(&self) -> usize {
        self.reqs
            .values()
            .filter(|q| q.state == MState::Pending)
            .count()
    }

    fn wait_error(&self, agent: u64, waited: Duration) -> RouteError {
        if self.connected(agent) {
            RouteError::AgentSaturated {
                agent_id: agent,
                waited,
            }
        } else {
            RouteError::AgentNotConnected {
                agent_id: agent,
                waited,
            }
        }
    }

    /// Assigns the agent's waiting requests, oldest arrival first, while it has a usable connection.
    fn assign_pending(&mut self, agent: u64) {
        for r in self.pending_of(agent) {
            let Some(h) = self.pick(agent) else {
                return;
            };
            let seq = self.next();
            self.reqs.get_mut(&r).unwrap().state = MState::Ready { conn: h, seq };
        }
    }

    /// Requests queued (not yet handed out) on `h` go back to waiting.
    fn requeue_ready_of(&mut self, h: u32) {
        for q in self.reqs.values_mut() {
            if matches!(q.state, MState::Ready { conn, .. } if conn == h) {
                q.state = MState::Pending;
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.reqs
            .values()
            .filter(|q| q.state == MState::Pending)
            .map(|q| q.deadline)
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let mut due: Vec<(Instant, u64, u32)> = self
            .reqs
            .iter()
            .filter(|(_, q)| q.state == MState::Pending && q.deadline <= now)
            .map(|(r, q)| (q.deadline, q.arrival, *r))
            .collect();
        due.sort();
        for (_, _, r) in due {
            let q = &self.reqs[&r];
            let error = self.wait_error(q.agent, now.saturating_duration_since(q.routed_at));
            let seq = self.next();
            self.reqs.get_mut(&r).unwrap().state = MState::Failed { seq, error };
        }
    }

    fn in_state(&self, f: impl Fn(&MState) -> bool) -> Vec<u32> {
        self.reqs
            .iter()
            .filter(|(_, q)| f(&q.state))
            .map(|(r, _)| *r)
            .collect()
    }
}

// ------------------------------------------------------------------------------- the system under test

/// What the harness calls; implemented by the real router and by the [`mutants`].
trait Routing {
    fn add_connection(&mut self, agent: u64, h: u32, max: u32, now: Instant);
    fn remove_connection(&mut self, h: u32) -> Vec<(u32, RouteError)>;
    fn set_draining(&mut self, h: u32);
    fn set_max_streams(&mut self, h: u32, max: u32);
    fn route(&mut self, agent: u64, r: u32, deadline: Instant, now: Instant) -> Route<u32>;
    fn poll_assigned(&mut self) -> Option<(u32, u32)>;
    fn poll_failed(&mut self) -> Option<(u32, RouteError)>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
    fn request_finished(&mut self, r: u32);
    fn cancel(&mut self, r: u32) -> bool;
    fn retry(&mut self, r: u32);
    fn router(&self) -> &Router<u32, u32>;
}

impl Routing for Router<u32, u32> {
    fn add_connection(&mut self, agent: u64, h: u32, max: u32, now: Instant) {
        Router::add_connection(self, agent, h, max, now).unwrap();
    }
    fn remove_connection(&mut self, h: u32) -> Vec<(u32, RouteError)> {
        Router::remove_connection(self, &h).unwrap()
    }
    fn set_draining(&mut self, h: u32) {
        Router::set_draining(self, &h).unwrap();
    }
    fn set_max_streams(&mut self, h: u32, max: u32) {
        Router::set_max_streams(self, &h, max).unwrap();
    }
    fn route(&mut self, agent: u64, r: u32, deadline: Instant, now: Instant) -> Route<u32> {
        Router::route(self, agent, r, deadline, now)
    }
    fn poll_assigned(&mut self) -> Option<(u32, u32)> {
        Router::poll_assigned(self)
    }
    fn poll_failed(&mut self) -> Option<(u32, RouteError)> {
        Router::poll_failed(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Router::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Router::handle_timeout(self, now);
    }
    fn request_finished(&mut self, r: u32) {
        Router::request_finished(self, &r).unwrap();
    }
    fn cancel(&mut self, r: u32) -> bool {
        Router::cancel(self, &r)
    }
    fn retry(&mut self, r: u32) {
        Router::retry(self, &r).unwrap();
    }
    fn router(&self) -> &Router<u32, u32> {
        self
    }
}

fn new_router() -> Router<u32, u32> {
    Router::new(RouterConfig {
        max_pending_per_agent: PER_AGENT,
        max_pending_total: TOTAL,
    })
}

// ------------------------------------------------------------------------------- the harness

struct Harness<R: Routing> {
    sut: R,
    model: Model,
    now: Instant,
    /// Also run the router's own `check_invariants` (off for the mutants: the model alone must tell).
    self_check: bool,
    next_handle: u32,
    next_req: u32,
}

fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[i % items.len()])
    }
}

impl<R: Routing> Harness<R> {
    fn new(sut: R, self_check: bool) -> Self {
        Harness {
            sut,
            model: Model::default(),
            now: Instant::now(),
            self_check,
            next_handle: 0,
            next_req: 0,
        }
    }

    fn handles(&self) -> Vec<u32> {
        self.model.conns.keys().copied().collect()
    }

    fn started(&self) -> Vec<u32> {
        self.model.in_state(|s| matches!(s, MState::Started { .. }))
    }

    fn end(&mut self, r: u32) -> Result<(), TestCaseError> {
        let q = self
            .model
            .reqs
            .get_mut(&r)
            .ok_or_else(|| TestCaseError::fail(format!("unknown request {r}")))?;
        prop_assert_ne!(&q.state, &MState::Ended, "request {} ended twice", r);
        q.state = MState::Ended;
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::AddConn { agent, max_streams } => {
                let h = self.next_handle;
                self.next_handle += 1;
                let order = self.model.next();
                self.model.conns.insert(
                    h,
                    MConn {
                        agent,
                        max: max_streams,
                        draining: false,
                        order,
                    },
                );
                self.model.assign_pending(agent);
                self.sut.add_connection(agent, h, max_streams, self.now);
            }
            Op::RemoveConn(i) => {
                let Some(h) = pick(&self.handles(), i) else {
                    return Ok(());
                };
                let agent = self.model.conns[&h].agent;
                let mut expected: Vec<(u64, u32)> = self
                    .model
                    .reqs
                    .iter()
                    .filter(|(_, q)| q.state == MState::Started { conn: h })
                    .map(|(r, q)| (q.arrival, *r))
                    .collect();
                expected.sort();
                let expected: Vec<(u32, RouteError)> = expected
                    .into_iter()
                    .map(|(_, r)| (r, RouteError::ConnectionLost { agent_id: agent }))
                    .collect();
                for (r, _) in &expected {
                    self.end(*r)?;
                }
                self.model.requeue_ready_of(h);
                self.model.conns.remove(&h);
                self.model.assign_pending(agent);
                let lost = self.sut.remove_connection(h);
                prop_assert_eq!(
                    lost,
                    expected,
                    "remove_connection({}) must lose exactly its started requests",
                    h
                );
            }
            Op::Drain(i) => {
                let Some(h) = pick(&self.handles(), i) else {
                    return Ok(());
                };
                let c = self.model.conns.get_mut(&h).unwrap();
                if !c.draining {
                    c.draining = true;
                    let agent = c.agent;
                    self.model.requeue_ready_of(h);
                    self.model.assign_pending(agent);
                }
                self.sut.set_draining(h);
            }
            Op::SetMax(i, n) => {
                let Some(h) = pick(&self.handles(), i) else {
                    return Ok(());
                };
                let c = self.model.conns.get_mut(&h).unwrap();
                c.max = n;
                let agent = c.agent;
                if self.model.load(h) > n as usize {
                    self.model.requeue_ready_of(h);
                }
                self.model.assign_pending(agent);
                self.sut.set_max_streams(h, n);
            }
            Op::Route { agent, deadline_ms } => {
                let r = self.next_req;
                self.next_req += 1;
                let deadline = self.now + Duration::from_millis(deadline_ms);
                let (expected, state) = match self.model.pick(agent) {
                    Some(h) => (Route::Assigned(h), MState::Started { conn: h }),
                    None if deadline <= self.now => (
                        Route::Rejected(self.model.wait_error(agent, Duration::ZERO)),
                        MState::Ended,
                    ),
                    None if self.model.pending_total() >= TOTAL
                        || self.model.pending_of(agent).len() >= PER_AGENT =>
                    {
                        (
                            Route::Rejected(RouteError::TooManyPending { agent_id: agent }),
                            MState::Ended,
                        )
                    }
                    None => (Route::Pending, MState::Pending),
                };
                let arrival = self.model.next();
                self.model.reqs.insert(
                    r,
                    MReq {
                        agent,
                        arrival,
                        deadline,
                        routed_at: self.now,
                        state,
                    },
                );
                let got = self.sut.route(agent, r, deadline, self.now);
                let usable: Vec<u32> = self
                    .handles()
                    .into_iter()
                    .filter(|h| self.model.conns[h].agent == agent)
                    .collect();
                prop_assert_eq!(
                    got,
                    expected,
                    "route(agent {}, request {}): connections of the agent {:?} (model: {:?})",
                    agent,
                    r,
                    usable,
                    self.model.conns
                );
            }
            Op::PollAssigned => {
                let expected = self
                    .model
                    .reqs
                    .iter()
                    .filter_map(|(r, q)| match q.state {
                        MState::Ready { conn, seq } => Some((seq, *r, conn)),
                        _ => None,
                    })
                    .min()
                    .map(|(_, r, h)| (r, h));
                if let Some((r, h)) = expected {
                    self.model.reqs.get_mut(&r).unwrap().state = MState::Started { conn: h };
                }
                let got = self.sut.poll_assigned();
                prop_assert_eq!(
                    got,
                    expected,
                    "poll_assigned must hand out assignments first come, first served"
                );
            }
            Op::PollFailed => {
                let expected = self
                    .model
                    .reqs
                    .iter()
                    .filter_map(|(r, q)| match &q.state {
                        MState::Failed { seq, error } => Some((*seq, *r, error.clone())),
                        _ => None,
                    })
                    .min_by_key(|(seq, _, _)| *seq)
                    .map(|(_, r, e)| (r, e));
                if let Some((r, _)) = &expected {
                    self.end(*r)?;
                }
                let got = self.sut.poll_failed();
                prop_assert_eq!(
                    got,
                    expected,
                    "poll_failed: the timed-out request and its error (not connected vs saturated)"
                );
            }
            Op::Finish(i) => {
                let Some(r) = pick(&self.started(), i) else {
                    return Ok(());
                };
                let agent = self.model.reqs[&r].agent;
                self.end(r)?;
                self.model.assign_pending(agent);
                self.sut.request_finished(r);
            }
            Op::Retry(i) => {
                let Some(r) = pick(&self.started(), i) else {
                    return Ok(());
                };
                let agent = self.model.reqs[&r].agent;
                self.model.reqs.get_mut(&r).unwrap().state = MState::Pending;
                self.model.assign_pending(agent);
                self.sut.retry(r);
            }
            Op::Cancel(i) => {
                let all: Vec<u32> = self.model.reqs.keys().copied().collect();
                let Some(r) = pick(&all, i) else {
                    return Ok(());
                };
                let agent = self.model.reqs[&r].agent;
                let expected = match self.model.reqs[&r].state {
                    MState::Started { .. } | MState::Ended => false,
                    MState::Pending | MState::Failed { .. } => {
                        self.end(r)?;
                        true
                    }
                    MState::Ready { .. } => {
                        self.end(r)?;
                        self.model.assign_pending(agent);
                        true
                    }
                };
                let got = self.sut.cancel(r);
                prop_assert_eq!(got, expected, "cancel({})", r);
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                if self.model.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.model.handle_timeout(self.now);
                    self.sut.handle_timeout(self.now);
                }
            }
        }
        self.compare()
    }

    /// What the router reports equals the model, and the model's own properties hold.
    fn compare(&self) -> Result<(), TestCaseError> {
        let m = &self.model;
        prop_assert_eq!(
            self.sut.poll_timeout(),
            m.poll_timeout(),
            "poll_timeout is the earliest deadline of a waiting request"
        );
        let router = self.sut.router();
        prop_assert_eq!(router.pending_count(), m.pending_total(), "pending count");
        for agent in 0..AGENTS {
            prop_assert_eq!(
                router.pending_count_for(agent),
                m.pending_of(agent).len(),
                "pending count of agent {}",
                agent
            );
            // Work conservation, from the model's own state: nothing waits while a connection of its
            // agent is usable.
            if !m.pending_of(agent).is_empty() {
                prop_assert!(
                    m.pick(agent).is_none(),
                    "agent {} has waiting requests and a usable connection",
                    agent
                );
            }
        }
        for (h, c) in &m.conns {
            let info = router.connection(h).ok_or_else(|| {
                TestCaseError::fail(format!("connection {h} unknown to the router"))
            })?;
            prop_assert_eq!(
                (info.agent_id, info.load, info.max_streams, info.draining),
                (c.agent, m.load(*h), c.max, c.draining),
                "connection {}: (agent, load, limit, draining) reported vs modelled",
                h
            );
        }
        // FIFO needs no separate check here: the model assigns in arrival order and hands out in
        // assignment order, and `poll_assigned` is compared with it exactly.
        if self.self_check {
            router
                .check_invariants()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Ok(())
    }

    /// Brings every request to its end and checks each ended exactly once.
    fn wind_down(&mut self) -> Result<(), TestCaseError> {
        // Bounded: each round ends one started request.
        for _ in 0..10_000 {
            self.step(Op::PollAssigned)?;
            if self.started().is_empty() {
                break;
            }
            self.step(Op::Finish(0))?;
        }
        // Bounded by the number of connections.
        while !self.model.conns.is_empty() {
            self.step(Op::RemoveConn(0))?;
        }
        self.now += Duration::from_secs(3600);
        self.step(Op::Advance(0))?;
        // Bounded by the number of requests.
        for _ in 0..10_000 {
            if self
                .model
                .in_state(|s| matches!(s, MState::Failed { .. }))
                .is_empty()
            {
                break;
            }
            self.step(Op::PollFailed)?;
        }
        let open: Vec<_> = self
            .model
            .reqs
            .iter()
            .filter(|(_, q)| q.state != MState::Ended)
            .collect();
        prop_assert!(open.is_empty(), "requests never ended: {:?}", open);
        prop_assert_eq!(self.sut.poll_assigned(), None);
        prop_assert_eq!(self.sut.poll_failed(), None);
        prop_assert!(
            self.sut.router().is_empty(),
            "the router still holds something"
        );
        prop_assert!(self.sut.router().agents().is_empty());
        Ok(())
    }
}

fn run<R: Routing>(sut: R, self_check: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = Harness::new(sut, self_check);
    for op in ops {
        h.step(op)?;
    }
    h.wind_down()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_router_behaves_as_the_model_says(ops in ops()) {
        run(new_router(), true, ops)?;
    }
}

// ------------------------------------------------------------------------------- mutants

/// Routers with one deliberate bug each, to prove the model catches what the router's own
/// `check_invariants` cannot see (the wrapped router stays internally consistent).
mod mutants {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Bug {
        /// Hands out assigned requests last in, first out.
        LifoAssignments,
        /// Never assigns at once: a request that could be started is made to wait (re-queued),
        /// although a connection is usable.
        DefersAssignment,
        /// Believes every connection allows one more stream than it does.
        IgnoresStreamLimit,
        /// Reports a saturated agent as not connected and vice versa after a timeout.
        SwapsTimeoutErrors,
        /// Fails waiting requests 50 ms before their deadline.
        TimesOutEarly,
        /// Forgets to report the started requests of a removed connection.
        ForgetsLostRequests,
        /// Does not free a connection's slot when a request finishes.
        LeaksLoad,
    }

    pub const ALL: [Bug; 7] = [
        Bug::LifoAssignments,
        Bug::DefersAssignment,
        Bug::IgnoresStreamLimit,
        Bug::SwapsTimeoutErrors,
        Bug::TimesOutEarly,
        Bug::ForgetsLostRequests,
        Bug::LeaksLoad,
    ];

    pub struct Mutant {
        pub bug: Bug,
        pub inner: Router<u32, u32>,
        held: VecDeque<(u32, u32)>,
    }

    impl Mutant {
        pub fn new(bug: Bug) -> Mutant {
            Mutant {
                bug,
                inner: new_router(),
                held: VecDeque::new(),
            }
        }
    }

    impl Routing for Mutant {
        fn add_connection(&mut self, agent: u64, h: u32, max: u32, now: Instant) {
            let max = if self.bug == Bug::IgnoresStreamLimit {
                max + 1
            } else {
                max
            };
            self.inner.add_connection(agent, h, max, now).unwrap();
        }
        fn remove_connection(&mut self, h: u32) -> Vec<(u32, RouteError)> {
            let lost = self.inner.remove_connection(&h).unwrap();
            if self.bug == Bug::ForgetsLostRequests {
                Vec::new()
            } else {
                lost
            }
        }
        fn set_draining(&mut self, h: u32) {
            self.inner.set_draining(&h).unwrap();
        }
        fn set_max_streams(&mut self, h: u32, max: u32) {
            let max = if self.bug == Bug::IgnoresStreamLimit {
                max + 1
            } else {
                max
            };
            self.inner.set_max_streams(&h, max).unwrap();
        }
        fn route(&mut self, agent: u64, r: u32, deadline: Instant, now: Instant) -> Route<u32> {
            let route = self.inner.route(agent, r, deadline, now);
            if self.bug == Bug::DefersAssignment
                && let Route::Assigned(_) = route
            {
                self.inner.retry(&r).unwrap();
                return Route::Pending;
            }
            route
        }
        fn poll_assigned(&mut self) -> Option<(u32, u32)> {
            if self.bug != Bug::LifoAssignments {
                return self.inner.poll_assigned();
            }
            while let Some(a) = self.inner.poll_assigned() {
                self.held.push_back(a);
            }
            self.held.pop_back()
        }
        fn poll_failed(&mut self) -> Option<(u32, RouteError)> {
            let (r, e) = self.inner.poll_failed()?;
            if self.bug != Bug::SwapsTimeoutErrors {
                return Some((r, e));
            }
            Some((
                r,
                match e {
                    RouteError::AgentNotConnected { agent_id, waited } => {
                        RouteError::AgentSaturated { agent_id, waited }
                    }
                    RouteError::AgentSaturated { agent_id, waited } => {
                        RouteError::AgentNotConnected { agent_id, waited }
                    }
                    other => other,
                },
            ))
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.inner.poll_timeout()
        }
        fn handle_timeout(&mut self, now: Instant) {
            let now = if self.bug == Bug::TimesOutEarly {
                now + Duration::from_millis(50)
            } else {
                now
            };
            self.inner.handle_timeout(now);
        }
        fn request_finished(&mut self, r: u32) {
            if self.bug != Bug::LeaksLoad {
                self.inner.request_finished(&r).unwrap();
            }
        }
        fn cancel(&mut self, r: u32) -> bool {
            self.inner.cancel(&r)
        }
        fn retry(&mut self, r: u32) {
            self.inner.retry(&r).unwrap();
        }
        fn router(&self) -> &Router<u32, u32> {
            &self.inner
        }
    }
}

/// Every mutant is caught by the model alone (the router's self-check is off), and the wrapped
/// router still passes its own `check_invariants` at that point — the self-check could not have
/// caught these bugs.
#[test]
fn every_injected_router_bug_is_caught_by_the_model() {
    for bug in mutants::ALL {
        let mut runner = TestRunner::new(Config {
            cases: 512,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&ops(), |ops| {
            let sut = mutants::Mutant::new(bug);
            let mut h = Harness::new(sut, false);
            let mut outcome = Ok(());
            for op in ops {
                outcome = h.step(op);
                if outcome.is_err() {
                    break;
                }
            }
            if outcome.is_ok() {
                outcome = h.wind_down();
            }
            if let Err(e) = outcome {
                // Blind spot of the self-check: the wrapped router is consistent.
                prop_assert!(
                    h.sut.inner.check_invariants().is_ok(),
                    "{:?} also broke the router's own invariants: {}",
                    bug,
                    e
                );
                return Err(e);
            }
            Ok(())
        });
        let err = match result {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{bug:?}: the model did not notice in 512 cases"),
        };
        assert!(
            !err.contains("also broke"),
            "{bug:?}: caught by the self-check, not the model: {err}"
        );
        let first: String = err
            .split("minimal failing input")
            .next()
            .unwrap_or_default()
            .into();
        eprintln!(
            "{bug:?}: caught: {}",
            first.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}
