//! The `kas` binary: `kas [run] --config kas.yaml [overrides]`; `kas token create|list|revoke`, which
//! edit the agents file (a new token is printed once, only its digest is stored); and `kas demo …`,
//! which execs the `kas-demo` binary (crate `kas-demo`: it links agentk, the simulated API server and
//! tokio; kas must not).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kas::auth::{AgentsFile, TokenInfo};
use kas::config::{AuthBackendConfig, Config, LogFormat, TlsFilesConfig, parse_duration};
use kas::{Kas, StartOptions};

/// kas, the agent server: agents (agentk) connect to it over TLS; its HTTP API reaches their clusters.
#[derive(Debug, Parser)]
#[command(name = "kas", version = kas::VERSION, args_conflicts_with_subcommands = true)]
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
    /// Create, list and revoke agent tokens in the agents file. A running kas re-reads the file
    /// within seconds and closes the connections of revoked tokens.
    #[command(subcommand)]
    Token(TokenCommand),
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

/// `kas token …`.
#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Add a new token to an agent (an agent may have several: rotate by creating one, switching the
    /// agent to it, then revoking the old one). Prints the token once, on stdout (or writes it to
    /// --token-file); only its SHA-256 is stored.
    Create {
        #[command(flatten)]
        file: AgentsFileArgs,
        /// The agent's id.
        #[arg(long)]
        agent: u64,
        /// Add the agent with this name if the file does not list it.
        #[arg(long)]
        name: Option<String>,
        /// A note shown by `kas token list`.
        #[arg(long)]
        description: Option<String>,
        /// Write the token to this new file (owner-only) instead of stdout.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// List tokens: agent, token id, created, description (never token material).
    List {
        #[command(flatten)]
        file: AgentsFileArgs,
        /// Only this agent's tokens.
        #[arg(long)]
        agent: Option<u64>,
        /// Output format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
    /// Remove a token: it no longer authenticates, and a running kas closes the connections it
    /// authenticated (GOAWAY, then a short grace).
    Revoke {
        #[command(flatten)]
        file: AgentsFileArgs,
        /// The agent's id.
        #[arg(long)]
        agent: u64,
        /// The token's id (from `kas token list`).
        token_id: String,
    },
}

/// Which agents file `kas token` edits: --agents-file, or the one kas's configuration names.
#[derive(Debug, Args)]
struct AgentsFileArgs {
    /// The agents file (default: the one --config names, or <state-dir>/agents.yaml).
    #[arg(long, env = "KAS_AGENTS_FILE")]
    agents_file: Option<PathBuf>,
    /// kas's configuration file (for the agents file it names).
    #[arg(long, env = "KAS_CONFIG")]
    config: Option<PathBuf>,
    /// kas's state directory (the embedded backend's agents.yaml).
    #[arg(long, env = "KAS_STATE_DIR")]
    state_dir: Option<PathBuf>,
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
    /// Record the traffic (connections, request classes and sizes, views; no secrets) to FILE,
    /// for `simulator run --replay FILE` (overrides `recording.path`).
    #[arg(long, env = "KAS_RECORD", value_name = "FILE")]
    record: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Demo { args }) => demo(args),
        Some(Command::Token(command)) => token(command),
    }
}

/// The agents file `kas token` works on.
fn agents_file_path(args: &AgentsFileArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.agents_file {
        return Ok(path.clone());
    }
    let config = base_config(args.config.as_deref(), args.state_dir.as_deref())?;
    match &config.agent_auth.backend {
        AuthBackendConfig::Embedded => Ok(config.state_dir.join(kas::auth::AGENTS_FILE_NAME)),
        AuthBackendConfig::AgentsFile(path) => Ok(path.clone()),
        AuthBackendConfig::Gitlab(_) => anyhow::bail!(
            "kas authenticates agents with GitLab: manage their tokens in GitLab, not with kas token"
        ),
    }
}

/// `kas token create|list|revoke`.
fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            file,
            agent,
            name,
            description,
            token_file,
        } => {
            let path = agents_file_path(&file)?;
            // Refuse an existing --token-file before touching the agents file.
            let out = token_file.as_deref().map(create_secret_file).transpose()?;
            let new = AgentsFile::create_token(
                &path,
                agent,
                name.as_deref(),
                description.as_deref(),
                std::time::SystemTime::now(),
            )?;
            match (out, &token_file) {
                (Some(mut out), Some(token_path)) => {
                    use std::io::Write as _;
                    writeln!(out, "{}", new.token)
                        .and_then(|()| out.sync_all())
                        .with_context(|| format!("writing {}", token_path.display()))?;
                    eprintln!(
                        "created token {} for agent {} ({}) in {}; token written to {}",
                        new.info.token_id,
                        agent,
                        new.info.agent_name,
                        path.display(),
                        token_path.display()
                    );
                }
                _ => {
                    eprintln!(
                        "created token {} for agent {} ({}) in {}; it is shown once:",
                        new.info.token_id,
                        agent,
                        new.info.agent_name,
                        path.display()
                    );
                    println!("{}", new.token);
                }
            }
        }
        TokenCommand::List {
            file,
            agent,
            output,
        } => {
            let path = agents_file_path(&file)?;
            let tokens: Vec<TokenInfo> = AgentsFile::list_tokens(&path)?
                .into_iter()
                .filter(|t| agent.is_none_or(|a| t.agent_id == a))
                .collect();
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                println!("AGENT\tNAME\tTOKEN ID\tCREATED\tDESCRIPTION");
                for t in &tokens {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        t.agent_id,
                        t.agent_name,
                        t.token_id,
                        t.created.as_deref().unwrap_or("-"),
                        t.description.as_deref().unwrap_or("")
                    );
                }
            }
        }
        TokenCommand::Revoke {
            file,
            agent,
            token_id,
        } => {
            let path = agents_file_path(&file)?;
            let info = AgentsFile::revoke_token(&path, agent, &token_id)?;
            let left = AgentsFile::list_tokens(&path)?
                .iter()
                .filter(|t| t.agent_id == agent)
                .count();
            eprintln!(
                "revoked token {} of agent {} ({}); {left} token(s) left; a running kas closes its \
                 connections within {}s",
                info.token_id,
                agent,
                info.agent_name,
                kas::connection_tokens::REVOCATION_BOUND.as_secs()
            );
            if left == 0 {
                eprintln!("warning: agent {agent} has no token left and cannot connect");
            }
        }
    }
    Ok(())
}

/// Creates a new file readable by its owner only (refusing to replace one).
fn create_secret_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// The configuration file (or defaults, relative to `state_dir`), with `state_dir` overriding.
fn base_config(
    file: Option<&std::path::Path>,
    state_dir: Option<&std::path::Path>,
) -> anyhow::Result<Config> {
    let mut config = match file {
        Some(path) => Config::load(path).with_context(|| format!("loading {}", path.display()))?,
        None => {
            let mut c = Config::default();
            c.resolve_paths(state_dir.unwrap_or(std::path::Path::new(".")));
            c
        }
    };
    if let Some(dir) = state_dir {
        config.state_dir = dir.to_owned();
    }
    Ok(config)
}

/// The configuration: the file (or defaults), then the command line's overrides.
fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = base_config(args.config.as_deref(), args.state_dir.as_deref())?;
    if let Some(addr) = args.agent_listen {
        config.agent_listener.address = addr;
    }
    if let Some(addr) = args.api_listen {
        config.api_listener.address = addr;
    }
    if let Some(level) = &args.log_level {
        config.log.level = level.clone();
    }
    if let Some(file) = &args.record {
        config.recording.path = Some(file.clone());
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
    fn token_subcommands_parse_and_find_the_agents_file() {
        let cli = Cli::try_parse_from([
            "kas",
            "token",
            "revoke",
            "--agent",
            "2",
            "ab12",
            "--state-dir",
            "/s",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Token(TokenCommand::Revoke {
                file,
                agent,
                token_id,
            })) => {
                assert_eq!((agent, token_id.as_str()), (2, "ab12"));
                assert_eq!(
                    agents_file_path(&file).unwrap(),
                    PathBuf::from("/s/agents.yaml")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["kas", "token", "create"]).is_err(),
            "--agent is required"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kas.yaml");
        std::fs::write(&path, "agent_auth: { backend: { agents_file: a.yaml } }\n").unwrap();
        let file = AgentsFileArgs {
            agents_file: None,
            config: Some(path.clone()),
            state_dir: None,
        };
        assert_eq!(agents_file_path(&file).unwrap(), dir.path().join("a.yaml"));
        std::fs::write(&path, "agent_auth: { backend: { gitlab: { url: 'https://gitlab.example.com', secret_file: s } } }\n").unwrap();
        let e = agents_file_path(&file).unwrap_err().to_string();
        assert!(e.contains("GitLab"), "{e}");
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
