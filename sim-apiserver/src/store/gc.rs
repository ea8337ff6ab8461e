//! Deletion and garbage collection, as the API server's registry and the garbage-collector,
//! namespace and CRD controllers of a real cluster do them — run to completion inside the write
//! that starts them.
//!
//! * `DELETE` with a propagation policy: `Orphan` adds the `orphan` finalizer, `Foreground` the
//!   `foregroundDeletion` finalizer, `Background` (the default) neither. An object with finalizers
//!   gets a `deletionTimestamp` and stays until they are removed; one without is removed at once.
//! * `orphan`: the owner's reference is removed from every dependent, then the finalizer.
//! * `foregroundDeletion`: dependents whose owners are all gone or being deleted in the
//!   foreground are deleted (in the foreground themselves if they have dependents); the owner's
//!   finalizer goes once no dependent with `blockOwnerDeletion: true` remains.
//! * Garbage: an object all of whose owners are gone (absent, or a different uid) is deleted
//!   (background, or as its own finalizers say); references to absent owners are dropped when a
//!   live owner remains. References to kinds the server does not know are left alone.
//! * A namespace being deleted (`Terminating`) deletes everything in it and goes once it is
//!   empty; a `CustomResourceDefinition` being deleted deletes its custom resources, then its
//!   `customresourcecleanup` finalizer.

use std::sync::Arc;

use serde_json::Value;

use super::txn::{Txn, not_found};
use super::{Commit, ObjRef, Preconditions, StoreError, finalizers, is_deleting, meta_str};
use crate::crd::CLEANUP_FINALIZER;
use crate::resource::{Resource, known};

/// The finalizer of orphaning deletion.
pub const ORPHAN: &str = "orphan";
/// The finalizer of foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";

/// Most garbage-collection steps one write may trigger (a bound, not a limit anything reaches).
const MAX_STEPS: usize = 1_000_000;

/// What happens to the dependents of a deleted object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents keep existing; their references to the owner are removed.
    Orphan,
    /// The owner goes at once; dependents are collected after it.
    Background,
    /// Dependents go first; the owner stays (with a `deletionTimestamp`) until they are gone.
    Foreground,
}

impl Propagation {
    /// Parses `propagationPolicy`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Orphan" => Some(Self::Orphan),
            "Background" => Some(Self::Background),
            "Foreground" => Some(Self::Foreground),
            _ => None,
        }
    }
}

/// Options of a delete (`DeleteOptions`).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// uid / resourceVersion preconditions.
    pub preconditions: Preconditions,
    /// Propagation policy (`None`: the finalizers already on the object decide, else background).
    pub propagation: Option<Propagation>,
    /// Validate only.
    pub commit: Commit,
}

/// The result of a delete.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// The object's last state (removed), or its state now (still being deleted).
    pub object: Arc<Value>,
    /// Whether the object is gone.
    pub removed: bool,
}

/// Work the garbage collector has to look at.
#[derive(Debug)]
pub(super) enum Work {
    /// An object was removed: its dependents may be garbage, owners waiting for it may finish,
    /// its namespace or definition may now be empty.
    Removed {
        object: Arc<Value>,
        resource: Resource,
    },
    /// An object is being deleted (or its finalizers changed while it is).
    Deleting(ObjRef),
    /// An object's owners may be gone.
    Check(ObjRef),
}

fn uid(obj: &Value) -> String {
    meta_str(obj, "uid").unwrap_or("").to_string()
}

/// The finalizers an object gets for `policy`.
fn with_policy(mut fins: Vec<String>, policy: Option<Propagation>) -> Vec<String> {
    let (add, drop): (Option<&str>, &[&str]) = match policy {
        None => (None, &[]),
        Some(Propagation::Background) => (None, &[ORPHAN, FOREGROUND]),
        Some(Propagation::Orphan) => (Some(ORPHAN), &[FOREGROUND]),
        Some(Propagation::Foreground) => (Some(FOREGROUND), &[ORPHAN]),
    };
    fins.retain(|f| !drop.contains(&f.as_str()));
    if let Some(a) = add
        && !fins.iter().any(|f| f == a)
    {
        fins.push(a.to_string());
    }
    fins
}

enum OwnerState {
    Solid,
    Dangling,
    Waiting,
}

impl Txn<'_> {
    /// The `DELETE` verb.
    pub(super) fn delete(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deletion, StoreError> {
        let Some(old) = self.get(&r.storage_key(), ns, name) else {
            return Err(not_found(r, name));
        };
        let pre = &options.preconditions;
        for (field, label, want) in [
            ("uid", "UID", &pre.uid),
            ("resourceVersion", "ResourceVersion", &pre.resource_version),
        ] {
            let got = meta_str(&old, field).unwrap_or("");
            if let Some(want) = want
                && got != want
            {
                return Err(StoreError::Conflict {
                    resource: r.qualified(),
                    name: name.to_string(),
                    message: format!(
                        "Precondition failed: {label} in precondition: {want}, {label} in object meta: {got}"
                    ),
                });
            }
        }
        if options.commit == Commit::DryRun {
            return Ok(Deletion {
                object: old,
                removed: false,
            });
        }
        Ok(self.delete_now(r, ns, name, old, options.propagation))
    }

    fn delete_now(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        old: Arc<Value>,
        policy: Option<Propagation>,
    ) -> Deletion {
        let fins = with_policy(finalizers(&old), policy);
        let obj_ref: ObjRef = (r.storage_key(), ns.to_string(), name.to_string());
        let pending = !fins.is_empty() || r.kind == "Namespace";
        if is_deleting(&old) || pending {
            let object = self.mark_deleting(r, ns, name, old, fins);
            self.work.push_back(super::gc::Work::Deleting(obj_ref));
            return Deletion {
                object,
                removed: false,
            };
        }
        let object = self.remove(r, ns, name).unwrap_or(old);
        Deletion {
            object,
            removed: true,
        }
    }

    /// Runs the garbage collector until nothing is left to do.
    pub(super) fn collect_garbage(&mut self) {
        let mut steps = 0usize;
        while let Some(work) = self.work.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                tracing::warn!(
                    left = self.work.len(),
                    "garbage collection stopped after {MAX_STEPS} steps"
                );
                self.work.clear();
                break;
            }
            match work {
                Work::Removed { object, resource } => self.after_removal(&object, &resource),
                Work::Deleting(obj_ref) => self.process_deleting(&obj_ref),
                Work::Check(obj_ref) => self.check_owners(&obj_ref),
            }
        }
    }

    fn after_removal(&mut self, object: &Value, resource: &Resource) {
        let removed_uid = uid(object);
        let deps: Vec<ObjRef> = self
            .st
            .dependents
            .get(&removed_uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        self.work.extend(deps.into_iter().map(Work::Check));
        // Owners waiting for this dependent in the foreground may be done.
        let ns = meta_str(object, "namespace").unwrap_or("").to_string();
        for owner in object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some((obj_ref, _)) = self.resolve_owner(owner, &ns) {
                self.work.push_back(Work::Deleting(obj_ref));
            }
        }
        // A namespace or definition being emptied may be done.
        let mut containers = Vec::new();
        if !ns.is_empty() {
            containers.push((known::namespace().storage_key(), String::new(), ns));
        }
        if let Some(crd) = &resource.crd {
            containers.push((known::crd().storage_key(), String::new(), crd.clone()));
        }
        for c in containers {
            let terminating = self.get(&c.0, &c.1, &c.2).is_some_and(|o| is_deleting(&o));
            let queued = self
                .work
                .iter()
                .any(|w| matches!(w, Work::Deleting(q) if *q == c));
            if terminating && !queued {
                self.work.push_back(Work::Deleting(c));
            }
        }
    }

    /// The stored owner an owner reference names, if its kind is known: its reference and the
    /// object (`None` when absent).
    fn resolve_owner(&self, owner: &Value, ns: &str) -> Option<(ObjRef, Option<Arc<Value>>)> {
        let api_version = owner.get("apiVersion").and_then(Value::as_str)?;
        let kind = owner.get("kind").and_then(Value::as_str)?;
        let name = owner.get("name").and_then(Value::as_str)?;
        let r = self.st.registry.by_group_kind(api_version, kind)?;
        let owner_ns = if r.namespaced { ns } else { "" };
        let key = r.storage_key();
        let obj = self.get(&key, owner_ns, name);
        Some(((key, owner_ns.to_string(), name.to_string()), obj))
    }

    fn dependents_of(&self, owner_uid: &str) -> Vec<ObjRef> {
        self.st
            .dependents
            .get(owner_uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn update_internal(&mut self, obj_ref: &ObjRef, f: impl FnOnce(&mut Value)) {
        let (key, ns, name) = obj_ref;
        let (Some(r), Some(old)) = (self.resource_for(key), self.get(key, ns, name)) else {
            return;
        };
        let mut new = (*old).clone();
        f(&mut new);
        if let Err(e) = self.update(&r, ns, name, old, new, Commit::Yes) {
            tracing::warn!(resource = %r.plural, namespace = %ns, name, error = %e, "garbage collector update failed");
        }
    }

    fn drop_finalizer(&mut self, obj_ref: &ObjRef, finalizer: &str) {
        self.update_internal(obj_ref, |o| {
            if let Some(a) = o
                .pointer_mut("/metadata/finalizers")
                .and_then(Value::as_array_mut)
            {
                a.retain(|f| f != finalizer);
            }
        });
    }

    fn process_deleting(&mut self, obj_ref: &ObjRef) {
        let (key, ns, name) = obj_ref;
        let (Some(r), Some(obj)) = (self.resource_for(key), self.get(key, ns, name)) else {
            return;
        };
        if !is_deleting(&obj) {
            return;
        }
        let fins = finalizers(&obj);
        let owner_uid = uid(&obj);
        if r.kind == "Namespace" {
            return self.terminate_namespace(&r, name);
        }
        if *key == known::crd().storage_key() && fins.iter().any(|f| f == CLEANUP_FINALIZER) {
            return self.clean_up_definition(obj_ref, &obj);
        }
        if fins.iter().any(|f| f == ORPHAN) {
            for dep in self.dependents_of(&owner_uid) {
                self.update_internal(&dep, |o| {
                    if let Some(refs) = o
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(&owner_uid));
                    }
                    if o.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty)
                        && let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut)
                    {
                        m.remove("ownerReferences");
                    }
                });
            }
            return self.drop_finalizer(obj_ref, ORPHAN);
        }
        if fins.iter().any(|f| f == FOREGROUND) {
            for dep in self.dependents_of(&owner_uid) {
                self.check_owners(&dep);
            }
            let blocking = self.dependents_of(&owner_uid).into_iter().any(|(k, n, d)| {
                self.get(&k, &n, &d).is_some_and(|o| {
                    o.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .any(|r| {
                            r.get("uid").and_then(Value::as_str) == Some(&owner_uid)
                                && r.get("blockOwnerDeletion").and_then(Value::as_bool)
                                    == Some(true)
                        })
                })
            });
            if !blocking {
                self.drop_finalizer(obj_ref, FOREGROUND);
            }
        }
    }

    fn terminate_namespace(&mut self, ns_type: &Resource, ns: &str) {
        let contents: Vec<ObjRef> = self
            .st
            .buckets
            .iter()
            .flat_map(|(key, objs)| {
                objs.keys()
                    .filter(|(n, _)| n == ns)
                    .map(move |(n, name)| (key.clone(), n.clone(), name.clone()))
            })
            .collect();
        let mut left = 0;
        for (key, n, name) in contents {
            let (Some(r), Some(obj)) = (self.resource_for(&key), self.get(&key, &n, &name)) else {
                continue;
            };
            if !is_deleting(&obj) {
                let d = self.delete_now(&r, &n, &name, obj, None);
                if !d.removed {
                    left += 1;
                }
            } else {
                left += 1;
            }
        }
        // The namespace goes once it is empty and its own finalizers (if any) are removed.
        let held = self
            .get(&ns_type.storage_key(), "", ns)
            .is_some_and(|n| !finalizers(&n).is_empty());
        if left == 0 && !held {
            self.remove(ns_type, "", ns);
        }
    }

    fn clean_up_definition(&mut self, obj_ref: &ObjRef, crd: &Value) {
        let group = str_at(crd, "/spec/group");
        let plural = str_at(crd, "/spec/names/plural");
        let key = (group, plural);
        let contents: Vec<(String, String)> = self
            .st
            .objects(&key)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let Some(r) = self.resource_for(&key) else {
            return self.drop_finalizer(obj_ref, CLEANUP_FINALIZER);
        };
        let mut left = 0;
        for (n, name) in contents {
            let Some(obj) = self.get(&key, &n, &name) else {
                continue;
            };
            if is_deleting(&obj) || !self.delete_now(&r, &n, &name, obj, None).removed {
                left += 1;
            }
        }
        if left == 0 {
            self.drop_finalizer(obj_ref, CLEANUP_FINALIZER);
        }
    }

    /// The garbage collector's look at one dependent.
    fn check_owners(&mut self, obj_ref: &ObjRef) {
        let (key, ns, name) = obj_ref;
        let (Some(r), Some(obj)) = (self.resource_for(key), self.get(key, ns, name)) else {
            return;
        };
        if is_deleting(&obj) {
            return;
        }
        let refs: Vec<Value> = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if refs.is_empty() {
            return;
        }
        let mut solid = 0;
        let mut gone_uids = Vec::new();
        let mut waiting = 0;
        for owner in &refs {
            let want_uid = owner.get("uid").and_then(Value::as_str).unwrap_or("");
            let state = match self.resolve_owner(owner, ns) {
                None => OwnerState::Solid,
                Some((_, None)) => OwnerState::Dangling,
                Some((_, Some(o))) if uid(&o) != want_uid => OwnerState::Dangling,
                Some((_, Some(o)))
                    if is_deleting(&o) && finalizers(&o).iter().any(|f| f == FOREGROUND) =>
                {
                    OwnerState::Waiting
                }
                Some(_) => OwnerState::Solid,
            };
            match state {
                OwnerState::Solid => solid += 1,
                OwnerState::Dangling => gone_uids.push(want_uid.to_string()),
                OwnerState::Waiting => {
                    waiting += 1;
                    gone_uids.push(want_uid.to_string());
                }
            }
        }
        if solid > 0 {
            if !gone_uids.is_empty() {
                self.update_internal(obj_ref, |o| {
                    if let Some(refs) = o
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| {
                            !gone_uids
                                .iter()
                                .any(|u| r.get("uid").and_then(Value::as_str) == Some(u))
                        });
                    }
                });
            }
            return;
        }
        let own_fins = finalizers(&obj);
        let policy = if waiting > 0 && !self.dependents_of(&uid(&obj)).is_empty() {
            Propagation::Foreground
        } else if own_fins.iter().any(|f| f == ORPHAN) {
            Propagation::Orphan
        } else if own_fins.iter().any(|f| f == FOREGROUND) {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        tracing::debug!(resource = %r.plural, namespace = %ns, name, ?policy, "collecting garbage");
        self.delete_now(&r, ns, name, obj, Some(policy));
    }
}

fn str_at(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreConfig};
    use serde_json::json;

    fn store() -> Store {
        let s = Store::new(StoreConfig::default());
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        s
    }

    fn owned(kind: &str, api: &str, name: &str, owner: &Value, block: bool) -> Value {
        json!({"apiVersion": api, "kind": kind,
               "metadata": {"name": name, "namespace": "default", "ownerReferences": [{
                   "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                   "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                   "controller": true, "blockOwnerDeletion": block}]}})
    }

    /// Deployment → ReplicaSet → Pod, as the controllers would make them.
    fn chain(s: &Store, pod_finalizer: Option<&str>) -> (Value, Value, Value) {
        let d = s
            .create(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "web", "namespace": "default"},
                           "spec": {"replicas": 1}}))
            .unwrap_or_else(|e| panic!("{e}"));
        let rs = s
            .create(owned("ReplicaSet", "apps/v1", "web-1", &d, true))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut pod = owned("Pod", "v1", "web-1-a", &rs, true);
        if let Some(f) = pod_finalizer {
            pod["metadata"]["finalizers"] = json!([f]);
        }
        let pod = s.create(pod).unwrap_or_else(|e| panic!("{e}"));
        (d, rs, pod)
    }

    fn delete(s: &Store, kind: &str, api: &str, name: &str, p: Option<Propagation>) -> Deletion {
        let r = s.registry().by_kind(api, kind).unwrap_or_else(known::pod);
        s.delete_object_with(
            &r,
            Some("default"),
            name,
            &DeleteOptions {
                propagation: p,
                ..DeleteOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn exists(s: &Store, kind: &str, api: &str, name: &str) -> bool {
        s.get(api, kind, Some("default"), name).is_some()
    }

    #[test]
    fn background_collects_the_chain() {
        let s = store();
        chain(&s, None);
        let d = delete(
            &s,
            "Deployment",
            "apps/v1",
            "web",
            Some(Propagation::Background),
        );
        assert!(d.removed);
        assert!(!exists(&s, "ReplicaSet", "apps/v1", "web-1"));
        assert!(!exists(&s, "Pod", "v1", "web-1-a"));
    }

    #[test]
    fn orphan_keeps_dependents_without_the_reference() {
        let s = store();
        chain(&s, None);
        let d = delete(
            &s,
            "Deployment",
            "apps/v1",
            "web",
            Some(Propagation::Orphan),
        );
        assert!(!d.removed, "marked first, finalizer runs after");
        assert!(!exists(&s, "Deployment", "apps/v1", "web"));
        let rs = s
            .get("apps/v1", "ReplicaSet", Some("default"), "web-1")
            .unwrap_or_default();
        assert!(rs["metadata"].get("ownerReferences").is_none(), "{rs}");
        assert!(exists(&s, "Pod", "v1", "web-1-a"));
    }

    #[test]
    fn foreground_waits_for_blocking_dependents() {
        let s = store();
        chain(&s, Some("example.com/hold"));
        let d = delete(
            &s,
            "Deployment",
            "apps/v1",
            "web",
            Some(Propagation::Foreground),
        );
        assert!(!d.removed);
        let deploy = s
            .get("apps/v1", "Deployment", Some("default"), "web")
            .unwrap_or_default();
        assert!(deploy["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(deploy["metadata"]["finalizers"], json!([FOREGROUND]));
        let rs = s
            .get("apps/v1", "ReplicaSet", Some("default"), "web-1")
            .unwrap_or_default();
        assert_eq!(rs["metadata"]["finalizers"], json!([FOREGROUND]), "{rs}");
        let pod = s
            .get("v1", "Pod", Some("default"), "web-1-a")
            .unwrap_or_default();
        assert!(pod["metadata"]["deletionTimestamp"].is_string());
        // Adding a finalizer to an object being deleted is refused.
        let err = s.modify("v1", "Pod", Some("default"), "web-1-a", |p| {
            p["metadata"]["finalizers"] = json!(["example.com/hold", "another"]);
        });
        assert!(matches!(err, Err(StoreError::Invalid { .. })), "{err:?}");
        // Releasing the pod lets the whole chain go.
        s.modify("v1", "Pod", Some("default"), "web-1-a", |p| {
            p["metadata"]["finalizers"] = json!([]);
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!exists(&s, "Pod", "v1", "web-1-a"));
        assert!(!exists(&s, "ReplicaSet", "apps/v1", "web-1"));
        assert!(!exists(&s, "Deployment", "apps/v1", "web"));
    }

    #[test]
    fn dangling_references_are_garbage() {
        let s = store();
        let ghost = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                           "metadata": {"name": "gone", "uid": "00000000-0000-4000-8000-000000000000"}});
        s.create(owned("Pod", "v1", "orphaned", &ghost, false))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!exists(&s, "Pod", "v1", "orphaned"));
        let unknown = json!({"apiVersion": "example.com/v1", "kind": "Thing",
                             "metadata": {"name": "x", "uid": "u"}});
        s.create(owned("Pod", "v1", "kept", &unknown, false))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            exists(&s, "Pod", "v1", "kept"),
            "unknown owner kinds are left alone"
        );
    }

    #[test]
    fn namespace_termination_waits_for_finalizers() {
        let s = store();
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        s.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "held", "namespace": "tmp", "finalizers": ["x/y"]}}))
            .unwrap_or_else(|e| panic!("{e}"));
        s.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "free", "namespace": "tmp"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        s.delete("v1", "Namespace", None, "tmp")
            .unwrap_or_else(|e| panic!("{e}"));
        let ns = s.get("v1", "Namespace", None, "tmp").unwrap_or_default();
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert!(s.get("v1", "ConfigMap", Some("tmp"), "free").is_none());
        let err = s.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "new", "namespace": "tmp"}}));
        assert!(matches!(err, Err(StoreError::Forbidden { .. })), "{err:?}");
        s.modify("v1", "ConfigMap", Some("tmp"), "held", |c| {
            c["metadata"]["finalizers"] = json!([]);
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.get("v1", "Namespace", None, "tmp").is_none());

        // A finalizer on the namespace itself holds it, empty, until removed.
        s.create(json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "held", "finalizers": ["x/y"]}}))
            .unwrap_or_else(|e| panic!("{e}"));
        s.delete("v1", "Namespace", None, "held")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.get("v1", "Namespace", None, "held").is_some());
        s.modify("v1", "Namespace", None, "held", |n| {
            n["metadata"]["finalizers"] = json!([]);
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.get("v1", "Namespace", None, "held").is_none());
    }
}
