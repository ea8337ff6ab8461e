//! `simulator`: runs simulated infrastructure from the command line.
//!
//! `simulator apiserver …` runs the simulated Kubernetes API server: it replaces itself with the
//! `sim-apiserver` binary (crate `sim-apiserver`) next to this one, or on `PATH`, passing the
//! arguments on. The server lives in its own crate so that the simulator links no HTTP stack.
//!
//! `simulator run --scenario FILE [--seed S] [--agents M] [--kas N] [--duration 1h] [--report out.json]
//! [--plot out.svg] [--trace out.txt]` runs a scenario in the deterministic simulator, prints a summary
//! and `trace hash: <hex>`, and exits with status 1 if an invariant broke.
//!
//! With `--serve ADDR` it also serves a live view of the run at `http://ADDR/` (replicas, agents,
//! faults on a timeline, invariants; pause, step and run) — see `sim::live`; `--paused` starts it
//! paused, `--speed X` paces it to X× real time, `--hold` keeps serving after the end.
//!
//! `simulator sweep --scenario FILE --seeds 1..50 [--agents M] [--kas N] [--duration D]` runs many seeds,
//! stops at the first violation and prints the command that replays it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use simulator::sim;

/// A run allocates and frees millions of small buffers: mimalloc is much faster at that than the
/// system allocator (see the workspace Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run a simulated Kubernetes API server until interrupted (runs `sim-apiserver`; see
    /// `simulator apiserver --help`).
    #[command(disable_help_flag = true)]
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
    /// Serve a live view of the run at http://ADDR/ (e.g. 127.0.0.1:8080; port 0 picks one and the
    /// address is printed).
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// With --serve: start paused (run, pause and step from the page or POST /control).
    #[arg(long, requires = "serve")]
    paused: bool,
    /// With --serve: simulated seconds per wall-clock second (default: as fast as it goes).
    #[arg(long, value_name = "X", requires = "serve")]
    speed: Option<f64>,
    /// With --serve: keep serving the final state after the run, until interrupted.
    #[arg(long, requires = "serve")]
    hold: bool,
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

/// Arguments for `sim-apiserver`, passed on unchanged (including `--help`).
#[derive(Args, Debug)]
struct ApiserverArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Apiserver(args) = cli.command {
        return run_apiserver(args);
    }
    // The simulator's core logs what individual connections do; by default only errors show.
    let default_filter = "error";
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
    let live = match &args.serve {
        Some(addr) => {
            let live = sim::live::Live::new(sim::live::LiveOptions {
                paused: args.paused,
                speed: args.speed,
            });
            let server = sim::live::serve(addr, &live)?;
            println!("live view: http://{}/", server.addr);
            Some(live)
        }
        None => None,
    };
    let outcome = match &live {
        Some(live) => sim::live::run(scenario, options, live),
        None => sim::run(scenario, options),
    };
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
        hold(&args)?;
        std::process::exit(1);
    }
    println!("all invariants held");
    hold(&args)
}

/// `--hold`: keeps the live view's server (its own thread) up until the process is interrupted.
fn hold(args: &RunArgs) -> anyhow::Result<()> {
    if args.hold {
        println!("serving the final state until interrupted");
        loop {
            std::thread::park();
        }
    }
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

/// Replaces this process with `sim-apiserver ARGS…`: the binary next to this one (as cargo builds
/// and installs them), else the one on `PATH`.
fn run_apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("sim-apiserver")))
        .filter(|p| p.is_file());
    let program = sibling.unwrap_or_else(|| PathBuf::from("sim-apiserver"));
    let err = std::process::Command::new(&program).args(&args.args).exec();
    Err(err).with_context(|| {
        format!(
            "cannot run {}: the simulated API server is the `sim-apiserver` binary \
             (build it with `cargo build -p sim-apiserver`)",
            program.display()
        )
    })
}
