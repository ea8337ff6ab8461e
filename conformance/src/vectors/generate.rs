//! The vector generator: every expectation comes from [`Spec`] (the tables of `PROTOCOL.md`), every
//! octet from a hand-written frame header plus the protobuf encoding of `proto/tunnel.proto`'s
//! messages — never from the reference implementation's frame encoder, which the vectors check.

use prost::Message;
use protocol::proto;
use protocol::tunnel::frame::{Frame, StreamId};

use super::describe::{Names, meaning};
use super::model::{
    Expect, FrameMeaning, FrameVector, MalformedVector, Outcome, Phase, Receiver, SettingsJson,
    VectorFile,
};
use crate::spec::{Consequence, Spec, SpecError};

/// The version this document describes (§7.1: "This document is version 1").
const VERSION: u32 = 1;
/// The token the established handshakes use.
const TOKEN: &str = "vector-token";
/// §6: "HELLO, ACCEPT and REJECT may always be up to 65,536 octets (64 KiB)".
const HANDSHAKE_LIMIT: u32 = 64 * 1024;
/// 2^31-1, the largest window and increment (§5, §10).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Where the vector files say they come from.
pub const GENERATED_FROM: &str = "protocol/PROTOCOL.md (tables of §3, §5, §7.4, §8, §13, §14 and §18), protocol/proto/tunnel.proto";

/// The three generated files, in order `frames.json`, `handshake.json`, `malformed.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub frames: VectorFile<FrameVector>,
    pub handshake: VectorFile<FrameVector>,
    pub malformed: VectorFile<MalformedVector>,
}

impl Generated {
    /// File name and pretty JSON (with a final newline) of each file.
    pub fn render(&self) -> Result<Vec<(&'static str, String)>, serde_json::Error> {
        fn pretty<T: serde::Serialize>(v: &T) -> Result<String, serde_json::Error> {
            serde_json::to_string_pretty(v).map(|s| s + "\n")
        }
        Ok(vec![
            ("frames.json", pretty(&self.frames)?),
            ("handshake.json", pretty(&self.handshake)?),
            ("malformed.json", pretty(&self.malformed)?),
        ])
    }

    pub fn len(&self) -> usize {
        self.frames.vectors.len() + self.handshake.vectors.len() + self.malformed.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Generates every vector from the specification.
pub fn generate(spec: &Spec) -> Result<Generated, SpecError> {
    let g = Gen { spec };
    Ok(Generated {
        frames: VectorFile {
            description: "Well-formed frames of every type and flag. Decoding `hex` (after the 8-octet \
                preface when `preface` is true) must give `frames`; encoding `frames` must give `hex`."
                .into(),
            generated_from: GENERATED_FROM.into(),
            vectors: g.frames()?,
        },
        handshake: VectorFile {
            description: "Connection prefaces, HELLO, ACCEPT and REJECT, and §18's worked example. Same \
                rules as frames.json."
                .into(),
            generated_from: GENERATED_FROM.into(),
            vectors: g.handshake()?,
        },
        malformed: VectorFile {
            description: "Input a receiver must refuse or ignore. Start a connection in the role \
                `receiver` announcing `receiver_settings` (versions 1..=1); for phase `established` \
                feed `handshake_hex` (and accept the HELLO), open `local_streams` streams, then feed \
                `input_hex` (in one piece or split anywhere); `expect` says what the receiver must send \
                and whether it closes."
                .into(),
            generated_from: GENERATED_FROM.into(),
            vectors: g.malformed()?,
        },
    })
}

/// A frame header, written by hand: 24-bit length, type, flags, 32-bit stream word (R bit included).
pub fn header(type_code: u8, flags: u8, stream_word: u32, length: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(type_code);
    out.push(flags);
    out.extend_from_slice(&stream_word.to_be_bytes());
    out
}

/// A whole frame with an arbitrary header.
pub fn raw(type_code: u8, flags: u8, stream_word: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = header(type_code, flags, stream_word, len);
    out.extend_from_slice(payload);
    out
}

/// The payload octets of a frame: opaque octets, a big-endian increment, or the protobuf message.
fn payload_octets(frame: &Frame) -> Vec<u8> {
    match frame {
        Frame::Data { data, .. } => data.to_vec(),
        Frame::Request { head, .. } => head.encode_to_vec(),
        Frame::Response { head, .. } => head.encode_to_vec(),
        Frame::Trailer { trailer, .. } => trailer.encode_to_vec(),
        Frame::Reset { reset, .. } => reset.encode_to_vec(),
        Frame::WindowUpdate { increment, .. } => increment.to_be_bytes().to_vec(),
        Frame::Ping { payload, .. } => payload.to_vec(),
        Frame::GoAway(m) => m.encode_to_vec(),
        Frame::Hello(m) => m.encode_to_vec(),
        Frame::Accept(m) => m.encode_to_vec(),
        Frame::Reject(m) => m.encode_to_vec(),
        Frame::Unknown { payload, .. } => payload.to_vec(),
    }
}

/// The §5 name of a frame variant.
fn variant_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Data { .. } => "DATA",
        Frame::Request { .. } => "REQUEST",
        Frame::Response { .. } => "RESPONSE",
        Frame::Trailer { .. } => "TRAILER",
        Frame::Reset { .. } => "RESET",
        Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
        Frame::Ping { .. } => "PING",
        Frame::GoAway(_) => "GOAWAY",
        Frame::Hello(_) => "HELLO",
        Frame::Accept(_) => "ACCEPT",
        Frame::Reject(_) => "REJECT",
        Frame::Unknown { .. } => "UNKNOWN",
    }
}

fn hdr(name: &str, value: &[u8]) -> proto::Header {
    proto::Header {
        name: name.into(),
        value: bytes::Bytes::copy_from_slice(value),
    }
}

fn data(stream: u32, body: &[u8], end_stream: bool) -> Frame {
    Frame::Data {
        stream: StreamId(stream),
        data: bytes::Bytes::copy_from_slice(body),
        end_stream,
    }
}

fn request(stream: u32, service: &str, end_stream: bool) -> Frame {
    Frame::Request {
        stream: StreamId(stream),
        head: proto::RequestHead {
            service: service.into(),
            method: "GET".into(),
            path: "/".into(),
            ..Default::default()
        },
        end_stream,
    }
}

fn response(stream: u32, status: u32, end_stream: bool) -> Frame {
    Frame::Response {
        stream: StreamId(stream),
        head: proto::ResponseHead {
            status,
            headers: Vec::new(),
        },
        end_stream,
    }
}

fn reset(stream: u32, code: u32) -> Frame {
    Frame::Reset {
        stream: StreamId(stream),
        reset: proto::Reset {
            code,
            message: String::new(),
        },
    }
}

fn window_update(stream: u32, increment: u32) -> Frame {
    Frame::WindowUpdate {
        stream: StreamId(stream),
        increment,
    }
}

fn goaway(last_stream_id: u32, code: u32, message: &str) -> Frame {
    Frame::GoAway(proto::GoAway {
        last_stream_id,
        code,
        message: message.into(),
    })
}

fn hello(min_version: u32, max_version: u32, settings: Option<proto::Settings>) -> Frame {
    Frame::Hello(proto::Hello {
        min_version,
        max_version,
        token: TOKEN.into(),
        meta: None,
        settings,
    })
}

fn accept(settings: Option<proto::Settings>) -> Frame {
    Frame::Accept(proto::Accept {
        version: VERSION,
        agent_id: 1,
        settings,
        connection_id: "vector".into(),
        ..proto::Accept::default()
    })
}

struct Gen<'a> {
    spec: &'a Spec,
}

impl Gen<'_> {
    /// The octets and meaning of a well-formed frame, header from §5.
    fn encode(&self, frame: &Frame) -> Result<(Vec<u8>, FrameMeaning), SpecError> {
        let (code, flags) = match frame {
            Frame::Unknown { kind, flags, .. } => (*kind, *flags),
            f => {
                let row = self.spec.frame_type(variant_name(f))?;
                let flag = |name: &str| -> Result<u8, SpecError> {
                    row.flags
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, bit)| *bit)
                        .ok_or_else(|| SpecError::UnknownName {
                            what: "flag",
                            name: format!("{name} on {}", row.name),
                        })
                };
                let flags = match f {
                    Frame::Data { end_stream, .. }
                    | Frame::Request { end_stream, .. }
                    | Frame::Response { end_stream, .. }
                        if *end_stream =>
                    {
                        flag("END_STREAM")?
                    }
                    Frame::Ping { ack: true, .. } => flag("ACK")?,
                    _ => 0,
                };
                (row.code, flags)
            }
        };
        let payload = payload_octets(frame);
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut octets = header(code, flags, frame.stream().0, len);
        octets.extend_from_slice(&payload);
        let m = meaning(
            code,
            flags,
            frame.stream().0,
            len,
            frame,
            self.spec as &dyn Names,
        );
        Ok((octets, m))
    }

    fn octets(&self, frames: &[Frame]) -> Result<Vec<u8>, SpecError> {
        let mut out = Vec::new();
        for f in frames {
            out.extend(self.encode(f)?.0);
        }
        Ok(out)
    }

    fn frame_vector(
        &self,
        name: &str,
        spec: Vec<String>,
        preface: bool,
        frames: &[Frame],
    ) -> Result<FrameVector, SpecError> {
        let mut octets = if preface {
            self.spec.preface.clone()
        } else {
            Vec::new()
        };
        let mut meanings = Vec::new();
        let mut spec_lines = spec;
        if preface {
            spec_lines.push(self.spec.preface_quote.clone());
        }
        for f in frames {
            let (o, m) = self.encode(f)?;
            octets.extend(o);
            if let Frame::Unknown { .. } = f {
            } else {
                let quote = self.spec.frame_type(variant_name(f))?.quote.clone();
                if !spec_lines.contains(&quote) {
                    spec_lines.push(quote);
                }
            }
            meanings.push(m);
        }
        Ok(FrameVector {
            name: name.into(),
            spec: spec_lines,
            preface,
            hex: hex::encode(octets),
            frames: meanings,
        })
    }

    fn error_value(&self, name: &str) -> Result<u32, SpecError> {
        Ok(self.spec.error_code(name)?.value)
    }

    fn frames(&self) -> Result<Vec<FrameVector>, SpecError> {
        let s = self.spec;
        let end_stream = s.sentence("5", "END_STREAM (0x1) on DATA")?;
        let mut v = vec![
            self.frame_vector("data", vec![], false, &[data(1, b"hello", false)])?,
            self.frame_vector(
                "data-end-stream",
                vec![end_stream.clone()],
                false,
                &[data(1, b"bye", true)],
            )?,
            self.frame_vector(
                "data-empty-end-stream",
                vec![s.sentence("9.4", "An empty DATA frame is legal")?],
                false,
                &[data(2, b"", true)],
            )?,
            self.frame_vector(
                "data-highest-stream-id",
                vec![s.sentence("9.1", "Stream ids are 31-bit")?],
                false,
                &[data(MAX_WINDOW, b"x", false)],
            )?,
            self.frame_vector(
                "request-get-end-stream",
                vec![end_stream.clone()],
                false,
                &[Frame::Request {
                    stream: StreamId(2),
                    head: proto::RequestHead {
                        service: "k8s-api".into(),
                        method: "GET".into(),
                        path: "/api/v1/namespaces/default/pods?watch=true".into(),
                        headers: vec![hdr("accept", b"application/json")],
                        timeout_ms: 30_000,
                        impersonation: None,
                    },
                    end_stream: true,
                }],
            )?,
            self.frame_vector(
                "request-with-body-follows",
                vec![],
                false,
                &[Frame::Request {
                    stream: StreamId(1),
                    head: proto::RequestHead {
                        service: "views".into(),
                        method: "SYNC".into(),
                        path: "/".into(),
                        headers: vec![],
                        timeout_ms: 0,
                        impersonation: None,
                    },
                    end_stream: false,
                }],
            )?,
            self.frame_vector(
                "request-empty-payload",
                vec![s.sentence("5", "An empty payload is valid")?],
                false,
                &[Frame::Request {
                    stream: StreamId(4),
                    head: proto::RequestHead::default(),
                    end_stream: false,
                }],
            )?,
            self.frame_vector(
                "request-repeated-and-binary-headers",
                vec![s.sentence("9.4", "order is kept and names may repeat")?],
                false,
                &[Frame::Request {
                    stream: StreamId(6),
                    head: proto::RequestHead {
                        service: "service-proxy".into(),
                        method: "POST".into(),
                        path: "/default/web:http/submit".into(),
                        headers: vec![
                            hdr("x-repeat", b"1"),
                            hdr("x-binary", &[0x00, 0xff, 0x7f]),
                            hdr("x-repeat", b"2"),
                        ],
                        timeout_ms: 1,
                        impersonation: None,
                    },
                    end_stream: false,
                }],
            )?,
            self.frame_vector(
                "response-200",
                vec![],
                false,
                &[Frame::Response {
                    stream: StreamId(2),
                    head: proto::ResponseHead {
                        status: 200,
                        headers: vec![hdr("content-type", b"application/json")],
                    },
                    end_stream: false,
                }],
            )?,
            self.frame_vector(
                "response-404-end-stream",
                vec![end_stream.clone()],
                false,
                &[response(2, 404, true)],
            )?,
            self.frame_vector(
                "trailer-ok-empty",
                vec![s.sentence("5", "TRAILER ends the sender's direction by itself")?],
                false,
                &[Frame::Trailer {
                    stream: StreamId(2),
                    trailer: proto::Trailer::default(),
                }],
            )?,
            self.frame_vector(
                "trailer-unavailable",
                vec![],
                false,
                &[Frame::Trailer {
                    stream: StreamId(2),
                    trailer: proto::Trailer {
                        code: 14,
                        message: "upstream closed the body".into(),
                        headers: vec![hdr("x-upstream", b"api-server")],
                    },
                }],
            )?,
        ];
        for e in &s.error_codes {
            let mut f = self.frame_vector(
                &format!("reset-{}", e.name.to_lowercase().replace('_', "-")),
                vec![e.quote.clone()],
                false,
                &[Frame::Reset {
                    stream: StreamId(3),
                    reset: proto::Reset {
                        code: e.value,
                        message: format!("reset with {}", e.name),
                    },
                }],
            )?;
            f.spec.rotate_right(1);
            v.push(f);
        }
        v.extend([
            self.frame_vector(
                "reset-unknown-code",
                vec![s.sentence("14", "Values above")?],
                false,
                &[reset(3, 4242)],
            )?,
            self.frame_vector(
                "window-update-connection",
                vec![],
                false,
                &[window_update(0, 32_768)],
            )?,
            self.frame_vector(
                "window-update-stream-largest-increment",
                vec![],
                false,
                &[window_update(5, MAX_WINDOW)],
            )?,
            self.frame_vector(
                "window-update-smallest-increment",
                vec![],
                false,
                &[window_update(3, 1)],
            )?,
            self.frame_vector(
                "ping",
                vec![],
                false,
                &[Frame::Ping {
                    ack: false,
                    payload: [0, 1, 2, 3, 4, 5, 6, 7],
                }],
            )?,
            self.frame_vector(
                "ping-ack",
                vec![s.sentence("11", "carrying the same 8 octets")?],
                false,
                &[Frame::Ping {
                    ack: true,
                    payload: [0, 1, 2, 3, 4, 5, 6, 7],
                }],
            )?,
            self.frame_vector(
                "goaway-no-error",
                vec![s.error_code("NO_ERROR")?.quote.clone()],
                false,
                &[goaway(7, self.error_value("NO_ERROR")?, "restarting")],
            )?,
            self.frame_vector(
                "goaway-protocol-error",
                vec![s.error_code("PROTOCOL_ERROR")?.quote.clone()],
                false,
                &[goaway(0, self.error_value("PROTOCOL_ERROR")?, "bad frame")],
            )?,
            self.frame_vector(
                "goaway-empty-payload",
                vec![s.sentence("5", "An empty payload is valid")?],
                false,
                &[Frame::GoAway(proto::GoAway::default())],
            )?,
            self.frame_vector(
                "unknown-type-0x0b",
                vec![s.sentence("5", "Types 0x0B to 0xFF are not defined")?],
                false,
                &[Frame::Unknown {
                    kind: 0x0B,
                    flags: 0,
                    stream: StreamId(0),
                    payload: bytes::Bytes::from_static(b"ext"),
                }],
            )?,
            self.frame_vector(
                "unknown-type-0xff-all-flags",
                vec![s.sentence("16", "whatever their flags")?],
                false,
                &[Frame::Unknown {
                    kind: 0xFF,
                    flags: 0xFF,
                    stream: StreamId(9),
                    payload: bytes::Bytes::new(),
                }],
            )?,
            self.frame_vector(
                "several-frames-back-to-back",
                vec![s.sentence(
                    "4",
                    "the next frame's header follows the last payload octet",
                )?],
                false,
                &[
                    response(1, 200, false),
                    data(1, b"{}", false),
                    Frame::Trailer {
                        stream: StreamId(1),
                        trailer: proto::Trailer::default(),
                    },
                ],
            )?,
        ]);
        Ok(v)
    }

    /// §8's defaults, as the settings message an implementation announces (every field explicit).
    fn default_settings(&self) -> Result<proto::Settings, SpecError> {
        let d = |f: &str| -> Result<u32, SpecError> {
            let v = self.spec.setting(f)?.default;
            u32::try_from(v).map_err(|_| SpecError::Unparsable {
                section: "8".into(),
                what: "a 32-bit default",
                text: v.to_string(),
            })
        };
        Ok(proto::Settings {
            max_concurrent_streams: d("max_concurrent_streams")?,
            initial_stream_window: d("initial_stream_window")?,
            initial_connection_window: d("initial_connection_window")?,
            max_frame_size: d("max_frame_size")?,
            max_header_size: d("max_header_size")?,
            idle_timeout_ms: d("idle_timeout_ms")?,
            keepalive_interval_ms: d("keepalive_interval_ms")?,
        })
    }

    fn handshake(&self) -> Result<Vec<FrameVector>, SpecError> {
        let s = self.spec;
        let defaults = self.default_settings()?;
        let settings_quotes: Vec<String> = s.settings.iter().map(|r| r.quote.clone()).collect();
        // §18: the messages as the text describes them, encoded here and compared with its raw octets.
        let example_hello = Frame::Hello(proto::Hello {
            min_version: 1,
            max_version: 1,
            token: "example-token".into(),
            meta: Some(proto::AgentMeta {
                version: "1.0.0".into(),
                pod_name: "agentk-0".into(),
                pod_namespace: "gitlab-agent".into(),
                capabilities: vec!["k8s-api".into()],
                ..Default::default()
            }),
            settings: Some(defaults),
        });
        let example_accept = Frame::Accept(proto::Accept {
            version: 1,
            agent_id: 42,
            settings: Some(defaults),
            connection_id: "conn-1".into(),
            ..proto::Accept::default()
        });
        let example_request = Frame::Request {
            stream: StreamId(2),
            head: proto::RequestHead {
                service: "k8s-api".into(),
                method: "GET".into(),
                path: "/version".into(),
                headers: vec![hdr("accept", b"application/json")],
                timeout_ms: 30_000,
                impersonation: None,
            },
            end_stream: true,
        };
        let example_response = [
            Frame::Response {
                stream: StreamId(2),
                head: proto::ResponseHead {
                    status: 200,
                    headers: vec![hdr("content-type", b"application/json")],
                },
                end_stream: false,
            },
            data(2, br#"{"major":"1","minor":"33"}"#, true),
        ];
        let examples: [(&str, bool, Vec<Frame>); 4] = [
            ("worked-example-1-preface-hello", true, vec![example_hello]),
            ("worked-example-2-accept", false, vec![example_accept]),
            ("worked-example-3-request", false, vec![example_request]),
            (
                "worked-example-4-response-data",
                false,
                example_response.to_vec(),
            ),
        ];
        let mut v = Vec::new();
        for (i, (name, preface, frames)) in examples.into_iter().enumerate() {
            let mut spec_lines = vec![format!(
                "§18 Worked example: raw octets of message {}",
                i + 1
            )];
            if i < 2 {
                spec_lines.extend(settings_quotes.iter().cloned());
            }
            let vector = self.frame_vector(name, spec_lines, preface, &frames)?;
            let published = s.worked_example.get(i).map(hex::encode);
            if published.as_deref() != Some(vector.hex.as_str()) {
                return Err(SpecError::Unparsable {
                    section: "18".into(),
                    what: "raw octets equal to the encoding of the messages described",
                    text: format!(
                        "message {}: published {}, encoded {}",
                        i + 1,
                        published.unwrap_or_default(),
                        vector.hex
                    ),
                });
            }
            v.push(vector);
        }
        let hello_quote = s.sentence("7.1", "The agent sends the preface and then HELLO")?;
        v.extend([
            self.frame_vector(
                "hello-minimal",
                vec![hello_quote.clone()],
                true,
                &[hello(1, 1, None)],
            )?,
            self.frame_vector(
                "hello-version-range-and-meta",
                vec![hello_quote.clone()],
                true,
                &[Frame::Hello(proto::Hello {
                    min_version: 1,
                    max_version: 3,
                    token: "a-token".into(),
                    meta: Some(proto::AgentMeta {
                        version: "2.0.0".into(),
                        commit: "abc123".into(),
                        pod_name: "agentk-7d9f".into(),
                        pod_namespace: "gitlab-agent".into(),
                        node_name: "node-1".into(),
                        capabilities: vec!["k8s-api".into(), "service-proxy".into()],
                    }),
                    settings: Some(proto::Settings {
                        max_concurrent_streams: 1,
                        initial_stream_window: 65_536,
                        initial_connection_window: 131_072,
                        max_frame_size: 32_768,
                        max_header_size: 1024,
                        idle_timeout_ms: 5_000,
                        keepalive_interval_ms: 1_000,
                    }),
                })],
            )?,
            self.frame_vector(
                "hello-empty-payload",
                vec![s.sentence("7.1", "max_version MUST be set")?],
                true,
                &[Frame::Hello(proto::Hello::default())],
            )?,
            self.frame_vector(
                "accept-minimal",
                vec![s.sentence("7.4", "Absent = all defaults")?],
                false,
                &[Frame::Accept(proto::Accept {
                    version: 1,
                    agent_id: 1,
                    settings: None,
                    connection_id: String::new(),
                    ..proto::Accept::default()
                })],
            )?,
            self.frame_vector(
                "accept-largest-agent-id",
                vec![],
                false,
                &[Frame::Accept(proto::Accept {
                    version: 1,
                    agent_id: u64::MAX,
                    settings: Some(defaults),
                    connection_id: "kas-0-17".into(),
                    ..proto::Accept::default()
                })],
            )?,
            self.frame_vector(
                "accept-replica",
                vec![s.sentence("7.4", "Both fields are hints")?],
                false,
                &[Frame::Accept(proto::Accept {
                    version: 1,
                    agent_id: 7,
                    settings: None,
                    connection_id: "kas-b-3".into(),
                    replica_id: "kas-b".into(),
                    connections_wanted: 2,
                })],
            )?,
        ]);
        for r in &s.reject_codes {
            let retry_after_ms =
                if r.name.contains("RATE_LIMITED") || r.name.contains("UNAVAILABLE") {
                    5_000
                } else {
                    0
                };
            v.push(self.frame_vector(
                &format!(
                    "reject-{}",
                    r.name
                        .trim_start_matches("REJECT_CODE_")
                        .to_lowercase()
                        .replace('_', "-")
                ),
                vec![r.quote.clone()],
                false,
                &[Frame::Reject(proto::Reject {
                    code: r.value,
                    message: format!("refused: {}", r.name),
                    retry_after_ms,
                    min_version: 1,
                    max_version: 1,
                })],
            )?);
        }
        v.push(self.frame_vector(
            "reject-unknown-code",
            vec![s.sentence("7.4", "Receivers treat codes they do not know")?],
            false,
            &[Frame::Reject(proto::Reject {
                code: 42,
                message: "a future reason".into(),
                retry_after_ms: 0,
                min_version: 1,
                max_version: 2,
            })],
        )?);
        Ok(v)
    }

    fn receiver_defaults(&self) -> Result<SettingsJson, SpecError> {
        let d = self.default_settings()?;
        Ok(SettingsJson {
            max_concurrent_streams: d.max_concurrent_streams,
            initial_stream_window: d.initial_stream_window,
            initial_connection_window: d.initial_connection_window,
            max_frame_size: d.max_frame_size,
            max_header_size: d.max_header_size,
            idle_timeout_ms: d.idle_timeout_ms,
            keepalive_interval_ms: d.keepalive_interval_ms,
        })
    }

    /// The expectation of a §13 row; `stream` for stream errors.
    fn expect(&self, needle: &str, stream: Option<u32>) -> Result<(Expect, String), SpecError> {
        let (c, quote) = self.spec.consequence(needle)?;
        let base = |outcome, level: &str| Expect {
            outcome,
            level: level.into(),
            error: None,
            code: None,
            stream: None,
            reject_code: None,
            reject_value: None,
            reply_hex: None,
            codec_error: None,
        };
        let e = match c {
            Consequence::ConnectionError(row) => Expect {
                error: Some(row.name),
                code: Some(row.value),
                ..base(Outcome::ConnectionError, "connection")
            },
            Consequence::StreamError(row) => Expect {
                error: Some(row.name),
                code: Some(row.value),
                stream,
                ..base(Outcome::StreamError, "stream")
            },
            Consequence::Reject(row) => Expect {
                reject_code: Some(row.name),
                reject_value: Some(row.value),
                ..base(Outcome::Reject, "handshake")
            },
            Consequence::Ignored => base(Outcome::Ignored, "none"),
            Consequence::ClosedSilently => base(Outcome::ClosedSilently, "connection"),
        };
        Ok((e, quote))
    }

    fn handshake_octets(&self, receiver: Receiver) -> Result<Vec<u8>, SpecError> {
        Ok(match receiver {
            Receiver::Server => {
                let mut o = self.spec.preface.clone();
                o.extend(self.octets(&[hello(VERSION, VERSION, None)])?);
                o
            }
            Receiver::Agent => self.octets(&[accept(None)])?,
        })
    }

    fn preface_then(&self, frames: &[u8]) -> Vec<u8> {
        let mut o = self.spec.preface.clone();
        o.extend_from_slice(frames);
        o
    }

    fn malformed(&self) -> Result<Vec<MalformedVector>, SpecError> {
        let s = self.spec;
        let d = self.receiver_defaults()?;
        let max_frame = d.max_frame_size;
        let order = s.sentence("5.1", "The implementation validates a frame in this order")?;
        let t = |name: &str| self.spec.frame_type(name).map(|t| t.code);
        let (data_t, request_t, response_t, trailer_t, reset_t) = (
            t("DATA")?,
            t("REQUEST")?,
            t("RESPONSE")?,
            t("TRAILER")?,
            t("RESET")?,
        );
        let (wu_t, ping_t, goaway_t, hello_t) =
            (t("WINDOW_UPDATE")?, t("PING")?, t("GOAWAY")?, t("HELLO")?);
        let end = s
            .frame_type("DATA")?
            .flags
            .iter()
            .find(|(n, _)| n == "END_STREAM")
            .map_or(1, |(_, b)| *b);
        let req = |id: u32, end_stream: bool| request(id, "vector", end_stream);
        let f = |frames: &[Frame]| self.octets(frames);
        let pre = |frames: &[u8]| self.preface_then(frames);
        let no_error = self.error_value("NO_ERROR")?;
        let small_heads = SettingsJson {
            max_header_size: 1024,
            ..d
        };
        let small_windows = SettingsJson {
            initial_stream_window: 100,
            initial_connection_window: 150,
            ..d
        };
        let one_stream = SettingsJson {
            max_concurrent_streams: 1,
            ..d
        };
        let settings_with =
            |change: &dyn Fn(&mut proto::Settings)| -> Result<proto::Settings, SpecError> {
                let mut x = self.default_settings()?;
                change(&mut x);
                Ok(x)
            };
        let bad_frame_size = settings_with(&|x| x.max_frame_size = 1000)?;
        let bad_header_size = settings_with(&|x| x.max_header_size = 100)?;
        let accept_v2 = Frame::Accept(proto::Accept {
            version: 2,
            agent_id: 1,
            settings: None,
            connection_id: String::new(),
            ..proto::Accept::default()
        });
        let accept_bad_settings = Frame::Accept(proto::Accept {
            version: 1,
            agent_id: 1,
            settings: Some(bad_frame_size),
            connection_id: String::new(),
            ..proto::Accept::default()
        });
        let trailer = |id: u32| Frame::Trailer {
            stream: StreamId(id),
            trailer: proto::Trailer::default(),
        };
        let stream0 = s.sentence("5", "on stream 0 are a connection error")?;
        let mut unknown_field = proto::RequestHead {
            service: "vector".into(),
            ..Default::default()
        }
        .encode_to_vec();
        unknown_field.extend([0x78, 0x01]); // field 15, varint 1

        use Receiver::Agent as A;
        let cases = vec![
            // ---- frame layout and sizes (§4, §5, §6): a frame decoder detects these on its own
            case("reserved-bit-set", "reserved bit R set", raw(data_t, 0, 0x8000_0001, b"x"))
                .codec("ReservedBit"),
            case("reserved-bit-set-on-unknown-type", "reserved bit R set", raw(0x0B, 0, 0x8000_0000, b""))
                .codec("ReservedBit")
                .spec(s.sentence("16", "They are still subject to the reserved bit")?),
            case("data-above-max-frame-size", "frame payload above the receiver's max_frame_size", header(data_t, 0, 1, max_frame + 1))
                .codec("TooLarge")
                .spec(s.setting("max_frame_size")?.quote.clone())
                .spec(order.clone())
                .note("only the 9 header octets: the error is detected before the payload arrives (§5.1)"),
            case("ping-above-max-frame-size", "frame payload above the receiver's max_frame_size", header(ping_t, 0, 0, max_frame + 1))
                .codec("TooLarge")
                .spec(order.clone())
                .note("the size limit is checked before the fixed PING length"),
            case("unknown-type-above-max-frame-size", "frame payload above the receiver's max_frame_size", header(0x0B, 0, 0, max_frame + 1))
                .codec("TooLarge")
                .spec(s.sentence("16", "They are still subject to the reserved bit")?)
                .note("only the header"),
            case("hello-above-64-kib", "HELLO/ACCEPT/REJECT payload above 64 KiB", pre(&header(hello_t, 0, 0, HANDSHAKE_LIMIT + 1)))
                .handshake()
                .codec("TooLarge")
                .note("only the preface and the HELLO header"),
            case("request-above-max-header-size", "REQUEST/RESPONSE/TRAILER payload above the receiver's max_header_size", header(request_t, 0, 1, 1025))
                .settings(small_heads)
                .codec("HeaderTooLarge")
                .spec(s.setting("max_header_size")?.quote.clone())
                .note("the receiver announced max_header_size 1024; only the header"),
            case("reserved-bit-checked-before-size", "reserved bit R set", header(data_t, 0, 0x8000_0001, max_frame + 1))
                .codec("ReservedBit")
                .spec(order.clone())
                .note("both the R bit and the size are wrong: the R bit is checked first"),
            case("undefined-flag-on-reset", "undefined flag set on a known type", raw(reset_t, 0x1, 1, b""))
                .codec("BadFlags"),
            case("undefined-flag-0x2-on-data", "undefined flag set on a known type", raw(data_t, 0x2, 1, b"x"))
                .codec("BadFlags"),
            case("undefined-flag-on-window-update", "undefined flag set on a known type", raw(wu_t, 0x1, 0, &1u32.to_be_bytes()))
                .codec("BadFlags"),
            case("undefined-flag-on-goaway", "undefined flag set on a known type", raw(goaway_t, 0x80, 0, b""))
                .codec("BadFlags"),
            case("undefined-flag-on-hello", "undefined flag set on a known type", pre(&raw(hello_t, 0x1, 0, &[])))
                .handshake()
                .codec("BadFlags"),
            case("flags-checked-before-fixed-length", "undefined flag set on a known type", raw(ping_t, 0x2, 0, &[0; 7]))
                .codec("BadFlags")
                .spec(order.clone())
                .note("PING with an undefined flag and a 7-octet payload: flags come first"),
            case("data-on-stream-0", "TRAILER or RESET on stream 0", raw(data_t, 0, 0, b"x")).codec("StreamZero")
                .spec(stream0.clone()),
            case("request-on-stream-0", "TRAILER or RESET on stream 0", raw(request_t, 0, 0, b"")).codec("StreamZero")
                .spec(stream0.clone()),
            case("response-on-stream-0", "TRAILER or RESET on stream 0", raw(response_t, 0, 0, b"")).codec("StreamZero")
                .spec(stream0.clone()),
            case("trailer-on-stream-0", "TRAILER or RESET on stream 0", raw(trailer_t, 0, 0, b"")).codec("StreamZero")
                .spec(stream0.clone()),
            case("reset-on-stream-0", "TRAILER or RESET on stream 0", raw(reset_t, 0, 0, b""))
                .codec("StreamZero")
                .spec(stream0),
            case("ping-on-stream-1", "REJECT on a non-zero stream", raw(ping_t, 0, 1, &[0; 8])).codec("NonZeroStream"),
            case("goaway-on-stream-3", "REJECT on a non-zero stream", raw(goaway_t, 0, 3, b"")).codec("NonZeroStream"),
            case("hello-on-stream-1", "REJECT on a non-zero stream", raw(hello_t, 0, 1, b"")).codec("NonZeroStream"),
            case("ping-payload-7-octets", "PING payload not 8 octets", raw(ping_t, 0, 0, &[1; 7])).codec("BadLength"),
            case("ping-payload-9-octets", "PING payload not 8 octets", raw(ping_t, 0, 0, &[1; 9])).codec("BadLength"),
            case("window-update-payload-3-octets", "PING payload not 8 octets", raw(wu_t, 0, 0, &[1; 3])).codec("BadLength"),
            case("window-update-payload-5-octets", "PING payload not 8 octets", raw(wu_t, 0, 0, &[1; 5])).codec("BadLength"),
            case("window-update-increment-0", "WINDOW_UPDATE increment 0 or above", raw(wu_t, 0, 0, &0u32.to_be_bytes()))
                .codec("BadWindowIncrement"),
            case("window-update-increment-top-bit", "WINDOW_UPDATE increment 0 or above", raw(wu_t, 0, 0, &0x8000_0000u32.to_be_bytes()))
                .codec("BadWindowIncrement"),
            case("window-update-increment-checked-before-stream-state", "WINDOW_UPDATE increment 0 or above", raw(wu_t, 0, 7, &0u32.to_be_bytes()))
                .codec("BadWindowIncrement")
                .spec(order.clone())
                .note("stream 7 is idle too, but the payload is checked before the stream state"),
            case("request-truncated-protobuf", "protobuf payload undecodable", raw(request_t, 0, 1, &[0x0a, 0x05, b'a', b'b']))
                .codec("BadPayload")
                .note("field 1 announces 5 octets, 2 follow"),
            case("reset-message-not-utf8", "protobuf payload undecodable", raw(reset_t, 0, 1, &[0x12, 0x02, 0xff, 0xfe]))
                .codec("BadPayload")
                .note("field 2 (message, a string) holds invalid UTF-8"),
            case("goaway-wrong-wire-type", "protobuf payload undecodable", raw(goaway_t, 0, 0, &[0x0a, 0x01, 0x00]))
                .codec("BadPayload")
                .note("field 1 (last_stream_id, a uint32) with wire type 2"),
            // ---- handshake (§3, §7)
            case("wrong-preface", "preface octets wrong (server)", b"GET / HTTP/1.1\r\nHost: kas\r\n\r\n".to_vec())
                .handshake()
                .spec(s.preface_quote.clone()),
            case("ping-before-hello", "any frame other than HELLO first (server)", pre(&raw(ping_t, 0, 0, &[0; 8])))
                .handshake()
                .spec(s.sentence("7.6", "Any other frame received during the handshake")?),
            case("frame-while-hello-pending", "any frame other than HELLO first (server)", pre(&[f(&[hello(1, 1, None)])?, raw(wu_t, 0, 0, &1u32.to_be_bytes())].concat()))
                .handshake()
                .spec(s.sentence("7.6", "In particular the server accepts no frame between the HELLO and its own ACCEPT")?)
                .note("the WINDOW_UPDATE arrives before the server application decided on the HELLO"),
            case("unknown-type-before-handshake", "any frame other than HELLO first (server)", pre(&raw(0x0B, 0, 0, b"")))
                .handshake()
                .spec(s.sentence("16", "Before the handshake completes they are a connection error")?),
            case("reject-sent-to-server", "any frame other than HELLO first (server)", pre(&f(&[Frame::Reject(proto::Reject::default())])?))
                .handshake(),
            case("hello-after-handshake", "HELLO, ACCEPT or REJECT after the handshake", f(&[hello(1, 1, None)])?),
            case("accept-sent-to-server", "HELLO, ACCEPT or REJECT after the handshake", f(&[accept(None)])?),
            case("hello-no-common-version", "HELLO with no common version", pre(&f(&[hello(2, 3, None)])?))
                .handshake()
                .spec(s.sentence("7.2", "If lo > hi there is no common version")?)
                .note("the agent speaks 2..=3, the server 1..=1"),
            case("hello-empty-range", "HELLO with no common version", pre(&f(&[Frame::Hello(proto::Hello::default())])?))
                .handshake()
                .spec(s.sentence("7.1", "max_version MUST be set")?)
                .note("an empty HELLO payload: versions 0..=0"),
            case("hello-max-frame-size-below-minimum", "HELLO with settings out of range", pre(&f(&[hello(1, 1, Some(bad_frame_size))])?))
                .handshake()
                .spec(s.setting("max_frame_size")?.quote.clone()),
            case("hello-max-header-size-below-minimum", "HELLO with settings out of range", pre(&f(&[hello(1, 1, Some(bad_header_size))])?))
                .handshake()
                .spec(s.setting("max_header_size")?.quote.clone()),
            case("accept-version-outside-range", "ACCEPT with a version outside the agent's range", f(&[accept_v2])?)
                .to(A)
                .handshake()
                .spec(s.sentence("7.2", "The agent MUST check that Accept.version")?)
                .note("the agent speaks 1..=1"),
            case("accept-settings-out-of-range", "ACCEPT with a version outside the agent's range", f(&[accept_bad_settings])?)
                .to(A)
                .handshake()
                .spec(s.sentence("7.3", "The agent checks the server's settings")?),
            case("ping-before-accept", "any frame other than HELLO first (server)", raw(ping_t, 0, 0, &[0; 8]))
                .to(A)
                .handshake(),
            case("hello-sent-to-agent", "HELLO, ACCEPT or REJECT after the handshake", f(&[hello(1, 1, None)])?)
                .to(A)
                .handshake()
                .spec(s.sentence("7.6", "HELLO received by an agent")?),
            case("reject-after-handshake", "HELLO, ACCEPT or REJECT after the handshake", f(&[Frame::Reject(proto::Reject::default())])?)
                .to(A),
            // ---- streams (§9)
            case("request-with-receiver-parity", "REQUEST with the receiver's parity", f(&[req(2, true)])?)
                .spec(s.sentence("9.1", "A REQUEST with the receiver's parity")?),
            case("request-with-agent-parity-to-agent", "REQUEST with the receiver's parity", f(&[req(1, true)])?).to(A),
            case("request-id-going-down", "REQUEST with an id not above every id", f(&[req(5, false), req(3, false)])?),
            case("request-id-reused", "REQUEST with an id not above every id", f(&[req(1, true), req(1, true)])?),
            case("data-on-idle-stream", "on an idle stream", f(&[data(7, b"x", false)])?)
                .spec(s.sentence("9.1", "Any frame other than REQUEST naming an idle stream")?),
            case("window-update-on-idle-peer-stream", "on an idle stream", f(&[window_update(9, 100)])?),
            case("window-update-on-own-unopened-stream", "on an idle stream", f(&[window_update(2, 100)])?)
                .note("stream 2 has the server's parity and the server has not opened it"),
            case("reset-on-idle-stream", "on an idle stream", f(&[reset(11, 7)])?),
            case("response-on-idle-stream", "on an idle stream", f(&[response(3, 200, true)])?)
                .to(A)
                .note("the agent has opened no stream"),
            case("data-beyond-stream-window", "DATA beyond the stream window", f(&[req(1, false), data(1, &[7; 101], false)])?)
                .settings(small_windows)
                .spec(s.sentence("10", "DATA beyond the receiver's remaining connection window")?)
                .note("the receiver announced initial_stream_window 100"),
            case("data-beyond-connection-window", "DATA beyond the connection window", f(&[req(1, false), data(1, &[7; 80], false), req(3, false), data(3, &[7; 80], false)])?)
                .settings(small_windows)
                .note("the receiver announced initial_connection_window 150: 80 + 80 octets exceed it"),
            case("window-update-connection-overflow", "WINDOW_UPDATE on stream 0 taking the connection credit", f(&[window_update(0, MAX_WINDOW)])?)
                .note("the sender's connection window is its default initial_connection_window; adding 2^31-1 overflows"),
            case("window-update-stream-overflow", "WINDOW_UPDATE on a stream taking its credit", f(&[req(1, false), window_update(1, MAX_WINDOW)])?)
                .stream(1)
                .note("the receiver's credit on stream 1 starts at the sender's default initial_stream_window"),
            case("request-beyond-max-concurrent-streams", "REQUEST while the peer has max_concurrent_streams", f(&[req(1, false), req(3, false)])?)
                .settings(one_stream)
                .stream(3)
                .spec(s.sentence("9.6", "answers with RESET REFUSED_STREAM")?)
                .note("the receiver announced max_concurrent_streams 1; stream 1 is still open"),
            case("request-after-goaway", "REQUEST after the receiver sent GOAWAY", f(&[req(1, false), goaway(0, no_error, ""), req(3, false)])?)
                .stream(3)
                .spec(s.sentence("12", "answers any REQUEST that still arrives with RESET REFUSED_STREAM")?)
                .note("the receiver answers the GOAWAY with its own (NO_ERROR), keeps stream 1, and must refuse stream 3"),
            case("response-on-stream-the-receiver-did-not-open", "RESPONSE on a stream the receiver did not open", f(&[req(1, false), response(1, 200, false)])?)
                .stream(1)
                .spec(s.sentence("9.3", "A receiver enforces these rules with stream errors")?),
            case("second-response", "RESPONSE on a stream the receiver did not open", f(&[response(1, 200, false), response(1, 200, false)])?)
                .to(A)
                .local_streams(1)
                .stream(1)
                .note("stream 1 was opened by the receiver (local_streams 1)"),
            case("data-before-response", "DATA before the RESPONSE", f(&[data(1, b"early", false)])?)
                .to(A)
                .local_streams(1)
                .stream(1)
                .note("stream 1 was opened by the receiver"),
            case("trailer-before-response", "TRAILER while the peer's direction is not open", f(&[trailer(1)])?)
                .to(A)
                .local_streams(1)
                .stream(1),
            case("trailer-after-end-stream", "TRAILER while the peer's direction is not open", f(&[req(1, true), trailer(1)])?)
                .stream(1)
                .note("the REQUEST had END_STREAM; the receiver has not answered, so stream 1 is not closed"),
            case("data-after-end-stream", "DATA after the peer's END", f(&[req(1, true), data(1, b"late", false)])?)
                .stream(1)
                .note("the REQUEST had END_STREAM; the receiver has not answered, so stream 1 is half-closed, not closed"),
            case("frames-on-closed-stream-ignored", "any frame but REQUEST on a closed stream", [f(&[req(1, false), reset(1, self.error_value("CANCEL")?), data(1, b"in flight", false), window_update(1, 10), reset(1, 7)])?, raw(data_t, end, 1, b"")].concat())
                .spec(s.sentence("9.1", "frames for it that were in flight when it closed are ignored")?)
                .note("stream 1 is closed by the sender's RESET; the frames after it were in flight"),
            case("unknown-type-on-idle-stream-ignored", "frame of an unknown type", raw(0x0B, 0xFF, 99, b"ext"))
                .spec(s.sentence("16", "received after the handshake MUST be ignored")?),
            case("unknown-type-on-stream-0-ignored", "frame of an unknown type", raw(0xFE, 0, 0, b"")).to(A),
            case("unsolicited-ping-ack-ignored", "PING ACK that answers nothing", f(&[Frame::Ping { ack: true, payload: *b"nobodyso" }])?),
            case("unknown-protobuf-field-ignored", "unknown protobuf fields", raw(request_t, end, 1, &unknown_field))
                .spec(s.sentence("16", "Unknown protobuf fields MUST be ignored")?)
                .note("a REQUEST with field 15 set: the stream opens normally"),
            case("goaway-with-error-closes-silently", "GOAWAY with a non-zero code received", f(&[goaway(0, self.error_value("PROTOCOL_ERROR")?, "bye")])?)
                .spec(s.sentence("12", "A GOAWAY with a non-zero code announces an immediate close")?),
            case("goaway-with-error-closes-agent", "GOAWAY with a non-zero code received", f(&[goaway(0, self.error_value("INTERNAL_ERROR")?, "kas failed")])?)
                .to(A)
                .local_streams(1)
                .note("the receiver's own stream 1 fails with the GOAWAY's code; nothing is sent"),
        ];
        let mut out = Vec::new();
        for c in cases {
            out.push(self.malformed_vector(c, d)?);
        }
        // ---- replies (§11): the one frame a receiver answers by itself
        let ping = Frame::Ping {
            ack: false,
            payload: *b"\x01\x02conf\xfe\xff",
        };
        let pong = Frame::Ping {
            ack: true,
            payload: *b"\x01\x02conf\xfe\xff",
        };
        for (name, receiver) in [
            ("ping-answered-by-server", Receiver::Server),
            ("ping-answered-by-agent", A),
        ] {
            let c = case(name, "", f(std::slice::from_ref(&ping))?).to(receiver);
            let mut v = self.malformed_vector(c, d)?;
            v.spec = vec![s.sentence("11", "MUST answer promptly")?];
            v.note = Some("not malformed: the one frame a receiver must answer by itself".into());
            v.expect = Expect {
                outcome: Outcome::Reply,
                level: "none".into(),
                error: None,
                code: None,
                stream: None,
                reject_code: None,
                reject_value: None,
                reply_hex: Some(hex::encode(f(std::slice::from_ref(&pong))?)),
                codec_error: None,
            };
            out.push(v);
        }
        Ok(out)
    }

    /// The vector of one case; its expectation from the §13 row of `case.needle` (none if empty).
    fn malformed_vector(
        &self,
        c: Case,
        defaults: SettingsJson,
    ) -> Result<MalformedVector, SpecError> {
        let (mut expect, mut spec) = if c.needle.is_empty() {
            let (e, _) = self.expect("PING ACK that answers nothing", None)?;
            (e, Vec::new())
        } else {
            let (e, quote) = self.expect(c.needle, c.stream)?;
            (e, vec![quote])
        };
        expect.codec_error = c.codec.map(str::to_owned);
        spec.extend(c.spec);
        Ok(MalformedVector {
            name: c.name.into(),
            spec,
            receiver: c.receiver,
            receiver_settings: c.settings.unwrap_or(defaults),
            phase: c.phase,
            handshake_hex: match c.phase {
                Phase::Established => hex::encode(self.handshake_octets(c.receiver)?),
                Phase::Handshake => String::new(),
            },
            local_streams: c.local_streams,
            input_hex: hex::encode(c.input),
            note: c.note.map(str::to_owned),
            expect,
        })
    }
}

/// One malformed-input case, before its expectation is looked up.
struct Case {
    name: &'static str,
    /// Text identifying the §13 row.
    needle: &'static str,
    input: Vec<u8>,
    receiver: Receiver,
    phase: Phase,
    settings: Option<SettingsJson>,
    local_streams: u32,
    stream: Option<u32>,
    codec: Option<&'static str>,
    spec: Vec<String>,
    note: Option<&'static str>,
}

/// A case for an established server receiver with default settings.
fn case(name: &'static str, needle: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        needle,
        input,
        receiver: Receiver::Server,
        phase: Phase::Established,
        settings: None,
        local_streams: 0,
        stream: None,
        codec: None,
        spec: Vec::new(),
        note: None,
    }
}

impl Case {
    fn to(mut self, r: Receiver) -> Case {
        self.receiver = r;
        self
    }

    fn handshake(mut self) -> Case {
        self.phase = Phase::Handshake;
        self
    }

    fn settings(mut self, s: SettingsJson) -> Case {
        self.settings = Some(s);
        self
    }

    fn local_streams(mut self, n: u32) -> Case {
        self.local_streams = n;
        self
    }

    fn stream(mut self, id: u32) -> Case {
        self.stream = Some(id);
        self
    }

    fn codec(mut self, name: &'static str) -> Case {
        self.codec = Some(name);
        self
    }

    fn spec(mut self, line: String) -> Case {
        self.spec.push(line);
        self
    }

    fn note(mut self, note: &'static str) -> Case {
        self.note = Some(note);
        self
    }
}
