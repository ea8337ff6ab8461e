//! The object store: the informer cache itself.
//!
//! Objects are kept per [`ResourceKind`] in a `BTreeMap` keyed by `(namespace, name)`, so every listing
//! is in a stable order. The store is fed [`WatchEvent`]s — the events of `kube-runtime`'s
//! `watcher::Event`, one watcher per kind — and answers queries (get, list by namespace and label
//! selector) for kas's cache requests.
//!
//! # Event semantics
//!
//! - `Init` starts a relist of one kind: objects that follow in `InitApply` are buffered, and the live
//!   objects keep serving queries. A second `Init` restarts the batch (the buffer is discarded), as
//!   `kube-runtime` does when a list fails halfway.
//! - `InitDone` swaps the buffer in atomically. It yields the changes the swap implies against the
//!   previous contents of that kind only: `Deleted` for objects no longer listed, `Added` for new ones,
//!   `Modified` for ones whose resourceVersion (or, without one, content) changed. A relist is
//!   authoritative: it replaces objects even when their resourceVersion compares older.
//! - `Apply` adds or modifies an object; `Delete` removes it; `Bookmark` only records the kind's latest
//!   resourceVersion. `Apply`/`Delete` that arrive during a relist act on the live objects.
//! - **Stale and duplicate events are no-ops.** For the same uid, an `Apply` or `Delete` whose
//!   resourceVersion compares older than the stored one is stale, and an equal one is a duplicate
//!   (see [`compare_resource_versions`] for how versions are ordered and why).
//! - **A different uid under the same key is a replace**: the stored incarnation was deleted and the
//!   name reused, so an `Apply` yields `Deleted` (old) then `Added` (new). A `Delete` naming another
//!   incarnation than the stored one is ignored: it only removes the object it names.
//!
//! Every change is also reported to a [`ChangeObserver`] with the old and new object, which is how the
//! incremental views see events without the store copying objects.

use std::cmp::Ordering;
use std::collections::{BTreeMap, btree_map};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::debug;

use super::object::{ObjectError, ResourceKind, compare_resource_versions, meta, normalise};
use super::selector::LabelSelector;

/// One event from a `kube-runtime` watcher (`watcher::Event`), plus bookmarks.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// A relist starts.
    Init,
    /// An object of the relist.
    InitApply(Value),
    /// The relist is complete; swap it in.
    InitDone,
    /// An object was added or modified.
    Apply(Value),
    /// An object was deleted (its final state).
    Delete(Value),
    /// The watch progressed to `resource_version` without changes.
    Bookmark {
        /// The new resourceVersion of the kind's watch.
        resource_version: String,
    },
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChangeType {
    /// The object appeared.
    Added,
    /// The object changed.
    Modified,
    /// The object disappeared.
    Deleted,
}

/// A compact record of one applied change, for agentk's event feed to kas.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectChange {
    /// The object's kind (flattened into `group`, `version`, `kind` in JSON).
    #[serde(flatten)]
    pub kind: ResourceKind,
    /// Namespace; `""` for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid` of the incarnation that changed.
    pub uid: String,
    /// resourceVersion after the change (for `Deleted`: of the deleted object).
    pub resource_version: String,
    /// Added, Modified or Deleted (`"type"` in JSON).
    #[serde(rename = "type")]
    pub change_type: ChangeType,
}

/// Receives every change the store applies, with the object before and after (`None` when absent).
pub trait ChangeObserver {
    /// Called once per change, in the order the changes are yielded.
    fn observe(&mut self, kind: &ResourceKind, old: Option<&Value>, new: Option<&Value>);
}

/// Observes nothing.
impl ChangeObserver for () {
    fn observe(&mut self, _: &ResourceKind, _: Option<&Value>, _: Option<&Value>) {}
}

/// An event the store cannot apply. Nothing is changed when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `InitApply` or `InitDone` without a preceding `Init`.
    #[error("{event} for {kind} outside a relist (no Init)")]
    NotListing {
        /// The kind (`apiVersion/Kind`).
        kind: String,
        /// `InitApply` or `InitDone`.
        event: &'static str,
    },
    /// The event's object is unusable.
    #[error("bad object for {kind}: {source}")]
    BadObject {
        /// The kind (`apiVersion/Kind`).
        kind: String,
        /// What is wrong with the object.
        source: ObjectError,
    },
}

/// A kind name that [`Store::find_kind`] cannot resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindLookupError {
    /// No stored kind has that name.
    #[error("unknown kind {0:?}")]
    Unknown(String),
    /// Several kinds (in different groups) have that name; use `group/version/Kind`.
    #[error("ambiguous kind {name:?}: one of {candidates:?}")]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// The matching kinds.
        candidates: Vec<String>,
    },
}

type NsName = (String, String);

#[derive(Clone, Debug)]
struct Entry {
    uid: String,
    resource_version: String,
    object: Value,
}

impl Entry {
    fn new(object: Value) -> Result<(NsName, Entry), ObjectError> {
        let m = meta(&object)?;
        let key = (m.namespace.to_owned(), m.name.to_owned());
        let entry = Entry {
            uid: m.uid.to_owned(),
            resource_version: m.resource_version.to_owned(),
            object: Value::Null,
        };
        Ok((key, Entry { object, ..entry }))
    }

    /// Whether `self` (a stored object) and `other` are the same version of the same incarnation.
    fn same_version(&self, other: &Entry) -> bool {
        if self.uid != other.uid {
            return false;
        }
        match compare_resource_versions(&self.resource_version, &other.resource_version) {
            Some(Ordering::Equal) => true,
            Some(_) => false,
            None => self.object == other.object,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct KindStore {
    objects: BTreeMap<NsName, Entry>,
    relist: Option<BTreeMap<NsName, Entry>>,
    resource_version: Option<String>,
    synced: bool,
}

/// The informer cache (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct Store {
    kinds: BTreeMap<ResourceKind, KindStore>,
}

fn change(kind: &ResourceKind, key: &NsName, entry: &Entry, t: ChangeType) -> ObjectChange {
    ObjectChange {
        kind: kind.clone(),
        namespace: key.0.clone(),
        name: key.1.clone(),
        uid: entry.uid.clone(),
        resource_version: entry.resource_version.clone(),
        change_type: t,
    }
}

/// Records a kind's latest resourceVersion, reusing the string already there.
fn set_version(slot: &mut Option<String>, version: &str) {
    match slot {
        Some(v) => {
            v.clear();
            v.push_str(version);
        }
        None => *slot = Some(version.to_owned()),
    }
}

/// What an incoming watch event means against the stored incarnation.
enum Verdict {
    New,
    Newer,
    Replace,
    Stale,
    Duplicate,
}

fn verdict(stored: Option<&Entry>, incoming: &Entry) -> Verdict {
    let Some(stored) = stored else {
        return Verdict::New;
    };
    if stored.uid != incoming.uid {
        return Verdict::Replace;
    }
    match compare_resource_versions(&incoming.resource_version, &stored.resource_version) {
        Some(Ordering::Less) => Verdict::Stale,
        Some(Ordering::Equal) => Verdict::Duplicate,
        Some(Ordering::Greater) => Verdict::Newer,
        None if stored.object == incoming.object => Verdict::Duplicate,
        None => Verdict::Newer,
    }
}

/// The objects of `kind` in `kinds`, in one lookup, created empty on first use (`entry` alone
/// would clone the kind, three strings, on every event). A macro, not a method: a method returning
/// the borrow needs a second lookup (the borrow checker keeps a returned borrow alive on the insert
/// path, NLL problem case #3).
macro_rules! kind_store {
    ($kinds:expr, $kind:expr) => {
        match $kinds.get_mut($kind) {
            Some(ks) => ks,
            None => $kinds.entry($kind.clone()).or_default(),
        }
    };
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store::default()
    }

    /// Applies one watch event for `kind`, reporting each change to `observer`, and returns the
    /// change records (empty for stale/duplicate events, bookmarks and relist progress).
    pub fn apply(
        &mut self,
        kind: &ResourceKind,
        event: WatchEvent,
        observer: &mut dyn ChangeObserver,
    ) -> Result<Vec<ObjectChange>, StoreError> {
        let bad = |source| StoreError::BadObject {
            kind: kind.to_string(),
            source,
        };
        match event {
            WatchEvent::Init => {
                let ks = self.kinds.entry(kind.clone()).or_default();
                if ks.relist.is_some() {
                    debug!(%kind, "relist restarted");
                }
                ks.relist = Some(BTreeMap::new());
                Ok(Vec::new())
            }
            WatchEvent::InitApply(object) => {
                let buffer = self
                    .kinds
                    .get_mut(kind)
                    .and_then(|ks| ks.relist.as_mut())
                    .ok_or_else(|| StoreError::NotListing {
                        kind: kind.to_string(),
                        event: "InitApply",
                    })?;
                let object = normalise(kind, object).map_err(bad)?;
                let (key, entry) = Entry::new(object).map_err(bad)?;
                match verdict(buffer.get(&key), &entry) {
                    Verdict::Stale | Verdict::Duplicate => {}
                    _ => {
                        buffer.insert(key, entry);
                    }
                }
                Ok(Vec::new())
            }
            WatchEvent::InitDone => {
                let ks = self
                    .kinds
                    .get_mut(kind)
                    .ok_or_else(|| StoreError::NotListing {
                        kind: kind.to_string(),
                        event: "InitDone",
                    })?;
                let listed = ks.relist.take().ok_or_else(|| StoreError::NotListing {
                    kind: kind.to_string(),
                    event: "InitDone",
                })?;
                let old = std::mem::replace(&mut ks.objects, listed);
                ks.synced = true;
                let changes = diff_relist(kind, old, &mut ks.objects, observer);
                debug!(%kind, objects = ks.objects.len(), changes = changes.len(), "relist applied");
                Ok(changes)
            }
            WatchEvent::Apply(object) => {
                let object = normalise(kind, object).map_err(bad)?;
                let (key, entry) = Entry::new(object).map_err(bad)?;
                let ks = kind_store!(self.kinds, kind);
                // One lookup: the stored entry decides and is then updated in place.
                let slot = ks.objects.get_mut(&key);
                let verdict = verdict(slot.as_deref(), &entry);
                if matches!(verdict, Verdict::Stale) {
                    debug!(%kind, ns = %key.0, name = %key.1, rv = %entry.resource_version, "stale apply ignored");
                }
                if matches!(verdict, Verdict::Stale | Verdict::Duplicate) {
                    return Ok(Vec::new());
                }
                if !entry.resource_version.is_empty() {
                    set_version(&mut ks.resource_version, &entry.resource_version);
                }
                let new_change = |t| change(kind, &key, &entry, t);
                match verdict {
                    Verdict::New => {
                        let c = new_change(ChangeType::Added);
                        observer.observe(kind, None, Some(&entry.object));
                        ks.objects.insert(key, entry);
                        Ok(vec![c])
                    }
                    Verdict::Newer => match slot {
                        Some(slot) => {
                            let old = std::mem::replace(slot, entry);
                            observer.observe(kind, Some(&old.object), Some(&slot.object));
                            // The common case, built without copies: the key was made for the
                            // lookup, the uid is the same incarnation's, the old version's
                            // string is reused.
                            let mut resource_version = old.resource_version;
                            resource_version.clone_from(&slot.resource_version);
                            Ok(vec![ObjectChange {
                                kind: kind.clone(),
                                namespace: key.0,
                                name: key.1,
                                uid: old.uid,
                                resource_version,
                                change_type: ChangeType::Modified,
                            }])
                        }
                        None => {
                            let c = new_change(ChangeType::Modified);
                            observer.observe(kind, None, Some(&entry.object));
                            ks.objects.insert(key, entry);
                            Ok(vec![c])
                        }
                    },
                    _ => {
                        // Replace: another incarnation under the same key.
                        let added = new_change(ChangeType::Added);
                        let mut out = Vec::with_capacity(2);
                        match slot {
                            Some(slot) => {
                                let old = std::mem::replace(slot, entry);
                                observer.observe(kind, Some(&old.object), None);
                                observer.observe(kind, None, Some(&slot.object));
                                out.push(change(kind, &key, &old, ChangeType::Deleted));
                            }
                            None => {
                                observer.observe(kind, None, Some(&entry.object));
                                ks.objects.insert(key, entry);
                            }
                        }
                        out.push(added);
                        Ok(out)
                    }
                }
            }
            WatchEvent::Delete(object) => {
                let (key, entry) = Entry::new(object).map_err(bad)?;
                let Some(ks) = self.kinds.get_mut(kind) else {
                    return Ok(Vec::new());
                };
                // One lookup: the stored entry is checked, then removed through the same handle.
                let btree_map::Entry::Occupied(stored) = ks.objects.entry(key) else {
                    return Ok(Vec::new());
                };
                let (ns, name) = stored.key();
                if stored.get().uid != entry.uid {
                    debug!(%kind, %ns, %name, "delete of another incarnation ignored");
                    return Ok(Vec::new());
                }
                if compare_resource_versions(
                    &entry.resource_version,
                    &stored.get().resource_version,
                ) == Some(Ordering::Less)
                {
                    debug!(%kind, %ns, %name, rv = %entry.resource_version, "stale delete ignored");
                    return Ok(Vec::new());
                }
                if !entry.resource_version.is_empty() {
                    set_version(&mut ks.resource_version, &entry.resource_version);
                }
                let ((namespace, name), old) = stored.remove_entry();
                observer.observe(kind, Some(&old.object), None);
                Ok(vec![ObjectChange {
                    kind: kind.clone(),
                    namespace,
                    name,
                    uid: old.uid,
                    resource_version: old.resource_version,
                    change_type: ChangeType::Deleted,
                }])
            }
            WatchEvent::Bookmark { resource_version } => {
                kind_store!(self.kinds, kind).resource_version = Some(resource_version);
                Ok(Vec::new())
            }
        }
    }

    /// One object.
    pub fn get(&self, kind: &ResourceKind, namespace: &str, name: &str) -> Option<&Value> {
        self.kinds
            .get(kind)?
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|e| &e.object)
    }

    /// Objects of `kind`, optionally in one namespace, matching `selector`, ordered by
    /// (namespace, name).
    pub fn list(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Vec<&Value> {
        let Some(ks) = self.kinds.get(kind) else {
            return Vec::new();
        };
        let matching = |e: &&Entry| selector.matches(&e.object);
        match namespace {
            Some(ns) => ks
                .objects
                .range((ns.to_owned(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, e)| e)
                .filter(matching)
                .map(|e| &e.object)
                .collect(),
            None => ks
                .objects
                .values()
                .filter(matching)
                .map(|e| &e.object)
                .collect(),
        }
    }

    /// [`Store::list`] as a Kubernetes `List` object (`{"apiVersion":"v1","kind":"List",
    /// "metadata":{"resourceVersion":...},"items":[...]}`), for answering kas's cache requests.
    pub fn list_json(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Value {
        let items: Vec<Value> = self
            .list(kind, namespace, selector)
            .into_iter()
            .cloned()
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": self.resource_version(kind).unwrap_or("")},
            "items": items,
        })
    }

    /// [`Store::list_json`] serialised as JSON: the same octets as `serde_json::to_vec` of it, written
    /// straight from the stored objects (no copy of them).
    pub fn list_json_vec(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Result<Vec<u8>, serde_json::Error> {
        // The head is built as `list_json` builds it, so its keys come in the same order (the map's
        // own order) whatever serde_json's features; only `items` is written from borrowed objects.
        let head = json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": self.resource_version(kind).unwrap_or("")},
            "items": Value::Null,
        });
        let list = ListRef {
            head: head.as_object(),
            items: self.list(kind, namespace, selector),
        };
        serde_json::to_vec(&list)
    }

    /// Kinds the store has seen an event for, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &ResourceKind> {
        self.kinds.keys()
    }

    /// Resolves a kind given as `group/version/Kind` / `version/Kind`, or a kind name (`Pod`), or its
    /// lowercase plural (`pods`, `deployments`), case-insensitively, among the kinds the store knows.
    pub fn find_kind(&self, name: &str) -> Result<ResourceKind, KindLookupError> {
        if let Ok(kind) = name.parse::<ResourceKind>()
            && self.kinds.contains_key(&kind)
        {
            return Ok(kind);
        }
        let lower = name.to_ascii_lowercase();
        let candidates: Vec<&ResourceKind> = self
            .kinds
            .keys()
            .filter(|k| {
                let kl = k.kind.to_ascii_lowercase();
                lower == kl || lower == plural(&kl)
            })
            .collect();
        match candidates.as_slice() {
            [] => Err(KindLookupError::Unknown(name.to_owned())),
            [one] => Ok((*one).clone()),
            many => Err(KindLookupError::Ambiguous {
                name: name.to_owned(),
                candidates: many.iter().map(|k| k.to_string()).collect(),
            }),
        }
    }

    /// Number of objects of all kinds.
    pub fn len(&self) -> usize {
        self.kinds.values().map(|k| k.objects.len()).sum()
    }

    /// Whether the store holds no objects.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of objects of one kind.
    pub fn kind_len(&self, kind: &ResourceKind) -> usize {
        self.kinds.get(kind).map_or(0, |k| k.objects.len())
    }

    /// Whether the kind has completed at least one initial list.
    pub fn is_synced(&self, kind: &ResourceKind) -> bool {
        self.kinds.get(kind).is_some_and(|k| k.synced)
    }

    /// Whether a relist of the kind is in progress.
    pub fn is_listing(&self, kind: &ResourceKind) -> bool {
        self.kinds.get(kind).is_some_and(|k| k.relist.is_some())
    }

    /// The latest resourceVersion seen for the kind (from events and bookmarks).
    pub fn resource_version(&self, kind: &ResourceKind) -> Option<&str> {
        self.kinds.get(kind)?.resource_version.as_deref()
    }

    /// Every object with its kind, ordered by (kind, namespace, name).
    pub fn objects(&self) -> impl Iterator<Item = (&ResourceKind, &Value)> {
        self.kinds
            .iter()
            .flat_map(|(k, ks)| ks.objects.values().map(move |e| (k, &e.object)))
    }
}

/// English plural as Kubernetes forms resource names for the common kinds.
fn plural(lower_kind: &str) -> String {
    if lower_kind.ends_with('s') || lower_kind.ends_with("ch") || lower_kind.ends_with('x') {
        format!("{lower_kind}es")
    } else if let Some(stem) = lower_kind.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        format!("{stem}ies")
    } else {
        format!("{lower_kind}s")
    }
}

/// Merge-joins the old and new contents of one kind after a relist. An object listed at the version
/// already stored keeps the stored copy (the views saw that one), as a duplicate watch event would.
fn diff_relist(
    kind: &ResourceKind,
    old: BTreeMap<NsName, Entry>,
    new: &mut BTreeMap<NsName, Entry>,
    observer: &mut dyn ChangeObserver,
) -> Vec<ObjectChange> {
    let mut out = Vec::new();
    let mut a = old.into_iter().peekable();
    let mut b = new.iter_mut().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                if let Some((k, e)) = a.next() {
                    observer.observe(kind, Some(&e.object), None);
                    out.push(change(kind, &k, &e, ChangeType::Deleted));
                }
            }
            Ordering::Greater => {
                if let Some((k, e)) = b.next() {
                    observer.observe(kind, None, Some(&e.object));
                    out.push(change(kind, k, e, ChangeType::Added));
                }
            }
            Ordering::Equal => {
                if let (Some((k, eo)), Some((_, en))) = (a.next(), b.next()) {
                    if eo.uid != en.uid {
                        observer.observe(kind, Some(&eo.object), None);
                        out.push(change(kind, &k, &eo, ChangeType::Deleted));
                        observer.observe(kind, None, Some(&en.object));
                        out.push(change(kind, &k, en, ChangeType::Added));
                    } else if eo.same_version(en) {
                        *en = eo;
                    } else {
                        observer.observe(kind, Some(&eo.object), Some(&en.object));
                        out.push(change(kind, &k, en, ChangeType::Modified));
                    }
                }
            }
        }
    }
    out
}

/// A `List` object whose `items` are borrowed (see [`Store::list_json_vec`]).
struct ListRef<'a> {
    head: Option<&'a serde_json::Map<String, Value>>,
    items: Vec<&'a Value>,
}

impl serde::Serialize for ListRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let head = self.head.into_iter().flatten();
        let mut map = s.serialize_map(self.head.map(serde_json::Map::len))?;
        for (k, v) in head {
            if k == "items" {
                map.serialize_entry(k, &self.items)?;
            } else {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}
