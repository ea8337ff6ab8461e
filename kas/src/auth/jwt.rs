//! HS256 JSON Web Tokens (RFC 7519 / RFC 7515), just enough for kas's requests to GitLab.
//!
//! GitLab authenticates kas's internal API requests with the `Gitlab-Kas-Api-Request` header: a JWT
//! signed with HMAC-SHA256 under the shared secret (`.gitlab_kas_secret`, base64 of 32 bytes), with
//! issuer `gitlab-kas`, audience `gitlab` and a short validity. Only HS256 is supported; verification
//! rejects every other `alg` (including `none`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Name of the HTTP header carrying the JWT.
pub const REQUEST_HEADER: &str = "Gitlab-Kas-Api-Request";
/// `iss` of kas's requests.
pub const ISSUER: &str = "gitlab-kas";
/// `aud` of kas's requests.
pub const AUDIENCE: &str = "gitlab";
/// How long a request JWT is valid after issue.
pub const VALID_FOR: Duration = Duration::from_secs(60);
/// How far before issue a request JWT is valid (tolerates clock skew).
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(5);

const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Problems signing or verifying a JWT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The HMAC key was rejected.
    #[error("invalid HMAC key")]
    InvalidKey,
    /// Not three base64url parts separated by dots.
    #[error("malformed JWT")]
    Malformed,
    /// The header or claims are not the expected JSON.
    #[error("invalid JWT JSON: {0}")]
    Json(String),
    /// `alg` is not HS256.
    #[error("unsupported JWT algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The signature does not match.
    #[error("bad JWT signature")]
    BadSignature,
    /// A claim has the wrong value.
    #[error("JWT claim {0} is wrong")]
    Claim(&'static str),
    /// `exp` has passed.
    #[error("JWT expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("JWT not yet valid")]
    NotYetValid,
    /// The clock is before 1970.
    #[error("system clock before the Unix epoch")]
    Clock,
}

/// The registered claims kas sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Expires (Unix seconds).
    pub exp: u64,
}

impl Claims {
    /// Claims for a kas → GitLab request made at `now`.
    pub fn kas_request(now: SystemTime) -> Result<Claims, JwtError> {
        let secs = unix_secs(now)?;
        Ok(Claims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: secs,
            nbf: secs.saturating_sub(NOT_BEFORE_SKEW.as_secs()),
            exp: secs.saturating_add(VALID_FOR.as_secs()),
        })
    }
}

fn unix_secs(t: SystemTime) -> Result<u64, JwtError> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| JwtError::Clock)
}

fn mac(key: &[u8]) -> Result<Hmac<Sha256>, JwtError> {
    <Hmac<Sha256> as hmac::Mac>::new_from_slice(key).map_err(|_| JwtError::InvalidKey)
}

/// Signs raw header and payload JSON bytes: `b64(header).b64(payload).b64(HMAC-SHA256)`.
pub fn sign_raw(header_json: &[u8], payload_json: &[u8], key: &[u8]) -> Result<String, JwtError> {
    let mut token = URL_SAFE_NO_PAD.encode(header_json);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload_json));
    let mut m = mac(key)?;
    m.update(token.as_bytes());
    let sig = m.finalize().into_bytes();
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(token)
}

/// Signs `claims` with HS256 under `key`.
pub fn sign(claims: &impl Serialize, key: &[u8]) -> Result<String, JwtError> {
    let payload = serde_json::to_vec(claims).map_err(|e| JwtError::Json(e.to_string()))?;
    sign_raw(HEADER_JSON.as_bytes(), &payload, key)
}

/// The `Gitlab-Kas-Api-Request` value for a request made at `now`.
pub fn kas_request_token(key: &[u8], now: SystemTime) -> Result<String, JwtError> {
    sign(&Claims::kas_request(now)?, key)
}

/// Checks an HS256 JWT's signature (in constant time) and returns its claims as JSON. Does not check
/// any claim; see [`verify_kas_request`].
pub fn verify(token: &str, key: &[u8]) -> Result<serde_json::Value, JwtError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Malformed)?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| JwtError::Json(e.to_string()))?;
    match header.get("alg").and_then(|a| a.as_str()) {
        Some("HS256") => {}
        Some(other) => {
            return Err(JwtError::UnsupportedAlgorithm(
                other.chars().take(20).collect(),
            ));
        }
        None => return Err(JwtError::UnsupportedAlgorithm(String::new())),
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| JwtError::Malformed)?;
    let signed_len = header_b64.len() + 1 + payload_b64.len();
    let mut m = mac(key)?;
    m.update(&token.as_bytes()[..signed_len]);
    m.verify_slice(&sig).map_err(|_| JwtError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&payload).map_err(|e| JwtError::Json(e.to_string()))
}

/// Verifies a `Gitlab-Kas-Api-Request` JWT as GitLab does: signature, `iss`, `aud` and the validity
/// window at `now` (with [`NOT_BEFORE_SKEW`] leeway). For test doubles of GitLab.
pub fn verify_kas_request(token: &str, key: &[u8], now: SystemTime) -> Result<Claims, JwtError> {
    let value = verify(token, key)?;
    let claims: Claims =
        serde_json::from_value(value).map_err(|e| JwtError::Json(e.to_string()))?;
    if claims.iss != ISSUER {
        return Err(JwtError::Claim("iss"));
    }
    if claims.aud != AUDIENCE {
        return Err(JwtError::Claim("aud"));
    }
    let now = unix_secs(now)?;
    let leeway = NOT_BEFORE_SKEW.as_secs();
    if now >= claims.exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if now.saturating_add(leeway) < claims.nbf {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// RFC 7515 appendix A.1: the HS256 example, byte for byte.
    #[test]
    fn rfc7515_a1_vector() -> TestResult {
        let header = b"{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
        let payload =
            b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        let key = URL_SAFE_NO_PAD.decode(
            "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
        )?;
        let token = sign_raw(header, payload, &key)?;
        assert_eq!(
            token,
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9\
             .eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ\
             .dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
        let claims = verify(&token, &key)?;
        assert_eq!(claims["iss"], "joe");
        Ok(())
    }

    #[test]
    fn kas_request_round_trip_and_claims() -> TestResult {
        let key = [7u8; 32];
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = kas_request_token(&key, now)?;
        let claims = verify_kas_request(&token, &key, now)?;
        assert_eq!(claims.iss, "gitlab-kas");
        assert_eq!(claims.aud, "gitlab");
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(claims.nbf, 1_700_000_000 - 5);
        assert_eq!(claims.exp, 1_700_000_060);
        assert_eq!(
            verify_kas_request(&token, &key, now + Duration::from_secs(3600)),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify_kas_request(&token, &key, now - Duration::from_secs(3600)),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            verify_kas_request(&token, &[8u8; 32], now),
            Err(JwtError::BadSignature)
        );
        Ok(())
    }

    #[test]
    fn tampering_and_other_algorithms_are_rejected() -> TestResult {
        let key = b"k";
        let token = sign(&serde_json::json!({"iss": "gitlab-kas"}), key)?;
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"evil"}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(verify(&forged, key), Err(JwtError::BadSignature));
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let none = format!("{}.{}.", none_header, parts[1]);
        assert_eq!(
            verify(&none, key),
            Err(JwtError::UnsupportedAlgorithm("none".into()))
        );
        assert_eq!(verify("a.b", key), Err(JwtError::Malformed));
        assert_eq!(verify("a.b.c.d", key), Err(JwtError::Malformed));
        assert_eq!(verify("!!.b.c", key), Err(JwtError::Malformed));
        Ok(())
    }

    #[test]
    fn wrong_issuer_or_audience_is_rejected() -> TestResult {
        let key = [1u8; 32];
        let now = SystemTime::now();
        let mut claims = Claims::kas_request(now)?;
        claims.aud = "other".into();
        let token = sign(&claims, &key)?;
        assert_eq!(
            verify_kas_request(&token, &key, now),
            Err(JwtError::Claim("aud"))
        );
        claims.aud = AUDIENCE.into();
        claims.iss = "someone".into();
        let token = sign(&claims, &key)?;
        assert_eq!(
            verify_kas_request(&token, &key, now),
            Err(JwtError::Claim("iss"))
        );
        Ok(())
    }
}
