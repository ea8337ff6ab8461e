//! Typed errors that say whose fault a failure is.
//!
//! Every message is safe to log and to show in kas's API: URLs are shown without user info, and no part
//! of a token or `Authorization` header value is ever put into an error (details coming from gix or the
//! HTTP client are scrubbed of the secrets in use before they are stored, see [`crate::auth::Redactor`]).

use std::time::Duration;

use gix::ObjectId;

use crate::snapshot::EntryKind;

/// Who has to act so that the operation succeeds next time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The remote server or the network: unreachable, slow, 5xx, the repository or ref is gone.
    /// Retrying later (with back-off) may succeed; the mirror keeps its last state.
    Remote,
    /// The credentials presented were refused: an operator must fix the token. Retrying will fail again.
    Credentials,
    /// The repository's content is too large, corrupt or hostile: its owners must fix it. Retrying the same
    /// commit fails again; the previous good state stays in force.
    Content,
    /// The caller asked for something invalid (a bad URL, ref name, path or glob, or a commit that was
    /// never fetched).
    Request,
    /// The local host: the state directory, the disk, a credential file.
    Local,
}

/// Everything that can go wrong while mirroring or reading a repository.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid repository URL: {reason}")]
    InvalidUrl { reason: String },
    #[error("invalid ref name {name:?}: {reason}")]
    InvalidRef { name: String, reason: String },
    #[error("invalid path or pattern {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("{url}: cannot read the credential file: {detail}")]
    CredentialFile { url: String, detail: String },
    #[error("{url}: remote unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url}: no answer within the fetch timeout of {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: authentication refused{}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    AuthRefused { url: String, status: Option<u16> },
    #[error("{url}: repository not found: {detail}")]
    RepoNotFound { url: String, detail: String },
    #[error("{url}: {want} not found")]
    RefNotFound { url: String, want: String },
    #[error("{url}: the remote misbehaved: {detail}")]
    Protocol { url: String, detail: String },
    #[error("{url}: the fetch exceeded the limit of {limit} bytes")]
    FetchTooLarge { url: String, limit: u64 },
    #[error("{url}: an object exceeds the limit of {limit} bytes: {detail}")]
    ObjectTooLarge {
        url: String,
        limit: u64,
        detail: String,
    },
    #[error("{path}: {size} bytes, more than the limit of {limit}")]
    BlobTooLarge { path: String, size: u64, limit: u64 },
    #[error("corrupt or hostile repository content: {detail}")]
    BadContent { detail: String },
    #[error("more than {limit} tree entries under {path:?}")]
    TooManyEntries { path: String, limit: usize },
    #[error("{path:?}: trees nested deeper than {limit}")]
    TreeTooDeep { path: String, limit: usize },
    #[error("{path:?}: symbolic link leaves the repository or loops ({detail})")]
    SymlinkEscapes { path: String, detail: String },
    #[error("{path:?} not found in commit {commit}")]
    PathNotFound { commit: ObjectId, path: String },
    #[error("{path:?} is a {kind}, not a regular file")]
    NotAFile { path: String, kind: EntryKind },
    #[error("object {id} is not in the mirror (fetch it first)")]
    MissingObject { id: ObjectId },
    #[error("{id} is a {kind}, not a commit")]
    NotACommit { id: ObjectId, kind: String },
    #[error("local I/O: {detail}")]
    Local { detail: String },
}

impl Error {
    /// Whose fault this error is.
    pub fn fault(&self) -> Fault {
        match self {
            Error::InvalidUrl { .. }
            | Error::InvalidRef { .. }
            | Error::InvalidPath { .. }
            | Error::MissingObject { .. } => Fault::Request,
            Error::CredentialFile { .. } | Error::Local { .. } => Fault::Local,
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::RepoNotFound { .. }
            | Error::RefNotFound { .. }
            | Error::Protocol { .. } => Fault::Remote,
            Error::AuthRefused { .. } => Fault::Credentials,
            Error::FetchTooLarge { .. }
            | Error::ObjectTooLarge { .. }
            | Error::BlobTooLarge { .. }
            | Error::BadContent { .. }
            | Error::TooManyEntries { .. }
            | Error::TreeTooDeep { .. }
            | Error::SymlinkEscapes { .. }
            | Error::PathNotFound { .. }
            | Error::NotAFile { .. }
            | Error::NotACommit { .. } => Fault::Content,
        }
    }

    /// A stable, short code for metrics labels and API error objects.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "invalid_url",
            Error::InvalidRef { .. } => "invalid_ref",
            Error::InvalidPath { .. } => "invalid_path",
            Error::CredentialFile { .. } => "credential_file",
            Error::Unreachable { .. } => "unreachable",
            Error::Timeout { .. } => "timeout",
            Error::AuthRefused { .. } => "auth_refused",
            Error::RepoNotFound { .. } => "repo_not_found",
            Error::RefNotFound { .. } => "ref_not_found",
            Error::Protocol { .. } => "protocol",
            Error::FetchTooLarge { .. } => "fetch_too_large",
            Error::ObjectTooLarge { .. } => "object_too_large",
            Error::BlobTooLarge { .. } => "blob_too_large",
            Error::BadContent { .. } => "bad_content",
            Error::TooManyEntries { .. } => "too_many_entries",
            Error::TreeTooDeep { .. } => "tree_too_deep",
            Error::SymlinkEscapes { .. } => "symlink_escapes",
            Error::PathNotFound { .. } => "path_not_found",
            Error::NotAFile { .. } => "not_a_file",
            Error::MissingObject { .. } => "missing_object",
            Error::NotACommit { .. } => "not_a_commit",
            Error::Local { .. } => "local_io",
        }
    }

    /// Whether retrying the same operation later may succeed without anybody changing anything
    /// (network trouble, a server error, a timeout).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::Timeout { .. }
                | Error::Protocol { .. }
                | Error::Local { .. }
        )
    }

    pub(crate) fn local(context: &str, err: impl std::fmt::Display) -> Self {
        Error::Local {
            detail: truncate(&format!("{context}: {err}")),
        }
    }

    pub(crate) fn bad_content(detail: impl Into<String>) -> Self {
        Error::BadContent {
            detail: truncate(&detail.into()),
        }
    }
}

/// The longest detail string kept in an error (hostile servers can send long messages).
pub(crate) const MAX_DETAIL: usize = 400;

pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_owned();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The whole chain of a gix error as one line (`outer: inner: root`), bounded.
pub(crate) fn chain(err: &gix::Error) -> String {
    let mut out = String::new();
    for e in err.iter_errors() {
        let s = e.to_string();
        if s.is_empty() || out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
        if out.len() > MAX_DETAIL * 2 {
            break;
        }
    }
    // Control characters from a hostile server's messages never reach logs.
    let cleaned: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(&cleaned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(MAX_DETAIL);
        let t = truncate(&s);
        assert!(t.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(t.ends_with('…'));
    }

    #[test]
    fn faults_and_codes() {
        let e = Error::AuthRefused {
            url: "https://h/r".into(),
            status: Some(401),
        };
        assert_eq!(e.fault(), Fault::Credentials);
        assert_eq!(e.code(), "auth_refused");
        assert_eq!(
            e.to_string(),
            "https://h/r: authentication refused (HTTP 401)"
        );
        assert!(!e.is_transient());
        let t = Error::Timeout {
            url: "git://h/r".into(),
            timeout: Duration::from_secs(3),
        };
        assert!(t.is_transient());
        assert_eq!(t.fault(), Fault::Remote);
    }
}
