//! Messages of the `views` stream (SERVICES.md §6): every message is a protobuf encoding prefixed by
//! its length as a protobuf varint (prost's `encode_length_delimited`). [`MessageDecoder`]
//! reassembles messages from the stream's chunks, however the chunks split them, and refuses a
//! message over [`MAX_MESSAGE`] before buffering it. "Frame" means only a tunnel frame; the units of
//! a views-stream body are *messages*. Both views endpoints ([`super::endpoint`]) use this one
//! implementation.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// The largest message either side may send (16 MiB); a larger one is a protocol violation.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The longest varint encoding of a `u64`.
const MAX_VARINT: usize = 10;

/// A byte sequence that is not a valid sequence of length-delimited messages (the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A length prefix announces more than [`MAX_MESSAGE`] octets.
    #[error("message of {len} octets exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A length prefix is not a valid varint (longer than 10 octets).
    #[error("invalid length prefix: not a varint of at most 10 octets")]
    BadLength,
    /// The stream ended inside a message.
    #[error("the stream ended inside a message ({buffered} octets buffered)")]
    Truncated {
        /// Octets of the incomplete message.
        buffered: usize,
    },
}

/// `message` with its length prefix.
pub fn encode_message(message: &impl Message) -> Bytes {
    Bytes::from(message.encode_length_delimited_to_vec())
}

/// Reassembles length-delimited messages from chunks.
#[derive(Debug)]
pub struct MessageDecoder {
    buf: BytesMut,
    max: usize,
}

impl Default for MessageDecoder {
    fn default() -> Self {
        MessageDecoder::new(MAX_MESSAGE)
    }
}

impl MessageDecoder {
    /// A decoder refusing messages over `max` octets.
    pub fn new(max: usize) -> MessageDecoder {
        MessageDecoder {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends received octets.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, `Ok(None)` if more octets are needed. Once this fails the
    /// decoder's state is unspecified: the stream must be abandoned.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, MessageError> {
        let Some((len, prefix)) = self.length()? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(MessageError::TooLarge { len, max: self.max });
        }
        // `len <= max`, which is a usize.
        let len = len as usize;
        if self.buf.len() < prefix + len {
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Feeds `chunk` and hands every message it completes to `each`, in order, stopping at the
    /// first error. The same as [`MessageDecoder::push`] then [`MessageDecoder::next_message`]
    /// until `None`, but while nothing is buffered the chunk's whole messages are handed out
    /// straight from it, without copying them into the buffer (the usual case: a chunk carries
    /// whole messages).
    pub fn push_each<E: From<MessageError>>(
        &mut self,
        chunk: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = chunk;
        if self.buf.is_empty() {
            while let Some((len, prefix)) = length_prefix(rest)? {
                let Ok(len) = usize::try_from(len) else {
                    break;
                };
                if len > self.max || rest.len() - prefix < len {
                    break;
                }
                let (message, after) = rest[prefix..].split_at(len);
                rest = after;
                each(message)?;
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        self.push(rest);
        while let Some(message) = self.next_message()? {
            each(&message)?;
        }
        Ok(())
    }

    /// Octets buffered (part of a message).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Checks that the stream did not end inside a message.
    pub fn finish(&self) -> Result<(), MessageError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MessageError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }

    /// The length prefix at the front of the buffer and its size, if complete.
    fn length(&self) -> Result<Option<(u64, usize)>, MessageError> {
        length_prefix(&self.buf)
    }
}

/// The length prefix at the front of `buf` and its size, if complete.
fn length_prefix(buf: &[u8]) -> Result<Option<(u64, usize)>, MessageError> {
    let mut value: u64 = 0;
    for (i, b) in buf.iter().take(MAX_VARINT).enumerate() {
        let bits = u64::from(b & 0x7f);
        if i == MAX_VARINT - 1 && *b > 1 {
            return Err(MessageError::BadLength);
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT {
        return Err(MessageError::BadLength);
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::proto;
    use proptest::prelude::*;

    fn ack(seq: u64) -> proto::ServerToAgent {
        proto::ServerToAgent {
            msg: Some(proto::server_to_agent::Msg::Ack(proto::Ack {
                epoch: 7,
                seq,
            })),
        }
    }

    #[test]
    fn decodes_what_encode_produced() {
        let mut d = MessageDecoder::default();
        let mut wire = Vec::new();
        for seq in [0, 1, 300, u64::MAX] {
            wire.extend_from_slice(&encode_message(&ack(seq)));
        }
        d.push(&wire);
        for seq in [0, 1, 300, u64::MAX] {
            let m = d.next_message().expect("valid").expect("complete");
            assert_eq!(proto::ServerToAgent::decode(m).expect("decode"), ack(seq));
        }
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn empty_messages_are_messages() {
        let mut d = MessageDecoder::default();
        d.push(&[0, 0]);
        assert_eq!(d.next_message(), Ok(Some(Bytes::new())));
        assert_eq!(d.next_message(), Ok(Some(Bytes::new())));
        assert_eq!(d.next_message(), Ok(None));
    }

    #[test]
    fn refuses_oversized_messages_before_buffering_them() {
        let mut d = MessageDecoder::new(100);
        d.push(&[101]);
        assert_eq!(
            d.next_message(),
            Err(MessageError::TooLarge { len: 101, max: 100 })
        );
        let mut d = MessageDecoder::default();
        // 16 MiB + 1 as a varint.
        let mut prefix = Vec::new();
        prost::encoding::encode_varint((MAX_MESSAGE + 1) as u64, &mut prefix);
        d.push(&prefix);
        assert!(matches!(
            d.next_message(),
            Err(MessageError::TooLarge { .. })
        ));
    }

    #[test]
    fn refuses_overlong_varints() {
        let mut d = MessageDecoder::default();
        d.push(&[0xff; 11]);
        assert_eq!(d.next_message(), Err(MessageError::BadLength));
        let mut d = MessageDecoder::default();
        d.push(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(d.next_message(), Err(MessageError::BadLength));
    }

    #[test]
    fn a_stream_ending_inside_a_message_is_truncated() {
        let mut d = MessageDecoder::default();
        let wire = encode_message(&ack(5));
        d.push(&wire[..wire.len() - 1]);
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(
            d.finish(),
            Err(MessageError::Truncated {
                buffered: wire.len() - 1
            })
        );
    }

    proptest! {
        #[test]
        fn any_split_of_any_messages_decodes_to_the_messages(
            seqs in prop::collection::vec(any::<u64>(), 0..20),
            cuts in prop::collection::vec(0usize..400, 0..20),
        ) {
            let mut wire = Vec::new();
            for s in &seqs {
                wire.extend_from_slice(&encode_message(&ack(*s)));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut d = MessageDecoder::default();
            let mut got = Vec::new();
            for w in cuts.windows(2) {
                d.push(&wire[w[0]..w[1]]);
                while let Some(m) = d.next_message().expect("valid") {
                    got.push(proto::ServerToAgent::decode(m).expect("decode"));
                }
            }
            prop_assert_eq!(got, seqs.iter().map(|s| ack(*s)).collect::<Vec<_>>());
            prop_assert_eq!(d.finish(), Ok(()));
        }

        #[test]
        fn push_each_hands_out_what_push_and_next_message_do(
            seqs in prop::collection::vec(any::<u64>(), 0..20),
            cuts in prop::collection::vec(0usize..400, 0..20),
            max in prop::sample::select(vec![4usize, 12, MAX_MESSAGE]),
            garbage in prop::option::of(prop::collection::vec(any::<u8>(), 1..16)),
        ) {
            let mut wire = Vec::new();
            for s in &seqs {
                wire.extend_from_slice(&encode_message(&ack(*s)));
            }
            wire.extend(garbage.into_iter().flatten());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            // The reference: push, then next_message until None or the first error.
            let mut reference = MessageDecoder::new(max);
            let mut expected = Vec::new();
            let mut expected_error = None;
            'chunks: for w in cuts.windows(2) {
                reference.push(&wire[w[0]..w[1]]);
                loop {
                    match reference.next_message() {
                        Ok(Some(m)) => expected.push(m.to_vec()),
                        Ok(None) => break,
                        Err(e) => {
                            expected_error = Some(e);
                            break 'chunks;
                        }
                    }
                }
            }
            let mut d = MessageDecoder::new(max);
            let mut got = Vec::new();
            let mut got_error = None;
            for w in cuts.windows(2) {
                let r = d.push_each(&wire[w[0]..w[1]], |m| {
                    got.push(m.to_vec());
                    Ok::<(), MessageError>(())
                });
                if let Err(e) = r {
                    got_error = Some(e);
                    break;
                }
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(&got_error, &expected_error);
            if got_error.is_none() {
                prop_assert_eq!(d.finish(), reference.finish());
            }
        }

        #[test]
        fn arbitrary_octets_never_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut d = MessageDecoder::new(32);
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
