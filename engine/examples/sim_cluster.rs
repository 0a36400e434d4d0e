//! The cluster simulator's long run (engine/src/sim/cluster.rs; docs/replication.md):
//!
//! ```text
//! cargo run --release -p shardline-engine --example sim_cluster -- --seeds 1000000
//! cargo run --release -p shardline-engine --example sim_cluster -- --seed 1234   # replay one
//! cargo run -p shardline-engine --example sim_cluster -- --sabotage --seeds 50
//! ```
//!
//! Options: `--seeds N` (default 10000), `--first N`, `--seed N` (just that one), `--threads N`
//! (default: all cores), `--steps N` (per seed, default 300), `--groups N` (default 2),
//! `--sabotage` (`all` acked at the leader's fsync), `--sabotage-snapshot` (a snapshot installed
//! with one batch lost). Prints progress every 10 s and the lowest
//! failing seed; exits 1 on a failure.
//!
//! Idle cost of many groups (docs/performance.md): `--idle-groups N [--idle-ticks T]` runs 3
//! nodes with N groups each (R = 3) in one thread, no traffic, and prints CPU per tick round,
//! messages per round and memory per replica (VmRSS growth over the replicas opened);
//! `--no-hibernate` measures the same with hibernation of idle groups off.
//! Failover in simulated time: `--failovers N [--latency-ms L]` kills the leader of a 3-replica
//! partition N times and prints p50 and max of kill -> first `all` ack on the new leader.

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shardline_engine::sim::{ClusterConfig, ClusterFailure, ClusterStats, run_cluster};

struct Args {
    first: u64,
    seeds: u64,
    threads: u64,
    steps: usize,
    groups: u64,
    sabotage: bool,
    sabotage_snapshot: bool,
    idle_groups: u64,
    idle_ticks: u64,
    no_hibernate: bool,
    failovers: u64,
    latency_ms: u64,
}

fn parse() -> Result<Args, String> {
    let d = ClusterConfig::new(0);
    let mut a = Args {
        first: 0,
        seeds: 10_000,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        steps: d.steps,
        groups: d.groups,
        sabotage: false,
        sabotage_snapshot: false,
        idle_groups: 0,
        idle_ticks: 100,
        no_hibernate: false,
        failovers: 0,
        latency_ms: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64, String> {
            let v = it.next().ok_or(format!("{flag} needs a value"))?;
            v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--seeds" => a.seeds = value()?,
            "--first" => a.first = value()?,
            "--seed" => (a.first, a.seeds) = (value()?, 1),
            "--threads" => a.threads = value()?.max(1),
            "--steps" => a.steps = usize::try_from(value()?).map_err(|e| e.to_string())?,
            "--groups" => a.groups = value()?.max(1),
            "--sabotage" => a.sabotage = true,
            "--sabotage-snapshot" => a.sabotage_snapshot = true,
            "--idle-groups" => a.idle_groups = value()?,
            "--idle-ticks" => a.idle_ticks = value()?.max(1),
            "--no-hibernate" => a.no_hibernate = true,
            "--failovers" => a.failovers = value()?,
            "--latency-ms" => a.latency_ms = value()?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim_cluster: {e}");
            return ExitCode::from(2);
        }
    };
    if a.failovers > 0 {
        let kills = usize::try_from(a.failovers).unwrap_or(usize::MAX);
        let mut t = shardline_engine::sim::measure_failover(kills, a.latency_ms, a.first);
        t.sort_unstable();
        let p = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        println!(
            "{} leader kills, one-way latency {} ms, default timing: kill -> first `all` ack on \
             the new leader: min {} ms, p50 {} ms, p90 {} ms, max {} ms",
            t.len(),
            a.latency_ms,
            t[0],
            p(0.5),
            p(0.9),
            t[t.len() - 1]
        );
        return ExitCode::SUCCESS;
    }
    if a.idle_groups > 0 {
        idle(a.idle_groups, a.idle_ticks, !a.no_hibernate);
        return ExitCode::SUCCESS;
    }
    let next = AtomicU64::new(a.first);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let result = Mutex::new((ClusterStats::default(), None::<ClusterFailure>));
    let started = Instant::now();
    let end = a.first.saturating_add(a.seeds);
    std::thread::scope(|s| {
        for _ in 0..a.threads {
            s.spawn(|| {
                let mut stats = ClusterStats::default();
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let mut cfg = ClusterConfig::new(seed);
                    cfg.steps = a.steps;
                    cfg.groups = a.groups;
                    cfg.sabotage = a.sabotage;
                    cfg.sabotage_snapshot = a.sabotage_snapshot;
                    match run_cluster(cfg) {
                        Ok(o) => stats.add(&o.stats),
                        Err(f) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut g = result.lock().unwrap_or_else(|e| e.into_inner());
                            if g.1.as_ref().is_none_or(|old| f.seed < old.seed) {
                                g.1 = Some(f);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                result
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    .add(&stats);
            });
        }
        s.spawn(|| {
            let mut last = Instant::now();
            while done.load(Ordering::Relaxed) < a.seeds && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= Duration::from_secs(10) {
                    last = Instant::now();
                    let n = done.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!("{n} seeds in {secs:.0} s ({:.0}/s)", n as f64 / secs);
                }
            }
        });
    });
    let (stats, failure) = result.into_inner().unwrap_or_else(|e| e.into_inner());
    let n = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!("{n} seeds in {secs:.1} s: {stats:?}");
    match failure {
        Some(f) => {
            println!("{f}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}

/// Resident set size of this process (Linux `/proc/self/status`), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of the calling thread (`getrusage(RUSAGE_THREAD)`).
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills a caller-owned struct; a zeroed rusage is a valid value.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let d = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    d(usage.ru_utime) + d(usage.ru_stime)
}

fn idle(groups: u64, ticks: u64, hibernate: bool) {
    let before = rss_kib();
    let (mut built, mut cpu_start, mut cpu_end) = (0, Duration::ZERO, Duration::ZERO);
    let r = shardline_engine::sim::measure_idle(groups, ticks, hibernate, |what| {
        if what == "built" {
            built = rss_kib();
            cpu_start = thread_cpu();
        } else {
            cpu_end = thread_cpu();
        }
    });
    let replicas = groups * r.nodes;
    let tick_ms = 100.0;
    let cpu_ms_per_tick = (cpu_end - cpu_start).as_secs_f64() * 1000.0 / ticks as f64;
    // One thread ran all nodes: a node's share of a core is a third of the CPU per tick.
    let core_pct_per_node = cpu_ms_per_tick / tick_ms * 100.0 / r.nodes as f64;
    let wall_ms_per_tick = r.idle_busy.as_secs_f64() * 1000.0 / ticks as f64;
    let rss_per_replica = (built.saturating_sub(before)) as f64 * 1024.0 / replicas as f64;
    let storage_per_replica = 2.0 * r.storage_bytes as f64 / replicas as f64;
    println!(
        "hibernation {}: {groups} groups x {} nodes ({replicas} replicas, {} asleep), {ticks} \
         idle ticks of {tick_ms} ms: elected in {} ticks; CPU {cpu_ms_per_tick:.2} ms per tick round (all nodes; wall \
         {wall_ms_per_tick:.2} ms) = {core_pct_per_node:.2}% of a core per node; {:.0} frames, \
         {:.0} raft messages, {:.0} bytes per tick round; memory: RSS growth {:.1} KiB per \
         replica, of which the simulated disk's two in-memory images are {:.1} KiB: replica \
         state ~{:.1} KiB",
        if hibernate { "on" } else { "off" },
        r.nodes,
        r.asleep,
        r.election_ticks,
        r.frames_per_tick,
        r.msgs_per_tick,
        r.bytes_per_tick,
        rss_per_replica / 1024.0,
        storage_per_replica / 1024.0,
        (rss_per_replica - storage_per_replica) / 1024.0,
    );
}
