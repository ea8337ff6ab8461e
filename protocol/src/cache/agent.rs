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
        let views = ViewSet::new(specs)?;
        let publisher = Publisher::new(config, views.schemas());
        Ok(AgentCache {
            store: Store::new(),
            views,
            publisher,
        })
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
