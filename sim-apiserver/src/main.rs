//! `sim-apiserver`: runs a simulated Kubernetes API server until interrupted.
//!
//! `sim-apiserver --listen ADDR [--nodes N] [--pods N] [--churn RATE] [--kubeconfig-out FILE]
//! [--token T] [--users FILE] [--objects FILE]`
//! (also reachable as `simulator apiserver …`, which runs this binary).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sim_apiserver::identity::UsersFile;
use sim_apiserver::{ApiServer, ApiServerConfig};

/// Run a simulated Kubernetes API server until interrupted.
#[derive(Parser, Debug)]
#[command(name = "sim-apiserver", version)]
struct Args {
    /// Address to listen on (plain HTTP).
    #[arg(long, env = "SIM_APISERVER_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Initial number of Ready nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Initial number of running pods.
    #[arg(long, default_value_t = 10)]
    pods: usize,
    /// Churn: random pod/node changes per second (0 = none).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Seed for the churn generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write a kubeconfig for this server to FILE.
    #[arg(long, value_name = "FILE")]
    kubeconfig_out: Option<PathBuf>,
    /// Context (and cluster/user) name in the written kubeconfig.
    #[arg(long, default_value = "simulator")]
    context: String,
    /// Require this bearer token on every API request.
    #[arg(long, env = "SIM_APISERVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve HTTPS with a certificate from a throw-away CA (the written kubeconfig trusts it);
    /// kubectl sends bearer tokens only over TLS.
    #[arg(long)]
    tls: bool,
    /// Users file (YAML: `users: [{token, username, uid, groups, extra}]`): more credentials,
    /// each its own identity authorised by RBAC (see `sim_apiserver::identity::UsersFile`).
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Objects to create at start (multi-document YAML), e.g. the Roles, ClusterRoles and
    /// bindings that give the users (such as the agent's service account) their permissions.
    #[arg(long, value_name = "FILE")]
    objects: Option<PathBuf>,
    /// Change events retained for watch resumption (older versions get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 15.0)]
    bookmark_interval: f64,
    /// Seconds between fake log lines of each running container.
    #[arg(long, default_value_t = 1.0)]
    log_interval: f64,
    /// Most concurrent exec/attach/port-forward sessions (more are refused with 429).
    #[arg(long, default_value_t = 4096)]
    max_streaming_sessions: usize,
    /// Seconds an exec/attach/port-forward session may pass without data before it is ended.
    #[arg(long, default_value_t = 14_400.0)]
    streaming_idle_timeout: f64,
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if !(args.churn.is_finite() && args.churn >= 0.0) {
        anyhow::bail!("--churn must be a non-negative number of changes per second");
    }
    let users = match &args.users {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the users file {}", path.display()))?;
            UsersFile::parse(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => Vec::new(),
    };
    let initial_objects = match &args.objects {
        Some(path) => read_objects(path)?,
        None => Vec::new(),
    };
    let config = ApiServerConfig {
        users,
        initial_objects,
        tls: args.tls,
        listen: args.listen,
        nodes: args.nodes,
        pods: args.pods,
        churn_rate: args.churn,
        seed: args.seed,
        history_size: args.history.max(1),
        bookmark_interval: seconds("bookmark-interval", args.bookmark_interval)?,
        log_interval: seconds("log-interval", args.log_interval)?.max(Duration::from_millis(10)),
        bearer_token: args.token,
        max_streaming_sessions: args.max_streaming_sessions,
        streaming_idle_timeout: seconds("streaming-idle-timeout", args.streaming_idle_timeout)?,
        ..ApiServerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let server = ApiServer::start(config).context("starting the simulated API server")?;
        if let Some(path) = &args.kubeconfig_out {
            server
                .write_kubeconfig(path, &args.context)
                .context("writing the kubeconfig")?;
            eprintln!("kubeconfig written to {}", path.display());
        }
        println!("simulated API server ready at {}", server.url());
        wait_for_signal().await?;
        eprintln!("shutting down");
        server.shutdown();
        anyhow::Ok(())
    })
}

/// The objects of a multi-document YAML file (empty documents skipped).
fn read_objects(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the objects file {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc)
            .with_context(|| format!("parsing the objects file {}", path.display()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
