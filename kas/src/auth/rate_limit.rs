//! Rate limiting of failed authentications per source address and credential.
//!
//! A sliding window: each (source, credential) pair may fail at most `max_failures` times within
//! `window`; while it is at the limit, attempts with that credential from that source are refused
//! with [`AuthError::RateLimited`] without reaching the backend, until its oldest failure leaves the
//! window. Only answers about the token (unauthenticated, permission denied) count; backend outages
//! do not, and successes do not reset the count.
//!
//! Why per credential and not per address alone: an address is shared (a NAT in front of a fleet of
//! agents, an office of users), and a limit per address lets anyone behind it lock every valid token
//! out by failing on purpose. Keyed by the credential's SHA-256 as well, failures only ever block the
//! credential that failed: a valid token is never refused because of another one's failures. What the
//! limit is for is a client retrying a bad token in a loop (a misconfigured agent, a revoked token),
//! which then costs the backend nothing; guessing tokens is hopeless anyway (256 random bits).
//!
//! Sources are IP addresses; IPv6 addresses are grouped by their /64 prefix (one host usually has a
//! whole /64), and IPv4-mapped IPv6 addresses count as their IPv4 address. At most `max_sources`
//! pairs are remembered; when full, pairs whose failures all left the window are dropped, then the
//! one that failed least recently.
//!
//! [`RateLimiter`] takes `now` as an argument so tests control time; [`RateLimited`] wraps an
//! [`AgentAuthenticator`] and reads the clock.
//!
//! With several kas replicas ([`RateLimiter::share`]) the failures are also counted cluster-wide in
//! Redis, as GitLab does for `connections_per_token_per_minute`: every failure increments a counter
//! per (limit, source, credential) and fixed window ([`SharedFailures`], off the request path); once
//! the cluster-wide count reaches `max_failures` the pair is refused on this replica until the window
//! ends, so N replicas together allow about `max_failures` (plus at most one per replica) per window
//! instead of N times as many. Redis down: each replica keeps its own limit.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{AgentAuthenticator, AgentIdentity, AuthError, TokenDigest};
use crate::config::RateLimitConfig;

/// Limits for a [`RateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitOptions {
    /// Failures allowed per (source, credential) within `window`; 0 disables limiting.
    pub max_failures: u32,
    /// The sliding window.
    pub window: Duration,
    /// Most (source, credential) pairs remembered.
    pub max_sources: usize,
}

impl From<&RateLimitConfig> for RateLimitOptions {
    fn from(c: &RateLimitConfig) -> Self {
        Self {
            max_failures: c.max_failures,
            window: c.window,
            max_sources: c.max_sources,
        }
    }
}

/// The key a source is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The /64 prefix of an IPv6 address.
    V6Prefix64(u64),
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => SourceKey::V6Prefix64((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// What failures are counted under: the source and the digest of the credential it presented.
type Key = (SourceKey, TokenDigest);

/// A cluster-wide failure counter (Redis, [`crate::tracker::Tracker`]). Called off the request path.
pub trait SharedFailures: Send + Sync + std::fmt::Debug {
    /// Counts one failure of `key` under the limit `limit` in the fixed window of length `window`
    /// containing now; returns the cluster-wide count in that window and how long the window lasts
    /// from now (`None`: the store is unreachable).
    fn record(&self, limit: &'static str, key: &str, window: Duration) -> Option<(u64, Duration)>;
}

/// The key of a pair in the shared store: no part of the credential, only its digest.
fn shared_key(key: &Key) -> String {
    let source = match key.0 {
        SourceKey::V4(o) => format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3]),
        SourceKey::V6Prefix64(p) => format!("{p:016x}::/64"),
    };
    format!("{source}:{}", key.1.to_hex())
}

/// Pairs refused cluster-wide, until when.
type Bans = Arc<Mutex<HashMap<Key, Instant>>>;

/// Failure counts per (source, credential) (sliding window log, at most `max_failures` timestamps
/// each).
#[derive(Debug)]
pub struct RateLimiter {
    options: RateLimitOptions,
    sources: HashMap<Key, VecDeque<Instant>>,
    shared: Option<(&'static str, Arc<dyn SharedFailures>)>,
    bans: Bans,
}

impl RateLimiter {
    /// A limiter with no history.
    pub fn new(options: RateLimitOptions) -> Self {
        Self {
            options,
            sources: HashMap::new(),
            shared: None,
            bans: Bans::default(),
        }
    }

    /// Counts failures cluster-wide too, under `limit` (`agent_auth`, `user_auth`).
    pub fn share(&mut self, limit: &'static str, store: Arc<dyn SharedFailures>) {
        self.shared = Some((limit, store));
    }

    /// The limits in force.
    pub fn options(&self) -> RateLimitOptions {
        self.options
    }

    /// `Ok` if `source` may attempt to authenticate with `credential` at `now`, else the time until
    /// it may.
    pub fn check(
        &mut self,
        source: IpAddr,
        credential: &TokenDigest,
        now: Instant,
    ) -> Result<(), Duration> {
        if self.options.max_failures == 0 {
            return Ok(());
        }
        let key = (SourceKey::from(source), *credential);
        let window = self.options.window;
        {
            let mut bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
            match bans.get(&key) {
                Some(until) if *until > now => return Err(until.saturating_duration_since(now)),
                Some(_) => {
                    bans.remove(&key);
                }
                None => {}
            }
        }
        let Some(log) = self.sources.get_mut(&key) else {
            return Ok(());
        };
        prune(log, now, window);
        if log.is_empty() {
            self.sources.remove(&key);
            return Ok(());
        }
        if log.len() < self.options.max_failures as usize {
            return Ok(());
        }
        let oldest = log.front().copied().unwrap_or(now);
        Err((oldest + window).saturating_duration_since(now))
    }

    /// Records a failed attempt by `source` with `credential` at `now`.
    pub fn record_failure(&mut self, source: IpAddr, credential: &TokenDigest, now: Instant) {
        let max = self.options.max_failures as usize;
        if max == 0 || self.options.max_sources == 0 {
            return;
        }
        let key = (SourceKey::from(source), *credential);
        if !self.sources.contains_key(&key) {
            self.make_room(now);
        }
        let window = self.options.window;
        let log = self.sources.entry(key).or_default();
        prune(log, now, window);
        log.push_back(now);
        while log.len() > max {
            log.pop_front();
        }
        if let Some((limit, store)) = &self.shared {
            let (limit, store, bans) = (*limit, store.clone(), self.bans.clone());
            let max_sources = self.options.max_sources;
            // Off the request path (the user gate runs on kas's executor): smol's blocking pool.
            smol::spawn(smol::unblock(move || {
                if let Some((count, left)) = store.record(limit, &shared_key(&key), window)
                    && count >= max as u64
                {
                    let mut bans = bans.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    bans.retain(|_, until| *until > now);
                    if bans.len() < max_sources {
                        bans.insert(key, now + left);
                    }
                }
            }))
            .detach();
        }
        if log.len() == max {
            tracing::warn!(
                %source,
                failures = max,
                window_secs = window.as_secs_f64(),
                "too many failed authentications with one credential; refusing it from this source for a while"
            );
        }
    }

    /// Number of (source, credential) pairs currently remembered.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    fn make_room(&mut self, now: Instant) {
        if self.sources.len() < self.options.max_sources {
            return;
        }
        let window = self.options.window;
        self.sources.retain(|_, log| {
            log.back()
                .is_some_and(|last| now.saturating_duration_since(*last) < window)
        });
        if self.sources.len() < self.options.max_sources {
            return;
        }
        let least_recent = self
            .sources
            .iter()
            .min_by_key(|(_, log)| log.back().copied())
            .map(|(k, _)| *k);
        if let Some(k) = least_recent {
            self.sources.remove(&k);
        }
    }
}

/// Drops failures older than `window` (bounded by the log's length).
fn prune(log: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while log
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        log.pop_front();
    }
}

/// An authenticator behind a per-source failure limit.
pub struct RateLimited<A> {
    inner: A,
    limiter: Mutex<RateLimiter>,
}

impl<A> RateLimited<A> {
    /// Counts failures cluster-wide too ([`RateLimiter::share`]).
    pub fn share(&self, store: Arc<dyn SharedFailures>) {
        self.limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .share("agent_auth", store);
    }
}

impl<A: AgentAuthenticator> RateLimited<A> {
    /// Wraps `inner`.
    pub fn new(inner: A, options: RateLimitOptions) -> Self {
        Self {
            inner,
            limiter: Mutex::new(RateLimiter::new(options)),
        }
    }

    /// The wrapped authenticator.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Authenticates as of `now`: refuses a limited source without calling the backend, and records
    /// failures the backend reports.
    pub fn authenticate_at(
        &self,
        token: &str,
        source: IpAddr,
        now: Instant,
    ) -> Result<AgentIdentity, AuthError> {
        let credential = TokenDigest::of(token);
        if let Err(retry_after) = self.lock().check(source, &credential, now) {
            tracing::debug!(%source, ?retry_after, "authentication refused: rate limited");
            return Err(AuthError::RateLimited { retry_after });
        }
        let result = self.inner.authenticate(token, source);
        if result.as_ref().is_err_and(AuthError::is_client_failure) {
            self.lock().record_failure(source, &credential, now);
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<A: AgentAuthenticator> AgentAuthenticator for RateLimited<A> {
    fn authenticate(&self, token: &str, source: IpAddr) -> Result<AgentIdentity, AuthError> {
        self.authenticate_at(token, source, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn opts(max_failures: u32, window_secs: u64) -> RateLimitOptions {
        RateLimitOptions {
            max_failures,
            window: Duration::from_secs(window_secs),
            max_sources: 100,
        }
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn bad() -> TokenDigest {
        TokenDigest::of("bad")
    }

    #[test]
    fn limits_after_n_failures_within_window() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(opts(3, 60));
        for i in 0..3 {
            assert_eq!(rl.check(A, &bad(), t0 + Duration::from_secs(i)), Ok(()));
            rl.record_failure(A, &bad(), t0 + Duration::from_secs(i));
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(rl.check(A, &bad(), now), Err(Duration::from_secs(50)));
        assert_eq!(rl.check(B, &bad(), now), Ok(()), "other sources unaffected");
        // The oldest failure leaves the window at t0+60: one more attempt allowed.
        assert_eq!(rl.check(A, &bad(), t0 + Duration::from_secs(60)), Ok(()));
        rl.record_failure(A, &bad(), t0 + Duration::from_secs(60));
        assert_eq!(
            rl.check(A, &bad(), t0 + Duration::from_secs(60)),
            Err(Duration::from_secs(1))
        );
    }

    #[test]
    fn zero_disables() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(opts(0, 60));
        for _ in 0..100 {
            rl.record_failure(A, &bad(), t0);
        }
        assert_eq!(rl.check(A, &bad(), t0), Ok(()));
        assert_eq!(rl.tracked_sources(), 0);
    }

    #[test]
    fn ipv6_grouped_by_prefix_and_mapped_v4_is_v4() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(opts(2, 60));
        let a1: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1));
        let a2: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9));
        let other: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        rl.record_failure(a1, &bad(), t0);
        rl.record_failure(a2, &bad(), t0);
        assert!(rl.check(a1, &bad(), t0).is_err());
        assert_eq!(rl.check(other, &bad(), t0), Ok(()));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        rl.record_failure(mapped, &bad(), t0);
        rl.record_failure(A, &bad(), t0);
        assert!(rl.check(A, &bad(), t0).is_err());
    }

    #[test]
    fn source_table_is_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(RateLimitOptions {
            max_sources: 4,
            ..opts(1, 60)
        });
        for i in 0..50u8 {
            rl.record_failure(
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)),
                &bad(),
                t0 + Duration::from_secs(u64::from(i)),
            );
            assert!(rl.tracked_sources() <= 4);
        }
        // The most recent source is still limited.
        assert!(
            rl.check(
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, 49)),
                &bad(),
                t0 + Duration::from_secs(49)
            )
            .is_err()
        );
    }

    struct Counting {
        calls: AtomicUsize,
    }

    impl AgentAuthenticator for Counting {
        fn authenticate(&self, token: &str, _: IpAddr) -> Result<AgentIdentity, AuthError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match token {
                "good" => Ok(AgentIdentity {
                    agent_id: 1,
                    name: "a".into(),
                    project: None,
                }),
                "outage" => Err(AuthError::Backend(
                    super::super::BackendError::InvalidResponse {
                        url: "x".into(),
                        reason: "test".into(),
                    },
                )),
                _ => Err(AuthError::Unauthenticated),
            }
        }
    }

    #[test]
    fn wrapper_skips_backend_when_limited() {
        let t0 = Instant::now();
        let rl = RateLimited::new(
            Counting {
                calls: AtomicUsize::new(0),
            },
            opts(2, 60),
        );
        // Backend outages and successes do not count.
        for _ in 0..5 {
            assert!(matches!(
                rl.authenticate_at("outage", A, t0),
                Err(AuthError::Backend(_))
            ));
            assert!(rl.authenticate_at("good", A, t0).is_ok());
        }
        assert!(matches!(
            rl.authenticate_at("bad", A, t0),
            Err(AuthError::Unauthenticated)
        ));
        assert!(matches!(
            rl.authenticate_at("bad", A, t0),
            Err(AuthError::Unauthenticated)
        ));
        let calls = rl.inner().calls.load(Ordering::SeqCst);
        // Limited now: the bad token is refused, and the backend is not asked.
        match rl.authenticate_at("bad", A, t0 + Duration::from_secs(1)) {
            Err(AuthError::RateLimited { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(59))
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
        assert_eq!(rl.inner().calls.load(Ordering::SeqCst), calls);
        // A valid token from the same address is never refused because of the bad one (an attacker
        // behind the same NAT cannot lock a fleet of agents out).
        for _ in 0..10 {
            assert!(
                rl.authenticate_at("good", A, t0 + Duration::from_secs(1))
                    .is_ok()
            );
        }
        assert!(rl.authenticate_at("good", B, t0).is_ok());
        assert!(
            rl.authenticate_at("bad", A, t0 + Duration::from_secs(60))
                .is_err_and(|e| matches!(e, AuthError::Unauthenticated))
        );
    }
}
