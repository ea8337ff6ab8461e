//! The `kas` binary: `kas [run] --config kas.yaml [overrides]`, and `kas demo …`, which execs the
//! `kas-demo` binary (crate `kas-demo`: it links agentk, the simulated API server and tokio; kas must not).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kas::config::{Config, LogFormat, TlsFilesConfig, parse_duration};
use kas::{Kas, StartOptions};

/// kas, the agent server: agents (agentk) connect to it over TLS; its HTTP API reaches their clusters.
#[derive(Debug, Parser)]
#[command(name = "kas", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

// Parsed once at startup: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run kas (the default).
    Run(RunArgs),
    /// Start kas, N agents and their simulated clusters in one process (a complete local deployment):
    /// runs the `kas-demo` binary with these arguments (`--agents N --state-dir DIR --agent-listen A
    /// --api-listen A --churn R --log-level F`).
    #[command(disable_help_flag = true)]
    Demo {
        /// Passed to `kas-demo` unchanged.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The configuration file (kas.yaml); without it every setting has its default, and relative
    /// paths are relative to --state-dir (or the current directory).
    #[arg(long, env = "KAS_CONFIG")]
    config: Option<PathBuf>,
    /// Address agents connect to (TLS), e.g. 0.0.0.0:8150.
    #[arg(long, env = "KAS_AGENT_LISTEN")]
    agent_listen: Option<SocketAddr>,
    /// Address of the HTTP API, e.g. 127.0.0.1:8080.
    #[arg(long, env = "KAS_API_LISTEN")]
    api_listen: Option<SocketAddr>,
    /// Directory of the embedded authentication backend's files (agents.yaml).
    #[arg(long, env = "KAS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `info,kas=debug`.
    #[arg(long, env = "KAS_LOG_LEVEL")]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, env = "KAS_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// How long shutdown waits for in-flight requests, e.g. 10s.
    #[arg(long, env = "KAS_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Executor threads (default: available parallelism, 2 to 8).
    #[arg(long, env = "KAS_THREADS")]
    threads: Option<usize>,
    /// Serve the HTTP API over HTTPS with this certificate chain (PEM); needs --api-tls-key.
    /// kubectl sends bearer tokens only over HTTPS.
    #[arg(long, env = "KAS_API_TLS_CERT", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// The HTTPS API's private key (PEM); needs --api-tls-cert.
    #[arg(long, env = "KAS_API_TLS_KEY", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Demo { args }) => demo(args),
    }
}

/// The configuration: the file (or defaults), then the command line's overrides.
fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).with_context(|| format!("loading {}", path.display()))?,
        None => {
            let mut c = Config::default();
            let base = args.state_dir.clone().unwrap_or_else(|| PathBuf::from("."));
            c.resolve_paths(&base);
            c
        }
    };
    if let Some(dir) = &args.state_dir {
        config.state_dir = dir.clone();
    }
    if let Some(addr) = args.agent_listen {
        config.agent_listener.address = addr;
    }
    if let Some(addr) = args.api_listen {
        config.api_listener.address = addr;
    }
    if let Some(level) = &args.log_level {
        config.log.level = level.clone();
    }
    match args.log_format.as_deref() {
        Some("json") => config.log.format = LogFormat::Json,
        Some("text") => config.log.format = LogFormat::Text,
        _ => {}
    }
    Ok(config)
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    // A filter tracing would accept but that logs nothing useful ("loud!!") is refused up front.
    config
        .log
        .validate_level()
        .map_err(|e| anyhow::anyhow!("invalid log level: {e}"))?;
    let filter = tracing_subscriber::EnvFilter::try_new(config.log.filter_directives())
        .with_context(|| format!("invalid log level {:?}", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// `kas demo …`: the demo is the `kas-demo` binary (it links agentk and tokio, kas does not). Runs the
/// `kas-demo` next to this executable, or the one on `PATH`, with the same arguments.
fn demo(args: Vec<OsString>) -> anyhow::Result<()> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            Some(
                exe.parent()?
                    .join(format!("kas-demo{}", std::env::consts::EXE_SUFFIX)),
            )
        })
        .filter(|p| p.is_file());
    let program = beside.map_or_else(|| OsString::from("kas-demo"), OsString::from);
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args);
    let missing = |e: std::io::Error| {
        anyhow::anyhow!(
            "kas demo is the kas-demo binary, which is not installed next to kas or on PATH ({e}): \
             run `cargo run --release -p kas-demo -- {}`",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // Only returns on failure.
        Err(missing(cmd.exec()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().map_err(missing)?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    init_logging(&config)?;
    let mut options = StartOptions {
        shutdown_grace: args.shutdown_grace,
        ..StartOptions::default()
    };
    if let Some(threads) = args.threads {
        options.threads = threads;
    }
    if let (Some(cert_file), Some(key_file)) = (&args.api_tls_cert, &args.api_tls_key) {
        options.api_tls = Some(TlsFilesConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: None,
        });
    }
    let running = Kas::start_with(config, options).context("starting kas")?;
    eprintln!(
        "kas ready: agents connect to {}, HTTP API at {} (Kubernetes proxy {})",
        running.agent_addr(),
        running.api_url(),
        running.k8s_proxy_url()
    );
    let signal = kas::signals::wait_for_termination_with_hangup(|| running.reopen_audit_log())
        .context("waiting for signals")?;
    tracing::info!(signal, "termination requested");
    let report = running.shutdown();
    if !report.is_clean() {
        tracing::warn!(?report, "shutdown grace period ended with work left");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_run_and_demo() {
        let cli = Cli::try_parse_from(["kas", "--config", "k.yaml", "--api-listen", "127.0.0.1:1"])
            .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.config, Some(PathBuf::from("k.yaml")));
        // `kas demo` forwards every argument to kas-demo unparsed (its flags live there).
        let cli = Cli::try_parse_from(["kas", "demo", "--agents", "3", "--help", "--state-dir=d"])
            .unwrap();
        match cli.command {
            Some(Command::Demo { args }) => {
                assert_eq!(args, ["--agents", "3", "--help", "--state-dir=d"])
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["kas", "run", "--shutdown-grace", "2s"]).unwrap();
        match cli.command {
            Some(Command::Run(a)) => assert_eq!(a.shutdown_grace, Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["kas", "--shutdown-grace", "soon"]).is_err());
        assert!(Cli::try_parse_from(["kas", "--api-tls-cert", "c.pem"]).is_err());
        let cli = Cli::try_parse_from(["kas", "--api-tls-cert", "c.pem", "--api-tls-key", "k.pem"])
            .unwrap();
        assert_eq!(cli.run.api_tls_key, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn a_log_level_that_logs_nothing_is_refused() {
        let mut c = Config::default();
        c.log.level = "loud!!".into();
        let e = init_logging(&c).expect_err("accepted");
        let text = format!("{e:#}");
        assert!(
            text.contains("loud!!") && text.contains("trace, debug, info"),
            "{text}"
        );
    }

    #[test]
    fn overrides_apply_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kas.yaml");
        std::fs::write(
            &path,
            "api_listener: { address: 127.0.0.1:9999 }\nlog: { level: debug }\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "kas",
            "--config",
            path.to_str().unwrap(),
            "--agent-listen",
            "127.0.0.1:7777",
            "--state-dir",
            "/tmp/state",
            "--log-format",
            "json",
        ])
        .unwrap();
        let c = load_config(&cli.run).unwrap();
        assert_eq!(c.api_listener.address.port(), 9999);
        assert_eq!(c.agent_listener.address.port(), 7777);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/state"));
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.users.file, dir.path().join("users.yaml"));
    }
}
