//! Shared by the simulator tests (sim, sim_cluster): environment knobs and a seed range run on
//! a few threads, each seed alone and deterministic on one thread.

#![allow(dead_code, clippy::unwrap_used)] // each test crate uses part of it; tests fail loudly

use std::sync::Mutex;

/// Threads a seed range runs on.
pub(crate) const THREADS: u64 = 2;

/// The number in environment variable `name`, if set (panics on anything but a number).
pub(crate) fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// Runs `count` seeds from `first` on [`THREADS`] threads; `run(seed)` gives a run's stats or
/// its failure, and a thread stops at its first failure. Returns the stats summed with `add`
/// and the failure of the lowest failing seed.
pub(crate) fn run_range<S, F>(
    first: u64,
    count: u64,
    run: impl Fn(u64) -> Result<S, F> + Sync,
    add: impl Fn(&mut S, &S) + Sync,
) -> (S, Option<F>)
where
    S: Default + Send,
    F: Send,
{
    let total = Mutex::new((S::default(), None::<(u64, F)>));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (total, run, add) = (&total, &run, &add);
            s.spawn(move || {
                let mut stats = S::default();
                let mut failure: Option<(u64, F)> = None;
                for seed in (first..first + count).filter(|s| s % THREADS == t) {
                    match run(seed) {
                        Ok(o) => add(&mut stats, &o),
                        Err(f) => {
                            failure = Some((seed, f));
                            break;
                        }
                    }
                }
                let mut g = total.lock().unwrap();
                add(&mut g.0, &stats);
                if let Some((seed, f)) = failure
                    && g.1.as_ref().is_none_or(|(old, _)| seed < *old)
                {
                    g.1 = Some((seed, f));
                }
            });
        }
    });
    let (stats, failure) = total.into_inner().unwrap();
    (stats, failure.map(|(_, f)| f))
}
