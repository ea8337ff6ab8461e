//! What agentk needs to run: where kas is, the token, TLS roots, where the cluster's API server is,
//! the back-off policy, and what the agent says about itself.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::proto::AgentMeta;
use protocol::service;

use crate::error::Error;
use crate::reconnect::BackoffPolicy;

/// Where agentk's Kubernetes credentials and API server address come from (`kube`'s configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSource {
    /// A kubeconfig file, with an optional context (default: the file's current context).
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    InCluster,
    /// `kube::Config::infer`: `$KUBECONFIG` or `~/.kube/config`, then in-cluster.
    Infer,
}

/// Overrides of what the agent tells kas about itself in HELLO. `None` fields come from the
/// environment (`POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`, set through the downward API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaOverrides {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub node_name: Option<String>,
    /// Replaces the default capability list ([`CAPABILITIES`]) when set.
    pub capabilities: Option<Vec<String>>,
}

/// The services agentk serves, announced in HELLO.
pub const CAPABILITIES: &[&str] = &[service::K8S_API, service::SERVICE_PROXY];

impl MetaOverrides {
    /// The HELLO metadata: these overrides, then the environment, then defaults.
    pub fn agent_meta(&self) -> AgentMeta {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        AgentMeta {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: option_env!("AGENTK_COMMIT").unwrap_or_default().to_owned(),
            pod_name: self
                .pod_name
                .clone()
                .or_else(|| env("POD_NAME"))
                .unwrap_or_default(),
            pod_namespace: self
                .pod_namespace
                .clone()
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_default(),
            node_name: self
                .node_name
                .clone()
                .or_else(|| env("NODE_NAME"))
                .unwrap_or_default(),
            capabilities: self
                .capabilities
                .clone()
                .unwrap_or_else(|| CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()),
        }
    }
}

/// Everything [`crate::run`] needs. Build it with [`Config::new`] and adjust the public fields.
#[derive(Clone)]
pub struct Config {
    /// `host:port` or `tls://host:port` of kas's agent listener.
    pub kas_address: String,
    /// The agent token (never logged).
    pub token: String,
    /// Where the token came from, if a file: after kas refused the token, it is read again before
    /// the next attempt, so a rotated token (e.g. an updated Secret) takes effect without a restart.
    pub token_file: Option<PathBuf>,
    /// Roots that kas's certificate must chain to (default: the system store).
    pub ca: tunnel_tls::Roots,
    /// The name kas's certificate is verified against (default: the host of `kas_address`).
    pub tls_server_name: Option<String>,
    /// Where the cluster's API server and agentk's credentials come from.
    pub kube: KubeSource,
    /// Reconnect back-off.
    pub backoff: BackoffPolicy,
    /// What the agent says about itself.
    pub meta: MetaOverrides,
    /// Tunnel protocol settings (timeouts, windows); the defaults suit production.
    pub tunnel: protocol::Config,
    /// How long in-flight requests may finish when agentk shuts down.
    pub shutdown_grace: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("kas_address", &self.kas_address)
            .field("token", &"<redacted>")
            .field("token_file", &self.token_file)
            .field("ca", &self.ca)
            .field("tls_server_name", &self.tls_server_name)
            .field("kube", &self.kube)
            .field("backoff", &self.backoff)
            .field("meta", &self.meta)
            .field("tunnel", &self.tunnel)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

impl Config {
    /// Defaults: system roots, server name from the address, [`KubeSource::Infer`], the default
    /// back-off, metadata from the environment, default tunnel settings, 10 s shutdown grace.
    pub fn new(kas_address: impl Into<String>, token: impl Into<String>) -> Config {
        Config {
            kas_address: kas_address.into(),
            token: token.into(),
            token_file: None,
            ca: tunnel_tls::Roots::System,
            tls_server_name: None,
            kube: KubeSource::Infer,
            backoff: BackoffPolicy::default(),
            meta: MetaOverrides::default(),
            tunnel: protocol::Config::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Reads an agent token file: the whole file, surrounding whitespace trimmed, must not be empty.
pub fn read_token_file(path: &Path) -> Result<String, Error> {
    let raw = std::fs::read_to_string(path).map_err(|source| Error::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(Error::EmptyToken);
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        std::fs::write(&p, "  s3cret\n").expect("write");
        assert_eq!(read_token_file(&p).expect("token"), "s3cret");
        std::fs::write(&p, " \n").expect("write");
        assert!(matches!(read_token_file(&p), Err(Error::EmptyToken)));
        assert!(matches!(
            read_token_file(&dir.path().join("missing")),
            Err(Error::TokenFile { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Config::new("kas:1", "very-secret-token");
        assert!(!format!("{c:?}").contains("very-secret-token"));
    }

    #[test]
    fn meta_overrides_win_and_capabilities_default() {
        let m = MetaOverrides {
            pod_name: Some("p".into()),
            pod_namespace: Some("ns".into()),
            node_name: Some("n".into()),
            capabilities: None,
        }
        .agent_meta();
        assert_eq!(m.pod_name, "p");
        assert_eq!(m.pod_namespace, "ns");
        assert_eq!(m.node_name, "n");
        assert_eq!(m.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(m.capabilities, vec!["k8s-api", "service-proxy"]);
    }
}
