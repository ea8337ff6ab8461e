//! agentk's side of view synchronisation: turns view changes into sequenced, coalesced updates and
//! brings kas's mirror up to date after reconnects and losses.
//!
//! # Sequencing
//!
//! The publisher's state is the views *as published*: for every row ever sent, its last published
//! values (or a tombstone if it was removed) and the sequence number at which that happened. Each flush
//! that changes at least one row increments `seq` by one and yields a [`proto::ViewUpdate`] from
//! `seq - 1` to `seq`. Sequence 0 is the empty state. Because rows carry their last-changed seq, "every
//! row changed since seq *b*" is computed from current state without keeping a history, and a single
//! update from *b* brings any mirror at a state between *b* and `seq` up to date (values are absolute).
//!
//! # Coalescing
//!
//! View changes are only *recorded* (a set of dirty rows). A flush reads their current values, skips
//! rows whose value equals what was last published (a pod created and deleted within the window costs
//! nothing), and happens at most once per `window`: the first change after a quiet period goes out at
//! once, later ones wait for the window to elapse. A storm of events therefore produces at most one
//! update per window, each bounded by the number of distinct rows. At most `max_unacked` updates are in
//! flight; beyond that, changes keep coalescing until kas acknowledges.
//!
//! # Resynchronisation
//!
//! After [`Publisher::on_connected`] nothing is sent until kas says where its mirror is (a
//! [`proto::ResyncRequest`], sent by kas when the stream opens and whenever it detects a gap or an
//! unknown epoch). The answer is a catch-up [`proto::ViewUpdate`] from the mirror's seq when the epoch
//! matches and no tombstone needed since then was pruned, and a [`proto::Snapshot`] otherwise (other
//! epoch, mirror empty, or older than the publisher can serve). If kas stays silent for `ack_timeout`
//! after connecting, the publisher resumes on its own from the last sequence kas acknowledged. Likewise,
//! if an update stays unacknowledged for `ack_timeout`, everything since the last acknowledged sequence
//! is re-sent in one catch-up update (or a snapshot if nothing was acknowledged in this epoch); if that
//! is not acknowledged in time either, the next re-send is a snapshot, which a mirror in any state
//! accepts.
//!
//! Tombstones are pruned, oldest first, when there are more than `max_tombstones`; resuming from
//! before a pruned tombstone then needs a snapshot.
//!
//! Messages are not split: a snapshot or catch-up carries every row concerned, so its size is bounded
//! by the number of distinct rows of all views (a few per namespace for the default views), not by
//! the number of objects or events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::decimal::Decimal;
use super::proto;
use super::table::{GroupKey, ViewSchema};
use super::view::{ChangedKey, ViewSet};
use super::wire::{row_into_proto, row_to_proto};

/// Tuning of a [`Publisher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Identifies this agentk process (store) lifetime; pick it at random at start-up.
    pub epoch: NonZeroU64,
    /// At most one update per window (default 100 ms).
    pub window: Duration,
    /// Re-send after this long without an acknowledgement (default 5 s).
    pub ack_timeout: Duration,
    /// Updates in flight before waiting for an acknowledgement (default 16, at least 1).
    pub max_unacked: usize,
    /// Removed-row tombstones kept for catch-up updates (default 10 000).
    pub max_tombstones: usize,
}

impl PublisherConfig {
    /// Defaults with the given epoch.
    pub fn new(epoch: NonZeroU64) -> Self {
        PublisherConfig {
            epoch,
            window: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(5),
            max_unacked: 16,
            max_tombstones: 10_000,
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Regular (coalesced) updates sent.
    pub updates: u64,
    /// Catch-up updates sent (resync answers and re-sends).
    pub catch_ups: u64,
    /// Snapshots sent.
    pub snapshots: u64,
    /// Rows (upserts and removals) carried by all of the above.
    pub rows: u64,
}

#[derive(Clone, Debug)]
struct Published {
    seq: u64,
    values: Option<Vec<Decimal>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// Bring a mirror at this seq (or no state if `None`) up to date.
    From(Option<u64>),
}

#[derive(Clone, Debug)]
struct Link {
    connected_at: Instant,
    /// kas has told us its mirror's state (or we gave up waiting).
    heard: bool,
    /// Sequence numbers sent and not yet acknowledged, with when they were sent.
    inflight: VecDeque<(u64, Instant)>,
    owed: Option<Reply>,
    /// Re-sends since kas last made progress; a second one is a snapshot.
    retries: u32,
}

/// The agentk-side publisher (see the module documentation).
#[derive(Clone, Debug)]
pub struct Publisher {
    config: PublisherConfig,
    /// Shared with the view set the publisher was made for ([`AgentCache`](super::AgentCache)).
    schemas: Arc<[ViewSchema]>,
    seq: u64,
    published: Vec<BTreeMap<GroupKey, Published>>,
    tombstones: usize,
    /// Lowest base seq a catch-up update can start from.
    min_resumable: u64,
    pending: BTreeSet<ChangedKey>,
    last_flush: Option<Instant>,
    /// The latest mirror seq of this epoch that kas confirmed.
    last_acked: Option<u64>,
    link: Option<Link>,
    stats: PublisherStats,
}

fn later(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

impl Publisher {
    /// A publisher for views with these schemas (from [`ViewSet::schemas`], or shared with their
    /// view set as an `Arc`), at seq 0, disconnected.
    pub fn new(config: PublisherConfig, schemas: impl Into<Arc<[ViewSchema]>>) -> Self {
        let schemas = schemas.into();
        let published = vec![BTreeMap::new(); schemas.len()];
        Publisher {
            config,
            schemas,
            seq: 0,
            published,
            tombstones: 0,
            min_resumable: 0,
            pending: BTreeSet::new(),
            last_flush: None,
            last_acked: None,
            link: None,
            stats: PublisherStats::default(),
        }
    }

    /// This publisher's epoch.
    pub fn epoch(&self) -> u64 {
        self.config.epoch.get()
    }

    /// The last published sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The latest sequence kas confirmed in this epoch.
    pub fn last_acked(&self) -> Option<u64> {
        self.last_acked
    }

    /// Whether changes are waiting to be flushed.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether a stream to kas is up.
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// Whether kas has confirmed everything published (connected, nothing pending or in flight).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.last_acked == Some(self.seq)
            && self
                .link
                .as_ref()
                .is_some_and(|l| l.heard && l.owed.is_none() && l.inflight.is_empty())
    }

    /// Counters.
    pub fn stats(&self) -> PublisherStats {
        self.stats
    }

    /// Records rows that changed (from [`ViewSet::take_changed`]).
    pub fn record(&mut self, changed: impl IntoIterator<Item = ChangedKey>) {
        self.pending.extend(changed);
    }

    /// [`Publisher::record`] of a set: taken over whole when nothing is pending (the usual case
    /// between flushes), merged otherwise.
    pub(crate) fn record_set(&mut self, mut changed: BTreeSet<ChangedKey>) {
        if self.pending.is_empty() {
            self.pending = changed;
        } else {
            self.pending.append(&mut changed);
        }
    }

    /// A stream to kas is open. Nothing is sent until kas's [`proto::ResyncRequest`] arrives (or
    /// `ack_timeout` passes).
    pub fn on_connected(&mut self, now: Instant) {
        self.link = Some(Link {
            connected_at: now,
            heard: false,
            inflight: VecDeque::new(),
            owed: None,
            retries: 0,
        });
    }

    /// The stream to kas is gone; changes keep being recorded.
    pub fn on_disconnected(&mut self) {
        self.link = None;
    }

    /// Handles a message from kas.
    pub fn handle(&mut self, message: &proto::ServerToAgent, now: Instant) {
        match &message.msg {
            Some(proto::server_to_agent::Msg::Ack(ack)) => self.on_ack(ack, now),
            Some(proto::server_to_agent::Msg::Resync(req)) => self.on_resync(req, now),
            None => warn!("empty cache message from kas ignored"),
        }
    }

    /// kas's mirror is at `ack.seq`.
    pub fn on_ack(&mut self, ack: &proto::Ack, _now: Instant) {
        if ack.epoch != self.epoch() {
            debug!(epoch = ack.epoch, "ack for another epoch ignored");
            return;
        }
        if ack.seq > self.seq {
            warn!(
                seq = ack.seq,
                published = self.seq,
                "ack beyond published seq ignored"
            );
            return;
        }
        self.last_acked = Some(self.last_acked.map_or(ack.seq, |a| a.max(ack.seq)));
        if let Some(link) = &mut self.link {
            while link.inflight.front().is_some_and(|(s, _)| *s <= ack.seq) {
                link.inflight.pop_front();
                link.retries = 0;
            }
        }
    }

    /// kas asks to be brought up to date from its mirror's state.
    pub fn on_resync(&mut self, request: &proto::ResyncRequest, _now: Instant) {
        let Some(link) = &mut self.link else {
            debug!("resync request while disconnected ignored");
            return;
        };
        link.heard = true;
        link.inflight.clear();
        link.retries = 0;
        let from = if request.epoch == self.config.epoch.get() && request.seq <= self.seq {
            self.last_acked = Some(request.seq);
            Some(request.seq)
        } else {
            if request.epoch == self.config.epoch.get() {
                warn!(
                    seq = request.seq,
                    published = self.seq,
                    "kas claims a seq beyond ours"
                );
            }
            self.last_acked = None;
            None
        };
        debug!(
            epoch = request.epoch,
            seq = request.seq,
            reason = request.reason,
            "resync requested"
        );
        link.owed = Some(Reply::From(from));
    }

    /// The next message to send to kas, if any is due at `now`. Call until it returns `None`, then
    /// wait until [`Publisher::poll_timeout`] or the next input.
    pub fn poll_transmit(&mut self, now: Instant, views: &ViewSet) -> Option<proto::AgentToServer> {
        let timeout = self.config.ack_timeout;
        let max_unacked = self.config.max_unacked.max(1);
        let last_acked = self.last_acked;
        let window_open = self
            .last_flush
            .is_none_or(|f| later(f, self.config.window).is_some_and(|t| now >= t));
        let link = self.link.as_mut()?;
        if !link.heard {
            if later(link.connected_at, timeout).is_some_and(|t| now >= t) {
                debug!(
                    ?last_acked,
                    "kas did not say where its mirror is; resuming from last ack"
                );
                link.heard = true;
                link.owed = Some(Reply::From(last_acked));
            } else {
                return None;
            }
        }
        if link.owed.is_none()
            && let Some((_, sent)) = link.inflight.front()
            && later(*sent, timeout).is_some_and(|t| now >= t)
        {
            // First re-send: everything since the last ack. If that is not acknowledged either, the
            // mirror may be unable to use updates at all (e.g. its resync request was lost): snapshot.
            let from = if link.retries == 0 { last_acked } else { None };
            debug!(?from, retries = link.retries, "no ack in time; re-sending");
            link.retries += 1;
            link.owed = Some(Reply::From(from));
        }
        if let Some(Reply::From(base)) = link.owed.take() {
            link.inflight.clear();
            self.flush(now, views);
            let message = self.reply(base);
            if let Some(link) = &mut self.link {
                link.inflight.push_back((self.seq, now));
            }
            return Some(message);
        }
        if self.pending.is_empty() || !window_open || link.inflight.len() >= max_unacked {
            return None;
        }
        let update = self.flush(now, views)?;
        if let Some(link) = &mut self.link {
            link.inflight.push_back((update.seq, now));
        }
        self.stats.updates += 1;
        self.stats.rows += update
            .views
            .iter()
            .map(|d| (d.upserts.len() + d.removed.len()) as u64)
            .sum::<u64>();
        Some(proto::AgentToServer {
            msg: Some(proto::agent_to_server::Msg::Update(update)),
        })
    }

    /// When [`Publisher::poll_transmit`] next needs to be called if nothing else happens. An instant
    /// in the past means "now".
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = self.link.as_ref()?;
        let timeout = self.config.ack_timeout;
        if !link.heard {
            return later(link.connected_at, timeout);
        }
        if link.owed.is_some() {
            return Some(link.connected_at);
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if !self.pending.is_empty() && link.inflight.len() < self.config.max_unacked.max(1) {
            consider(match self.last_flush {
                Some(f) => later(f, self.config.window),
                None => Some(link.connected_at),
            });
        }
        if let Some((_, sent)) = link.inflight.front() {
            consider(later(*sent, timeout));
        }
        next
    }

    /// Publishes the pending rows whose value changed, as the next seq.
    fn flush(&mut self, now: Instant, views: &ViewSet) -> Option<proto::ViewUpdate> {
        if self.pending.is_empty() {
            return None;
        }
        let next = self.seq + 1;
        // The pending rows come in (view, key) order, so each view's delta is the last one made.
        let mut deltas: Vec<proto::ViewDelta> = Vec::new();
        let mut last_view = None;
        for ChangedKey { view, key } in std::mem::take(&mut self.pending) {
            let Some(table) = self.published.get_mut(view) else {
                continue;
            };
            let current = views.row(view, &key);
            // One lookup: a row published before (the common case) is updated in place, and its
            // key moves into the message.
            let previous = table.get_mut(&key);
            if previous.as_ref().and_then(|p| p.values.as_deref()) == current {
                continue;
            }
            if last_view != Some(view) {
                last_view = Some(view);
                deltas.push(proto::ViewDelta {
                    view: self
                        .schemas
                        .get(view)
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                });
            }
            let Some(delta) = deltas.last_mut() else {
                continue;
            };
            match previous {
                Some(p) => {
                    p.seq = next;
                    match current {
                        Some(values) => {
                            match &mut p.values {
                                Some(v) => {
                                    v.clear();
                                    v.extend_from_slice(values);
                                }
                                None => {
                                    self.tombstones -= 1;
                                    p.values = Some(values.to_vec());
                                }
                            }
                            delta.upserts.push(row_into_proto(key, values));
                        }
                        None => {
                            p.values = None;
                            self.tombstones += 1;
                            delta.removed.push(proto::RemovedRow { key });
                        }
                    }
                }
                None => {
                    match current {
                        Some(values) => delta.upserts.push(row_to_proto(&key, values)),
                        None => {
                            delta.removed.push(proto::RemovedRow { key: key.clone() });
                            self.tombstones += 1;
                        }
                    }
                    let values = current.map(<[Decimal]>::to_vec);
                    table.insert(key, Published { seq: next, values });
                }
            }
        }
        if deltas.is_empty() {
            return None;
        }
        self.seq = next;
        self.last_flush = Some(now);
        self.prune_tombstones();
        Some(proto::ViewUpdate {
            epoch: self.epoch(),
            base_seq: self.seq - 1,
            seq: self.seq,
            views: deltas,
        })
    }

    /// A catch-up update from `base`, or a snapshot when that is impossible.
    fn reply(&mut self, base: Option<u64>) -> proto::AgentToServer {
        let msg = match base {
            Some(b) if b >= self.min_resumable && b <= self.seq => {
                self.stats.catch_ups += 1;
                proto::agent_to_server::Msg::Update(self.catch_up(b))
            }
            _ => {
                self.stats.snapshots += 1;
                proto::agent_to_server::Msg::Snapshot(self.snapshot())
            }
        };
        proto::AgentToServer { msg: Some(msg) }
    }

    /// Every row changed after `base`, with its value at `seq`.
    fn catch_up(&mut self, base: u64) -> proto::ViewUpdate {
        let mut views = Vec::new();
        let mut rows = 0u64;
        for (schema, table) in self.schemas.iter().zip(&self.published) {
            let mut delta = proto::ViewDelta {
                view: schema.name.clone(),
                ..Default::default()
            };
            for (key, p) in table.iter().filter(|(_, p)| p.seq > base) {
                match &p.values {
                    Some(v) => delta.upserts.push(row_to_proto(key, v)),
                    None => delta.removed.push(proto::RemovedRow { key: key.clone() }),
                }
                rows += 1;
            }
            if !delta.upserts.is_empty() || !delta.removed.is_empty() {
                views.push(delta);
            }
        }
        self.stats.rows += rows;
        proto::ViewUpdate {
            epoch: self.epoch(),
            base_seq: base,
            seq: self.seq,
            views,
        }
    }

    /// Every published row at `seq`.
    fn snapshot(&mut self) -> proto::Snapshot {
        let mut rows = 0u64;
        let views = self
            .schemas
            .iter()
            .zip(&self.published)
            .map(|(schema, table)| proto::ViewData {
                schema: Some(proto::ViewSchema::from(schema)),
                rows: table
                    .iter()
                    .filter_map(|(k, p)| p.values.as_ref().map(|v| row_to_proto(k, v)))
                    .inspect(|_| rows += 1)
                    .collect(),
            })
            .collect();
        self.stats.rows += rows;
        proto::Snapshot {
            epoch: self.epoch(),
            seq: self.seq,
            views,
        }
    }

    /// Drops the oldest tombstones once there are more than `max_tombstones`, down to half of it.
    fn prune_tombstones(&mut self) {
        if self.tombstones <= self.config.max_tombstones {
            return;
        }
        let mut seqs: Vec<u64> = self
            .published
            .iter()
            .flat_map(|t| t.values().filter(|p| p.values.is_none()).map(|p| p.seq))
            .collect();
        seqs.sort_unstable();
        let keep = self.config.max_tombstones / 2;
        let Some(&cutoff) = seqs.get(seqs.len().saturating_sub(keep + 1)) else {
            return;
        };
        let mut removed = 0;
        for table in &mut self.published {
            table.retain(|_, p| {
                let drop = p.values.is_none() && p.seq <= cutoff;
                removed += usize::from(drop);
                !drop
            });
        }
        self.tombstones -= removed;
        self.min_resumable = self.min_resumable.max(cutoff);
        debug!(removed, cutoff, "pruned view tombstones");
    }
}
