//! One `gitops` stream to kas (protocol/SERVICES.md §9) for one manifest project: opened on a
//! connection with the project and the commit agentk has, it hands kas's sets and statuses to the
//! worker ([`FromKas`]) and writes the worker's reports. It ends with the connection (or its
//! GOAWAY), when kas ends it, or when the worker drops the [`Link`]. A message kas sends that does
//! not frame, decode or assemble ([`gitops::wire::Assembler`]) is kas's fault: the stream is reset
//! with `ErrorCode::Protocol`, the violation logged, and nothing of the partial set is used.

use bytes::Bytes;
use gitops::DesiredSet;
use gitops::wire::{self, Assembler, AssemblerLimits, Received, ServerMessage};
use prost::Message as _;
use protocol::ErrorCode;
use protocol::proto::{Header, RequestHead};
use protocol::service;
use runtime_tokio::{Connection, RecvStream, SendStream};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use protocol::cache::MessageDecoder;

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// Reports waiting for the stream at most (a newer report supersedes a dropped one).
const OUTGOING_DEPTH: usize = 4;

/// What the stream delivers to the worker.
#[derive(Debug)]
pub enum FromKas {
    /// A complete set for a new commit.
    Set(DesiredSet),
    /// A status (errors, recovery, unknown project).
    Status(wire::Status),
    /// kas answered with another status than 200 (the stream is over).
    Refused(u32),
    /// The stream is over (why).
    Ended(String),
}

/// An open (or opening) stream; dropping it ends the stream.
pub struct Link {
    to_kas: mpsc::Sender<Bytes>,
    from_kas: mpsc::Receiver<FromKas>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request head of a project's stream.
pub fn head(project: &str, has: Option<&str>) -> RequestHead {
    let mut headers = vec![Header {
        name: wire::PROJECT_HEADER.into(),
        value: Bytes::copy_from_slice(project.as_bytes()),
    }];
    if let Some(c) = has {
        headers.push(Header {
            name: wire::COMMIT_HEADER.into(),
            value: Bytes::copy_from_slice(c.as_bytes()),
        });
    }
    RequestHead {
        service: service::GITOPS.into(),
        method: wire::METHOD.into(),
        path: "/".into(),
        headers,
        timeout_ms: 0,
        impersonation: None,
    }
}

impl Link {
    /// Opens the stream of `project` on `conn`, naming the commit agentk has.
    pub fn open(conn: Connection, project: &str, has: Option<&str>) -> Link {
        let (to_kas, out_rx) = mpsc::channel(OUTGOING_DEPTH);
        let (in_tx, from_kas) = mpsc::channel(4);
        let head = head(project, has);
        let task = tokio::spawn(async move {
            let end = run(conn, head, out_rx, &in_tx).await;
            let _ = in_tx.send(end).await;
        });
        Link {
            to_kas,
            from_kas,
            task,
        }
    }

    /// Queues a message for kas; dropped if the stream is backed up (reports supersede each other).
    pub fn send(&self, bytes: Bytes) {
        let _ = self.to_kas.try_send(bytes);
    }

    /// The next thing from kas.
    pub async fn recv(&mut self) -> FromKas {
        self.from_kas
            .recv()
            .await
            .unwrap_or_else(|| FromKas::Ended("the stream task ended".into()))
    }
}

async fn run(
    conn: Connection,
    head: RequestHead,
    mut out: mpsc::Receiver<Bytes>,
    to_worker: &mpsc::Sender<FromKas>,
) -> FromKas {
    let stream = match conn.open(head, false) {
        Ok(s) => s,
        Err(e) => return FromKas::Ended(format!("cannot open the stream: {e}")),
    };
    let answered = tokio::select! {
        r = stream.response() => r,
        () = crate::agent::draining(&conn) => return FromKas::Ended("the connection is draining".into()),
        _ = conn.closed() => return FromKas::Ended("the connection closed".into()),
    };
    match answered {
        Ok(h) if h.status == 200 => {}
        Ok(h) => {
            let _ = stream.finish();
            return FromKas::Refused(h.status);
        }
        Err(e) => return FromKas::Ended(format!("the stream failed before kas answered: {e}")),
    }
    let (recv, mut send) = stream.split();
    let end = tokio::select! {
        e = write_loop(&mut send, &mut out) => e,
        e = read_loop(&recv, to_worker) => e,
        () = crate::agent::draining(&conn) => Err("the connection is draining".to_string()),
        _ = conn.closed() => Err("the connection closed".to_string()),
    };
    match end {
        Ok(violation) => {
            tracing::warn!(error = %violation, "kas broke the gitops protocol; resetting the stream");
            send.reset(ErrorCode::Protocol);
            FromKas::Ended(violation)
        }
        Err(why) => {
            let _ = send.shutdown().await;
            FromKas::Ended(why)
        }
    }
}

/// Writes the worker's messages. `Err` when the stream fails or the worker is gone.
async fn write_loop(
    send: &mut SendStream,
    out: &mut mpsc::Receiver<Bytes>,
) -> Result<String, String> {
    // Bounded by the channel: ends when the worker drops the link.
    while let Some(bytes) = out.recv().await {
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
    }
    Err("the worker stopped".into())
}

/// Reads kas's messages; `Ok(violation)` when kas broke the protocol, `Err(why)` when the stream
/// ended otherwise.
async fn read_loop(recv: &RecvStream, to_worker: &mpsc::Sender<FromKas>) -> Result<String, String> {
    let mut decoder = MessageDecoder::default();
    let mut assembler = Assembler::new(AssemblerLimits::default());
    // Bounded by the stream: every iteration consumes a chunk or ends.
    loop {
        let chunk = match recv.read_chunk(READ_CHUNK).await {
            None => {
                return match decoder.finish() {
                    Ok(()) => Err("kas ended the stream".into()),
                    Err(e) => Ok(e.to_string()),
                };
            }
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(chunk)) => chunk,
        };
        decoder.push(&chunk);
        // Bounded by the buffered octets.
        loop {
            let bytes = match decoder.next_message() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return Ok(e.to_string()),
            };
            let message = match ServerMessage::decode(bytes) {
                Ok(m) => m,
                Err(e) => return Ok(format!("undecodable message: {e}")),
            };
            let delivered = match assembler.handle(message) {
                Ok(Received::Partial) => continue,
                Ok(Received::Set(set)) => FromKas::Set(set),
                Ok(Received::Status(s)) => FromKas::Status(s),
                Err(e) => return Ok(e.to_string()),
            };
            if to_worker.send(delivered).await.is_err() {
                return Err("the worker stopped".into());
            }
        }
    }
}
