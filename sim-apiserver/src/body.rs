//! HTTP response bodies and response builders: whole JSON documents, `Status` errors, and
//! streamed bodies fed by a channel (watches, followed logs) which hyper sends chunked.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use serde_json::Value;
use tokio::sync::mpsc;

use super::status::ApiError;

/// The body type of every response.
pub type ResponseBody = BoxBody<Bytes, Infallible>;

/// A body streaming whatever arrives on a channel; ends when the sender is dropped.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body fed by `rx`.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self { rx }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Content type of JSON responses.
pub const JSON: &str = "application/json";
/// Content type of Table responses.
pub const TABLE_JSON: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed()
}

/// A response with `body` serialized as JSON.
pub fn json(code: StatusCode, body: &Value) -> Response<ResponseBody> {
    json_typed(code, body, JSON)
}

/// A JSON response with a specific content type.
pub fn json_typed(
    code: StatusCode,
    body: &Value,
    content_type: &'static str,
) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(full(bytes));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The `Status` response for `e`.
pub fn error(e: &ApiError) -> Response<ResponseBody> {
    json(e.code, &e.to_status())
}

/// A response with raw `bytes` of `content_type`.
pub fn bytes(
    code: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<ResponseBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A plain-text response.
pub fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A 200 response streaming `rx` with `content_type` (sent chunked).
pub fn stream(rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ChannelBody::new(rx).boxed());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}
