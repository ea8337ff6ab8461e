//! HTTP CONNECT proxies: agentk reaches kas through the egress proxy of its cluster, for both
//! transports (`tls://` and `wss://`: TLS runs end to end through the tunnel the proxy opens).
//!
//! Which proxy is used follows the usual environment: `HTTPS_PROXY` for `tls://` and `wss://`,
//! `HTTP_PROXY` for `ws://` (lower-case names too, upper case first), unless `NO_PROXY` names the
//! host; an explicit proxy (agentk's `--proxy`) replaces the environment. Only `http://` proxies
//! (the CONNECT request is sent in clear to the proxy) are supported; credentials in the URL are sent
//! as basic authentication and are never logged (`Debug` and `Display` redact them).

use std::fmt;
use std::io;

use base64::Engine as _;
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::prefixed::Prefixed;

/// The largest proxy answer head read (status line and headers).
const MAX_ANSWER: usize = 16 * 1024;

/// A proxy refused or broke the CONNECT request: whose fault it is is in the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// `407` (or `401`, which some proxies, tinyproxy among them, send instead): the proxy wants
    /// (other) credentials. The operator's configuration.
    #[error("the proxy requires authentication (407 Proxy Authentication Required){}", if *.sent_credentials { ": it refused the credentials given" } else { ": give credentials in the proxy URL" })]
    AuthenticationRequired {
        /// Whether credentials were sent.
        sent_credentials: bool,
    },
    /// `403` and other `4xx`: the proxy's policy forbids the destination.
    #[error("the proxy refused the tunnel to {target} ({status} {reason})")]
    Forbidden {
        target: String,
        status: u16,
        reason: String,
    },
    /// `5xx` (`502 Bad Gateway`, `503`, `504`): the proxy could not reach kas.
    #[error("the proxy could not reach {target} ({status} {reason})")]
    Upstream {
        target: String,
        status: u16,
        reason: String,
    },
    /// The answer was not HTTP, too large, or the proxy closed the connection.
    #[error("the proxy's answer is malformed: {0}")]
    Malformed(String),
}

impl From<ProxyError> for io::Error {
    fn from(e: ProxyError) -> io::Error {
        let kind = match e {
            ProxyError::AuthenticationRequired { .. } | ProxyError::Forbidden { .. } => {
                io::ErrorKind::PermissionDenied
            }
            ProxyError::Upstream { .. } => io::ErrorKind::ConnectionRefused,
            ProxyError::Malformed(_) => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// An HTTP proxy: where it is and the credentials it gets (basic authentication).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub host: String,
    pub port: u16,
    /// `user:password`, percent-decoded, if the URL had any.
    credentials: Option<(String, String)>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyConfig({self})")
    }
}

impl fmt::Display for ProxyConfig {
    /// `http://[<redacted>@]host:port`: never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = if self.credentials.is_some() {
            "<redacted>@"
        } else {
            ""
        };
        if self.host.contains(':') {
            write!(f, "http://{auth}[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{auth}{}:{}", self.host, self.port)
        }
    }
}

/// Why a proxy URL is unusable (never contains the URL's credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad proxy URL: {0}")]
pub struct BadProxyUrl(pub String);

impl ProxyConfig {
    /// Parses `http://[user:password@]host[:port][/]` (port 80 by default; a bare `host:port` is
    /// taken as `http://`). Credentials may be percent-encoded.
    pub fn parse(url: &str) -> Result<ProxyConfig, BadProxyUrl> {
        let bad = |m: &str| BadProxyUrl(m.to_owned());
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => return Err(bad("only http:// proxies are supported")),
            None => url,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if hostport.contains('/') || hostport.contains('?') {
            return Err(bad("a proxy URL has no path or query"));
        }
        let credentials = userinfo
            .map(|u| {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                let dec = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| bad("credentials are not UTF-8"))
                };
                Ok::<_, BadProxyUrl>((dec(user)?, dec(password)?))
            })
            .transpose()?;
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unterminated [IPv6]"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("junk after [IPv6] host")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("port is not a number in 1..=65535"))?,
            None => 80,
        };
        Ok(ProxyConfig {
            host: host.to_owned(),
            port,
            credentials,
        })
    }

    /// Whether the proxy gets credentials.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The `Proxy-Authorization` value, if any.
    fn authorization(&self) -> Option<String> {
        self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// The proxy for `host` from the environment: `HTTPS_PROXY` (`tls`) or `HTTP_PROXY`, unless
    /// `NO_PROXY` matches `host`; `Ok(None)` without one. `env` looks a variable up.
    pub fn from_env(
        host: &str,
        tls: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ProxyConfig>, BadProxyUrl> {
        let var = |name: &str| {
            env(name)
                .or_else(|| env(&name.to_ascii_lowercase()))
                .filter(|v| !v.trim().is_empty())
        };
        let url = if tls {
            var("HTTPS_PROXY")
        } else {
            var("HTTP_PROXY")
        };
        let Some(url) = url else { return Ok(None) };
        if var("NO_PROXY").is_some_and(|list| no_proxy_matches(&list, host)) {
            return Ok(None);
        }
        ProxyConfig::parse(&url).map(Some)
    }

    /// Opens a tunnel to `host:port` through this proxy over `io` (a connection to the proxy):
    /// `CONNECT`, then the proxy's answer; any octets the proxy sent after its answer are kept.
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut io: S,
        host: &str,
        port: u16,
    ) -> Result<Prefixed<S>, io::Error> {
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = self.authorization() {
            request.push_str("Proxy-Authorization: ");
            request.push_str(&auth);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        io.write_all(request.as_bytes()).await?;
        io.flush().await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let head_len = loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(ProxyError::Malformed("the proxy closed the connection".into()).into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_ANSWER {
                return Err(ProxyError::Malformed("answer head too large".into()).into());
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf[..head_len]) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) | Err(_) => {
                return Err(ProxyError::Malformed("not an HTTP/1 answer".into()).into());
            }
        }
        let status = response.code.unwrap_or(0);
        let reason = response.reason.unwrap_or("").to_owned();
        match status {
            200..=299 => Ok(Prefixed::new(buf.split_off(head_len), io)),
            401 | 407 => Err(ProxyError::AuthenticationRequired {
                sent_credentials: self.credentials.is_some(),
            }
            .into()),
            400..=499 => Err(ProxyError::Forbidden {
                target,
                status,
                reason,
            }
            .into()),
            500..=599 => Err(ProxyError::Upstream {
                target,
                status,
                reason,
            }
            .into()),
            _ => Err(ProxyError::Malformed(format!("unexpected status {status}")).into()),
        }
    }
}

/// Whether `NO_PROXY` (comma- or space-separated entries) exempts `host`: `*` exempts everything;
/// an entry is a host name or address, compared case-insensitively, which also exempts its
/// subdomains (`example.com` and `.example.com` both exempt `kas.example.com`); a `:port` suffix
/// on an entry is ignored. CIDR ranges are not supported.
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.to_ascii_lowercase();
    list.split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            let entry = match entry.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or("").to_owned(),
                None if entry.matches(':').count() == 1 => {
                    entry.split(':').next().unwrap_or("").to_owned()
                }
                None => entry,
            };
            let entry = entry.trim_start_matches("*.").trim_start_matches('.');
            !entry.is_empty()
                && (host == entry
                    || host
                        .strip_suffix(entry)
                        .is_some_and(|prefix| prefix.ends_with('.')))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls_and_redacts_credentials() {
        let p = ProxyConfig::parse("http://us%40er:p%3Ass@proxy.corp:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.credentials, Some(("us@er".to_owned(), "p:ss".to_owned())));
        let shown = format!("{p} {p:?}");
        assert!(!shown.contains("p:ss") && !shown.contains("us@er") && !shown.contains("p%3Ass"));
        assert!(shown.contains("<redacted>@proxy.corp:3128"));
        assert_eq!(ProxyConfig::parse("proxy:8080").unwrap().port, 8080);
        assert_eq!(ProxyConfig::parse("http://proxy").unwrap().port, 80);
        assert_eq!(ProxyConfig::parse("http://[::1]:1").unwrap().host, "::1");
        for bad in [
            "https://p:1",
            "socks5://p:1",
            "http://:1",
            "http://p:0",
            "http://p:1/x",
        ] {
            assert!(ProxyConfig::parse(bad).is_err(), "{bad}");
        }
        // An error never echoes the credentials.
        let e = ProxyConfig::parse("http://u:secret@p:99999").unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn environment_and_no_proxy() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let vars: &[(&str, &str)] = &[
            ("https_proxy", "http://secure:1"),
            ("HTTP_PROXY", "http://plain:2"),
            ("NO_PROXY", "internal.corp, 10.0.0.1,.svc"),
        ];
        let got = |host, tls| {
            ProxyConfig::from_env(host, tls, env(vars))
                .unwrap()
                .map(|p| p.host)
        };
        assert_eq!(got("kas.example", true).as_deref(), Some("secure"));
        assert_eq!(got("kas.example", false).as_deref(), Some("plain"));
        assert_eq!(got("kas.internal.corp", true), None);
        assert_eq!(got("internal.corp", true), None);
        assert_eq!(got("notinternal.corp", true).as_deref(), Some("secure"));
        assert_eq!(got("10.0.0.1", true), None);
        assert_eq!(got("kas.ns.svc", true), None);
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("localhost:8150", "localhost"));
        assert!(no_proxy_matches("[::1]", "::1"));
        assert!(!no_proxy_matches("", "kas"));
        assert_eq!(ProxyConfig::from_env("kas", true, |_| None), Ok(None));
    }

    #[test]
    fn answers_map_to_typed_errors() {
        use futures_lite::future::block_on;
        let answer = |text: &'static str, creds: bool| {
            let proxy = ProxyConfig::parse(if creds { "http://u:p@p:1" } else { "p:1" }).unwrap();
            let io = crate::transport::testing::Duplex::new(text.as_bytes().to_vec());
            block_on(proxy.connect(io, "kas", 443))
                .map(|_| ())
                .map_err(|e| *e.into_inner().unwrap().downcast::<ProxyError>().unwrap())
        };
        assert_eq!(
            answer("HTTP/1.1 200 Connection established\r\n\r\n", false),
            Ok(())
        );
        assert_eq!(
            answer("HTTP/1.0 407 Proxy Authentication Required\r\n\r\n", true),
            Err(ProxyError::AuthenticationRequired {
                sent_credentials: true
            })
        );
        assert!(matches!(
            answer("HTTP/1.1 403 Forbidden\r\nX: y\r\n\r\n", false),
            Err(ProxyError::Forbidden { status: 403, .. })
        ));
        assert!(matches!(
            answer("HTTP/1.1 502 Bad Gateway\r\n\r\n", false),
            Err(ProxyError::Upstream { status: 502, .. })
        ));
        assert!(matches!(
            answer("SSH-2.0\r\n\r\n", false),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            answer("HTTP/1.1 200 OK\r\n", false),
            Err(ProxyError::Malformed(_))
        ));
    }
}
