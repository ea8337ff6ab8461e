//! Request handling: authentication, routing, and the REST verbs on collections and objects
//! (list/watch, get, create, update, patch, apply, delete, deletecollection, status and scale
//! subresources, pod logs), answering errors as `Status` objects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use serde_json::{Value, json};
use tokio::sync::watch as tokio_watch;

use super::body::{self, ResponseBody};
use super::discovery;
use super::logs::{self, LogBody};
use super::objects::{self, PodPhase};
use super::openapi;
use super::patch::{self, PatchKind};
use super::protobuf;
use super::query::Query;
use super::resource::ResourceType;
use super::router::{self, Route};
use super::status::{self, ApiError};
use super::store::{Preconditions, Store, StoreError, qualified};
use super::table;
use super::watch::{self, WatchRequest};

/// Largest request body accepted (the real server's limit is 3 MiB too).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Everything a request handler needs.
pub(crate) struct Context {
    pub store: Store,
    pub bearer_token: Option<String>,
    pub bookmark_interval: Duration,
    pub log_interval: Duration,
    pub shutdown: tokio_watch::Receiver<bool>,
    pub server_address: String,
}

type Resp = Response<ResponseBody>;

/// Handles one request; never fails (errors become `Status` responses).
pub(crate) async fn handle<B>(ctx: Arc<Context>, req: Request<B>) -> Resp
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match dispatch(&ctx, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.code.is_server_error() {
                tracing::warn!(%method, %path, code = e.code.as_u16(), reason = e.reason, message = %e.message, "request failed");
            } else {
                tracing::debug!(%method, %path, code = e.code.as_u16(), reason = e.reason, message = %e.message, "request rejected");
            }
            body::error(&e)
        }
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    resp
}

fn authorized(ctx: &Context, headers: &HeaderMap) -> bool {
    let Some(expected) = &ctx.bearer_token else {
        return true;
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    got.is_some_and(|g| {
        g.len() == expected.len()
            && g.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.contains("as=Table") && t.contains("g=meta.k8s.io"))
        })
}

async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body exceeds the limit of {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Decodes a JSON (or, for YAML content types, YAML) request body into an object.
/// Protobuf bodies are decoded for the kinds [`protobuf`] knows; others get 415.
fn decode_object(bytes: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let base = content_type.split(';').next().unwrap_or("").trim();
    let unsupported = || {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, and application/vnd.kubernetes.protobuf for Namespace, ConfigMap, Secret and Deployment (got {base:?}); use `kubectl create -f` or `kubectl apply -f` for other kinds"
            ),
        )
    };
    if base == "application/vnd.kubernetes.protobuf" {
        return match protobuf::decode(bytes) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(unsupported()),
            Err(e) => Err(ApiError::bad_request(format!(
                "the protobuf request body could not be decoded: {e}"
            ))),
        };
    }
    if base.contains("protobuf") || base.contains("cbor") {
        return Err(unsupported());
    }
    let v: Value = if base.ends_with("yaml") {
        serde_yaml::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        })?
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?
    };
    Ok(v)
}

fn expect_object(v: Value, r: &ResourceType) -> Result<Value, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a {} object",
            r.kind
        )));
    }
    Ok(v)
}

async fn dispatch<B>(ctx: &Arc<Context>, req: Request<B>) -> Result<Resp, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body_stream) = req.into_parts();
    let route = router::route(parts.uri.path());
    if !matches!(route, Route::Health | Route::Version) && !authorized(ctx, &parts.headers) {
        return Err(ApiError::unauthorized());
    }
    let query = Query::parse(parts.uri.query());
    let method = parts.method.clone();
    let read_only = |doc: Option<Value>| -> Result<Resp, ApiError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(ApiError::method_not_allowed(&method, parts.uri.path()));
        }
        match doc {
            Some(d) => Ok(body::json(StatusCode::OK, &d)),
            None => Err(ApiError::not_found_path(parts.uri.path())),
        }
    };
    match route {
        Route::Health => {
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::method_not_allowed(&method, parts.uri.path()));
            }
            Ok(body::text(StatusCode::OK, "ok"))
        }
        Route::Version => read_only(Some(discovery::version())),
        Route::CoreVersions => read_only(Some(discovery::core_versions(&ctx.server_address))),
        Route::GroupList => read_only(Some(discovery::group_list())),
        Route::Group(g) => read_only(discovery::group(&g)),
        Route::ResourceList { group, version } => {
            read_only(discovery::resource_list(&group, &version))
        }
        Route::OpenApiIndex => read_only(Some(openapi::index())),
        Route::OpenApiGroupVersion(gv) => read_only(openapi::group_version(&gv)),
        Route::NotFound => Err(ApiError::not_found_path(parts.uri.path())),
        Route::Collection {
            resource,
            namespace,
            watch_path,
        } => {
            let table = wants_table(&parts.headers);
            match method {
                Method::GET | Method::HEAD => {
                    if watch_path || query.watch()? {
                        watch_collection(ctx, resource, namespace, &query, table)
                    } else {
                        list(ctx, resource, namespace.as_deref(), &query, table)
                    }
                }
                Method::POST => {
                    if resource.namespaced && namespace.is_none() {
                        return Err(ApiError::method_not_allowed(&method, parts.uri.path()));
                    }
                    let ct = content_type(&parts.headers);
                    let bytes = read_body(body_stream).await?;
                    let obj = expect_object(decode_object(&bytes, &ct)?, resource)?;
                    create(ctx, resource, namespace.as_deref(), obj, &query)
                }
                Method::DELETE => {
                    let bytes = read_body(body_stream).await?;
                    delete_collection(ctx, resource, namespace.as_deref(), &query, &bytes)
                }
                _ => Err(ApiError::method_not_allowed(&method, parts.uri.path())),
            }
        }
        Route::Object {
            resource,
            namespace,
            name,
            subresource,
            watch_path,
        } => {
            let ns = namespace.as_deref();
            let table = wants_table(&parts.headers);
            match (method.clone(), subresource.as_deref()) {
                (Method::GET | Method::HEAD, None) if watch_path => {
                    // Deprecated single-object watch: a watch with metadata.name pinned.
                    let mut q = query.clone();
                    let fs = match q.get("fieldSelector") {
                        Some(f) if !f.is_empty() => format!("{f},metadata.name={name}"),
                        _ => format!("metadata.name={name}"),
                    };
                    q = Query::parse(Some(&format!(
                        "{}&fieldSelector={}",
                        strip_param(parts.uri.query().unwrap_or(""), "fieldSelector"),
                        url::form_urlencoded::byte_serialize(fs.as_bytes()).collect::<String>()
                    )));
                    watch_collection(ctx, resource, namespace, &q, table)
                }
                (Method::GET | Method::HEAD, None | Some("status")) => {
                    let obj = ctx.store.get_object(resource, ns, &name)?;
                    Ok(object_response(
                        resource,
                        &obj,
                        table,
                        &query,
                        StatusCode::OK,
                    ))
                }
                (Method::GET, Some("log")) if resource.kind == "Pod" => {
                    let ns = ns.unwrap_or("default");
                    let lr = query.log_request()?;
                    match logs::pod_logs(
                        &ctx.store,
                        ns,
                        &name,
                        &lr,
                        ctx.log_interval,
                        ctx.shutdown.clone(),
                    )? {
                        LogBody::Complete(text) => Ok(body::text(StatusCode::OK, text)),
                        LogBody::Stream(rx) => Ok(body::stream(rx, "text/plain; charset=utf-8")),
                    }
                }
                (Method::GET, Some("scale")) if resource.kind == "Deployment" => {
                    let obj = ctx.store.get_object(resource, ns, &name)?;
                    Ok(body::json(StatusCode::OK, &scale_of(&obj)))
                }
                (Method::PUT | Method::PATCH, Some("scale")) if resource.kind == "Deployment" => {
                    let ct = content_type(&parts.headers);
                    let bytes = read_body(body_stream).await?;
                    scale(ctx, resource, ns, &name, &method, &ct, &bytes, &query)
                }
                (Method::PUT, None | Some("status")) => {
                    let ct = content_type(&parts.headers);
                    let bytes = read_body(body_stream).await?;
                    let obj = expect_object(decode_object(&bytes, &ct)?, resource)?;
                    update(ctx, resource, ns, &name, obj, subresource.is_some(), &query)
                }
                (Method::PATCH, None | Some("status")) => {
                    let ct = content_type(&parts.headers);
                    let kind = PatchKind::from_content_type(&ct)
                        .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
                    let bytes = read_body(body_stream).await?;
                    patch_object(
                        ctx,
                        resource,
                        ns,
                        &name,
                        kind,
                        &bytes,
                        subresource.is_some(),
                        &query,
                    )
                }
                (Method::DELETE, None) => {
                    let bytes = read_body(body_stream).await?;
                    delete(ctx, resource, ns, &name, &query, &bytes)
                }
                (_, Some(sub))
                    if !matches!(sub, "status" | "log" | "scale")
                        || (sub == "log" && resource.kind != "Pod")
                        || (sub == "scale" && resource.kind != "Deployment")
                        || (sub == "status" && !resource.has_status) =>
                {
                    Err(ApiError::not_found_path(parts.uri.path()))
                }
                _ => Err(ApiError::method_not_allowed(&method, parts.uri.path())),
            }
        }
    }
}

fn strip_param(query: &str, key: &str) -> String {
    query
        .split('&')
        .filter(|kv| !kv.starts_with(&format!("{key}=")) && !kv.is_empty())
        .collect::<Vec<_>>()
        .join("&")
}

fn object_response(
    r: &ResourceType,
    obj: &Value,
    as_table: bool,
    query: &Query,
    code: StatusCode,
) -> Resp {
    if as_table {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        let t = table::table(
            r,
            [obj],
            query.include_object(),
            json!({"resourceVersion": rv}),
            true,
        );
        body::json_typed(code, &t, body::TABLE_JSON)
    } else {
        body::json(code, obj)
    }
}

fn list(
    ctx: &Context,
    r: &'static ResourceType,
    namespace: Option<&str>,
    query: &Query,
    as_table: bool,
) -> Result<Resp, ApiError> {
    let selectors = query.selectors(r)?;
    let opts = query.list_options()?;
    let page = ctx.store.list_objects(r, namespace, &selectors, &opts)?;
    let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
    if let (Some(c), Some(m)) = (&page.continue_token, meta.as_object_mut()) {
        m.insert("continue".to_string(), json!(c));
        if let Some(n) = page.remaining {
            m.insert("remainingItemCount".to_string(), json!(n));
        }
    }
    if as_table {
        let t = table::table(
            r,
            page.items.iter().map(|v| v.as_ref()),
            query.include_object(),
            meta,
            true,
        );
        return Ok(body::json_typed(StatusCode::OK, &t, body::TABLE_JSON));
    }
    let items: Vec<&Value> = page.items.iter().map(|v| v.as_ref()).collect();
    Ok(body::json(
        StatusCode::OK,
        &json!({
            "kind": r.list_kind(),
            "apiVersion": r.api_version(),
            "metadata": meta,
            "items": items,
        }),
    ))
}

fn watch_collection(
    ctx: &Context,
    r: &'static ResourceType,
    namespace: Option<String>,
    query: &Query,
    as_table: bool,
) -> Result<Resp, ApiError> {
    let namespace = if r.namespaced { namespace } else { None };
    let req = WatchRequest {
        resource: r,
        namespace,
        selectors: query.selectors(r)?,
        start: query.watch_start()?,
        bookmarks: query.flag("allowWatchBookmarks")?,
        send_initial_events: query.flag("sendInitialEvents")?,
        timeout: query.timeout()?,
        as_table: as_table.then(|| query.include_object()),
        bookmark_interval: ctx.bookmark_interval,
    };
    let content_type = if as_table {
        body::TABLE_JSON
    } else {
        body::JSON
    };
    match watch::start(&ctx.store, req, ctx.shutdown.clone()) {
        Ok(rx) => Ok(body::stream(rx, content_type)),
        Err(StoreError::Expired(message)) => {
            // Like the real server: a 200 stream carrying one ERROR event with a 410 Status.
            tracing::debug!(resource = r.plural, %message, "watch from an expired version");
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let line = watch::event_line("ERROR", &watch::expired_status(&message));
            // Capacity 1 and nothing sent yet: this cannot fail for lack of room.
            let _ = tx.try_send(line);
            Ok(body::stream(rx, content_type))
        }
        Err(e) => Err(e.into()),
    }
}

/// Fills in what the real server's strategies (and controllers) would on write.
fn normalize(r: &ResourceType, obj: &mut Value, creating: bool) {
    match r.kind {
        "Pod" if creating => {
            // Status is the kubelet's, not the client's: a new pod is Pending.
            objects::set_pod_status(obj, PodPhase::Pending);
        }
        "Namespace" => {
            if obj.pointer("/status/phase").is_none()
                && let Some(o) = obj.as_object_mut()
            {
                o.insert("status".to_string(), json!({"phase": "Active"}));
            }
        }
        "Service" => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("type").or_insert(json!("ClusterIP"));
                if !spec.contains_key("clusterIP") {
                    let h = objects::name_hash(&format!("{ns}/{name}"));
                    let ip = format!("10.96.{}.{}", (h >> 8) % 250, h % 250 + 2);
                    spec.insert("clusterIP".to_string(), json!(ip));
                    spec.insert("clusterIPs".to_string(), json!([ip]));
                }
            }
        }
        "Deployment" => {
            // No controller runs pods for user deployments; report them as fully available.
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let have = obj.pointer("/status/replicas").and_then(Value::as_i64);
            if creating || have != Some(want) {
                let generation = obj
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let mut st = objects::deployment_status(want, want);
                st["observedGeneration"] = json!(generation);
                if let Some(o) = obj.as_object_mut() {
                    o.insert("status".to_string(), st);
                }
            }
        }
        _ => {}
    }
}

fn create(
    ctx: &Context,
    r: &'static ResourceType,
    namespace: Option<&str>,
    mut obj: Value,
    query: &Query,
) -> Result<Resp, ApiError> {
    normalize(r, &mut obj, true);
    if query.dry_run()? {
        // Report what would be created without storing it.
        if let Some(ns) = namespace
            && r.namespaced
            && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.insert("namespace".to_string(), json!(ns));
        }
        return Ok(body::json(StatusCode::CREATED, &obj));
    }
    let created = ctx.store.create_object(r, namespace, obj)?;
    Ok(body::json(StatusCode::CREATED, &created))
}

fn keep_status(r: &ResourceType, current: &Value, new: &mut Value) {
    if !r.has_status {
        return;
    }
    if let Some(o) = new.as_object_mut() {
        match current.get("status") {
            Some(s) => o.insert("status".to_string(), s.clone()),
            None => o.remove("status"),
        };
    }
}

fn only_status(current: &Value, new: &Value) -> Value {
    let mut out = current.clone();
    if let Some(o) = out.as_object_mut() {
        match new.get("status") {
            Some(s) => o.insert("status".to_string(), s.clone()),
            None => o.remove("status"),
        };
        // Status writes may still carry a resourceVersion precondition.
        if let Some(rv) = new.pointer("/metadata/resourceVersion")
            && let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.insert("resourceVersion".to_string(), rv.clone());
        }
    }
    out
}

fn update(
    ctx: &Context,
    r: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
    obj: Value,
    status_only: bool,
    query: &Query,
) -> Result<Resp, ApiError> {
    if let Some(n) = obj.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let dry_run = query.dry_run()?;
    let compute = |current: &Value| -> Result<Value, StoreError> {
        let expected = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some(e) = expected
            && current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                != Some(e)
        {
            return Err(StoreError::Conflict {
                resource: qualified(r),
                name: name.to_string(),
                message: "the object has been modified; please apply your changes to the latest version and try again".to_string(),
            });
        }
        let mut new = if status_only {
            only_status(current, &obj)
        } else {
            let mut n = obj.clone();
            keep_status(r, current, &mut n);
            n
        };
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        normalize(r, &mut new, false);
        Ok(new)
    };
    if dry_run {
        let current = ctx.store.get_object(r, namespace, name)?;
        return Ok(body::json(StatusCode::OK, &compute(&current)?));
    }
    let updated = ctx.store.modify_object(r, namespace, name, |cur| {
        *cur = compute(cur)?;
        Ok(())
    })?;
    Ok(body::json(StatusCode::OK, &updated))
}

#[allow(clippy::too_many_arguments)]
fn patch_object(
    ctx: &Context,
    r: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
    kind: PatchKind,
    bytes: &[u8],
    status_only: bool,
    query: &Query,
) -> Result<Resp, ApiError> {
    let ct = if kind == PatchKind::Apply {
        "application/yaml"
    } else {
        "application/json"
    };
    let patch_doc = decode_object(bytes, ct)?;
    let dry_run = query.dry_run()?;
    if kind == PatchKind::Apply {
        if query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let applied = expect_object(patch_doc.clone(), r)?;
        if let Some(n) = applied.pointer("/metadata/name").and_then(Value::as_str)
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if let (Some(a), Some(k)) = (
            applied.get("apiVersion").and_then(Value::as_str),
            applied.get("kind").and_then(Value::as_str),
        ) && !r.matches(a, k)
        {
            return Err(ApiError::bad_request(format!(
                "the apiVersion/kind of the applied object ({a}, {k}) does not match the URL ({}, {})",
                r.api_version(),
                r.kind
            )));
        }
        if ctx.store.get_object(r, namespace, name).is_err() && !status_only {
            let mut obj = applied;
            if let Some(o) = obj.as_object_mut() {
                let m = o.entry("metadata").or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert("name".to_string(), json!(name));
                }
            }
            return create(ctx, r, namespace, obj, query);
        }
    } else if kind == PatchKind::Json {
        if !patch_doc.is_array() {
            return Err(ApiError::bad_request(
                "a JSON patch must be a JSON array of operations",
            ));
        }
    } else if !patch_doc.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    let compute = |current: &Value| -> Result<Value, ApiError> {
        let mut new = current.clone();
        match kind {
            PatchKind::Merge => patch::merge_patch(&mut new, &patch_doc),
            PatchKind::StrategicMerge => patch::strategic_merge_patch(&mut new, &patch_doc)?,
            PatchKind::Json => patch::json_patch(&mut new, &patch_doc)?,
            PatchKind::Apply => patch::apply_merge(&mut new, &patch_doc),
        }
        if !new.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "the patched object is not a JSON object",
            ));
        }
        let mut new = if status_only {
            only_status(current, &new)
        } else {
            keep_status(r, current, &mut new);
            new
        };
        normalize(r, &mut new, false);
        Ok(new)
    };
    if dry_run {
        let current = ctx.store.get_object(r, namespace, name)?;
        return Ok(body::json(StatusCode::OK, &compute(&current)?));
    }
    let mut patch_error = None;
    let result = ctx
        .store
        .modify_object(r, namespace, name, |cur| match compute(cur) {
            Ok(v) => {
                *cur = v;
                Ok(())
            }
            Err(e) => {
                let msg = e.message.clone();
                patch_error = Some(e);
                Err(StoreError::BadRequest(msg))
            }
        });
    match (result, patch_error) {
        (Ok(v), _) => Ok(body::json(StatusCode::OK, &v)),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}

fn scale_of(d: &Value) -> Value {
    let selector: Vec<String> = d
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
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
            "selector": selector.join(","),
        },
    })
}

#[allow(clippy::too_many_arguments)]
fn scale(
    ctx: &Context,
    r: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
    method: &Method,
    content_type: &str,
    bytes: &[u8],
    query: &Query,
) -> Result<Resp, ApiError> {
    let current = ctx.store.get_object(r, namespace, name)?;
    let mut sc = scale_of(&current);
    if *method == Method::PUT {
        sc = expect_object(decode_object(bytes, content_type)?, r)?;
    } else {
        let kind = PatchKind::from_content_type(content_type)
            .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
        let doc = decode_object(
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
    if query.dry_run()? {
        return Ok(body::json(StatusCode::OK, &sc));
    }
    let rv = sc.pointer("/metadata/resourceVersion").cloned();
    let updated = ctx.store.modify_object(r, namespace, name, |d| {
        if let Some(rv) = rv.filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            && let Some(m) = d.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.insert("resourceVersion".to_string(), rv);
        }
        d["spec"]["replicas"] = json!(replicas);
        normalize(r, d, false);
        Ok(())
    })?;
    Ok(body::json(StatusCode::OK, &scale_of(&updated)))
}

fn delete_options(bytes: &[u8], query: &Query) -> Result<(Preconditions, bool), ApiError> {
    let opts: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?
    };
    let pre = Preconditions {
        uid: opts
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    let dry = query.dry_run()?
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    Ok((pre, dry))
}

fn delete(
    ctx: &Context,
    r: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
    query: &Query,
    bytes: &[u8],
) -> Result<Resp, ApiError> {
    let (pre, dry) = delete_options(bytes, query)?;
    if dry {
        let obj = ctx.store.get_object(r, namespace, name)?;
        return Ok(body::json(StatusCode::OK, &obj));
    }
    let obj = ctx.store.delete_object(r, namespace, name, &pre)?;
    tracing::debug!(resource = r.plural, ?namespace, name, "deleted");
    Ok(body::json(StatusCode::OK, &obj))
}

fn delete_collection(
    ctx: &Context,
    r: &'static ResourceType,
    namespace: Option<&str>,
    query: &Query,
    bytes: &[u8],
) -> Result<Resp, ApiError> {
    let (_, dry) = delete_options(bytes, query)?;
    let selectors = query.selectors(r)?;
    let page = ctx
        .store
        .list_objects(r, namespace, &selectors, &Default::default())?;
    let mut deleted = Vec::new();
    for obj in page.items {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        if dry {
            deleted.push((*obj).clone());
            continue;
        }
        match ctx
            .store
            .delete_object(r, ns, name, &Preconditions::default())
        {
            Ok(o) => deleted.push((*o).clone()),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if deleted.is_empty() && !dry {
        return Ok(body::json(
            StatusCode::OK,
            &status::success(json!({"kind": r.plural})),
        ));
    }
    Ok(body::json(
        StatusCode::OK,
        &json!({
            "kind": r.list_kind(),
            "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": ctx.store.resource_version().to_string()},
            "items": deleted,
        }),
    ))
}
