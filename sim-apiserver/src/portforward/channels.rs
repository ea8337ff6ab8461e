//! Port-forward over WebSocket with channel pairs (`v4.channel.k8s.io`, or `portforward.k8s.io`
//! without a version), the kubelet's older WebSocket protocol that clients other than kubectl
//! (e.g. kube-rs) speak: the ports come in the query (`?ports=8080&ports=9090` or
//! `ports=8080,9090`); port `i` has data channel `2i` and error channel `2i+1`; the server
//! first sends each channel its port as two little-endian bytes; then each binary message is
//! a channel byte and data. One connection per port for the session's lifetime.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{PodNetwork, PodTarget};
use crate::sessions::{Activity, Ending};
use crate::status::ApiError;

/// The versioned subprotocol.
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";
/// The unversioned subprotocol.
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// Most ports one session forwards (channel ids are one byte).
pub const MAX_PORTS: usize = 127;

/// The `ports` of a port-forward query.
pub fn ports(query: Option<&str>) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "ports" {
            continue;
        }
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unable to parse \"{p}\" as a port"
                    )));
                }
            }
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_PORTS} ports can be forwarded at once"
        )));
    }
    Ok(ports)
}

fn message(channel: u8, data: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(channel);
    b.put_slice(data);
    Message::Binary(b.freeze())
}

/// Runs one channel-protocol port-forward session.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    network: Arc<PodNetwork>,
    pod: PodTarget,
    ports: Vec<u16>,
    idle_timeout: Duration,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sink, mut stream) = ws.split();
    let activity = Activity::new();
    // Room for every port's two prefix messages and an error before the pump starts.
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(3 * ports.len() + 32);
    let mut to_ports: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        // `ports` holds at most MAX_PORTS entries: the channel ids fit a byte.
        let data_ch = u8::try_from(2 * i).unwrap_or(u8::MAX - 1);
        let le = port.to_le_bytes();
        let _ = out_tx.send(message(data_ch, &le)).await;
        let _ = out_tx.send(message(data_ch + 1, &le)).await;
        let conn = match network.address(&pod, port).await {
            Ok(a) => TcpStream::connect(a)
                .await
                .map_err(|e| format!("error forwarding port {port} to pod {}: {e}", pod.uid)),
            Err(e) => Err(e),
        };
        match conn {
            Ok(tcp) => {
                let (mut r, mut w) = tcp.into_split();
                let (tx, mut rx) = mpsc::channel::<Bytes>(16);
                to_ports.push(Some(tx));
                tasks.push(tokio::spawn(async move {
                    while let Some(b) = rx.recv().await {
                        if w.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    let _ = w.shutdown().await;
                }));
                let out = out_tx.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 || out.send(message(data_ch, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            Err(msg) => {
                to_ports.push(None);
                let _ = out_tx.send(message(data_ch + 1, msg.as_bytes())).await;
            }
        }
    }
    drop(out_tx);

    let inbound = async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    let Some((&ch, data)) = b.split_first() else {
                        continue;
                    };
                    activity.touch();
                    let idx = usize::from(ch / 2);
                    if idx >= to_ports.len() {
                        return Err(format!("message for unknown channel {ch}"));
                    }
                    if ch % 2 == 0
                        && !data.is_empty()
                        && let Some(tx) = &to_ports[idx]
                        && tx.send(b.slice(1..)).await.is_err()
                    {
                        to_ports[idx] = None;
                    }
                }
                Ok(Message::Text(_)) => {
                    return Err("text messages are not part of the binary protocol".into());
                }
                Ok(Message::Close(_)) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("WebSocket error: {e}")),
            }
        }
        Ok(())
    };
    let outbound = async {
        while let Some(m) = out_rx.recv().await {
            activity.touch();
            if sink.send(m).await.is_err() {
                break;
            }
        }
    };
    let (ending, code) = tokio::select! {
        r = inbound => match r {
            Ok(()) => (Ending::Normal, CloseCode::Normal),
            Err(e) => (Ending::Failed(e), CloseCode::Protocol),
        },
        () = outbound => (Ending::Normal, CloseCode::Normal),
        () = activity.idle(idle_timeout) => (Ending::Idle, CloseCode::Normal),
    };
    for t in &tasks {
        t.abort();
    }
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: "".into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(close)).await;
    ending
}
