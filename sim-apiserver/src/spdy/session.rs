//! A SPDY/3.1 server session over any byte stream (an upgraded HTTP/1.1 connection, or SPDY
//! tunnelled through WebSocket messages), with the parts kubectl's client (`spdystream`) uses:
//! the client opens streams with SYN_STREAM and gets a SYN_REPLY at once; DATA both ways with
//! FIN half-closes; RST_STREAM; PING answered; GOAWAY ends the session; SETTINGS,
//! WINDOW_UPDATE and HEADERS are accepted and ignored (the client does no flow control;
//! back-pressure is TCP's).
//!
//! What a stream carries is the [`Handler`]'s business (exec in `crate::exec::spdy`,
//! port-forward in `crate::portforward`). A malformed frame ends this session only, with
//! GOAWAY `PROTOCOL_ERROR`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::frame::{self, Codec, FLAG_FIN, Frame, Headers};
use crate::sessions::{Activity, Ending};

/// Largest DATA frame the server sends.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Chunks buffered towards a stream's handler.
const STREAM_DEPTH: usize = 16;

/// A stream the client opened.
#[derive(Debug)]
pub struct IncomingStream {
    /// Stream id.
    pub id: u32,
    /// Its SYN_STREAM headers.
    pub headers: Headers,
    /// Data from the client; ends at the client's FIN or RST_STREAM.
    pub data: mpsc::Receiver<Bytes>,
    /// Writes to the client on this stream.
    pub writer: StreamWriter,
}

impl IncomingStream {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The session is gone; nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the SPDY session is closed")]
pub struct Closed;

#[derive(Debug)]
enum Out {
    Frame(Frame),
    /// Write what is queued, then end the session.
    Shutdown,
}

/// Writes DATA (and the final FIN) on one stream.
#[derive(Debug, Clone)]
pub struct StreamWriter {
    id: u32,
    tx: mpsc::Sender<Out>,
}

impl StreamWriter {
    /// Sends `data` on the stream (split into frames of at most 32 KiB).
    pub async fn write(&self, data: Bytes) -> Result<(), Closed> {
        let mut data = data;
        while !data.is_empty() {
            let n = data.len().min(MAX_DATA_FRAME);
            let chunk = data.split_to(n);
            self.tx
                .send(Out::Frame(Frame::Data {
                    stream_id: self.id,
                    fin: false,
                    data: chunk,
                }))
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty DATA frame with FIN).
    pub async fn finish(&self) -> Result<(), Closed> {
        self.tx
            .send(Out::Frame(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Bytes::new(),
            }))
            .await
            .map_err(|_| Closed)
    }

    /// Queues `data` and FIN without waiting (for last words when the session is ending).
    pub fn try_write_final(&self, data: Bytes) {
        let _ = self.tx.try_send(Out::Frame(Frame::Data {
            stream_id: self.id,
            fin: true,
            data,
        }));
    }

    /// Resets the stream.
    pub async fn reset(&self, status: u32) -> Result<(), Closed> {
        self.tx
            .send(Out::Frame(Frame::RstStream {
                stream_id: self.id,
                status,
            }))
            .await
            .map_err(|_| Closed)
    }
}

/// What runs on the streams of a session.
pub trait Handler: Send {
    /// The client opened `stream` (its SYN_REPLY is already queued).
    fn stream(&mut self, stream: IncomingStream);

    /// The session is ending because nothing moved for `timeout`: a chance to tell the client
    /// why (e.g. with [`StreamWriter::try_write_final`]).
    fn on_idle(&mut self, timeout: Duration) {
        let _ = timeout;
    }
}

/// Why the reader stopped.
#[derive(Debug)]
enum ReadEnd {
    /// The client closed the connection or sent GOAWAY.
    Closed,
    /// The client broke the protocol.
    Protocol(frame::FrameError),
    /// The connection failed.
    Io(std::io::Error),
}

/// Serves one SPDY session on `io` until the client ends it, breaks the protocol, or nothing
/// moves for `idle_timeout`.
pub async fn serve<IO, H>(io: IO, mut handler: H, idle_timeout: Duration) -> Ending
where
    IO: AsyncRead + AsyncWrite + Send,
    H: Handler,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let codec = Arc::new(Mutex::new(Codec::new()));
    let activity = Activity::new();
    let (tx, mut rx) = mpsc::channel::<Out>(64);

    let writer = async {
        let mut buf = BytesMut::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut shutdown = false;
            while let Some(out) = next.take() {
                match out {
                    Out::Frame(f) => {
                        if matches!(f, Frame::Data { .. }) {
                            activity.touch();
                        }
                        codec
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .encode(&f, &mut buf);
                    }
                    Out::Shutdown => shutdown = true,
                }
                if buf.len() < 64 * 1024 && !shutdown {
                    next = rx.try_recv().ok();
                }
            }
            wr.write_all(&buf).await?;
            wr.flush().await?;
            buf.clear();
            if shutdown {
                let _ = wr.shutdown().await;
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::pin!(writer);

    let ctl = tx.clone();
    let reader = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
        let mut last_id = 0u32;
        loop {
            let decoded = codec
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .decode(&mut buf);
            let f = match decoded {
                Err(e) => return ReadEnd::Protocol(e),
                Ok(Some(f)) => f,
                Ok(None) => {
                    match rd.read_buf(&mut buf).await {
                        Ok(0) => return ReadEnd::Closed,
                        Ok(_) => {}
                        Err(e) => return ReadEnd::Io(e),
                    }
                    continue;
                }
            };
            let send = |f: Frame| tx.send(Out::Frame(f));
            match f {
                Frame::SynStream {
                    stream_id,
                    flags,
                    headers,
                    ..
                } => {
                    if stream_id % 2 == 0 || stream_id <= last_id {
                        let _ = send(Frame::RstStream {
                            stream_id,
                            status: frame::rst::PROTOCOL_ERROR,
                        })
                        .await;
                        continue;
                    }
                    last_id = stream_id;
                    let _ = send(Frame::SynReply {
                        stream_id,
                        fin: false,
                        headers: Vec::new(),
                    })
                    .await;
                    let (dtx, drx) = mpsc::channel(STREAM_DEPTH);
                    if flags & FLAG_FIN == 0 {
                        streams.insert(stream_id, dtx);
                    }
                    handler.stream(IncomingStream {
                        id: stream_id,
                        headers,
                        data: drx,
                        writer: StreamWriter {
                            id: stream_id,
                            tx: tx.clone(),
                        },
                    });
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    activity.touch();
                    if let Some(s) = streams.get(&stream_id)
                        && !data.is_empty()
                        && s.send(data).await.is_err()
                    {
                        // The handler stopped reading this stream: drop what follows.
                        streams.remove(&stream_id);
                    }
                    if fin {
                        streams.remove(&stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    streams.remove(&stream_id);
                }
                Frame::Ping { id } => {
                    let _ = send(Frame::Ping { id }).await;
                }
                Frame::GoAway { .. } => return ReadEnd::Closed,
                Frame::SynReply { .. }
                | Frame::Settings { .. }
                | Frame::Headers { .. }
                | Frame::WindowUpdate { .. }
                | Frame::Unknown { .. } => {}
            }
        }
    };

    let mut writer_done = false;
    let ending = tokio::select! {
        end = reader => match end {
            ReadEnd::Closed => Ending::Normal,
            ReadEnd::Io(e) => {
                tracing::debug!(error = %e, "SPDY session: connection failed");
                Ending::Normal
            }
            ReadEnd::Protocol(e) => {
                tracing::debug!(error = %e, "SPDY session ended: the client sent a malformed frame");
                let _ = ctl.try_send(Out::Frame(Frame::GoAway { last_good: 0, status: frame::goaway::PROTOCOL_ERROR }));
                Ending::Failed(e.to_string())
            }
        },
        w = &mut writer => {
            writer_done = true;
            if let Err(e) = w {
                tracing::debug!(error = %e, "SPDY session: writing failed");
            }
            Ending::Normal
        },
        () = activity.idle(idle_timeout) => {
            tracing::info!(timeout_s = idle_timeout.as_secs_f64(), "SPDY session ended: idle timeout");
            Ending::Idle
        },
    };
    if ending == Ending::Idle {
        handler.on_idle(idle_timeout);
        let _ = ctl.try_send(Out::Frame(Frame::GoAway {
            last_good: 0,
            status: frame::goaway::OK,
        }));
    }
    // The handler's tasks end with it; flush what is queued (bounded), then close.
    drop(handler);
    if !writer_done {
        let _ = ctl.try_send(Out::Shutdown);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
    }
    ending
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    /// Echoes each stream's data back, then FIN.
    struct Echo;

    impl Handler for Echo {
        fn stream(&mut self, mut s: IncomingStream) {
            tokio::spawn(async move {
                while let Some(b) = s.data.recv().await {
                    if s.writer.write(b).await.is_err() {
                        return;
                    }
                }
                let _ = s.writer.finish().await;
            });
        }
    }

    struct Client {
        io: DuplexStream,
        codec: Codec,
        buf: BytesMut,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            let mut out = BytesMut::new();
            self.codec.encode(&f, &mut out);
            self.io
                .write_all(&out)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }

        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self
                    .codec
                    .decode(&mut self.buf)
                    .unwrap_or_else(|e| panic!("{e}"))
                {
                    return Some(f);
                }
                let n =
                    tokio::time::timeout(Duration::from_secs(10), self.io.read_buf(&mut self.buf))
                        .await
                        .unwrap_or_else(|_| panic!("no frame within 10 s"))
                        .unwrap_or(0);
                if n == 0 {
                    return None;
                }
            }
        }
    }

    fn syn(stream_id: u32) -> Frame {
        Frame::SynStream {
            stream_id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), "data".into())],
        }
    }

    #[tokio::test]
    async fn streams_pings_resets_and_goaway() {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(far, Echo, Duration::from_secs(30)));
        let mut c = Client {
            io: near,
            codec: Codec::new(),
            buf: BytesMut::new(),
        };
        c.send(syn(1)).await;
        assert!(matches!(
            c.recv().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        c.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"hello"),
        })
        .await;
        assert_eq!(
            c.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"hello")
            })
        );
        assert_eq!(
            c.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new()
            })
        );
        c.send(Frame::Ping { id: 9 }).await;
        assert_eq!(c.recv().await, Some(Frame::Ping { id: 9 }));
        // Server-numbered (even) or reused ids are refused; the session goes on.
        c.send(syn(2)).await;
        assert!(matches!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 2,
                status: frame::rst::PROTOCOL_ERROR
            })
        ));
        c.send(syn(1)).await;
        assert!(matches!(
            c.recv().await,
            Some(Frame::RstStream { stream_id: 1, .. })
        ));
        c.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1,
        })
        .await;
        c.send(Frame::GoAway {
            last_good: 0,
            status: 0,
        })
        .await;
        assert_eq!(c.recv().await, None, "the server closes after GOAWAY");
        let ending = server.await.unwrap_or(Ending::Failed("join".into()));
        assert_eq!(ending, Ending::Normal);
    }

    #[tokio::test]
    async fn idle_sessions_end_with_goaway() {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(far, Echo, Duration::from_millis(200)));
        let mut c = Client {
            io: near,
            codec: Codec::new(),
            buf: BytesMut::new(),
        };
        c.send(syn(1)).await;
        assert!(matches!(c.recv().await, Some(Frame::SynReply { .. })));
        assert!(matches!(c.recv().await, Some(Frame::GoAway { .. })));
        assert_eq!(c.recv().await, None);
        assert_eq!(server.await.unwrap_or(Ending::Normal), Ending::Idle);
    }
}
