//! The `conformance` binary: `gen-vectors`, `check-vectors`, `agentk --cmd`, `kas --cmd`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Conformance vectors and black-box harness for the agent tunnel protocol.
#[derive(Debug, Parser)]
#[command(name = "conformance", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the vector files from PROTOCOL.md.
    GenVectors {
        /// The specification.
        #[arg(long, default_value_os_t = conformance::vectors::workspace_spec_path())]
        spec: PathBuf,
        /// Where to write frames.json, handshake.json and malformed.json.
        #[arg(long, default_value_os_t = conformance::vectors::workspace_vectors_dir())]
        out: PathBuf,
    },
    /// Play a scripted kas against an agentk started with `sh -c CMD`.
    ///
    /// Placeholders: {kas_address} {kas_url} {kas_host} {kas_port} {token_file} {ca_file}
    /// {kubeconfig} {tls_server_name} {work_dir}.
    Agentk {
        /// The command that starts the agentk under test.
        #[arg(long)]
        cmd: String,
        /// Keep certificates, token, kubeconfig and per-scenario logs here.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Run only scenarios whose name contains this (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// List the scenarios and exit.
        #[arg(long)]
        list: bool,
    },
    /// Play scripted agents and API clients against a kas started with `sh -c CMD`.
    ///
    /// Placeholders: {agent_port} {api_port} {state_dir} {config} (= {state_dir}/kas.yaml).
    Kas {
        /// The command that starts the kas under test.
        #[arg(long)]
        cmd: String,
        /// Keep the state directory and logs here.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Run only scenarios whose name contains this (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// List the scenarios and exit.
        #[arg(long)]
        list: bool,
        /// Seconds kas has to listen on both ports.
        #[arg(long, default_value_t = 60)]
        startup_timeout: u64,
    },
    /// A minimal agent with an injectable fault, for the harness's own tests.
    #[command(hide = true)]
    SelftestAgent {
        #[arg(long)]
        kas_address: String,
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long)]
        ca_file: PathBuf,
        /// The API server k8s-api requests go to.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// One of `conformance::selftest::agent::FAULTS` (none, no-backoff, ...).
        #[arg(long, default_value = "none")]
        fault: conformance::selftest::Fault,
    },
    /// A minimal kas with an injectable fault, for the harness's own tests.
    #[command(hide = true)]
    SelftestKas {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        agent_port: u16,
        #[arg(long)]
        api_port: u16,
        /// One of `conformance::selftest::kas::FAULTS` (none, accept-any-token, ...).
        #[arg(long, default_value = "none")]
        fault: conformance::selftest::kas::Fault,
    },
    /// Check the vector files against the reference implementation (the protocol crate).
    CheckVectors {
        #[arg(long, default_value_os_t = conformance::vectors::workspace_vectors_dir())]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::GenVectors { spec, out } => {
            let generated = conformance::vectors::generate_from_file(&spec)
                .with_context(|| format!("generating vectors from {}", spec.display()))?;
            let written = conformance::vectors::write(&out, &generated)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            println!("{} vectors", generated.len());
            Ok(())
        }
        Command::Agentk {
            cmd,
            work_dir,
            only,
            list,
        } => {
            if list {
                for (name, _) in conformance::agentk_suite::SCENARIOS {
                    println!("{name}");
                }
                return Ok(());
            }
            if let Some(dir) = &work_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let report = conformance::agentk_suite::run(&conformance::agentk_suite::Options {
                cmd,
                work_dir,
                only,
            });
            finish(&report)
        }
        Command::Kas {
            cmd,
            work_dir,
            only,
            list,
            startup_timeout,
        } => {
            if list {
                for (name, _) in conformance::kas_suite::SCENARIOS {
                    println!("{name}");
                }
                return Ok(());
            }
            if let Some(dir) = &work_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let report = conformance::kas_suite::run(&conformance::kas_suite::Options {
                cmd,
                work_dir,
                only,
                startup: std::time::Duration::from_secs(startup_timeout),
            });
            finish(&report)
        }
        Command::SelftestAgent {
            kas_address,
            token_file,
            ca_file,
            kubeconfig,
            fault,
        } => {
            let opts = conformance::selftest::AgentOptions::new(
                &kas_address,
                &token_file,
                &ca_file,
                kubeconfig.as_deref(),
                fault,
            )?;
            conformance::selftest::run_agent(&opts)
        }
        Command::SelftestKas {
            state_dir,
            agent_port,
            api_port,
            fault,
        } => {
            let opts = conformance::selftest::kas::KasOptions::load(
                &state_dir, agent_port, api_port, fault,
            )?;
            conformance::selftest::kas::run_kas(&opts)
        }
        Command::CheckVectors { dir } => {
            let loaded = conformance::vectors::load(&dir)?;
            let mut failed = 0;
            for (name, result) in loaded.check() {
                match result {
                    Ok(()) => println!("PASS {name}"),
                    Err(reason) => {
                        failed += 1;
                        println!("FAIL {name}: {reason}");
                    }
                }
            }
            println!("{} passed, {failed} failed", loaded.len() - failed);
            if failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Prints the summary line; a non-zero exit code if anything failed.
fn finish(report: &conformance::report::Report) -> anyhow::Result<()> {
    println!("{}", report.summary());
    if report.failed() > 0 || report.results.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
