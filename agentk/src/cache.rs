//! The informer cache as one task: it owns the [`AgentViews`] endpoint (store, views, publisher,
//! object-change batching, link management; `protocol::cache::endpoint`) and is fed through one
//! channel by the informers (watch events), the `cache` service (queries) and the `views` stream of
//! the current kas connection (link up/down, kas's raw body chunks).
//!
//! ```text
//!  informers ──event──▶ ┌────────────┐ ──framed messages (bounded channel)──▶ views stream writer
//!  cache service ─query─▶│ cache task │ ◀── linked / body chunks / finished / unlinked ── views stream
//!                        └────────────┘
//! ```
//!
//! Nothing else touches the cache, so there is no lock; queries and events are served in arrival
//! order. The task runs from start-up whether or not kas is connected. It is a driver only: every
//! decision (what to send when, link replacement, first-list suppression, store-error dedup) is
//! [`AgentViews`]'s.
//!
//! **Sending.** Messages for kas go through a small bounded channel to the views stream's writer,
//! which writes them with the stream's flow control. The task asks the endpoint for a message
//! ([`AgentViews::poll_transmit`]) only once [`AgentViews::poll_timeout`] says one may be due *and*
//! it holds a slot in that channel, so while kas reads slowly changes keep coalescing in the
//! publisher instead of queueing up; otherwise it sleeps until the timeout (never in the past: the
//! endpoint's no-spin invariant).

use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::cache::{
    AgentCache, AgentViews, AgentViewsConfig, AgentViewsEvent, LinkEnd, LinkId, ResourceKind,
    WatchEvent,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cache_service::{self, CacheAnswer, CacheQuery};

/// Depth of the command channel (informers wait when the task is this far behind).
const COMMANDS: usize = 1024;

enum Command {
    Event {
        kind: ResourceKind,
        event: WatchEvent,
    },
    Query {
        query: CacheQuery,
        reply: oneshot::Sender<CacheAnswer>,
    },
    Linked {
        link: LinkId,
        out: mpsc::Sender<Bytes>,
        violation: oneshot::Sender<String>,
    },
    Body {
        link: LinkId,
        chunk: Bytes,
    },
    Finished {
        link: LinkId,
        reply: oneshot::Sender<Option<String>>,
    },
    Unlinked {
        link: LinkId,
        end: LinkEnd,
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
            Command::Linked { link, .. } => write!(f, "Linked({link})"),
            Command::Body { link, chunk } => write!(f, "Body({link}, {} octets)", chunk.len()),
            Command::Finished { link, .. } => write!(f, "Finished({link})"),
            Command::Unlinked { link, end } => write!(f, "Unlinked({link}, {end:?})"),
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

    /// A views stream is up: framed messages for kas go to `out`; if kas breaks the protocol on it,
    /// the violation is sent to `violation` (and the link dropped). Replaces any previous link.
    pub async fn linked(
        &self,
        link: LinkId,
        out: mpsc::Sender<Bytes>,
        violation: oneshot::Sender<String>,
    ) -> Result<(), CacheStopped> {
        self.send(Command::Linked {
            link,
            out,
            violation,
        })
        .await
    }

    /// Octets kas sent on link `link`, as read.
    pub async fn body(&self, link: LinkId, chunk: Bytes) -> Result<(), CacheStopped> {
        self.send(Command::Body { link, chunk }).await
    }

    /// kas ended its direction of link `link`: the violation, if it stopped inside a message.
    pub async fn finished(&self, link: LinkId) -> Result<Option<String>, CacheStopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Finished { link, reply }).await?;
        answer.await.map_err(|_| CacheStopped)
    }

    /// Link `link` is gone (ignored if a newer link replaced it).
    pub async fn unlinked(&self, link: LinkId, end: LinkEnd) -> Result<(), CacheStopped> {
        self.send(Command::Unlinked { link, end }).await
    }
}

/// The driver's side of the current link.
struct Link {
    id: LinkId,
    out: mpsc::Sender<Bytes>,
    violation: Option<oneshot::Sender<String>>,
}

/// The task's state.
struct CacheTask {
    views: AgentViews,
    link: Option<Link>,
}

/// Starts the cache task for `kinds` (each known to the store as "listing" from the start, so a
/// query for a kind not listed yet is answered 503, not 404), batching object changes per
/// `window`. It runs until every [`CacheHandle`] is dropped or the returned task is aborted.
pub fn spawn(
    cache: AgentCache,
    kinds: &[ResourceKind],
    window: Duration,
) -> (CacheHandle, JoinHandle<()>) {
    let mut views = AgentViews::with_cache(cache, AgentViewsConfig::new(window));
    let now = Instant::now();
    for kind in kinds {
        // Cannot fail: Init needs no object.
        let _ = views.handle_watch(kind, WatchEvent::Init, now);
    }
    let (tx, rx) = mpsc::channel(COMMANDS);
    let task = CacheTask { views, link: None };
    (CacheHandle { tx }, tokio::spawn(task.run(rx)))
}

impl CacheTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        // Runs until every handle is gone; each iteration handles one command, sends one message
        // or sleeps until the endpoint's next deadline (which is never in the past once it had
        // nothing to send), so it never spins.
        loop {
            let now = Instant::now();
            let wake = self.views.poll_timeout();
            let want_send = wake.is_some_and(|t| t <= now);
            let out = match (&self.link, want_send) {
                (Some(l), true) => Some(l.out.clone()),
                _ => None,
            };
            let reserve = async move {
                match out {
                    Some(out) => out.reserve_owned().await.ok(),
                    None => std::future::pending().await,
                }
            };
            let sleep = async move {
                match wake {
                    Some(t) if !want_send => tokio::time::sleep_until(t.into()).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                command = rx.recv() => match command {
                    Some(c) => self.command(c),
                    None => break,
                },
                permit = reserve => match permit {
                    Some(p) => {
                        if let Some(bytes) = self.views.poll_transmit(Instant::now()) {
                            p.send(bytes);
                        }
                    }
                    None => {
                        if let Some(id) = self.link.as_ref().map(|l| l.id) {
                            self.views.handle_unlinked(id, LinkEnd::Failed);
                        }
                    }
                },
                () = sleep => {}
            }
            self.log_events();
        }
        tracing::debug!("cache task stopped");
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Event { kind, event } => {
                // Errors are reported (once per distinct error) as events.
                let _ = self.views.handle_watch(&kind, event, now);
            }
            Command::Query { query, reply } => {
                let _ = reply.send(cache_service::answer(self.views.cache().store(), &query));
            }
            Command::Linked {
                link,
                out,
                violation,
            } => {
                self.views.handle_linked(link, now);
                self.link = Some(Link {
                    id: link,
                    out,
                    violation: Some(violation),
                });
            }
            Command::Body { link, chunk } => {
                if let Err(e) = self.views.handle_body(link, &chunk, now) {
                    self.violation(link, e.to_string());
                }
            }
            Command::Finished { link, reply } => {
                let _ = reply.send(
                    self.views
                        .handle_finished(link)
                        .err()
                        .map(|e| e.to_string()),
                );
            }
            Command::Unlinked { link, end } => self.views.handle_unlinked(link, end),
        }
    }

    fn violation(&mut self, link: LinkId, error: String) {
        if let Some(l) = self.link.as_mut().filter(|l| l.id == link)
            && let Some(tx) = l.violation.take()
        {
            let _ = tx.send(error);
        }
    }

    /// Logs what the endpoint reported; forgets a link it dropped.
    fn log_events(&mut self) {
        // Bounded by the endpoint's event queue.
        while let Some(event) = self.views.poll_event() {
            match event {
                AgentViewsEvent::Linked { link } => {
                    tracing::info!(link, "views stream to kas open");
                }
                AgentViewsEvent::Unlinked { link, end } => {
                    tracing::info!(link, ?end, "views stream to kas closed");
                    if self.link.as_ref().is_some_and(|l| l.id == link) {
                        self.link = None;
                    }
                }
                AgentViewsEvent::InitialListDone { kind, objects } => {
                    tracing::info!(%kind, objects, "initial list complete");
                }
                AgentViewsEvent::ChangesDropped { count } => {
                    tracing::warn!(
                        dropped = count,
                        "object changes dropped: kas did not take them in time"
                    );
                }
                AgentViewsEvent::StoreError { kind, error } => {
                    tracing::warn!(%kind, %error, "watch event not applied");
                }
            }
        }
    }
}
