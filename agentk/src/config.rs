//! What agentk needs to run: where kas is, the token, TLS roots, where the cluster's API server is,
//! the back-off policy, and what the agent says about itself.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::cache::{ResourceKind, ViewSpec, default_views};
use protocol::proto::AgentMeta;
use protocol::service;

use crate::error::Error;
use protocol::tunnel::reconnect::BackoffPolicy;

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

/// The services agentk always serves or opens, announced in HELLO (`config`: it opens a config
/// stream on every connection).
pub const CAPABILITIES: &[&str] = &[
    service::K8S_API,
    service::SERVICE_PROXY,
    service::CONFIG,
    service::GITOPS,
];

/// Announced in addition to [`CAPABILITIES`] while the informer cache runs: kas may query the
/// cache (`cache`) and agentk opens a `views` stream on every connection.
pub const CACHE_CAPABILITIES: &[&str] = &[service::CACHE, service::VIEWS];

impl MetaOverrides {
    /// The HELLO metadata: these overrides, then the environment, then defaults; `caching` adds
    /// [`CACHE_CAPABILITIES`] to the default capability list.
    pub fn agent_meta(&self, caching: bool) -> AgentMeta {
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
            capabilities: self.capabilities.clone().unwrap_or_else(|| {
                let extra = if caching { CACHE_CAPABILITIES } else { &[] };
                CAPABILITIES
                    .iter()
                    .chain(extra)
                    .map(|c| (*c).to_owned())
                    .collect()
            }),
        }
    }
}

/// The kinds watched by default: nodes, pods, deployments and core events.
pub fn default_watch_kinds() -> Vec<ResourceKind> {
    vec![
        ResourceKind::node(),
        ResourceKind::pod(),
        ResourceKind::deployment(),
        ResourceKind::event(),
    ]
}

/// The informer cache: which kinds agentk watches and which views it maintains over them.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Kinds to watch (all namespaces), e.g. `v1/Pod`, `apps/v1/Deployment`. Empty: no cache,
    /// no `views` stream, and the `cache` service answers 404.
    pub watch_kinds: Vec<ResourceKind>,
    /// The views maintained and pushed to kas (default: [`default_views`]).
    pub views: Vec<ViewSpec>,
    /// At most one view update and one object-change message per window (default 100 ms).
    pub window: Duration,
    /// Re-send view updates kas did not acknowledge within this long (default 5 s).
    pub ack_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            watch_kinds: default_watch_kinds(),
            views: default_views(),
            window: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

impl CacheConfig {
    /// Whether the cache runs (at least one kind is watched).
    pub fn enabled(&self) -> bool {
        !self.watch_kinds.is_empty()
    }
}

/// Parses a comma-separated kind list (`v1/Node,v1/Pod,apps/v1/Deployment,v1/Event`); blanks
/// around entries are ignored, duplicates dropped; an empty list disables the cache.
pub fn parse_watch_kinds(text: &str) -> Result<Vec<ResourceKind>, Error> {
    let mut kinds: Vec<ResourceKind> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let kind = part
            .parse::<ResourceKind>()
            .map_err(|e| Error::WatchKinds(e.to_string()))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// Reads extra view specs from a JSON or YAML file: a list of specs, or `{"views": [...]}`.
pub fn read_views_file(path: &Path) -> Result<Vec<ViewSpec>, Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum ViewsFile {
        List(Vec<ViewSpec>),
        Wrapped { views: Vec<ViewSpec> },
    }
    let bad = |reason: String| Error::ViewsFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    // YAML is a superset of JSON as far as view specs go; try JSON first for its error messages.
    let parsed = match serde_json::from_str::<ViewsFile>(&text) {
        Ok(v) => v,
        Err(json) => serde_yaml::from_str::<ViewsFile>(&text).map_err(|yaml| {
            bad(format!(
                "neither a JSON nor a YAML list of view specs (JSON: {json}; YAML: {yaml})"
            ))
        })?,
    };
    Ok(match parsed {
        ViewsFile::List(v) | ViewsFile::Wrapped { views: v } => v,
    })
}

/// Everything [`crate::run`] needs. Build it with [`Config::new`] and adjust the public fields.
#[derive(Clone)]
pub struct Config {
    /// `host:port` or `tls://host:port` of kas's agent listener, or `wss://host[:port][/path]` (the
    /// tunnel in a WebSocket: through HTTP proxies and load balancers).
    pub kas_address: String,
    /// The HTTP CONNECT proxy to kas (default: from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`).
    pub proxy: crate::address::ProxySetting,
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
    /// The informer cache and its views.
    pub cache: CacheConfig,
    /// Sets the log level when kas sends a configuration (`observability.logging`); `None`: the
    /// level is left alone. The binary passes a `tracing-subscriber` reload handle.
    pub log_level: Option<crate::config_client::LogLevelControl>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("kas_address", &self.kas_address)
            .field("proxy", &self.proxy_for_logs())
            .field("token", &"<redacted>")
            .field("token_file", &self.token_file)
            .field("ca", &self.ca)
            .field("tls_server_name", &self.tls_server_name)
            .field("kube", &self.kube)
            .field("backoff", &self.backoff)
            .field("meta", &self.meta)
            .field("tunnel", &self.tunnel)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("cache", &self.cache)
            .field("log_level", &self.log_level.is_some())
            .finish()
    }
}

impl Config {
    /// The proxy setting without credentials (for `Debug`).
    fn proxy_for_logs(&self) -> String {
        match &self.proxy {
            crate::address::ProxySetting::Url(url) => {
                runtime_tokio::transport::ProxyConfig::parse(url)
                    .map_or_else(|_| "<unparsable URL>".to_owned(), |p| p.to_string())
            }
            other => format!("{other:?}"),
        }
    }

    /// Defaults: system roots, server name from the address, [`KubeSource::Infer`], the default
    /// back-off, metadata from the environment, default tunnel settings, 10 s shutdown grace, the
    /// default cache ([`CacheConfig::default`]).
    pub fn new(kas_address: impl Into<String>, token: impl Into<String>) -> Config {
        Config {
            kas_address: kas_address.into(),
            proxy: crate::address::ProxySetting::Environment,
            token: token.into(),
            token_file: None,
            ca: tunnel_tls::Roots::System,
            tls_server_name: None,
            kube: KubeSource::Infer,
            backoff: BackoffPolicy::default(),
            meta: MetaOverrides::default(),
            tunnel: protocol::Config::default(),
            shutdown_grace: Duration::from_secs(10),
            cache: CacheConfig::default(),
            log_level: None,
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
        .agent_meta(false);
        assert_eq!(m.pod_name, "p");
        assert_eq!(m.pod_namespace, "ns");
        assert_eq!(m.node_name, "n");
        assert_eq!(m.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            m.capabilities,
            vec!["k8s-api", "service-proxy", "config", "gitops"]
        );
        let m = MetaOverrides::default().agent_meta(true);
        assert_eq!(
            m.capabilities,
            vec![
                "k8s-api",
                "service-proxy",
                "config",
                "gitops",
                "cache",
                "views"
            ]
        );
        let m = MetaOverrides {
            capabilities: Some(vec!["x".into()]),
            ..Default::default()
        }
        .agent_meta(true);
        assert_eq!(m.capabilities, vec!["x"]);
    }

    #[test]
    fn watch_kinds_parse() {
        assert_eq!(
            parse_watch_kinds("v1/Node, v1/Pod,apps/v1/Deployment,v1/Event,v1/Pod").expect("valid"),
            default_watch_kinds()
        );
        assert_eq!(parse_watch_kinds(" , ").expect("valid"), Vec::new());
        assert!(matches!(
            parse_watch_kinds("v1/Pod,Pod"),
            Err(Error::WatchKinds(_))
        ));
        assert!(matches!(
            parse_watch_kinds("a/b/c/d"),
            Err(Error::WatchKinds(_))
        ));
        assert!(CacheConfig::default().enabled());
    }

    #[test]
    fn views_files_in_json_and_yaml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let json = dir.path().join("views.json");
        std::fs::write(
            &json,
            r#"[{"name": "web_pods", "kind": "Pod", "filter": [{"path": "metadata.labels.app", "eq": "web"}]}]"#,
        )
        .expect("write");
        let v = read_views_file(&json).expect("json views");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "web_pods");
        let yaml = dir.path().join("views.yaml");
        std::fs::write(
            &yaml,
            "views:\n  - name: services\n    kind: v1/Service\n    group_by: [metadata.namespace]\n",
        )
        .expect("write");
        let v = read_views_file(&yaml).expect("yaml views");
        assert_eq!(v[0].name, "services");
        assert_eq!(v[0].metrics.len(), 1, "default metric: count");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "- name: x\n  kind: Pod\n  colour: blue\n").expect("write");
        assert!(matches!(
            read_views_file(&bad),
            Err(Error::ViewsFile { .. })
        ));
        assert!(matches!(
            read_views_file(&dir.path().join("missing")),
            Err(Error::ViewsFile { .. })
        ));
    }
}
