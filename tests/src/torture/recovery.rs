//! Recovery time as a function of log size: fill a fresh server's partitions with N GiB
//! (`leader` acks, 1 MiB batches), SIGKILL it, and time the restart until it listens and until
//! it answers; then the same after a clean shutdown, for comparison.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use shardline_engine::batch;
use shardline_net::client::{Client, ClientConfig};
use shardline_net::protocol::{Acks, TopicConfig};

use super::server::ServerSpec;

#[derive(Debug, Clone, Serialize)]
pub struct RecoveryPoint {
    pub log_gib: f64,
    pub partitions: u32,
    pub fill_s: f64,
    pub fill_mib_per_s: f64,
    pub after_kill_listening_ms: f64,
    pub after_kill_serving_ms: f64,
    pub after_clean_stop_listening_ms: f64,
    pub after_clean_stop_serving_ms: f64,
    /// High watermark sum after the kill restart, against what was acknowledged before it
    /// (leader acks: a few MiB at the tail may be lost, never more than was unsynced).
    pub records_acked: u64,
    pub records_after_kill: u64,
}

fn serving_within(addr: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match Client::connect(addr, ClientConfig::default()).and_then(|c| c.ping()) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => bail!("not serving: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn high_watermarks(addr: &str, topic: &str, partitions: u32) -> anyhow::Result<u64> {
    let c = Client::connect(addr, ClientConfig::default())?;
    let mut total = 0;
    for p in 0..partitions {
        total += c.fetch(topic, p, 0, Duration::ZERO, 1)?.high_watermark;
    }
    Ok(total)
}

/// Measures one point: `gib` GiB spread over `partitions` partitions of a fresh data dir.
pub fn measure(base: &ServerSpec, gib: f64, partitions: u32) -> anyhow::Result<RecoveryPoint> {
    let dir = base.data_dir.join(format!("recovery-{gib}"));
    std::fs::create_dir_all(&dir)?;
    let spec = ServerSpec {
        data_dir: dir.clone(),
        ..base.clone()
    };
    let srv = spec.start()?;
    let topic = "recovery";
    Client::connect(&srv.addr, ClientConfig::default())?.create_topic(
        topic,
        TopicConfig {
            partitions,
            ..TopicConfig::default()
        },
    )?;
    let target = (gib * f64::from(1u32 << 30)) as u64;
    let written = Arc::new(AtomicU64::new(0));
    let records = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..partitions)
        .map(|p| {
            let (addr, written, records) = (srv.addr.clone(), written.clone(), records.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let c = Client::connect(&addr, ClientConfig::default())?;
                // 16 records of 64 KiB: 1 MiB batches.
                let value = vec![0xC3u8; 64 << 10];
                while written.load(Ordering::Relaxed) < target {
                    let b = batch::batch_of_values(std::iter::repeat_n(value.clone(), 16))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    c.produce(topic, p, b, Acks::Leader)?;
                    written.fetch_add(16 * value.len() as u64, Ordering::Relaxed);
                    records.fetch_add(16, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("filler panicked"))?
            .context("filling the log")?;
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let records_acked = records.load(Ordering::Relaxed);
    let mut srv = srv;
    srv.kill9()?;
    let limit = Duration::from_secs(600);
    let t = Instant::now();
    let srv = spec.start()?;
    let after_kill_listening_ms = t.elapsed().as_secs_f64() * 1e3;
    serving_within(&srv.addr, limit)?;
    let after_kill_serving_ms = t.elapsed().as_secs_f64() * 1e3;
    let records_after_kill = high_watermarks(&srv.addr, topic, partitions)?;
    let status = srv.terminate(limit)?;
    if !status.success() {
        bail!("clean stop exited with {status}");
    }
    let t = Instant::now();
    let srv = spec.start()?;
    let after_clean_stop_listening_ms = t.elapsed().as_secs_f64() * 1e3;
    serving_within(&srv.addr, limit)?;
    let after_clean_stop_serving_ms = t.elapsed().as_secs_f64() * 1e3;
    srv.terminate(limit)?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(RecoveryPoint {
        log_gib: gib,
        partitions,
        fill_s,
        fill_mib_per_s: written.load(Ordering::Relaxed) as f64 / f64::from(1u32 << 20) / fill_s,
        after_kill_listening_ms,
        after_kill_serving_ms,
        after_clean_stop_listening_ms,
        after_clean_stop_serving_ms,
        records_acked,
        records_after_kill,
    })
}
