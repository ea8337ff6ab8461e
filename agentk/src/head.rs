//! Mapping between tunnel heads and HTTP: request heads to HTTP method, URI path and headers;
//! HTTP responses to response heads; and the Kubernetes `Status` answers agentk produces itself.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode};
use protocol::proto::{Header, RequestHead, ResponseHead};
use protocol::service::HeaderRule;

/// Marks a response agentk produced because the upstream could not be reached
/// (protocol/SERVICES.md §2.3).
pub const TUNNEL_ERROR_HEADER: &str = "x-tunnel-error";

/// A request head that cannot be turned into an HTTP request: answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// The HTTP method, path and headers of a tunnel request head.
#[derive(Debug, Clone)]
pub struct HttpHead {
    pub method: Method,
    pub path: PathAndQuery,
    pub headers: HeaderMap,
}

/// Parses the HTTP-shaped parts of `head`. Headers that must not cross the tunnel (the one
/// forwarding rule, [`HeaderRule`]: hop-by-hop and `Connection`-named headers, `Host`, credentials
/// such as `Authorization` and `Cookie`, `Impersonate-*`, front-proxy identity assertions) are
/// dropped even if kas sent them: agentk never trusts a head for them. So agentk's own credentials
/// and identity are the only ones that reach the upstream; in particular no client can make the API
/// server act as another user through agentk (GHSA-gvh9-xgrq-r8hw). When kas decides whom a
/// request acts as (access control), it says so in a dedicated, typed field of the request head,
/// which agentk maps to impersonation itself ([`crate::k8s_api::api_request`] is that one place);
/// a header never can.
pub fn http_head(head: &RequestHead) -> Result<HttpHead, BadRequest> {
    let method = request_method(head)?;
    let path = parse_path(&head.path)?;
    let headers = headers_from_tunnel(&head.headers)?;
    Ok(HttpHead {
        method,
        path,
        headers,
    })
}

/// The request head's method, as [`http_head`] parses it.
pub fn request_method(head: &RequestHead) -> Result<Method, BadRequest> {
    Method::from_bytes(head.method.as_bytes())
        .map_err(|_| BadRequest(format!("invalid HTTP method {:?}", head.method)))
}

/// A path and query that must be origin-form (`/...`).
pub fn parse_path(path: &str) -> Result<PathAndQuery, BadRequest> {
    check_path_form(path)?;
    PathAndQuery::try_from(path).map_err(|e| BadRequest(format!("invalid path {path:?}: {e}")))
}

/// [`parse_path`]'s checks before it parses: origin-form, and no fragment (which `http`'s parser
/// would drop silently).
pub fn check_path_form(path: &str) -> Result<(), BadRequest> {
    if !path.starts_with('/') {
        return Err(BadRequest(format!("path must start with '/': {path:?}")));
    }
    if path.contains('#') {
        return Err(BadRequest("path must not contain a fragment".into()));
    }
    Ok(())
}

/// Tunnel headers to an HTTP header map, keeping only forwardable ones.
pub fn headers_from_tunnel(headers: &[Header]) -> Result<HeaderMap, BadRequest> {
    let rule = HeaderRule::for_head(headers.iter().map(|h| (h.name.as_str(), h.value.as_ref())));
    headers_from_tunnel_by(&rule, headers)
}

/// Tunnel headers to an HTTP header map, keeping only what `rule` forwards (the upgrade rule for
/// upgrades, [`HeaderRule::for_upgrade_head`]).
pub fn headers_from_tunnel_by(
    rule: &HeaderRule,
    headers: &[Header],
) -> Result<HeaderMap, BadRequest> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        if let Some(why) = rule.verdict(&h.name) {
            tracing::debug!(header = %h.name, ?why, "header not forwarded");
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| BadRequest(format!("invalid header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(&h.value)
            .map_err(|_| BadRequest(format!("invalid value of header {:?}", h.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

/// An HTTP header map to tunnel headers, keeping only forwardable ones.
pub fn headers_to_tunnel(headers: &HeaderMap) -> Vec<Header> {
    let rule = HeaderRule::for_head(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    headers_to_tunnel_by(&rule, headers)
}

/// An HTTP header map to tunnel headers, keeping only what `rule` forwards.
/// The values share one buffer ([`protocol::service::pack_headers`]).
pub fn headers_to_tunnel_by(rule: &HeaderRule, headers: &HeaderMap) -> Vec<Header> {
    protocol::service::pack_headers(
        || {
            headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
        },
        |name| rule.forwards(name),
    )
}

/// The response head for an upstream HTTP response.
pub fn response_head(status: StatusCode, headers: &HeaderMap) -> ResponseHead {
    ResponseHead {
        status: status.as_u16().into(),
        headers: headers_to_tunnel(headers),
    }
}

/// A Kubernetes `Status` failure body, as the API server would send it.
pub fn status_json(code: u16, reason: &str, message: &str) -> Bytes {
    let v = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    Bytes::from(v.to_string())
}

/// A complete answer agentk produces itself: head and `Status` body. `tunnel_error` (a short kind
/// such as `connect`, `tls`, `timeout`) marks an upstream that could not be reached.
pub fn status_answer(
    code: u16,
    reason: &str,
    message: &str,
    tunnel_error: Option<&str>,
) -> (ResponseHead, Bytes) {
    let mut headers = vec![Header {
        name: "content-type".into(),
        value: Bytes::from_static(b"application/json"),
    }];
    if let Some(kind) = tunnel_error {
        headers.push(Header {
            name: TUNNEL_ERROR_HEADER.into(),
            value: Bytes::copy_from_slice(kind.as_bytes()),
        });
    }
    (
        ResponseHead {
            status: code.into(),
            headers,
        },
        status_json(code, reason, message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn head(method: &str, path: &str, headers: Vec<Header>) -> RequestHead {
        RequestHead {
            service: "k8s-api".into(),
            method: method.into(),
            path: path.into(),
            headers,
            timeout_ms: 0,
            impersonation: None,
        }
    }

    #[test]
    fn maps_method_path_and_headers() {
        let hh = http_head(&head(
            "GET",
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion=10",
            vec![
                h("Accept", "application/json"),
                h("X-Multi", "a"),
                h("x-multi", "b"),
            ],
        ))
        .expect("valid");
        assert_eq!(hh.method, Method::GET);
        assert_eq!(hh.path.path(), "/api/v1/namespaces/default/pods");
        assert_eq!(hh.path.query(), Some("watch=true&resourceVersion=10"));
        assert_eq!(hh.headers["accept"], "application/json");
        let multi: Vec<_> = hh.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, vec!["a", "b"]);
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_never_pass() {
        let hh = http_head(&head(
            "POST",
            "/api/v1/namespaces",
            vec![
                h("Authorization", "Bearer stolen"),
                h("Host", "evil"),
                h("Connection", "close"),
                h("Transfer-Encoding", "chunked"),
                h("Content-Type", "application/json"),
            ],
        ))
        .expect("valid");
        assert_eq!(hh.headers.len(), 1);
        assert!(hh.headers.contains_key("content-type"));
    }

    #[test]
    fn client_impersonation_never_reaches_the_api_server() {
        let hh = http_head(&head(
            "GET",
            "/api/v1/secrets",
            vec![
                h("Impersonate-User", "system:admin"),
                h("impersonate-group", "system:masters"),
                h("IMPERSONATE-UID", "0"),
                h("Impersonate-Extra-Scopes", "everything"),
                h("Cookie", "_gitlab_session=abc"),
                h("Proxy-Authorization", "Basic eA=="),
                h("X-Remote-User", "admin"),
                h("X-Remote-Group", "system:masters"),
                h("X-Remote-Extra-Scopes", "all"),
                h("X-Forwarded-User", "admin"),
                h("Connection", "X-Secret-Hop"),
                h("X-Secret-Hop", "1"),
                h("Accept", "application/json"),
            ],
        ))
        .expect("valid");
        let names: Vec<&str> = hh.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept"], "{names:?}");
    }

    #[test]
    fn bad_heads_are_rejected() {
        assert!(http_head(&head("GE T", "/api", vec![])).is_err());
        assert!(http_head(&head("GET", "api/v1", vec![])).is_err());
        assert!(http_head(&head("GET", "http://x/api", vec![])).is_err());
        assert!(http_head(&head("GET", "/a b", vec![])).is_err());
        assert!(http_head(&head("GET", "/api", vec![h("bad name", "x")])).is_err());
        assert!(http_head(&head("GET", "/api", vec![h("x", "a\nb")])).is_err());
    }

    #[test]
    fn response_head_filters_headers() {
        let mut m = HeaderMap::new();
        m.insert("content-type", HeaderValue::from_static("application/json"));
        m.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        m.insert("connection", HeaderValue::from_static("keep-alive"));
        let rh = response_head(StatusCode::CREATED, &m);
        assert_eq!(rh.status, 201);
        assert_eq!(rh.headers, vec![h("content-type", "application/json")]);
    }

    #[test]
    fn status_answer_is_a_kubernetes_status() {
        let (rh, body) = status_answer(502, "ServiceUnavailable", "no route", Some("connect"));
        assert_eq!(rh.status, 502);
        assert!(rh.headers.contains(&h("x-tunnel-error", "connect")));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "ServiceUnavailable");
        assert_eq!(v["code"], 502);
        assert_eq!(v["message"], "no route");
    }

    proptest! {
        #[test]
        fn header_round_trip_keeps_forwardable_headers(
            headers in prop::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,20}"), 0..8)
        ) {
            let tunnel: Vec<Header> = headers.iter().map(|(n, v)| h(n, v)).collect();
            let map = headers_from_tunnel(&tunnel).expect("valid headers");
            let back = headers_to_tunnel(&map);
            let rule = HeaderRule::for_head(tunnel.iter().map(|x| (x.name.as_str(), x.value.as_ref())));
            let expected: Vec<&Header> = tunnel.iter().filter(|x| rule.forwards(&x.name)).collect();
            prop_assert_eq!(back.len(), expected.len());
            for e in expected {
                prop_assert!(back.contains(e));
            }
        }

        #[test]
        fn any_origin_form_path_parses_to_itself(path in "/[a-zA-Z0-9/_.~-]{0,30}(\\?[a-z0-9=&]{0,20})?") {
            let p = parse_path(&path).expect("valid path");
            prop_assert_eq!(p.as_str(), path.as_str());
        }
    }
}
