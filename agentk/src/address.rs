//! Where kas listens for agents: `host:port`, or an agent-tunnel URL `tls://host:port`.

use std::fmt;

use crate::error::Error;

/// The URL schemes accepted in front of `host:port` (all mean the same: the tunnel over TLS).
const SCHEMES: &[&str] = &["tls://", "agent-tunnel://"];

/// A parsed kas address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KasAddress {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl KasAddress {
    /// Parses `host:port`, `[v6]:port`, or either prefixed by `tls://` (a trailing `/` is allowed).
    pub fn parse(address: &str) -> Result<KasAddress, Error> {
        let bad = |reason: &str| Error::KasAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = address.trim();
        let rest = match trimmed.find("://") {
            Some(i) => {
                let scheme = &trimmed[..i + 3];
                if !SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
                    return Err(bad("unsupported scheme (use tls://host:port or host:port)"));
                }
                &trimmed[i + 3..]
            }
            None => trimmed,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(bad("expected host:port without a path, query or user"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated [IPv6] host"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing :port after [IPv6] host"))?;
            (host, port)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if !rest.starts_with('[') && host.contains(':') {
            return Err(bad("an IPv6 host must be written in brackets: [::1]:port"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number in 1..=65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(KasAddress {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for KasAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (String, u16) {
        match KasAddress::parse(s) {
            Ok(a) => (a.host, a.port),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(ok("kas.example.com:8150"), ("kas.example.com".into(), 8150));
        assert_eq!(ok("tls://127.0.0.1:443"), ("127.0.0.1".into(), 443));
        assert_eq!(ok("TLS://kas:1/"), ("kas".into(), 1));
        assert_eq!(ok("agent-tunnel://kas:9"), ("kas".into(), 9));
        assert_eq!(ok("[::1]:8150"), ("::1".into(), 8150));
        assert_eq!(ok("tls://[fe80::1]:2"), ("fe80::1".into(), 2));
    }

    #[test]
    fn rejected_forms() {
        for s in [
            "kas",
            "kas:",
            "kas:0",
            "kas:70000",
            ":80",
            "http://kas:80",
            "tls://kas:80/path",
            "::1:80",
            "[::1]80",
            "[::1",
            "user@kas:80",
        ] {
            assert!(KasAddress::parse(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["kas:1", "[::1]:2", "10.0.0.1:3"] {
            let a = KasAddress::parse(s).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.to_string(), s);
            assert_eq!(KasAddress::parse(&a.to_string()).ok(), Some(a));
        }
    }
}
