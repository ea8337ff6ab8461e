//! Token digests: how kas holds secrets without holding them.
//!
//! kas never keeps a clear-text token it did not just receive. Files list the SHA-256 digest of each token
//! ([`TokenDigest`]), caches are keyed by digests, and digests are compared with [`ct_eq`], whose running
//! time does not depend on where two byte strings differ.

use std::fmt;

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Number of random bytes in a token made by [`generate_token`].
pub const TOKEN_BYTES: usize = 32;

/// Longest token kas accepts; longer ones are rejected before hashing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The SHA-256 digest of a token.
///
/// `Debug` and `Display` show only a short prefix, enough to tell digests apart in a test failure.
/// Equality through `==` (needed for hash maps keyed by digest) is not constant-time; that is harmless
/// because the digest of an unknown token reveals nothing usable about the token, but comparisons against
/// stored credentials use [`TokenDigest::ct_eq`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Digest of a clear-text token.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Digest of raw credential bytes (an `Authorization` header value as received).
    pub fn of_bytes(credential: &[u8]) -> Self {
        Self(Sha256::digest(credential).into())
    }

    /// Parses a digest written as 64 hexadecimal digits (either case).
    pub fn from_hex(hex_digits: &str) -> Result<Self, DigestParseError> {
        let hex_digits = hex_digits.trim();
        if hex_digits.len() != 64 {
            return Err(DigestParseError::Length(hex_digits.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out).map_err(|_| DigestParseError::NotHex)?;
        Ok(Self(out))
    }

    /// The digest as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &TokenDigest) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({self})")
    }
}

impl fmt::Display for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}…", hex::encode(&self.0[..4]))
    }
}

/// Why a hexadecimal digest could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    /// Not 64 characters long.
    #[error("expected 64 hex digits, found {0} characters")]
    Length(usize),
    /// Contains something other than hex digits.
    #[error("not a hexadecimal string")]
    NotHex,
}

/// Compares two byte strings in time that depends only on their lengths.
///
/// Lengths are not secret (every digest is 32 bytes), so unequal lengths return `false` at once.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    #[cfg(test)]
    tests::count_compare();
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// A new random token: [`TOKEN_BYTES`] bytes from the thread-local CSPRNG, base64url without padding
/// (43 characters, safe in file names, headers and `kind:id:token` bearer values).
pub fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static COMPARES: Cell<usize> = const { Cell::new(0) };
    }

    pub(crate) fn count_compare() {
        COMPARES.with(|c| c.set(c.get() + 1));
    }

    /// Number of [`ct_eq`] calls made by this thread so far (tests only).
    pub(crate) fn ct_compares() -> usize {
        COMPARES.with(Cell::get)
    }

    #[test]
    fn digest_matches_known_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let d = TokenDigest::of("abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenDigest::from_hex(&d.to_hex()), Ok(d));
        assert_eq!(TokenDigest::from_hex(&d.to_hex().to_uppercase()), Ok(d));
    }

    #[test]
    fn bad_hex_is_rejected() {
        assert_eq!(
            TokenDigest::from_hex("abcd"),
            Err(DigestParseError::Length(4))
        );
        let not_hex = "z".repeat(64);
        assert_eq!(
            TokenDigest::from_hex(&not_hex),
            Err(DigestParseError::NotHex)
        );
    }

    #[test]
    fn display_does_not_show_whole_digest() {
        let d = TokenDigest::of("secret");
        let shown = format!("{d:?} {d}");
        assert!(!shown.contains(&d.to_hex()), "{shown}");
    }

    #[test]
    fn ct_eq_is_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"xbc"));
        assert!(!ct_eq(b"abc", b"abcd"));
        let a = TokenDigest::of("a");
        let b = TokenDigest::of("b");
        assert!(a.ct_eq(&a));
        assert!(!a.ct_eq(&b));
    }

    #[test]
    fn generated_tokens_are_distinct_and_url_safe() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
    }

    proptest::proptest! {
        #[test]
        fn ct_eq_agrees_with_eq(a in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                                b in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            proptest::prop_assert_eq!(ct_eq(&a, &b), a == b);
            proptest::prop_assert!(ct_eq(&a, &a));
        }
    }
}
