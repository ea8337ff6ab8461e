//! Names and identifiers in a configuration file, each a validated type: agent names, namespaces,
//! project/group ids, Git ref names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// True for an RFC 1123 DNS label: 1–63 characters of `[a-z0-9-]`, starting and ending with an
/// alphanumeric (agent names, namespaces).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// True for an RFC 1123 DNS subdomain: at most 253 characters, dot-separated DNS labels.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn label_message(what: &str, s: &str) -> String {
    format!(
        "`{s}` is not a valid {what}: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit (RFC 1123 label)"
    )
}

macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $name::new(&s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::new(s)
            }
        }
    };
}

string_type!(
    /// An agent's name: an RFC 1123 label (the directory under `.gitlab/agents/`).
    AgentName
);

impl AgentName {
    /// Validates a name; the error says what is allowed.
    pub fn new(s: &str) -> Result<Self, String> {
        if is_dns_label(s) {
            Ok(AgentName(s.to_string()))
        } else {
            Err(label_message("agent name", s))
        }
    }

    /// Where this agent's configuration lives in its config project.
    pub fn config_path(&self) -> String {
        format!(".gitlab/agents/{}/config.yaml", self.0)
    }
}

string_type!(
    /// A Kubernetes namespace name (RFC 1123 label).
    Namespace
);

impl Namespace {
    /// Validates a namespace name.
    pub fn new(s: &str) -> Result<Self, String> {
        if is_dns_label(s) {
            Ok(Namespace(s.to_string()))
        } else {
            Err(label_message("namespace", s))
        }
    }
}

string_type!(
    /// A GitLab project or group: a full path (`group/sub/project`) or a numeric id. With kas's
    /// agents-file backend it may also be a repository URL.
    ProjectId
);

impl ProjectId {
    /// Validates an id: non-empty, at most 1024 bytes, no whitespace or control characters, no
    /// leading, trailing or doubled `/`, no `..` component.
    pub fn new(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("`{s}` is not a valid project or group id: {why}"));
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.len() > 1024 {
            return bad("it is longer than 1024 bytes");
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("it contains whitespace or control characters");
        }
        if s.contains("://") {
            // A repository URL (agents-file backend): accepted as is.
            return Ok(ProjectId(s.to_string()));
        }
        if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            return bad("use a path like group/project, without leading, trailing or doubled '/'");
        }
        if s.split('/').any(|c| c == ".." || c == ".") {
            return bad("'.' and '..' are not path components");
        }
        Ok(ProjectId(s.to_string()))
    }
}

/// Validates a Git branch or tag name (the rules of `git check-ref-format`, without `refs/heads/`).
pub fn check_ref_name(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{s}` is not a valid Git ref name: {why}"));
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.len() > 1024 {
        return bad("it is longer than 1024 bytes");
    }
    if s.starts_with('-') || s.starts_with('/') || s.ends_with('/') || s.ends_with('.') {
        return bad("it must not start with '-' or '/' nor end with '/' or '.'");
    }
    if s.contains("..") || s.contains("//") || s.contains("@{") || s == "@" {
        return bad("it must not contain '..', '//' or '@{', nor be '@'");
    }
    if s.chars()
        .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c))
    {
        return bad("it must not contain spaces, control characters or any of ~ ^ : ? * [ \\");
    }
    if s.split('/')
        .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return bad("no component may start with '.' or end with '.lock'");
    }
    Ok(())
}

/// Validates a commit id: 40 hexadecimal digits (SHA-1). Returns it in lowercase.
pub fn check_commit(s: &str) -> Result<String, String> {
    if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{s}` is not a commit id: use the full 40-digit hexadecimal SHA"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(is_dns_label("agent-1"));
        assert!(!is_dns_label("Agent"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_label(&"a".repeat(63)));
        assert!(AgentName::new("my_agent").is_err());
        assert_eq!(
            AgentName::new("prod").map(|a| a.config_path()),
            Ok(".gitlab/agents/prod/config.yaml".to_string())
        );
    }

    #[test]
    fn refs() {
        assert!(check_ref_name("main").is_ok());
        assert!(check_ref_name("release/1.2").is_ok());
        for bad in [
            "", "a..b", "a b", "-x", "x/", "x.lock", "a:b", ".hidden", "a//b",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad}");
        }
        assert!(check_commit(&"A".repeat(40)).is_ok());
        assert!(check_commit("abc").is_err());
    }

    #[test]
    fn project_ids() {
        for ok in ["group/project", "123", "a/b/c", "https://git.example/x.git"] {
            assert!(ProjectId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a b"] {
            assert!(ProjectId::new(bad).is_err(), "{bad}");
        }
    }
}
