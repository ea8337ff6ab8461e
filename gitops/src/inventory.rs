//! The inventory: the set of objects a manifest project has applied, kept in the cluster so that a
//! restarted agent knows what it may prune. Encoded as cli-utils does (and GitLab's agent with it): a
//! ConfigMap labelled `cli-utils.sigs.k8s.io/inventory-id: <id>` whose `data` keys are the objects
//! (`<namespace>_<name>_<group>_<kind>`, `:` in names written `__`, empty values). Every applied
//! object carries the annotation `config.k8s.io/owning-inventory: <id>`; [`can_apply`] and
//! [`can_prune`] decide from it who owns a live object.

use std::collections::BTreeSet;

use agent_config::InventoryPolicy;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::object::ObjectId;

/// The label naming an inventory object's id.
pub const INVENTORY_ID_LABEL: &str = "cli-utils.sigs.k8s.io/inventory-id";
/// The annotation naming the inventory that owns an applied object.
pub const OWNING_INVENTORY_ANNOTATION: &str = "config.k8s.io/owning-inventory";

/// Where a project's inventory lives and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InventoryRef {
    /// Namespace of the ConfigMap.
    pub namespace: String,
    /// Name of the ConfigMap.
    pub name: String,
    /// The inventory id (label value and owning annotation value).
    pub id: String,
}

impl InventoryRef {
    /// The inventory of `project` synced by `agent`, kept in `namespace` (the agent's own namespace:
    /// deliberately not the project's `default_namespace`, so editing that never orphans the
    /// inventory). The id is stable for an agent and project; it does not depend on the ref, so
    /// moving a project to another branch keeps its objects.
    pub fn for_project(namespace: &str, agent: &str, project: &str) -> InventoryRef {
        let digest = Sha256::digest(format!("{agent}\n{project}"));
        let id = format!("gitops-{}", &hex::encode(digest)[..24]);
        InventoryRef {
            namespace: namespace.to_string(),
            name: id.clone(),
            id,
        }
    }
}

impl InventoryRef {
    /// The id of the inventory ConfigMap itself (never applied or pruned as a manifest).
    pub fn object_id(&self) -> ObjectId {
        ObjectId::namespaced("", "ConfigMap", &self.namespace, &self.name)
    }
}

/// Why an inventory object cannot be used. Refusing is the safe answer: nothing is applied or pruned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// The object is not a ConfigMap.
    #[error("the inventory object is not a ConfigMap")]
    NotAConfigMap,
    /// The ConfigMap at our name belongs to another inventory (or to none).
    #[error(
        "the ConfigMap {name} is not inventory {expected} (its {INVENTORY_ID_LABEL} label is {found:?}); refusing to use or overwrite it"
    )]
    Foreign {
        /// Its name.
        name: String,
        /// Our id.
        expected: String,
        /// Its label.
        found: Option<String>,
    },
    /// A `data` key is not an object reference.
    #[error("inventory entry {0:?} is not `<namespace>_<name>_<group>_<kind>`")]
    BadEntry(String),
}

/// An inventory's content: the objects it tracks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    /// The tracked objects.
    pub objects: BTreeSet<ObjectId>,
}

/// `<namespace>_<name>_<group>_<kind>`, `:` in the name written `__` (cli-utils' `ObjMetadata`).
pub fn encode_entry(id: &ObjectId) -> String {
    format!(
        "{}_{}_{}_{}",
        id.namespace.as_deref().unwrap_or(""),
        id.name.replace(':', "__"),
        id.group,
        id.kind
    )
}

/// Reads an entry written by [`encode_entry`]. Namespaces, groups and kinds cannot contain `_`, so the
/// first `_` ends the namespace and the last two start the group and kind.
pub fn decode_entry(key: &str) -> Result<ObjectId, InventoryError> {
    let bad = || InventoryError::BadEntry(key.to_string());
    let (namespace, rest) = key.split_once('_').ok_or_else(bad)?;
    let (rest, kind) = rest.rsplit_once('_').ok_or_else(bad)?;
    let (name, group) = rest.rsplit_once('_').ok_or_else(bad)?;
    if name.is_empty() || kind.is_empty() {
        return Err(bad());
    }
    Ok(ObjectId {
        group: group.to_string(),
        kind: kind.to_string(),
        namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
        name: name.replace("__", ":"),
    })
}

impl Inventory {
    /// The inventory ConfigMap (what to create or replace in the cluster).
    pub fn to_configmap(&self, at: &InventoryRef) -> serde_json::Value {
        let data: serde_json::Map<String, serde_json::Value> = self
            .objects
            .iter()
            .map(|id| (encode_entry(id), serde_json::Value::String(String::new())))
            .collect();
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": at.name,
                "namespace": at.namespace,
                "labels": { INVENTORY_ID_LABEL: at.id },
            },
            "data": data,
        })
    }

    /// Reads an inventory ConfigMap, refusing one that is not ours.
    pub fn from_configmap(
        object: &serde_json::Value,
        at: &InventoryRef,
    ) -> Result<Inventory, InventoryError> {
        if object["kind"].as_str() != Some("ConfigMap") {
            return Err(InventoryError::NotAConfigMap);
        }
        let found = object["metadata"]["labels"][INVENTORY_ID_LABEL]
            .as_str()
            .map(str::to_string);
        if found.as_deref() != Some(at.id.as_str()) {
            return Err(InventoryError::Foreign {
                name: at.name.clone(),
                expected: at.id.clone(),
                found,
            });
        }
        let mut objects = BTreeSet::new();
        if let Some(data) = object["data"].as_object() {
            for key in data.keys() {
                objects.insert(decode_entry(key)?);
            }
        }
        Ok(Inventory { objects })
    }
}

/// What the agent knows of a live object from reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Live {
    /// It does not exist.
    Absent,
    /// It exists.
    Present {
        /// `metadata.uid` (prunes are conditional on it, so a re-created object is never deleted).
        uid: Option<String>,
        /// Its owning-inventory annotation.
        owner: Option<String>,
    },
}

impl Live {
    /// Reads uid and owner from a live object's JSON.
    pub fn from_object(object: &serde_json::Value) -> Live {
        Live::Present {
            uid: object["metadata"]["uid"].as_str().map(str::to_string),
            owner: object["metadata"]["annotations"][OWNING_INVENTORY_ANNOTATION]
                .as_str()
                .map(str::to_string),
        }
    }
}

/// Why an object is left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum NotOurs {
    /// It exists without an owning inventory and the policy is `must_match`.
    #[error(
        "the object exists and no inventory owns it; set inventory_policy: adopt_if_no_inventory to take it over"
    )]
    NeedsAdoption,
    /// Another inventory owns it.
    #[error("inventory {0} owns the object; set inventory_policy: adopt_all to take it over")]
    OwnedByOther(String),
}

/// May we apply over `live` (cli-utils' `CanApply`)? A missing object may always be created.
pub fn can_apply(policy: InventoryPolicy, ours: &str, live: &Live) -> Result<(), NotOurs> {
    ownership(policy, ours, live, policy == InventoryPolicy::AdoptAll)
}

/// May we delete `live`, an object of our inventory that left the desired set? Stricter than
/// cli-utils: an object another inventory names is never pruned, whatever the policy (it took the
/// object over after us). An unowned one is pruned unless the policy is `must_match`.
pub fn can_prune(policy: InventoryPolicy, ours: &str, live: &Live) -> Result<(), NotOurs> {
    ownership(policy, ours, live, false)
}

/// Ours, or one we may take: absent, annotated with our id, unannotated unless `must_match`, or
/// another inventory's when `take_others`.
fn ownership(
    policy: InventoryPolicy,
    ours: &str,
    live: &Live,
    take_others: bool,
) -> Result<(), NotOurs> {
    let Live::Present { owner, .. } = live else {
        return Ok(());
    };
    match owner.as_deref() {
        Some(o) if o == ours => Ok(()),
        None | Some("") if policy == InventoryPolicy::MustMatch => Err(NotOurs::NeedsAdoption),
        None | Some("") => Ok(()),
        Some(_) if take_others => Ok(()),
        Some(other) => Err(NotOurs::OwnedByOther(other.to_string())),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_like_cli_utils() {
        let ids = [
            ObjectId::namespaced("apps", "Deployment", "web", "api"),
            ObjectId::namespaced("", "ConfigMap", "default", "a_b"),
            ObjectId::cluster(
                "rbac.authorization.k8s.io",
                "ClusterRole",
                "system:controller:x",
            ),
            ObjectId::cluster("", "Namespace", "web"),
        ];
        assert_eq!(encode_entry(&ids[0]), "web_api_apps_Deployment");
        assert_eq!(
            encode_entry(&ids[2]),
            "_system__controller__x_rbac.authorization.k8s.io_ClusterRole"
        );
        assert_eq!(encode_entry(&ids[3]), "_web__Namespace");
        for id in &ids {
            assert_eq!(decode_entry(&encode_entry(id)).as_ref(), Ok(id));
        }
        assert!(decode_entry("nounderscores").is_err());
        assert!(decode_entry("ns__g_").is_err());
    }

    #[test]
    fn configmap_round_trip_and_foreign_refusal() {
        let at = InventoryRef::for_project("gitlab-agent", "agent-1", "group/manifests");
        assert_eq!(at.id.len(), "gitops-".len() + 24);
        assert_eq!(
            at,
            InventoryRef::for_project("gitlab-agent", "agent-1", "group/manifests")
        );
        assert_ne!(
            at.id,
            InventoryRef::for_project("gitlab-agent", "agent-2", "group/manifests").id
        );
        let inv = Inventory {
            objects: [ObjectId::namespaced("", "ConfigMap", "a", "b")]
                .into_iter()
                .collect(),
        };
        let cm = inv.to_configmap(&at);
        assert_eq!(cm["metadata"]["labels"][INVENTORY_ID_LABEL], at.id.as_str());
        assert_eq!(cm["data"]["a_b__ConfigMap"], "");
        assert_eq!(Inventory::from_configmap(&cm, &at), Ok(inv));
        let other = InventoryRef {
            id: "other".into(),
            ..at.clone()
        };
        assert!(matches!(
            Inventory::from_configmap(&cm, &other),
            Err(InventoryError::Foreign { .. })
        ));
    }

    #[test]
    fn ownership_policies() {
        use InventoryPolicy::*;
        let live = |owner: Option<&str>| Live::Present {
            uid: None,
            owner: owner.map(str::to_string),
        };
        for p in [MustMatch, AdoptIfNoInventory, AdoptAll] {
            assert!(can_apply(p, "me", &Live::Absent).is_ok());
            assert!(can_apply(p, "me", &live(Some("me"))).is_ok());
            assert!(can_prune(p, "me", &live(Some("me"))).is_ok());
            assert!(can_prune(p, "me", &live(Some("other"))).is_err());
        }
        assert_eq!(
            can_apply(MustMatch, "me", &live(None)),
            Err(NotOurs::NeedsAdoption)
        );
        assert!(can_apply(AdoptIfNoInventory, "me", &live(None)).is_ok());
        assert!(can_apply(AdoptIfNoInventory, "me", &live(Some("x"))).is_err());
        assert!(can_apply(AdoptAll, "me", &live(Some("x"))).is_ok());
        assert!(can_prune(MustMatch, "me", &live(None)).is_err());
        assert!(can_prune(AdoptIfNoInventory, "me", &live(None)).is_ok());
    }
}
