//! Which token authenticated each agent connection, and closing the connections whose token was
//! revoked.
//!
//! With an agents file, the authenticator records the digest of the token each accepted connection
//! presented (never the token), keyed by the connection serial. When kas re-reads a changed agents file
//! ([`crate::server`]'s reload loop, every [`RELOAD_INTERVAL`](crate::server::RELOAD_INTERVAL)),
//! [`close_revoked`] sends GOAWAY on every connection whose token the file no longer lists for its
//! agent and aborts what is still open after [`REVOKED_GRACE`]. A revoked token's connections are
//! therefore closed within [`REVOCATION_BOUND`] of the file's change. An agent that has a second,
//! still valid token (rotation) keeps being served by its other connections.
//!
//! GitLab's backend is not covered here: GitLab revokes tokens itself and kas re-asks it on the next
//! connection (its answers are cached for the cache's TTL).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::TokenDigest;
use crate::directory::AgentDirectory;
use crate::state::KasState;

/// How long a connection whose token was revoked keeps its streams in flight after the GOAWAY.
pub const REVOKED_GRACE: Duration = Duration::from_secs(5);

/// Upper bound from an agents-file change revoking a token to its connections being closed: one
/// reload interval, then the grace.
pub const REVOCATION_BOUND: Duration =
    Duration::from_secs(crate::server::RELOAD_INTERVAL.as_secs() + REVOKED_GRACE.as_secs());

/// An entry whose connection was never registered (handshake failed after authentication) is
/// dropped this long after it was made.
const UNREGISTERED_TTL: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct Tracked {
    agent_id: u64,
    digest: TokenDigest,
    token_id: Option<String>,
    since: Instant,
}

/// The token digest of every authenticated connection, by connection serial.
#[derive(Debug, Default)]
pub struct ConnectionTokens {
    by_serial: Mutex<HashMap<u64, Tracked>>,
}

impl ConnectionTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.by_serial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that connection `serial` of `agent_id` was authenticated with the token of `digest`
    /// (whose id in the agents file is `token_id`).
    pub fn authenticated(
        &self,
        serial: u64,
        agent_id: u64,
        digest: TokenDigest,
        token_id: Option<String>,
    ) {
        self.lock().insert(
            serial,
            Tracked {
                agent_id,
                digest,
                token_id,
                since: Instant::now(),
            },
        );
    }

    /// The id of the token that authenticated connection `serial`, if known.
    pub fn token_id(&self, serial: u64) -> Option<String> {
        self.lock().get(&serial).and_then(|t| t.token_id.clone())
    }

    /// Connection `serial` closed.
    pub fn forget(&self, serial: u64) {
        self.lock().remove(&serial);
    }

    /// Number of connections tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The serials among `live` whose token `directory` no longer lists for their agent, with the
    /// token's id; they are forgotten (each is reported once). Entries of serials not in `live` and
    /// older than a handshake can take are dropped. Linear in the connections (set and index
    /// lookups): it runs on every reload of the file, with every connection live.
    fn revoked(
        &self,
        directory: &AgentDirectory,
        live: &HashSet<u64>,
    ) -> Vec<(u64, u64, Option<String>)> {
        let AgentDirectory::File(file) = directory else {
            return Vec::new();
        };
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|serial, t| {
            live.contains(serial) || now.duration_since(t.since) < UNREGISTERED_TTL
        });
        let gone: Vec<u64> = map
            .iter()
            .filter(|(serial, t)| {
                live.contains(serial) && file.token_id(t.agent_id, &t.digest).is_none()
            })
            .map(|(serial, _)| *serial)
            .collect();
        gone.into_iter()
            .filter_map(|serial| {
                map.remove(&serial)
                    .map(|t| (serial, t.agent_id, t.token_id))
            })
            .collect()
    }
}

/// Sends GOAWAY (grace [`REVOKED_GRACE`]) on every live connection whose token the agents file no
/// longer lists. Call after the file was re-read. Returns how many connections it closed.
pub fn close_revoked(state: &KasState) -> usize {
    let connections = state.registry.connections();
    let by_serial: HashMap<u64, _> = connections.iter().map(|c| (c.serial, c)).collect();
    let live: HashSet<u64> = by_serial.keys().copied().collect();
    let revoked = state.tokens.revoked(&state.directory, &live);
    for (serial, agent_id, token_id) in &revoked {
        if let Some(c) = by_serial.get(serial) {
            tracing::info!(
                agent_id,
                connection_id = %c.connection_id,
                token_id = token_id.as_deref().unwrap_or("?"),
                "agent token revoked; closing its connection"
            );
            c.handle.start_close(REVOKED_GRACE);
        }
    }
    revoked.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::AgentsFile;
    use std::path::Path;
    use std::sync::Arc;

    #[test]
    fn only_live_connections_with_an_unlisted_token_are_revoked_once() {
        let yaml = format!(
            "agents:\n- id: 1\n  name: one\n  tokens: [{{id: new, sha256: {}}}]\n",
            TokenDigest::of("new").to_hex()
        );
        let file = AgentsFile::from_yaml_str(&yaml, Path::new("agents.yaml")).unwrap();
        let dir = AgentDirectory::File(Arc::new(file));
        let t = ConnectionTokens::default();
        t.authenticated(1, 1, TokenDigest::of("old"), Some("old".into()));
        t.authenticated(2, 1, TokenDigest::of("new"), Some("new".into()));
        // Serial 3: revoked token, but not (yet) registered: kept until registered or expired.
        t.authenticated(3, 1, TokenDigest::of("old"), None);
        let live = |serials: &[u64]| serials.iter().copied().collect::<HashSet<u64>>();
        assert_eq!(
            t.revoked(&dir, &live(&[1, 2])),
            vec![(1, 1, Some("old".into()))]
        );
        assert!(t.revoked(&dir, &live(&[1, 2])).is_empty(), "reported twice");
        assert_eq!(t.len(), 2);
        assert_eq!(t.token_id(2).as_deref(), Some("new"));
        assert!(
            t.revoked(&AgentDirectory::seen(), &live(&[2, 3]))
                .is_empty()
        );
        t.forget(2);
        t.forget(3);
        assert!(t.is_empty());
    }
}
