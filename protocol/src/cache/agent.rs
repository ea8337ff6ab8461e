//! agentk's cache in one piece: the [`Store`], the [`ViewSet`] over it and the [`Publisher`] of view
//! changes, wired together so every applied event updates the views and marks the changed rows.

use std::time::Instant;

use super::object::ResourceKind;
use super::proto;
use super::publisher::{Publisher, PublisherConfig};
use super::spec::{ViewSpec, ViewSpecError};
use super::store::{ObjectChange, Store, StoreError, WatchEvent};
use super::view::ViewSet;

/// Store + views + publisher (see the module documentation).
#[derive(Clone, Debug)]
pub struct AgentCache {
    store: Store,
    views: ViewSet,
    publisher: Publisher,
}

impl AgentCache {
    /// An empty cache maintaining `specs` (e.g. [`default_views`](super::default_views)).
    pub fn new(specs: &[ViewSpec], config: PublisherConfig) -> Result<Self, ViewSpecError> {
        Ok(AgentCache::with_views(&ViewSet::new(specs)?, config))
    }

    /// An empty cache maintaining the views of `views` (its rows are not copied: the cache starts
    /// with none), sharing their compiled specs ([`ViewSet::fresh`]).
    pub fn with_views(views: &ViewSet, config: PublisherConfig) -> Self {
        let views = views.fresh();
        let publisher = Publisher::new(config, views.shared_schemas());
        AgentCache {
            store: Store::new(),
            views,
            publisher,
        }
    }

    /// Applies a watch event of `kind`: updates the store and the views, records the changed rows
    /// for publication, and returns the object changes (for the event feed).
    pub fn apply(
        &mut self,
        kind: &ResourceKind,
        event: WatchEvent,
    ) -> Result<Vec<ObjectChange>, StoreError> {
        let changes = self.store.apply(kind, event, &mut self.views)?;
        self.publisher.record_set(self.views.take_changed_set());
        Ok(changes)
    }

    /// The stream to kas opened.
    pub fn on_connected(&mut self, now: Instant) {
        self.publisher.on_connected(now);
    }

    /// The stream to kas closed.
    pub fn on_disconnected(&mut self) {
        self.publisher.on_disconnected();
    }

    /// A message from kas on the cache stream.
    pub fn handle(&mut self, message: &proto::ServerToAgent, now: Instant) {
        self.publisher.handle(message, now);
    }

    /// The next message for kas, if one is due ([`Publisher::poll_transmit`]).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<proto::AgentToServer> {
        self.publisher.poll_transmit(now, &self.views)
    }

    /// When to call [`AgentCache::poll_transmit`] next ([`Publisher::poll_timeout`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.publisher.poll_timeout()
    }

    /// The object store, for cache queries.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The views.
    pub fn views(&self) -> &ViewSet {
        &self.views
    }

    /// The publisher (sequence numbers, stats).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::spec::default_views;
    use serde_json::json;
    use std::num::NonZeroU64;

    fn pod(name: &str, rv: u64, phase: &str) -> WatchEvent {
        WatchEvent::Apply(json!({
            "metadata": {"namespace": "a", "name": name, "uid": name,
                         "resourceVersion": rv.to_string()},
            "status": {"phase": phase},
        }))
    }

    /// A cache sharing another set's compiled views starts empty whatever that set holds, and then
    /// behaves as a cache compiled from the specs: same views, same messages.
    #[test]
    fn a_cache_with_shared_views_is_a_new_cache() {
        let config = || PublisherConfig::new(NonZeroU64::MIN);
        let kind = ResourceKind::pod();
        let mut template = ViewSet::new(&default_views()).unwrap_or_else(|e| panic!("{e}"));
        let mut store = Store::new();
        let applied = store.apply(&kind, pod("p0", 1, "Running"), &mut template);
        assert!(applied.is_ok_and(|c| c.len() == 1));
        assert_ne!(
            template.views(),
            ViewSet::new(&default_views())
                .map(|v| v.views())
                .unwrap_or_default()
        );
        let fresh = template.fresh();
        assert!(fresh.views().iter().all(|v| v.rows.is_empty()));
        assert_eq!(fresh.schemas(), template.schemas());

        let mut shared = AgentCache::with_views(&template, config());
        let mut compiled =
            AgentCache::new(&default_views(), config()).unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        shared.on_connected(t);
        compiled.on_connected(t);
        for (i, phase) in ["Pending", "Running", "Failed"].into_iter().enumerate() {
            let ev = pod(&format!("p{i}"), 10 + i as u64, phase);
            assert_eq!(shared.apply(&kind, ev.clone()), compiled.apply(&kind, ev));
        }
        assert_eq!(shared.views().views(), compiled.views().views());
        assert_eq!(shared.store().len(), 3);
        let later = t + std::time::Duration::from_secs(5);
        assert_eq!(shared.poll_transmit(later), compiled.poll_transmit(later));
    }
}
