//! Incrementally maintained views over the store.
//!
//! [`ViewSet`] is a [`ChangeObserver`]: for every object change the store applies, it computes the old
//! object's contribution (row key and metric values) and the new one's, and subtracts/adds them in the
//! affected rows. That costs O(views × (path evaluation + log rows)) per event, independent of the number
//! of objects: nothing is ever rescanned. Each row also counts its member objects, so a row disappears
//! exactly when its last object leaves it. Because metrics are exact [`Decimal`]s, the incremental
//! tables always equal a from-scratch recomputation ([`ViewSet::recompute`]). Both share the
//! evaluator, so the property tests compare them with an independent, naive evaluator
//! (`protocol::testing::naive_views`, feature `testing`) after every event.
//!
//! The set remembers which rows changed since [`ViewSet::take_changed`] was last called (at most one
//! entry per row), for the [`Publisher`](super::Publisher).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;
use tracing::warn;

use super::decimal::Decimal;
use super::object::ResourceKind;
use super::spec::{CompiledView, Contribution, ViewSpec, ViewSpecError, compile_all};
use super::store::ChangeObserver;
use super::table::{GroupKey, View, ViewSchema, Views};

/// A row of one view that changed (identified by the view's index in the set).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangedKey {
    /// Index of the view in [`ViewSet::schemas`].
    pub view: usize,
    /// Row key.
    pub key: GroupKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Accumulator {
    members: u64,
    values: Vec<Decimal>,
}

/// The views agentk maintains (see the module documentation).
#[derive(Clone, Debug)]
pub struct ViewSet {
    /// The compiled specs, shared by every set made from one with [`ViewSet::fresh`]: a process
    /// that keeps many caches (the simulator) reads one copy of them for every event, not a copy
    /// per cache that has gone cold since its last event.
    views: Arc<[CompiledView]>,
    /// The views' schemas, shared likewise (and with the publisher of an
    /// [`AgentCache`](super::AgentCache)).
    schemas: Arc<[ViewSchema]>,
    tables: Vec<BTreeMap<GroupKey, Accumulator>>,
    changed: BTreeSet<ChangedKey>,
}

impl ViewSet {
    /// Compiles `specs`; views start empty.
    pub fn new(specs: &[ViewSpec]) -> Result<Self, ViewSpecError> {
        let views: Arc<[CompiledView]> = compile_all(specs)?.into();
        let tables = vec![BTreeMap::new(); views.len()];
        let schemas = views.iter().map(|v| v.schema.clone()).collect();
        Ok(ViewSet {
            views,
            schemas,
            tables,
            changed: BTreeSet::new(),
        })
    }

    /// The same views with no rows, as [`ViewSet::new`] of the same specs makes them, sharing
    /// this set's compiled specs instead of compiling them again.
    pub fn fresh(&self) -> ViewSet {
        ViewSet {
            views: Arc::clone(&self.views),
            schemas: Arc::clone(&self.schemas),
            tables: vec![BTreeMap::new(); self.views.len()],
            changed: BTreeSet::new(),
        }
    }

    /// Column descriptions, in view order (the order [`ChangedKey::view`] indexes).
    pub fn schemas(&self) -> Vec<ViewSchema> {
        self.schemas.to_vec()
    }

    /// [`ViewSet::schemas`] without a copy.
    pub(crate) fn shared_schemas(&self) -> Arc<[ViewSchema]> {
        Arc::clone(&self.schemas)
    }

    /// One view's column description, borrowed ([`ViewSet::schemas`] copies them all).
    pub fn schema(&self, view: usize) -> Option<&ViewSchema> {
        self.views.get(view).map(|v| &v.schema)
    }

    /// Number of views.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether the set has no views.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// Index of the view called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.views.iter().position(|v| v.schema.name == name)
    }

    /// The current values of one row.
    pub fn row(&self, view: usize, key: &GroupKey) -> Option<&[Decimal]> {
        self.tables.get(view)?.get(key).map(|a| a.values.as_slice())
    }

    /// Every row of one view in key order.
    pub fn rows(&self, view: usize) -> impl Iterator<Item = (&GroupKey, &[Decimal])> {
        self.tables
            .get(view)
            .into_iter()
            .flat_map(|t| t.iter().map(|(k, a)| (k, a.values.as_slice())))
    }

    /// A copy of every view's table.
    pub fn views(&self) -> Views {
        self.views
            .iter()
            .zip(&self.tables)
            .map(|(v, t)| View {
                schema: v.schema.clone(),
                rows: t
                    .iter()
                    .map(|(k, a)| (k.clone(), a.values.clone()))
                    .collect(),
            })
            .collect()
    }

    /// Rows changed since the last call, in order, each once.
    pub fn take_changed(&mut self) -> Vec<ChangedKey> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// [`ViewSet::take_changed`] as the set it is kept in (handed to the publisher as is).
    pub(crate) fn take_changed_set(&mut self) -> BTreeSet<ChangedKey> {
        std::mem::take(&mut self.changed)
    }

    /// The views computed from scratch over `objects` (independently of the incremental tables): the
    /// reference the incremental state must always equal.
    pub fn recompute<'a>(
        &self,
        objects: impl IntoIterator<Item = (&'a ResourceKind, &'a Value)>,
    ) -> Views {
        let mut tables: Vec<BTreeMap<GroupKey, Vec<Decimal>>> =
            vec![BTreeMap::new(); self.views.len()];
        for (kind, object) in objects {
            for (view, table) in self.views.iter().zip(tables.iter_mut()) {
                if let Some(c) = view.contribution(kind, object) {
                    let row = table
                        .entry(c.owned_key())
                        .or_insert_with(|| vec![Decimal::ZERO; c.values.len()]);
                    for (r, v) in row.iter_mut().zip(c.values.iter()) {
                        *r = r.saturating_add(*v);
                    }
                }
            }
        }
        self.views
            .iter()
            .zip(tables)
            .map(|(v, rows)| View {
                schema: v.schema.clone(),
                rows,
            })
            .collect()
    }

    fn add(&mut self, view: usize, c: Contribution<'_>) {
        let Some(table) = self.tables.get_mut(view) else {
            return;
        };
        let key = c.owned_key();
        let acc = match table.get_mut(&key) {
            Some(acc) => acc,
            None => table.entry(key.clone()).or_insert_with(|| Accumulator {
                members: 0,
                values: vec![Decimal::ZERO; c.values.len()],
            }),
        };
        acc.members += 1;
        for (a, v) in acc.values.iter_mut().zip(c.values.iter()) {
            *a = a.saturating_add(*v);
        }
        self.changed.insert(ChangedKey { view, key });
    }

    fn remove(&mut self, view: usize, c: Contribution<'_>) {
        let Some(table) = self.tables.get_mut(view) else {
            return;
        };
        let key = c.owned_key();
        let Some(acc) = table.get_mut(&key) else {
            // Only possible if the set missed the object's insertion (it was attached to a store
            // that already held objects).
            warn!(view = %self.views[view].schema.name, ?key, "view row missing on removal");
            return;
        };
        acc.members = acc.members.saturating_sub(1);
        if acc.members == 0 {
            table.remove(&key);
        } else {
            for (a, v) in acc.values.iter_mut().zip(c.values.iter()) {
                *a = a.saturating_sub(*v);
            }
        }
        self.changed.insert(ChangedKey { view, key });
    }
}

impl ChangeObserver for ViewSet {
    fn observe(&mut self, kind: &ResourceKind, old: Option<&Value>, new: Option<&Value>) {
        for i in 0..self.views.len() {
            let view = &self.views[i];
            if !view.kind.matches(kind) {
                continue;
            }
            let before = old.and_then(|o| view.contribution_of_kind(kind, o));
            let after = new.and_then(|n| view.contribution_of_kind(kind, n));
            match (before, after) {
                (Some(b), Some(a)) if b.key == a.key => {
                    // The common case (an object changed, its row did not): no key is built.
                    if b.values == a.values {
                        continue;
                    }
                    let key = a.owned_key();
                    if let Some(acc) = self.tables[i].get_mut(&key) {
                        for ((x, old_v), new_v) in acc
                            .values
                            .iter_mut()
                            .zip(b.values.iter())
                            .zip(a.values.iter())
                        {
                            *x = x.saturating_sub(*old_v).saturating_add(*new_v);
                        }
                        self.changed.insert(ChangedKey { view: i, key });
                    } else {
                        warn!(view = %view.schema.name, ?key, "view row missing on update");
                        self.add(i, a);
                    }
                }
                (b, a) => {
                    if let Some(b) = b {
                        self.remove(i, b);
                    }
                    if let Some(a) = a {
                        self.add(i, a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::spec::default_views;
    use crate::cache::store::{Store, WatchEvent};
    use serde_json::json;

    fn pod(ns: &str, name: &str, rv: u64, phase: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "uid": name, "resourceVersion": rv.to_string()},
               "status": {"phase": phase}})
    }

    fn count(views: &Views, view: &str, key: &[&str]) -> Option<String> {
        let key: GroupKey = key.iter().map(|s| s.to_string()).collect();
        views.get(view)?.rows.get(&key).map(|v| {
            v.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    #[test]
    fn pods_by_phase_follows_events() {
        let mut store = Store::new();
        let mut views = ViewSet::new(&default_views()).unwrap_or_else(|e| panic!("{e}"));
        let k = ResourceKind::pod();
        let apply = |store: &mut Store, views: &mut ViewSet, e| {
            assert!(store.apply(&k, e, views).is_ok());
            assert_eq!(views.views(), views.recompute(store.objects()));
        };
        apply(
            &mut store,
            &mut views,
            WatchEvent::Apply(pod("a", "p1", 1, "Pending")),
        );
        apply(
            &mut store,
            &mut views,
            WatchEvent::Apply(pod("a", "p2", 2, "Pending")),
        );
        let v = views.views();
        assert_eq!(
            count(&v, "pods_by_phase", &["a", "Pending"]).as_deref(),
            Some("2")
        );
        assert_eq!(
            count(&v, "objects_by_kind", &["Pod", "a"]).as_deref(),
            Some("2")
        );
        assert_eq!(
            views.take_changed(),
            vec![
                ChangedKey {
                    view: 1,
                    key: vec!["a".into(), "Pending".into()]
                },
                ChangedKey {
                    view: 3,
                    key: vec!["Pod".into(), "a".into()]
                },
            ]
        );
        apply(
            &mut store,
            &mut views,
            WatchEvent::Apply(pod("a", "p1", 3, "Running")),
        );
        let v = views.views();
        assert_eq!(
            count(&v, "pods_by_phase", &["a", "Pending"]).as_deref(),
            Some("1")
        );
        assert_eq!(
            count(&v, "pods_by_phase", &["a", "Running"]).as_deref(),
            Some("1")
        );
        // objects_by_kind did not change: only pods_by_phase rows are reported.
        assert_eq!(
            views.take_changed(),
            vec![
                ChangedKey {
                    view: 1,
                    key: vec!["a".into(), "Pending".into()]
                },
                ChangedKey {
                    view: 1,
                    key: vec!["a".into(), "Running".into()]
                },
            ]
        );
        apply(
            &mut store,
            &mut views,
            WatchEvent::Delete(pod("a", "p2", 4, "Pending")),
        );
        let v = views.views();
        assert_eq!(count(&v, "pods_by_phase", &["a", "Pending"]), None);
        assert_eq!(
            count(&v, "objects_by_kind", &["Pod", "a"]).as_deref(),
            Some("1")
        );
    }

    #[test]
    fn nodes_and_deployments() {
        let mut store = Store::new();
        let mut views = ViewSet::new(&default_views()).unwrap_or_else(|e| panic!("{e}"));
        let ready = |name: &str, rv: u64, s: &str| {
            json!({"metadata": {"name": name, "uid": name, "resourceVersion": rv.to_string()},
                   "status": {"conditions": [{"type": "Ready", "status": s}]}})
        };
        let n = ResourceKind::node();
        for e in [
            WatchEvent::Init,
            WatchEvent::InitApply(ready("n1", 1, "True")),
            WatchEvent::InitApply(ready("n2", 1, "False")),
            WatchEvent::InitApply(json!({"metadata": {"name": "n3", "uid": "n3"}})),
            WatchEvent::InitDone,
        ] {
            assert!(store.apply(&n, e, &mut views).is_ok());
        }
        let v = views.views();
        assert_eq!(count(&v, "nodes", &[]).as_deref(), Some("3,1,2"));
        let d = ResourceKind::deployment();
        let dep = |name: &str, desired: u64, avail: u64| {
            json!({"metadata": {"namespace": "web", "name": name, "uid": name, "resourceVersion": "5"},
                   "spec": {"replicas": desired}, "status": {"availableReplicas": avail, "readyReplicas": avail}})
        };
        assert!(
            store
                .apply(&d, WatchEvent::Apply(dep("a", 3, 2)), &mut views)
                .is_ok()
        );
        assert!(
            store
                .apply(&d, WatchEvent::Apply(dep("b", 2, 2)), &mut views)
                .is_ok()
        );
        let v = views.views();
        assert_eq!(
            count(&v, "deployments", &["web"]).as_deref(),
            Some("2,5,4,4")
        );
        assert_eq!(views.views(), views.recompute(store.objects()));
        let json = serde_json::to_value(v.get("nodes")).unwrap_or_default();
        assert_eq!(
            json["rows"],
            json!([{"count": 3, "ready": 1, "not_ready": 2}])
        );
    }
}
