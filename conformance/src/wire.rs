//! A blocking, scripted protocol peer over one TLS connection: it writes frames (or raw octets) and
//! reads the implementation's frames with deadlines, answers PINGs unless told not to, and checks the
//! flow-control rules on every DATA frame it receives against the credit it granted.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use protocol::Settings;
use protocol::tunnel::frame::{Decoder, Frame, MAX_FRAME_SIZE_LIMIT, MAX_WINDOW, StreamId};

/// The TLS stream, either end.
pub enum Tls {
    Server(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    Client(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Tls {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Tls::Server(s) => s.get_ref(),
            Tls::Client(s) => s.get_ref(),
        }
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        match self {
            Tls::Server(s) => s.conn.alpn_protocol().map(<[u8]>::to_vec),
            Tls::Client(s) => s.conn.alpn_protocol().map(<[u8]>::to_vec),
        }
    }
}

impl Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Tls::Server(s) => s.read(buf),
            Tls::Client(s) => s.read(buf),
        }
    }
}

impl Write for Tls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Tls::Server(s) => s.write(buf),
            Tls::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Tls::Server(s) => s.flush(),
            Tls::Client(s) => s.flush(),
        }
    }
}

/// Why receiving failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the implementation closed the connection")]
    Eof,
    #[error("the implementation sent octets that are not a valid frame: {0}")]
    Malformed(protocol::FrameError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// How many octets one read asks for.
const READ_CHUNK: usize = 64 * 1024;

/// The credit this side granted to the implementation for DATA, and every violation seen.
#[derive(Debug, Clone, Default)]
pub struct FlowWatch {
    /// Off until the handshake announced our settings.
    pub enabled: bool,
    pub max_frame_size: u32,
    pub initial_stream_window: i64,
    pub connection_credit: i64,
    pub stream_credit: HashMap<u32, i64>,
    /// DATA octets received per stream (total).
    pub received: HashMap<u32, u64>,
    pub violations: Vec<String>,
}

impl FlowWatch {
    /// Starts watching with the settings this side announced.
    pub fn start(&mut self, ours: &Settings) {
        self.enabled = true;
        self.max_frame_size = ours.max_frame_size;
        self.initial_stream_window = i64::from(ours.initial_stream_window);
        self.connection_credit = i64::from(ours.initial_connection_window);
    }

    fn stream_opened(&mut self, id: u32) {
        if self.enabled {
            self.stream_credit
                .entry(id)
                .or_insert(self.initial_stream_window);
        }
    }

    fn granted(&mut self, id: u32, increment: u32) {
        if !self.enabled {
            return;
        }
        if id == 0 {
            self.connection_credit += i64::from(increment);
        } else if let Some(c) = self.stream_credit.get_mut(&id) {
            *c += i64::from(increment);
        }
    }

    fn data(&mut self, id: u32, len: usize) {
        *self.received.entry(id).or_default() += len as u64;
        if !self.enabled {
            return;
        }
        let n = i64::try_from(len).unwrap_or(i64::MAX);
        if len > self.max_frame_size as usize {
            self.violations.push(format!(
                "DATA frame of {len} octets on stream {id} exceeds our max_frame_size {}",
                self.max_frame_size
            ));
        }
        self.connection_credit -= n;
        if self.connection_credit < 0 {
            self.violations.push(format!(
                "DATA on stream {id} exceeds the connection window by {} octets",
                -self.connection_credit
            ));
        }
        if let Some(c) = self.stream_credit.get_mut(&id) {
            *c -= n;
            if *c < 0 {
                self.violations.push(format!(
                    "DATA on stream {id} exceeds the stream window by {} octets",
                    -*c
                ));
            }
        }
    }
}

/// One connection with the implementation under test.
pub struct Peer {
    tls: Tls,
    decoder: Decoder,
    /// Answer PINGs without ACK at once (and do not hand them to the scenario).
    pub auto_pong: bool,
    pub flow: FlowWatch,
    /// The last frames received, for failure messages.
    recent: Vec<String>,
    eof: bool,
}

/// `count` streams opened (odd ids from 1, service `service`) and reset at once, each REQUEST
/// followed by its RESET: the "rapid reset" pattern of PROTOCOL.md §17.
pub fn rapid_resets(count: u32, service: &str) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(2 * count as usize);
    for i in 0..count {
        let stream = StreamId(2 * i + 1);
        frames.push(Frame::Request {
            stream,
            head: protocol::proto::RequestHead {
                service: service.to_owned(),
                ..Default::default()
            },
            end_stream: false,
        });
        frames.push(Frame::Reset {
            stream,
            reset: protocol::proto::Reset {
                code: protocol::ErrorCode::Cancel.to_u32(),
                message: String::new(),
            },
        });
    }
    frames
}

/// A short description of a frame for logs and failure messages.
pub fn summary(f: &Frame) -> String {
    match f {
        Frame::Data {
            stream,
            data,
            end_stream,
        } => format!(
            "DATA(stream {stream}, {} octets{})",
            data.len(),
            if *end_stream { ", END_STREAM" } else { "" }
        ),
        Frame::Request {
            stream,
            head,
            end_stream,
        } => format!(
            "REQUEST(stream {stream}, {} {} {}{})",
            head.service,
            head.method,
            head.path,
            if *end_stream { ", END_STREAM" } else { "" }
        ),
        Frame::Response {
            stream,
            head,
            end_stream,
        } => format!(
            "RESPONSE(stream {stream}, status {}{})",
            head.status,
            if *end_stream { ", END_STREAM" } else { "" }
        ),
        Frame::Trailer { stream, trailer } => {
            format!("TRAILER(stream {stream}, code {})", trailer.code)
        }
        Frame::Reset { stream, reset } => format!(
            "RESET(stream {stream}, {})",
            protocol::ErrorCode::from_u32(reset.code)
        ),
        Frame::WindowUpdate { stream, increment } => {
            format!("WINDOW_UPDATE(stream {stream}, +{increment})")
        }
        Frame::Ping { ack, payload } => {
            format!(
                "PING({}{})",
                hex::encode(payload),
                if *ack { ", ACK" } else { "" }
            )
        }
        Frame::GoAway(g) => format!(
            "GOAWAY({}, last_stream_id {}, {:?})",
            protocol::ErrorCode::from_u32(g.code),
            g.last_stream_id,
            g.message
        ),
        Frame::Hello(h) => format!("HELLO(versions {}..={})", h.min_version, h.max_version),
        Frame::Accept(a) => format!("ACCEPT(version {}, agent {})", a.version, a.agent_id),
        Frame::Reject(r) => format!("REJECT(code {}, {:?})", r.code, r.message),
        Frame::Unknown { kind, stream, .. } => format!("UNKNOWN(type {kind:#x}, stream {stream})"),
    }
}

impl Peer {
    pub fn new(tls: Tls) -> Peer {
        let _ = tls.tcp().set_nodelay(true);
        let _ = tls.tcp().set_write_timeout(Some(Duration::from_secs(10)));
        Peer {
            tls,
            decoder: Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT),
            auto_pong: true,
            flow: FlowWatch::default(),
            recent: Vec::new(),
            eof: false,
        }
    }

    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// Writes octets as they are.
    pub fn send_raw(&mut self, octets: &[u8]) -> io::Result<()> {
        self.tls.write_all(octets)?;
        self.tls.flush()
    }

    /// Writes one frame (and records the credit it grants or the stream it opens).
    pub fn send(&mut self, f: &Frame) -> io::Result<()> {
        match f {
            Frame::WindowUpdate { stream, increment } => self.flow.granted(stream.0, *increment),
            Frame::Request { stream, .. } => self.flow.stream_opened(stream.0),
            _ => {}
        }
        self.send_raw(&f.to_bytes())
    }

    /// Writes several frames in one write.
    pub fn send_all(&mut self, frames: &[Frame]) -> io::Result<()> {
        let mut octets = Vec::new();
        for f in frames {
            match f {
                Frame::WindowUpdate { stream, increment } => {
                    self.flow.granted(stream.0, *increment)
                }
                Frame::Request { stream, .. } => self.flow.stream_opened(stream.0),
                _ => {}
            }
            octets.extend_from_slice(&f.to_bytes());
        }
        self.send_raw(&octets)
    }

    /// Reads exactly `n` raw octets (the preface) before any frame.
    pub fn recv_raw(&mut self, n: usize, deadline: Instant) -> Result<Option<Vec<u8>>, WireError> {
        // Bounded by the deadline: every iteration reads or times out.
        loop {
            if let Some(b) = self.decoder.take_raw(n) {
                return Ok(Some(b.to_vec()));
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Reads more octets into the decoder; `false` when the deadline passed first.
    fn fill(&mut self, deadline: Instant) -> Result<bool, WireError> {
        if self.eof {
            return Err(WireError::Eof);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.tls.tcp().set_read_timeout(Some(wait))?;
        let mut buf = vec![0u8; READ_CHUNK];
        match self.tls.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                Err(WireError::Eof)
            }
            Ok(n) => {
                if let Some(b) = buf.get(..n) {
                    self.decoder.feed(b);
                }
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(Instant::now() < deadline)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                self.eof = true;
                Err(WireError::Eof)
            }
            Err(e) => Err(WireError::Io(e)),
        }
    }

    /// The next frame from the implementation, `None` if the deadline passed first. PINGs are
    /// answered and skipped while `auto_pong` is set.
    pub fn recv(&mut self, deadline: Instant) -> Result<Option<Frame>, WireError> {
        // Bounded by the deadline: every iteration decodes a frame or reads (or times out).
        loop {
            match self.decoder.decode() {
                Ok(Some(f)) => {
                    self.recent.push(summary(&f));
                    if self.recent.len() > 12 {
                        self.recent.remove(0);
                    }
                    match &f {
                        Frame::Data { stream, data, .. } => self.flow.data(stream.0, data.len()),
                        Frame::Request { stream, .. } => self.flow.stream_opened(stream.0),
                        Frame::Ping {
                            ack: false,
                            payload,
                        } if self.auto_pong => {
                            let pong = Frame::Ping {
                                ack: true,
                                payload: *payload,
                            };
                            self.send(&pong)?;
                            continue;
                        }
                        _ => {}
                    }
                    return Ok(Some(f));
                }
                Ok(None) => {}
                Err(e) => return Err(WireError::Malformed(e)),
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Receives until `pick` returns something; frames it declines are passed to `other` (which may
    /// fail the wait). Fails at the deadline with `what`.
    pub fn wait_for<T>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut pick: impl FnMut(&mut Peer, &Frame) -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        // Bounded by the deadline (recv returns None once it passed).
        loop {
            match self.recv(deadline) {
                Ok(Some(f)) => {
                    if let Some(t) = pick(self, &f)? {
                        return Ok(t);
                    }
                }
                Ok(None) => {
                    return Err(format!(
                        "timed out waiting for {what} (last frames received: {})",
                        self.recent()
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "{e} while waiting for {what} (last frames received: {})",
                        self.recent()
                    ));
                }
            }
        }
    }

    /// Reads until the implementation closes the connection; returns the frames received meanwhile.
    pub fn wait_eof(&mut self, deadline: Instant) -> Result<Vec<Frame>, String> {
        let mut frames = Vec::new();
        // Bounded by the deadline.
        loop {
            match self.recv(deadline) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => {
                    return Err(format!(
                        "the connection is still open (frames received meanwhile: {})",
                        frames.iter().map(summary).collect::<Vec<_>>().join(", ")
                    ));
                }
                Err(WireError::Eof) => return Ok(frames),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The last frames received, for failure messages.
    pub fn recent(&self) -> String {
        if self.recent.is_empty() {
            "none".into()
        } else {
            self.recent.join(", ")
        }
    }

    /// Fails with the first flow-control violation seen.
    pub fn check_flow(&self) -> Result<(), String> {
        match self.flow.violations.first() {
            Some(v) => Err(format!(
                "{v} ({} violations in all)",
                self.flow.violations.len()
            )),
            None => Ok(()),
        }
    }

    /// Closes our side.
    pub fn close(&mut self) {
        let _ = self.tls.tcp().shutdown(std::net::Shutdown::Both);
    }
}

/// Send credit towards the implementation: what its settings and WINDOW_UPDATEs allow.
#[derive(Debug, Clone)]
pub struct SendCredit {
    pub connection: i64,
    pub initial_stream: i64,
    pub streams: HashMap<u32, i64>,
    pub max_frame_size: usize,
    /// Window updates that took a credit above 2^31-1.
    pub overflows: Vec<String>,
}

impl SendCredit {
    pub fn new(theirs: &Settings) -> SendCredit {
        SendCredit {
            connection: i64::from(theirs.initial_connection_window),
            initial_stream: i64::from(theirs.initial_stream_window),
            streams: HashMap::new(),
            max_frame_size: theirs.max_frame_size as usize,
            overflows: Vec::new(),
        }
    }

    pub fn open(&mut self, id: StreamId) {
        self.streams.entry(id.0).or_insert(self.initial_stream);
    }

    /// Applies a WINDOW_UPDATE received from the implementation.
    pub fn on_frame(&mut self, f: &Frame) {
        if let Frame::WindowUpdate { stream, increment } = f {
            let credit = if stream.0 == 0 {
                Some(&mut self.connection)
            } else {
                self.streams.get_mut(&stream.0)
            };
            if let Some(c) = credit {
                *c += i64::from(*increment);
                if *c > i64::from(MAX_WINDOW) {
                    self.overflows.push(format!(
                        "WINDOW_UPDATE on stream {stream} takes the credit to {c}, above 2^31-1"
                    ));
                }
            }
        }
    }

    /// How many octets may be sent on `id` now, in one frame.
    pub fn available(&self, id: StreamId) -> usize {
        let s = self.streams.get(&id.0).copied().unwrap_or(0);
        let n = s.min(self.connection).max(0);
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(self.max_frame_size)
    }

    pub fn consume(&mut self, id: StreamId, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.connection -= n;
        if let Some(s) = self.streams.get_mut(&id.0) {
            *s -= n;
        }
    }
}
