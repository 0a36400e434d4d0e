//! Yardstick: the targets of the storage-engine issue, there being no peer to run beside it:
//! an idle engine uses < 1% of one core, and an idle partition costs < 64 KiB of memory.
//!
//! Opens an engine (default shard count: one per usable core), measures its resident memory,
//! creates one topic of `--partitions` partitions (each one an open segment file), measures
//! again, then measures the process's CPU time (`getrusage(RUSAGE_SELF)`) over an idle window
//! with no traffic at all. Then it shuts the engine down, counts the descriptors still open,
//! and times a restart: a child process (this binary with `--open-existing`) opens the same
//! directory and recovers every partition. A child, because a restart is a new process, and
//! because reopening in the same process would also need the descriptors the first engine
//! failed to release (docs/performance.md, "Idle costs").
//!
//! Run: `cargo run --release -p shardline-bench --bin idle_bench -- --partitions 10000 [--json]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shardline_bench::{
    bench_dir, open_fd_count, print_json_line, process_cpu_time, resident_bytes,
};
use shardline_engine::{Engine, EngineConfig, TopicConfig};

#[derive(Parser, Debug)]
#[command(about = "CPU and memory cost of idle Shardline partitions")]
struct Args {
    /// Partitions to create (one topic).
    #[arg(long, default_value_t = 1000)]
    partitions: u32,
    /// Length of the idle window in seconds.
    #[arg(long, default_value_t = 10.0)]
    idle_seconds: f64,
    /// Seconds to wait after creating the partitions before the idle window starts.
    #[arg(long, default_value_t = 1.0)]
    settle_seconds: f64,
    /// Shards (0 = one per usable core, the engine default).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Give up on the restart (recovery of all partitions) after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    reopen_timeout_seconds: f64,
    /// Directory on the disk under test (a fresh subdirectory is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the result as one JSON object on stdout (the human-readable line goes to stderr).
    #[arg(long)]
    json: bool,
    /// Internal: open the engine in this existing data directory, print the open time as JSON
    /// and exit (the restart measurement runs in a child process).
    #[arg(long, hide = true)]
    open_existing: Option<PathBuf>,
}

fn config_for(dir: &Path, shards: usize) -> EngineConfig {
    EngineConfig {
        shards,
        ..EngineConfig::with_data_dir(dir)
    }
}

/// Child-process mode: open, check the last partition, shut down, print one JSON line.
fn open_existing(dir: &Path, args: &Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let engine = Engine::open(config_for(dir, args.shards))?;
    let open = t0.elapsed();
    let last = args.partitions.saturating_sub(1);
    let recovered = engine.describe_partition("idle", last).is_ok();
    let fds = open_fd_count();
    engine.shutdown()?;
    print_json_line(&serde_json::json!({
        "open_seconds": open.as_secs_f64(),
        "recovered": recovered,
        "fds": fds,
    }));
    Ok(())
}

/// What the restart in a child process found.
struct Restart {
    open_seconds: f64,
    recovered: bool,
    fds: u64,
}

fn restart_in_child(dir: &Path, args: &Args) -> anyhow::Result<Restart> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--open-existing")
        .arg(dir)
        .args(["--partitions", &args.partitions.to_string()])
        .args(["--shards", &args.shards.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the restart child")?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.reopen_timeout_seconds);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the restart did not finish within {} s",
                args.reopen_timeout_seconds
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("the restart child failed: {}", out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("restart output")?;
    Ok(Restart {
        open_seconds: v["open_seconds"].as_f64().unwrap_or(f64::NAN),
        recovered: v["recovered"].as_bool().unwrap_or(false),
        fds: v["fds"].as_u64().unwrap_or(0),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.open_existing {
        return open_existing(dir, &args);
    }
    anyhow::ensure!(args.partitions > 0, "--partitions must be positive");
    let (dir, _guard) = bench_dir(args.dir.as_deref())?;
    let fds_at_start = open_fd_count();

    let t_open = Instant::now();
    let engine = Engine::open(config_for(&dir, args.shards))?;
    let empty_open = t_open.elapsed();
    let shards = engine.shard_count();
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = resident_bytes()?;
    let fds_before = open_fd_count();

    let t_create = Instant::now();
    engine.create_topic("idle", TopicConfig::with_partitions(args.partitions))?;
    let create = t_create.elapsed();
    std::thread::sleep(Duration::from_secs_f64(args.settle_seconds));
    let rss_after = resident_bytes()?;
    let fds_after = open_fd_count();
    let per_partition_bytes =
        rss_after.saturating_sub(rss_before) as f64 / f64::from(args.partitions);

    let window = Duration::from_secs_f64(args.idle_seconds);
    let cpu0 = process_cpu_time();
    let wall0 = Instant::now();
    std::thread::sleep(window);
    let cpu = process_cpu_time().saturating_sub(cpu0);
    let wall = wall0.elapsed();
    let idle_core_percent = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    let rss_idle_end = resident_bytes()?;

    engine.shutdown()?;
    drop(engine);
    std::thread::sleep(Duration::from_millis(200));
    // Descriptors the engine still holds after a clean shutdown (0 if it releases them all).
    let fds_leaked = open_fd_count().saturating_sub(fds_at_start);
    let restart = restart_in_child(&dir, &args);
    let restart_text = match &restart {
        Ok(r) => format!(
            "restart {:.2} s (child: {} fds, recovered: {})",
            r.open_seconds, r.fds, r.recovered
        ),
        Err(e) => format!("restart FAILED: {e}"),
    };

    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let line = format!(
        "idle_bench: {} partitions on {shards} shards | idle CPU {idle_core_percent:.3}% of one \
         core ({:.1} ms in {:.1} s) | memory {:.1} KiB per partition (RSS {:.1} -> {:.1} MiB, \
         {:.1} MiB at the end of the idle window) | open fds {fds_before} -> {fds_after}, \
         {fds_leaked} still open after shutdown | create {:.2} s (empty engine open {:.0} ms) | \
         {restart_text}",
        args.partitions,
        cpu.as_secs_f64() * 1000.0,
        wall.as_secs_f64(),
        per_partition_bytes / 1024.0,
        mib(rss_before),
        mib(rss_after),
        mib(rss_idle_end),
        create.as_secs_f64(),
        empty_open.as_secs_f64() * 1000.0,
    );
    if args.json {
        eprintln!("{line}");
        let (restart_seconds, recovered) = match &restart {
            Ok(r) => (Some(r.open_seconds), r.recovered),
            Err(_) => (None, false),
        };
        print_json_line(&serde_json::json!({
            "bench": "idle",
            "partitions": args.partitions,
            "shards": shards,
            "idle_seconds": wall.as_secs_f64(),
            "idle_cpu_ms": cpu.as_secs_f64() * 1000.0,
            "idle_core_percent": (idle_core_percent * 1000.0).round() / 1000.0,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "rss_idle_end_bytes": rss_idle_end,
            "bytes_per_partition": per_partition_bytes.round(),
            "fds_before": fds_before,
            "fds_after": fds_after,
            "fds_leaked_after_shutdown": fds_leaked,
            "create_seconds": create.as_secs_f64(),
            "empty_open_seconds": empty_open.as_secs_f64(),
            "restart_seconds": restart_seconds,
            "recovered": recovered,
        }));
    } else {
        println!("{line}");
    }
    match restart {
        Ok(r) if r.recovered => Ok(()),
        Ok(_) => bail!(
            "the restarted engine did not find partition {}",
            args.partitions - 1
        ),
        Err(e) => Err(e),
    }
}
