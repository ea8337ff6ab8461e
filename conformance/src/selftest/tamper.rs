//! Frame-level tampering for the self-test peers' faults: rewriting what a [`protocol::Connection`]
//! sends, rewriting the first frame it receives, and watching what it receives.
//!
//! The self-test agent and kas are built on the reference connection, which follows every rule; a
//! fault that breaks a wire rule is therefore applied here, between the connection and the socket.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::tunnel::frame::{Decoder, Frame, MAX_FRAME_SIZE_LIMIT};
use protocol::{Connection, ErrorCode, StreamId};

/// Rewrites outgoing frames: `rewrite` maps each frame to what is sent instead (possibly nothing
/// or several frames). The first `preface` octets (the agent's preface) pass untouched.
pub struct Outgoing {
    decoder: Decoder,
    preface_left: usize,
    rewrite: Option<Box<dyn FnMut(Frame) -> Vec<Frame> + Send>>,
}

impl Outgoing {
    /// Passes everything through.
    pub fn none() -> Outgoing {
        Outgoing {
            decoder: Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT),
            preface_left: 0,
            rewrite: None,
        }
    }

    /// Rewrites every frame after `preface` octets with `rewrite`.
    pub fn rewriting(
        preface: usize,
        rewrite: impl FnMut(Frame) -> Vec<Frame> + Send + 'static,
    ) -> Outgoing {
        Outgoing {
            decoder: Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT),
            preface_left: preface,
            rewrite: Some(Box::new(rewrite)),
        }
    }

    /// What to send for the connection's output `out`.
    pub fn apply(&mut self, out: &[u8]) -> Vec<u8> {
        let Some(rewrite) = &mut self.rewrite else {
            return out.to_vec();
        };
        let mut result = Vec::with_capacity(out.len());
        let skip = self.preface_left.min(out.len());
        result.extend_from_slice(&out[..skip]);
        self.preface_left -= skip;
        self.decoder.feed(&out[skip..]);
        // The connection only emits whole, valid frames; each round consumes one.
        while let Ok(Some(f)) = self.decoder.decode() {
            for g in rewrite(f) {
                result.extend_from_slice(&g.to_bytes());
            }
        }
        result
    }
}

/// Rewrites the first frame received (after the `preface`), then passes everything through. Input
/// that does not start with the preface passes untouched.
pub struct FirstIncoming {
    preface: &'static [u8],
    buf: Vec<u8>,
    done: bool,
    rewrite: Option<Box<dyn FnMut(Frame) -> Frame + Send>>,
}

impl FirstIncoming {
    pub fn none() -> FirstIncoming {
        FirstIncoming {
            preface: b"",
            buf: Vec::new(),
            done: true,
            rewrite: None,
        }
    }

    pub fn rewriting(
        preface: &'static [u8],
        rewrite: impl FnMut(Frame) -> Frame + Send + 'static,
    ) -> Self {
        FirstIncoming {
            preface,
            buf: Vec::new(),
            done: false,
            rewrite: Some(Box::new(rewrite)),
        }
    }

    /// What to hand to the connection for the received `data` (possibly nothing yet).
    pub fn apply(&mut self, data: &[u8]) -> Vec<u8> {
        if self.done {
            return data.to_vec();
        }
        self.buf.extend_from_slice(data);
        let p = self.preface.len();
        let seen = self.buf.len().min(p);
        if self.buf[..seen] != self.preface[..seen] {
            // Not the protocol: nothing to rewrite.
            self.done = true;
            return std::mem::take(&mut self.buf);
        }
        if self.buf.len() < p + 9 {
            return Vec::new();
        }
        let len = (usize::from(self.buf[p]) << 16)
            | (usize::from(self.buf[p + 1]) << 8)
            | usize::from(self.buf[p + 2]);
        if self.buf.len() < p + 9 + len {
            return Vec::new();
        }
        self.done = true;
        let mut d = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
        d.feed(&self.buf[p..p + 9 + len]);
        let mut out = self.buf[..p].to_vec();
        match (d.decode(), self.rewrite.as_mut()) {
            (Ok(Some(f)), Some(rewrite)) => out.extend_from_slice(&rewrite(f).to_bytes()),
            _ => out.extend_from_slice(&self.buf[p..p + 9 + len]),
        }
        out.extend_from_slice(&self.buf[p + 9 + len..]);
        self.buf.clear();
        out
    }
}

/// Watches received octets (after `preface` octets) for a frame of a type the protocol does not
/// define; stops watching at the first undecodable input.
pub struct UnknownFrameWatch {
    preface_left: usize,
    decoder: Option<Decoder>,
}

impl UnknownFrameWatch {
    pub fn new(preface: usize) -> UnknownFrameWatch {
        UnknownFrameWatch {
            preface_left: preface,
            decoder: Some(Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT)),
        }
    }

    /// Whether `data` completes a frame of an unknown type.
    pub fn saw_unknown(&mut self, data: &[u8]) -> bool {
        let skip = self.preface_left.min(data.len());
        self.preface_left -= skip;
        let Some(d) = &mut self.decoder else {
            return false;
        };
        d.feed(&data[skip..]);
        // Each round consumes one frame of a finite buffer.
        loop {
            match d.decode() {
                Ok(Some(Frame::Unknown { .. })) => return true,
                Ok(Some(_)) => {}
                Ok(None) => return false,
                Err(_) => {
                    self.decoder = None;
                    return false;
                }
            }
        }
    }
}

/// PING answers carry a different payload.
pub fn wrong_ping_payload(f: Frame) -> Vec<Frame> {
    match f {
        Frame::Ping { ack: true, payload } => {
            let mut p = payload;
            p[0] ^= 0xff;
            vec![Frame::Ping {
                ack: true,
                payload: p,
            }]
        }
        f => vec![f],
    }
}

/// GOAWAYs with an error code are not sent.
pub fn silent_on_error(f: Frame) -> Vec<Frame> {
    match f {
        Frame::GoAway(g) if g.code != 0 => vec![],
        f => vec![f],
    }
}

/// GOAWAY NO_ERROR (the reply to the peer's) is not sent.
pub fn no_goaway_reply(f: Frame) -> Vec<Frame> {
    match f {
        Frame::GoAway(g) if g.code == 0 => vec![],
        f => vec![f],
    }
}

/// Every non-empty DATA frame is sent twice (the first copy without END_STREAM).
pub fn double_data(f: Frame) -> Vec<Frame> {
    match f {
        Frame::Data {
            stream,
            data,
            end_stream,
        } if !data.is_empty() => vec![
            Frame::Data {
                stream,
                data: data.clone(),
                end_stream: false,
            },
            Frame::Data {
                stream,
                data,
                end_stream,
            },
        ],
        f => vec![f],
    }
}

/// What stands between the socket and the connection on the way in.
pub struct Input {
    pub first: FirstIncoming,
    /// Abort with PROTOCOL_ERROR on a frame of an unknown type (a fault).
    pub refuse_unknown: Option<UnknownFrameWatch>,
}

/// Waits for input (until the connection's next deadline, 20 ms at most), hands it to the connection
/// through `input`, then fires the connection's due timers.
pub fn read_and_tick<C, D>(
    conn: &mut Connection,
    tls: &mut rustls::StreamOwned<C, TcpStream>,
    buf: &mut [u8],
    input: &mut Input,
) -> Result<(), String>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    let now = Instant::now();
    let wait = conn
        .poll_timeout()
        .map_or(Duration::from_millis(20), |t| {
            t.saturating_duration_since(now)
        })
        .clamp(Duration::from_millis(1), Duration::from_millis(20));
    tls.get_ref()
        .set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    match tls.read(buf) {
        Ok(0) => conn.handle_eof(),
        Ok(n) => {
            if let Some(watch) = &mut input.refuse_unknown
                && watch.saw_unknown(&buf[..n])
            {
                conn.abort(ErrorCode::Protocol, "unknown frame type");
                return Ok(());
            }
            let data = input.first.apply(&buf[..n]);
            if !data.is_empty() {
                conn.handle_input(&data, Instant::now());
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Err(_) => conn.handle_eof(),
    }
    conn.handle_timeout(Instant::now());
    Ok(())
}

/// Body octets waiting for flow-control credit on one stream, and whether the stream ends after
/// them.
#[derive(Debug, Default)]
pub struct Queue {
    pub chunks: VecDeque<Bytes>,
    pub fin: bool,
}

impl Queue {
    /// Sends what is queued as far as credit allows; whether everything (and the end, if due) went.
    pub fn offer(&mut self, conn: &mut Connection, id: StreamId) -> bool {
        // Each round sends (part of) one queued chunk.
        while let Some(chunk) = self.chunks.pop_front() {
            let last = self.chunks.is_empty() && self.fin;
            match conn.send_data(id, chunk.clone(), last) {
                Ok(n) if n == chunk.len() => {}
                Ok(n) => {
                    self.chunks.push_front(chunk.slice(n..));
                    return false;
                }
                Err(_) => {
                    self.chunks.clear();
                    return true;
                }
            }
        }
        true
    }
}

/// A DATA frame as the peer would see it (for faults that add frames).
pub fn data(stream: u32, payload: &'static [u8]) -> Frame {
    Frame::Data {
        stream: protocol::StreamId(stream),
        data: Bytes::from_static(payload),
        end_stream: false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::proto;

    #[test]
    fn rewrites_outgoing_and_the_first_incoming_frame() {
        let ping = Frame::Ping {
            ack: true,
            payload: [1; 8],
        };
        let mut out = Outgoing::rewriting(2, |f| match f {
            Frame::Ping { ack, .. } => vec![Frame::Ping {
                ack,
                payload: [2; 8],
            }],
            other => vec![other],
        });
        let mut wire = b"PR".to_vec();
        wire.extend_from_slice(&ping.to_bytes());
        let sent = out.apply(&wire[..5]);
        let sent = [sent, out.apply(&wire[5..])].concat();
        assert_eq!(&sent[..2], b"PR");
        let mut d = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
        d.feed(&sent[2..]);
        assert_eq!(
            d.decode().unwrap(),
            Some(Frame::Ping {
                ack: true,
                payload: [2; 8]
            })
        );

        let accept = Frame::Accept(proto::Accept {
            version: 9,
            ..Default::default()
        });
        let mut first = FirstIncoming::rewriting(b"", |f| match f {
            Frame::Accept(mut a) => {
                a.version = 1;
                Frame::Accept(a)
            }
            other => other,
        });
        let mut wire = accept.to_bytes().to_vec();
        wire.extend_from_slice(&ping.to_bytes());
        let got = [first.apply(&wire[..4]), first.apply(&wire[4..])].concat();
        let mut d = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
        d.feed(&got);
        assert!(matches!(d.decode().unwrap(), Some(Frame::Accept(a)) if a.version == 1));
        assert_eq!(d.decode().unwrap(), Some(ping));
        // Something else than the preface passes untouched.
        let mut first = FirstIncoming::rewriting(b"PRE", |f| f);
        assert_eq!(first.apply(b"GET / HTTP/1.1\r\n"), b"GET / HTTP/1.1\r\n");

        let mut watch = UnknownFrameWatch::new(0);
        assert!(!watch.saw_unknown(&accept.to_bytes()));
        assert!(
            watch.saw_unknown(
                &Frame::Unknown {
                    kind: 0x42,
                    flags: 0,
                    stream: protocol::StreamId(0),
                    payload: Bytes::new()
                }
                .to_bytes()
            )
        );
    }
}
