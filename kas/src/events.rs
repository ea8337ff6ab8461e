//! The event hub: what happens in the clusters and to the agents, broadcast to subscribers (the
//! Server-Sent Events of [`crate::api::events`], the dashboard).
//!
//! Three kinds of [`Event`]:
//!
//! - `view`: rows of one agent's view changed (from the view mirror, [`crate::mirrors`]);
//! - `object`: an object in an agent's cluster was added, modified or deleted (agentk's object
//!   changes, carried on the views stream);
//! - `agent`: an agent got its first live tunnel connection, or lost its last one ([`Presence`]);
//! - `config`: an agent's configuration was delivered to it, or a commit was rejected (or could not
//!   be fetched) and the previous one stays ([`crate::agent_config`]).
//!
//! Every subscriber has a bounded queue. Publishing never waits: a subscriber whose queue is full is
//! too slow for the feed and is dropped (its queue is closed, after the events already in it; a warning
//! is logged once), so one stuck client can neither slow the agents down nor make kas buffer without
//! bound. The number of subscribers is bounded in all, per source address and per user
//! ([`SubscriberLimits`]), so that one client cannot take every slot and lock the dashboard out.
//! Each event is serialised to JSON once, whatever the number of subscribers.
//!
//! The hub is synchronous (a mutex and non-blocking sends on `async-channel` queues), so it is tested
//! here without a runtime.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::cache::ObjectChange;
use serde_json::{Value, json};

use crate::auth::rate_limit::SourceKey;
use crate::users::AllowedAgents;

/// Events a subscriber may have waiting before it counts as too slow (default).
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;

/// Subscribers at most at once (default).
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 1000;

/// Subscribers at most at once from one source address (default).
pub const DEFAULT_MAX_PER_SOURCE: usize = 64;

/// Subscribers at most at once for one user (default).
pub const DEFAULT_MAX_PER_USER: usize = 32;

/// How many subscriptions the hub takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriberLimits {
    /// In all.
    pub total: usize,
    /// From one source address (IPv6 addresses grouped by /64).
    pub per_source: usize,
    /// For one user.
    pub per_user: usize,
}

impl Default for SubscriberLimits {
    fn default() -> Self {
        SubscriberLimits {
            total: DEFAULT_MAX_SUBSCRIBERS,
            per_source: DEFAULT_MAX_PER_SOURCE,
            per_user: DEFAULT_MAX_PER_USER,
        }
    }
}

/// Who holds a subscription: the client's address and, when it authenticated, the user. Limits
/// are counted per source and per user; an in-process subscriber ([`Owner::internal`]) counts only
/// towards the total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    source: Option<SourceKey>,
    user: Option<String>,
    label: String,
}

impl Owner {
    /// A client at `source`, authenticated as `user` (`None`: read without a token).
    pub fn client(source: IpAddr, user: Option<&str>) -> Owner {
        Owner {
            source: Some(SourceKey::from(source)),
            user: user.map(str::to_owned),
            label: match user {
                Some(u) => format!("{source} ({u})"),
                None => source.to_string(),
            },
        }
    }

    /// An in-process subscriber named `label` (tests, kas itself).
    pub fn internal(label: &str) -> Owner {
        Owner {
            source: None,
            user: None,
            label: label.to_owned(),
        }
    }
}

impl From<&str> for Owner {
    fn from(label: &str) -> Owner {
        Owner::internal(label)
    }
}

/// Something that happened, for subscribers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Rows of one view of one agent changed.
    View {
        /// The agent.
        agent_id: u64,
        /// The view's name.
        view: String,
        /// The changed rows: `{"key": {labels}, "values": {metrics} | null}` (`null`: row removed).
        changes: Vec<Value>,
    },
    /// An object in the agent's cluster changed.
    Object {
        /// The agent.
        agent_id: u64,
        /// What changed.
        change: ObjectChange,
    },
    /// The agent got its first live connection (`connected`) or lost its last one.
    Agent {
        /// The agent.
        agent_id: u64,
        /// Whether it is connected now.
        connected: bool,
    },
    /// A manifest project of the agent changed ([`crate::gitops_poller`]): a new set, a rejected
    /// commit, a fetch failure, a sync report.
    Gitops {
        /// The agent.
        agent_id: u64,
        /// The manifest project.
        project: String,
        /// `{"type": "commit" | "rejected" | "fetch_failed" | "source_ok" | "report", …}`.
        data: Value,
    },
    /// The agent's configuration: `delivered` (sent on its `config` stream), `rejected` (a commit
    /// that does not parse; the previous one stays) or `fetch_failed`.
    Config {
        /// The agent.
        agent_id: u64,
        /// `delivered`, `rejected` or `fetch_failed`.
        status: &'static str,
        /// The commit delivered or rejected.
        commit: Option<String>,
        /// What is wrong (`rejected`, `fetch_failed`).
        message: Option<String>,
    },
}

/// Every [`Event::kind`] (what [`EventHub::publish_relayed`] accepts).
pub const EVENT_KINDS: [&str; 5] = ["view", "object", "agent", "gitops", "config"];

impl Event {
    /// The agent the event is about.
    pub fn agent_id(&self) -> u64 {
        match self {
            Event::View { agent_id, .. }
            | Event::Object { agent_id, .. }
            | Event::Agent { agent_id, .. }
            | Event::Gitops { agent_id, .. }
            | Event::Config { agent_id, .. } => *agent_id,
        }
    }

    /// The event type: `view`, `object`, `agent`, `gitops` or `config` (the SSE `event:` field).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::View { .. } => "view",
            Event::Object { .. } => "object",
            Event::Agent { .. } => "agent",
            Event::Gitops { .. } => "gitops",
            Event::Config { .. } => "config",
        }
    }

    /// The event's JSON (the SSE `data:` field):
    ///
    /// ```json
    /// {"agent_id": 1, "view": "pods_by_phase", "changes": [{"key": {"namespace": "default", "phase": "Running"}, "values": {"count": 4}}]}
    /// {"agent_id": 1, "group": "", "version": "v1", "kind": "Pod", "namespace": "default", "name": "web-1", "uid": "…", "resource_version": "812", "type": "Added"}
    /// {"agent_id": 1, "connected": false}
    /// {"agent_id": 1, "project": "group/manifests", "type": "rejected", "commit": "9fceb02…", "message": "apps/a.yaml:3:1: …"}
    /// {"agent_id": 1, "status": "delivered", "commit": "9fceb02…", "message": null}
    /// ```
    pub fn to_json(&self) -> Value {
        match self {
            Event::View {
                agent_id,
                view,
                changes,
            } => json!({"agent_id": agent_id, "view": view, "changes": changes}),
            Event::Object { agent_id, change } => {
                let mut v = serde_json::to_value(change).unwrap_or_else(|_| json!({}));
                if let Value::Object(map) = &mut v {
                    map.insert("agent_id".into(), json!(agent_id));
                }
                v
            }
            Event::Agent {
                agent_id,
                connected,
            } => json!({"agent_id": agent_id, "connected": connected}),
            Event::Gitops {
                agent_id,
                project,
                data,
            } => {
                let mut v = data.clone();
                if let Value::Object(map) = &mut v {
                    map.insert("agent_id".into(), json!(agent_id));
                    map.insert("project".into(), json!(project));
                }
                v
            }
            Event::Config {
                agent_id,
                status,
                commit,
                message,
            } => {
                json!({"agent_id": agent_id, "status": status, "commit": commit, "message": message})
            }
        }
    }
}

/// One published event as subscribers receive it: a hub-wide sequence number and the event's JSON,
/// serialised once.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// Increases by one per published event (the SSE `id:` field).
    pub id: u64,
    /// `view`, `object` or `agent`.
    pub kind: &'static str,
    /// The agent the event is about.
    pub agent_id: u64,
    /// [`Event::to_json`], serialised.
    pub data: String,
    /// Published by another replica and relayed here ([`EventHub::publish_relayed`]).
    pub relayed: bool,
}

/// Which agents' events a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every agent's.
    All,
    /// One agent's.
    Agent(u64),
    /// The agents a user may reach.
    Allowed(AllowedAgents),
}

impl Scope {
    /// Whether events about `agent_id` are in scope.
    pub fn includes(&self, agent_id: u64) -> bool {
        match self {
            Scope::All => true,
            Scope::Agent(id) => *id == agent_id,
            Scope::Allowed(allowed) => allowed.allows(agent_id),
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// As many subscribers as the hub takes are subscribed.
    #[error("too many event subscribers ({0})")]
    TooMany(usize),
    /// The client's address holds as many event streams as one address may.
    #[error("too many event streams from this address ({0})")]
    TooManyFromSource(usize),
    /// The user holds as many event streams as one user may.
    #[error("too many event streams for this user ({0})")]
    TooManyForUser(usize),
    /// kas is shutting down.
    #[error("kas is shutting down")]
    Closed,
}

struct Subscriber {
    scope: Scope,
    /// Takes only the events published here (not relayed from another replica): another
    /// replica's relay ([`EventHub::subscribe_local`]).
    local_only: bool,
    tx: async_channel::Sender<Arc<Published>>,
    lagged: Arc<AtomicBool>,
    owner: Owner,
}

struct HubState {
    next_event: u64,
    next_subscriber: u64,
    subscribers: BTreeMap<u64, Subscriber>,
    /// Subscriptions held per source and per user (entries at zero are removed).
    per_source: HashMap<SourceKey, usize>,
    per_user: HashMap<String, usize>,
    closed: bool,
    dropped_slow: u64,
}

impl HubState {
    /// Forgets subscriber `id`, with its place in the per-source and per-user counts.
    fn remove(&mut self, id: u64) -> Option<Subscriber> {
        let sub = self.subscribers.remove(&id)?;
        if let Some(k) = &sub.owner.source {
            decrement(&mut self.per_source, k);
        }
        if let Some(u) = &sub.owner.user {
            decrement(&mut self.per_user, u);
        }
        Some(sub)
    }
}

fn decrement<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(k);
        }
    }
}

struct Shared {
    state: Mutex<HubState>,
    queue_depth: usize,
    limits: SubscriberLimits,
}

/// The hub; cheap to clone (all clones share one state).
#[derive(Clone)]
pub struct EventHub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("queue_depth", &self.shared.queue_depth)
            .field("subscribers", &self.subscribers())
            .finish_non_exhaustive()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub::new(DEFAULT_QUEUE_DEPTH, DEFAULT_MAX_SUBSCRIBERS)
    }
}

impl EventHub {
    /// A hub whose subscribers may each have `queue_depth` events waiting (at least 1), with at most
    /// `max_subscribers` subscribers at once (and the default limits per source and per user).
    pub fn new(queue_depth: usize, max_subscribers: usize) -> Self {
        Self::with_limits(
            queue_depth,
            SubscriberLimits {
                total: max_subscribers,
                ..SubscriberLimits::default()
            },
        )
    }

    /// A hub with explicit subscriber limits.
    pub fn with_limits(queue_depth: usize, limits: SubscriberLimits) -> Self {
        EventHub {
            shared: Arc::new(Shared {
                state: Mutex::new(HubState {
                    next_event: 1,
                    next_subscriber: 1,
                    subscribers: BTreeMap::new(),
                    per_source: HashMap::new(),
                    per_user: HashMap::new(),
                    closed: false,
                    dropped_slow: 0,
                }),
                queue_depth: queue_depth.max(1),
                limits,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes `owner` to the events in `scope`, unless the hub, the owner's source or the owner's
    /// user is at its limit.
    pub fn subscribe(
        &self,
        scope: Scope,
        owner: impl Into<Owner>,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(scope, owner.into(), false)
    }

    /// Subscribes another replica's relay (`owner`) to every event published here, and to none
    /// relayed from elsewhere (an event crosses one hop at most: no loops, no echoes).
    pub fn subscribe_local(&self, owner: Owner) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(Scope::All, owner, true)
    }

    fn subscribe_with(
        &self,
        scope: Scope,
        owner: Owner,
        local_only: bool,
    ) -> Result<Subscription, SubscribeError> {
        let limits = self.shared.limits;
        let mut s = self.lock();
        if s.closed {
            return Err(SubscribeError::Closed);
        }
        if let Some(k) = &owner.source
            && s.per_source.get(k).copied().unwrap_or(0) >= limits.per_source
        {
            return Err(SubscribeError::TooManyFromSource(limits.per_source));
        }
        if let Some(u) = &owner.user
            && s.per_user.get(u).copied().unwrap_or(0) >= limits.per_user
        {
            return Err(SubscribeError::TooManyForUser(limits.per_user));
        }
        if s.subscribers.len() >= limits.total {
            return Err(SubscribeError::TooMany(limits.total));
        }
        if let Some(k) = &owner.source {
            *s.per_source.entry(*k).or_default() += 1;
        }
        if let Some(u) = &owner.user {
            *s.per_user.entry(u.clone()).or_default() += 1;
        }
        let id = s.next_subscriber;
        s.next_subscriber += 1;
        let (tx, rx) = async_channel::bounded(self.shared.queue_depth);
        let lagged = Arc::new(AtomicBool::new(false));
        s.subscribers.insert(
            id,
            Subscriber {
                scope,
                local_only,
                tx,
                lagged: lagged.clone(),
                owner,
            },
        );
        Ok(Subscription {
            hub: self.clone(),
            id,
            rx,
            lagged,
        })
    }

    /// Publishes `event` to every subscriber in whose scope it is; never waits. Returns its id.
    pub fn publish(&self, event: &Event) -> u64 {
        let data = event.to_json().to_string();
        self.publish_data(event.kind(), event.agent_id(), data, false)
    }

    /// Publishes an event another replica published (`kind` and `data` as its [`Published`]) to
    /// every subscriber in whose scope it is, except other replicas' relays. `None` for a kind this
    /// kas does not know (a newer replica's), which is left out.
    pub fn publish_relayed(&self, kind: &str, agent_id: u64, data: String) -> Option<u64> {
        let kind = EVENT_KINDS.iter().find(|k| **k == kind)?;
        Some(self.publish_data(kind, agent_id, data, true))
    }

    /// Subscribers that take events relayed from other replicas (all but the relays themselves).
    pub fn relay_subscribers(&self) -> usize {
        self.lock()
            .subscribers
            .values()
            .filter(|s| !s.local_only)
            .count()
    }

    fn publish_data(&self, kind: &'static str, agent_id: u64, data: String, relayed: bool) -> u64 {
        let mut s = self.lock();
        let id = s.next_event;
        s.next_event += 1;
        if s.closed || s.subscribers.is_empty() {
            return id;
        }
        let published = Arc::new(Published {
            id,
            kind,
            agent_id,
            data,
            relayed,
        });
        let mut gone = Vec::new();
        for (sub_id, sub) in &s.subscribers {
            if !sub.scope.includes(agent_id) || (relayed && sub.local_only) {
                continue;
            }
            match sub.tx.try_send(published.clone()) {
                Ok(()) => {}
                Err(async_channel::TrySendError::Full(_)) => {
                    sub.lagged.store(true, Ordering::SeqCst);
                    sub.tx.close();
                    tracing::warn!(
                        subscriber = %sub.owner.label,
                        queue_depth = self.shared.queue_depth,
                        "event subscriber too slow: dropped"
                    );
                    gone.push(*sub_id);
                }
                Err(async_channel::TrySendError::Closed(_)) => gone.push(*sub_id),
            }
        }
        for sub_id in gone {
            if let Some(sub) = s.remove(sub_id)
                && sub.lagged.load(Ordering::SeqCst)
            {
                s.dropped_slow += 1;
            }
        }
        id
    }

    /// Publishes several events in order.
    pub fn publish_all(&self, events: &[Event]) {
        for e in events {
            self.publish(e);
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// Subscribers dropped for being too slow since the hub was made.
    pub fn dropped_slow(&self) -> u64 {
        self.lock().dropped_slow
    }

    /// Shutdown: every subscription ends (after the events already queued) and no new one is taken.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        for (_, sub) in std::mem::take(&mut s.subscribers) {
            sub.tx.close();
        }
        s.per_source.clear();
        s.per_user.clear();
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().remove(id);
    }
}

/// One subscriber's queue. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    hub: EventHub,
    id: u64,
    rx: async_channel::Receiver<Arc<Published>>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next event; `None` once the subscription ended (kas shuts down, or the subscriber was too
    /// slow: see [`Subscription::was_dropped`]).
    pub async fn recv(&self) -> Option<Arc<Published>> {
        self.rx.recv().await.ok()
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Arc<Published>> {
        self.rx.try_recv().ok()
    }

    /// Whether the hub dropped this subscriber because its queue was full.
    pub fn was_dropped(&self) -> bool {
        self.lagged.load(Ordering::SeqCst)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

/// Which agents are connected, counted in live tunnel connections: publishes an `agent` event when an
/// agent gets its first connection or loses its last one (several connections overlap during a GOAWAY
/// handover; that is not a disconnection).
#[derive(Debug, Default)]
pub struct Presence {
    connections: Mutex<BTreeMap<u64, u32>>,
}

impl Presence {
    /// A table with no agent connected.
    pub fn new() -> Self {
        Presence::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, u32>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `agent_id` was registered; publishes `connected` if it is the agent's first.
    pub fn connection_up(&self, agent_id: u64, hub: &EventHub) {
        let first = {
            let mut c = self.lock();
            let n = c.entry(agent_id).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            hub.publish(&Event::Agent {
                agent_id,
                connected: true,
            });
        }
    }

    /// A connection of `agent_id` is gone; publishes `disconnected` if it was the agent's last.
    pub fn connection_down(&self, agent_id: u64, hub: &EventHub) {
        let last = {
            let mut c = self.lock();
            match c.get_mut(&agent_id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    c.remove(&agent_id);
                    true
                }
                None => false,
            }
        };
        if last {
            hub.publish(&Event::Agent {
                agent_id,
                connected: false,
            });
        }
    }

    /// Whether `agent_id` has a live connection.
    pub fn is_connected(&self, agent_id: u64) -> bool {
        self.lock().contains_key(&agent_id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::cache::{ChangeType, ResourceKind};

    fn agent(agent_id: u64, connected: bool) -> Event {
        Event::Agent {
            agent_id,
            connected,
        }
    }

    fn pod_added(agent_id: u64, name: &str) -> Event {
        Event::Object {
            agent_id,
            change: ObjectChange {
                kind: ResourceKind::pod(),
                namespace: "default".into(),
                name: name.into(),
                uid: "u-1".into(),
                resource_version: "7".into(),
                change_type: ChangeType::Added,
            },
        }
    }

    fn drain(sub: &Subscription) -> Vec<Arc<Published>> {
        std::iter::from_fn(|| sub.try_recv()).collect()
    }

    #[test]
    fn relayed_events_reach_subscribers_but_never_another_relay() {
        let hub = EventHub::default();
        let client = hub.subscribe(Scope::Agent(2), "client").unwrap();
        let relay = hub.subscribe_local(Owner::internal("relay")).unwrap();
        assert_eq!(hub.subscribers(), 2);
        assert_eq!(hub.relay_subscribers(), 1);
        hub.publish(&agent(2, true));
        let data = agent(2, false).to_json().to_string();
        assert!(hub.publish_relayed("agent", 2, data.clone()).is_some());
        assert!(hub.publish_relayed("agent", 3, data.clone()).is_some());
        assert_eq!(hub.publish_relayed("hologram", 2, data.clone()), None);
        let got = drain(&client);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(!got[0].relayed && got[1].relayed);
        assert_eq!(got[1].data, data);
        assert_eq!(got[1].kind, "agent");
        assert!(got[0].id < got[1].id);
        // The relay takes the local event only: an event crosses one hop at most.
        let relayed = drain(&relay);
        assert_eq!(relayed.len(), 1);
        assert!(!relayed[0].relayed);
    }

    #[test]
    fn event_json_shapes() {
        assert_eq!(
            pod_added(3, "web").to_json(),
            json!({"agent_id": 3, "group": "", "version": "v1", "kind": "Pod", "namespace": "default",
                   "name": "web", "uid": "u-1", "resource_version": "7", "type": "Added"})
        );
        assert_eq!(
            agent(2, false).to_json(),
            json!({"agent_id": 2, "connected": false})
        );
        let view = Event::View {
            agent_id: 1,
            view: "nodes".into(),
            changes: vec![json!({"key": {}, "values": {"count": 3}})],
        };
        assert_eq!(view.kind(), "view");
        assert_eq!(
            view.to_json(),
            json!({"agent_id": 1, "view": "nodes", "changes": [{"key": {}, "values": {"count": 3}}]})
        );
        let gitops = Event::Gitops {
            agent_id: 3,
            project: "group/m".into(),
            data: json!({"type": "commit", "commit": "c1", "objects": 2}),
        };
        assert_eq!((gitops.kind(), gitops.agent_id()), ("gitops", 3));
        assert_eq!(
            gitops.to_json(),
            json!({"agent_id": 3, "project": "group/m", "type": "commit", "commit": "c1", "objects": 2})
        );
    }

    #[test]
    fn subscribers_get_the_events_in_their_scope_in_order() {
        let hub = EventHub::new(16, 10);
        let all = hub.subscribe(Scope::All, "all").unwrap();
        let one = hub.subscribe(Scope::Agent(1), "one").unwrap();
        let allowed = hub
            .subscribe(
                Scope::Allowed(AllowedAgents::Only([2, 3].into_iter().collect())),
                "allowed",
            )
            .unwrap();
        hub.publish(&agent(1, true));
        hub.publish(&pod_added(2, "a"));
        hub.publish(&pod_added(1, "b"));
        let ids = |v: Vec<Arc<Published>>| v.iter().map(|p| (p.id, p.agent_id)).collect::<Vec<_>>();
        assert_eq!(ids(drain(&all)), vec![(1, 1), (2, 2), (3, 1)]);
        assert_eq!(ids(drain(&one)), vec![(1, 1), (3, 1)]);
        assert_eq!(ids(drain(&allowed)), vec![(2, 2)]);
        let p = hub.publish(&agent(9, false));
        assert_eq!(p, 4);
        let got = drain(&all);
        assert_eq!(got[0].kind, "agent");
        assert_eq!(
            serde_json::from_str::<Value>(&got[0].data).unwrap(),
            json!({"agent_id": 9, "connected": false})
        );
    }

    #[test]
    fn a_slow_subscriber_is_dropped_without_disturbing_others() {
        let hub = EventHub::new(2, 10);
        let slow = hub.subscribe(Scope::All, "slow").unwrap();
        let fast = hub.subscribe(Scope::All, "fast").unwrap();
        for i in 0..5 {
            hub.publish(&pod_added(1, &format!("p{i}")));
            // The fast one keeps up.
            assert_eq!(drain(&fast).len(), 1);
        }
        assert!(slow.was_dropped());
        assert!(!fast.was_dropped());
        assert_eq!(hub.subscribers(), 1);
        assert_eq!(hub.dropped_slow(), 1);
        // What was queued before the drop is still delivered, then the subscription ends.
        assert_eq!(drain(&slow).len(), 2);
        assert_eq!(smol::block_on(slow.recv()), None);
    }

    #[test]
    fn dropping_a_subscription_unsubscribes_and_close_ends_all() {
        let hub = EventHub::new(4, 2);
        let a = hub.subscribe(Scope::All, "a").unwrap();
        let b = hub.subscribe(Scope::All, "b").unwrap();
        assert_eq!(
            hub.subscribe(Scope::All, "c").map(|_| ()),
            Err(SubscribeError::TooMany(2))
        );
        drop(b);
        assert_eq!(hub.subscribers(), 1);
        hub.publish(&agent(1, true));
        hub.close();
        assert_eq!(drain(&a).len(), 1);
        assert_eq!(smol::block_on(a.recv()), None);
        assert!(!a.was_dropped());
        assert_eq!(
            hub.subscribe(Scope::All, "late").map(|_| ()),
            Err(SubscribeError::Closed)
        );
    }

    #[test]
    fn one_source_or_one_user_cannot_take_every_slot() {
        let hub = EventHub::with_limits(
            4,
            SubscriberLimits {
                total: 10,
                per_source: 3,
                per_user: 2,
            },
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<Subscription> = (0..3)
            .map(|_| hub.subscribe(Scope::All, Owner::client(a, None)).unwrap())
            .collect();
        assert_eq!(
            hub.subscribe(Scope::All, Owner::client(a, None))
                .map(|_| ()),
            Err(SubscribeError::TooManyFromSource(3))
        );
        // Another address still gets in (the dashboard is not locked out).
        let other = hub.subscribe(Scope::All, Owner::client(b, None)).unwrap();
        // Per user, across addresses.
        let u1 = hub
            .subscribe(Scope::All, Owner::client(b, Some("mallory")))
            .unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let u2 = hub
            .subscribe(Scope::All, Owner::client(c, Some("mallory")))
            .unwrap();
        let d: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            hub.subscribe(Scope::All, Owner::client(d, Some("mallory")))
                .map(|_| ()),
            Err(SubscribeError::TooManyForUser(2))
        );
        assert!(
            hub.subscribe(Scope::All, Owner::client(d, Some("alice")))
                .is_ok()
        );
        // Slots come back when streams end, and also when the hub drops a slow one.
        drop(held);
        drop(u1);
        assert!(hub.subscribe(Scope::All, Owner::client(a, None)).is_ok());
        assert!(
            hub.subscribe(Scope::All, Owner::client(d, Some("mallory")))
                .is_ok()
        );
        drop((other, u2));
        // IPv6 addresses of one /64 are one source.
        let hub = EventHub::with_limits(
            4,
            SubscriberLimits {
                total: 10,
                per_source: 1,
                per_user: 10,
            },
        );
        let x: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let y: IpAddr = "2001:db8:0:1::2".parse().unwrap();
        let _x = hub.subscribe(Scope::All, Owner::client(x, None)).unwrap();
        assert!(hub.subscribe(Scope::All, Owner::client(y, None)).is_err());
    }

    #[test]
    fn slots_of_dropped_slow_subscribers_are_released() {
        let hub = EventHub::with_limits(
            1,
            SubscriberLimits {
                total: 10,
                per_source: 1,
                per_user: 1,
            },
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let slow = hub
            .subscribe(Scope::All, Owner::client(a, Some("u")))
            .unwrap();
        hub.publish(&agent(1, true));
        hub.publish(&agent(1, false));
        assert!(slow.was_dropped());
        assert!(
            hub.subscribe(Scope::All, Owner::client(a, Some("u")))
                .is_ok()
        );
    }

    #[test]
    fn presence_reports_first_and_last_connection_only() {
        let hub = EventHub::new(16, 10);
        let sub = hub.subscribe(Scope::All, "t").unwrap();
        let p = Presence::new();
        p.connection_up(1, &hub);
        p.connection_up(1, &hub); // GOAWAY handover: a second connection
        p.connection_down(1, &hub);
        assert!(p.is_connected(1));
        p.connection_down(1, &hub);
        p.connection_down(1, &hub); // unknown: nothing
        assert!(!p.is_connected(1));
        let got: Vec<String> = drain(&sub).iter().map(|e| e.data.clone()).collect();
        assert_eq!(
            got,
            vec![
                r#"{"agent_id":1,"connected":true}"#.to_owned(),
                r#"{"agent_id":1,"connected":false}"#.to_owned()
            ]
        );
    }
}
