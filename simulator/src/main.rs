//! `simulator`: runs simulated infrastructure from the command line.
//!
//! `simulator apiserver --listen ADDR [--nodes N] [--pods N] [--churn RATE] [--kubeconfig-out FILE]`
//! runs a simulated Kubernetes API server until interrupted.
//!
//! `simulator run --scenario FILE [--seed S] [--agents M] [--kas N] [--duration 1h] [--report out.json]
//! [--plot out.svg] [--trace out.txt]` runs a scenario in the deterministic simulator, prints a summary
//! and `trace hash: <hex>`, and exits with status 1 if an invariant broke.
//!
//! `simulator sweep --scenario FILE --seeds 1..50 [--agents M] [--kas N] [--duration D]` runs many seeds,
//! stops at the first violation and prints the command that replays it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use simulator::apiserver::{ApiServer, ApiServerConfig};
use simulator::sim;

#[derive(Parser, Debug)]
#[command(
    name = "simulator",
    version,
    about = "Simulated infrastructure for tests and demos"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a simulated Kubernetes API server until interrupted.
    Apiserver(ApiserverArgs),
    /// Run a scenario in the deterministic simulator.
    Run(RunArgs),
    /// Run a scenario with many seeds; stop at the first invariant violation.
    Sweep(SweepArgs),
}

/// What a scenario run can override.
#[derive(Args, Debug, Clone)]
struct ScenarioArgs {
    /// Scenario file (YAML), e.g. simulator/scenarios/faults.yaml.
    #[arg(long, value_name = "FILE")]
    scenario: PathBuf,
    /// Number of agents (overrides the scenario).
    #[arg(long, value_name = "M")]
    agents: Option<usize>,
    /// Number of kas replicas (overrides the scenario).
    #[arg(long, value_name = "N")]
    kas: Option<usize>,
    /// Simulated duration, e.g. 10m or 1h (overrides the scenario).
    #[arg(long, value_name = "DURATION", value_parser = parse_sim_duration)]
    duration: Option<Duration>,
}

impl ScenarioArgs {
    fn load(&self, seed: Option<u64>) -> anyhow::Result<sim::Scenario> {
        let scenario = sim::Scenario::load(&self.scenario)?;
        let overrides = sim::Overrides {
            seed,
            agents: self.agents,
            kas: self.kas,
            duration: self.duration,
        };
        Ok(scenario.with_overrides(&overrides)?)
    }

    /// The command line that replays `seed`.
    fn replay_command(&self, seed: u64) -> String {
        let mut cmd = format!(
            "simulator run --scenario {} --seed {seed}",
            self.scenario.display()
        );
        if let Some(a) = self.agents {
            cmd.push_str(&format!(" --agents {a}"));
        }
        if let Some(k) = self.kas {
            cmd.push_str(&format!(" --kas {k}"));
        }
        if let Some(d) = self.duration {
            cmd.push_str(&format!(" --duration {}s", d.as_secs_f64()));
        }
        cmd
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Seed (overrides the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the capacity report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the capacity plot as SVG to FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Write the event trace (one line per event) to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct SweepArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Seeds: `1..50` (inclusive), `7`, or `1,5,9`.
    #[arg(long, value_parser = parse_seeds)]
    seeds: Seeds,
}

#[derive(Debug, Clone)]
struct Seeds(Vec<u64>);

fn parse_seeds(s: &str) -> Result<Seeds, String> {
    let bad = || format!("invalid seeds {s:?}: expected e.g. 1..50, 7 or 1,5,9");
    let s = s.trim();
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b
            .trim()
            .trim_start_matches('=')
            .parse()
            .map_err(|_| bad())?;
        if b < a || b - a > 1_000_000 {
            return Err(bad());
        }
        return Ok(Seeds((a..=b).collect()));
    }
    s.split(',')
        .map(|x| x.trim().parse::<u64>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()
        .map(Seeds)
}

fn parse_sim_duration(s: &str) -> Result<Duration, String> {
    sim::units::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
struct ApiserverArgs {
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
    /// Change events retained for watch resumption (older versions get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 15.0)]
    bookmark_interval: f64,
    /// Seconds between fake log lines of each running container.
    #[arg(long, default_value_t = 1.0)]
    log_interval: f64,
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The simulator's core logs what individual connections do; by default only errors show.
    let default_filter = match cli.command {
        Command::Apiserver(_) => "info",
        Command::Run(_) | Command::Sweep(_) => "error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Apiserver(args) => run_apiserver(args),
        Command::Run(args) => run_scenario(args),
        Command::Sweep(args) => run_sweep(args),
    }
}

fn run_scenario(args: RunArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let scenario = args.scenario.load(args.seed)?;
    let seed = scenario.seed;
    let trace = match &args.trace {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating the trace file {}", path.display()))?;
            sim::TraceSink::Writer(Box::new(std::io::BufWriter::new(file)))
        }
        None => sim::TraceSink::None,
    };
    let options = sim::RunOptions {
        trace,
        progress: !args.quiet && std::io::stderr().is_terminal(),
        fast_exit: true,
    };
    let outcome = sim::run(scenario, options);
    print!("{}", outcome.report.summary());
    if let Some(e) = &outcome.trace_error {
        anyhow::bail!("writing the trace failed: {e}");
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&outcome.report).context("encoding the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, sim::plot::svg(&outcome.report))
            .with_context(|| format!("writing the plot {}", path.display()))?;
        println!("plot written to {}", path.display());
    }
    println!("trace hash: {:016x}", outcome.trace_hash);
    if let Some(v) = &outcome.violation {
        println!("VIOLATION: {v}");
        println!(
            "replay: {} --trace trace.txt",
            args.scenario.replay_command(seed)
        );
        std::process::exit(1);
    }
    println!("all invariants held");
    Ok(())
}

fn run_sweep(args: SweepArgs) -> anyhow::Result<()> {
    // Validate once up front so a bad file fails before the first seed.
    args.scenario.load(None)?;
    let n = args.seeds.0.len();
    let started = std::time::Instant::now();
    for (done, &seed) in args.seeds.0.iter().enumerate() {
        let scenario = args.scenario.load(Some(seed))?;
        let outcome = sim::run(scenario, sim::RunOptions::default());
        let r = &outcome.report;
        println!(
            "seed {seed}: {} ({} events, {} requests, {:.1}s wall, trace hash {:016x})",
            if outcome.violation.is_some() {
                "VIOLATION"
            } else {
                "ok"
            },
            outcome.events,
            r.requests.issued,
            outcome.wall.as_secs_f64(),
            outcome.trace_hash
        );
        if let Some(v) = &outcome.violation {
            println!("{v}");
            println!(
                "replay: {} --trace trace.txt",
                args.scenario.replay_command(seed)
            );
            println!("{} of {n} seeds passed before the violation", done);
            std::process::exit(1);
        }
    }
    println!(
        "all {n} seeds passed ({:.1}s wall)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    if !(args.churn.is_finite() && args.churn >= 0.0) {
        anyhow::bail!("--churn must be a non-negative number of changes per second");
    }
    let config = ApiServerConfig {
        listen: args.listen,
        nodes: args.nodes,
        pods: args.pods,
        churn_rate: args.churn,
        seed: args.seed,
        history_size: args.history.max(1),
        bookmark_interval: seconds("bookmark-interval", args.bookmark_interval)?,
        log_interval: seconds("log-interval", args.log_interval)?.max(Duration::from_millis(10)),
        bearer_token: args.token,
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

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
