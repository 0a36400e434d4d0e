//! The deterministic simulator's long run (engine/src/sim):
//!
//! ```text
//! cargo run --release -p shardline-engine --example sim -- --seeds 1000000
//! cargo run --release -p shardline-engine --example sim -- --seed 1234        # replay one
//! cargo run -p shardline-engine --example sim -- --sabotage --seeds 20
//! ```
//!
//! Options: `--seeds N` (default 10000), `--first N` (first seed, default 0), `--seed N` (just
//! that one), `--threads N` (default: all cores), `--steps N` (per seed, default 200),
//! `--sabotage` (the core's hidden switch). Prints progress every 10 s and the lowest
//! failing seed found; exits 1 on a failure.

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shardline_engine::sim::{self, Failure, SimConfig, Stats};

struct Args {
    first: u64,
    seeds: u64,
    threads: u64,
    steps: usize,
    sabotage: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        first: 0,
        seeds: 10_000,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        steps: SimConfig::new(0).steps,
        sabotage: false,
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
            "--sabotage" => a.sabotage = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    };
    let next = AtomicU64::new(args.first);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let result = Mutex::new((Stats::default(), None::<Failure>));
    let end = args.first + args.seeds;
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            s.spawn(|| {
                let mut stats = Stats::default();
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let mut cfg = SimConfig::new(seed);
                    cfg.steps = args.steps;
                    cfg.sabotage = args.sabotage;
                    match sim::run(cfg) {
                        Ok(o) => stats.add(&o.stats),
                        Err(f) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut r = result.lock().unwrap_or_else(|e| e.into_inner());
                            if r.1.as_ref().is_none_or(|old| f.seed < old.seed) {
                                r.1 = Some(f);
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
        let mut last = Instant::now();
        while done.load(Ordering::Relaxed) < args.seeds && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(10) {
                last = Instant::now();
                let n = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{n}/{} seeds, {secs:.0} s, {:.0} seeds/s",
                    args.seeds,
                    n as f64 / secs
                );
            }
        }
    });
    let (stats, failure) = result.into_inner().unwrap_or_else(|e| e.into_inner());
    let n = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{n} seeds in {secs:.1} s ({:.0} seeds/s): {stats:?}",
        n as f64 / secs
    );
    match failure {
        Some(f) => {
            println!(
                "FAILED: {f}\n  or: cargo run -p shardline-engine --example sim -- --seed {}",
                f.seed
            );
            ExitCode::FAILURE
        }
        None => {
            println!("all seeds passed");
            ExitCode::SUCCESS
        }
    }
}
