//! [`MirrorTable`] and [`ViewsStream`]: kas's side of the `views` stream (see the [module](super)
//! documentation).
//!
//! - **Streams.** Each `views` stream an agent opens is a [`ViewsStream`]
//!   ([`MirrorTable::handle_open`], which queues the first resync request on it). During a GOAWAY
//!   handover the replacement connection's stream can open before the old one ended: the mirror is
//!   marked disconnected ([`MirrorEvent::Disconnected`]) only when the agent's *last* stream ends
//!   ([`MirrorTable::handle_closed`]). Streams per agent and mirrored agents are bounded
//!   ([`ViewsRefusal`], answered 503).
//! - **Messages.** [`MirrorTable::handle_body`] takes the stream's octets, however split: view
//!   snapshots and updates go to the agent's [`Mirror`] (acks and resync requests are queued on the
//!   stream, [`ViewsStream::poll_transmit`]); object changes are validated whole and become one
//!   [`MirrorEvent::Objects`]. Anything that does not frame, decode or apply is a
//!   [`ViewsViolation`]: the mirror is unchanged by the offending message and the driver resets the
//!   stream.
//! - **Retention** (optional): a mirror without streams for `retention` is evicted
//!   ([`MirrorTable::handle_timeout`]).
//!
//! Invariants (`debug_assert!`ed after every mutation): every stream handed out reaches
//! [`MirrorTable::handle_closed`] exactly once; an agent's stream count equals its open streams; a
//! mirror is connected exactly when it has a stream; no eviction while a stream is open.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{VIEWS_METHOD, ViewsViolation, tunnel_error};
use crate::cache::messages::{MessageDecoder, encode_message};
use crate::cache::mirror::{Mirror, MirrorOutcome};
use crate::cache::proto::{self, agent_to_server::Msg as In, server_to_agent::Msg as Out};
use crate::cache::store::ObjectChange;
use crate::cache::table::ViewChange;
use crate::cache::wire::decode_agent_message;
use crate::proto::{RequestHead, ResponseHead};

/// Tuning of a [`MirrorTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTableConfig {
    /// Agents mirrored at most (default 10 000).
    pub max_agents: usize,
    /// `views` streams one agent may have open at once (default 4; two overlap during a GOAWAY
    /// handover).
    pub max_streams_per_agent: u32,
    /// An unanswered resync request is repeated after this long (default 1 s).
    pub resync_interval: Duration,
    /// A mirror without streams is evicted after this long (`None`, kas's default: kept).
    pub retention: Option<Duration>,
}

impl Default for MirrorTableConfig {
    fn default() -> Self {
        MirrorTableConfig {
            max_agents: 10_000,
            max_streams_per_agent: 4,
            resync_interval: Duration::from_secs(1),
            retention: None,
        }
    }
}

/// Why a `views` request is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewsRefusal {
    /// The method is not `SYNC` (the method as received, at most 64 characters): answered 400.
    #[error("views request with method {0:?}")]
    BadMethod(String),
    /// kas mirrors as many agents as it may: answered 503.
    #[error("kas mirrors the views of {0} agents already")]
    TooManyAgents(usize),
    /// The agent has too many views streams open: answered 503.
    #[error("agent {agent_id} has {streams} views streams open already")]
    TooManyStreams {
        /// The agent.
        agent_id: u64,
        /// Its open streams.
        streams: u32,
    },
}

impl ViewsRefusal {
    /// The response head answering the refused request (with its `x-tunnel-error` reason).
    pub fn response_head(&self) -> ResponseHead {
        let (status, reason) = match self {
            ViewsRefusal::BadMethod(_) => (400, "bad-method"),
            ViewsRefusal::TooManyAgents(_) | ViewsRefusal::TooManyStreams { .. } => {
                (503, "no-capacity")
            }
        };
        ResponseHead {
            status,
            headers: vec![tunnel_error(reason)],
        }
    }
}

/// How a stream's body ended, for the driver's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// agentk finished its direction; kas finishes its own.
    Finished,
    /// The stream failed (reset, connection lost, write failed).
    Failed(String),
    /// agentk broke the protocol: the stream was reset with `ErrorCode::Protocol`.
    Violation(String),
    /// Refused before it started (answered 400 or 503).
    Refused(ViewsRefusal),
}

/// What the driver publishes or logs.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorEvent {
    /// The agent's first stream opened.
    Connected {
        /// The agent.
        agent_id: u64,
    },
    /// The agent's last stream ended (its views are kept).
    Disconnected {
        /// The agent.
        agent_id: u64,
    },
    /// The mirror was dropped after the retention period.
    Evicted {
        /// The agent.
        agent_id: u64,
    },
    /// Rows of the agent's views changed (in (view, key) order).
    ViewsChanged {
        /// The agent.
        agent_id: u64,
        /// The changed rows.
        changes: Vec<ViewChange>,
    },
    /// The agent reported object changes.
    Objects {
        /// The agent.
        agent_id: u64,
        /// The changes.
        changes: Vec<ObjectChange>,
    },
    /// The mirror cannot apply what it got and asked for a resync.
    ResyncRequested {
        /// The agent.
        agent_id: u64,
        /// The request sent.
        request: proto::ResyncRequest,
    },
}

/// One open `views` stream of one agent. Hand it back to [`MirrorTable::handle_closed`] exactly
/// once, however the stream ends.
#[derive(Debug)]
pub struct ViewsStream {
    agent_id: u64,
    id: u64,
    decoder: MessageDecoder,
    out: VecDeque<Bytes>,
    messages: u64,
}

impl ViewsStream {
    /// The agent.
    pub fn agent_id(&self) -> u64 {
        self.agent_id
    }

    /// The next framed message for agentk (an ack or a resync request).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// Messages from agentk handled so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Octets of an incomplete message buffered.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered() + self.out.iter().map(Bytes::len).sum::<usize>()
    }

    fn queue(&mut self, msg: Out) {
        self.out
            .push_back(encode_message(&proto::ServerToAgent { msg: Some(msg) }));
    }
}

#[derive(Debug)]
struct AgentMirror {
    mirror: Mirror,
    streams: BTreeSet<u64>,
    /// When the last stream ended (for retention).
    released_at: Option<Instant>,
}

/// Every agent's mirror, fed by its `views` streams (see the module documentation).
#[derive(Debug)]
pub struct MirrorTable {
    config: MirrorTableConfig,
    agents: BTreeMap<u64, AgentMirror>,
    next_stream: u64,
    events: VecDeque<MirrorEvent>,
}

impl MirrorTable {
    /// An empty table.
    pub fn new(config: MirrorTableConfig) -> MirrorTable {
        MirrorTable {
            config,
            agents: BTreeMap::new(),
            next_stream: 1,
            events: VecDeque::new(),
        }
    }

    /// The table's tuning.
    pub fn config(&self) -> &MirrorTableConfig {
        &self.config
    }

    /// Agent `agent_id` opened a `views` stream with `head`: the stream (with the first resync
    /// request queued on it) and the 200 to answer, or why it is refused.
    pub fn handle_open(
        &mut self,
        agent_id: u64,
        head: &RequestHead,
        now: Instant,
    ) -> Result<(ViewsStream, ResponseHead), ViewsRefusal> {
        if head.method != VIEWS_METHOD {
            return Err(ViewsRefusal::BadMethod(
                head.method.chars().take(64).collect(),
            ));
        }
        if !self.agents.contains_key(&agent_id) && self.agents.len() >= self.config.max_agents {
            return Err(ViewsRefusal::TooManyAgents(self.config.max_agents));
        }
        let resync_interval = self.config.resync_interval;
        let entry = self.agents.entry(agent_id).or_insert_with(|| AgentMirror {
            mirror: Mirror::with_resync_interval(resync_interval),
            streams: BTreeSet::new(),
            released_at: None,
        });
        let streams = u32::try_from(entry.streams.len()).unwrap_or(u32::MAX);
        if streams >= self.config.max_streams_per_agent {
            return Err(ViewsRefusal::TooManyStreams { agent_id, streams });
        }
        let id = self.next_stream;
        self.next_stream += 1;
        entry.streams.insert(id);
        entry.released_at = None;
        let request = entry.mirror.on_connected(now);
        let mut stream = ViewsStream {
            agent_id,
            id,
            decoder: MessageDecoder::default(),
            out: VecDeque::new(),
            messages: 0,
        };
        stream.queue(Out::Resync(request));
        if streams == 0 {
            self.events.push_back(MirrorEvent::Connected { agent_id });
        }
        self.debug_check(agent_id);
        Ok((
            stream,
            ResponseHead {
                status: 200,
                headers: Vec::new(),
            },
        ))
    }

    /// Octets agentk sent on `stream`.
    pub fn handle_body(
        &mut self,
        stream: &mut ViewsStream,
        chunk: &[u8],
        now: Instant,
    ) -> Result<(), ViewsViolation> {
        self.handle_body_tapped(stream, chunk, now, |_| {})
    }

    /// [`MirrorTable::handle_body`], showing each decoded message to `tap` before it is applied
    /// (the simulator's fault injection corrupts messages there).
    pub fn handle_body_tapped(
        &mut self,
        stream: &mut ViewsStream,
        chunk: &[u8],
        now: Instant,
        mut tap: impl FnMut(&mut proto::AgentToServer),
    ) -> Result<(), ViewsViolation> {
        // Bounded by the chunk and the buffered octets: every round takes one message out or
        // stops. The decoder is set aside while its messages are applied to the stream.
        let mut decoder = std::mem::take(&mut stream.decoder);
        let result = decoder.push_each(chunk, |bytes| {
            let mut message = decode_agent_message(bytes)?;
            tap(&mut message);
            self.apply(stream, message, now)?;
            stream.messages += 1;
            Ok::<(), ViewsViolation>(())
        });
        stream.decoder = decoder;
        result
    }

    fn apply(
        &mut self,
        stream: &mut ViewsStream,
        message: proto::AgentToServer,
        now: Instant,
    ) -> Result<(), ViewsViolation> {
        let agent_id = stream.agent_id;
        if let Some(In::ObjectChanges(batch)) = message.msg {
            // Validated whole before any of it is reported.
            let changes = batch
                .changes
                .into_iter()
                .map(ObjectChange::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            if !changes.is_empty() {
                self.events
                    .push_back(MirrorEvent::Objects { agent_id, changes });
            }
            return Ok(());
        }
        let Some(a) = self
            .agents
            .get_mut(&agent_id)
            .filter(|a| a.streams.contains(&stream.id))
        else {
            debug_assert!(
                false,
                "a stream of agent {agent_id} outlived its table entry"
            );
            return Ok(());
        };
        match a.mirror.handle_owned(message, now)? {
            MirrorOutcome::Applied { ack, changes } => {
                stream.queue(Out::Ack(ack));
                if !changes.is_empty() {
                    self.events
                        .push_back(MirrorEvent::ViewsChanged { agent_id, changes });
                }
            }
            MirrorOutcome::Ignored { ack } => {
                if let Some(ack) = ack {
                    stream.queue(Out::Ack(ack));
                }
            }
            MirrorOutcome::ResyncNeeded { request } => {
                stream.queue(Out::Resync(request));
                self.events
                    .push_back(MirrorEvent::ResyncRequested { agent_id, request });
            }
        }
        Ok(())
    }

    /// agentk finished its direction of `stream`: a violation if it stopped inside a message.
    pub fn handle_end(&mut self, stream: &mut ViewsStream) -> Result<(), ViewsViolation> {
        Ok(stream.decoder.finish()?)
    }

    /// `stream` ended, however: when it was the agent's last, the mirror is marked disconnected
    /// (its views are kept).
    pub fn handle_closed(&mut self, stream: ViewsStream, now: Instant) {
        let agent_id = stream.agent_id;
        let Some(a) = self.agents.get_mut(&agent_id) else {
            debug_assert!(
                false,
                "a stream of agent {agent_id} outlived its table entry"
            );
            return;
        };
        let removed = a.streams.remove(&stream.id);
        debug_assert!(removed, "stream {} closed twice", stream.id);
        if removed && a.streams.is_empty() {
            a.mirror.on_disconnected();
            a.released_at = Some(now);
            self.events
                .push_back(MirrorEvent::Disconnected { agent_id });
        }
        self.debug_check(agent_id);
    }

    /// When the next mirror expires (only with a retention period).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retention = self.config.retention?;
        self.agents
            .values()
            .filter_map(|a| a.released_at)
            .min()
            .map(|t| t + retention)
    }

    /// Evicts the mirrors without streams for the retention period.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(retention) = self.config.retention else {
            return;
        };
        let expired: Vec<u64> = self
            .agents
            .iter()
            .filter(|(_, a)| {
                a.streams.is_empty() && a.released_at.is_some_and(|t| t + retention <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for agent_id in expired {
            self.agents.remove(&agent_id);
            self.events.push_back(MirrorEvent::Evicted { agent_id });
        }
    }

    /// Drops every mirror (a replica restarting loses its memory). Streams still out must not be
    /// handed back afterwards.
    pub fn clear(&mut self) {
        self.agents.clear();
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<MirrorEvent> {
        self.events.pop_front()
    }

    /// The agent's mirror.
    pub fn mirror(&self, agent_id: u64) -> Option<&Mirror> {
        self.agents.get(&agent_id).map(|a| &a.mirror)
    }

    /// The agent's open streams.
    pub fn streams(&self, agent_id: u64) -> usize {
        self.agents.get(&agent_id).map_or(0, |a| a.streams.len())
    }

    /// The agents mirrored, by id.
    pub fn agents(&self) -> impl Iterator<Item = u64> + '_ {
        self.agents.keys().copied()
    }

    /// The mirrors, by agent id.
    pub fn mirrors(&self) -> impl Iterator<Item = (u64, &Mirror)> + '_ {
        self.agents.iter().map(|(id, a)| (*id, &a.mirror))
    }

    /// Agents mirrored.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is mirrored.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Checks the invariants of the module documentation.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.agents.len() > self.config.max_agents {
            return Err(format!("{} agents mirrored", self.agents.len()));
        }
        self.agents.keys().try_for_each(|id| self.check_agent(*id))
    }

    /// The invariants of one agent's entry.
    fn check_agent(&self, agent_id: u64) -> Result<(), String> {
        let Some(a) = self.agents.get(&agent_id) else {
            return Ok(());
        };
        if a.mirror.is_connected() == a.streams.is_empty() {
            return Err(format!(
                "agent {agent_id}: connected {} with {} streams",
                a.mirror.is_connected(),
                a.streams.len()
            ));
        }
        if !a.streams.is_empty() && a.released_at.is_some() {
            return Err(format!("agent {agent_id}: released with open streams"));
        }
        if a.streams.len() > self.config.max_streams_per_agent as usize {
            return Err(format!("agent {agent_id}: {} streams", a.streams.len()));
        }
        Ok(())
    }

    /// After a mutation of `agent_id`'s entry (cheap: that entry and the table's size).
    fn debug_check(&self, agent_id: u64) {
        debug_assert!(
            self.agents.len() <= self.config.max_agents,
            "mirror table invariant: {} agents",
            self.agents.len()
        );
        if let Err(e) = self.check_agent(agent_id) {
            debug_assert!(false, "mirror table invariant: {e}");
        }
    }
}
