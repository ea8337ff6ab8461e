//! Property test of `protocol::router`: random operation sequences against a model of what the caller
//! observed. Checks the router's invariants after every step, that every request ends exactly once
//! (started then finished or lost, failed with a typed error, cancelled, or rejected), and that requests are
//! only ever handed out on a non-draining connection of their own agent with spare capacity, chosen as the
//! least loaded one.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use protocol::router::{Route, RouteError, Router, RouterConfig};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Inside the router, not handed out.
    Waiting,
    /// Handed out on this connection.
    Started(u32),
    Ended,
}

#[derive(Debug)]
struct ModelReq {
    agent: u64,
    deadline: Instant,
    status: Status,
}

struct Harness {
    router: Router<u32, u32>,
    now: Instant,
    /// live connections: handle -> (agent, draining)
    conns: BTreeMap<u32, (u64, bool)>,
    reqs: BTreeMap<u32, ModelReq>,
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

impl Harness {
    fn new() -> Self {
        Harness {
            router: Router::new(RouterConfig {
                max_pending_per_agent: PER_AGENT,
                max_pending_total: TOTAL,
            }),
            now: Instant::now(),
            conns: BTreeMap::new(),
            reqs: BTreeMap::new(),
            next_handle: 0,
            next_req: 0,
        }
    }

    fn handles(&self) -> Vec<u32> {
        self.conns.keys().copied().collect()
    }

    fn started(&self) -> Vec<u32> {
        self.reqs
            .iter()
            .filter(|(_, q)| matches!(q.status, Status::Started(_)))
            .map(|(r, _)| *r)
            .collect()
    }

    fn end(&mut self, r: u32) -> Result<(), TestCaseError> {
        let q = self
            .reqs
            .get_mut(&r)
            .ok_or_else(|| TestCaseError::fail(format!("unknown request {r}")))?;
        prop_assert_ne!(q.status, Status::Ended, "request {} ended twice", r);
        q.status = Status::Ended;
        Ok(())
    }

    /// A request handed out on `h` must be waiting, and `h` a live non-draining connection of its agent.
    fn start(&mut self, r: u32, h: u32) -> Result<(), TestCaseError> {
        let q = self
            .reqs
            .get_mut(&r)
            .ok_or_else(|| TestCaseError::fail(format!("unknown request {r}")))?;
        prop_assert_eq!(q.status, Status::Waiting, "request {} handed out twice", r);
        let (agent, draining) = *self
            .conns
            .get(&h)
            .ok_or_else(|| TestCaseError::fail("dead connection"))?;
        prop_assert_eq!(
            agent,
            q.agent,
            "request {} given to another agent's connection",
            r
        );
        prop_assert!(
            !draining,
            "request {} given to draining connection {}",
            r,
            h
        );
        q.status = Status::Started(h);
        let info = self.router.connection(&h).unwrap();
        prop_assert!(
            info.load <= info.max_streams as usize,
            "connection {} over its limit: {:?}",
            h,
            info
        );
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::AddConn { agent, max_streams } => {
                let h = self.next_handle;
                self.next_handle += 1;
                self.router
                    .add_connection(agent, h, max_streams, self.now)
                    .unwrap();
                self.conns.insert(h, (agent, false));
            }
            Op::RemoveConn(i) => {
                let Some(h) = pick(&self.handles(), i) else {
                    return Ok(());
                };
                let lost = self.router.remove_connection(&h).unwrap();
                self.conns.remove(&h);
                let agent_of_h = |q: &ModelReq| q.agent;
                for (r, e) in &lost {
                    let q = &self.reqs[r];
                    prop_assert_eq!(
                        q.status,
                        Status::Started(h),
                        "lost request {} was not started on {}",
                        r,
                        h
                    );
                    prop_assert_eq!(
                        e,
                        &RouteError::ConnectionLost {
                            agent_id: agent_of_h(q)
                        }
                    );
                }
                for (r, _) in lost {
                    self.end(r)?;
                }
                let stranded: Vec<u32> = self
                    .started()
                    .into_iter()
                    .filter(|r| self.reqs[r].status == Status::Started(h))
                    .collect();
                prop_assert!(
                    stranded.is_empty(),
                    "started requests {:?} on removed connection not reported",
                    stranded
                );
            }
            Op::Drain(i) => {
                let Some(h) = pick(&self.handles(), i) else {
                    return Ok(());
                };
                self.router.set_draining(&h).unwrap();
                if let Some(c) = self.conns.get_mut(&h) {
                    c.1 = true;
                }
            }
            Op::SetMax(i, n) => {
                let Some(h) = pick(&self.handles(), i) else {
                    return Ok(());
                };
                self.router.set_max_streams(&h, n).unwrap();
            }
            Op::Route { agent, deadline_ms } => {
                let r = self.next_req;
                self.next_req += 1;
                let deadline = self.now + Duration::from_millis(deadline_ms);
                let before = self.router.connections(agent);
                let usable: Vec<_> = before
                    .iter()
                    .filter(|c| !c.draining && c.load < c.max_streams as usize)
                    .collect();
                let pending_agent = self.router.pending_count_for(agent);
                let pending_total = self.router.pending_count();
                self.reqs.insert(
                    r,
                    ModelReq {
                        agent,
                        deadline,
                        status: Status::Waiting,
                    },
                );
                match self.router.route(agent, r, deadline, self.now) {
                    Route::Assigned(h) => {
                        let min = usable.iter().map(|c| c.load).min();
                        let chosen = usable.iter().find(|c| c.handle == h).map(|c| c.load);
                        prop_assert!(chosen.is_some(), "assigned to unusable connection {}", h);
                        prop_assert_eq!(chosen, min, "not the least loaded connection");
                        self.start(r, h)?;
                    }
                    Route::Pending => {
                        prop_assert!(
                            usable.is_empty(),
                            "pending although a connection was usable"
                        );
                        prop_assert!(deadline > self.now);
                    }
                    Route::Rejected(RouteError::TooManyPending { agent_id }) => {
                        prop_assert_eq!(agent_id, agent);
                        prop_assert!(usable.is_empty());
                        prop_assert!(pending_agent >= PER_AGENT || pending_total >= TOTAL);
                        self.end(r)?;
                    }
                    Route::Rejected(
                        RouteError::AgentNotConnected { agent_id, .. }
                        | RouteError::AgentSaturated { agent_id, .. },
                    ) => {
                        prop_assert_eq!(agent_id, agent);
                        prop_assert!(usable.is_empty() && deadline <= self.now);
                        self.end(r)?;
                    }
                    Route::Rejected(other) => {
                        prop_assert!(false, "unexpected rejection {:?}", other)
                    }
                }
            }
            Op::PollAssigned => {
                if let Some((r, h)) = self.router.poll_assigned() {
                    self.start(r, h)?;
                }
            }
            Op::PollFailed => {
                if let Some((r, e)) = self.router.poll_failed() {
                    let q = &self.reqs[&r];
                    prop_assert_eq!(q.status, Status::Waiting);
                    prop_assert!(q.deadline <= self.now, "failed before its deadline");
                    match e {
                        RouteError::AgentNotConnected { agent_id, .. }
                        | RouteError::AgentSaturated { agent_id, .. } => {
                            prop_assert_eq!(agent_id, q.agent)
                        }
                        other => prop_assert!(false, "unexpected failure {:?}", other),
                    }
                    self.end(r)?;
                }
            }
            Op::Finish(i) => {
                let Some(r) = pick(&self.started(), i) else {
                    return Ok(());
                };
                self.router.request_finished(&r).unwrap();
                self.end(r)?;
            }
            Op::Retry(i) => {
                let Some(r) = pick(&self.started(), i) else {
                    return Ok(());
                };
                self.router.retry(&r).unwrap();
                if let Some(q) = self.reqs.get_mut(&r) {
                    q.status = Status::Waiting;
                }
            }
            Op::Cancel(i) => {
                let all: Vec<u32> = self.reqs.keys().copied().collect();
                let Some(r) = pick(&all, i) else {
                    return Ok(());
                };
                let status = self.reqs[&r].status;
                let cancelled = self.router.cancel(&r);
                prop_assert_eq!(
                    cancelled,
                    status == Status::Waiting,
                    "cancel({}) in {:?}",
                    r,
                    status
                );
                if cancelled {
                    self.end(r)?;
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                if self.router.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.router.handle_timeout(self.now);
                }
            }
        }
        // poll_timeout is the earliest deadline among requests still waiting unassigned
        if let Some(t) = self.router.poll_timeout() {
            prop_assert!(
                self.reqs
                    .values()
                    .any(|q| q.status == Status::Waiting && q.deadline == t)
            );
        }
        self.router
            .check_invariants()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        Ok(())
    }

    /// Brings every request to its end and checks each ended exactly once.
    fn wind_down(&mut self) -> Result<(), TestCaseError> {
        // finish everything started, including what becomes ready meanwhile (bounded: each round ends one)
        for _ in 0..10_000 {
            if let Some((r, h)) = self.router.poll_assigned() {
                self.start(r, h)?;
            }
            let Some(r) = self.started().first().copied() else {
                break;
            };
            self.router.request_finished(&r).unwrap();
            self.end(r)?;
        }
        for h in self.handles() {
            let lost = self.router.remove_connection(&h).unwrap();
            prop_assert!(lost.is_empty(), "nothing was started, yet {:?} lost", lost);
            self.conns.remove(&h);
        }
        prop_assert_eq!(self.router.poll_assigned(), None);
        self.now += Duration::from_secs(3600);
        self.router.handle_timeout(self.now);
        prop_assert_eq!(self.router.poll_timeout(), None);
        for _ in 0..10_000 {
            let Some((r, _)) = self.router.poll_failed() else {
                break;
            };
            self.end(r)?;
        }
        let open: Vec<_> = self
            .reqs
            .iter()
            .filter(|(_, q)| q.status != Status::Ended)
            .collect();
        prop_assert!(open.is_empty(), "requests never ended: {:?}", open);
        prop_assert!(self.router.is_empty());
        prop_assert!(self.router.agents().is_empty());
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_request_ends_exactly_once(ops in proptest::collection::vec(op(), 0..120)) {
        let mut h = Harness::new();
        for op in ops {
            h.step(op)?;
        }
        h.wind_down()?;
    }
}
