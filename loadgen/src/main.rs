//! `shardline-loadgen`: load a Shardline broker and report throughput and latency.
//!
//! ```text
//! shardline-loadgen [--addr HOST:PORT] [--driver shardline|nats|redis] [--duration 10s]
//!                   [--warmup 2s] [--rate MSGS_PER_S] [--producers N] [--consumers N]
//!                   [--partitions N] [--message-size BYTES] [--batch N]
//!                   [--acks none|leader|durable] [--workload FILE.toml] [--json FILE]
//!                   [--report DIR] [--data-dir DIR] [--shards N] [--inflight N] [--no-pin]
//! shardline-loadgen compare A.json B.json ... [--report DIR]
//! ```
//! Exit status: 0 on success, 1 if the run could not be carried out, 2 on bad usage, 3 if it
//! ran but failed its checks (errors, lost, duplicated or reordered messages).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use shardline_loadgen::driver::{self, DriverKind, DriverOptions};
use shardline_loadgen::result::RunResult;
use shardline_loadgen::runner::{self, RunOptions};
use shardline_loadgen::workload::{self, AckLevel, WorkloadSpec};
use shardline_loadgen::{TOPIC, compare, report};

/// Exit status of a run that completed but failed its checks.
const EXIT_CHECKS_FAILED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "shardline-loadgen",
    version,
    about = "Load generator for Shardline: throughput, publish and end-to-end latency",
    long_about = "Load generator for Shardline. Without --addr it starts an embedded engine on a \
                  temporary directory. Flags override values from --workload.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print runs side by side (ratios against the first); with --report, chart them together.
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// JSON results written by --json or --report.
    #[arg(required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Write index.html and compare-spectrum.svg into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Broker address; without it an embedded Shardline engine runs in this process. A
    /// Shardline cluster: one node's address (the others are discovered) or a list,
    /// HOST:PORT,HOST:PORT; the client follows each partition's leader.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    addr: Option<String>,
    /// Shardline: replicas of each partition of the topic the run creates (a cluster) [default: 1].
    #[arg(long, value_name = "R", default_value_t = 1)]
    replicas: u32,
    /// Broker family.
    #[arg(long, value_enum, default_value = "shardline")]
    driver: DriverKind,
    /// Measured time after the warm-up [default: 10s].
    #[arg(long, value_parser = workload::parse_duration)]
    duration: Option<Duration>,
    /// Time before measuring starts [default: 2s].
    #[arg(long, value_parser = workload::parse_duration)]
    warmup: Option<Duration>,
    /// Offered load in messages per second across producers (open loop); omit for closed loop.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<u64>,
    /// Producer threads [default: 2].
    #[arg(long)]
    producers: Option<u32>,
    /// Consumer threads (0 = produce only) [default: 2].
    #[arg(long)]
    consumers: Option<u32>,
    /// Partitions of the topic [default: 4].
    #[arg(long)]
    partitions: Option<u32>,
    /// Bytes per message, at least 16 [default: 1024].
    #[arg(long, value_name = "BYTES")]
    message_size: Option<u64>,
    /// Messages per batch [default: 64].
    #[arg(long)]
    batch: Option<u32>,
    /// Acknowledgement level [default: durable].
    #[arg(long, value_enum)]
    acks: Option<AckLevel>,
    /// Batches in flight per producer [default: 16].
    #[arg(long)]
    inflight: Option<u32>,
    /// Engine shards of the embedded broker (0 = one per core) [default: 0].
    #[arg(long)]
    shards: Option<u32>,
    /// How long to wait for outstanding acks and lagging consumers at the end [default: 10s].
    #[arg(long, value_parser = workload::parse_duration)]
    drain_timeout: Option<Duration>,
    /// Do not pin producer and consumer threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Shardline only: compress each batch with none, lz4 or zstd.
    #[arg(long, value_name = "CODEC", default_value = "none")]
    compression: shardline_engine::batch::compress::Codec,
    /// Workload file (TOML); flags override its values.
    #[arg(long, value_name = "FILE.toml")]
    workload: Option<PathBuf>,
    /// Write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write result.json, index.html and SVG charts into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Data directory of the embedded engine (default: a temporary one, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl RunArgs {
    fn overrides(&self) -> WorkloadSpec {
        WorkloadSpec {
            duration: self.duration,
            warmup: self.warmup,
            rate: self.rate,
            producers: self.producers,
            consumers: self.consumers,
            partitions: self.partitions,
            message_size: self.message_size,
            batch: self.batch,
            acks: self.acks,
            inflight: self.inflight,
            shards: self.shards,
            drain_timeout: self.drain_timeout,
            pin_threads: self.no_pin.then_some(false),
            ..WorkloadSpec::default()
        }
    }
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let base = match &args.workload {
        Some(path) => WorkloadSpec::from_file(path)?,
        None => WorkloadSpec::default(),
    };
    let (w, notes) = base.overridden_by(args.overrides()).resolve()?;
    for n in notes {
        eprintln!("note: {n}");
    }
    let opts = DriverOptions {
        kind: args.driver,
        addr: args.addr.clone(),
        data_dir: args.data_dir.clone(),
        shards: w.shards,
        inflight: w.inflight,
        compression: args.compression,
        replicas: args.replicas,
    };
    let driver = driver::open(&opts).context("opening the broker")?;
    eprintln!("running {}", w.describe());
    let run_opts = RunOptions {
        progress: std::io::stderr().is_terminal(),
    };
    let outcome = runner::run(&w, driver.as_ref(), TOPIC, run_opts);
    let stopped = driver.shutdown();
    let result = outcome.context("running the workload")?;
    stopped.context("shutting the broker down")?;
    finish(&result, args)
}

fn finish(result: &RunResult, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    result.write_table(&mut out)?;
    if let Some(path) = &args.json {
        result
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        report::write_run_report(dir, result)?;
        eprintln!("report written to {}", dir.join("index.html").display());
    }
    let failures = result.failures();
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! LOAD TEST FAILED ITS CHECKS");
    for f in &failures {
        eprintln!("!!!   {f}");
    }
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    Ok(ExitCode::from(EXIT_CHECKS_FAILED))
}

fn compare_runs(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let mut runs = Vec::new();
    for path in &args.files {
        let r = RunResult::read_json(path).map_err(anyhow::Error::msg)?;
        let label = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        runs.push((label, r));
    }
    compare::write_table(&mut std::io::stdout().lock(), &runs)?;
    if let Some(dir) = &args.report {
        report::write_compare_report(dir, &runs)?;
        eprintln!("comparison written to {}", dir.join("index.html").display());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let outcome = match &cli.command {
        Some(Command::Compare(c)) => compare_runs(c),
        None => run(&cli.run),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
