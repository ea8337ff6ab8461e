//! The `k8s-api` service: a kas request forwarded to the cluster's API server with agentk's own
//! credentials; see protocol/SERVICES.md §3.

use http::Request;
use protocol::proto::{Impersonation, RequestHead};
use runtime_tokio::{RecvStream, SendStream};

use crate::body::RequestBody;
use crate::forward::{Exchange, Outcome};
use crate::head::{HttpHead, http_head};
use crate::upstream::{ApiClient, HttpService};

/// The HTTP request for the API server (origin-form URI: [`ApiClient`] adds the server's path
/// prefix and `Host`).
///
/// `head` went through the forwarding rule ([`crate::head::http_head`]): it carries no credentials
/// and no `Impersonate-*` header, so the request acts as agentk's own identity (kube's layers add
/// its credentials, and the impersonation its kubeconfig asks for, if any). This is the one place
/// where a request's identity for the API server is decided: whom kas says the request acts as
/// (access control) arrives in a dedicated field of the request head and is applied by
/// [`impersonate`], called by [`serve`].
pub fn api_request(head: HttpHead, body: RequestBody) -> Request<RequestBody> {
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.path.into();
    *request.headers_mut() = head.headers;
    request
}

/// Why kas's impersonation cannot be sent (kas's fault: agentk answers 400 and sends nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadImpersonation {
    /// `impersonation` is present with an empty user.
    #[error("the request head's impersonation names no user")]
    EmptyUser,
    /// A value that cannot be an HTTP header value unchanged.
    #[error(transparent)]
    Value(#[from] access_control::HeaderValueError),
}

/// The identity kas decided for the request ([`RequestHead::impersonation`]), applied as exactly
/// these Kubernetes `Impersonate-*` headers (client-go's names and extra-key escaping, from
/// [`access_control::to_impersonation_headers`]); none when kas sent none. Any `Impersonate-*`
/// header already on `request` is removed first: only kas's decision reaches the API server.
pub fn impersonate<B>(
    request: &mut Request<B>,
    impersonation: Option<&Impersonation>,
) -> Result<(), BadImpersonation> {
    let stale: Vec<http::HeaderName> = request
        .headers()
        .keys()
        .filter(|n| access_control::client::is_impersonation_header(n.as_str()))
        .cloned()
        .collect();
    for name in stale {
        request.headers_mut().remove(name);
    }
    let Some(imp) = impersonation else {
        return Ok(());
    };
    if imp.user.is_empty() {
        return Err(BadImpersonation::EmptyUser);
    }
    let act_as = access_control::wire::act_as_of(imp);
    for (name, value) in access_control::to_impersonation_headers(&act_as)? {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) else {
            return Err(BadImpersonation::Value(access_control::HeaderValueError {
                header: name,
            }));
        };
        request.headers_mut().append(name, value);
    }
    Ok(())
}

/// The API server clients of `k8s-api`.
pub struct ApiClients<'a> {
    /// Ordinary requests: agentk's keep-alive connections, driven by the stream's task.
    pub api: &'a ApiClient,
    /// Upgrades only (`kubectl exec`, `port-forward`): hyper-util's client, whose connections
    /// hyper hands over after `101`.
    pub upgrades: &'a HttpService,
}

/// Serves one k8s-api stream.
pub async fn serve(
    clients: ApiClients<'_>,
    head: &RequestHead,
    recv: RecvStream,
    send: SendStream,
) -> Outcome {
    if crate::upgrade::is_upgrade(head) {
        return crate::upgrade::serve(clients.upgrades, head, recv, send).await;
    }
    let (body, reset) = RequestBody::from_tunnel(recv);
    let mut ex = Exchange::new(send, reset, head.timeout_ms);
    let parsed = match http_head(head) {
        Ok(h) => h,
        Err(bad) => return ex.answer_status(400, "BadRequest", &bad.0, None).await,
    };
    let mut request = api_request(parsed, body);
    if let Err(bad) = impersonate(&mut request, head.impersonation.as_ref()) {
        tracing::warn!(error = %bad, "kas sent an impersonation that cannot be applied");
        return ex
            .answer_status(400, "BadRequest", &bad.to_string(), None)
            .await;
    }
    if let Some(imp) = &head.impersonation {
        tracing::debug!(user = %imp.user, groups = imp.groups.len(), "acting as the identity kas decided");
    }
    clients.api.forward(request, &mut ex).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::proto::Header;

    #[test]
    fn api_request_keeps_method_path_query_and_headers() {
        let head = RequestHead {
            service: "k8s-api".into(),
            method: "PATCH".into(),
            path: "/apis/apps/v1/namespaces/x/deployments/d?fieldManager=kubectl".into(),
            headers: vec![Header {
                name: "content-type".into(),
                value: bytes::Bytes::from_static(b"application/merge-patch+json"),
            }],
            timeout_ms: 0,
            impersonation: None,
        };
        let req = api_request(http_head(&head).expect("valid"), RequestBody::empty());
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(
            req.uri().to_string(),
            "/apis/apps/v1/namespaces/x/deployments/d?fieldManager=kubectl"
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/merge-patch+json"
        );
        assert!(req.uri().authority().is_none());
    }

    #[test]
    fn exactly_kas_impersonation_is_applied() {
        let mut req = Request::new(());
        req.headers_mut()
            .insert("impersonate-user", "system:admin".parse().expect("value"));
        req.headers_mut().insert(
            "Impersonate-Group",
            "system:masters".parse().expect("value"),
        );
        impersonate(&mut req, None).expect("none is fine");
        assert!(req.headers().is_empty(), "{:?}", req.headers());
        let imp = Impersonation {
            user: "gitlab:ci_job:42".into(),
            uid: String::new(),
            groups: vec!["gitlab:ci_job".into(), "gitlab:project:5".into()],
            extra: vec![protocol::proto::ImpersonationExtra {
                key: "agent.gitlab.com/id".into(),
                values: vec!["1".into()],
            }],
        };
        req.headers_mut()
            .insert("impersonate-user", "system:admin".parse().expect("value"));
        impersonate(&mut req, Some(&imp)).expect("valid");
        let h = req.headers();
        assert_eq!(h.get_all("impersonate-user").iter().count(), 1);
        assert_eq!(h["impersonate-user"], "gitlab:ci_job:42");
        let groups: Vec<_> = h.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, ["gitlab:ci_job", "gitlab:project:5"]);
        assert_eq!(h["impersonate-extra-agent.gitlab.com%2fid"], "1");
        assert!(h.get("impersonate-uid").is_none());
        let bad = Impersonation {
            user: String::new(),
            ..imp
        };
        assert_eq!(
            impersonate(&mut req, Some(&bad)),
            Err(BadImpersonation::EmptyUser)
        );
    }
}
