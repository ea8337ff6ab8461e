//! Every agent's view mirror: kas's copy of the views agentk computes over its informer cache,
//! kept by agent id across reconnects, so the views stay readable (marked disconnected, with their
//! age) while the agent is away.
//!
//! The decisions are `protocol::cache::MirrorTable`'s (the `views` endpoint kas and the simulator
//! both drive): stream counting (the mirror is marked disconnected only when the agent's *last*
//! stream ends, so a GOAWAY handover keeps it connected), capacity, framing, sync rules, violations.
//! This module adds what kas needs around it:
//!
//! - **Sharing.** One `Mutex<MirrorTable>`; each `views` stream is a [`ViewsLink`] holding its
//!   `ViewsStream`, handed back to the table when the link is dropped.
//! - **Events.** `MirrorEvent`s become one `view` event per changed view and one `object` event per
//!   object change ([`crate::events`]), published after the table's lock is released.
//! - **Reading.** [`Mirrors::views_json`] / [`Mirrors::view_json`]: the HTTP API's answers, from
//!   memory.
//!
//! Synchronous, so it is tested here without a runtime; the stream itself is served by
//! [`crate::views_stream`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::cache::{
    Mirror, MirrorEvent, MirrorTable, MirrorTableConfig, ViewChange, Views, ViewsRefusal,
    ViewsStream, ViewsViolation,
};
use protocol::proto::{RequestHead, ResponseHead};
use serde_json::{Value, json};

use crate::events::{Event, EventHub};

/// Agents whose views kas mirrors at most (default).
pub const DEFAULT_MAX_AGENTS: usize = 10_000;

struct Shared {
    table: Mutex<MirrorTable>,
    hub: EventHub,
    /// The traffic recorder views chunks are reported to ([`crate::recording`]), when recording.
    recorder: std::sync::OnceLock<Arc<crate::recording::Recorder>>,
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

impl Mirrors {
    /// An empty table publishing to `hub`, mirroring at most `max_agents` agents.
    pub fn new(hub: EventHub, max_agents: usize) -> Self {
        let config = MirrorTableConfig {
            max_agents,
            ..MirrorTableConfig::default()
        };
        Mirrors {
            shared: Arc::new(Shared {
                table: Mutex::new(MirrorTable::new(config)),
                hub,
                recorder: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Reports every applied views chunk to the traffic recorder.
    pub fn set_recorder(&self, recorder: Arc<crate::recording::Recorder>) {
        let _ = self.shared.recorder.set(recorder);
    }

    fn lock(&self) -> MutexGuard<'_, MirrorTable> {
        self.shared.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hub this table publishes to.
    pub fn hub(&self) -> &EventHub {
        &self.shared.hub
    }

    /// An agent opened a `views` stream with `head`: the link to feed its octets to (with the first
    /// resync request queued, [`ViewsLink::poll_transmit`]) and the 200 to answer, or why not.
    pub fn open(
        &self,
        agent_id: u64,
        head: &RequestHead,
        now: Instant,
    ) -> Result<(ViewsLink, ResponseHead), ViewsRefusal> {
        let (stream, ok) = self.lock().handle_open(agent_id, head, now)?;
        self.publish();
        Ok((
            ViewsLink {
                mirrors: self.clone(),
                stream: Some(stream),
            },
            ok,
        ))
    }

    /// Whether kas has (or had) views of `agent_id`.
    pub fn has(&self, agent_id: u64) -> bool {
        self.lock().mirror(agent_id).is_some()
    }

    /// Whether `agent_id` has a `views` stream open.
    pub fn is_connected(&self, agent_id: u64) -> bool {
        self.lock()
            .mirror(agent_id)
            .is_some_and(Mirror::is_connected)
    }

    /// A copy of the agent's current views.
    pub fn views(&self, agent_id: u64) -> Option<Views> {
        self.lock().mirror(agent_id).map(|m| m.views().clone())
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
        let table = self.lock();
        let m = table.mirror(agent_id)?;
        let mut v = status_json(agent_id, m, now);
        v["views"] = serde_json::to_value(m.views()).unwrap_or_else(|_| json!({}));
        Some(v)
    }

    /// One view as the HTTP API answers it (the fields of [`Mirrors::views_json`] with `view` instead
    /// of `views`).
    pub fn view_json(&self, agent_id: u64, name: &str, now: Instant) -> ViewLookup {
        let table = self.lock();
        let Some(m) = table.mirror(agent_id) else {
            return ViewLookup::NoAgent;
        };
        let Some(view) = m.views().get(name) else {
            return ViewLookup::NoView;
        };
        let mut v = status_json(agent_id, m, now);
        v["view"] = serde_json::to_value(view).unwrap_or(Value::Null);
        ViewLookup::Found(v)
    }

    /// The agents kas has views of, by id.
    pub fn agents(&self) -> Vec<u64> {
        self.lock().agents().collect()
    }

    /// How many agents kas has views of.
    pub fn agent_count(&self) -> usize {
        self.lock().len()
    }

    /// Publishes what the table reported, rendered under the lock, sent after it is released.
    /// Publishes the table's events; how many hub events they made.
    fn publish(&self) -> usize {
        let events = {
            let mut table = self.lock();
            let mut events = Vec::new();
            // Bounded by the table's event queue.
            while let Some(e) = table.poll_event() {
                render(&table, e, &mut events);
            }
            events
        };
        self.shared.hub.publish_all(&events);
        events.len()
    }
}

/// The hub events of one table event.
fn render(table: &MirrorTable, event: MirrorEvent, out: &mut Vec<Event>) {
    match event {
        MirrorEvent::ViewsChanged { agent_id, changes } => {
            if let Some(m) = table.mirror(agent_id) {
                out.extend(view_events(agent_id, m.views(), &changes));
            }
        }
        MirrorEvent::Objects { agent_id, changes } => {
            out.extend(
                changes
                    .into_iter()
                    .map(|change| Event::Object { agent_id, change }),
            );
        }
        MirrorEvent::ResyncRequested { agent_id, request } => tracing::debug!(
            agent_id,
            epoch = request.epoch,
            seq = request.seq,
            reason = request.reason,
            "view mirror asks for a resync"
        ),
        MirrorEvent::Connected { agent_id } => tracing::debug!(agent_id, "views connected"),
        MirrorEvent::Disconnected { agent_id } => {
            tracing::debug!(agent_id, "views disconnected (kept)")
        }
        MirrorEvent::Evicted { agent_id } => tracing::debug!(agent_id, "views evicted"),
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

/// One open `views` stream of one agent. Dropping it hands the stream back to the table: when the
/// agent's last stream ends, its mirror is marked disconnected (its views are kept).
#[derive(Debug)]
pub struct ViewsLink {
    mirrors: Mirrors,
    stream: Option<ViewsStream>,
}

impl ViewsLink {
    /// The agent.
    pub fn agent_id(&self) -> u64 {
        self.stream.as_ref().map_or(0, ViewsStream::agent_id)
    }

    /// Octets agentk sent; publishes the events they produced. An `Err` is a protocol violation
    /// (the offending message changed nothing): the stream must be reset.
    pub fn handle_body(&mut self, chunk: &[u8], now: Instant) -> Result<(), ViewsViolation> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let agent_id = stream.agent_id();
        let result = self.mirrors.lock().handle_body(stream, chunk, now);
        let rows = self.mirrors.publish();
        if let Some(recorder) = self.mirrors.shared.recorder.get() {
            recorder.views(agent_id, rows as u64, chunk.len() as u64);
        }
        result
    }

    /// agentk finished its direction: a violation if it stopped inside a message.
    pub fn handle_end(&mut self) -> Result<(), ViewsViolation> {
        match self.stream.as_mut() {
            Some(stream) => self.mirrors.lock().handle_end(stream),
            None => Ok(()),
        }
    }

    /// The next framed message for agentk (an ack or a resync request).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.stream.as_mut()?.poll_transmit()
    }
}

impl Drop for ViewsLink {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.mirrors.lock().handle_closed(stream, Instant::now());
            self.mirrors.publish();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::Scope;
    use protocol::cache::proto::{self, agent_to_server::Msg as In, server_to_agent::Msg as Out};
    use protocol::cache::{
        AgentCache, MessageDecoder, ObjectChange, PublisherConfig, ResourceKind, WatchEvent,
        decode_server_message, default_views, encode_message, object_changes_message,
        views_request_head,
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

    /// Opens a views stream: the link and the first message kas sends.
    fn open(mirrors: &Mirrors, agent_id: u64, now: Instant) -> (ViewsLink, proto::ServerToAgent) {
        let (mut link, ok) = mirrors.open(agent_id, &views_request_head(), now).unwrap();
        assert_eq!(ok.status, 200);
        let first = replies(&mut link).remove(0);
        (link, first)
    }

    /// What kas queued for agentk, decoded.
    fn replies(link: &mut ViewsLink) -> Vec<proto::ServerToAgent> {
        let mut d = MessageDecoder::default();
        while let Some(b) = link.poll_transmit() {
            d.push(&b);
        }
        std::iter::from_fn(|| d.next_message().unwrap())
            .map(|m| decode_server_message(&m).unwrap())
            .collect()
    }

    /// Sends one message from agentk; kas's replies.
    fn send(
        link: &mut ViewsLink,
        m: &proto::AgentToServer,
        now: Instant,
    ) -> Result<Vec<proto::ServerToAgent>, ViewsViolation> {
        link.handle_body(&encode_message(m), now)?;
        Ok(replies(link))
    }

    /// Feeds agentk's messages to the link and kas's replies back until neither has anything to say.
    fn exchange(agent: &mut Agent, link: &mut ViewsLink, first: Option<proto::ServerToAgent>) {
        if let Some(m) = first {
            agent.receive(&m);
        }
        for _ in 0..20 {
            let out = agent.transmit();
            if out.is_empty() {
                return;
            }
            for m in out {
                for reply in send(link, &m, agent.now).unwrap() {
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
        let (mut link, first) = open(&mirrors, 7, agent.now);
        assert!(matches!(first.msg, Some(Out::Resync(ref r)) if r.epoch == 0));
        exchange(&mut agent, &mut link, Some(first));
        assert_eq!(nodes_count(&mirrors, 7), json!(1));
        assert_eq!(mirrors.views(7).unwrap(), agent.cache.views().views());

        let changes = agent.add_node("n2", false);
        exchange(&mut agent, &mut link, None);
        let v = mirrors.views_json(7, Instant::now()).unwrap();
        assert_eq!(v["connected"], json!(true));
        assert_eq!(v["synced"], json!(true));
        assert_eq!(v["epoch"], json!("11"));
        assert_eq!(
            v["views"]["nodes"]["rows"][0],
            json!({"count": 2, "ready": 1, "not_ready": 1})
        );
        // The object changes travel as their own message.
        send(&mut link, &object_changes_message(&changes), agent.now).unwrap();

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
        let (mut old, first) = open(&mirrors, 1, agent.now);
        exchange(&mut agent, &mut old, Some(first));
        assert!(mirrors.is_connected(1));
        // GOAWAY handover: the new connection's stream opens before the old one ends.
        agent.cache.on_disconnected();
        agent.cache.on_connected(agent.now);
        let (mut new, first) = open(&mirrors, 1, agent.now);
        drop(old);
        assert!(mirrors.is_connected(1), "the new stream is still open");
        exchange(&mut agent, &mut new, Some(first));
        agent.add_node("n2", true);
        exchange(&mut agent, &mut new, None);
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
        let (mut link_a, first) = open(&mirrors, 1, a.now);
        exchange(&mut a, &mut link_a, Some(first));
        let mut b = Agent::new(2);
        b.cache.on_connected(b.now);
        let (mut link_b, first) = open(&mirrors, 2, b.now);
        exchange(&mut b, &mut link_b, Some(first));
        assert_eq!(nodes_count(&mirrors, 1), json!(2));
        assert_eq!(nodes_count(&mirrors, 2), json!(1));
        drop(link_a);
        // agent 1 restarts: a new epoch, one node only.
        let mut a2 = Agent::new(99);
        a2.cache.on_connected(a2.now);
        let (mut link_a2, first) = open(&mirrors, 1, a2.now);
        assert!(matches!(first.msg, Some(Out::Resync(ref r)) if r.epoch == 1));
        exchange(&mut a2, &mut link_a2, Some(first));
        assert_eq!(nodes_count(&mirrors, 1), json!(1));
        assert_eq!(
            mirrors.views_json(1, Instant::now()).unwrap()["epoch"],
            json!("99")
        );
        assert_eq!(mirrors.agents(), vec![1, 2]);
    }

    #[test]
    fn capacity_and_methods_are_answered() {
        let mirrors = Mirrors::new(EventHub::default(), 1);
        let now = Instant::now();
        let _link = open(&mirrors, 1, now);
        let refused = mirrors
            .open(2, &views_request_head(), now)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(refused, ViewsRefusal::TooManyAgents(1));
        assert_eq!(refused.response_head().status, 503);
        let mut head = views_request_head();
        head.method = "GET".into();
        let refused = mirrors.open(1, &head, now).map(|_| ()).unwrap_err();
        assert_eq!(refused.response_head().status, 400);
    }

    #[test]
    fn bad_messages_are_errors_and_change_nothing() {
        let hub = EventHub::new(16, 2);
        let sub = hub.subscribe(Scope::All, "t").unwrap();
        let mirrors = Mirrors::new(hub, 10);
        let mut agent = Agent::new(3);
        agent.cache.on_connected(agent.now);
        let (mut link, first) = open(&mirrors, 4, agent.now);
        exchange(&mut agent, &mut link, Some(first));
        while sub.try_recv().is_some() {}
        let before = mirrors.views(4).unwrap();
        let empty = proto::AgentToServer { msg: None };
        assert!(send(&mut link, &empty, agent.now).is_err());
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
        assert!(send(&mut link, &bad_change, agent.now).is_err());
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
        assert!(send(&mut link, &unknown_view, agent.now).is_err());
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
        let (mut link, first) = open(&mirrors, 1, agent.now);
        exchange(&mut agent, &mut link, Some(first));
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
