//! Prints the worked example of `PROTOCOL.md` ("Worked example"): the octets two real [`Connection`]s
//! exchange for a preface, HELLO, ACCEPT and one REQUEST / RESPONSE / DATA exchange, as a hex dump
//! annotated frame by frame and protobuf field by protobuf field.
//!
//! ```text
//! cargo run -p protocol --example spec_example
//! ```
//!
//! The output is deterministic (no clock value, id or random number appears on the wire here), so the
//! specification can quote it verbatim; re-run this after any change to the encoding and paste again.

use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;
use protocol::tunnel::frame::{Decoder, Frame, HEADER_LEN, MAX_FRAME_SIZE_LIMIT, PREFACE};
use protocol::{AgentHello, Config, Connection, Event, proto};

/// How a protobuf field is shown.
#[derive(Clone, Copy)]
enum Kind {
    Uint,
    Str,
    Bytes,
    Msg(&'static [Field]),
}

type Field = (u32, &'static str, Kind);

const SETTINGS: &[Field] = &[
    (1, "max_concurrent_streams", Kind::Uint),
    (2, "initial_stream_window", Kind::Uint),
    (3, "initial_connection_window", Kind::Uint),
    (4, "max_frame_size", Kind::Uint),
    (5, "max_header_size", Kind::Uint),
    (6, "idle_timeout_ms", Kind::Uint),
    (7, "keepalive_interval_ms", Kind::Uint),
];
const AGENT_META: &[Field] = &[
    (1, "version", Kind::Str),
    (2, "commit", Kind::Str),
    (3, "pod_name", Kind::Str),
    (4, "pod_namespace", Kind::Str),
    (5, "node_name", Kind::Str),
    (6, "capabilities", Kind::Str),
];
const HELLO: &[Field] = &[
    (1, "min_version", Kind::Uint),
    (2, "max_version", Kind::Uint),
    (3, "token", Kind::Str),
    (4, "meta", Kind::Msg(AGENT_META)),
    (5, "settings", Kind::Msg(SETTINGS)),
];
const ACCEPT: &[Field] = &[
    (1, "version", Kind::Uint),
    (2, "agent_id", Kind::Uint),
    (3, "settings", Kind::Msg(SETTINGS)),
    (4, "connection_id", Kind::Str),
];
const HEADER: &[Field] = &[(1, "name", Kind::Str), (2, "value", Kind::Bytes)];
const REQUEST_HEAD: &[Field] = &[
    (1, "service", Kind::Str),
    (2, "method", Kind::Str),
    (3, "path", Kind::Str),
    (4, "headers", Kind::Msg(HEADER)),
    (5, "timeout_ms", Kind::Uint),
];
const RESPONSE_HEAD: &[Field] = &[(1, "status", Kind::Uint), (2, "headers", Kind::Msg(HEADER))];

const HEX_COLUMN: usize = 44;

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One output line: `indent` + hex octets (wrapped at 12 per line), then the note on the first line.
fn line(out: &mut String, depth: usize, octets: &[u8], note: &str) {
    let indent = "  ".repeat(depth + 1);
    let mut chunks = octets.chunks(12).peekable();
    if chunks.peek().is_none() {
        let _ = writeln!(out, "{indent:<HEX_COLUMN$}  {note}");
        return;
    }
    let mut first = true;
    for c in chunks {
        let text = format!("{indent}{}", hex(c));
        if first {
            let _ = writeln!(out, "{text:<HEX_COLUMN$}  {note}");
            first = false;
        } else {
            let _ = writeln!(out, "{text}");
        }
    }
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, x) in b.iter().enumerate().take(10) {
        v |= u64::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Annotates a protobuf message with the field names of `schema` (only the wire types used by
/// `tunnel.proto`: varint and length-delimited).
fn proto_fields(out: &mut String, depth: usize, mut b: &[u8], schema: &[Field]) {
    while !b.is_empty() {
        let Some((key, klen)) = varint(b) else {
            line(out, depth, b, "(bad varint)");
            return;
        };
        let number = (key >> 3) as u32;
        let wire = key & 7;
        let (name, kind) = schema
            .iter()
            .find(|(n, _, _)| *n == number)
            .map(|(_, name, kind)| (*name, *kind))
            .unwrap_or(("(unknown)", Kind::Bytes));
        match wire {
            0 => {
                let Some((v, vlen)) = varint(&b[klen..]) else {
                    line(out, depth, b, "(bad varint)");
                    return;
                };
                let n = klen + vlen;
                line(out, depth, &b[..n], &format!("field {number} {name} = {v}"));
                b = &b[n..];
            }
            2 => {
                let Some((len, llen)) = varint(&b[klen..]) else {
                    line(out, depth, b, "(bad length)");
                    return;
                };
                let start = klen + llen;
                let end = start + len as usize;
                if end > b.len() {
                    line(out, depth, b, "(truncated)");
                    return;
                }
                let value = &b[start..end];
                match kind {
                    Kind::Msg(inner) => {
                        line(
                            out,
                            depth,
                            &b[..start],
                            &format!("field {number} {name}: message of {len} octets"),
                        );
                        proto_fields(out, depth + 1, value, inner);
                    }
                    Kind::Str | Kind::Bytes | Kind::Uint => {
                        let shown = String::from_utf8_lossy(value);
                        line(
                            out,
                            depth,
                            &b[..end],
                            &format!("field {number} {name} = {shown:?}"),
                        );
                    }
                }
                b = &b[end..];
            }
            _ => {
                line(
                    out,
                    depth,
                    b,
                    &format!("(wire type {wire} unused by tunnel.proto)"),
                );
                return;
            }
        }
    }
}

fn type_name(kind: u8) -> &'static str {
    [
        "DATA",
        "REQUEST",
        "RESPONSE",
        "TRAILER",
        "RESET",
        "WINDOW_UPDATE",
        "PING",
        "GOAWAY",
        "HELLO",
        "ACCEPT",
        "REJECT",
    ]
    .get(usize::from(kind))
    .copied()
    .unwrap_or("unknown")
}

/// Annotates every frame in `wire` (which may start with the preface).
fn annotate(title: &str, wire: &[u8]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title} ({} octets)", wire.len());
    let mut rest = wire;
    if rest.starts_with(PREFACE) {
        line(&mut out, 0, PREFACE, "connection preface");
        rest = &rest[PREFACE.len()..];
    }
    // Decode with the real decoder alongside, to make sure the dump shows frames as the code sees them.
    let mut decoder = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
    decoder.feed(rest);
    while rest.len() >= HEADER_LEN {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let frame = match decoder.decode() {
            Ok(Some(f)) => f,
            other => panic!("the example produced an undecodable frame: {other:?}"),
        };
        let mut flag_names = Vec::new();
        if flags & 1 != 0 {
            flag_names.push(if kind == 6 { "ACK" } else { "END_STREAM" });
        }
        line(
            &mut out,
            0,
            &rest[..HEADER_LEN],
            &format!(
                "{} length={len} type={kind:#x} flags={flags:#04x}{} stream={stream}",
                type_name(kind),
                if flag_names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", flag_names.join("|"))
                }
            ),
        );
        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        match frame {
            Frame::Hello(_) => proto_fields(&mut out, 1, payload, HELLO),
            Frame::Accept(_) => proto_fields(&mut out, 1, payload, ACCEPT),
            Frame::Request { .. } => proto_fields(&mut out, 1, payload, REQUEST_HEAD),
            Frame::Response { .. } => proto_fields(&mut out, 1, payload, RESPONSE_HEAD),
            Frame::Data { .. } => line(
                &mut out,
                1,
                payload,
                &format!("body {:?}", String::from_utf8_lossy(payload)),
            ),
            other => line(&mut out, 1, payload, &format!("{other:?}")),
        }
        rest = &rest[HEADER_LEN + len..];
    }
    assert!(rest.is_empty(), "trailing partial frame");
    out
}

/// Everything one side transmits right now, as one buffer.
fn drain(c: &mut Connection) -> Bytes {
    let mut all = Vec::new();
    while let Some(b) = c.poll_transmit() {
        all.extend_from_slice(&b);
    }
    Bytes::from(all)
}

fn main() {
    let now = Instant::now();
    let hello = AgentHello {
        token: "example-token".into(),
        meta: proto::AgentMeta {
            version: "1.0.0".into(),
            pod_name: "agentk-0".into(),
            pod_namespace: "gitlab-agent".into(),
            capabilities: vec!["k8s-api".into()],
            ..Default::default()
        },
    };
    let mut agent = Connection::agent(Config::default(), hello, now);
    let mut server = Connection::server(Config::default(), now);

    // 1. agent -> server: preface and HELLO.
    let m1 = drain(&mut agent);
    server.handle_input(&m1, now);
    let Some(Event::Hello(info)) = server.poll_event() else {
        panic!("server did not report the HELLO");
    };
    assert_eq!(info.token, "example-token");

    // 2. server -> agent: ACCEPT (agent id 42), then the server opens stream 2 with a REQUEST.
    server.accept(42, "conn-1".into(), now);
    let m2 = drain(&mut server);
    let id = server
        .open_stream(
            proto::RequestHead {
                service: "k8s-api".into(),
                method: "GET".into(),
                path: "/version".into(),
                headers: vec![proto::Header {
                    name: "accept".into(),
                    value: Bytes::from_static(b"application/json"),
                }],
                timeout_ms: 30_000,
                impersonation: None,
            },
            true,
        )
        .expect("the server is connected");
    let m3 = drain(&mut server);
    agent.handle_input(&m2, now);
    agent.handle_input(&m3, now);

    // 3. agent -> server: RESPONSE and the body in one DATA frame with END_STREAM.
    let mut opened = None;
    while let Some(ev) = agent.poll_event() {
        if let Event::StreamOpened { id, .. } = ev {
            opened = Some(id);
        }
    }
    let sid = opened.expect("the agent saw the REQUEST");
    assert_eq!(sid, id);
    agent
        .send_response(
            sid,
            proto::ResponseHead {
                status: 200,
                headers: vec![proto::Header {
                    name: "content-type".into(),
                    value: Bytes::from_static(b"application/json"),
                }],
            },
            false,
        )
        .expect("respond");
    let body = Bytes::from_static(br#"{"major":"1","minor":"33"}"#);
    let n = agent.send_data(sid, body.clone(), true).expect("send");
    assert_eq!(n, body.len());
    let m4 = drain(&mut agent);
    server.handle_input(&m4, now);
    let mut got = Vec::new();
    let mut finished = false;
    while let Some(ev) = server.poll_event() {
        match ev {
            Event::Data { data, .. } => got.extend_from_slice(&data),
            Event::Finished { .. } => finished = true,
            _ => {}
        }
    }
    assert!(
        finished && got == body,
        "the server did not receive the body"
    );

    print!("{}", annotate("1. agent -> server: preface, HELLO", &m1));
    println!();
    print!("{}", annotate("2. server -> agent: ACCEPT", &m2));
    println!();
    print!(
        "{}",
        annotate("3. server -> agent: REQUEST on stream 2", &m3)
    );
    println!();
    print!("{}", annotate("4. agent -> server: RESPONSE, DATA", &m4));
    println!();
    println!("Raw octets of each message, for test vectors:");
    for (name, m) in [("1", &m1), ("2", &m2), ("3", &m3), ("4", &m4)] {
        let all: String = m.iter().map(|x| format!("{x:02x}")).collect();
        println!("{name}:");
        for row in all.as_bytes().chunks(64) {
            println!("  {}", String::from_utf8_lossy(row));
        }
    }
}
