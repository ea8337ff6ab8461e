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

use std::pin::pin;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use protocol::cache::{ResourceKind, WatchEvent};
use tokio::task::JoinHandle;
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
