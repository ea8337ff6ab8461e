//! The WebSocket transport: the tunnel's octets as binary WebSocket messages, so that agentk can
//! reach kas through HTTP-only egress proxies and HTTP load balancers (`wss://`).
//!
//! [`WsIo`] turns async-tungstenite's message stream into the byte stream the driver reads and
//! writes: a write batch (the driver writes vectored) is one binary message; reading yields the
//! octets of binary messages in order. Control messages are WebSocket business (tungstenite answers
//! pings); a text message is the peer's fault (typed `InvalidData` error); a close message or the
//! end of the stream is end of file.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::client::Request;
use async_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as ServerRequest, Response,
};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::{Sink, Stream};

use super::prefixed::Prefixed;

/// The WebSocket subprotocol the tunnel is offered and accepted under, named for the tunnel
/// protocol version (`agent-tunnel.v1`).
pub const SUBPROTOCOL: &str = "agent-tunnel.v1";

/// The largest WebSocket message (and frame) accepted from the peer. Our writers send at most
/// [`MAX_WRITE`] per message; the margin covers other implementations.
const MAX_MESSAGE: usize = 1 << 20;
/// The largest binary message one write sends (a write batch is cut here).
const MAX_WRITE: usize = 256 * 1024;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A WebSocket carrying the tunnel, as a byte stream (futures-io traits).
#[derive(Debug)]
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    /// A close message was received or the stream ended.
    eof: bool,
}

fn ws_io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Wraps a WebSocket whose handshake is done.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsIo {
            ws,
            pending: Bytes::new(),
            eof: false,
        }
    }

    /// The server side over a connection whose HTTP upgrade was answered already (kas's API
    /// port: hyper wrote the `101 Switching Protocols`).
    pub async fn upgraded_server(io: S) -> Self {
        WsIo::new(WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await)
    }

    /// The client handshake to `url` (`ws://host:port/path`; the `Host` header comes from it)
    /// offering [`SUBPROTOCOL`], which the server must choose.
    pub async fn client(io: S, url: &str) -> Result<Self, io::Error> {
        let mut request: Request =
            async_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (ws, response) =
            async_tungstenite::client_async_with_config(request, io, Some(ws_config()))
                .await
                .map_err(|e| match e {
                    WsError::Http(r) => io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("the WebSocket upgrade was refused with HTTP {}", r.status()),
                    ),
                    e => ws_io_error(e),
                })?;
        let chosen = response.headers().get(header::SEC_WEBSOCKET_PROTOCOL);
        if chosen.map(HeaderValue::as_bytes) != Some(SUBPROTOCOL.as_bytes()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server did not choose the WebSocket subprotocol {SUBPROTOCOL}"),
            ));
        }
        Ok(WsIo::new(ws))
    }

    /// The server handshake: a WebSocket upgrade (any path) that offers [`SUBPROTOCOL`]; anything
    /// else is answered with `400` and fails.
    // The callback's error type (`http::Response`) is tungstenite's `Callback` contract.
    #[allow(clippy::result_large_err)]
    pub async fn server(io: S) -> Result<WsIo<Prefixed<S>>, io::Error> {
        let mut ws = async_tungstenite::accept_hdr_async_with_config(
            Prefixed::new(Vec::new(), io).with_read_budget(MAX_UPGRADE_REQUEST),
            |request: &ServerRequest, mut response: Response| {
                if !offers_subprotocol(request.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL)) {
                    return Err(refusal(format!(
                        "the WebSocket subprotocol {SUBPROTOCOL} is required"
                    )));
                }
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(SUBPROTOCOL),
                );
                Ok(response)
            },
            Some(ws_config()),
        )
        .await
        .map_err(ws_io_error)?;
        ws.get_mut().lift_read_budget();
        Ok(WsIo::new(ws))
    }
}

/// The most octets a server reads before the upgrade request is complete (tungstenite's handshake
/// has no bound of its own besides the handshake timeout).
const MAX_UPGRADE_REQUEST: usize = 16 * 1024;

/// Reads into `head` (which holds what was read already) until it holds a whole HTTP request head,
/// the stream ends or fails, or [`MAX_UPGRADE_REQUEST`] octets; never reads past the head's end
/// by more than one read (a WebSocket client waits for the answer before sending more).
pub async fn read_request_head<S: AsyncRead + Unpin>(io: &mut S, head: &mut Vec<u8>) {
    use futures_lite::AsyncReadExt as _;
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_UPGRADE_REQUEST && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether `head` is a complete `GET` request head asking to upgrade to a WebSocket.
pub fn is_upgrade_request(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    matches!(request.parse(head), Ok(httparse::Status::Complete(_)))
        && request.method == Some("GET")
        && request.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("upgrade")
                && std::str::from_utf8(h.value).is_ok_and(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
                })
        })
}

/// Whether a `Sec-WebSocket-Protocol` header list offers [`SUBPROTOCOL`].
pub fn offers_subprotocol<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    values.into_iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim() == SUBPROTOCOL))
    })
}

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2), for
/// HTTP servers that answer the upgrade themselves (kas's API port).
pub fn accept_key(client_key: &[u8]) -> String {
    async_tungstenite::tungstenite::handshake::derive_accept_key(client_key)
}

fn refusal(message: String) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(message));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = buf.len().min(this.pending.len());
                buf[..n].copy_from_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(n));
            }
            if this.eof || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => this.eof = true,
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on the tunnel's WebSocket (binary only)",
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// One binary message of up to [`MAX_WRITE`] octets from the batch.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let ws = Pin::new(&mut self.ws);
        ready!(Sink::<Message>::poll_ready(ws, cx)).map_err(ws_io_error)?;
        let mut message = Vec::with_capacity(total.min(MAX_WRITE));
        for b in bufs {
            let room = MAX_WRITE - message.len();
            message.extend_from_slice(&b[..b.len().min(room)]);
            if message.len() == MAX_WRITE {
                break;
            }
        }
        let n = message.len();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message.into()))
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_flush(Pin::new(&mut self.ws), cx).map_err(ws_io_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Sink::<Message>::poll_close(Pin::new(&mut self.ws), cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::testing::Duplex;

    fn upgrade_request(extra: &str) -> Vec<u8> {
        format!(
            "GET / HTTP/1.1\r\nHost: kas\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn serve(request: Vec<u8>) -> (Result<(), io::Error>, String) {
        let mut io = Duplex::new(request);
        let result = futures_lite::future::block_on(WsIo::server(&mut io)).map(|_| ());
        (result, String::from_utf8_lossy(io.written()).into_owned())
    }

    #[test]
    fn server_requires_the_subprotocol() {
        let (ok, answer) = serve(upgrade_request(
            "Sec-WebSocket-Protocol: x, agent-tunnel.v1\r\n",
        ));
        assert!(ok.is_ok(), "{ok:?}");
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        assert!(answer.contains("agent-tunnel.v1"), "{answer}");
        let (refused, answer) = serve(upgrade_request("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(refused.is_err());
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    #[test]
    fn upgrade_requests_are_told_from_other_heads() {
        assert!(is_upgrade_request(&upgrade_request("")));
        assert!(!is_upgrade_request(b"GET / HTTP/1.1\r\nHost: kas\r\n\r\n"));
        assert!(!is_upgrade_request(
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n"
        ));
        assert!(!is_upgrade_request(b"\x89AGTUN\r\n"));
        let mut head = b"G".to_vec();
        let mut io = Duplex::new(b"ET / HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\nrest".to_vec());
        futures_lite::future::block_on(read_request_head(&mut io, &mut head));
        assert!(is_upgrade_request(&head));
    }

    #[test]
    fn oversized_upgrade_requests_fail_early() {
        let huge = format!("X-Filler: {}\r\n", "a".repeat(4 * MAX_UPGRADE_REQUEST));
        let (result, _) = serve(upgrade_request(&huge));
        let e = result.expect_err("a 64 KiB header was accepted");
        assert!(e.to_string().contains("too large"), "{e}");
    }
}
