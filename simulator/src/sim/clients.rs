//! Clients of kas's API and the ledger that proves every request ends exactly once.
//!
//! Requests arrive as one Poisson process over all agents. Each is entered in the [`Ledger`] when it
//! is issued and must leave it exactly once, with an [`Outcome`]: a response, or a typed error. Ending
//! a request that is not open (twice, or never issued) is a violation; so is a request still open at
//! the end of the run.

use std::collections::BTreeMap;

use protocol::routing::RequestFailure;

use rand::Rng;

use super::clock::SimTime;
use super::world::{Ev, World};

/// How a request ended, as its client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A complete response with this HTTP status.
    Response(u32),
    /// No kas replica was reachable.
    KasUnavailable,
    /// The kas handling the request died.
    KasFailed,
    AgentNotConnected,
    AgentSaturated,
    TooManyPending,
    ConnectionLost,
    /// The tunnel stream was reset.
    StreamReset,
    /// The client's deadline passed (kas reset the stream and answered 504).
    Timeout,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Response(_) => "ok",
            Outcome::KasUnavailable => "kas_unavailable",
            Outcome::KasFailed => "kas_failed",
            Outcome::AgentNotConnected => "agent_not_connected",
            Outcome::AgentSaturated => "agent_saturated",
            Outcome::TooManyPending => "too_many_pending",
            Outcome::ConnectionLost => "connection_lost",
            Outcome::StreamReset => "stream_reset",
            Outcome::Timeout => "timeout",
        }
    }
}

impl From<&RequestFailure> for Outcome {
    /// What the client sees when kas's routing policy fails its request.
    fn from(e: &RequestFailure) -> Outcome {
        match e {
            RequestFailure::NotConnected { .. } => Outcome::AgentNotConnected,
            RequestFailure::Saturated { .. } => Outcome::AgentSaturated,
            RequestFailure::TooManyPending => Outcome::TooManyPending,
            RequestFailure::ConnectionLost => Outcome::ConnectionLost,
            RequestFailure::ShuttingDown => Outcome::KasUnavailable,
            // Sent back by every replica it was forwarded to (the gateway gave up).
            RequestFailure::NotHeld => Outcome::AgentNotConnected,
            // Refused after every attempt, or a head the agent does not take: an error answer.
            RequestFailure::Unprocessed { .. } | RequestFailure::HeadTooLarge { .. } => {
                Outcome::StreamReset
            }
            // The world only issues requests for agents that exist, with unique tokens: never
            // happens; still a typed error for the client.
            RequestFailure::UnknownAgent | RequestFailure::DuplicateRequest => Outcome::StreamReset,
        }
    }
}

/// An open request.
#[derive(Debug, Clone, Copy)]
pub struct OpenRequest {
    pub agent: u64,
    pub kind: usize,
    pub issued: SimTime,
    pub deadline: SimTime,
    /// The replica holding it; `None` while it travels between replicas.
    pub at_kas: Option<usize>,
    /// Times a replica forwarded it to another (the policy's `max_hops`).
    pub hops: u8,
    /// The replica the client's request reached first: a replica it was forwarded to sends it back
    /// there when it no longer holds the agent (the policy's rule 5a).
    pub gateway: Option<usize>,
    /// Times it was sent back to its gateway (bounded by the replicas, as kas's gateway leaves one
    /// more replica out each time).
    pub returns: u8,
}

/// A request ended that was not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOpen(pub u64);

/// One completed request, for the statistics.
#[derive(Debug, Clone, Copy)]
pub struct Completed {
    pub outcome: Outcome,
    pub latency_ns: u64,
    pub kas: Option<usize>,
}

/// Every request's life (see the module docs).
#[derive(Debug, Default)]
pub struct Ledger {
    open: BTreeMap<u64, OpenRequest>,
    next_id: u64,
    issued: u64,
    outcomes: BTreeMap<&'static str, u64>,
    sent_back: u64,
}

impl Ledger {
    /// Opens a new request and returns its id.
    pub fn issue(&mut self, agent: u64, kind: usize, issued: SimTime, deadline: SimTime) -> u64 {
        self.next_id += 1;
        self.issued += 1;
        self.open.insert(
            self.next_id,
            OpenRequest {
                agent,
                kind,
                issued,
                deadline,
                at_kas: None,
                hops: 0,
                gateway: None,
                returns: 0,
            },
        );
        self.next_id
    }

    pub fn get(&self, id: u64) -> Option<&OpenRequest> {
        self.open.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut OpenRequest> {
        self.open.get_mut(&id)
    }

    /// Ends a request; an error if it was not open.
    pub fn complete(
        &mut self,
        id: u64,
        outcome: Outcome,
        now: SimTime,
    ) -> Result<Completed, NotOpen> {
        let r = self.open.remove(&id).ok_or(NotOpen(id))?;
        *self.outcomes.entry(outcome.name()).or_default() += 1;
        Ok(Completed {
            outcome,
            latency_ns: now.0.saturating_sub(r.issued.0),
            kas: r.at_kas,
        })
    }

    pub fn issued(&self) -> u64 {
        self.issued
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The oldest open request.
    pub fn first_open(&self) -> Option<(u64, &OpenRequest)> {
        self.open.iter().next().map(|(id, r)| (*id, r))
    }

    /// Ended requests by outcome name.
    pub fn outcomes(&self) -> &BTreeMap<&'static str, u64> {
        &self.outcomes
    }

    /// A replica a request was forwarded to sent it back to its gateway (the policy's rule 5a).
    pub fn note_sent_back(&mut self) {
        self.sent_back += 1;
    }

    /// Times requests were sent back to their gateway.
    pub fn sent_back(&self) -> u64 {
        self.sent_back
    }
}

impl World {
    /// A client sends a request for a uniformly random agent through the load balancer.
    pub(super) fn client_request(&mut self) {
        if self.now >= self.quiet_from {
            return;
        }
        let next = self.now.plus(self.exp(self.sc.clients.rate));
        if next < self.quiet_from {
            self.queue.push(next, Ev::ClientRequest);
        }
        let agent = self.rng.random_range(0..self.agents.len()) as u64 + 1;
        let total = self.mix_cdf.last().copied().unwrap_or(0.0);
        let u = self.rng.random::<f64>() * total;
        let kind = self
            .mix_cdf
            .partition_point(|c| *c <= u)
            .min(self.mix_cdf.len().saturating_sub(1));
        self.issue_request(agent, kind);
    }

    /// Issues a request of `kind` for `agent` now, through the load balancer.
    pub(super) fn issue_request(&mut self, agent: u64, kind: usize) {
        let deadline = self.now.plus(self.sc.clients.timeout);
        let id = self.ledger.issue(agent, kind, self.now, deadline);
        self.queue
            .push(deadline, Ev::RequestDeadline { request: id });
        let up: Vec<usize> = (0..self.kas.len()).filter(|&k| self.lb_up[k]).collect();
        if up.is_empty() {
            self.complete(id, Outcome::KasUnavailable);
            return;
        }
        let front = up[self.rng.random_range(0..up.len())];
        self.dispatch_request(id, Some(front));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exactly_once() {
        let mut l = Ledger::default();
        let a = l.issue(1, 0, SimTime(10), SimTime(100));
        let b = l.issue(2, 0, SimTime(20), SimTime(100));
        assert_eq!(l.open_count(), 2);
        let c = l.complete(a, Outcome::Response(200), SimTime(50)).unwrap();
        assert_eq!(c.latency_ns, 40);
        assert!(matches!(l.complete(a, Outcome::Timeout, SimTime(60)), Err(NotOpen(x)) if x == a));
        assert_eq!(l.first_open().map(|(id, _)| id), Some(b));
        assert_eq!(l.outcomes().get("ok"), Some(&1));
    }
}
