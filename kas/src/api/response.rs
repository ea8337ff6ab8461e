//! Building HTTP responses: the body type every handler returns, and JSON error bodies.
//!
//! Errors on `/k8s-proxy` are Kubernetes `Status` objects (what kubectl and client libraries parse);
//! everywhere else they are `{"code": 503, "reason": "...", "message": "..."}`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;

/// An error that aborts a response body (the client sees a truncated body).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response kas sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BodyError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response with a complete body and a content type.
pub fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut text = value.to_string();
    text.push('\n');
    with_body(status, "application/json", text)
}

/// How an error is written: as a Kubernetes `Status` (on `/k8s-proxy`) or as kas's own JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// `{"kind":"Status","apiVersion":"v1",...}`.
    Kubernetes,
    /// `{"code":...,"reason":...,"message":...}`.
    Plain,
}

/// A failed request, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A Kubernetes `StatusReason` (`NotFound`, `ServiceUnavailable`, ...).
    pub reason: &'static str,
    /// A human-readable message (never contains a token).
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up) when set.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with the reason Kubernetes uses for `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason_for(status),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The response for this error in `style`.
    pub fn into_response(self, style: ErrorStyle) -> Response<ResponseBody> {
        let code = self.status.as_u16();
        let value = match style {
            ErrorStyle::Kubernetes => serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": self.message,
                "reason": self.reason,
                "code": code,
            }),
            ErrorStyle::Plain => serde_json::json!({
                "code": code,
                "reason": self.reason,
                "message": self.message,
            }),
        };
        let mut resp = json(self.status, &value);
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// The Kubernetes `StatusReason` for an HTTP status.
pub fn reason_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        429 => "TooManyRequests",
        // Kubernetes has no reason of its own for oversized headers: the request is invalid.
        431 => "BadRequest",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn body_json(resp: Response<ResponseBody>) -> serde_json::Value {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn kubernetes_status_shape() {
        let resp = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "agent 1 is not connected")
            .retry_after(Duration::from_millis(1500))
            .into_response(ErrorStyle::Kubernetes);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let v = smol::block_on(body_json(resp));
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "ServiceUnavailable");
        assert_eq!(v["code"], 503);
        assert_eq!(v["message"], "agent 1 is not connected");
    }

    #[test]
    fn plain_shape() {
        let resp =
            ApiError::new(StatusCode::NOT_FOUND, "no such agent").into_response(ErrorStyle::Plain);
        let v = smol::block_on(body_json(resp));
        assert_eq!(v["code"], 404);
        assert_eq!(v["reason"], "NotFound");
        assert!(v.get("kind").is_none());
    }
}
