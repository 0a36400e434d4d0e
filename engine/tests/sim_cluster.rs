//! The deterministic cluster simulator (engine/src/sim/cluster.rs; docs/replication.md,
//! "Simulator"): 3 or 5 nodes running Raft groups over a faulty network and crashing disks.
//! `SIM_SEED=<seed>` replays one seed (`SIM_VERBOSE=1` prints its events, `SIM_SABOTAGE=1`
//! runs the sabotaged replicas); `SIM_SEEDS=<n>` and `SIM_FIRST_SEED=<n>` change the range
//! the CI test runs. Millions of seeds: `cargo run --release -p shardline-engine --example
//! sim_cluster -- --seeds 1000000`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "common/seeds.rs"]
mod seeds;

use std::time::Instant;

use seeds::env_u64;
use shardline_engine::sim::{ClusterConfig, ClusterFailure, ClusterStats, run_cluster};

const CI_SEEDS: u64 = 300;

/// `count` seeds from `first` ([`seeds::run_range`]): the totals and the lowest failing
/// seed's failure.
fn run_range(first: u64, count: u64) -> (ClusterStats, Option<ClusterFailure>) {
    seeds::run_range(
        first,
        count,
        |seed| run_cluster(ClusterConfig::new(seed)).map(|o| o.stats),
        ClusterStats::add,
    )
}

// Proves: replicated partitions keep the cluster invariants (one leader per term, no
// divergence below the commit index, every `all` ack on every later leader at the same
// offsets with the same bytes, dense offsets, monotonic high watermark, idempotent batches
// committed once) over many seeds of drops, duplicates, delays, partitions, crashes with torn
// writes and a full disk, and converge after healing; and the runs exercise every fault.
#[test]
fn replicated_partitions_keep_their_invariants_over_many_seeds() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let mut cfg = ClusterConfig::new(seed);
        let sabotage = std::env::var("SIM_SABOTAGE").ok();
        cfg.sabotage_snapshot = sabotage.as_deref() == Some("snapshot");
        cfg.sabotage = sabotage.is_some() && !cfg.sabotage_snapshot;
        match run_cluster(cfg) {
            Ok(o) => println!("seed {seed} passed ({} nodes): {:?}", o.nodes, o.stats),
            Err(f) => panic!("{f}"),
        }
        return;
    }
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let count = env_u64("SIM_SEEDS").unwrap_or(CI_SEEDS);
    let started = Instant::now();
    let (stats, failure) = run_range(first, count);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} cluster seeds from {first} in {secs:.1} s ({:.0} seeds/s): {stats:?}",
        count as f64 / secs
    );
    if let Some(f) = failure {
        panic!("{f}");
    }
    assert!(stats.acks_all > 0 && stats.acks_other > 0, "{stats:?}");
    assert!(stats.elections > count, "{stats:?}");
    assert!(stats.crashes > 0 && stats.partitions > 0, "{stats:?}");
    assert!(
        stats.disk_full_failures > 0 && stats.frames_dropped > 0,
        "{stats:?}"
    );
    assert!(
        stats.retries > 0 && stats.duplicates_answered > 0,
        "{stats:?}"
    );
    assert!(stats.not_leader > 0 && stats.committed > 0, "{stats:?}");
    // Nodes down past the retained window came back through snapshots, some of them onto a
    // leader whose retention had deleted what they lacked; raft-log files were rotated.
    assert!(
        stats.long_outages > 0 && stats.snapshots_installed > 0 && stats.chunks_served > 0,
        "{stats:?}"
    );
    assert!(
        stats.retention_deletes > 0 && stats.log_resets > 0 && stats.log_rotations > 0,
        "{stats:?}"
    );
}

// Proves: a seed is a complete description of a cluster run (raft-rs's own random election
// timeouts are replaced by the seed's).
#[test]
fn the_same_cluster_seed_replays_the_same_run() {
    for seed in [3, 1234] {
        let a = run_cluster(ClusterConfig::new(seed)).unwrap();
        let b = run_cluster(ClusterConfig::new(seed)).unwrap();
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
        assert_eq!(a.stats, b.stats, "seed {seed}");
    }
    let a = run_cluster(ClusterConfig::new(1)).unwrap();
    let b = run_cluster(ClusterConfig::new(2)).unwrap();
    assert_ne!(a.trace_hash, b.trace_hash);
}

// Proves: the simulator catches replicas that answer `all` after the leader's own fsync
// instead of after a majority has the batch, within 50 seeds; the same seed passes unsabotaged.
#[test]
fn acking_all_at_the_leaders_fsync_is_caught() {
    for seed in 0..50 {
        let mut cfg = ClusterConfig::new(seed);
        cfg.sabotage = true;
        if let Err(f) = run_cluster(cfg) {
            println!("caught: {f}");
            assert!(f.message.contains("acked at `all`"), "{f}");
            run_cluster(ClusterConfig::new(seed)).unwrap();
            return;
        }
    }
    panic!("the sabotaged replicas passed 50 seeds");
}

// Proves: the simulator catches a follower that installs a snapshot with one batch missing
// (its partition log then differs from the committed history), within 50 seeds; the same seed
// passes unsabotaged.
#[test]
fn a_snapshot_missing_a_batch_is_caught() {
    for seed in 0..50 {
        let mut cfg = ClusterConfig::new(seed);
        cfg.sabotage_snapshot = true;
        if let Err(f) = run_cluster(cfg) {
            println!("caught: {f}");
            assert!(f.message.contains("partition log"), "{f}");
            run_cluster(ClusterConfig::new(seed)).unwrap();
            return;
        }
    }
    panic!("the sabotaged snapshot installs passed 50 seeds");
}
