//! SPDY over WebSocket, as kubectl's port-forward speaks it (`SPDY/3.1+portforward.k8s.io`):
//! the SPDY byte stream travels in binary messages, each write of the sender one message, with
//! no framing of its own. [`over_websocket`] turns the WebSocket back into a byte stream.

use std::future::Future;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Bytes buffered between the WebSocket and the SPDY session.
const BUFFER: usize = 64 * 1024;
/// How long the closing handshake may take.
const LINGER: Duration = Duration::from_secs(2);

/// A byte stream carried by `ws`, and the pump that must run alongside whoever uses it. The
/// two directions pump independently (a peer slow to read never stalls the other direction);
/// the pump ends when either side closes, or on a text message or broken framing.
pub fn over_websocket<S>(ws: WebSocketStream<S>) -> (DuplexStream, impl Future<Output = ()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (near, far) = tokio::io::duplex(BUFFER);
    let pump = async move {
        let (mut sink, mut stream) = ws.split();
        let (mut far_rd, mut far_wr) = tokio::io::split(far);
        let inbound = async {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Binary(b)) => {
                        if far_wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                    Ok(Message::Close(_)) => break,
                    Ok(Message::Text(_)) => {
                        tracing::debug!(
                            "SPDY-over-WebSocket session ended: the client sent a text message"
                        );
                        return CloseCode::Protocol;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY-over-WebSocket session ended: bad WebSocket framing");
                        return CloseCode::Protocol;
                    }
                }
            }
            CloseCode::Normal
        };
        let outbound = async {
            let mut buf = vec![0u8; BUFFER];
            loop {
                match far_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            }
        };
        let code = tokio::select! {
            code = inbound => code,
            () = outbound => CloseCode::Normal,
        };
        let _ = far_wr.shutdown().await;
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: "".into(),
        }));
        let _ = tokio::time::timeout(LINGER, sink.send(close)).await;
    };
    (near, pump)
}
