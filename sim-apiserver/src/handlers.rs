//! Request handling: authentication ([`crate::identity`]), impersonation
//! ([`crate::impersonation`]) and RBAC authorisation ([`crate::rbac`]) of every request but
//! `/version` and health, then routing, the read verbs (get, list, watch, pod logs) and
//! dispatch of the write verbs ([`crate::writes`]) on collections, objects and their `status`
//! and `scale` subresources, answering errors as `Status` objects.
//!
//! The upgraded subresources (`pods/exec`, `pods/attach`, `pods/portforward`) go to
//! [`crate::upgrade`]. Request checks (e.g. RBAC authorisation) plug in here: [`dispatch`]
//! sees every request with its route, method, headers and the caller's credentials.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use serde_json::{Value, json};
use tokio::sync::watch as tokio_watch;

use super::body::{self, ResponseBody};
use super::discovery;
use super::escalation;
use super::identity::{self, Authenticator, UserInfo};
use super::impersonation::Impersonation;
use super::logs::{self, LogBody};
use super::managed::Target;
use super::openapi;
use super::patch::PatchKind;
use super::protobuf;
use super::query::Query;
use super::rbac::{self, Policy};
use super::request_info::RequestInfo;
use super::resource::{Resource, ResourceType};
use super::reviews;
use super::router::{self, Route};
use super::status::ApiError;
use super::store::{Store, StoreError};
use super::table;
use super::upgrade::{self, Subresource};
use super::watch::{self, WatchRequest};
use super::writes::{self, Write};

/// Largest request body accepted (the real server's limit is 3 MiB too).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Everything a request handler needs.
pub(crate) struct Context {
    pub store: Store,
    pub authn: Authenticator,
    pub bookmark_interval: Duration,
    pub log_interval: Duration,
    pub shutdown: tokio_watch::Receiver<bool>,
    pub server_address: String,
    pub containers: Arc<crate::exec::Containers>,
    pub network: Arc<crate::portforward::PodNetwork>,
    pub sessions: Arc<crate::sessions::Sessions>,
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

/// The RBAC policy now: the bootstrap policy and the stored roles and bindings.
pub(crate) fn current_policy(store: &Store) -> Policy {
    let objects: Vec<Value> = ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"]
        .iter()
        .flat_map(|k| store.list("rbac.authorization.k8s.io/v1", k, None))
        .collect();
    Policy::new(&objects)
}

/// Authentication, impersonation and authorisation of a request: the identity it acts as, or
/// the 401/403 `Status`. The policy is read only when the identity is not `system:masters`.
fn authenticate_and_authorize(
    ctx: &Context,
    parts: &http::request::Parts,
) -> Result<(UserInfo, Option<Policy>), ApiError> {
    let caller = ctx.authn.authenticate(&parts.headers)?;
    let mut policy = None;
    let user = match Impersonation::from_headers(&parts.headers)? {
        Some(imp) => {
            let p = policy.get_or_insert_with(|| current_policy(&ctx.store));
            let user = imp.authorize(&caller, p)?;
            tracing::debug!(caller = %caller.username, user = %user.username, "impersonating");
            user
        }
        None => caller,
    };
    if !user.in_group(identity::MASTERS) {
        let req = RequestInfo::new(&parts.method, parts.uri.path(), parts.uri.query());
        let p = policy.get_or_insert_with(|| current_policy(&ctx.store));
        if !p.authorize(&user, &req).allowed() {
            return Err(rbac::forbidden(&user, &req));
        }
    }
    Ok((user, policy))
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
pub(crate) fn decode_object(bytes: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let base = content_type.split(';').next().unwrap_or("").trim();
    let unsupported = || {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, and application/vnd.kubernetes.protobuf for Namespace, ConfigMap, Secret, Deployment, ServiceAccount and RBAC roles and bindings (got {base:?}); use `kubectl create -f` or `kubectl apply -f` for other kinds"
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
    let (mut parts, body_stream) = req.into_parts();
    let registry = ctx.store.registry();
    let route = router::route(parts.uri.path(), &registry);
    let (user, policy) = if matches!(route, Route::Health | Route::Version) {
        (UserInfo::default(), None)
    } else {
        authenticate_and_authorize(ctx, &parts)?
    };
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
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // RBAC's escalation prevention for writes of roles and bindings by anyone but
    // system:masters (the policy is read before the store's lock is taken).
    let escalation_policy = match &route {
        Route::Collection { resource, .. } | Route::Object { resource, .. }
            if resource.group == rbac::GROUP
                && resource.crd.is_none()
                && method != Method::GET
                && method != Method::HEAD
                && !user.in_group(identity::MASTERS) =>
        {
            Some(policy.clone().unwrap_or_else(|| current_policy(&ctx.store)))
        }
        _ => None,
    };
    let admit = |obj: &Value| match &escalation_policy {
        Some(p) => escalation::check(p, &user, obj),
        None => Ok(()),
    };
    let w = Write {
        store: &ctx.store,
        query: &query,
        user_agent: &user_agent,
        admit: &admit,
    };
    match route {
        Route::Health => {
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::method_not_allowed(&method, parts.uri.path()));
            }
            Ok(body::text(StatusCode::OK, "ok"))
        }
        Route::Version => read_only(Some(discovery::version())),
        Route::CoreVersions | Route::GroupList => {
            let core = route == Route::CoreVersions;
            let accept = parts
                .headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok());
            match discovery::aggregated_version(accept) {
                Some(v) if method == Method::GET || method == Method::HEAD => Ok(body::json_typed(
                    StatusCode::OK,
                    &discovery::aggregated(&registry, core, v),
                    discovery::aggregated_content_type(v),
                )),
                _ if core => read_only(Some(discovery::core_versions(&ctx.server_address))),
                _ => read_only(Some(discovery::group_list(&registry))),
            }
        }
        Route::Group(g) => read_only(discovery::group(&registry, &g)),
        Route::ResourceList { group, version } => {
            read_only(discovery::resource_list(&registry, &group, &version))
        }
        Route::OpenApiV2 => {
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::method_not_allowed(&method, parts.uri.path()));
            }
            let protobuf = parts
                .headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("protobuf"));
            if protobuf {
                Ok(body::bytes(
                    StatusCode::OK,
                    openapi::v2_protobuf(),
                    openapi::V2_PROTOBUF,
                ))
            } else {
                Ok(body::json(StatusCode::OK, &openapi::v2_json()))
            }
        }
        Route::OpenApiIndex => read_only(Some(openapi::index(&registry))),
        Route::OpenApiGroupVersion(gv) => read_only(openapi::group_version(&registry, &gv)),
        Route::NotFound => Err(ApiError::not_found_path(parts.uri.path())),
        Route::Collection {
            resource,
            namespace,
            watch_path,
        } => {
            if resource.create_only {
                if method != Method::POST {
                    return Err(ApiError::method_not_allowed(&method, parts.uri.path()));
                }
                let ct = content_type(&parts.headers);
                let bytes = read_body(body_stream).await?;
                let obj = decode_object(&bytes, &ct)?;
                let policy = policy.unwrap_or_else(|| current_policy(&ctx.store));
                let review = reviews::create(&resource, &user, &policy, namespace.as_deref(), obj)?;
                return Ok(body::json(StatusCode::CREATED, &review));
            }
            let table = wants_table(&parts.headers);
            match method {
                Method::GET | Method::HEAD => {
                    if watch_path || query.watch()? {
                        watch_collection(ctx, &resource, namespace, &query, table)
                    } else {
                        list(ctx, &resource, namespace.as_deref(), &query, table)
                    }
                }
                Method::POST => {
                    if resource.namespaced && namespace.is_none() {
                        return Err(ApiError::method_not_allowed(&method, parts.uri.path()));
                    }
                    let ct = content_type(&parts.headers);
                    let bytes = read_body(body_stream).await?;
                    let obj = expect_object(decode_object(&bytes, &ct)?, &resource)?;
                    writes::create(&w, &resource, namespace.as_deref(), obj)
                }
                Method::DELETE => {
                    let bytes = read_body(body_stream).await?;
                    writes::delete_collection(&w, &resource, namespace.as_deref(), &bytes)
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
            if resource.create_only {
                return Err(ApiError::not_found_path(parts.uri.path()));
            }
            if resource.kind == "Pod"
                && resource.crd.is_none()
                && let Some(sub) = subresource.as_deref().and_then(Subresource::from_name)
            {
                let ns = namespace.as_deref().unwrap_or("default");
                return upgrade::serve(ctx, sub, ns, &name, &mut parts);
            }
            let ns = namespace.as_deref();
            let table = wants_table(&parts.headers);
            let target = match subresource.as_deref() {
                None => Target::Main,
                Some("status") if resource.has_status => Target::Status,
                Some("scale") if resource.has_scale => Target::Scale,
                Some("log") if resource.kind == "Pod" && resource.crd.is_none() => Target::Main,
                Some(_) => return Err(ApiError::not_found_path(parts.uri.path())),
            };
            match (method.clone(), subresource.as_deref()) {
                (Method::GET | Method::HEAD, None) if watch_path => {
                    // Deprecated single-object watch: a watch with metadata.name pinned.
                    let fs = match query.get("fieldSelector") {
                        Some(f) if !f.is_empty() => format!("{f},metadata.name={name}"),
                        _ => format!("metadata.name={name}"),
                    };
                    let q = Query::parse(Some(&format!(
                        "{}&fieldSelector={}",
                        strip_param(parts.uri.query().unwrap_or(""), "fieldSelector"),
                        url::form_urlencoded::byte_serialize(fs.as_bytes()).collect::<String>()
                    )));
                    watch_collection(ctx, &resource, namespace, &q, table)
                }
                (Method::GET | Method::HEAD, None | Some("status")) => {
                    let obj = ctx.store.get_object(&resource, ns, &name)?;
                    Ok(object_response(
                        &resource,
                        &obj,
                        table,
                        &query,
                        StatusCode::OK,
                    ))
                }
                (Method::GET, Some("log")) => {
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
                (Method::GET, Some("scale")) => {
                    let obj = ctx.store.get_object(&resource, ns, &name)?;
                    Ok(body::json(StatusCode::OK, &writes::scale_of(&obj)))
                }
                (Method::PUT | Method::PATCH, Some("scale")) => {
                    let ct = content_type(&parts.headers);
                    let bytes = read_body(body_stream).await?;
                    writes::scale(&w, &resource, ns, &name, &method, &ct, &bytes)
                }
                (Method::PUT, None | Some("status")) => {
                    let ct = content_type(&parts.headers);
                    let bytes = read_body(body_stream).await?;
                    let obj = expect_object(decode_object(&bytes, &ct)?, &resource)?;
                    writes::update(&w, &resource, ns, &name, obj, target)
                }
                (Method::PATCH, None | Some("status")) => {
                    let ct = content_type(&parts.headers);
                    let kind = PatchKind::from_content_type(&ct)
                        .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
                    let bytes = read_body(body_stream).await?;
                    writes::patch(&w, &resource, ns, &name, kind, &bytes, target)
                }
                (Method::DELETE, None) => {
                    let bytes = read_body(body_stream).await?;
                    writes::delete(&w, &resource, ns, &name, &bytes)
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
    let presented = r.present(obj);
    let obj: &Value = &presented;
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
    r: &Resource,
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
    let items: Vec<std::borrow::Cow<'_, Value>> = page.items.iter().map(|v| r.present(v)).collect();
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
    r: &Resource,
    namespace: Option<String>,
    query: &Query,
    as_table: bool,
) -> Result<Resp, ApiError> {
    let namespace = if r.namespaced { namespace } else { None };
    let req = WatchRequest {
        resource: r.clone(),
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
            tracing::debug!(resource = %r.plural, %message, "watch from an expired version");
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let line = watch::event_line("ERROR", &watch::expired_status(&message));
            // Capacity 1 and nothing sent yet: this cannot fail for lack of room.
            let _ = tx.try_send(line);
            Ok(body::stream(rx, content_type))
        }
        Err(e) => Err(e.into()),
    }
}
