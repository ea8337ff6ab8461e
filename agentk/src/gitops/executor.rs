//! Executes the sync decision's actions ([`gitops::Action`]) against the Kubernetes API server with
//! kube: server-side apply (`Patch::Apply`, the configured field manager and `force`), GET,
//! DELETE with a uid precondition and the configured propagation, and the inventory ConfigMap
//! (applied server-side too, so keys that left are removed). Kinds are resolved by discovery
//! (`pinned_kind` for a known `apiVersion`, the group's preferred version for prune candidates),
//! cached per group/version/kind; a failed discovery is not cached (a CRD applied in an earlier wave
//! makes its kind appear).
//!
//! Every answer becomes an [`Outcome`]; API errors keep the API server's code and message
//! ([`ApiError`]), transport errors have no code. Nothing here decides anything.

use std::collections::HashMap;
use std::sync::Mutex;

use gitops::{Action, ApiError, Applied, Live, ObjectId, Outcome, Pruned};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};

/// Group, version (empty: the group's preferred one) and kind.
type KindKey = (String, String, String);

/// Runs actions for one project's sync.
pub struct Executor {
    client: kube::Client,
    kinds: Mutex<HashMap<KindKey, (ApiResource, ApiCapabilities)>>,
    /// `resourceVersion` seen by the last read of each object (to tell created, configured and
    /// unchanged apart).
    versions: Mutex<HashMap<ObjectId, Option<String>>>,
}

fn api_error(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(status) => ApiError {
            code: Some(status.code),
            message: status.message,
        },
        other => ApiError {
            code: None,
            message: other.to_string(),
        },
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Executor {
    /// An executor using `client`.
    pub fn new(client: kube::Client) -> Self {
        Executor {
            client,
            kinds: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// Performs `action` and returns its outcome.
    pub async fn execute(&self, action: &Action) -> Outcome {
        match action {
            Action::ReadInventory { inventory, .. } => {
                let api = self.configmaps(&inventory.namespace);
                Outcome::Inventory(match api.get_opt(&inventory.name).await {
                    Ok(o) => Ok(o.map(|o| serde_json::to_value(o).unwrap_or_default())),
                    Err(e) => Err(api_error(e)),
                })
            }
            Action::WriteInventory {
                inventory,
                configmap,
                ..
            } => {
                let api = self.configmaps(&inventory.namespace);
                let params = PatchParams::apply("agentk-inventory").force();
                let mut written = api
                    .patch(&inventory.name, &params, &Patch::Apply(configmap))
                    .await;
                // The inventory's namespace (agentk's own, normally) may not exist yet in a fresh
                // cluster: create it once, then write again.
                if matches!(&written, Err(e) if not_found(e))
                    && self.ensure_namespace(&inventory.namespace).await
                {
                    written = api
                        .patch(&inventory.name, &params, &Patch::Apply(configmap))
                        .await;
                }
                Outcome::InventoryWritten(written.map(|_| ()).map_err(api_error))
            }
            Action::ReadObject {
                object,
                api_version,
                ..
            } => Outcome::Object(self.read(object, api_version.as_deref()).await),
            Action::Apply {
                object,
                api_version,
                manifest,
                field_manager,
                force,
                dry_run,
                ..
            } => Outcome::Applied(
                self.apply(
                    object,
                    api_version,
                    manifest,
                    field_manager,
                    *force,
                    *dry_run,
                )
                .await,
            ),
            Action::Prune {
                object,
                uid,
                propagation,
                dry_run,
                ..
            } => Outcome::Pruned(
                self.prune(object, uid.clone(), *propagation, *dry_run)
                    .await,
            ),
        }
    }

    /// Creates `namespace` with server-side apply (field manager `agentk-inventory`); whether it
    /// now exists.
    async fn ensure_namespace(&self, namespace: &str) -> bool {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "Namespace"),
            "namespaces",
        );
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace},
        });
        let params = PatchParams::apply("agentk-inventory");
        match api.patch(namespace, &params, &Patch::Apply(manifest)).await {
            Ok(_) => {
                tracing::info!(namespace, "gitops: created the inventory namespace");
                true
            }
            Err(e) => {
                tracing::warn!(namespace, error = %e, "gitops: cannot create the inventory namespace");
                false
            }
        }
    }

    fn configmaps(&self, namespace: &str) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "ConfigMap"),
            "configmaps",
        );
        Api::namespaced_with(self.client.clone(), namespace, &ar)
    }

    /// The API of `object`'s kind (at `api_version`, or the group's preferred version).
    async fn api(
        &self,
        object: &ObjectId,
        api_version: Option<&str>,
    ) -> Result<Api<DynamicObject>, ApiError> {
        let version = api_version
            .map(|v| v.rsplit_once('/').map_or(v, |(_, v)| v).to_string())
            .unwrap_or_default();
        let key = (object.group.clone(), version.clone(), object.kind.clone());
        let cached = self
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let (ar, caps) = match cached {
            Some(x) => x,
            None => {
                let found = if version.is_empty() {
                    match kube::discovery::group(&self.client, &object.group).await {
                        Ok(group) => group.recommended_kind(&object.kind),
                        Err(kube::Error::Discovery(_)) => None,
                        Err(e) => return Err(api_error(e)),
                    }
                } else {
                    kube::discovery::pinned_kind(
                        &self.client,
                        &GroupVersionKind::gvk(&object.group, &version, &object.kind),
                    )
                    .await
                    .ok()
                };
                let Some(found) = found else {
                    return Err(ApiError {
                        code: Some(404),
                        message: format!(
                            "the server does not know {} (no such kind in group {:?})",
                            object.kind, object.group
                        ),
                    });
                };
                self.kinds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, found.clone());
                found
            }
        };
        match (caps.scope, &object.namespace) {
            (Scope::Namespaced, Some(ns)) => Ok(Api::namespaced_with(self.client.clone(), ns, &ar)),
            (Scope::Cluster, None) => Ok(Api::all_with(self.client.clone(), &ar)),
            (Scope::Namespaced, None) => Err(ApiError {
                code: Some(400),
                message: format!(
                    "{object}: {} is namespaced; the object names no namespace",
                    object.kind
                ),
            }),
            (Scope::Cluster, Some(_)) => Err(ApiError {
                code: Some(400),
                message: format!(
                    "{object}: {} is cluster-scoped; the object names a namespace",
                    object.kind
                ),
            }),
        }
    }

    async fn read(&self, object: &ObjectId, api_version: Option<&str>) -> Result<Live, ApiError> {
        let api = match self.api(object, api_version).await {
            Ok(api) => api,
            // The kind is unknown: no such object exists (an apply will say why it fails).
            Err(e) if e.code == Some(404) => {
                self.versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(object.clone(), None);
                return Ok(Live::Absent);
            }
            Err(e) => return Err(e),
        };
        let live = api.get_opt(&object.name).await.map_err(api_error)?;
        let version = live
            .as_ref()
            .and_then(|o| o.metadata.resource_version.clone());
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(object.clone(), version);
        Ok(match live {
            None => Live::Absent,
            Some(o) => Live::from_object(&serde_json::to_value(o).unwrap_or_default()),
        })
    }

    async fn apply(
        &self,
        object: &ObjectId,
        api_version: &str,
        manifest: &serde_json::Value,
        field_manager: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<Applied, ApiError> {
        let api = self.api(object, Some(api_version)).await?;
        let mut params = PatchParams::apply(field_manager);
        if force {
            params = params.force();
        }
        if dry_run {
            params = params.dry_run();
        }
        let applied = api
            .patch(&object.name, &params, &Patch::Apply(manifest))
            .await
            .map_err(api_error)?;
        let before = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(object)
            .flatten();
        Ok(match before {
            None => Applied::Created,
            Some(v) if Some(&v) == applied.metadata.resource_version.as_ref() => Applied::Unchanged,
            Some(_) => Applied::Configured,
        })
    }

    async fn prune(
        &self,
        object: &ObjectId,
        uid: Option<String>,
        propagation: agent_config::PropagationPolicy,
        dry_run: bool,
    ) -> Result<Pruned, ApiError> {
        let api = self.api(object, None).await?;
        let params = DeleteParams {
            dry_run,
            propagation_policy: Some(match propagation {
                agent_config::PropagationPolicy::Orphan => kube::api::PropagationPolicy::Orphan,
                agent_config::PropagationPolicy::Background => {
                    kube::api::PropagationPolicy::Background
                }
                agent_config::PropagationPolicy::Foreground => {
                    kube::api::PropagationPolicy::Foreground
                }
            }),
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&object.name, &params).await {
            Ok(_) => Ok(Pruned::Deleted),
            Err(e) if not_found(&e) => Ok(Pruned::NotFound),
            Err(e) => Err(api_error(e)),
        }
    }
}
