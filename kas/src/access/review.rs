//! Nested impersonation, reviewed by the cluster: a GitLab requester whose grant acts as the agent may
//! send its own `Impersonate-*` headers only if the cluster says the agent may impersonate every part
//! of that identity. kas asks with `SelfSubjectAccessReview`s through the agent's tunnel (acting as
//! the agent: no impersonation), one per attribute, exactly as the API server checks impersonation
//! (verb `impersonate` on `users` — `serviceaccounts` for `system:serviceaccount:<ns>:<name>` —,
//! `groups`, `uids`, and `userextras/<key>` per value). Any answer but `allowed: true` refuses.

use std::sync::Arc;
use std::time::Instant;

use access_control::ClientImpersonation;
use futures_lite::AsyncWriteExt as _;
use protocol::proto::{Header, RequestHead};

use crate::state::KasState;

/// The review API's path.
pub const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// Largest review answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The `resourceAttributes` to review for `client`, in the API server's order.
pub fn attributes(client: &ClientImpersonation) -> Vec<serde_json::Value> {
    let attr = |resource: &str, namespace: &str, name: &str, sub: &str| {
        serde_json::json!({
            "verb": "impersonate", "group": "", "resource": resource,
            "namespace": namespace, "name": name, "subresource": sub,
        })
    };
    let mut out = Vec::new();
    if let Some(user) = &client.user {
        let sa = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'));
        out.push(match sa {
            Some((ns, name)) => attr("serviceaccounts", ns, name, ""),
            None => attr("users", "", user, ""),
        });
    }
    for g in &client.groups {
        out.push(attr("groups", "", g, ""));
    }
    if let Some(uid) = &client.uid {
        out.push(attr("uids", "", uid, ""));
    }
    for (key, values) in &client.extra {
        for v in values {
            out.push(attr("userextras", "", v, key));
        }
    }
    out
}

/// Whether the cluster allows the agent every attribute of `client`: `Err` says which was refused
/// or why no answer came.
pub async fn review(
    state: &Arc<KasState>,
    agent_id: u64,
    client: &ClientImpersonation,
) -> Result<(), String> {
    for attr in attributes(client) {
        let body = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attr},
        })
        .to_string();
        let answer = ask(state, agent_id, body.into_bytes()).await?;
        let allowed = answer
            .pointer("/status/allowed")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        if !allowed {
            return Err(format!(
                "the cluster does not allow the agent to impersonate {} {:?}",
                attr["resource"].as_str().unwrap_or_default(),
                attr["name"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// One review through the tunnel (as the agent), its answer's JSON.
async fn ask(
    state: &Arc<KasState>,
    agent_id: u64,
    body: Vec<u8>,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + state.routing.pending_request_deadline;
    let lease = state
        .registry
        .route(agent_id, deadline, false)
        .await
        .map_err(|e| format!("no connection for the review: {e}"))?;
    let header = |name: &str, value: &'static str| Header {
        name: name.to_owned(),
        value: bytes::Bytes::from_static(value.as_bytes()),
    };
    let head = RequestHead {
        service: protocol::service::K8S_API.to_owned(),
        method: "POST".to_owned(),
        path: SSAR_PATH.to_owned(),
        headers: vec![
            header("content-type", "application/json"),
            header("accept", "application/json"),
        ],
        timeout_ms: u32::try_from(state.routing.response_timeout.as_millis()).unwrap_or(u32::MAX),
        impersonation: None,
    };
    let stream = lease
        .connection()
        .open(head, false)
        .map_err(|e| format!("review stream: {e}"))?;
    let exchange = async {
        let mut w = &stream;
        w.write_all(&body)
            .await
            .map_err(|e| format!("review body: {e}"))?;
        stream.finish().map_err(|e| format!("review body: {e}"))?;
        let head = stream
            .response()
            .await
            .map_err(|e| format!("review answer: {e}"))?;
        let mut answer = Vec::new();
        while let Some(chunk) = stream.read_chunk(16 * 1024).await {
            let chunk = chunk.map_err(|e| format!("review answer: {e}"))?;
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err("review answer too large".to_owned());
            }
            answer.extend_from_slice(&chunk);
        }
        if head.status != 201 && head.status != 200 {
            return Err(format!("the review was answered {}", head.status));
        }
        serde_json::from_slice(&answer).map_err(|e| format!("review answer: {e}"))
    };
    let timeout = async {
        smol::Timer::after(state.routing.response_timeout).await;
        Err("the review was not answered in time".to_owned())
    };
    let result = futures_lite::future::or(exchange, timeout).await;
    if result.is_err() {
        stream.reset(protocol::ErrorCode::Cancel);
    }
    drop(lease);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_the_identity_is_reviewed() {
        let client = ClientImpersonation {
            user: Some("system:serviceaccount:team:deployer".into()),
            uid: Some("1234".into()),
            groups: vec!["devs".into()],
            extra: [("scopes".to_owned(), vec!["a".to_owned(), "b".to_owned()])].into(),
        };
        let a = attributes(&client);
        let pick = |i: usize, k: &str| a[i][k].as_str().unwrap_or_default().to_owned();
        assert_eq!(a.len(), 5);
        assert_eq!(
            (pick(0, "resource"), pick(0, "namespace"), pick(0, "name")),
            ("serviceaccounts".into(), "team".into(), "deployer".into())
        );
        assert_eq!(
            (pick(1, "resource"), pick(1, "name")),
            ("groups".into(), "devs".into())
        );
        assert_eq!(
            (pick(2, "resource"), pick(2, "name")),
            ("uids".into(), "1234".into())
        );
        assert_eq!(
            (pick(4, "resource"), pick(4, "subresource"), pick(4, "name")),
            ("userextras".into(), "scopes".into(), "b".into())
        );
        let plain = ClientImpersonation {
            user: Some("jane".into()),
            ..ClientImpersonation::default()
        };
        assert_eq!(attributes(&plain)[0]["resource"], "users");
        assert!(a.iter().all(|x| x["verb"] == "impersonate"));
    }
}
