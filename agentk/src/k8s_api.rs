//! The `k8s-api` service: a kas request forwarded to the cluster's API server with agentk's own
//! credentials; see protocol/SERVICES.md §3.

use http::Request;
use protocol::proto::RequestHead;
use runtime_tokio::{RecvStream, SendStream};

use crate::body::RequestBody;
use crate::forward::{Exchange, Outcome, forward};
use crate::head::{HttpHead, http_head};
use crate::upstream::HttpService;

/// The HTTP request for the API server (origin-form URI: kube's base-URI layer adds the server).
///
/// `head` went through the forwarding rule ([`crate::head::http_head`]): it carries no credentials
/// and no `Impersonate-*` header, so the request acts as agentk's own identity (kube's layers add
/// its credentials, and the impersonation its kubeconfig asks for, if any). This is the one place
/// where a request's identity for the API server is decided; when kas sends whom a request acts as
/// (access control), it arrives in a dedicated field of the request head and is mapped here.
pub fn api_request(head: HttpHead, body: RequestBody) -> Request<RequestBody> {
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.path.into();
    *request.headers_mut() = head.headers;
    request
}

/// Serves one k8s-api stream.
pub async fn serve(
    kube: &HttpService,
    head: &RequestHead,
    recv: RecvStream,
    send: SendStream,
) -> Outcome {
    if crate::upgrade::is_upgrade(head) {
        return crate::upgrade::serve(kube, head, recv, send).await;
    }
    let (body, reset) = RequestBody::from_tunnel(recv);
    let mut ex = Exchange::new(send, reset, head.timeout_ms);
    let parsed = match http_head(head) {
        Ok(h) => h,
        Err(bad) => return ex.answer_status(400, "BadRequest", &bad.0, None).await,
    };
    forward(kube, api_request(parsed, body), &mut ex).await
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
}
