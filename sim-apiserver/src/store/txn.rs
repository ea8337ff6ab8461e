//! One write transaction: everything a write (and the garbage collection it triggers) does,
//! under the store lock, in one order of resource versions.
//!
//! The rules of the real API server's registry live here: identity fields are the server's;
//! `metadata.generation` counts changes outside metadata and status for kinds that track it;
//! `deletionTimestamp` is immutable once set and no finalizer may be added to an object being
//! deleted; an object being deleted goes away when its last finalizer is removed; a write that
//! changes nothing keeps the stored version; nothing is created in a namespace that is missing
//! (404) or being deleted (403).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, MutexGuard};

use rand::Rng as _;
use serde_json::{Map, Value, json};

use super::gc::Work;
use super::{
    Commit, EventType, Inner, ObjRef, State, StoreError, StoreEvent, finalizers, is_deleting, meta,
    meta_mut, meta_str, new_uid,
};
use crate::crd;
use crate::resource::{Resource, ResourceType, StorageKey, known};
use crate::time;

pub(super) struct Txn<'a> {
    inner: &'a Inner,
    pub(super) st: MutexGuard<'a, State>,
    pub(super) work: VecDeque<Work>,
}

/// 404 for `name` of `r`.
pub(super) fn not_found(r: &ResourceType, name: &str) -> StoreError {
    StoreError::NotFound {
        resource: r.qualified(),
        name: name.to_string(),
    }
}

/// 409 for a stale `resourceVersion`.
pub(super) fn conflict(r: &ResourceType, name: &str) -> StoreError {
    StoreError::Conflict {
        resource: r.qualified(),
        name: name.to_string(),
        message: "the object has been modified; please apply your changes to the latest version and try again".to_string(),
    }
}

/// The namespace an object of `r` lives in ("" for cluster-scoped kinds).
pub(super) fn namespace_of(
    r: &ResourceType,
    namespace: Option<&str>,
) -> Result<String, StoreError> {
    match (r.namespaced, namespace) {
        (true, Some(ns)) if !ns.is_empty() => Ok(ns.to_string()),
        (true, _) => Err(StoreError::BadRequest(format!(
            "{} is namespaced: a namespace is required",
            r.qualified()
        ))),
        (false, _) => Ok(String::new()),
    }
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

/// Whether two versions of an object differ outside `metadata.resourceVersion`.
fn differs(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) != strip(b)
}

/// The `metadata.generation` a write of `new` over `old` (`None`: a create) stores, for kinds
/// that track it: 1 on create, one more whenever anything but metadata and status changes.
pub fn generation_after(r: &ResourceType, old: Option<&Value>, new: &Value) -> Option<i64> {
    if !r.tracks_generation {
        return None;
    }
    let Some(old) = old else { return Some(1) };
    let generation = meta(old)
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    Some(if spec_differs(old, new) {
        generation + 1
    } else {
        generation
    })
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

/// The uids an object's `ownerReferences` name.
pub(super) fn owner_uids(obj: &Value) -> BTreeSet<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

fn check_kind(r: &ResourceType, obj: &Value) -> Result<(), StoreError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    if let (Some(a), Some(k)) = (api_version, kind)
        && !r.matches(a, k)
    {
        return Err(StoreError::BadRequest(if k != r.kind {
            format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                r.kind
            )
        } else {
            format!(
                "the API version in the data ({a}) does not match the expected API version ({})",
                r.api_version()
            )
        }));
    }
    Ok(())
}

fn invalid_crd(name: &str, e: crd::InvalidCrd) -> StoreError {
    StoreError::Invalid {
        kind: known::crd().qualified_kind(),
        name: name.to_string(),
        errors: e.0,
    }
}

impl<'a> Txn<'a> {
    pub(super) fn new(inner: &'a Inner, st: MutexGuard<'a, State>) -> Self {
        Self {
            inner,
            st,
            work: VecDeque::new(),
        }
    }

    fn record(&mut self, ev: StoreEvent) {
        let ev = Arc::new(ev);
        self.st.history.push_back(ev.clone());
        while self.st.history.len() > self.inner.config.history_size {
            if let Some(old) = self.st.history.pop_front() {
                self.st.compacted = old.resource_version;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.inner.events.send(ev);
    }

    fn next_version(&mut self) -> u64 {
        self.st.resource_version += 1;
        self.st.resource_version
    }

    /// The stored object, if any.
    pub(super) fn get(&self, key: &StorageKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.st
            .objects(key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    /// The resource type stored under `key` (its preferred served version).
    pub(super) fn resource_for(&self, key: &StorageKey) -> Option<Resource> {
        self.st.registry.by_storage_key(key)
    }

    fn namespace_usable(&self, ns: &str) -> Result<(), StoreError> {
        match self.get(&known::namespace().storage_key(), "", ns) {
            None => Err(StoreError::NotFound {
                resource: "namespaces".to_string(),
                name: ns.to_string(),
            }),
            Some(n) if is_deleting(&n) => Err(StoreError::Forbidden {
                message: format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
                cause: Some("NamespaceTerminating".to_string()),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Creates an object (see [`Store::create_object`](super::Store::create_object)).
    pub(super) fn create(
        &mut self,
        r: &Resource,
        namespace: Option<&str>,
        mut obj: Value,
        commit: Commit,
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
        if r.namespaced {
            self.namespace_usable(&ns)?;
        }
        let key = r.storage_key();
        let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
                Some(g) => {
                    let mut candidate = format!("{g}{}", random_suffix(5));
                    for _ in 0..8 {
                        if self.get(&key, &ns, &candidate).is_none() {
                            break;
                        }
                        candidate = format!("{g}{}", random_suffix(5));
                    }
                    candidate
                }
                None => {
                    return Err(StoreError::Invalid {
                        kind: r.qualified_kind(),
                        name: String::new(),
                        errors: vec![
                            "metadata.name: Required value: name or generateName is required"
                                .to_string(),
                        ],
                    });
                }
            },
        };
        let dns_label = matches!(r.kind.as_str(), "Namespace" | "Service");
        valid_name(&name, dns_label).map_err(|message| StoreError::Invalid {
            kind: r.qualified_kind(),
            name: name.clone(),
            errors: vec![message],
        })?;
        if self.get(&key, &ns, &name).is_some() {
            return Err(StoreError::AlreadyExists {
                resource: r.qualified(),
                name,
            });
        }
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
        m.insert("creationTimestamp".to_string(), json!(time::now_rfc3339()));
        if r.tracks_generation {
            m.insert("generation".to_string(), json!(1));
        } else {
            m.remove("generation");
        }
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "resourceVersion",
        ] {
            m.remove(f);
        }
        if key == known::crd().storage_key() {
            crd::prepare(&mut obj, None, &self.st.registry).map_err(|e| invalid_crd(&name, e))?;
        }
        if commit == Commit::DryRun {
            return Ok(Arc::new(obj));
        }
        Ok(self.insert(r, ns, name, obj))
    }

    /// Stores `new` in place of `old` (see [`Store::modify_object`](super::Store::modify_object)).
    pub(super) fn update(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        old: Arc<Value>,
        mut new: Value,
        commit: Commit,
    ) -> Result<Arc<Value>, StoreError> {
        if !new.is_object() {
            return Err(StoreError::BadRequest(
                "the object must be a JSON object".to_string(),
            ));
        }
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or("").to_string();
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && !rv.is_empty()
            && rv != old_rv
        {
            return Err(conflict(r, name));
        }
        if let Some(o) = new.as_object_mut() {
            o.insert("apiVersion".to_string(), json!(r.api_version()));
            o.insert("kind".to_string(), json!(r.kind));
        }
        let deleting = is_deleting(&old);
        if deleting {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(StoreError::Invalid {
                    kind: r.qualified_kind(),
                    name: name.to_string(),
                    errors: vec![format!(
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                        added
                            .iter()
                            .map(|f| format!("{f:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )],
                });
            }
        }
        let generation = generation_after(r, Some(&old), &new);
        {
            let m = meta_mut(&mut new);
            m.insert("name".to_string(), json!(name));
            if r.namespaced {
                m.insert("namespace".to_string(), json!(ns));
            } else {
                m.remove("namespace");
            }
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match meta(&old).and_then(|om| om.get(field)) {
                    Some(v) => m.insert(field.to_string(), v.clone()),
                    None => m.remove(field),
                };
            }
            match generation {
                Some(g) => m.insert("generation".to_string(), json!(g)),
                None => m.remove("generation"),
            };
            m.insert("resourceVersion".to_string(), json!(old_rv));
            if m.get("finalizers")
                .is_some_and(|f| f.as_array().is_some_and(Vec::is_empty) || f.is_null())
            {
                m.remove("finalizers");
            }
        }
        if r.storage_key() == known::crd().storage_key() {
            crd::prepare(&mut new, Some(&old), &self.st.registry)
                .map_err(|e| invalid_crd(name, e))?;
        }
        if !differs(&old, &new) {
            return Ok(old);
        }
        if commit == Commit::DryRun {
            return Ok(Arc::new(new));
        }
        let finalizers_changed = finalizers(&old) != finalizers(&new);
        if deleting && finalizers(&new).is_empty() && r.kind != "Namespace" {
            // The last finalizer is gone: the deletion completes.
            let new = self.replace(r, ns, name, old, new);
            return Ok(self.remove(r, ns, name).unwrap_or(new));
        }
        let stored = self.replace(r, ns, name, old, new);
        if deleting && finalizers_changed {
            self.work.push_back(Work::Deleting((
                r.storage_key(),
                ns.to_string(),
                name.to_string(),
            )));
        }
        Ok(stored)
    }

    fn index_owners(
        &mut self,
        obj_ref: &ObjRef,
        before: &BTreeSet<String>,
        after: &BTreeSet<String>,
    ) {
        for uid in before.difference(after) {
            if let Some(set) = self.st.dependents.get_mut(uid) {
                set.remove(obj_ref);
                if set.is_empty() {
                    self.st.dependents.remove(uid);
                }
            }
        }
        for uid in after.difference(before) {
            self.st
                .dependents
                .entry(uid.clone())
                .or_default()
                .insert(obj_ref.clone());
        }
    }

    fn sync_crd(&mut self, key: &StorageKey, obj: &Value) {
        if *key == known::crd().storage_key() {
            let name = meta_str(obj, "name").unwrap_or("").to_string();
            let types = crd::served_types(obj);
            self.st.registry.set_custom(&name, types);
        }
    }

    /// Adds a new object (validated by the caller).
    pub(super) fn insert(
        &mut self,
        r: &Resource,
        ns: String,
        name: String,
        obj: Value,
    ) -> Arc<Value> {
        tracing::debug!(resource = %r.plural, namespace = %ns, name = %name, "created");
        self.put(r, &ns, &name, obj, None)
    }

    /// Stores `new` in place of `old` with a new version (validated by the caller).
    pub(super) fn replace(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        old: Arc<Value>,
        new: Value,
    ) -> Arc<Value> {
        self.put(r, ns, name, new, Some(old))
    }

    /// Stores `obj` (new, or in place of `previous`) with the next version: indexes its owner
    /// references, serves what a definition defines, records and broadcasts the change.
    fn put(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        mut obj: Value,
        previous: Option<Arc<Value>>,
    ) -> Arc<Value> {
        let rv = self.next_version();
        meta_mut(&mut obj).insert("resourceVersion".to_string(), json!(rv.to_string()));
        let key = r.storage_key();
        let obj = Arc::new(obj);
        self.st
            .buckets
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name.to_string()), obj.clone());
        let obj_ref: ObjRef = (key.clone(), ns.to_string(), name.to_string());
        let before = previous.as_deref().map(owner_uids).unwrap_or_default();
        let after = owner_uids(&obj);
        if before != after {
            self.index_owners(&obj_ref, &before, &after);
            self.work.push_back(Work::Check(obj_ref));
        }
        self.sync_crd(&key, &obj);
        self.record(StoreEvent {
            resource_version: rv,
            event_type: if previous.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            },
            resource: r.clone(),
            namespace: ns.to_string(),
            name: name.to_string(),
            object: obj.clone(),
            previous,
        });
        obj
    }

    /// Removes an object now; returns its last state (carrying the deletion's version).
    pub(super) fn remove(&mut self, r: &Resource, ns: &str, name: &str) -> Option<Arc<Value>> {
        let key = r.storage_key();
        if key == known::crd().storage_key() {
            self.drop_custom_resources(name);
        }
        let old = self
            .st
            .buckets
            .get_mut(&key)?
            .remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.next_version();
        let mut last = (*old).clone();
        meta_mut(&mut last).insert("resourceVersion".to_string(), json!(rv.to_string()));
        let last = Arc::new(last);
        let obj_ref: ObjRef = (key, ns.to_string(), name.to_string());
        let owners = owner_uids(&old);
        self.index_owners(&obj_ref, &owners, &BTreeSet::new());
        self.work.push_back(Work::Removed {
            object: old.clone(),
            resource: r.clone(),
        });
        self.record(StoreEvent {
            resource_version: rv,
            event_type: EventType::Deleted,
            resource: r.clone(),
            namespace: ns.to_string(),
            name: name.to_string(),
            object: last.clone(),
            previous: Some(old),
        });
        tracing::debug!(resource = %r.plural, namespace = %ns, name, rv, "deleted");
        Some(last)
    }

    /// A definition is going away: whatever custom resources are left go with it, and its
    /// kinds are no longer served.
    fn drop_custom_resources(&mut self, crd_name: &str) {
        let types: Vec<Resource> = self
            .st
            .registry
            .all()
            .iter()
            .filter(|t| t.crd.as_deref() == Some(crd_name))
            .cloned()
            .collect();
        if let Some(r) = types.first() {
            let keys: Vec<(String, String)> = self
                .st
                .objects(&r.storage_key())
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for (ns, name) in keys {
                self.remove(r, &ns, &name);
            }
            self.st.buckets.remove(&r.storage_key());
        }
        self.st.registry.remove_custom(crd_name);
    }

    /// Marks an object as being deleted (now), with `finalizers`.
    pub(super) fn mark_deleting(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        old: Arc<Value>,
        finalizers: Vec<String>,
    ) -> Arc<Value> {
        let mut new = (*old).clone();
        let m = meta_mut(&mut new);
        if !m.contains_key("deletionTimestamp") {
            m.insert("deletionTimestamp".to_string(), json!(time::now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".to_string(), json!(0));
        }
        if finalizers.is_empty() {
            m.remove("finalizers");
        } else {
            m.insert("finalizers".to_string(), json!(finalizers));
        }
        if r.kind == "Namespace"
            && let Some(o) = new.as_object_mut()
        {
            let status = o
                .entry("status")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(s) = status.as_object_mut() {
                s.insert("phase".to_string(), json!("Terminating"));
            }
        }
        if !differs(&old, &new) {
            return old;
        }
        self.replace(r, ns, name, old, new)
    }
}
