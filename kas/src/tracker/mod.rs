//! The tracker: which kas replica holds connections of which agent, shared through Redis.
//!
//! Each replica publishes the agents it holds under `<prefix>:tunnel_tracker2:kas_by_agent_id:<id>`
//! (field: its replica id; value: expiry and private API URL, [`keys`]) and its load (connections)
//! in the replicas' directory, refreshes both every `refresh_period`, removes an agent's field when
//! its last connection closes, and garbage-collects expired fields a crashed replica left. Routing
//! reads an agent's holders ([`Tracker::holders`]) and feeds them to the one routing policy
//! (`protocol::routing::KasRouting`, through [`crate::registry::Registry::set_holders`]).
//!
//! Redis is reached with the `redis` crate's blocking client, run on smol's blocking pool
//! (`smol::unblock`): kas links no tokio runtime. Every call is bounded by `find_timeout` (connect,
//! read and write timeouts). While Redis is unreachable the replica keeps serving its own agents,
//! [`Tracker::is_up`] is false (`/readyz`, metric `kas_redis_up`), and the next refresh after Redis
//! returns publishes everything again.

pub mod keys;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use protocol::routing::ReplicaId;

use crate::config::ReplicasConfig;
use crate::state::KasState;

pub use keys::Entry;

/// A Redis call failed (unreachable, timed out, or answered an error).
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct TrackerError(#[from] redis::RedisError);

/// The tracker of one replica. Every method blocks (Redis I/O): call it through `smol::unblock`.
pub struct Tracker {
    prefix: String,
    replica: ReplicaId,
    url: String,
    ttl: Duration,
    timeout: Duration,
    client: redis::Client,
    /// Idle connections (a call takes one or dials a new one; a failed one is dropped).
    idle: Mutex<Vec<redis::Connection>>,
    up: AtomicBool,
    errors: AtomicU64,
    published: Mutex<BTreeSet<u64>>,
    directory: Mutex<Vec<Entry>>,
    /// Every agent's live holders, as read at the last garbage collection.
    cluster: Mutex<BTreeMap<u64, Vec<Entry>>>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// A tracker for the replica `config` names, reachable by the others at `url` (its private API).
    pub fn new(config: &ReplicasConfig, url: String) -> Result<Tracker, TrackerError> {
        Ok(Tracker {
            prefix: config.key_prefix.clone(),
            replica: ReplicaId(config.replica_id),
            url,
            ttl: config.entry_ttl,
            timeout: config.find_timeout,
            client: redis::Client::open(config.redis_url.as_str())?,
            idle: Mutex::new(Vec::new()),
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            published: Mutex::new(BTreeSet::new()),
            directory: Mutex::new(Vec::new()),
            cluster: Mutex::new(BTreeMap::new()),
        })
    }

    /// This replica.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// This replica's private API URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the last Redis call succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Redis calls that failed since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Each live replica's connections, as read at the last refresh (this one included), by id.
    pub fn replica_loads(&self) -> Vec<(ReplicaId, u64)> {
        let now = SystemTime::now();
        lock(&self.directory)
            .iter()
            .filter(|e| e.expires > now)
            .map(|e| (e.replica, e.load))
            .collect()
    }

    /// The live replicas (this one included) and their private API URLs, as read at the last refresh.
    pub fn replicas(&self) -> Vec<Entry> {
        let now = SystemTime::now();
        lock(&self.directory)
            .iter()
            .filter(|e| e.expires > now)
            .cloned()
            .collect()
    }

    fn call<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, TrackerError> {
        let conn = lock(&self.idle).pop();
        let result = match conn {
            Some(c) => Ok(c),
            None => self
                .client
                .get_connection_with_timeout(self.timeout)
                .and_then(|c| {
                    c.set_read_timeout(Some(self.timeout))?;
                    c.set_write_timeout(Some(self.timeout))?;
                    Ok(c)
                }),
        }
        .and_then(|mut c| f(&mut c).map(|v| (v, c)));
        match result {
            Ok((v, c)) => {
                lock(&self.idle).push(c);
                self.set_up(true, None);
                Ok(v)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.set_up(false, Some(&e));
                Err(e.into())
            }
        }
    }

    fn set_up(&self, up: bool, error: Option<&redis::RedisError>) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!(replica = %self.replica, "redis reachable: agents published");
            } else if let Some(e) = error {
                tracing::warn!(replica = %self.replica, error = %e,
                    "redis unreachable: serving this replica's agents only until it returns");
            }
        }
    }

    /// Publishes that this replica holds `agents` (with `load` connections in all) until `now + ttl`,
    /// removes the agents it published before and holds no more, and reads the replicas' directory.
    pub fn publish(&self, agents: &BTreeSet<u64>, load: u64) -> Result<(), TrackerError> {
        let expires = SystemTime::now() + self.ttl;
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let field = self.replica.0.to_string();
        let gone: Vec<u64> = lock(&self.published).difference(agents).copied().collect();
        let value = keys::holder_value(expires, &self.url);
        let dir_key = keys::replicas_key(&self.prefix);
        let dir: BTreeMap<String, String> = self.call(|c| {
            let mut p = redis::pipe();
            for agent in agents {
                let key = keys::agent_key(&self.prefix, *agent);
                p.hset(&key, &field, &value).ignore();
                p.pexpire(&key, ttl_ms as i64).ignore();
            }
            for agent in &gone {
                p.hdel(keys::agent_key(&self.prefix, *agent), &field)
                    .ignore();
            }
            p.hset(
                &dir_key,
                &field,
                keys::replica_value(expires, load, &self.url),
            )
            .ignore();
            p.pexpire(&dir_key, ttl_ms as i64).ignore();
            p.hgetall(&dir_key);
            p.query::<(BTreeMap<String, String>,)>(c).map(|(d,)| d)
        })?;
        *lock(&self.published) = agents.clone();
        *lock(&self.directory) = dir
            .iter()
            .filter_map(|(f, v)| keys::parse_entry(f, v, true))
            .collect();
        Ok(())
    }

    /// The replicas holding `agent_id` whose entries have not expired (this one included).
    pub fn holders(&self, agent_id: u64) -> Result<Vec<Entry>, TrackerError> {
        let raw: BTreeMap<String, String> = self.call(|c| {
            redis::cmd("HGETALL")
                .arg(keys::agent_key(&self.prefix, agent_id))
                .query(c)
        })?;
        let now = SystemTime::now();
        Ok(raw
            .iter()
            .filter_map(|(f, v)| keys::parse_entry(f, v, false))
            .filter(|e| e.expires > now)
            .collect())
    }

    /// Every agent held by some replica, with its live holders.
    pub fn all_holders(&self) -> Result<BTreeMap<u64, Vec<Entry>>, TrackerError> {
        let now = SystemTime::now();
        Ok(self
            .scan_all()?
            .into_iter()
            .filter_map(|(agent, fields)| {
                let live: Vec<Entry> = fields
                    .iter()
                    .filter_map(|(f, v)| keys::parse_entry(f, v, false))
                    .filter(|e| e.expires > now)
                    .collect();
                (!live.is_empty()).then_some((agent, live))
            })
            .collect())
    }

    fn scan_all(&self) -> Result<BTreeMap<u64, BTreeMap<String, String>>, TrackerError> {
        let pattern = keys::agent_key_pattern(&self.prefix);
        self.call(|c| {
            let keys: Vec<String> =
                redis::Commands::scan_match::<_, String>(c, &pattern)?.collect();
            let mut p = redis::pipe();
            for k in &keys {
                p.hgetall(k);
            }
            let values: Vec<BTreeMap<String, String>> = if keys.is_empty() {
                Vec::new()
            } else {
                p.query(c)?
            };
            Ok(keys
                .iter()
                .zip(values)
                .filter_map(|(k, v)| Some((keys::agent_of_key(&self.prefix, k)?, v)))
                .collect())
        })
    }

    /// Every agent some replica holds, with its live holders, as read at the last garbage
    /// collection (every refresh period).
    pub fn cluster(&self) -> BTreeMap<u64, Vec<Entry>> {
        let now = SystemTime::now();
        let mut all = lock(&self.cluster).clone();
        all.retain(|_, v| {
            v.retain(|e| e.expires > now);
            !v.is_empty()
        });
        all
    }

    /// Removes the fields that expired (a crashed replica's, or garbage), and keeps the live ones as
    /// [`Tracker::cluster`]. Returns how many were removed.
    pub fn collect_garbage(&self) -> Result<usize, TrackerError> {
        let now = SystemTime::now();
        let all = self.scan_all()?;
        *lock(&self.cluster) = all
            .iter()
            .map(|(agent, fields)| {
                let live = fields
                    .iter()
                    .filter_map(|(f, v)| keys::parse_entry(f, v, false))
                    .filter(|e| e.expires > now)
                    .collect::<Vec<_>>();
                (*agent, live)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let mut dead: Vec<(String, String)> = Vec::new();
        for (agent, fields) in &all {
            for (f, v) in fields {
                if keys::parse_entry(f, v, false).is_none_or(|e| e.expires <= now) {
                    dead.push((keys::agent_key(&self.prefix, *agent), f.clone()));
                }
            }
        }
        let dir_key = keys::replicas_key(&self.prefix);
        let dir: BTreeMap<String, String> =
            self.call(|c| redis::cmd("HGETALL").arg(&dir_key).query(c))?;
        for (f, v) in &dir {
            if keys::parse_entry(f, v, true).is_none_or(|e| e.expires <= now) {
                dead.push((dir_key.clone(), f.clone()));
            }
        }
        if dead.is_empty() {
            return Ok(0);
        }
        self.call(|c| {
            let mut p = redis::pipe();
            for (k, f) in &dead {
                p.hdel(k, f).ignore();
            }
            p.query::<()>(c)
        })?;
        tracing::info!(replica = %self.replica, removed = dead.len(), "removed expired tracker entries");
        Ok(dead.len())
    }

    /// Removes everything this replica published (at shutdown).
    pub fn withdraw(&self) -> Result<(), TrackerError> {
        let field = self.replica.0.to_string();
        let published: Vec<u64> = lock(&self.published).iter().copied().collect();
        self.call(|c| {
            let mut p = redis::pipe();
            for agent in &published {
                p.hdel(keys::agent_key(&self.prefix, *agent), &field)
                    .ignore();
            }
            p.hdel(keys::replicas_key(&self.prefix), &field).ignore();
            p.query::<()>(c)
        })?;
        lock(&self.published).clear();
        Ok(())
    }
}

impl crate::auth::rate_limit::SharedFailures for Tracker {
    fn record(&self, limit: &'static str, key: &str, window: Duration) -> Option<(u64, Duration)> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let now_ms = keys::unix_ms(SystemTime::now());
        let index = now_ms / window_ms;
        let left = Duration::from_millis((index + 1) * window_ms - now_ms);
        let key = keys::rate_limit_key(&self.prefix, limit, key, index);
        let count: u64 = self
            .call(|c| {
                redis::pipe()
                    .incr(&key, 1u64)
                    .pexpire(&key, (window_ms * 2) as i64)
                    .ignore()
                    .query::<(u64,)>(c)
                    .map(|(n,)| n)
            })
            .ok()?;
        Some((count, left))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The holders as the routing policy takes them: each entry's expiry as an `Instant`.
pub fn as_policy_holders(entries: &[Entry]) -> Vec<(ReplicaId, Instant)> {
    let (now, wall) = (Instant::now(), SystemTime::now());
    entries
        .iter()
        .map(|e| {
            let left = e.expires.duration_since(wall).unwrap_or(Duration::ZERO);
            (e.replica, now + left)
        })
        .collect()
}

/// How often a replica looks up holders for agents requests are waiting for.
const WAITING_POLL: Duration = Duration::from_millis(200);
/// Retry period while Redis is unreachable.
const RETRY: Duration = Duration::from_secs(1);

/// Keeps this replica's entries published until `stop` closes, then withdraws them: publishes at
/// once when a connection comes or goes (coalesced), every `refresh` otherwise, every second while
/// Redis is down; collects garbage every `refresh`; feeds the holders of agents that requests are
/// waiting for to the registry. With `shedding`, takes a balance step ([`crate::balance`]) after
/// every successful refresh and when the pacing interval of the last drain ends.
pub async fn run(
    state: Arc<KasState>,
    tracker: Arc<Tracker>,
    peers: Arc<crate::peer::PeerClient>,
    refresh: Duration,
    mut shedding: Option<crate::balance::Shedding>,
    stop: async_channel::Receiver<()>,
) {
    let mut next_publish = Instant::now();
    let mut next_gc = Instant::now() + refresh;
    loop {
        let now = Instant::now();
        let mut refreshed = false;
        if now >= next_publish {
            // The load published is the serving connections: draining ones are leaving.
            let mut agents = BTreeSet::new();
            let mut load = 0u64;
            for c in state.registry.connections() {
                if !c.draining {
                    load += 1;
                    agents.insert(c.agent_id);
                }
            }
            let t = tracker.clone();
            let ok = smol::unblock(move || t.publish(&agents, load))
                .await
                .is_ok();
            if ok {
                peers.learn(&tracker.replicas());
            }
            refreshed = ok;
            next_publish = now + if ok { refresh } else { RETRY };
        }
        if now >= next_gc && tracker.is_up() {
            let t = tracker.clone();
            let _ = smol::unblock(move || t.collect_garbage()).await;
            next_gc = now + refresh;
        }
        if let Some(s) = shedding.as_mut()
            && tracker.is_up()
            && (refreshed || s.due(now))
        {
            s.step(
                &state,
                &tracker.replica_loads(),
                &tracker.cluster(),
                Instant::now(),
            );
        }
        for agent in state.registry.waiting_agents() {
            crate::peer::refresh_holders(&state, &tracker, &peers, agent).await;
        }
        let now = Instant::now();
        let wait = if state.registry.waiting_agents().is_empty() {
            let mut at = next_publish.min(next_gc);
            if let Some(t) = shedding.as_ref().and_then(|s| s.poll_timeout(now)) {
                at = at.min(t);
            }
            at.saturating_duration_since(now)
        } else {
            WAITING_POLL
        };
        let event = futures_lite::future::or(
            async {
                let _ = stop.recv().await;
                Some(())
            },
            futures_lite::future::or(
                async {
                    state.registry.changed().await;
                    // Coalesce a burst of connects.
                    smol::Timer::after(Duration::from_millis(20)).await;
                    next_publish = Instant::now();
                    None
                },
                async {
                    smol::Timer::after(wait).await;
                    None
                },
            ),
        )
        .await;
        if event.is_some() {
            break;
        }
    }
    let t = tracker.clone();
    if let Err(e) = smol::unblock(move || t.withdraw()).await {
        tracing::warn!(error = %e, "could not withdraw this replica's tracker entries");
    }
}
