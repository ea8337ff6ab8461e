//! kas's HTTP API: HTTP/1.1 (plain, or HTTPS with [`crate::StartOptions::api_tls`]), hyper 1 on smol
//! through our I/O and timer adapters (`http_io`, `lazy_timer`).
//!
//! | route | access | what |
//! |---|---|---|
//! | `GET /healthz` | public | the process is alive: always 200 |
//! | `GET /readyz` | public | 200 when the listeners are bound, the agent authentication backend is usable and kas is not shutting down; else 503 with the reasons |
//! | `GET /metrics` | public | Prometheus text ([`crate::metrics`]) |
//! | `GET /api/v1/agents` | read | agents with connection status ([`agents`]), those the user may reach |
//! | `GET /api/v1/agents/{id}` | read | one agent |
//! | `* /api/v1/agents/{id}/proxy/{namespace}/{service}:{port}/{path...}` | user | an in-cluster service through the tunnel (`service-proxy`) |
//! | `* /k8s-proxy/{path...}` | user | the agent's Kubernetes API (`k8s-api`); `Authorization: Bearer <kind>:<agent-id>:<token>` selects and authorises; HTTP/1.1 upgrades (exec, attach, cp, port-forward) become raw duplex sessions ([`upgrade`]) |
//! | `GET /api/v1/agents/{id}/views`, `.../views/{name}` | read | the agent's views, from kas's memory ([`views`]) |
//! | `GET /api/v1/agents/{id}/cache/{kind}?namespace=&labelSelector=` | user | objects from agentk's informer cache (`cache`, [`cache`]) |
//! | `GET /api/v1/events`, `/api/v1/agents/{id}/events` | read | Server-Sent Events: `view`, `object`, `agent` ([`events`]) |
//! | `GET /api/v1/agents/{id}/config` | read | the agent's configuration from Git: commit, applied-at, status, errors ([`agent_config`]) |
//! | `GET /api/v1/agents/{id}/access` | read | the agent's effective access grants (`ci_access`, `user_access`, the configuration project's implicit one) ([`access`]) |
//! | `GET /api/v1/agents/{id}/gitops` | read | GitOps per manifest project: source commit, errors, the agent's sync report ([`gitops`]) |
//! | `POST /api/v1/webhooks/git` | public + shared secret | GitLab push webhook (`X-Gitlab-Token`): poll the named repository now (config and manifest projects) |
//! | `GET /`, `/ui/*` | public | the dashboard's page and assets ([`crate::dashboard`]; the data it shows comes from read routes) |
//!
//! Access is a property of the route ([`ApiRoute::access`], an exhaustive match: a new route does not
//! compile until it declares its access), enforced once, before any handler runs ([`authorize`]):
//! [`Access::Public`] for anyone who can reach the API; [`Access::Read`] for a user bearer allowed on
//! the agent, or anyone when `api_listener.public_read` is set ([`read_access`]); [`Access::User`]
//! for a user bearer allowed on the agent, always (`<kind>:<agent-id>:<token>`, the same for every
//! route; on routes naming an agent in the URL that agent is the one authorised). Status mapping: bad
//! or missing token 401, agent not allowed 403, unknown agent 404, too many failed attempts 429, no
//! live connection until the routing deadline 503, agent-side failure 502, no response head within
//! the response timeout 504. Error bodies are JSON: Kubernetes `Status` objects on `/k8s-proxy`,
//! `{code, reason, message}` elsewhere ([`response`]).

pub mod access;
pub mod agent_config;
pub mod agents;
pub mod cache;
pub mod events;
pub mod gitops;
pub mod http_io;
pub mod lazy_timer;
pub mod proxy;
pub mod read_access;
pub mod response;
pub mod tunnel;
pub mod tunnel_body;
pub mod upgrade;
pub mod upgraded_io;
pub mod views;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::Instrument as _;

use crate::events::Owner;
use crate::state::KasState;
use crate::users::UserIdentity;

use self::proxy::Target;
use self::read_access::{ReadGrant, ReadTarget};
use self::response::{ApiError, ErrorStyle, ResponseBody};

/// The prefix of the Kubernetes API proxy.
pub const K8S_PROXY_PREFIX: &str = "/k8s-proxy";

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute {
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
    /// `/metrics`
    Metrics,
    /// `/api/v1/agents`
    Agents,
    /// `/api/v1/agents/{id}`
    Agent(u64),
    /// `/api/v1/agents/{id}/proxy/...`: the target path is `/{namespace}/{service}:{port}/{rest}`.
    ServiceProxy {
        /// The agent.
        agent_id: u64,
        /// Path for the agent, without the query.
        path: String,
    },
    /// `/k8s-proxy/...`: the Kubernetes API path, without the query.
    K8sProxy {
        /// Path for the agent, without the query.
        path: String,
    },
    /// A service proxy path that does not parse.
    BadServicePath(String),
    /// `/api/v1/agents/{id}/views`
    Views(u64),
    /// `/api/v1/agents/{id}/views/{name}`
    View {
        /// The agent.
        agent_id: u64,
        /// The view's name.
        name: String,
    },
    /// `/api/v1/agents/{id}/cache/{kind}`: the kind as received.
    Cache {
        /// The agent.
        agent_id: u64,
        /// `pods`, `Pod`, `apps/v1/Deployment`, ...
        kind: String,
    },
    /// `/api/v1/agents/{id}/config`
    AgentConfig(u64),
    /// `/api/v1/agents/{id}/gitops`
    AgentGitops(u64),
    /// `/api/v1/agents/{id}/access`
    AgentAccess(u64),
    /// `/api/v1/webhooks/git`: authenticated by its own shared secret, not by a user bearer.
    GitWebhook,
    /// `/api/v1/events`
    Events,
    /// `/api/v1/agents/{id}/events`
    AgentEvents(u64),
    /// `/api/v1/tunnel`: an agent's tunnel as a WebSocket (authenticated by its HELLO, like the
    /// agent listener).
    Tunnel,
    /// `/`, `/index.html`, `/ui/...`: the dashboard's page and assets.
    Dashboard,
    /// Anything else.
    NotFound,
}

/// Who may use a route ([`ApiRoute::access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can reach the API.
    Public,
    /// Read access to `target`: a user bearer allowed on it, unless `api_listener.public_read`.
    Read(ReadTarget),
    /// A user bearer allowed on the agent, always: the URL's agent, or (`None`) the bearer's own.
    User {
        /// The agent the URL names, if it names one.
        agent_in_url: Option<u64>,
    },
}

/// What [`authorize`] granted, for the handler.
#[derive(Debug, Clone)]
pub enum Grant {
    /// A public route.
    Public,
    /// Read access: the events (and agents) in scope, and the user if one authenticated.
    Read(ReadGrant),
    /// A user allowed on the agent the request is for.
    User(UserIdentity),
}

impl ApiRoute {
    /// Who may use this route. Exhaustive on purpose: every route declares its access.
    pub fn access(&self) -> Access {
        match self {
            ApiRoute::Healthz
            | ApiRoute::Readyz
            | ApiRoute::Metrics
            | ApiRoute::Dashboard
            | ApiRoute::BadServicePath(_)
            | ApiRoute::GitWebhook
            | ApiRoute::Tunnel
            | ApiRoute::NotFound => Access::Public,
            ApiRoute::Agents | ApiRoute::Events => Access::Read(ReadTarget::AllAgents),
            ApiRoute::Agent(id)
            | ApiRoute::Views(id)
            | ApiRoute::View { agent_id: id, .. }
            | ApiRoute::AgentConfig(id)
            | ApiRoute::AgentGitops(id)
            | ApiRoute::AgentAccess(id)
            | ApiRoute::AgentEvents(id) => Access::Read(ReadTarget::Agent(*id)),
            ApiRoute::ServiceProxy { agent_id, .. } | ApiRoute::Cache { agent_id, .. } => {
                Access::User {
                    agent_in_url: Some(*agent_id),
                }
            }
            ApiRoute::K8sProxy { .. } => Access::User { agent_in_url: None },
        }
    }

    /// The `route` label in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ApiRoute::Healthz => "healthz",
            ApiRoute::Readyz => "readyz",
            ApiRoute::Metrics => "metrics",
            ApiRoute::Agents | ApiRoute::Agent(_) => "agents",
            ApiRoute::ServiceProxy { .. } | ApiRoute::BadServicePath(_) => "service-proxy",
            ApiRoute::K8sProxy { .. } => "k8s-proxy",
            ApiRoute::Views(_) | ApiRoute::View { .. } => "views",
            ApiRoute::Cache { .. } => "cache",
            ApiRoute::AgentConfig(_) => "agent-config",
            ApiRoute::AgentGitops(_) => "gitops",
            ApiRoute::AgentAccess(_) => "access",
            ApiRoute::GitWebhook => "webhook",
            ApiRoute::Events | ApiRoute::AgentEvents(_) => "events",
            ApiRoute::Dashboard => "dashboard",
            ApiRoute::Tunnel => "tunnel",
            ApiRoute::NotFound => "not-found",
        }
    }

    fn error_style(&self) -> ErrorStyle {
        match self {
            ApiRoute::K8sProxy { .. } => ErrorStyle::Kubernetes,
            _ => ErrorStyle::Plain,
        }
    }
}

/// A Kubernetes-style name segment: lower-case alphanumerics, `-` and `.`, not empty, not `.`/`..`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// A view name as views files define them: letters, digits, `_`, `-`, `.`.
fn valid_view_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A port number or a port name.
fn valid_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_service_proxy(agent_id: u64, rest: &str) -> ApiRoute {
    // rest: "{namespace}/{service}:{port}" then optionally "/{path...}"
    let (namespace, after) = crate::split::once(rest, b'/').unwrap_or((rest, ""));
    let (service_port, path) = match crate::split::find(after, b'/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let Some((service, port)) = crate::split::once(service_port, b':') else {
        return ApiRoute::BadServicePath(
            "expected /api/v1/agents/{id}/proxy/{namespace}/{service}:{port}/{path}".into(),
        );
    };
    if !valid_name(namespace) || !valid_name(service) || !valid_port(port) {
        return ApiRoute::BadServicePath(format!(
            "invalid namespace, service or port in {:?}",
            rest.chars().take(120).collect::<String>()
        ));
    }
    // "/{namespace}/{service}:{port}{path}", without the formatting machinery (every request).
    let mut full = String::with_capacity(1 + rest.len() + 1);
    full.push('/');
    full.push_str(namespace);
    full.push('/');
    full.push_str(service);
    full.push(':');
    full.push_str(port);
    full.push_str(path);
    ApiRoute::ServiceProxy {
        agent_id,
        path: full,
    }
}

/// Classifies a request path (as received: percent-encoding untouched).
pub fn classify(path: &str) -> ApiRoute {
    match path {
        "/healthz" => return ApiRoute::Healthz,
        "/readyz" => return ApiRoute::Readyz,
        "/metrics" => return ApiRoute::Metrics,
        "/api/v1/agents" | "/api/v1/agents/" => return ApiRoute::Agents,
        "/api/v1/events" => return ApiRoute::Events,
        "/api/v1/webhooks/git" => return ApiRoute::GitWebhook,
        tunnel::PATH => return ApiRoute::Tunnel,
        p if crate::dashboard::PATHS.contains(&p) => return ApiRoute::Dashboard,
        _ => {}
    }
    if let Some(rest) = path.strip_prefix(K8S_PROXY_PREFIX) {
        if rest.is_empty() {
            return ApiRoute::K8sProxy { path: "/".into() };
        }
        if rest.starts_with('/') {
            return ApiRoute::K8sProxy { path: rest.into() };
        }
        return ApiRoute::NotFound;
    }
    if let Some(rest) = path.strip_prefix("/api/v1/agents/") {
        let (id, after) = rest.split_once('/').unwrap_or((rest, ""));
        // Canonical decimal only ("07" is not agent 7), and ids start at 1.
        let canonical = !id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit());
        let agent_id = match id.parse::<u64>() {
            Ok(n) if n > 0 && canonical => n,
            _ => return ApiRoute::NotFound,
        };
        if after.is_empty() {
            return ApiRoute::Agent(agent_id);
        }
        if let Some(target) = after.strip_prefix("proxy/") {
            return parse_service_proxy(agent_id, target);
        }
        match after {
            "views" | "views/" => return ApiRoute::Views(agent_id),
            "events" => return ApiRoute::AgentEvents(agent_id),
            "config" => return ApiRoute::AgentConfig(agent_id),
            "gitops" => return ApiRoute::AgentGitops(agent_id),
            "access" => return ApiRoute::AgentAccess(agent_id),
            _ => {}
        }
        if let Some(name) = after.strip_prefix("views/")
            && valid_view_name(name)
        {
            return ApiRoute::View {
                agent_id,
                name: name.to_owned(),
            };
        }
        if let Some(kind) = after.strip_prefix("cache/") {
            return ApiRoute::Cache {
                agent_id,
                kind: kind.to_owned(),
            };
        }
    }
    ApiRoute::NotFound
}

/// Handles one request from `peer`; never fails (errors are responses).
pub async fn handle(
    state: Arc<KasState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    handle_on(state, req, peer, None).await
}

/// [`handle`] for a request of one of the API's HTTP connections: `sleep` is the connection's
/// reusable timer, which a proxied request's response timeout takes (passed along, not put in the
/// request's extensions: that map and its entry are allocations per request).
async fn handle_on(
    state: Arc<KasState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    sleep: Option<lazy_timer::ConnectionSleep>,
) -> Response<ResponseBody> {
    let arrived = Instant::now();
    let request_id = state.next_request_id();
    let route = classify(req.uri().path());
    let label = route.label();
    let span = tracing::info_span!(
        "http",
        request_id,
        method = %req.method(),
        route = label,
        agent_id = tracing::field::Empty,
        user = tracing::field::Empty,
        acted_as = tracing::field::Empty,
        connection_id = tracing::field::Empty,
        stream = tracing::field::Empty,
    );
    let style = route.error_style();
    let mut audit = None;
    let result = dispatch(
        &state, req, peer, route, &span, request_id, &mut audit, sleep,
    )
    .instrument(span.clone())
    .await;
    let resp = result.unwrap_or_else(|e| e.into_response(style));
    let status = resp.status().as_u16();
    // One audit record per user request, written when its response ends; an upgraded session
    // (101) writes its own when the session ends.
    let resp = match audit {
        Some(ctx) if status != 101 => {
            resp.map(|body| crate::audit::audited(body, ctx, status, state.audit.clone()))
        }
        _ => resp,
    };
    let elapsed = arrived.elapsed();
    state.metrics.answered(label, status, elapsed);
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| match label {
        "healthz" | "readyz" | "metrics" => {
            tracing::debug!(status, elapsed_ms, "request answered")
        }
        _ => tracing::info!(status, elapsed_ms, "request answered"),
    });
    resp
}

/// A refusal of the users gate ([`crate::users::UserGate`]) as the HTTP answer: 401, 403, or 429
/// with `Retry-After`.
impl From<crate::users::GateError> for ApiError {
    fn from(e: crate::users::GateError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let error = ApiError::new(status, e.to_string());
        match e {
            crate::users::GateError::RateLimited { retry_after } => error.retry_after(retry_after),
            crate::users::GateError::Denied(_) | crate::users::GateError::Backend(_) => error,
        }
    }
}

fn only_get(req: &Request<Incoming>) -> Result<(), ApiError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed here", req.method()),
        ))
    }
}

/// Who is asking for what, for the audit log: every authorised request that is not public (a
/// public read without a token is recorded with no user). `None` when neither the audit log nor
/// the traffic recording is on.
fn audit_context(
    state: &KasState,
    req: &Request<Incoming>,
    route: &ApiRoute,
    grant: &Grant,
    request_id: u64,
) -> Option<crate::audit::AuditContext> {
    if !state.audit.wants_records() {
        return None;
    }
    let (user, token_kind, agent_id) = match grant {
        Grant::Public => return None,
        Grant::User(u) => (
            Some(u.name.clone()),
            Some(u.kind.as_str()),
            Some(u.agent_id),
        ),
        Grant::Read(r) => (
            r.user.clone(),
            None,
            match r.target {
                ReadTarget::Agent(id) => Some(id),
                _ => None,
            },
        ),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    Some(crate::audit::AuditContext {
        request_id,
        user,
        token_kind,
        acted_as: Default::default(),
        agent_id,
        method: req.method().as_str().to_owned(),
        route: route.label(),
        path: crate::audit::redact_query(&path),
        content_length: req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or_else(|| http_body::Body::is_end_stream(req.body()).then_some(0)),
        arrived: Instant::now(),
    })
}

/// Enforces `route`'s access for a request from `peer` carrying `authorization`; the grant the
/// handler works with, or the error to answer (401, 403, 429).
pub fn authorize(
    state: &KasState,
    route: &ApiRoute,
    authorization: Option<&[u8]>,
    peer: SocketAddr,
) -> Result<Grant, ApiError> {
    match route.access() {
        Access::Public => Ok(Grant::Public),
        Access::Read(target) => {
            read_access::authorize(state, authorization, target, peer.ip()).map(Grant::Read)
        }
        Access::User { agent_in_url } => state
            .users
            .authorize(authorization, agent_in_url, peer.ip())
            .map(Grant::User)
            .map_err(ApiError::from),
    }
}

/// The routes' handlers whose futures are large (the proxy's holds the request, its head, the
/// lease and the stream across several awaits) are boxed where they are awaited: this future, and
/// [`handle`]'s and hyper's around it, then stay small, so moving them per request (into
/// `instrument`, into hyper's in-flight slot) copies little, and the large one is moved once,
/// into its box.
#[allow(clippy::too_many_arguments)] // one request's context, passed once
async fn dispatch(
    state: &Arc<KasState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    route: ApiRoute,
    span: &tracing::Span,
    request_id: u64,
    audit: &mut Option<crate::audit::AuditContext>,
    sleep: Option<lazy_timer::ConnectionSleep>,
) -> Result<Response<ResponseBody>, ApiError> {
    let grant = if state.users.asks_gitlab() && matches!(route.access(), Access::User { .. }) {
        // The gate may ask GitLab (blocking HTTP): off the executor.
        let (st, r, auth) = (
            state.clone(),
            route.clone(),
            authorization(&req).map(<[u8]>::to_vec),
        );
        smol::unblock(move || authorize(&st, &r, auth.as_deref(), peer)).await?
    } else {
        authorize(state, &route, authorization(&req), peer)?
    };
    if let Some(ctx) = audit_context(state, &req, &route, &grant, request_id) {
        // The upgrade path takes it from the request for the session's record.
        req.extensions_mut().insert(ctx.clone());
        *audit = Some(ctx);
    }
    match (&grant, &route) {
        (Grant::User(user), _) => {
            span.record("agent_id", user.agent_id);
            span.record("user", user.name.as_str());
        }
        (Grant::Read(read), _) => {
            if let Some(user) = &read.user {
                span.record("user", user.as_str());
            }
            if let ReadTarget::Agent(id) = read.target {
                span.record("agent_id", id);
            }
        }
        (Grant::Public, _) => {}
    }
    // Views and events of an agent another replica holds are served by that replica.
    if let ApiRoute::Views(id) | ApiRoute::View { agent_id: id, .. } | ApiRoute::AgentEvents(id) =
        route
        && let Some(replicas) = &state.replicas
        && let Some(holder) = crate::peer::api_holder(state, id, &req)
    {
        return Box::pin(replicas.peers.forward_api(state, holder, id, req)).await;
    }
    match (route, grant) {
        (ApiRoute::Healthz, Grant::Public) => {
            only_get(&req)?;
            Ok(response::with_body(StatusCode::OK, "text/plain", "ok\n"))
        }
        (ApiRoute::Readyz, Grant::Public) => {
            only_get(&req)?;
            Ok(readiness(state))
        }
        (ApiRoute::Metrics, Grant::Public) => {
            only_get(&req)?;
            let mut text = state.metrics.render(&state.snapshot());
            if let Some(configs) = &state.agent_config {
                text.push_str(&configs.render_metrics());
            }
            if let Some(poller) = &state.gitops {
                text.push_str(&poller.render_metrics());
            }
            text.push_str(&state.access_metrics.render());
            if let Some(replicas) = &state.replicas {
                text.push_str(&replicas.render_metrics());
            }
            text.push_str(&state.upgrades.render_metrics());
            text.push_str(&state.audit.render_metrics());
            Ok(response::with_body(
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                text,
            ))
        }
        (ApiRoute::Agents, Grant::Read(read)) => {
            only_get(&req)?;
            Ok(response::json(
                StatusCode::OK,
                &agents::list(state, &read.scope),
            ))
        }
        (ApiRoute::Agent(id), Grant::Read(_)) => {
            only_get(&req)?;
            match agents::get(state, id) {
                Some(v) => Ok(response::json(StatusCode::OK, &v)),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("agent {id} does not exist"),
                )),
            }
        }
        (ApiRoute::BadServicePath(message), Grant::Public) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, message))
        }
        (ApiRoute::Dashboard, Grant::Public) => {
            only_get(&req)?;
            crate::dashboard::asset(req.uri().path()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no route for {}", req.uri().path()),
                )
            })
        }
        (ApiRoute::Views(agent_id), Grant::Read(_)) => {
            only_get(&req)?;
            views::views(state, agent_id)
        }
        (ApiRoute::View { agent_id, name }, Grant::Read(_)) => {
            only_get(&req)?;
            views::view(state, agent_id, &name)
        }
        (ApiRoute::AgentConfig(agent_id), Grant::Read(_)) => {
            only_get(&req)?;
            agent_config::get(state, agent_id)
        }
        (ApiRoute::AgentGitops(agent_id), Grant::Read(_)) => {
            only_get(&req)?;
            gitops::get(state, agent_id)
        }
        (ApiRoute::AgentAccess(agent_id), Grant::Read(_)) => {
            only_get(&req)?;
            access::get(state, agent_id)
        }
        (ApiRoute::GitWebhook, Grant::Public) => Box::pin(agent_config::webhook(state, req)).await,
        (ApiRoute::Tunnel, Grant::Public) => tunnel::upgrade(state, req, peer),
        (ApiRoute::Events, Grant::Read(read)) => {
            only_get(&req)?;
            let who = owner(peer, &read);
            events::stream(&state.events, read.scope, who)
        }
        (ApiRoute::AgentEvents(agent_id), Grant::Read(read)) => {
            only_get(&req)?;
            if !state.mirrors.has(agent_id) && agents::get(state, agent_id).is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("agent {agent_id} does not exist"),
                ));
            }
            let who = owner(peer, &read);
            events::stream(&state.events, read.scope, who)
        }
        (ApiRoute::Cache { agent_id, kind }, Grant::User(user)) => {
            only_get(&req)?;
            let target = cache::target(agent_id, &kind, req.uri().query())?;
            Box::pin(proxy::proxy(state, req, user, target, span, sleep)).await
        }
        (ApiRoute::NotFound, Grant::Public) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route for {}", req.uri().path()),
        )),
        (ApiRoute::ServiceProxy { agent_id, path }, Grant::User(user)) => {
            let target = Target {
                service: protocol::service::SERVICE_PROXY,
                method: None,
                path: with_query(path, &req),
                agent_in_url: Some(agent_id),
            };
            Box::pin(proxy::proxy(state, req, user, target, span, sleep)).await
        }
        (ApiRoute::K8sProxy { path }, Grant::User(user)) => {
            let target = Target {
                service: protocol::service::K8S_API,
                method: None,
                path: with_query(path, &req),
                agent_in_url: None,
            };
            Box::pin(proxy::proxy(state, req, user, target, span, sleep)).await
        }
        // `authorize` grants what `access` declares: nothing else can reach here.
        (route, grant) => {
            tracing::error!(?route, ?grant, "route and grant disagree");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: route and access disagree",
            ))
        }
    }
}

/// The owner of an event stream: the client's address and its user, if it authenticated.
fn owner(peer: SocketAddr, read: &ReadGrant) -> Owner {
    Owner::client(peer.ip(), read.user.as_deref())
}

fn authorization(req: &Request<Incoming>) -> Option<&[u8]> {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
}

fn with_query(mut path: String, req: &Request<Incoming>) -> String {
    if let Some(q) = req.uri().query() {
        path.push('?');
        path.push_str(q);
    }
    path
}

fn readiness(state: &KasState) -> Response<ResponseBody> {
    let mut problems = Vec::new();
    if state.is_shutting_down() {
        problems.push("shutting down");
    }
    if !state.auth_backend_ok() {
        problems.push("agent authentication backend not usable");
    }
    // Redis down is not a reason to leave the load balancer: the replica still serves its own agents.
    let degraded: Vec<&str> = (state.redis_up() == Some(false))
        .then_some("redis unreachable: serving this replica's own agents only")
        .into_iter()
        .collect();
    if problems.is_empty() && degraded.is_empty() {
        response::json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else if problems.is_empty() {
        response::json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "degraded": degraded}),
        )
    } else {
        response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not ready", "problems": problems}),
        )
    }
}

/// Time allowed for a client's TLS handshake on the HTTPS API.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A TLS acceptor for the HTTPS API from PEM files: the same certificate loading as the agent
/// listener, but with ALPN `http/1.1` (the agent listener's ALPN is the tunnel's own).
pub fn https_acceptor(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<futures_rustls::TlsAcceptor, tunnel_tls::TlsError> {
    let base = tunnel_tls::server_config(cert_file, key_file, None)?;
    let mut config = (*base).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(futures_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves HTTP (HTTPS with `tls`) on `listener` until `stop` closes; then every connection finishes
/// its in-flight request and closes (a graceful shutdown). Each connection task holds a clone of
/// `active`, so the caller can wait for them all to end.
pub async fn serve(
    state: Arc<KasState>,
    listener: smol::net::TcpListener,
    tls: Option<futures_rustls::TlsAcceptor>,
    stop: async_channel::Receiver<()>,
    active: async_channel::Sender<()>,
) {
    // Bounded by `stop`: every iteration accepts one connection or ends.
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok((tcp, peer))) => {
                let _ = tcp.set_nodelay(true);
                // Reads that skip the socket when its queue is known to be empty.
                let tcp = runtime_smol::TcpIo::from(tcp);
                let (state2, stop, active) = (state.clone(), stop.clone(), active.clone());
                let tls = tls.clone();
                state.spawner.spawn_connection(async move {
                    match tls {
                        None => serve_connection(state2, tcp, peer, stop, active).await,
                        Some(acceptor) => {
                            let handshake = futures_lite::future::or(
                                async { Some(acceptor.accept(tcp).await) },
                                async {
                                    smol::Timer::after(TLS_HANDSHAKE_TIMEOUT).await;
                                    None
                                },
                            )
                            .await;
                            match handshake {
                                Some(Ok(io)) => {
                                    serve_connection(state2, io, peer, stop, active).await
                                }
                                Some(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "HTTPS handshake failed")
                                }
                                None => tracing::debug!(%peer, "HTTPS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    tracing::debug!("HTTP listener closed");
}

async fn serve_connection<I>(
    state: Arc<KasState>,
    io: I,
    peer: SocketAddr,
    stop: async_channel::Receiver<()>,
    _active: async_channel::Sender<()>,
) where
    I: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static,
{
    // The one timer of the connection, which hyper's header read timeout and the proxied requests'
    // response timeouts take in turn (no timer registered with the reactor per request).
    let sleep = lazy_timer::ConnectionSleep::default();
    let timer = lazy_timer::LazyTimer::for_connection(&sleep);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (state, sleep) = (state.clone(), sleep.clone());
        async move { Ok::<_, Infallible>(handle_on(state, req, peer, Some(sleep)).await) }
    });
    // `with_upgrades`: a 101 answer hands the connection to the upgraded session ([`upgrade`]).
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(timer)
        .serve_connection(http_io::HttpIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let finished = futures_lite::future::or(async { Some(conn.as_mut().await) }, async {
        let _ = stop.recv().await;
        None
    })
    .await;
    let result = match finished {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_route_declares_its_access() {
        let user = |agent_in_url| Access::User { agent_in_url };
        let cases = [
            ("/healthz", Access::Public),
            ("/readyz", Access::Public),
            ("/metrics", Access::Public),
            ("/", Access::Public),
            ("/ui/dashboard.js", Access::Public),
            ("/nope", Access::Public),
            ("/api/v1/agents/3/proxy/x", Access::Public),
            ("/api/v1/agents", Access::Read(ReadTarget::AllAgents)),
            ("/api/v1/agents/", Access::Read(ReadTarget::AllAgents)),
            ("/api/v1/agents/7", Access::Read(ReadTarget::Agent(7))),
            ("/api/v1/agents/7/views", Access::Read(ReadTarget::Agent(7))),
            (
                "/api/v1/agents/7/views/nodes",
                Access::Read(ReadTarget::Agent(7)),
            ),
            (
                "/api/v1/agents/7/events",
                Access::Read(ReadTarget::Agent(7)),
            ),
            ("/api/v1/events", Access::Read(ReadTarget::AllAgents)),
            ("/api/v1/agents/7/cache/pods", user(Some(7))),
            ("/api/v1/agents/7/proxy/default/web:80/x", user(Some(7))),
            ("/k8s-proxy/api/v1/pods", user(None)),
        ];
        for (path, access) in cases {
            assert_eq!(classify(path).access(), access, "{path}");
        }
    }

    #[test]
    fn classifies_routes() {
        assert_eq!(classify("/healthz"), ApiRoute::Healthz);
        assert_eq!(classify("/api/v1/agents"), ApiRoute::Agents);
        assert_eq!(classify("/api/v1/agents/7"), ApiRoute::Agent(7));
        assert_eq!(classify("/api/v1/agents/07"), ApiRoute::NotFound);
        assert_eq!(classify("/api/v1/agents/0"), ApiRoute::NotFound);
        assert_eq!(classify("/api/v1/agents/+7"), ApiRoute::NotFound);
        assert_eq!(classify("/api/v1/agents/ 7"), ApiRoute::NotFound);
        assert_eq!(
            classify("/api/v1/agents/18446744073709551616"),
            ApiRoute::NotFound
        );
        assert_eq!(
            classify("/api/v1/agents/10/proxy/ns/svc:http"),
            ApiRoute::ServiceProxy {
                agent_id: 10,
                path: "/ns/svc:http/".into()
            }
        );
        assert_eq!(classify("/api/v1/agents/x/proxy/a/b:1"), ApiRoute::NotFound);
        assert_eq!(
            classify("/k8s-proxy/api/v1/pods"),
            ApiRoute::K8sProxy {
                path: "/api/v1/pods".into()
            }
        );
        assert_eq!(
            classify("/k8s-proxy"),
            ApiRoute::K8sProxy { path: "/".into() }
        );
        assert_eq!(classify("/k8s-proxyx"), ApiRoute::NotFound);
        assert_eq!(
            classify("/api/v1/agents/3/proxy/monitoring/prometheus:9090/api/v1/query"),
            ApiRoute::ServiceProxy {
                agent_id: 3,
                path: "/monitoring/prometheus:9090/api/v1/query".into()
            }
        );
        assert_eq!(
            classify("/api/v1/agents/3/proxy/default/web:http"),
            ApiRoute::ServiceProxy {
                agent_id: 3,
                path: "/default/web:http/".into()
            }
        );
        for bad in [
            "/api/v1/agents/3/proxy/default/web",
            "/api/v1/agents/3/proxy/../web:80/x",
            "/api/v1/agents/3/proxy/Default/web:80/x",
            "/api/v1/agents/3/proxy/default/web:/x",
            "/api/v1/agents/3/proxy/",
        ] {
            assert!(
                matches!(classify(bad), ApiRoute::BadServicePath(_)),
                "{bad}: {:?}",
                classify(bad)
            );
        }
        assert_eq!(classify("/"), ApiRoute::Dashboard);
        assert_eq!(classify("/ui/dashboard.js"), ApiRoute::Dashboard);
        assert_eq!(classify("/ui/other.js"), ApiRoute::NotFound);
        assert_eq!(classify("/api/v1/events"), ApiRoute::Events);
        assert_eq!(
            classify("/api/v1/agents/4/events"),
            ApiRoute::AgentEvents(4)
        );
        assert_eq!(classify("/api/v1/agents/4/views"), ApiRoute::Views(4));
        assert_eq!(
            classify("/api/v1/agents/4/config"),
            ApiRoute::AgentConfig(4)
        );
        assert_eq!(
            classify("/api/v1/agents/4/config").access(),
            Access::Read(ReadTarget::Agent(4))
        );
        assert_eq!(classify("/api/v1/webhooks/git"), ApiRoute::GitWebhook);
        assert_eq!(classify("/api/v1/webhooks/git/x"), ApiRoute::NotFound);
        assert_eq!(classify("/api/v1/agents/4/views/"), ApiRoute::Views(4));
        assert_eq!(
            classify("/api/v1/agents/4/views/pods_by_phase"),
            ApiRoute::View {
                agent_id: 4,
                name: "pods_by_phase".into()
            }
        );
        assert_eq!(classify("/api/v1/agents/4/views/a/b"), ApiRoute::NotFound);
        assert_eq!(
            classify("/api/v1/agents/4/cache/apps/v1/Deployment"),
            ApiRoute::Cache {
                agent_id: 4,
                kind: "apps/v1/Deployment".into()
            }
        );
        assert_eq!(classify("/api/v1/agents/x/views"), ApiRoute::NotFound);
    }
}
