//! The object store: versioned objects, bounded change history and change notification.
//!
//! Everything the API server serves lives here, free of HTTP so it can be tested on its own and
//! driven directly by tests, the churn generator and the simulated kubelet.
//!
//! * Objects are `serde_json::Value`s keyed by storage bucket (a resource's group and plural,
//!   the same for every version it is served at), namespace and name.
//! * The [`Registry`] of served resource types lives here too, so that storing a
//!   `CustomResourceDefinition` and serving its kind are one step.
//! * One global counter gives every change a `resourceVersion`; each change is recorded as a
//!   [`StoreEvent`] (with the object before the change) in a bounded history and broadcast to
//!   subscribers. History makes watches resumable from a version and lists consistent across
//!   pages: the state at an older version is rebuilt by undoing the newer events. Versions
//!   older than the retained history are answered with [`StoreError::Expired`] (HTTP 410).
//! * All mutations run as one transaction under one lock ([`txn`]), so versions, history and
//!   broadcasts are in one order, and so does the garbage collection they trigger ([`gc`]):
//!   finalizers, `ownerReferences` with `Foreground`/`Background`/`Orphan` propagation, and
//!   namespace and custom-resource-definition termination run to completion within the write
//!   that started them (where the real server's controllers take milliseconds to seconds).

mod gc;
mod txn;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use rand::Rng as _;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

pub use gc::{DeleteOptions, Deletion, Propagation};
pub use txn::generation_after;

use crate::managed::{FieldManager, Target};
use crate::resource::{Registry, Resource, ResourceType, StorageKey};
use crate::selector::Selectors;
use crate::status::ApiError;
use crate::time;
use txn::Txn;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was deleted.
    Deleted,
}

impl EventType {
    /// The watch event type string (`ADDED`, `MODIFIED`, `DELETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One recorded change.
#[derive(Debug, Clone)]
pub struct StoreEvent {
    /// The resource version of this change.
    pub resource_version: u64,
    /// What happened.
    pub event_type: EventType,
    /// The resource type of the object (one of the versions it is served at).
    pub resource: Resource,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The object after the change (for deletions: the last state, with the deletion's version).
    pub object: Arc<Value>,
    /// The object before the change (`None` for additions).
    pub previous: Option<Arc<Value>>,
}

impl StoreEvent {
    /// Whether this change is to an object of resource `r` (at any version).
    pub fn is_of(&self, r: &ResourceType) -> bool {
        self.resource.group == r.group && self.resource.plural == r.plural
    }
}

/// Errors of store operations; each maps to a Kubernetes `Status` reason and HTTP code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// 404 NotFound.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// Plural resource name (with group, e.g. `deployments.apps`).
        resource: String,
        /// Object name.
        name: String,
    },
    /// 409 AlreadyExists.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// Plural resource name.
        resource: String,
        /// Object name.
        name: String,
    },
    /// 409 Conflict (stale `resourceVersion` or failed precondition).
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {message}")]
    Conflict {
        /// Plural resource name.
        resource: String,
        /// Object name.
        name: String,
        /// Why.
        message: String,
    },
    /// 422 Invalid.
    #[error("{kind} \"{name}\" is invalid: {}", field_errors(errors))]
    Invalid {
        /// Object kind, qualified by its group (`Deployment.apps`).
        kind: String,
        /// Object name (may be empty).
        name: String,
        /// What is wrong, one `field: Type: detail` per error
        /// (`metadata.name: Required value: ...`).
        errors: Vec<String>,
    },
    /// 403 Forbidden (e.g. creating in a namespace being deleted).
    #[error("{message}")]
    Forbidden {
        /// Why.
        message: String,
        /// `details.causes[].reason`, if any (`NamespaceTerminating`).
        cause: Option<String>,
    },
    /// 400 BadRequest.
    #[error("{0}")]
    BadRequest(String),
    /// 410 Gone / Expired: a version older than the retained history.
    #[error("{0}")]
    Expired(String),
    /// 504: a version newer than the store has.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// The version asked for.
        requested: u64,
        /// The store's current version.
        current: u64,
    },
}

/// Field errors as Kubernetes joins them: one as is, several in brackets.
fn field_errors(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// Store sizing.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Number of change events retained for watch resumption and consistent paging.
    pub history_size: usize,
    /// Capacity of the change broadcast; a watcher lagging further behind is ended with 410.
    pub broadcast_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            history_size: 10_000,
            broadcast_capacity: 4096,
        }
    }
}

type ObjectKey = (String, String);
type Objects = BTreeMap<ObjectKey, Arc<Value>>;

/// One stored object: bucket, namespace and name.
pub(crate) type ObjRef = (StorageKey, String, String);

/// The qualified resource name used in messages (`pods`, `deployments.apps`).
pub fn qualified(r: &ResourceType) -> String {
    r.qualified()
}

struct State {
    resource_version: u64,
    registry: Registry,
    buckets: HashMap<StorageKey, Objects>,
    /// Owner uid → the objects whose `ownerReferences` name it.
    dependents: HashMap<String, BTreeSet<ObjRef>>,
    history: VecDeque<Arc<StoreEvent>>,
    /// Every event with a version at or below this is no longer in `history`.
    compacted: u64,
}

struct Inner {
    config: StoreConfig,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<StoreEvent>>,
}

/// A handle to the object store; cheap to clone, safe to share across threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("resource_version", &self.resource_version())
            .finish()
    }
}

/// A consistent list page.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// Matching objects, sorted by namespace and name.
    pub items: Vec<Arc<Value>>,
    /// The version the list reflects.
    pub resource_version: u64,
    /// Token for the next page, if there are more matching objects.
    pub continue_token: Option<String>,
    /// Number of matching objects after this page, when paging.
    pub remaining: Option<usize>,
}

/// Options of a list call.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Page size; `None` or 0 = everything.
    pub limit: Option<usize>,
    /// Continue token from a previous page.
    pub continue_token: Option<String>,
    /// List exactly at this version (`resourceVersionMatch=Exact`).
    pub exact_version: Option<u64>,
    /// List at a version not older than this (`resourceVersionMatch=NotOlderThan`).
    pub min_version: Option<u64>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Synthetic `ADDED` events for the current state, then changes.
    Snapshot,
    /// Changes after this version (replayed from history), then live changes.
    After(u64),
}

/// A started watch: events to send first, then the live receiver.
pub struct Subscription {
    /// Events to deliver before anything from `receiver` (already filtered by resource type).
    pub initial: Vec<Arc<StoreEvent>>,
    /// The store's version when the watch started; live events have larger versions.
    pub start_version: u64,
    /// Live changes of all resource types, in version order.
    pub receiver: broadcast::Receiver<Arc<StoreEvent>>,
}

/// Preconditions of a delete.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// The object must have this uid.
    pub uid: Option<String>,
    /// The object must have this resource version.
    pub resource_version: Option<String>,
}

/// Whether a write is stored or only computed (`dryRun=All`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Commit {
    /// Store the result.
    #[default]
    Yes,
    /// Validate and compute the result without storing it.
    DryRun,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueKey {
    v: String,
    rv: u64,
    ns: String,
    name: String,
}

fn encode_continue(rv: u64, key: &ObjectKey) -> String {
    let k = ContinueKey {
        v: "meta.k8s.io/v1".to_string(),
        rv,
        ns: key.0.clone(),
        name: key.1.clone(),
    };
    let json = serde_json::to_vec(&k).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_continue(token: &str) -> Result<(u64, ObjectKey), StoreError> {
    let bad = || StoreError::BadRequest(format!("invalid continue token {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let k: ContinueKey = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if k.v != "meta.k8s.io/v1" {
        return Err(bad());
    }
    Ok((k.rv, (k.ns, k.name)))
}

/// A random RFC 4122 version 4 UUID.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    let v = (b[6] & 0x0f) | 0x40;
    let var = (b[8] & 0x3f) | 0x80;
    format!(
        "{}-{}-{:02x}{}-{:02x}{}-{}",
        h(0..4),
        h(4..6),
        v,
        h(7..8),
        var,
        h(9..10),
        h(10..16)
    )
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(o) = obj else {
        unreachable!("just made an object")
    };
    let m = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    match m {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    crate::access::strings_at(obj, "/metadata/finalizers")
}

fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

impl State {
    fn objects(&self, key: &StorageKey) -> Option<&Objects> {
        self.buckets.get(key)
    }

    /// The objects of `r` as they were at version `rv` (which must be retained).
    fn objects_at(&self, r: &ResourceType, rv: u64) -> Result<Objects, StoreError> {
        let key = r.storage_key();
        let mut objs = self.objects(&key).cloned().unwrap_or_default();
        if rv >= self.resource_version {
            return Ok(objs);
        }
        if rv < self.compacted {
            return Err(StoreError::Expired(format!(
                "The resourceVersion for the provided list is too old: {rv} is older than the retained history (oldest: {})",
                self.compacted
            )));
        }
        for ev in self.history.iter().rev() {
            if ev.resource_version <= rv {
                break;
            }
            if !ev.is_of(r) {
                continue;
            }
            let k = (ev.namespace.clone(), ev.name.clone());
            match &ev.previous {
                Some(p) => {
                    objs.insert(k, p.clone());
                }
                None => {
                    objs.remove(&k);
                }
            }
        }
        Ok(objs)
    }
}

impl Store {
    /// An empty store serving the built-in kinds.
    pub fn new(config: StoreConfig) -> Self {
        let (events, _) = broadcast::channel(config.broadcast_capacity.max(16));
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State {
                    resource_version: 1,
                    registry: Registry::builtin(),
                    buckets: HashMap::new(),
                    dependents: HashMap::new(),
                    history: VecDeque::new(),
                    compacted: 1,
                }),
                events,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping serving, so keep going with the inner value.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn txn(&self) -> Txn<'_> {
        Txn::new(&self.inner, self.lock())
    }

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    /// The oldest version a watch can still resume from (older ones get 410 Gone).
    pub fn oldest_resumable_version(&self) -> u64 {
        self.lock().compacted
    }

    /// The resource types served now (built-in kinds and established custom resources).
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Creates an object of type `r` in `namespace` (ignored for cluster-scoped types).
    ///
    /// Fills in `apiVersion`, `kind`, `metadata.uid`, `creationTimestamp`, `generation`,
    /// `resourceVersion` and `namespace`; resolves `generateName`.
    pub fn create_object(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        obj: Value,
    ) -> Result<Arc<Value>, StoreError> {
        self.create_object_with(r, namespace, obj, Commit::Yes)
    }

    /// [`create_object`](Self::create_object), or with [`Commit::DryRun`] only what it would
    /// create.
    pub fn create_object_with(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        obj: Value,
        commit: Commit,
    ) -> Result<Arc<Value>, StoreError> {
        let mut t = self.txn();
        let out = t.create(r, namespace, obj, commit)?;
        t.collect_garbage();
        Ok(out)
    }

    /// Replaces an existing object (PUT). A non-empty `metadata.resourceVersion` in `obj` must
    /// equal the stored one (409 Conflict otherwise). Identity fields are kept from the stored
    /// object. An update that changes nothing returns the stored object without a new version.
    pub fn update_object(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
    ) -> Result<Arc<Value>, StoreError> {
        let rr = r.clone();
        self.modify_object(r, namespace, name, move |current| {
            let expected = meta_str(&obj, "resourceVersion")
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if let Some(expected) = expected
                && meta_str(current, "resourceVersion") != Some(expected.as_str())
            {
                return Err(txn::conflict(&rr, name));
            }
            if let Some(n) = meta_str(&obj, "name")
                && n != name
            {
                return Err(StoreError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            let mut new = obj;
            if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            *current = new;
            Ok(())
        })
    }

    /// Read-modify-write of one object under the store lock: `f` gets a copy of the stored
    /// object and changes it; the result is stored with a new version (unless unchanged).
    /// If `f` sets `metadata.resourceVersion` to something other than the stored version the
    /// write fails with 409 Conflict (the precondition semantics of patches).
    pub fn modify_object<F>(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        f: F,
    ) -> Result<Arc<Value>, StoreError>
    where
        F: FnOnce(&mut Value) -> Result<(), StoreError>,
    {
        self.modify_object_with(r, namespace, name, Commit::Yes, f)
    }

    /// [`modify_object`](Self::modify_object) with any error type and optionally dry-run.
    pub fn modify_object_with<E, F>(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        commit: Commit,
        f: F,
    ) -> Result<Arc<Value>, E>
    where
        E: From<StoreError>,
        F: FnOnce(&mut Value) -> Result<(), E>,
    {
        let mut t = self.txn();
        let ns = txn::namespace_of(r, namespace)?;
        let Some(old) = t.get(&r.storage_key(), &ns, name) else {
            return Err(txn::not_found(r, name).into());
        };
        let mut new = (*old).clone();
        f(&mut new)?;
        let out = t.update(r, &ns, name, old, new, commit)?;
        t.collect_garbage();
        Ok(out)
    }

    /// Creates or changes one object under the store lock: `f` gets the stored object (or
    /// `None`) and returns the object to store. Returns the stored object and whether it was
    /// created.
    pub fn upsert_object<E, F>(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        commit: Commit,
        f: F,
    ) -> Result<(Arc<Value>, bool), E>
    where
        E: From<StoreError>,
        F: FnOnce(Option<&Value>) -> Result<Value, E>,
    {
        let mut t = self.txn();
        let ns = txn::namespace_of(r, namespace)?;
        let out = match t.get(&r.storage_key(), &ns, name) {
            Some(old) => {
                let new = f(Some(&old))?;
                (t.update(r, &ns, name, old, new, commit)?, false)
            }
            None => {
                let new = f(None)?;
                (t.create(r, Some(&ns), new, commit)?, true)
            }
        };
        t.collect_garbage();
        Ok(out)
    }

    /// Deletes an object as the `DELETE` verb does: with finalizers (its own, or those the
    /// propagation policy adds) it is marked for deletion and stays until they are removed;
    /// otherwise it is removed. Dependents are handled as `options.propagation` says.
    pub fn delete_object_with(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deletion, StoreError> {
        let mut t = self.txn();
        let ns = txn::namespace_of(r, namespace)?;
        let out = t.delete(r, &ns, name, options)?;
        t.collect_garbage();
        Ok(out)
    }

    /// Deletes an object (background propagation); returns its last state.
    pub fn delete_object(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Arc<Value>, StoreError> {
        let options = DeleteOptions {
            preconditions: preconditions.clone(),
            ..DeleteOptions::default()
        };
        Ok(self
            .delete_object_with(r, namespace, name, &options)?
            .object)
    }

    /// The stored object, if any.
    pub fn get_object(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, StoreError> {
        let ns = txn::namespace_of(r, namespace)?;
        self.lock()
            .objects(&r.storage_key())
            .and_then(|m| m.get(&(ns, name.to_string())))
            .cloned()
            .ok_or_else(|| txn::not_found(r, name))
    }

    /// Lists objects of `r` in `namespace` (`None` = all namespaces) matching `selectors`,
    /// one page at a time. Pages after the first reflect the same version as the first.
    pub fn list_objects(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        selectors: &Selectors,
        opts: &ListOptions,
    ) -> Result<ListPage, StoreError> {
        let namespace = if r.namespaced {
            namespace.filter(|n| !n.is_empty())
        } else {
            None
        };
        let st = self.lock();
        let (at, start_after) = match &opts.continue_token {
            Some(tok) if !tok.is_empty() => {
                let (rv, key) = decode_continue(tok)?;
                if rv < st.compacted {
                    return Err(StoreError::Expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".to_string(),
                    ));
                }
                (rv, Some(key))
            }
            _ => {
                let current = st.resource_version;
                if let Some(exact) = opts.exact_version {
                    if exact > current {
                        return Err(StoreError::TooLargeResourceVersion {
                            requested: exact,
                            current,
                        });
                    }
                    (exact, None)
                } else {
                    if let Some(min) = opts.min_version
                        && min > current
                    {
                        return Err(StoreError::TooLargeResourceVersion {
                            requested: min,
                            current,
                        });
                    }
                    (current, None)
                }
            }
        };
        let objs = st.objects_at(r, at)?;
        drop(st);
        let limit = opts.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut last_key = None;
        let mut remaining = 0usize;
        let range = objs.iter().filter(|(k, _)| {
            start_after.as_ref().is_none_or(|s| *k > s) && namespace.is_none_or(|ns| k.0 == ns)
        });
        for (k, v) in range {
            if !selectors.matches(v) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
                continue;
            }
            items.push(v.clone());
            last_key = Some(k.clone());
        }
        let (continue_token, remaining) = match (remaining, last_key) {
            (n, Some(k)) if n > 0 => (Some(encode_continue(at, &k)), Some(n)),
            _ => (None, None),
        };
        Ok(ListPage {
            items,
            resource_version: at,
            continue_token,
            remaining,
        })
    }

    /// Starts a watch on resource type `r`: returns the events to send first and a receiver
    /// of all later changes (of every type; the caller filters). Fails with
    /// [`StoreError::Expired`] when `start` is older than the retained history.
    pub fn watch_objects(
        &self,
        r: &Resource,
        start: WatchStart,
    ) -> Result<Subscription, StoreError> {
        let st = self.lock();
        let receiver = self.inner.events.subscribe();
        let initial = match start {
            WatchStart::Snapshot => st
                .objects(&r.storage_key())
                .into_iter()
                .flat_map(|m| m.iter())
                .map(|((ns, name), obj)| {
                    Arc::new(StoreEvent {
                        resource_version: meta_str(obj, "resourceVersion")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        event_type: EventType::Added,
                        resource: r.clone(),
                        namespace: ns.clone(),
                        name: name.clone(),
                        object: obj.clone(),
                        previous: None,
                    })
                })
                .collect(),
            WatchStart::After(rv) => {
                if rv < st.compacted {
                    return Err(StoreError::Expired(format!(
                        "too old resource version: {rv} ({})",
                        st.compacted
                    )));
                }
                st.history
                    .iter()
                    .filter(|e| e.resource_version > rv && e.is_of(r))
                    .cloned()
                    .collect()
            }
        };
        Ok(Subscription {
            initial,
            start_version: st.resource_version,
            receiver,
        })
    }

    /// A receiver of every change from now on (all resource types).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoreEvent>> {
        self.inner.events.subscribe()
    }

    // ----- convenience API keyed by apiVersion/kind, for tests and generators -----

    fn resource_of(&self, obj: &Value) -> Result<Resource, StoreError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.resource_named(api_version, kind)
    }

    fn resource_named(&self, api_version: &str, kind: &str) -> Result<Resource, StoreError> {
        self.lock()
            .registry
            .by_kind(api_version, kind)
            .ok_or_else(|| {
                StoreError::BadRequest(format!(
                    "no resource type for apiVersion {api_version:?} kind {kind:?}"
                ))
            })
    }

    /// Creates `obj` (its `apiVersion`, `kind` and `metadata.namespace` say where).
    pub fn create(&self, obj: Value) -> Result<Value, StoreError> {
        let r = self.resource_of(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        Ok((*self.create_object(&r, ns.as_deref(), obj)?).clone())
    }

    /// Server-side applies `obj` for field manager `manager` (creating it if absent), as
    /// `PATCH` with `application/apply-patch+yaml` does.
    pub fn apply(&self, obj: Value, manager: &str, force: bool) -> Result<Value, ApiError> {
        let r = self.resource_of(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        let ns = r
            .namespaced
            .then(|| ns.unwrap_or_else(|| "default".to_string()));
        let name = meta_str(&obj, "name")
            .ok_or_else(|| StoreError::Invalid {
                kind: r.qualified_kind(),
                name: String::new(),
                errors: vec!["metadata.name: Required value: name is required".to_string()],
            })?
            .to_string();
        let fm = FieldManager::new(&r, Target::Main);
        let now = time::now_rfc3339();
        let (v, _) = self.upsert_object(&r, ns.as_deref(), &name, Commit::Yes, |live| {
            fm.apply(live, &obj, manager, force, &now)
        })?;
        Ok((*v).clone())
    }

    /// Replaces the stored object of the same name with `obj` (checking `resourceVersion` if set).
    pub fn replace(&self, obj: Value) -> Result<Value, StoreError> {
        let r = self.resource_of(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        Ok((*self.update_object(&r, ns.as_deref(), &name, obj)?).clone())
    }

    /// The object of this `apiVersion`/`kind` (e.g. `"v1"`, `"Pod"`), if it exists.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let r = self.resource_named(api_version, kind).ok()?;
        self.get_object(&r, namespace, name)
            .ok()
            .map(|v| (*v).clone())
    }

    /// All objects of this `apiVersion`/`kind` in `namespace` (`None` = all), sorted.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(r) = self.resource_named(api_version, kind) else {
            return Vec::new();
        };
        self.list_objects(
            &r,
            namespace,
            &Selectors::default(),
            &ListOptions::default(),
        )
        .map(|p| p.items.into_iter().map(|v| (*v).clone()).collect())
        .unwrap_or_default()
    }

    /// Deletes the object of this `apiVersion`/`kind` (background propagation); returns its
    /// last state (still present if finalizers hold it).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, StoreError> {
        let r = self.resource_named(api_version, kind)?;
        Ok((*self.delete_object(&r, namespace, name, &Preconditions::default())?).clone())
    }

    /// Changes the object of this `apiVersion`/`kind` with `f` (read-modify-write).
    pub fn modify(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, StoreError> {
        let r = self.resource_named(api_version, kind)?;
        let v = self.modify_object(&r, namespace, name, |o| {
            f(o);
            Ok(())
        })?;
        Ok((*v).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::known;
    use crate::selector::LabelSelector;
    use proptest::prelude::*;
    use serde_json::json;

    fn store(history: usize) -> Store {
        let s = Store::new(StoreConfig {
            history_size: history,
            broadcast_capacity: 64,
        });
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        s
    }

    fn cm(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default", "labels": labels},
               "data": {"k": "v"}})
    }

    fn rv(v: &Value) -> u64 {
        v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn create_fills_metadata_and_rejects_duplicates() {
        let s = store(100);
        let before = s.resource_version();
        let o = s
            .create(cm("a", json!({})))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o["kind"], "ConfigMap");
        assert_eq!(o["apiVersion"], "v1");
        assert_eq!(rv(&o), before + 1);
        assert!(
            o["metadata"].get("generation").is_none(),
            "config maps track no generation"
        );
        assert!(o["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
        assert!(o["metadata"]["creationTimestamp"].as_str().is_some());
        assert!(matches!(
            s.create(cm("a", json!({}))),
            Err(StoreError::AlreadyExists { .. })
        ));
        let g = s
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"generateName": "gen-", "namespace": "default"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            g["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("gen-") && n.len() == 9)
        );
        assert!(matches!(
            s.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "default"}})),
            Err(StoreError::Invalid { .. })
        ));
        assert!(matches!(
            s.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name", "namespace": "default"}})),
            Err(StoreError::Invalid { .. })
        ));
        assert!(matches!(
            s.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "nope"}})),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn update_checks_resource_version() {
        let s = store(100);
        let o = s
            .create(cm("a", json!({})))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut stale = o.clone();
        stale["data"]["k"] = json!("v2");
        let updated = s.replace(stale.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert!(rv(&updated) > rv(&o));
        assert_eq!(updated["metadata"]["uid"], o["metadata"]["uid"]);
        stale["data"]["k"] = json!("v3");
        assert!(matches!(s.replace(stale), Err(StoreError::Conflict { .. })));
        // A no-op update keeps the version.
        let same = s.replace(updated.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rv(&same), rv(&updated));
    }

    #[test]
    fn generation_counts_spec_changes() {
        let s = store(100);
        let d = s
            .create(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "d", "namespace": "default"}, "spec": {"replicas": 1}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d["metadata"]["generation"], 1);
        let d = s
            .modify("apps/v1", "Deployment", Some("default"), "d", |d| {
                d["metadata"]["labels"] = json!({"a": "b"});
                d["status"] = json!({"replicas": 1});
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            d["metadata"]["generation"], 1,
            "metadata and status do not count"
        );
        let d = s
            .modify("apps/v1", "Deployment", Some("default"), "d", |d| {
                d["spec"]["replicas"] = json!(2);
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d["metadata"]["generation"], 2);
    }

    #[test]
    fn apply_creates_then_merges_by_owner() {
        let s = store(100);
        let a = s
            .apply(cm("a", json!({"x": "1"})), "first", false)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = s
            .apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "a", "namespace": "default", "labels": {"y": "2"}}}),
                "second",
                false,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b["metadata"]["labels"], json!({"x": "1", "y": "2"}));
        assert_eq!(b["data"], a["data"]);
        // The first manager stops applying its label and data: they go, the second's stays.
        let c = s
            .apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "a", "namespace": "default"}}),
                "first",
                false,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c["metadata"]["labels"], json!({"y": "2"}));
        assert!(c.get("data").is_none(), "{c}");
        let again = s
            .apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "a", "namespace": "default"}}),
                "first",
                false,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rv(&again), rv(&c), "an unchanged apply keeps the version");
    }

    #[test]
    fn paging_is_consistent_across_changes() {
        let s = store(1000);
        for i in 0..10 {
            s.create(cm(&format!("cm-{i:02}"), json!({})))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let r = known::configmap();
        let opts = |c: Option<String>| ListOptions {
            limit: Some(4),
            continue_token: c,
            ..Default::default()
        };
        let p1 = s
            .list_objects(&r, Some("default"), &Selectors::default(), &opts(None))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p1.items.len(), 4);
        assert_eq!(p1.remaining, Some(6));
        // Changes after the first page do not show up in later pages.
        s.delete("v1", "ConfigMap", Some("default"), "cm-05")
            .unwrap_or_else(|e| panic!("{e}"));
        s.create(cm("cm-99", json!({})))
            .unwrap_or_else(|e| panic!("{e}"));
        s.modify("v1", "ConfigMap", Some("default"), "cm-06", |o| {
            o["data"]["k"] = json!("changed")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let p2 = s
            .list_objects(
                &r,
                Some("default"),
                &Selectors::default(),
                &opts(p1.continue_token.clone()),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let p3 = s
            .list_objects(
                &r,
                Some("default"),
                &Selectors::default(),
                &opts(p2.continue_token.clone()),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(p3.continue_token.is_none());
        let names: Vec<String> = p1
            .items
            .iter()
            .chain(&p2.items)
            .chain(&p3.items)
            .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("cm-{i:02}")).collect();
        assert_eq!(names, expected);
        assert_eq!(p2.items[2]["data"]["k"], "v", "cm-06 as of the first page");
        assert_eq!(p2.resource_version, p1.resource_version);
    }

    #[test]
    fn old_continue_token_and_watch_are_gone() {
        let s = store(5);
        for i in 0..4 {
            s.create(cm(&format!("c{i}"), json!({})))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let r = known::configmap();
        let page = s
            .list_objects(
                &r,
                None,
                &Selectors::default(),
                &ListOptions {
                    limit: Some(1),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let first_rv = page.resource_version;
        assert!(s.watch_objects(&r, WatchStart::After(first_rv)).is_ok());
        for i in 0..10 {
            s.modify("v1", "ConfigMap", Some("default"), "c0", |o| {
                o["data"]["n"] = json!(i)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(matches!(
            s.list_objects(
                &r,
                None,
                &Selectors::default(),
                &ListOptions {
                    limit: Some(1),
                    continue_token: page.continue_token,
                    ..Default::default()
                }
            ),
            Err(StoreError::Expired(_))
        ));
        assert!(matches!(
            s.watch_objects(&r, WatchStart::After(first_rv)),
            Err(StoreError::Expired(_))
        ));
        let recent = s.resource_version() - 2;
        let sub = s
            .watch_objects(&r, WatchStart::After(recent))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.initial.len(), 2);
        assert!(matches!(
            s.list_objects(
                &r,
                None,
                &Selectors::default(),
                &ListOptions {
                    continue_token: Some("garbage".into()),
                    ..Default::default()
                }
            ),
            Err(StoreError::BadRequest(_))
        ));
    }

    #[test]
    fn watch_replays_and_streams_in_order() {
        let s = store(100);
        let start = s.resource_version();
        s.create(cm("a", json!({})))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut sub = s
            .watch_objects(&known::configmap(), WatchStart::After(start))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.initial.len(), 1);
        assert_eq!(sub.initial[0].event_type, EventType::Added);
        s.delete("v1", "ConfigMap", Some("default"), "a")
            .unwrap_or_else(|e| panic!("{e}"));
        let ev = sub.receiver.try_recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ev.event_type, EventType::Deleted);
        assert!(ev.resource_version > sub.start_version);
        assert_eq!(rv(&ev.object), ev.resource_version);
    }

    #[test]
    fn namespace_delete_cascades() {
        let s = store(100);
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        s.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "tmp"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        s.delete("v1", "Namespace", None, "tmp")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.get("v1", "ConfigMap", Some("tmp"), "x").is_none());
    }

    proptest! {
        /// Paging through a list with any page size yields exactly the unpaged list.
        #[test]
        fn pages_concatenate_to_full_list(n in 0usize..30, page in 1usize..8, sel in prop::bool::ANY) {
            let s = store(1000);
            for i in 0..n {
                let labels = if i % 3 == 0 { json!({"pick": "yes"}) } else { json!({}) };
                s.create(cm(&format!("c{i:03}"), labels)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let selectors = Selectors {
                labels: if sel { LabelSelector::parse("pick=yes").map_err(|e| TestCaseError::fail(e.0))? } else { LabelSelector::default() },
                ..Default::default()
            };
            let r = known::configmap();
            let full = s.list_objects(&r, None, &selectors, &ListOptions::default())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut got = Vec::new();
            let mut token = None;
            for _ in 0..=n {
                let p = s.list_objects(&r, None, &selectors, &ListOptions { limit: Some(page), continue_token: token.clone(), ..Default::default() })
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(p.items.len() <= page);
                got.extend(p.items);
                token = p.continue_token;
                if token.is_none() { break; }
            }
            prop_assert!(token.is_none());
            prop_assert_eq!(got, full.items);
        }
    }
}
