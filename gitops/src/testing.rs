//! A model cluster that executes [`Action`]s with Kubernetes' semantics as far as the sync decision
//! sees them (objects with uids and owning annotations, 404s, uid preconditions, dry runs), with fault
//! injection, and that checks on every delete that only inventory objects the inventory owns are
//! deleted. Used by the property tests; the simulator can drive [`crate::Sync`] with it too.

use std::collections::BTreeMap;

use crate::inventory::{Inventory, InventoryRef, Live, OWNING_INVENTORY_ANNOTATION};
use crate::object::ObjectId;
use crate::sync::{Action, ApiError, Applied, Outcome, Pruned};

/// A live object.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveObject {
    /// Its content.
    pub manifest: serde_json::Value,
    /// `metadata.uid`.
    pub uid: String,
}

impl LiveObject {
    /// Its owning-inventory annotation.
    pub fn owner(&self) -> Option<&str> {
        self.manifest["metadata"]["annotations"][OWNING_INVENTORY_ANNOTATION].as_str()
    }
}

/// How to fail one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Refuse it (no effect).
    Refuse(ApiError),
    /// Perform it, then report an error (a timeout after the API server acted).
    ActThenFail(ApiError),
}

/// The model cluster.
#[derive(Debug, Clone, Default)]
pub struct ModelCluster {
    /// Every object, the inventory ConfigMaps included.
    pub objects: BTreeMap<ObjectId, LiveObject>,
    next_uid: u64,
    /// Every object deleted, in order.
    pub deleted: Vec<ObjectId>,
    /// Broken rules: deletes of objects no inventory listed or owned; applies of objects the
    /// inventory did not list yet.
    pub violations: Vec<String>,
    /// Mutating requests executed (applies, deletes, inventory writes; dry runs excluded).
    pub mutations: usize,
}

/// The id of an inventory's ConfigMap.
pub fn inventory_object(at: &InventoryRef) -> ObjectId {
    at.object_id()
}

impl ModelCluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    fn uid(&mut self) -> String {
        self.next_uid += 1;
        format!("uid-{}", self.next_uid)
    }

    /// Creates an object as someone else would (`owner`: its owning-inventory annotation).
    pub fn create_foreign(&mut self, id: &ObjectId, owner: Option<&str>, content: &str) {
        let mut manifest = serde_json::json!({
            "metadata": { "name": id.name, "annotations": {} },
            "data": { "foreign": content },
        });
        if let Some(o) = owner {
            manifest["metadata"]["annotations"][OWNING_INVENTORY_ANNOTATION] = o.into();
        }
        let uid = self.uid();
        self.objects
            .insert(id.clone(), LiveObject { manifest, uid });
    }

    /// The objects an inventory lists, as stored in the cluster.
    pub fn inventory(&self, at: &InventoryRef) -> Option<Inventory> {
        let cm = self.objects.get(&inventory_object(at))?;
        Inventory::from_configmap(&cm.manifest, at).ok()
    }

    /// Executes an action, or fails it as `fault` says.
    pub fn execute(&mut self, action: &Action, fault: Option<Fault>) -> Outcome {
        let (act, error) = match fault {
            None => (true, None),
            Some(Fault::Refuse(e)) => (false, Some(e)),
            Some(Fault::ActThenFail(e)) => (true, Some(e)),
        };
        let outcome = if act { self.perform(action) } else { None };
        match (error, outcome) {
            (Some(e), _) => error_outcome(action, e),
            (None, Some(o)) => o,
            (None, None) => unreachable!("performed actions always have an outcome"),
        }
    }

    fn perform(&mut self, action: &Action) -> Option<Outcome> {
        Some(match action {
            Action::ReadInventory { inventory, .. } => Outcome::Inventory(Ok(self
                .objects
                .get(&inventory_object(inventory))
                .map(|o| o.manifest.clone()))),
            Action::WriteInventory {
                inventory,
                configmap,
                ..
            } => {
                let id = inventory_object(inventory);
                let uid = match self.objects.get(&id) {
                    Some(o) => o.uid.clone(),
                    None => self.uid(),
                };
                self.objects.insert(
                    id,
                    LiveObject {
                        manifest: configmap.clone(),
                        uid,
                    },
                );
                self.mutations += 1;
                Outcome::InventoryWritten(Ok(()))
            }
            Action::ReadObject { object, .. } => {
                Outcome::Object(Ok(match self.objects.get(object) {
                    None => Live::Absent,
                    Some(o) => {
                        let mut m = o.manifest.clone();
                        m["metadata"]["uid"] = o.uid.clone().into();
                        Live::from_object(&m)
                    }
                }))
            }
            Action::Apply {
                object,
                manifest,
                dry_run,
                ..
            } => {
                if manifest["invalid"].as_bool() == Some(true) {
                    return Some(Outcome::Applied(Err(ApiError {
                        code: Some(422),
                        message: format!("{object} is invalid: spec: Required value"),
                    })));
                }
                if *dry_run {
                    return Some(Outcome::Applied(Ok(Applied::Configured)));
                }
                self.check_tracked(object, manifest);
                self.mutations += 1;
                let applied = match self.objects.get_mut(object) {
                    Some(o) if o.manifest == *manifest => Applied::Unchanged,
                    Some(o) => {
                        o.manifest = manifest.clone();
                        Applied::Configured
                    }
                    None => {
                        let uid = self.uid();
                        self.objects.insert(
                            object.clone(),
                            LiveObject {
                                manifest: manifest.clone(),
                                uid,
                            },
                        );
                        Applied::Created
                    }
                };
                Outcome::Applied(Ok(applied))
            }
            Action::Prune {
                object,
                uid,
                dry_run,
                ..
            } => {
                let Some(live) = self.objects.get(object) else {
                    return Some(Outcome::Pruned(Ok(Pruned::NotFound)));
                };
                if uid.as_ref().is_some_and(|u| *u != live.uid) {
                    return Some(Outcome::Pruned(Err(ApiError {
                        code: Some(409),
                        message: "Precondition failed: UID in precondition does not match".into(),
                    })));
                }
                if *dry_run {
                    return Some(Outcome::Pruned(Ok(Pruned::Deleted)));
                }
                self.check_delete(object);
                self.objects.remove(object);
                self.deleted.push(object.clone());
                self.mutations += 1;
                Outcome::Pruned(Ok(Pruned::Deleted))
            }
        })
    }

    /// An apply is legitimate only for an object the applying inventory (named by the manifest's
    /// owning annotation) already lists in the cluster: a crash right after it must not leave it
    /// untracked.
    fn check_tracked(&mut self, object: &ObjectId, manifest: &serde_json::Value) {
        let owner = manifest["metadata"]["annotations"][OWNING_INVENTORY_ANNOTATION].as_str();
        let tracked = owner.is_some_and(|owner| {
            self.objects.values().any(|o| {
                o.manifest["metadata"]["labels"][crate::inventory::INVENTORY_ID_LABEL].as_str()
                    == Some(owner)
                    && o.manifest["data"]
                        .as_object()
                        .is_some_and(|d| d.contains_key(&crate::inventory::encode_entry(object)))
            })
        });
        if !tracked {
            self.violations.push(format!(
                "applied {object} for inventory {owner:?}, which does not list it"
            ));
        }
    }

    /// A delete is legitimate only for an object that some inventory in the cluster lists and that
    /// carries that inventory's annotation (or none).
    fn check_delete(&mut self, object: &ObjectId) {
        let owner = self
            .objects
            .get(object)
            .and_then(|o| o.owner().map(str::to_string));
        let listed_by: Vec<String> = self
            .objects
            .values()
            .filter_map(|o| {
                let id = o.manifest["metadata"]["labels"][crate::inventory::INVENTORY_ID_LABEL]
                    .as_str()?;
                let listed = o.manifest["data"]
                    .as_object()
                    .is_some_and(|d| d.contains_key(&crate::inventory::encode_entry(object)));
                listed.then(|| id.to_string())
            })
            .collect();
        let ok = match &owner {
            Some(o) => listed_by.contains(o),
            None => !listed_by.is_empty(),
        };
        if !ok {
            self.violations.push(format!(
                "deleted {object} owned by {owner:?} while listed by inventories {listed_by:?}"
            ));
        }
    }
}

fn error_outcome(action: &Action, e: ApiError) -> Outcome {
    match action {
        Action::ReadInventory { .. } => Outcome::Inventory(Err(e)),
        Action::WriteInventory { .. } => Outcome::InventoryWritten(Err(e)),
        Action::ReadObject { .. } => Outcome::Object(Err(e)),
        Action::Apply { .. } => Outcome::Applied(Err(e)),
        Action::Prune { .. } => Outcome::Pruned(Err(e)),
    }
}
