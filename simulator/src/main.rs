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
//! `simulator run --replay FILE [--scale 10x] [--scenario FILE] [--seed S]` replays a traffic
//! recording of a real kas (`kas --record FILE`): its agents (times the scale, each clone with its own
//! id), their connects and disconnects, requests and views traffic, in the world the scenario file
//! describes (defaults without one) — see `sim::replay`.
//!
//! `simulator sweep --scenario FILE --seeds 1..50 [--agents M] [--kas N] [--duration D]` runs many seeds,
//! stops at the first violation and prints the command that replays it.
//!
//! `simulator run … --profile FILE` replaces the built-in cost profile (`simulator/profiles/default.yaml`,
//! see `sim::profile`): memory per connection and stream, handshake CPU, request base latency.
//!
//! `simulator calibrate --out FILE [--agents N] [--streams M] [--requests R] [--mixed-builds]`
//! measures a cost profile on this machine from the real programs: it replaces itself with the
//! `kas-calibrate` binary (crate `kas-demo`, which links kas, agentk and sim-apiserver; this crate
//! links none of them) next to this one or on `PATH`, which starts the real `kas` binary beside it
//! (same cargo profile: calibrate release builds, as users run them; a debug/release mix is refused
//! unless `--mixed-builds`) and prints what it measured.
//!
//! `simulator plan --agents 1000,10000 [--profile FILE] [--cores-storm-within 10s] …` prints how many
//! replicas of how much memory and how many cores those agents need, from the cost profile.

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
    /// Measure a cost profile from the real programs on this machine (runs `kas-calibrate`; see
    /// `simulator calibrate --help`).
    #[command(disable_help_flag = true)]
    Calibrate(ApiserverArgs),
    /// Replicas, memory and cores for N agents, from a cost profile.
    Plan(PlanArgs),
}

/// `simulator plan`.
#[derive(Args, Debug)]
struct PlanArgs {
    /// Agent counts, e.g. 1000,10000,50000,100000.
    #[arg(long, value_delimiter = ',', required = true)]
    agents: Vec<usize>,
    /// Cost profile (default: the built-in one).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Tunnel connections per agent.
    #[arg(long, default_value_t = 1)]
    connections_per_agent: usize,
    /// Open streams per connection at peak, besides the views stream (requests, watches).
    #[arg(long, default_value_t = 0.1)]
    streams_per_connection: f64,
    /// Mirror content per agent (its cluster's view rows), KiB.
    #[arg(long, default_value_t = 16)]
    mirror_kib_per_agent: usize,
    /// Connections one replica may hold.
    #[arg(long, default_value_t = 20_000)]
    max_connections_per_replica: usize,
    /// At least this many replicas.
    #[arg(long, default_value_t = 2)]
    min_replicas: usize,
    /// Memory headroom above the model (0.25 = 25 %).
    #[arg(long, default_value_t = 0.25)]
    headroom: f64,
    /// A reconnect storm of every agent must be absorbed within this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_sim_duration)]
    storm_within: Duration,
}

/// What a scenario run can override.
#[derive(Args, Debug, Clone)]
struct ScenarioArgs {
    /// Scenario file (YAML), e.g. simulator/scenarios/faults.yaml (optional with --replay: the
    /// world around the replayed workload; defaults without it).
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
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
        let scenario = match &self.scenario {
            Some(path) => sim::Scenario::load(path)?,
            None => anyhow::bail!("--scenario FILE is required (or --replay FILE with `run`)"),
        };
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
        let mut cmd = format!("simulator run --seed {seed}");
        if let Some(path) = &self.scenario {
            cmd.push_str(&format!(" --scenario {}", path.display()));
        }
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
    /// Step every keepalive PING and PONG through the event queue instead of advancing idle
    /// connections by rounds (slower; the connections end the same, the trace differs).
    #[arg(long)]
    step_keepalive: bool,
    /// Run on one thread: each keepalive round event does its own work at once, instead of
    /// deferring it into batches split over two threads, and the loop processes cluster changes
    /// itself instead of informer worker threads (same trace and report; for comparing).
    #[arg(long)]
    one_thread: bool,
    /// Cost profile (YAML; default: the built-in `simulator/profiles/default.yaml`).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Replay a traffic recording of a real kas (`kas --record FILE`) as the workload.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// With --replay: replay every recorded agent this many times (e.g. 10x: ten times the agents,
    /// each with the recorded agent's timeline).
    #[arg(long, value_name = "Nx", requires = "replay", default_value = "1x")]
    scale: sim::replay::Scale,
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
    if let Command::Calibrate(args) = cli.command {
        return run_calibrate(args);
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
        Command::Calibrate(args) => run_calibrate(args),
        Command::Plan(args) => run_plan(args),
    }
}

fn run_scenario(args: RunArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let (scenario, replay) = match &args.replay {
        Some(file) => {
            let base = match &args.scenario.scenario {
                Some(_) => args.scenario.load(args.seed)?,
                None => sim::Scenario::default()
                    .with_overrides(&sim::Overrides {
                        seed: args.seed,
                        agents: None,
                        kas: args.scenario.kas,
                        duration: None,
                    })
                    .context("the default scenario")?,
            };
            let plan = sim::replay::ReplayPlan::load(file, args.scale, base.seed)?;
            (plan.clone().scenario(base)?, Some(plan))
        }
        None => (args.scenario.load(args.seed)?, None),
    };
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
        profile: load_profile(args.profile.as_deref())?,
        keepalive_rounds: !args.step_keepalive,
        defer_rounds: !args.one_thread,
        informer_threads: if args.one_thread {
            0
        } else {
            sim::world::default_informer_threads()
        },
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
    if let Some(plan) = &replay {
        print!("{}", plan.report(&outcome).summary());
    }
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
        let mut again = args.scenario.replay_command(seed);
        if let Some(file) = &args.replay {
            again.push_str(&format!(
                " --replay {} --scale {}x",
                file.display(),
                args.scale.0
            ));
        }
        println!("replay: {again} --trace trace.txt");
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
    exec_sibling(
        "sim-apiserver",
        &args.args,
        "the simulated API server is the `sim-apiserver` binary (build it with `cargo build -p sim-apiserver`)",
    )
}

/// Replaces this process with `kas-calibrate ARGS…` (crate `kas-demo`), found as `sim-apiserver` is.
fn run_calibrate(args: ApiserverArgs) -> anyhow::Result<()> {
    exec_sibling(
        "kas-calibrate",
        &args.args,
        "calibration runs the `kas-calibrate` binary, which starts the `kas` binary next to it \
         (build them as users run them: `cargo build --release -p kas-demo -p simulator --bins`, \
         then kas on its own, `cargo build --release -p kas --bin kas`)",
    )
}

/// Replaces this process with `name ARGS…`: the binary next to this one, else the one on `PATH`.
fn exec_sibling(name: &str, args: &[OsString], hint: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|p| p.is_file());
    let program = sibling.unwrap_or_else(|| PathBuf::from(name));
    let err = std::process::Command::new(&program).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}: {hint}", program.display()))
}

/// The profile in `path`, or the built-in one.
fn load_profile(path: Option<&std::path::Path>) -> anyhow::Result<sim::CostProfile> {
    Ok(match path {
        Some(p) => sim::CostProfile::load(p)?,
        None => sim::CostProfile::default_profile(),
    })
}

/// `simulator plan`: one table row per agent count.
fn run_plan(args: PlanArgs) -> anyhow::Result<()> {
    let profile = load_profile(args.profile.as_deref())?;
    println!(
        "cost profile {} ({}, {} cores, {} build): {:.1} KiB per connection, {:.1} MiB baseline, \
         {:.0} µs CPU per handshake",
        profile.name,
        profile.date,
        profile.machine.cores,
        profile.machine.build,
        profile.memory.per_connection_bytes as f64 / 1024.0,
        profile.memory.baseline_bytes as f64 / (1024.0 * 1024.0),
        profile.cpu.handshake_us
    );
    println!(
        "{} connection(s) per agent, {} open request streams per connection, {} KiB of mirror per \
         agent, at most {} connections per replica, one replica may fail, {:.0} % memory headroom",
        args.connections_per_agent,
        args.streams_per_connection,
        args.mirror_kib_per_agent,
        args.max_connections_per_replica,
        args.headroom * 100.0
    );
    println!("{}", sim::profile::Plan::HEADER);
    for &agents in &args.agents {
        let q = sim::profile::PlanQuestion {
            agents,
            connections_per_agent: args.connections_per_agent,
            streams_per_connection: args.streams_per_connection,
            mirror_bytes_per_agent: args.mirror_kib_per_agent * 1024,
            max_connections_per_replica: args.max_connections_per_replica,
            min_replicas: args.min_replicas,
            headroom: args.headroom,
            storm_within: args.storm_within,
        };
        println!("{}", profile.plan(&q).row());
    }
    Ok(())
}
