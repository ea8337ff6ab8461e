//! Errors in a configuration file: every one names the path of the offending key, its line and
//! column, and what is allowed. All of them are the config author's fault.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::yaml::{Pos, YamlError};

/// The class of a configuration error (stable, for metrics and the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file is not valid YAML (or breaks a YAML limit: size, depth, aliases).
    Syntax,
    /// A key the schema does not have.
    UnknownKey,
    /// A value of the wrong type (a string where a mapping is expected, …).
    InvalidType,
    /// A value of the right type that is not allowed.
    InvalidValue,
    /// A required key is missing.
    Missing,
}

/// One error in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ConfigError {
    /// The class of error.
    pub kind: ErrorKind,
    /// The path of the offending key, e.g. `gitops.manifest_projects[0].refx` (empty for the root).
    pub path: String,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: ", self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    pub(crate) fn new(kind: ErrorKind, path: &str, pos: Pos, message: impl Into<String>) -> Self {
        ConfigError {
            kind,
            path: path.to_string(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    /// The error's position.
    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }
}

impl From<YamlError> for ConfigError {
    fn from(e: YamlError) -> Self {
        ConfigError::new(ErrorKind::Syntax, "", e.pos, e.kind.to_string())
    }
}

/// All errors found in a configuration file, in source order (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ConfigErrors {
    /// The errors, sorted by position.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub(crate) fn new(mut errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty());
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors { errors }
    }

    /// The first error.
    pub fn first(&self) -> Option<&ConfigError> {
        self.errors.first()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
