//! `kas-calibrate --out FILE [--agents N] [--streams M] [--requests R] [--kas PATH] [--name NAME]
//! [--mixed-builds]`: measures the real kas (a process), agentk and sim-apiserver on this machine,
//! prints a table of what it measured and writes the simulator's cost profile (YAML) to FILE.
//! `simulator calibrate …` runs this binary. Build it and kas as users run them (`--release`); a kas
//! built differently from this binary is refused unless `--mixed-builds`. See `kas_demo::calibrate`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kas_demo::calibrate::{Bench, BenchOptions};

/// Measure a cost profile for the simulator from the real programs.
#[derive(Debug, Parser)]
#[command(name = "kas-calibrate", version)]
struct Args {
    /// Where to write the profile (YAML).
    #[arg(long)]
    out: PathBuf,
    /// Idle agent connections (one agent each) for the memory and storm measurements.
    #[arg(long, default_value_t = 2000)]
    agents: usize,
    /// Concurrent watches through kas for the per-stream memory.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Requests at concurrency 1 for the latency.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// The kas binary (default: next to this one, i.e. the same cargo profile).
    #[arg(long)]
    kas: Option<PathBuf>,
    /// Measure a kas built differently (debug/release) from this binary, which runs the agentk
    /// and the fleet; the profile then names both builds.
    #[arg(long)]
    mixed_builds: bool,
    /// The profile's name (default: `<hostname>-<cores>core-<date>`).
    #[arg(long)]
    name: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = tempfile_dir()?;
    let opts = BenchOptions {
        kas_bin: args.kas.clone().unwrap_or_else(BenchOptions::find_kas),
        fleet: args.agents,
        dir: dir.clone(),
        mixed_builds: args.mixed_builds,
    };
    let result = (|| {
        let mut bench = Bench::start(&opts).context("starting kas, agentk and sim-apiserver")?;
        let measured = bench
            .measure(args.streams, args.requests)
            .context("measuring")?;
        bench.shutdown();
        anyhow::Ok(measured)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let measured = result?;
    let date = today();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}core-{date}", hostname(), kas_demo::calibrate::cores()));
    let mut command = format!(
        "simulator calibrate --out {} --agents {} --streams {} --requests {}",
        args.out.display(),
        args.agents,
        args.streams,
        args.requests,
    );
    if let Some(n) = &args.name {
        command.push_str(&format!(" --name {n}"));
    }
    if args.mixed_builds {
        command.push_str(" --mixed-builds");
    }
    let profile = measured.profile(&name, &date, &command);
    println!(
        "calibration on this machine ({} cores, {} build):",
        profile.machine.cores, profile.machine.build
    );
    print!("{}", measured.table());
    let text = format!(
        "# Cost profile measured by `{command}` ({}).\n# Fields not in `measured` are the model's estimates.\n{}",
        profile.machine.note,
        profile.to_yaml()
    );
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    println!("profile {name} written to {}", args.out.display());
    Ok(())
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kas-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `YYYY-MM-DD` (UTC), from `date`.
fn today() -> String {
    command_output("date", &["-u", "+%F"]).unwrap_or_else(|| "unknown".into())
}

fn hostname() -> String {
    command_output("hostname", &[]).unwrap_or_else(|| "host".into())
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}
