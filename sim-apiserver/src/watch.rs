//! Watch streams: turning store changes into the newline-delimited JSON event stream of the
//! Kubernetes watch protocol (`{"type":"ADDED","object":{...}}`).
//!
//! A watch starts from a store [`Subscription`](super::store::Subscription) (synthetic `ADDED` events for the current state,
//! or the history after a version), then forwards live changes filtered by namespace and
//! selectors. An object that stops matching a selector is sent as `DELETED`, one that starts
//! matching as `ADDED`, as the real server does. Optional periodic `BOOKMARK`s carry the latest
//! version seen; `timeoutSeconds` ends the stream; a watcher that falls too far behind the
//! change broadcast gets an `ERROR` event with a 410 `Expired` status and the stream ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use super::resource::{Resource, ResourceType};
use super::selector::Selectors;
use super::status::ApiError;
use super::store::{EventType, Store, StoreError, StoreEvent, WatchStart};
use super::table::{self, IncludeObject};

/// What a watch asks for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// Resource type watched.
    pub resource: Resource,
    /// Namespace, or `None` for all namespaces / cluster-scoped.
    pub namespace: Option<String>,
    /// Label and field selectors.
    pub selectors: Selectors,
    /// Where to start.
    pub start: WatchStart,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: after the initial state send a bookmark annotated
    /// `k8s.io/initial-events-end`.
    pub send_initial_events: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// Send each object as a one-row `Table` (kubectl's `get --watch`).
    pub as_table: Option<IncludeObject>,
    /// Interval between bookmarks.
    pub bookmark_interval: Duration,
}

/// The watch event type and object to send for `ev`, if this watcher should see it.
pub fn filter_event(
    ev: &StoreEvent,
    resource: &ResourceType,
    namespace: Option<&str>,
    selectors: &Selectors,
) -> Option<(&'static str, Arc<Value>)> {
    if !ev.is_of(resource) {
        return None;
    }
    if let Some(ns) = namespace
        && ev.namespace != ns
    {
        return None;
    }
    let now = selectors.matches(&ev.object);
    match ev.event_type {
        EventType::Added => now.then(|| ("ADDED", ev.object.clone())),
        EventType::Deleted => {
            let before = ev.previous.as_ref().is_none_or(|p| selectors.matches(p));
            before.then(|| ("DELETED", ev.object.clone()))
        }
        EventType::Modified => {
            let before = ev.previous.as_ref().is_some_and(|p| selectors.matches(p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", ev.object.clone())),
                (false, true) => Some(("ADDED", ev.object.clone())),
                (true, false) => Some(("DELETED", ev.object.clone())),
                (false, false) => None,
            }
        }
    }
}

/// One serialized watch event line.
pub fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A `BOOKMARK` object for `resource` at version `rv`.
pub fn bookmark_object(resource: &ResourceType, rv: u64, initial_events_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end && let Some(m) = meta.as_object_mut() {
        m.insert(
            "annotations".to_string(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": meta})
}

/// The `ERROR` event's object for an expired watch.
pub fn expired_status(message: &str) -> Value {
    ApiError::expired(message).to_status()
}

struct Emitter {
    tx: mpsc::Sender<Bytes>,
    resource: Resource,
    as_table: Option<IncludeObject>,
    sent_columns: bool,
}

impl Emitter {
    /// Sends one event; `false` when the client is gone.
    async fn send(&mut self, event_type: &str, object: &Value) -> bool {
        let presented = if event_type == "BOOKMARK" || event_type == "ERROR" {
            std::borrow::Cow::Borrowed(object)
        } else {
            self.resource.present(object)
        };
        let object: &Value = &presented;
        let line = match (self.as_table, event_type) {
            (Some(include), "ADDED" | "MODIFIED" | "DELETED") => {
                let t = table::table(
                    &self.resource,
                    [object],
                    include,
                    json!({"resourceVersion": object.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)}),
                    !self.sent_columns,
                );
                self.sent_columns = true;
                event_line(event_type, &t)
            }
            _ => event_line(event_type, object),
        };
        self.tx.send(line).await.is_ok()
    }
}

/// Starts a watch: validates the start version now (so a too-old version can be answered with a
/// plain 410 response) and returns the receiving end of the event stream, fed by a spawned task
/// that ends on timeout, client disconnect, lag or `shutdown`.
pub fn start(
    store: &Store,
    req: WatchRequest,
    mut shutdown: watch::Receiver<bool>,
) -> Result<mpsc::Receiver<Bytes>, StoreError> {
    let sub = store.watch_objects(&req.resource, req.start)?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut receiver = sub.receiver;
        let mut last_rv = sub.start_version;
        let ns = req.namespace.as_deref();
        let mut out = Emitter {
            tx,
            resource: req.resource.clone(),
            as_table: req.as_table,
            sent_columns: false,
        };
        for ev in &sub.initial {
            if let Some((ty, obj)) = filter_event(ev, &req.resource, ns, &req.selectors)
                && !out.send(ty, &obj).await
            {
                return;
            }
        }
        if req.send_initial_events
            && !out
                .send("BOOKMARK", &bookmark_object(&req.resource, last_rv, true))
                .await
        {
            return;
        }
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
        let sleep_until_deadline = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until_deadline);
        let mut ticker =
            tokio::time::interval(req.bookmark_interval.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                () = &mut sleep_until_deadline => {
                    tracing::debug!(resource = %req.resource.plural, "watch reached timeoutSeconds");
                    break;
                }
                () = out.tx.closed() => {
                    tracing::debug!(resource = %req.resource.plural, "watch client went away");
                    break;
                }
                r = receiver.recv() => match r {
                    Ok(ev) => {
                        last_rv = last_rv.max(ev.resource_version);
                        if let Some((ty, obj)) = filter_event(&ev, &req.resource, ns, &req.selectors)
                            && !out.send(ty, &obj).await
                        {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(resource = %req.resource.plural, missed = n, "watcher fell behind; ending it with 410");
                        let _ = out.send("ERROR", &expired_status(&format!(
                            "too old resource version: {last_rv} (the watcher fell behind by {n} events)"
                        ))).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = ticker.tick(), if req.bookmarks => {
                    // Deliver everything already broadcast first, so the bookmark's version
                    // never runs ahead of events this watcher has not been sent.
                    let mut lagged = false;
                    for _ in 0..100_000 {
                        match receiver.try_recv() {
                            Ok(ev) => {
                                last_rv = last_rv.max(ev.resource_version);
                                if let Some((ty, obj)) = filter_event(&ev, &req.resource, ns, &req.selectors)
                                    && !out.send(ty, &obj).await
                                {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(_)) => { lagged = true; break; }
                            Err(_) => break,
                        }
                    }
                    if lagged {
                        let _ = out.send("ERROR", &expired_status(&format!(
                            "too old resource version: {last_rv} (the watcher fell behind)"
                        ))).await;
                        break;
                    }
                    if !out.send("BOOKMARK", &bookmark_object(&req.resource, last_rv, false)).await {
                        break;
                    }
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::known;
    use crate::selector::LabelSelector;
    use crate::store::StoreConfig;

    fn ev(t: EventType, prev: Option<Value>, obj: Value) -> StoreEvent {
        StoreEvent {
            resource_version: 5,
            event_type: t,
            resource: known::pod(),
            namespace: "default".into(),
            name: "p".into(),
            object: Arc::new(obj),
            previous: prev.map(Arc::new),
        }
    }

    #[test]
    fn selector_transitions() {
        let sel = Selectors {
            labels: LabelSelector::parse("app=web").unwrap_or_default(),
            ..Default::default()
        };
        let web = json!({"metadata": {"labels": {"app": "web"}}});
        let db = json!({"metadata": {"labels": {"app": "db"}}});
        let f = |e: &StoreEvent| filter_event(e, &known::pod(), Some("default"), &sel).map(|x| x.0);
        assert_eq!(f(&ev(EventType::Added, None, web.clone())), Some("ADDED"));
        assert_eq!(f(&ev(EventType::Added, None, db.clone())), None);
        assert_eq!(
            f(&ev(EventType::Modified, Some(web.clone()), web.clone())),
            Some("MODIFIED")
        );
        assert_eq!(
            f(&ev(EventType::Modified, Some(db.clone()), web.clone())),
            Some("ADDED")
        );
        assert_eq!(
            f(&ev(EventType::Modified, Some(web.clone()), db.clone())),
            Some("DELETED")
        );
        assert_eq!(
            f(&ev(EventType::Modified, Some(db.clone()), db.clone())),
            None
        );
        assert_eq!(
            f(&ev(EventType::Deleted, Some(web.clone()), web.clone())),
            Some("DELETED")
        );
        assert_eq!(
            f(&ev(EventType::Deleted, Some(db.clone()), db.clone())),
            None
        );
        assert_eq!(
            filter_event(
                &ev(EventType::Added, None, web.clone()),
                &known::pod(),
                Some("other"),
                &sel
            ),
            None
        );
        assert_eq!(
            filter_event(&ev(EventType::Added, None, web), &known::node(), None, &sel),
            None
        );
    }

    async fn next_line(rx: &mut mpsc::Receiver<Bytes>) -> Value {
        let b = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no watch event within the hang guard"))
            .unwrap_or_else(|| panic!("watch ended"));
        serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn stream_with_bookmarks_and_timeout() {
        let store = Store::new(StoreConfig::default());
        store
            .add_namespace("default")
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .add_pod("default", "a")
            .unwrap_or_else(|e| panic!("{e}"));
        let (_tx, shutdown) = watch::channel(false);
        let mut rx = start(
            &store,
            WatchRequest {
                resource: known::pod(),
                namespace: Some("default".into()),
                selectors: Selectors::default(),
                start: WatchStart::Snapshot,
                bookmarks: true,
                send_initial_events: true,
                timeout: Some(Duration::from_secs(3)),
                as_table: None,
                bookmark_interval: Duration::from_millis(50),
            },
            shutdown,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let first = next_line(&mut rx).await;
        assert_eq!(first["type"], "ADDED");
        assert_eq!(first["object"]["metadata"]["name"], "a");
        let end = next_line(&mut rx).await;
        assert_eq!(end["type"], "BOOKMARK");
        assert_eq!(
            end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        store
            .add_pod("default", "b")
            .unwrap_or_else(|e| panic!("{e}"));
        let b_rv = store.resource_version();
        let mut saw_b = false;
        let mut saw_bookmark_after_b = false;
        let mut ended = false;
        for _ in 0..10_000 {
            let Some(line) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("watch neither sent nor ended within the hang guard"))
            else {
                ended = true;
                break;
            };
            let v: Value = serde_json::from_slice(&line).unwrap_or_default();
            match v["type"].as_str() {
                Some("ADDED") => saw_b = v["object"]["metadata"]["name"] == "b",
                Some("BOOKMARK") if saw_b => {
                    let rv: u64 = v["object"]["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    assert!(rv >= b_rv);
                    saw_bookmark_after_b = true;
                }
                _ => {}
            }
        }
        assert!(saw_b && saw_bookmark_after_b);
        assert!(ended, "timeoutSeconds must end the stream");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lagging_watcher_gets_410_error_and_ends() {
        let store = Store::new(StoreConfig {
            history_size: 1000,
            broadcast_capacity: 16,
        });
        store
            .add_namespace("default")
            .unwrap_or_else(|e| panic!("{e}"));
        let (_tx, shutdown) = watch::channel(false);
        let start_rv = store.resource_version();
        let mut rx = start(
            &store,
            WatchRequest {
                resource: known::configmap(),
                namespace: None,
                selectors: Selectors::default(),
                start: WatchStart::After(start_rv),
                bookmarks: false,
                send_initial_events: false,
                timeout: None,
                as_table: None,
                bookmark_interval: Duration::from_secs(3600),
            },
            shutdown,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // On a current-thread runtime the watch task has not run yet: overflow its receiver.
        for i in 0..100 {
            store
                .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": format!("c{i}"), "namespace": "default"}}))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut last = Value::Null;
        for _ in 0..1000 {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(line)) => last = serde_json::from_slice(&line).unwrap_or_default(),
                Ok(None) => break,
                Err(_) => panic!("lagging watch neither ended nor sent within the hang guard"),
            }
        }
        assert_eq!(last["type"], "ERROR");
        assert_eq!(last["object"]["code"], 410);
        assert_eq!(last["object"]["reason"], "Expired");
    }
}
