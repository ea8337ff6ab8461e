//! Where kas listens for agents — `host:port`, `tls://host:port`, `wss://host[:port][/path]` or
//! `ws://host[:port][/path]` (tests, or TLS terminated in front of kas) — and the HTTP proxy on the
//! way ([`ProxySetting`]).

use std::fmt;

use runtime_tokio::transport::{Endpoint, ProxyConfig, Scheme};

use crate::error::Error;

/// The URL schemes accepted in front of `host:port`, and the transport each means.
const SCHEMES: &[(&str, Scheme)] = &[
    ("tls://", Scheme::Tls),
    ("agent-tunnel://", Scheme::Tls),
    ("wss://", Scheme::Wss),
    ("ws://", Scheme::Ws),
];

/// A parsed kas address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KasAddress {
    /// The transport.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The WebSocket request path (`/` unless given; always `/` for `tls://`).
    pub path: String,
}

/// Which HTTP CONNECT proxy agentk goes through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxySetting {
    /// `HTTPS_PROXY` (`tls://`, `wss://`) or `HTTP_PROXY` (`ws://`) unless `NO_PROXY` names kas's
    /// host; none if unset.
    #[default]
    Environment,
    /// No proxy, whatever the environment says.
    Direct,
    /// This proxy URL (`http://[user:password@]host:port`; `--proxy`).
    Url(String),
}

impl ProxySetting {
    /// `--proxy`'s value: `direct` or `none` for [`ProxySetting::Direct`], else a URL.
    pub fn from_flag(value: &str) -> ProxySetting {
        match value.trim() {
            "" => ProxySetting::Environment,
            v if v.eq_ignore_ascii_case("direct") || v.eq_ignore_ascii_case("none") => {
                ProxySetting::Direct
            }
            v => ProxySetting::Url(v.to_owned()),
        }
    }
}

impl KasAddress {
    /// Parses `host:port`, `[v6]:port`, or either prefixed by `tls://` (a trailing `/` is allowed),
    /// or a `wss://` / `ws://` URL with an optional port (443 / 80) and path.
    pub fn parse(address: &str) -> Result<KasAddress, Error> {
        let bad = |reason: &str| Error::KasAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = address.trim();
        let (scheme, rest) = match trimmed.find("://") {
            Some(i) => {
                let prefix = &trimmed[..i + 3];
                let Some((_, scheme)) =
                    SCHEMES.iter().find(|(s, _)| s.eq_ignore_ascii_case(prefix))
                else {
                    return Err(bad(
                        "unsupported scheme (use tls://host:port, wss://host[:port][/path] or host:port)",
                    ));
                };
                (*scheme, &trimmed[i + 3..])
            }
            None => (Scheme::Tls, trimmed),
        };
        let (rest, path) = match scheme {
            Scheme::Tls => (rest.strip_suffix('/').unwrap_or(rest), "/"),
            Scheme::Wss | Scheme::Ws => match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            },
        };
        if rest.contains('/') || rest.contains('?') || rest.contains('@') || path.contains('?') {
            return Err(bad(
                "expected host:port without a query or user (and a path only for ws(s)://)",
            ));
        }
        if path.contains(char::is_whitespace) {
            return Err(bad("the path contains white space"));
        }
        let default_port = match scheme {
            Scheme::Tls => None,
            Scheme::Wss => Some("443"),
            Scheme::Ws => Some("80"),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated [IPv6] host"))?;
            let port = match (after.strip_prefix(':'), default_port) {
                (Some(p), _) => p,
                (None, Some(d)) if after.is_empty() => d,
                _ => return Err(bad("missing :port after [IPv6] host")),
            };
            (host, port)
        } else {
            match (rest.rsplit_once(':'), default_port) {
                (Some((h, p)), _) if !h.contains(':') => (h, p),
                (None, Some(d)) => (rest, d),
                (Some(_), _) => {
                    return Err(bad("an IPv6 host must be written in brackets: [::1]:port"));
                }
                (None, None) => return Err(bad("missing :port")),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number in 1..=65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(KasAddress {
            scheme,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// What the agent dials: this address and the proxy `setting` resolves to for it (the
    /// environment is read through `env`).
    pub fn endpoint(
        &self,
        setting: &ProxySetting,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Endpoint, Error> {
        let proxy = match setting {
            ProxySetting::Direct => None,
            ProxySetting::Url(url) => Some(ProxyConfig::parse(url)?),
            ProxySetting::Environment => {
                ProxyConfig::from_env(&self.host, self.scheme.is_tls(), env)?
            }
        };
        Ok(Endpoint {
            scheme: self.scheme,
            host: self.host.clone(),
            port: self.port,
            path: self.path.clone(),
            proxy,
        })
    }
}

impl fmt::Display for KasAddress {
    /// `host:port` for `tls://` (as always), the URL for `ws(s)://`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = Endpoint {
            scheme: self.scheme,
            host: self.host.clone(),
            port: self.port,
            path: self.path.clone(),
            proxy: None,
        }
        .to_string();
        f.write_str(endpoint.strip_prefix("tls://").unwrap_or(&endpoint))
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

    fn full(s: &str) -> KasAddress {
        KasAddress::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
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
    fn websocket_forms() {
        let a = full("wss://kas.gitlab.example");
        assert_eq!(
            (a.scheme, a.host.as_str(), a.port, a.path.as_str()),
            (Scheme::Wss, "kas.gitlab.example", 443, "/")
        );
        let a = full("wss://kas:8443/api/v1/tunnel");
        assert_eq!((a.port, a.path.as_str()), (8443, "/api/v1/tunnel"));
        let a = full("ws://127.0.0.1:9/");
        assert_eq!((a.scheme, a.port, a.path.as_str()), (Scheme::Ws, 9, "/"));
        assert_eq!(full("ws://[::1]").port, 80);
        assert_eq!(full("WSS://[::1]:5/t").to_string(), "wss://[::1]:5/t");
        for s in [
            "wss://",
            "wss://kas:0",
            "ws://u@kas",
            "wss://kas/a?b",
            "ws://::1/",
        ] {
            assert!(KasAddress::parse(s).is_err(), "{s} should be rejected");
        }
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
        for s in [
            "kas:1",
            "[::1]:2",
            "10.0.0.1:3",
            "wss://kas:443/x",
            "ws://[::1]:80",
        ] {
            let a = KasAddress::parse(s).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.to_string(), s);
            assert_eq!(KasAddress::parse(&a.to_string()).ok(), Some(a));
        }
    }

    #[test]
    fn proxy_settings_resolve() {
        let a = full("wss://kas.example/t");
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("http://user:pw@proxy:3128".to_owned()),
            "NO_PROXY" => Some("internal".to_owned()),
            _ => None,
        };
        let e = a
            .endpoint(&ProxySetting::Environment, env)
            .unwrap_or_else(|e| panic!("{e}"));
        let proxy = e.proxy.unwrap_or_else(|| panic!("no proxy"));
        assert_eq!((proxy.host.as_str(), proxy.port), ("proxy", 3128));
        assert!(proxy.has_credentials());
        let direct = a.endpoint(&ProxySetting::from_flag("direct"), env);
        assert_eq!(direct.ok().map(|e| e.proxy), Some(None));
        let explicit = a.endpoint(&ProxySetting::from_flag("http://other:1"), env);
        assert_eq!(
            explicit.ok().map(|e| e.proxy.map(|p| p.host)),
            Some(Some("other".to_owned()))
        );
        assert!(
            a.endpoint(&ProxySetting::Url("socks5://x:1".into()), env)
                .is_err()
        );
        let inside = full("tls://kas.internal:1");
        assert_eq!(
            inside
                .endpoint(&ProxySetting::Environment, env)
                .ok()
                .map(|e| e.proxy),
            Some(None)
        );
    }
}
