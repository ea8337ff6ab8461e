//! Upgraded `k8s-api` streams (protocol/SERVICES.md §3.1): `kubectl exec`, `attach`, `cp` and
//! `port-forward`, whatever protocol they switch to (WebSocket, SPDY/3.1), carried as raw bytes.
//!
//! A `k8s-api` head with an `Upgrade` header is sent to the API server over HTTP/1.1 (kube's
//! connector negotiates only `http/1.1`, and the request says HTTP/1.1 explicitly) with
//! `Connection: Upgrade`, agentk's own credentials, and the headers the upgrade rule
//! ([`HeaderRule::for_upgrade_head`]) lets through. A `101` answer is sent on as the response head
//! (no end of stream); from then on the stream and the upstream connection are one duplex byte pipe:
//! each direction ends on its own (end of stream ↔ write shutdown, a half-close), and a failure of
//! either side resets the stream (`CANCEL`) and drops the upstream connection. Any other answer is
//! relayed as an ordinary response ([`crate::forward::relay`]), so kubectl's WebSocket → SPDY
//! fallback sees the API server's own refusal. agentk never parses the upgraded bytes.

use http::header::{CONNECTION, HeaderValue};
use http::{Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use protocol::ErrorCode;
use protocol::proto::{RequestHead, ResponseHead};
use protocol::service::HeaderRule;
use runtime_tokio::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{RequestBody, ResetWatch};
use crate::forward::{Exchange, Outcome, relay, send_upstream};
use crate::head::{BadRequest, HttpHead, headers_from_tunnel_by, headers_to_tunnel_by, http_head};
use crate::upstream::HttpService;

/// Whether a tunnel request head asks for an upgrade (it carries an `Upgrade` header).
pub fn is_upgrade(head: &RequestHead) -> bool {
    protocol::service::is_upgrade_tunnel_head(
        head.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_ref())),
    )
}

/// The HTTP head of an upgrade request: as [`http_head`], with the upgrade rule for headers.
pub fn upgrade_http_head(head: &RequestHead) -> Result<HttpHead, BadRequest> {
    let mut parsed = http_head(head)?;
    let rule = HeaderRule::for_upgrade_head(
        head.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_ref())),
    );
    parsed.headers = headers_from_tunnel_by(&rule, &head.headers)?;
    parsed
        .headers
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    Ok(parsed)
}

/// The request for the API server: HTTP/1.1, no body (an upgrade request has none before `101`).
fn upgrade_request(head: HttpHead) -> Request<RequestBody> {
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = head.method;
    *request.uri_mut() = head.path.into();
    *request.headers_mut() = head.headers;
    *request.version_mut() = Version::HTTP_11;
    request
}

/// Serves one upgrade stream of `k8s-api` with the API server client `kube`.
pub async fn serve(
    kube: &HttpService,
    head: &RequestHead,
    recv: RecvStream,
    send: SendStream,
) -> Outcome {
    // kas sends nothing before the 101, so the receiving half only watches for a reset meanwhile.
    let mut ex = Exchange::new(send, ResetWatch::Stream(recv), head.timeout_ms);
    let parsed = match upgrade_http_head(head) {
        Ok(h) => h,
        Err(bad) => return ex.answer_status(400, "BadRequest", &bad.0, None).await,
    };
    // The identity kas decided applies to upgraded sessions exactly as to other requests
    // (SERVICES.md §3): `kubectl exec` as a CI job is the CI job's exec, never the agent's.
    let mut request = upgrade_request(parsed);
    if let Err(bad) = crate::k8s_api::impersonate(&mut request, head.impersonation.as_ref()) {
        tracing::warn!(error = %bad, "kas sent an impersonation that cannot be applied");
        return ex
            .answer_status(400, "BadRequest", &bad.to_string(), None)
            .await;
    }
    let mut response = match send_upstream(kube, request, &mut ex).await {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // A refusal (403, 400 for an unsupported protocol, ...): an ordinary answer.
        return relay(response, &mut ex).await;
    }
    let on_upgrade = hyper::upgrade::on(&mut response);
    let rule = HeaderRule::for_upgrade_head(
        response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    let head = ResponseHead {
        status: 101,
        headers: headers_to_tunnel_by(&rule, response.headers()),
    };
    if let Err(error) = ex.send.respond(head, false) {
        return Outcome::Cancelled {
            status: Some(101),
            error,
        };
    }
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            ex.send.reset(ErrorCode::Cancel);
            return Outcome::Upgraded {
                to_upstream: 0,
                to_kas: 0,
                error: Some(format!("the API server's upgraded connection failed: {e}")),
            };
        }
    };
    let Exchange { send, reset, .. } = ex;
    let ResetWatch::Stream(recv) = reset else {
        // `Exchange::new` above got the stream itself and nothing lent it out.
        send.reset(ErrorCode::Internal);
        return Outcome::Upgraded {
            to_upstream: 0,
            to_kas: 0,
            error: Some("internal error: the receiving half is gone".into()),
        };
    };
    splice(TokioIo::new(upgraded), recv, send).await
}

/// Copies `from` into `to` until `from` ends, then shuts `to` down (the half-close); the count.
async fn pipe<R, W>(from: &mut R, to: &mut W) -> Result<u64, std::io::Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let n = tokio::io::copy(from, to).await?;
    to.shutdown().await?;
    Ok(n)
}

/// The duplex byte pipe between the upstream connection and the stream, until both directions
/// ended or one failed (then the stream is reset and the upstream connection dropped).
pub async fn splice<U>(upstream: U, mut recv: RecvStream, mut send: SendStream) -> Outcome
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let reset = send.id();
    // The two directions, in a block so that they release the stream's halves afterwards.
    let result = {
        let to_upstream = async {
            pipe(&mut recv, &mut up_write)
                .await
                .map_err(|e| format!("kas → API server: {e}"))
        };
        let to_kas = async {
            pipe(&mut up_read, &mut send)
                .await
                .map_err(|e| format!("API server → kas: {e}"))
        };
        tokio::pin!(to_upstream, to_kas);
        let (mut up, mut down) = (None, None);
        // Bounded: each iteration completes one of the two directions.
        loop {
            tokio::select! {
                r = &mut to_upstream, if up.is_none() => up = Some(r),
                r = &mut to_kas, if down.is_none() => down = Some(r),
            }
            match (&up, &down) {
                (_, Some(Err(e))) => break Err(e.clone()),
                // The API server closed its connection after its last octet (the session is over
                // for it): what kas still sends (a closing frame, say) has nowhere to go.
                (Some(Err(e)), Some(Ok(_))) => {
                    tracing::debug!(stream = reset.0, error = %e, "octets after the API server's end dropped");
                    break Ok((
                        0,
                        down.as_ref()
                            .and_then(|d| d.as_ref().ok().copied())
                            .unwrap_or(0),
                        true,
                    ));
                }
                (Some(Err(e)), None) => break Err(e.clone()),
                (Some(Ok(a)), Some(Ok(b))) => break Ok((*a, *b, false)),
                _ => {}
            }
        }
    };
    if let Ok((_, _, true)) = result {
        // Read kas's direction to its end (discarding it), so the stream ends without a reset;
        // bounded by kas, which ends idle sessions.
        let _ = tokio::io::copy(&mut recv, &mut tokio::io::sink()).await;
    }
    match result {
        Ok((to_upstream, to_kas, _)) => Outcome::Upgraded {
            to_upstream,
            to_kas,
            error: None,
        },
        Err(error) => {
            tracing::debug!(stream = reset.0, %error, "upgraded session failed: stream reset");
            send.reset(ErrorCode::Cancel);
            Outcome::Upgraded {
                to_upstream: 0,
                to_kas: 0,
                error: Some(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::proto::Header;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    #[test]
    fn upgrade_heads_keep_the_protocol_headers_and_never_credentials() {
        let head = RequestHead {
            service: "k8s-api".into(),
            method: "GET".into(),
            path: "/api/v1/namespaces/default/pods/p/exec?command=echo&stdout=true".into(),
            headers: vec![
                h("upgrade", "websocket"),
                h("sec-websocket-key", "k"),
                h("sec-websocket-protocol", "v5.channel.k8s.io"),
                h("x-stream-protocol-version", "v4.channel.k8s.io"),
                h("authorization", "Bearer stolen"),
                h("impersonate-user", "admin"),
                h("connection", "keep-alive"),
            ],
            impersonation: None,
            timeout_ms: 0,
        };
        assert!(is_upgrade(&head));
        let req = upgrade_request(upgrade_http_head(&head).expect("valid"));
        assert_eq!(req.version(), Version::HTTP_11);
        let headers = req.headers();
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "Upgrade");
        assert_eq!(headers["sec-websocket-protocol"], "v5.channel.k8s.io");
        assert!(headers.get("authorization").is_none());
        assert!(headers.get("impersonate-user").is_none());
        assert_eq!(headers.len(), 5);
        let mut plain = head.clone();
        plain.headers.retain(|h| h.name != "upgrade");
        assert!(!is_upgrade(&plain));
    }
}
