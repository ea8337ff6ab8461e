//! A frame's meaning as JSON ([`FrameMeaning`]), with names either from the specification's tables
//! ([`Spec`]: what the generator writes) or from the reference implementation ([`CodeNames`]: what the
//! checker compares with), so a name or value that differs between the two fails the check.

use protocol::tunnel::frame::{FLAG_ACK, FLAG_END_STREAM, Frame, FrameType};
use protocol::{ErrorCode, proto};
use serde_json::{Value, json};

use super::model::FrameMeaning;
use crate::spec::Spec;

/// Where frame, flag, error-code and reject-code names come from.
pub trait Names {
    /// The frame type's name, `None` if the type is not defined.
    fn type_name(&self, code: u8) -> Option<String>;
    /// Names of the defined flags set in `flags`.
    fn flag_names(&self, code: u8, flags: u8) -> Vec<String>;
    fn error_name(&self, value: u32) -> String;
    fn reject_name(&self, value: i32) -> String;
}

impl Names for Spec {
    fn type_name(&self, code: u8) -> Option<String> {
        self.frame_type_name(code).map(str::to_owned)
    }

    fn flag_names(&self, code: u8, flags: u8) -> Vec<String> {
        self.frame_types
            .iter()
            .find(|t| t.code == code)
            .map(|t| {
                t.flags
                    .iter()
                    .filter(|(_, bit)| flags & bit != 0)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn error_name(&self, value: u32) -> String {
        self.error_code_name(value).to_owned()
    }

    fn reject_name(&self, value: i32) -> String {
        self.reject_code_name(value).to_owned()
    }
}

/// Names as the `protocol` crate defines them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CodeNames;

/// The specification's name of a frame type the `protocol` crate knows.
pub fn frame_type_name(t: FrameType) -> &'static str {
    match t {
        FrameType::Data => "DATA",
        FrameType::Request => "REQUEST",
        FrameType::Response => "RESPONSE",
        FrameType::Trailer => "TRAILER",
        FrameType::Reset => "RESET",
        FrameType::WindowUpdate => "WINDOW_UPDATE",
        FrameType::Ping => "PING",
        FrameType::GoAway => "GOAWAY",
        FrameType::Hello => "HELLO",
        FrameType::Accept => "ACCEPT",
        FrameType::Reject => "REJECT",
    }
}

impl Names for CodeNames {
    fn type_name(&self, code: u8) -> Option<String> {
        FrameType::from_code(code).map(|t| frame_type_name(t).to_owned())
    }

    fn flag_names(&self, code: u8, flags: u8) -> Vec<String> {
        let Some(t) = FrameType::from_code(code) else {
            return Vec::new();
        };
        let allowed = t.allowed_flags() & flags;
        let mut out = Vec::new();
        if t == FrameType::Ping && allowed & FLAG_ACK != 0 {
            out.push("ACK".to_owned());
        } else if allowed & FLAG_END_STREAM != 0 {
            out.push("END_STREAM".to_owned());
        }
        out
    }

    fn error_name(&self, value: u32) -> String {
        ErrorCode::from_u32(value).name().to_owned()
    }

    fn reject_name(&self, value: i32) -> String {
        proto::RejectCode::try_from(value)
            .unwrap_or(proto::RejectCode::Unspecified)
            .as_str_name()
            .to_owned()
    }
}

/// The flags octet a decoded frame had.
pub fn flags_of(frame: &Frame) -> u8 {
    match frame {
        Frame::Data { end_stream, .. }
        | Frame::Request { end_stream, .. }
        | Frame::Response { end_stream, .. } => u8::from(*end_stream) * FLAG_END_STREAM,
        Frame::Ping { ack, .. } => u8::from(*ack) * FLAG_ACK,
        Frame::Unknown { flags, .. } => *flags,
        _ => 0,
    }
}

/// The meaning of a decoded frame, header fields taken from the frame itself.
pub fn describe(frame: &Frame, names: &dyn Names) -> FrameMeaning {
    let length = u32::try_from(frame.payload_len()).unwrap_or(u32::MAX);
    meaning(
        frame.kind(),
        flags_of(frame),
        frame.stream().0,
        length,
        frame,
        names,
    )
}

/// The meaning of a frame with the given header fields.
pub fn meaning(
    type_code: u8,
    flags: u8,
    stream: u32,
    length: u32,
    frame: &Frame,
    names: &dyn Names,
) -> FrameMeaning {
    FrameMeaning {
        type_name: names
            .type_name(type_code)
            .unwrap_or_else(|| "UNKNOWN".to_owned()),
        type_code,
        flags,
        flag_names: names.flag_names(type_code, flags),
        stream,
        length,
        payload: payload(frame, names),
    }
}

fn text_or_null(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => Value::String(s.to_owned()),
        _ => Value::Null,
    }
}

fn headers(hs: &[proto::Header]) -> Value {
    Value::Array(
        hs.iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "value_hex": hex::encode(&h.value),
                    "value_text": text_or_null(&h.value),
                })
            })
            .collect(),
    )
}

fn settings(s: Option<&proto::Settings>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "max_concurrent_streams": s.max_concurrent_streams,
            "initial_stream_window": s.initial_stream_window,
            "initial_connection_window": s.initial_connection_window,
            "max_frame_size": s.max_frame_size,
            "max_header_size": s.max_header_size,
            "idle_timeout_ms": s.idle_timeout_ms,
            "keepalive_interval_ms": s.keepalive_interval_ms,
        }),
    }
}

fn meta(m: Option<&proto::AgentMeta>) -> Value {
    match m {
        None => Value::Null,
        Some(m) => json!({
            "version": m.version,
            "commit": m.commit,
            "pod_name": m.pod_name,
            "pod_namespace": m.pod_namespace,
            "node_name": m.node_name,
            "capabilities": m.capabilities,
        }),
    }
}

/// The decoded payload of a frame.
pub fn payload(frame: &Frame, names: &dyn Names) -> Value {
    match frame {
        Frame::Data { data, .. } => json!({
            "data_hex": hex::encode(data),
            "data_text": text_or_null(data),
        }),
        Frame::Request { head, .. } => json!({
            "service": head.service,
            "method": head.method,
            "path": head.path,
            "headers": headers(&head.headers),
            "timeout_ms": head.timeout_ms,
        }),
        Frame::Response { head, .. } => json!({
            "status": head.status,
            "headers": headers(&head.headers),
        }),
        Frame::Trailer { trailer, .. } => json!({
            "code": trailer.code,
            "message": trailer.message,
            "headers": headers(&trailer.headers),
        }),
        Frame::Reset { reset, .. } => json!({
            "code": reset.code,
            "code_name": names.error_name(reset.code),
            "message": reset.message,
        }),
        Frame::WindowUpdate { increment, .. } => json!({ "increment": increment }),
        Frame::Ping { ack, payload } => json!({
            "ack": ack,
            "payload_hex": hex::encode(payload),
        }),
        Frame::GoAway(g) => json!({
            "last_stream_id": g.last_stream_id,
            "code": g.code,
            "code_name": names.error_name(g.code),
            "message": g.message,
        }),
        Frame::Hello(h) => json!({
            "min_version": h.min_version,
            "max_version": h.max_version,
            "token": h.token,
            "meta": meta(h.meta.as_ref()),
            "settings": settings(h.settings.as_ref()),
        }),
        Frame::Accept(a) => json!({
            "version": a.version,
            "agent_id": a.agent_id,
            "settings": settings(a.settings.as_ref()),
            "connection_id": a.connection_id,
            "replica_id": a.replica_id,
            "connections_wanted": a.connections_wanted,
        }),
        Frame::Reject(r) => json!({
            "code": r.code,
            "code_name": names.reject_name(r.code),
            "message": r.message,
            "retry_after_ms": r.retry_after_ms,
            "min_version": r.min_version,
            "max_version": r.max_version,
        }),
        Frame::Unknown { payload, .. } => json!({ "payload_hex": hex::encode(payload) }),
    }
}
