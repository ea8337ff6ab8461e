//! The `agentk` binary: parses flags (each also from an `AGENTK_*` environment variable), sets up
//! logging, and runs [`agentk::run`] until SIGINT/SIGTERM.
//!
//! Health without a port: with `--status-file`, agentk rewrites a small JSON status file every
//! [`STATUS_INTERVAL`] (from its async runtime, so a wedged runtime stops it); `agentk health
//! --status-file F` exits 0 while the file is fresh and 1 otherwise, which a pod uses as an exec
//! probe (the file lives in an `emptyDir`: the root filesystem stays read-only). Whether agentk is
//! connected is kas's to say (`/api/v1/agents`): agentk reconnects by itself, and restarting it
//! would not fix a network outage.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// How often agentk rewrites its `--status-file`.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The GitLab-style agent for Kubernetes: dials out to kas and serves its requests into this
/// cluster. Never listens on any port.
#[derive(Debug, Parser)]
#[command(name = "agentk", version, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// kas's agent listener: host:port or tls://host:port; or wss://host[:port][/path] for the
    /// tunnel in a WebSocket (through HTTP proxies and load balancers; kas serves it on its agent
    /// listener and on its API port at /api/v1/tunnel).
    #[arg(long, env = "AGENTK_KAS_ADDRESS", required = true)]
    kas_address: Option<String>,
    /// HTTP CONNECT proxy to kas, `http://[user:password@]host:port`, or `direct` for none
    /// (default: HTTPS_PROXY for tls:// and wss://, HTTP_PROXY for ws://, unless NO_PROXY names
    /// kas's host). The credentials are sent as basic authentication and never logged.
    #[arg(long, env = "AGENTK_PROXY")]
    proxy: Option<String>,
    /// File holding the agent token (surrounding whitespace is ignored).
    #[arg(long, env = "AGENTK_TOKEN_FILE", required = true)]
    token_file: Option<PathBuf>,
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
    /// Log filter at start-up, e.g. `info` or `info,agentk=debug` (default: $RUST_LOG, else info).
    /// A configuration from kas (`observability.logging`) replaces it.
    #[arg(long, env = "AGENTK_LOG_LEVEL")]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, env = "AGENTK_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Rewrite this status file every 5 s, for `agentk health` (exec probes; no port is opened).
    #[arg(long, env = "AGENTK_STATUS_FILE")]
    status_file: Option<PathBuf>,
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
    /// Threads of agentk's async runtime; default: one per CPU the process may use. With one, a
    /// proxied request's tasks (the tunnel's driver, the stream, the upstream connection) hand over
    /// to each other on the same thread instead of waking another: fewer wake-ups and less CPU per
    /// small request (scripts/bench.sh), but one core's worth of TLS and bodies for everything.
    #[arg(long, env = "AGENTK_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 if the running agentk's status file is fresh, 1 otherwise (an exec probe).
    Health(HealthArgs),
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// The status file the running agentk writes (its --status-file).
    #[arg(long, env = "AGENTK_STATUS_FILE")]
    status_file: PathBuf,
    /// Oldest acceptable status, in seconds.
    #[arg(long, default_value_t = 30)]
    max_age: u64,
}

/// The log filter at start-up: `--log-level` if given (checked), else `RUST_LOG` if set, else
/// `info`. A configuration from kas replaces it.
fn initial_filter(level: Option<&str>) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    match level {
        Some(level) => {
            check_log_level(level)?;
            tracing_subscriber::EnvFilter::try_new(level)
                .with_context(|| format!("invalid --log-level {level:?}"))
        }
        None => Ok(tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))),
    }
}

/// Refuses a filter that `tracing` would read as "log only this odd target" (e.g. `loud!!`): every
/// comma-separated directive must be a level, or `target=level` with a Rust path as target.
fn check_log_level(filter: &str) -> anyhow::Result<()> {
    let level_ok = |l: &str| l.eq_ignore_ascii_case("off") || l.parse::<tracing::Level>().is_ok();
    let target_ok = |t: &str| {
        t.split("::").all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        })
    };
    let bad = filter
        .split(',')
        .map(str::trim)
        .find(|d| match d.split_once('=') {
            Some((target, level)) => !(target_ok(target.trim()) && level_ok(level.trim())),
            None => !level_ok(d),
        });
    match bad {
        Some(d) => anyhow::bail!(
            "invalid --log-level {d:?}: give a level (off, error, warn, info, debug, trace) or \
             target=level directives, e.g. info,agentk=debug"
        ),
        None => Ok(()),
    }
}

/// What the status file holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Status {
    /// agentk's process id.
    pid: u32,
    /// When agentk started (Unix seconds).
    started_unix: u64,
    /// When the file was last written (Unix seconds).
    heartbeat_unix: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `status` to `path` atomically (a sibling temporary file renamed over it).
fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(
        &tmp,
        serde_json::to_vec(status).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// Rewrites the status file every [`STATUS_INTERVAL`], forever (a failure is logged once per run of
/// failures).
async fn heartbeat(path: PathBuf) {
    let started_unix = unix_now();
    let mut failing = false;
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tick.tick().await;
        let status = Status {
            pid: std::process::id(),
            started_unix,
            heartbeat_unix: unix_now(),
        };
        match write_status(&path, &status) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), error = %e, "cannot write the status file");
            }
            Err(_) => {}
        }
    }
}

/// `agentk health`: whether the status file is at most `max_age` seconds old.
fn health(args: &HealthArgs) -> anyhow::Result<()> {
    let text = std::fs::read(&args.status_file)
        .with_context(|| format!("no status from agentk at {}", args.status_file.display()))?;
    let status: Status = serde_json::from_slice(&text)
        .with_context(|| format!("unreadable status file {}", args.status_file.display()))?;
    let age = unix_now().saturating_sub(status.heartbeat_unix);
    anyhow::ensure!(
        age <= args.max_age,
        "agentk (pid {}) last wrote its status {age}s ago (more than {}s)",
        status.pid,
        args.max_age
    );
    println!("ok: agentk pid {} alive ({age}s ago)", status.pid);
    Ok(())
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

fn init_logging(format: LogFormat, level: Option<&str>) -> anyhow::Result<agentk::LogLevelControl> {
    let (subscriber, control) = logging(format, initial_filter(level)?, std::io::stderr);
    if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
        eprintln!("cannot install the logger: {e}");
    }
    Ok(control)
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
    let (Some(kas_address), Some(token_file)) = (&cli.kas_address, &cli.token_file) else {
        anyhow::bail!("--kas-address and --token-file are required");
    };
    let token = agentk::read_token_file(token_file)?;
    let mut config = agentk::Config::new(kas_address.clone(), token);
    config.token_file = Some(token_file.clone());
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Health(args)) = &cli.command {
        return health(args);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.worker_threads {
        runtime.worker_threads(usize::from(n));
    }
    runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let log_level = init_logging(cli.log_format, cli.log_level.as_deref())?;
    let mut config = config(&cli)?;
    config.log_level = Some(log_level);
    if let Some(path) = cli.status_file.clone() {
        tokio::spawn(heartbeat(path));
    }
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
    fn log_level_flag_is_checked_like_kas() {
        for good in [
            "info",
            "debug,agentk=trace",
            "warn,kube_client::client=off",
            "INFO",
        ] {
            assert!(initial_filter(Some(good)).is_ok(), "{good}");
        }
        for bad in ["loud!!", "", "agentk=", "=debug", "info,a b=debug"] {
            let e = initial_filter(Some(bad)).expect_err(bad).to_string();
            assert!(e.contains("--log-level"), "{bad}: {e}");
        }
        let cli = Cli::try_parse_from([
            "agentk",
            "--kas-address",
            "kas:1",
            "--token-file",
            "t",
            "--log-level",
            "debug",
        ])
        .expect("flags");
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn health_reads_the_status_file_the_heartbeat_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status");
        // No subcommand flags of the agent needed.
        let cli = Cli::try_parse_from([
            "agentk",
            "health",
            "--status-file",
            path.to_str().expect("utf-8"),
        ])
        .expect("health parses alone");
        let Some(Command::Health(args)) = cli.command else {
            panic!("not health");
        };
        let e = health(&args).expect_err("no file yet").to_string();
        assert!(e.contains("no status"), "{e}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let beat = tokio::spawn(heartbeat(path.clone()));
            for _ in 0..200 {
                if path.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            beat.abort();
        });
        health(&args).expect("fresh status");
        let stale = Status {
            pid: 7,
            started_unix: 1,
            heartbeat_unix: unix_now() - 120,
        };
        write_status(&path, &stale).expect("write");
        let e = health(&args).expect_err("stale").to_string();
        assert!(e.contains("120s ago") || e.contains("121s ago"), "{e}");
        std::fs::write(&path, "garbage").expect("write");
        assert!(
            health(&args)
                .expect_err("garbage")
                .to_string()
                .contains("unreadable")
        );
        assert!(
            Cli::try_parse_from(["agentk", "--token-file", "t"]).is_err(),
            "address required"
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
