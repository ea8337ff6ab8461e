//! Credentials for smart HTTP and where a remote is: [`Remote`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;

use crate::error::Error;
use crate::url::{RepoUrl, Scheme};

/// A secret string (a token): its `Debug` never shows it, and it is only handed to the HTTP client.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::from(value.into()))
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How kas authenticates to a smart HTTP(S) server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// No credentials (public repositories, `git://`, local paths).
    #[default]
    None,
    /// HTTP basic authentication with a username and a token as password (GitLab: any username, or
    /// `oauth2`, with a personal/project/deploy token).
    Basic { username: String, token: Secret },
    /// A complete `Authorization` header value (`Bearer …`, `Basic …`) read from this file before every
    /// fetch, so that a rotated token is picked up without a restart. Surrounding white space is trimmed.
    HeaderFile(PathBuf),
}

impl Auth {
    /// The `Authorization` header value for one fetch.
    pub(crate) fn header_value(&self, url: &RepoUrl) -> Result<Option<Secret>, Error> {
        match self {
            Auth::None => Ok(None),
            Auth::Basic { username, token } => {
                let raw = format!("{username}:{}", token.expose());
                Ok(Some(Secret::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))))
            }
            Auth::HeaderFile(path) => read_header_file(path, url).map(Some),
        }
    }
}

/// The most bytes read from an `Authorization` header file.
const MAX_HEADER_FILE: u64 = 16 * 1024;

fn read_header_file(path: &Path, url: &RepoUrl) -> Result<Secret, Error> {
    use std::io::Read;
    let fail = |detail: String| Error::CredentialFile {
        url: url.to_string(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let mut raw = String::new();
    file.take(MAX_HEADER_FILE + 1)
        .read_to_string(&mut raw)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    if raw.len() as u64 > MAX_HEADER_FILE {
        return Err(fail(format!(
            "{}: larger than {MAX_HEADER_FILE} bytes",
            path.display()
        )));
    }
    let value = raw.trim();
    if value.is_empty() {
        return Err(fail(format!("{}: empty", path.display())));
    }
    if value.bytes().any(|b| b.is_ascii_control()) {
        // Never echo the content: it is a credential.
        return Err(fail(format!(
            "{}: the header value must be one line without control characters",
            path.display()
        )));
    }
    Ok(Secret::new(value))
}

/// Where a repository is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: RepoUrl,
    pub auth: Auth,
    /// PEM file with the CA certificates to trust for `https` instead of the built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
}

impl Remote {
    /// A remote without credentials and with the default trust roots.
    pub fn new(url: RepoUrl) -> Self {
        Remote {
            url,
            auth: Auth::None,
            ca_file: None,
        }
    }

    /// Parses a URL, taking user info as basic-auth credentials (see [`RepoUrl::parse_with_credentials`]).
    pub fn parse(input: &str) -> Result<Self, Error> {
        let (url, auth) = RepoUrl::parse_with_credentials(input)?;
        Ok(Remote {
            url,
            auth: auth.unwrap_or_default(),
            ca_file: None,
        })
    }

    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Credentials are only sent over HTTPS, or plain HTTP to a loopback address (a local demo server);
    /// configuring them otherwise is a mistake that is reported rather than ignored.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.auth == Auth::None {
            return Ok(());
        }
        match self.url.scheme() {
            Scheme::Https => Ok(()),
            Scheme::Http if is_loopback(self.url.host()) => Ok(()),
            Scheme::Http => Err(Error::InvalidUrl {
                reason: "credentials are only sent over https (or http to a loopback address)"
                    .into(),
            }),
            other => Err(Error::InvalidUrl {
                reason: format!(
                    "credentials are only supported for https, not {}",
                    other.as_str()
                ),
            }),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Replaces every occurrence of the secrets of one fetch in a message (from gix or the HTTP client)
/// with `<redacted>`: defence in depth, as credentials are never put into URLs given to gix.
#[derive(Default)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(auth: &Auth, header: Option<&Secret>) -> Self {
        let mut secrets = Vec::new();
        if let Auth::Basic { token, .. } = auth {
            secrets.push(token.expose().to_owned());
        }
        if let Some(h) = header {
            secrets.push(h.expose().to_owned());
            // The token part of `Bearer xyz` / `Basic xyz` alone, too.
            if let Some((_, rest)) = h.expose().split_once(' ') {
                secrets.push(rest.trim().to_owned());
            }
        }
        secrets.retain(|s| s.len() >= 4);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    pub(crate) fn scrub(&self, message: String) -> String {
        let mut out = message;
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_and_redaction() {
        let url = RepoUrl::parse("https://h/r").unwrap();
        let auth = Auth::Basic {
            username: "oauth2".into(),
            token: Secret::new("tok-123456"),
        };
        let header = auth.header_value(&url).unwrap().unwrap();
        assert_eq!(header.expose(), "Basic b2F1dGgyOnRvay0xMjM0NTY=");
        let r = Redactor::new(&auth, Some(&header));
        let scrubbed = r.scrub("failed with tok-123456 and b2F1dGgyOnRvay0xMjM0NTY=".into());
        assert!(!scrubbed.contains("tok-123456"));
        assert!(!scrubbed.contains("b2F1dGgy"));
        assert!(!format!("{auth:?}").contains("tok-123456"));
    }

    #[test]
    fn header_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let url = RepoUrl::parse("https://h/r").unwrap();
        let path = dir.path().join("auth");
        std::fs::write(&path, "Bearer abcdef\n").unwrap();
        let auth = Auth::HeaderFile(path.clone());
        assert_eq!(
            auth.header_value(&url).unwrap().unwrap().expose(),
            "Bearer abcdef"
        );
        std::fs::write(&path, "Bearer zq9tok\r\nX-Evil: 1").unwrap();
        let err = auth.header_value(&url).unwrap_err();
        assert!(!err.to_string().contains("zq9tok"), "{err}");
        let missing = Auth::HeaderFile(dir.path().join("nope"));
        assert_eq!(
            missing.header_value(&url).unwrap_err().fault(),
            crate::Fault::Local
        );
    }

    #[test]
    fn credentials_only_for_http() {
        let r = Remote::new(RepoUrl::parse("git://h/r").unwrap()).with_auth(Auth::Basic {
            username: "u".into(),
            token: Secret::new("t"),
        });
        assert!(r.validate().is_err());
    }
}
