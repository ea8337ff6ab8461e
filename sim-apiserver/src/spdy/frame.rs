//! SPDY/3 frames, sans-IO: [`Codec::decode`] takes frames off a byte buffer and
//! [`Codec::encode`] appends them to one. Header blocks are zlib-compressed with the SPDY/3
//! dictionary, one compression context per direction for the whole connection, each block
//! ended with a sync flush (what Go's `golang.org/x/net/spdy` framer, used by kubectl,
//! expects and produces).
//!
//! Layout (all big-endian): a control frame is `1|version(15) type(16) flags(8) length(24)`
//! then its payload; a data frame is `0|stream-id(31) flags(8) length(24)` then the data.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use zlib_rs::{DeflateFlush, InflateError, InflateFlush};

/// The SPDY version spoken.
pub const VERSION: u16 = 3;
/// `FLAG_FIN`: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// `FLAG_UNIDIRECTIONAL` on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// Largest frame payload accepted (the format allows 16 MiB).
pub const MAX_FRAME: usize = 1024 * 1024;
/// Largest decompressed header block accepted.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// RST_STREAM status codes.
pub mod rst {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 3;
    /// CANCEL.
    pub const CANCEL: u32 = 5;
    /// STREAM_IN_USE.
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes.
pub mod goaway {
    /// OK.
    pub const OK: u32 = 0;
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// Header name/value pairs (names lower-case; several values of one name are NUL-separated
/// on the wire and separate pairs here).
pub type Headers = Vec<(String, String)>;

/// One SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Data on a stream.
    Data {
        /// Stream.
        stream_id: u32,
        /// Last frame from this sender on the stream.
        fin: bool,
        /// Payload.
        data: Bytes,
    },
    /// A new stream.
    SynStream {
        /// Stream (odd: opened by the client).
        stream_id: u32,
        /// Associated stream (server push; 0 here).
        associated: u32,
        /// Priority 0..=7.
        priority: u8,
        /// FLAG_FIN / FLAG_UNIDIRECTIONAL.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Acceptance of a stream.
    SynReply {
        /// Stream.
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// Headers.
        headers: Headers,
    },
    /// Abnormal end of a stream.
    RstStream {
        /// Stream.
        stream_id: u32,
        /// Status code ([`rst`]).
        status: u32,
    },
    /// Settings (their contents are not used).
    Settings {
        /// Number of entries.
        entries: u32,
    },
    /// A ping, answered with the same id.
    Ping {
        /// Id.
        id: u32,
    },
    /// End of the session.
    GoAway {
        /// Last stream the sender processed.
        last_good: u32,
        /// Status ([`goaway`]).
        status: u32,
    },
    /// More headers on a stream.
    Headers {
        /// Stream.
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// Headers.
        headers: Headers,
    },
    /// Flow-control credit.
    WindowUpdate {
        /// Stream (0: the session).
        stream_id: u32,
        /// Credit.
        delta: u32,
    },
    /// A control frame of a type this implementation does not know (to be ignored).
    Unknown {
        /// Its type.
        kind: u16,
    },
}

/// A frame that breaks the protocol: the peer's fault; the session ends with GOAWAY.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0} (only 3 is spoken)")]
    Version(u16),
    /// A frame longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// A control frame shorter than its type needs.
    #[error("control frame type {kind} too short ({len} bytes)")]
    Short {
        /// Type.
        kind: u16,
        /// Length.
        len: usize,
    },
    /// The header block does not decompress or parse.
    #[error("bad header block: {0}")]
    HeaderBlock(String),
}

/// The SPDY/3 header compression dictionary (section 2.6.10.1 of the SPDY/3 draft): the
/// length-prefixed common header names and values, then common status lines, dates and
/// content types. Built from its parts; `dictionary_is_exact` checks it against the
/// published length and Adler-32.
fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0."
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// The framing state of one connection: the two header compression contexts.
pub struct Codec {
    inflate: zlib_rs::Inflate,
    deflate: zlib_rs::Deflate,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

fn u31(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
}

impl Codec {
    /// Fresh compression contexts.
    pub fn new() -> Self {
        // The server's header blocks are tiny (empty SYN_REPLYs): a 2 KiB window (which holds
        // the 1423-byte dictionary) and the smallest hash table keep a session's compressor at
        // a few KiB instead of ~270 KiB. Inflating needs the peer's 32 KiB window.
        let mut deflate = zlib_rs::Deflate::new_with_config(zlib_rs::DeflateConfig {
            level: 6,
            method: zlib_rs::Method::Deflated,
            window_bits: 11,
            mem_level: 1,
            strategy: zlib_rs::Strategy::Default,
        });
        // A fresh stream always accepts a dictionary.
        let _ = deflate.set_dictionary(dictionary());
        Self {
            inflate: zlib_rs::Inflate::new(true, 15),
            deflate,
        }
    }

    /// Takes the next complete frame off `buf`, or `None` if more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let payload = buf.split_to(len).freeze();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: u31(&head[..4]),
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = match kind {
            1 => 10,
            2 | 8 => 4,
            3 | 7 | 9 => 8,
            4 | 6 => 4,
            _ => 0,
        };
        if payload.len() < need {
            return Err(FrameError::Short { kind, len });
        }
        let p = &payload[..];
        let frame = match kind {
            1 => Frame::SynStream {
                stream_id: u31(&p[0..4]),
                associated: u31(&p[4..8]),
                priority: p[8] >> 5,
                flags,
                headers: self.read_headers(&p[10..])?,
            },
            2 => Frame::SynReply {
                stream_id: u31(&p[0..4]),
                fin: flags & FLAG_FIN != 0,
                headers: self.read_headers(&p[4..])?,
            },
            3 => Frame::RstStream {
                stream_id: u31(&p[0..4]),
                status: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            },
            4 => Frame::Settings {
                entries: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            },
            6 => Frame::Ping {
                id: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            },
            7 => Frame::GoAway {
                last_good: u31(&p[0..4]),
                status: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            },
            8 => Frame::Headers {
                stream_id: u31(&p[0..4]),
                fin: flags & FLAG_FIN != 0,
                headers: self.read_headers(&p[4..])?,
            },
            9 => Frame::WindowUpdate {
                stream_id: u31(&p[0..4]),
                delta: u31(&p[4..8]),
            },
            kind => Frame::Unknown { kind },
        };
        Ok(Some(frame))
    }

    fn inflate_block(&mut self, mut input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let bad = |what: String| FrameError::HeaderBlock(what);
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let before_in = self.inflate.total_in();
            let before_out = self.inflate.total_out();
            let r = self
                .inflate
                .decompress(input, &mut chunk, InflateFlush::SyncFlush);
            let used = (self.inflate.total_in() - before_in) as usize;
            let made = (self.inflate.total_out() - before_out) as usize;
            input = &input[used..];
            out.extend_from_slice(&chunk[..made]);
            if out.len() > MAX_HEADER_BLOCK {
                return Err(bad(format!("more than {MAX_HEADER_BLOCK} bytes")));
            }
            match r {
                Err(InflateError::NeedDict { .. }) => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| bad(format!("dictionary rejected: {}", e.as_str())))?;
                }
                Err(e) => return Err(bad(e.as_str().to_string())),
                Ok(zlib_rs::Status::StreamEnd) => {
                    return Err(bad("the compression stream ended".into()));
                }
                Ok(_) if input.is_empty() && made < chunk.len() => return Ok(out),
                Ok(zlib_rs::Status::BufError) if used == 0 && made == 0 => {
                    return Err(bad("truncated".into()));
                }
                Ok(_) => {}
            }
        }
    }

    fn read_headers(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let raw = self.inflate_block(block)?;
        let bad = |what: &str| FrameError::HeaderBlock(what.to_string());
        let mut b = &raw[..];
        let take_u32 = |b: &mut &[u8]| -> Result<usize, FrameError> {
            if b.len() < 4 {
                return Err(bad("truncated"));
            }
            Ok(b.get_u32() as usize)
        };
        let count = take_u32(&mut b)?;
        if count > 1000 {
            return Err(bad("too many headers"));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let n = take_u32(&mut b)?;
            if b.len() < n {
                return Err(bad("truncated name"));
            }
            let name = String::from_utf8_lossy(&b[..n]).to_ascii_lowercase();
            b.advance(n);
            let v = take_u32(&mut b)?;
            if b.len() < v {
                return Err(bad("truncated value"));
            }
            for value in b[..v].split(|c| *c == 0) {
                headers.push((name.clone(), String::from_utf8_lossy(value).into_owned()));
            }
            b.advance(v);
        }
        Ok(headers)
    }

    fn write_headers(&mut self, headers: &Headers, out: &mut BytesMut) {
        let mut raw = BytesMut::new();
        // Several values of one name travel NUL-separated.
        let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
        for (k, v) in headers {
            match grouped.iter_mut().find(|(n, _)| n == k) {
                Some((_, vs)) => vs.push(v),
                None => grouped.push((k, vec![v])),
            }
        }
        raw.put_u32(grouped.len() as u32);
        for (k, vs) in grouped {
            raw.put_u32(k.len() as u32);
            raw.put_slice(k.as_bytes());
            let v = vs.join("\0");
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut input = &raw[..];
        let mut chunk = [0u8; 4096];
        loop {
            let before_in = self.deflate.total_in();
            let before_out = self.deflate.total_out();
            let _ = self
                .deflate
                .compress(input, &mut chunk, DeflateFlush::SyncFlush);
            let used = (self.deflate.total_in() - before_in) as usize;
            let made = (self.deflate.total_out() - before_out) as usize;
            input = &input[used..];
            out.put_slice(&chunk[..made]);
            if input.is_empty() && made < chunk.len() {
                break;
            }
        }
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        let control = |out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]| {
            out.put_u16(0x8000 | VERSION);
            out.put_u16(kind);
            out.put_u8(flags);
            out.put_uint(payload.len() as u64, 3);
            out.put_slice(payload);
        };
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                debug_assert!(data.len() <= MAX_FRAME);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u8(if *fin { FLAG_FIN } else { 0 });
                out.put_uint(data.len() as u64, 3);
                out.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated,
                priority,
                flags,
                headers,
            } => {
                let mut p = BytesMut::new();
                p.put_u32(*stream_id);
                p.put_u32(*associated);
                p.put_u8(priority << 5);
                p.put_u8(0);
                self.write_headers(headers, &mut p);
                control(out, 1, *flags, &p);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    2
                } else {
                    8
                };
                let mut p = BytesMut::new();
                p.put_u32(*stream_id);
                self.write_headers(headers, &mut p);
                control(out, kind, if *fin { FLAG_FIN } else { 0 }, &p);
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&stream_id.to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(out, 3, 0, &p);
            }
            Frame::Settings { .. } => control(out, 4, 0, &0u32.to_be_bytes()),
            Frame::Ping { id } => control(out, 6, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&last_good.to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(out, 7, 0, &p);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&stream_id.to_be_bytes());
                p[4..].copy_from_slice(&delta.to_be_bytes());
                control(out, 9, 0, &p);
            }
            Frame::Unknown { kind } => control(out, *kind, 0, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_pairs() -> impl Strategy<Value = Headers> {
        proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..6).prop_map(|v| {
            // Names are unique per block (repeated names travel as one NUL-joined value).
            let mut seen = std::collections::HashSet::new();
            v.into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect()
        })
    }

    fn frames() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                1u32..1000,
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(stream_id, fin, d)| Frame::Data {
                    stream_id,
                    fin,
                    data: Bytes::from(d)
                }),
            (1u32..1000, 0u8..8, 0u8..4, header_pairs()).prop_map(
                |(stream_id, priority, flags, headers)| Frame::SynStream {
                    stream_id,
                    associated: 0,
                    priority,
                    flags,
                    headers
                }
            ),
            (1u32..1000, any::<bool>(), header_pairs()).prop_map(|(stream_id, fin, headers)| {
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers,
                }
            }),
            any::<u32>().prop_map(|id| Frame::Ping { id }),
            (1u32..1000, any::<u32>())
                .prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
        ]
    }

    proptest! {
        /// Frames survive encode/decode in order through one pair of compression contexts,
        /// however the bytes are split.
        #[test]
        fn round_trip(fs in proptest::collection::vec(frames(), 1..12), split in 1usize..64) {
            let (mut a, mut b) = (Codec::new(), Codec::new());
            let mut wire = BytesMut::new();
            for f in &fs {
                a.encode(f, &mut wire);
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Some(f) = b.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, fs);
        }

        /// Arbitrary bytes give frames or an error, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut c = Codec::new();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = c.decode(&mut buf) {}
        }
    }

    #[test]
    fn dictionary_is_exact() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn round_trips_frames_with_shared_compression() {
        let (mut a, mut b) = (Codec::new(), Codec::new());
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "8080".into()),
                ],
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: vec![],
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::SynStream {
                stream_id: 3,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), "data".into())],
            },
            Frame::Ping { id: 7 },
            Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL,
            },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 1000,
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            a.encode(f, &mut wire);
        }
        // Fed byte by byte: frames come out whole and in order.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(f) = b.decode(&mut buf).unwrap_or_else(|e| panic!("{e}")) {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn rejects_malformed_frames() {
        let mut c = Codec::new();
        let mut v2 = BytesMut::from(&[0x80, 0x02, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(c.decode(&mut v2), Err(FrameError::Version(2)));
        let mut big = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(c.decode(&mut big), Err(FrameError::TooLarge(_))));
        let mut garbage_headers = BytesMut::from(
            &[
                0x80, 0x03, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ][..],
        );
        assert!(matches!(
            c.decode(&mut garbage_headers),
            Err(FrameError::HeaderBlock(_))
        ));
    }
}
