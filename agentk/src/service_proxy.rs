//! The `service-proxy` service: an HTTP request for an in-cluster Service. agentk resolves the
//! Service's cluster IP and port from its [`ServiceInformer`] (a watch per Service, started by
//! the first request for it: no API call per request), and forwards the request there over
//! HTTP/1.1 on a pooled keep-alive connection driven by the stream's own task
//! ([`crate::service_pool`]), streaming both ways; see protocol/SERVICES.md §4.

use http::{HeaderValue, Request, Uri};
use protocol::proto::RequestHead;
use runtime_tokio::{RecvStream, SendStream};

use crate::body::RequestBody;
use crate::forward::{Exchange, Guarded, Outcome};
use crate::head::http_head;
use crate::informer::ServiceInformer;
use crate::proxy_path::{self, ProxyTarget, ResolveError};
use crate::service_pool::{self, ServicePool};

/// What this service uses: the Services it resolves and the connections it forwards on.
pub struct Clients<'a> {
    pub services: &'a ServiceInformer,
    pub pool: &'a ServicePool,
}

/// Serves one service-proxy stream.
pub async fn serve(
    clients: Clients<'_>,
    head: &RequestHead,
    recv: RecvStream,
    send: SendStream,
) -> Outcome {
    let (body, reset) = RequestBody::from_tunnel(recv);
    let mut ex = Exchange::new(send, reset, head.timeout_ms);
    let (parsed, target) =
        match http_head(head).and_then(|h| Ok((h, proxy_path::parse(&head.path)?))) {
            Ok(x) => x,
            Err(bad) => return ex.answer_status(400, "BadRequest", &bad.0, None).await,
        };
    let authority = match lookup(clients.services, &target, &mut ex).await {
        Ok(a) => a,
        Err(outcome) => return outcome,
    };
    // Origin-form, with the Host a client of the service would send (`clusterIP:port`).
    let (uri, host) = match (
        Uri::try_from(target.path_and_query),
        HeaderValue::from_str(&authority),
    ) {
        (Ok(u), Ok(h)) => (u, h),
        (Err(e), _) => {
            return ex
                .answer_status(400, "BadRequest", &format!("invalid target URI: {e}"), None)
                .await;
        }
        (_, Err(e)) => {
            return ex
                .answer_status(
                    400,
                    "BadRequest",
                    &format!("invalid target host: {e}"),
                    None,
                )
                .await;
        }
    };
    tracing::debug!(%authority, %uri, "proxying to service");
    let mut request = Request::new(body);
    *request.method_mut() = parsed.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = parsed.headers;
    request.headers_mut().insert(http::header::HOST, host);
    service_pool::forward(clients.pool, &authority, request, &mut ex).await
}

/// Resolves `clusterIP:port` of the target's Service; on failure, the stream has been answered.
async fn lookup(
    services: &ServiceInformer,
    target: &ProxyTarget,
    ex: &mut Exchange,
) -> Result<String, Outcome> {
    let state = match ex
        .guard(services.lookup(&target.namespace, &target.service))
        .await
    {
        Guarded::Done(s) => s,
        Guarded::Cancelled(error) => {
            return Err(Outcome::Cancelled {
                status: None,
                error,
            });
        }
        Guarded::TimedOut => return Err(ex.answer_timeout().await),
    };
    let name = || format!("{}/{}", target.namespace, target.service);
    let object = match state {
        Ok(Some(object)) => object,
        Ok(None) => {
            return Err(ex
                .answer_status(
                    404,
                    "NotFound",
                    &format!(
                        "services \"{}\" not found in namespace \"{}\"",
                        target.service, target.namespace
                    ),
                    None,
                )
                .await);
        }
        Err(failure) if failure.answered => {
            return Err(ex
                .answer_status(
                    502,
                    "InternalError",
                    &format!("service {}: {}", name(), failure.message),
                    Some(failure.kind),
                )
                .await);
        }
        Err(failure) => {
            return Err(ex
                .answer_status(
                    502,
                    "ServiceUnavailable",
                    &format!(
                        "agentk cannot read service {} from the API server: {}",
                        name(),
                        failure.message
                    ),
                    Some(failure.kind),
                )
                .await);
        }
    };
    match proxy_path::resolve(&object, &target.port) {
        Ok(a) => Ok(a),
        Err(e @ ResolveError::Malformed) => Err(ex
            .answer_status(
                502,
                "InternalError",
                &format!("service {}: {e}", name()),
                Some("lookup"),
            )
            .await),
        Err(e) => Err(ex
            .answer_status(
                503,
                "ServiceUnavailable",
                &format!("service {}: {e}", name()),
                None,
            )
            .await),
    }
}
