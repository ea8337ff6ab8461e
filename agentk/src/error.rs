//! The one error type of the agentk library: everything that stops agentk from starting.
//!
//! Once running, agentk does not fail: connection problems are retried with back-off and request
//! problems are answered to kas (see the crate documentation).

use std::path::PathBuf;

/// Why agentk could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kas address could not be parsed.
    #[error("invalid kas address {address:?}: {reason}")]
    KasAddress { address: String, reason: String },
    /// The HTTP proxy URL (`--proxy`, `HTTPS_PROXY`, `HTTP_PROXY`) is unusable.
    #[error("proxy configuration: {0}")]
    Proxy(#[from] runtime_tokio::transport::proxy::BadProxyUrl),
    /// The TLS configuration (root certificates, server name) is unusable.
    #[error("TLS configuration: {0}")]
    Tls(#[from] tunnel_tls::TlsError),
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The token is empty.
    #[error("the agent token is empty")]
    EmptyToken,
    /// A kind to watch is not `version/Kind` or `group/version/Kind`.
    #[error("invalid kind to watch: {0}")]
    WatchKinds(String),
    /// The views file could not be read or parsed.
    #[error("views file {path}: {reason}")]
    ViewsFile { path: PathBuf, reason: String },
    /// A view spec is invalid (or two views share a name).
    #[error("invalid view: {0}")]
    Views(#[from] protocol::cache::ViewSpecError),
    /// The Kubernetes client configuration (kubeconfig or in-cluster) could not be loaded or used.
    #[error("Kubernetes client configuration ({what}): {source}")]
    Kube {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn kube(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Kube {
            what,
            source: Box::new(source),
        }
    }
}
