//! The whole configuration file, `.gitlab/agents/<agent-name>/config.yaml`.

use serde::{Deserialize, Serialize};

use crate::access::{self, CiAccess, UserAccess};
use crate::decode::Decoder;
use crate::error::{ConfigError, ConfigErrors, ErrorKind};
use crate::extras::{self, ContainerScanning, Flux, RemoteDevelopment};
use crate::gitops::{self, GitopsConfig};
use crate::observability::{self, Observability};
use crate::yaml::{self, Limits, Pos};

/// The top-level keys of a configuration file (GitLab's `ConfigurationFile`).
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "gitops",
    "observability",
    "ci_access",
    "user_access",
    "container_scanning",
    "remote_development",
    "flux",
];

/// A parsed, validated configuration file. `Default` is the empty configuration (a missing or empty
/// file).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// `gitops:`.
    #[serde(default)]
    pub gitops: GitopsConfig,
    /// `observability:`.
    #[serde(default)]
    pub observability: Observability,
    /// `ci_access:` (grants for CI jobs; enforced by kas's authoriser).
    #[serde(default)]
    pub ci_access: CiAccess,
    /// `user_access:` (grants for users; enforced by kas's authoriser).
    #[serde(default)]
    pub user_access: UserAccess,
    /// `container_scanning:`.
    #[serde(default)]
    pub container_scanning: Option<ContainerScanning>,
    /// `remote_development:`.
    #[serde(default)]
    pub remote_development: Option<RemoteDevelopment>,
    /// `flux:`.
    #[serde(default)]
    pub flux: Option<Flux>,
}

impl ConfigFile {
    /// Parses and validates a configuration file with the default [`Limits`]. Every error found is
    /// returned, each with its path, line and column.
    pub fn parse(source: &str) -> Result<ConfigFile, ConfigErrors> {
        ConfigFile::parse_with_limits(source, &Limits::default())
    }

    /// Like [`ConfigFile::parse`] for bytes from Git: invalid UTF-8 is an error at its position.
    pub fn parse_bytes(source: &[u8], limits: &Limits) -> Result<ConfigFile, ConfigErrors> {
        if source.len() > limits.max_bytes {
            // Report the size before looking at the encoding of a huge blob.
            return Err(too_large(source.len(), limits.max_bytes));
        }
        match std::str::from_utf8(source) {
            Ok(text) => ConfigFile::parse_with_limits(text, limits),
            Err(e) => {
                let valid = &source[..e.valid_up_to()];
                let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
                let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let column = String::from_utf8_lossy(&valid[line_start..])
                    .chars()
                    .count()
                    + 1;
                Err(ConfigErrors::new(vec![ConfigError::new(
                    ErrorKind::Syntax,
                    "",
                    Pos {
                        line: u32::try_from(line).unwrap_or(u32::MAX),
                        column: u32::try_from(column).unwrap_or(u32::MAX),
                    },
                    "the file is not valid UTF-8 text",
                )]))
            }
        }
    }

    /// [`ConfigFile::parse`] with explicit limits.
    pub fn parse_with_limits(source: &str, limits: &Limits) -> Result<ConfigFile, ConfigErrors> {
        let loaded = yaml::load(source, limits).map_err(|e| ConfigErrors::new(vec![e.into()]))?;
        let mut documents = loaded.documents.into_iter();
        let Some(first) = documents.next() else {
            return Ok(ConfigFile::default());
        };
        let mut d = Decoder::default();
        for extra in documents {
            d.error(
                ErrorKind::Syntax,
                "",
                extra.pos,
                "a configuration file holds one YAML document; remove this `---` and what follows",
            );
        }
        let root = &first.root;
        let mut file = ConfigFile::default();
        if let Some(f) = d.fields(root, "", TOP_LEVEL_KEYS) {
            if let Some(n) = f.get("gitops") {
                file.gitops = gitops::decode(&mut d, n, "gitops");
            }
            if let Some(n) = f.get("observability") {
                file.observability = observability::decode(&mut d, n, "observability");
            }
            if let Some(n) = f.get("ci_access") {
                file.ci_access = access::decode_ci(&mut d, n, "ci_access");
            }
            if let Some(n) = f.get("user_access") {
                file.user_access = access::decode_user(&mut d, n, "user_access");
            }
            if let Some(n) = f.get("container_scanning") {
                file.container_scanning =
                    extras::decode_container_scanning(&mut d, n, "container_scanning");
            }
            if let Some(n) = f.get("remote_development") {
                file.remote_development =
                    extras::decode_remote_development(&mut d, n, "remote_development");
            }
            if let Some(n) = f.get("flux") {
                file.flux = extras::decode_flux(&mut d, n, "flux");
            }
        }
        if d.errors.is_empty() {
            Ok(file)
        } else {
            Err(ConfigErrors::new(d.errors))
        }
    }
}

fn too_large(size: usize, max: usize) -> ConfigErrors {
    ConfigErrors::new(vec![ConfigError::new(
        ErrorKind::Syntax,
        "",
        Pos { line: 1, column: 1 },
        yaml::YamlErrorKind::TooLarge { size, max }.to_string(),
    )])
}
