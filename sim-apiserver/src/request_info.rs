//! What a request asks to do, in the terms authorisation speaks: Kubernetes'
//! `RequestInfoFactory`, derived from the method, path and query alone (not from what is
//! served, so an unauthorised caller cannot probe which resources exist).
//!
//! * `/api/v1/…` and `/apis/{group}/{version}/…` with a resource are **resource requests**: verb
//!   from the method (`POST` create, `GET`/`HEAD` get, `PUT` update, `PATCH` patch, `DELETE`
//!   delete), `get` without a name is `list` (or `watch` with `watch=true`, or under the
//!   deprecated `/watch/` prefix), `delete` without a name is `deletecollection`; a
//!   `fieldSelector` pinning `metadata.name` names the object of a list or watch;
//!   `/namespaces/{ns}` is the namespace of the request (and of the `namespaces` object itself);
//!   the upgraded pod subresources `exec`, `attach` and `portforward` are `create` whatever the
//!   method, as Kubernetes 1.31+ authorises WebSocket `GET`s.
//! * Every other path (`/api`, `/apis/{group}`, `/openapi/v3`, `/version`, …) is a
//!   **non-resource request** with the lower-case method as verb.

use super::query::Query;

/// What a request asks to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Resource request (else non-resource: `path` applies).
    pub resource_request: bool,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`
    /// (non-resource: the lower-case method).
    pub verb: String,
    /// API group (`""` for core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Namespace (`""` when cluster-scoped or across namespaces).
    pub namespace: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource (`""` if none).
    pub subresource: String,
    /// Object name (`""` if none).
    pub name: String,
    /// The request path.
    pub path: String,
}

/// Subresources of namespaces (`/api/v1/namespaces/{name}/status`), which do not make the
/// segment after the namespace's name a resource.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];
/// Upgraded pod subresources, authorised as `create`.
const UPGRADE_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward"];

impl RequestInfo {
    /// A non-resource request.
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Self {
            verb: verb.to_string(),
            path: path.to_string(),
            ..Self::default()
        }
    }

    /// The request info of `method` on `path` with `query` (raw query string).
    pub fn new(method: &http::Method, path: &str, query: Option<&str>) -> Self {
        let parts: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let non_resource = || Self::non_resource(&method.as_str().to_ascii_lowercase(), path);
        let mut rest: &[String] = &parts;
        let (group, version) = match rest {
            [p, v, tail @ ..] if p == "api" && !tail.is_empty() => {
                rest = tail;
                (String::new(), v.clone())
            }
            [p, g, v, tail @ ..] if p == "apis" && !tail.is_empty() => {
                rest = tail;
                (g.clone(), v.clone())
            }
            _ => return non_resource(),
        };
        let mut info = Self {
            resource_request: true,
            api_group: group,
            api_version: version,
            path: path.to_string(),
            ..Self::default()
        };
        let mut via_path = false;
        if rest[0] == "watch" && rest.len() >= 2 {
            info.verb = "watch".to_string();
            via_path = true;
            rest = &rest[1..];
        } else {
            info.verb = match *method {
                http::Method::POST => "create",
                http::Method::GET | http::Method::HEAD => "get",
                http::Method::PUT => "update",
                http::Method::PATCH => "patch",
                http::Method::DELETE => "delete",
                _ => "",
            }
            .to_string();
        }
        if rest[0] == "namespaces" && rest.len() > 1 {
            info.namespace = rest[1].clone();
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2].as_str()) {
                rest = &rest[2..];
            }
        }
        info.resource = rest[0].clone();
        if let Some(n) = rest.get(1) {
            info.name = n.clone();
        }
        if let Some(s) = rest.get(2) {
            info.subresource = s.clone();
        }
        if info.name.is_empty() && (info.verb == "get" || via_path) {
            let q = Query::parse(query);
            if !via_path {
                info.verb = if q.watch().unwrap_or(false) {
                    "watch"
                } else {
                    "list"
                }
                .to_string();
            }
            if let Some(name) = q.get("fieldSelector").and_then(exact_name) {
                info.name = name;
            }
        }
        if info.name.is_empty() && info.verb == "delete" {
            info.verb = "deletecollection".to_string();
        }
        if info.api_group.is_empty()
            && info.resource == "pods"
            && UPGRADE_SUBRESOURCES.contains(&info.subresource.as_str())
        {
            info.verb = "create".to_string();
        }
        info
    }
}

/// The name a field selector pins with `metadata.name=X` (or `==`), if it does.
fn exact_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let (k, v) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(k, _)| !k.ends_with('!'))?;
        (k.trim() == "metadata.name" && !v.is_empty() && !v.contains('/'))
            .then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn info(m: Method, path: &str, q: Option<&str>) -> (bool, String, String, String, String) {
        let i = RequestInfo::new(&m, path, q);
        (
            i.resource_request,
            i.verb,
            format!("{}/{}", i.api_group, i.namespace),
            format!("{}/{}", i.resource, i.subresource),
            i.name,
        )
    }

    fn r(verb: &str, gns: &str, rs: &str, name: &str) -> (bool, String, String, String, String) {
        (true, verb.into(), gns.into(), rs.into(), name.into())
    }

    #[test]
    fn derives_like_kubernetes() {
        use Method as M;
        assert_eq!(
            info(M::GET, "/api/v1/namespaces/default/pods", None),
            r("list", "/default", "pods/", "")
        );
        assert_eq!(
            info(M::GET, "/api/v1/pods", Some("watch=true")),
            r("watch", "/", "pods/", "")
        );
        assert_eq!(
            info(M::GET, "/api/v1/watch/namespaces/ns/pods", None),
            r("watch", "/ns", "pods/", "")
        );
        assert_eq!(
            info(
                M::GET,
                "/apis/apps/v1/namespaces/ns/deployments",
                Some("fieldSelector=metadata.name%3Dweb")
            ),
            r("list", "apps/ns", "deployments/", "web")
        );
        assert_eq!(
            info(M::GET, "/api/v1/namespaces/ns/pods/p/log", None),
            r("get", "/ns", "pods/log", "p")
        );
        assert_eq!(
            info(
                M::GET,
                "/api/v1/namespaces/ns/pods/p/exec",
                Some("command=ls")
            ),
            r("create", "/ns", "pods/exec", "p")
        );
        assert_eq!(
            info(M::POST, "/api/v1/namespaces/ns/pods/p/portforward", None),
            r("create", "/ns", "pods/portforward", "p")
        );
        assert_eq!(
            info(M::DELETE, "/api/v1/namespaces/ns/configmaps", None),
            r("deletecollection", "/ns", "configmaps/", "")
        );
        assert_eq!(
            info(M::DELETE, "/api/v1/namespaces/ns/configmaps/c", None),
            r("delete", "/ns", "configmaps/", "c")
        );
        assert_eq!(
            info(
                M::PATCH,
                "/apis/apps/v1/namespaces/ns/deployments/d/scale",
                None
            ),
            r("patch", "apps/ns", "deployments/scale", "d")
        );
        assert_eq!(
            info(M::PUT, "/api/v1/namespaces/ns/status", None),
            r("update", "/ns", "namespaces/status", "ns")
        );
        assert_eq!(
            info(M::GET, "/api/v1/namespaces/kube-system", None),
            r("get", "/kube-system", "namespaces/", "kube-system")
        );
        assert_eq!(
            info(M::GET, "/api/v1/namespaces", None),
            r("list", "/", "namespaces/", "")
        );
        assert_eq!(
            info(
                M::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                None
            ),
            r(
                "create",
                "authorization.k8s.io/",
                "selfsubjectaccessreviews/",
                ""
            )
        );
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/openapi/v3",
            "/version",
        ] {
            let i = RequestInfo::new(&Method::GET, p, None);
            assert!(!i.resource_request, "{p}");
            assert_eq!((i.verb.as_str(), i.path.as_str()), ("get", p));
        }
    }

    #[test]
    fn field_selector_names() {
        assert_eq!(exact_name("metadata.name=a"), Some("a".into()));
        assert_eq!(exact_name("x=y,metadata.name==b"), Some("b".into()));
        assert_eq!(exact_name("metadata.name!=a"), None);
        assert_eq!(exact_name("status.phase=Running"), None);
    }
}
