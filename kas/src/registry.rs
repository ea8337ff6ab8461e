//! The agent registry: live agent connections, the requests waiting for one, and the agents kas has seen.
//!
//! Every routing *decision* is made by [`protocol::routing::KasRouting`] (existence, placement, reroute
//! of requests the agent never processed; the deterministic simulator drives the same policy on every
//! replica); this module is its async face for kas:
//!
//! - connections are keyed by a `u64` connection serial, requests by a `u64` request serial;
//! - [`Registry::route`] asks the policy for a connection of an agent and, if none is usable yet, waits
//!   on a one-shot channel until the policy assigns one or fails the request (deadline, lost);
//! - a single task, [`Registry::run_timers`], drives the policy's timers (`poll_timeout` /
//!   `handle_timeout`) and wakes the waiters whose deadline passed;
//! - after every report to the policy (connection added, draining, closed, request finished, refused,
//!   failed to open, cancelled, timed out) its events (`poll_event`) are delivered to their waiters at
//!   once, under the same lock.
//!
//! A routed request is held as a [`Lease`]: it names the connection to open the stream on and tells the
//! policy the request finished when dropped. [`Lease::open_failed`] and [`Lease::refused`] report a
//! stream the agent provably never processed; the policy decides whether and where it goes next.
//!
//! Connections are marked draining only by the connection's synchronous observer
//! ([`crate::agent_listener`]), the moment the protocol processed the GOAWAY: nothing here polls.
//!
//! The registry is generic over the connection handle `C`, so it is tested here without sockets; kas
//! uses `runtime_smol::Connection`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use protocol::proto::AgentMeta;
use protocol::routing::{
    DrainCause, KasRouting, Listing, OpenFailure, Placement, ReplicaId, RequestFailure,
    RequestSpec, RoutingConfig, RoutingEvent, RoutingStats,
};

/// Misuse of the registry's connection table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The connection serial is already registered.
    #[error("connection {0} is already registered")]
    DuplicateConnection(u64),
    /// kas is shutting down: no connection is registered any more.
    #[error("kas is shutting down")]
    ShuttingDown,
}

/// One live agent connection as the registry keeps it.
#[derive(Debug, Clone)]
pub struct ConnectionEntry<C> {
    /// The connection serial (the router's handle).
    pub serial: u64,
    /// The authenticated agent.
    pub agent_id: u64,
    /// The id sent to the agent in ACCEPT (for logs on both sides).
    pub connection_id: String,
    /// The runtime's handle on the connection.
    pub handle: C,
    /// What the agent said about itself in HELLO.
    pub meta: AgentMeta,
    /// The agent's address.
    pub peer: SocketAddr,
    /// When the connection was accepted.
    pub connected_since: SystemTime,
    /// GOAWAY sent or received: no new requests go to it.
    pub draining: bool,
}

/// An agent kas has authenticated at least once since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenAgent {
    /// The agent id.
    pub agent_id: u64,
    /// Its name, as the authentication backend knows it.
    pub name: String,
    /// When it last authenticated.
    pub last_seen: SystemTime,
}

/// What [`Registry::route`] hands out: where to open the request's stream.
struct Assignment<C> {
    serial: u64,
    handle: C,
}

/// Where the policy put a waiting request.
enum Placed<C> {
    /// On a connection here.
    Here(Assignment<C>),
    /// On another replica, which holds a connection of the agent.
    Forward(ReplicaId),
}

type Outcome<C> = Result<Placed<C>, RequestFailure>;

/// Where [`Registry::route_or_forward`] sends a request.
#[derive(Debug)]
pub enum Routed<C: Clone + Send + 'static> {
    /// A connection here.
    Here(Lease<C>),
    /// Another replica holds a connection of the agent and none here is usable: forward it there.
    Forward(ReplicaId),
}

/// A request waiting for the policy's answer.
struct Waiter<C> {
    agent_id: u64,
    tx: async_channel::Sender<Outcome<C>>,
}

struct State<C> {
    routing: KasRouting<u64, u64>,
    connections: BTreeMap<u64, ConnectionEntry<C>>,
    seen: BTreeMap<u64, SeenAgent>,
    waiters: HashMap<u64, Waiter<C>>,
    next_request: u64,
    next_connection: u64,
    closed: bool,
}

struct Shared<C> {
    state: Mutex<State<C>>,
    /// Wakes the timer task when a deadline may have moved earlier (or at shutdown, by closing).
    kick: async_channel::Sender<()>,
    kick_rx: async_channel::Receiver<()>,
    /// Signalled when a connection was added or removed (the tracker re-publishes).
    changed: async_channel::Sender<()>,
    changed_rx: async_channel::Receiver<()>,
    /// The traffic recorder connections are reported to ([`crate::recording`]), when recording.
    recorder: std::sync::OnceLock<Arc<crate::recording::Recorder>>,
}

/// The registry; cheap to clone (all clones share one state).
pub struct Registry<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for Registry<C> {
    fn clone(&self) -> Self {
        Registry {
            shared: self.shared.clone(),
        }
    }
}

impl<C> std::fmt::Debug for Registry<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl<C: Clone + Send + 'static> Registry<C> {
    /// An empty registry whose policy has these limits and knows the agents `listing` names.
    pub fn new(config: RoutingConfig, listing: Listing) -> Self {
        let (kick, kick_rx) = async_channel::bounded(1);
        let (changed, changed_rx) = async_channel::bounded(1);
        Registry {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    routing: KasRouting::new(config, listing),
                    connections: BTreeMap::new(),
                    seen: BTreeMap::new(),
                    waiters: HashMap::new(),
                    next_request: 1,
                    next_connection: 1,
                    closed: false,
                }),
                kick,
                kick_rx,
                changed,
                changed_rx,
                recorder: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Reports every connection added and removed to the traffic recorder.
    pub fn set_recorder(&self, recorder: Arc<crate::recording::Recorder>) {
        let _ = self.shared.recorder.set(recorder);
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick_timers(&self) {
        // A full channel already holds a wake-up: nothing is lost.
        let _ = self.shared.kick.try_send(());
    }

    /// A fresh connection serial (for the connection id sent in ACCEPT, before the connection is added).
    pub fn next_connection_serial(&self) -> u64 {
        let mut s = self.lock();
        let serial = s.next_connection;
        s.next_connection += 1;
        serial
    }

    /// The agents file was (re)loaded.
    pub fn set_listing(&self, listing: Listing) {
        self.lock().routing.handle_listing(listing);
    }

    /// Records that `agent_id` authenticated (its name, for listings; "seen" for the GitLab backend's
    /// notion of a known agent).
    pub fn note_agent(&self, agent_id: u64, name: &str) {
        let mut s = self.lock();
        s.routing.handle_authenticated(agent_id);
        s.seen.insert(
            agent_id,
            SeenAgent {
                agent_id,
                name: name.to_owned(),
                last_seen: SystemTime::now(),
            },
        );
    }

    /// Whether `agent_id` exists: the one answer for the proxy, `/agents/{id}` and `/views`
    /// ([`protocol::routing::existence`]).
    pub fn agent_exists(&self, agent_id: u64) -> bool {
        self.lock().routing.agent_exists(agent_id, Instant::now())
    }

    /// Every agent that exists (listed, or seen for an open listing), by id, with its name when known.
    pub fn known_agents(&self) -> Vec<(u64, Option<String>)> {
        let s = self.lock();
        s.routing
            .existence()
            .known()
            .map(|id| (id, s.seen.get(&id).map(|a| a.name.clone())))
            .collect()
    }

    /// Registers an accepted connection on which kas may open `max_streams` concurrent streams.
    /// Requests waiting for its agent are handed to it at once.
    pub fn add_connection(
        &self,
        entry: ConnectionEntry<C>,
        max_streams: u32,
    ) -> Result<(), RegistryError> {
        let mut s = self.lock();
        if s.closed {
            return Err(RegistryError::ShuttingDown);
        }
        let serial = entry.serial;
        if s.connections.contains_key(&serial) {
            return Err(RegistryError::DuplicateConnection(serial));
        }
        s.routing
            .handle_connected(entry.agent_id, serial, max_streams, Instant::now())
            .map_err(|_| RegistryError::DuplicateConnection(serial))?;
        let recorded = self
            .shared
            .recorder
            .get()
            .map(|r| (r, entry.agent_id, entry.connection_id.clone()));
        s.connections.insert(serial, entry);
        deliver(&mut s);
        drop(s);
        if let Some((recorder, agent_id, connection_id)) = recorded {
            recorder.connected(agent_id, &connection_id);
        }
        let _ = self.shared.changed.try_send(());
        Ok(())
    }

    /// Marks a connection draining (GOAWAY either way): no new request goes to it; requests queued for
    /// it but not yet started go elsewhere. Called by the connection's synchronous observer. Returns
    /// whether it was live and not draining yet.
    pub fn set_draining(&self, serial: u64, cause: DrainCause) -> bool {
        let mut s = self.lock();
        let Some(entry) = s.connections.get_mut(&serial) else {
            return false;
        };
        if entry.draining {
            return false;
        }
        entry.draining = true;
        s.routing.handle_draining(&serial, cause, Instant::now());
        deliver(&mut s);
        true
    }

    /// Forgets a connection that closed. Returns how many requests were running on it: their streams
    /// fail on their own, and the policy keeps each until its [`Lease`] reports how (finished: the
    /// agent may have processed it, the proxy fails it; refused or never opened: placed again).
    pub fn remove_connection(&self, serial: u64) -> usize {
        let mut s = self.lock();
        let Some(entry) = s.connections.remove(&serial) else {
            return 0;
        };
        let lost = s.routing.connection(&serial).map_or(0, |c| c.load);
        s.routing.handle_closed(&serial, Instant::now());
        deliver(&mut s);
        drop(s);
        if let Some(recorder) = self.shared.recorder.get() {
            recorder.disconnected(entry.agent_id, &entry.connection_id);
        }
        let _ = self.shared.changed.try_send(());
        lost
    }

    /// The live connections, by serial.
    pub fn connections(&self) -> Vec<ConnectionEntry<C>> {
        self.lock().connections.values().cloned().collect()
    }

    /// The live connections of one agent, by serial.
    pub fn connections_of(&self, agent_id: u64) -> Vec<ConnectionEntry<C>> {
        self.lock()
            .connections
            .values()
            .filter(|e| e.agent_id == agent_id)
            .cloned()
            .collect()
    }

    /// The policy's totals (connections, pending and assigned requests, reroutes).
    pub fn stats(&self) -> RoutingStats {
        self.lock().routing.stats()
    }

    /// Requests waiting for a connection of `agent_id`.
    pub fn pending_for(&self, agent_id: u64) -> usize {
        self.lock().routing.pending_for(agent_id)
    }

    /// Requests currently assigned to a connection (its load in the router).
    pub fn load(&self, serial: u64) -> usize {
        self.lock()
            .routing
            .connection(&serial)
            .map_or(0, |c| c.load)
    }

    /// Whether [`Registry::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Shutdown: routes nothing any more, fails every waiting request with
    /// [`RequestFailure::ShuttingDown`], marks every connection draining and stops the timer task.
    /// Requests already running keep their leases.
    pub fn close(&self) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.closed = true;
        for e in s.connections.values_mut() {
            e.draining = true;
        }
        s.routing.handle_shutdown();
        deliver(&mut s);
        // Waiters the policy did not know any more (cannot happen) must not hang.
        for (_, w) in s.waiters.drain() {
            let _ = w.tx.try_send(Err(RequestFailure::ShuttingDown));
        }
        drop(s);
        self.shared.kick.close();
    }

    /// Routes a request for `agent_id` to a connection here: now, or after waiting until one is
    /// usable, at the latest until `deadline`. `replayable`: the request may be sent again after a
    /// refusal (no body). Never forwarded to another replica. Dropping the returned future cancels the
    /// request.
    pub async fn route(
        &self,
        agent_id: u64,
        deadline: Instant,
        replayable: bool,
    ) -> Result<Lease<C>, RequestFailure> {
        match self
            .route_or_forward(agent_id, deadline, replayable, RequestSpec::LOCAL_ONLY)
            .await?
        {
            Routed::Here(lease) => Ok(lease),
            // `LOCAL_ONLY`: the policy never forwards it.
            Routed::Forward(_) => Err(RequestFailure::NotConnected {
                waited: Duration::ZERO,
            }),
        }
    }

    /// Routes a request that was forwarded `hops` times already: to a connection here (now or after
    /// waiting, as [`Registry::route`]), or to another replica the policy picked from the holders
    /// ([`Registry::set_holders`]); it may move there while waiting, when a holder appears.
    pub async fn route_or_forward(
        &self,
        agent_id: u64,
        deadline: Instant,
        replayable: bool,
        hops: u8,
    ) -> Result<Routed<C>, RequestFailure> {
        let (request, rx) = {
            let mut s = self.lock();
            if s.closed {
                return Err(RequestFailure::ShuttingDown);
            }
            let request = s.next_request;
            s.next_request += 1;
            let spec = RequestSpec {
                agent_id,
                deadline,
                replayable,
                hops,
            };
            match s.routing.handle_request(request, spec, Instant::now()) {
                Placement::Open(serial) => {
                    let handle = s.connections.get(&serial).map(|e| e.handle.clone());
                    let Some(handle) = handle else {
                        // The policy and the table disagree (cannot happen): fail, do not leak load.
                        s.routing.handle_finished(&request);
                        deliver(&mut s);
                        return Err(RequestFailure::ConnectionLost);
                    };
                    return Ok(Routed::Here(Lease::new(
                        self.clone(),
                        agent_id,
                        request,
                        Assignment { serial, handle },
                    )));
                }
                Placement::Reject(e) => return Err(e),
                Placement::Forward(replica) => return Ok(Routed::Forward(replica)),
                Placement::Wait => {
                    let (tx, rx) = async_channel::bounded(1);
                    s.waiters.insert(request, Waiter { agent_id, tx });
                    (request, rx)
                }
            }
        };
        self.kick_timers();
        self.wait(agent_id, request, rx).await
    }

    /// The replicas holding a connection of `agent_id`, each until its entry expires (from the
    /// tracker). Requests waiting for the agent move to one at once if none is usable here.
    pub fn set_holders(&self, agent_id: u64, holders: &[(ReplicaId, Instant)]) {
        let mut s = self.lock();
        s.routing.handle_holders(agent_id, holders, Instant::now());
        deliver(&mut s);
    }

    /// Whether `agent_id` has a live, not draining connection here.
    pub fn has_live_connection(&self, agent_id: u64) -> bool {
        self.lock()
            .connections
            .values()
            .any(|e| e.agent_id == agent_id && !e.draining)
    }

    /// The agents requests are waiting for, sorted.
    pub fn waiting_agents(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.lock().waiters.values().map(|w| w.agent_id).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Resolves when a connection was added or removed since the last call (coalesced).
    pub async fn changed(&self) {
        let _ = self.shared.changed_rx.recv().await;
    }

    async fn wait(
        &self,
        agent_id: u64,
        request: u64,
        rx: async_channel::Receiver<Outcome<C>>,
    ) -> Result<Routed<C>, RequestFailure> {
        let guard = WaitGuard {
            registry: self,
            request,
            armed: true,
        };
        let outcome = rx.recv().await;
        let mut guard = guard;
        guard.armed = false;
        match outcome {
            Ok(Ok(Placed::Here(assignment))) => Ok(Routed::Here(Lease::new(
                self.clone(),
                agent_id,
                request,
                assignment,
            ))),
            Ok(Ok(Placed::Forward(replica))) => Ok(Routed::Forward(replica)),
            Ok(Err(e)) => Err(e),
            // The sender vanished without an answer: only at shutdown.
            Err(_) => Err(RequestFailure::ShuttingDown),
        }
    }

    /// The single task driving the policy's deadlines: sleeps until the earliest one (or until a new
    /// request may have moved it earlier), expires what is due and wakes those waiters. Returns after
    /// [`Registry::close`].
    pub async fn run_timers(&self) {
        let kicks = self.shared.kick_rx.clone();
        loop {
            let next = {
                let s = self.lock();
                if s.closed {
                    return;
                }
                s.routing.poll_timeout()
            };
            let woke = match next {
                Some(at) => {
                    futures_lite::future::or(async { kicks.recv().await.is_ok() }, async {
                        smol::Timer::at(at).await;
                        true
                    })
                    .await
                }
                None => kicks.recv().await.is_ok(),
            };
            if !woke {
                return;
            }
            let mut s = self.lock();
            s.routing.handle_timeout(Instant::now());
            deliver(&mut s);
        }
    }
}

/// Cancels a waiting request when its future is dropped before an answer arrived.
struct WaitGuard<'a, C: Clone + Send + 'static> {
    registry: &'a Registry<C>,
    request: u64,
    armed: bool,
}

impl<C: Clone + Send + 'static> Drop for WaitGuard<'_, C> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut s = self.registry.lock();
        s.waiters.remove(&self.request);
        // Waiting, or already placed (its assignment sat unread in the channel): either way it ends.
        s.routing.handle_cancelled(&self.request);
        deliver(&mut s);
    }
}

/// Hands every queued policy event to its waiter. Runs under the lock after every report.
fn deliver<C: Clone>(s: &mut State<C>) {
    while let Some(event) = s.routing.poll_event() {
        match event {
            RoutingEvent::Assigned {
                request,
                conn: serial,
            } => {
                let handle = s.connections.get(&serial).map(|e| e.handle.clone());
                let waiter = s.waiters.remove(&request);
                match (waiter, handle) {
                    (Some(w), Some(handle)) => {
                        if w.tx
                            .try_send(Ok(Placed::Here(Assignment { serial, handle })))
                            .is_err()
                        {
                            s.routing.handle_finished(&request);
                        }
                    }
                    (waiter, _) => {
                        s.routing.handle_finished(&request);
                        if let Some(w) = waiter {
                            let _ = w.tx.try_send(Err(RequestFailure::ConnectionLost));
                        }
                    }
                }
            }
            RoutingEvent::Failed { request, failure } => {
                if let Some(w) = s.waiters.remove(&request) {
                    let _ = w.tx.try_send(Err(failure));
                }
            }
            RoutingEvent::Forward { request, replica } => {
                if let Some(w) = s.waiters.remove(&request) {
                    let _ = w.tx.try_send(Ok(Placed::Forward(replica)));
                }
            }
        }
    }
}

/// A request the policy placed on a connection. Dropping it tells the policy the request finished.
pub struct Lease<C: Clone + Send + 'static> {
    registry: Registry<C>,
    agent_id: u64,
    request: u64,
    serial: u64,
    handle: C,
    active: bool,
}

impl<C: Clone + Send + 'static> std::fmt::Debug for Lease<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("agent_id", &self.agent_id)
            .field("request", &self.request)
            .field("connection", &self.serial)
            .finish()
    }
}

impl<C: Clone + Send + 'static> Lease<C> {
    fn new(registry: Registry<C>, agent_id: u64, request: u64, a: Assignment<C>) -> Self {
        Lease {
            registry,
            agent_id,
            request,
            serial: a.serial,
            handle: a.handle,
            active: true,
        }
    }

    /// The connection to open the request's stream on.
    pub fn connection(&self) -> &C {
        &self.handle
    }

    /// The connection's serial.
    pub fn connection_serial(&self) -> u64 {
        self.serial
    }

    /// The request's serial (its id in logs).
    pub fn request_id(&self) -> u64 {
        self.request
    }

    /// The agent the request is for.
    pub fn agent_id(&self) -> u64 {
        self.agent_id
    }

    /// Opening the stream failed and nothing reached the wire: the policy decides (another connection
    /// here, another replica holding the agent, or a failure), and this waits for its answer. Also
    /// when the connection closed meanwhile (the policy kept the request: rule 3a of
    /// [`protocol::routing::policy`]).
    pub async fn open_failed(self, failure: OpenFailure) -> Result<Routed<C>, RequestFailure> {
        self.report(|routing, request| routing.handle_open_failed(request, failure, Instant::now()))
            .await
    }

    /// The agent refused the stream before answering (never processed it): the policy decides, as for
    /// [`Lease::open_failed`] (a request with a body fails: it cannot be sent again).
    pub async fn refused(self) -> Result<Routed<C>, RequestFailure> {
        self.report(|routing, request| routing.handle_refused(request, Instant::now()))
            .await
    }

    async fn report(
        mut self,
        f: impl FnOnce(&mut KasRouting<u64, u64>, &u64),
    ) -> Result<Routed<C>, RequestFailure> {
        let registry = self.registry.clone();
        let (agent_id, request) = (self.agent_id, self.request);
        self.active = false;
        drop(self);
        let rx = {
            let mut s = registry.lock();
            let (tx, rx) = async_channel::bounded(1);
            s.waiters.insert(request, Waiter { agent_id, tx });
            f(&mut s.routing, &request);
            deliver(&mut s);
            if s.waiters.contains_key(&request) && !s.routing.knows(&request) {
                // The policy keeps every request a lease holds (orphans included) until it is
                // reported: cannot happen, but never wait for an answer that will not come.
                s.waiters.remove(&request);
                return Err(RequestFailure::ConnectionLost);
            }
            rx
        };
        registry.kick_timers();
        // Here again, or another replica (the agent never processed it: the caller forwards it).
        registry.wait(agent_id, request, rx).await
    }
}

impl<C: Clone + Send + 'static> Drop for Lease<C> {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let mut s = self.registry.lock();
        // Its connection may be gone (an orphan in the policy): finished either way.
        s.routing.handle_finished(&self.request);
        deliver(&mut s);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::routing::RouterConfig;

    type Reg = Registry<&'static str>;

    fn entry(serial: u64, agent_id: u64, handle: &'static str) -> ConnectionEntry<&'static str> {
        ConnectionEntry {
            serial,
            agent_id,
            connection_id: format!("c{serial}"),
            handle,
            meta: AgentMeta::default(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            connected_since: SystemTime::now(),
            draining: false,
        }
    }

    /// A registry for the GitLab backend (open listing) that has seen agents 1, 3 and 9.
    fn reg() -> Reg {
        let reg = Reg::new(RoutingConfig::default(), Listing::Open);
        for id in [1, 3, 9] {
            reg.note_agent(id, "");
        }
        reg
    }

    fn in_secs(s: u64) -> Instant {
        Instant::now() + Duration::from_secs(s)
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        smol::block_on(f)
    }

    /// The lease of a request the policy placed here again.
    fn here(routed: Result<Routed<&'static str>, RequestFailure>) -> Lease<&'static str> {
        match routed {
            Ok(Routed::Here(lease)) => lease,
            other => panic!("expected a connection here, got {other:?}"),
        }
    }

    /// Waits (bounded, a hang guard) until `f` holds.
    fn until(f: impl Fn() -> bool) {
        for _ in 0..400 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(f(), "condition not reached");
    }

    #[test]
    fn routes_at_once_to_a_live_connection_and_releases_on_drop() {
        let reg = reg();
        reg.add_connection(entry(1, 7, "a"), 1).unwrap();
        let lease = run(reg.route(7, in_secs(5), true)).unwrap();
        assert_eq!(*lease.connection(), "a");
        assert_eq!(reg.load(1), 1);
        drop(lease);
        assert_eq!(reg.load(1), 0);
    }

    #[test]
    fn waiting_request_gets_a_connection_that_arrives_later() {
        let reg = reg();
        let timers = smol::spawn({
            let r = reg.clone();
            async move { r.run_timers().await }
        });
        let waiting = smol::spawn({
            let r = reg.clone();
            async move { r.route(3, in_secs(30), true).await.map(|l| *l.connection()) }
        });
        // Give the request time to be registered (a hang guard, not an assertion on time).
        for _ in 0..200 {
            if reg.stats().router.pending == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(reg.stats().router.pending, 1);
        reg.add_connection(entry(4, 3, "late"), 8).unwrap();
        assert_eq!(run(waiting), Ok("late"));
        reg.close();
        run(timers);
    }

    #[test]
    fn deadline_fails_a_waiting_request_with_not_connected() {
        let reg = reg();
        let timers = smol::spawn({
            let r = reg.clone();
            async move { r.run_timers().await }
        });
        let result = run(reg.route(9, Instant::now() + Duration::from_millis(50), true));
        assert!(
            matches!(result, Err(RequestFailure::NotConnected { .. })),
            "{result:?}"
        );
        assert_eq!(reg.stats().router.pending, 0);
        reg.close();
        run(timers);
    }

    #[test]
    fn dropping_a_waiting_request_cancels_it() {
        let reg = reg();
        let fut = reg.route(1, in_secs(30), true);
        let polled = run(async {
            futures_lite::future::or(async { Some(fut.await) }, async {
                smol::Timer::after(Duration::from_millis(20)).await;
                None
            })
            .await
        });
        assert!(polled.is_none());
        assert_eq!(reg.stats().router.pending, 0);
        // A connection arriving later has no load from the cancelled request.
        reg.add_connection(entry(1, 1, "a"), 1).unwrap();
        assert_eq!(reg.load(1), 0);
    }

    #[test]
    fn pending_is_bounded() {
        let reg = Reg::new(
            RoutingConfig {
                router: RouterConfig {
                    max_pending_per_agent: 1,
                    max_pending_total: 10,
                },
                ..RoutingConfig::default()
            },
            Listing::Open,
        );
        reg.note_agent(1, "one");
        let first = reg.route(1, in_secs(30), true);
        let second = reg.route(1, in_secs(30), true);
        let (a, b) = run(async {
            let mut first = Box::pin(first);
            let a = futures_lite::future::poll_once(&mut first).await;
            let b = second.await;
            (a.is_none(), b)
        });
        assert!(a, "first request waits");
        assert_eq!(b.unwrap_err(), RequestFailure::TooManyPending);
    }

    #[test]
    fn an_unprocessed_open_moves_the_request_to_another_connection() {
        let reg = reg();
        reg.add_connection(entry(1, 5, "old"), 4).unwrap();
        let lease = run(reg.route(5, in_secs(30), true)).unwrap();
        assert_eq!(*lease.connection(), "old");
        reg.add_connection(entry(2, 5, "new"), 4).unwrap();
        let lease = here(run(lease.open_failed(OpenFailure::GoingAway)));
        assert_eq!(*lease.connection(), "new");
        assert_eq!((reg.load(1), reg.load(2)), (0, 1));
        assert_eq!(reg.stats().rerouted, 1);
        // New requests avoid the draining connection too.
        let other = run(reg.route(5, in_secs(30), true)).unwrap();
        assert_eq!(*other.connection(), "new");
    }

    #[test]
    fn a_request_after_the_drain_observer_ran_is_never_rerouted() {
        let reg = reg();
        reg.add_connection(entry(1, 5, "a"), 4).unwrap();
        reg.add_connection(entry(2, 5, "b"), 4).unwrap();
        assert!(reg.set_draining(1, DrainCause::PeerGoaway));
        assert!(!reg.set_draining(1, DrainCause::PeerGoaway), "once");
        let lease = run(reg.route(5, in_secs(30), true)).unwrap();
        assert_eq!(*lease.connection(), "b");
        assert_eq!(reg.stats().rerouted, 0);
    }

    #[test]
    fn refusals_of_requests_with_a_body_fail() {
        let reg = reg();
        reg.add_connection(entry(1, 5, "a"), 4).unwrap();
        let lease = run(reg.route(5, in_secs(30), false)).unwrap();
        assert_eq!(
            run(lease.refused()).unwrap_err(),
            RequestFailure::Unprocessed { attempts: 1 }
        );
        assert_eq!(reg.load(1), 0);
        let lease = run(reg.route(5, in_secs(30), true)).unwrap();
        let lease = here(run(lease.refused()));
        assert_eq!(*lease.connection(), "a");
    }

    /// The refused-stream race (issue 12): the agent refuses a stream and closes the connection (a
    /// duplicate, a shed one), and kas removes the connection before the proxy reports the refusal.
    /// The request was never processed: it goes to the agent's other connection, not a 502.
    #[test]
    fn a_refusal_reported_after_its_connection_closed_is_placed_again() {
        let reg = reg();
        reg.add_connection(entry(1, 5, "duplicate"), 4).unwrap();
        let lease = run(reg.route(5, in_secs(30), true)).unwrap();
        assert_eq!(*lease.connection(), "duplicate");
        reg.add_connection(entry(2, 5, "other"), 4).unwrap();
        assert_eq!(reg.remove_connection(1), 1, "running on it when it closed");
        let lease = here(run(lease.refused()));
        assert_eq!(*lease.connection(), "other");
        assert_eq!(reg.load(2), 1);
        assert_eq!(reg.stats().rerouted, 1);
        // The same for an open that failed on a connection closed meanwhile.
        reg.add_connection(entry(3, 5, "third"), 4).unwrap();
        assert_eq!(reg.remove_connection(2), 1);
        let lease = here(run(lease.open_failed(OpenFailure::Closed)));
        assert_eq!(*lease.connection(), "third");
        drop(lease);
        assert_eq!(reg.load(3), 0);
        assert_eq!(reg.stats().router.assigned, 0);
    }

    #[test]
    fn a_refusal_after_the_last_connection_closed_waits_for_the_next_one() {
        let reg = reg();
        let timers = smol::spawn({
            let r = reg.clone();
            async move { r.run_timers().await }
        });
        reg.add_connection(entry(1, 5, "duplicate"), 4).unwrap();
        let lease = run(reg.route(5, in_secs(30), true)).unwrap();
        reg.remove_connection(1);
        let refused = smol::spawn(async move {
            lease.refused().await.map(|r| match r {
                Routed::Here(l) => *l.connection(),
                Routed::Forward(_) => "forwarded",
            })
        });
        until(|| reg.pending_for(5) == 1);
        reg.add_connection(entry(2, 5, "redialled"), 4).unwrap();
        assert_eq!(run(refused), Ok("redialled"));
        // Its original deadline still holds: refused after a close, it waits no longer than that.
        reg.remove_connection(2);
        reg.add_connection(entry(3, 5, "short"), 4).unwrap();
        let lease = run(reg.route(5, Instant::now() + Duration::from_millis(100), true)).unwrap();
        assert_eq!(*lease.connection(), "short");
        reg.remove_connection(3);
        assert!(matches!(
            run(lease.refused()),
            Err(RequestFailure::NotConnected { .. })
        ));
        reg.close();
        run(timers);
    }

    #[test]
    fn a_refusal_after_the_close_moves_to_the_replica_holding_the_agent() {
        let reg = Reg::new(
            RoutingConfig {
                replica: Some(ReplicaId(1)),
                ..RoutingConfig::default()
            },
            Listing::Open,
        );
        reg.note_agent(5, "five");
        reg.add_connection(entry(1, 5, "duplicate"), 4).unwrap();
        reg.set_holders(5, &[(ReplicaId(2), in_secs(30))]);
        let lease = match run(reg.route_or_forward(5, in_secs(30), true, 0)).unwrap() {
            Routed::Here(lease) => lease,
            Routed::Forward(r) => panic!("a live connection here comes first, not {r}"),
        };
        // A request with a body that was refused cannot go anywhere: a typed failure.
        let with_body = match run(reg.route_or_forward(5, in_secs(30), false, 0)).unwrap() {
            Routed::Here(lease) => lease,
            Routed::Forward(r) => panic!("{r}"),
        };
        reg.remove_connection(1);
        assert!(matches!(
            run(lease.refused()),
            Ok(Routed::Forward(ReplicaId(2)))
        ));
        assert_eq!(
            run(with_body.refused()).unwrap_err(),
            RequestFailure::Unprocessed { attempts: 1 }
        );
        assert_eq!(reg.stats().router.pending + reg.stats().router.assigned, 0);
        // A forwarded request (one hop made) is never forwarded again, nor does it wait here once
        // no live connection of the agent is left (rule 5a): it goes back to the replica that
        // forwarded it (421 not-held), which asks again.
        reg.add_connection(entry(2, 5, "back"), 4).unwrap();
        let hopped = match run(reg.route_or_forward(5, in_secs(30), true, 1)).unwrap() {
            Routed::Here(lease) => lease,
            Routed::Forward(r) => panic!("{r}"),
        };
        reg.remove_connection(2);
        assert_eq!(run(hopped.refused()).err(), Some(RequestFailure::NotHeld));
        assert_eq!(reg.pending_for(5), 0, "nothing waits for the agent here");
        assert_eq!(
            run(reg.route_or_forward(5, in_secs(30), true, 1)).err(),
            Some(RequestFailure::NotHeld)
        );
    }

    #[test]
    fn agent_existence_follows_the_listing() {
        let reg = Reg::new(RoutingConfig::default(), Listing::Authoritative([1].into()));
        assert!(reg.agent_exists(1));
        assert!(!reg.agent_exists(2));
        assert_eq!(
            run(reg.route(2, in_secs(1), true)).unwrap_err(),
            RequestFailure::UnknownAgent
        );
        reg.set_listing(Listing::Authoritative([2].into()));
        assert!(reg.agent_exists(2) && !reg.agent_exists(1));
        assert_eq!(reg.known_agents(), vec![(2, None)]);
    }

    #[test]
    fn removing_a_connection_reports_running_requests_lost() {
        let reg = reg();
        reg.add_connection(entry(1, 5, "a"), 4).unwrap();
        let lease = run(reg.route(5, in_secs(30), true)).unwrap();
        assert_eq!(reg.remove_connection(1), 1);
        drop(lease); // its stream failed (the agent may have processed it): finished
        assert_eq!(reg.stats().router.assigned, 0);
        assert!(reg.connections().is_empty());
    }

    #[test]
    fn close_fails_waiters_and_refuses_new_work() {
        let reg = reg();
        let waiting = smol::spawn({
            let r = reg.clone();
            async move { r.route(1, in_secs(30), true).await.map(|_| ()) }
        });
        for _ in 0..200 {
            if reg.stats().router.pending == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        reg.close();
        assert_eq!(run(waiting), Err(RequestFailure::ShuttingDown));
        assert_eq!(
            run(reg.route(1, in_secs(1), true)).map(|_| ()),
            Err(RequestFailure::ShuttingDown)
        );
        assert_eq!(
            reg.add_connection(entry(1, 1, "a"), 1),
            Err(RegistryError::ShuttingDown)
        );
    }

    #[test]
    fn seen_agents_are_remembered() {
        let reg = Reg::new(RoutingConfig::default(), Listing::Open);
        assert!(!reg.agent_exists(3));
        reg.note_agent(3, "three");
        assert!(reg.agent_exists(3));
        assert_eq!(reg.known_agents(), vec![(3, Some("three".to_owned()))]);
    }
}
