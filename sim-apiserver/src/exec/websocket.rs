//! exec and attach over WebSocket, the channel protocols `v5.channel.k8s.io` and
//! `v4.channel.k8s.io` (KEP-4006): every binary message starts with a channel byte, 0 stdin,
//! 1 stdout, 2 stderr, 3 error (one `Status` JSON, then the server closes), 4 resize (JSON
//! `{"Width":…,"Height":…}`, accepted and ignored: there is no terminal). v5 adds 255, close:
//! `[255, channel]` half-closes a channel, which is how `kubectl exec -i` ends stdin.
//!
//! The session ends with a normal WebSocket close after the error channel, which readers see
//! as end of file on every channel. A malformed message (unknown channel, text frame, broken
//! framing) ends this session only, with a protocol-error close.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{Container, Process, Program, StreamOptions, exit_status, failure_status};
use crate::sessions::{Activity, Ending};

/// The remote-command subprotocols served, most preferred first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// How long the server keeps reading after its close, so the client's close reply is consumed.
const LINGER: Duration = Duration::from_secs(2);

fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(channel);
    b.put_slice(data);
    Message::Binary(b.freeze())
}

/// A malformed message from the client.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("WebSocket error: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("message for unknown channel {0}")]
    UnknownChannel(u8),
    #[error("text messages are not part of the {0} protocol")]
    Text(&'static str),
}

/// Runs one exec or attach session over an accepted WebSocket speaking `protocol`.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    protocol: &'static str,
    ctr: Arc<Container>,
    program: Program,
    opts: StreamOptions,
    idle_timeout: Duration,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let v5 = protocol == PROTOCOLS[0];
    let argv = match &program {
        Program::Exec(a) => a.clone(),
        Program::Attach => Vec::new(),
    };
    let Process {
        stdin,
        mut stdout,
        mut stderr,
        mut task,
    } = Process::start(ctr, program, &opts);
    let abort = task.abort_handle();
    let activity = Activity::new();
    let (mut sink, mut stream) = ws.split();
    let mut stdin = stdin;

    let reader = async {
        while let Some(msg) = stream.next().await {
            match msg? {
                Message::Binary(b) => {
                    let Some((&channel, data)) = b.split_first() else {
                        continue;
                    };
                    activity.touch();
                    match channel {
                        STDIN => {
                            if let Some(tx) = &stdin
                                && !data.is_empty()
                                && tx.send(b.slice(1..)).await.is_err()
                            {
                                // The command no longer reads stdin.
                                stdin = None;
                            }
                        }
                        RESIZE => {}
                        CLOSE if v5 => {
                            if data.first() == Some(&STDIN) {
                                stdin = None;
                            }
                        }
                        other => return Err(ClientError::UnknownChannel(other)),
                    }
                }
                Message::Text(_) => return Err(ClientError::Text(protocol)),
                Message::Close(_) => return Ok(()),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok::<(), ClientError>(())
    };
    tokio::pin!(reader);

    let writer = async {
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            let (channel, chunk) = tokio::select! {
                o = stdout.recv(), if out_open => (STDOUT, o),
                e = stderr.recv(), if err_open => (STDERR, e),
            };
            match chunk {
                Some(data) => {
                    activity.touch();
                    sink.send(channel_message(channel, &data)).await?;
                }
                None if channel == STDOUT => out_open = false,
                None => err_open = false,
            }
        }
        let status = match (&mut task).await {
            Ok(code) => exit_status(code, &argv),
            Err(e) => failure_status("InternalError", &format!("the command failed: {e}")),
        };
        sink.send(channel_message(ERROR, status.to_string().as_bytes()))
            .await?;
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    };

    let mut reader_done = false;
    let ending = tokio::select! {
        r = &mut reader => match r {
            Ok(()) => {
                reader_done = true;
                tracing::debug!(protocol, "client closed the exec session");
                Ending::Normal
            }
            Err(e) => {
                tracing::debug!(protocol, error = %e, "exec session ended: the client sent a malformed message");
                abort.abort();
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::Protocol,
                    reason: e.to_string().chars().take(100).collect::<String>().into(),
                }));
                let _ = tokio::time::timeout(LINGER, sink.send(close)).await;
                return Ending::Failed(e.to_string());
            }
        },
        w = writer => match w {
            Ok(()) => Ending::Normal,
            Err(e) => {
                tracing::debug!(protocol, error = %e, "exec session: the client went away");
                abort.abort();
                return Ending::Normal;
            }
        },
        () = activity.idle(idle_timeout) => {
            tracing::info!(protocol, timeout_s = idle_timeout.as_secs_f64(), "exec session ended: idle timeout");
            abort.abort();
            let status = failure_status("Timeout", &format!("the session was idle for {idle_timeout:?} and was closed"));
            let last = channel_message(ERROR, status.to_string().as_bytes());
            let _ = tokio::time::timeout(LINGER, sink.send(last)).await;
            Ending::Idle
        },
    };
    abort.abort();
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    // Bounded: a client that stopped reading must not hold the session slot.
    let _ = tokio::time::timeout(LINGER, sink.send(close)).await;
    if !reader_done {
        // Consume the client's close reply so the connection ends without a reset.
        let _ = tokio::time::timeout(LINGER, &mut reader).await;
    }
    ending
}
