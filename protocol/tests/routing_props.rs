//! Property tests of `protocol::routing::KasRouting`, kas's routing policy.
//!
//! Random sequences of connections (added, draining, closed), requests (placed, refused, failed to
//! open, finished, cancelled), holder updates and clock advances drive the policy the way kas's
//! registry and the simulator's replicas do: a request the policy placed on a connection is "held" by
//! the driver until it reports an outcome. After every step:
//!
//! - `no_assignment_after_drain`: nothing is placed on a connection after it was reported draining or
//!   closed (no `Placement::Open`, no `RoutingEvent::Assigned`);
//! - `each_request_ends_once`: every request ends exactly once (reject, forward, failure, or
//!   finished/cancelled by the driver) and nothing ends that was not routed;
//! - `bounded_attempts`: no request is placed on a connection more than `max_attempts` times, and
//!   only refused or unprocessed requests are placed again;
//! - `no_forward_without_holder`: without another replica holding the agent nothing is forwarded, and
//!   a request is never forwarded more than `max_hops` times;
//! - `orphans_are_kept`: a request placed on a connection that closes stays known to the policy until
//!   the driver reports it (finished, cancelled, refused, open failed); reported unprocessed after
//!   the close (the refused-stream race), it is placed again like a requeued one, and the policy
//!   never fails a request as lost (`ConnectionLost`);
//! - the policy's own invariants (router invariants included) hold.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use protocol::routing::{
    DrainCause, KasRouting, Listing, OpenFailure, Placement, ReplicaId, RequestFailure,
    RequestSpec, RoutingConfig, RoutingEvent,
};

const AGENTS: u64 = 3;
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Connect {
        agent: u64,
        max_streams: u32,
    },
    Drain(usize),
    Close(usize),
    Request {
        agent: u64,
        replayable: bool,
        hops: u8,
        deadline_ms: u64,
    },
    OpenFailed(usize, u8),
    Refused(usize),
    Finish(usize),
    Cancel(usize),
    Holders {
        agent: u64,
        replica: Option<u32>,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..AGENTS, 0u32..3).prop_map(|(agent, max_streams)| Op::Connect { agent, max_streams }),
        1 => any::<usize>().prop_map(Op::Drain),
        1 => any::<usize>().prop_map(Op::Close),
        5 => (0..AGENTS + 1, any::<bool>(), 0u8..2, 0u64..2000).prop_map(|(agent, replayable, hops, deadline_ms)| {
            Op::Request { agent, replayable, hops, deadline_ms }
        }),
        2 => (any::<usize>(), 0u8..5).prop_map(|(i, k)| Op::OpenFailed(i, k)),
        2 => any::<usize>().prop_map(Op::Refused),
        3 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (0..AGENTS, proptest::option::of(0u32..3)).prop_map(|(agent, replica)| Op::Holders { agent, replica }),
        2 => (0u64..800).prop_map(Op::Advance),
    ]
}

/// What the driver knows of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Waiting,
    /// Placed on this connection; the driver is opening it.
    On(u64),
    Ended,
}

struct Harness {
    routing: KasRouting<u64, u64>,
    now: Instant,
    /// Connections ever added, in order, with their agent.
    conns: Vec<(u64, u64)>,
    /// Reported draining or closed.
    drained: BTreeSet<u64>,
    closed: BTreeSet<u64>,
    requests: BTreeMap<u64, (Held, RequestSpec)>,
    placements: BTreeMap<u64, u32>,
    /// Requests that may be placed again (the driver reported them unprocessed).
    may_replace: BTreeSet<u64>,
    /// Agents some other replica holds (live entries).
    held_elsewhere: BTreeSet<u64>,
    next_conn: u64,
    next_request: u64,
}

impl Harness {
    fn new() -> Self {
        let config = RoutingConfig {
            max_attempts: MAX_ATTEMPTS,
            replica: Some(ReplicaId(0)),
            ..RoutingConfig::default()
        };
        Harness {
            routing: KasRouting::new(config, Listing::Authoritative((0..AGENTS).collect())),
            now: Instant::now(),
            conns: Vec::new(),
            drained: BTreeSet::new(),
            closed: BTreeSet::new(),
            requests: BTreeMap::new(),
            placements: BTreeMap::new(),
            may_replace: BTreeSet::new(),
            held_elsewhere: BTreeSet::new(),
            next_conn: 1,
            next_request: 1,
        }
    }

    fn placed_on(&self, i: usize) -> Option<(u64, u64)> {
        let on: Vec<(u64, u64)> = self
            .requests
            .iter()
            .filter_map(|(r, (h, _))| match h {
                Held::On(c) => Some((*r, *c)),
                _ => None,
            })
            .collect();
        (!on.is_empty()).then(|| on[i % on.len()])
    }

    fn live_conn(&self, i: usize) -> Option<u64> {
        let live: Vec<u64> = self
            .conns
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| !self.closed.contains(c))
            .collect();
        (!live.is_empty()).then(|| live[i % live.len()])
    }

    fn place(&mut self, request: u64, conn: u64) -> Result<(), TestCaseError> {
        prop_assert!(
            !self.drained.contains(&conn),
            "no_assignment_after_drain: request {request} placed on drained connection {conn}"
        );
        let n = self.placements.entry(request).or_default();
        *n += 1;
        prop_assert!(
            *n <= MAX_ATTEMPTS,
            "bounded_attempts: request {request} placed {n} times"
        );
        prop_assert!(
            *n == 1 || self.may_replace.remove(&request),
            "request {request} placed again without being unprocessed"
        );
        let entry = self.requests.get_mut(&request).unwrap();
        prop_assert_eq!(&entry.0, &Held::Waiting, "placed while not waiting");
        entry.0 = Held::On(conn);
        Ok(())
    }

    fn end(&mut self, request: u64) -> Result<(), TestCaseError> {
        let Some(entry) = self.requests.get_mut(&request) else {
            return Err(TestCaseError::fail(format!(
                "request {request} unknown to the driver ended"
            )));
        };
        prop_assert!(
            entry.0 != Held::Ended,
            "each_request_ends_once: {request} ended twice"
        );
        entry.0 = Held::Ended;
        Ok(())
    }

    fn drain_events(&mut self) -> Result<(), TestCaseError> {
        while let Some(ev) = self.routing.poll_event() {
            match ev {
                RoutingEvent::Assigned { request, conn } => self.place(request, conn)?,
                RoutingEvent::Failed { request, failure } => {
                    if let RequestFailure::Unprocessed { attempts } = failure {
                        prop_assert!(attempts <= MAX_ATTEMPTS);
                    }
                    // orphans_are_kept: the policy never declares a request lost; whether the
                    // agent processed it is the driver's to report.
                    prop_assert!(
                        failure != RequestFailure::ConnectionLost,
                        "request {} failed as lost by the policy",
                        request
                    );
                    self.end(request)?;
                }
                RoutingEvent::Forward { request, replica } => {
                    let spec = self.requests[&request].1;
                    prop_assert!(spec.hops < 1, "forwarded beyond max_hops");
                    prop_assert!(replica != ReplicaId(0), "forwarded to itself");
                    prop_assert!(
                        self.held_elsewhere.contains(&spec.agent_id),
                        "forward without holder"
                    );
                    prop_assert!(
                        self.requests[&request].0 == Held::Waiting,
                        "only waiting requests move"
                    );
                    self.end(request)?;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Connect { agent, max_streams } => {
                let c = self.next_conn;
                self.next_conn += 1;
                self.routing
                    .handle_connected(agent, c, max_streams, self.now)
                    .unwrap();
                self.conns.push((c, agent));
            }
            Op::Drain(i) => {
                if let Some(c) = self.live_conn(i) {
                    self.drained.insert(c);
                    self.routing
                        .handle_draining(&c, DrainCause::PeerGoaway, self.now);
                }
            }
            Op::Close(i) => {
                if let Some(c) = self.live_conn(i) {
                    self.drained.insert(c);
                    self.closed.insert(c);
                    self.routing.handle_closed(&c, self.now);
                }
            }
            Op::Request {
                agent,
                replayable,
                hops,
                deadline_ms,
            } => {
                let r = self.next_request;
                self.next_request += 1;
                let spec = RequestSpec {
                    agent_id: agent,
                    deadline: self.now + Duration::from_millis(deadline_ms),
                    replayable,
                    hops,
                };
                self.requests.insert(r, (Held::Waiting, spec));
                match self.routing.handle_request(r, spec, self.now) {
                    Placement::Open(c) => self.place(r, c)?,
                    Placement::Wait => {}
                    Placement::Forward(replica) => {
                        prop_assert!(hops < 1 && replica != ReplicaId(0));
                        prop_assert!(
                            self.held_elsewhere.contains(&agent),
                            "forward without holder"
                        );
                        self.end(r)?;
                    }
                    Placement::Reject(f) => {
                        if agent >= AGENTS {
                            prop_assert_eq!(f, RequestFailure::UnknownAgent);
                        } else {
                            prop_assert!(f != RequestFailure::UnknownAgent);
                        }
                        self.end(r)?;
                    }
                }
            }
            Op::OpenFailed(i, kind) => {
                if let Some((r, c)) = self.placed_on(i) {
                    let failure = match kind {
                        0 => OpenFailure::GoingAway,
                        1 => OpenFailure::IdsExhausted,
                        2 => OpenFailure::Closed,
                        3 => OpenFailure::LimitReached { limit: 1 },
                        _ => OpenFailure::HeadTooLarge { len: 10, max: 5 },
                    };
                    if matches!(kind, 0..=2) {
                        self.drained.insert(c);
                    }
                    self.requests.get_mut(&r).unwrap().0 = Held::Waiting;
                    self.may_replace.insert(r);
                    self.routing.handle_open_failed(&r, failure, self.now);
                }
            }
            Op::Refused(i) => {
                if let Some((r, _)) = self.placed_on(i) {
                    self.requests.get_mut(&r).unwrap().0 = Held::Waiting;
                    if self.requests[&r].1.replayable {
                        self.may_replace.insert(r);
                    }
                    self.routing.handle_refused(&r, self.now);
                }
            }
            Op::Finish(i) => {
                if let Some((r, _)) = self.placed_on(i) {
                    self.end(r)?;
                    self.routing.handle_finished(&r);
                }
            }
            Op::Cancel(i) => {
                let open: Vec<u64> = self
                    .requests
                    .iter()
                    .filter(|(_, (h, _))| *h != Held::Ended)
                    .map(|(r, _)| *r)
                    .collect();
                if !open.is_empty() {
                    let r = open[i % open.len()];
                    self.end(r)?;
                    self.routing.handle_cancelled(&r);
                }
            }
            Op::Holders { agent, replica } => {
                let holders: Vec<(ReplicaId, Instant)> = replica
                    .map(|n| (ReplicaId(n), self.now + Duration::from_secs(3600)))
                    .into_iter()
                    .collect();
                if replica.is_some_and(|n| n != 0) {
                    self.held_elsewhere.insert(agent);
                } else {
                    self.held_elsewhere.remove(&agent);
                }
                self.routing.handle_holders(agent, &holders, self.now);
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                if self.routing.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.routing.handle_timeout(self.now);
                }
            }
        }
        self.drain_events()?;
        self.routing
            .check_invariants()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // orphans_are_kept: a connection that closed orphans the requests placed on it; the driver
        // still holds them and reports each.
        let lost: Vec<u64> = self
            .requests
            .iter()
            .filter(|(r, (h, _))| {
                matches!(h, Held::On(c) if self.closed.contains(c)) && !self.routing.knows(r)
            })
            .map(|(r, _)| *r)
            .collect();
        prop_assert!(lost.is_empty(), "requests lost without an event: {lost:?}");
        // The driver and the policy agree on which requests are live.
        for (r, (h, _)) in &self.requests {
            prop_assert_eq!(
                *h != Held::Ended,
                self.routing.knows(r),
                "request {} live?",
                r
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn routing_policy_rules_hold(ops in proptest::collection::vec(op(), 1..120)) {
        let mut h = Harness::new();
        for op in ops {
            h.apply(op)?;
        }
        // Finishing everything placed and timing out everything waiting ends every request.
        h.now += Duration::from_secs(3600);
        h.routing.handle_timeout(h.now);
        h.drain_events()?;
        let placed: Vec<u64> = h.requests.iter().filter(|(_, (s, _))| matches!(s, Held::On(_))).map(|(r, _)| *r).collect();
        for r in placed {
            h.end(r)?;
            h.routing.handle_finished(&r);
            h.drain_events()?;
        }
        h.now += Duration::from_secs(3600);
        h.routing.handle_timeout(h.now);
        h.drain_events()?;
        for (r, (s, _)) in &h.requests {
            prop_assert_eq!(s, &Held::Ended, "request {} never ended", r);
        }
        prop_assert_eq!(h.routing.stats().router.pending + h.routing.stats().router.assigned, 0);
    }
}

#[test]
fn no_assignment_after_drain() {
    // The proof table's pure twin of kas/tests/goaway_routing.rs: A drains, B is live; a request
    // after the drain goes to B at once, with no reroute.
    let now = Instant::now();
    let mut r = KasRouting::<u64, u64>::new(RoutingConfig::default(), Listing::Open);
    r.handle_connected(1, 1, 100, now).unwrap();
    r.handle_connected(1, 2, 100, now).unwrap();
    r.handle_draining(&1, DrainCause::PeerGoaway, now);
    let spec = RequestSpec {
        agent_id: 1,
        deadline: now + Duration::from_secs(5),
        replayable: true,
        hops: 0,
    };
    for request in 0..50 {
        assert_eq!(r.handle_request(request, spec, now), Placement::Open(2));
    }
    assert_eq!(r.stats().rerouted, 0);
    assert!(r.poll_event().is_none());
}
