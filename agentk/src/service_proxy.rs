//! The `service-proxy` service: an HTTP request for an in-cluster Service. agentk reads the Service
//! from the API server, resolves its cluster IP and port, and forwards the request there over
//! HTTP/1.1, streaming both ways; see protocol/SERVICES.md §4.

use http::{Request, Uri};
use http_body_util::{BodyExt, Limited};
use protocol::proto::RequestHead;
use runtime_tokio::{RecvStream, SendStream};

use crate::body::RequestBody;
use crate::forward::{Exchange, Guarded, Outcome, forward};
use crate::head::http_head;
use crate::proxy_path::{self, ProxyTarget, ResolveError};
use crate::upstream::{HttpService, classify};

/// Largest Service object agentk reads.
const MAX_SERVICE_OBJECT: usize = 1024 * 1024;

/// The API path of the Service object (names are validated DNS labels, no escaping needed).
pub fn service_api_path(target: &ProxyTarget) -> String {
    format!(
        "/api/v1/namespaces/{}/services/{}",
        target.namespace, target.service
    )
}

/// The two clients this service uses.
pub struct Clients<'a> {
    pub kube: &'a HttpService,
    pub plain: &'a HttpService,
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
    let authority = match lookup(clients.kube, &target, &mut ex).await {
        Ok(a) => a,
        Err(outcome) => return outcome,
    };
    let uri = match format!("http://{authority}{}", target.path_and_query).parse::<Uri>() {
        Ok(u) => u,
        Err(e) => {
            return ex
                .answer_status(400, "BadRequest", &format!("invalid target URI: {e}"), None)
                .await;
        }
    };
    tracing::debug!(%uri, "proxying to service");
    let mut request = Request::new(body);
    *request.method_mut() = parsed.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = parsed.headers;
    forward(clients.plain, request, &mut ex).await
}

/// Reads the Service and resolves `clusterIP:port`; on failure, the stream has been answered.
async fn lookup(
    kube: &HttpService,
    target: &ProxyTarget,
    ex: &mut Exchange,
) -> Result<String, Outcome> {
    let get = async {
        let mut request = Request::new(RequestBody::empty());
        *request.uri_mut() = service_api_path(target)
            .parse()
            .map_err(|e: http::uri::InvalidUri| -> crate::upstream::BoxError { e.into() })?;
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let response = tower::ServiceExt::oneshot(kube.clone(), request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_SERVICE_OBJECT)
            .collect()
            .await?
            .to_bytes();
        Ok::<_, crate::upstream::BoxError>((status, body))
    };
    let (status, body) = match ex.guard(get).await {
        Guarded::Done(Ok(x)) => x,
        Guarded::Done(Err(e)) => {
            let (kind, message) = classify(e.as_ref());
            return Err(ex
                .answer_status(
                    502,
                    "ServiceUnavailable",
                    &format!("agentk cannot read the service from the API server: {message}"),
                    Some(kind),
                )
                .await);
        }
        Guarded::Cancelled(error) => {
            return Err(Outcome::Cancelled {
                status: None,
                error,
            });
        }
        Guarded::TimedOut => return Err(ex.answer_timeout().await),
    };
    let name = format!("{}/{}", target.namespace, target.service);
    if status == http::StatusCode::NOT_FOUND {
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
    if !status.is_success() {
        return Err(ex
            .answer_status(
                502,
                "InternalError",
                &format!("the API server answered {status} for service {name}"),
                Some("lookup"),
            )
            .await);
    }
    let object: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Err(ex
                .answer_status(
                    502,
                    "InternalError",
                    &format!("service {name}: invalid JSON from the API server: {e}"),
                    Some("lookup"),
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
                &format!("service {name}: {e}"),
                Some("lookup"),
            )
            .await),
        Err(e) => Err(ex
            .answer_status(
                503,
                "ServiceUnavailable",
                &format!("service {name}: {e}"),
                None,
            )
            .await),
    }
}
