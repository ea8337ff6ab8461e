//! Length-delimited protobuf framing of the `views` stream (tunnel-services.md): every message is
//! prefixed by its length as a protobuf varint (prost's `encode_length_delimited`).
//! [`FrameDecoder`] reassembles messages from the stream's chunks however they are split, and refuses
//! a message over [`MAX_MESSAGE`] as soon as its length prefix is read, before buffering it.
//!
//! agentk has the same decoder for the other direction (`agentk::frame`); both follow the same
//! convention and are tested against prost's encoder.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// The largest message either side may send (16 MiB); a larger one is a protocol violation.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The longest varint encoding of a `u64`.
const MAX_VARINT: usize = 10;

/// A byte sequence that is not a valid sequence of length-delimited messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length prefix announces more than the limit.
    #[error("message of {len} octets exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A length prefix is not a valid varint (longer than 10 octets).
    #[error("invalid length prefix")]
    BadLength,
    /// The stream ended inside a message.
    #[error("the stream ended inside a message ({buffered} octets buffered)")]
    Truncated {
        /// Octets received of the unfinished message.
        buffered: usize,
    },
}

/// `message` with its length prefix.
pub fn encode(message: &impl Message) -> Bytes {
    Bytes::from(message.encode_length_delimited_to_vec())
}

/// Reassembles length-delimited messages from chunks.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(MAX_MESSAGE)
    }
}

impl FrameDecoder {
    /// A decoder refusing messages over `max` octets.
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends received octets.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, `Ok(None)` if more octets are needed. After an error the stream
    /// must be abandoned.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some((len, prefix)) = self.length()? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        // `len <= max`, which is a usize.
        let len = len as usize;
        if self.buf.len() < prefix + len {
            return Ok(None);
        }
        self.buf.advance(prefix);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Checks that the stream did not end inside a message.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }

    /// The length prefix at the front of the buffer and its size, if complete.
    fn length(&self) -> Result<Option<(u64, usize)>, FrameError> {
        let mut value: u64 = 0;
        for (i, b) in self.buf.iter().take(MAX_VARINT).enumerate() {
            if i == MAX_VARINT - 1 && *b > 1 {
                return Err(FrameError::BadLength);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(Some((value, i + 1)));
            }
        }
        if self.buf.len() >= MAX_VARINT {
            return Err(FrameError::BadLength);
        }
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::cache::proto;

    fn update(seq: u64) -> proto::AgentToServer {
        proto::AgentToServer {
            msg: Some(proto::agent_to_server::Msg::Update(proto::ViewUpdate {
                epoch: 9,
                base_seq: seq.saturating_sub(1),
                seq,
                views: vec![],
            })),
        }
    }

    #[test]
    fn decodes_what_prost_encoded() {
        let mut d = FrameDecoder::default();
        let mut wire = Vec::new();
        for seq in [0, 1, 300, u64::MAX] {
            wire.extend_from_slice(&encode(&update(seq)));
        }
        d.push(&wire);
        for seq in [0, 1, 300, u64::MAX] {
            let m = d.next_message().unwrap().unwrap();
            assert_eq!(proto::AgentToServer::decode(m).unwrap(), update(seq));
        }
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn refuses_oversized_messages_before_buffering() {
        let mut d = FrameDecoder::default();
        let mut prefix = Vec::new();
        prost::encoding::encode_varint((MAX_MESSAGE + 1) as u64, &mut prefix);
        d.push(&prefix);
        assert!(matches!(d.next_message(), Err(FrameError::TooLarge { .. })));
        let mut d = FrameDecoder::default();
        d.push(&[0xff; 11]);
        assert_eq!(d.next_message(), Err(FrameError::BadLength));
    }

    #[test]
    fn truncation_is_reported() {
        let mut d = FrameDecoder::default();
        let wire = encode(&update(5));
        d.push(&wire[..wire.len() - 1]);
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(FrameError::Truncated {
                buffered: wire.len() - 1
            })
        );
    }

    proptest! {
        #[test]
        fn any_split_decodes_to_the_messages(
            seqs in prop::collection::vec(any::<u64>(), 0..20),
            cuts in prop::collection::vec(0usize..600, 0..20),
        ) {
            let mut wire = Vec::new();
            for s in &seqs {
                wire.extend_from_slice(&encode(&update(*s)));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for w in cuts.windows(2) {
                d.push(&wire[w[0]..w[1]]);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(proto::AgentToServer::decode(m).unwrap());
                }
            }
            prop_assert_eq!(got, seqs.iter().map(|s| update(*s)).collect::<Vec<_>>());
            prop_assert_eq!(d.finish(), Ok(()));
        }

        #[test]
        fn arbitrary_octets_never_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut d = FrameDecoder::new(32);
            d.push(&data);
            for _ in 0..64 {
                match d.next_message() {
                    Ok(Some(m)) => prop_assert!(m.len() <= 32),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
