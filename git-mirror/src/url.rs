//! Repository URLs: parsing, normalisation (the identity of a mirror), redaction, and the mirror's
//! directory name.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::auth::{Auth, Secret};
use crate::error::Error;

/// How a repository is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// A repository on the local file system (`/abs/path` or `file:///abs/path`), read directly with gix.
    File,
    /// The `git://` daemon protocol (no authentication, no encryption).
    Git,
    /// Smart HTTP.
    Http,
    /// Smart HTTP over TLS (rustls).
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::Git => "git",
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::File => None,
            Scheme::Git => Some(9418),
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
        }
    }
}

/// A validated repository URL without user info. Its [`Display`](fmt::Display) is the normalised form,
/// which is safe to log and is the identity of the mirror ([`RepoId`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RepoUrl {
    scheme: Scheme,
    /// Lower-case host name or IP literal (IPv6 in brackets); empty for `file`.
    host: String,
    /// The port when it is not the scheme's default.
    port: Option<u16>,
    /// For `file`: the absolute, lexically normalised path. Otherwise the URL path (percent-encoded as
    /// given), starting with `/`, without trailing slashes.
    path: String,
}

/// The identity of a mirror: the normalised URL. Two configurations naming the same repository with
/// different spellings (`HTTPS://Host:443/p/`, `https://host/p`) share one mirror and one fetch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoId(String);

impl RepoId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl RepoUrl {
    /// Parses `input` and rejects any user info (`https://user:token@host/…`): use
    /// [`RepoUrl::parse_with_credentials`] to accept it as basic-auth credentials.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let (url, auth) = Self::parse_with_credentials(input)?;
        if auth.is_some() {
            return Err(Error::InvalidUrl {
                reason: "credentials in the URL are not accepted here; configure them separately"
                    .into(),
            });
        }
        Ok(url)
    }

    /// Parses `input`, moving user info (`https://user:token@host/…`) out of the URL into basic-auth
    /// credentials. Error messages never contain the input (it may hold a token).
    pub fn parse_with_credentials(input: &str) -> Result<(Self, Option<Auth>), Error> {
        let input = input.trim();
        if input.starts_with('/') {
            return Ok((Self::file(Path::new(input))?, None));
        }
        let invalid = |reason: &str| Error::InvalidUrl {
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(input).map_err(|e| invalid(&e.to_string()))?;
        let scheme = match parsed.scheme() {
            "file" => Scheme::File,
            "git" => Scheme::Git,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "ssh" | "git+ssh" | "ssh+git" => {
                return Err(invalid(
                    "ssh is not supported (kas never runs an ssh client); use https with a token",
                ));
            }
            other => return Err(invalid(&format!("unsupported scheme {:?}", other))),
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("must not have a query or a fragment"));
        }
        let auth = if !parsed.username().is_empty() || parsed.password().is_some() {
            let username = percent_decode(parsed.username());
            let token = percent_decode(parsed.password().unwrap_or(""));
            if scheme != Scheme::Https && scheme != Scheme::Http {
                return Err(invalid("credentials are only accepted for http(s) URLs"));
            }
            Some(Auth::Basic {
                username,
                token: Secret::new(token),
            })
        } else {
            None
        };
        if scheme == Scheme::File {
            if parsed
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(invalid("file URLs must not name a host"));
            }
            let path = parsed
                .to_file_path()
                .map_err(|()| invalid("not a valid file path"))?;
            return Ok((Self::file(&path)?, auth));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("missing host"))?
            .to_ascii_lowercase();
        let port = parsed.port().filter(|p| Some(*p) != scheme.default_port());
        let path = parsed.path().trim_end_matches('/').to_owned();
        if path.is_empty() {
            return Err(invalid("missing repository path"));
        }
        if path.contains("%00") || path.contains('\n') {
            return Err(invalid("invalid characters in the path"));
        }
        if scheme == Scheme::Git && path.contains('%') {
            // git:// sends the path verbatim to the daemon; keep it plain.
            return Err(invalid(
                "percent-encoded characters are not supported in git:// paths",
            ));
        }
        Ok((
            RepoUrl {
                scheme,
                host,
                port,
                path,
            },
            auth,
        ))
    }

    /// A local repository at an absolute path (a bare repository or a work tree with `.git`).
    pub fn file(path: &Path) -> Result<Self, Error> {
        if !path.is_absolute() {
            return Err(Error::InvalidUrl {
                reason: "local repository paths must be absolute".into(),
            });
        }
        let mut normal = PathBuf::new();
        for c in path.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(Error::InvalidUrl {
                        reason: "local repository paths must not contain '..'".into(),
                    });
                }
                other => normal.push(other),
            }
        }
        let path = normal.to_str().ok_or_else(|| Error::InvalidUrl {
            reason: "local repository paths must be UTF-8".into(),
        })?;
        Ok(RepoUrl {
            scheme: Scheme::File,
            host: String::new(),
            port: None,
            path: path.to_owned(),
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host (empty for local repositories).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, defaulted for the scheme (`None` for local repositories).
    pub fn port(&self) -> Option<u16> {
        self.port.or(self.scheme.default_port())
    }

    /// The URL path, or the local path for `file`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// For `file` URLs: the local path.
    pub fn local_path(&self) -> Option<&Path> {
        (self.scheme == Scheme::File).then(|| Path::new(&self.path))
    }

    /// The identity of the mirror of this repository.
    pub fn id(&self) -> RepoId {
        RepoId(self.to_string())
    }

    /// The name of this repository's mirror directory: a readable slug of host and path, and a hash of
    /// the normalised URL. It consists of `[a-z0-9._-]` only, never starts with `.`, and never contains a
    /// path separator, so it cannot escape the mirror root whatever the URL.
    pub fn mirror_dir_name(&self) -> String {
        let digest = Sha256::digest(self.to_string().as_bytes());
        let hash = hex::encode(&digest[..10]);
        let raw = format!("{}-{}{}", self.scheme.as_str(), self.host, self.path);
        let mut slug = String::with_capacity(48);
        let mut last_sep = true;
        for c in raw.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                slug.push(c);
                last_sep = false;
            } else if !last_sep {
                slug.push('_');
                last_sep = true;
            }
            if slug.len() >= 48 {
                break;
            }
        }
        let slug = slug.trim_matches('_');
        format!("{slug}-{hash}.git")
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::File => write!(f, "file://{}", self.path),
            _ => {
                write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
                if let Some(port) = self.port {
                    write!(f, ":{port}")?;
                }
                f.write_str(&self.path)
            }
        }
    }
}

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoUrl({self})")
    }
}

/// `input` with any user info replaced by `***`, for logging configuration values that may contain
/// credentials. Unparseable input is replaced entirely.
pub fn redact(input: &str) -> String {
    if input.trim_start().starts_with('/') {
        return input.to_owned();
    }
    match url::Url::parse(input.trim()) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("***");
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_scheme_host_port_and_trailing_slash() {
        let a = RepoUrl::parse("HTTPS://Git.Example.COM:443/group/proj.git/").unwrap();
        let b = RepoUrl::parse("https://git.example.com/group/proj.git").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "https://git.example.com/group/proj.git");
        assert_eq!(a.port(), Some(443));
        let c = RepoUrl::parse("git://127.0.0.1:9000/r.git").unwrap();
        assert_eq!(c.to_string(), "git://127.0.0.1:9000/r.git");
        assert_eq!(c.port(), Some(9000));
    }

    #[test]
    fn user_info_becomes_credentials_and_never_shows() {
        let (url, auth) =
            RepoUrl::parse_with_credentials("https://oauth2:s3cr%2Ft@host/g/p.git").unwrap();
        assert_eq!(url.to_string(), "https://host/g/p.git");
        match auth {
            Some(Auth::Basic { username, token }) => {
                assert_eq!(username, "oauth2");
                assert_eq!(token.expose(), "s3cr/t");
                assert!(!format!("{token:?}").contains("s3cr"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = RepoUrl::parse("https://oauth2:s3cret@host/g/p.git").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
        assert_eq!(
            redact("https://oauth2:s3cret@host/g/p.git"),
            "https://***@host/g/p.git"
        );
    }

    #[test]
    fn rejects_what_kas_cannot_or_must_not_do() {
        for bad in [
            "ssh://git@host/r.git",
            "ftp://host/r",
            "relative/path",
            "https://host",
            "https://host/r?x=1",
            "git://u:p@host/r",
            "file://otherhost/r",
        ] {
            assert!(RepoUrl::parse_with_credentials(bad).is_err(), "{bad}");
        }
        assert!(RepoUrl::parse("/a/../b").is_err());
        assert_eq!(
            RepoUrl::parse("file:///srv/./repos/r.git").unwrap(),
            RepoUrl::parse("/srv/repos/r.git").unwrap()
        );
    }

    proptest! {
        #[test]
        fn mirror_dir_names_are_safe(host in "[a-zA-Z0-9.-]{1,20}", path in "(/[^/?#\\x00-\\x1f]{0,12}){1,5}") {
            let input = format!("https://{host}{path}");
            if let Ok(url) = RepoUrl::parse(&input) {
                let name = url.mirror_dir_name();
                prop_assert!(!name.contains('/') && !name.contains('\\'));
                prop_assert!(!name.starts_with('.'));
                prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)));
                prop_assert!(name.len() <= 48 + 1 + 20 + 4);
                prop_assert_eq!(Path::new(&name).components().count(), 1);
            }
        }

        #[test]
        fn distinct_ids_get_distinct_dirs(a in "[a-z]{1,6}", b in "[a-z]{1,6}") {
            let ua = RepoUrl::parse(&format!("https://h/{a}")).unwrap();
            let ub = RepoUrl::parse(&format!("https://h/{b}")).unwrap();
            prop_assert_eq!(ua.id() == ub.id(), ua.mirror_dir_name() == ub.mirror_dir_name());
        }
    }
}
