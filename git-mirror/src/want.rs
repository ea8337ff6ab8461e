//! What to fetch from a repository ([`Want`]) and the deduplication key of a fetch ([`FetchKey`]).

use std::fmt;

use gix::ObjectId;
use gix::bstr::ByteSlice;

use crate::error::Error;
use crate::url::RepoId;

/// The one ref (or commit) a fetch asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Want {
    /// The branch the remote's `HEAD` points to (configuration projects are read from it).
    DefaultBranch,
    /// A branch, by short name (`main`, `release/1.2`).
    Branch(String),
    /// A tag, by short name (`v1.2.3`); annotated tags are peeled to their commit.
    Tag(String),
    /// An exact commit. Commits never move: once in the mirror, no network is used again.
    Commit(ObjectId),
}

impl Want {
    /// A branch, validated as a Git ref name (`refs/heads/<name>` must be valid).
    pub fn branch(name: &str) -> Result<Self, Error> {
        validate_short("refs/heads/", name).map(|n| Want::Branch(n.to_owned()))
    }

    /// A tag, validated as a Git ref name.
    pub fn tag(name: &str) -> Result<Self, Error> {
        validate_short("refs/tags/", name).map(|n| Want::Tag(n.to_owned()))
    }

    /// A commit by its full 40-hex id (abbreviated ids are ambiguous and rejected).
    pub fn commit(hex: &str) -> Result<Self, Error> {
        let hex = hex.trim();
        if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidRef {
                name: hex.chars().take(80).collect(),
                reason: "a commit must be given as a full 40-character hexadecimal id".into(),
            });
        }
        ObjectId::from_hex(hex.to_ascii_lowercase().as_bytes())
            .map(Want::Commit)
            .map_err(|e| Error::InvalidRef {
                name: hex.to_owned(),
                reason: e.to_string(),
            })
    }

    /// The ref to ask the remote for (`None` for a commit).
    pub(crate) fn remote_ref(&self) -> Option<String> {
        match self {
            Want::DefaultBranch => Some("HEAD".into()),
            Want::Branch(b) => Some(format!("refs/heads/{b}")),
            Want::Tag(t) => Some(format!("refs/tags/{t}")),
            Want::Commit(_) => None,
        }
    }

    /// Where the mirror keeps what was fetched for this want.
    pub(crate) fn local_ref(&self) -> String {
        match self {
            Want::DefaultBranch => "refs/mirror/default-branch".into(),
            Want::Branch(b) => format!("refs/heads/{b}"),
            Want::Tag(t) => format!("refs/tags/{t}"),
            Want::Commit(c) => format!("refs/mirror/commits/{c}"),
        }
    }

    /// The refspec of the fetch: forced, as branches may be rewritten (force-push).
    pub(crate) fn refspec(&self) -> String {
        match self {
            Want::Commit(c) => format!("{c}:{}", self.local_ref()),
            other => format!(
                "+{}:{}",
                other.remote_ref().unwrap_or_default(),
                other.local_ref()
            ),
        }
    }
}

fn validate_short<'a>(prefix: &str, name: &'a str) -> Result<&'a str, Error> {
    let invalid = |reason: String| Error::InvalidRef {
        name: name.chars().take(200).collect(),
        reason,
    };
    if name.is_empty() || name.len() > 1024 {
        return Err(invalid("empty or longer than 1024 bytes".into()));
    }
    if name.starts_with("refs/") || name == "HEAD" {
        return Err(invalid(format!(
            "give the short name, without {prefix}, and not HEAD"
        )));
    }
    let full = format!("{prefix}{name}");
    gix::validate::reference::name(full.as_bytes().as_bstr())
        .map_err(|e| invalid(e.to_string()))?;
    Ok(name)
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::DefaultBranch => f.write_str("the default branch (HEAD)"),
            Want::Branch(b) => write!(f, "branch {b:?}"),
            Want::Tag(t) => write!(f, "tag {t:?}"),
            Want::Commit(c) => write!(f, "commit {c}"),
        }
    }
}

/// One fetch: a repository and what is wanted from it. Callers key their polling on it, so that every
/// agent configured with the same repository and ref shares one poll; [`crate::Mirror::update`] also
/// coalesces concurrent calls for the same key into one fetch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FetchKey {
    pub repo: RepoId,
    pub want: Want,
}

impl fmt::Display for FetchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.repo, self.want)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert_eq!(
            Want::branch("release/1.2").unwrap().refspec(),
            "+refs/heads/release/1.2:refs/heads/release/1.2"
        );
        for bad in [
            "",
            "a..b",
            "../x",
            "x.lock",
            "a b",
            "refs/heads/main",
            "HEAD",
            "x~1",
            "-x/../y",
        ] {
            assert!(Want::branch(bad).is_err(), "{bad:?}");
        }
        assert!(Want::tag("v1.0.0").is_ok());
        assert!(Want::commit("abc").is_err());
        let c = Want::commit("0123456789ABCDEF0123456789abcdef01234567").unwrap();
        assert_eq!(
            c.refspec(),
            "0123456789abcdef0123456789abcdef01234567:refs/mirror/commits/0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(
            Want::DefaultBranch.refspec(),
            "+HEAD:refs/mirror/default-branch"
        );
    }
}
