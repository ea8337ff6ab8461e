//! Glob patterns of the configuration: manifest `paths[].glob` (GitLab's doublestar semantics) and
//! CI access `environments` (`*` wildcards).

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

/// Longest accepted glob, in bytes (a bound on the compiled matcher).
pub const MAX_GLOB_LEN: usize = 1024;

/// A manifest file glob, matched against repository paths.
///
/// Semantics (GitLab's, from doublestar): a leading `/` is the repository root and is optional
/// (`/**/*.yaml` ≡ `**/*.yaml`); `*` and `?` never match `/`; `**` as a whole path component matches
/// any number of directories (also none); `{a,b}` alternatives, `[abc]`/`[!a-z]` classes and `\`
/// escapes. Files inside a directory whose name starts with `.` are never selected (so
/// `.gitlab/agents/...` is not a manifest).
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ManifestGlob {
    pattern: String,
    matcher: GlobMatcher,
}

impl ManifestGlob {
    /// GitLab's default: every YAML and JSON file of the repository.
    pub const DEFAULT: &'static str = "**/*.{yaml,yml,json}";

    /// Compiles a glob; the error says what is wrong.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("the glob is empty".into());
        }
        if pattern.len() > MAX_GLOB_LEN {
            return Err(format!("the glob is longer than {MAX_GLOB_LEN} bytes"));
        }
        let relative = pattern.strip_prefix('/').unwrap_or(pattern);
        let glob = GlobBuilder::new(relative)
            .literal_separator(true)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
            .map_err(|e| format!("`{pattern}` is not a valid glob: {}", e.kind()))?;
        Ok(ManifestGlob {
            pattern: pattern.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    /// GitLab's default glob.
    pub fn default_glob() -> Self {
        ManifestGlob::new(Self::DEFAULT).expect("the default glob compiles")
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether a repository path (`dir/file.yaml`, with or without a leading `/`) is selected.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.strip_prefix('/').unwrap_or(path);
        if in_hidden_directory(path) {
            return false;
        }
        self.matcher.is_match(path)
    }
}

/// True if a directory component of `path` (not the file name) starts with `.`.
pub fn in_hidden_directory(path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    parts.iter().any(|p| p.starts_with('.'))
}

impl PartialEq for ManifestGlob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for ManifestGlob {}

impl fmt::Debug for ManifestGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManifestGlob({:?})", self.pattern)
    }
}

impl fmt::Display for ManifestGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl TryFrom<String> for ManifestGlob {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ManifestGlob::new(&s)
    }
}

impl From<ManifestGlob> for String {
    fn from(g: ManifestGlob) -> String {
        g.pattern
    }
}

/// An environment pattern of `ci_access` (`production`, `review/*`): `*` matches any run of
/// characters (`/` included); everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvironmentPattern(String);

impl EnvironmentPattern {
    /// Validates a pattern: 1–255 characters, no control characters.
    pub fn new(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.chars().count() > 255 {
            return Err(format!(
                "`{s}` is not an environment pattern: use 1 to 255 characters"
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(format!(
                "`{s}` is not an environment pattern: it contains control characters"
            ));
        }
        Ok(EnvironmentPattern(s.to_string()))
    }

    /// The pattern.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `environment` (a GitLab environment name) matches.
    pub fn matches(&self, environment: &str) -> bool {
        wildcard(self.0.as_bytes(), environment.as_bytes())
    }
}

/// `*`-only wildcard matching, iterative with one backtrack point: O(pattern × text) worst case.
fn wildcard(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl TryFrom<String> for EnvironmentPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        EnvironmentPattern::new(&s)
    }
}

impl From<EnvironmentPattern> for String {
    fn from(p: EnvironmentPattern) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_glob_semantics() {
        let g = ManifestGlob::new("/**/*.{yaml,yml,json}").expect("glob");
        for yes in ["a.yaml", "/a.yml", "x/y/z.json", "deep/er/still/m.yaml"] {
            assert!(g.matches(yes), "{yes}");
        }
        for no in [
            "a.txt",
            ".gitlab/agents/a/config.yaml",
            "x/.hidden/y.yaml",
            "a.yaml/b",
        ] {
            assert!(!g.matches(no), "{no}");
        }
        // A dot file in a normal directory is selected.
        assert!(g.matches("x/.a.yaml"));
        let g = ManifestGlob::new("/manifests/*.yaml").expect("glob");
        assert!(g.matches("manifests/a.yaml"));
        assert!(!g.matches("manifests/sub/a.yaml"));
        assert!(!g.matches("other/manifests/a.yaml"));
        assert!(ManifestGlob::new("a/[b").is_err());
        assert!(ManifestGlob::new("").is_err());
        assert!(ManifestGlob::new("{a,b").is_err());
    }

    #[test]
    fn environments() {
        let p = EnvironmentPattern::new("review/*").expect("pattern");
        assert!(p.matches("review/feature-1"));
        assert!(p.matches("review/a/b"));
        assert!(!p.matches("production"));
        assert!(EnvironmentPattern::new("*").expect("p").matches(""));
        assert!(
            EnvironmentPattern::new("a*b*c")
                .expect("p")
                .matches("aXXbYYc")
        );
        assert!(
            !EnvironmentPattern::new("a*b*c")
                .expect("p")
                .matches("aXXbYY")
        );
        assert!(EnvironmentPattern::new("").is_err());
    }
}
