//! The client's own `Impersonate-*` headers (`kubectl --as`, `--as-group`, `--as-uid`,
//! `--as-user-extra`). They never pass unchecked: [`crate::decide`] refuses them under an
//! impersonating grant and sends them for review (a SubjectAccessReview) under `access_as: agent`.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

/// Header names, as Kubernetes defines them (compared case-insensitively).
pub const IMPERSONATE_USER: &str = "Impersonate-User";
/// `Impersonate-Uid`.
pub const IMPERSONATE_UID: &str = "Impersonate-Uid";
/// `Impersonate-Group` (repeated).
pub const IMPERSONATE_GROUP: &str = "Impersonate-Group";
/// `Impersonate-Extra-<percent-encoded key>` (repeated per value).
pub const IMPERSONATE_EXTRA_PREFIX: &str = "Impersonate-Extra-";

/// What the client asked to be impersonated as; empty when it sent no `Impersonate-*` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientImpersonation {
    /// `Impersonate-User`.
    pub user: Option<String>,
    /// `Impersonate-Uid`.
    pub uid: Option<String>,
    /// `Impersonate-Group`s.
    pub groups: Vec<String>,
    /// `Impersonate-Extra-*`, keys decoded and lower-cased as the API server does.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A malformed set of client `Impersonate-*` headers: the client's fault (kas answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientImpersonationError {
    /// `Impersonate-User` given more than once.
    #[error("Impersonate-User is given more than once")]
    DuplicateUser,
    /// `Impersonate-Uid` given more than once.
    #[error("Impersonate-Uid is given more than once")]
    DuplicateUid,
    /// Groups, uid or extras without `Impersonate-User` (Kubernetes refuses this too).
    #[error("Impersonate-Group, Impersonate-Uid and Impersonate-Extra-* require Impersonate-User")]
    MissingUser,
    /// An `Impersonate-Extra-` key that is empty or not valid percent-encoded UTF-8.
    #[error("an Impersonate-Extra- header has an empty or badly encoded key")]
    BadExtraKey,
    /// A header value that is not UTF-8 text.
    #[error("an Impersonate-* header value is not valid text")]
    BadValue,
}

impl ClientImpersonation {
    /// Collects the `Impersonate-*` headers among `headers` (names compared case-insensitively;
    /// other headers are ignored).
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, ClientImpersonationError> {
        let mut out = ClientImpersonation::default();
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if !lower.starts_with("impersonate-") {
                continue;
            }
            let value = std::str::from_utf8(value)
                .map_err(|_| ClientImpersonationError::BadValue)?
                .to_string();
            if lower == "impersonate-user" {
                if out.user.replace(value).is_some() {
                    return Err(ClientImpersonationError::DuplicateUser);
                }
            } else if lower == "impersonate-uid" {
                if out.uid.replace(value).is_some() {
                    return Err(ClientImpersonationError::DuplicateUid);
                }
            } else if lower == "impersonate-group" {
                out.groups.push(value);
            } else if let Some(key) = lower.strip_prefix("impersonate-extra-") {
                let key = percent_decode_str(key)
                    .decode_utf8()
                    .map_err(|_| ClientImpersonationError::BadExtraKey)?;
                if key.is_empty() {
                    return Err(ClientImpersonationError::BadExtraKey);
                }
                out.extra.entry(key.into_owned()).or_default().push(value);
            }
            // Other `Impersonate-*` names are not impersonation headers Kubernetes knows; kas
            // strips every `Impersonate-*` header anyway.
        }
        if out.user.is_none()
            && (out.uid.is_some() || !out.groups.is_empty() || !out.extra.is_empty())
        {
            return Err(ClientImpersonationError::MissingUser);
        }
        Ok(out)
    }

    /// Whether the client asked for no impersonation.
    pub fn is_empty(&self) -> bool {
        self.user.is_none()
    }
}

/// Whether `name` is an impersonation header that kas must strip from the client's request.
pub fn is_impersonation_header(name: &str) -> bool {
    name.len() >= "impersonate-".len()
        && name.as_bytes()[.."impersonate-".len()].eq_ignore_ascii_case(b"impersonate-")
}
