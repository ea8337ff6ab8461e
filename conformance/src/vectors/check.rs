//! Checks the vectors against the reference implementation: frame vectors through
//! [`protocol::tunnel::frame::Decoder`] (and back through the encoder), malformed input through a
//! [`protocol::Connection`] in the receiver's role, observing only what it sends and whether it closes.

use std::time::Instant;

use protocol::tunnel::frame::{Decoder, Frame, MAX_FRAME_SIZE_LIMIT, PREFACE};
use protocol::{
    AgentHello, CloseReason, Config, Connection, ConnectionError, Event, Settings, proto,
};

use super::describe::{CodeNames, describe};
use super::model::{FrameVector, MalformedVector, Outcome, Phase, Receiver, SettingsJson};

/// Decodes every frame of `octets` (the whole input must be consumed).
pub fn decode_all(octets: &[u8], split: bool) -> Result<Vec<Frame>, String> {
    let mut d = Decoder::new(MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT);
    let mut frames = Vec::new();
    let chunks: Vec<&[u8]> = if split {
        octets.chunks(1).collect()
    } else {
        vec![octets]
    };
    for chunk in chunks {
        d.feed(chunk);
        // Bounded: every decoded frame consumes at least its 9 header octets.
        loop {
            match d.decode() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return Err(format!("decoding failed: {e}")),
            }
        }
    }
    if d.buffered() != 0 {
        return Err(format!(
            "{} octets left over after the last frame",
            d.buffered()
        ));
    }
    Ok(frames)
}

/// Checks one frame vector: decoding gives the stated meaning, whole or split at every octet, and
/// re-encoding gives the octets back.
pub fn check_frame_vector(v: &FrameVector) -> Result<(), String> {
    let octets = hex::decode(&v.hex).map_err(|e| format!("bad hex: {e}"))?;
    let body = if v.preface {
        octets
            .strip_prefix(PREFACE.as_slice())
            .ok_or("the octets do not start with the implementation's preface")?
    } else {
        &octets[..]
    };
    for split in [false, true] {
        let frames = decode_all(body, split)?;
        let got: Vec<_> = frames.iter().map(|f| describe(f, &CodeNames)).collect();
        if got != v.frames {
            return Err(format!(
                "decoded meaning differs (split={split}):\n  got:  {}\n  want: {}",
                serde_json::to_string(&got).unwrap_or_default(),
                serde_json::to_string(&v.frames).unwrap_or_default()
            ));
        }
        let mut again = Vec::new();
        for f in &frames {
            again.extend_from_slice(&f.to_bytes());
        }
        if again != body {
            return Err(format!(
                "re-encoding differs: {} instead of {}",
                hex::encode(&again),
                hex::encode(body)
            ));
        }
    }
    Ok(())
}

fn settings(s: &SettingsJson) -> Result<Settings, String> {
    Settings::from_wire(Some(&proto::Settings {
        max_concurrent_streams: s.max_concurrent_streams,
        initial_stream_window: s.initial_stream_window,
        initial_connection_window: s.initial_connection_window,
        max_frame_size: s.max_frame_size,
        max_header_size: s.max_header_size,
        idle_timeout_ms: s.idle_timeout_ms,
        keepalive_interval_ms: s.keepalive_interval_ms,
    }))
    .map_err(|e| format!("receiver settings invalid: {e}"))
}

fn drain_output(conn: &mut Connection) -> Vec<u8> {
    let mut out = Vec::new();
    // Bounded: each call hands out what is queued; nothing is queued by draining.
    for _ in 0..10_000 {
        match conn.poll_transmit() {
            Some(b) => out.extend_from_slice(&b),
            None => break,
        }
    }
    out
}

fn drain_events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event())
        .take(100_000)
        .collect()
}

/// A connection as the vector's receiver, after `handshake_hex` and the local streams.
fn receiver(v: &MalformedVector, now: Instant) -> Result<Connection, String> {
    let config = Config {
        settings: settings(&v.receiver_settings)?,
        ..Config::default()
    };
    let mut conn = match v.receiver {
        Receiver::Server => Connection::server(config, now),
        Receiver::Agent => Connection::agent(
            config,
            AgentHello {
                token: "vector-receiver".into(),
                meta: proto::AgentMeta::default(),
            },
            now,
        ),
    };
    drain_output(&mut conn);
    if v.phase == Phase::Established {
        let hs = hex::decode(&v.handshake_hex).map_err(|e| format!("bad handshake hex: {e}"))?;
        conn.handle_input(&hs, now);
        for e in drain_events(&mut conn) {
            if let Event::Hello(_) = e {
                conn.accept(1, "vector".into(), now);
            }
        }
        drain_events(&mut conn);
        if conn.established().is_none() {
            return Err(format!(
                "the handshake did not complete: {:?}",
                conn.close_reason()
            ));
        }
        for _ in 0..v.local_streams {
            let head = proto::RequestHead {
                service: "vector".into(),
                method: "GET".into(),
                path: "/".into(),
                ..Default::default()
            };
            conn.open_stream(head, true)
                .map_err(|e| format!("cannot open a local stream: {e}"))?;
        }
        drain_output(&mut conn);
        drain_events(&mut conn);
    }
    Ok(conn)
}

/// The reference implementation's name for a typed frame error (`FrameError::StreamZero {..}` →
/// `StreamZero`).
fn variant(e: &impl std::fmt::Debug) -> String {
    let s = format!("{e:?}");
    s.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Whether the connection still answers a PING.
fn still_alive(conn: &mut Connection, now: Instant) -> Result<(), String> {
    let ping = Frame::Ping {
        ack: false,
        payload: *b"liveness",
    };
    conn.handle_input(&ping.to_bytes(), now);
    drain_events(conn);
    let out = decode_all(&drain_output(conn), false)?;
    if out.contains(&Frame::Ping {
        ack: true,
        payload: *b"liveness",
    }) {
        Ok(())
    } else {
        Err(format!(
            "the connection does not answer a PING any more: {out:?}"
        ))
    }
}

fn run(v: &MalformedVector, split: bool) -> Result<(), String> {
    let now = Instant::now();
    let mut conn = receiver(v, now)?;
    let input = hex::decode(&v.input_hex).map_err(|e| format!("bad input hex: {e}"))?;
    if split {
        for b in &input {
            conn.handle_input(std::slice::from_ref(b), now);
        }
    } else {
        conn.handle_input(&input, now);
    }
    for e in drain_events(&mut conn) {
        if let Event::Hello(_) = e
            && !conn.is_closed()
        {
            conn.accept(1, "vector".into(), now);
        }
    }
    drain_events(&mut conn);
    let out = decode_all(&drain_output(&mut conn), false)
        .map_err(|e| format!("the receiver's output: {e}"))?;
    let closed = conn.is_closed();
    let x = &v.expect;
    let goaway_codes: Vec<u32> = out
        .iter()
        .filter_map(|f| match f {
            Frame::GoAway(g) => Some(g.code),
            _ => None,
        })
        .collect();
    match x.outcome {
        Outcome::ConnectionError => {
            let want = x.code.ok_or("connection error without a code")?;
            if !closed {
                return Err(format!("still open; sent {out:?}"));
            }
            match out.last() {
                Some(Frame::GoAway(g)) if g.code == want => {}
                other => {
                    return Err(format!(
                        "last frame sent is {other:?}, not GOAWAY code {want}"
                    ));
                }
            }
            match conn.close_reason() {
                Some(CloseReason::Local(e)) => {
                    if e.code().to_u32() != want {
                        return Err(format!("closed with {e} ({})", e.code()));
                    }
                    if let Some(name) = &x.codec_error {
                        match e {
                            ConnectionError::Frame(fe) if variant(fe) == *name => {}
                            other => {
                                return Err(format!(
                                    "typed error {other:?}, not FrameError::{name}"
                                ));
                            }
                        }
                    }
                }
                other => return Err(format!("close reason {other:?}")),
            }
        }
        Outcome::StreamError => {
            let (want, stream) = (x.code.ok_or("no code")?, x.stream.ok_or("no stream")?);
            if closed {
                return Err(format!("closed: {:?}", conn.close_reason()));
            }
            if goaway_codes.iter().any(|c| *c != 0) {
                return Err(format!("sent a GOAWAY with an error: {out:?}"));
            }
            let reset = out.iter().any(|f| {
                matches!(f, Frame::Reset { stream: s, reset } if s.0 == stream && reset.code == want)
            });
            if !reset {
                return Err(format!(
                    "no RESET of stream {stream} with code {want}: {out:?}"
                ));
            }
            still_alive(&mut conn, now)?;
        }
        Outcome::Reject => {
            let want = x.reject_value.ok_or("no reject code")?;
            if !closed {
                return Err("still open after the HELLO".into());
            }
            match out.last() {
                Some(Frame::Reject(r)) if r.code == want => {}
                other => return Err(format!("last frame sent is {other:?}, not REJECT {want}")),
            }
        }
        Outcome::Ignored => {
            if closed {
                return Err(format!("closed: {:?}", conn.close_reason()));
            }
            if let Some(f) = out
                .iter()
                .find(|f| matches!(f, Frame::GoAway(_) | Frame::Reset { .. } | Frame::Reject(_)))
            {
                return Err(format!("sent {f:?}"));
            }
            still_alive(&mut conn, now)?;
        }
        Outcome::ClosedSilently => {
            if !closed {
                return Err("still open".into());
            }
            if !out.is_empty() {
                return Err(format!("sent {out:?}"));
            }
        }
        Outcome::Reply => {
            let want = hex::decode(x.reply_hex.as_deref().ok_or("no reply")?)
                .map_err(|e| format!("bad reply hex: {e}"))?;
            let want = decode_all(&want, false)?;
            if out != want {
                return Err(format!("sent {out:?} instead of {want:?}"));
            }
            if closed {
                return Err("closed".into());
            }
        }
    }
    Ok(())
}

/// For vectors naming a codec error: the bare decoder, with the receiver's limits, reports it.
fn check_codec(v: &MalformedVector) -> Result<(), String> {
    let Some(name) = &v.expect.codec_error else {
        return Ok(());
    };
    let s = settings(&v.receiver_settings)?;
    let input = hex::decode(&v.input_hex).map_err(|e| format!("bad input hex: {e}"))?;
    let input = match (v.receiver, v.phase) {
        (Receiver::Server, Phase::Handshake) => input
            .strip_prefix(PREFACE.as_slice())
            .ok_or("handshake input without the preface")?
            .to_vec(),
        _ => input,
    };
    let mut d = Decoder::new(s.max_frame_size, s.max_header_size);
    d.feed(&input);
    for _ in 0..1000 {
        match d.decode() {
            Ok(Some(_)) => continue,
            Ok(None) => return Err(format!("the decoder reported no error (wanted {name})")),
            Err(e) => {
                if variant(&e) != *name {
                    return Err(format!("decoder error {e:?}, wanted {name}"));
                }
                if Some(e.code().to_u32()) != v.expect.code {
                    return Err(format!(
                        "decoder error code {}, wanted {:?}",
                        e.code(),
                        v.expect.code
                    ));
                }
                return Ok(());
            }
        }
    }
    Err("the decoder produced too many frames".into())
}

/// Checks one malformed vector, fed whole and one octet at a time.
pub fn check_malformed_vector(v: &MalformedVector) -> Result<(), String> {
    check_codec(v)?;
    for split in [false, true] {
        run(v, split).map_err(|e| format!("(input split={split}) {e}"))?;
    }
    Ok(())
}
