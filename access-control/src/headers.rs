//! The Kubernetes impersonation headers agentk sets for a decision.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::client::{
    IMPERSONATE_EXTRA_PREFIX, IMPERSONATE_GROUP, IMPERSONATE_UID, IMPERSONATE_USER,
};
use crate::identity::ActAs;

/// Bytes of an extra key that stay as they are in the header name: RFC 7230 `tchar` minus `%`
/// (client-go's `headerKeyEscape`: everything else, `/` included, becomes `%XX`, upper-case hex).
const EXTRA_KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'*')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// A value that cannot be carried in an HTTP header unchanged (a control character other than tab,
/// or leading/trailing whitespace, which HTTP strips). Identities come from configuration or GitLab,
/// so this is their fault, never the client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {header} value contains a control character or surrounding whitespace and cannot be sent as an HTTP header unchanged"
)]
pub struct HeaderValueError {
    /// The header whose value is bad.
    pub header: String,
}

/// The header name for extra `key`: `Impersonate-Extra-` and the key escaped as client-go does.
pub fn extra_header_name(key: &str) -> String {
    format!(
        "{IMPERSONATE_EXTRA_PREFIX}{}",
        utf8_percent_encode(key, EXTRA_KEY_ESCAPE)
    )
}

/// The impersonation headers for `act_as`, in order: `Impersonate-User`, `Impersonate-Uid`, one
/// `Impersonate-Group` per group, one `Impersonate-Extra-<key>` per value (keys sorted). None for
/// [`ActAs::Agent`].
pub fn to_impersonation_headers(act_as: &ActAs) -> Result<Vec<(String, String)>, HeaderValueError> {
    let ActAs::Impersonate {
        user,
        uid,
        groups,
        extra,
    } = act_as
    else {
        return Ok(Vec::new());
    };
    let mut out = vec![(IMPERSONATE_USER.to_string(), user.clone())];
    if let Some(uid) = uid {
        out.push((IMPERSONATE_UID.to_string(), uid.clone()));
    }
    for g in groups {
        out.push((IMPERSONATE_GROUP.to_string(), g.clone()));
    }
    for (key, values) in extra {
        let name = extra_header_name(key);
        for v in values {
            out.push((name.clone(), v.clone()));
        }
    }
    for (name, value) in &out {
        let padded = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
        if padded || value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(HeaderValueError {
                header: name.clone(),
            });
        }
    }
    Ok(out)
}
