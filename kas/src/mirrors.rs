//! Every agent's view mirror: kas's copy of the views agentk computes over its informer cache,
//! kept by agent id across reconnects, so the views stay readable (marked disconnected, with their
//! age) while the agent is away.
//!
//! The sync rules are `protocol::cache::Mirror`'s; this module adds what kas needs around it:
//!
//! - **Streams.** Each `views` stream an agent opens is a [`ViewsLink`] ([`Mirrors::open`]). During a
//!   GOAWAY handover the replacement connection's stream can open before the old one ended: the
//!   mirror is marked disconnected only when the agent's *last* stream ends. Streams per agent and
//!   mirrored agents are bounded (the stream is answered 503 beyond).
//! - **Events.** Applied view changes become one `view` event per changed view; object changes
//!   become `object` events ([`crate::events`]). Events are published after the mirror's lock is
//!   released.
//! - **Reading.** [`Mirrors::views_json`] / [`Mirrors::view_json`]: the HTTP API's answers, from
//!   memory.
//!
//! Synchronous (one mutex), so it is tested here without a runtime; the stream itself is served by
//! [`crate::views_stream`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protocol::cache::proto::{self, agent_to_server::Msg as In, server_to_agent::Msg as Out};
use protocol::cache::{Mirror, MirrorOutcome, ObjectChange, ViewChange, Views, WireError};
use serde_json::{Value, json};

use crate::events::{Event, EventHub};

/// Agents whose views kas mirrors at most (default).
pub const DEFAULT_MAX_AGENTS: usize = 10_000;

/// `views` streams one agent may have open at once (two overlap during a GOAWAY handover).
pub const MAX_STREAMS_PER_AGENT: u32 = 4;

/// Why a `views` stream is not taken (answered 503; agentk retries on its next connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// kas mirrors as many agents as it may.
    #[error("kas mirrors the views of {0} agents already")]
    TooManyAgents(usize),
    /// The agent has too many views streams open.
    #[error("agent {agent_id} has {streams} views streams open already")]
    TooManyStreams {
        /// The agent.
        agent_id: u64,
        /// Its open streams.
        streams: u32,
    },
}

struct AgentMirror {
    mirror: Mirror,
    streams: u32,
}

struct Shared {
    agents: Mutex<BTreeMap<u64, AgentMirror>>,
    hub: EventHub,
    max_agents: usize,
}

/// The mirrors of every agent; cheap to clone (all clones share one table).
#[derive(Clone)]
pub struct Mirrors {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrors")
            .field("agents", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// What [`Mirrors::view_json`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewLookup {
    /// The view, as JSON.
    Found(Value),
    /// kas has views of the agent, but not this one.
    NoView,
    /// kas never mirrored the agent's views.
    NoAgent,
}

/// A `views` stream's answer to one message from agentk, and the events it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// What to send back to agentk (an ack or a resync request), if anything.
    pub reply: Option<proto::ServerToAgent>,
    /// Rows that changed in the mirror.
    pub view_changes: usize,
    /// Object changes reported.
    pub object_changes: usize,
}

impl Mirrors {
    /// An empty table publishing to `hub`, mirroring at most `max_agents` agents.
    pub fn new(hub: EventHub, max_agents: usize) -> Self {
        Mirrors {
            shared: Arc::new(Shared {
                agents: Mutex::new(BTreeMap::new()),
                hub,
                max_agents,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, AgentMirror>> {
        self.shared.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hub this table publishes to.
    pub fn hub(&self) -> &EventHub {
        &self.shared.hub
    }

    /// An agent opened a `views` stream: the link to feed its messages to, and the resync request to
    /// send first (`Mirror::on_connected`).
    pub fn open(
        &self,
        agent_id: u64,
        now: Instant,
    ) -> Result<(ViewsLink, proto::ServerToAgent), CapacityError> {
        let mut agents = self.lock();
        let known = agents.len();
        if !agents.contains_key(&agent_id) && known >= self.shared.max_agents {
            return Err(CapacityError::TooManyAgents(self.shared.max_agents));
        }
        let entry = agents.entry(agent_id).or_insert_with(|| AgentMirror {
            mirror: Mirror::new(),
            streams: 0,
        });
        if entry.streams >= MAX_STREAMS_PER_AGENT {
            return Err(CapacityError::TooManyStreams {
                agent_id,
                streams: entry.streams,
            });
        }
        entry.streams += 1;
        let request = entry.mirror.on_connected(now);
        Ok((
            ViewsLink {
                mirrors: self.clone(),
                agent_id,
            },
            proto::ServerToAgent {
                msg: Some(Out::Resync(request)),
            },
        ))
    }

    /// Whether kas has (or had) views of `agent_id`.
    pub fn has(&self, agent_id: u64) -> bool {
        self.lock().contains_key(&agent_id)
    }

    /// Whether `agent_id` has a `views` stream open.
    pub fn is_connected(&self, agent_id: u64) -> bool {
        self.lock()
            .get(&agent_id)
            .is_some_and(|a| a.mirror.is_connected())
    }

    /// A copy of the agent's current views.
    pub fn views(&self, agent_id: u64) -> Option<Views> {
        self.lock().get(&agent_id).map(|a| a.mirror.views().clone())
    }

    /// The agent's views as the HTTP API answers them, or `None` if kas never mirrored them:
    ///
    /// ```json
    /// {"agent_id": 1, "connected": true, "synced": true, "age_seconds": 0.4, "epoch": "…", "seq": 17,
    ///  "views": {"nodes": {"name": "nodes", "kind": "Node", "group_by": [], "metrics": ["count", …],
    ///                      "rows": [{"count": 3, "ready": 3, "not_ready": 0}]}, …}}
    /// ```
    ///
    /// `age_seconds`: time since the views last changed (`null` before the first snapshot);
    /// `connected`: a `views` stream is open; `synced`: the mirror has state and is not waiting for a
    /// resync answer. `epoch` is a string (a 64-bit number does not fit a JavaScript number).
    pub fn views_json(&self, agent_id: u64, now: Instant) -> Option<Value> {
        let agents = self.lock();
        let a = agents.get(&agent_id)?;
        let mut v = status_json(agent_id, &a.mirror, now);
        v["views"] = serde_json::to_value(a.mirror.views()).unwrap_or_else(|_| json!({}));
        Some(v)
    }

    /// One view as the HTTP API answers it (the fields of [`Mirrors::views_json`] with `view` instead
    /// of `views`).
    pub fn view_json(&self, agent_id: u64, name: &str, now: Instant) -> ViewLookup {
        let agents = self.lock();
        let Some(a) = agents.get(&agent_id) else {
            return ViewLookup::NoAgent;
        };
        let Some(view) = a.mirror.views().get(name) else {
            return ViewLookup::NoView;
        };
        let mut v = status_json(agent_id, &a.mirror, now);
        v["view"] = serde_json::to_value(view).unwrap_or(Value::Null);
        ViewLookup::Found(v)
    }

    /// The agents kas has views of, by id.
    pub fn agents(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    /// How many agents kas has views of.
    pub fn agent_count(&self) -> usize {
        self.lock().len()
    }

    fn close_stream(&self, agent_id: u64) {
        let mut agents = self.lock();
        if let Some(a) = agents.get_mut(&agent_id) {
            a.streams = a.streams.saturating_sub(1);
            if a.streams == 0 {
                a.mirror.on_disconnected();
            }
        }
    }

    fn handle(
        &self,
        agent_id: u64,
        message: &proto::AgentToServer,
        now: Instant,
    ) -> Result<Handled, WireError> {
        if let Some(In::ObjectChanges(batch)) = &message.msg {
            // Validate the whole batch before publishing any of it.
            let changes = batch
                .changes
                .iter()
                .map(ObjectChange::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            let n = changes.len();
            for change in changes {
                self.shared.hub.publish(&Event::Object { agent_id, change });
            }
            return Ok(Handled {
                reply: None,
                view_changes: 0,
                object_changes: n,
            });
        }
        let (reply, events, view_changes) = {
            let mut agents = self.lock();
            let Some(a) = agents.get_mut(&agent_id) else {
                // Cannot happen while a link exists; answer like a mirror without state would.
                return Err(WireError::Malformed(format!(
                    "no mirror for agent {agent_id}"
                )));
            };
            match a.mirror.handle(message, now)? {
                MirrorOutcome::Applied { ack, changes } => {
                    let events = view_events(agent_id, a.mirror.views(), &changes);
                    (Some(Out::Ack(ack)), events, changes.len())
                }
                MirrorOutcome::Ignored { ack } => (ack.map(Out::Ack), Vec::new(), 0),
                MirrorOutcome::ResyncNeeded { request } => {
                    tracing::debug!(
                        agent_id,
                        epoch = request.epoch,
                        seq = request.seq,
                        reason = request.reason,
                        "view mirror asks for a resync"
                    );
                    (Some(Out::Resync(request)), Vec::new(), 0)
                }
            }
        };
        self.shared.hub.publish_all(&events);
        Ok(Handled {
            reply: reply.map(|m| proto::ServerToAgent { msg: Some(m) }),
            view_changes,
            object_changes: 0,
        })
    }
}

fn status_json(agent_id: u64, mirror: &Mirror, now: Instant) -> Value {
    json!({
        "agent_id": agent_id,
        "connected": mirror.is_connected(),
        "synced": mirror.is_synced(),
        "age_seconds": mirror.age(now).map(round_ms),
        "epoch": mirror.epoch().map(|e| e.to_string()),
        "seq": mirror.seq(),
    })
}

/// Seconds with millisecond precision.
fn round_ms(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

/// One `view` event per view with changed rows (`changes` are in (view, key) order).
fn view_events(agent_id: u64, views: &Views, changes: &[ViewChange]) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for change in changes {
        let mut row = views.change_json(change);
        if let Value::Object(map) = &mut row {
            map.remove("view");
        }
        match events.last_mut() {
            Some(Event::View { view, changes, .. }) if *view == change.view => changes.push(row),
            _ => events.push(Event::View {
                agent_id,
                view: change.view.clone(),
                changes: vec![row],
            }),
        }
    }
    events
}

/// One open `views` stream of one agent. Dropping it ends the stream's part in the mirror: when the
/// agent's last stream ends, its mirror is marked disconnected (its views are kept).
#[derive(Debug)]
pub struct ViewsLink {
    mirrors: Mirrors,
    agent_id: u64,
}

impl ViewsLink {
    /// The agent.
    pub fn agent_id(&self) -> u64 {
        self.agent_id
    }

    /// Applies one message from agentk; publishes the events it produced. An `Err` is a protocol
    /// violation (the mirror is unchanged): the stream must be reset.
    pub fn handle(
        &self,
        message: &proto::AgentToServer,
        now: Instant,
    ) -> Result<Handled, WireError> {
        self.mirrors.handle(self.agent_id, message, now)
    }
}

impl Drop for ViewsLink {
    fn drop(&mut self) {
        self.mirrors.close_stream(self.agent_id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::Scope;
    use protocol::cache::{
        AgentCache, PublisherConfig, ResourceKind, WatchEvent, default_views,
        object_changes_message,
    };
    use std::num::NonZeroU64;

    fn node(name: &str, ready: bool) -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1"},
               "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    /// agentk's side, driven by hand.
    struct Agent {
        cache: AgentCache,
        now: Instant,
    }

    impl Agent {
        fn new(epoch: u64) -> Agent {
            let config = PublisherConfig::new(NonZeroU64::new(epoch).unwrap());
            let mut cache = AgentCache::new(&default_views(), config).unwrap();
            let kind = ResourceKind::node();
            cache.apply(&kind, WatchEvent::Init).unwrap();
            cache
                .apply(&kind, WatchEvent::InitApply(node("n1", true)))
                .unwrap();
            cache.apply(&kind, WatchEvent::InitDone).unwrap();
            Agent {
                cache,
                now: Instant::now(),
            }
        }

        fn add_node(&mut self, name: &str, ready: bool) -> Vec<ObjectChange> {
            self.cache
                .apply(&ResourceKind::node(), WatchEvent::Apply(node(name, ready)))
                .unwrap()
        }

        /// Everything agentk would send now (time moves past the coalescing window).
        fn transmit(&mut self) -> Vec<proto::AgentToServer> {
            self.now += Duration::from_secs(1);
            std::iter::from_fn(|| self.cache.poll_transmit(self.now))
                .take(100)
                .collect()
        }

        fn receive(&mut self, m: &proto::ServerToAgent) {
            self.cache.handle(m, self.now);
        }
    }

    /// Feeds agentk's messages to the link and kas's replies back until neither has anything to say.
    fn exchange(agent: &mut Agent, link: &ViewsLink, first: Option<proto::ServerToAgent>) {
        if let Some(m) = first {
            agent.receive(&m);
        }
        for _ in 0..20 {
            let out = agent.transmit();
            if out.is_empty() {
                return;
            }
            for m in out {
                if let Some(reply) = link.handle(&m, agent.now).unwrap().reply {
                    agent.receive(&reply);
                }
            }
        }
    }

    fn nodes_count(mirrors: &Mirrors, agent_id: u64) -> Value {
        mirrors.views_json(agent_id, Instant::now()).unwrap()["views"]["nodes"]["rows"][0]["count"]
            .clone()
    }

    #[test]
    fn a_stream_syncs_the_mirror_and_publishes_view_and_object_events() {
        let hub = EventHub::new(64, 4);
        let sub = hub.subscribe(Scope::Agent(7), "test").unwrap();
        let mirrors = Mirrors::new(hub.clone(), 10);
        let mut agent = Agent::new(11);
        agent.cache.on_connected(agent.now);
        let (link, first) = mirrors.open(7, agent.now).unwrap();
        assert!(matches!(first.msg, Some(Out::Resync(ref r)) if r.epoch == 0));
        exchange(&mut agent, &link, Some(first));
        assert_eq!(nodes_count(&mirrors, 7), json!(1));
        assert_eq!(mirrors.views(7).unwrap(), agent.cache.views().views());

        let changes = agent.add_node("n2", false);
        exchange(&mut agent, &link, None);
        let v = mirrors.views_json(7, Instant::now()).unwrap();
        assert_eq!(v["connected"], json!(true));
        assert_eq!(v["synced"], json!(true));
        assert_eq!(v["epoch"], json!("11"));
        assert_eq!(
            v["views"]["nodes"]["rows"][0],
            json!({"count": 2, "ready": 1, "not_ready": 1})
        );
        // The object changes travel as their own message.
        link.handle(&object_changes_message(&changes), agent.now)
            .unwrap();

        let events: Vec<_> = std::iter::from_fn(|| sub.try_recv()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&"view"), "{kinds:?}");
        let last_view = events
            .iter()
            .rev()
            .find(|e| e.kind == "view" && e.data.contains(r#""view":"nodes""#))
            .unwrap();
        let data: Value = serde_json::from_str(&last_view.data).unwrap();
        assert_eq!(
            data,
            json!({"agent_id": 7, "view": "nodes",
                   "changes": [{"key": {}, "values": {"count": 2, "ready": 1, "not_ready": 1}}]})
        );
        let object = events.iter().find(|e| e.kind == "object").unwrap();
        let data: Value = serde_json::from_str(&object.data).unwrap();
        assert_eq!(data["name"], "n2");
        assert_eq!(data["kind"], "Node");
        assert_eq!(data["type"], "Added");
        // The per-kind count view changed too, in the same update.
        assert!(
            events
                .iter()
                .any(|e| e.kind == "view" && e.data.contains("objects_by_kind"))
        );
    }

    #[test]
    fn only_the_last_stream_ending_marks_the_mirror_disconnected() {
        let mirrors = Mirrors::new(EventHub::default(), 10);
        let mut agent = Agent::new(5);
        agent.cache.on_connected(agent.now);
        let (old, first) = mirrors.open(1, agent.now).unwrap();
        exchange(&mut agent, &old, Some(first));
        assert!(mirrors.is_connected(1));
        // GOAWAY handover: the new connection's stream opens before the old one ends.
        agent.cache.on_disconnected();
        agent.cache.on_connected(agent.now);
        let (new, first) = mirrors.open(1, agent.now).unwrap();
        drop(old);
        assert!(mirrors.is_connected(1), "the new stream is still open");
        exchange(&mut agent, &new, Some(first));
        agent.add_node("n2", true);
        exchange(&mut agent, &new, None);
        assert_eq!(nodes_count(&mirrors, 1), json!(2));
        drop(new);
        assert!(!mirrors.is_connected(1));
        // The views stay readable while the agent is away.
        let v = mirrors.views_json(1, Instant::now()).unwrap();
        assert_eq!(v["connected"], json!(false));
        assert_eq!(v["views"]["nodes"]["rows"][0]["count"], json!(2));
        assert!(v["age_seconds"].is_number());
    }

    #[test]
    fn a_restarted_agent_is_resynced_with_a_snapshot_and_mirrors_are_per_agent() {
        let mirrors = Mirrors::new(EventHub::default(), 10);
        let mut a = Agent::new(1);
        a.add_node("n2", true);
        a.cache.on_connected(a.now);
        let (link_a, first) = mirrors.open(1, a.now).unwrap();
        exchange(&mut a, &link_a, Some(first));
        let mut b = Agent::new(2);
        b.cache.on_connected(b.now);
        let (link_b, first) = mirrors.open(2, b.now).unwrap();
        exchange(&mut b, &link_b, Some(first));
        assert_eq!(nodes_count(&mirrors, 1), json!(2));
        assert_eq!(nodes_count(&mirrors, 2), json!(1));
        drop(link_a);
        // agent 1 restarts: a new epoch, one node only.
        let mut a2 = Agent::new(99);
        a2.cache.on_connected(a2.now);
        let (link_a2, first) = mirrors.open(1, a2.now).unwrap();
        assert!(matches!(first.msg, Some(Out::Resync(ref r)) if r.epoch == 1));
        exchange(&mut a2, &link_a2, Some(first));
        assert_eq!(nodes_count(&mirrors, 1), json!(1));
        assert_eq!(
            mirrors.views_json(1, Instant::now()).unwrap()["epoch"],
            json!("99")
        );
        assert_eq!(mirrors.agents(), vec![1, 2]);
    }

    #[test]
    fn capacity_is_bounded() {
        let mirrors = Mirrors::new(EventHub::default(), 1);
        let now = Instant::now();
        let links: Vec<_> = (0..MAX_STREAMS_PER_AGENT)
            .map(|_| mirrors.open(1, now).unwrap().0)
            .collect();
        assert_eq!(
            mirrors.open(1, now).map(|_| ()),
            Err(CapacityError::TooManyStreams {
                agent_id: 1,
                streams: MAX_STREAMS_PER_AGENT
            })
        );
        assert_eq!(
            mirrors.open(2, now).map(|_| ()),
            Err(CapacityError::TooManyAgents(1))
        );
        drop(links);
        assert!(mirrors.open(1, now).is_ok());
    }

    #[test]
    fn bad_messages_are_errors_and_change_nothing() {
        let hub = EventHub::new(16, 2);
        let sub = hub.subscribe(Scope::All, "t").unwrap();
        let mirrors = Mirrors::new(hub, 10);
        let mut agent = Agent::new(3);
        agent.cache.on_connected(agent.now);
        let (link, first) = mirrors.open(4, agent.now).unwrap();
        exchange(&mut agent, &link, Some(first));
        while sub.try_recv().is_some() {}
        let before = mirrors.views(4).unwrap();
        let empty = proto::AgentToServer { msg: None };
        assert!(link.handle(&empty, agent.now).is_err());
        let bad_change = proto::AgentToServer {
            msg: Some(In::ObjectChanges(proto::ObjectChanges {
                changes: vec![
                    proto::ObjectChange {
                        kind: "Pod".into(),
                        version: "v1".into(),
                        name: "ok".into(),
                        r#type: proto::ChangeType::Added as i32,
                        ..Default::default()
                    },
                    proto::ObjectChange::default(),
                ],
            })),
        };
        assert!(link.handle(&bad_change, agent.now).is_err());
        let unknown_view = proto::AgentToServer {
            msg: Some(In::Update(proto::ViewUpdate {
                epoch: 3,
                base_seq: mirrors.views_json(4, agent.now).unwrap()["seq"]
                    .as_u64()
                    .unwrap(),
                seq: 1000,
                views: vec![proto::ViewDelta {
                    view: "nope".into(),
                    upserts: vec![],
                    removed: vec![],
                }],
            })),
        };
        assert!(link.handle(&unknown_view, agent.now).is_err());
        assert_eq!(mirrors.views(4).unwrap(), before);
        assert!(sub.try_recv().is_none(), "nothing was published");
    }

    #[test]
    fn unknown_agents_and_views() {
        let mirrors = Mirrors::new(EventHub::default(), 10);
        assert!(mirrors.views_json(1, Instant::now()).is_none());
        assert_eq!(
            mirrors.view_json(1, "nodes", Instant::now()),
            ViewLookup::NoAgent
        );
        let mut agent = Agent::new(8);
        agent.cache.on_connected(agent.now);
        let (link, first) = mirrors.open(1, agent.now).unwrap();
        exchange(&mut agent, &link, Some(first));
        assert_eq!(
            mirrors.view_json(1, "nope", Instant::now()),
            ViewLookup::NoView
        );
        let ViewLookup::Found(v) = mirrors.view_json(1, "pods_by_phase", Instant::now()) else {
            panic!("pods_by_phase is a view");
        };
        assert_eq!(v["view"]["name"], "pods_by_phase");
        assert_eq!(v["connected"], json!(true));
    }
}
