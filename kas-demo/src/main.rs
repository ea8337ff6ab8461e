//! The `kas-demo` binary: `kas-demo [--agents N] [--replicas R] [--state-dir DIR] [--agent-listen A] [--api-listen A]
//! [--churn R] [--log-level F]` starts kas, N agents and their simulated clusters in one process, writes
//! `DIR/kubeconfig` (contexts `agent-1`, …), prints `ready` and a banner, and runs until SIGINT/SIGTERM.
//! `kas demo …` execs this binary with the same arguments.
//!
//! `kas-demo webhook --url U --ca-file F --secret-file S --project P` is what the demo repositories'
//! `post-receive` hooks run: it tells kas about the push (GitLab's push event on
//! `POST /api/v1/webhooks/git`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kas::config::Config;
use kas_demo::{Demo, DemoOptions};

/// Start kas, N agents and their simulated clusters in one process (a complete local deployment).
#[derive(Debug, Parser)]
#[command(name = "kas-demo", version, args_conflicts_with_subcommands = true)]
struct DemoArgs {
    #[command(subcommand)]
    command: Option<DemoCommand>,
    /// Number of agents (each with its own simulated cluster).
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Where certificates, tokens, configuration and the kubeconfig are generated.
    #[arg(long, default_value = "demo-state")]
    state_dir: PathBuf,
    /// kas's agent listener (TLS).
    #[arg(long, default_value = "127.0.0.1:8150")]
    agent_listen: SocketAddr,
    /// kas's HTTP API (HTTPS with the demo CA).
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_listen: SocketAddr,
    /// The demo's git:// server (config and manifests repositories). Anyone who reaches it can push:
    /// keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:9418")]
    git_listen: SocketAddr,
    /// kas replicas on one Redis (the demo starts `redis-server`; Debian package `redis-server`).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Churn steps per second in each simulated cluster.
    #[arg(long, default_value_t = 0.5)]
    churn: f64,
    /// Log filter.
    #[arg(long, env = "KAS_LOG_LEVEL", default_value = "warn,kas=info")]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum DemoCommand {
    /// Tell kas about a push (run by the demo repositories' post-receive hooks; reads
    /// `<old> <new> <ref>` lines on stdin).
    Webhook {
        /// kas's `…/api/v1/webhooks/git`.
        #[arg(long)]
        url: String,
        /// The CA certificate of kas's API.
        #[arg(long)]
        ca_file: PathBuf,
        /// The file holding the shared secret.
        #[arg(long)]
        secret_file: PathBuf,
        /// The repository's project path (`path_with_namespace`).
        #[arg(long)]
        project: String,
    },
}

/// Posts one push event per updated ref. A failure is reported, never fatal to the push.
fn webhook(url: &str, ca_file: &Path, secret_file: &Path, project: &str) -> anyhow::Result<()> {
    use kas_demo::webhook::{WebhookClient, describe, parse_updates, push_event};
    let updates = parse_updates(std::io::stdin().lock())?;
    let client = WebhookClient::new(url, ca_file, secret_file)?;
    for update in &updates {
        match client.post(&push_event(project, update)) {
            Ok((status, body)) => println!("{}", describe(project, update, status, &body)),
            Err(e) => println!("kas: {e} (kas will see the push at its next poll)"),
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = DemoArgs::parse();
    if let Some(DemoCommand::Webhook {
        url,
        ca_file,
        secret_file,
        project,
    }) = &args.command
    {
        if let Err(e) = webhook(url, ca_file, secret_file, project) {
            println!("kas: webhook not sent: {e:#} (kas will see the push at its next poll)");
        }
        return Ok(());
    }
    init_logging(&args.log_level)?;
    let mut opts = DemoOptions::new(args.agents, args.state_dir);
    opts.agent_listen = args.agent_listen;
    opts.api_listen = args.api_listen;
    opts.churn = args.churn;
    opts.git_listen = args.git_listen;
    opts.replicas = args.replicas.max(1);
    let demo = Demo::start(&opts).context("starting the demo")?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        writeln!(out, "{}", demo.banner())?;
        out.flush()?;
    }
    let signal = kas::signals::wait_for_termination().context("waiting for signals")?;
    tracing::info!(signal, "termination requested");
    demo.shutdown();
    Ok(())
}

/// Text logs on stderr with kas's filter rules (a level that would log nothing useful is refused).
fn init_logging(level: &str) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.log.level = level.to_owned();
    config
        .log
        .validate_level()
        .map_err(|e| anyhow::anyhow!("invalid log level: {e}"))?;
    let filter = tracing_subscriber::EnvFilter::try_new(config.log.filter_directives())
        .with_context(|| format!("invalid log level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_the_demo_flags() {
        let a = DemoArgs::try_parse_from(["kas-demo", "--agents", "3"]).unwrap();
        assert_eq!(a.agents, 3);
        assert_eq!(a.state_dir, PathBuf::from("demo-state"));
        assert_eq!(a.agent_listen.port(), 8150);
        assert_eq!(a.api_listen.port(), 8080);
        let a = DemoArgs::try_parse_from([
            "kas-demo",
            "--state-dir",
            "/tmp/d",
            "--agent-listen",
            "127.0.0.1:1",
            "--api-listen",
            "127.0.0.1:2",
            "--churn",
            "0",
        ])
        .unwrap();
        assert_eq!(a.state_dir, PathBuf::from("/tmp/d"));
        assert_eq!((a.agent_listen.port(), a.api_listen.port()), (1, 2));
        assert_eq!(a.churn, 0.0);
        assert!(DemoArgs::try_parse_from(["kas-demo", "--agents", "many"]).is_err());
        assert!(DemoArgs::try_parse_from(["kas-demo", "--bogus"]).is_err());
        assert_eq!(a.git_listen.port(), 9418);
        let w = DemoArgs::try_parse_from([
            "kas-demo",
            "webhook",
            "--url",
            "https://127.0.0.1:8080/api/v1/webhooks/git",
            "--ca-file",
            "ca.pem",
            "--secret-file",
            "webhook.secret",
            "--project",
            "config",
        ])
        .unwrap();
        assert!(
            matches!(w.command, Some(DemoCommand::Webhook { ref project, .. }) if project == "config")
        );
    }

    #[test]
    fn a_log_level_that_logs_nothing_is_refused() {
        let e = init_logging("loud!!").expect_err("accepted");
        assert!(format!("{e:#}").contains("loud!!"), "{e:#}");
    }
}
