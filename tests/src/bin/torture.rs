//! Fault-injection harness: verifying producers and consumers against a real `shardline serve`
//! while it is killed, paused, torn, cut off, stalled, flooded and filled up
//! (docs/reliability.md). Exit status 0 = no invariant violated, 1 = the run could not be
//! carried out, 3 = violations (listed on stderr and in the JSON report).
//!
//! cargo run --release -p shardline-tests --bin torture -- --minutes 30 --json soak.json

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shardline_tests::torture::{self, Config, Fault, Report};

#[derive(Parser, Debug)]
#[command(about = "Shardline fault-injection harness")]
struct Args {
    /// Run random faults for this many minutes (a soak).
    #[arg(long, conflicts_with = "cycles")]
    minutes: Option<f64>,
    /// Run a fixed schedule of this many fault cycles (at least --kill-cycles kills and every
    /// other fault once).
    #[arg(long)]
    cycles: Option<usize>,
    #[arg(long, default_value_t = 10)]
    kill_cycles: usize,
    /// Faults to inject, comma separated.
    #[arg(
        long,
        default_value = "kill,pause,torn,netdrop,netdelay,stall,burst",
        value_delimiter = ','
    )]
    faults: Vec<String>,
    /// Also fill up a small loop-mounted disk (root only; skipped with a reason otherwise).
    /// With --nodes: the last node's data directory is a tmpfs of --disk-full-mib, filled up
    /// while that node is a follower, then freed.
    #[arg(long)]
    disk_full: bool,
    #[arg(long, default_value_t = 48)]
    disk_full_mib: u64,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    #[arg(long, default_value_t = 4)]
    producers: usize,
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Idempotent producers on the torture topic (each resends a batch until it is acked).
    #[arg(long, default_value_t = 2)]
    idempotent_producers: usize,
    /// Members of one consumer group on the torture topic (0: none).
    #[arg(long, default_value_t = 3)]
    group_members: usize,
    /// Competing consumers of the work queue, which one more idempotent producer feeds (0: no
    /// queue).
    #[arg(long, default_value_t = 2)]
    queue_consumers: usize,
    #[arg(long, default_value_t = 2)]
    queue_partitions: u32,
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Load between faults, milliseconds.
    #[arg(long, default_value_t = 1500)]
    cycle_ms: u64,
    #[arg(long, default_value_t = 3000)]
    pause_ms: u64,
    #[arg(long, default_value_t = 2000)]
    request_timeout_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    restart_limit_ms: u64,
    #[arg(long, default_value_t = 1024)]
    rss_limit_mib: u64,
    #[arg(long, default_value_t = 8 << 20)]
    segment_bytes: u64,
    #[arg(long, default_value_t = 64 << 20)]
    unflushed_bytes_max: u64,
    #[arg(long, default_value_t = 64 << 20)]
    cache_bytes: u64,
    /// Working directory on a real disk (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, short)]
    verbose: bool,
    /// Instead of a fault run: recovery time after SIGKILL (and after a clean stop) for logs of
    /// these sizes in GiB, comma separated (e.g. 1,4,16).
    #[arg(long, value_delimiter = ',')]
    recovery_gib: Vec<f64>,
    /// A cluster of this many nodes (at least 3) instead of one server: SIGKILL + restart and
    /// SIGSTOP + SIGCONT of partition leaders, --cycles of them (default 4), under an
    /// idempotent `acks all` producer; every acknowledged id checked on every node (issue 14).
    #[arg(long, value_name = "N")]
    nodes: Option<usize>,
    /// With --nodes: a fault proxy on every node-to-node link, and a network phase after the
    /// cycles (latency, drops, resets, a partition holding a leader, one holding a follower,
    /// no majority anywhere, healing).
    #[arg(long, requires = "nodes")]
    net_faults: bool,
    /// Self-test: torn tails cut into acknowledged data, and idempotent producers resend with a
    /// fresh sequence number (the run must then fail with exit 3).
    #[arg(long, hide = true)]
    sabotage: bool,
}

fn main() {
    match real_main() {
        Ok(true) => {}
        Ok(false) => std::process::exit(3),
        Err(e) => {
            eprintln!("torture: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let a = Args::parse();
    let faults = a
        .faults
        .iter()
        .map(|f| Fault::parse(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if faults.is_empty() {
        anyhow::bail!("--faults is empty");
    }
    // Removed when it goes out of scope, at the end of the run.
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            tempfile::tempdir_in(d)?.keep()
        }
        None => {
            tmp = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir())?;
            tmp.path().to_path_buf()
        }
    };
    let seed = a.seed.unwrap_or_else(rand::random);
    eprintln!(
        "torture: seed {seed} (rerun with --seed {seed}), dir {}",
        dir.display()
    );
    if let Some(nodes) = a.nodes {
        let bin = shardline_tests::torture::server::shardline_bin()?;
        let opts = shardline_tests::cluster_torture::ClusterOptions {
            nodes,
            cycles: a.cycles.unwrap_or(4),
            net_faults: a.net_faults,
            disk_full: a.disk_full,
            disk_full_mib: a.disk_full_mib,
        };
        let r = shardline_tests::cluster_torture::run(&bin, &dir, &opts)?;
        let json = serde_json::to_string_pretty(&r)?;
        if let Some(p) = &a.json {
            std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
        }
        eprintln!("{json}");
        for v in &r.violations {
            eprintln!("VIOLATION: {v}");
        }
        return Ok(r.violations.is_empty());
    }
    let cfg = a.config(dir, seed, faults);
    if !a.recovery_gib.is_empty() {
        measure_recovery(&a, &cfg)?;
        return Ok(true);
    }
    let report = torture::run(&cfg)?;
    let json = serde_json::to_string_pretty(&report)?;
    write_json(a.json.as_deref(), &json)?;
    println!("{json}");
    print_summary(&report);
    Ok(report.violations.is_empty())
}

impl Args {
    /// The harness settings these arguments ask for.
    fn config(&self, dir: PathBuf, seed: u64, faults: Vec<Fault>) -> Config {
        let cycles = match (self.cycles, self.minutes) {
            (Some(c), _) => Some(c),
            (None, Some(_)) => None,
            (None, None) => Some(self.kill_cycles + faults.len()),
        };
        Config {
            dir,
            seed,
            cycles,
            duration: Duration::from_secs_f64(self.minutes.unwrap_or(0.0) * 60.0),
            faults,
            kill_cycles_min: self.kill_cycles,
            partitions: self.partitions,
            producers: self.producers,
            consumers: self.consumers.max(1),
            idempotent_producers: self.idempotent_producers,
            group_members: self.group_members,
            queue_consumers: self.queue_consumers,
            queue_partitions: self.queue_partitions.max(1),
            shards: self.shards,
            cycle: Duration::from_millis(self.cycle_ms),
            pause: Duration::from_millis(self.pause_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            restart_limit: Duration::from_millis(self.restart_limit_ms),
            rss_limit_bytes: self.rss_limit_mib << 20,
            segment_bytes: self.segment_bytes,
            unflushed_bytes_max: self.unflushed_bytes_max,
            cache_bytes: self.cache_bytes,
            disk_full: self.disk_full,
            disk_full_mib: self.disk_full_mib,
            verbose: self.verbose,
            sabotage: self.sabotage,
        }
    }
}

/// `--recovery-gib`: recovery times for logs of each size, printed and written as JSON.
fn measure_recovery(a: &Args, cfg: &Config) -> anyhow::Result<()> {
    let spec = torture::server_spec(cfg)?;
    let mut points = Vec::new();
    for &gib in &a.recovery_gib {
        let p = torture::recovery::measure(&spec, gib, a.partitions)?;
        eprintln!(
            "recovery: {gib} GiB over {} partitions (filled at {:.0} MiB/s): after SIGKILL \
             listening {:.0} ms, serving {:.0} ms; after a clean stop {:.0} / {:.0} ms",
            p.partitions,
            p.fill_mib_per_s,
            p.after_kill_listening_ms,
            p.after_kill_serving_ms,
            p.after_clean_stop_listening_ms,
            p.after_clean_stop_serving_ms
        );
        points.push(p);
    }
    let json = serde_json::to_string_pretty(&points)?;
    write_json(a.json.as_deref(), &json)?;
    println!("{json}");
    Ok(())
}

fn write_json(path: Option<&Path>, json: &str) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The violations and a few summary lines on stderr.
fn print_summary(report: &Report) {
    for v in &report.violations {
        eprintln!("VIOLATION: {v}");
    }
    eprintln!(
        "torture: {} cycles, {} acked records, {} verified, {} restarts (max {:.0} ms to serve), \
         peak RSS {} MiB, {} violations",
        report.cycles,
        report.acked_records,
        report.records_verified,
        report.restarts.len(),
        report.restart_serving_ms_max,
        report.peak_rss_bytes >> 20,
        report.violations.len()
    );
    let i = &report.idempotent;
    eprintln!(
        "torture: idempotent: {} batches acked ({} after a resend), {} resends",
        i.batches_acked, i.acked_after_resend, i.resends
    );
    if let Some(g) = &report.groups {
        eprintln!(
            "torture: group: {} records delivered ({} again), {} of {} acked delivered, {} \
             memberships, {} commits checked",
            g.records_delivered,
            g.redelivered,
            g.acked_records_delivered,
            g.acked_records_delivered + g.acked_records_undelivered,
            g.memberships,
            g.commits_checked
        );
    }
    if let Some(q) = &report.queue {
        eprintln!(
            "torture: queue: {} produced, {} acked, {} dead letters, {} redelivered, {} lost",
            q.produced_acked, q.acked, q.dead_letters, q.redelivered, q.produced_acked_lost
        );
    }
    if !report.violations_by_family.is_empty() {
        eprintln!(
            "torture: violations by family: {:?}",
            report.violations_by_family
        );
    }
}
