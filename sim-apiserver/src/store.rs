//! The object store: versioned objects, bounded change history and change notification.
//!
//! Everything the API server serves lives here, free of HTTP so it can be tested on its own and
//! driven directly by tests, the churn generator and the simulated kubelet.
//!
//! * Objects are `serde_json::Value`s keyed by resource type, namespace and name.
//! * One global counter gives every change a `resourceVersion`; each change is recorded as a
//!   [`StoreEvent`] (with the object before the change) in a bounded history and broadcast to
//!   subscribers. History makes watches resumable from a version and lists consistent across
//!   pages: the state at an older version is rebuilt by undoing the newer events. Versions
//!   older than the retained history are answered with [`StoreError::Expired`] (HTTP 410).
//! * All mutations take one lock, so versions, history and broadcasts are in one order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::resource::{self, ResourceType};
use super::selector::Selectors;
use super::time;

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
    /// The resource type of the object.
    pub resource: &'static ResourceType,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The object after the change (for deletions: the last state, with the deletion's version).
    pub object: Arc<Value>,
    /// The object before the change (`None` for additions).
    pub previous: Option<Arc<Value>>,
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
    #[error("{kind} \"{name}\" is invalid: {message}")]
    Invalid {
        /// Object kind.
        kind: String,
        /// Object name (may be empty).
        name: String,
        /// What is wrong.
        message: String,
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

type ResourceKey = (&'static str, &'static str);
type ObjectKey = (String, String);
type Objects = BTreeMap<ObjectKey, Arc<Value>>;

fn key_of(r: &ResourceType) -> ResourceKey {
    (r.group, r.plural)
}

/// The qualified resource name used in messages (`pods`, `deployments.apps`).
pub fn qualified(r: &ResourceType) -> String {
    if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}

struct State {
    resource_version: u64,
    objects: HashMap<ResourceKey, Objects>,
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

fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn valid_name(name: &str, dns_label: bool) -> Result<(), String> {
    let max = if dns_label { 63 } else { 253 };
    let ok_chars = name.chars().all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!dns_label && c == '.')
    });
    let ends_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() <= max && ok_chars && ends_ok {
        Ok(())
    } else {
        Err(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-'{}, and must start and end with an alphanumeric character (at most {max} characters)",
            if dns_label { "label" } else { "subdomain" },
            if dns_label { "" } else { " or '.'" }
        ))
    }
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

/// Whether two versions of an object differ outside `metadata.resourceVersion`.
fn differs(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        v
    };
    strip(a) != strip(b)
}

/// Whether anything but metadata and status differs (bumps `metadata.generation`).
fn spec_differs(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(a) != strip(b)
}

impl State {
    fn objects(&self, r: &ResourceType) -> Option<&Objects> {
        self.objects.get(&key_of(r))
    }

    /// The objects of `r` as they were at version `rv` (which must be retained).
    fn objects_at(&self, r: &'static ResourceType, rv: u64) -> Result<Objects, StoreError> {
        let mut objs = self.objects(r).cloned().unwrap_or_default();
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
            if !std::ptr::eq(ev.resource, r) {
                continue;
            }
            let key = (ev.namespace.clone(), ev.name.clone());
            match &ev.previous {
                Some(p) => {
                    objs.insert(key, p.clone());
                }
                None => {
                    objs.remove(&key);
                }
            }
        }
        Ok(objs)
    }
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        let (events, _) = broadcast::channel(config.broadcast_capacity.max(16));
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State {
                    resource_version: 1,
                    objects: HashMap::new(),
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

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    /// The oldest version a watch can still resume from (older ones get 410 Gone).
    pub fn oldest_resumable_version(&self) -> u64 {
        self.lock().compacted
    }

    fn record(&self, st: &mut State, ev: StoreEvent) {
        let ev = Arc::new(ev);
        st.history.push_back(ev.clone());
        while st.history.len() > self.inner.config.history_size {
            if let Some(old) = st.history.pop_front() {
                st.compacted = old.resource_version;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.inner.events.send(ev);
    }

    fn check_namespace(r: &ResourceType, namespace: Option<&str>) -> Result<String, StoreError> {
        match (r.namespaced, namespace) {
            (true, Some(ns)) if !ns.is_empty() => Ok(ns.to_string()),
            (true, _) => Err(StoreError::BadRequest(format!(
                "{} is namespaced: a namespace is required",
                qualified(r)
            ))),
            (false, _) => Ok(String::new()),
        }
    }

    /// Creates an object of type `r` in `namespace` (ignored for cluster-scoped types).
    ///
    /// Fills in `apiVersion`, `kind`, `metadata.uid`, `creationTimestamp`, `generation`,
    /// `resourceVersion` and `namespace`; resolves `generateName`.
    pub fn create_object(
        &self,
        r: &'static ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
    ) -> Result<Arc<Value>, StoreError> {
        if !obj.is_object() {
            return Err(StoreError::BadRequest(
                "the request body must be a JSON object".to_string(),
            ));
        }
        let body_ns = meta_str(&obj, "namespace").map(str::to_string);
        let ns = if r.namespaced {
            let ns = namespace
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .or(body_ns.clone().filter(|n| !n.is_empty()))
                .unwrap_or_else(|| "default".to_string());
            if let Some(b) = body_ns.as_deref()
                && !b.is_empty()
                && b != ns
            {
                return Err(StoreError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                        .to_string(),
                ));
            }
            ns
        } else {
            String::new()
        };
        check_kind(r, &obj)?;
        let mut st = self.lock();
        if r.namespaced
            && st
                .objects(resource::known::namespace())
                .is_none_or(|m| !m.contains_key(&(String::new(), ns.clone())))
        {
            return Err(StoreError::NotFound {
                resource: "namespaces".to_string(),
                name: ns,
            });
        }
        let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
                Some(g) => {
                    let mut candidate = format!("{g}{}", random_suffix(5));
                    for _ in 0..8 {
                        let taken = st
                            .objects(r)
                            .is_some_and(|m| m.contains_key(&(ns.clone(), candidate.clone())));
                        if !taken {
                            break;
                        }
                        candidate = format!("{g}{}", random_suffix(5));
                    }
                    candidate
                }
                None => {
                    return Err(StoreError::Invalid {
                        kind: r.kind.to_string(),
                        name: String::new(),
                        message: "metadata.name: Required value: name or generateName is required"
                            .to_string(),
                    });
                }
            },
        };
        let dns_label = matches!(r.kind, "Namespace" | "Service");
        valid_name(&name, dns_label).map_err(|message| StoreError::Invalid {
            kind: r.kind.to_string(),
            name: name.clone(),
            message,
        })?;
        let key = (ns.clone(), name.clone());
        if st.objects(r).is_some_and(|m| m.contains_key(&key)) {
            return Err(StoreError::AlreadyExists {
                resource: qualified(r),
                name,
            });
        }
        let rv = st.resource_version + 1;
        st.resource_version = rv;
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".to_string(), json!(r.api_version()));
            o.insert("kind".to_string(), json!(r.kind));
        }
        let m = meta_mut(&mut obj);
        m.insert("name".to_string(), json!(name));
        if r.namespaced {
            m.insert("namespace".to_string(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".to_string(), json!(new_uid()));
        m.insert("resourceVersion".to_string(), json!(rv.to_string()));
        m.insert("creationTimestamp".to_string(), json!(time::now_rfc3339()));
        m.insert("generation".to_string(), json!(1));
        m.remove("deletionTimestamp");
        m.remove("selfLink");
        let obj = Arc::new(obj);
        st.objects
            .entry(key_of(r))
            .or_default()
            .insert(key.clone(), obj.clone());
        self.record(
            &mut st,
            event(rv, EventType::Added, r, key, obj.clone(), None),
        );
        tracing::debug!(resource = r.plural, namespace = %ns, name = %obj_name(&obj), rv, "created");
        Ok(obj)
    }

    /// Replaces an existing object (PUT). A non-empty `metadata.resourceVersion` in `obj` must
    /// equal the stored one (409 Conflict otherwise). Identity fields are kept from the stored
    /// object. An update that changes nothing returns the stored object without a new version.
    pub fn update_object(
        &self,
        r: &'static ResourceType,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
    ) -> Result<Arc<Value>, StoreError> {
        self.modify_object(r, namespace, name, move |current| {
            let expected = meta_str(&obj, "resourceVersion")
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if let Some(expected) = expected
                && meta_str(current, "resourceVersion") != Some(expected.as_str())
            {
                return Err(conflict(r, name));
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
        r: &'static ResourceType,
        namespace: Option<&str>,
        name: &str,
        f: F,
    ) -> Result<Arc<Value>, StoreError>
    where
        F: FnOnce(&mut Value) -> Result<(), StoreError>,
    {
        let ns = Self::check_namespace(r, namespace)?;
        let key = (ns.clone(), name.to_string());
        let mut st = self.lock();
        let Some(old) = st.objects(r).and_then(|m| m.get(&key)).cloned() else {
            return Err(StoreError::NotFound {
                resource: qualified(r),
                name: name.to_string(),
            });
        };
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or("").to_string();
        let mut new = (*old).clone();
        f(&mut new)?;
        if !new.is_object() {
            return Err(StoreError::BadRequest(
                "the object must be a JSON object".to_string(),
            ));
        }
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && !rv.is_empty()
            && rv != old_rv
        {
            return Err(conflict(r, name));
        }
        // Identity is the store's, whatever the change said.
        if let Some(o) = new.as_object_mut() {
            o.insert("apiVersion".to_string(), json!(r.api_version()));
            o.insert("kind".to_string(), json!(r.kind));
        }
        let generation = meta(&old)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let bump = spec_differs(&old, &new);
        {
            let m = meta_mut(&mut new);
            m.insert("name".to_string(), json!(name));
            if r.namespaced {
                m.insert("namespace".to_string(), json!(ns));
            } else {
                m.remove("namespace");
            }
            for field in ["uid", "creationTimestamp"] {
                match meta(&old).and_then(|om| om.get(field)) {
                    Some(v) => m.insert(field.to_string(), v.clone()),
                    None => m.remove(field),
                };
            }
            m.insert(
                "generation".to_string(),
                json!(if bump { generation + 1 } else { generation }),
            );
            m.insert("resourceVersion".to_string(), json!(old_rv));
        }
        if !differs(&old, &new) {
            return Ok(old);
        }
        let rv = st.resource_version + 1;
        st.resource_version = rv;
        meta_mut(&mut new).insert("resourceVersion".to_string(), json!(rv.to_string()));
        let new = Arc::new(new);
        st.objects
            .entry(key_of(r))
            .or_default()
            .insert(key.clone(), new.clone());
        self.record(
            &mut st,
            event(rv, EventType::Modified, r, key, new.clone(), Some(old)),
        );
        Ok(new)
    }

    /// Deletes an object; returns its last state (carrying the deletion's version).
    /// Deleting a namespace deletes everything in it first.
    pub fn delete_object(
        &self,
        r: &'static ResourceType,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Arc<Value>, StoreError> {
        let ns = Self::check_namespace(r, namespace)?;
        let key = (ns.clone(), name.to_string());
        let mut st = self.lock();
        let Some(old) = st.objects(r).and_then(|m| m.get(&key)).cloned() else {
            return Err(StoreError::NotFound {
                resource: qualified(r),
                name: name.to_string(),
            });
        };
        if let Some(uid) = &preconditions.uid
            && meta_str(&old, "uid") != Some(uid.as_str())
        {
            return Err(StoreError::Conflict {
                resource: qualified(r),
                name: name.to_string(),
                message: format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or("")
                ),
            });
        }
        if let Some(rv) = &preconditions.resource_version
            && meta_str(&old, "resourceVersion") != Some(rv.as_str())
        {
            return Err(StoreError::Conflict {
                resource: qualified(r),
                name: name.to_string(),
                message: format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion").unwrap_or("")
                ),
            });
        }
        if r.kind == "Namespace" {
            let contained: Vec<(&'static ResourceType, ObjectKey)> = resource::RESOURCES
                .iter()
                .filter(|t| t.namespaced)
                .flat_map(|t| {
                    st.objects(t)
                        .into_iter()
                        .flat_map(|m| m.keys())
                        .filter(|k| k.0 == name)
                        .map(move |k| (t, k.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            for (t, k) in contained {
                Self::remove_locked(self, &mut st, t, k);
            }
        }
        Ok(Self::remove_locked(self, &mut st, r, key).unwrap_or(old))
    }

    fn remove_locked(
        &self,
        st: &mut State,
        r: &'static ResourceType,
        key: ObjectKey,
    ) -> Option<Arc<Value>> {
        let old = st.objects.get_mut(&key_of(r))?.remove(&key)?;
        let rv = st.resource_version + 1;
        st.resource_version = rv;
        let mut last = (*old).clone();
        let m = meta_mut(&mut last);
        m.insert("resourceVersion".to_string(), json!(rv.to_string()));
        let last = Arc::new(last);
        self.record(
            st,
            event(rv, EventType::Deleted, r, key, last.clone(), Some(old)),
        );
        Some(last)
    }

    /// The stored object, if any.
    pub fn get_object(
        &self,
        r: &'static ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, StoreError> {
        let ns = Self::check_namespace(r, namespace)?;
        self.lock()
            .objects(r)
            .and_then(|m| m.get(&(ns, name.to_string())))
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                resource: qualified(r),
                name: name.to_string(),
            })
    }

    /// Lists objects of `r` in `namespace` (`None` = all namespaces) matching `selectors`,
    /// one page at a time. Pages after the first reflect the same version as the first.
    pub fn list_objects(
        &self,
        r: &'static ResourceType,
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
        r: &'static ResourceType,
        start: WatchStart,
    ) -> Result<Subscription, StoreError> {
        let st = self.lock();
        let receiver = self.inner.events.subscribe();
        let initial = match start {
            WatchStart::Snapshot => st
                .objects(r)
                .into_iter()
                .flat_map(|m| m.iter())
                .map(|((ns, name), obj)| {
                    Arc::new(StoreEvent {
                        resource_version: meta_str(obj, "resourceVersion")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        event_type: EventType::Added,
                        resource: r,
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
                    .filter(|e| e.resource_version > rv && std::ptr::eq(e.resource, r))
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

    fn resource_of(obj: &Value) -> Result<&'static ResourceType, StoreError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        resource::by_kind(api_version, kind).ok_or_else(|| {
            StoreError::BadRequest(format!(
                "no resource type for apiVersion {api_version:?} kind {kind:?}"
            ))
        })
    }

    fn resource_named(api_version: &str, kind: &str) -> Result<&'static ResourceType, StoreError> {
        resource::by_kind(api_version, kind).ok_or_else(|| {
            StoreError::BadRequest(format!(
                "no resource type for apiVersion {api_version:?} kind {kind:?}"
            ))
        })
    }

    /// Creates `obj` (its `apiVersion`, `kind` and `metadata.namespace` say where).
    pub fn create(&self, obj: Value) -> Result<Value, StoreError> {
        let r = Self::resource_of(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        Ok((*self.create_object(r, ns.as_deref(), obj)?).clone())
    }

    /// Creates `obj`, or merges it into the existing object of the same name (the semantics of
    /// server-side apply, without field ownership).
    pub fn apply(&self, obj: Value) -> Result<Value, StoreError> {
        let r = Self::resource_of(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        let ns = if r.namespaced {
            Some(ns.unwrap_or_else(|| "default".to_string()))
        } else {
            None
        };
        let name = meta_str(&obj, "name")
            .ok_or_else(|| StoreError::Invalid {
                kind: r.kind.to_string(),
                name: String::new(),
                message: "metadata.name: Required value".to_string(),
            })?
            .to_string();
        match self.modify_object(r, ns.as_deref(), &name, |cur| {
            let mut applied = obj.clone();
            if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            super::patch::apply_merge(cur, &applied);
            Ok(())
        }) {
            Ok(v) => Ok((*v).clone()),
            Err(StoreError::NotFound { .. }) => {
                Ok((*self.create_object(r, ns.as_deref(), obj)?).clone())
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the stored object of the same name with `obj` (checking `resourceVersion` if set).
    pub fn replace(&self, obj: Value) -> Result<Value, StoreError> {
        let r = Self::resource_of(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        Ok((*self.update_object(r, ns.as_deref(), &name, obj)?).clone())
    }

    /// The object of this `apiVersion`/`kind` (e.g. `"v1"`, `"Pod"`), if it exists.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let r = Self::resource_named(api_version, kind).ok()?;
        self.get_object(r, namespace, name)
            .ok()
            .map(|v| (*v).clone())
    }

    /// All objects of this `apiVersion`/`kind` in `namespace` (`None` = all), sorted.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(r) = Self::resource_named(api_version, kind) else {
            return Vec::new();
        };
        self.list_objects(r, namespace, &Selectors::default(), &ListOptions::default())
            .map(|p| p.items.into_iter().map(|v| (*v).clone()).collect())
            .unwrap_or_default()
    }

    /// Deletes the object of this `apiVersion`/`kind`; returns its last state.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, StoreError> {
        let r = Self::resource_named(api_version, kind)?;
        Ok((*self.delete_object(r, namespace, name, &Preconditions::default())?).clone())
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
        let r = Self::resource_named(api_version, kind)?;
        let v = self.modify_object(r, namespace, name, |o| {
            f(o);
            Ok(())
        })?;
        Ok((*v).clone())
    }
}

fn event(
    resource_version: u64,
    event_type: EventType,
    resource: &'static ResourceType,
    key: ObjectKey,
    object: Arc<Value>,
    previous: Option<Arc<Value>>,
) -> StoreEvent {
    StoreEvent {
        resource_version,
        event_type,
        resource,
        namespace: key.0,
        name: key.1,
        object,
        previous,
    }
}

fn obj_name(v: &Value) -> &str {
    meta_str(v, "name").unwrap_or("")
}

fn conflict(r: &ResourceType, name: &str) -> StoreError {
    StoreError::Conflict {
        resource: qualified(r),
        name: name.to_string(),
        message: "the object has been modified; please apply your changes to the latest version and try again".to_string(),
    }
}

fn check_kind(r: &ResourceType, obj: &Value) -> Result<(), StoreError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    if let (Some(a), Some(k)) = (api_version, kind)
        && !r.matches(a, k)
    {
        return Err(StoreError::BadRequest(format!(
            "the API version in the data ({a}) does not match the expected API version ({})",
            r.api_version()
        ))
        .with_kind_hint(k, r));
    }
    Ok(())
}

impl StoreError {
    fn with_kind_hint(self, kind: &str, r: &ResourceType) -> Self {
        if kind != r.kind {
            StoreError::BadRequest(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                r.kind
            ))
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::known;
    use crate::selector::LabelSelector;
    use proptest::prelude::*;

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
        assert_eq!(o["metadata"]["generation"], 1);
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
        assert_eq!(updated["metadata"]["generation"], 2);
        stale["data"]["k"] = json!("v3");
        assert!(matches!(s.replace(stale), Err(StoreError::Conflict { .. })));
        // A no-op update keeps the version.
        let same = s.replace(updated.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rv(&same), rv(&updated));
    }

    #[test]
    fn apply_creates_then_merges() {
        let s = store(100);
        let a = s
            .apply(cm("a", json!({"x": "1"})))
            .unwrap_or_else(|e| panic!("{e}"));
        let b = s
            .apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "a", "namespace": "default", "labels": {"y": "2"}}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b["metadata"]["labels"], json!({"x": "1", "y": "2"}));
        assert_eq!(b["data"], a["data"]);
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
            .list_objects(r, Some("default"), &Selectors::default(), &opts(None))
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
                r,
                Some("default"),
                &Selectors::default(),
                &opts(p1.continue_token.clone()),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let p3 = s
            .list_objects(
                r,
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
                r,
                None,
                &Selectors::default(),
                &ListOptions {
                    limit: Some(1),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let first_rv = page.resource_version;
        assert!(s.watch_objects(r, WatchStart::After(first_rv)).is_ok());
        for i in 0..10 {
            s.modify("v1", "ConfigMap", Some("default"), "c0", |o| {
                o["data"]["n"] = json!(i)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(matches!(
            s.list_objects(
                r,
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
            s.watch_objects(r, WatchStart::After(first_rv)),
            Err(StoreError::Expired(_))
        ));
        let recent = s.resource_version() - 2;
        let sub = s
            .watch_objects(r, WatchStart::After(recent))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.initial.len(), 2);
        assert!(matches!(
            s.list_objects(
                r,
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
            .watch_objects(known::configmap(), WatchStart::After(start))
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
            let full = s.list_objects(r, None, &selectors, &ListOptions::default())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut got = Vec::new();
            let mut token = None;
            for _ in 0..=n {
                let p = s.list_objects(r, None, &selectors, &ListOptions { limit: Some(page), continue_token: token.clone(), ..Default::default() })
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
