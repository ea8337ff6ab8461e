//! The `agentk` binary: parses flags (each also from an `AGENTK_*` environment variable), sets up
//! logging, and runs [`agentk::run`] until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The GitLab-style agent for Kubernetes: dials out to kas and serves its requests into this
/// cluster. Never listens on any port.
#[derive(Debug, Parser)]
#[command(name = "agentk", version)]
struct Cli {
    /// kas's agent listener: host:port or tls://host:port; or wss://host[:port][/path] for the
    /// tunnel in a WebSocket (through HTTP proxies and load balancers; kas serves it on its agent
    /// listener and on its API port at /api/v1/tunnel).
    #[arg(long, env = "AGENTK_KAS_ADDRESS")]
    kas_address: String,
    /// HTTP CONNECT proxy to kas, `http://[user:password@]host:port`, or `direct` for none
    /// (default: HTTPS_PROXY for tls:// and wss://, HTTP_PROXY for ws://, unless NO_PROXY names
    /// kas's host). The credentials are sent as basic authentication and never logged.
    #[arg(long, env = "AGENTK_PROXY")]
    proxy: Option<String>,
    /// File holding the agent token (surrounding whitespace is ignored).
    #[arg(long, env = "AGENTK_TOKEN_FILE")]
    token_file: PathBuf,
    /// PEM file with the CA certificate(s) kas's certificate must chain to (default: system roots).
    #[arg(long, env = "AGENTK_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Kubeconfig with agentk's credentials for the cluster's API server.
    #[arg(long, env = "AGENTK_KUBECONFIG", conflicts_with = "in_cluster")]
    kubeconfig: Option<PathBuf>,
    /// Use the pod's service account (in-cluster configuration).
    #[arg(long, env = "AGENTK_IN_CLUSTER")]
    in_cluster: bool,
    /// Kubeconfig context (default: the current context). Without --kubeconfig, the file comes
    /// from $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "AGENTK_CONTEXT", conflicts_with = "in_cluster")]
    context: Option<String>,
    /// Name kas's certificate is verified against (default: the host of --kas-address).
    #[arg(long, env = "AGENTK_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Log format.
    #[arg(long, env = "AGENTK_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Seconds in-flight requests may take to finish on shutdown.
    #[arg(long, env = "AGENTK_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,
    /// Kinds the informer cache watches (all namespaces), comma-separated `version/Kind` or
    /// `group/version/Kind`. An empty value disables the cache (no views, no cache queries).
    #[arg(
        long,
        env = "AGENTK_WATCH_KINDS",
        default_value = "v1/Node,v1/Pod,apps/v1/Deployment,v1/Event"
    )]
    watch_kinds: String,
    /// JSON or YAML file with extra view specs (a list, or `{views: [...]}`), maintained in
    /// addition to the default views.
    #[arg(long, env = "AGENTK_VIEWS_FILE")]
    views_file: Option<PathBuf>,
    /// Milliseconds over which view updates and object changes are coalesced (at most one message
    /// of each per window).
    #[arg(long, env = "AGENTK_VIEWS_WINDOW_MS", default_value_t = 100)]
    views_window_ms: u64,
}

/// The log filter at start-up: `RUST_LOG` if set, else `info`. A configuration from kas replaces it.
fn initial_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// The subscriber agentk logs with (writing to `writer`), and the control that changes its level
/// live (a reload handle of its filter) when kas sends `observability.logging`.
fn logging<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> (
    Box<dyn tracing::Subscriber + Send + Sync>,
    agentk::LogLevelControl,
)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = match format {
        LogFormat::Text => {
            Box::new(registry.with(tracing_subscriber::fmt::layer().with_writer(writer)))
        }
        LogFormat::Json => {
            Box::new(registry.with(tracing_subscriber::fmt::layer().json().with_writer(writer)))
        }
    };
    let control: agentk::LogLevelControl = std::sync::Arc::new(move |logging| {
        let directives = agentk::config_client::filter_directives(logging);
        let filter = tracing_subscriber::EnvFilter::try_new(&directives)
            .map_err(|e| format!("{directives}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    (subscriber, control)
}

fn init_logging(format: LogFormat) -> agentk::LogLevelControl {
    let (subscriber, control) = logging(format, initial_filter(), std::io::stderr);
    if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
        eprintln!("cannot install the logger: {e}");
    }
    control
}

/// The kubeconfig file used when only --context is given.
fn default_kubeconfig() -> anyhow::Result<PathBuf> {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .as_ref()
        .and_then(|v| std::env::split_paths(v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME")
        .context("--context without --kubeconfig needs $KUBECONFIG or $HOME")?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

fn config(cli: &Cli) -> anyhow::Result<agentk::Config> {
    let token = agentk::read_token_file(&cli.token_file)?;
    let mut config = agentk::Config::new(cli.kas_address.clone(), token);
    config.token_file = Some(cli.token_file.clone());
    if let Some(ca) = &cli.ca_file {
        config.ca = tunnel_tls::Roots::PemFile(ca.clone());
    }
    config.tls_server_name = cli.tls_server_name.clone();
    if let Some(proxy) = &cli.proxy {
        config.proxy = agentk::ProxySetting::from_flag(proxy);
    }
    config.kube = match (&cli.kubeconfig, cli.in_cluster, &cli.context) {
        (Some(path), _, context) => agentk::KubeSource::Kubeconfig {
            path: path.clone(),
            context: context.clone(),
        },
        (None, true, _) => agentk::KubeSource::InCluster,
        (None, false, Some(context)) => agentk::KubeSource::Kubeconfig {
            path: default_kubeconfig()?,
            context: Some(context.clone()),
        },
        (None, false, None) => agentk::KubeSource::Infer,
    };
    config.shutdown_grace = Duration::from_secs(cli.shutdown_grace);
    config.cache.watch_kinds = agentk::parse_watch_kinds(&cli.watch_kinds)?;
    if let Some(path) = &cli.views_file {
        config.cache.views.extend(agentk::read_views_file(path)?);
    }
    config.cache.window = Duration::from_millis(cli.views_window_ms);
    Ok(config)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops agentk");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_level = init_logging(cli.log_format);
    let mut config = config(&cli)?;
    config.log_level = Some(log_level);
    agentk::run(config, shutdown_signal())
        .await
        .context("agentk cannot start")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A writer into a shared buffer, for the logging test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_log_level_from_kas_applies_live() {
        use agent_config::{LogLevel, Logging};
        let out = Captured::default();
        let writer = out.clone();
        let (subscriber, control) = logging(
            LogFormat::Text,
            tracing_subscriber::EnvFilter::new("info"),
            move || writer.clone(),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("hidden-at-info");
            control(&Logging {
                level: LogLevel::Debug,
                grpc_level: LogLevel::Error,
            })
            .expect("reload");
            tracing::debug!("shown-at-debug");
            control(&Logging {
                level: LogLevel::Error,
                grpc_level: LogLevel::Error,
            })
            .expect("reload");
            tracing::info!("hidden-at-error");
            tracing::error!("shown-at-error");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(!text.contains("hidden-at"), "{text}");
        assert!(
            text.contains("shown-at-debug") && text.contains("shown-at-error"),
            "{text}"
        );
    }

    #[test]
    fn kubeconfig_and_in_cluster_conflict() {
        let r = Cli::try_parse_from([
            "agentk",
            "--kas-address",
            "kas:1",
            "--token-file",
            "t",
            "--kubeconfig",
            "k",
            "--in-cluster",
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn flags_map_to_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "tok\n").expect("write");
        let cli = Cli::try_parse_from([
            "agentk",
            "--kas-address",
            "tls://kas:8150",
            "--token-file",
            token.to_str().expect("utf-8 path"),
            "--ca-file",
            "/ca.pem",
            "--kubeconfig",
            "/kc",
            "--context",
            "c1",
            "--tls-server-name",
            "kas.example",
            "--proxy",
            "http://proxy.corp:3128",
        ])
        .expect("valid flags");
        let c = config(&cli).expect("config");
        assert_eq!(
            c.proxy,
            agentk::ProxySetting::Url("http://proxy.corp:3128".into())
        );
        assert_eq!(c.token, "tok");
        assert_eq!(c.kas_address, "tls://kas:8150");
        assert_eq!(c.ca, tunnel_tls::Roots::PemFile("/ca.pem".into()));
        assert_eq!(c.tls_server_name.as_deref(), Some("kas.example"));
        assert_eq!(
            c.kube,
            agentk::KubeSource::Kubeconfig {
                path: "/kc".into(),
                context: Some("c1".into())
            }
        );
        assert_eq!(c.cache.watch_kinds, agentk::default_watch_kinds());
        assert_eq!(c.cache.views, protocol::cache::default_views());
    }

    #[test]
    fn cache_flags_map_to_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "tok\n").expect("write");
        let views = dir.path().join("views.yaml");
        std::fs::write(&views, "- name: services\n  kind: Service\n").expect("write");
        let token = token.to_str().expect("utf-8 path");
        let views = views.to_str().expect("utf-8 path");
        let base = ["agentk", "--kas-address", "kas:1", "--token-file", token];
        let parse = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            config(&Cli::try_parse_from(args).expect("valid flags"))
        };
        let c = parse(&[
            "--watch-kinds",
            "v1/Service,apps/v1/Deployment",
            "--views-file",
            views,
            "--views-window-ms",
            "250",
        ])
        .expect("config");
        assert_eq!(
            c.cache.watch_kinds,
            vec![
                protocol::cache::ResourceKind::new("", "v1", "Service"),
                protocol::cache::ResourceKind::deployment()
            ]
        );
        let names: Vec<&str> = c.cache.views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "nodes",
                "pods_by_phase",
                "deployments",
                "objects_by_kind",
                "services"
            ]
        );
        assert_eq!(c.cache.window, Duration::from_millis(250));
        let c = parse(&["--watch-kinds", ""]).expect("config");
        assert!(!c.cache.enabled());
        assert!(parse(&["--watch-kinds", "Pod"]).is_err());
    }
}
