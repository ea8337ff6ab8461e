//! `observability:` — agentk's own logging (and GitLab's profiler switch, accepted and kept).

use serde::{Deserialize, Serialize};

use crate::decode::Decoder;
use crate::yaml::Node;

/// `observability:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observability {
    /// `observability.logging`.
    #[serde(default)]
    pub logging: Logging,
    /// `observability.google_profiler` (accepted for compatibility; not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_profiler: Option<GoogleProfiler>,
}

/// `observability.logging`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logging {
    /// agentk's log level (default info).
    #[serde(default = "LogLevel::info")]
    pub level: LogLevel,
    /// The level of the transport library's logs (default error).
    #[serde(default = "LogLevel::error")]
    pub grpc_level: LogLevel,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: LogLevel::Info,
            grpc_level: LogLevel::Error,
        }
    }
}

/// A log level. GitLab spells warning `warn`; both spellings are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    #[serde(alias = "warn")]
    Warning,
    /// The default.
    Info,
    /// Everything.
    Debug,
}

impl LogLevel {
    fn info() -> Self {
        LogLevel::Info
    }
    fn error() -> Self {
        LogLevel::Error
    }

    /// The `tracing`/`env_logger` spelling: `off`, `error`, `warn`, `info`, `debug`.
    pub fn as_filter(&self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warning => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

const LEVELS: &[(&str, LogLevel)] = &[
    ("off", LogLevel::Off),
    ("error", LogLevel::Error),
    ("warning", LogLevel::Warning),
    ("warn", LogLevel::Warning),
    ("info", LogLevel::Info),
    ("debug", LogLevel::Debug),
];

/// `observability.google_profiler`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GoogleProfiler {
    /// Enabled.
    #[serde(default)]
    pub enabled: bool,
    /// Cloud project id.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Credentials file path (inside agentk's pod).
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Profiler debug logging.
    #[serde(default)]
    pub debug_logging: bool,
}

pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Observability {
    let mut out = Observability::default();
    let Some(f) = d.fields(node, path, &["logging", "google_profiler"]) else {
        return out;
    };
    if let Some(n) = f.get("logging")
        && let Some(l) = d.fields(n, &f.path_of("logging"), &["level", "grpc_level"])
    {
        if let Some(v) = l.get("level") {
            out.logging.level = d
                .one_of(v, &l.path_of("level"), LEVELS)
                .unwrap_or(LogLevel::Info);
        }
        if let Some(v) = l.get("grpc_level") {
            out.logging.grpc_level = d
                .one_of(v, &l.path_of("grpc_level"), LEVELS)
                .unwrap_or(LogLevel::Error);
        }
    }
    if let Some(n) = f.get("google_profiler") {
        let keys = &["enabled", "project_id", "credentials_file", "debug_logging"];
        if let Some(g) = d.fields(n, &f.path_of("google_profiler"), keys) {
            let mut p = GoogleProfiler::default();
            if let Some(v) = g.get("enabled") {
                p.enabled = d.boolean(v, &g.path_of("enabled")).unwrap_or(false);
            }
            if let Some(v) = g.get("project_id") {
                p.project_id = d.string(v, &g.path_of("project_id"));
            }
            if let Some(v) = g.get("credentials_file") {
                p.credentials_file = d.string(v, &g.path_of("credentials_file"));
            }
            if let Some(v) = g.get("debug_logging") {
                p.debug_logging = d.boolean(v, &g.path_of("debug_logging")).unwrap_or(false);
            }
            out.google_profiler = Some(p);
        }
    }
    out
}
