//! The write verbs: create, update (PUT), patch (JSON, merge, strategic merge) and server-side
//! apply, the `scale` subresource, delete and deletecollection — each with `dryRun=All`, field
//! management ([`crate::managed`]) and the per-kind strategy ([`crate::strategy`]).

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::access;
use crate::body::{self, ResponseBody};
use crate::managed::{FieldManager, Target, manager_or_user_agent};
use crate::patch::{self, PatchKind};
use crate::query::Query;
use crate::resource::Resource;
use crate::status::{self, ApiError};
use crate::store::{
    Commit, DeleteOptions, Preconditions, Propagation, Store, StoreError, generation_after,
    qualified,
};
use crate::strategy::{keep_status, normalize, only_status};
use crate::time;

type Resp = Response<ResponseBody>;

/// What every write needs from the request.
pub(crate) struct Write<'a> {
    /// The store written to.
    pub store: &'a Store,
    /// The query string.
    pub query: &'a Query,
    /// The client's `User-Agent` (the default field manager).
    pub user_agent: &'a str,
    /// Checks the object as it would be stored, before it is (RBAC's escalation prevention,
    /// [`crate::escalation`]); runs under the store's lock, so it must not use the store.
    pub admit: &'a (dyn Fn(&Value) -> Result<(), ApiError> + Sync),
}

impl Write<'_> {
    fn commit(&self) -> Result<Commit, ApiError> {
        Ok(if self.query.dry_run()? {
            Commit::DryRun
        } else {
            Commit::Yes
        })
    }

    fn manager(&self) -> Result<String, ApiError> {
        Ok(manager_or_user_agent(
            self.query.field_manager()?.as_deref(),
            self.user_agent,
        ))
    }

    /// Nodes, for the DaemonSet strategy (read before the store lock is taken).
    fn nodes(&self, r: &Resource) -> usize {
        if r.kind == "DaemonSet" && r.crd.is_none() {
            self.store.list("v1", "Node", None).len()
        } else {
            0
        }
    }

    fn forbid_force(&self) -> Result<(), ApiError> {
        if self.query.force()? {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
            ));
        }
        Ok(())
    }
}

fn name_matches(obj: &Value, name: &str) -> Result<(), ApiError> {
    if let Some(n) = obj.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

fn stale(r: &Resource, name: &str) -> StoreError {
    StoreError::Conflict {
        resource: qualified(r),
        name: name.to_string(),
        message: "the object has been modified; please apply your changes to the latest version and try again".to_string(),
    }
}

fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `POST` to a collection.
pub(crate) fn create(
    w: &Write,
    r: &Resource,
    namespace: Option<&str>,
    obj: Value,
) -> Result<Resp, ApiError> {
    let manager = w.manager()?;
    let commit = w.commit()?;
    let fm = FieldManager::new(r, Target::Main);
    let mut obj = fm.update(None, obj, &manager, &time::now_rfc3339());
    if let Some(ns) = namespace
        && r.namespaced
        && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
    {
        m.entry("namespace").or_insert_with(|| json!(ns));
    }
    keep_status(r, None, &mut obj);
    normalize(r, &mut obj, true, w.nodes(r));
    (w.admit)(&obj)?;
    let created = w.store.create_object_with(r, namespace, obj, commit)?;
    Ok(body::json(StatusCode::CREATED, &r.present(&created)))
}

/// An update of a stored object (PUT, non-apply PATCH, scale): `change` computes what the
/// client writes from the stored object; the target's part of it is taken, field management
/// records who changed what, and the kind's strategy fills in the rest.
fn update_with(
    w: &Write,
    r: &Resource,
    namespace: Option<&str>,
    name: &str,
    target: Target,
    change: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Result<std::sync::Arc<Value>, ApiError> {
    let manager = w.manager()?;
    let commit = w.commit()?;
    let nodes = w.nodes(r);
    let now = time::now_rfc3339();
    let fm = FieldManager::new(r, target);
    w.store
        .modify_object_with(r, namespace, name, commit, |cur| -> Result<(), ApiError> {
            let written = change(cur)?;
            let new = match target {
                Target::Status => only_status(cur, &written),
                _ => {
                    let mut n = written;
                    keep_status(r, Some(cur), &mut n);
                    n
                }
            };
            let mut new = fm.update(Some(cur), new, &manager, &now);
            normalize(r, &mut new, false, nodes);
            if observe_generation(r, Some(cur), &mut new) {
                normalize(r, &mut new, false, nodes);
            }
            (w.admit)(&new)?;
            *cur = new;
            Ok(())
        })
}

/// Sets the generation the store will give the (defaulted) `new`, so that the strategy's
/// status can observe it; returns whether it changed.
fn observe_generation(r: &Resource, cur: Option<&Value>, new: &mut Value) -> bool {
    let Some(g) = generation_after(r, cur, new) else {
        return false;
    };
    let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) else {
        return false;
    };
    let changed = m.get("generation").and_then(Value::as_i64) != Some(g);
    m.insert("generation".to_string(), json!(g));
    changed
}

/// `PUT` to an object or its status.
pub(crate) fn update(
    w: &Write,
    r: &Resource,
    namespace: Option<&str>,
    name: &str,
    obj: Value,
    target: Target,
) -> Result<Resp, ApiError> {
    name_matches(&obj, name)?;
    let updated = update_with(w, r, namespace, name, target, |cur| {
        if let Some(expected) = rv_of(&obj)
            && rv_of(cur) != Some(expected)
        {
            return Err(stale(r, name).into());
        }
        let mut new = obj.clone();
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        Ok(new)
    })?;
    Ok(body::json(StatusCode::OK, &r.present(&updated)))
}

/// `PATCH` of an object or its status, including server-side apply.
#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    w: &Write,
    r: &Resource,
    namespace: Option<&str>,
    name: &str,
    kind: PatchKind,
    bytes: &[u8],
    target: Target,
) -> Result<Resp, ApiError> {
    let doc = crate::handlers::decode_object(
        bytes,
        if kind == PatchKind::Apply {
            "application/yaml"
        } else {
            "application/json"
        },
    )?;
    if kind == PatchKind::Apply {
        return apply(w, r, namespace, name, doc, target);
    }
    w.forbid_force()?;
    match kind {
        PatchKind::Json if !doc.is_array() => {
            return Err(ApiError::bad_request(
                "a JSON patch must be a JSON array of operations",
            ));
        }
        PatchKind::Merge | PatchKind::StrategicMerge if !doc.is_object() => {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        _ => {}
    }
    let updated = update_with(w, r, namespace, name, target, |cur| {
        let mut patched = cur.clone();
        match kind {
            PatchKind::Merge => patch::merge_patch(&mut patched, &doc),
            PatchKind::StrategicMerge => patch::strategic_merge_patch(&mut patched, &doc)?,
            PatchKind::Json => patch::json_patch(&mut patched, &doc)?,
            PatchKind::Apply => {}
        }
        if !patched.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "the patched object is not a JSON object",
            ));
        }
        Ok(patched)
    })?;
    Ok(body::json(StatusCode::OK, &r.present(&updated)))
}

/// Server-side apply (`application/apply-patch+yaml`): creates the object when absent.
fn apply(
    w: &Write,
    r: &Resource,
    namespace: Option<&str>,
    name: &str,
    mut config: Value,
    target: Target,
) -> Result<Resp, ApiError> {
    let Some(manager) = w.query.field_manager()? else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    let force = w.query.force()?;
    let commit = w.commit()?;
    if !config.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a {} object",
            r.kind
        )));
    }
    name_matches(&config, name)?;
    let api_version = config.get("apiVersion").and_then(Value::as_str);
    let kind = config.get("kind").and_then(Value::as_str);
    if api_version != Some(r.api_version().as_str()) || kind != Some(r.kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Incorrect version specified in apply patch. Specified patch version: {}, expected: {}",
            api_version.unwrap_or(""),
            r.api_version()
        )));
    }
    if let (Some(ns), Some(m)) = (
        namespace.filter(|_| r.namespaced),
        config.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        match m.get("namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
    }
    let nodes = w.nodes(r);
    let now = time::now_rfc3339();
    let fm = FieldManager::new(r, target);
    let (obj, created) = w.store.upsert_object(r, namespace, name, commit, |live| {
        if let Some(expected) = rv_of(&config)
            && live.and_then(rv_of) != Some(expected)
        {
            return Err(stale(r, name).into());
        }
        if live.is_none() && target != Target::Main {
            return Err(ApiError::from(StoreError::NotFound {
                resource: qualified(r),
                name: name.to_string(),
            }));
        }
        let mut cfg = config.clone();
        if let Some(m) = cfg.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.insert("name".to_string(), json!(name));
        }
        let mut out = fm.apply(live, &cfg, &manager, force, &now)?;
        match (target, live) {
            (Target::Status, Some(cur)) => out = only_status(cur, &out),
            _ => keep_status(r, live, &mut out),
        }
        normalize(r, &mut out, live.is_none(), nodes);
        if observe_generation(r, live, &mut out) {
            normalize(r, &mut out, live.is_none(), nodes);
        }
        (w.admit)(&out)?;
        Ok::<Value, ApiError>(out)
    })?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(body::json(code, &r.present(&obj)))
}

/// The `autoscaling/v1` `Scale` of an object with `spec.replicas`.
pub(crate) fn scale_of(d: &Value) -> Value {
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": d.pointer("/metadata/name"),
            "namespace": d.pointer("/metadata/namespace"),
            "uid": d.pointer("/metadata/uid"),
            "resourceVersion": d.pointer("/metadata/resourceVersion"),
            "creationTimestamp": d.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": d.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": d.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": access::labels_at(d, "/spec/selector/matchLabels"),
        },
    })
}

/// `PUT` or `PATCH` of the `scale` subresource.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scale(
    w: &Write,
    r: &Resource,
    namespace: Option<&str>,
    name: &str,
    method: &Method,
    content_type: &str,
    bytes: &[u8],
) -> Result<Resp, ApiError> {
    let current = w.store.get_object(r, namespace, name)?;
    let mut sc = scale_of(&current);
    if *method == Method::PUT {
        sc = crate::handlers::decode_object(bytes, content_type)?;
        if !sc.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a Scale object",
            ));
        }
    } else {
        let kind = PatchKind::from_content_type(content_type)
            .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
        let doc = crate::handlers::decode_object(
            bytes,
            if kind == PatchKind::Apply {
                "yaml"
            } else {
                "json"
            },
        )?;
        match kind {
            PatchKind::Json => patch::json_patch(&mut sc, &doc)?,
            PatchKind::StrategicMerge => patch::strategic_merge_patch(&mut sc, &doc)?,
            PatchKind::Merge | PatchKind::Apply => patch::merge_patch(&mut sc, &doc),
        }
    }
    let replicas = sc
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "Scale.autoscaling \"\" is invalid: spec.replicas: Invalid value: must be a non-negative integer",
            )
        })?;
    let expected = rv_of(&sc).map(str::to_string);
    let updated = update_with(w, r, namespace, name, Target::Scale, |d| {
        if let Some(e) = &expected
            && rv_of(d) != Some(e.as_str())
        {
            return Err(stale(r, name).into());
        }
        let mut new = d.clone();
        new["spec"]["replicas"] = json!(replicas);
        Ok(new)
    })?;
    Ok(body::json(StatusCode::OK, &scale_of(&updated)))
}

/// `DeleteOptions` from the body and the query (the body wins).
fn delete_options(bytes: &[u8], query: &Query) -> Result<DeleteOptions, ApiError> {
    let opts: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?
    };
    let invalid = |m: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("DeleteOptions.meta.k8s.io \"\" is invalid: {m}"),
        )
    };
    let policy = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or(query.get("propagationPolicy"))
        .filter(|p| !p.is_empty());
    let orphan = match opts.get("orphanDependents").and_then(Value::as_bool) {
        Some(b) => Some(b),
        None => match query.get("orphanDependents") {
            None | Some("") => None,
            Some(_) => Some(query.flag("orphanDependents")?),
        },
    };
    let propagation = match (policy, orphan) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "propagationPolicy: Invalid value: orphanDependents and deletionPropagation cannot be both set".to_string(),
            ));
        }
        (Some(p), None) => Some(Propagation::parse(p).ok_or_else(|| {
            invalid(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            ))
        })?),
        (None, Some(true)) => Some(Propagation::Orphan),
        (None, Some(false)) => Some(Propagation::Background),
        (None, None) => None,
    };
    let dry_body = match opts.get("dryRun") {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) if a.iter().all(|x| x == "All") => !a.is_empty(),
        Some(other) => {
            return Err(invalid(format!(
                "dryRun: Unsupported value: {other}: supported values: \"All\""
            )));
        }
    };
    Ok(DeleteOptions {
        preconditions: Preconditions {
            uid: opts
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            resource_version: opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        propagation,
        commit: if dry_body || query.dry_run()? {
            Commit::DryRun
        } else {
            Commit::Yes
        },
    })
}

/// The body of a delete that removed the object: the object for kinds whose registry returns
/// it (pods, services), a `Status` otherwise.
fn deleted_body(r: &Resource, obj: &Value) -> Value {
    if r.crd.is_none() && matches!(r.kind.as_str(), "Pod" | "Service") {
        return obj.clone();
    }
    status::success(json!({
        "name": obj.pointer("/metadata/name"),
        "group": r.group,
        "kind": r.plural,
        "uid": obj.pointer("/metadata/uid"),
    }))
}

/// `DELETE` of an object.
pub(crate) fn delete(
    w: &Write,
    r: &Resource,
    namespace: Option<&str>,
    name: &str,
    bytes: &[u8],
) -> Result<Resp, ApiError> {
    let options = delete_options(bytes, w.query)?;
    let d = w.store.delete_object_with(r, namespace, name, &options)?;
    tracing::debug!(resource = %r.plural, ?namespace, name, removed = d.removed, "delete");
    let body = if d.removed {
        deleted_body(r, &r.present(&d.object))
    } else {
        r.present(&d.object).into_owned()
    };
    Ok(body::json(StatusCode::OK, &body))
}

/// `DELETE` of a collection (`deletecollection`), with selectors.
pub(crate) fn delete_collection(
    w: &Write,
    r: &Resource,
    namespace: Option<&str>,
    bytes: &[u8],
) -> Result<Resp, ApiError> {
    let options = delete_options(bytes, w.query)?;
    let selectors = w.query.selectors(r)?;
    let page = w
        .store
        .list_objects(r, namespace, &selectors, &Default::default())?;
    let mut deleted = Vec::new();
    for obj in page.items {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        match w.store.delete_object_with(r, ns, name, &options) {
            Ok(d) => deleted.push(r.present(&d.object).into_owned()),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(body::json(
        StatusCode::OK,
        &json!({
            "kind": r.list_kind(),
            "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": w.store.resource_version().to_string()},
            "items": deleted,
        }),
    ))
}
