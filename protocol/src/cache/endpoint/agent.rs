//! [`AgentViews`]: agentk's side of the `views` stream (see the [module](super) documentation).
//!
//! - **Watch events** ([`AgentViews::handle_watch`]) update the store, the views and the publisher.
//!   The object changes they imply are batched ([`ChangeBatch`]): at most one `object_changes`
//!   message per `change_window`, at most `max_changes_per_message` changes each, at most
//!   `max_pending_changes` waiting (the oldest are dropped beyond that and reported once,
//!   [`AgentViewsEvent::ChangesDropped`]). The changes implied by a kind's *first* list are not
//!   reported: they describe agentk starting, not the cluster changing
//!   ([`AgentViewsEvent::InitialListDone`] instead; later relists do report the differences they
//!   find). A store error is reported once per distinct error per kind.
//! - **Links.** A link is one `views` stream kas answered 200 ([`AgentViews::handle_linked`]); a new
//!   link replaces the current one. Bodies and ends of other links are ignored.
//! - **Sending.** [`AgentViews::poll_transmit`] hands out one length-delimited message (a view
//!   snapshot or update, or an object-change batch); the driver calls it only when its sink has
//!   room, so while kas reads slowly changes keep coalescing in the publisher.
//!
//! Invariants (`debug_assert!`ed, and property-tested in `protocol/tests/views_endpoint.rs`):
//! no message without a current link; **no spin**: once `poll_transmit(now)` returned `None` and
//! no input came since, [`AgentViews::poll_timeout`] is `None` or later than `now`; the same bytes
//! give the same state however they are split into chunks.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ViewsViolation;
use crate::cache::agent::AgentCache;
use crate::cache::batch::{ChangeBatch, MAX_CHANGES_PER_MESSAGE, MAX_PENDING_CHANGES};
use crate::cache::messages::{MessageDecoder, encode_message};
use crate::cache::object::ResourceKind;
use crate::cache::proto;
use crate::cache::publisher::PublisherConfig;
use crate::cache::spec::{ViewSpec, ViewSpecError};
use crate::cache::store::{StoreError, WatchEvent};
use crate::cache::wire::{decode_server_message, object_changes_into_message};

/// Identifies one `views` stream to the endpoint (agentk: a serial; the simulator: the flow id).
pub type LinkId = u64;

/// After the publisher had nothing to send, never ask it again sooner than this (a guard against
/// a timeout that stays in the past).
const SPIN_GUARD: Duration = Duration::from_millis(10);
/// Events kept for the driver at most (the oldest are dropped beyond).
const MAX_EVENTS: usize = 1024;

/// Tuning of [`AgentViews`] beyond the publisher's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentViewsConfig {
    /// At most one `object_changes` message per window.
    pub change_window: Duration,
    /// Object changes waiting at most (default 10 000).
    pub max_pending_changes: usize,
    /// Object changes per message at most (default 1 000).
    pub max_changes_per_message: usize,
}

impl AgentViewsConfig {
    /// The default limits with `change_window`.
    pub fn new(change_window: Duration) -> AgentViewsConfig {
        AgentViewsConfig {
            change_window,
            max_pending_changes: MAX_PENDING_CHANGES,
            max_changes_per_message: MAX_CHANGES_PER_MESSAGE,
        }
    }
}

/// Why a link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The connection drains (GOAWAY either way) or closes.
    Draining,
    /// kas ended its direction.
    KasFinished,
    /// A newer link replaced it.
    Replaced,
    /// The stream failed (reset, connection lost).
    Failed,
    /// kas broke the protocol ([`ViewsViolation`]): the driver resets the stream.
    Violation,
}

/// What the driver may log or count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentViewsEvent {
    /// A link became current.
    Linked {
        /// The link.
        link: LinkId,
    },
    /// The current link ended.
    Unlinked {
        /// The link.
        link: LinkId,
        /// Why.
        end: LinkEnd,
    },
    /// The first list of `kind` is complete.
    InitialListDone {
        /// The kind.
        kind: ResourceKind,
        /// Its objects.
        objects: usize,
    },
    /// Object changes were dropped because kas did not take them in time.
    ChangesDropped {
        /// How many since the last report.
        count: u64,
    },
    /// A watch event was not applied (once per distinct error per kind).
    StoreError {
        /// The kind.
        kind: ResourceKind,
        /// The error.
        error: StoreError,
    },
}

#[derive(Debug)]
struct Link {
    id: LinkId,
    decoder: MessageDecoder,
}

/// agentk's side of the `views` stream (see the module documentation).
#[derive(Debug)]
pub struct AgentViews {
    cache: AgentCache,
    changes: ChangeBatch,
    link: Option<Link>,
    /// Inputs arrived since the publisher last said it had nothing to send.
    transmit_due: bool,
    /// When the publisher last had nothing to send.
    idle_at: Option<Instant>,
    /// The time of the latest input.
    last_input: Option<Instant>,
    /// The last store error per kind, so each distinct one is reported once.
    store_errors: BTreeMap<ResourceKind, StoreError>,
    events: VecDeque<AgentViewsEvent>,
}

impl AgentViews {
    /// An empty cache maintaining `specs`.
    pub fn new(
        specs: &[ViewSpec],
        publisher: PublisherConfig,
        config: AgentViewsConfig,
    ) -> Result<AgentViews, ViewSpecError> {
        Ok(AgentViews::with_cache(
            AgentCache::new(specs, publisher)?,
            config,
        ))
    }

    /// The endpoint around an existing cache.
    pub fn with_cache(cache: AgentCache, config: AgentViewsConfig) -> AgentViews {
        AgentViews {
            cache,
            changes: ChangeBatch::with_limits(
                config.change_window,
                config.max_pending_changes,
                config.max_changes_per_message,
            ),
            link: None,
            transmit_due: false,
            idle_at: None,
            last_input: None,
            store_errors: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    fn push_event(&mut self, event: AgentViewsEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn input(&mut self, now: Instant) {
        self.last_input = Some(self.last_input.map_or(now, |t| t.max(now)));
        if self.link.is_some() {
            self.transmit_due = true;
        }
    }

    /// Applies a watch event of `kind`. An error changes nothing (and is reported once per distinct
    /// error per kind as [`AgentViewsEvent::StoreError`]).
    pub fn handle_watch(
        &mut self,
        kind: &ResourceKind,
        event: WatchEvent,
        now: Instant,
    ) -> Result<(), StoreError> {
        let first_list =
            matches!(event, WatchEvent::InitDone) && !self.cache.store().is_synced(kind);
        match self.cache.apply(kind, event) {
            Ok(changes) => {
                if first_list {
                    let objects = self.cache.store().kind_len(kind);
                    self.push_event(AgentViewsEvent::InitialListDone {
                        kind: kind.clone(),
                        objects,
                    });
                } else {
                    self.changes.push(changes);
                }
                self.store_errors.remove(kind);
                self.input(now);
                Ok(())
            }
            Err(error) => {
                if self.store_errors.get(kind) != Some(&error) {
                    self.store_errors.insert(kind.clone(), error.clone());
                    self.push_event(AgentViewsEvent::StoreError {
                        kind: kind.clone(),
                        error: error.clone(),
                    });
                }
                Err(error)
            }
        }
    }

    /// kas answered 200 on link `link`: it becomes current, replacing any older link.
    pub fn handle_linked(&mut self, link: LinkId, now: Instant) {
        if let Some(old) = self.link.take() {
            self.cache.on_disconnected();
            self.push_event(AgentViewsEvent::Unlinked {
                link: old.id,
                end: LinkEnd::Replaced,
            });
        }
        self.cache.on_connected(now);
        self.link = Some(Link {
            id: link,
            decoder: MessageDecoder::default(),
        });
        self.push_event(AgentViewsEvent::Linked { link });
        self.input(now);
    }

    /// Octets kas sent on link `link` (ignored unless it is current). On a violation the link is
    /// dropped ([`LinkEnd::Violation`]) and the driver resets the stream.
    pub fn handle_body(
        &mut self,
        link: LinkId,
        chunk: &[u8],
        now: Instant,
    ) -> Result<(), ViewsViolation> {
        let Some(l) = self.link.as_mut().filter(|l| l.id == link) else {
            return Ok(());
        };
        // Bounded by the chunk and the buffered octets: every round takes one message out or
        // stops.
        let cache = &mut self.cache;
        let result = l.decoder.push_each(chunk, |bytes| {
            let message = decode_server_message(bytes)?;
            cache.handle(&message, now);
            Ok::<(), ViewsViolation>(())
        });
        self.input(now);
        if result.is_err() {
            self.handle_unlinked(link, LinkEnd::Violation);
        }
        result
    }

    /// kas ended its direction of link `link`: the link ends ([`LinkEnd::KasFinished`]), or with a
    /// violation if kas stopped inside a message.
    pub fn handle_finished(&mut self, link: LinkId) -> Result<(), ViewsViolation> {
        let Some(l) = self.link.as_ref().filter(|l| l.id == link) else {
            return Ok(());
        };
        match l.decoder.finish() {
            Ok(()) => {
                self.handle_unlinked(link, LinkEnd::KasFinished);
                Ok(())
            }
            Err(e) => {
                self.handle_unlinked(link, LinkEnd::Violation);
                Err(e.into())
            }
        }
    }

    /// Link `link` ended (ignored unless it is current).
    pub fn handle_unlinked(&mut self, link: LinkId, end: LinkEnd) {
        if self.link.as_ref().is_some_and(|l| l.id == link) {
            self.link = None;
            self.cache.on_disconnected();
            self.transmit_due = false;
            self.push_event(AgentViewsEvent::Unlinked { link, end });
        }
    }

    /// The current link.
    pub fn link(&self) -> Option<LinkId> {
        self.link.as_ref().map(|l| l.id)
    }

    /// The next message for kas, framed; call only when the sink has room for it.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        self.poll_message(now).map(|m| encode_message(&m))
    }

    /// [`AgentViews::poll_transmit`] before framing (for a driver that inspects what it sends, such
    /// as the simulator's fault injection); frame it with [`encode_message`].
    pub fn poll_message(&mut self, now: Instant) -> Option<proto::AgentToServer> {
        self.link.as_ref()?;
        let publisher_due = self.transmit_due || self.publisher_wake().is_some_and(|t| t <= now);
        if publisher_due {
            if let Some(message) = self.cache.poll_transmit(now) {
                self.transmit_due = true;
                return Some(message);
            }
            self.transmit_due = false;
            self.idle_at = Some(now);
        }
        if let Some((changes, dropped)) = self.changes.take(now) {
            if dropped > 0 {
                self.push_event(AgentViewsEvent::ChangesDropped { count: dropped });
            }
            return Some(object_changes_into_message(changes));
        }
        debug_assert!(
            self.poll_timeout().is_none_or(|t| t > now),
            "no spin: nothing to send at {now:?} but poll_timeout is {:?}",
            self.poll_timeout()
        );
        None
    }

    /// When the publisher next needs attention, with the spin guard applied.
    fn publisher_wake(&self) -> Option<Instant> {
        self.cache.poll_timeout().map(|t| match self.idle_at {
            Some(idle) if t <= idle => idle + SPIN_GUARD,
            _ => t,
        })
    }

    /// When to call [`AgentViews::poll_transmit`] next (`None`: not before the next input). At or
    /// before now means at once (once the sink has room).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.link.as_ref()?;
        let due_now = self.last_input.or(self.idle_at);
        let publisher = if self.transmit_due {
            due_now
        } else {
            self.publisher_wake()
        };
        let changes = if self.changes.is_empty() {
            None
        } else {
            self.changes.window_end().or(due_now)
        };
        match (publisher, changes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<AgentViewsEvent> {
        self.events.pop_front()
    }

    /// The cache (store, views, publisher), for queries.
    pub fn cache(&self) -> &AgentCache {
        &self.cache
    }

    /// Object changes waiting for kas.
    pub fn pending_changes(&self) -> usize {
        self.changes.len()
    }
}
