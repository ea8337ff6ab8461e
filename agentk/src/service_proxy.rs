//! The `service-proxy` service: an HTTP request for an in-cluster Service. agentk resolves the
//! Service's cluster IP and port from its [`ServiceInformer`] (a watch per Service, started by
//! the first request for it: no API call per request), and forwards the request there over
//! HTTP/1.1 on a pooled keep-alive connection driven by the stream's own task
//! ([`crate::service_pool`]), streaming both ways; see protocol/SERVICES.md §4.

use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use protocol::proto::RequestHead;
use runtime_tokio::{RecvStream, SendStream};

use crate::body::RequestBody;
use crate::forward::{Exchange, Guarded, Outcome};
#[cfg(doc)]
use crate::head::http_head;
use crate::head::{BadRequest, check_path_form, headers_from_tunnel, parse_path, request_method};
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
    let (method, headers, target, uri) = match service_head(head) {
        Ok(x) => x,
        Err(bad) => return ex.answer_status(400, "BadRequest", &bad.0, None).await,
    };
    let authority = match lookup(clients.services, &target, &mut ex).await {
        Ok(a) => a,
        Err(outcome) => return outcome,
    };
    // Origin-form, with the Host a client of the service would send (`clusterIP:port`).
    let host = match HeaderValue::from_str(&authority) {
        Ok(h) => h,
        Err(e) => {
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
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request.headers_mut().insert(http::header::HOST, host);
    service_pool::forward(clients.pool, &authority, request, &mut ex).await
}

/// The request's method, headers, Service and upstream URI, the path parsed once: split into the
/// Service and the upstream path, whose origin-form URI is parsed (not the whole path as well, as
/// [`http_head`] would). The same answers, in the same order, as [`http_head`] then
/// [`proxy_path::parse`]: a path `http` cannot parse is refused as [`parse_path`] refuses it
/// (the prefix before the upstream path is DNS labels, a port and slashes, which `http` accepts, so
/// the whole path parses exactly when the upstream path does).
fn service_head(
    head: &RequestHead,
) -> Result<(Method, HeaderMap, ProxyTarget<'_>, Uri), BadRequest> {
    let method = request_method(head)?;
    let mut target = proxy_path::parse(&head.path);
    let uri = target
        .as_mut()
        .ok()
        .map(|t| Uri::try_from(std::mem::take(&mut t.path_and_query)));
    match &uri {
        Some(Ok(_)) => check_path_form(&head.path)?,
        _ => {
            parse_path(&head.path)?;
        }
    }
    let headers = headers_from_tunnel(&head.headers)?;
    let target = target?;
    match uri {
        Some(Ok(uri)) => Ok((method, headers, target, uri)),
        Some(Err(e)) => Err(BadRequest(format!("invalid target URI: {e}"))),
        None => Err(BadRequest("invalid service-proxy path".into())),
    }
}

/// Resolves `clusterIP:port` of the target's Service; on failure, the stream has been answered.
async fn lookup(
    services: &ServiceInformer,
    target: &ProxyTarget<'_>,
    ex: &mut Exchange,
) -> Result<String, Outcome> {
    let state = match ex
        .guard(services.lookup(target.namespace, target.service))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::http_head;
    use protocol::proto::Header;

    fn head(path: &str, headers: Vec<Header>) -> RequestHead {
        RequestHead {
            service: protocol::service::SERVICE_PROXY.into(),
            method: "GET".into(),
            path: path.into(),
            headers,
            timeout_ms: 0,
            impersonation: None,
        }
    }

    /// The old way: the whole head, then the service-proxy path.
    fn twice(head: &RequestHead) -> Result<String, String> {
        http_head(head).map_err(|e| e.0)?;
        let t = proxy_path::parse(&head.path).map_err(|e| e.0)?;
        Ok(t.path_and_query)
    }

    #[test]
    fn the_path_parsed_once_gives_the_same_answers() {
        let bad_header = vec![Header {
            name: "bad header".into(),
            value: bytes::Bytes::from_static(b"x"),
        }];
        for path in [
            "/default/nginx:80/small",
            "/default/nginx:80",
            "/default/nginx:80?q=1",
            "/default/nginx:http/a/b?c=d&e",
            "/default/nginx:80/a#frag",
            "/default/nginx:80/a b",
            "/default/nginx:80/a\u{7f}",
            "/default/ng inx:80/a",
            "/Default/nginx:80/a",
            "/default/nginx/a",
            "/default/nginx:0/a",
            "default/nginx:80/a",
            "/default/nginx:80/é",
            "",
        ] {
            for headers in [vec![], bad_header.clone()] {
                let h = head(path, headers);
                let once = service_head(&h)
                    .map(|(_, _, _, uri)| uri.to_string())
                    .map_err(|e| e.0);
                assert_eq!(once, twice(&h), "{path:?}");
            }
        }
    }
}
