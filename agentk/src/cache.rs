//! The informer cache as one task: it owns the [`AgentCache`] (store, views, publisher) and is fed
//! through one channel by the informers (watch events), the `cache` service (queries) and the
//! `views` stream of the current kas connection (link up/down, kas's acks and resync requests).
//!
//! ```text
//!  informers ──event──▶ ┌────────────┐ ──encoded messages (bounded channel)──▶ views stream writer
//!  cache service ─query─▶│ cache task │ ◀── connected / from kas / disconnected ── views stream
//!                        └────────────┘
//! ```
//!
//! Nothing else touches the cache, so there is no lock; queries and events are served in arrival
//! order. The task runs from start-up whether or not kas is connected.
//!
//! **Sending.** Messages for kas go through a small bounded channel to the views stream's writer,
//! which writes them with the stream's flow control. The task only asks the publisher for a message
//! ([`AgentCache::poll_transmit`]) once it holds a slot in that channel, so while kas reads slowly
//! changes keep coalescing in the publisher instead of queueing up. After every input (event, kas
//! message, new link) the publisher is polled until it has nothing more; otherwise the task sleeps
//! until [`AgentCache::poll_timeout`].
//!
//! **Object changes** ([`ObjectChange`]) from applied events are batched by [`ChangeBatch`]: at most
//! one `object_changes` message per window, at most [`MAX_CHANGES_PER_MESSAGE`] changes each, at
//! most [`MAX_PENDING_CHANGES`] waiting (the oldest are dropped beyond that, with a warning). The
//! changes implied by a kind's *first* list are not reported: they describe agentk starting, not the
//! cluster changing (later relists do report the differences they find).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::cache::{
    AgentCache, ObjectChange, ResourceKind, WatchEvent, object_changes_message, proto,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cache_service::{self, CacheAnswer, CacheQuery};
use crate::frame;

/// Changes waiting for kas at most; older ones are dropped beyond this.
pub const MAX_PENDING_CHANGES: usize = 10_000;
/// Changes per `object_changes` message at most.
pub const MAX_CHANGES_PER_MESSAGE: usize = 1_000;
/// Depth of the command channel (informers wait when the task is this far behind).
const COMMANDS: usize = 1024;
/// After the publisher had nothing to send, never wake sooner than this to ask again (a guard
/// against a timeout that stays in the past).
const SPIN_GUARD: Duration = Duration::from_millis(10);

enum Command {
    Event {
        kind: ResourceKind,
        event: WatchEvent,
    },
    Query {
        query: CacheQuery,
        reply: oneshot::Sender<CacheAnswer>,
    },
    Connected {
        link: u64,
        out: mpsc::Sender<Bytes>,
    },
    FromKas {
        link: u64,
        message: proto::ServerToAgent,
    },
    Disconnected {
        link: u64,
    },
}

/// The cache task is gone (agentk is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cache task has stopped")]
pub struct CacheStopped;

/// A cloneable handle for talking to the cache task.
#[derive(Debug, Clone)]
pub struct CacheHandle {
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Event { kind, .. } => write!(f, "Event({kind})"),
            Command::Query { query, .. } => write!(f, "Query({query:?})"),
            Command::Connected { link, .. } => write!(f, "Connected({link})"),
            Command::FromKas { link, .. } => write!(f, "FromKas({link})"),
            Command::Disconnected { link } => write!(f, "Disconnected({link})"),
        }
    }
}

impl CacheHandle {
    async fn send(&self, c: Command) -> Result<(), CacheStopped> {
        self.tx.send(c).await.map_err(|_| CacheStopped)
    }

    /// A watch event of `kind` (waits while the task is behind).
    pub async fn event(&self, kind: ResourceKind, event: WatchEvent) -> Result<(), CacheStopped> {
        self.send(Command::Event { kind, event }).await
    }

    /// Answers a query from the store; `None` if the task has stopped.
    pub async fn query(&self, query: CacheQuery) -> Option<CacheAnswer> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Query { query, reply }).await.ok()?;
        answer.await.ok()
    }

    /// A views stream is up: messages for kas go to `out`. Replaces any previous link.
    pub async fn connected(&self, link: u64, out: mpsc::Sender<Bytes>) -> Result<(), CacheStopped> {
        self.send(Command::Connected { link, out }).await
    }

    /// A message kas sent on link `link`.
    pub async fn from_kas(
        &self,
        link: u64,
        message: proto::ServerToAgent,
    ) -> Result<(), CacheStopped> {
        self.send(Command::FromKas { link, message }).await
    }

    /// Link `link` is gone (ignored if a newer link replaced it).
    pub async fn disconnected(&self, link: u64) -> Result<(), CacheStopped> {
        self.send(Command::Disconnected { link }).await
    }
}

/// Object changes waiting for kas (see the module documentation). Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pending: VecDeque<ObjectChange>,
    dropped: u64,
    last_sent: Option<Instant>,
    window: Duration,
    max_pending: usize,
    max_per_message: usize,
}

impl ChangeBatch {
    /// A batch sending at most once per `window`.
    pub fn new(window: Duration) -> ChangeBatch {
        ChangeBatch::with_limits(window, MAX_PENDING_CHANGES, MAX_CHANGES_PER_MESSAGE)
    }

    /// A batch with explicit limits (each at least 1).
    pub fn with_limits(
        window: Duration,
        max_pending: usize,
        max_per_message: usize,
    ) -> ChangeBatch {
        ChangeBatch {
            pending: VecDeque::new(),
            dropped: 0,
            last_sent: None,
            window,
            max_pending: max_pending.max(1),
            max_per_message: max_per_message.max(1),
        }
    }

    /// Adds changes, dropping the oldest beyond the limit.
    pub fn push(&mut self, changes: impl IntoIterator<Item = ObjectChange>) {
        for c in changes {
            if self.pending.len() >= self.max_pending {
                self.pending.pop_front();
                self.dropped += 1;
            }
            self.pending.push_back(c);
        }
    }

    /// Changes waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the next message may go (`None`: nothing waits); at or before `now` means now.
    pub fn due_at(&self, now: Instant) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(
            self.last_sent
                .and_then(|t| t.checked_add(self.window))
                .unwrap_or(now),
        )
    }

    /// The next message's changes and how many were dropped since the last one, if one is due.
    pub fn take(&mut self, now: Instant) -> Option<(Vec<ObjectChange>, u64)> {
        if self.due_at(now).is_none_or(|t| t > now) {
            return None;
        }
        let n = self.pending.len().min(self.max_per_message);
        let changes: Vec<ObjectChange> = self.pending.drain(..n).collect();
        self.last_sent = Some(now);
        Some((changes, std::mem::take(&mut self.dropped)))
    }
}

struct Link {
    id: u64,
    out: mpsc::Sender<Bytes>,
}

/// The task's state.
struct CacheTask {
    cache: AgentCache,
    link: Option<Link>,
    changes: ChangeBatch,
    /// Inputs arrived since the publisher last said it had nothing to send.
    transmit_due: bool,
    /// When the publisher last had nothing to send.
    idle_at: Option<Instant>,
    /// The last store error per kind, so each distinct one is logged once.
    store_errors: BTreeMap<ResourceKind, String>,
}

/// Starts the cache task for `kinds` (each known to the store as "listing" from the start, so a
/// query for a kind not listed yet is answered 503, not 404). It runs until every [`CacheHandle`]
/// is dropped or the returned task is aborted.
pub fn spawn(
    mut cache: AgentCache,
    kinds: &[ResourceKind],
    window: Duration,
) -> (CacheHandle, JoinHandle<()>) {
    for kind in kinds {
        // Cannot fail: Init needs no object.
        let _ = cache.apply(kind, WatchEvent::Init);
    }
    let (tx, rx) = mpsc::channel(COMMANDS);
    let task = CacheTask {
        cache,
        link: None,
        changes: ChangeBatch::new(window),
        transmit_due: false,
        idle_at: None,
        store_errors: BTreeMap::new(),
    };
    (CacheHandle { tx }, tokio::spawn(task.run(rx)))
}

impl CacheTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        // Runs until every handle is gone; each iteration handles one command, sends one message
        // or sleeps until the next deadline, so it never spins (see SPIN_GUARD).
        loop {
            let now = Instant::now();
            let changes_due = self.changes.due_at(now).is_some_and(|t| t <= now);
            let want_send = self.link.is_some() && (self.transmit_due || changes_due);
            let out = if want_send {
                self.link.as_ref().map(|l| l.out.clone())
            } else {
                None
            };
            let reserve = async move {
                match out {
                    Some(out) => out.reserve_owned().await.ok(),
                    None => std::future::pending().await,
                }
            };
            let wake = if want_send { None } else { self.next_wake(now) };
            let sleep = async move {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = rx.recv() => match command {
                    Some(c) => self.command(c),
                    None => break,
                },
                permit = reserve => match permit {
                    Some(p) => self.transmit(p),
                    None => self.lost_link(),
                },
                () = sleep => self.transmit_due = true,
            }
        }
        tracing::debug!("cache task stopped");
    }

    /// When the publisher or the change batch next needs attention (only while a link is up).
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.link.as_ref()?;
        let publisher = self.cache.poll_timeout().map(|t| match self.idle_at {
            Some(idle) if t <= idle => idle + SPIN_GUARD,
            _ => t,
        });
        match (publisher, self.changes.due_at(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Event { kind, event } => self.apply(kind, event),
            Command::Query { query, reply } => {
                let _ = reply.send(cache_service::answer(self.cache.store(), &query));
            }
            Command::Connected { link, out } => {
                if let Some(old) = self.link.take() {
                    tracing::debug!(old = old.id, new = link, "views link replaced");
                    self.cache.on_disconnected();
                }
                tracing::info!(link, "views stream to kas open");
                self.cache.on_connected(now);
                self.link = Some(Link { id: link, out });
                self.transmit_due = true;
            }
            Command::FromKas { link, message } => {
                if self.link.as_ref().is_some_and(|l| l.id == link) {
                    self.cache.handle(&message, now);
                    self.transmit_due = true;
                }
            }
            Command::Disconnected { link } => {
                if self.link.as_ref().is_some_and(|l| l.id == link) {
                    self.lost_link();
                }
            }
        }
    }

    fn apply(&mut self, kind: ResourceKind, event: WatchEvent) {
        let first_list =
            matches!(event, WatchEvent::InitDone) && !self.cache.store().is_synced(&kind);
        match self.cache.apply(&kind, event) {
            Ok(changes) => {
                if first_list {
                    tracing::info!(
                        %kind,
                        objects = self.cache.store().kind_len(&kind),
                        "initial list complete"
                    );
                } else {
                    self.changes.push(changes);
                }
                self.store_errors.remove(&kind);
                if self.link.is_some() {
                    self.transmit_due = true;
                }
            }
            Err(e) => {
                let text = e.to_string();
                if self.store_errors.get(&kind) != Some(&text) {
                    tracing::warn!(%kind, error = %text, "watch event not applied");
                    self.store_errors.insert(kind, text);
                }
            }
        }
    }

    /// Sends one message through `permit`, if any is due.
    fn transmit(&mut self, permit: mpsc::OwnedPermit<Bytes>) {
        let now = Instant::now();
        if self.transmit_due {
            if let Some(message) = self.cache.poll_transmit(now) {
                log_message(&message);
                permit.send(frame::encode(&message));
                return;
            }
            self.transmit_due = false;
            self.idle_at = Some(now);
        }
        if let Some((changes, dropped)) = self.changes.take(now) {
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "object changes dropped: kas did not take them in time"
                );
            }
            tracing::debug!(changes = changes.len(), "object changes sent");
            permit.send(frame::encode(&object_changes_message(&changes)));
        }
    }

    fn lost_link(&mut self) {
        if let Some(link) = self.link.take() {
            tracing::info!(link = link.id, "views stream to kas closed");
            self.cache.on_disconnected();
        }
        self.transmit_due = false;
    }
}

fn log_message(message: &proto::AgentToServer) {
    use proto::agent_to_server::Msg;
    match &message.msg {
        Some(Msg::Snapshot(s)) => {
            tracing::debug!(
                epoch = s.epoch,
                seq = s.seq,
                views = s.views.len(),
                "view snapshot sent"
            )
        }
        Some(Msg::Update(u)) => tracing::debug!(
            epoch = u.epoch,
            base_seq = u.base_seq,
            seq = u.seq,
            views = u.views.len(),
            "view update sent"
        ),
        Some(Msg::ObjectChanges(_)) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::cache::ChangeType;

    fn change(i: usize) -> ObjectChange {
        ObjectChange {
            kind: ResourceKind::pod(),
            namespace: "ns".into(),
            name: format!("p{i}"),
            uid: format!("u{i}"),
            resource_version: i.to_string(),
            change_type: ChangeType::Added,
        }
    }

    #[test]
    fn batches_at_most_once_per_window() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut b = ChangeBatch::new(w);
        assert_eq!(b.due_at(t0), None);
        assert_eq!(b.take(t0), None);
        b.push([change(1), change(2)]);
        assert_eq!(b.due_at(t0), Some(t0), "the first batch goes at once");
        let (first, dropped) = b.take(t0).expect("due");
        assert_eq!(first, vec![change(1), change(2)]);
        assert_eq!(dropped, 0);
        b.push([change(3)]);
        assert_eq!(b.due_at(t0), Some(t0 + w));
        assert_eq!(b.take(t0 + w / 2), None, "within the window");
        let (second, _) = b.take(t0 + w).expect("window over");
        assert_eq!(second, vec![change(3)]);
        assert!(b.is_empty());
        // After a quiet period, a change goes at once again.
        b.push([change(4)]);
        let later = t0 + 10 * w;
        assert!(b.due_at(later).is_some_and(|t| t <= later));
        assert!(b.take(later).is_some());
    }

    #[test]
    fn bounds_pending_changes_and_message_size() {
        let t0 = Instant::now();
        let mut b = ChangeBatch::with_limits(Duration::from_millis(100), 5, 2);
        b.push((0..8).map(change));
        assert_eq!(b.len(), 5);
        let (m, dropped) = b.take(t0).expect("due");
        assert_eq!(m, vec![change(3), change(4)], "the oldest were dropped");
        assert_eq!(dropped, 3);
        let (m, dropped) = b.take(t0 + Duration::from_millis(100)).expect("due");
        assert_eq!(m, vec![change(5), change(6)]);
        assert_eq!(dropped, 0);
    }
}
