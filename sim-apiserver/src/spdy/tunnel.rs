//! SPDY over WebSocket, as kubectl's port-forward speaks it (`SPDY/3.1+portforward.k8s.io`):
//! the SPDY byte stream travels in binary messages, each write of the sender one message, with
//! no framing of its own. [`over_websocket`] turns the WebSocket back into a byte stream.

use std::future::Future;

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Bytes buffered between the WebSocket and the SPDY session.
const BUFFER: usize = 64 * 1024;

/// A byte stream carried by `ws`, and the pump that must run alongside whoever uses it; the
/// pump ends when either side closes (a text message or broken framing ends it too).
pub fn over_websocket<S>(ws: WebSocketStream<S>) -> (DuplexStream, impl Future<Output = ()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (near, mut far) = tokio::io::duplex(BUFFER);
    let pump = async move {
        let (mut sink, mut stream) = ws.split();
        let mut buf = vec![0u8; BUFFER];
        let mut close = CloseCode::Normal;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        if far.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(Message::Text(_))) => {
                        tracing::info!("SPDY-over-WebSocket session ended: the client sent a text message");
                        close = CloseCode::Protocol;
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "SPDY-over-WebSocket session ended: bad WebSocket framing");
                        close = CloseCode::Protocol;
                        break;
                    }
                },
                n = far.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
        let _ = far.shutdown().await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: close,
                reason: "".into(),
            })))
            .await;
    };
    (near, pump)
}
