//! Which kas replicas hold a connection of an agent: the seam for multi-replica routing.
//!
//! A replica that has no usable connection of an agent may forward a request to a replica that has one
//! ([`super::Placement::Forward`]). Today the simulator's world feeds every replica the holders it
//! knows; with several kas processes the same table is filled from a shared store (issue 12). Entries
//! carry an expiry: a holder that stopped refreshing its entry is not forwarded to.

use std::collections::BTreeMap;
use std::time::Instant;

/// One kas replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u32);

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "replica-{}", self.0)
    }
}

/// The replicas holding connections of each agent, with the instant each entry expires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    by_agent: BTreeMap<u64, BTreeMap<ReplicaId, Instant>>,
}

impl Holders {
    /// No holders known.
    pub fn new() -> Self {
        Holders::default()
    }

    /// Replaces what is known about `agent_id`'s holders.
    pub fn set(&mut self, agent_id: u64, holders: &[(ReplicaId, Instant)]) {
        if holders.is_empty() {
            self.by_agent.remove(&agent_id);
        } else {
            self.by_agent
                .insert(agent_id, holders.iter().copied().collect());
        }
    }

    /// The holder a request for `agent_id` is forwarded to: the lowest-numbered replica other than
    /// `except` whose entry has not expired at `now` (deterministic).
    pub fn pick(
        &self,
        agent_id: u64,
        except: Option<ReplicaId>,
        now: Instant,
    ) -> Option<ReplicaId> {
        self.by_agent
            .get(&agent_id)?
            .iter()
            .find(|(r, expires)| Some(**r) != except && **expires > now)
            .map(|(r, _)| *r)
    }

    /// Whether a replica other than `except` holds `agent_id` at `now`.
    pub fn held_elsewhere(&self, agent_id: u64, except: Option<ReplicaId>, now: Instant) -> bool {
        self.pick(agent_id, except, now).is_some()
    }

    /// Forgets expired entries.
    pub fn expire(&mut self, now: Instant) {
        self.by_agent.retain(|_, m| {
            m.retain(|_, expires| *expires > now);
            !m.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn picks_the_lowest_live_holder_other_than_itself() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut h = Holders::new();
        assert_eq!(h.pick(1, None, now), None);
        h.set(
            1,
            &[
                (ReplicaId(2), later),
                (ReplicaId(0), later),
                (ReplicaId(1), now),
            ],
        );
        assert_eq!(h.pick(1, None, now), Some(ReplicaId(0)));
        assert_eq!(
            h.pick(1, Some(ReplicaId(0)), now),
            Some(ReplicaId(2)),
            "1 expired"
        );
        assert!(!h.held_elsewhere(1, Some(ReplicaId(0)), later));
        h.expire(later);
        assert_eq!(h, Holders::new());
        h.set(1, &[(ReplicaId(3), later)]);
        h.set(1, &[]);
        assert_eq!(h, Holders::new());
    }
}
