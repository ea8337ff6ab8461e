//! `GET /api/v1/agents/{id}/cache/{kind}?namespace=NS&labelSelector=SEL`: objects from the agent's
//! informer cache, answered by agentk from its store (never from the API server) through the tunnel
//! (service `cache`, method `LIST`, protocol/SERVICES.md §5).
//!
//! `kind` is what agentk resolves: `pods`, `Pod`, `v1/Pod`, `apps/v1/Deployment`. The query is passed
//! on as is. agentk's answer passes through: 200 with a Kubernetes `List` (in namespace, name order),
//! 404 unknown kind, 400 bad selector, 503 while the kind is not synced yet. Like the tunnel routes it
//! needs a user bearer allowed on the agent (the objects are whole, with labels and specs); routing,
//! timeouts and the kas-side statuses are the proxy's ([`super::proxy`]).

use http::StatusCode;

use super::proxy::Target;
use super::response::ApiError;

/// A kind segment: letters, digits, `.`, `-`, `_` and percent-escapes.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'%'))
}

/// The tunnel request for a cache listing of `kind` (the path after `/cache/`, as received) with the
/// request's `query`.
pub fn target(agent_id: u64, kind: &str, query: Option<&str>) -> Result<Target, ApiError> {
    let kind = kind.strip_suffix('/').unwrap_or(kind);
    let segments: Vec<&str> = kind.split('/').collect();
    if segments.len() > 3 || !segments.iter().all(|s| valid_segment(s)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "expected /api/v1/agents/{id}/cache/{kind} with kind like pods, Pod, v1/Pod or apps/v1/Deployment",
        ));
    }
    let mut path = format!("/{kind}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(q);
    }
    Ok(Target {
        service: protocol::service::CACHE,
        method: Some("LIST"),
        path,
        agent_in_url: Some(agent_id),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builds_list_requests() {
        let t = target(3, "pods", Some("namespace=default&labelSelector=app%3Dweb")).unwrap();
        assert_eq!(t.service, "cache");
        assert_eq!(t.method, Some("LIST"));
        assert_eq!(t.path, "/pods?namespace=default&labelSelector=app%3Dweb");
        assert_eq!(t.agent_in_url, Some(3));
        assert_eq!(
            target(3, "apps/v1/Deployment", None).unwrap().path,
            "/apps/v1/Deployment"
        );
        assert_eq!(target(3, "Pod/", Some("")).unwrap().path, "/Pod");
        for bad in ["", "a/b/c/d", "../x", "po ds", "a//b"] {
            assert_eq!(
                target(3, bad, None).map(|_| ()).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }
}
