//! Request and response bodies: patterned octets with a declared length and digest, verified end to
//! end.
//!
//! Every body of a `k8s-api`/`service-proxy` request is a slice of one pseudo-random pattern at an
//! offset derived from the request id and the direction, so two requests' bodies differ and a body
//! delivered on the wrong stream, truncated, duplicated or altered is noticed. The sender declares the
//! length and the digest of what it sends in headers ([`LEN_HEADER`], [`DIGEST_HEADER`]); the
//! receiver digests what arrives and, when the stream ends, compares it with the declaration and — for
//! patterned bodies — with what the pattern says this request's body must be. Slicing keeps bodies
//! zero-copy; digesting costs one pass over the octets on each side.

use bytes::Bytes;
use protocol::proto;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Header with the body's length in octets.
pub const LEN_HEADER: &str = "x-sim-body-len";
/// Header with the body's FNV-1a 64 digest (hex).
pub const DIGEST_HEADER: &str = "x-sim-body-digest";

/// Offsets into the pattern are taken modulo this (so the pattern is `max body + PERIOD` long).
const PERIOD: usize = 64 * 1024;

/// Which way a body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// The pattern bodies are cut from.
#[derive(Debug, Clone)]
pub struct Patterns {
    buf: Bytes,
}

impl Patterns {
    /// A pattern long enough for bodies of `max_body` octets (fixed seed: independent of the world's
    /// random choices).
    pub fn new(max_body: usize) -> Patterns {
        let mut buf = vec![0u8; max_body + PERIOD];
        ChaCha8Rng::seed_from_u64(0x5eed_b0d1).fill_bytes(&mut buf);
        Patterns { buf: buf.into() }
    }

    /// The body of `request` in `dir`, `len` octets (at most the `max_body` given to [`Patterns::new`]).
    pub fn body(&self, request: u64, dir: Direction, len: usize) -> Bytes {
        let salt = match dir {
            Direction::Request => 0x9e37_79b9_7f4a_7c15u64,
            Direction::Response => 0xc2b2_ae3d_27d4_eb4fu64,
        };
        let offset = (mix(request ^ salt) % PERIOD as u64) as usize;
        let len = len.min(self.buf.len() - offset);
        self.buf.slice(offset..offset + len)
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Length and running digest of octets seen so far: a 64-bit multiply-xor hash over little-endian
/// 8-octet words (the last, partial word zero-padded), the same however the octets are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub hash: u64,
    /// Octets of the current, incomplete word.
    tail: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
            tail: 0,
        }
    }
}

const K: u64 = 0x9fb2_1c65_1e98_df25;

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let mut d = Digest::default();
        d.update(data);
        d
    }

    pub fn update(&mut self, mut data: &[u8]) {
        // Complete the pending word first.
        while !self.len.is_multiple_of(8) {
            let Some((b, rest)) = data.split_first() else {
                return;
            };
            self.tail |= u64::from(*b) << (8 * (self.len % 8));
            self.len += 1;
            data = rest;
            if self.len.is_multiple_of(8) {
                self.mix_word(self.tail);
                self.tail = 0;
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.mix_word(u64::from_le_bytes(b));
        }
        self.len += (data.len() - words.remainder().len()) as u64;
        for b in words.remainder() {
            self.tail |= u64::from(*b) << (8 * (self.len % 8));
            self.len += 1;
        }
    }

    fn mix_word(&mut self, w: u64) {
        self.hash = (self.hash ^ w).wrapping_mul(K).rotate_left(29);
    }

    /// The final value (length and partial word folded in).
    pub fn value(&self) -> u64 {
        let mut d = *self;
        d.mix_word(self.tail ^ self.len.rotate_left(32));
        d.hash
    }

    /// The two headers declaring this digest.
    pub fn headers(&self) -> [proto::Header; 2] {
        [
            proto::Header {
                name: LEN_HEADER.to_owned(),
                value: self.len.to_string().into_bytes().into(),
            },
            proto::Header {
                name: DIGEST_HEADER.to_owned(),
                value: format!("{:016x}", self.value()).into_bytes().into(),
            },
        ]
    }

    /// The (length, digest value) declared in `headers`, if both headers are there and parse.
    pub fn declared(headers: &[proto::Header]) -> Option<(u64, u64)> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.name == name)
                .and_then(|h| std::str::from_utf8(&h.value).ok())
        };
        Some((
            get(LEN_HEADER)?.parse().ok()?,
            u64::from_str_radix(get(DIGEST_HEADER)?, 16).ok()?,
        ))
    }

    /// (length, digest value).
    pub fn summary(&self) -> (u64, u64) {
        (self.len, self.value())
    }
}

/// A body being received: what was declared, what is expected, what arrived.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyCheck {
    /// What the sender declared (headers): (length, digest).
    pub declared: Option<(u64, u64)>,
    /// What the pattern says this body must be (patterned bodies only): (length, digest).
    pub expected: Option<(u64, u64)>,
    pub received: Digest,
}

impl BodyCheck {
    /// The problem with the complete body, if any.
    pub fn verify(&self) -> Option<String> {
        let r = self.received.summary();
        match self.declared {
            None => return Some(format!("no length/digest declared; {} octets arrived", r.0)),
            Some(d) if d != r => {
                return Some(format!(
                    "{} octets with digest {:016x} arrived, {} octets with digest {:016x} were \
                     declared",
                    r.0, r.1, d.0, d.1
                ));
            }
            Some(_) => {}
        }
        match self.expected {
            Some(e) if e != r => Some(format!(
                "the body is not this request's: {} octets with digest {:016x}, the pattern says \
                 {} octets with digest {:016x}",
                r.0, r.1, e.0, e.1
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_differ_per_request_and_direction_and_digests_round_trip() {
        let p = Patterns::new(10_000);
        let a = p.body(1, Direction::Request, 5000);
        let b = p.body(2, Direction::Request, 5000);
        let c = p.body(1, Direction::Response, 5000);
        assert_eq!((a.len(), b.len(), c.len()), (5000, 5000, 5000));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, p.body(1, Direction::Request, 5000));
        let d = Digest::of(&a);
        assert_eq!(Digest::declared(&d.headers()), Some(d.summary()));
        for cut in [0, 1, 7, 8, 9, 1234, 4999, 5000] {
            let mut split = Digest::default();
            split.update(&a[..cut]);
            split.update(&a[cut..]);
            assert_eq!(split.summary(), d.summary(), "split at {cut}");
        }
        // Trailing zeros change the digest (the length is folded in).
        assert_ne!(Digest::of(&[1, 0]).summary(), Digest::of(&[1]).summary());
        let check = |received: &[u8]| BodyCheck {
            declared: Some(d.summary()),
            expected: Some(d.summary()),
            received: Digest::of(received),
        };
        assert_eq!(check(&a).verify(), None);
        assert!(check(&a[..4999]).verify().is_some());
        let mut flipped = a.to_vec();
        flipped[77] ^= 1;
        assert!(check(&flipped).verify().is_some());
        let wrong = BodyCheck {
            declared: Some(Digest::of(&b).summary()),
            expected: Some(d.summary()),
            received: Digest::of(&b),
        };
        assert!(wrong.verify().unwrap().contains("not this request's"));
    }
}
