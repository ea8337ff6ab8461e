//! Length-delimited protobuf messages in a stream body (the views stream): each message is its
//! varint-encoded length followed by its encoding, as `prost`'s `encode_length_delimited` writes
//! them. [`Deframer`] reassembles messages from DATA chunks split anywhere.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// Largest message accepted (a snapshot of every view of a cluster stays far below).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A body that does not hold valid messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("length prefix is not a valid varint")]
    BadLength,
    #[error("message of {0} octets exceeds the limit of {MAX_MESSAGE}")]
    TooLarge(u64),
    #[error("message does not decode: {0}")]
    Decode(String),
}

/// Encodes one message with its length prefix.
pub fn encode<M: Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_length_delimited_to_vec())
}

/// Reassembles length-delimited messages.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: BytesMut,
}

impl Deframer {
    pub fn new() -> Deframer {
        Deframer::default()
    }

    /// Octets buffered (an incomplete message).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, FramingError> {
        let mut len: u64 = 0;
        let mut prefix = 0;
        loop {
            let Some(&b) = self.buf.get(prefix) else {
                return Ok(None);
            };
            if prefix >= 10 {
                return Err(FramingError::BadLength);
            }
            len |= u64::from(b & 0x7f) << (7 * prefix);
            prefix += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if len > MAX_MESSAGE as u64 {
            return Err(FramingError::TooLarge(len));
        }
        let total = prefix + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        self.buf.advance(prefix);
        let body = self.buf.split_to(len as usize);
        M::decode(body.freeze())
            .map(Some)
            .map_err(|e| FramingError::Decode(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::cache::proto;

    #[test]
    fn messages_survive_any_split() {
        let msgs: Vec<proto::ServerToAgent> = (0..5)
            .map(|i| proto::ServerToAgent {
                msg: Some(proto::server_to_agent::Msg::Ack(proto::Ack {
                    epoch: 9,
                    seq: i * 1000,
                })),
            })
            .collect();
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend_from_slice(&encode(m));
        }
        for chunk in 1..wire.len() {
            let mut d = Deframer::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some(m) = d.next_message::<proto::ServerToAgent>().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, msgs);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = Deframer::new();
        d.push(&[0xff; 11]);
        assert_eq!(d.next_message::<proto::Ack>(), Err(FramingError::BadLength));
        let mut d = Deframer::new();
        d.push(&[0x02, 0xff, 0xff]);
        assert!(matches!(
            d.next_message::<proto::Ack>(),
            Err(FramingError::Decode(_))
        ));
    }
}
