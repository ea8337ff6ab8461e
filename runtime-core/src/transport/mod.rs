//! How the tunnel's bytes reach the other end: the byte-stream transports under the one driver.
//!
//! The tunnel protocol (preface, frames) is the same over every transport; only what carries its
//! octets differs:
//!
//! | scheme | agent dials | kas accepts |
//! |---|---|---|
//! | `tls://` | TCP (optionally through an HTTP CONNECT proxy), TLS 1.3 with ALPN `agent-tunnel/1` | the agent listener (TLS) |
//! | `wss://` | TCP (optionally through a proxy), TLS with ALPN `http/1.1`, a WebSocket upgrade with the subprotocol [`SUBPROTOCOL`] | the agent listener (after TLS, a `GET` instead of the tunnel preface), or kas's API port (`/api/v1/tunnel`) |
//! | `ws://` | the same without TLS (tests; or TLS terminated by a load balancer in front) | the same |
//!
//! | module | what it is |
//! |---|---|
//! | [`endpoint`] | [`Endpoint`] (scheme, host, port, path, proxy), parsed from a kas address; [`dial`]: the byte stream to hand the driver |
//! | [`websocket`] | [`WsIo`]: a WebSocket as a byte stream (one binary message per write batch), the client and server handshakes |
//! | [`proxy`] | HTTP CONNECT through a proxy ([`ProxyConfig`], `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`), with basic auth; refusals are a typed [`ProxyError`] |
//! | [`prefixed`] | [`Prefixed`]: a byte stream with octets already read put back in front (sniffing, proxy answers) |

pub mod endpoint;
pub mod prefixed;
pub mod proxy;
pub mod websocket;

pub use endpoint::{Endpoint, EndpointError, Scheme, dial};
pub use prefixed::Prefixed;
pub use proxy::{BadProxyUrl, ProxyConfig, ProxyError};
pub use websocket::{SUBPROTOCOL, WsIo};

/// In-memory byte streams for the transport's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_io::{AsyncRead, AsyncWrite};

    /// Reads `input`, records what is written.
    pub(crate) struct Duplex {
        input: futures_lite::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Duplex {
        pub(crate) fn new(input: Vec<u8>) -> Duplex {
            Duplex {
                input: futures_lite::io::Cursor::new(input),
                output: Vec::new(),
            }
        }

        pub(crate) fn written(&self) -> &[u8] {
            &self.output
        }
    }

    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Duplex {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.output.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}
