//! The agent registry: live agent connections, the requests waiting for one, and the agents kas has seen.
//!
//! Every routing *decision* is made by [`protocol::router::Router`] (the deterministic simulator drives
//! the same router); this module is its async face for kas:
//!
//! - connections are keyed by a `u64` connection serial, requests by a `u64` request serial;
//! - [`Registry::route`] asks the router for a connection of an agent and, if none is usable yet, waits
//!   on a one-shot channel until the router assigns one or fails the request (deadline, lost);
//! - a single task, [`Registry::run_timers`], drives the router's timers (`poll_timeout` /
//!   `handle_timeout`) and wakes the waiters whose deadline passed;
//! - after every change to the router (connection added, draining, removed, request finished,
//!   retried, cancelled, timed out) the queued outcomes (`poll_assigned` / `poll_failed`) are delivered
//!   to their waiters at once, under the same lock.
//!
//! A routed request is held as a [`Lease`]: it names the connection to open the stream on and tells the
//! router the request finished when dropped. [`Lease::reroute`] puts a request whose stream the peer
//! provably never processed (refused, or opened after the connection started draining) back in line.
//!
//! The registry is generic over the connection handle `C`, so it is tested here without sockets; kas
//! uses `runtime_smol::Connection`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use protocol::proto::AgentMeta;
use protocol::router::{Route, RouteError, Router, RouterConfig, RouterStats};

/// Why a request could not be given a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteFailure {
    /// The router's verdict (not connected, saturated, too many waiting, connection lost).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// kas is shutting down and routes nothing any more.
    #[error("kas is shutting down")]
    ShuttingDown,
}

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

type Outcome<C> = Result<Assignment<C>, RouteFailure>;

struct State<C> {
    router: Router<u64, u64>,
    connections: BTreeMap<u64, ConnectionEntry<C>>,
    seen: BTreeMap<u64, SeenAgent>,
    waiters: HashMap<u64, async_channel::Sender<Outcome<C>>>,
    next_request: u64,
    next_connection: u64,
    closed: bool,
}

struct Shared<C> {
    state: Mutex<State<C>>,
    /// Wakes the timer task when a deadline may have moved earlier (or at shutdown, by closing).
    kick: async_channel::Sender<()>,
    kick_rx: async_channel::Receiver<()>,
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
    /// An empty registry whose router has these limits.
    pub fn new(config: RouterConfig) -> Self {
        let (kick, kick_rx) = async_channel::bounded(1);
        Registry {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    router: Router::new(config),
                    connections: BTreeMap::new(),
                    seen: BTreeMap::new(),
                    waiters: HashMap::new(),
                    next_request: 1,
                    next_connection: 1,
                    closed: false,
                }),
                kick,
                kick_rx,
            }),
        }
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

    /// Records that `agent_id` authenticated (its name, for listings; "seen" for the GitLab backend's
    /// notion of a known agent).
    pub fn note_agent(&self, agent_id: u64, name: &str) {
        let mut s = self.lock();
        s.seen.insert(
            agent_id,
            SeenAgent {
                agent_id,
                name: name.to_owned(),
                last_seen: SystemTime::now(),
            },
        );
    }

    /// Whether `agent_id` authenticated at least once since kas started.
    pub fn is_seen(&self, agent_id: u64) -> bool {
        self.lock().seen.contains_key(&agent_id)
    }

    /// Every agent seen since kas started, by id.
    pub fn seen_agents(&self) -> Vec<SeenAgent> {
        self.lock().seen.values().cloned().collect()
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
        s.router
            .add_connection(entry.agent_id, serial, max_streams, Instant::now())
            .map_err(|_| RegistryError::DuplicateConnection(serial))?;
        s.connections.insert(serial, entry);
        deliver(&mut s);
        Ok(())
    }

    /// Marks a connection draining (GOAWAY): no new request goes to it; requests queued for it but not
    /// yet started go elsewhere. Returns whether it was live and not draining yet.
    pub fn set_draining(&self, serial: u64) -> bool {
        let mut s = self.lock();
        let Some(entry) = s.connections.get_mut(&serial) else {
            return false;
        };
        if entry.draining {
            return false;
        }
        entry.draining = true;
        let _ = s.router.set_draining(&serial);
        deliver(&mut s);
        true
    }

    /// Forgets a connection that closed. Returns the requests that were running on it (the router says
    /// they are lost; their streams fail on their own, since the connection is gone).
    pub fn remove_connection(&self, serial: u64) -> Vec<(u64, RouteError)> {
        let mut s = self.lock();
        if s.connections.remove(&serial).is_none() {
            return Vec::new();
        }
        let lost = s.router.remove_connection(&serial).unwrap_or_default();
        deliver(&mut s);
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

    /// The router's totals (connections, pending and assigned requests).
    pub fn stats(&self) -> RouterStats {
        self.lock().router.stats()
    }

    /// Requests waiting for a connection of `agent_id`.
    pub fn pending_for(&self, agent_id: u64) -> usize {
        self.lock().router.pending_count_for(agent_id)
    }

    /// Requests currently assigned to a connection (its load in the router).
    pub fn load(&self, serial: u64) -> usize {
        self.lock().router.connection(&serial).map_or(0, |c| c.load)
    }

    /// Whether [`Registry::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Shutdown: routes nothing any more, fails every waiting request with
    /// [`RouteFailure::ShuttingDown`], marks every connection draining and stops the timer task.
    /// Requests already running keep their leases.
    pub fn close(&self) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.closed = true;
        let serials: Vec<u64> = s.connections.keys().copied().collect();
        for serial in serials {
            if let Some(e) = s.connections.get_mut(&serial) {
                e.draining = true;
            }
            let _ = s.router.set_draining(&serial);
        }
        let waiting: Vec<u64> = s.waiters.keys().copied().collect();
        for request in waiting {
            s.router.cancel(&request);
            if let Some(tx) = s.waiters.remove(&request) {
                let _ = tx.try_send(Err(RouteFailure::ShuttingDown));
            }
        }
        deliver(&mut s);
        drop(s);
        self.shared.kick.close();
    }

    /// Routes a request for `agent_id`: a connection now, or after waiting until one is usable, at the
    /// latest until `deadline`. Dropping the returned future cancels the request.
    pub async fn route(&self, agent_id: u64, deadline: Instant) -> Result<Lease<C>, RouteFailure> {
        let (request, rx) = {
            let mut s = self.lock();
            if s.closed {
                return Err(RouteFailure::ShuttingDown);
            }
            let request = s.next_request;
            s.next_request += 1;
            match s.router.route(agent_id, request, deadline, Instant::now()) {
                Route::Assigned(serial) => {
                    let handle = s.connections.get(&serial).map(|e| e.handle.clone());
                    let Some(handle) = handle else {
                        // The router and the table disagree (cannot happen): fail, do not leak load.
                        let _ = s.router.request_finished(&request);
                        deliver(&mut s);
                        return Err(RouteError::ConnectionLost { agent_id }.into());
                    };
                    return Ok(Lease::new(
                        self.clone(),
                        agent_id,
                        request,
                        Assignment { serial, handle },
                    ));
                }
                Route::Rejected(e) => return Err(e.into()),
                Route::Pending => {
                    let (tx, rx) = async_channel::bounded(1);
                    s.waiters.insert(request, tx);
                    (request, rx)
                }
            }
        };
        self.kick_timers();
        self.wait(agent_id, request, rx).await
    }

    async fn wait(
        &self,
        agent_id: u64,
        request: u64,
        rx: async_channel::Receiver<Outcome<C>>,
    ) -> Result<Lease<C>, RouteFailure> {
        let guard = WaitGuard {
            registry: self,
            request,
            armed: true,
        };
        let outcome = rx.recv().await;
        let mut guard = guard;
        guard.armed = false;
        match outcome {
            Ok(Ok(assignment)) => Ok(Lease::new(self.clone(), agent_id, request, assignment)),
            Ok(Err(e)) => Err(e),
            // The sender vanished without an answer: only at shutdown.
            Err(_) => Err(RouteFailure::ShuttingDown),
        }
    }

    /// The single task driving the router's deadlines: sleeps until the earliest one (or until a new
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
                s.router.poll_timeout()
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
            s.router.handle_timeout(Instant::now());
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
        if !s.router.cancel(&self.request) {
            // Already started (its assignment sat unread in the channel): give the slot back.
            let _ = s.router.request_finished(&self.request);
        }
        deliver(&mut s);
    }
}

/// Hands every queued router outcome to its waiter. Runs under the lock after every router change.
fn deliver<C: Clone>(s: &mut State<C>) {
    // Each round removes at least one queued request from the router or ends the loop; a request can
    // be re-assigned only after another one finished, so the number of rounds is bounded by the number
    // of requests the router holds (plus one).
    let bound = s.router.stats().pending + s.router.stats().assigned + s.waiters.len() + 2;
    for _ in 0..bound {
        let mut progressed = false;
        while let Some((request, serial)) = s.router.poll_assigned() {
            progressed = true;
            let handle = s.connections.get(&serial).map(|e| e.handle.clone());
            let waiter = s.waiters.remove(&request);
            match (waiter, handle) {
                (Some(tx), Some(handle)) => {
                    if tx.try_send(Ok(Assignment { serial, handle })).is_err() {
                        let _ = s.router.request_finished(&request);
                    }
                }
                (waiter, _) => {
                    let _ = s.router.request_finished(&request);
                    if let Some(tx) = waiter {
                        let agent_id = s.router.connection(&serial).map_or(0, |c| c.agent_id);
                        let _ = tx.try_send(Err(RouteError::ConnectionLost { agent_id }.into()));
                    }
                }
            }
        }
        while let Some((request, error)) = s.router.poll_failed() {
            progressed = true;
            if let Some(tx) = s.waiters.remove(&request) {
                let _ = tx.try_send(Err(error.into()));
            }
        }
        if !progressed {
            return;
        }
    }
}

/// A request the router assigned to a connection. Dropping it tells the router the request finished.
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

    /// The stream was never processed by the agent (the connection is going away, or the agent refused
    /// the stream): marks the connection draining when `draining`, puts the request back in line with
    /// its original deadline and FIFO place, and waits for another connection.
    pub async fn reroute(mut self, draining: bool) -> Result<Lease<C>, RouteFailure> {
        let registry = self.registry.clone();
        let (agent_id, request, serial) = (self.agent_id, self.request, self.serial);
        self.active = false;
        drop(self);
        let rx = {
            let mut s = registry.lock();
            if draining {
                if let Some(e) = s.connections.get_mut(&serial) {
                    e.draining = true;
                }
                let _ = s.router.set_draining(&serial);
            }
            if s.closed {
                let _ = s.router.request_finished(&request);
                deliver(&mut s);
                return Err(RouteFailure::ShuttingDown);
            }
            let (tx, rx) = async_channel::bounded(1);
            s.waiters.insert(request, tx);
            if s.router.retry(&request).is_err() {
                // The router no longer knows the request (its connection was removed meanwhile): lost.
                s.waiters.remove(&request);
                deliver(&mut s);
                return Err(RouteError::ConnectionLost { agent_id }.into());
            }
            deliver(&mut s);
            rx
        };
        registry.kick_timers();
        registry.wait(agent_id, request, rx).await
    }
}

impl<C: Clone + Send + 'static> Drop for Lease<C> {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let mut s = self.registry.lock();
        // Unknown when the connection was removed meanwhile (the router already forgot it).
        let _ = s.router.request_finished(&self.request);
        deliver(&mut s);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    fn in_secs(s: u64) -> Instant {
        Instant::now() + Duration::from_secs(s)
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        smol::block_on(f)
    }

    #[test]
    fn routes_at_once_to_a_live_connection_and_releases_on_drop() {
        let reg = Reg::new(RouterConfig::default());
        reg.add_connection(entry(1, 7, "a"), 1).unwrap();
        let lease = run(reg.route(7, in_secs(5))).unwrap();
        assert_eq!(*lease.connection(), "a");
        assert_eq!(reg.load(1), 1);
        drop(lease);
        assert_eq!(reg.load(1), 0);
    }

    #[test]
    fn waiting_request_gets_a_connection_that_arrives_later() {
        let reg = Reg::new(RouterConfig::default());
        let timers = smol::spawn({
            let r = reg.clone();
            async move { r.run_timers().await }
        });
        let waiting = smol::spawn({
            let r = reg.clone();
            async move { r.route(3, in_secs(30)).await.map(|l| *l.connection()) }
        });
        // Give the request time to be registered (a hang guard, not an assertion on time).
        for _ in 0..200 {
            if reg.stats().pending == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(reg.stats().pending, 1);
        reg.add_connection(entry(4, 3, "late"), 8).unwrap();
        assert_eq!(run(waiting), Ok("late"));
        reg.close();
        run(timers);
    }

    #[test]
    fn deadline_fails_a_waiting_request_with_not_connected() {
        let reg = Reg::new(RouterConfig::default());
        let timers = smol::spawn({
            let r = reg.clone();
            async move { r.run_timers().await }
        });
        let result = run(reg.route(9, Instant::now() + Duration::from_millis(50)));
        assert!(
            matches!(
                result,
                Err(RouteFailure::Route(RouteError::AgentNotConnected {
                    agent_id: 9,
                    ..
                }))
            ),
            "{result:?}"
        );
        assert_eq!(reg.stats().pending, 0);
        reg.close();
        run(timers);
    }

    #[test]
    fn dropping_a_waiting_request_cancels_it() {
        let reg = Reg::new(RouterConfig::default());
        let fut = reg.route(1, in_secs(30));
        let polled = run(async {
            futures_lite::future::or(async { Some(fut.await) }, async {
                smol::Timer::after(Duration::from_millis(20)).await;
                None
            })
            .await
        });
        assert!(polled.is_none());
        assert_eq!(reg.stats().pending, 0);
        // A connection arriving later has no load from the cancelled request.
        reg.add_connection(entry(1, 1, "a"), 1).unwrap();
        assert_eq!(reg.load(1), 0);
    }

    #[test]
    fn pending_is_bounded() {
        let reg = Reg::new(RouterConfig {
            max_pending_per_agent: 1,
            max_pending_total: 10,
        });
        let first = reg.route(1, in_secs(30));
        let second = reg.route(1, in_secs(30));
        let (a, b) = run(async {
            let mut first = Box::pin(first);
            let a = futures_lite::future::poll_once(&mut first).await;
            let b = second.await;
            (a.is_none(), b)
        });
        assert!(a, "first request waits");
        assert_eq!(
            b.unwrap_err(),
            RouteFailure::Route(RouteError::TooManyPending { agent_id: 1 })
        );
    }

    #[test]
    fn reroute_moves_a_request_from_a_draining_connection() {
        let reg = Reg::new(RouterConfig::default());
        reg.add_connection(entry(1, 5, "old"), 4).unwrap();
        let lease = run(reg.route(5, in_secs(30))).unwrap();
        assert_eq!(*lease.connection(), "old");
        reg.add_connection(entry(2, 5, "new"), 4).unwrap();
        let lease = run(lease.reroute(true)).unwrap();
        assert_eq!(*lease.connection(), "new");
        assert_eq!((reg.load(1), reg.load(2)), (0, 1));
        // New requests avoid the draining connection too.
        let other = run(reg.route(5, in_secs(30))).unwrap();
        assert_eq!(*other.connection(), "new");
    }

    #[test]
    fn removing_a_connection_reports_running_requests_lost() {
        let reg = Reg::new(RouterConfig::default());
        reg.add_connection(entry(1, 5, "a"), 4).unwrap();
        let lease = run(reg.route(5, in_secs(30))).unwrap();
        let lost = reg.remove_connection(1);
        assert_eq!(
            lost,
            vec![(
                lease.request_id(),
                RouteError::ConnectionLost { agent_id: 5 }
            )]
        );
        drop(lease); // finishing a forgotten request is harmless
        assert_eq!(reg.stats().assigned, 0);
        assert!(reg.connections().is_empty());
    }

    #[test]
    fn close_fails_waiters_and_refuses_new_work() {
        let reg = Reg::new(RouterConfig::default());
        let waiting = smol::spawn({
            let r = reg.clone();
            async move { r.route(1, in_secs(30)).await.map(|_| ()) }
        });
        for _ in 0..200 {
            if reg.stats().pending == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        reg.close();
        assert_eq!(run(waiting), Err(RouteFailure::ShuttingDown));
        assert_eq!(
            run(reg.route(1, in_secs(1))).map(|_| ()),
            Err(RouteFailure::ShuttingDown)
        );
        assert_eq!(
            reg.add_connection(entry(1, 1, "a"), 1),
            Err(RegistryError::ShuttingDown)
        );
    }

    #[test]
    fn seen_agents_are_remembered() {
        let reg = Reg::new(RouterConfig::default());
        assert!(!reg.is_seen(3));
        reg.note_agent(3, "three");
        assert!(reg.is_seen(3));
        assert_eq!(reg.seen_agents()[0].name, "three");
    }
}
