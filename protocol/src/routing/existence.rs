//! Does agent N exist: the one answer behind "unknown agent → 404" for the proxy, `/agents/{id}` and
//! `/views`.
//!
//! Two sources of truth, one rule each:
//! - [`Listing::Authoritative`] (an agents file): an agent exists iff the file lists it, connected or
//!   not. An agent removed from the file is unknown at once, even while a connection of it lives on.
//! - [`Listing::Open`] (GitLab, which knows agents kas cannot enumerate): an agent exists iff it
//!   authenticated since kas started ("seen"), or another replica holds a connection of it.
//!
//! Connected and mirrored agents are not inputs: a connection and a mirror exist only after the agent
//! authenticated, so they imply "seen".

use std::collections::BTreeSet;

/// Where the list of agents comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// A complete list (the agents file): nothing else exists.
    Authoritative(BTreeSet<u64>),
    /// No list (GitLab): agents become known by authenticating.
    Open,
}

/// Which agents exist, as kas knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existence {
    listing: Listing,
    seen: BTreeSet<u64>,
}

impl Existence {
    /// Nothing seen yet.
    pub fn new(listing: Listing) -> Self {
        Existence {
            listing,
            seen: BTreeSet::new(),
        }
    }

    /// The list changed (the agents file was reloaded).
    pub fn handle_listing(&mut self, listing: Listing) {
        self.listing = listing;
    }

    /// `agent_id` authenticated.
    pub fn handle_authenticated(&mut self, agent_id: u64) {
        self.seen.insert(agent_id);
    }

    /// Whether `agent_id` exists; `remote_held`: another replica holds a connection of it.
    pub fn exists(&self, agent_id: u64, remote_held: bool) -> bool {
        match &self.listing {
            Listing::Authoritative(listed) => listed.contains(&agent_id),
            Listing::Open => remote_held || self.seen.contains(&agent_id),
        }
    }

    /// Whether `agent_id` authenticated since kas started.
    pub fn is_seen(&self, agent_id: u64) -> bool {
        self.seen.contains(&agent_id)
    }

    /// Every agent known to exist here (listed, or seen for an open listing), by id.
    pub fn known(&self) -> impl Iterator<Item = u64> + '_ {
        let (listed, seen) = match &self.listing {
            Listing::Authoritative(listed) => (Some(listed), None),
            Listing::Open => (None, Some(&self.seen)),
        };
        listed
            .into_iter()
            .flatten()
            .chain(seen.into_iter().flatten())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authoritative_listing_is_the_truth() {
        let mut e = Existence::new(Listing::Authoritative([4].into()));
        assert!(e.exists(4, false));
        e.handle_authenticated(5);
        assert!(!e.exists(5, true), "seen or held elsewhere, but not listed");
        assert_eq!(e.known().collect::<Vec<_>>(), vec![4]);
        // Removed from the file: unknown at once, although it authenticated.
        e.handle_authenticated(4);
        e.handle_listing(Listing::Authoritative(BTreeSet::new()));
        assert!(!e.exists(4, false));
    }

    #[test]
    fn an_open_listing_knows_what_authenticated_or_another_replica_holds() {
        let mut e = Existence::new(Listing::Open);
        assert!(!e.exists(5, false));
        assert!(e.exists(5, true));
        e.handle_authenticated(5);
        assert!(e.exists(5, false));
        assert!(e.is_seen(5));
        assert_eq!(e.known().collect::<Vec<_>>(), vec![5]);
    }
}
