//! The frame codec: the 9-byte header, every frame type, and strict validation.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-----------------------------------------------+---------------+
//! |                 Length (24)                   |   Type (8)    |
//! +---------------+-------------------------------+---------------+
//! |   Flags (8)   |R|             Stream Identifier (31)          |
//! +---------------+-+---------------------------------------------+
//! |                   Payload (Length octets) ...                 |
//! +---------------------------------------------------------------+
//! ```
//!
//! All integers are big-endian. `R` is reserved and must be zero. Decoding works on a growing buffer
//! ([`Decoder::decode`]) so input may arrive split at any byte boundary; DATA payloads are handed out as
//! zero-copy slices of the input ([`Bytes`]). Every malformed input yields a [`FrameError`] with the
//! [`ErrorCode`](crate::tunnel::ErrorCode) the connection closes with; the decoder never panics.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto;
use crate::tunnel::error::FrameError;

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 9;
/// The maximum frame payload announced when nothing else is configured (PROTOCOL.md §6).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16 * 1024;
/// Smallest maximum frame payload a peer may announce (PROTOCOL.md §6). The same value as
/// [`DEFAULT_MAX_FRAME_SIZE`], another meaning: raising the default must not raise the minimum.
pub const MIN_MAX_FRAME_SIZE: u32 = 16 * 1024;
/// Largest maximum frame payload a peer may announce (2^24 - 1).
pub const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;
/// Largest payload of a handshake frame (HELLO, ACCEPT, REJECT), whatever the settings say.
pub const MAX_HANDSHAKE_PAYLOAD: u32 = 64 * 1024;
/// Largest window increment (2^31 - 1), also the largest window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The 8 octets an agent sends before its first frame.
pub const PREFACE: &[u8; 8] = b"\x89AGTUN\r\n";

/// Flag on DATA, REQUEST and RESPONSE: the sender's direction of the stream ends with this frame.
pub const FLAG_END_STREAM: u8 = 0x1;
/// Flag on PING: this is the answer to a PING.
pub const FLAG_ACK: u8 = 0x1;

/// A stream identifier (31 bits). 0 is the connection itself.
///
/// Agent-initiated streams are odd, server-initiated streams are even (and non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl StreamId {
    /// The connection-level pseudo stream.
    pub const CONNECTION: StreamId = StreamId(0);

    /// Whether the stream was opened by the agent (odd ids).
    pub fn is_agent_initiated(self) -> bool {
        self.0 % 2 == 1
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Wire code of each frame type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// DATA.
    Data = 0x0,
    /// REQUEST.
    Request = 0x1,
    /// RESPONSE.
    Response = 0x2,
    /// TRAILER.
    Trailer = 0x3,
    /// RESET.
    Reset = 0x4,
    /// WINDOW_UPDATE.
    WindowUpdate = 0x5,
    /// PING.
    Ping = 0x6,
    /// GOAWAY.
    GoAway = 0x7,
    /// HELLO.
    Hello = 0x8,
    /// ACCEPT.
    Accept = 0x9,
    /// REJECT.
    Reject = 0xA,
}

impl FrameType {
    /// Maps a wire code to a known type; `None` for types this version does not know (ignored by receivers).
    pub fn from_code(code: u8) -> Option<FrameType> {
        Some(match code {
            0x0 => FrameType::Data,
            0x1 => FrameType::Request,
            0x2 => FrameType::Response,
            0x3 => FrameType::Trailer,
            0x4 => FrameType::Reset,
            0x5 => FrameType::WindowUpdate,
            0x6 => FrameType::Ping,
            0x7 => FrameType::GoAway,
            0x8 => FrameType::Hello,
            0x9 => FrameType::Accept,
            0xA => FrameType::Reject,
            _ => return None,
        })
    }

    /// Flag bits legal on this type; any other bit set is [`FrameError::BadFlags`].
    pub fn allowed_flags(self) -> u8 {
        match self {
            FrameType::Data | FrameType::Request | FrameType::Response => FLAG_END_STREAM,
            FrameType::Ping => FLAG_ACK,
            _ => 0,
        }
    }

    /// Where the type may appear.
    pub fn scope(self) -> Scope {
        match self {
            FrameType::Data
            | FrameType::Request
            | FrameType::Response
            | FrameType::Trailer
            | FrameType::Reset => Scope::Stream,
            FrameType::WindowUpdate => Scope::Any,
            FrameType::Ping
            | FrameType::GoAway
            | FrameType::Hello
            | FrameType::Accept
            | FrameType::Reject => Scope::Connection,
        }
    }
}

/// Which stream ids a frame type may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only stream 0.
    Connection,
    /// Only non-zero streams.
    Stream,
    /// Either.
    Any,
}

/// The fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length in octets.
    pub length: u32,
    /// Frame type.
    pub kind: u8,
    /// Flags octet.
    pub flags: u8,
    /// The stream (0: the connection).
    pub stream: StreamId,
}

impl Header {
    /// Parses the 9 header octets. Fails only on the reserved bit.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let length = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let raw_id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        if raw_id & 0x8000_0000 != 0 {
            return Err(FrameError::ReservedBit);
        }
        Ok(Header {
            length,
            kind: b[3],
            flags: b[4],
            stream: StreamId(raw_id),
        })
    }

    fn write(&self, out: &mut BytesMut) {
        debug_assert!(self.length <= MAX_FRAME_SIZE_LIMIT);
        debug_assert!(self.stream.0 & 0x8000_0000 == 0);
        out.put_slice(&self.length.to_be_bytes()[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream.0);
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// DATA (0x0): body octets of a stream.
    Data {
        /// The stream.
        stream: StreamId,
        /// Body octets.
        data: Bytes,
        /// The sender's direction ends with this frame (END_STREAM).
        end_stream: bool,
    },
    /// REQUEST (0x1): opens a stream.
    Request {
        /// The stream.
        stream: StreamId,
        /// The head.
        head: proto::RequestHead,
        /// The sender's direction ends with this frame (END_STREAM).
        end_stream: bool,
    },
    /// RESPONSE (0x2): the acceptor's answer head.
    Response {
        /// The stream.
        stream: StreamId,
        /// The head.
        head: proto::ResponseHead,
        /// The sender's direction ends with this frame (END_STREAM).
        end_stream: bool,
    },
    /// TRAILER (0x3): ends a direction with status and metadata.
    Trailer {
        /// The stream.
        stream: StreamId,
        /// The trailer.
        trailer: proto::Trailer,
    },
    /// RESET (0x4): abandons a stream.
    Reset {
        /// The stream.
        stream: StreamId,
        /// Code and message.
        reset: proto::Reset,
    },
    /// WINDOW_UPDATE (0x5): grants flow-control credit (stream 0: the connection).
    WindowUpdate {
        /// The stream.
        stream: StreamId,
        /// Credit added, in octets.
        increment: u32,
    },
    /// PING (0x6): liveness check, or its acknowledgement.
    Ping {
        /// An acknowledgement of the peer's PING.
        ack: bool,
        /// Opaque octets (echoed in the acknowledgement).
        payload: [u8; 8],
    },
    /// GOAWAY (0x7): no new streams; drain.
    GoAway(proto::GoAway),
    /// HELLO (0x8): the agent's handshake.
    Hello(proto::Hello),
    /// ACCEPT (0x9): the server accepts the agent.
    Accept(proto::Accept),
    /// REJECT (0xA): the server refuses the agent.
    Reject(proto::Reject),
    /// A frame type this version does not know. Receivers ignore it (extension rule).
    Unknown {
        /// Frame type.
        kind: u8,
        /// Flags octet.
        flags: u8,
        /// The stream.
        stream: StreamId,
        /// Opaque octets (echoed in the acknowledgement).
        payload: Bytes,
    },
}

impl Frame {
    /// The stream the frame belongs to (0 for connection frames).
    pub fn stream(&self) -> StreamId {
        match self {
            Frame::Data { stream, .. }
            | Frame::Request { stream, .. }
            | Frame::Response { stream, .. }
            | Frame::Trailer { stream, .. }
            | Frame::Reset { stream, .. }
            | Frame::WindowUpdate { stream, .. }
            | Frame::Unknown { stream, .. } => *stream,
            Frame::Ping { .. }
            | Frame::GoAway(_)
            | Frame::Hello(_)
            | Frame::Accept(_)
            | Frame::Reject(_) => StreamId::CONNECTION,
        }
    }

    /// The frame's type code.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Data { .. } => FrameType::Data as u8,
            Frame::Request { .. } => FrameType::Request as u8,
            Frame::Response { .. } => FrameType::Response as u8,
            Frame::Trailer { .. } => FrameType::Trailer as u8,
            Frame::Reset { .. } => FrameType::Reset as u8,
            Frame::WindowUpdate { .. } => FrameType::WindowUpdate as u8,
            Frame::Ping { .. } => FrameType::Ping as u8,
            Frame::GoAway(_) => FrameType::GoAway as u8,
            Frame::Hello(_) => FrameType::Hello as u8,
            Frame::Accept(_) => FrameType::Accept as u8,
            Frame::Reject(_) => FrameType::Reject as u8,
            Frame::Unknown { kind, .. } => *kind,
        }
    }

    /// Encoded payload length, without the header.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::Data { data, .. } => data.len(),
            Frame::Request { head, .. } => head.encoded_len(),
            Frame::Response { head, .. } => head.encoded_len(),
            Frame::Trailer { trailer, .. } => trailer.encoded_len(),
            Frame::Reset { reset, .. } => reset.encoded_len(),
            Frame::WindowUpdate { .. } => 4,
            Frame::Ping { .. } => 8,
            Frame::GoAway(m) => m.encoded_len(),
            Frame::Hello(m) => m.encoded_len(),
            Frame::Accept(m) => m.encoded_len(),
            Frame::Reject(m) => m.encoded_len(),
            Frame::Unknown { payload, .. } => payload.len(),
        }
    }

    /// Appends the encoded frame to `out`.
    ///
    /// The caller guarantees the payload fits the peer's maximum frame size (the connection splits DATA
    /// and checks heads before calling); a payload above [`MAX_FRAME_SIZE_LIMIT`] is a bug.
    pub fn encode(&self, out: &mut BytesMut) {
        let flags = match self {
            Frame::Data { end_stream, .. }
            | Frame::Request { end_stream, .. }
            | Frame::Response { end_stream, .. } => u8::from(*end_stream) * FLAG_END_STREAM,
            Frame::Ping { ack, .. } => u8::from(*ack) * FLAG_ACK,
            Frame::Unknown { flags, .. } => *flags,
            _ => 0,
        };
        write_header(self.kind(), flags, self.stream(), self.payload_len(), out);
        match self {
            Frame::Data { data, .. } => out.put_slice(data),
            Frame::Request { head, .. } => encode_msg(head, out),
            Frame::Response { head, .. } => encode_msg(head, out),
            Frame::Trailer { trailer, .. } => encode_msg(trailer, out),
            Frame::Reset { reset, .. } => encode_msg(reset, out),
            Frame::WindowUpdate { increment, .. } => out.put_u32(*increment),
            Frame::Ping { payload, .. } => out.put_slice(payload),
            Frame::GoAway(m) => encode_msg(m, out),
            Frame::Hello(m) => encode_msg(m, out),
            Frame::Accept(m) => encode_msg(m, out),
            Frame::Reject(m) => encode_msg(m, out),
            Frame::Unknown { payload, .. } => out.put_slice(payload),
        }
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

/// Appends a REQUEST frame for `head`: the octets `Frame::Request { stream, head, end_stream }`
/// encodes, without owning (or cloning) the head.
pub fn encode_request(
    stream: StreamId,
    head: &proto::RequestHead,
    end_stream: bool,
    out: &mut BytesMut,
) {
    write_header(
        FrameType::Request as u8,
        u8::from(end_stream) * FLAG_END_STREAM,
        stream,
        head.encoded_len(),
        out,
    );
    encode_msg(head, out);
}

/// Appends a frame header for a payload of `len` octets, with room reserved for the payload.
fn write_header(kind: u8, flags: u8, stream: StreamId, len: usize, out: &mut BytesMut) {
    debug_assert!(
        len <= MAX_FRAME_SIZE_LIMIT as usize,
        "frame payload too large"
    );
    out.reserve(HEADER_LEN + len);
    Header {
        length: len as u32,
        kind,
        flags,
        stream,
    }
    .write(out);
}

/// Appends the header of a DATA frame; the caller appends `len` payload octets right after.
///
/// This is how the connection writes DATA without building a [`Frame`] first.
pub fn encode_data_header(stream: StreamId, len: usize, end_stream: bool, out: &mut BytesMut) {
    Header {
        length: len as u32,
        kind: FrameType::Data as u8,
        flags: if end_stream { FLAG_END_STREAM } else { 0 },
        stream,
    }
    .write(out);
}

fn encode_msg<M: Message>(m: &M, out: &mut BytesMut) {
    // Encoding into a BytesMut grows it as needed, so this cannot fail for lack of capacity.
    m.encode_raw(out);
}

/// An incremental frame decoder with a payload size limit.
///
/// Feed bytes with [`Decoder::feed`] and pull frames with [`Decoder::decode`] until it returns `Ok(None)`.
/// After an error the decoder is poisoned: the connection is being closed and further input is
/// meaningless, so every later call returns the same error.
#[derive(Debug)]
pub struct Decoder {
    /// Undecoded octets that were copied in ([`Decoder::feed`]), or the start of a frame that
    /// `input` held only part of. They come before `input`.
    buf: BytesMut,
    /// Undecoded octets handed over without a copy ([`Decoder::feed_bytes`]), after `buf`; whole
    /// frames are sliced out of it. Of a frame that straddles two inputs only that frame is copied
    /// (into `buf`), so a busy connection whose reads end mid-frame still receives its other
    /// frames without a copy.
    input: Bytes,
    max_payload: u32,
    max_header: u32,
    poisoned: Option<FrameError>,
}

impl Decoder {
    /// A decoder accepting payloads up to `max_payload` octets, REQUEST/RESPONSE/TRAILER payloads up
    /// to `max_header` octets, and handshake frames up to [`MAX_HANDSHAKE_PAYLOAD`] (or `max_payload`
    /// if larger).
    pub fn new(max_payload: u32, max_header: u32) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            input: Bytes::new(),
            max_payload: max_payload.min(MAX_FRAME_SIZE_LIMIT),
            max_header: max_header.min(MAX_FRAME_SIZE_LIMIT),
            poisoned: None,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.poisoned.is_none() {
            self.copy_input();
            self.buf.extend_from_slice(data);
        }
    }

    /// Appends received bytes without copying them: the frames decoded from `data` are slices of
    /// it (DATA payloads reach the application without a copy); only a frame that `data` holds part
    /// of is copied, to be completed by later input.
    pub fn feed_bytes(&mut self, data: Bytes) {
        if self.poisoned.is_some() || data.is_empty() {
            return;
        }
        if self.input.is_empty() {
            self.input = data;
        } else {
            // Undecoded zero-copy input is still held (the caller did not decode to the end):
            // keep the order by copying it behind `buf`.
            self.copy_input();
            self.input = data;
        }
    }

    /// Moves the zero-copy input into the copy buffer, behind what it holds.
    fn copy_input(&mut self) {
        if !self.input.is_empty() {
            self.buf.extend_from_slice(&self.input);
            self.input = Bytes::new();
        }
    }

    /// Copies octets from the front of `input` to `buf` until `buf` holds `n` (or `input` is
    /// empty): completes the straddling frame that `buf` starts.
    fn fill_buf(&mut self, n: usize) {
        let k = n.saturating_sub(self.buf.len()).min(self.input.len());
        if k > 0 {
            self.buf.extend_from_slice(&self.input[..k]);
            self.input.advance(k);
        }
    }

    /// Octets received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.input.len()
    }

    /// Removes `n` raw octets from the front of the buffer if they are all there (used for the preface).
    pub fn take_raw(&mut self, n: usize) -> Option<Bytes> {
        if self.buf.is_empty() && self.input.len() >= n {
            return Some(self.input.split_to(n));
        }
        self.copy_input();
        if self.buf.len() >= n {
            Some(self.buf.split_to(n).freeze())
        } else {
            None
        }
    }

    /// Decodes the next complete frame, `Ok(None)` if more input is needed.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        match self.decode_inner() {
            Err(e) => {
                self.poisoned = Some(e.clone());
                self.buf.clear();
                self.input = Bytes::new();
                Err(e)
            }
            ok => ok,
        }
    }

    fn decode_inner(&mut self) -> Result<Option<Frame>, FrameError> {
        // `buf` comes first: a frame it starts is completed from `input` (copying only that frame).
        let from_input = self.buf.is_empty();
        if !from_input {
            self.fill_buf(HEADER_LEN);
        }
        let pending: &[u8] = if from_input { &self.input } else { &self.buf };
        let Some(hdr_bytes) = pending.get(..HEADER_LEN) else {
            // A partial header: keep it for the next input.
            self.copy_input();
            return Ok(None);
        };
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(hdr_bytes);
        let header = Header::parse(&raw)?;
        let known = FrameType::from_code(header.kind);
        match known {
            Some(FrameType::Request | FrameType::Response | FrameType::Trailer) => {
                if header.length > self.max_header {
                    return Err(FrameError::HeaderTooLarge {
                        len: header.length,
                        max: self.max_header,
                    });
                }
            }
            _ => {
                let limit = match known {
                    Some(FrameType::Hello | FrameType::Accept | FrameType::Reject) => {
                        MAX_HANDSHAKE_PAYLOAD.max(self.max_payload)
                    }
                    _ => self.max_payload,
                };
                if header.length > limit {
                    return Err(FrameError::TooLarge {
                        len: header.length,
                        max: limit,
                    });
                }
            }
        }
        // Validate what the header alone tells before waiting for the payload, so a bad frame is
        // reported as soon as its header is in.
        if let Some(kind) = known {
            check_header(kind, &header)?;
        }
        let total = HEADER_LEN + header.length as usize;
        if let Some(kind @ (FrameType::WindowUpdate | FrameType::Ping)) = known {
            // The fixed-size control frames (keepalive, flow control: most frames of an idle or
            // slow connection) are read in place: no payload `Bytes`, so no reference count to
            // touch and no shared buffer to promote.
            let whole_input = from_input && self.input.len() >= total;
            if !whole_input {
                self.copy_input();
                if self.buf.len() < total {
                    self.buf.reserve(total - self.buf.len());
                    return Ok(None);
                }
            }
            let pending: &[u8] = if whole_input { &self.input } else { &self.buf };
            let frame = parse_fixed(kind, &header, &pending[HEADER_LEN..total]);
            if whole_input {
                self.input.advance(total);
            } else {
                self.buf.advance(total);
            }
            return frame.map(Some);
        }
        let payload = if from_input && self.input.len() >= total {
            // The whole frame is in the zero-copy input: slice it out.
            self.input.advance(HEADER_LEN);
            self.input.split_to(header.length as usize)
        } else {
            if from_input {
                // The frame is not all in: keep its start for the next input, in room for all of
                // it (one allocation, one copy).
                self.buf.reserve(total);
                self.copy_input();
            } else {
                self.fill_buf(total);
            }
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(HEADER_LEN);
            self.buf.split_to(header.length as usize).freeze()
        };
        match known {
            None => Ok(Some(Frame::Unknown {
                kind: header.kind,
                flags: header.flags,
                stream: header.stream,
                payload,
            })),
            Some(kind) => parse_payload(kind, &header, payload).map(Some),
        }
    }
}

/// Validates flags, stream scope and fixed payload sizes of a known frame type.
fn check_header(kind: FrameType, h: &Header) -> Result<(), FrameError> {
    if h.flags & !kind.allowed_flags() != 0 {
        return Err(FrameError::BadFlags {
            kind: h.kind,
            flags: h.flags,
        });
    }
    match (kind.scope(), h.stream.0) {
        (Scope::Stream, 0) => return Err(FrameError::StreamZero { kind: h.kind }),
        (Scope::Connection, id) if id != 0 => {
            return Err(FrameError::NonZeroStream {
                kind: h.kind,
                stream: id,
            });
        }
        _ => {}
    }
    let fixed = match kind {
        FrameType::WindowUpdate => Some(4),
        FrameType::Ping => Some(8),
        _ => None,
    };
    if let Some(want) = fixed
        && h.length != want
    {
        return Err(FrameError::BadLength {
            kind: h.kind,
            len: h.length,
            want,
        });
    }
    Ok(())
}

/// Parses a WINDOW_UPDATE or PING payload (its length already checked by [`check_header`]).
fn parse_fixed(kind: FrameType, h: &Header, payload: &[u8]) -> Result<Frame, FrameError> {
    match (kind, payload) {
        (FrameType::WindowUpdate, &[a, b, c, d]) => {
            let increment = u32::from_be_bytes([a, b, c, d]);
            if increment == 0 || increment > MAX_WINDOW {
                return Err(FrameError::BadWindowIncrement { increment });
            }
            Ok(Frame::WindowUpdate {
                stream: h.stream,
                increment,
            })
        }
        (FrameType::Ping, p) if p.len() == 8 => {
            let mut payload = [0u8; 8];
            payload.copy_from_slice(p);
            Ok(Frame::Ping {
                ack: h.flags & FLAG_ACK != 0,
                payload,
            })
        }
        // Unreachable after `check_header`; an error rather than a panic all the same.
        (kind, p) => Err(FrameError::BadLength {
            kind: h.kind,
            len: u32::try_from(p.len()).unwrap_or(u32::MAX),
            want: if kind == FrameType::Ping { 8 } else { 4 },
        }),
    }
}

fn parse_payload(kind: FrameType, h: &Header, mut payload: Bytes) -> Result<Frame, FrameError> {
    let stream = h.stream;
    let end_stream = h.flags & FLAG_END_STREAM != 0;
    let bad = |e: prost::DecodeError| FrameError::BadPayload {
        kind: h.kind,
        reason: e.to_string(),
    };
    Ok(match kind {
        FrameType::Data => Frame::Data {
            stream,
            data: payload,
            end_stream,
        },
        FrameType::Request => Frame::Request {
            stream,
            head: proto::RequestHead::decode(payload).map_err(bad)?,
            end_stream,
        },
        FrameType::Response => Frame::Response {
            stream,
            head: proto::ResponseHead::decode(payload).map_err(bad)?,
            end_stream,
        },
        FrameType::Trailer => Frame::Trailer {
            stream,
            trailer: proto::Trailer::decode(payload).map_err(bad)?,
        },
        FrameType::Reset => Frame::Reset {
            stream,
            reset: proto::Reset::decode(payload).map_err(bad)?,
        },
        FrameType::WindowUpdate => {
            let increment = payload.get_u32();
            if increment == 0 || increment > MAX_WINDOW {
                return Err(FrameError::BadWindowIncrement { increment });
            }
            Frame::WindowUpdate { stream, increment }
        }
        FrameType::Ping => {
            let mut p = [0u8; 8];
            payload.copy_to_slice(&mut p);
            Frame::Ping {
                ack: h.flags & FLAG_ACK != 0,
                payload: p,
            }
        }
        FrameType::GoAway => Frame::GoAway(proto::GoAway::decode(payload).map_err(bad)?),
        FrameType::Hello => Frame::Hello(proto::Hello::decode(payload).map_err(bad)?),
        FrameType::Accept => Frame::Accept(proto::Accept::decode(payload).map_err(bad)?),
        FrameType::Reject => Frame::Reject(proto::Reject::decode(payload).map_err(bad)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let bytes = f.to_bytes();
        let mut d = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
        d.feed(&bytes);
        assert_eq!(d.decode().ok().flatten(), Some(f));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn header_layout_is_big_endian() {
        let f = Frame::WindowUpdate {
            stream: StreamId(0x01020304),
            increment: 0x0A0B0C0D,
        };
        assert_eq!(
            &f.to_bytes()[..],
            &[0, 0, 4, 5, 0, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D]
        );
    }

    #[test]
    fn a_borrowed_request_head_encodes_as_the_frame() {
        let head = proto::RequestHead {
            service: "service-proxy".into(),
            method: "POST".into(),
            path: "/default/web:80/x?y=1".into(),
            headers: vec![proto::Header {
                name: "content-type".into(),
                value: Bytes::from_static(b"text/plain"),
            }],
            timeout_ms: 0,
            impersonation: None,
        };
        for end_stream in [false, true] {
            let mut out = BytesMut::new();
            encode_request(StreamId(5), &head, end_stream, &mut out);
            let frame = Frame::Request {
                stream: StreamId(5),
                head: head.clone(),
                end_stream,
            };
            assert_eq!(&out[..], &frame.to_bytes()[..], "end_stream {end_stream}");
        }
    }

    #[test]
    fn every_type_roundtrips() {
        roundtrip(Frame::Data {
            stream: StreamId(1),
            data: Bytes::from_static(b"hello"),
            end_stream: true,
        });
        roundtrip(Frame::Request {
            stream: StreamId(2),
            head: proto::RequestHead {
                service: "k8s-api".into(),
                method: "GET".into(),
                path: "/api".into(),
                headers: vec![proto::Header {
                    name: "accept".into(),
                    value: Bytes::from_static(b"*/*"),
                }],
                timeout_ms: 5,
                impersonation: None,
            },
            end_stream: false,
        });
        roundtrip(Frame::Ping {
            ack: true,
            payload: *b"12345678",
        });
        roundtrip(Frame::GoAway(proto::GoAway {
            last_stream_id: 7,
            code: 0,
            message: "bye".into(),
        }));
        roundtrip(Frame::Unknown {
            kind: 0x42,
            flags: 0xff,
            stream: StreamId(9),
            payload: Bytes::from_static(b"ext"),
        });
    }

    #[test]
    fn data_payload_is_zero_copy_slice_of_input() {
        // Three DATA frames fed in one piece: each payload must be a slice of the decoder's one
        // input buffer — the next payload starts exactly one header after the previous one ends —
        // not a fresh copy (which would live at an unrelated address).
        let mut wire = BytesMut::new();
        for (i, len) in [1000usize, 1, 4000].into_iter().enumerate() {
            Frame::Data {
                stream: StreamId(3),
                data: Bytes::from(vec![i as u8 + 7; len]),
                end_stream: false,
            }
            .encode(&mut wire);
        }
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE);
        d.feed(&wire);
        let mut payloads = Vec::new();
        while let Ok(Some(f)) = d.decode() {
            let Frame::Data { data, .. } = f else {
                panic!("expected data")
            };
            payloads.push(data);
        }
        assert_eq!(
            payloads.iter().map(Bytes::len).collect::<Vec<_>>(),
            [1000, 1, 4000]
        );
        for pair in payloads.windows(2) {
            let end_of_first = pair[0].as_ptr() as usize + pair[0].len();
            assert_eq!(
                pair[1].as_ptr() as usize,
                end_of_first + HEADER_LEN,
                "payloads are not slices of one buffer: copied"
            );
        }
        assert!(payloads[0].iter().all(|b| *b == 7) && payloads[2].iter().all(|b| *b == 9));
        // A payload outliving the decoder keeps its memory: it is shared, not borrowed.
        drop(d);
        assert_eq!(payloads[2].len(), 4000);
    }

    #[test]
    fn only_the_frame_straddling_two_inputs_is_copied() {
        // Four DATA frames cut in the middle of the second: the frames after the cut must still be
        // slices of the second input (a busy connection's reads end mid-frame nearly always).
        let mut wire = BytesMut::new();
        for i in 0..4u8 {
            Frame::Data {
                stream: StreamId(3),
                data: Bytes::from(vec![i; 3000]),
                end_stream: false,
            }
            .encode(&mut wire);
        }
        let wire = wire.freeze();
        let cut = HEADER_LEN + 3000 + 1500;
        let (first, second) = (wire.slice(..cut), wire.slice(cut..));
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE);
        let mut payloads = Vec::new();
        for input in [first, second.clone()] {
            d.feed_bytes(input);
            while let Ok(Some(f)) = d.decode() {
                let Frame::Data { data, .. } = f else {
                    panic!("expected data")
                };
                payloads.push(data);
            }
        }
        assert_eq!(payloads.len(), 4);
        for (i, p) in payloads.iter().enumerate() {
            assert!(p.len() == 3000 && p.iter().all(|b| usize::from(*b) == i));
        }
        let inside = |p: &Bytes| {
            let (a, b) = (
                second.as_ptr() as usize,
                second.as_ptr() as usize + second.len(),
            );
            (a..b).contains(&(p.as_ptr() as usize))
        };
        assert!(!inside(&payloads[1]), "the straddling frame is a copy");
        assert!(
            inside(&payloads[2]) && inside(&payloads[3]),
            "frames after the straddling one were copied"
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn poisoned_after_error() {
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE);
        d.feed(&[0, 0, 0, 0, 0, 0, 0, 0, 0]); // DATA on stream 0
        assert!(matches!(d.decode(), Err(FrameError::StreamZero { .. })));
        d.feed(
            &Frame::Ping {
                ack: false,
                payload: [0; 8],
            }
            .to_bytes(),
        );
        assert!(d.decode().is_err());
    }
}
