//! Informers: one `kube-runtime` watcher per configured kind, over all namespaces, feeding the
//! cache task.
//!
//! Each kind is watched as a [`DynamicObject`] through an [`ApiResource`] derived from its
//! group/version/kind (`ApiResource::from_gvk`: the resource's plural is the kind lowercased and
//! pluralised the way Kubernetes does for its built-in kinds). Watcher events map one to one onto
//! [`WatchEvent`]s carrying the object as JSON ([`watch_event`]). The watcher relists by itself
//! when a watch cannot be resumed (an `Init` … `InitDone` batch the store swaps in atomically).
//!
//! Failures (API server unreachable, a kind the server does not serve, RBAC) are retried with
//! `kube-runtime`'s default back-off (exponential with jitter, capped), never in a busy loop; each
//! distinct failure is logged once as a warning (repeats at debug level) and the recovery once.
//! The informers run from start-up whether or not kas is connected, until aborted.
//!
//! [`ServiceInformer`] is the service proxy's own informer: one watch per Service the proxy was
//! asked for (a list and a watch with `fieldSelector=metadata.name=…` in its namespace), started by
//! the first request for it. That request waits for the first list; every later request reads the
//! last state the watch saw, without an API call. At most [`MAX_WATCHED_SERVICES`] Services are
//! watched; beyond that, and after [`SERVICE_IDLE`] without a request, a watch is stopped.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use protocol::cache::{ResourceKind, WatchEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::cache::CacheHandle;

/// The watch event for the cache, the object serialised to JSON.
pub fn watch_event(event: Event<DynamicObject>) -> Result<WatchEvent, serde_json::Error> {
    Ok(match event {
        Event::Init => WatchEvent::Init,
        Event::InitApply(o) => WatchEvent::InitApply(serde_json::to_value(o)?),
        Event::InitDone => WatchEvent::InitDone,
        Event::Apply(o) => WatchEvent::Apply(serde_json::to_value(o)?),
        Event::Delete(o) => WatchEvent::Delete(serde_json::to_value(o)?),
    })
}

/// The API resource agentk watches for `kind`.
pub fn api_resource(kind: &ResourceKind) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        &kind.group,
        &kind.version,
        &kind.kind,
    ))
}

/// Starts one informer per kind.
pub fn spawn(
    client: &kube::Client,
    kinds: &[ResourceKind],
    cache: &CacheHandle,
) -> Vec<JoinHandle<()>> {
    kinds
        .iter()
        .map(|kind| {
            let span = tracing::info_span!("informer", %kind);
            tokio::spawn(run(client.clone(), kind.clone(), cache.clone()).instrument(span))
        })
        .collect()
}

/// Watches `kind` and feeds the cache until the cache task stops (or the task is aborted).
pub async fn run(client: kube::Client, kind: ResourceKind, cache: CacheHandle) {
    let resource = api_resource(&kind);
    tracing::debug!(plural = %resource.plural, "watching");
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut events = pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    let mut failure: Option<String> = None;
    // The watcher stream does not end; the loop ends when the cache task is gone, and each error
    // is followed by a back-off sleep inside the stream.
    while let Some(item) = events.next().await {
        let event = match item {
            Ok(event) => event,
            Err(e) => {
                let text = e.to_string();
                if failure.as_deref() == Some(text.as_str()) {
                    tracing::debug!(error = %text, "watch still failing; retrying with back-off");
                } else {
                    tracing::warn!(error = %text, "watch failed; retrying with back-off");
                    failure = Some(text);
                }
                continue;
            }
        };
        if failure.take().is_some() {
            tracing::info!("watch recovered");
        }
        let event = match watch_event(event) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot represent a watched object as JSON; skipped");
                continue;
            }
        };
        if cache.event(kind.clone(), event).await.is_err() {
            return;
        }
    }
}

/// Most Services the service proxy watches at once (the least recently used one is dropped).
pub const MAX_WATCHED_SERVICES: usize = 512;
/// A watched Service without a request for this long is no longer watched.
pub const SERVICE_IDLE: Duration = Duration::from_secs(15 * 60);

/// What the service proxy knows about one Service.
#[derive(Debug, Clone)]
enum ServiceState {
    /// The first list has not answered yet.
    Pending,
    /// The Service exists: its object as JSON.
    Present(Arc<serde_json::Value>),
    /// The Service does not exist.
    Absent,
    /// The first list failed (the entry is dropped, so the next request tries again).
    Failed(Arc<LookupFailure>),
}

/// Why a Service could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupFailure {
    /// The API server answered with an error status (otherwise it could not be reached).
    pub answered: bool,
    /// `lookup` when it answered, else `connect`/`tls`/`timeout`/`upstream`
    /// ([`classify`](crate::upstream::classify)).
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

impl LookupFailure {
    fn of(e: &watcher::Error) -> LookupFailure {
        let answered = matches!(
            e,
            watcher::Error::InitialListFailed(kube::Error::Api(_))
                | watcher::Error::WatchStartFailed(kube::Error::Api(_))
                | watcher::Error::WatchError(_)
                | watcher::Error::NoResourceVersion
        );
        if answered {
            LookupFailure {
                answered,
                kind: "lookup",
                message: e.to_string(),
            }
        } else {
            let (kind, message) = crate::upstream::classify(e);
            LookupFailure {
                answered,
                kind,
                message,
            }
        }
    }

    fn other(message: String) -> LookupFailure {
        LookupFailure {
            answered: false,
            kind: "upstream",
            message,
        }
    }
}

struct WatchedService {
    state: watch::Receiver<ServiceState>,
    last_used: Instant,
    /// Told apart from a newer watch of the same Service when a failed one is dropped.
    serial: u64,
    task: JoinHandle<()>,
}

impl Drop for WatchedService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Watched {
    serial: u64,
    /// namespace → name → watch (nested, so a lookup needs no allocation).
    by_namespace: HashMap<String, HashMap<String, WatchedService>>,
    count: usize,
}

impl Watched {
    fn get(
        &mut self,
        namespace: &str,
        name: &str,
        now: Instant,
    ) -> Option<(u64, watch::Receiver<ServiceState>)> {
        let w = self.by_namespace.get_mut(namespace)?.get_mut(name)?;
        w.last_used = now;
        Some((w.serial, w.state.clone()))
    }

    fn remove(&mut self, namespace: &str, name: &str, serial: Option<u64>) {
        if let Some(names) = self.by_namespace.get_mut(namespace) {
            if names
                .get(name)
                .is_some_and(|w| serial.is_none_or(|s| w.serial == s))
            {
                names.remove(name);
                self.count -= 1;
            }
            if names.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
    }

    /// Drops idle watches, and the least recently used one while at the limit.
    fn make_room(&mut self, now: Instant) {
        let idle: Vec<(String, String)> = self
            .by_namespace
            .iter()
            .flat_map(|(ns, names)| {
                names
                    .iter()
                    .filter(|(_, w)| now.duration_since(w.last_used) >= SERVICE_IDLE)
                    .map(move |(n, _)| (ns.clone(), n.clone()))
            })
            .collect();
        for (ns, n) in idle {
            tracing::debug!(namespace = %ns, service = %n, "service no longer used; watch stopped");
            self.remove(&ns, &n, None);
        }
        // Bounded: each iteration removes one watch.
        while self.count >= MAX_WATCHED_SERVICES {
            let oldest = self
                .by_namespace
                .iter()
                .flat_map(|(ns, names)| names.iter().map(move |(n, w)| (w.last_used, ns, n)))
                .min_by_key(|(t, _, _)| *t)
                .map(|(_, ns, n)| (ns.clone(), n.clone()));
            let Some((ns, n)) = oldest else { break };
            self.remove(&ns, &n, None);
        }
    }
}

/// The Services the service proxy resolves, each watched from its first request on; see the
/// module documentation. Cloning shares the watches.
#[derive(Clone)]
pub struct ServiceInformer {
    client: kube::Client,
    watched: Arc<Mutex<Watched>>,
}

impl std::fmt::Debug for ServiceInformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceInformer").finish_non_exhaustive()
    }
}

impl ServiceInformer {
    /// An informer watching with `client` (nothing is watched until the first lookup).
    pub fn new(client: kube::Client) -> ServiceInformer {
        ServiceInformer {
            client,
            watched: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The Service `namespace/name` as last seen (`None`: it does not exist): from its watch if
    /// there is one (no API call), otherwise after starting one and waiting for its first list.
    /// `Err`: the first list failed (why); the next lookup starts a new watch.
    pub async fn lookup(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<serde_json::Value>>, Arc<LookupFailure>> {
        let now = Instant::now();
        let (serial, mut state) = {
            let mut watched = self.lock();
            match watched.get(namespace, name, now) {
                Some(found) => found,
                None => {
                    watched.make_room(now);
                    watched.serial += 1;
                    let serial = watched.serial;
                    let (tx, rx) = watch::channel(ServiceState::Pending);
                    let span = tracing::info_span!("service_watch", %namespace, service = %name);
                    let task = tokio::spawn(
                        watch_service(
                            self.client.clone(),
                            namespace.to_owned(),
                            name.to_owned(),
                            tx,
                        )
                        .instrument(span),
                    );
                    watched
                        .by_namespace
                        .entry(namespace.to_owned())
                        .or_default()
                        .insert(
                            name.to_owned(),
                            WatchedService {
                                state: rx.clone(),
                                last_used: now,
                                serial,
                                task,
                            },
                        );
                    watched.count += 1;
                    (serial, rx)
                }
            }
        };
        let current = match state
            .wait_for(|s| !matches!(s, ServiceState::Pending))
            .await
        {
            Ok(s) => s.clone(),
            // The watch task ended without a state (aborted while we waited).
            Err(_) => ServiceState::Failed(Arc::new(LookupFailure::other(
                "the service watch was stopped".into(),
            ))),
        };
        match current {
            ServiceState::Present(object) => Ok(Some(object)),
            ServiceState::Absent => Ok(None),
            ServiceState::Failed(why) => {
                self.lock().remove(namespace, name, Some(serial));
                Err(why)
            }
            // Not reached: waited for above.
            ServiceState::Pending => Err(Arc::new(LookupFailure::other(
                "the service watch has not listed yet".into(),
            ))),
        }
    }

    /// How many Services are watched.
    pub fn watched(&self) -> usize {
        self.lock().count
    }
}

/// Watches one Service and publishes its state until aborted; a failure before the first list
/// is published as [`ServiceState::Failed`] and ends the watch.
async fn watch_service(
    client: kube::Client,
    namespace: String,
    name: String,
    state: watch::Sender<ServiceState>,
) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client,
        &namespace,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Service")),
    );
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = pin!(watcher::watcher(api, config).default_backoff());
    let mut listed: Option<DynamicObject> = None;
    let mut synced = false;
    let mut failure: Option<String> = None;
    let json = |o: DynamicObject| match serde_json::to_value(o) {
        Ok(v) => ServiceState::Present(Arc::new(v)),
        Err(e) => ServiceState::Failed(Arc::new(LookupFailure {
            answered: true,
            kind: "lookup",
            message: format!("cannot represent the service as JSON: {e}"),
        })),
    };
    // The watcher stream does not end; the task is aborted when the Service is no longer used.
    while let Some(item) = events.next().await {
        match item {
            Ok(Event::Init) => listed = None,
            Ok(Event::InitApply(o)) => listed = Some(o),
            Ok(Event::InitDone) => {
                synced = true;
                state.send_replace(listed.take().map_or(ServiceState::Absent, json));
            }
            Ok(Event::Apply(o)) => {
                state.send_replace(json(o));
            }
            Ok(Event::Delete(_)) => {
                state.send_replace(ServiceState::Absent);
            }
            Err(e) if !synced => {
                state.send_replace(ServiceState::Failed(Arc::new(LookupFailure::of(&e))));
                return;
            }
            Err(e) => {
                // The last state stays in use while the watch retries with back-off.
                let text = e.to_string();
                if failure.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "service watch failed; retrying with back-off");
                    failure = Some(text);
                }
                continue;
            }
        }
        if failure.take().is_some() {
            tracing::info!("service watch recovered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_of_the_default_kinds() {
        let pods = api_resource(&ResourceKind::pod());
        assert_eq!((pods.group.as_str(), pods.plural.as_str()), ("", "pods"));
        let d = api_resource(&ResourceKind::deployment());
        assert_eq!(d.api_version, "apps/v1");
        assert_eq!(d.plural, "deployments");
        assert_eq!(api_resource(&ResourceKind::node()).plural, "nodes");
        assert_eq!(api_resource(&ResourceKind::event()).plural, "events");
    }

    #[test]
    fn events_map_one_to_one() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running"}
        }))
        .expect("pod");
        assert_eq!(watch_event(Event::Init).expect("init"), WatchEvent::Init);
        assert_eq!(
            watch_event(Event::InitDone).expect("done"),
            WatchEvent::InitDone
        );
        let WatchEvent::Apply(v) = watch_event(Event::Apply(object.clone())).expect("apply") else {
            panic!("not an Apply");
        };
        assert_eq!(v["kind"], "Pod");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(v["spec"]["nodeName"], "n1");
        assert_eq!(
            watch_event(Event::InitApply(object.clone())).expect("init apply"),
            WatchEvent::InitApply(v.clone())
        );
        assert_eq!(
            watch_event(Event::Delete(object)).expect("delete"),
            WatchEvent::Delete(v)
        );
    }
}
