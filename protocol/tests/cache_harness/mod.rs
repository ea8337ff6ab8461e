//! Shared test harness: one agentk cache and one kas mirror joined by a lossy, manually pumped link.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use prost::Message;
use protocol::cache::proto::{self, AgentToServer, ServerToAgent};
use protocol::cache::{
    AgentCache, Mirror, MirrorOutcome, PublisherConfig, ResourceKind, ViewSpec, Views, WatchEvent,
    decode_agent_message, decode_server_message, default_views,
};
use serde_json::{Value, json};

pub const WINDOW: Duration = Duration::from_millis(100);
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub fn config(epoch: u64) -> PublisherConfig {
    PublisherConfig {
        window: WINDOW,
        ack_timeout: ACK_TIMEOUT,
        ..PublisherConfig::new(NonZeroU64::new(epoch).unwrap_or(NonZeroU64::MIN))
    }
}

pub fn agent(epoch: u64) -> AgentCache {
    agent_with(epoch, &default_views(), config(epoch))
}

pub fn agent_with(_epoch: u64, specs: &[ViewSpec], config: PublisherConfig) -> AgentCache {
    AgentCache::new(specs, config).unwrap_or_else(|e| panic!("{e}"))
}

pub fn pod(ns: &str, name: &str, uid: &str, rv: u64, phase: &str) -> Value {
    json!({"metadata": {"namespace": ns, "name": name, "uid": uid, "resourceVersion": rv.to_string()},
           "status": {"phase": phase}})
}

pub fn node(name: &str, uid: &str, rv: u64, ready: &str) -> Value {
    json!({"metadata": {"name": name, "uid": uid, "resourceVersion": rv.to_string()},
           "status": {"conditions": [{"type": "Ready", "status": ready}]}})
}

pub fn deployment(ns: &str, name: &str, uid: &str, rv: u64, desired: u64, available: u64) -> Value {
    json!({"metadata": {"namespace": ns, "name": name, "uid": uid, "resourceVersion": rv.to_string()},
           "spec": {"replicas": desired},
           "status": {"availableReplicas": available, "readyReplicas": available}})
}

/// What the link did to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
}

pub struct Link {
    pub agent: AgentCache,
    pub mirror: Mirror,
    pub now: Instant,
    pub connected: bool,
    pub to_kas: VecDeque<AgentToServer>,
    pub to_agent: VecDeque<ServerToAgent>,
    /// Encoded bytes of every message agentk sent.
    pub bytes_sent: usize,
    pub messages_sent: usize,
    pub outcomes: Vec<MirrorOutcome>,
    /// The view specs agentk runs (the oracle evaluates them).
    pub specs: Vec<ViewSpec>,
}

fn round_trip_agent(m: &AgentToServer) -> AgentToServer {
    decode_agent_message(&m.encode_to_vec()).unwrap_or_else(|e| panic!("{e}"))
}

fn round_trip_server(m: &ServerToAgent) -> ServerToAgent {
    decode_server_message(&m.encode_to_vec()).unwrap_or_else(|e| panic!("{e}"))
}

impl Link {
    pub fn new(agent: AgentCache) -> Self {
        Link::with_specs(agent, default_views())
    }

    /// A link whose agent runs `specs` (the oracle evaluates the same).
    pub fn with_specs(agent: AgentCache, specs: Vec<ViewSpec>) -> Self {
        Link {
            specs,
            agent,
            mirror: Mirror::new(),
            now: Instant::now(),
            connected: false,
            to_kas: VecDeque::new(),
            to_agent: VecDeque::new(),
            bytes_sent: 0,
            messages_sent: 0,
            outcomes: Vec::new(),
        }
    }

    pub fn apply(&mut self, kind: &ResourceKind, event: WatchEvent) {
        // Events the store rejects are fine here; the tests check state, not acceptance.
        let _ = self.agent.apply(kind, event);
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    pub fn connect(&mut self) {
        if self.connected {
            return;
        }
        self.connected = true;
        self.agent.on_connected(self.now);
        let request = self.mirror.on_connected(self.now);
        self.to_agent.push_back(ServerToAgent {
            msg: Some(proto::server_to_agent::Msg::Resync(request)),
        });
    }

    pub fn disconnect(&mut self) {
        self.connected = false;
        self.agent.on_disconnected();
        self.mirror.on_disconnected();
        self.to_kas.clear();
        self.to_agent.clear();
    }

    /// Replaces the agent (a new process: new epoch, empty store); the link drops.
    pub fn restart_agent(&mut self, agent: AgentCache) {
        self.disconnect();
        self.agent = agent;
    }

    /// Replaces the mirror (kas restarted); the link drops.
    pub fn restart_kas(&mut self) {
        self.disconnect();
        self.mirror = Mirror::new();
    }

    /// Collects everything agentk wants to send now.
    pub fn poll(&mut self) -> usize {
        let mut n = 0;
        for _ in 0..1000 {
            let Some(m) = self.agent.poll_transmit(self.now) else {
                break;
            };
            self.bytes_sent += m.encoded_len();
            self.messages_sent += 1;
            if self.connected {
                self.to_kas.push_back(round_trip_agent(&m));
            }
            n += 1;
        }
        n
    }

    /// Delivers (or drops) the oldest message towards kas.
    pub fn kas_receive(&mut self, fate: Fate) -> bool {
        let Some(m) = self.to_kas.pop_front() else {
            return false;
        };
        if fate == Fate::Drop {
            return true;
        }
        let outcome = self
            .mirror
            .handle(&m, self.now)
            .unwrap_or_else(|e| panic!("mirror rejected {m:?}: {e}"));
        let reply = match &outcome {
            MirrorOutcome::Applied { ack, .. } | MirrorOutcome::Ignored { ack: Some(ack) } => {
                Some(proto::server_to_agent::Msg::Ack(*ack))
            }
            MirrorOutcome::Ignored { ack: None } => None,
            MirrorOutcome::ResyncNeeded { request } => {
                Some(proto::server_to_agent::Msg::Resync(*request))
            }
        };
        if let Some(msg) = reply {
            self.to_agent.push_back(ServerToAgent { msg: Some(msg) });
        }
        self.outcomes.push(outcome);
        true
    }

    /// Delivers (or drops) the oldest message towards agentk.
    pub fn agent_receive(&mut self, fate: Fate) -> bool {
        let Some(m) = self.to_agent.pop_front() else {
            return false;
        };
        if fate == Fate::Deliver {
            self.agent.handle(&round_trip_server(&m), self.now);
        }
        true
    }

    /// Delivers everything in both directions (no loss) until nothing moves at the current time.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = self.poll() > 0;
            while self.kas_receive(Fate::Deliver) {
                moved = true;
            }
            while self.agent_receive(Fate::Deliver) {
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("link did not quiesce");
    }

    /// Connects if needed and runs the clock forward until agentk has nothing left to send and kas has
    /// acknowledged everything.
    pub fn settle(&mut self) {
        self.connect();
        for _ in 0..200 {
            self.pump();
            if self.agent.publisher().is_idle() {
                return;
            }
            let step = match self.agent.poll_timeout() {
                Some(t) if t > self.now => t - self.now,
                _ => WINDOW,
            };
            self.advance(step);
        }
        panic!("did not settle: {:?}", self.agent.publisher());
    }

    /// The reference: the views the naive, independent evaluator computes over agentk's store (it
    /// shares no code with the production evaluator; see `protocol::testing::naive_views`).
    pub fn reference(&self) -> Views {
        protocol::testing::naive_views::evaluate(&self.specs, self.agent.store().objects())
    }

    /// The production evaluator's from-scratch recomputation over agentk's store.
    pub fn recomputed(&self) -> Views {
        self.agent.views().recompute(self.agent.store().objects())
    }
}
